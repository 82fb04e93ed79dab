# CBOR (RFC 8949) encoder for the node: writes into a caller's buffer. The strict
# decoder is cbor/decode.py, a module of its own so a node that only sends never loads it.
#
# Writer appends to a preallocated bytearray and keeps a position; nothing it does on
# the hot path allocates (ints below 2**30, bytes values, put_scaled). Text given as
# str is encoded through its UTF-8 buffer (one small memoryview); pass bytes on hot
# paths. put_scaled writes the float32 whose value is exactly code * 2**exp with
# integer arithmetic only, so the window loop never creates a float object.
from micropython import const
import struct

# Major types, RFC 8949 section 3.1
_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)
_SIMPLE = const(7)  # simple values 20 false, 21 true, 22 null (section 3.3)
_F32 = const(0xFA)  # initial byte of a float32 (section 3.3)
_F64 = const(0xFB)


class CBORError(ValueError):
    """Input that is not (supported) CBOR, or an encoder buffer that is too small."""


class Writer:
    """Append CBOR items to ``buf`` (a bytearray) from ``pos`` on.

    ``pos`` is public: set it to start writing inside a larger message (e.g. after a
    CoAP payload marker) and read it to learn the end of what was written. An item
    that does not fit raises CBORError and leaves ``pos`` where it was.
    """

    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def _head(self, major, n, extra=0):
        # Initial byte and argument in the shortest form (RFC 8949 section 4.2.1),
        # after checking that it and `extra` more bytes fit.
        if n < 24:
            k = 0
            ai = n
        elif n < 0x100:
            k = 1
            ai = 24
        elif n < 0x10000:
            k = 2
            ai = 25
        elif not n >> 32:
            k = 4
            ai = 26
        elif not n >> 64:
            k = 8
            ai = 27
        else:
            raise CBORError("integer out of range")
        p = self.pos + k
        buf = self.buf
        if p + 1 + extra > len(buf):
            raise CBORError("buffer full")
        buf[p - k] = (major << 5) | ai  # ai 24..27: 1, 2, 4 or 8 argument bytes follow
        for i in range(k):  # big-endian argument
            buf[p - i] = n & 0xFF
            n >>= 8
        self.pos = p + 1

    def put_uint(self, n):
        if n < 0:
            raise CBORError("negative uint")
        self._head(_UINT, n)

    def put_int(self, n):
        # a negative n is major type 1 with argument -1 - n (section 3.1)
        if n < 0:
            self._head(_NINT, -1 - n)
        else:
            self._head(_UINT, n)

    def _string(self, major, data):
        n = len(data)
        self._head(major, n, n)
        buf = self.buf
        p = self.pos
        for i in range(n):
            buf[p + i] = data[i]
        self.pos = p + n

    def put_bytes(self, data):
        self._string(_BYTES, data)

    def put_text(self, s):
        """A text string from str, or from bytes that already hold UTF-8."""
        self._string(_TEXT, memoryview(s) if isinstance(s, str) else s)

    def put_decimal(self, n):
        """The decimal digits of n >= 0 as a text string (a SenML name such as "5702"),
        without allocating."""
        k = 1
        m = n
        while m >= 10:
            m //= 10
            k += 1
        self._head(_TEXT, k, k)
        buf = self.buf
        p = self.pos + k
        self.pos = p
        for _ in range(k):
            p -= 1
            buf[p] = 48 + n % 10
            n //= 10

    def put_array(self, n):
        self._head(_ARRAY, n)

    def put_map(self, n):
        self._head(_MAP, n)

    def put_bool(self, v):
        self._head(_SIMPLE, 21 if v else 20)

    def put_float64(self, f):
        self._head(_SIMPLE, 0, 8)
        self.buf[self.pos - 1] = _F64
        struct.pack_into(">d", self.buf, self.pos, f)
        self.pos += 8

    def put_scaled(self, code, exp):
        """Write the float32 nearest to code * 2**exp (|code| < 2**30, small int exp).

        Exact whenever the value is a float32 normal and code has at most 24
        significant bits (always for an int16 sample code); otherwise it rounds to
        nearest, ties to even, like an IEEE conversion (e.g. a sample code times a
        sensor's integer scale mantissa). Overflow raises CBORError.
        """
        if not -0x40000000 < code < 0x40000000:
            raise CBORError("code out of range")
        sign = 0
        if code < 0:
            sign = 0x80
            code = -code
        be = 0  # biased exponent (IEEE 754 binary32: bias 127)
        mant = 0  # 23-bit fraction, or the whole subnormal significand
        if code:
            nb = 0  # bit length of code (1..16)
            m = code
            while m:
                m >>= 1
                nb += 1
            if nb > 24:  # more bits than a float32 significand: round half to even
                s = nb - 24
                m = code >> s
                rest = code - (m << s)
                half = 1 << (s - 1)
                if rest > half or (rest == half and m & 1):
                    m += 1
                code = m
                exp += s
                nb = 24
                if code >> 24:  # rounded up to 2**24
                    code >>= 1
                    exp += 1
            e = exp + nb - 1  # value = 1.f * 2**e
            if e > 127:
                raise CBORError("value overflows float32")
            if e >= -126:  # normal
                be = e + 127
                mant = (code << (24 - nb)) & 0x7FFFFF
            else:  # subnormal: value = mant * 2**-149
                s = exp + 149
                if s >= 0:
                    mant = code << s
                elif s >= -25:  # shift right, round half to even
                    s = -s
                    mant = code >> s
                    rest = code - (mant << s)
                    half = 1 << (s - 1)
                    if rest > half or (rest == half and mant & 1):
                        mant += 1
                # (mant may round up to 2**23: exactly the smallest normal's bits)
        self._head(_SIMPLE, 0, 4)
        buf = self.buf
        p = self.pos
        buf[p - 1] = _F32
        buf[p] = sign | (be >> 1)
        buf[p + 1] = ((be & 1) << 7) | (mant >> 16)
        buf[p + 2] = (mant >> 8) & 0xFF
        buf[p + 3] = mant & 0xFF
        self.pos = p + 4

