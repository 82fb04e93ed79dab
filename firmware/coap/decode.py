# CoAP (RFC 7252) message decoding: Message parses a datagram in place (offsets into
# the received bytes, kept in preallocated arrays) with strict validation; malformed
# input raises CoapError (coap/msg.py), nothing else.
from micropython import const
from array import array
from coap.msg import CoapError

_VERSION = const(1)  # RFC 7252 section 3
_TKL_MAX = const(8)  # token lengths 9..15 are reserved (section 3)
_MARKER = const(0xFF)  # payload marker (section 3)
_EMPTY = const(0)  # code 0.00 (section 4.1)
_MAX_OPTIONS = const(32)  # decoder capacity; more options is refused


class Message:
    """A decoded message: a view over the datagram given to decode().

    Fields: type, code, mid, tkl, nopt, pstart (payload start; == n without payload),
    n (datagram length), data. Option i has number onum[i] and value
    data[ostart[i]:ostart[i] + olen[i]]. Valid until the next decode().
    """

    def __init__(self, max_options=_MAX_OPTIONS):
        self.data = b""
        self.n = 0
        self.type = 0
        self.code = 0
        self.mid = 0
        self.tkl = 0
        self.nopt = 0
        self.pstart = 0
        self._p = 0
        self.onum = array("H", range(max_options))
        self.ostart = array("H", range(max_options))
        self.olen = array("H", range(max_options))

    def decode(self, data, n=-1):
        """Parse data[:n] (all of it by default); raises CoapError if malformed."""
        if n < 0:
            n = len(data)
        self.data = data
        self.n = n
        self.nopt = 0
        if n < 4:
            raise CoapError("truncated header")
        b0 = data[0]
        if b0 >> 6 != _VERSION:
            raise CoapError("unknown version")
        self.type = (b0 >> 4) & 3
        tkl = b0 & 0x0F
        if tkl > _TKL_MAX:
            raise CoapError("reserved token length")
        self.tkl = tkl
        self.code = data[1]
        self.mid = (data[2] << 8) | data[3]
        p = 4 + tkl
        if p > n:
            raise CoapError("truncated token")
        if self.code == _EMPTY and n != 4:
            # section 4.1: an Empty message has TKL 0 and nothing after the Message ID
            raise CoapError("empty message with content")
        num = 0
        cap = len(self.onum)
        onum = self.onum
        ostart = self.ostart
        olen = self.olen
        while p < n:
            b = data[p]
            p += 1
            if b == _MARKER:
                if p >= n:
                    raise CoapError("payload marker without payload")
                break
            self._p = p
            delta = self._ext(b >> 4, data, n)
            ln = self._ext(b & 0x0F, data, n)
            p = self._p
            num += delta
            if num > 0xFFFF:
                raise CoapError("option number too large")
            if ln > n - p:
                raise CoapError("truncated option value")
            i = self.nopt
            if i >= cap:
                raise CoapError("too many options")
            onum[i] = num
            ostart[i] = p
            olen[i] = ln
            self.nopt = i + 1
            p += ln
        self.pstart = p
        return self

    def _ext(self, v, data, n):
        # A delta/length nibble with its extension bytes (section 3.1), read at _p.
        p = self._p
        if v == 13:
            if p >= n:
                raise CoapError("truncated option")
            v = data[p] + 13
            p += 1
        elif v == 14:
            if p + 2 > n:
                raise CoapError("truncated option")
            v = ((data[p] << 8) | data[p + 1]) + 269
            p += 2
        elif v == 15:  # only the payload marker may have 15s
            raise CoapError("reserved option nibble")
        self._p = p
        return v

    def token_is(self, tok, tkl):
        """True if the token equals tok[:tkl] (no allocation)."""
        if self.tkl != tkl:
            return False
        data = self.data
        for i in range(tkl):
            if data[4 + i] != tok[i]:
                return False
        return True

    def find(self, num, start=0):
        """Index of the first option ``num`` at or after index start, or -1."""
        for i in range(start, self.nopt):
            if self.onum[i] == num:
                return i
        return -1

    def value(self, i):
        s = self.ostart[i]
        return bytes(self.data[s : s + self.olen[i]])

    def uint(self, i):
        s = self.ostart[i]
        v = 0
        for k in range(self.olen[i]):
            v = (v << 8) | self.data[s + k]
        return v
