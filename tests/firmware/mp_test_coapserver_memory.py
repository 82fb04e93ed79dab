# What the node's CoAP server costs under MicroPython: no allocation per request or
# notification in steady state (the transport here hands over preallocated datagrams;
# coap/udp.py's own cost is in mp_test_udp.py), and the data its buffers take.
HEAPSIZE = "128K"
FIRMWARE = "mpy"

import gc

from coap.endpoint import Endpoint
from coaptree import Tree, COUNTER
from coapsrvkit import CON, NON, req, path, check, LeanLink
from mp_test_simlink import SimClock, SimLink, Rand

def _alloc_per_request(data, n=30, setup=None, **kw):
    c = SimClock(0)
    link = LeanLink(c, data)
    ep = Endpoint(link, c, Rand(1))
    tree = Tree()
    ep.serve_resources(tree, **kw)
    if setup:
        setup(ep, link)
    for _ in range(3):
        link.due = True
        ep.serve(1)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(n):
            link.due = True
            ep.serve(1)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    check(link.sent >= n, "answered %d" % link.sent)
    return used // n, link


def test_steady_state_allocates_nothing_per_request():
    cases = (
        ("GET /hello", req(CON, 1, 1, b"\x01\x02\x03\x04", path("hello"))),
        ("GET /big block 2 of 64", req(CON, 1, 1, b"\x01", path("big") + [(23, 0x22)])),
        ("GET /big 1024", req(CON, 1, 1, b"\x01", path("big"))),
        ("GET /obj/3303/0", req(NON, 1, 1, b"\x01", path("obj/3303/0"))),
        ("PUT /store 1 block", req(CON, 3, 1, b"\x01", path("store") + [(27, 0x02)],
                                    bytes(64))),
        ("PUT /store 2.31", req(CON, 3, 1, b"\x01", path("store") + [(27, 0x0A)],
                                 bytes(64))),
        ("GET /counter observe", req(CON, 1, 1, b"\x01", [(6, 0)] + path("counter"))),
        ("unknown critical", req(CON, 1, 1, b"", [(9, b"x")])),
    )
    for name, data in cases:
        per, link = _alloc_per_request(data)
        print("%s: %d bytes per request (answer %d bytes, code %x)"
              % (name, per, link.n, link.last[1]))
        check(per == 0, "%s allocates %d bytes per request" % (name, per))


def test_steady_state_notifications_allocate_nothing():
    c = SimClock(0)
    link = LeanLink(c, req(CON, 1, 1, b"\x01", [(6, 0)] + path("counter")))
    ep = Endpoint(link, c, Rand(1))
    tree = Tree()
    ep.serve_resources(tree)
    link.due = True
    ep.serve(1)
    for _ in range(3):
        tree.counter += 1
        ep.changed(COUNTER)
        ep.serve(1)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(30):
            tree.counter += 1
            ep.changed(COUNTER)
            ep.serve(1)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    print("notification: %d bytes per notification" % (used // 30))
    check(used == 0 and link.sent == 34, (used, link.sent))


def test_server_data_size():
    gc.collect()
    c = SimClock(0)
    link = SimLink(c)
    ep = Endpoint(link, c, Rand(1))
    gc.collect()
    a = gc.mem_alloc()
    import coap.server, coap.observe  # noqa: F401  (code, for the figure below)

    gc.collect()
    b = gc.mem_alloc()
    ep.serve_resources(Tree(store=16))
    gc.collect()
    d = gc.mem_alloc()
    ep2 = Endpoint(link, c, Rand(1))
    gc.collect()
    e = gc.mem_alloc()
    ep2.serve_resources(Tree(store=16), max_block=256, body=256, block1=512, observers=4)
    gc.collect()
    f = gc.mem_alloc()
    print("server code (.mpy, x64) %d bytes; data: default %d bytes, "
          "small (256/256/512/4 observers) %d bytes" % (b - a, d - b, f - e))
    check(d - b < 7000, "default server data %d" % (d - b))
