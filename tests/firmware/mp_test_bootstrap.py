# The node's side of LwM2M bootstrap (firmware/lwm2m/bootstrap.py) under MicroPython: the
# Bootstrap-Write/Delete/Discover/Finish handler on the node's CoAP server, with the
# bootstrap server's requests built byte by byte, and run() against a scripted server.
# Compiled from source (node.py does not import bootstrap yet, so the mpy build has not
# got it): compiling the CoAP stack and these helpers in RAM takes the heap.
HEAPSIZE = "256K"

import os

from cbor.encode import Writer
from lwm2m import bootstrap
from coapsrvkit import CON, req, path, one, body, check, opt, server
from mp_test_simlink import SimClock, Rand

_BS = "coap://bs.example:5685"


def senml(records):
    # SenML-CBOR from [(name, key, value)], first record with the base name /o/i/
    w = Writer(bytearray(256))
    w.put_array(len(records))
    for i, (base, name, key, v) in enumerate(records):
        w.put_map(3 if base else 2)
        if base:
            w.put_int(-2)
            w.put_text(base)
        w.put_int(0)
        w.put_text(name)
        if isinstance(key, str):
            w.put_text(key)  # "vlo": an object link
        else:
            w.put_int(key)
        if key == 2:
            w.put_int(v)
        elif key == 4:
            w.put_bool(v)
        elif key == 8:
            w.put_bytes(v)
        else:
            w.put_text(v)
    return bytes(w.buf[: w.pos])


def put(p, payload, cf=112, mid=1):
    return req(CON, 3, mid, b"\x01", path(p) + [(12, cf)], payload)


_SEC = [("/0/1/", "0", 3, "coap://gw:5683"), ("", "1", 4, False), ("", "2", 2, 3),
        ("", "10", 2, 7)]
_SRV = [("/1/0/", "0", 2, 7), ("", "1", 2, 300), ("", "7", 3, "UQ")]


def test_full_sequence_gives_the_account():
    tree = bootstrap.Tree(_BS)
    ep, link, c, _ = server(tree, observers=0)
    for mid, (method, p) in enumerate(((4, "0"), (4, "1"), (4, ""))):
        check(one(ep, link, req(CON, method, 10 + mid, b"\x01", path(p))).code == 0x42, "del")
    check(one(ep, link, put("0/1", senml(_SEC), mid=20)).code == 0x44, "write /0/1")
    check(one(ep, link, put("1/0", senml(_SRV), mid=21)).code == 0x44, "write /1/0")
    m = one(ep, link, req(CON, 1, 22, b"\x01", path("0") + [(17, 40)]))
    check(m.code == 0x45 and opt(m, 12) == 40, "discover")
    links = body(m)
    print(links)
    check(b'</0/0>;uri="coap://bs.example:5685"' in links, "bs account kept")
    check(b'</0/1>;ssid=7;uri="coap://gw:5683"' in links, "server account")
    check(not tree.finished, "not yet")
    check(one(ep, link, req(CON, 2, 23, b"\x01", path("bs"))).code == 0x44, "finish")
    check(tree.finished, "finished")
    check(tree.account() == {"uri": "coap://gw:5683", "lifetime": 300, "binding": "UQ",
                             "ssid": 7}, "account %r" % tree.account())


def test_plain_text_writes():
    tree = bootstrap.Tree(_BS)
    ep, link, c, _ = server(tree, observers=0)
    for mid, (p, v) in enumerate((("0/1/0", b"coap://h:1"), ("0/1/1", b"0"), ("0/1/2", b"3"),
                                  ("0/1/10", b"5"), ("1/0/0", b"5"), ("1/0/1", b"60"))):
        check(one(ep, link, put(p, v, cf=0, mid=mid)).code == 0x44, "text %s" % p)
    check(one(ep, link, req(CON, 2, 30, b"\x01", path("bs"))).code == 0x44, "finish")
    check(tree.account() == {"uri": "coap://h:1", "lifetime": 60, "binding": "U",
                             "ssid": 5}, "account %r" % tree.account())


def test_bad_writes_and_paths_are_refused():
    tree = bootstrap.Tree(_BS)
    ep, link, c, _ = server(tree, observers=0)
    cases = (
        ("lifetime as text", put("1/0/1", b"sixty", cf=0), 0x80),
        ("lifetime as a string", put("1/0", senml([("/1/0/", "1", 3, "60")])), 0x80),
        ("bootstrap flag as int", put("0/1", senml([("/0/1/", "1", 2, 1)])), 0x80),
        ("uri as an int", put("0/1/0", senml([("/0/1/", "0", 2, 5)])), 0x80),
        ("record outside the target", put("1/0", senml([("/1/1/", "1", 2, 60)])), 0x80),
        ("not CBOR", put("1/0", b"\xff\x00"), 0x80),
        ("CBOR not a pack", put("1/0", b"\x01"), 0x80),
        ("text on an instance", put("1/0", b"60", cf=0), 0x80),
        ("TLV", put("1/0", b"\xc1\x01\x3c", cf=11542), 0x8F),
        ("unknown object", put("3/0/0", b"x", cf=0), 0x84),
        ("unknown object delete", req(CON, 4, 1, b"\x01", path("5")), 0x84),
        ("not a number", req(CON, 4, 1, b"\x01", path("0/x")), 0x84),
        ("too deep", req(CON, 4, 1, b"\x01", path("0/1/2/3")), 0x84),
        ("delete the bootstrap account", req(CON, 4, 1, b"\x01", path("0/0")), 0x80),
        ("finish with GET", req(CON, 1, 1, b"\x01", path("bs")), 0x85),
        ("bootstrap-read", req(CON, 1, 1, b"\x01", path("1") + [(17, 112)]), 0x86),
        ("finish without an account", req(CON, 2, 1, b"\x01", path("bs")), 0x86),
    )
    for mid, (what, data, want) in enumerate(cases):
        d = bytearray(data)
        d[2] = 0
        d[3] = 100 + mid  # fresh message IDs
        m = one(ep, link, bytes(d))
        check(m.code == want, "%s: %x, want %x" % (what, m.code, want))
    check(not tree.finished and tree.errors == len(cases), "nothing accepted")
    check(tree.obj == {0: {0: {0: _BS, 1: True, 2: 3}}, 1: {}, 21: {}},
          "unchanged %r" % tree.obj)


def test_store_roundtrip_and_bad_files():
    acct = {"uri": "coap://gw:5683", "lifetime": 300, "binding": "U", "ssid": 1}
    bootstrap.save(acct, "s.json")
    check(bootstrap.load("s.json") == acct, "roundtrip")
    check("s.json.tmp" not in os.listdir(), "temp file renamed")
    for text in ("", "[1]", "{\"uri\": 5}", "not json"):
        with open("s.json", "w") as f:
            f.write(text)
        check(bootstrap.load("s.json") is None, "bad file %r" % text)
    check(bootstrap.load("missing.json") is None, "missing")


class ScriptedServer:
    """A transport whose peer is a bootstrap server: answers POST /bs with 2.04, then
    sends the scripted requests one by one as the node answers them."""

    def __init__(self, clock, script, answer=0x44):
        self.clock = clock
        self.script = list(script)
        self.answer = answer
        self.codes = []
        self.inbox = []

    def send(self, buf, n):
        data = bytes(buf[:n])
        code = data[1]
        if (data[0] >> 4) & 3 == 0 and code == 2 and not self.codes:  # the Bootstrap-Request
            tkl = data[0] & 15
            self.codes.append(code)
            ack = bytes([0x60 | tkl, self.answer, data[2], data[3]]) + data[4:4 + tkl]
            self.inbox.append(ack)
            self._next()
        elif (data[0] >> 4) & 3 == 2:  # the node's answer to a scripted request
            self.codes.append(code)
            self._next()

    def _next(self):
        if self.answer == 0x44 and self.script:
            self.inbox.append(self.script.pop(0))

    def recv(self, timeout_ms):
        if self.inbox:
            return self.inbox.pop(0)
        self.clock.t += timeout_ms if timeout_ms > 0 else 1
        return None

    def close(self):
        pass


def test_run_against_a_scripted_server():
    c = SimClock(0)
    script = [req(CON, 4, 1, b"\x07", path("0")), req(CON, 4, 2, b"\x07", path("1")),
              put("0/1", senml(_SEC), mid=3), put("1/0", senml(_SRV), mid=4),
              req(CON, 2, 5, b"\x07", path("bs"))]
    t = ScriptedServer(c, script)
    acct = bootstrap.run(_BS, "node-1", "server.json", transport=t, clock=c, rand=Rand(1))
    check(t.codes == [2, 0x42, 0x42, 0x44, 0x44, 0x44], "codes %r" % t.codes)
    check(acct == bootstrap.load("server.json") and acct["ssid"] == 7, "persisted")


def test_run_refused_or_unfinished_raises():
    c = SimClock(0)
    t = ScriptedServer(c, [], answer=0x80)
    try:
        bootstrap.run(_BS, "node-1", transport=t, clock=c, rand=Rand(1))
        raise AssertionError("4.00 accepted")
    except bootstrap.BootstrapError as e:
        print(e)
    t = ScriptedServer(c, [req(CON, 4, 1, b"\x07", path("0"))])
    try:
        bootstrap.run(_BS, "node-1", timeout_ms=3000, transport=t, clock=c, rand=Rand(1))
        raise AssertionError("no Finish accepted")
    except bootstrap.BootstrapError as e:
        print(e)
    check("server.json" not in os.listdir(), "nothing persisted")


# -- OSCORE: Security /0/x/17 and Object 21 (the node's side of its server context) --

_SECRET = bytes(range(0xA0, 0xB0))  # 16 bytes; never printed (checked below)
_SALT = b"\x5a\x17\x5a\x17\x5a\x17\x5a\x17"
_OSC = [("/21/1/", "0", 8, _SECRET), ("", "1", 8, b"\x0b\x0c"), ("", "2", 8, b"\x00"),
        ("", "3", 2, 10), ("", "4", 2, -10), ("", "5", 8, _SALT)]
_SEC_OSC = _SEC + [("", "17", "vlo", "21:1")]


def _secret_hex():
    from binascii import hexlify

    return hexlify(_SECRET).decode()


def _printed_has_no_secret(*objs):
    # what a log line could show of these: repr and str, the secret neither in hex nor raw
    for o in objs:
        for text in (repr(o), str(o)):
            check(_secret_hex() not in text and repr(_SECRET) not in text,
                  "a secret in %s" % type(o).__name__)


def _sequence(tree, sec, osc, mid=40):
    ep, link, c, _ = server(tree, observers=0)
    codes = []
    for p, rec in (("0/1", sec), ("21/1", osc), ("1/0", _SRV)):
        codes.append(one(ep, link, put(p, senml(rec), mid=mid)).code)
        mid += 1
    codes.append(one(ep, link, req(CON, 2, mid, b"\x01", path("bs"))).code)
    return codes


def test_protected_bootstrap_stores_the_oscore_instance_and_link():
    tree = bootstrap.Tree(_BS, True)
    codes = _sequence(tree, _SEC_OSC, _OSC)
    check(codes == [0x44, 0x44, 0x44, 0x44], "codes %r" % codes)
    acct = tree.account()
    want = {"secret": _secret_hex(), "sender_id": "0b0c", "recipient_id": "00",
            "salt": "5a175a175a175a17"}
    check(acct["oscore"] == want and acct["uri"] == "coap://gw:5683", "keys as hex")
    _printed_has_no_secret(tree)
    # kept with the account, in one rename; read back as oscore/keys.py parses it
    bootstrap.save(acct, "s.json")
    got = bootstrap.load("s.json")
    check(got == acct and "s.json.tmp" not in os.listdir(), "roundtrip")
    from oscore.keys import parse

    keys = parse(got["oscore"], ValueError)
    check(keys["secret"] == _SECRET and keys["sender_id"] == b"\x0b\x0c"
          and keys["id_context"] is None, "parsed")
    # Discover lists /21 instances (no values)
    ep, link, c, _ = server(tree, observers=0)
    m = one(ep, link, req(CON, 1, 60, b"\x01", path("") + [(17, 40)]))
    links = body(m)
    check(b"</21/1>" in links and _secret_hex().encode() not in links, links)


def test_unprotected_bootstrap_refuses_keys_in_clear():
    # the bootstrap server sends /21 over a plain exchange: 4.01, nothing is kept
    tree = bootstrap.Tree(_BS)
    codes = _sequence(tree, _SEC_OSC, _OSC)
    check(codes == [0x81, 0x81, 0x44, 0x86], "codes %r" % codes)
    check(tree.obj[21] == {} and 1 not in tree.obj[0], "nothing kept of either write")
    check(tree.account() is None and not tree.finished, "no account")
    # a NoSec account is still taken
    codes = _sequence(bootstrap.Tree(_BS), _SEC, [("/21/1/", "3", 2, 10)], mid=70)
    check(codes[0] == 0x44 and codes[3] == 0x44, "nosec %r" % codes)


def test_unusable_oscore_instances_fail_the_finish():
    cases = (
        ("link to a missing instance", _SEC + [("", "17", "vlo", "21:7")], _OSC),
        ("AEAD other than 10", _SEC_OSC, _OSC[:3] + [("", "3", 2, 11)]),
        ("HMAC other than SHA-256", _SEC_OSC, _OSC[:3] + [("", "4", 2, 6)]),
        ("secret too short", _SEC_OSC, [("/21/1/", "0", 8, b"short")] + _OSC[1:]),
        ("no recipient id", _SEC_OSC, _OSC[:2]),
        ("sender id = recipient id", _SEC_OSC, _OSC[:2] + [("", "2", 8, b"\x0b\x0c")]),
        ("sender id of 8 bytes", _SEC_OSC, _OSC[:1] + [("", "1", 8, bytes(8))] + _OSC[2:]),
    )
    for what, sec, osc in cases:
        tree = bootstrap.Tree(_BS, True)
        codes = _sequence(tree, sec, osc)
        check(codes == [0x44, 0x44, 0x44, 0x86], "%s: %r" % (what, codes))
        check(tree.account() is None, what)


def test_bad_oscore_writes_are_refused():
    tree = bootstrap.Tree(_BS, True)
    ep, link, c, _ = server(tree, observers=0)
    cases = (
        ("link to another object", put("0/1", senml([("/0/1/", "17", "vlo", "3:0")])), 0x80),
        ("link as an int", put("0/1", senml([("/0/1/", "17", 2, 21)])), 0x80),
        ("secret as text", put("21/1", senml([("/21/1/", "0", 3, "abc")])), 0x80),
        ("secret of 65 bytes", put("21/1", senml([("/21/1/", "0", 8, bytes(65))])), 0x80),
        ("bad base64", put("21/1/0", b"abc", cf=0), 0x80),
    )
    for mid, (what, data, want) in enumerate(cases):
        d = bytearray(data)
        d[3] = 100 + mid
        m = one(ep, link, bytes(d))
        check(m.code == want, "%s: %x, want %x" % (what, m.code, want))
    # plain text: a link "21:I", opaque in base64 (Core section 7.3.1)
    check(one(ep, link, put("0/1/17", b"21:3", cf=0, mid=120)).code == 0x44, "text link")
    check(one(ep, link, put("21/3/0", b"oKGio6SlpqeoqaqrrK2urw==", cf=0, mid=121)).code
          == 0x44, "base64")
    check(tree.obj[21][3][0] == _SECRET and tree.obj[0][1][17] == "21:3", "text values")
    # Bootstrap-Delete /21 and / remove the instances
    check(one(ep, link, req(CON, 4, 122, b"\x01", path("21"))).code == 0x42, "delete")
    check(tree.obj[21] == {}, "deleted")
