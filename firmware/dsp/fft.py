# Fixed-point real FFT (Hann window) for the feature extractor, in viper.
#
# A real FFT of n points is a complex FFT of m = n/2 points plus a split step. Data are
# int16 (re, im) pairs with one block exponent (block floating point): before every stage
# the kernel that wrote the data reports the OR of |value| over them ("bits"), and the
# stage shifts right by just enough that no output can leave int16:
#   radix-4 stage  |out| <= 5.25 * max|in| + 1.5   -> shift 0..3 (bits < 2^12 .. 2^15)
#   radix-2 stage and the split  |out| <= 2.42 * max|in| + 1   -> shift 0..2
# so outputs stay below 21478 and every product (int16 x Q15 twiddle) below 1.52e9 < 2^31.
# Twiddles are Q15 cos/sin rounded from 32768*cos (W^0 = 32768 set in the kernels; the
# table holds -32768..32767), stored biased by +32768
# in uint16 arrays (viper ptr16 loads are unsigned on every port; one subtraction undoes
# the bias); int16 data are sign-extended with (v ^ 0x8000) - 0x8000.
#
# Steps per window (Fft.run):
#   _wbits  v = x*a - b (mean removal and scaling chosen by the caller, |v| <= 32767,
#           or <= 65535 with the Hann halved), OR of |v * hann| (Hann in Q16, <= 65535:
#           |v * hann| < 2^31 with room for the rounding term) to pick the shift g
#   _pack   y = round(v * hann / 2^g), |y| < 2^14, z_n = y_2n + i*y_2n+1 written in
#           bit-reversed order, fused with the first (trivial) radix-2 stage
#   _r4     radix-4 decimation-in-time stages (spans h and 2h at once, 3 multiplies)
#   _r2     a last radix-2 stage when log2(m) - 1 is odd
#   _split  X_k = E_k + W_n^k O_k for k = 0..m, in place (buffer holds m+1 bins)
# after which X(v * hann)_k = X_stored_k * 2^exp (exp returned by run). _dcfix takes a
# known constant (the mean's rounding rest) off the spectrum; _power and _mags read it.
import micropython
import math
from array import array
from micropython import const

from dsp.featspec import zeros

_BIAS = const(32768)  # twiddles are stored as value + 32768 in uint16
_Q15 = const(32767)


@micropython.viper
def _wbits(x: ptr16, hann: ptr16, j: int, seg: int, off: int, a: int, b: int, hs: int) -> int:
    # OR of |v * (hann[j] >> hs)|, v = x[off + j]*a - b, over the segment (hs = 0 when
    # |v| <= 32767, 1 when |v| <= 65535; hann <= 65535: |v * hann| < 2^31 - 2^16)
    # returns the shift g that brings every y = round(v * hann / 2^g) within +-16382
    nb = 0
    while j < seg:
        v = (((x[off + j] ^ 0x8000) - 0x8000) * a - b) * (hann[j] >> hs)
        nb |= v ^ (v >> 31)
        j += 1
    g = 0
    while (nb >> g) >= 16382:
        g += 1
    return g


@micropython.viper
def _pack(x: ptr16, buf: ptr16, hann: ptr16, rev: ptr16, half: int, off: int, seg: int,
          a: int, b: int, hs: int, g: int) -> int:
    # y_j = round(v_j * (hann[j] >> hs) / 2^g), v_j = x[off + j]*a - b (j < seg; 0 beyond:
    # zero padding),
    # |y| < 2^14 by the caller's choice of g; z_n = y_2n + i y_2n+1. z_n and z_(n+m/2)
    # (m = 2*half) meet in the trivial first radix-2 butterfly, stored at bit-reversed
    # position rev[n]. Returns OR of |outputs|.
    nb = 0
    g0 = 1 if g == 0 else 0  # round(p / 2^g) = ((p >> (g - 1)) + 1) >> 1: no addition
    g1 = g - 1 + g0  # next to |p| < 2^31 (p << 1 when g = 0, where |p| < 2^14)
    n = 0
    mo = 2 * half  # y_(2n+m) is m = 2*half samples after y_2n
    while n < half:
        j = 2 * n
        p = 2 * rev[n]
        y0 = 0
        y1 = 0
        y2 = 0
        y3 = 0
        if j < seg:
            y0 = ((((((x[off + j] ^ 0x8000) - 0x8000) * a - b) * (hann[j] >> hs) << g0) >> g1) + 1) >> 1
        if j + 1 < seg:
            y1 = ((((((x[off + j + 1] ^ 0x8000) - 0x8000) * a - b) * (hann[j + 1] >> hs) << g0) >> g1) + 1) >> 1
        j += mo
        if j < seg:
            y2 = ((((((x[off + j] ^ 0x8000) - 0x8000) * a - b) * (hann[j] >> hs) << g0) >> g1) + 1) >> 1
        if j + 1 < seg:
            y3 = ((((((x[off + j + 1] ^ 0x8000) - 0x8000) * a - b) * (hann[j + 1] >> hs) << g0) >> g1) + 1) >> 1
        v = y0 + y2
        buf[p] = v
        nb |= v ^ (v >> 31)
        v = y1 + y3
        buf[p + 1] = v
        nb |= v ^ (v >> 31)
        v = y0 - y2
        buf[p + 2] = v
        nb |= v ^ (v >> 31)
        v = y1 - y3
        buf[p + 3] = v
        nb |= v ^ (v >> 31)
        n += 1
    return nb


@micropython.viper
def _r4(x: ptr16, i: int, e: int, h: int, tw: ptr16, s: int) -> int:
    # one radix-4 DIT stage over spans h and 2h; e = 2*m; tw holds v, v^2, v^3 per k
    # (v = W_4h^k); outputs shifted right by s with rounding; returns OR of |outputs|
    nb = 0
    rnd = (1 << s) >> 1
    q = 2 * h
    q2 = 4 * h
    q3 = 6 * h
    st = 8 * h
    k = 0
    while k < h:
        t = 6 * k
        v1r = tw[t] - 32768
        v1i = tw[t + 1] - 32768
        v2r = tw[t + 2] - 32768
        v2i = tw[t + 3] - 32768
        v3r = tw[t + 4] - 32768
        v3i = tw[t + 5] - 32768
        if k == 0:  # W^0 = 1 exactly (the table can only hold 32767)
            v1r = 32768
            v2r = 32768
            v3r = 32768
        i = 2 * k
        while i < e:
            br = (x[i + q] ^ 0x8000) - 0x8000
            bi = (x[i + q + 1] ^ 0x8000) - 0x8000
            b_r = (br * v2r - bi * v2i + 16384) >> 15
            b_i = (br * v2i + bi * v2r + 16384) >> 15
            br = (x[i + q2] ^ 0x8000) - 0x8000
            bi = (x[i + q2 + 1] ^ 0x8000) - 0x8000
            c_r = (br * v1r - bi * v1i + 16384) >> 15
            c_i = (br * v1i + bi * v1r + 16384) >> 15
            br = (x[i + q3] ^ 0x8000) - 0x8000
            bi = (x[i + q3 + 1] ^ 0x8000) - 0x8000
            d_r = (br * v3r - bi * v3i + 16384) >> 15
            d_i = (br * v3i + bi * v3r + 16384) >> 15
            ar = (x[i] ^ 0x8000) - 0x8000
            ai = (x[i + 1] ^ 0x8000) - 0x8000
            s0r = ar + b_r
            s0i = ai + b_i
            s1r = ar - b_r
            s1i = ai - b_i
            s2r = c_r + d_r
            s2i = c_i + d_i
            s3r = c_r - d_r
            s3i = c_i - d_i
            v = (s0r + s2r + rnd) >> s
            x[i] = v
            nb |= v ^ (v >> 31)
            v = (s0i + s2i + rnd) >> s
            x[i + 1] = v
            nb |= v ^ (v >> 31)
            v = (s0r - s2r + rnd) >> s
            x[i + q2] = v
            nb |= v ^ (v >> 31)
            v = (s0i - s2i + rnd) >> s
            x[i + q2 + 1] = v
            nb |= v ^ (v >> 31)
            v = (s1r + s3i + rnd) >> s
            x[i + q] = v
            nb |= v ^ (v >> 31)
            v = (s1i - s3r + rnd) >> s
            x[i + q + 1] = v
            nb |= v ^ (v >> 31)
            v = (s1r - s3i + rnd) >> s
            x[i + q3] = v
            nb |= v ^ (v >> 31)
            v = (s1i + s3r + rnd) >> s
            x[i + q3 + 1] = v
            nb |= v ^ (v >> 31)
            i += st
        k += 1
    return nb


@micropython.viper
def _r2(x: ptr16, i: int, e: int, h: int, tw: ptr16, s: int) -> int:
    # one radix-2 DIT stage of span h (w = W_2h^k); e = 2*m
    nb = 0
    rnd = (1 << s) >> 1
    q = 2 * h
    st = 4 * h
    k = 0
    while k < h:
        wr = tw[2 * k] - 32768
        wi = tw[2 * k + 1] - 32768
        if k == 0:  # W^0 = 1 exactly
            wr = 32768
        i = 2 * k
        while i < e:
            br = (x[i + q] ^ 0x8000) - 0x8000
            bi = (x[i + q + 1] ^ 0x8000) - 0x8000
            tr = (br * wr - bi * wi + 16384) >> 15
            ti = (br * wi + bi * wr + 16384) >> 15
            ar = (x[i] ^ 0x8000) - 0x8000
            ai = (x[i + 1] ^ 0x8000) - 0x8000
            v = (ar + tr + rnd) >> s
            x[i] = v
            nb |= v ^ (v >> 31)
            v = (ai + ti + rnd) >> s
            x[i + 1] = v
            nb |= v ^ (v >> 31)
            v = (ar - tr + rnd) >> s
            x[i + q] = v
            nb |= v ^ (v >> 31)
            v = (ai - ti + rnd) >> s
            x[i + q + 1] = v
            nb |= v ^ (v >> 31)
            i += st
        k += 1
    return nb


@micropython.viper
def _split(x: ptr16, m: int, tw: ptr16, s: int):
    # in place: complex FFT F of z_n = y_2n + i y_2n+1 -> X_k (k = 0..m) of the real y,
    # X_k = E + W^k O, X_(m-k) = conj(E - W^k O), E = (F_k + F*_(m-k))/2,
    # O = -i (F_k - F*_(m-k))/2; outputs shifted right by s
    t = s + 1
    rnd = 1 << s
    fr = (x[0] ^ 0x8000) - 0x8000
    fi = (x[1] ^ 0x8000) - 0x8000
    v = (2 * (fr + fi) + rnd) >> t
    x[0] = v
    x[1] = 0
    v = (2 * (fr - fi) + rnd) >> t
    x[2 * m] = v
    x[2 * m + 1] = 0
    hm = m >> 1
    k = 1
    j = 2 * m - 2
    while k <= hm:
        wr = tw[2 * k] - 32768
        wi = tw[2 * k + 1] - 32768
        ar = (x[2 * k] ^ 0x8000) - 0x8000
        ai = (x[2 * k + 1] ^ 0x8000) - 0x8000
        br = (x[j] ^ 0x8000) - 0x8000
        bi = 0x8000 - (x[j + 1] ^ 0x8000)  # conj: -(im)
        er = ar + br  # 2E
        ei = ai + bi
        dr = (ar - br + 1) >> 1  # D/2, D = F_k - conj(F_(m-k))
        di = (ai - bi + 1) >> 1
        # O = -i D/2 = (di, -dr); Q = W O
        qr = (wr * di + wi * dr + 16384) >> 15
        qi = (wi * di - wr * dr + 16384) >> 15
        v = (er + 2 * qr + rnd) >> t
        x[2 * k] = v
        v = (ei + 2 * qi + rnd) >> t
        x[2 * k + 1] = v
        if j != 2 * k:
            v = (er - 2 * qr + rnd) >> t
            x[j] = v
            v = (2 * qi - ei + rnd) >> t
            x[j + 1] = v
        k += 1
        j -= 2


@micropython.viper
def _dcfix(x: ptr16, wn: ptr16, kc: int, c: int):
    # take a constant off the windowed input: X_0 -= c, X_k -= c * wn_k (k = 1..kc-1),
    # wn_k = W_k / W_0 in Q15 (biased +32768), W = DFT of the zero-padded Hann window;
    # results kept inside int16
    v = ((x[0] ^ 0x8000) - 0x8000) - c
    if v > 32767:
        v = 32767
    if v < -32767:
        v = -32767
    x[0] = v
    k = 1
    while k < kc:
        wr = wn[2 * k] - 32768
        wi = wn[2 * k + 1] - 32768
        v = ((x[2 * k] ^ 0x8000) - 0x8000) - ((c * wr + 16384) >> 15)
        if v > 32767:
            v = 32767
        if v < -32767:
            v = -32767
        x[2 * k] = v
        v = ((x[2 * k + 1] ^ 0x8000) - 0x8000) - ((c * wi + 16384) >> 15)
        if v > 32767:
            v = 32767
        if v < -32767:
            v = -32767
        x[2 * k + 1] = v
        k += 1


@micropython.viper
def _power(x: ptr16, k: int, m: int, p: ptr32, acc: ptr32) -> int:
    # p[k] = |X_k|^2 for k = 0..m (< 2^30: components stay below 21478), k = 0 and m
    # halved (they count once in a one-sided spectrum); acc[0..5] = limbs (hi, 12-bit lo)
    # of sum p, of sum k*(p >> 16) and of sum k*(p & 0xffff) (k*(p >> 16) < 2^24 and
    # k*(p & 0xffff) < 2^26 summed over blocks of 16 bins stay below 2^30).
    # Returns the first argmax over k >= 1. Call with k = 0.
    xr = (x[0] ^ 0x8000) - 0x8000
    v = (xr * xr) >> 1
    p[0] = v
    th = v >> 12
    tl = v & 4095
    xr = (x[2 * m] ^ 0x8000) - 0x8000
    v = (xr * xr) >> 1
    p[m] = v
    th += v >> 12
    tl += v & 4095
    w = m * (v >> 16)
    c1h = w >> 12
    c1l = w & 4095
    w = m * (v & 0xFFFF)
    c0h = w >> 12
    c0l = w & 4095
    best = 0
    kb = 0
    if v > 0:
        best = v
        kb = m
    k = 1
    while k < m:
        be = k + 16
        if be > m:
            be = m
        b1 = 0
        b0 = 0
        while k < be:
            xr = (x[2 * k] ^ 0x8000) - 0x8000
            xi = (x[2 * k + 1] ^ 0x8000) - 0x8000
            v = xr * xr + xi * xi
            p[k] = v
            if v >= best:
                if v > best or kb > k:
                    best = v
                    kb = k
            th += v >> 12
            tl += v & 4095
            b1 += k * (v >> 16)
            b0 += k * (v & 0xFFFF)
            k += 1
        c1h += b1 >> 12
        c1l += b1 & 4095
        c0h += b0 >> 12
        c0l += b0 & 4095
    acc[0] = th + (tl >> 12)
    acc[1] = tl & 4095
    acc[2] = c1h + (c1l >> 12)
    acc[3] = c1l & 4095
    acc[4] = c0h + (c0l >> 12)
    acc[5] = c0l & 4095
    return kb


@micropython.viper
def isqrt(v: int) -> int:
    # floor(sqrt(v)) for 0 <= v < 2^31, digit by digit (every step stays below 2^31)
    r = 0
    bit = 1
    bit <<= 30  # not a constant: 2^30 folds to a long int on 32-bit ports
    while bit > v:
        bit >>= 2
    while bit:
        if v >= r + bit:
            v -= r + bit
            r = (r >> 1) + bit
        else:
            r >>= 1
        bit >>= 2
    return r


@micropython.viper
def _mags(p: ptr32, k0: int, k1: int, g: int, sh: int, out: ptr32, o: int):
    # out[o + k - k0] = (isqrt(p[k]) * g) >> sh, rounded; k = 0 and m were halved in p,
    # g then carries the missing factor (the caller passes them separately)
    rnd = (1 << sh) >> 1
    k = k0
    while k < k1:
        out[o + k - k0] = (int(isqrt(p[k])) * g + rnd) >> sh
        k += 1


def _bitrev(n, bits):
    r = 0
    for _ in range(bits):
        r = (r << 1) | (n & 1)
        n >>= 1
    return r


def _tw(buf, i, angle):
    # Q15, 1.0 = 32768; +1.0 does not fit the biased uint16 and is stored as 32767 (the
    # kernels use an exact 32768 for W^0; elsewhere it is a sub-LSB rounding)
    buf[i] = min(_Q15, round(32768 * math.cos(angle))) + _BIAS
    buf[i + 1] = min(_Q15, round(32768 * math.sin(angle))) + _BIAS


class Fft:
    """Tables and buffers for one real FFT size n (64..2048) over a segment of `seg` samples
    (seg <= n: the rest is zero padding). Everything is allocated here, once."""

    def __init__(self, n, seg):
        m = n // 2
        lg = 0
        while (1 << lg) < m:
            lg += 1
        self.n = n
        self.m = m
        self.seg = seg
        pi2 = 2 * math.pi
        # periodic Hann over the segment, Q16 in uint16 (1.0 = 65536, the one sample at
        # the centre where it is 1.0 is stored as 65535)
        self.hann = h = zeros("H", seg)
        for j in range(seg):
            h[j] = min(65535, round(32768 - 32768 * math.cos(pi2 * j / seg)))
        self.rev = r = zeros("H", m // 2)
        for j in range(m // 2):
            r[j] = _bitrev(j, lg)
        self.stages = []  # (radix, h, table)
        hs = 2
        while 4 * hs <= m:
            t = zeros("H", 6 * hs)
            for k in range(hs):
                for q in range(3):
                    _tw(t, 6 * k + 2 * q, -pi2 * k * (q + 1) / (4 * hs))
            self.stages.append((4, hs, t))
            hs *= 4
        if hs < m:
            t = zeros("H", 2 * hs)
            for k in range(hs):
                _tw(t, 2 * k, -pi2 * k / (2 * hs))
            self.stages.append((2, hs, t))
        self.split_tw = t = zeros("H", 2 * (m // 2 + 1))
        for k in range(m // 2 + 1):
            _tw(t, 2 * k, -pi2 * k / n)
        # W_k / W_0 for the zero-padded periodic Hann (Dirichlet kernels, closed form), as
        # far as it matters in Q15: 2 bins when seg == n (W_1 / W_0 = -1/2)
        r = n / seg
        kc = min(m + 1, 2 if seg == n else int(24 * r) + 4)
        self.kc = kc
        self.wn = wn = zeros("H", 2 * kc)

        def dirichlet(nu):
            a = math.pi * nu / n
            if abs(math.sin(a)) < 1e-12:
                return complex(seg, 0)
            ph = -a * (seg - 1)
            return complex(math.cos(ph), math.sin(ph)) * (math.sin(a * seg) / math.sin(a))

        for k in range(1, kc):
            w = (0.5 * dirichlet(k) - 0.25 * dirichlet(k - r) - 0.25 * dirichlet(k + r))
            w = w / (seg / 2)
            wn[2 * k] = max(-32767, min(32767, round(32768 * w.real))) + _BIAS
            wn[2 * k + 1] = max(-32767, min(32767, round(32768 * w.imag))) + _BIAS
        self.buf = zeros("h", 2 * (m + 1))  # (re, im) for bins 0..m
        self.power = zeros("i", m + 1)
        self.acc = zeros("i", 6)

    def run(self, x, off, a, b, hs):
        """Transform v_j = x[off + j]*a - b, j < seg, Hann-windowed and zero-padded to n;
        |v| <= 32767 with hs = 0, |v| <= 65535 with hs = 1 (Hann then in Q15).
        Returns exp: X(v*hann)_k = buf bin k * 2**exp."""
        buf = self.buf
        e2 = 2 * self.m
        seg = self.seg
        # scale the windowed input to |y| < 2^14 (block floating point from the start)
        g = _wbits(x, self.hann, 0, seg, off, a, b, hs)
        bits = _pack(x, buf, self.hann, self.rev, self.m // 2, off, seg, a, b, hs, g)
        exp = g - 16 + hs
        for radix, h, t in self.stages:
            if radix == 4:
                s = 0 if bits < 0x1000 else 1 if bits < 0x2000 else 2 if bits < 0x4000 else 3
                bits = _r4(buf, 0, e2, h, t, s)
            else:
                s = 0 if bits < 0x2000 else 1 if bits < 0x4000 else 2
                bits = _r2(buf, 0, e2, h, t, s)
            exp += s
        s = 0 if bits < 0x2000 else 1 if bits < 0x4000 else 2
        _split(buf, self.m, self.split_tw, s)
        return exp + s

    def dcfix(self, c):
        """Take a constant off the windowed input, given as its bin-0 value c (stored
        units): the residue of an inexact mean. Its spectrum is c * W_k / W_0."""
        _dcfix(self.buf, self.wn, self.kc, c)

    def spectrum(self):
        """Power |X_k|^2 of the last run into self.power (k = 0 and m halved); fills
        self.acc with the limbs of sum p and sum k*p; returns argmax over k >= 1."""
        return _power(self.buf, 0, self.m, self.power, self.acc)
