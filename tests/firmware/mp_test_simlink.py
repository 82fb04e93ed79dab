# A simulated clock and lossy datagram link for firmware tests (MicroPython), plus
# checks of the simulator itself. Other mp_test_* modules import SimClock/SimLink.
#
# SimLink is a coap transport: send() records the datagram with the simulated time and
# hands it to a scripted peer, which may answer with deliver(data, delay); recv(t)
# returns the next delivery due within t ms and advances the clock to it, or advances
# the clock by t and returns None. Nothing sleeps in real time.


class SimClock:
    def __init__(self, t=1000):
        self.t = t
        self.sleeps = []

    def ticks_ms(self):
        return self.t

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        self.t += ms


class SimLink:
    def __init__(self, clock, peer=None):
        self.clock = clock
        self.peer = peer
        self.sent = []  # [(time, bytes)]
        self.inbox = []  # [(due time, bytes)], kept sorted

    def send(self, buf, n):
        data = bytes(buf[:n])
        self.sent.append((self.clock.t, data))
        if self.peer is not None:
            self.peer(self, data)

    def deliver(self, data, delay=0):
        due = self.clock.t + delay
        i = len(self.inbox)
        while i > 0 and self.inbox[i - 1][0] > due:
            i -= 1
        self.inbox.insert(i, (due, bytes(data)))

    def recv(self, timeout_ms):
        if timeout_ms < 0:
            timeout_ms = 0
        now = self.clock.t
        if self.inbox and self.inbox[0][0] <= now + timeout_ms:
            due, data = self.inbox.pop(0)
            if due > now:
                self.clock.t = due
            return data
        self.clock.t = now + timeout_ms
        return None


class Rand:
    """Deterministic stand-in for random.getrandbits (a small LCG)."""

    def __init__(self, seed=1):
        self.s = seed & 0x7FFFFFFF

    def __call__(self, bits):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.s >> 7) & ((1 << bits) - 1)


def header(data):
    """(type, code, mid, token) of a datagram, parsed by hand (independent of coap/endpoint.py)."""
    tkl = data[0] & 0x0F
    return (data[0] >> 4) & 3, data[1], (data[2] << 8) | data[3], bytes(data[4 : 4 + tkl])


def msg(mtype, code, mid, token=b"", rest=b""):
    """A datagram built by hand: header, token, then raw options/payload bytes."""
    return bytes([0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF]) + token + rest


def test_simlink_orders_deliveries_and_advances_time():
    c = SimClock(0)
    link = SimLink(c)
    link.deliver(b"b", 50)
    link.deliver(b"a", 10)
    if link.recv(5) is not None or c.t != 5:
        raise AssertionError("early delivery")
    if link.recv(100) != b"a" or c.t != 10:
        raise AssertionError("first")
    if link.recv(100) != b"b" or c.t != 50:
        raise AssertionError("second")
    if link.recv(7) is not None or c.t != 57:
        raise AssertionError("timeout")


def test_header_helpers_roundtrip():
    m = msg(2, 0x45, 0x1234, b"\x01\x02", b"\xff!")
    if m != b"\x62\x45\x12\x34\x01\x02\xff!":
        raise AssertionError(m)
    if header(m) != (2, 0x45, 0x1234, b"\x01\x02"):
        raise AssertionError(header(m))
