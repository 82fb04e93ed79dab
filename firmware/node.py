# The sensor-node application: the window loop and its LwM2M reports.
#
# Reads `hop` new samples into a window of `window` int16 samples (allocated once; the
# first window fills completely), then sends one SenML-CBOR report per window over
# LwM2M Send, at least `report_ms` apart; session.Session keeps the registration
# alive meanwhile. Network errors are logged and survived; SIGINT (KeyboardInterrupt)
# de-registers and exits 0. Log lines on stdout (parsed by tools/sim.py and tests):
#   aiot-node EP registered LOCATION | updated | sent SEQ | deregistered | error: MESSAGE
#   aiot-node: config error: MESSAGE        (then exit status 2)
from micropython import const
import micropython
import sys
import time
from array import array
from session import Session, PREFIX

_SENT_EVERY = const(10)  # without verbose, log the first sent window and every 10th
# SenML names in /33000/0/ (aiotkit Vibration Window): 0 sequence, 1 sample offset,
# 2 window length, 3 sample rate, 4 min (g), 5 max (g)
_NAMES = (b"0", b"1", b"2", b"3", b"4", b"5")


@micropython.viper
def _slide(buf: ptr16, n: int, h: int):
    # buf[0:n-h] = buf[h:n]
    for i in range(n - h):
        buf[i] = buf[i + h]


@micropython.viper
def _minmax(buf: ptr16, n: int, out: ptr16):
    # out[0], out[1] = min, max of the int16 samples buf[0:n]
    lo = 32767
    hi = -32768
    for i in range(n):
        v = buf[i]
        if v & 0x8000:
            v -= 0x10000
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    out[0] = lo
    out[1] = hi


class Node(Session):
    """The window loop over ``sensor`` (see session.Session for the other arguments)."""

    def __init__(self, cfg, sensor, transport=None, clock=None, rand=None):
        super().__init__(cfg, transport, clock, rand)
        self.sensor = sensor
        n = cfg["window"]
        h = cfg["hop"]
        self.n = n
        self.hop = h
        self.win = array("h", range(n))  # sized from len(range): no temporary copy
        self._tail = memoryview(self.win)[n - h :] if h < n else self.win
        self._mm = array("h", bytes(4))
        self._vals = [0, 0, n, sensor.rate]  # sequence, offset, length, rate
        self._fill_cb = self._fill  # bound once: fetching a method allocates
        self.seq = 0
        self.sent = 0
        self.verbose = cfg["verbose"]
        self._report_ms = cfg["report_ms"]
        self._last_report = 0
        self._started = False

    def _next_window(self):
        n = self.n
        h = self.hop
        if h < n:
            _slide(self.win, n, h)
        self.sensor.read_into(self._tail, h)
        self.seq += 1

    def _fill(self, w):
        # SenML-CBOR pack, RFC 8428 section 6 (labels: bn -2, n 0, v 2)
        e = self.sensor.scale_exp
        w.put_array(7)
        w.put_map(3)
        w.put_int(-2)
        w.put_text(b"/3313/0/")
        w.put_int(0)
        w.put_text(b"5702")
        w.put_int(2)
        w.put_scaled(self.win[self.n - 1], e)
        w.put_map(3)
        w.put_int(-2)
        w.put_text(b"/33000/0/")
        v = self._vals
        for i in range(6):
            if i:
                w.put_map(2)
            w.put_int(0)
            w.put_text(_NAMES[i])
            w.put_int(2)
            if i < 4:
                w.put_uint(v[i])
            else:
                w.put_scaled(self._mm[i - 4], e)

    def _report(self):
        _minmax(self.win, self.n, self._mm)
        v = self._vals
        v[0] = self.seq
        v[1] = self.sensor.offset - self.n  # offset of the window's first sample
        self.idle_until(time.ticks_add(self._last_report, self._report_ms))
        self._last_report = self.clock.ticks_ms()
        for attempt in range(2):
            self.ensure_registered()
            try:
                self.client.send(self._fill_cb)
                break
            except self._net_errors as e:
                self.error("send %d" % self.seq, e)
                # 4.04: the gateway forgot the registration; register and send once more.
                # Otherwise the report is dropped (a flash log comes with a later issue).
                if attempt or self.client.registered:
                    return
        if self.verbose or self.sent == 0 or self.seq % _SENT_EVERY == 0:
            self.log("sent", self.seq)
        self.sent += 1

    def run(self, windows=-1):
        """The window loop; forever, or for ``windows`` more windows (tests)."""
        self.ensure_registered()
        if not self._started:
            self._started = True
            self._last_report = time.ticks_add(self.clock.ticks_ms(), -self._report_ms)
            self.sensor.read_into(self.win, self.n)  # the first window fills completely
        else:
            self._next_window()
        while True:
            self._report()
            windows -= 1
            if windows == 0:
                return
            self._next_window()


def main():
    """Boot: config, sensor, buffers, network modules; run until SIGINT, then
    de-register and exit 0. A config the node cannot run with exits 2 after one line."""
    node = None
    try:
        import nodecfg

        path = sys.argv[1] if len(sys.argv) > 1 else "config.json"
        try:
            cfg = nodecfg.load(path)
            sensor = nodecfg.open_sensor(cfg)
        except nodecfg.ConfigError as e:
            print("%s: config error: %s" % (PREFIX, e))
            sys.exit(2)
        del nodecfg
        del sys.modules["nodecfg"]  # needed only at boot: give its RAM back
        try:
            node = Node(cfg, sensor)  # the big buffers first, before compiling the rest
            node.load()
        except MemoryError:
            # not a crash to restart from: this window does not fit in this board's heap
            print("%s: config error: 'window' %d does not fit in the heap"
                  % (PREFIX, cfg["window"]))
            sys.exit(2)
        node.run()
    except KeyboardInterrupt:
        pass
    if node is not None:
        try:
            node.shutdown()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
