# Strict CBOR (RFC 8949) decoder; imported where a payload is decoded (lazily).
#
# Supports what the node will receive: ints, byte and text strings, definite-length
# arrays and maps (integer or text keys), false/true/null/undefined and half/single/
# double floats. Tags and indefinite lengths are refused. Every length is checked
# against the input before it is used; bad input raises CBORError (cbor/encode.py), nothing else.
from micropython import const
import struct
from cbor.encode import CBORError

# Major types, RFC 8949 section 3.1
_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)

# Additional information, RFC 8949 section 3 and 3.3
_AI_1 = const(24)
_AI_2 = const(25)
_AI_4 = const(26)
_AI_8 = const(27)
_AI_INDEF = const(31)  # indefinite length / break (section 3.2)

_MAX_DEPTH = const(16)  # nesting limit


def _arg(buf, p, end, ai):
    # Argument of an initial byte whose additional info is ai; returns (value, next).
    if ai < 24:
        return ai, p
    if ai == _AI_1:
        k = 1
    elif ai == _AI_2:
        k = 2
    elif ai == _AI_4:
        k = 4
    elif ai == _AI_8:
        k = 8
    elif ai == _AI_INDEF:
        raise CBORError("indefinite length not supported")
    else:
        raise CBORError("reserved additional information %d" % ai)
    if p + k > end:
        raise CBORError("truncated argument")
    v = 0
    for i in range(k):
        v = (v << 8) | buf[p + i]
    return v, p + k


def _half(h):
    # IEEE 754 binary16 to float, RFC 8949 Appendix D
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = m / 16777216.0
    elif e == 31:
        v = float("nan") if m else float("inf")
    else:
        v = (m + 1024) * (2.0 ** (e - 25))
    return -v if h & 0x8000 else v


def _item(buf, p, end, depth):
    if p >= end:
        raise CBORError("truncated input")
    ib = buf[p]
    p += 1
    major = ib >> 5
    ai = ib & 0x1F
    if major == _SIMPLE:
        if ai == 20:
            return False, p
        if ai == 21:
            return True, p
        if ai == 22 or ai == 23:  # null, undefined
            return None, p
        if ai == _AI_2:
            if p + 2 > end:
                raise CBORError("truncated float16")
            return _half((buf[p] << 8) | buf[p + 1]), p + 2
        if ai == _AI_4:
            if p + 4 > end:
                raise CBORError("truncated float32")
            return struct.unpack_from(">f", buf, p)[0], p + 4
        if ai == _AI_8:
            if p + 8 > end:
                raise CBORError("truncated float64")
            return struct.unpack_from(">d", buf, p)[0], p + 8
        if ai == _AI_INDEF:
            raise CBORError("unexpected break")
        raise CBORError("unsupported simple value")
    n, p = _arg(buf, p, end, ai)
    if major == _UINT:
        return n, p
    if major == _NINT:
        return -1 - n, p
    if major == _BYTES or major == _TEXT:
        if n > end - p:
            raise CBORError("truncated string")
        s = bytes(buf[p : p + n])
        if major == _TEXT:
            try:
                s = str(s, "utf-8")
            except UnicodeError:
                raise CBORError("invalid UTF-8")
        return s, p + n
    if major == _TAG:
        raise CBORError("tags not supported")
    if depth >= _MAX_DEPTH:
        raise CBORError("nested too deeply")
    if major == _ARRAY:
        if n > end - p:  # every item takes at least one byte
            raise CBORError("truncated array")
        out = []
        for _ in range(n):
            v, p = _item(buf, p, end, depth + 1)
            out.append(v)
        return out, p
    # major == _MAP
    if n > (end - p) >> 1:
        raise CBORError("truncated map")
    out = {}
    for _ in range(n):
        k, p = _item(buf, p, end, depth + 1)
        # keys as LwM2M/SenML use them: ints and text (bytes keys would compare with
        # str keys inside the dict, which MicroPython reports with a warning)
        if not isinstance(k, (int, str)) or k is True or k is False:
            raise CBORError("map key must be an integer or text")
        if k in out:
            raise CBORError("duplicate map key")
        v, p = _item(buf, p, end, depth + 1)
        out[k] = v
    return out, p


def decode(buf, pos=0, end=-1):
    """Decode one item from buf[pos:end]; returns (value, position after it)."""
    if end < 0:
        end = len(buf)
    if pos < 0 or end > len(buf) or pos > end:
        raise CBORError("bad bounds")
    return _item(buf, pos, end, 0)


def head(buf, pos, end, major):
    """The argument of the item head at buf[pos] (an array's length, a map's size, ...),
    which must be of major type ``major`` (RFC 8949 section 3); returns (argument,
    position after the head)."""
    if not 0 <= pos < end <= len(buf):
        raise CBORError("truncated input")
    ib = buf[pos]
    if ib >> 5 != major:
        raise CBORError("major type %d, expected %d" % (ib >> 5, major))
    return _arg(buf, pos + 1, end, ib & 0x1F)


def loads(buf):
    """Decode exactly one item that fills all of ``buf``."""
    v, p = _item(buf, 0, len(buf), 0)
    if p != len(buf):
        raise CBORError("trailing bytes")
    return v
