# Incoming CoAP messages for the Endpoint (coap/endpoint.py; RFC 7252): classify what
# arrives while a request is in flight or the node idles, detect duplicate CON/NON
# messages (section 4.5: re-send the cached answer, do not process again) for
# EXCHANGE_LIFETIME, hand requests to the server side (coap/server.py Server, once
# Endpoint.serve_resources() made one; 4.04 without), pass ACK/RST of notifications to
# it, reject what cannot be processed with RST. A base class of Endpoint, in its own
# module to keep each compile small.
#
# The response cache: _DEDUP_SLOTS answers of up to _slot bytes each (16 without a
# server: empty ACK/RST and 4.04; the server makes them larger). A longer answer is
# re-sent from the server's buffer while that still holds it; otherwise the duplicate
# is processed again, so handlers of large answers should be idempotent (GET, and
# Block2 blocks, are).
from micropython import const
import time
from coap.msg import MessageWriter, CoapError, move
from coap.decode import Message

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
    """Receive side of an endpoint. The subclass provides clock, _send_to(buf, n,
    peer), _next_mid(), _pmid (MID of the request in flight, -1 if none) and _tok (its
    token, 4 bytes)."""

    def __init__(self):
        self.rx = Message()
        self.server = None  # coap/server.py Server once the endpoint serves resources
        self._cache(_REPLY_MAX)
        self._dnext = 0
        self.duplicates = 0  # for tests and diagnostics

    def _cache(self, slot):
        # duplicate detection: message ID, peer, time, and the answer sent (section 4.5)
        self._slot = slot
        self._reply = bytearray(slot)
        self._rw = MessageWriter(self._reply)
        self._dmid = [-1] * _DEDUP_SLOTS
        self._dpeer = [None] * _DEDUP_SLOTS
        self._dt = [0] * _DEDUP_SLOTS
        self._dlen = [0] * _DEDUP_SLOTS
        self._dbuf = bytearray(_DEDUP_SLOTS * slot)

    def _reply_empty(self, mtype, mid, peer):
        # Empty ACK or RST (section 4.2/4.3); remembered for duplicates of mid
        self._rw.begin(mtype, _EMPTY, mid)
        self._send_to(self._reply, 4, peer)
        self._remember(mid, peer, self._reply, 4)

    def _remember(self, mid, peer, buf, n):
        # the answer buf[:n] to (peer, mid); -1 marks one too long to keep
        i = self._dnext
        self._dnext = (i + 1) % _DEDUP_SLOTS
        self._dmid[i] = mid
        self._dpeer[i] = peer
        self._dt[i] = self.clock.ticks_ms()
        if n > self._slot:
            n = -1
        elif n:
            move(self._dbuf, i * self._slot, buf, 0, n)
        self._dlen[i] = n

    def _duplicate(self, mid, peer):
        # A CON/NON seen within EXCHANGE_LIFETIME: re-send what we answered, if anything.
        now = self.clock.ticks_ms()
        for i in range(_DEDUP_SLOTS):
            if self._dmid[i] == mid and self._dpeer[i] == peer:
                if time.ticks_diff(now, self._dt[i]) >= _EXCHANGE_LIFETIME_MS:
                    self._dmid[i] = -1
                    return False
                n = self._dlen[i]
                if n < 0:
                    s = self.server
                    if s is None or s._last_mid != mid or s._last_peer != peer:
                        self._dmid[i] = -1  # the answer is gone: process it again
                        return False
                    self.duplicates += 1
                    self._send_to(s.tx, s._last_n, peer)
                    return True
                self.duplicates += 1
                if n:
                    r = self._reply
                    move(r, 0, self._dbuf, i * self._slot, n)
                    self._send_to(r, n, peer)
                return True
        return False

    def handle(self, data, peer=None):
        """Process one datagram (from peer, None for a connected transport); returns
        NOTHING, RESPONSE (self.rx is the response to the request in flight),
        EMPTY_ACK or RESET (for the request in flight)."""
        rx = self.rx
        try:
            rx.decode(data)
        except CoapError:
            # section 4.2/4.3: reject a malformed CON with RST; drop anything else
            if len(data) >= 4 and data[0] >> 4 == (_VERSION << 2) | _CON:
                self._rw.begin(_RST, _EMPTY, (data[2] << 8) | data[3])
                self._send_to(self._reply, 4, peer)
            return NOTHING
        t = rx.type
        code = rx.code
        cls = code >> 5
        if t == _ACK or t == _RST:
            if rx.mid != self._pmid:
                s = self.server
                if s is not None and s.obs is not None:
                    s.obs.on_ack(rx.mid, t == _RST, peer)
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
        if self._duplicate(mid, peer):
            return NOTHING
        con = t == _CON
        if code == _EMPTY:
            if con:  # CoAP ping, section 4.3
                self._reply_empty(_RST, mid, peer)
            return NOTHING
        if cls == 0:
            if self.server is not None:
                self.server.request(rx, peer)
                return NOTHING
            # no resources served -> 4.04 (section 5.2.1/5.2.2)
            if con:
                self._rw.begin(_ACK, _NOT_FOUND, mid, rx.data, rx.tkl, 4)
            else:
                self._rw.begin(_NON, _NOT_FOUND, self._next_mid(), rx.data, rx.tkl, 4)
            self._send_to(self._reply, self._rw.pos, peer)
            self._remember(mid, peer, self._reply, self._rw.pos)
            return NOTHING
        if 2 <= cls <= 5 and self._pmid >= 0 and rx.token_is(self._tok, 4):
            # separate response (section 5.2.2): ACK it if confirmable
            if con:
                self._reply_empty(_ACK, mid, peer)
            else:
                self._remember(mid, peer, self._reply, 0)
            return RESPONSE
        # a response nobody waits for, or a reserved code class: reject a CON
        if con:
            self._reply_empty(_RST, mid, peer)
        return NOTHING
