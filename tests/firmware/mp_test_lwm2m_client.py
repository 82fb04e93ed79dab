# The node's LwM2M Device Management & Service Enablement interface (firmware/lwm2m/tree.py,
# lwm2m/objects.py, lwm2m/attrs.py, report.py) under MicroPython: a simulated LwM2M server sends
# Read / Write / Execute / Create / Delete / Discover / Write-Attributes / Observe to a
# running node (node.Node on a simulated link and clock) and checks the answers byte
# for byte or decoded. Test names carry the OMA ETS interoperability case they follow
# (OMA-ETS-LightweightM2M-V1_1 "int-NNN", IDs as Zephyr's and Wakaama's conformance
# suites use them).
HEAPSIZE = "320K"  # with the test modules and simulated links (the node alone: _memory.py)
FIRMWARE = "mpy"

from cbor.decode import loads
from cbor.encode import Writer
from coap.decode import Message
from coap.msg import MessageWriter
from mp_test_node import _node, Server
from mp_test_simlink import header

CON = 0
ACK = 2
GET = 1
POST = 2
PUT = 3
DELETE = 4


class DM(Server):
    """The scripted server of mp_test_node plus requests to the node; answers the
    node's requests as before, and keeps the node's answers to ours."""

    def __init__(self):
        Server.__init__(self)
        self.answers = {}  # mid -> decoded answer
        self.notes = []  # notifications (CON/NON 2.05 with Observe)
        self.mid = 0x7000

    def __call__(self, link, data):
        t = (data[0] >> 4) & 3
        if t == ACK and data[1] or t != ACK and data[1] >> 5 in (2, 4, 5):
            m = Message().decode(data)
            if t != ACK:  # a notification (the node sends nothing else as a response)
                self.notes.append((link.clock.t, m, bytes(data)))
                if t == CON:
                    link.deliver(bytes([0x60, 0, data[2], data[3]]), 1)
                return
            mid = (data[2] << 8) | data[3]
            if mid >= 0x7000:
                self.answers[mid] = m
                return
        Server.__call__(self, link, data)

    def request(self, link, code, path, accept=-1, cf=-1, payload=b"", query=(),
                observe=-1, token=b"\x51\x52", block1=-1):
        self.mid += 1
        w = MessageWriter(bytearray(600))
        w.begin(CON, code, self.mid, token)
        if observe >= 0:
            w.option_uint(6, observe)
        for s in path.split("/"):
            if s:
                w.option(11, s)
        if cf >= 0:
            w.option_uint(12, cf)
        for q in query:
            w.option(15, q)
        if accept >= 0:
            w.option_uint(17, accept)
        if block1 >= 0:
            w.option_uint(27, block1)
        if payload:
            w.payload(payload)
        link.deliver(bytes(w.buf[: w.pos]), 5)
        return self.mid


def _start(extra=None):
    dm = DM()
    n, srv, link, c = _node(extra, dm)
    n.run(windows=1)
    return n, dm, link, c


def ask(n, dm, link, *a, **kw):
    mid = dm.request(link, *a, **kw)
    n.run(windows=1)
    m = dm.answers.get(mid)
    if m is None:
        raise AssertionError("no answer to %s" % (a,))
    return m


def body(m):
    return bytes(m.data[m.pstart : m.n])


def opt(m, num):
    i = m.find(num)
    return -1 if i < 0 else m.uint(i)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def senml(m):
    out = {}
    bn = ""
    for rec in loads(body(m)):
        bn = rec.get(-2, bn)
        name = bn + rec.get(0, "")
        for k in (2, 3, 4, 8, "vlo"):
            if k in rec:
                out[name] = rec[k]
    return out


def test_int_101_registration_lists_object_instances_with_root_link():
    n, dm, link, c = _start()
    reg = dm.ops(2, "rd")[0]
    check(reg[3] == ["ep=n1", "lt=10", "lwm2m=1.1", "b=U"], reg[3])
    want = (b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</4/0>,</5/0>,</16>,</3313/0>,'
            b"</33000/0>")
    check(reg[5] == want, reg[5])


def test_int_222_223_224_201_read_object_instance_resource():
    n, dm, link, c = _start()
    m = ask(n, dm, link, GET, "/3/0")
    check(m.code == 0x45 and opt(m, 12) == 112, (m.code, opt(m, 12)))
    v = senml(m)
    check(v["/3/0/0"] == "aiotkit" and v["/3/0/2"] == "n1" and v["/3/0/16"] == "U", v)
    check(v["/3/0/11/0"] == 0 and "/3/0/4" not in v, v)
    m = ask(n, dm, link, GET, "/1")
    v = senml(m)
    check(v == {"/1/0/0": 1, "/1/0/1": 10, "/1/0/2": 0, "/1/0/3": 0, "/1/0/6": False,
                "/1/0/7": "U"}, v)
    m = ask(n, dm, link, GET, "/3/0/0", accept=0)
    check(m.code == 0x45 and opt(m, 12) == 0 and body(m) == b"aiotkit", body(m))
    m = ask(n, dm, link, GET, "/1/0/1", accept=0)
    check(body(m) == b"10", body(m))
    m = ask(n, dm, link, GET, "/3/0/11/0")  # int-225: a resource instance
    check(senml(m) == {"/3/0/11/0": 0}, senml(m))


def test_read_errors_unknown_path_unacceptable_format_and_security():
    n, dm, link, c = _start()
    for path, accept, want in (("/9", -1, 0x84), ("/3/1", -1, 0x84), ("/3/0/99", -1, 0x84),
                               ("/3/0/11/1", -1, 0x84), ("/3/0/0", 42, 0x86),
                               ("/3/0/0", 60, 0x86), ("/3/0", 0, 0x86), ("/3/0/4", -1, 0x85),
                               ("/0/0", -1, 0x81), ("/x", -1, 0x84)):
        m = ask(n, dm, link, GET, path, accept=accept)
        check(m.code == want, (path, accept, hex(m.code)))


def _updates(dm):
    return [e for e in dm.log if e[1] == 2 and e[2] == "rd/abc"]


def test_int_227_107_write_lifetime_sends_update_with_lt():
    n, dm, link, c = _start()
    m = ask(n, dm, link, PUT, "/1/0/1", cf=0, payload=b"30")
    check(m.code == 0x44, hex(m.code))
    n.run(windows=1)
    u = _updates(dm)
    check(len(u) == 1 and u[0][3] == ["lt=30"] and u[0][5] == b"", u)
    check(n.client.lifetime == 30 and n.client.interval_ms == 20000, n.client.interval_ms)
    m = ask(n, dm, link, GET, "/1/0/1", accept=0)
    check(body(m) == b"30", body(m))


def test_int_256_write_failures_read_only_wrong_type_unknown():
    n, dm, link, c = _start()
    bad_type = Writer(bytearray(64))
    bad_type.put_array(1)
    bad_type.put_map(2)
    bad_type.put_int(0)
    bad_type.put_text("/1/0/1")
    bad_type.put_int(3)
    bad_type.put_text("sixty")
    bt = bytes(bad_type.buf[: bad_type.pos])
    for code, path, cf, payload, want in (
            (PUT, "/1/0/0", 0, b"5", 0x85),  # read-only
            (PUT, "/1/0/1", 0, b"abc", 0x80),  # not an integer
            (PUT, "/1/0/1", 0, b"5", 0x80),  # below the lifetime's range
            (PUT, "/1/0/6", 0, b"2", 0x80),  # a boolean is 0 or 1
            (PUT, "/1/0/7", 0, b"T", 0x80),  # binding the node does not have
            (PUT, "/1/0/9", 0, b"1", 0x84),  # no such resource
            (POST, "/1/0", 112, bt, 0x80),  # SenML value of the wrong type
            (POST, "/1/0", 112, b"\xff", 0x80),  # not CBOR
            (POST, "/1/0", 60, b"\x01", 0x8F),  # not a format the node takes
            (PUT, "/1", 112, bt, 0x85),  # Write on an object
            (PUT, "/3/0/13", 0, b"-4", 0x80)):
        m = ask(n, dm, link, code, path, cf=cf, payload=payload)
        check(m.code == want, (path, payload, hex(m.code), want))
    m = ask(n, dm, link, GET, "/1/0/0", accept=0)
    check(body(m) == b"1", body(m))


def test_int_226_233_partial_update_and_replace_in_senml_cbor():
    n, dm, link, c = _start()
    w = Writer(bytearray(128))
    w.put_array(2)
    w.put_map(3)
    w.put_int(-2)
    w.put_text("/1/0/")
    w.put_int(0)
    w.put_text("2")
    w.put_int(2)
    w.put_int(7)
    w.put_map(2)
    w.put_int(0)
    w.put_text("6")
    w.put_int(4)
    w.put_bool(True)
    m = ask(n, dm, link, POST, "/1/0", cf=112, payload=bytes(w.buf[: w.pos]))
    check(m.code == 0x44, hex(m.code))
    v = senml(ask(n, dm, link, GET, "/1/0"))
    check(v["/1/0/2"] == 7 and v["/1/0/6"] is True and v["/1/0/1"] == 10, v)
    m = ask(n, dm, link, PUT, "/3/0/13", cf=0, payload=b"1700000000")
    check(m.code == 0x44, hex(m.code))
    t = senml(ask(n, dm, link, GET, "/3/0/13"))["/3/0/13"]
    check(1700000000 <= t < 1700000100, t)


def test_int_104_241_execute_update_trigger_reboot_and_not_executable():
    n, dm, link, c = _start()
    m = ask(n, dm, link, POST, "/1/0/8")
    check(m.code == 0x44, hex(m.code))
    u = _updates(dm)
    check(len(u) == 1 and u[0][3] == [] and u[0][5] == b"", u)
    for path, want in (("/1/0/1", 0x85), ("/5/0/2", 0x85), ("/3/0/5", 0x84), ("/3/0", 0x80)):
        m = ask(n, dm, link, POST, path)
        check(m.code == want, (path, hex(m.code)))
    dm.request(link, POST, "/3/0/4")
    try:
        n.run(windows=1)
    except SystemExit as e:
        check(e.args[0] == 3, e.args)
    else:
        raise AssertionError("no reboot")


def test_firmware_update_state_machine():
    # Core E.6: a coap:// Package URI starts a download (the transfer itself is
    # tests/e2e/test_ota_update.py): this server has no such package (4.04), so the node
    # is back to Idle with result 7, invalid URI; any other scheme is result 9; "" resets;
    # Update before Downloaded is 4.05; a Package written (push) is taken
    n, dm, link, c = _start()
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/3"] == 0 and v["/5/0/5"] == 0 and v["/5/0/9"] == 2, v)  # pull and push
    check(ask(n, dm, link, PUT, "/5/0/1", cf=0, payload=b"http://x/fw").code == 0x44, "uri")
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/1"] == "http://x/fw" and v["/5/0/3"] == 0 and v["/5/0/5"] == 9, v)
    check(ask(n, dm, link, PUT, "/5/0/1", cf=0, payload=b"coap://gw/fw").code == 0x44, "c")
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/3"] == 0 and v["/5/0/5"] == 7, v)
    check(ask(n, dm, link, POST, "/5/0/2").code == 0x85, "update while idle")
    # a pushed Package is taken (checked as a download is, once the answer is out)
    check(ask(n, dm, link, PUT, "/5/0/0", cf=42, payload=b"\x01").code == 0x44, "push")
    check(ask(n, dm, link, PUT, "/5/0/1", cf=0, payload=b"").code == 0x44, "reset")
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/1"] == "" and v["/5/0/3"] == 0 and v["/5/0/5"] == 0, v)


def test_a_pushed_package_is_stored_block_by_block_within_the_slot():
    # Package (/5/0/0) pushed with Block1: each 256-byte block goes to the slot's image
    # file as it comes (2.31 Continue, never reassembled in RAM); a block beyond the slot
    # (config ota_slot) is 4.13 with /5/0/5 2; one out of order 4.08
    n, dm, link, c = _start({"ota_slot": 4096})
    blk = bytes(range(256))
    for i in range(16):
        m = ask(n, dm, link, PUT, "/5/0/0", cf=42, payload=blk, block1=(i << 4) | 8 | 4)
        check(m.code == 0x5F, "block %d: %x" % (i, m.code))
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/3"] == 1, v)  # Downloading
    with open("slots/a.img", "rb") as f:
        for i in range(17):
            check(f.read(256) == (blk if i < 16 else b""), "stored as it came: %d" % i)
    m = ask(n, dm, link, PUT, "/5/0/0", cf=42, payload=blk, block1=(16 << 4) | 8 | 4)
    check(m.code == 0x8D, "beyond the slot: %x" % m.code)
    v = senml(ask(n, dm, link, GET, "/5/0"))
    check(v["/5/0/3"] == 0 and v["/5/0/5"] == 2, v)
    m = ask(n, dm, link, PUT, "/5/0/0", cf=42, payload=blk, block1=(3 << 4) | 8 | 4)
    check(m.code == 0x88, "out of order: %x" % m.code)


def _portfolio(iid, vals):
    w = Writer(bytearray(200))
    w.put_array(len(vals))
    for k, s in enumerate(vals):
        w.put_map(2)
        w.put_int(0)
        w.put_text("/16/%d/0/%d" % (iid, k))
        w.put_int(3)
        w.put_text(s)
    return bytes(w.buf[: w.pos])


def test_int_228_create_write_resource_instance_delete_portfolio():
    n, dm, link, c = _start()
    m = ask(n, dm, link, POST, "/16", cf=112, payload=_portfolio(2, ["a", "b"]))
    check(m.code == 0x41, hex(m.code))
    loc = [bytes(m.value(i)) for i in range(m.nopt) if m.onum[i] == 8]
    check(loc == [b"16", b"2"], loc)
    n.run(windows=1)
    u = _updates(dm)
    check(len(u) == 1 and u[0][4] == 40 and b"</16/2>" in u[0][5], u)
    check(senml(ask(n, dm, link, GET, "/16")) == {"/16/2/0/0": "a", "/16/2/0/1": "b"}, "r")
    m = ask(n, dm, link, PUT, "/16/2/0/0", cf=0, payload=b"test")
    check(m.code == 0x44, hex(m.code))
    check(body(ask(n, dm, link, GET, "/16/2/0/0", accept=0)) == b"test", "write ri")
    check(ask(n, dm, link, POST, "/16", cf=112, payload=_portfolio(2, ["x"])).code == 0x80,
          "an instance that exists")
    m = ask(n, dm, link, POST, "/16")  # no payload: the node picks the id
    check([bytes(m.value(i)) for i in range(m.nopt) if m.onum[i] == 8] == [b"16", b"0"], m)
    check(ask(n, dm, link, DELETE, "/16/2").code == 0x42, "delete")
    check(ask(n, dm, link, DELETE, "/16/2").code == 0x84, "delete twice")
    check(ask(n, dm, link, DELETE, "/3/0").code == 0x85, "delete device")
    check(ask(n, dm, link, POST, "/3").code == 0x85, "create device")
    n.run(windows=1)
    u = _updates(dm)
    check(u[-1][5].endswith(b"</5/0>,</16/0>,</3313/0>,</33000/0>"), u[-1][5])


def test_int_260_261_discover_and_write_attributes():
    n, dm, link, c = _start()
    m = ask(n, dm, link, GET, "/3", accept=40)
    check(m.code == 0x45 and opt(m, 12) == 40, hex(m.code))
    d = body(m)
    check(d.startswith(b"</3>,</3/0>,</3/0/0>,</3/0/1>,") and b"</3/0/11>;dim=1" in d, d)
    for q, want in ((("pmin=10",), 0x44), (("pmax=200",), 0x44), (("gt=1",), 0x80),
                    (("pmin=300",), 0x80), (("bogus=1",), 0x80), (("pmin=x",), 0x80)):
        m = ask(n, dm, link, PUT, "/3", query=q)
        check(m.code == want, (q, hex(m.code)))
    check(ask(n, dm, link, PUT, "/3/0/11/0", query=("pmax=100", "epmin=1")).code == 0x44, "ri")
    check(ask(n, dm, link, PUT, "/3/0", query=("pmax=320",)).code == 0x44, "instance")
    check(ask(n, dm, link, PUT, "/3/0/0", query=("gt=5",)).code == 0x80, "gt on a string")
    check(ask(n, dm, link, PUT, "/3/0/10", query=("lt=5", "gt=1")).code == 0x80, "lt > gt")
    check(ask(n, dm, link, PUT, "/3/0/10", query=("lt=1", "gt=5", "st=2")).code == 0x80, "st")
    check(ask(n, dm, link, PUT, "/3/0/10", query=("lt=1", "gt=6", "st=2")).code == 0x44, "ok")
    check(ask(n, dm, link, PUT, "/3/0/10", query=("epmin=5", "epmax=2")).code == 0x80, "ep")
    d = body(ask(n, dm, link, GET, "/3", accept=40))
    check(d.startswith(b"</3>;pmin=10;pmax=200,</3/0>;pmax=320,</3/0/0>,"), d)
    check(b"</3/0/10>;gt=6;lt=1;st=2," in d, d)
    d = body(ask(n, dm, link, GET, "/3/0/11", accept=40))
    check(d == b"</3/0/11>;dim=1;pmin=10;pmax=320,</3/0/11/0>;pmax=100;epmin=1", d)
    check(ask(n, dm, link, PUT, "/3", query=("pmin",)).code == 0x44, "remove pmin")
    d = body(ask(n, dm, link, GET, "/3/0/11", accept=40))
    check(d == b"</3/0/11>;dim=1;pmax=320,</3/0/11/0>;pmax=100;epmin=1", d)
    check(ask(n, dm, link, GET, "/3/0/11/0", accept=40).code == 0x80, "discover ri")
    check(ask(n, dm, link, PUT, "/0/0", query=("pmin=1",)).code == 0x81, "int-221 security")


def _observe(n, dm, link, path, token, query=None):
    if query:
        check(ask(n, dm, link, PUT, path, query=query).code == 0x44, query)
    m = ask(n, dm, link, GET, path, observe=0, token=token)
    check(m.code == 0x45 and opt(m, 6) >= 0, (hex(m.code), opt(m, 6)))
    return m


def _seqs(dm, token, since=0):
    out = []
    for t, m, raw in dm.notes[since:]:
        if bytes(m.data[4 : 4 + m.tkl]) == token:
            out.append(senml(m).get("/33000/0/0"))
    return out


def test_int_301_observe_resource_notifies_each_change_until_cancelled():
    n, dm, link, c = _start()
    m = _observe(n, dm, link, "/33000/0/0", b"\x01")
    first = senml(m)["/33000/0/0"]
    k = len(dm.notes)
    n.run(windows=3)
    got = _seqs(dm, b"\x01", k)
    check(got == [first + 1, first + 2, first + 3] or got == [first + 1, first + 2], got)
    obs = [opt(x[1], 6) for x in dm.notes[k:]]
    check(obs == sorted(obs) and len(set(obs)) == len(obs), obs)  # sequence goes up
    m = ask(n, dm, link, GET, "/33000/0/0", observe=1, token=b"\x01")  # cancel
    check(m.code == 0x45 and opt(m, 6) < 0, opt(m, 6))
    k = len(dm.notes)
    n.run(windows=3)
    check(len(dm.notes) == k, dm.notes[k:])


def test_observe_unchanged_value_is_not_notified_until_pmax():
    n, dm, link, c = _start()
    _observe(n, dm, link, "/33000/0/2", b"\x02")  # window length: never changes
    k = len(dm.notes)
    n.run(windows=4)
    check(len(dm.notes) == k, "notified an unchanged value")
    check(ask(n, dm, link, PUT, "/33000/0/2", query=("pmax=2",)).code == 0x44, "pmax")
    t0 = c.t
    k = len(dm.notes)
    n.run(windows=6)
    times = [t for t, m, raw in dm.notes[k:]]
    check(len(times) >= 2, times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(all(1990 <= g <= 2100 for g in gaps), (t0, times))


def test_observe_pmin_spaces_notifications():
    n, dm, link, c = _start()
    _observe(n, dm, link, "/33000/0/0", b"\x03", ("pmin=3",))
    k = len(dm.notes)
    n.run(windows=9)
    times = [t for t, m, raw in dm.notes[k:]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(len(times) >= 2 and all(g >= 3000 for g in gaps), times)


def test_observe_step_and_thresholds():
    n, dm, link, c = _start()
    m = _observe(n, dm, link, "/33000/0/0", b"\x04", ("st=3",))
    s0 = senml(m)["/33000/0/0"]
    k = len(dm.notes)
    n.run(windows=7)
    got = _seqs(dm, b"\x04", k)
    check(got == [s0 + 3, s0 + 6], (s0, got))
    ask(n, dm, link, GET, "/33000/0/0", observe=1, token=b"\x04")
    # gt: only when the value crosses it (here once, upwards)
    s = senml(ask(n, dm, link, GET, "/33000/0/0"))["/33000/0/0"]
    gt = "gt=%d.5" % (s + 3)
    m = _observe(n, dm, link, "/33000/0/0", b"\x05", ("st", gt))
    k = len(dm.notes)
    n.run(windows=8)
    got = _seqs(dm, b"\x05", k)
    check(len(got) == 1 and got[0] in (s + 4, s + 5), (s, got))


def test_observe_object_instance_and_delete_ends_observation():
    n, dm, link, c = _start()
    m = _observe(n, dm, link, "/33000/0", b"\x06")
    # 12, 13: the flash log's counters; 14: Send refused (a server without Send)
    check(len(senml(m)) == 15 and senml(m)["/33000/0/14"] is False, senml(m))
    k = len(dm.notes)
    n.run(windows=2)
    check(len(dm.notes) - k >= 1, "no notification of the instance")
    # a created Portfolio instance, observed, then deleted: the observer gets 4.04
    ask(n, dm, link, POST, "/16", cf=112, payload=_portfolio(1, ["a"]))
    _observe(n, dm, link, "/16/1", b"\x07")
    k = len(dm.notes)
    check(ask(n, dm, link, DELETE, "/16/1").code == 0x42, "delete")
    n.run(windows=1)
    ends = [m.code for t, m, raw in dm.notes[k:] if bytes(m.data[4:5]) == b"\x07"]
    check(ends == [0x84], ends)


def test_observe_pmax_without_changes_device_time():
    n, dm, link, c = _start({"report_ms": 600000})
    check(ask(n, dm, link, PUT, "/3/0/13", query=("pmax=1",)).code == 0x44, "pmax")
    mid = dm.request(link, GET, "/3/0/13", accept=0, observe=0, token=b"\x09")
    k = len(dm.notes)
    n.idle_until(c.t + 3500)
    check(dm.answers[mid].code == 0x45, "answer")
    vals = [body(m) for t, m, raw in dm.notes[k:]]
    check(len(vals) == 3, vals)


def test_observe_epmin_and_epmax_bound_evaluations():
    n, dm, link, c = _start()
    # epmin 3 s: the sequence (a new value every window, about 1 s) is looked at every 3 s
    _observe(n, dm, link, "/33000/0/0", b"\x0a", ("epmin=3",))
    k = len(dm.notes)
    n.run(windows=9)
    times = [t for t, m, raw in dm.notes[k:]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(len(times) >= 2 and all(g >= 2900 for g in gaps), times)
    ask(n, dm, link, GET, "/33000/0/0", observe=1, token=b"\x0a")
    # epmax 2 s: device time changes without the node saying so; evaluated every 2 s
    m = _observe(n, dm, link, "/3/0/13", b"\x0b", ("epmax=2",))
    k = len(dm.notes)
    n.run(windows=7)
    times = [t for t, mm, raw in dm.notes[k:] if bytes(mm.data[4:5]) == b"\x0b"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(len(times) >= 2 and all(1900 <= g <= 2200 for g in gaps), times)


def test_int_280_281_read_composite():
    n, dm, link, c = _start()
    w = Writer(bytearray(100))
    w.put_array(4)
    for p in ("/3/0/16", "/3/0/11/0", "/1/0", "/1/0/8"):
        w.put_map(1)
        w.put_int(0)
        w.put_text(p)
    m = ask(n, dm, link, 5, "", cf=112, payload=bytes(w.buf[: w.pos]))
    check(m.code == 0x45 and opt(m, 12) == 112, hex(m.code))
    v = senml(m)
    check(v == {"/3/0/16": "U", "/3/0/11/0": 0, "/1/0/0": 1, "/1/0/1": 10, "/1/0/2": 0,
                "/1/0/3": 0, "/1/0/6": False, "/1/0/7": "U"}, v)
    check(ask(n, dm, link, 5, "", cf=60, payload=b"\x80").code == 0x8F, "format")
    check(ask(n, dm, link, 5, "", cf=112, payload=b"\xff").code == 0x80, "not CBOR")


def _pack(recs):
    # SenML-CBOR records [{0: path, key: value}]
    w = Writer(bytearray(200))
    w.put_array(len(recs))
    for path, key, v in recs:
        w.put_map(2)
        w.put_int(0)
        w.put_text(path)
        w.put_int(key)
        if key == 4:
            w.put_bool(v)
        elif key == 3:
            w.put_text(v)
        else:
            w.put_int(v)
    return bytes(w.buf[: w.pos])


def test_int_257_write_composite():
    n, dm, link, c = _start()
    good = [("/1/0/2", 2, 102), ("/1/0/3", 2, 1010), ("/1/0/6", 4, True)]
    m = ask(n, dm, link, 7, "", cf=112, payload=_pack(good))
    check(m.code == 0x44, hex(m.code))
    m = ask(n, dm, link, 1, "/1/0")
    v = senml(m)
    check(v["/1/0/2"] == 102 and v["/1/0/3"] == 1010 and v["/1/0/6"] is True, v)
    # every record is checked before any is written: nothing changes on a refusal
    for bad, code in (([("/1/0/2", 2, 7), ("/3/0/0", 3, "x")], 0x85),  # read-only
                      ([("/1/0/2", 2, 7), ("/0/0/0", 3, "coap://x")], 0x81),  # Security
                      ([("/1/0/2", 2, 7), ("/999/0/1", 2, 1)], 0x84),  # no such object
                      ([("/1/0/2", 2, 7), ("/1/0/6", 2, 1)], 0x80),  # wrong type
                      ([("/1/0", 2, 7)], 0x80)):  # not a resource
        m = ask(n, dm, link, 7, "", cf=112, payload=_pack(bad))
        check(m.code == code, (bad, hex(m.code)))
    m = ask(n, dm, link, 1, "/1/0/2", accept=0)
    check(body(m) == b"102", body(m))
    check(ask(n, dm, link, 7, "", cf=60, payload=b"\x80").code == 0x8F, "format")
    check(ask(n, dm, link, 7, "", cf=112, payload=b"\xff").code == 0x80, "not CBOR")


def _records(pack):
    # {path: value} of a SenML-CBOR pack
    out = {}
    bn = ""
    for rec in loads(pack):
        bn = rec.get(-2, bn)
        out[bn + rec[0]] = rec.get(2, rec.get(3, rec.get(4, rec.get(8))))
    return out


def test_a_read_between_reports_gives_what_the_last_report_sent():
    # report.py is the one description of 3313 and 33000-33002: a Read and the Send
    # report take the same tables and values (mp_test_node.py checks the report's
    # bytes). Only the count since the last report (/33000/0/11) starts again after it.
    import gc
    import node
    from mp_test_node import write_signal, _GOOD
    from mp_test_simlink import SimClock, SimLink, Rand
    from storage import config

    write_signal("s.i16", 5000)
    cfg = config.check(dict(_GOOD, lifetime=10, window=256, report_ms=1000, log_slots=0))
    sensor = config.open_sensor(cfg)
    dm = DM()
    c = SimClock(1000)
    link = SimLink(c, dm)
    n = node.Node(cfg, sensor, config.feature_spec(cfg, sensor.rate), transport=link,
                  clock=c, rand=Rand(3))
    n.run(windows=2)
    paths = list(_records(dm.ops(2, "dp")[-1][5]))
    check(len(paths) == 1 + 12 + len(n.ex.names), paths)
    for p in paths + ["/3313/0/5701", "/33000/0/12", "/33000/0/13", "/33000/0/14"]:
        sent = _records(dm.ops(2, "dp")[-1][5])  # the report before the Read is served
        del dm.log[:]  # the heap is a board's: keep only this round
        dm.answers.clear()
        gc.collect()
        m = ask(n, dm, link, GET, p)
        check(m.code == 0x45, (p, hex(m.code)))
        got = senml(m)[p]
        if p not in sent:
            check(p in ("/3313/0/5701", "/33000/0/12", "/33000/0/13", "/33000/0/14"), p)
            continue
        want = 0 if p == "/33000/0/11" else sent[p]  # windows since the last report
        check(got == want, (p, got, want))
