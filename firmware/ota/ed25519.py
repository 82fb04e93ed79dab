# Ed25519 signature verification (RFC 8032 section 5.1.7), cofactorless ([S]B = R + [k]A
# checked as the encoding of [S]B - [k]A equal to R's bytes, as OpenSSL, libsodium
# and ref10 do). Refuses S >= L, a public key whose y is >= p or whose x is 0 with the
# sign bit set, and an R that is not the canonical encoding of a point (no point
# encodes to it, so the comparison fails). Points in extended coordinates
# (X:Y:Z:T), x = X/Z, y = Y/Z, x*y = T/Z, formulas of Hisil-Wong-Carter-Dawson 2008
# for a = -1 (complete: no special cases); [S]B + [k](-A) by a joint 4-bit fixed
# window (Straus): 252 doublings and at most 128 additions. Both tables (B's and the
# key's, 16 points each, about 4 KB of ints) are made per call and dropped: 30 additions,
# a few percent of the time, are cheaper than keeping B's table in a board's RAM.
from ota.sha512 import Sha512

_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED  # 2^255 - 19
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED  # group order
_D = 0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3  # -121665/121666
_D2 = 0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159  # 2d
_SQRTM1 = 0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0  # sqrt(-1)
_BX = 0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A
_BY = 0x6666666666666666666666666666666666666666666666666666666666666658

def decode(s):
    """A point from its 32-byte encoding (RFC 8032 section 5.1.3) as (X, Y, Z, T);
    None when the bytes are no canonical encoding of a point."""
    if len(s) != 32:
        return None
    P = _P
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (_D * yy + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) >> 3, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * _SQRTM1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _cached(p):
    # (Y - X, Y + X, 2d*T, 2Z): the second operand of _add
    P = _P
    X, Y, Z, T = p
    return ((Y - X) % P, (Y + X) % P, _D2 * T % P, 2 * Z % P)


def _add(p, q):
    # extended p + cached q (add-2008-hwcd-3, a = -1)
    P = _P
    X1, Y1, Z1, T1 = p
    YmX, YpX, T2d, Z2 = q
    a = (Y1 - X1) * YmX % P
    b = (Y1 + X1) * YpX % P
    c = T1 * T2d % P
    d = Z1 * Z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _table(p):
    # [i]p for i = 0..15 in cached form
    t = [(1, 1, 0, 2), _cached(p)]
    q = p
    for _ in range(14):
        q = _add(q, t[1])
        t.append(_cached(q))
    return t


def verify(pub, msg, sig, point=None):
    """True when sig (64 bytes) is an Ed25519 signature of msg by the public key pub
    (its 32-byte encoding). point: pub already decoded (decode(pub)), to skip that."""
    if len(sig) != 64 or len(pub) != 32:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    a = point or decode(pub)
    if a is None:
        return False
    h = Sha512(sig[:32])
    h.update(pub)
    h.update(msg)
    k = int.from_bytes(h.digest(), "little") % _L
    P = _P
    X, Y, Z, T = a
    ta = _table(((P - X) % P, Y, Z, (P - T) % P))  # -A
    tb = _table((_BX, _BY, 1, _BX * _BY % P))
    kb = k.to_bytes(32, "little")
    sb = s.to_bytes(32, "little")
    # [s]B + [k](-A), 4 bits at a time from the top
    X, Y, Z = 0, 1, 1
    T = 0
    for i in range(63, -1, -1):
        if i != 63:
            for j in range(4):
                # dbl-2008-hwcd, a = -1: T is only needed before an addition
                aa = X * X % P
                bb = Y * Y % P
                cc = 2 * Z * Z % P
                e = ((X + Y) * (X + Y) - aa - bb) % P
                g = bb - aa
                f = g - cc
                h = -aa - bb
                X = e * f % P
                Y = g * h % P
                Z = f * g % P
                if j == 3:
                    T = e * h % P
        sh = (i & 1) << 2
        n = (kb[i >> 1] >> sh) & 15
        if n:
            X, Y, Z, T = _add((X, Y, Z, T), ta[n])
        n = (sb[i >> 1] >> sh) & 15
        if n:
            X, Y, Z, T = _add((X, Y, Z, T), tb[n])
    zi = pow(Z, P - 2, P)
    x = X * zi % P
    y = Y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little") == bytes(sig[:32])
