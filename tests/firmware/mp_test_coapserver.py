# The node's CoAP server side (firmware/coap/server.py, coap/block.py) under MicroPython on a
# simulated link and clock: dispatch to a handler, Block2 and Block1 (RFC 7959) both
# ways, duplicate answers from the cache, bad requests, several peers. Expected bytes
# are derived by hand from RFC 7252 section 3 where shown. Observe is in
# mp_test_coapobserve.py, memory in mp_test_coapserver_memory.py.
HEAPSIZE = "256K"  # the simulated links keep every datagram; memory: see _memory.py
FIRMWARE = "mpy"  # the firmware precompiled, as a board runs it

from coap.decode import Message
from coap.endpoint import Endpoint
from coaptree import Tree, BIG_LEN, big_byte
from coapsrvkit import (CON, NON, req, path, server, ask, one, opt, body, check, Pair,
                        PeerLink, _hex)
from mp_test_simlink import SimClock, Rand

POST = 2  # RFC 7252 section 12.1.1
PUT = 3

# ---- dispatch ----


def test_get_piggybacked_exact_bytes():
    ep, link, c, tree = server()
    one(ep, link, req(CON, 1, 0x1234, b"\xaa\xbb", path("hello")))
    # 0x62 ACK TKL 2; 0x45 2.05; MID 1234; token aabb; Content-Format 0 -> delta 12,
    # length 0: c0; ff "hello world"
    got = link.sent[-1][1]
    check(_hex(got) == "62451234aabbc0ff68656c6c6f20776f726c64", _hex(got))


def test_non_request_gets_non_answer_with_new_mid():
    ep, link, c, tree = server()
    m = one(ep, link, req(NON, 1, 0x4444, b"\x01", path("obj/3303/12")))
    check(m.type == NON and m.code == 0x45 and m.mid != 0x4444, (m.type, m.code))
    check(m.token_is(b"\x01", 1) and body(m) == b"3303,12", body(m))
    m = one(ep, link, req(CON, 1, 0x4445, b"", path("obj/33x/1")))
    check(m.code == 0x84, "non-decimal segment")
    m = one(ep, link, req(CON, 1, 0x4446, b"", path("q") + [(15, "a=40"), (15, "b=-2")]))
    check(body(m) == b"38", body(m))


def test_bad_requests_get_error_codes():
    ep, link, c, tree = server()
    m = one(ep, link, req(CON, 1, 1, b"", path("hello") + [(2049, b"x")]))  # critical
    check(m.code == 0x82, "unknown critical option: %x" % m.code)
    m = one(ep, link, req(CON, 1, 2, b"", path("hello") + [(2050, b"x")]))  # elective
    check(m.code == 0x45, "elective option ignored")
    m = one(ep, link, req(CON, 1, 3, b"", [(35, "coap://x/")]))
    check(m.code == 0xA5, "Proxy-Uri -> 5.05")
    m = one(ep, link, req(CON, 1, 4, b"", path("boom")))
    check(m.code == 0xA0 and ep.server.errors == 1, "handler exception -> 5.00")
    m = one(ep, link, req(CON, 1, 5, b"", path("hello") + [(23, 0x07)]))
    check(m.code == 0x82, "Block2 SZX 7 -> 4.02")
    m = one(ep, link, req(CON, 2, 6, b"", path("hello")))
    check(m.code == 0x85, "POST /hello -> 4.05")
    m = one(ep, link, req(CON, 1, 7, b"", path("nothing/here")))
    check(m.code == 0x84, "4.04")


# ---- Block2 ----


def _fetch_all(ep, link, p, szx, mid0=100):
    out = bytearray()
    num = 0
    while True:
        link.sent = []  # keep the heap for the blocks
        m = one(ep, link, req(CON, 1, mid0 + num, b"\x05", path(p) + [(23, (num << 4) | szx)]))
        check(m.code == 0x45, "code %x" % m.code)
        b2 = opt(m, 23)
        check(b2 >> 4 == num and b2 & 7 == szx, "block %x" % b2)
        if num == 0:
            check(opt(m, 28) == BIG_LEN if p == "big" else True, "Size2")
        out += body(m)
        if not b2 & 8:
            return bytes(out)
        check(len(body(m)) == 16 << szx, "short non-final block")
        num += 1


def test_block2_all_sizes_reassemble():
    ep, link, c, tree = server()
    want = bytes(big_byte(i) for i in range(BIG_LEN))
    for szx in range(7):
        got = _fetch_all(ep, link, "big", szx, mid0=1000 * (szx + 1))
        check(got == want, "szx %d" % szx)


def test_block2_unasked_and_server_max_smaller_than_requested():
    ep, link, c, tree = server(max_block=256)
    m = one(ep, link, req(CON, 1, 1, b"", path("big")))
    # no Block2 asked: first block at the server's size (256: SZX 4), Size2 3000
    check(opt(m, 23) == 0x0C and opt(m, 28) == BIG_LEN and len(body(m)) == 256, "first")
    # asked for block 1 of 1024 (offset 1024): served as block 4 of 256 (section 2.4)
    m = one(ep, link, req(CON, 1, 2, b"", path("big") + [(23, 0x16)]))
    check(opt(m, 23) == 0x4C, "renumbered %x" % opt(m, 23))
    check(body(m) == bytes(big_byte(i) for i in range(1024, 1280)), "block 4")
    m = one(ep, link, req(CON, 1, 3, b"", path("big") + [(23, (200 << 4) | 4)]))
    check(m.code == 0x82, "block beyond the end -> 4.02")
    m = one(ep, link, req(CON, 1, 4, b"", path("hello") + [(23, 0x00)]))
    check(opt(m, 23) == 0 and body(m) == b"hello world", "small with Block2: m=0")


# ---- Block1 ----


def _put(ep, link, data, szx, mid0, p="store", code=3):
    bs = 16 << szx
    answers = []
    for num in range((len(data) + bs - 1) // bs):
        chunk = data[num * bs : (num + 1) * bs]
        more = (num + 1) * bs < len(data)
        o = path(p) + [(27, (num << 4) | (8 if more else 0) | szx)]
        if num == 0:
            o.append((60, len(data)))
        answers.append(one(ep, link, req(CON, code, mid0 + num, b"\x42", o, chunk)))
    return answers


def test_block1_put_reassembles_then_reads_back_block2():
    ep, link, c, tree = server(block1=1500)
    data = bytes((i * 13) & 0xFF for i in range(1300))
    answers = _put(ep, link, data, 2, 200)
    for m in answers[:-1]:
        check(m.code == 0x5F and opt(m, 27) & 8, "2.31 with M")
    last = answers[-1]
    check(last.code == 0x44 and opt(last, 27) == ((len(answers) - 1) << 4) | 2, "final")
    check(tree.stored == 1300 and tree.calls == 1, "handler once, whole body")
    check(_fetch_all(ep, link, "store", 3, 300) == data, "read back")


def test_block1_out_of_order_too_large_and_smaller_size():
    ep, link, c, tree = server(block1=512, max_block=128)
    blk = bytes(64)
    m = one(ep, link, req(CON, 3, 1, b"", path("store") + [(27, 0x0A)], blk))
    check(m.code == 0x5F, "block 0")
    m = one(ep, link, req(CON, 3, 2, b"", path("store") + [(27, 0x2A)], blk))
    check(m.code == 0x88, "skipped block 1 -> 4.08: %x" % m.code)
    m = one(ep, link, req(CON, 3, 3, b"", path("store") + [(27, 0x1A)], blk))
    check(m.code == 0x88, "no transfer under way any more -> 4.08")
    m = one(ep, link, req(CON, 3, 4, b"", path("store") + [(27, 0x0A), (60, 5000)], blk))
    check(m.code == 0x8D and opt(m, 60) == 512, "Size1 too large -> 4.13 Size1 512")
    for num in range(8):
        m = one(ep, link, req(CON, 3, 10 + num, b"", path("store") + [(27, (num << 4) | 0x0A)],
                              blk))
    check(m.code == 0x5F, "512 bytes fit")
    m = one(ep, link, req(CON, 3, 30, b"", path("store") + [(27, 0x8A)], blk))
    check(m.code == 0x8D and opt(m, 60) == 512, "beyond the buffer -> 4.13")
    # 1024-byte blocks to a server whose blocks are 128: 2.31 says SZX 3
    m = one(ep, link, req(CON, 3, 40, b"", path("store") + [(27, 0x0E)], bytes(1024)))
    check(m.code == 0x8D, "a 1024 block does not fit 512")
    ep2, link2, c2, t2 = server(block1=4096, max_block=128)
    m = one(ep2, link2, req(CON, 3, 1, b"", path("store") + [(27, 0x0E)], bytes(1024)))
    check(m.code == 0x5F and opt(m, 27) == 0x0B, "2.31 asks for SZX 3: %x" % opt(m, 27))
    m = one(ep2, link2, req(CON, 3, 2, b"", path("store") + [(27, 0x0B)], bytes(16)))
    check(m.code == 0x80, "short non-final block -> 4.00")


def test_client_block1_exchange_body_against_node_server():
    p = Pair(drop_every=5)
    a = Endpoint(p.la, p.c, Rand(9))
    p.b = Endpoint(p.lb, p.c, Rand(10))
    tree = Tree(store=4000)
    p.b.serve_resources(tree, block1=4000, max_block=128)
    data = bytes((i * 31 + 7) & 0xFF for i in range(3333))
    w = a.begin(PUT)
    w.option(11, b"store")
    r = a.exchange_body(data, szx=6)
    check(r.code == 0x44, "final %x" % r.code)
    check(bytes(tree.store[: tree.stored]) == data, "body")
    # blocks went out at 256 (the largest fitting a's 512-byte buffer), then at 128
    # as the server's 2.31 asked
    sizes = []
    toks = set()
    for _, d in p.la.sent:
        m = Message().decode(d)
        sizes.append(opt(m, 27) & 7)
        toks.add(bytes(d[4:8]))
    check(sizes[0] == 4 and sizes[1] == 3 and sizes[-1] == 3, sizes)
    check(len(toks) > 10, "a fresh token per block")
    # a small body goes in one message without Block1
    w = a.begin(POST)
    w.option(11, b"store")
    r = a.exchange_body(b"tiny")
    check(r.code == 0x44 and bytes(tree.store[:4]) == b"tiny" and tree.stored == 4, "small")
    m = Message().decode(p.la.sent[-1][1])
    check(m.find(27) < 0, "no Block1 for a small body")


# ---- duplicates ----


def test_duplicates_answered_from_cache_without_reprocessing():
    ep, link, c, tree = server()
    r = req(CON, 1, 0x999, b"\x07", path("hello"))
    a = ask(ep, link, r)
    b = ask(ep, link, r)
    check(tree.calls == 1 and ep.duplicates == 1, "processed once")
    check(link.sent[-1][1] == link.sent[-2][1], "same answer")
    blk = req(CON, 3, 0x99A, b"", path("store") + [(27, 0x0A)], bytes(64))
    ask(ep, link, blk)
    ask(ep, link, blk)
    check(link.sent[-1][1] == link.sent[-2][1] and ep.duplicates == 2, "2.31 again")
    # a 1024-byte block is too long for the cache: re-sent from the buffer while it
    # holds it, processed again (GET is safe) once the buffer was reused
    big = req(CON, 1, 0x99B, b"", path("big"))
    ask(ep, link, big)
    calls = tree.calls
    ask(ep, link, big)
    check(tree.calls == calls and link.sent[-1][1] == link.sent[-2][1], "from the buffer")
    ask(ep, link, req(CON, 1, 0x99C, b"", path("hello")))
    ask(ep, link, big)
    check(tree.calls == calls + 2 and link.sent[-1][1] == link.sent[-3][1], "again")
    c.t += 247000
    ask(ep, link, r)
    check(tree.calls == calls + 3, "after EXCHANGE_LIFETIME it is a new request")


def test_two_peers_same_mid_are_different_requests_and_notified_apart():
    c = SimClock(0)
    link = PeerLink(c)
    ep = Endpoint(link, c, Rand(5))
    tree = Tree()
    ep.serve_resources(tree)
    r = req(CON, 1, 0x55, b"\x01", [(6, 0)] + path("counter"))
    link.deliver_from(r, b"A", 1)
    link.deliver_from(r, b"B", 2)
    ep.serve(10)
    check(tree.calls == 2 and link.to == [b"A", b"B"], (tree.calls, link.to))
    check(ep.server.obs.count() == 2, "two observers")
    ep.changed()
    ep.serve(10)
    check(sorted(link.to[2:]) == [b"A", b"B"], link.to)
