# Helpers for the node's CoAP server tests (mp_test_coapserver*.py, mp_test_coapobserve.py):
# requests built with the node's writer, a served endpoint on a simulated link, links
# for two endpoints, addressed peers and allocation measurements. MicroPython.
from coap.decode import Message
from coap.endpoint import Endpoint
from coap.msg import MessageWriter
from coaptree import Tree
from mp_test_simlink import SimClock, SimLink, Rand

CON = 0
NON = 1
ACK = 2
RST = 3


def _hex(b):
    return "".join("%02x" % x for x in b)


def req(mtype, code, mid, token=b"", options=(), payload=b""):
    w = MessageWriter(bytearray(1300))
    w.begin(mtype, code, mid, token)
    for num, val in options:
        if isinstance(val, int):
            w.option_uint(num, val)
        else:
            w.option(num, val)
    w.payload(payload)
    return bytes(w.buf[: w.pos])


def path(p):
    return [(11, s) for s in p.split("/") if s]


def server(tree=None, **kw):
    c = SimClock(5000)
    link = SimLink(c)
    ep = Endpoint(link, c, Rand(3))
    tree = tree or Tree()
    ep.serve_resources(tree, **kw)
    return ep, link, c, tree


def ask(ep, link, data):
    """Deliver one datagram, serve, return the decoded answers (new ones only)."""
    k = len(link.sent)
    link.deliver(data, 1)
    ep.serve(5)
    return [Message().decode(d) for _, d in link.sent[k:]]


def one(ep, link, data):
    out = ask(ep, link, data)
    if len(out) != 1:
        raise AssertionError("%d answers" % len(out))
    return out[0]


def opt(m, num):
    i = m.find(num)
    return -1 if i < 0 else m.uint(i)


def body(m):
    return bytes(m.data[m.pstart : m.n])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Pair:
    """Two endpoints joined by simulated links: a's datagrams reach b and back."""

    def __init__(self, drop_every=0):
        self.c = SimClock(1000)
        self.la = SimLink(self.c, self._to_b)
        self.lb = SimLink(self.c, self._to_a)
        self.n = 0
        self.drop_every = drop_every

    def _to_b(self, link, data):
        self.n += 1
        if self.drop_every and self.n % self.drop_every == 0:
            return  # lost
        self.lb.deliver(data, 2)
        self.lb.clock  # noqa
        self.b.handle(self.lb.recv(5))

    def _to_a(self, link, data):
        self.la.deliver(data, 2)


class PeerLink(SimLink):
    """A SimLink whose datagrams come from addressed peers (like UdpServer)."""

    def __init__(self, clock):
        SimLink.__init__(self, clock)
        self.remote = None
        self.to = []

    def deliver_from(self, data, peer, delay=0):
        self.deliver(bytes([len(peer)]) + peer + data, delay)

    def recv(self, t):
        d = SimLink.recv(self, t)
        if d is None:
            return None
        self.remote = d[1 : 1 + d[0]]
        return d[1 + d[0] :]

    def sendto(self, buf, n, peer):
        self.to.append(peer)
        self.send(buf, n)


class LeanLink:
    """Delivers one preallocated request per recv (its MID bumped each time), swallows
    the answers: what is measured is the endpoint's own allocation."""

    def __init__(self, clock, data):
        self.clock = clock
        self.req = bytearray(data)
        self.mv = memoryview(self.req)
        self.due = False
        self.sent = 0
        self.last = bytearray(1200)
        self.n = 0

    def send(self, buf, n):
        self.sent += 1
        self.n = n
        self.last[1] = buf[1]

    def recv(self, t):
        if self.due:
            self.due = False
            mid = ((self.req[2] << 8) | self.req[3]) + 1
            self.req[2] = (mid >> 8) & 0xFF
            self.req[3] = mid & 0xFF
            return self.mv
        self.clock.t += t
        return None
