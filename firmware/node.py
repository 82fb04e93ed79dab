# The sensor-node application: the window loop and its LwM2M reports.
#
# dsp/sampler.py's Sampler cuts the sensor's stream into windows of `window` samples
# every `hop` samples (flags for overrun, dropped, saturated and bus-error windows);
# dsp/features.py's Extractor turns each window into the configured feature set (fixed
# point, no allocation); tinyml/infer.py's Decider runs the models on them. One
# SenML-CBOR report goes out over LwM2M Send at least `report_ms` apart: a live sensor
# (samples on its own clock) has every window processed and the latest reported; a
# source that waits for the reader (replay not in real time) is read one window per
# report. lwm2m/session.py's Session keeps the registration alive meanwhile. Network and
# sensor errors are logged and survived; SIGINT (KeyboardInterrupt) de-registers and
# exits 0, and so does the end of stdin when AIOT_STOP=stdin (how tools/sim.py stops a
# node: a signal lands anywhere, see lwm2m/session.py Session.stop_on).
# Log lines on stdout (parsed by tools/sim.py and tests):
#   aiot-node EP registered LOCATION | updated | sent SEQ | deregistered | error: MESSAGE
#   aiot-node EP send refused: reports by notify only
#   aiot-node: config error: MESSAGE        (then exit status 2)
#
# Report (README.md, "For firmware developers"): the objects of report.py, whose tables
# say which resources each report carries (/3313/0/5702, /33000/0/0..11, /33001/0/<i>
# and /33002/0/... with a model) and whose get() gives their values, as for a Read.
#
# Store and forward (config "log", "log_slots"; firmware/LWM2M.md): a report the gateway
# does not acknowledge (not registered, Send timed out or refused) goes into a bounded
# log in flash (storage/flashlog.py Log, slots of the CoAP buffer's size; oldest
# overwritten when full) instead of being dropped. Once registered, the log is sent
# oldest first (at most _DRAIN_MAX per report; a new report waits in the log until the
# log is empty, so the gateway gets reports in order), each record popped only after
# its Send was acknowledged: a reboot or power cut re-sends, never loses. A logged
# record is a 7-byte time stamp then the SenML pack: when sent, its first record gains
# a bt (base time, RFC 8428 section 4.5.3): seconds since 1970 if the node has a wall
# clock, else relative (negative) to now for a record of this boot, else none. Reports
# lost (log full or off) are counted in /33000/0/12, records waiting in /33000/0/13.
# With a log, Register, Update and Send give up after _NET_DEADLINE_MS and the window
# loop never waits for the gateway; a Send with no answer at all makes the node
# register again (back-off), logging the reports meanwhile. Appending, sending and popping allocate a few objects
# (the time stamp's integers and float); the steady state (log empty, gateway reachable)
# nothing.
#
# A server without Send (firmware/LWM2M.md): after config "send_refusals" Sends in a
# row answered 4.00, 4.04 or 4.05 (lwm2m/client.py Client.refused) the node stops using
# Send for that server (_off()), says so once, empties the flash log and reports
# through Observe/Notify only. A refused report is not counted as lost (the server got
# it).
from micropython import const
import micropython
import sys
import time
from array import array
from lwm2m.session import Session, PREFIX, unload
from coap.msg import move

_SENT_EVERY = const(10)  # without verbose, log the first sent window and every 10th
# feature outputs a report holds (the CoAP buffer is 512 bytes; DDF 33001.xml: 0..31)
_MAX_FEATURES = const(32)
_SEQ = const(0x3FFFFFFF)  # window sequence numbers are modulo 2**30
_FAIL_LOG = const(1023)  # a sensor that keeps failing is logged every 1024 polls
_UNIT_POW = {"code": 1, "code^2": 2}  # feature units that carry the sensor scale
_DRAIN_MAX = const(8)  # logged reports sent per report at most (the window loop waits)
_NET_DEADLINE_MS = const(5000)  # with a log: Register, Update or Send give up after this
_STAMP = const(7)  # logged record: 0 kind (0 none, 1 wall clock, 2 ticks), 1 u32, 5 u16
_WALL = const(1)  # stamp kinds: ms since 1970 (u32 s, u16 ms) ...
_TICKS = const(2)  # ... ticks_ms of this boot (u32)
_BT = const(10)  # bt in a sent record: its label -3 (1 byte) and a float64 (9 bytes)
_BT_LABEL = const(-3)  # SenML base time, RFC 8428 section 6
_ARRAY = const(4)  # CBOR major types, RFC 8949 section 3.1
_MAP = const(5)
_SPARE = const(24)  # a logged pack + _BT must fit the buffer after the Send's header
_CLOCK_OK_MS = const(1577836800000)  # a wall clock before 2020 is not set
_EPOCH_2000_MS = const(946684800000)  # bare-metal ports count time from 2000
_SEQ_MASK = const(0x3FFFFFFF)  # flashlog sequence numbers ...
_HALF = const(0x20000000)  # ... compared modulo 2**30


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


def _put_le(b, o, v, n):
    # v as n bytes little-endian at b[o]
    for i in range(n):
        b[o + i] = (v >> (8 * i)) & 0xFF


def _get_le(b, o, n):
    v = 0
    for i in range(n):
        v |= b[o + i] << (8 * i)
    return v


class Node(Session):
    """The window loop over ``sensor`` (common sensor interface, board.py), with the
    feature spec ``spec`` (None: no features); see lwm2m/session.py for the rest."""

    software = None  # Object 9 (ota/models.py Software), set by main() with models

    def __init__(self, cfg, sensor, spec=None, transport=None, clock=None, rand=None):
        from dsp.sampler import Sampler

        super().__init__(cfg, transport, clock, rand)
        self.sensor = sensor
        n = cfg["window"]
        self.n = n
        self.sampler = Sampler(sensor, n, cfg["hop"])  # SamplerError: a config error
        self.win = array("h", bytes(2 * n))
        self.ex = None
        self.feat = None
        self.fscale = array("i")
        if spec is not None:
            from dsp.features import Extractor

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
            sc = self.fscale = array("i", bytes(8 * k))
            for i, (frac, u) in enumerate(ex.formats):
                sc[2 * i] = m ** _UNIT_POW.get(u, 0)
                sc[2 * i + 1] = e * _UNIT_POW.get(u, 0) - frac
        self.decider = None
        self.mm = array("h", bytes(4))  # the window's smallest and largest sample
        self.report = None  # report.Report, made with the object tree
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
        self.flog = None  # storage/flashlog.py Log, opened by run()
        self.lost = 0  # reports neither acknowledged nor logged (since boot)
        if cfg.get("log_slots"):
            self.deadline_ms = _NET_DEADLINE_MS

    def use(self, decider):
        """Run ``decider`` (tinyml/infer.py Decider) on every window's features and report
        its decision in /33002/0 (README, "For firmware developers"), and its candidate
        model's beside it (ota/models.py, Object 9)."""
        self.decider = decider
        self.bufsize = 1024  # the decision adds about 250 bytes to the report

    def load(self):
        # the flash log and the report's module with the network modules, before the
        # connection's buffers fragment the heap (each needs a contiguous block)
        import gc

        if self.cfg.get("log_slots") and self.flog is None:
            gc.collect()
            self._open_log()
        super().load()
        gc.collect()
        import report  # noqa: F401

    def objects(self):
        if self.report is None:
            from report import Report

            self.report = Report(self)
        sw = self.software
        return self.report.objs if sw is None else self.report.objs + [sw]

    @property
    def seq(self):
        # the window's sequence number from 0 (modulo 2**30)
        return (self.sampler.seq - 1) & _SEQ

    def _fill(self, w):
        # the Send's payload: the SenML-CBOR pack of report.py's objects
        self.report.write(w)

    def _off(self):
        # Send is off: the server refused send_refusals Sends in a row (it has none;
        # lwm2m/client.py Client.refused). The first time, say so and empty the log
        # (its reports could only be refused as well)
        c = self.client
        k = self.cfg["send_refusals"]
        if c is None or not 0 < k <= c.refused:
            return False
        if c.refused == k:  # once: the count goes past the limit
            c.refused += 1
            log = self.flog
            while log is not None and log.count:
                log.pop()
            self.log("send refused: reports by notify only")
        return True

    def _report(self):
        _minmax(self.win, self.n, self.mm)
        self._last_report = self.clock.ticks_ms()
        if self._off():  # reports by Notify: _window told the observers
            return self._reset()
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
        if not self._off():
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
                if self._off():
                    return self._reset()
                # 4.04: the gateway forgot the registration; register and send once more
                if attempt or self.client.registered:
                    # lost, unless refused (4.00, 4.04, 4.05: Client.refused): the server
                    # got it, and one without Send refuses every report
                    if not (isinstance(e, self._net_errors[1]) and self.client.refused):
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
        from storage.flashlog import Log, LogError

        b = self.bufsize
        try:
            log = Log(self.cfg["log"], 16 + self.cfg["log_slots"] * b, b)
        except (LogError, OSError) as e:
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
        w = self.client._cw  # the Send's writer (cbor/encode.py Writer), idle now
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
            buf[0] = _WALL
            _put_le(buf, 1, v // 1000, 4)
            _put_le(buf, 5, v % 1000, 2)
        else:
            buf[0] = _TICKS
            _put_le(buf, 1, self._last_report, 4)
            _put_le(buf, 5, 0, 2)

    def _fill_log(self, w):
        # the oldest logged pack as the Send's payload, its first record with the stamp's
        # time as bt when it is known. The record is read _BT - _STAMP bytes after the
        # payload start, so its pack starts _BT bytes in: the array head, the first
        # record's map head and bt are written in front of the rest of the pack, which
        # then lies where it was
        from cbor.decode import head

        buf = w.buf
        p = w.pos
        q = p + _BT - _STAMP
        n = self.flog.peek(memoryview(buf)[q:]) - _STAMP
        if n <= 0:
            return  # nothing left (a record gone bad): an empty Send, refused
        t = None
        if buf[q] == _WALL:
            t = _get_le(buf, q + 1, 4) + _get_le(buf, q + 5, 2) / 1000
        elif buf[q] == _TICKS:
            log = self.flog
            if (log.seq - log.count - log.boot_seq) & _SEQ_MASK < _HALF:  # this boot's
                t = time.ticks_diff(_get_le(buf, q + 1, 4), self.clock.ticks_ms()) / 1000
        pk = p + _BT
        end = pk + n
        if t is not None:
            try:
                count, r = head(buf, pk, end, _ARRAY)
                size, rest = head(buf, r, end, _MAP)
            except ValueError:  # not a pack of records: sent as it is, without bt
                t = None
        if t is None:
            move(buf, p, buf, pk, n)
            w.pos = p + n
            return
        w.put_array(count)
        w.put_map(size + 1)
        w.put_int(_BT_LABEL)
        w.put_float64(t)
        k = end - rest
        if w.pos != rest:
            if w.pos + k > len(buf):
                raise ValueError("logged report too large")
            move(buf, w.pos, buf, rest, k)
        w.pos += k

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
                if self._off():
                    return False  # the log went with Send
                c = self.ep.rx.code
                if not (isinstance(e, self._net_errors[1]) and c >> 5 == 4 and c != 0x84):
                    self._lost_contact(e)
                    break
                # refused (4.xx): popped, as it would block the log forever; lost unless
                # refused as a server without Send does (4.00, 4.04, 4.05)
                if not self.client.refused:
                    self.lost += 1
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
        w = self._wdt
        if w is not None:  # the watchdog, each window: fed when the loop never waits
            w.feed()
        if self.ex is not None:
            self.ex.compute(self.win, self.feat)
            if self.decider is not None:
                self.decider.decide(self.feat)
        if self.tree is not None:
            self.tree.watch.changed()  # observations of the window's objects

    def self_test(self):
        # a test boot's self-test (lwm2m/session.py): the sensor gave a window
        return self.sampler.seq > 0

    def _due(self):
        return time.ticks_diff(self.clock.ticks_ms(), self._last_report) >= self._report_ms

    def run(self, windows=-1):
        """The window loop; forever, or for ``windows`` more reports (tests)."""
        if not self._started and self.cfg.get("log_slots") and self.flog is None:
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
    import os

    node = None
    try:
        from storage import config

        path = sys.argv[1] if len(sys.argv) > 1 else "config.json"
        try:
            cfg = config.load(path)
            sensor = config.open_sensor(cfg)
            spec = config.feature_spec(cfg, sensor.rate)
        except config.ConfigError as e:
            print("%s: config error: %s" % (PREFIX, e))
            sys.exit(2)
        del config
        unload("storage.config")  # needed only at boot: give its RAM back
        if cfg.get("net") in ("wifi", "ethernet"):  # a hardware board's network first
            import netup

            s = sys.modules.get("ota.slots")  # the watchdog boot.py armed, if any
            netup.up(cfg, lambda m: print("%s: %s" % (PREFIX, m)),
                     wdt=getattr(s, "wdt", None))
            del netup
            unload("netup")
        try:
            node = Node(cfg, sensor, spec)  # the big buffers first, then the network code
            if os.getenv("AIOT_STOP") == "stdin":  # the simulator's way to stop a node
                node.stop_on(sys.stdin)
            if "model" in cfg or "anomaly" in cfg:
                from tinyml import infer
                from ota import models  # Object 9: the model slots (ota/models.py)

                models.boot(cfg)  # an activated slot's model in place of the config's
                node.use(infer.load(cfg, spec, node.ex.formats if node.ex else None,
                                    sensor.scale_m, sensor.scale_e))
                node.software = models.Software(node, spec)  # and its candidate, if any
            node.load()
        except ValueError as e:  # SamplerError, FeatureError, ModelError: window, spec, model
            print("%s: config error: %s" % (PREFIX, e))
            sys.exit(2)
        except MemoryError:
            # not a crash to restart from: this window or model does not fit in the heap
            print("%s: config error: 'window' %d%s does not fit in the heap"
                  % (PREFIX, cfg["window"], " with the models" if node else ""))
            sys.exit(2)
        from drivers.bus import SensorError

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
