# Bounds-checked flatbuffers access over a .tflite image in memory or in a file.
#
# The model is untrusted input: every offset read from it is checked against the image
# size before use, and any violation raises TFLiteError naming what was being read.
# A file is read through a small page cache, so parsing needs little RAM and the
# constant buffers (weights) can stay in the file.
#
# Limits: the schema bounds no count and no length, so the reader only keeps limits that
# protect the node's memory, each with its reason below. Strings (tensor and metadata
# names) are metadata and never refuse a model: only a bounded prefix is ever read.
import struct
from micropython import const

_PAGE = const(128)  # bytes per cached page of a model file
# ints() builds a list in RAM (4 to 8 bytes an entry, plus the raw bytes while unpacking):
# a vector's length is checked against the model size, but a model in flash can be far
# bigger than the heap, so a count near its 2^32 bound would end in MemoryError. The
# node's int vectors are shapes (<= 6), tensor lists of an op or subgraph, and per-channel
# scales and zero points (one per output channel, kept in RAM as tables): 4096 is above
# any model a board's heap can run.
_MAX_INTS = const(4096)
_SHOW = const(48)  # bytes of a name kept for messages (names are unbounded in the schema)


class TFLiteError(Exception):
    """A model the node cannot run: malformed, unsupported, or too big."""


class Source:
    """Random access to a model image: `bytes`-like, or an open binary file."""

    def __init__(self, data=None, f=None):
        self.data = data
        self.f = f
        if data is not None:
            self.size = len(data)
        else:
            f.seek(0, 2)
            self.size = f.tell()
            self._page = bytearray(_PAGE)
            self._pos = -1
            self._n = 0

    def need(self, pos, n, what):
        if pos < 0 or n < 0 or pos + n > self.size:
            raise TFLiteError("%s: bytes %d..%d outside the model (%d bytes)"
                              % (what, pos, pos + n, self.size))

    def read(self, pos, n, what):
        """n bytes at pos (a copy)."""
        self.need(pos, n, what)
        if self.data is not None:
            return bytes(self.data[pos:pos + n])
        self.f.seek(pos)
        b = self.f.read(n)
        if len(b) != n:
            raise TFLiteError("%s: short read" % what)
        return b

    def _bytes(self, pos, n, what):
        self.need(pos, n, what)
        if self.data is not None:
            return self.data, pos
        p = self._pos
        if p < 0 or pos < p or pos + n > p + self._n:
            p = pos - pos % _PAGE
            self.f.seek(p)
            self._n = self.f.readinto(self._page) or 0
            self._pos = p
        return self._page, pos - p

    def u16(self, pos, what):
        b, o = self._bytes(pos, 2, what)
        return b[o] | (b[o + 1] << 8)

    def u32(self, pos, what):
        b, o = self._bytes(pos, 4, what)
        return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)

    def i32(self, pos, what):
        v = self.u32(pos, what)
        return v - (1 << 32) if v & 0x80000000 else v

class Table:
    """One flatbuffers table: `what` names it in error messages."""

    def __init__(self, src, pos, what):
        self.src = src
        self.pos = pos
        self.what = what
        if pos & 3:
            raise TFLiteError("%s: table at %d is misaligned" % (what, pos))
        vt = pos - src.i32(pos, what)
        self.vt = vt
        n = src.u16(vt, what + " vtable")
        tsize = src.u16(vt + 2, what + " vtable")
        if n < 4 or n & 1:
            raise TFLiteError("%s: vtable size %d is invalid" % (what, n))
        src.need(vt, n, what + " vtable")
        src.need(pos, tsize, what)
        self.nslots = (n - 4) >> 1
        self.tsize = tsize

    def field(self, slot, size):
        """Absolute position of field `slot` (of `size` bytes) or 0 when absent."""
        if slot >= self.nslots:
            return 0
        off = self.src.u16(self.vt + 4 + 2 * slot, self.what)
        if off == 0:
            return 0
        if off < 4 or off + size > self.tsize:
            raise TFLiteError("%s: field %d at %d lies outside its table"
                              % (self.what, slot, off))
        return self.pos + off

    def scalar(self, slot, fmt, default):
        p = self.field(slot, struct.calcsize(fmt))
        if not p:
            return default
        return struct.unpack(fmt, self.src.read(p, struct.calcsize(fmt), self.what))[0]

    def _ref(self, slot, what):
        p = self.field(slot, 4)
        if not p:
            return 0
        t = p + self.src.u32(p, what)
        self.src.need(t, 4, what)
        return t

    def table(self, slot, what):
        t = self._ref(slot, what)
        return Table(self.src, t, what) if t else None

    def vector(self, slot, esize, what):
        """(first element position, count) of a vector field, or None."""
        v = self._ref(slot, what)
        if not v:
            return None
        n = self.src.u32(v, what)
        self.src.need(v + 4, n * esize, what)
        return v + 4, n

    def ints(self, slot, what, fmt="<i"):
        v = self.vector(slot, struct.calcsize(fmt), what)
        if v is None:
            return None
        p, n = v
        size = struct.calcsize(fmt)
        if n > _MAX_INTS:
            raise TFLiteError("%s: %d entries is too many, at most %d are supported"
                              % (what, n, _MAX_INTS))
        raw = self.src.read(p, n * size, what)
        return [struct.unpack_from(fmt, raw, i * size)[0] for i in range(n)]

    def tables(self, slot, what):
        v = self.vector(slot, 4, what)
        if v is None:
            return []
        p, n = v
        out = []
        for i in range(n):
            q = p + 4 * i
            w = "%s[%d]" % (what, i)
            t = q + self.src.u32(q, w)
            out.append(Table(self.src, t, w))
        return out

    def string(self, slot, what, limit=_SHOW):
        """(first `limit` bytes, length) of a string field, or None when absent.

        Strings are names: the schema does not bound them, converters write fused-op
        tensor names of many KB ("a;b;c" joined), and TFLM never reads them. So their
        length never refuses a model and only a bounded prefix is copied into RAM."""
        v = self.vector(slot, 1, what)
        if v is None:
            return None
        p, n = v
        return self.src.read(p, n if n < limit else limit, what), n


def label(s):
    """A name for messages from string()'s (prefix, length): one line of at most _SHOW
    characters, '...' when cut; bytes that are not printable UTF-8 become '?'."""
    if s is None:
        return ""
    b, n = s
    k = len(b)
    if k < n:
        # the prefix may cut a multi-byte character: drop its continuation bytes
        while k and b[k - 1] & 0xC0 == 0x80:
            k -= 1
        if k and b[k - 1] & 0x80:
            k -= 1  # and its lead byte
        b = b[:k]
    try:
        t = b.decode()
    except UnicodeError:
        t = "".join(chr(c) if c < 0x80 else "?" for c in b)
    t = "".join("?" if c < " " or c == "\x7f" else c for c in t)
    return t + "..." if k < n else t
