# Observe (RFC 7641) on the node's CoAP server (firmware/coap/observe.py) under MicroPython
# on a simulated link and clock: registration, notifications with increasing sequence
# numbers, deregistration by GET Observe=1, RST and non-2.xx, CON notifications
# (asked for, and once a day) retransmitted one at a time, a full table.
HEAPSIZE = "128K"
FIRMWARE = "mpy"

from coap.decode import Message
from coap.endpoint import Endpoint
from coaptree import Tree, COUNTER
from coapsrvkit import CON, NON, req, path, server, ask, one, opt, body, check, PeerLink
from mp_test_simlink import SimClock, Rand


def peers_server(**kw):
    # an endpoint whose requests come from addressed peers (RFC 7641 section 4.1: one
    # entry per client and resource, so distinct observers need distinct clients)
    c = SimClock(5000)
    link = PeerLink(c)
    ep = Endpoint(link, c, Rand(3))
    tree = Tree()
    ep.serve_resources(tree, **kw)
    return ep, link, c, tree


def _register_from(ep, link, peer, tok, mid):
    k = len(link.sent)
    link.deliver_from(req(CON, 1, mid, tok, [(6, 0)] + path("counter")), peer, 1)
    ep.serve(5)
    return Message().decode(link.sent[k][1])

def _register(ep, link, tok=b"\x0b\x0b", mid=0x700):
    m = one(ep, link, req(CON, 1, mid, tok, [(6, 0)] + path("counter")))
    check(m.code == 0x45 and opt(m, 6) >= 0, "registered")
    return m


def test_observe_register_notify_sequence_and_deregister():
    ep, link, c, tree = server()
    m = _register(ep, link)
    seqs = [opt(m, 6)]
    for v in (1, 2, 3):
        tree.counter = v
        ep.changed(COUNTER)
        out = ask(ep, link, req(CON, 1, 0x800 + v, b"", path("hello")))
        ns = [x for x in out if x.token_is(b"\x0b\x0b", 2)]
        check(len(ns) == 1 and ns[0].type == NON and body(ns[0]) == str(v).encode(), "notif")
        seqs.append(opt(ns[0], 6))
    check(seqs == sorted(seqs) and len(set(seqs)) == 4, seqs)
    check(ep.server.obs.count() == 1, "one observer")
    _register(ep, link, mid=0x701)  # same token again: refreshed, not added
    check(ep.server.obs.count() == 1, "re-registration replaces")
    m = one(ep, link, req(CON, 1, 0x702, b"\x0b\x0b", [(6, 1)] + path("counter")))
    check(m.code == 0x45 and opt(m, 6) == -1 and ep.server.obs.count() == 0, "deregistered")
    ep.changed(COUNTER)
    check(ask(ep, link, req(CON, 1, 0x703, b"", path("hello")))[0].code == 0x45, "no more")


def test_rst_to_notification_and_non_2xx_end_observation():
    ep, link, c, tree = server()
    _register(ep, link)
    ep.changed()
    k = len(link.sent)
    ep.serve(5)
    n = Message().decode(link.sent[k][1])
    link.deliver(bytes([0x70, 0, n.mid >> 8, n.mid & 0xFF]), 1)  # RST
    ep.serve(5)
    check(ep.server.obs.count() == 0, "RST removes the observer")
    _register(ep, link, b"\x0c", 0x710)
    one(ep, link, req(CON, 4, 0x711, b"", path("counter")))  # DELETE
    ep.changed(COUNTER)
    k = len(link.sent)
    ep.serve(5)
    n = Message().decode(link.sent[k][1])
    check(n.code == 0x84 and opt(n, 6) == -1 and ep.server.obs.count() == 0, "4.04 ends it")


def test_con_notification_retransmitted_acked_and_dropped_after_timeout():
    ep, link, c, tree = server()
    _register(ep, link)
    ep.changed(COUNTER, con=True)
    k = len(link.sent)
    ep.serve(100)
    n = Message().decode(link.sent[k][1])
    check(n.type == CON and len(link.sent) == k + 1, "CON notification")
    ep.serve(4000)  # > the first timeout: one retransmission, same bytes
    check(len(link.sent) == k + 2 and link.sent[-1][1] == link.sent[k][1], "retransmitted")
    link.deliver(bytes([0x60, 0, n.mid >> 8, n.mid & 0xFF]), 1)  # ACK
    ep.serve(100000)
    check(len(link.sent) == k + 2 and ep.server.obs.count() == 1, "acked: done")
    ep.changed(COUNTER, con=True)
    k = len(link.sent)
    ep.serve(200000)  # never acknowledged: 1 + 4 retransmissions, then dropped
    check(len(link.sent) == k + 5, "5 transmissions: %d" % (len(link.sent) - k))
    check(ep.server.obs.count() == 0 and ep.server.obs.dropped == 1, "dropped")


def test_con_notification_once_a_day_and_nstart_one():
    ep, link, c, tree = peers_server()
    _register_from(ep, link, b"A", b"\x01", 0x710)
    _register_from(ep, link, b"B", b"\x02", 0x720)
    ep.changed()
    k = len(link.sent)
    ep.serve(5)
    check([Message().decode(d).type for _, d in link.sent[k:]] == [NON, NON], "NON")
    c.t += 86400000  # a day later both need a CON; only one may be in flight
    ep.changed()
    k = len(link.sent)
    ep.serve(5)
    sent = [Message().decode(d) for _, d in link.sent[k:]]
    check(len(sent) == 1 and sent[0].type == CON, "one CON in flight")
    link.deliver_from(bytes([0x60, 0, sent[0].mid >> 8, sent[0].mid & 0xFF]), link.to[-1], 1)
    ep.serve(10)
    m = Message().decode(link.sent[-1][1])
    check(len(link.sent) == k + 2 and m.type == CON and m.mid != sent[0].mid, "then the other")


def test_observer_table_full_serves_without_observe():
    ep, link, c, tree = peers_server(observers=2)
    check(opt(_register_from(ep, link, b"A", b"\x01", 0x710), 6) >= 0, "A")
    check(opt(_register_from(ep, link, b"B", b"\x02", 0x720), 6) >= 0, "B")
    m = _register_from(ep, link, b"C", b"\x03", 0x730)
    check(m.code == 0x45 and opt(m, 6) == -1 and body(m) == b"0", "served plainly")
    check(ep.server.obs.count() == 2, "still two")
    m = _register_from(ep, link, b"A", b"\x09", 0x740)
    check(opt(m, 6) >= 0 and ep.server.obs.count() == 2, "same client, new token: replaced")
    ep2, link2, c2, tree2 = server()
    m = one(ep2, link2, req(CON, 1, 0x731, b"\x04", [(6, 0)] + path("hello")))
    check(opt(m, 6) == -1, "not observable: no Observe")


def test_observe_with_block2_notification_first_block():
    ep, link, c, tree = server(max_block=64)

    class Big(Tree):
        def handle(self, req, resp):
            r = Tree.handle(self, req, resp)
            if req.path_is(0, b"big"):
                resp.observable = 9
            return r

    ep.server.handler = Big()
    m = one(ep, link, req(CON, 1, 1, b"\x09", [(6, 0)] + path("big")))
    check(opt(m, 6) >= 0 and opt(m, 23) == 0x0A, "first block with Observe")
    ep.changed(9)
    k = len(link.sent)
    ep.serve(5)
    n = Message().decode(link.sent[k][1])
    check(opt(n, 6) > opt(m, 6) and opt(n, 23) == 0x0A and len(body(n)) == 64, "notif block")
