# Serving the node's LwM2M object tree allocates nothing per request for the common
# Reads: a resource and an object instance in SenML-CBOR, an integer as text/plain. The
# link answers without allocating (coapsrvkit.LeanLink), so what is measured is the
# endpoint's, the CoAP server's and the tree's own allocation.
HEAPSIZE = "128K"
FIRMWARE = "mpy"

import gc

from coap.endpoint import Endpoint
from lwm2m.objects import Connectivity, Device, Server
from lwm2m.tree import Tree
from coapsrvkit import req, path, LeanLink
from mp_test_simlink import SimClock, Rand

_CFG = {"endpoint": "n1", "gateway": "coap://127.0.0.1", "host": "127.0.0.1", "lifetime": 60}


class Events:
    def update(self, what):
        pass

    def reboot(self):
        pass

    def attributes_changed(self):
        pass


def _served(data):
    c = SimClock(1000)
    link = LeanLink(c, data)
    ep = Endpoint(link, c, Rand(3))
    ev = Events()
    tree = Tree([Server(_CFG, ev), Device(_CFG, ev, c),
                       Connectivity(_CFG)], ev)
    ep.serve_resources(tree, 256, 256, 256, 4, 32)
    tree.attach(ep, 4)
    return ep, link


def _measure(p, accept, rounds=50):
    ep, link = _served(req(0, 1, 1, b"\x01\x02", path(p) + [(17, accept)]))
    for _ in range(3):  # warm up: first answers, caches
        link.due = True
        ep.serve(1)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(rounds):
            link.due = True
            ep.serve(1)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    if link.sent != rounds + 3 or link.last[1] != 0x45:
        raise AssertionError("answers %d, code %x" % (link.sent, link.last[1]))
    print("%s accept %d: %d bytes in %d requests, answer %d bytes" % (p, accept, used, rounds,
                                                                      link.n))
    if used:
        raise AssertionError("%s allocated %d bytes in %d requests" % (p, used, rounds))


def test_read_resource_senml_cbor_allocates_nothing():
    _measure("/1/0/1", 112)


def test_read_instance_senml_cbor_allocates_nothing():
    _measure("/1/0", 112)


def test_read_integer_text_allocates_nothing():
    _measure("/1/0/1", 0)


def test_read_device_block2_first_block_allocates_nothing():
    _measure("/3/0", 112)
