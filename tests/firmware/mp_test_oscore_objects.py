# OSCORE in the node's LwM2M model (firmware/lwm2m/objects.py Security and Oscore,
# lwm2m/tree.py): with an "oscore" context in the config, Security /0/0 is in OSCORE mode
# (mode 3 NoSec under it, resource 17 linking to /21/0) and /21/0 holds the context; a
# LwM2M server gets 4.01 for every operation on either (Core section 7.1.1), neither is in
# the registration's links (Core section 6.2.1), and no secret leaves the node. The node
# runs on a simulated plain link here (the session wraps only its own UDP transport in
# OSCORE): what is tested is the object model, not the protection.
HEAPSIZE = "256K"
FIRMWARE = "mpy"

from binascii import hexlify
from cbor.encode import Writer
from lwm2m.objects import Val, K_OPQ
from mp_test_lwm2m_client import _start, ask, body, check, senml, GET, PUT, POST, DELETE

_SECRET = bytes(range(0xC0, 0xD0))
_SALT = b"\x01\x02\x03\x04\x05\x06\x07\x08"
_KEYS = {"secret": hexlify(_SECRET).decode(), "salt": hexlify(_SALT).decode(),
         "sender_id": "0a0b", "recipient_id": "00", "id_context": "c0ffee"}


def _value(obj, iid, rid):
    v = Val()
    obj.get(iid, rid, -1, v)
    return v


def _no_secret_sent(link):
    for _, data in link.sent:
        for s in (_SECRET, _SALT, hexlify(_SECRET)):
            check(s not in data, "a secret on the wire")


def test_security_links_to_the_oscore_instance_and_values_are_kept():
    n, dm, link, c = _start({"oscore": _KEYS})
    sec = n.tree.obj(0)
    check(_value(sec, 0, 2).i == 3, "mode: NoSec under OSCORE")
    check(_value(sec, 0, 17).s == b"21:0", "17 links /21/0")
    check(_value(sec, 0, 10).i == 1, "ssid")
    osc = n.tree.obj(21)
    want = {0: _SECRET, 1: b"\x0a\x0b", 2: b"\x00", 5: _SALT, 6: b"\xc0\xff\xee"}
    for rid, b in want.items():
        v = _value(osc, 0, rid)
        check(v.kind == K_OPQ and bytes(v.s) == b, "/21/0/%d" % rid)
    check(_value(osc, 0, 3).i == 10 and _value(osc, 0, 4).i == -10, "AEAD, HKDF")
    check(osc.flags(0) == 5 and osc.flags(3) == 1 and osc.flags(7) == -1, "no operations")
    for text in (repr(osc), str(osc), repr(sec)):
        check(hexlify(_SECRET).decode() not in text and repr(_SECRET) not in text, text)


def test_without_oscore_there_is_no_object_21_and_no_link():
    n, dm, link, c = _start()
    check(n.tree.obj(21) is None, "no /21")
    check(_value(n.tree.obj(0), 0, 17).s == b"", "no link")


def test_neither_security_nor_oscore_is_listed_at_registration():
    n, dm, link, c = _start({"oscore": _KEYS})
    reg = dm.ops(2, "rd")[0]
    want = (b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</4/0>,</5/0>,</16>,</3313/0>,'
            b"</33000/0>")
    check(reg[5] == want, reg[5])


def _paths(paths):
    w = Writer(bytearray(120))
    w.put_array(len(paths))
    for p in paths:
        w.put_map(1)
        w.put_int(0)
        w.put_text(p)
    return bytes(w.buf[: w.pos])


def test_every_server_operation_on_oscore_and_security_is_unauthorized():
    n, dm, link, c = _start({"oscore": _KEYS})
    w = Writer(bytearray(60))
    w.put_array(1)
    w.put_map(2)
    w.put_int(0)
    w.put_text("/21/0/0")
    w.put_int(8)
    w.put_bytes(b"\x00" * 16)
    write_secret = bytes(w.buf[: w.pos])
    cases = (
        ("read /21", (GET, "/21"), {}),
        ("read /21/0", (GET, "/21/0"), {}),
        ("read the secret", (GET, "/21/0/0"), {}),
        ("read the secret as opaque", (GET, "/21/0/0"), {"accept": 42}),
        ("read /0/0/17", (GET, "/0/0/17"), {}),
        ("discover /21", (GET, "/21"), {"accept": 40}),
        ("observe /21/0", (GET, "/21/0"), {"observe": 0}),
        ("write the secret", (PUT, "/21/0/0"), {"cf": 42, "payload": b"\x00" * 16}),
        ("write /21/0 in SenML", (PUT, "/21/0"), {"cf": 112, "payload": write_secret}),
        ("write the link", (PUT, "/0/0/17"), {"cf": 0, "payload": b"21:1"}),
        ("write attributes", (PUT, "/21/0/0"), {"query": (b"pmin=1",)}),
        ("create /21", (POST, "/21"), {}),
        ("execute /21/0/0", (POST, "/21/0/0"), {}),
        ("delete /21/0", (DELETE, "/21/0"), {}),
        ("write-composite", (7, ""), {"cf": 112, "payload": write_secret}),
    )
    for what, a, kw in cases:
        m = ask(n, dm, link, *a, **kw)
        check(m.code == 0x81, "%s: %x" % (what, m.code))
    # Read-Composite leaves /21 out (as /0), the rest is answered
    m = ask(n, dm, link, 5, "", cf=112, payload=_paths(("/21/0/0", "/0/0/17", "/1/0/1")))
    check(m.code == 0x45 and senml(m) == {"/1/0/1": 10}, senml(m))
    check(bytes(_value(n.tree.obj(21), 0, 0).s) == _SECRET, "unchanged")
    _no_secret_sent(link)


def test_a_read_of_everything_else_still_works():
    n, dm, link, c = _start({"oscore": _KEYS})
    m = ask(n, dm, link, GET, "/3/0/0", accept=0)
    check(m.code == 0x45 and body(m) == b"aiotkit", body(m))
    _no_secret_sent(link)
