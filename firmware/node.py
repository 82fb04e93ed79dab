# The sensor-node application: the window loop and its LwM2M reports.
#
# sampler.Sampler cuts the sensor's stream into windows of `window` samples every `hop`
# samples (flags for overrun, dropped, saturated and bus-error windows); features.Extractor
# turns each window into the configured feature set (fixed point, no allocation). One
# SenML-CBOR report goes out over LwM2M Send at least `report_ms` apart: a live sensor
# (samples on its own clock) has every window processed and the latest reported; a
# source that waits for the reader (replay not in real time) is read one window per
# report. session.Session keeps the registration alive meanwhile. Network and sensor
# errors are logged and survived; SIGINT (KeyboardInterrupt) de-registers and exits 0.
# Log lines on stdout (parsed by tools/sim.py and tests):
#   aiot-node EP registered LOCATION | updated | sent SEQ | deregistered | error: MESSAGE
#   aiot-node: config error: MESSAGE        (then exit status 2)
#
# Report (README.md, "For firmware developers"): /3313/0/5702 the window's last sample
# (g); /33000/0/<r> the window (0 sequence, 1 offset, 2 length, 3 rate, 4 min g, 5 max g,
# 6 flags, 7 overruns, 8 dropped, 9 saturated, 10 bus errors, 11 windows since the last
# report); /33001/0/<i> the i-th feature output of the spec (g, g^2, Hz, counts, ratios).
#
# Store and forward (config "log", "log_slots"; firmware/LWM2M.md): a report the gateway
# does not acknowledge (not registered, Send timed out or refused) goes into a bounded
# log in flash (flashlog.Log, slots of the CoAP buffer's size; oldest overwritten when
# full) instead of being dropped. Once registered, the log is sent oldest first (at most
# _DRAIN_MAX per report; a new report waits in the log until the log is empty, so the
# gateway gets reports in order), each record popped only after its Send was
# acknowledged: a reboot or power cut re-sends, never loses. A logged record is a 7-byte
# time stamp then the SenML pack: when sent, its first record gains a bt (base time, RFC
# 8428 section 4.5.3): seconds since 1970 if the node has a wall clock, else relative
# (negative) to now for a record of this boot, else none. Reports lost (log full or off)
# are counted in /33000/0/12, records waiting in /33000/0/13. With a log, Register,
# Update and Send give up after _NET_DEADLINE_MS and the window loop never waits for
# the gateway; a Send with no answer at all makes the node register again (back-off),
# logging the reports meanwhile. Appending, sending and popping allocate a few objects (the time stamp's
# integers and float); the steady state (log empty, gateway reachable) nothing.
from micropython import const
import micropython
import sys
import time
from array import array
from session import Session, PREFIX
from coapmsg import move

_SENT_EVERY = const(10)  # without verbose, log the first sent window and every 10th
_MAX_FEATURES = const(32)  # feature outputs a report holds (the CoAP buffer is 512 bytes)
_SMALL = const(0x3FFFFFFF)  # |value| below 2**30: put_scaled's range, a small int everywhere
_FAIL_LOG = const(1023)  # a sensor that keeps failing is logged every 1024 polls
_NAMES = (b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9", b"10", b"11",
          b"12", b"13", b"14", b"15", b"16", b"17", b"18", b"19", b"20", b"21", b"22",
          b"23", b"24", b"25", b"26", b"27", b"28", b"29", b"30", b"31")
_UNIT_POW = {"code": 1, "code^2": 2}  # feature units that carry the sensor scale
_DRAIN_MAX = const(8)  # logged reports sent per report at most (the window loop waits)
_NET_DEADLINE_MS = const(5000)  # with a log: Register, Update or Send give up after this
_STAMP = const(7)  # logged record: 0 kind (0 none, 1 wall clock, 2 ticks), 1 u32, 5 u16
_SPARE = const(24)  # a logged pack + 10 (bt) must fit the buffer after the Send's header
_CLOCK_OK_MS = const(1577836800000)  # a wall clock before 2020 is not set
_EPOCH_2000_MS = const(946684800000)  # bare-metal ports count time from 2000
_SEQ_MASK = const(0x3FFFFFFF)  # flashlog sequence numbers ...
_HALF = const(0x20000000)  # ... compared modulo 2**30
# SenML value key of each /33002/0 resource: v 2, vs 3 (label), vb 4 (flag), vd 8 (ids, raw)
_KEYS = (2, 2, 3, 2, 2, 4, 2, 8, 8, 8, 2, 2, 2)


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


@micropython.viper
def _copy(dst: ptr8, src: ptr8, n: int):
    for i in range(n):
        dst[i] = src[i]


def _put_le(b, o, v, n):
    # v as n bytes little-endian at b[o]
    for i in range(n):
        b[o + i] = (v >> (8 * i)) & 0xFF


def _get_le(b, o, n):
    v = 0
    for i in range(n):
        v |= b[o + i] << (8 * i)
    return v


def _scaled(w, v, m, e):
    # v * m * 2**e as float32, v an int32, m a small positive int (< 2**15): shift v
    # (rounding) until v * m stays a small int; float32 keeps 24 bits anyway
    while v > _SMALL // m or v < -(_SMALL // m):
        v = (v + 1) >> 1
        e += 1
    w.put_scaled(v * m, e)


def _record(w, i, base, key=2):
    # the head of SenML record i of an object instance: {bn: base (first only), n: "i",
    # key: (v 2, vs 3, vb 4, vd 8)
    w.put_map(2 if i else 3)
    if not i:
        w.put_int(-2)
        w.put_text(base)
    w.put_int(0)
    w.put_text(_NAMES[i])
    w.put_int(key)


class Node(Session):
    """The window loop over ``sensor`` (common sensor interface, board.py), with the
    feature spec ``spec`` (None: no features); see session.Session for the rest."""

    def __init__(self, cfg, sensor, spec=None, transport=None, clock=None, rand=None):
        from sampler import Sampler

        super().__init__(cfg, transport, clock, rand)
        self.sensor = sensor
        n = cfg["window"]
        self.n = n
        self.sampler = Sampler(sensor, n, cfg["hop"])  # SamplerError: a config error
        self.win = array("h", bytes(2 * n))
        self.ex = None
        self.feat = None
        self._fscale = array("i")
        if spec is not None:
            from features import Extractor

            ex = Extractor(spec)  # FeatureError: a config error
            k = len(ex.names)
            if k > _MAX_FEATURES:
                raise ValueError("'features' gives %d outputs; a report holds at most %d"
                                 % (k, _MAX_FEATURES))
            self.ex = ex
            self.feat = array("i", bytes(4 * k))
            m = sensor.scale_m
            e = sensor.scale_e
            # per output i: [2i] multiplier (< 2**30), [2i + 1] exponent, so value =
            # out * mult * 2**exp (an array: a tuple of pairs takes 4 times the RAM)
            sc = self._fscale = array("i", bytes(8 * k))
            for i, (frac, u) in enumerate(ex.formats):
                sc[2 * i] = m ** _UNIT_POW.get(u, 0)
                sc[2 * i + 1] = e * _UNIT_POW.get(u, 0) - frac
        self.decider = None
        self._mm = array("h", bytes(4))
        self._fill_cb = self._fill  # bound once: fetching a method allocates
        self.flags = 0
        self.windows = 0  # windows processed since the last report
        self.sent = 0
        self.live = bool(sensor.live)
        self._wait_ms = cfg["hop"] * 500 // sensor.rate + 1  # half a hop, at least 1 ms
        self.verbose = cfg["verbose"]
        self._report_ms = cfg["report_ms"]
        self._last_report = 0
        self._started = False
        self.flog = None  # flashlog.Log, opened by run()
        self.lost = 0  # reports neither acknowledged nor logged (since boot)
        if cfg.get("log_slots"):
            self.deadline_ms = _NET_DEADLINE_MS

    def use(self, decider):
        """Run ``decider`` (infer.Decider) on every window's features and report its
        decision in /33002/0 (README, "For firmware developers")."""
        self.decider = decider
        self.bufsize = 1024  # the decision adds about 250 bytes to the report
        self._fb = bytearray(4 * len(self.feat))  # the raw outputs, for the shadow check

    def objects(self):
        import nodeobj

        return nodeobj.objects(self)

    def _decision_records(self):
        d = self.decider
        return 4 + (4 if d.clf is not None else 0) + (5 if d.ae is not None else 0)

    def _fill_decision(self, w):
        d = self.decider
        c = d.clf
        a = d.ae
        for i in range(13):
            if c is None and (i in (1, 2, 3, 7)) or a is None and (i in (4, 5, 6, 8, 12)):
                continue
            _record(w, i, b"/33002/0/", _KEYS[i])
            if i == 0:
                w.put_uint(self.seq)
            elif i == 1:
                w.put_uint(d.label)
            elif i == 2:
                w.put_text(c.labels[d.label])
            elif i == 3:
                w.put_scaled(d.conf, -8)
            elif i == 4:
                w.put_uint(d.score)
            elif i == 5:
                w.put_bool(d.anomalous)
            elif i == 6:
                w.put_uint(a.threshold)
            elif i == 7:
                w.put_bytes(c.id)
            elif i == 8:
                w.put_bytes(a.id)
            elif i == 9:
                _copy(self._fb, self.feat, len(self._fb))
                w.put_bytes(self._fb)
            elif i == 10:
                w.put_int(self.sensor.scale_e)
            elif i == 11:
                w.put_uint(d.us)
            else:
                w.put_uint(d.anomalies)

    @property
    def seq(self):
        # the window's sequence number from 0 (modulo 2**30)
        return (self.sampler.seq - 1) & _SMALL

    def _fill(self, w):
        # SenML-CBOR pack, RFC 8428 section 6 (labels: bn -2, n 0, v 2)
        sen = self.sensor
        sm = self.sampler
        m = sen.scale_m
        e = sen.scale_e
        k = len(self._fscale) >> 1
        d = self.decider
        w.put_array(13 + k + (self._decision_records() if d is not None else 0))
        w.put_map(3)
        w.put_int(-2)
        w.put_text(b"/3313/0/")
        w.put_int(0)
        w.put_text(b"5702")
        w.put_int(2)
        _scaled(w, self.win[self.n - 1], m, e)
        for i in range(12):
            _record(w, i, b"/33000/0/")
            if i == 0:
                w.put_uint((sm.seq - 1) & _SMALL)
            elif i == 1:
                w.put_uint(sm.offset)
            elif i == 2:
                w.put_uint(self.n)
            elif i == 3:
                w.put_uint(sen.rate)
            elif i < 6:
                _scaled(w, self._mm[i - 4], m, e)
            elif i == 6:
                w.put_uint(self.flags)
            elif i == 7:
                w.put_uint(sm.overruns)
            elif i == 8:
                w.put_uint(sm.dropped)
            elif i == 9:
                w.put_uint(sm.saturated)
            elif i == 10:
                w.put_uint(sm.errors)
            else:
                w.put_uint(self.windows)
        f = self.feat
        sc = self._fscale
        for i in range(k):
            _record(w, i, b"/33001/0/")
            _scaled(w, f[i], sc[2 * i], sc[2 * i + 1])
        if d is not None:
            self._fill_decision(w)

    def _report(self):
        _minmax(self.win, self.n, self._mm)
        self._last_report = self.clock.ticks_ms()
        if self.flog is None:
            return self._report_now()
        if self.registered() and self._drain():
            try:
                self.client.send(self._fill_cb, self.deadline_ms)
                self._awake()
                return self._sent()
            except self._net_errors as e:
                self.error("send %d" % self.seq, e)
                self._lost_contact(e)
        self._keep()
        self._reset()

    def _lost_contact(self, e):
        # no answer at all (a timeout, a reset, an ICMP error), not a CoAP error code:
        # the gateway is away. Register again (with back-off) and log the reports
        # meanwhile, rather than spend the Send deadline on every report; after a
        # 4.04 (the gateway forgot the registration) register at once
        if not isinstance(e, self._net_errors[1]):
            self.client.registered = False
        if not self.client.registered:
            self._next = self._last_report

    def _report_now(self):
        # without a log: wait until registered; a report the gateway refuses is dropped
        for attempt in range(2):
            self.ensure_registered()
            try:
                self.client.send(self._fill_cb)
                self._awake()
                break
            except self._net_errors as e:
                self.error("send %d" % self.seq, e)
                # 4.04: the gateway forgot the registration; register and send once more
                if attempt or self.client.registered:
                    self.lost += 1
                    self._reset()
                    return
        self._sent()

    def _sent(self):
        seq = self.seq
        if self.verbose or self.sent == 0 or seq % _SENT_EVERY == 0:
            self.log("sent", seq)
        self.sent += 1
        self._reset()

    # -- the flash log --

    def _open_log(self):
        import flashlog

        b = self.bufsize
        try:
            log = flashlog.Log(self.cfg["log"], 16 + self.cfg["log_slots"] * b, b)
        except (flashlog.LogError, OSError) as e:
            self.error("log", e)  # run on as without one: a report not sent is lost
            self.deadline_ms = -1
            return
        self.flog = log
        if log.count:
            self.log("logged reports:", log.count)

    def _keep(self):
        # the report into the flash log: a time stamp, then the pack written into the
        # CoAP buffer (free now: the Send is over)
        log = self.flog
        ep = self.ep
        if log is None or ep is None:
            self.lost += 1
            return
        buf = ep.tx
        w = self.client._cw  # the Send's writer (cbor.Writer), idle now
        w.buf = buf
        w.pos = _STAMP
        try:
            self._fill(w)
        except ValueError:  # CBORError: a report that could never be sent either
            w.pos = len(buf)
        n = w.pos
        if n - _STAMP + _SPARE > len(buf):
            self.lost += 1
            return
        self._stamp(buf)
        before = log.dropped
        log.append(buf, n)
        if log.dropped != before:
            self.log("log full: dropped the oldest report, lost", log.dropped + self.lost)
        self.log("logged", self.seq)

    def _stamp(self, buf):
        # buf[0:7]: when the window was reported (1: ms since 1970; 2: ticks_ms)
        age = time.ticks_diff(self.clock.ticks_ms(), self._last_report)
        wall = getattr(self.clock, "time_ns", time.time_ns)() // 1000000
        if time.gmtime(0)[0] == 2000:
            wall += _EPOCH_2000_MS
        if wall >= _CLOCK_OK_MS:
            v = wall - age
            buf[0] = 1
            _put_le(buf, 1, v // 1000, 4)
            _put_le(buf, 5, v % 1000, 2)
        else:
            buf[0] = 2
            _put_le(buf, 1, self._last_report, 4)
            _put_le(buf, 5, 0, 2)

    def _fill_log(self, w):
        # the oldest logged pack as the Send's payload, read to 3 bytes after the payload
        # start: the stamp is replaced by the head of the pack and bt (-3) in its first
        # record (0xA3, a map of 3, becomes 0xA4), or the pack moves down without a bt
        buf = w.buf
        p = w.pos
        n = self.flog.peek(memoryview(buf)[p + 3 :]) - _STAMP
        if n <= 0:
            return  # nothing left (a record gone bad): an empty Send, refused
        q = p + 3
        t = None
        if buf[q] == 1:
            t = _get_le(buf, q + 1, 4) + _get_le(buf, q + 5, 2) / 1000
        elif buf[q] == 2:
            log = self.flog
            if (log.seq - log.count - log.boot_seq) & _SEQ_MASK < _HALF:  # this boot's
                t = time.ticks_diff(_get_le(buf, q + 1, 4), self.clock.ticks_ms()) / 1000
        h = 2 if buf[p + 10] == 0x98 else 1  # the array head: 1 or 2 bytes
        if t is None or buf[p + 10 + h] != 0xA3:
            move(buf, p, buf, p + 10, n)
            w.pos = p + n
            return
        move(buf, p, buf, p + 10, h)
        buf[p + h] = 0xA4
        buf[p + h + 1] = 0x22  # -3: bt
        w.pos = p + h + 2
        w.put_float64(t)
        w.pos = p + 10 + n

    def _drain(self):
        # logged reports, oldest first, each popped once acknowledged; True when empty
        log = self.flog
        k = 0
        while log.count:
            if k == _DRAIN_MAX:
                break
            try:
                self.client.send(self._fill_log, self.deadline_ms)  # a bound method: 32 B
            except self._net_errors as e:
                self.error("send logged", e)
                c = self.ep.rx.code
                if not (isinstance(e, self._net_errors[1]) and c >> 5 == 4 and c != 0x84):
                    self._lost_contact(e)
                    break
                self.lost += 1  # refused for good (4.xx): it would block the log forever
            self._awake()
            log.pop()
            k += 1
        if k:
            self.log("sent from the log:", k)
        return not log.count

    def _reset(self):
        # the counts "since the last report" start again
        self.windows = 0
        if self.decider is not None:
            self.decider.anomalies = 0

    def _window(self):
        # wait (serving the network) until the sampler has a window; take it
        sm = self.sampler
        while True:
            sm.poll()
            if sm.ready():
                break
            f = sm.failing
            if f and (f == 1 or not f & _FAIL_LOG):
                self.log("error:", "sensor: %d bus errors and no samples" % sm.sensor.errors)
            self.idle_until(time.ticks_add(self.clock.ticks_ms(), self._wait_ms))
        self.flags = sm.take(self.win)
        self.windows += 1
        if self.ex is not None:
            self.ex.compute(self.win, self.feat)
            if self.decider is not None:
                self.decider.decide(self.feat)
        if self.tree is not None:
            self.tree.watch.changed()  # observations of the window's objects

    def _due(self):
        return time.ticks_diff(self.clock.ticks_ms(), self._last_report) >= self._report_ms

    def run(self, windows=-1):
        """The window loop; forever, or for ``windows`` more reports (tests)."""
        if not self._started and self.cfg.get("log_slots"):
            self._open_log()
        if self.flog is not None:
            self.maintain()  # the window loop goes on while the gateway is away
        else:
            self.ensure_registered()
        if not self._started:
            self._started = True
            self._last_report = time.ticks_add(self.clock.ticks_ms(), -self._report_ms)
            self.sampler.start()
        while True:
            if self.live:
                self._window()
                while not self._due():
                    self._window()
            else:
                self.idle_until(time.ticks_add(self._last_report, self._report_ms))
                self._window()
            self._report()
            windows -= 1
            if windows == 0:
                return


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
            spec = nodecfg.feature_spec(cfg, sensor.rate)
        except nodecfg.ConfigError as e:
            print("%s: config error: %s" % (PREFIX, e))
            sys.exit(2)
        del nodecfg
        del sys.modules["nodecfg"]  # needed only at boot: give its RAM back
        try:
            node = Node(cfg, sensor, spec)  # the big buffers first, then the network code
            if "model" in cfg or "anomaly" in cfg:
                import infer

                node.use(infer.load(cfg, spec, node.ex.formats if node.ex else None,
                                    sensor.scale_m, sensor.scale_e))
            node.load()
        except ValueError as e:  # SamplerError, FeatureError, ModelError: window, spec, model
            print("%s: config error: %s" % (PREFIX, e))
            sys.exit(2)
        except MemoryError:
            # not a crash to restart from: this window or model does not fit in the heap
            print("%s: config error: 'window' %d%s does not fit in the heap"
                  % (PREFIX, cfg["window"], " with the models" if node else ""))
            sys.exit(2)
        from sensorbus import SensorError

        try:
            node.run()
        except SensorError as e:
            # the chip is missing or not the one the board names (start() checks its ID):
            # a reboot cannot fix it, so no restart loop
            print("%s: sensor error: %s" % (PREFIX, e))
            node.shutdown()
            sys.exit(2)
    except KeyboardInterrupt:
        pass
    if node is not None:
        try:
            node.shutdown()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
