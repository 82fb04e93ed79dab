# Per-window signal features for the node, in integer / fixed point (see FEATURES.md).
#
#   ex = Extractor(spec)          # checks the spec (featspec.py), allocates everything
#   ex.names, ex.formats          # output names; (fractional bits, unit) per output
#   ex.compute(win, out)          # win: array('h') of spec["window"] int16 codes,
#                                 # out: array('i') of len(ex.names): value = out[i] / 2**frac
#   ex.set_shaft_hz(hz)           # measured shaft speed for the envelope (allocates a little)
#
# compute() allocates nothing on the heap: the heavy loops are viper kernels (fft.py,
# envelope.py, below), and the few scalar results (square roots, ratios, normalisation)
# go through a tiny block floating-point library on int32 slots ("pf": a 30-bit mantissa,
# exponent and sign), so no float object is ever created. Every viper intermediate stays
# inside signed 32 bits (the word of the target MCUs); tests/features/test_int32_bound.py
# proves it by running these kernels instrumented under MicroPython.
import micropython
import math
from array import array
from micropython import const

from dsp.featspec import FeatureError, Plan, default_spec, defect_bins, zeros  # noqa: F401

_U_LIM = const(16383)  # |u| <= 2^14 - 1: u^2 < 2^28, and so is every moment product
# Signed limb his that viper code reads back are stored biased (_moments: + 2^29,
# envelope.lags3: + 2^22), since int32 loads are zero-extended on 64-bit ports.
_NO = const(0xFFFF)  # "no such output" in the uint16 output index tables


# --- pf: value = m * 2^e, m = 0 or 2^29 <= m < 2^30; slot j is f[2j] = m,
#     f[2j+1] = ((e + 8192) << 1) | sign  (both non-negative: viper loads of int32 are
#     zero-extended on 64-bit ports, so arrays that viper reads hold no negative value)


@micropython.viper
def _pf_norm(f: ptr32, j: int, m: int, e: int, neg: int):
    if m == 0:
        f[2 * j] = 0
        f[2 * j + 1] = 8192 << 1
        return
    while m >> 30:
        m >>= 1
        e += 1
    while not (m >> 29):
        m <<= 1
        e -= 1
    f[2 * j] = m
    f[2 * j + 1] = ((e + 8192) << 1) | neg


@micropython.viper
def _pf_from(f: ptr32, j: int, hi: int, lo: int, lb: int):
    # value hi * 2^lb + lo; |hi| < 2^30, 0 <= lo < 2^lb, lb <= 16
    neg = 0
    if hi < 0:
        neg = 1
        hi = 0 - hi
        if lo:
            hi -= 1
            lo = (1 << lb) - lo
    if hi == 0:
        _pf_norm(f, j, lo, 0, neg)
        return
    e = lb
    while not (hi >> 29) and e > 0:
        e -= 1
        hi = (hi << 1) | ((lo >> e) & 1)
    _pf_norm(f, j, hi, e, neg)


@micropython.viper
def _pf_mul(f: ptr32, a: int, b: int, r: int):
    ma = f[2 * a]
    mb = f[2 * b]
    ca = f[2 * a + 1]
    cb = f[2 * b + 1]
    if ma == 0 or mb == 0:
        _pf_norm(f, r, 0, 0, 0)
        return
    a1 = ma >> 15
    a0 = ma & 0x7FFF
    b1 = mb >> 15
    b0 = mb & 0x7FFF
    p1 = a1 * b0
    p2 = a0 * b1
    m = a1 * b1 + (p1 >> 15) + (p2 >> 15) + (((p1 & 0x7FFF) + (p2 & 0x7FFF) + ((a0 * b0) >> 15)) >> 15)
    _pf_norm(f, r, m, (ca >> 1) + (cb >> 1) - 16384 + 30, (ca ^ cb) & 1)


@micropython.viper
def _pf_div(f: ptr32, a: int, b: int, r: int):
    # a / b (0 when b is 0)
    ma = f[2 * a]
    mb = f[2 * b]
    ca = f[2 * a + 1]
    cb = f[2 * b + 1]
    if ma == 0 or mb == 0:
        _pf_norm(f, r, 0, 0, 0)
        return
    q = 0
    i = 0
    while i < 31:
        q <<= 1
        if ma >= mb:
            ma -= mb
            q |= 1
        ma <<= 1
        i += 1
    e = (ca >> 1) - (cb >> 1) - 30
    if q >> 30:  # q < 2^31; only ints below 2^30 cross a call without boxing on 32-bit
        q >>= 1
        e += 1
    _pf_norm(f, r, q, e, (ca ^ cb) & 1)


@micropython.viper
def _pf_add(f: ptr32, a: int, b: int, r: int, sub: int):
    # a + b, or a - b when sub is 1
    ma = f[2 * a]
    mb = f[2 * b]
    ca = f[2 * a + 1]
    cb = f[2 * b + 1] ^ sub
    if mb == 0:
        _pf_norm(f, r, ma, (ca >> 1) - 8192, ca & 1)
        return
    if ma == 0:
        _pf_norm(f, r, mb, (cb >> 1) - 8192, cb & 1)
        return
    ea = ca >> 1
    eb = cb >> 1
    if ea < eb or (ea == eb and ma < mb):  # make a the larger magnitude
        t = ma
        ma = mb
        mb = t
        t = ca
        ca = cb
        cb = t
        t = ea
        ea = eb
        eb = t
    d = ea - eb
    if d > 31:
        mb = 0
    else:
        mb >>= d
    e = ea - 8192
    if (ca ^ cb) & 1:
        m = ma - mb
    else:
        m = ma + mb
        if m >> 30:  # below 2^31; halve it before the call (see _pf_div)
            m >>= 1
            e += 1
    _pf_norm(f, r, m, e, ca & 1)


@micropython.viper
def _pf_sqrt(f: ptr32, a: int, r: int):
    # sqrt(|a|): root of m * 2^24 (< 2^55) digit by digit, 28 result bits; rem < 2^30
    m = f[2 * a]
    e = (f[2 * a + 1] >> 1) - 8192
    if m == 0:
        _pf_norm(f, r, 0, 0, 0)
        return
    if e & 1:
        m <<= 1
        e -= 1
    root = 0
    rem = 0
    i = 27
    while i >= 0:
        sh = 2 * i - 24
        if sh >= 0:
            rem = (rem << 2) | ((m >> sh) & 3)
        else:
            rem <<= 2
        t = (root << 2) | 1
        if rem >= t:
            rem -= t
            root = (root << 1) | 1
        else:
            root <<= 1
        i -= 1
    _pf_norm(f, r, root, (e - 24) >> 1, 0)


@micropython.viper
def _pf_scale(f: ptr32, a: int, k: int):
    # a *= 2^k
    if f[2 * a]:
        f[2 * a + 1] = f[2 * a + 1] + (k << 1)


@micropython.viper
def _pf_out(f: ptr32, a: int, frac: int, out: ptr32, i: int):
    # out[i] = round(a * 2^frac), saturated to +-(2^31 - 1)
    m = f[2 * a]
    c = f[2 * a + 1]
    t = (c >> 1) - 8192 + frac
    big = 1
    big <<= 30  # not a constant: 2^30 folds to a long int on 32-bit ports
    big = (big - 1) * 2 + 1
    if m == 0:
        v = 0
    elif t >= 2:
        v = big
    elif t >= 0:
        v = m << t
    elif t > -31:
        v = (m + (1 << (0 - t - 1))) >> (0 - t)
    else:
        v = 0
    if c & 1:
        v = 0 - v
    out[i] = v


@micropython.viper
def _bitlen(v: int) -> int:
    n = 0
    while v:
        v >>= 1
        n += 1
    return n


@micropython.viper
def _pf_gs(f: ptr32, a: int, r: ptr32):
    # r[0], r[1] = g, sh with a ~= g / 2^sh, g < 2^15 (for per-bin integer scaling)
    r[0] = f[2 * a] >> 15
    r[1] = 0 - ((f[2 * a + 1] >> 1) - 8192 + 15)


# --- time domain kernels


@micropython.viper
def _stats(x: ptr16, i: int, n: int, r: ptr32):
    # r = [sum, min, max]; |sum| <= 2^27
    s = 0
    lo = 32767
    hi = -32768
    while i < n:
        v = (x[i] ^ 0x8000) - 0x8000
        s += v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        i += 1
    r[0] = s
    r[1] = lo
    r[2] = hi


@micropython.viper
def _clipped(x: ptr16, i: int, n: int, lim: int) -> int:
    c = 0
    nl = 0 - lim
    while i < n:
        v = (x[i] ^ 0x8000) - 0x8000
        if v >= lim or v <= nl:
            c += 1
        i += 1
    return c


@micropython.viper
def _moments(x: ptr16, i: int, n: int, a: int, b: int, k: int, ns: int, acc: ptr32):
    # u = (x*a - b) >> k, |u| <= 2^14 - 1 (the caller's scaling). Exact sums, in blocks of
    # 4 samples (a block sum of 4 terms below 2^28 stays below 2^30) split into 12-bit
    # limbs: with u^2 = ah*2^14 + al,
    #   sum u^2, sum ah*u, sum al*u      (u^3 = 2^14 ah*u + al*u)
    #   sum ah*ah, sum ah*al, sum al*al  (u^4 = 2^28 ah^2 + 2^15 ah*al + al^2)
    # acc = [sum u + 2^29, then (hi + 2^29, lo) for the six sums, zero crossings].
    # Zero crossings of x - mean: sign changes of x*n - sum (exact, |.| < 2^28).
    s1 = 0
    s2h = 0
    s2l = 0
    s3h = 0
    s3l = 0
    t3h = 0
    t3l = 0
    s4h = 0
    s4l = 0
    t4h = 0
    t4l = 0
    w4h = 0
    w4l = 0
    zc = 0
    prev = (((x[0] ^ 0x8000) - 0x8000) * n - ns) >> 31
    while i < n:
        be = i + 4
        if be > n:
            be = n
        b2 = 0
        b3 = 0
        c3 = 0
        b4 = 0
        c4 = 0
        d4 = 0
        while i < be:
            xv = (x[i] ^ 0x8000) - 0x8000
            sg = (xv * n - ns) >> 31
            zc += (sg ^ prev) & 1
            prev = sg
            u = (xv * a - b) >> k
            s1 += u
            p = u * u
            b2 += p
            ah = p >> 14
            al = p & 16383
            b3 += ah * u
            c3 += al * u
            b4 += ah * ah
            c4 += ah * al
            d4 += al * al
            i += 1
        s2h += b2 >> 12
        s2l += b2 & 4095
        s3h += b3 >> 12
        s3l += b3 & 4095
        t3h += c3 >> 12
        t3l += c3 & 4095
        s4h += b4 >> 12
        s4l += b4 & 4095
        t4h += c4 >> 12
        t4l += c4 & 4095
        w4h += d4 >> 12
        w4l += d4 & 4095
    acc[0] = s1 + 0x20000000
    acc[1] = s2h + (s2l >> 12) + 0x20000000
    acc[2] = s2l & 4095
    acc[3] = s3h + (s3l >> 12) + 0x20000000
    acc[4] = s3l & 4095
    acc[5] = t3h + (t3l >> 12) + 0x20000000
    acc[6] = t3l & 4095
    acc[7] = s4h + (s4l >> 12) + 0x20000000
    acc[8] = s4l & 4095
    acc[9] = t4h + (t4l >> 12) + 0x20000000
    acc[10] = t4l & 4095
    acc[11] = w4h + (w4l >> 12) + 0x20000000
    acc[12] = w4l & 4095
    acc[13] = zc


# pf slots
_ONE_N = const(0)  # 1 / window
_C2 = const(1)
_C3 = const(2)
_C4 = const(3)
_C6 = const(4)
_PNORM = const(5)  # 2 / (fft * sum w^2): |X|^2 -> code^2
_DF = const(6)  # rate / fft: bin -> Hz
_MAGC = const(7)  # 4 / seg: |X| -> tone amplitude
_HALF_NF_N = const(24)  # seg / (2 window): a constant rem/window -> its DFT bin 0
_T1 = const(8)
_T2 = const(9)
_T3 = const(10)
_T4 = const(11)
_A1 = const(12)
_A2 = const(13)
_A3 = const(14)
_A4 = const(15)
_W = const(16)
_X = const(17)
_Y = const(18)
_Z = const(19)
_VAR = const(20)
_SD = const(21)
_RMS = const(22)
_MEAN = const(23)
_NSLOTS = const(25)


@micropython.viper
def _fin_time(fo, acc: ptr32, ix: ptr16, out, s: int, peak: int, e: int):
    # outputs ix = [mean (done by the caller), rms, std, crest, skewness, kurtosis]
    f = ptr32(fo)
    _pf_from(fo, _T1, acc[0] - 0x20000000, 0, 0)
    _pf_from(fo, _T2, acc[1] - 0x20000000, acc[2], 12)
    _pf_from(fo, _T3, acc[3] - 0x20000000, acc[4], 12)
    _pf_scale(fo, _T3, 14)
    _pf_from(fo, _X, acc[5] - 0x20000000, acc[6], 12)
    _pf_add(fo, _T3, _X, _T3, 0)
    _pf_from(fo, _T4, acc[7] - 0x20000000, acc[8], 12)
    _pf_scale(fo, _T4, 28)
    _pf_from(fo, _X, acc[9] - 0x20000000, acc[10], 12)
    _pf_scale(fo, _X, 15)
    _pf_add(fo, _T4, _X, _T4, 0)
    _pf_from(fo, _X, acc[11] - 0x20000000, acc[12], 12)
    _pf_add(fo, _T4, _X, _T4, 0)
    _pf_mul(fo, _T1, _ONE_N, _A1)  # raw moments of u
    _pf_mul(fo, _T2, _ONE_N, _A2)
    _pf_mul(fo, _T3, _ONE_N, _A3)
    _pf_mul(fo, _T4, _ONE_N, _A4)
    _pf_mul(fo, _A1, _A1, _W)  # central: c2 = A2 - A1^2
    _pf_add(fo, _A2, _W, _VAR, 1)
    if f[2 * _VAR + 1] & 1:  # below zero by rounding: a constant window
        _pf_norm(fo, _VAR, 0, 0, 0)
    _pf_mul(fo, _C3, _A2, _X)  # c3 = A3 - A1 (3 A2 - 2 A1^2)
    _pf_mul(fo, _C2, _W, _Y)
    _pf_add(fo, _X, _Y, _X, 1)
    _pf_mul(fo, _A1, _X, _X)
    _pf_add(fo, _A3, _X, _T3, 1)
    _pf_mul(fo, _C6, _A2, _X)  # c4 = A4 - A1 (4 A3 - A1 (6 A2 - 3 A1^2))
    _pf_mul(fo, _C3, _W, _Y)
    _pf_add(fo, _X, _Y, _X, 1)
    _pf_mul(fo, _A1, _X, _X)
    _pf_mul(fo, _C4, _A3, _Y)
    _pf_add(fo, _Y, _X, _X, 1)
    _pf_mul(fo, _A1, _X, _X)
    _pf_add(fo, _A4, _X, _T4, 1)
    _pf_sqrt(fo, _VAR, _SD)  # std in u units; u = (x - mean) * 2^e
    i = ix[2]
    if i != 0xFFFF:
        _pf_scale(fo, _SD, 0 - e)
        _pf_out(fo, _SD, 15, out, i)
        _pf_scale(fo, _SD, e)
    i = ix[4]
    if i != 0xFFFF:  # skewness c3 / c2^1.5 (0 for a constant window)
        _pf_mul(fo, _VAR, _SD, _X)
        _pf_div(fo, _T3, _X, _X)
        _pf_out(fo, _X, 16, out, i)
    i = ix[5]
    if i != 0xFFFF:  # kurtosis c4 / c2^2
        _pf_mul(fo, _VAR, _VAR, _X)
        _pf_div(fo, _T4, _X, _X)
        _pf_out(fo, _X, 16, out, i)
    _pf_from(fo, _MEAN, s, 0, 0)
    _pf_mul(fo, _MEAN, _ONE_N, _MEAN)
    i = ix[1]
    j = ix[3]
    if i != 0xFFFF or j != 0xFFFF:  # rms = sqrt(mean^2 + var), crest = peak / rms
        _pf_mul(fo, _MEAN, _MEAN, _X)
        _pf_scale(fo, _VAR, 0 - 2 * e)
        _pf_add(fo, _X, _VAR, _X, 0)
        _pf_scale(fo, _VAR, 2 * e)
        _pf_sqrt(fo, _X, _RMS)
        if i != 0xFFFF:
            _pf_out(fo, _RMS, 15, out, i)
        if j != 0xFFFF:
            _pf_from(fo, _X, peak, 0, 0)
            _pf_div(fo, _X, _RMS, _X)
            _pf_out(fo, _X, 16, out, j)


@micropython.viper
def _fin_spec(fo, acc: ptr32, kb: int, ix: ptr16, out):
    # ix = [dominant, centroid]; acc = fft.Fft.acc (sums of p and k*p, all >= 0)
    i = ix[0]
    if i != 0xFFFF:  # dominant = argmax bin * rate / fft
        _pf_from(fo, _X, kb, 0, 0)
        _pf_mul(fo, _X, _DF, _X)
        _pf_out(fo, _X, 8, out, i)
    i = ix[1]
    if i != 0xFFFF:  # centroid = rate/fft * sum k p / sum p
        _pf_from(fo, _X, acc[2], acc[3], 12)
        _pf_scale(fo, _X, 16)
        _pf_from(fo, _Y, acc[4], acc[5], 12)
        _pf_add(fo, _X, _Y, _X, 0)
        _pf_from(fo, _Y, acc[0], acc[1], 12)
        _pf_div(fo, _X, _Y, _X)
        _pf_mul(fo, _X, _DF, _X)
        _pf_out(fo, _X, 8, out, i)


@micropython.viper
def _fin_bands(fo, p: ptr32, rng: ptr16, nb: int, out, first: int, frac: int, sh: int):
    # band j = sum p[rng[2j]:rng[2j+1]] * 2/(fft sum w^2) * 2^sh, in code^2 * 2^frac
    j = 0
    while j < nb:
        h = 0
        lo = 0
        k = rng[2 * j]
        e = rng[2 * j + 1]
        while k < e:
            v = p[k]
            h += v >> 12
            lo += v & 4095
            k += 1
        _pf_from(fo, _X, h + (lo >> 12), lo & 4095, 12)
        _pf_mul(fo, _X, _PNORM, _X)
        _pf_scale(fo, _X, sh)
        _pf_out(fo, _X, frac, out, first + j)
        j += 1


@micropython.viper
def _fin_env(fo, res: ptr32, nd: int, out, first: int, frac: int, sh: int):
    # env_d = res[d] * 2/(fft sum w^2) * 2^sh, in code^2 * 2^frac (envelope.ses_power)
    d = 0
    while d < nd:
        _pf_from(fo, _Z, res[d], 0, 0)
        _pf_mul(fo, _Z, _PNORM, _Z)
        _pf_scale(fo, _Z, sh)
        _pf_out(fo, _Z, frac, out, first + d)
        d += 1


_TIME = ("mean", "rms", "std", "crest", "skewness", "kurtosis")
_MOMENTS = ("rms", "std", "crest", "skewness", "kurtosis")


def _slot(idx, name):
    return idx[name][0] if name in idx else _NO


class Extractor:
    """Computes the outputs of one feature spec, window after window, allocation-free."""

    def __init__(self, spec):
        p = Plan(spec)
        self.plan = p
        self.names = p.names
        self.formats = p.formats
        self.rate = p.rate
        self.window = p.window
        self.hop = p.hop
        self.fft_size = p.fft
        self._n = p.window
        self._nout = len(p.names)
        self._st = zeros("i", 3)
        self._acc = zeros("i", 14)
        self._tmp = zeros("i", 2)
        idx = {}
        for name, first, par in p.items:
            idx[name] = (first, par)
        self._ixt = array("H", [_slot(idx, f) for f in _TIME])
        self._ixs = array("H", [_slot(idx, "dominant"), _slot(idx, "centroid")])
        self._ipeak = _slot(idx, "peak")
        self._ip2p = _slot(idx, "p2p")
        self._izcr = _slot(idx, "zcr")
        self._iclip = _slot(idx, "clipped")
        self._lim = idx["clipped"][1] if "clipped" in idx else 0
        self._moments = self._izcr != _NO
        for name in _MOMENTS:
            if name in idx:
                self._moments = True
        self._imean = _slot(idx, "mean")
        self._bands = idx.get("bands")
        self._env = idx.get("envelope")
        self._spec = idx.get("spectrum")
        self._fft = None
        self._f = zeros("i", 2 * _NSLOTS)
        if "dominant" in idx or "centroid" in idx or self._bands or self._env or self._spec:
            from dsp import fft

            self._fftm = fft
            self._fft = fft.Fft(p.fft, p.seg)
            if self._bands:
                ranges = self._bands[1][0]
                self._nbands = len(ranges)
                self._brng = zeros("H", 2 * len(ranges))
                for j, (k0, k1) in enumerate(ranges):
                    self._brng[2 * j] = k0
                    self._brng[2 * j + 1] = k1
        if self._env:
            from dsp import envelope

            self._envm = envelope
            self._z = zeros("i", self._env[1][1])
            self._envres = zeros("i", len(self._env[1][2]))
            self.set_shaft_hz(self._env[1][6])
        n = p.window
        self._pfc(_ONE_N, 1 / n)
        self._pfc(_C2, 2)
        self._pfc(_C3, 3)
        self._pfc(_C4, 4)
        self._pfc(_C6, 6)
        # periodic Hann over seg samples: sum w^2 = 3 seg / 8
        self._pfc(_PNORM, 2 / (p.fft * 3 * p.seg / 8))
        self._pfc(_DF, p.rate / p.fft)
        self._pfc(_MAGC, 4 / p.seg)
        self._pfc(_HALF_NF_N, p.seg / (2 * n))

    def _pfc(self, j, v):
        m, e = math.frexp(v)
        _pf_norm(self._f, j, int(m * (1 << 30)), e - 30, 0)

    def set_shaft_hz(self, hz):
        """Use a measured shaft speed (Hz) for the defect frequencies from now on. Not for
        every window: it allocates new bin tables (a few hundred bytes)."""
        if not self._env:
            raise FeatureError("shaft_hz: the spec has no envelope feature")
        per = defect_bins(self.plan, self._env[1], hz)
        starts = sorted({max(c - 1, 0) for cs in per for c in cs})
        codes = []
        for cs in per:
            lags = sorted({m for c in cs for m in (c - 1, c, c + 1) if m >= 1})
            codes.append(len(lags))
            for m in lags:
                t = 0
                while not starts[t] <= m <= starts[t] + 2:
                    t += 1
                codes.append(3 * t + m - starts[t])
        self._lagtab = array("H", starts)
        self._lagcodes = array("H", codes)
        self._lagacc = zeros("i", 12 * len(starts))
        self.shaft_hz = hz

    def compute(self, win, out):
        """Fill out[0:len(names)] with the features of win (array('h'), one window)."""
        n = self._n
        if len(win) != n:
            raise FeatureError("window: got %d samples, expected %d" % (len(win), n))
        if len(out) < self._nout:
            raise FeatureError("out: room for %d values, need %d" % (len(out), self._nout))
        st = self._st
        _stats(win, 0, n, st)
        s = st[0]
        mn = st[1]
        mx = st[2]
        peak = mx if mx > -mn else -mn
        # u = (x*a - b) >> k: the window minus its mean, scaled to |u| <= 2^14 - 1
        q = s // n
        r = s - q * n
        e = 14 - _bitlen((mx - q if mx - q > q - mn else q - mn) + 1)
        if e > 13:
            e = 13
        while e >= 0:
            b = (q << e) + ((r << (e + 1)) + n) // (2 * n)
            if (mx << e) - b <= _U_LIM and b - (mn << e) <= _U_LIM:
                break
            e -= 1
        if e >= 0:
            a = 1 << e
            k = 0
        else:
            a = 1
            k = 1
            mu = q + (2 * r >= n)
            while True:
                b = mu - (1 << (k - 1))
                if (mx - b) >> k <= _U_LIM and (mn - b) >> k >= -_U_LIM:
                    break
                k += 1
            e = -k
        i = self._imean
        if i != _NO:  # round(s * 2^15 / n), exact
            out[i] = (q << 15) + ((r << 16) + n) // (2 * n)
        i = self._ipeak
        if i != _NO:
            out[i] = peak
        i = self._ip2p
        if i != _NO:
            out[i] = mx - mn
        i = self._iclip
        if i != _NO:
            out[i] = _clipped(win, 0, n, self._lim)
        if self._moments:
            acc = self._acc
            _moments(win, 0, n, a, b, k, s, acc)
            _fin_time(self._f, acc, self._ixt, out, s, peak, e)
            i = self._izcr
            if i != _NO:
                out[i] = acc[13]
        if self._fft is not None:
            # the FFT takes v = (x - mean) * 2^f, |v| <= 32767: one more bit than u, so
            # the mean's rounding leaves half the constant behind; rem/n is that rest
            # (taken off the spectrum by Fft.dcfix)
            hs = 0
            if e >= 0:
                f = e + 1
                b = (q << f) + ((r << (f + 1)) + n) // (2 * n)
                rem = (r << f) - (b - (q << f)) * n
            else:  # v = x - round(mean): with the Hann in Q15 if |v| > 32767
                f = 0
                b = mu
                rem = r - (b - q) * n
                if (mx - mu if mx - mu > mu - mn else mu - mn) > 32767:
                    hs = 1
            self._spectral(win, 1 << f, b, hs, f, rem, out)

    def _spectral(self, win, a, b, hs, e, rem, out):
        # v = x*a - b = (x - mean) * 2^e - rem/n
        ft = self._fft
        f = self._f
        exp = ft.run(win, self._n - ft.seg, a, b, hs)
        if rem:  # take the leftover constant's Hann spectrum off
            t = self._tmp
            _pf_from(f, _X, rem, 0, 0)
            _pf_mul(f, _X, _HALF_NF_N, _X)
            _pf_scale(f, _X, -exp)
            _pf_out(f, _X, 0, t, 0)
            ft.dcfix(t[0])
        kb = ft.spectrum()
        _fin_spec(f, ft.acc, kb, self._ixs, out)
        # |X(x - mean)|^2 = |X_stored|^2 * 2^(2(exp - e))
        bands = self._bands
        if bands:
            _fin_bands(f, ft.power, self._brng, self._nbands, out, bands[0], bands[1][1],
                       2 * (exp - e))
        if self._env:
            self._envelope(exp, e, out)
        if self._spec:
            self._mags(self._spec[1][0], self._spec[1][1], exp - e, out, self._spec[0])

    def _envelope(self, exp, e, out):
        ft = self._fft
        envm = self._envm
        first, env = self._env
        k1 = env[0]
        nk = env[1]
        nb = envm.bits(ft.buf, k1, k1 + nk)
        sz = 0
        while ((nb + 1) >> sz) >= 2047:
            sz += 1
        envm.compact(ft.buf, k1, nk, self._z, sz)
        tab = self._lagtab
        nt = len(tab)
        envm.lags3(self._z, 0, nk, tab, nt, self._lagacc)
        nd = len(env[2])
        res = self._envres
        sh = envm.ses_power(self._lagacc, 3 * nt, self._lagcodes, nd, res)
        _fin_env(self._f, res, nd, out, first, env[5], 2 * (exp - e + sz) + sh)

    def _mags(self, k0, k1, sh, out, first):
        # tone amplitude |X| * 4/seg (bins 0 and m: |X| * 2/seg, p holds them halved)
        ft = self._fft
        f = self._f
        t = self._tmp
        m = ft.m
        _pf_scale(f, _MAGC, sh + 8)
        _pf_gs(f, _MAGC, t)
        _pf_scale(f, _MAGC, -sh - 8)
        g = t[0]
        s = t[1]
        lo = k0
        hi = k1
        if lo == 0:
            lo = 1
        if hi == m + 1:
            hi = m
        if s < 0:
            g <<= -s
            s = 0
        elif s > 30:  # amplitudes below 2^-8: all round to 0
            g = 0
            s = 0
        mags = self._fftm._mags
        if lo < hi:
            mags(ft.power, lo, hi, g, s, out, first + lo - k0)
        # bins 0 and m: p holds |X|^2 / 2, amplitude |X| * 2/seg = sqrt(p) * (4/seg) / sqrt(2)
        g = (g * 46341) >> 16
        if k0 == 0:
            mags(ft.power, 0, 1, g, s, out, first)
        if k1 == m + 1:
            mags(ft.power, m, m + 1, g, s, out, first + m - k0)
