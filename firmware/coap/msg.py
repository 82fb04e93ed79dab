# CoAP (RFC 7252) message encoding: errors and MessageWriter (encode into a caller's
# bytearray). Decoding is coap/decode.py, the endpoint coap/endpoint.py. The codec is
# split into small modules so that each compiles in a 64K heap.
from micropython import const
import micropython

# Header, RFC 7252 section 3. Message types, codes and option numbers are declared as
# private constants (free: inlined) by the modules that use them.
_VERSION = const(1)
_TKL_MAX = const(8)
_MARKER = const(0xFF)  # payload marker


class CoapError(Exception):
    """Base of CoAP errors; raised as such for malformed messages."""


class CoapTimeout(CoapError):
    """No acknowledgement or response within the retransmission schedule or deadline."""


class CoapReset(CoapError):
    """The peer answered a request with RST."""


@micropython.viper
def move(dst, d: int, src, s: int, n: int):
    """dst[d:d+n] = src[s:s+n] without allocating; overlapping ranges are fine."""
    pd = ptr8(dst)
    ps = ptr8(src)
    if d <= s:
        i = 0
        while i < n:
            pd[d + i] = ps[s + i]
            i += 1
    else:
        i = n - 1
        while i >= 0:
            pd[d + i] = ps[s + i]
            i -= 1


def code_str(code):
    return "%d.%02d" % (code >> 5, code & 0x1F)


def _xs(v):
    # Extension bytes of an option delta or length (section 3.1): 13 -> 1, 14 -> 2.
    if v < 13:
        return 0
    if v < 269:
        return 1
    if v < 65805:
        return 2
    raise CoapError("option delta/length too large")


def _putx(buf, p, v, x):
    if x == 1:
        buf[p] = v - 13
    elif x == 2:
        v -= 269
        buf[p] = v >> 8
        buf[p + 1] = v & 0xFF
    return p + x


class MessageWriter:
    """Encode one message into ``buf``: begin(), option()s in order, then payload."""

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self._last = 0

    def _room(self, n):
        if self.pos + n > len(self.buf):
            raise CoapError("message too large")

    def begin(self, mtype, code, mid, token=b"", tkl=-1, toff=0):
        """Header and token (tkl = how many bytes of token to use, default all; the
        token is token[toff:toff + tkl])."""
        if tkl < 0:
            tkl = len(token)
        if tkl > _TKL_MAX:
            raise CoapError("token longer than 8")
        self.pos = 0
        self._last = 0
        self._room(4 + tkl)
        buf = self.buf
        buf[0] = (_VERSION << 6) | ((mtype & 3) << 4) | tkl
        buf[1] = code
        buf[2] = (mid >> 8) & 0xFF
        buf[3] = mid & 0xFF
        for i in range(tkl):
            buf[4 + i] = token[toff + i]
        self.pos = 4 + tkl

    def _opt_head(self, num, n):
        d = num - self._last
        if d < 0:
            raise CoapError("options out of order")
        dx = _xs(d)
        lx = _xs(n)
        self._room(1 + dx + lx + n)
        buf = self.buf
        p = self.pos
        # nibbles 13/14 announce 1/2 extension bytes
        buf[p] = ((d if dx == 0 else 12 + dx) << 4) | (n if lx == 0 else 12 + lx)
        p = _putx(buf, p + 1, d, dx)
        self.pos = _putx(buf, p, n, lx)
        self._last = num

    def option(self, num, value=b""):
        """An option with an opaque or string value (str is sent as its UTF-8)."""
        if isinstance(value, str):
            value = memoryview(value)
        n = len(value)
        self._opt_head(num, n)
        buf = self.buf
        p = self.pos
        for i in range(n):
            buf[p + i] = value[i]
        self.pos = p + n

    def option_uint(self, num, v):
        """A uint option in the fewest bytes (0 is the empty value, section 3.2)."""
        n = 0
        x = v
        while x:
            n += 1
            x >>= 8
        self._opt_head(num, n)
        buf = self.buf
        p = self.pos
        for i in range(n):
            buf[p + n - 1 - i] = v & 0xFF
            v >>= 8
        self.pos = p + n

    def mark_payload(self):
        """Write the payload marker; returns where the payload starts."""
        self._room(1)
        self.buf[self.pos] = _MARKER
        self.pos += 1
        return self.pos

    def end_payload(self, end):
        """Finish a payload written in place up to ``end``; drops an empty payload's marker."""
        if end <= self.pos:
            self.pos -= 1
        else:
            self.pos = end

    def payload(self, data):
        """Marker and payload (nothing for an empty payload)."""
        n = len(data)
        if n:
            p = self.mark_payload()
            self._room(n)
            buf = self.buf
            for i in range(n):
                buf[p + i] = data[i]
            self.pos = p + n
