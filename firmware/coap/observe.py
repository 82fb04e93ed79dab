# Observe (RFC 7641) on the server side of the Endpoint (coap/endpoint.py): a bounded
# table of observers (client address, token, the method and options of its GET or
# FETCH; a FETCH's payload is kept by the application, see lwm2m/attrs.py
# Watch.add_composite), notifications rendered by the same handler that answered the
# request, with a 24-bit sequence number (section 4.4), NON by default and CON when the
# application asks or when a day has passed since the last confirmed one (section
# 4.5); one CON notification in flight at a time (NSTART 1, RFC 7252 section 4.7), retransmitted with back-off and the observer
# dropped when it is never acknowledged or answered with RST. Pending notifications
# are one flag per observer: a bounded queue where a newer state replaces an older
# one (section 4.5.2).
from micropython import const
import time
from coap.decode import Message
from coap.msg import CoapError, move

_CON = const(0)
_NON = const(1)
_TKL = const(8)
_OREQ = const(48)  # bytes of stored request options per observer (longer: not observed)
_DAY_MS = const(86400000)  # a CON notification at least every 24 h (section 4.5)
_MAX_RETRANSMIT = const(4)  # RFC 7252 section 4.8
_SEQ_MASK = const(0xFFFFFF)  # Observe values are 24 bits (section 4.4)


class Observers:
    """Observer table of a Server (coap/server.py; n entries)."""

    def __init__(self, srv, n):
        self.srv = srv
        self.ep = srv.ep
        self.n = n
        self.key = [-1] * n  # application key of the observed resource, -1: free
        self.peer = [None] * n
        self.tok = bytearray(_TKL * n)
        self.tkl = bytearray(n)
        self.opt = bytearray(_OREQ * n)
        self.olen = bytearray(n)
        self.pend = bytearray(n)  # 0 nothing, 1 notify, 2 notify confirmable
        self.lastcon = [0] * n  # ticks of registration / last acknowledged notification
        self.nmid = [-1] * n  # MID of the last notification sent to each
        self.seq = 0
        self.fl = -1  # observer whose CON notification is in flight
        self.fmid = -1
        self.fgen = 0
        self.flen = 0
        self.ftries = 0
        self.ftimeout = 0
        self.funtil = 0
        self._syn = bytearray(4 + _TKL + _OREQ)
        self._sm = Message(24)
        self.dropped = 0  # observers removed after RST or an unacknowledged notification

    def count(self):
        c = 0
        for k in self.key:
            if k >= 0:
                c += 1
        return c

    def next_seq(self):
        self.seq = (self.seq + 1) & _SEQ_MASK
        return self.seq

    def _find(self, peer, tok, toff, tkl):
        t = self.tok
        for i in range(self.n):
            if self.key[i] >= 0 and self.tkl[i] & 0x0F == tkl and self.peer[i] == peer:
                b = i * _TKL
                k = 0
                while k < tkl and t[b + k] == tok[toff + k]:
                    k += 1
                if k == tkl:
                    return i
        return -1

    def add(self, req, key):
        """Register or refresh the observation req (a GET with Observe 0) of resource
        key; returns the response's Observe value, or -1 if not registered (table
        full, or the request's options too long to keep): then the GET is simply
        answered (section 4.1 allows that)."""
        m = req.msg
        tkl = m.tkl
        s = 4 + tkl
        n = (m.pstart - 1 if m.pstart < m.n else m.n) - s
        if n > _OREQ:
            return -1
        peer = req.peer
        i = self._find(peer, m.data, 4, tkl)
        if i < 0:  # same client and resource: replace the entry (section 4.1)
            for j in range(self.n):
                if self.key[j] == key and self.peer[j] == peer:
                    i = j
                    break
        if i < 0:
            for j in range(self.n):
                if self.key[j] < 0:
                    i = j
                    break
        if i < 0:
            return -1
        if i == self.fl:
            self.fl = self.fmid = -1
        self.key[i] = key
        self.peer[i] = peer
        self.tkl[i] = tkl | m.code << 4  # the token length and the method (GET or FETCH)
        move(self.tok, i * _TKL, m.data, 4, tkl)
        move(self.opt, i * _OREQ, m.data, s, n)
        self.olen[i] = n
        self.pend[i] = 0
        self.lastcon[i] = self.ep.clock.ticks_ms()
        self.nmid[i] = -1
        return self.next_seq()

    def cancel(self, peer, tok, toff, tkl):
        """GET with Observe 1 (section 3.6): forget the observation with that token."""
        i = self._find(peer, tok, toff, tkl)
        if i >= 0:
            self._remove(i)

    def _remove(self, i):
        self.key[i] = -1
        self.peer[i] = None
        self.pend[i] = 0
        if self.fl == i:
            self.fl = self.fmid = -1

    def changed(self, key=-1, con=False):
        """Resource key (every resource with -1) changed: notify its observers."""
        c = 2 if con else 1
        for i in range(self.n):
            k = self.key[i]
            if k >= 0 and (key < 0 or k == key) and self.pend[i] < c:
                self.pend[i] = c

    def abandon(self):
        """Stop retransmitting the CON notification in flight (the client side starts
        a request: NSTART 1); it is sent again, confirmable, later."""
        if self.fl >= 0:
            self.pend[self.fl] = 2
            self.fl = self.fmid = -1

    def on_ack(self, mid, rst, peer):
        """An ACK or RST that is not for the client's request; True if it was for a
        notification. RST to any notification ends that observation (section 3.6)."""
        i = self.fl
        if i >= 0 and mid == self.fmid and self.peer[i] == peer:
            self.fl = self.fmid = -1
            if rst:
                self._remove(i)
            else:
                self.lastcon[i] = self.ep.clock.ticks_ms()
            return True
        if rst:
            for i in range(self.n):
                if self.key[i] >= 0 and self.nmid[i] == mid and self.peer[i] == peer:
                    self._remove(i)
                    return True
        return False

    def _send(self, i, con):
        # Render observer i's GET (FETCH) again and send the answer as a notification; the
        # notification's MID, or -1 when the observation ended.
        ep = self.ep
        srv = self.srv
        tkl = self.tkl[i] & 0x0F
        n = self.olen[i]
        s = self._syn
        s[0] = 0x40 | tkl  # a CON GET or FETCH: what the observer sent
        s[1] = self.tkl[i] >> 4
        s[2] = s[3] = 0
        move(s, 4, self.tok, i * _TKL, tkl)
        move(s, 4 + tkl, self.opt, i * _OREQ, n)
        try:
            m = self._sm.decode(s, 4 + tkl + n)
        except CoapError:
            self._remove(i)
            return -1
        mid = ep._next_mid()
        peer = self.peer[i]
        k = srv.notify(m, peer, i, _CON if con else _NON, mid, self.tok, i * _TKL, tkl)
        if not k:
            self._remove(i)
            return -1
        ep._send_to(srv.tx, k, peer)
        self.nmid[i] = mid
        self.flen = k
        if srv.tx[1] >> 5 != 2:
            self._remove(i)  # a non-2.xx notification ends the observation (section 3.2)
            return -1
        return mid

    def poll(self):
        """Retransmit the CON notification in flight when due and send pending ones;
        returns ms until the next retransmission, or -1 when none is in flight."""
        ep = self.ep
        now = ep.clock.ticks_ms()
        i = self.fl
        if i >= 0 and time.ticks_diff(self.funtil, now) <= 0:
            if self.ftries >= _MAX_RETRANSMIT:
                self._remove(i)  # never acknowledged: the client is gone (section 4.5)
                self.dropped += 1
            else:
                self.ftries += 1
                self.ftimeout <<= 1
                self.funtil = time.ticks_add(now, self.ftimeout)
                srv = self.srv
                if srv.gen == self.fgen:
                    ep._send_to(srv.tx, self.flen, self.peer[i])
                    ep.retransmissions += 1
                else:  # the buffer was reused: send the current state (section 4.5.2)
                    self._start(i, now)
        for i in range(self.n):
            p = self.pend[i]
            if not p:
                continue
            if p == 2 or time.ticks_diff(now, self.lastcon[i]) >= _DAY_MS:
                if self.fl < 0 and ep._pmid < 0:  # NSTART 1: one CON at a time
                    self.pend[i] = 0
                    self.ftries = 0
                    half = ep.ack_timeout_ms >> 1
                    self.ftimeout = ep.ack_timeout_ms + ((ep.rand(16) * half) >> 16)
                    self.funtil = time.ticks_add(now, self.ftimeout)
                    self._start(i, now)
            else:
                self.pend[i] = 0
                self._send(i, False)
        if self.fl < 0:
            return -1
        left = time.ticks_diff(self.funtil, now)
        return left if left > 0 else 1

    def _start(self, i, now):
        mid = self._send(i, True)
        if mid >= 0:
            self.fl = i
            self.fmid = mid
            self.fgen = self.srv.gen
        elif self.fl == i:
            self.fl = self.fmid = -1
