# CoAP (RFC 7252) client endpoint for the node, over the codec in coap/msg.py
# (errors, MessageWriter) and coap/decode.py (Message).
#
# Endpoint runs one confirmable request at a time (NSTART 1, section 4.7) over a
# transport, retransmitting with exponential back-off (section 4.8) and taking
# piggybacked and separate responses (section 5.2); its base class Incoming (coap/incoming.py)
# detects duplicates and answers the server's requests. Transport, clock and
# randomness are injectable, so tests run the retransmission logic on a simulated
# lossy link without sleeping.
#
# Transport interface: send(buf, n) transmits buf[:n] as one datagram (may raise
# OSError, treated as a lost datagram); recv(timeout_ms) returns one datagram as a
# bytes-like object, or None when nothing arrived within timeout_ms.
# Clock interface: ticks_ms() (time.ticks_ms semantics; differences via ticks_diff).
from micropython import const
import time
from coap.msg import MessageWriter, CoapTimeout, CoapReset
from coap.incoming import Incoming, RESPONSE, EMPTY_ACK, RESET

_CON = const(0)  # RFC 7252 section 3

# Transmission parameters, section 4.8
_ACK_TIMEOUT_MS = const(2000)
_MAX_RETRANSMIT = const(4)
_MAX_RETRANSMIT_RTO = const(64)  # with an estimated timeout: the deadline decides
# ACK_RANDOM_FACTOR 1.5: the initial timeout is ACK_TIMEOUT + [0, ACK_TIMEOUT / 2)
_SEPARATE_TIMEOUT_MS = const(30000)  # wait for a separate response after an empty ACK

_TOKEN_LEN = const(4)  # random token per request, section 5.3.1 (coap/incoming.py assumes 4)
_BUF_SIZE = const(512)  # request buffer


class Endpoint(Incoming):
    """A CoAP client endpoint talking to one server over ``transport``.

    Use: w = ep.begin(code); w.option(...) ...; resp = ep.exchange(). The response is a
    Message over the received datagram, valid until the next call on the endpoint.
    ep.serve(ms) handles incoming messages while the application is idle.
    """

    # a hardware watchdog (machine.WDT; lwm2m/session.py sets it, for every endpoint):
    # fed at each wait, which then lasts at most feed_ms (the callers wait again)
    wdt = None
    feed_ms = 0

    def __init__(self, transport, clock=None, rand=None, bufsize=_BUF_SIZE,
                 ack_timeout_ms=_ACK_TIMEOUT_MS, separate_timeout_ms=_SEPARATE_TIMEOUT_MS):
        super().__init__()
        self.transport = transport
        self.clock = clock if clock is not None else time
        if rand is None:
            import random
            import os

            try:
                s = os.urandom(4)
                random.seed((s[0] << 22) ^ (s[1] << 14) ^ (s[2] << 6) ^ s[3])
            except (AttributeError, OSError):
                pass
            rand = random.getrandbits
        self.rand = rand
        self.ack_timeout_ms = ack_timeout_ms
        self.separate_timeout_ms = separate_timeout_ms
        self.tx = bytearray(bufsize)
        self.w = MessageWriter(self.tx)
        self._mid = rand(16)
        self._tok = bytearray(_TOKEN_LEN)
        self._pmid = -1  # message ID of the request in flight, -1 when none
        self.retransmissions = 0  # for tests and diagnostics
        self.woken = False  # set (by a handler) to make serve() return early

    def _next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def begin(self, code, mtype=_CON):
        """Start a request with a fresh message ID and random token; returns the writer."""
        tok = self._tok
        rand = self.rand
        for i in range(_TOKEN_LEN):
            tok[i] = rand(8)
        self.w.begin(mtype, code, self._next_mid(), tok, _TOKEN_LEN)
        return self.w

    def _send(self, buf, n):
        try:
            self.transport.send(buf, n)
        except OSError:
            pass  # a datagram the network refused is a lost datagram

    def _send_to(self, buf, n, peer):
        if peer is None:
            return self._send(buf, n)
        try:
            self.transport.sendto(buf, n, peer)
        except OSError:
            pass

    def _recv(self, timeout_ms):
        w = self.wdt
        if w is not None:
            w.feed()
            if timeout_ms > self.feed_ms:
                timeout_ms = self.feed_ms
        data = self.transport.recv(timeout_ms)
        if data is None:
            return 0
        return self.handle(data, getattr(self.transport, "remote", None))

    def serve_resources(self, handler, max_block=1024, body=1024, block1=1024,
                        observers=8, cache_slot=64):
        """Answer incoming requests with handler.handle(req, resp) (see coap/server.py).

        max_block: largest block size used (16..1024); body: bytes of the response
        payload area (a representation written in place must fit, windowed writes
        need one block); block1: largest request body reassembled from Block1 blocks
        (4.13 beyond); observers: observer table size (0: no Observe); cache_slot:
        bytes of each cached answer for duplicate detection. Allocates all buffers now.
        """
        from coap.server import Server

        self._cache(cache_slot)
        self.server = Server(self, handler, max_block, body, block1, observers)
        return self.server

    def changed(self, key=-1, con=False):
        """The resource observed under key (all: -1) changed: notify its observers
        (confirmable if con) at the next poll()/serve()."""
        s = self.server
        if s is not None and s.obs is not None:
            s.obs.changed(key, con)

    def poll(self):
        """Send pending notifications and due retransmissions; ms until the next
        retransmission is due, or -1."""
        s = self.server
        if s is None or s.obs is None:
            return -1
        return s.obs.poll()

    def exchange_body(self, body, n=-1, deadline_ms=-1, szx=6):
        """Like exchange(), with body[:n] as the payload of the request begun with
        begin() (its options must all be below Block1, 27): sent in one message if it
        fits the buffer, else block-wise (RFC 7959 Block1, blocks of at most
        16 << szx bytes, following the server's 2.31 Continue and smaller sizes).
        deadline_ms bounds each block's exchange. Returns the final response."""
        from coap.block import send

        return send(self, body, len(body) if n < 0 else n, deadline_ms, szx)

    def _renew(self):
        # a fresh MID and random token for the request in tx (next block of a body)
        tx = self.tx
        mid = self._next_mid()
        tx[2] = mid >> 8
        tx[3] = mid & 0xFF
        tok = self._tok
        rand = self.rand
        for i in range(_TOKEN_LEN):
            tok[i] = rand(8)
            tx[4 + i] = tok[i]

    def exchange(self, deadline_ms=-1, rto_ms=0):
        """Send the request built since begin() and wait for its response.

        CON: retransmitted after ACK_TIMEOUT..ACK_TIMEOUT*1.5 ms, doubling, at most
        MAX_RETRANSMIT times; raises CoapTimeout after the last wait, CoapReset on RST.
        deadline_ms (if >= 0) bounds the whole exchange. rto_ms > 0: the first wait is
        that (a timeout estimated from measured round trips, as CoCoA does: ota/fetch.py),
        doubling up to ACK_TIMEOUT, retransmitted until the deadline (at most 64 times).
        Returns self.rx.
        """
        clock = self.clock
        tx = self.tx
        n = self.w.pos
        mid = (tx[2] << 8) | tx[3]
        con = (tx[0] >> 4) & 3 == _CON
        start = clock.ticks_ms()
        half = self.ack_timeout_ms >> 1
        timeout = self.ack_timeout_ms + ((self.rand(16) * half) >> 16)
        tries_max = _MAX_RETRANSMIT
        if rto_ms > 0:
            timeout = rto_ms
            tries_max = _MAX_RETRANSMIT_RTO
        s = self.server
        if s is not None and s.obs is not None:
            s.obs.abandon()  # NSTART 1: no CON notification in flight meanwhile
        self._pmid = mid
        acked = not con  # NON: no ACK to wait for, only the response
        tries = 0
        self._send(tx, n)
        wait_until = time.ticks_add(start, timeout if con else self.separate_timeout_ms)
        try:
            while True:
                now = clock.ticks_ms()
                left = time.ticks_diff(wait_until, now)
                if deadline_ms >= 0:
                    dl = deadline_ms - time.ticks_diff(now, start)
                    if dl <= 0:
                        raise CoapTimeout("no response within %d ms" % deadline_ms)
                    if dl < left:
                        left = dl
                if left <= 0:
                    if acked:
                        raise CoapTimeout("no separate response")
                    if tries >= tries_max:
                        raise CoapTimeout("no response after %d retransmissions" % tries)
                    tries += 1
                    self.retransmissions += 1
                    timeout <<= 1
                    if rto_ms > 0 and timeout > self.ack_timeout_ms:
                        timeout = self.ack_timeout_ms
                    self._send(tx, n)
                    wait_until = time.ticks_add(now, timeout)
                    continue
                r = self._recv(left)
                if r == RESPONSE:
                    return self.rx
                if r == EMPTY_ACK and not acked:
                    acked = True
                    wait_until = time.ticks_add(clock.ticks_ms(), self.separate_timeout_ms)
                elif r == RESET:
                    raise CoapReset("request reset by peer")
        finally:
            self._pmid = -1

    def serve(self, ms):
        """Handle incoming messages for ``ms`` milliseconds (no request in flight),
        sending notifications and their retransmissions meanwhile; returns early
        once ``woken`` is set (and clears it)."""
        clock = self.clock
        until = time.ticks_add(clock.ticks_ms(), ms)
        while True:
            if self.woken:
                self.woken = False
                return
            nxt = self.poll() if self.server is not None else -1
            left = time.ticks_diff(until, clock.ticks_ms())
            if left <= 0:
                return
            if 0 <= nxt < left:
                left = nxt
            self._recv(left)
