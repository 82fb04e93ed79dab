# CoAP codec and endpoint (firmware/coap/endpoint.py) under MicroPython. Expected bytes are
# derived by hand from RFC 7252 section 3 (comments show the derivation); the endpoint
# runs on a simulated lossy link with a simulated clock (mp_test_simlink).
HEAPSIZE = "128K"  # compiling this test module takes more than the endpoint needs

from coap.decode import Message
from coap.endpoint import Endpoint
from coap.msg import CoapError, CoapReset, CoapTimeout, MessageWriter
from mp_test_simlink import SimClock, SimLink, Rand, header, msg

CON = 0  # message types and codes, RFC 7252 section 3 and 12.1
NON = 1
ACK = 2
GET = 1
POST = 2
PUT = 3


def _unhex(s):
    s = s.replace(" ", "")
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def _hex(b):
    return "".join("%02x" % x for x in b)


def encode(mtype, code, mid, token=b"", options=(), payload=b""):
    # a message from (number, value) options in the given order (ints as uint options)
    w = MessageWriter(bytearray(512))
    w.begin(mtype, code, mid, token)
    for num, val in options:
        if isinstance(val, int):
            w.option_uint(num, val)
        else:
            w.option(num, val)
    w.payload(payload)
    return bytes(w.buf[: w.pos])


def options(m):
    return [(m.onum[i], m.value(i)) for i in range(m.nopt)]


def payload(m):
    return bytes(m.data[m.pstart : m.n])


def _expect(name, got, want_hex):
    want = _unhex(want_hex)
    if bytes(got) != want:
        raise AssertionError("%s:\n got  %s\n want %s" % (name, _hex(got), _hex(want)))


# ---- encoder: exact bytes ----


def test_encode_get_with_uri_path():
    # 0x40: ver 1, CON, TKL 0; 0x01 GET; MID 7d34; option delta 11 (Uri-Path),
    # length 11 -> 0xbb, "temperature"
    m = encode(CON, GET, 0x7D34, b"", [(11, "temperature")])
    _expect("GET", m, "40 01 7d34 bb 74656d7065726174757265")


def test_encode_piggybacked_ack_with_payload():
    # 0x60: ver 1, ACK, TKL 0; 0x45 = 2.05; payload marker 0xff, "22.3 C"
    m = encode(ACK, 0x45, 0x7D34, b"", [], b"22.3 C")
    _expect("ACK 2.05", m, "60 45 7d34 ff 32322e332043")


def test_encode_options_with_13_extension_and_uint():
    # 0x41 CON TKL 1, 0x02 POST, MID 0001, token ab
    # Uri-Path (11) "rd": delta 11 len 2 -> b2
    # Content-Format (12) 40: delta 1, len 1 -> 11 28
    # Uri-Query (15) "b=U": delta 3, len 3 -> 33
    # Size1 (60) 1024: delta 45 = 13 + 32 -> nibble d, ext 0x20; len 2 -> d2 20 0400
    m = encode(CON, POST, 1, b"\xab",
               [(11, b"rd"), (12, 40), (15, "b=U"), (60, 1024)])
    _expect("POST", m, "41 02 0001 ab b2 7264 11 28 33 623d55 d2 20 0400")


def test_encode_14_extensions_and_long_values():
    # option 2049 from 0: delta 2049 = 269 + 1780 (0x06f4) -> nibble e; value of
    # 20 bytes: 13 + 7 -> nibble d, ext 07 => ed 06f4 07
    # option 2049 again: delta 0; 300 bytes: 269 + 31 -> nibble e, ext 001f => 0e 001f
    v20 = bytes(range(20))
    v300 = bytes(i & 0xFF for i in range(300))
    m = encode(NON, PUT, 0xFFFF, b"", [(2049, v20), (2049, v300)])
    want = "50 03 ffff ed 06f4 07" + _hex(v20) + "0e 001f" + _hex(v300)
    _expect("ext14", m, want)


def test_encode_uint_zero_empty_and_max_token():
    # Content-Format 0 is the empty uint (section 3.2): c0. TKL 8.
    m = encode(CON, GET, 0x0102, b"12345678", [(12, 0), (14, 0x10000)])
    # Max-Age (14) 65536: delta 2, 3 bytes -> 23 010000
    _expect("uint", m, "48 01 0102 3132333435363738 c0 23 010000")


def test_writer_rejects_bad_input_with_typed_errors():
    w = MessageWriter(bytearray(12))
    for fn in (
        lambda: w.begin(CON, GET, 1, b"123456789"),
        lambda: (w.begin(CON, GET, 1), w.option(12, b"a"), w.option(11, b"b")),
        lambda: (w.begin(CON, GET, 1), w.option(11, b"0123456789")),
        lambda: (w.begin(CON, GET, 1), w.option(70000, b"")),
    ):
        try:
            fn()
        except CoapError:
            continue
        raise AssertionError("accepted")


# ---- decoder ----


def test_decode_fields_options_payload():
    raw = _unhex("41 02 0001 ab b2 7264 11 28 33 623d55 d2 20 0400 ff 6869")
    m = Message().decode(raw)
    got = (m.type, m.code, m.mid, header(raw)[3], options(m), payload(m))
    want = (0, 2, 1, b"\xab", [(11, b"rd"), (12, b"\x28"), (15, b"b=U"), (60, b"\x04\x00")],
            b"hi")
    if got != want:
        raise AssertionError(got)
    if m.uint(m.find(60)) != 1024 or m.find(8) != -1 or not m.token_is(b"\xab", 1):
        raise AssertionError("accessors")
    m.decode(_unhex("60 00 1234"))
    if (m.type, m.code, m.mid, m.tkl, m.nopt, m.pstart, m.n) != (2, 0, 0x1234, 0, 0, 4, 4):
        raise AssertionError("empty ACK")


_MALFORMED = [
    ("", "truncated header"),
    ("4001", "truncated header"),
    ("400100", "truncated header"),
    ("00010000", "version 0"),
    ("80010000", "version 2"),
    ("c0010000", "version 3"),
    ("49010000 000102030405060708", "TKL 9"),
    ("4f010000 000102030405060708090a0b0c0d0e", "TKL 15"),
    ("42010000 ab", "truncated token"),
    ("40000000 ff", "empty message with bytes"),
    ("41000000 ab", "empty message with a token"),
    ("40010000 f0", "delta nibble 15 that is not the payload marker"),
    ("40010000 0f", "length nibble 15"),
    ("40010000 d0", "13-delta without its byte"),
    ("40010000 e0 00", "14-delta with one byte"),
    ("40010000 0d", "13-length without its byte"),
    ("40010000 0e 01", "14-length with one byte"),
    ("40010000 03 aa", "value shorter than its length"),
    ("40010000 b5 7264", "value shorter than its length"),
    ("40010000 ff", "payload marker without payload"),
    ("40010000 b0 ff", "payload marker without payload after options"),
    ("40010000 e0 ffff", "option number above 65535"),
    ("40010000 e0 fcdb e0 02db", "option number above 65535 by accumulation"),
    ("40010000 " + "00" * 33, "more options than the decoder holds"),
]


def test_decode_rejects_each_malformed_case():
    m = Message()
    for h, why in _MALFORMED:
        try:
            m.decode(_unhex(h))
        except CoapError:
            continue
        raise AssertionError("accepted %s (%s)" % (h, why))
    # the same decoder accepts the well-formed neighbours of those cases
    for h in ("40010000", "48010000 0001020304050607", "40010000 b0", "40010000 ff 00",
              "40010000 d0 00", "40010000 e0 0000", "40010000 " + "00" * 32):
        m.decode(_unhex(h))


# ---- endpoint on a simulated link ----


def _endpoint(peer=None, seed=1, **kw):
    c = SimClock(5000)
    link = SimLink(c, peer)
    ep = Endpoint(link, c, Rand(seed), **kw)
    return ep, link, c


def _post(ep):
    w = ep.begin(POST)
    w.option(11, b"dp")
    w.payload(b"x")


def test_retransmission_schedule_then_timeout():
    # RFC 7252 section 4.8: initial timeout in [2 s, 3 s), doubling, 4 retransmissions,
    # give up after the 4th retransmission's timeout (sum = 31 * initial).
    initials = []
    for seed in range(1, 9):
        ep, link, c = _endpoint(seed=seed)
        t0 = c.t
        _post(ep)
        try:
            ep.exchange()
        except CoapTimeout:
            pass
        else:
            raise AssertionError("no timeout")
        times = [t - t0 for t, _ in link.sent]
        T = times[1]
        if not 2000 <= T < 3000:
            raise AssertionError("initial timeout %d" % T)
        if times != [0, T, 3 * T, 7 * T, 15 * T]:
            raise AssertionError("schedule %s" % times)
        if c.t - t0 != 31 * T:
            raise AssertionError("gave up at %d, not %d" % (c.t - t0, 31 * T))
        if len(set(d for _, d in link.sent)) != 1:
            raise AssertionError("retransmissions differ from the original")
        initials.append(T)
    if len(set(initials)) < 4:
        raise AssertionError("initial timeout not randomised: %s" % initials)


def test_an_estimated_timeout_retransmits_sooner_doubling_up_to_ack_timeout():
    # rto_ms (ota/fetch.py's estimate from measured round trips): the first wait is it,
    # doubling but never past ACK_TIMEOUT, and retransmissions go on until the deadline
    ep, link, c = _endpoint(seed=3)
    t0 = c.t
    _post(ep)
    try:
        ep.exchange(10000, 5)
    except CoapTimeout:
        pass
    else:
        raise AssertionError("no timeout")
    times = [t - t0 for t, _ in link.sent]
    gaps = [b - a for a, b in zip(times, times[1:])]
    if gaps[:6] != [5, 10, 20, 40, 80, 160] or max(gaps) != 2000:
        raise AssertionError("schedule %s" % gaps)
    if c.t - t0 != 10000 or len(times) < 9:
        raise AssertionError("gave up at %d after %d sends" % (c.t - t0, len(times)))


def test_default_randomness_gives_valid_schedule():
    c = SimClock(0)
    link = SimLink(c)
    ep = Endpoint(link, c)  # random.getrandbits, seeded from os.urandom
    _post(ep)
    try:
        ep.exchange()
    except CoapTimeout:
        pass
    T = link.sent[1][0]
    if not 2000 <= T < 3000 or len(link.sent) != 5:
        raise AssertionError((T, len(link.sent)))


def _ack_after(n_lost, code=0x44, delay=40):
    # Peer that loses the first n_lost transmissions, then piggybacks `code`.
    state = {"seen": 0}

    def peer(link, data):
        state["seen"] += 1
        if state["seen"] <= n_lost:
            return
        t, _, mid, tok = header(data)
        link.deliver(msg(2, code, mid, tok), delay)

    return peer


def test_lossy_link_recovers_with_piggybacked_response():
    ep, link, c = _endpoint(_ack_after(2))
    _post(ep)
    r = ep.exchange()
    if r.code != 0x44 or len(link.sent) != 3 or ep.retransmissions != 2:
        raise AssertionError((r.code, len(link.sent), ep.retransmissions))
    T = link.sent[1][0] - link.sent[0][0]
    if link.sent[2][0] - link.sent[1][0] != 2 * T:
        raise AssertionError("backoff")


def test_ack_with_other_mid_or_token_is_ignored():
    def peer(link, data):
        t, _, mid, tok = header(data)
        link.deliver(msg(2, 0x44, mid ^ 1, tok), 10)  # wrong MID
        link.deliver(msg(2, 0x44, mid, b"zzzz"), 20)  # right MID, wrong token
        link.deliver(msg(2, 0x45, mid, tok), 30)

    ep, link, c = _endpoint(peer)
    _post(ep)
    r = ep.exchange()
    if r.code != 0x45 or len(link.sent) != 1:
        raise AssertionError((r.code, len(link.sent)))


def test_separate_response_con_is_acked_and_duplicate_reacked():
    # empty ACK at +10 ms, CON 2.05 with the token at +9 s (well after every
    # retransmission timer would have fired), then the server repeats the CON 2.05
    # as if our ACK was lost.
    sep = {}

    def peer(link, data):
        t, code, mid, tok = header(data)
        if code == POST:
            link.deliver(msg(2, 0, mid), 10)
            sep["resp"] = msg(0, 0x45, 0xBEEF, tok, b"\xff42")
            link.deliver(sep["resp"], 9000)

    ep, link, c = _endpoint(peer)
    _post(ep)
    r = ep.exchange()
    if r.code != 0x45 or payload(r) != b"42":
        raise AssertionError((r.code, payload(r)))
    if len(link.sent) != 2:
        raise AssertionError("retransmitted after the empty ACK: %d sends" % len(link.sent))
    _expect("ACK of separate response", link.sent[1][1], "60 00 beef")
    link.deliver(sep["resp"], 1500)
    ep.serve(5000)
    if len(link.sent) != 3 or link.sent[2][1] != link.sent[1][1] or ep.duplicates != 1:
        raise AssertionError("duplicate not re-ACKed once: %s" % link.sent)


def test_separate_response_non_is_accepted_without_ack():
    def peer(link, data):
        t, code, mid, tok = header(data)
        link.deliver(msg(2, 0, mid), 10)
        link.deliver(msg(1, 0x44, 0x0101, tok), 4000)

    ep, link, c = _endpoint(peer)
    _post(ep)
    r = ep.exchange()
    if r.code != 0x44 or len(link.sent) != 1:
        raise AssertionError((r.code, len(link.sent)))


def test_separate_response_that_never_comes_times_out():
    def peer(link, data):
        link.deliver(msg(2, 0, header(data)[2]), 10)

    ep, link, c = _endpoint(peer, separate_timeout_ms=20000)
    t0 = c.t
    _post(ep)
    try:
        ep.exchange()
    except CoapTimeout:
        pass
    else:
        raise AssertionError("no timeout")
    if c.t - t0 != 20010 or len(link.sent) != 1:
        raise AssertionError((c.t - t0, len(link.sent)))


def test_rst_raises_reset():
    def peer(link, data):
        link.deliver(msg(3, 0, header(data)[2]), 5)

    ep, link, c = _endpoint(peer)
    _post(ep)
    try:
        ep.exchange()
    except CoapReset:
        return
    raise AssertionError("RST not raised")


def test_deadline_bounds_the_exchange():
    ep, link, c = _endpoint()
    t0 = c.t
    _post(ep)
    try:
        ep.exchange(deadline_ms=4000)
    except CoapTimeout:
        pass
    if c.t - t0 != 4000 or len(link.sent) != 2:
        raise AssertionError((c.t - t0, len(link.sent)))


def test_tokens_random_and_message_ids_sequential_from_random_start():
    ep, link, c = _endpoint(_ack_after(0), seed=7)
    ep2, link2, _ = _endpoint(_ack_after(0), seed=99)
    for e in (ep, ep, ep, ep2):
        _post(e)
        e.exchange()
    hs = [header(d) for _, d in link.sent]
    mids = [h[2] for h in hs]
    toks = [h[3] for h in hs]
    if mids[1] != (mids[0] + 1) & 0xFFFF or mids[2] != (mids[1] + 1) & 0xFFFF:
        raise AssertionError("MIDs %s" % mids)
    if len(set(toks)) != 3 or any(len(t) != 4 for t in toks):
        raise AssertionError("tokens %s" % toks)
    if header(link2.sent[0][1])[2] == mids[0]:
        raise AssertionError("MID start not random")


def test_incoming_con_request_gets_404_once_and_duplicate_gets_same_answer():
    ep, link, c = _endpoint()
    req = msg(0, GET, 0x5555, b"\x77", b"\xb3abc")  # CON GET /abc
    link.deliver(req, 100)
    link.deliver(req, 300)
    ep.serve(1000)
    want = "61 84 5555 77"  # piggybacked ACK 4.04, same MID and token
    if len(link.sent) != 2:
        raise AssertionError("sent %d" % len(link.sent))
    _expect("first answer", link.sent[0][1], want)
    _expect("duplicate answer", link.sent[1][1], want)
    if ep.duplicates != 1:
        raise AssertionError("duplicates %d" % ep.duplicates)


def test_incoming_non_request_gets_non_404_and_duplicate_is_not_reprocessed():
    ep, link, c = _endpoint()
    req = msg(1, GET, 0x6666, b"\x01\x02")
    link.deliver(req, 10)
    link.deliver(req, 20)
    ep.serve(100)
    if len(link.sent) != 2 or link.sent[0][1] != link.sent[1][1]:
        raise AssertionError(link.sent)
    t, code, mid, tok = header(link.sent[0][1])
    if (t, code, tok) != (1, 0x84, b"\x01\x02") or ep.duplicates != 1:
        raise AssertionError((t, code, tok, ep.duplicates))


def test_ping_unknown_response_and_malformed_con_are_reset():
    ep, link, c = _endpoint()
    link.deliver(msg(0, 0, 0x0A0A), 1)  # CoAP ping (empty CON)
    link.deliver(msg(0, 0x45, 0x0B0B, b"\x99\x99\x99\x99"), 2)  # CON response, no request
    link.deliver(_unhex("40010c0c f0"), 3)  # CON with a reserved option nibble
    link.deliver(msg(1, 0x45, 0x0D0D, b"\x99"), 4)  # NON response, no request: ignored
    link.deliver(msg(2, 0, 0x0E0E), 5)  # stray empty ACK: ignored
    link.deliver(_unhex("50010f0f f0"), 6)  # malformed NON: dropped silently
    ep.serve(100)
    got = [_hex(d) for _, d in link.sent]
    if got != ["70000a0a", "70000b0b", "70000c0c"]:
        raise AssertionError(got)


def test_duplicate_window_expires_after_exchange_lifetime():
    ep, link, c = _endpoint()
    req = msg(0, GET, 0x4242, b"")
    link.deliver(req, 0)
    ep.serve(10)
    c.t += 247000
    link.deliver(req, 0)
    ep.serve(10)
    if len(link.sent) != 2 or ep.duplicates != 0:
        raise AssertionError((len(link.sent), ep.duplicates))
