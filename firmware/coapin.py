# Incoming CoAP messages for coap.Endpoint (RFC 7252): classify what arrives while a
# request is in flight or the node idles, detect duplicate CON/NON messages (section
# 4.5: re-send the cached answer, do not process again), answer requests with 4.04
# (the node serves no resources yet), reject what cannot be processed with RST.
# A base class of coap.Endpoint, in its own module to keep each compile small.
from micropython import const
import time
from coapmsg import MessageWriter, CoapError
from coapdec import Message

# RFC 7252 section 3 / 12.1
_VERSION = const(1)
_CON = const(0)
_NON = const(1)
_ACK = const(2)
_RST = const(3)
_EMPTY = const(0)
_NOT_FOUND = const(0x84)  # 4.04

_EXCHANGE_LIFETIME_MS = const(247000)  # section 4.8.2; how long duplicates are answered
_DEDUP_SLOTS = const(8)
_REPLY_MAX = const(16)  # 4 header + 8 token; our answers carry no options

# handle() results
NOTHING = const(0)
RESPONSE = const(1)
EMPTY_ACK = const(2)
RESET = const(3)


class Incoming:
    """Receive side of an endpoint. The subclass provides clock, _send(buf, n),
    _next_mid(), _pmid (MID of the request in flight, -1 if none) and _tok (its token,
    4 bytes)."""

    def __init__(self):
        self.rx = Message()
        self._reply = bytearray(_REPLY_MAX)
        self._rw = MessageWriter(self._reply)
        # duplicate detection: message ID, time, and the answer sent (section 4.5)
        self._dmid = [-1] * _DEDUP_SLOTS
        self._dt = [0] * _DEDUP_SLOTS
        self._dlen = [0] * _DEDUP_SLOTS
        self._dbuf = bytearray(_DEDUP_SLOTS * _REPLY_MAX)
        self._dnext = 0
        self.duplicates = 0  # for tests and diagnostics

    def _reply_empty(self, mtype, mid):
        # Empty ACK or RST (section 4.2/4.3); remembered for duplicates of mid
        self._rw.begin(mtype, _EMPTY, mid)
        self._send(self._reply, 4)
        self._remember(mid, 4)

    def _remember(self, mid, n):
        i = self._dnext
        self._dnext = (i + 1) % _DEDUP_SLOTS
        self._dmid[i] = mid
        self._dt[i] = self.clock.ticks_ms()
        self._dlen[i] = n
        base = i * _REPLY_MAX
        d = self._dbuf
        r = self._reply
        for k in range(n):
            d[base + k] = r[k]

    def _duplicate(self, mid):
        # A CON/NON seen within EXCHANGE_LIFETIME: re-send what we answered, if anything.
        now = self.clock.ticks_ms()
        for i in range(_DEDUP_SLOTS):
            if self._dmid[i] == mid:
                if time.ticks_diff(now, self._dt[i]) >= _EXCHANGE_LIFETIME_MS:
                    self._dmid[i] = -1
                    return False
                self.duplicates += 1
                n = self._dlen[i]
                if n:
                    base = i * _REPLY_MAX
                    d = self._dbuf
                    r = self._reply
                    for k in range(n):
                        r[k] = d[base + k]
                    self._send(r, n)
                return True
        return False

    def handle(self, data):
        """Process one datagram; returns NOTHING, RESPONSE (self.rx is the response to
        the request in flight), EMPTY_ACK or RESET (for the request in flight)."""
        rx = self.rx
        try:
            rx.decode(data)
        except CoapError:
            # section 4.2/4.3: reject a malformed CON with RST; drop anything else
            if len(data) >= 4 and data[0] >> 4 == (_VERSION << 2) | _CON:
                self._rw.begin(_RST, _EMPTY, (data[2] << 8) | data[3])
                self._send(self._reply, 4)
            return NOTHING
        t = rx.type
        code = rx.code
        cls = code >> 5
        if t == _ACK or t == _RST:
            if rx.mid != self._pmid:
                return NOTHING  # late or unrelated
            if t == _RST:
                return RESET
            if code == _EMPTY:
                return EMPTY_ACK
            if 2 <= cls <= 5 and rx.token_is(self._tok, 4):
                return RESPONSE
            return NOTHING
        # CON or NON from the peer
        mid = rx.mid
        if self._duplicate(mid):
            return NOTHING
        con = t == _CON
        if code == _EMPTY:
            if con:  # CoAP ping, section 4.3
                self._reply_empty(_RST, mid)
            return NOTHING
        if cls == 0:
            # A request: the node serves no resources yet -> 4.04 (section 5.2.1/5.2.2)
            if con:
                self._rw.begin(_ACK, _NOT_FOUND, mid, rx.data[4 : 4 + rx.tkl])
            else:
                self._rw.begin(_NON, _NOT_FOUND, self._next_mid(), rx.data[4 : 4 + rx.tkl])
            self._send(self._reply, self._rw.pos)
            self._remember(mid, self._rw.pos)
            return NOTHING
        if 2 <= cls <= 5 and self._pmid >= 0 and rx.token_is(self._tok, 4):
            # separate response (section 5.2.2): ACK it if confirmable
            if con:
                self._reply_empty(_ACK, mid)
            else:
                self._remember(mid, 0)
            return RESPONSE
        # a response nobody waits for, or a reserved code class: reject a CON
        if con:
            self._reply_empty(_RST, mid)
        return NOTHING
