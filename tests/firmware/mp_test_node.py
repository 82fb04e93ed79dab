# The node application (firmware/node.py, lwm2m/session.py, lwm2m/client.py) under MicroPython: the
# window loop against a simulated LwM2M server on a simulated lossy link (no real
# sleeping). Memory at the board's 64K is checked in mp_test_node_memory.py; this module
# and its simulated server need more heap to compile than the firmware does.
import struct

HEAPSIZE = "320K"  # with the test modules and simulated links (the node alone: _memory.py)
FIRMWARE = "mpy"

import node
from cbor.decode import loads
from coap.decode import Message
from coap.endpoint import Endpoint
from coap.msg import CoapTimeout
from lwm2m.client import Client
from storage import config
from mp_test_simlink import SimClock, SimLink, Rand, header, msg

SCALE_EXP = -12
RATE = 12000


def code(i):
    return ((i * 7919 + 123) % 65536) - 32768


def write_signal(path, n):
    with open(path, "wb") as f:
        f.write(b"AI16" + struct.pack("<BBHIb", 1, 1, 16, RATE, SCALE_EXP) + b"\0\0\0")
        for i in range(n):
            f.write(struct.pack("<h", code(i)))


def g(c):
    return c * 2.0**SCALE_EXP


_GOOD = {"endpoint": "n1", "gateway": "coap://127.0.0.1", "signal": "s.i16"}
NO_LOG = {"log_slots": 0}


# ---- a simulated LwM2M server ----


class Server:
    """Scripted LwM2M server on a SimLink: /rd, /rd/abc, /dp (requests parsed by coap)."""

    def __init__(self):
        self.log = []  # (time, method, path, queries, content format, payload)
        self.forget = False  # answer the next Update with 4.04
        self.forget_dp = False  # answer the next Send with 4.04
        self.dp_code = 0x44  # what every other Send is answered (4.05: a server without Send)
        self.down_until = -1  # drop everything before this time
        self.drop_dp = 0  # drop this many /dp transmissions
        self.registrations = 0
        self.expires = 0  # registration lifetime ends at this time (lt from Register)
        self.bad_locations = 0  # answer this many Registers with a non-UTF-8 Location-Path
        self.lt = 0

    def __call__(self, link, data):
        t = link.clock.t
        if t < self.down_until:
            return
        m = Message().decode(data)
        opts = [(m.onum[i], m.value(i)) for i in range(m.nopt)]
        path = "/".join(str(v, "utf-8") for n, v in opts if n == 11)
        q = [str(v, "utf-8") for n, v in opts if n == 15]
        i = m.find(12)
        cf = m.uint(i) if i >= 0 else None
        if path == "dp" and self.drop_dp:
            self.drop_dp -= 1
            return
        self.log.append((t, m.code, path, q, cf, bytes(m.data[m.pstart : m.n])))
        opts = b""
        if m.code == 2 and path == "rd":
            self.registrations += 1
            code = 0x41
            opts = b"\x82rd\x03abc"  # Location-Path "rd", "abc"
            if self.bad_locations:
                self.bad_locations -= 1
                opts = b"\x82rd\x01\xff"  # "rd", b"\xff"
            self.lt = int([x for x in q if x.startswith("lt=")][0][3:])
            self.expires = t + 1000 * self.lt
        elif m.code == 2 and path == "rd/abc":
            # a forgotten or expired registration is answered 4.04, as a real server does
            code = 0x84 if self.forget or t > self.expires else 0x44
            self.forget = False
            if code == 0x44:
                self.expires = t + 1000 * self.lt
        elif m.code == 4 and path == "rd/abc":
            code = 0x42
        elif m.code == 2 and path == "dp":
            code = 0x84 if self.forget_dp else self.dp_code
            self.forget_dp = False
        else:
            code = 0x84
        _, _, mid, tok = header(data)
        link.deliver(msg(2, code, mid, tok, opts), 3)

    def ops(self, code, path):
        return [e for e in self.log if e[1] == code and e[2] == path]


def _node(cfg_extra=None, server=None, signal_len=1000):
    write_signal("s.i16", signal_len)
    cfg = dict(_GOOD, lifetime=10, window=16, report_ms=1000)
    if cfg_extra:
        cfg.update(cfg_extra)
    cfg = config.check(cfg)
    c = SimClock(1000)
    srv = server or Server()
    link = SimLink(c, srv)
    n = node.Node(cfg, config.open_sensor(cfg), transport=link, clock=c, rand=Rand(3))
    return n, srv, link, c


def _pack_values(payload):
    # {path: value} from our pack, resolving bn + n as SenML does
    pack = loads(payload)
    out = {}
    bn = ""
    for rec in pack:
        bn = rec.get(-2, bn)
        out[bn + rec[0]] = rec[2]
    return out


def _expected(offset, n, L=1000):
    w = [code((offset + i) % L) for i in range(n)]
    return g(w[-1]), g(min(w)), g(max(w))


def test_register_send_update_on_simulated_server():
    n, srv, link, c = _node()
    n.run(windows=25)
    reg = srv.log[0]
    if reg[1:5] != (2, "rd", ["ep=n1", "lt=10", "lwm2m=1.1", "b=U"], 40):
        raise AssertionError(reg)
    if reg[5] != (b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</4/0>,</5/0>,</16>,</3313/0>,'
                  b"</33000/0>"):
        raise AssertionError(reg[5])
    if n.client.location != "/rd/abc":
        raise AssertionError(n.client.location)
    sends = srv.ops(2, "dp")
    if len(sends) != 25:
        raise AssertionError("%d sends" % len(sends))
    for k, (t, _, _, _, cf, payload) in enumerate(sends):
        if cf != 112:
            raise AssertionError("content format %r" % cf)
        v = _pack_values(payload)
        x, lo, hi = _expected(16 * k, 16)
        # a replay waits for the reader: one window per report, never a flag
        want = {"/3313/0/5702": x, "/33000/0/0": k, "/33000/0/1": 16 * k, "/33000/0/2": 16,
                "/33000/0/3": RATE, "/33000/0/4": lo, "/33000/0/5": hi, "/33000/0/6": 0,
                "/33000/0/7": 0, "/33000/0/8": 0, "/33000/0/9": 0, "/33000/0/10": 0,
                "/33000/0/11": 1}
        if v != want:
            raise AssertionError("window %d: %r != %r" % (k, v, want))
        if k and t - sends[k - 1][0] < 1000:
            raise AssertionError("reports %d ms apart" % (t - sends[k - 1][0]))
    # registration kept alive: Update every 5 s (lifetime 10 s), never a gap >= lifetime
    alive = [e[0] for e in srv.log if e[1] == 2 and e[2] in ("rd", "rd/abc")]
    if len(alive) < 4:
        raise AssertionError("only %d register/update" % len(alive))
    for a, b in zip(alive, alive[1:]):
        if not 5000 <= b - a < 10000:
            raise AssertionError("update gap %d ms" % (b - a))
    n.shutdown()
    if srv.log[-1][1:3] != (4, "rd/abc") or n.client.registered:
        raise AssertionError(srv.log[-1])


def test_hop_smaller_than_window_slides():
    n, srv, link, c = _node({"window": 32, "hop": 8, "report_ms": 0}, signal_len=50)
    n.run(windows=12)  # wraps the 50-sample file
    for k, e in enumerate(srv.ops(2, "dp")):
        v = _pack_values(e[5])
        x, lo, hi = _expected(8 * k, 32, 50)
        if (v["/33000/0/1"], v["/33000/0/2"], v["/3313/0/5702"], v["/33000/0/4"],
                v["/33000/0/5"]) != (8 * k, 32, x, lo, hi):
            raise AssertionError("window %d: %r" % (k, v))


def test_update_404_registers_again():
    n, srv, link, c = _node()
    n.run(windows=3)
    srv.forget = True
    n.run(windows=12)
    if srv.registrations != 2:
        raise AssertionError("registrations %d" % srv.registrations)
    # the re-registration directly follows the rejected update; sends go on
    codes = [(e[1], e[2]) for e in srv.log]
    i = codes.index((2, "rd/abc"))
    if codes[i + 1] != (2, "rd") or len(srv.ops(2, "dp")) != 15:
        raise AssertionError(codes)


def test_send_404_registers_again_and_resends_the_report():
    n, srv, link, c = _node()
    n.run(windows=3)
    srv.forget_dp = True  # the gateway lost the registration (e.g. expired while it was down)
    n.run(windows=3)
    if srv.registrations != 2:
        raise AssertionError("registrations %d" % srv.registrations)
    ops = [(e[1], e[2]) for e in srv.log]
    if ops[-5:] != [(2, "dp"), (2, "rd"), (2, "dp"), (2, "dp"), (2, "dp")]:
        raise AssertionError(ops)
    seqs = [_pack_values(e[5])["/33000/0/0"] for e in srv.ops(2, "dp")]
    if seqs != [0, 1, 2, 3, 3, 4, 5]:  # window 3 refused once, then delivered
        raise AssertionError(seqs)


# Without a flash log (log_slots 0) the node waits for its registration and drops a report
# the gateway does not acknowledge; with one, see the "flash log" tests further down.


def test_gateway_unreachable_at_start_retries_with_bounded_backoff():
    srv = Server()
    srv.down_until = 400000  # 400 s of nothing
    n, srv, link, c = _node(NO_LOG, server=srv)
    n.run(windows=2)
    if len(srv.ops(2, "dp")) != 2 or srv.registrations != 1:
        raise AssertionError(srv.log)
    # first transmissions of each Register attempt (retransmissions are the same bytes)
    starts = []
    last = None
    for t, d in link.sent:
        if d != last and b"</1/0>" in d:  # a Register (retransmissions repeat the bytes)
            starts.append(t)
        last = d
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    if len(gaps) < 3:
        raise AssertionError("attempts %s" % starts)
    for gap in gaps:
        # one attempt (<= 93 s of retransmissions) plus a back-off of at most 75 s
        if not 45000 <= gap <= 93000 + 75000:
            raise AssertionError("gap %d ms" % gap)


def test_send_timeout_is_survived_and_later_sends_arrive():
    srv = Server()
    n, srv, link, c = _node(NO_LOG, server=srv)
    n.run(windows=2)
    srv.drop_dp = 5  # the next Send is lost completely (1 + 4 retransmissions)
    n.run(windows=3)
    seqs = [_pack_values(e[5])["/33000/0/0"] for e in srv.ops(2, "dp")]
    if seqs != [0, 1, 3, 4]:
        raise AssertionError(seqs)


def test_update_timeout_past_lifetime_registers_again():
    srv = Server()
    n, srv, link, c = _node(dict(NO_LOG, report_ms=2000), server=srv)
    n.run(windows=2)
    srv.down_until = c.t + 100000  # longer than the lifetime
    n.run(windows=8)
    if srv.registrations < 2:
        raise AssertionError("no re-registration: %d" % srv.registrations)


def test_shutdown_is_bounded_when_server_is_gone():
    n, srv, link, c = _node()
    n.run(windows=1)
    srv.down_until = c.t + 10**9
    t0 = c.t
    n.shutdown()
    if c.t - t0 > 5000 or n.client.registered:
        raise AssertionError("shutdown took %d ms" % (c.t - t0))


def test_register_message_exact_bytes():
    c = SimClock(0)
    link = SimLink(c)
    ep = Endpoint(link, c, Rand(5))
    cl = Client(ep, "node-1", 10)
    try:
        cl.register(deadline_ms=1)
    except CoapTimeout:
        pass
    d = link.sent[0][1]
    t, code_, mid, tok = header(d)
    # header: CON POST, TKL 4; Uri-Path "rd" (delta 11, len 2) b2; Content-Format 40
    # (delta 1, len 1) 11 28; Uri-Query (delta 3) "ep=node-1" (len 9) 39, then delta 0:
    # "lt=10" 05, "lwm2m=1.1" 09, "b=U" 03; payload marker; link-format
    want = (bytes([0x44, 0x02, mid >> 8, mid & 0xFF]) + tok + b"\xb2rd\x11\x28\x39ep=node-1"
            + b"\x05lt=10\x09lwm2m=1.1\x03b=U\xff</1/0>,</3/0>,</3313/0>,</33000/0>")
    if d != want or len(tok) != 4:
        raise AssertionError("%r\n%r" % (d, want))


def test_update_interval_is_before_lifetime():
    # min(lifetime * 0.75, lifetime - 10 s), at least 5 s
    ep = Endpoint(SimLink(SimClock()), SimClock(), Rand(1))
    for lt, ms in ((10, 5000), (15, 5000), (20, 10000), (40, 30000), (60, 45000), (100, 75000),
                   (86400, 64800000)):
        got = Client(ep, "x", lt).interval_ms
        if got != ms:
            raise AssertionError((lt, got))


def test_garbage_location_path_is_a_failed_registration_not_a_crash():
    srv = Server()
    srv.bad_locations = 2
    n, srv, link, c = _node(NO_LOG, server=srv)
    n.run(windows=1)
    if srv.registrations != 3 or n.client.location != "/rd/abc" or len(srv.ops(2, "dp")) != 1:
        raise AssertionError((srv.registrations, n.client.location))


def test_features_are_reported_with_the_window():
    from array import array
    from dsp.features import Extractor

    write_signal("s.i16", 5000)
    cfg = config.check(dict(_GOOD, lifetime=10, window=256, report_ms=0))
    sensor = config.open_sensor(cfg)
    spec = config.feature_spec(cfg, sensor.rate)
    if (spec["rate"], spec["window"], spec["hop"], spec["fft"]) != (RATE, 256, 256, 256):
        raise AssertionError(spec)
    c = SimClock(1000)
    srv = Server()
    n = node.Node(cfg, sensor, spec, transport=SimLink(c, srv), clock=c, rand=Rand(3))
    n.run(windows=4)
    if not srv.log[0][5].endswith(b",</16>,</3313/0>,</33000/0>,</33001/0>"):
        raise AssertionError(srv.log[0][5])
    ex = Extractor(spec)
    out = array("i", bytes(4 * len(ex.names)))
    win = array("h", bytes(512))
    sends = srv.ops(2, "dp")
    for k, e in enumerate(sends):
        v = _pack_values(e[5])
        for i in range(256):
            win[i] = code((256 * k + i) % 5000)
        ex.compute(win, out)
        for i, (frac, unit) in enumerate(ex.formats):
            p = {"code": 1, "code^2": 2}.get(unit, 0)
            want = out[i] * 2.0 ** (p * SCALE_EXP - frac)
            got = v["/33001/0/%d" % i]
            if abs(got - want) > abs(want) * 2.0**-23:  # float32 on the wire
                raise AssertionError("window %d %s: %r != %r" % (k, ex.names[i], got, want))
    if len(sends) != 4 or len(ex.names) != 20:
        raise AssertionError((len(sends), ex.names))


def test_feature_config_errors_name_the_problem():
    write_signal("s.i16", 500)
    cases = (
        ({"features": 3}, "'features' must be a feature spec object or false"),
        ({"features": {"rate": 8000, "features": ["rms"]}}, "'features' rate 8000 differs"),
        ({"window": 64, "features": {"window": 128, "features": ["rms"]}},
         "'features' window 128 differs"),
    )
    for extra, msg in cases:
        cfg = config.check(dict(_GOOD, **extra))
        try:
            config.feature_spec(cfg, RATE)
        except config.ConfigError as e:
            if not str(e).startswith(msg):
                raise AssertionError(str(e))
        else:
            raise AssertionError("accepted %r" % extra)
    if config.feature_spec(config.check(dict(_GOOD, features=False)), RATE) is not None:
        raise AssertionError("features false")
    # the extractor refuses what the spec cannot do, naming the field
    cfg = config.check(dict(_GOOD, features={"features": ["rms", "nope"]}))
    try:
        node.Node(cfg, config.open_sensor(cfg), config.feature_spec(cfg, RATE),
                  transport=SimLink(SimClock(0), Server()), clock=SimClock(0))
    except ValueError as e:
        if "nope" not in str(e):
            raise AssertionError(str(e))
    else:
        raise AssertionError("unknown feature accepted")


def test_realtime_sensor_stalled_by_the_network_reports_overrun_not_a_crash():
    # a live sensor (real-time replay on the simulated clock) keeps producing while a Send
    # is stuck in CoAP retransmissions: the samples beyond its 1 s backlog are lost, and
    # the next report says so (flag 1 overrun, 2 dropped: the ring had to skip ahead)
    from drivers import simsensor

    write_signal("s.i16", 50000)
    cfg = config.check(dict(_GOOD, lifetime=600, window=256, report_ms=0, realtime=True))
    c = SimClock(1000)
    srv = Server()
    sen = simsensor.ReplayAdapter("s.i16", True, clock=c)
    n = node.Node(cfg, sen, None, transport=SimLink(c, srv), clock=c, rand=Rand(3))
    n.run(windows=4)
    first = [_pack_values(e[5]) for e in srv.ops(2, "dp")]
    if any(v["/33000/0/6"] for v in first):
        raise AssertionError("flags while keeping up: %r" % first)
    srv.drop_dp = 1  # one lost transmission: the report waits 2-3 s for its retransmission
    n.run(windows=40)
    after = [_pack_values(e[5]) for e in srv.ops(2, "dp")][5:]
    if not after[0]["/33000/0/6"] & 1 or after[0]["/33000/0/7"] < 12000:  # > 1 s lost
        raise AssertionError(after[0])
    # catching up, the ring skips what it cannot hold (flag 2, counted), then the loop
    # is back to clean windows (flag 4 = saturated: this signal has -32768 codes)
    if not any(v["/33000/0/6"] & 2 and v["/33000/0/8"] for v in after):
        raise AssertionError("no dropped window while catching up")
    if any(v["/33000/0/6"] & 3 for v in after[-5:]):
        raise AssertionError(after[-5:])


class FlakySensor:
    """A live sensor that stops answering: read() counts bus errors and returns nothing
    while ``broken``, like the drivers do (board.py's common interface)."""

    def __init__(self, clock):
        self.clock = clock
        self.rate = 1000
        self.scale_m = 1
        self.scale_e = -12
        self.full_scale = 32767
        self.live = True
        self.overruns = 0
        self.errors = 0
        self.broken = False
        self._t = 0

    def start(self):
        self._t = self.clock.ticks_ms()

    def stop(self):
        pass

    def read(self, buf, pos, n):
        due = self.clock.ticks_ms() - self._t  # one sample per ms
        if self.broken:
            self.errors += 1
            self._t += due
            return 0
        k = min(n, due)
        for i in range(k):
            buf[pos + i] = i
        self._t += k
        return k


def test_sensor_that_stops_answering_is_logged_and_flagged_not_a_crash():
    write_signal("s.i16", 100)
    cfg = config.check(dict(_GOOD, lifetime=600, window=64, report_ms=0, features=False))
    c = SimClock(1000)
    srv = Server()
    sen = FlakySensor(c)
    n = node.Node(cfg, sen, None, transport=SimLink(c, srv), clock=c, rand=Rand(3))
    n.run(windows=2)
    sen.broken = True
    # the loop waits for samples (serving the network: Updates go on), logging the
    # failure; here it is cut short by repairing the sensor from the clock
    c0 = c.t

    class Repair:
        def ticks_ms(self):
            if c.t - c0 > 5000:
                sen.broken = False
            return c.t

        def sleep_ms(self, ms):
            c.t += ms

    n.clock = Repair()
    n.run(windows=1)
    v = _pack_values(srv.ops(2, "dp")[-1][5])
    if not v["/33000/0/6"] & 8 or v["/33000/0/10"] < 10:
        raise AssertionError(v)
