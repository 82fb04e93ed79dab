# OSCORE messages on the wire (RFC 8613 sections 4, 6, 8): Wire turns a plain CoAP
# message into a protected one (options split into Class U outside and Class E inside
# the plaintext, section 4.1; outer code, section 4.2; the OSCORE option, section 6.1)
# and a protected one back into the plain message (section 8.2/8.4: outer Class E
# options discarded, inner options merged with the outer Class U ones in number order).
# Both directions work in the caller's preallocated buffers; malformed input is a
# return value, never an exception.
from micropython import const
from coap.decode import Message
from coap.msg import MessageWriter, CoapError, move

_MARKER = const(0xFF)
_TAG = const(8)
# Option numbers (RFC 7252 section 12.2, RFC 7641, RFC 8613 section 2, RFC 9175)
_URI_HOST = const(3)
_OBSERVE = const(6)
_URI_PORT = const(7)
_OSCORE = const(9)
_PROXY_URI = const(35)
_PROXY_SCHEME = const(39)
_ECHO = const(252)
_PIV_MAX = const(0x3FFFFF)  # a Partial IV must fit 30 bits (small ints on every port)


def _outer(num):
    # Class U options that stay outside (section 4.1.2; Observe is handled apart)
    return num == _URI_HOST or num == _URI_PORT or num == _PROXY_SCHEME or num == _PROXY_URI


class Wire:
    """Protect and verify messages with ctx (an oscore/context.py Context)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.pm = Message()  # a plain message being protected
        self.om = Message(16)  # a protected message being verified
        self.w = MessageWriter(b"")
        self.xbuf = None  # an extra inner option (Echo) for the next seal(): value
        self.xoff = 0
        self.xn = -1  # its length, -1: none
        self._p = 0
        # the OSCORE option of the last parse(): Partial IV (-1 absent), offsets of
        # kid and kid context in the datagram (-1 absent) and their lengths
        self.piv = self.kid = self.kctx = -1
        self.kidn = self.kctxn = 0
        # the inner Echo option of the last open(): offset in dst (-1 absent), length
        self.echo_at = -1
        self.echo_n = 0

    # -- protect --

    def _copy(self, w, src, m, i):
        n = m.olen[i]
        w._opt_head(m.onum[i], n)
        move(w.buf, w.pos, src, m.ostart[i], n)
        w.pos += n

    def _extra(self, w):
        n = self.xn
        w._opt_head(_ECHO, n)
        move(w.buf, w.pos, self.xbuf, self.xoff, n)
        w.pos += n

    def seal(self, src, dst, code, mid, opiv, request, notify, nonce_own, nonce_piv,
             aad_piv):
        """Protect the plain message src (decoded in self.pm) into dst; returns its
        length. code: the outer code; mid: the outer Message ID; opiv: the Partial IV
        in the option (-1: none); request: the option carries kid (and kid context);
        notify: a notification (inner Observe empty, section 4.1.3.5.2); the nonce
        from (own Sender ID if nonce_own else the peer's, nonce_piv); the AAD from the
        request's kid (ours for a request, the peer's for a response) and aad_piv.
        Raises CoapError when dst is too small or the message has a Proxy-Uri."""
        m = self.pm
        ctx = self.ctx
        w = self.w
        w.buf = dst
        w.begin(m.type, code, mid, src, m.tkl, 4)
        ol = ctx.option(opiv, request)
        onum = m.onum
        nopt = m.nopt
        put9 = True
        for i in range(nopt):
            num = onum[i]
            if num > _OSCORE and put9:
                w._opt_head(_OSCORE, ol)
                move(dst, w.pos, ctx.opt, 0, ol)
                w.pos += ol
                put9 = False
            if num == _PROXY_URI:
                raise CoapError("Proxy-Uri under OSCORE")  # section 4.1.3.3: not done here
            if _outer(num) or num == _OBSERVE:
                self._copy(w, src, m, i)
        if put9:
            w._opt_head(_OSCORE, ol)
            move(dst, w.pos, ctx.opt, 0, ol)
            w.pos += ol
        ps = w.pos + 1
        if ps + 1 + _TAG > len(dst):
            raise CoapError("message too large")
        dst[ps - 1] = _MARKER
        dst[ps] = m.code
        w.pos = ps + 1
        w._last = 0
        x = self.xn >= 0
        for i in range(nopt):
            num = onum[i]
            if _outer(num):
                continue
            if x and num > _ECHO:
                self._extra(w)
                x = False
            if num == _OBSERVE and notify:
                w._opt_head(_OBSERVE, 0)
            else:
                self._copy(w, src, m, i)
        if x:
            self._extra(w)
        p = w.pos
        k = m.n - m.pstart
        if p + (k + 1 if k else 0) + _TAG > len(dst):
            raise CoapError("message too large")
        if k:
            dst[p] = _MARKER
            move(dst, p + 1, src, m.pstart, k)
            p += 1 + k
        # the request's kid in the AAD: ours for a request, the peer's for a response
        return ps + ctx.seal(dst, ps, p - ps, nonce_own, nonce_piv, request, aad_piv)

    # -- verify --

    def parse(self, data, o, n):
        """Parse the OSCORE option value data[o:o+n] (section 6.1); False if malformed."""
        self.piv = self.kid = self.kctx = -1
        self.kidn = self.kctxn = 0
        if n == 0:
            return True
        e = o + n
        f = data[o]
        if f & 0xE0 or f == 0:  # reserved bits; all-zero flags need an empty value
            return False
        k = f & 7
        p = o + 1
        if k > 5 or p + k > e:
            return False
        if k:
            v = 0
            for j in range(k):
                if v > _PIV_MAX:
                    return False
                v = (v << 8) | data[p + j]
            self.piv = v
        p += k
        if f & 0x10:
            if p >= e:
                return False
            s = data[p]
            p += 1
            if p + s > e:
                return False
            self.kctx = p
            self.kctxn = s
            p += s
        if f & 0x08:
            self.kid = p
            self.kidn = e - p
        elif p != e:
            return False
        return True

    def same(self, data, o, n, ref):
        """data[o:o+n] == ref (a kid or kid context from parse())."""
        if ref is None or n != len(ref):
            return False
        for i in range(n):
            if data[o + i] != ref[i]:
                return False
        return True

    def open(self, data, dst, cap, nonce_own, nonce_piv, aad_own, aad_piv, mid, keep):
        """Verify the protected message data (decoded in self.om) and write the plain
        message into dst[:cap] (header and token from data with Message ID mid, the
        inner code, options, payload); keep: merge the outer Class U options (a
        request). Returns its length, -1 when it does not verify, -2 when the
        plaintext is malformed."""
        m = self.om
        c = m.n - m.pstart
        if c < 1 + _TAG or m.n + 16 > cap:
            return -1
        off = cap - c
        move(dst, off, data, m.pstart, c)
        n = self.ctx.open(dst, off, c, nonce_own, nonce_piv, aad_own, aad_piv)
        if n < 1:
            return -1
        return self._plain(data, m, dst, off, off + n, mid, keep)

    def _ext(self, v, buf, e):
        # an option delta/length nibble with its extension bytes (RFC 7252 section 3.1)
        p = self._p
        if v == 13:
            if p >= e:
                return -1
            v = buf[p] + 13
            p += 1
        elif v == 14:
            if p + 2 > e:
                return -1
            v = ((buf[p] << 8) | buf[p + 1]) + 269
            p += 2
        elif v == 15:
            return -1
        self._p = p
        return v

    def _keep(self, data, m, w, i, upto, r):
        # write the outer Class U options numbered <= upto from index i; -1 if the
        # writer would overtake the plaintext still to be read at r
        while i < m.nopt:
            num = m.onum[i]
            if num > upto:
                break
            if _outer(num):
                n = m.olen[i]
                if w.pos + 5 + n > r:
                    return -1
                self._copy(w, data, m, i)
            i += 1
        return i

    def _plain(self, data, m, dst, off, e, mid, keep):
        # dst[off:e] is the plaintext: code, inner options, payload (section 5.3)
        tkl = m.tkl
        dst[0] = data[0]
        dst[1] = dst[off]
        dst[2] = mid >> 8
        dst[3] = mid & 0xFF
        move(dst, 4, data, 4, tkl)
        w = self.w
        w.buf = dst
        w.pos = 4 + tkl
        w._last = 0
        self.echo_at = -1
        self.echo_n = 0
        r = off + 1
        num = 0
        oi = 0
        while r < e:
            b = dst[r]
            if b == _MARKER:
                break
            self._p = r + 1
            d = self._ext(b >> 4, dst, e)
            n = self._ext(b & 0x0F, dst, e) if d >= 0 else -1
            if n < 0:
                return -2
            r = self._p
            num += d
            if n > e - r or num > 0xFFFF:
                return -2
            if keep:
                oi = self._keep(data, m, w, oi, num, r)
                if oi < 0:
                    return -2
            if w.pos + 5 + n > r:
                return -2
            w._opt_head(num, n)
            if num == _ECHO:
                self.echo_at = w.pos
                self.echo_n = n
            move(dst, w.pos, dst, r, n)
            w.pos += n
            r += n
        if keep and self._keep(data, m, w, oi, 0xFFFF, r) < 0:
            return -2
        if r < e:
            if r + 1 >= e:
                return -2  # payload marker without payload
            move(dst, w.pos, dst, r, e - r)
            w.pos += e - r
        return w.pos
