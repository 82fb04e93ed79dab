# OSCORE (RFC 8613) as a transport for the CoAP Endpoint (coap/endpoint.py): it wraps
# the node's transport, has the same interface (send/recv, and remote, sendto,
# stop_on, close where the inner one has them), and protects every datagram on the
# wire while the endpoint keeps working on plain messages.
#
# Out: a request gets a fresh Partial IV (a retransmission, same MID, resends the
# same bytes); a response to a protected request reuses the request's nonce once (a
# second answer, e.g. to a duplicate, gets its own Partial IV); a notification (a
# response with Observe) gets its own Partial IV and is bound to the registering
# request; Empty messages (ACK, RST, ping) pass unprotected. In: a protected request
# is verified (replay window; after a reboot, Echo recovery, Appendix B.1.2) and
# handed on as the plain message; failures are answered as section 8.2 says,
# unprotected, and nothing reaches the endpoint; a response must verify against the
# request it answers; a protected 4.01 with Echo makes the request go again with that
# Echo (RFC 9175 section 2.4), unseen by the endpoint.
#
# Tables are fixed: _NC requests of ours (by token), _NS requests of the peer (by
# token: the Partial IV a response is bound to; live observations stay pinned). One
# peer per context: tokens are the peer's. Steady state allocates nothing.
from micropython import const
from coap.msg import MessageWriter, CoapError
from oscore.wire import Wire

_CON = const(0)  # RFC 7252 section 3
_ACK = const(2)
_POST = const(0x02)
_FETCH = const(0x05)
_CHANGED = const(0x44)  # 2.04
_CONTENT = const(0x45)  # 2.05
_BAD_REQUEST = const(0x80)  # 4.00
_UNAUTHORIZED = const(0x81)  # 4.01
_BAD_OPTION = const(0x82)  # 4.02
_OBSERVE = const(6)
_OSCORE = const(9)
_ECHO = const(252)
_ECHO_MAX = const(40)  # RFC 9175 section 2.2
_TKL = const(8)
_NC = const(4)
_NS = const(8)
_SLACK = const(32)  # receive buffer beyond the largest datagram (verify in place)
# entry states
_WAIT = const(1)  # ours: waiting for the response
_DONE = const(2)  # ours: answered (its response MID kept to ACK a retransmission)
_ECHOED = const(4)  # ours: already sent again with Echo
_USED = const(1)  # peer's: the request's nonce has been used for a response
_FETCHED = const(2)  # peer's: outer code FETCH (responses are 2.05)
_OBSERVING = const(4)  # peer's: notifications are being sent for it
_LIVE = const(8)  # peer's: entry in use


def _tok_find(tbl, tkls, states, mask, data, tkl, n):
    # index of the entry whose state has a bit of mask and whose token is data[4:4+tkl]
    for i in range(n):
        if states[i] & mask and tkls[i] == tkl:
            b = i * _TKL
            k = 0
            while k < tkl and tbl[b + k] == data[4 + k]:
                k += 1
            if k == tkl:
                return i
    return -1


class OscoreTransport:
    """OSCORE over transport ``inner`` with the security context ``ctx``
    (oscore/context.py). bufsize: the largest plain datagram received or answered;
    reqsize: the largest protected request (the endpoint's buffer plus about 24
    bytes); allow_plain: pass unprotected requests and answers (NoSec tests only).
    Counters: refused (requests answered with an error), dropped (datagrams dropped),
    echoes (requests answered with 4.01 Echo after a reboot)."""

    def __init__(self, inner, ctx, bufsize=1152, reqsize=560, allow_plain=False):
        self.inner = inner
        self.ctx = ctx
        self.wire = Wire(ctx)
        self.allow_plain = allow_plain
        self._req = bytearray(reqsize)  # our protected request, for retransmissions
        self._reqn = 0
        self._rmid = -1  # its Message ID (as the endpoint numbered it)
        self._plain = None  # the endpoint's plain request in flight (for Echo)
        self._plainn = 0
        self._tx = bytearray(bufsize + _SLACK)  # protected answers
        self._rx = bytearray(bufsize + _SLACK)  # plain datagrams handed to the endpoint
        self._cap = len(self._rx)
        self._z = bytearray(128)
        self._e = bytearray(4 + _TKL + 2 + 8)  # an error or Echo answer
        self._ew = MessageWriter(self._e)
        self._ob = self._tx  # what send() transmits
        # our requests: token, Partial IV, MID (endpoint's, on the wire), state
        self._ctok = bytearray(_NC * _TKL)
        self._ctkl = bytearray(_NC)
        self._cst = bytearray(_NC)
        self._cpiv = [0] * _NC
        self._cmid = [0] * _NC
        self._cwmid = [0] * _NC
        self._crmid = [-1] * _NC
        self._cnext = 0
        self._ci = -1  # the entry of the request in _req
        # the peer's requests: token, Partial IV, MID, state
        self._stok = bytearray(_NS * _TKL)
        self._stkl = bytearray(_NS)
        self._sst = bytearray(_NS)
        self._spiv = [0] * _NS
        self._smid = [0] * _NS
        self._snext = 0
        self.refused = 0
        self.dropped = 0
        self.echoes = 0
        if hasattr(inner, "sendto"):
            self.sendto = self._sendto

    # -- the transport interface --

    @property
    def remote(self):
        return getattr(self.inner, "remote", None)

    def stop_on(self, stream):
        self.inner.stop_on(stream)

    def close(self):
        self.inner.close()

    def send(self, buf, n):
        k = self._out(buf, n)
        if k:
            self.inner.send(self._ob, k)

    def _sendto(self, buf, n, peer):
        k = self._out(buf, n)
        if k:
            self.inner.sendto(self._ob, k, peer)

    def recv(self, timeout_ms):
        data = self.inner.recv(timeout_ms)
        if data is None:
            return None
        return self._in(data)

    # -- the receive buffer, handed over at the plain message's length --

    def _full(self):
        rx = self._rx
        z = self._z
        while len(rx) < self._cap:
            rx.extend(z)
        if len(rx) > self._cap:
            rx[self._cap :] = b""

    def _trim(self, n):
        self._rx[n:] = b""  # no allocation: the bytearray keeps its room
        return self._rx

    # -- outgoing --

    def _out(self, buf, n):
        # protect buf[:n] into self._ob; its length, 0 to send nothing
        m = self.wire.pm
        try:
            m.decode(buf, n)
        except CoapError:
            self.dropped += 1
            return 0
        c = m.code
        if c == 0:
            self._ob = buf
            return n
        c >>= 5
        if c == 0:
            return self._out_request(buf, n, m)
        if 2 <= c <= 5:
            return self._out_response(buf, n, m)
        self.dropped += 1
        return 0

    def _out_request(self, buf, n, m):
        i = self._ci
        if m.mid == self._rmid and i >= 0 and self._cst[i] & _WAIT and self._reqn:
            self._ob = self._req  # a retransmission: the same bytes (section 7.5)
            return self._reqn
        seq = self.ctx.next_seq()
        code = _FETCH if m.find(_OBSERVE) >= 0 else _POST
        k = self.wire.seal(buf, self._req, code, m.mid, seq, True, False, True, seq, seq)
        i = self._cadd(buf, m.tkl)
        self._cpiv[i] = seq
        self._cmid[i] = self._cwmid[i] = m.mid
        self._cst[i] = _WAIT
        self._ci = i
        self._reqn = k
        self._rmid = m.mid
        self._plain = buf
        self._plainn = n
        self._ob = self._req
        return k

    def _cadd(self, data, tkl):
        i = _tok_find(self._ctok, self._ctkl, self._cst, 0xFF, data, tkl, _NC)
        if i < 0:
            for j in range(_NC):
                if not self._cst[j]:
                    i = j
                    break
        if i < 0:
            i = self._cnext
            self._cnext = (i + 1) % _NC
        t = self._ctok
        for k in range(tkl):
            t[i * _TKL + k] = data[4 + k]
        self._ctkl[i] = tkl
        self._crmid[i] = -1
        return i

    def _out_response(self, buf, n, m):
        i = _tok_find(self._stok, self._stkl, self._sst, _LIVE, buf, m.tkl, _NS)
        if i < 0:
            if self.allow_plain:
                self._ob = buf
                return n
            self.dropped += 1  # not an answer to a protected request: never in clear
            return 0
        ctx = self.ctx
        st = self._sst[i]
        rpiv = self._spiv[i]
        if m.find(_OBSERVE) >= 0:
            # a notification: own Partial IV, bound to the registration (4.1.3.5.2)
            seq = ctx.next_seq()
            k = self.wire.seal(buf, self._tx, _CONTENT, m.mid, seq, False, True, True, seq,
                               rpiv)
            st |= _OBSERVING
        else:
            code = _CONTENT if st & _FETCHED else _CHANGED
            if st & _USED:  # the request's nonce is spent: own Partial IV
                seq = ctx.next_seq()
                k = self.wire.seal(buf, self._tx, code, m.mid, seq, False, False, True, seq,
                                   rpiv)
            else:
                k = self.wire.seal(buf, self._tx, code, m.mid, -1, False, False, False,
                                   rpiv, rpiv)
            st = (st | _USED) & ~_OBSERVING
        self._sst[i] = st
        self._ob = self._tx
        return k

    def _sadd(self, data, tkl, piv, mid, st):
        i = _tok_find(self._stok, self._stkl, self._sst, _LIVE, data, tkl, _NS)
        if i < 0:
            for j in range(_NS):
                if not self._sst[j]:
                    i = j
                    break
        if i < 0:  # the oldest entry that is not a live observation, else the oldest
            for _ in range(_NS):
                j = self._snext
                self._snext = (j + 1) % _NS
                if not self._sst[j] & _OBSERVING:
                    i = j
                    break
            if i < 0:
                i = self._snext
        t = self._stok
        for k in range(tkl):
            t[i * _TKL + k] = data[4 + k]
        self._stkl[i] = tkl
        self._spiv[i] = piv
        self._smid[i] = mid
        self._sst[i] = st | _LIVE

    # -- incoming --

    def _in(self, data):
        m = self.wire.om
        try:
            m.decode(data)
        except CoapError:
            return data  # the endpoint rejects it
        c = m.code
        if c == 0:
            return data  # Empty: ACK, RST, ping
        c >>= 5
        if c == 0:
            return self._in_request(data, m)
        if 2 <= c <= 5:
            return self._in_response(data, m)
        return data

    def _refuse(self, m, code):
        # section 8.2: an unprotected error with Max-Age 0 to a CON; nothing to a NON
        self.refused += 1
        if m.type == _CON:
            e = self._e
            tkl = m.tkl
            e[0] = 0x60 | tkl  # version 1, ACK
            e[1] = code
            e[2] = m.mid >> 8
            e[3] = m.mid & 0xFF
            d = m.data
            for k in range(tkl):
                e[4 + k] = d[4 + k]
            e[4 + tkl] = 0xD0  # Max-Age (14): delta 13 + 1, empty value (0)
            e[5 + tkl] = 0x01
            self.inner.send(e, 6 + tkl)
        return None

    def _in_request(self, data, m):
        w = self.wire
        ctx = self.ctx
        oi = m.find(_OSCORE)
        if oi < 0:
            if self.allow_plain:
                return data
            return self._refuse(m, _UNAUTHORIZED)
        if not w.parse(data, m.ostart[oi], m.olen[oi]) or w.piv < 0 or w.kid < 0:
            return self._refuse(m, _BAD_OPTION)
        if not w.same(data, w.kid, w.kidn, ctx.rid) or (
            w.kctx >= 0 and not w.same(data, w.kctx, w.kctxn, ctx.idctx)
        ):
            return self._refuse(m, _UNAUTHORIZED)  # no such security context
        piv = w.piv
        dup = False
        if ctx.window_ok and not ctx.fresh(piv):
            # a CoAP retransmission of a request taken (same MID and Partial IV): the
            # endpoint answers it from its cache (section 7.4); otherwise a replay
            for j in range(_NS):
                if self._sst[j] and self._smid[j] == m.mid and self._spiv[j] == piv:
                    dup = m.type == _CON
            if not dup:
                return self._refuse(m, _UNAUTHORIZED)
        self._full()
        n = w.open(data, self._rx, self._cap, False, piv, False, piv, m.mid, True)
        if n == -1:
            return self._refuse(m, _BAD_REQUEST)  # section 8.2 step 6
        if n < 0:
            return self._refuse(m, _BAD_OPTION)
        if not ctx.window_ok:
            if not self._echo_ok():
                return self._ask_echo(m, piv)
            ctx.recover(piv)
        elif not dup:
            ctx.accept(piv)
        if not dup:
            self._sadd(data, m.tkl, piv, m.mid, _FETCHED if m.code == _FETCH else 0)
        return self._trim(n)

    def _echo_ok(self):
        w = self.wire
        ctx = self.ctx
        if not ctx._echo_set or w.echo_n != len(ctx.echo):
            return False
        rx = self._rx
        e = ctx.echo
        a = w.echo_at
        for k in range(w.echo_n):
            if rx[a + k] != e[k]:
                return False
        return True

    def _ask_echo(self, m, piv):
        # Appendix B.1.2: a protected 4.01 with a fresh Echo, under our own Partial IV
        # (the request may be a replay: its nonce must not be used)
        if m.type != _CON:
            self.dropped += 1
            return None
        self.echoes += 1
        self._sadd(m.data, m.tkl, piv, m.mid, _USED | (_FETCHED if m.code == _FETCH else 0))
        w = self._ew
        w.begin(_ACK, _UNAUTHORIZED, m.mid, m.data, m.tkl, 4)
        w.option(_ECHO, self.ctx.echo_value())
        k = self._out(self._e, w.pos)
        if k:
            self.inner.send(self._ob, k)
        return None

    def _in_response(self, data, m):
        w = self.wire
        oi = m.find(_OSCORE)
        i = _tok_find(self._ctok, self._ctkl, self._cst, _WAIT, data, m.tkl, _NC)
        if oi < 0:
            c = m.code
            if i >= 0 and (c == _BAD_REQUEST or c == _UNAUTHORIZED or c == _BAD_OPTION):
                return self._pass(data, m, i)  # it can only fail the request
            if self.allow_plain:
                return data
            self.dropped += 1
            return None
        if i < 0:
            # nothing waits for it: a replay, or the server resending a separate
            # response we took (our ACK was lost): ACK that again
            if m.type == _CON:
                for j in range(_NC):
                    if self._cst[j] & _DONE and self._crmid[j] == m.mid:
                        self._ack(m.mid)
            self.dropped += 1
            return None
        if not w.parse(data, m.ostart[oi], m.olen[oi]) or (
            w.kid >= 0 and not w.same(data, w.kid, w.kidn, self.ctx.rid)
        ):
            self.dropped += 1
            return None
        rpiv = self._cpiv[i]
        mid = m.mid
        if m.type == _ACK and mid == self._cwmid[i]:
            mid = self._cmid[i]
        self._full()
        if w.piv >= 0:
            n = w.open(data, self._rx, self._cap, False, w.piv, True, rpiv, mid, False)
        else:
            n = w.open(data, self._rx, self._cap, True, rpiv, True, rpiv, mid, False)
        if n < 0:
            self.dropped += 1
            return None
        if (
            self._rx[1] == _UNAUTHORIZED and 0 < w.echo_n <= _ECHO_MAX
            and not self._cst[i] & _ECHOED and i == self._ci
        ):
            if m.type == _CON:
                self._ack(m.mid)
            self._again(i)
            return None
        self._cst[i] = _DONE
        self._crmid[i] = m.mid
        return self._trim(n)

    def _ack(self, mid):
        e = self._e
        e[0] = 0x60
        e[1] = 0
        e[2] = mid >> 8
        e[3] = mid & 0xFF
        self.inner.send(e, 4)

    def _pass(self, data, m, i):
        # an unprotected error for request i, with the endpoint's Message ID
        if m.type != _ACK or m.mid == self._cmid[i]:
            return data
        n = m.n
        if n > self._cap:
            return None
        self._full()
        rx = self._rx
        for k in range(n):
            rx[k] = data[k]
        mid = self._cmid[i]
        rx[2] = mid >> 8
        rx[3] = mid & 0xFF
        return self._trim(n)

    def _again(self, i):
        # RFC 9175 section 2.4: the same request again, with the server's Echo value
        # (in _rx) as an inner option, a fresh Partial IV and a Message ID of its own
        buf = self._plain
        w = self.wire
        m = w.pm
        try:
            m.decode(buf, self._plainn)
        except CoapError:
            return
        if m.mid != self._cmid[i]:
            return
        seq = self.ctx.next_seq()
        wmid = m.mid ^ 0x8000  # not used by the endpoint within EXCHANGE_LIFETIME
        code = _FETCH if m.find(_OBSERVE) >= 0 else _POST
        w.xbuf = self._rx
        w.xoff = w.echo_at
        w.xn = w.echo_n
        try:
            k = w.seal(buf, self._req, code, wmid, seq, True, False, True, seq, seq)
        finally:
            w.xn = -1
            w.xbuf = None
        self._cpiv[i] = seq
        self._cwmid[i] = wmid
        self._cst[i] = _WAIT | _ECHOED
        self._reqn = k
        self.inner.send(self._req, k)
