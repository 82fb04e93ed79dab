# ECDSA P-256 verification (FIPS 186-4 section 6.4.2, SEC 1 v2 section 4.1.4) with
# SHA-256 digests. Points in Jacobian coordinates (x = X/Z^2, y = Y/Z^3), formulas of
# the Explicit-Formulas Database for a = -3 (dbl-2001-b, madd-2007-bl); u1*G + u2*Q
# by a joint 4-bit fixed window (Straus): 252 doublings and at most 128 mixed
# additions over two affine tables of 15 points (G's and Q's, made per call and dropped,
# each affine with one inversion: about 4% of the time, and no RAM kept). The result is compared with r
# without an inversion (X == r*Z^2, or (r + n)*Z^2 when r + n < p).
#
# A public key is the uncompressed point 0x04 || X || Y (65 bytes, SEC 1 section
# 2.3.3), checked to lie on the curve by pubkey(); the SubjectPublicKeyInfo DER that
# imgtool hashes into KEYHASH is that point behind a fixed 26-byte prefix
# (ota/image.py strips it).
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

def pubkey(b):
    """(x, y) of an uncompressed P-256 point (65 bytes, 0x04 || X || Y); ValueError
    unless it is a point on the curve (the point at infinity has no such encoding)."""
    if len(b) != 65 or b[0] != 4:
        raise ValueError("P-256 key: 65-byte uncompressed point")
    P = _P
    x = int.from_bytes(b[1:33], "big")
    y = int.from_bytes(b[33:65], "big")
    if x >= P or y >= P or (y * y - x * x * x + 3 * x - _B) % P:
        raise ValueError("P-256 key: not on the curve")
    return (x, y)


def _dbl(X, Y, Z):
    # dbl-2001-b (a = -3); the point at infinity (Z = 0) stays there
    P = _P
    d = Z * Z % P
    g = Y * Y % P
    b = X * g % P
    a = 3 * (X - d) * (X + d) % P
    X3 = (a * a - 8 * b) % P
    Z3 = ((Y + Z) * (Y + Z) - g - d) % P
    Y3 = (a * (4 * b - X3) - 8 * g * g) % P
    return X3, Y3, Z3


def _madd(X1, Y1, Z1, x2, y2):
    # Jacobian + affine (madd-2007-bl), with the cases the formula does not cover
    P = _P
    if Z1 == 0:
        return x2, y2, 1
    zz = Z1 * Z1 % P
    h = (x2 * zz - X1) % P
    r = 2 * (y2 * Z1 * zz - Y1) % P
    if h == 0:
        if r == 0:
            return _dbl(X1, Y1, Z1)
        return 1, 1, 0  # p + (-p)
    hh = h * h % P
    i = 4 * hh
    j = h * i % P
    v = X1 * i % P
    X3 = (r * r - j - 2 * v) % P
    Y3 = (r * (v - X3) - 2 * Y1 * j) % P
    Z3 = ((Z1 + h) * (Z1 + h) - zz - hh) % P
    return X3, Y3, Z3


def _table(x, y):
    # [i](x, y) for i = 1..15, affine (Montgomery's trick: one inversion for all);
    # an entry at infinity (only if the point's order is below 16: not on P-256) is None
    P = _P
    jac = [None, (x, y, 1)]
    for i in range(2, 16):
        X, Y, Z = jac[i - 1]
        jac.append(_madd(X, Y, Z, x, y))
    acc = [1] * 16
    a = 1
    for i in range(1, 16):
        acc[i] = a
        z = jac[i][2]
        if z:
            a = a * z % P
    inv = pow(a, P - 2, P)
    out = [None] * 16
    for i in range(15, 0, -1):
        X, Y, Z = jac[i]
        if Z == 0:
            continue
        zi = inv * acc[i] % P  # 1/Z_i
        inv = inv * Z % P
        z2 = zi * zi % P
        out[i] = (X * z2 % P, Y * z2 % P * zi % P)
    return out


def der_sig(sig):
    """(r, s) from a DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs, minimal
    encodings, non-negative, at most 33 bytes each), optionally zero-padded up to 72
    bytes as imgtool --pad-sig writes it; None for anything else."""
    n = len(sig)
    if n < 8 or n > 72 or sig[0] != 0x30 or sig[1] > 70 or sig[1] + 2 > n:
        return None
    end = 2 + sig[1]
    for i in range(end, n):
        if sig[i]:
            return None
    out = []
    i = 2
    for _ in range(2):
        if i + 2 > end or sig[i] != 0x02:
            return None
        ln = sig[i + 1]
        i += 2
        if ln == 0 or ln > 33 or i + ln > end:
            return None
        if sig[i] & 0x80:
            return None  # negative
        if ln > 1 and sig[i] == 0 and not sig[i + 1] & 0x80:
            return None  # not minimal
        out.append(int.from_bytes(sig[i : i + ln], "big"))
        i += ln
    if i != end:
        return None
    return out[0], out[1]


def verify(q, digest, r, s):
    """True when (r, s) is an ECDSA P-256 signature of the 32-byte digest by the
    public key q ((x, y) from pubkey())."""
    N = _N
    if not (0 < r < N and 0 < s < N) or len(digest) != 32:
        return False
    tg = _table(_GX, _GY)
    tq = _table(q[0], q[1])
    w = pow(s, N - 2, N)
    u1 = (int.from_bytes(digest, "big") * w % N).to_bytes(32, "big")
    u2 = (r * w % N).to_bytes(32, "big")
    X, Y, Z = 1, 1, 0
    for i in range(64):
        if i:
            for _ in range(4):
                X, Y, Z = _dbl(X, Y, Z)
        sh = 4 - ((i & 1) << 2)
        n = (u1[i >> 1] >> sh) & 15
        if n:
            X, Y, Z = _madd(X, Y, Z, tg[n][0], tg[n][1])
        n = (u2[i >> 1] >> sh) & 15
        if n:
            p = tq[n]
            if p is not None:
                X, Y, Z = _madd(X, Y, Z, p[0], p[1])
    if Z == 0:
        return False
    P = _P
    zz = Z * Z % P
    if X == r * zz % P:
        return True
    return r + N < P and X == (r + N) * zz % P
