# OSCORE on the node (firmware/oscore/) under the real MicroPython: RFC 8613 Appendix C
# byte for byte, the refusals (tampered, truncated, wrong key, unknown kid, replayed,
# malformed options), Echo recovery after a reboot, sequence numbers across reboots
# and power cuts, and no allocation per protected message in steady state.
HEAPSIZE = "256K"  # the viper kernels compile from source in the test's heap

import gc
import os
from binascii import hexlify, unhexlify

from coap.msg import MessageWriter
from oscore import kdf, seq
from oscore.context import Context
from oscore.transport import OscoreTransport

h = unhexlify
SECRET = h("0102030405060708090a0b0c0d0e0f10")
SALT = h("9e7ca92223786340")
IDCTX = h("37cbf3210017a2d3")

# Appendix C.4-C.8: plain and protected messages
C4_PLAIN = h("44015d1f00003974396c6f63616c686f737483747631")
C4 = h("44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e")
C5_PLAIN = h("440171c30000b932396c6f63616c686f737483747631")
C5 = h("440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0")
C6_PLAIN = h("44012f8eef9bbf7a396c6f63616c686f737483747631")
C6 = h("44022f8eef9bbf7a396c6f63616c686f73746b19140837cbf3210017a2d3ff72cd7273fd331ac45cffbe55c3")
C7_PLAIN = h("64455d1f00003974ff48656c6c6f20576f726c6421")
C7 = h("64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106")
C8 = h("64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e")


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what):
    check(bytes(got) == bytes(want), "%s: %s != %s" % (what, hexlify(got), hexlify(want)))


def clean(*names):
    for n in names:
        for p in (n, n + ".tmp"):
            try:
                os.remove(p)
            except OSError:
                pass


class Fake:
    """An inner transport: records what is sent, hands over queued datagrams."""

    def __init__(self):
        self.sent = []  # the last few
        self.count = 0
        self.q = []

    def send(self, buf, n):
        self.count += 1
        if len(self.sent) > 8:
            self.sent.pop(0)
        self.sent.append(bytes(buf[:n]))

    def recv(self, timeout_ms):
        return self.q.pop(0) if self.q else None


def c1(role, path, **kw):
    # the C.1 context: the client has Sender ID h'', the server h'01'
    clean(path)
    if role == "client":
        return Context(SECRET, b"", b"\x01", path, salt=SALT, **kw)
    return Context(SECRET, b"\x01", b"", path, salt=SALT, **kw)


def pair():
    # a client and a server transport over Fake links (both contexts new)
    cf, sf = Fake(), Fake()
    return OscoreTransport(cf, c1("client", "c.seq")), cf, OscoreTransport(sf, c1("server", "s.seq")), sf


# -- Appendix C vectors --


def test_c1_c2_c3_key_derivation():
    cases = (  # secret salt idctx sender recipient | sender key, recipient key, IV
        (SALT, None, b"", b"\x01", "f0910ed7295e6ad4b54fc793154302ff",
         "ffb14e093c94c9cac9471648b4f98710", "4622d4dd6d944168eefb54987c"),
        (b"", None, b"\x00", b"\x01", "321b26943253c7ffb6003b0b64d74041",
         "e57b5635815177cd679ab4bcec9d7dda", "be35ae297d2dace910c52e99f9"),
        (SALT, IDCTX, b"", b"\x01", "af2a1300a5e95788b356336eeecd2b92",
         "e39a0c7c77b43f03b4b39ab9a268699f", "2ca58fb85ff1b81c0b7181b85e"),
    )
    for salt, idc, s, r, sk, rk, iv in cases:
        # client and server (C.x.1, C.x.2): the keys swap, the IV stays
        eq(kdf.derive(SECRET, salt, s, r, idc)[0], h(sk), "sender key")
        eq(kdf.derive(SECRET, salt, r, s, idc)[1], h(sk), "server's recipient key")
        eq(kdf.derive(SECRET, salt, s, r, idc)[1], h(rk), "recipient key")
        eq(kdf.derive(SECRET, salt, r, s, idc)[0], h(rk), "server's sender key")
        eq(kdf.derive(SECRET, salt, s, r, idc)[2], h(iv), "common IV")
    eq(kdf.info(b"", None, "Key", 16), h("8540f60a634b657910"), "C.1 info sender key")
    eq(kdf.info(b"\x01", None, "Key", 16), h("854101f60a634b657910"), "C.1 info recipient")
    eq(kdf.info(b"", None, "IV", 13), h("8540f60a6249560d"), "C.1 info IV")
    eq(kdf.info(b"", IDCTX, "Key", 16), h("85404837cbf3210017a2d30a634b657910"), "C.3 info")
    # nonces with Partial IV 0 (C.1.1, C.2.1, C.3.1)
    for args, snd, rcv in (
        ((SECRET, b"", b"\x01"), "4622d4dd6d944168eefb54987c", "4722d4dd6d944169eefb54987c"),
        ((SECRET, b"\x00", b"\x01"), "bf35ae297d2dace910c52e99f9", "bf35ae297d2dace810c52e99f9"),
    ):
        clean("n.seq")
        ctx = Context(*args, "n.seq", salt=SALT if args[1] == b"" else b"")
        ctx._nonce(ctx.sid, 0)
        eq(ctx.nonce, h(snd), "sender nonce")
        ctx._nonce(ctx.rid, 0)
        eq(ctx.nonce, h(rcv), "recipient nonce")
    clean("n.seq")
    ctx = Context(SECRET, b"", b"\x01", "n.seq", salt=SALT, id_context=IDCTX)
    ctx._nonce(ctx.sid, 0)
    eq(ctx.nonce, h("2ca58fb85ff1b81c0b7181b85e"), "C.3 sender nonce")
    ctx._nonce(ctx.rid, 0)
    eq(ctx.nonce, h("2da58fb85ff1b81d0b7181b85e"), "C.3 recipient nonce")


def test_c4_c5_c6_protected_requests():
    for plain, want, ctx in (
        (C4_PLAIN, C4, c1("client", "c.seq")),
        (C5_PLAIN, C5, Context(SECRET, b"\x00", b"\x01", "c5.seq")),
        (C6_PLAIN, C6, Context(SECRET, b"", b"\x01", "c6.seq", salt=SALT, id_context=IDCTX)),
    ):
        ctx.seq.next = 20  # the vectors' Sender Sequence Number
        f = Fake()
        t = OscoreTransport(f, ctx)
        t.send(plain, len(plain))
        eq(f.sent[-1], want, "protected request")
        t.send(plain, len(plain))  # a retransmission: the same bytes
        eq(f.sent[-1], want, "retransmission")
        check(ctx.seq.next == 21, "one sequence number")
    # the server side of C.4 and C.6 gives the plain requests back
    for prot, plain, ctx in (
        (C4, C4_PLAIN, c1("server", "s.seq")),
        (C6, C6_PLAIN, Context(SECRET, b"\x01", b"", "s6.seq", salt=SALT, id_context=IDCTX)),
    ):
        f = Fake()
        t = OscoreTransport(f, ctx)
        f.q.append(prot)
        eq(t.recv(0), plain, "verified request")


def test_c7_c8_protected_responses():
    f = Fake()
    t = OscoreTransport(f, c1("server", "s.seq"))
    f.q.append(C4)
    t.recv(0)
    t.send(C7_PLAIN, len(C7_PLAIN))
    eq(f.sent[-1], C7, "C.7: the request's nonce")
    t.send(C7_PLAIN, len(C7_PLAIN))  # the nonce is spent: Partial IV 0 of the server
    eq(f.sent[-1], C8, "C.8: own Partial IV")
    # the client verifies either answer to its C.4 request
    for resp in (C7, C8):
        ctx = c1("client", "c.seq")
        ctx.seq.next = 20
        f = Fake()
        t = OscoreTransport(f, ctx)
        t.send(C4_PLAIN, len(C4_PLAIN))
        f.q.append(resp)
        eq(t.recv(0), C7_PLAIN, "verified response")
        f.q.append(resp)
        check(t.recv(0) is None, "a replayed response is dropped")


# -- refusals --


def _error(f, code, mid, tok):
    # the last datagram sent: an unprotected ACK with code, MID, token, Max-Age 0
    d = f.sent[-1]
    want = bytes((0x60 | len(tok), code, mid >> 8, mid & 0xFF)) + tok + b"\xd0\x01"
    eq(d, want, "error %x" % code)


def _with_mid(d, mid):
    d = bytearray(d)
    d[2] = mid >> 8
    d[3] = mid & 0xFF
    return bytes(d)


def test_refusals():
    tok = h("00003974")
    srv = lambda: OscoreTransport(Fake(), c1("server", "s.seq"))  # noqa: E731
    cases = (
        ("tampered ciphertext", C4[:-10] + bytes((C4[-10] ^ 1,)) + C4[-9:], 0x80),
        ("truncated tag", C4[:-3], 0x80),
        ("no ciphertext", C4[:-13] + b"\x00", 0x80),
        ("unknown kid", C4[:18] + b"\x63\x09\x14\x07" + C4[21:], 0x81),
        ("kid context unknown", C4[:18] + b"\x63\x19\x14\x00" + C4[21:], 0x81),
        ("unprotected request", C4_PLAIN, 0x81),
        ("reserved flag bits", C4[:18] + b"\x62\x29\x14" + C4[21:], 0x82),
        ("partial IV length 6", C4[:18] + b"\x62\x0e\x14" + C4[21:], 0x82),
        ("partial IV truncated", C4[:18] + b"\x62\x0b\x14" + C4[21:], 0x82),
        ("kid context past the end", C4[:18] + b"\x63\x19\x14\x05" + C4[21:], 0x82),
        ("no partial IV", C4[:18] + b"\x61\x08" + C4[21:], 0x82),
        ("flags 0 with a value", C4[:18] + b"\x61\x00" + C4[21:], 0x82),
        ("empty option", C4[:18] + b"\x60" + C4[21:], 0x82),
    )
    for name, data, code in cases:
        t = srv()
        t.inner.q.append(data)
        check(t.recv(0) is None, name + ": nothing for the endpoint")
        check(t.refused == 1, name + ": refused")
        _error(t.inner, code, 0x5D1F, tok)
    # wrong key: a server with another Master Secret
    clean("w.seq")
    t = OscoreTransport(Fake(), Context(b"\x00" * 16, b"\x01", b"", "w.seq", salt=SALT))
    t.inner.q.append(C4)
    check(t.recv(0) is None, "wrong key")
    _error(t.inner, 0x80, 0x5D1F, tok)
    # replayed request: the captured datagram again under a new MID
    t = srv()
    t.inner.q.append(C4)
    eq(t.recv(0), C4_PLAIN, "first")
    t.inner.q.append(_with_mid(C4, 0x1111))
    check(t.recv(0) is None and t.refused == 1, "replayed request")
    _error(t.inner, 0x81, 0x1111, tok)
    # ... but a CoAP retransmission (same MID) reaches the endpoint's duplicate cache,
    # and its answer gets the server's own Partial IV (the request nonce is spent)
    t.inner.q.append(C4)
    eq(t.recv(0), C4_PLAIN, "retransmission")
    t.send(C7_PLAIN, len(C7_PLAIN))
    eq(t.inner.sent[-1], C7, "first answer")
    t.send(C7_PLAIN, len(C7_PLAIN))
    eq(t.inner.sent[-1], C8, "answer again")
    # a NON replay is dropped without an answer
    n = t.inner.count
    t.inner.q.append(bytes((0x54,)) + C4[1:])
    check(t.recv(0) is None and t.inner.count == n, "NON replay: silence")
    # NoSec allowed for tests: the unprotected request goes through as is
    t = OscoreTransport(Fake(), c1("server", "s.seq"), allow_plain=True)
    t.inner.q.append(C4_PLAIN)
    eq(t.recv(0), C4_PLAIN, "allow_plain")


def test_forged_and_unprotected_responses_are_dropped():
    ctx = c1("client", "c.seq")
    ctx.seq.next = 20
    f = Fake()
    t = OscoreTransport(f, ctx)
    t.send(C4_PLAIN, len(C4_PLAIN))
    for name, data in (
        ("forged", C7[:-1] + bytes((C7[-1] ^ 0x80,))),
        ("truncated", C7[:12]),
        ("unprotected 2.05", C7_PLAIN),
        ("other token", C7[:4] + b"\x00\x00\x39\x75" + C7[8:]),
        ("kid of someone else", C7[:8] + b"\x91\x07" + C7[9:]),
    ):
        f.q.append(data)
        check(t.recv(0) is None, name + " dropped")
    check(t.dropped == 5, "dropped %d" % t.dropped)
    # an unprotected 4.01 can only fail the request: passed on
    err = h("64815d1f00003974")
    f.q.append(err)
    eq(t.recv(0), err, "unprotected 4.01")


def test_replayed_notification_is_dropped():
    # a GET with Observe from the node: outer FETCH with Observe; the server's
    # notification (own Partial IV) verifies once, its replay is dropped
    c, cf, s, sf = pair()
    plain = bytearray(32)
    w = MessageWriter(plain)
    w.begin(0, 1, 0x0101, b"\x07\x07", 2)
    w.option_uint(6, 0)
    w.option(11, "obs")
    c.send(plain, w.pos)
    check(cf.sent[-1][1] == 0x05, "outer FETCH")
    sf.q.append(cf.sent[-1])
    got = s.recv(0)
    eq(got, plain[: w.pos], "plain request on the server")
    note = bytearray(32)
    w = MessageWriter(note)
    w.begin(2, 0x45, 0x0101, b"\x07\x07", 2)
    w.option_uint(6, 5)
    w.payload(b"42")
    s.send(note, w.pos)
    prot = sf.sent[-1]
    check(prot[1] == 0x45, "outer 2.05")
    check(prot[6] == 0x61 and prot[7] == 5, "outer Observe 5")
    check(prot[8] == 0x32 and prot[9] == 0x01, "OSCORE option: own Partial IV")
    cf.q.append(prot)
    got = c.recv(0)
    check(got is not None and got[-2:] == b"42", "notification verified")
    check(got[6] == 0x60, "inner Observe is empty")  # RFC 8613 section 4.1.3.5.2
    cf.q.append(prot)
    check(c.recv(0) is None, "replayed notification dropped")


def test_malformed_input_never_raises():
    # every truncation and many single-byte changes of protected messages
    c, cf, s, sf = pair()
    for base in (C4, C6):
        for n in range(len(base)):
            sf.q.append(base[:n])
            s.recv(0)
        for i in range(len(base)):
            for v in (0x00, 0x0D, 0x0E, 0x0F, 0xD0, 0xE0, 0xFF, base[i] ^ 0x55):
                d = bytearray(base)
                d[i] = v
                sf.q.append(bytes(d))
                s.recv(0)
                cf.q.append(bytes(d))
                c.recv(0)


# -- Echo recovery (Appendix B.1.2) --


def test_reboot_echo_recovery_between_two_nodes():
    c, cf, s, sf = pair()
    s.ctx.seq.take()
    # the server reboots: its sequence file stays, its replay window is unknown
    s = OscoreTransport(sf, Context(SECRET, b"\x01", b"", "s.seq", salt=SALT))
    check(not s.ctx.window_ok, "window unknown after a reboot")
    check(s.ctx.seq.next >= 256, "starts at the stored bound")
    req = bytearray(C4_PLAIN)
    c.send(req, len(req))
    first = cf.sent[-1]
    sf.q.append(first)
    check(s.recv(0) is None and s.echoes == 1, "answered with Echo, not delivered")
    ans = sf.sent[-1]
    check(ans[0] == 0x64 and ans[1] == 0x44, "protected ACK 2.04")
    check(ans[8] == 0x93 and ans[9] == 0x02, "own Partial IV in the 4.01")
    cf.q.append(ans)
    check(c.recv(0) is None, "the client handles the Echo itself")
    again = cf.sent[-1]
    check(again != first and again[2] == first[2] ^ 0x80, "sent again under another MID")
    # the endpoint's retransmission (same MID) resends the bytes sent with Echo
    c.send(req, len(req))
    eq(cf.sent[-1], again, "retransmission of the request sent with Echo")
    sf.q.append(again)
    eq(s.recv(0)[8:], C4_PLAIN[8:] + b"\xd8\xe4" + s.ctx.echo, "delivered with Echo")
    check(s.ctx.window_ok, "window initialised")
    s.send(C7_PLAIN, len(C7_PLAIN))
    cf.q.append(sf.sent[-1])
    got = c.recv(0)
    eq(got[:4], C7_PLAIN[:4], "the endpoint sees its own MID")
    eq(got, C7_PLAIN, "response")
    # the first request (captured before the Echo) is a replay now
    sf.q.append(_with_mid(first, 0x2222))
    check(s.recv(0) is None and s.refused == 1, "old request refused")


# -- sequence numbers in flash --


class PowerCut(Exception):
    pass


class CutOs:
    """os for oscore/seq.py that loses power at the n-th rename; fat: rename does
    not replace an existing file (as on FAT)."""

    def __init__(self, cut_at, fat=False):
        self.cut_at = cut_at
        self.fat = fat
        self.renames = 0

    def rename(self, a, b):
        self.renames += 1
        if self.renames == self.cut_at:
            raise PowerCut()
        if self.fat:
            try:
                os.stat(b)
                raise OSError(17)
            except OSError as e:
                if e.args[0] == 17:
                    raise
        os.rename(a, b)

    def remove(self, p):
        os.remove(p)


def _run(store, used, n):
    for _ in range(n):
        v = store.take()
        check(v not in used, "sequence number %d used twice" % v)
        used.add(v)


def test_sequence_numbers_across_reboots_and_power_cuts():
    clean("q.seq")
    used = set()
    st = seq.SeqStore("q.seq", 10)
    check(st.fresh and st.next == 0, "a new context starts at 0")
    _run(st, used, 25)
    for _ in range(3):  # plain reboots
        st = seq.SeqStore("q.seq", 10)
        check(not st.fresh, "not new")
        _run(st, used, 7)
    for fat in (False, True):
        for cut in (1, 2, 3):
            # power lost at the cut-th write after boot (the boot write is the first)
            seq.os = CutOs(cut, fat)
            try:
                st = seq.SeqStore("q.seq", 10)
                _run(st, used, 35)
                check(False, "no power cut")
            except PowerCut:
                pass
            finally:
                seq.os = os
            check("q.seq.tmp" in os.listdir(), "a temporary file is left behind")
            if cut == 2 and not fat:
                # and a cut while writing it: a torn temporary file
                with open("q.seq.tmp", "wb") as f:
                    f.write(b"\x00\x00")
            st = seq.SeqStore("q.seq", 10)
            check("q.seq.tmp" not in os.listdir(), "cleaned up")
            _run(st, used, 12)
    # FAT: power lost between removing the old file and renaming the new one
    seq.os = CutOs(2, True)
    orig = CutOs.rename

    def rename_cut_after_remove(self, a, b):
        self.renames += 1
        if self.renames == 4:  # the rename after the remove
            raise PowerCut()
        try:
            os.stat(b)
            raise OSError(17)
        except OSError as e:
            if e.args[0] == 17:
                raise
        os.rename(a, b)

    CutOs.rename = rename_cut_after_remove
    try:
        st = seq.SeqStore("q.seq", 10)
        _run(st, used, 35)
    except PowerCut:
        pass
    finally:
        CutOs.rename = orig
        seq.os = os
    check("q.seq" not in os.listdir(), "only the temporary file is left")
    st = seq.SeqStore("q.seq", 10)
    check(not st.fresh, "the temporary file is taken")
    _run(st, used, 12)
    # a corrupt state file: the context refuses to send (fail closed)
    with open("q.seq", "wb") as f:
        f.write(b"\x00\x00\x00\x10\x00\x00\x00\x10")
    try:
        seq.SeqStore("q.seq", 10)
        check(False, "corrupt state accepted")
    except seq.SeqError:
        pass
    print("sequence numbers used:", len(used), "max", max(used))


def test_flash_writes_per_1000_messages():
    for step in (16, 64, 256):
        clean("f.seq")
        st = seq.SeqStore("f.seq", step)
        w0 = st.writes
        for _ in range(1000):
            st.take()
        w = st.writes - w0
        print("step %d: %d flash writes per 1000 messages (+1 at boot)" % (step, w))
        check(w == (1000 + step - 1) // step - 1, "writes %d" % w)


# -- allocation --


class Slot:
    """One direction of a link: the last datagram sent, in one preallocated bytearray
    resized in place (no allocation)."""

    def __init__(self, cap):
        self.b = bytearray(cap)
        self.cap = cap
        self.z = bytearray(64)
        self.full = False

    def put(self, buf, n):
        b = self.b
        while len(b) < self.cap:
            b.extend(self.z)
        for i in range(n):
            b[i] = buf[i]
        b[n:] = b""
        self.full = True

    def take(self):
        if self.full:
            self.full = False
            return self.b
        return None


class End:
    """An inner transport on one end of two Slots."""

    def __init__(self, out, into):
        self.out = out
        self.into = into

    def send(self, buf, n):
        self.out.put(buf, n)

    def recv(self, timeout_ms):
        return self.into.take()


def _msg(buf, mtype, code, mid, tok, opts, payload):
    w = MessageWriter(buf)
    w.begin(mtype, code, mid, tok)
    for num, v in opts:
        if isinstance(v, int):
            w.option_uint(num, v)
        else:
            w.option(num, v)
    w.payload(payload)
    return w.pos


def test_no_allocation_per_protected_message():
    clean("c.seq", "s.seq")
    ab, ba = Slot(1200), Slot(1200)
    c = OscoreTransport(End(ab, ba), Context(SECRET, b"", b"\x01", "c.seq", salt=SALT,
                                             step=5000))
    s = OscoreTransport(End(ba, ab), Context(SECRET, b"\x01", b"", "s.seq", salt=SALT,
                                             step=5000))
    tok = b"\x11\x22\x33\x44"
    obs = b"\x0b\x0b"
    send = bytearray(420)  # an LwM2M Send: POST /dp, SenML-CBOR, about 350 bytes
    ns = _msg(send, 0, 2, 1, tok, ((11, "dp"), (12, 112)), bytes(range(256)) + bytes(94))
    read = bytearray(64)  # an answer to a Read
    nr = _msg(read, 2, 0x45, 1, tok, ((12, 0),), b"21.5")
    note = bytearray(64)  # a notification of the observation registered below
    nn = _msg(note, 1, 0x45, 1, obs, ((6, 1), (12, 0)), b"21.6")
    reg = bytearray(32)
    nreg = _msg(reg, 0, 1, 1, obs, ((6, 0), (11, "temp")), b"")
    c.send(reg, nreg)
    check(s.recv(0) is not None, "registration")
    s.send(note, nn)
    check(c.recv(0) is not None, "the registration's answer")

    def step(mid):
        send[3] = read[3] = note[3] = mid  # the next MID (the test's own buffers)
        c.send(send, ns)  # request out
        got = s.recv(0)  # request in
        check(got is not None and len(got) == ns, "request")
        s.send(read, nr)  # response out
        got = c.recv(0)  # response in
        check(got is not None and len(got) == nr, "response")
        s.send(note, nn)  # notification out
        check(c.recv(0) is None, "the node takes no notifications")  # dropped

    for mid in range(2, 6):
        step(mid)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for mid in range(6, 46):
            step(mid)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    print("bytes allocated per exchange (request, response, notification; in and out):",
          used // 40)
    check(used == 0, "allocated %d bytes in 40 exchanges" % used)
    check(c.dropped == 44 and s.dropped == 0, "dropped %d %d" % (c.dropped, s.dropped))
