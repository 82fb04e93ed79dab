# Envelope analysis for rolling-element bearings, in the frequency domain.
#
# The band-pass is the set of FFT bins k1 .. k1+nk-1 of the window's Hann spectrum X (the
# same FFT as every other spectral feature). Keeping only those positive-frequency bins
# is the analytic signal z of the band-passed window, and the spectrum of its squared
# envelope |z|^2 at envelope bin m (frequency m*rate/fft) is the lag product
#     SES_m = c * sum_k X_(k+m) * conj(X_k)        (k, k+m inside the band)
# exactly (no circular aliasing: both indices stay in the band). With c = 2/(fft*sum w^2)
# SES_0 is the band's power in code^2, and |SES_m| <= SES_0 (Cauchy-Schwarz). Because
# the window is Hann, |z|^2 carries the window squared: the envelope spectrum is that of
# a Hann^2-weighted squared envelope, whose peaks spread over about +-1.5 bins.
#
# Fixed point: the band bins are copied, rounded to 11-bit components, into a compact
# array (one int32 per bin: both components biased by +4096); a lag's terms are below
# 2^23 in magnitude, summed in blocks of 128 (< 2^30) and split into 12-bit limbs, so no
# intermediate exceeds 2^31. A lag's limb his stay below 9 * 2^18 in magnitude (bins
# <= 1025) and are stored + 2^22: every int32 that viper code reads is non-negative
# (viper loads of int32 are zero-extended on 64-bit ports, sign-extended on 32-bit).
# Lags come in triples (c-1, c, c+1) around each defect harmonic: one pass over the band
# serves three lags.
import micropython



@micropython.viper
def bits(x: ptr16, k0: int, k1: int) -> int:
    # OR of |component| over bins k0..k1-1 of an int16 (re, im) array
    nb = 0
    i = 2 * k0
    e = 2 * k1
    while i < e:
        v = (x[i] ^ 0x8000) - 0x8000
        nb |= v ^ (v >> 31)
        i += 1
    return nb


@micropython.viper
def compact(x: ptr16, k0: int, nk: int, z: ptr32, s: int):
    # z[i] = (re + 4096) | (im + 4096) << 16 with re, im = round(X_(k0+i) / 2^s)
    # (the caller picks s so that |re|, |im| < 2^11: z stays below 2^29, non-negative)
    rnd = (1 << s) >> 1
    i = 0
    j = 2 * k0
    while i < nk:
        re = ((((x[j] ^ 0x8000) - 0x8000) + rnd) >> s) + 4096
        im = ((((x[j + 1] ^ 0x8000) - 0x8000) + rnd) >> s) + 4096
        z[i] = re | (im << 16)
        i += 1
        j += 2


@micropython.viper
def lags3(z: ptr32, k: int, nk: int, tab: ptr16, nt: int, acc: ptr32):
    # for each triple start m0 = tab[t], lags m = m0, m0+1, m0+2:
    # sum_k z_(k+m) conj(z_k) -> acc[12t + 4j ..] = re hi + 2^22, re lo (12 bits),
    # im hi + 2^22, im lo for lag m0 + j. z holds (re + 4096) | (im + 4096) << 16.
    # Terms of lag m0+j exist for k + m0 + j < nk; the shorter lags get their last
    # terms in a tail loop.
    t = 0
    while t < nt:
        m0 = tab[t]
        r0h = 0
        r0l = 0
        i0h = 0
        i0l = 0
        r1h = 0
        r1l = 0
        i1h = 0
        i1l = 0
        r2h = 0
        r2l = 0
        i2h = 0
        i2l = 0
        e = nk - m0 - 2  # all three lags have a term for k < e
        k = 0
        while k < e:
            be = k + 128
            if be > e:
                be = e
            sr0 = 0
            si0 = 0
            sr1 = 0
            si1 = 0
            sr2 = 0
            si2 = 0
            while k < be:
                w = z[k]
                ar = (w & 0xFFFF) - 4096
                ai = (w >> 16) - 4096
                w = z[k + m0]
                br = (w & 0xFFFF) - 4096
                bi = (w >> 16) - 4096
                sr0 += br * ar + bi * ai
                si0 += bi * ar - br * ai
                w = z[k + m0 + 1]
                br = (w & 0xFFFF) - 4096
                bi = (w >> 16) - 4096
                sr1 += br * ar + bi * ai
                si1 += bi * ar - br * ai
                w = z[k + m0 + 2]
                br = (w & 0xFFFF) - 4096
                bi = (w >> 16) - 4096
                sr2 += br * ar + bi * ai
                si2 += bi * ar - br * ai
                k += 1
            r0h += sr0 >> 12
            r0l += sr0 & 4095
            i0h += si0 >> 12
            i0l += si0 & 4095
            r1h += sr1 >> 12
            r1l += sr1 & 4095
            i1h += si1 >> 12
            i1l += si1 & 4095
            r2h += sr2 >> 12
            r2l += sr2 & 4095
            i2h += si2 >> 12
            i2l += si2 & 4095
        # tail: k = e (lags m0, m0+1) and k = e+1 (lag m0); two terms at most
        if e < 0:
            e = 0
        k = e
        while k < nk - m0:
            w = z[k]
            ar = (w & 0xFFFF) - 4096
            ai = (w >> 16) - 4096
            w = z[k + m0]
            br = (w & 0xFFFF) - 4096
            bi = (w >> 16) - 4096
            v = br * ar + bi * ai
            r0h += v >> 12
            r0l += v & 4095
            v = bi * ar - br * ai
            i0h += v >> 12
            i0l += v & 4095
            if k + m0 + 1 < nk:
                w = z[k + m0 + 1]
                br = (w & 0xFFFF) - 4096
                bi = (w >> 16) - 4096
                v = br * ar + bi * ai
                r1h += v >> 12
                r1l += v & 4095
                v = bi * ar - br * ai
                i1h += v >> 12
                i1l += v & 4095
            k += 1
        j = 12 * t
        acc[j] = r0h + (r0l >> 12) + 0x400000
        acc[j + 1] = r0l & 4095
        acc[j + 2] = i0h + (i0l >> 12) + 0x400000
        acc[j + 3] = i0l & 4095
        acc[j + 4] = r1h + (r1l >> 12) + 0x400000
        acc[j + 5] = r1l & 4095
        acc[j + 6] = i1h + (i1l >> 12) + 0x400000
        acc[j + 7] = i1l & 4095
        acc[j + 8] = r2h + (r2l >> 12) + 0x400000
        acc[j + 9] = r2l & 4095
        acc[j + 10] = i2h + (i2l >> 12) + 0x400000
        acc[j + 11] = i2l & 4095
        t += 1


@micropython.viper
def ses_power(acc: ptr32, nl: int, codes: ptr16, nd: int, res: ptr32) -> int:
    # per defect d (codes: count, then lag numbers l into acc): res[d] =
    # isqrt(sum over its lags of (re >> sh)^2 + (im >> sh)^2), with one shift sh for all
    # lags, the smallest that brings every |re|, |im| (hi 2^12 + lo) below 2^12: each
    # square < 2^24, a defect's sum (<= 24 lags) < 2^30. Returns sh.
    mx = 0
    l = 0
    while l < nl:
        h = acc[4 * l] - 0x400000
        mx |= h ^ (h >> 31)
        h = acc[4 * l + 2] - 0x400000
        mx |= h ^ (h >> 31)
        l += 1
    sh = 0
    while mx >> sh:
        sh += 1
    c = 0
    d = 0
    while d < nd:
        cnt = codes[c]
        c += 1
        t = 0
        while cnt > 0:
            l = 4 * codes[c]
            j = 0
            while j < 4:
                h = acc[l + j] - 0x400000
                if sh > 12:
                    v = h >> (sh - 12)
                else:
                    v = (h << (12 - sh)) + (acc[l + j + 1] >> sh)
                t += v * v
                j += 2
            c += 1
            cnt -= 1
        # integer square root of t < 2^30
        r = 0
        bit = 1 << 28
        while bit > t:
            bit >>= 2
        while bit:
            if t >= r + bit:
                t -= r + bit
                r = (r >> 1) + bit
            else:
                r >>= 1
            bit >>= 2
        res[d] = r
        d += 1
    return sh
