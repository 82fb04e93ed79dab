# Viper kernels of the int8 TFLite interpreter (interpreter.py; see TFLITE.md).
#
# Every kernel reproduces a TFLite Micro reference kernel bit for bit. int8 values are
# read as bytes: x ^ 128 is x + 128 (0..255), (x ^ 128) - 128 sign-extends. Geometry
# and parameters arrive in array('i') tables whose entries are all non-negative (signed
# values are stored + 256, or as two 16-bit halves): ptr32 loads are zero-extended on
# 64-bit ports and sign-extended on 32-bit ones, so no kernel ever loads a negative int.
#
# Requantization (TFLM MultiplyByQuantizedMultiplier, gemmlowp double rounding) needs
# the high half of a 32x32-bit product. It is written out inline in each kernel (a
# viper call would box ints >= 2^30 on a 32-bit port) with 15-bit limbs: the magnitude
# |acc| = u2 2^30 + u1 2^15 + u0 (u2 <= 1, u0 <= 2^15), m = b2 2^30 + b1 2^15 + b0,
# every column sum stays below 2^31 (reasoned here; unlike the feature kernels and
# infer.py's quantization, tests/features/test_int32_bound.py, no test runs these
# kernels instrumented).
import micropython

# pc (per output channel, 4 ints): constant-term low 16 bits, high 16 bits (unsigned
# form), multiplier (0..2^31-1), shift + 32


@micropython.viper
def fc(x: ptr8, xo: int, k: int, w: ptr8, wo: int, j0: int, j1: int, pc: ptr32,
       y: ptr8, yo: int, g: ptr32):
    # FULLY_CONNECTED rows j0..j1 (weights row j at wo + (j - j0) k). TFLM:
    # acc = bias + sum (x + in_off) w. Here sum (x+128)(w+128) - 128 sum(x+128) plus the
    # per-row constant (bias + (in_off - 128) sum w), exact in int32.
    zp = g[0] - 256
    lo = g[1] - 256
    hi = g[2] - 256
    sx = 0
    i = 0
    while i < k:
        sx += x[xo + i] ^ 128
        i += 1
    cx = 0 - 128 * sx
    j = j0
    wr = wo
    while j < j1:
        acc = 0
        i = 0
        xp = xo
        wp = wr
        n4 = k - 3
        while i < n4:
            acc += ((x[xp] ^ 128) * (w[wp] ^ 128) + (x[xp + 1] ^ 128) * (w[wp + 1] ^ 128)
                    + (x[xp + 2] ^ 128) * (w[wp + 2] ^ 128)
                    + (x[xp + 3] ^ 128) * (w[wp + 3] ^ 128))
            xp += 4
            wp += 4
            i += 4
        while i < k:
            acc += (x[xp] ^ 128) * (w[wp] ^ 128)
            xp += 1
            wp += 1
            i += 1
        q = 4 * j
        h = pc[q + 1]
        if h > 32767:
            h -= 65536
        acc += cx + (h << 16) + pc[q]
        m = pc[q + 2]
        s = pc[q + 3] - 32
        # --- MultiplyByQuantizedMultiplier(acc, m, s)
        if s > 0:
            acc = acc << s
        c = 0x3FFFFFFF
        if acc < 0:
            v = ~acc
            u0 = (v & 0x7FFF) + 1
        else:
            v = acc
            u0 = v & 0x7FFF
            c += 1
        u1 = (v >> 15) & 0x7FFF
        u2 = v >> 30
        b0 = m & 0x7FFF
        b1 = (m >> 15) & 0x7FFF
        b2 = m >> 30
        t = u0 * b0 + c
        t = (t >> 15) + u1 * b0 + u0 * b1
        t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
        r = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
        if acc < 0:
            r = 0 - r
        if s < 0:
            e = 0 - s
            half = 1 << (e - 1)
            rem = r & (half - 1 + half)
            th = half - 1
            if r < 0:
                th += 1
            r = r >> e
            if rem > th:
                r += 1
        # ---
        r += zp
        if r < lo:
            r = lo
        if r > hi:
            r = hi
        y[yo + j] = r & 0xFF
        wr += k
        j += 1


@micropython.viper
def conv(x: ptr8, xo: int, w: ptr8, wo: int, oc0: int, oc1: int, pc: ptr32,
         y: ptr8, yo: int, g: ptr32):
    # CONV_2D (one batch) for output channels oc0..oc1; filter row oc at
    # wo + (oc - oc0) KH KW C. TFLM ConvPerChannel: taps outside the image are skipped.
    H = g[0]
    W = g[1]
    C = g[2]
    KH = g[3]
    KW = g[4]
    OH = g[5]
    OW = g[6]
    sh = g[7]
    sw = g[8]
    dh = g[9]
    dw = g[10]
    ph = g[11]
    pw = g[12]
    off = g[13] - 256 - 128  # (x ^ 128) + off = x + in_off
    zp = g[14] - 256
    lo = g[15] - 256
    hi = g[16] - 256
    OC = g[17]
    ksz = KH * KW * C
    oc = oc0
    while oc < oc1:
        q = 4 * oc
        h = pc[q + 1]
        if h > 32767:
            h -= 65536
        bias = (h << 16) + pc[q]
        m = pc[q + 2]
        s = pc[q + 3] - 32
        wb = wo + (oc - oc0) * ksz
        oy = 0
        while oy < OH:
            iy0 = oy * sh - ph
            ox = 0
            while ox < OW:
                ix0 = ox * sw - pw
                acc = bias
                fy = 0
                while fy < KH:
                    iy = iy0 + fy * dh
                    if iy >= 0 and iy < H:
                        fx = 0
                        while fx < KW:
                            ix = ix0 + fx * dw
                            if ix >= 0 and ix < W:
                                xp = xo + (iy * W + ix) * C
                                wp = wb + (fy * KW + fx) * C
                                xe = xp + C
                                while xp < xe:
                                    acc += ((x[xp] ^ 128) + off) * ((w[wp] ^ 128) - 128)
                                    xp += 1
                                    wp += 1
                            fx += 1
                    fy += 1
                # --- MultiplyByQuantizedMultiplier(acc, m, s)
                if s > 0:
                    acc = acc << s
                c = 0x3FFFFFFF
                if acc < 0:
                    v = ~acc
                    u0 = (v & 0x7FFF) + 1
                else:
                    v = acc
                    u0 = v & 0x7FFF
                    c += 1
                u1 = (v >> 15) & 0x7FFF
                u2 = v >> 30
                b0 = m & 0x7FFF
                b1 = (m >> 15) & 0x7FFF
                b2 = m >> 30
                t = u0 * b0 + c
                t = (t >> 15) + u1 * b0 + u0 * b1
                t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
                r = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
                if acc < 0:
                    r = 0 - r
                if s < 0:
                    e = 0 - s
                    half = 1 << (e - 1)
                    rem = r & (half - 1 + half)
                    th = half - 1
                    if r < 0:
                        th += 1
                    r = r >> e
                    if rem > th:
                        r += 1
                # ---
                r += zp
                if r < lo:
                    r = lo
                if r > hi:
                    r = hi
                y[yo + (oy * OW + ox) * OC + oc] = r & 0xFF
                ox += 1
            oy += 1
        oc += 1


@micropython.viper
def dwconv(x: ptr8, xo: int, w: ptr8, wo: int, pc: ptr32, y: ptr8, yo: int, g: ptr32):
    # DEPTHWISE_CONV_2D (one batch): filter [1, KH, KW, OC], OC = C * M, output channel
    # oc reads input channel oc // M. TFLM DepthwiseConvPerChannel.
    H = g[0]
    W = g[1]
    C = g[2]
    KH = g[3]
    KW = g[4]
    OH = g[5]
    OW = g[6]
    sh = g[7]
    sw = g[8]
    dh = g[9]
    dw = g[10]
    ph = g[11]
    pw = g[12]
    off = g[13] - 256 - 128
    zp = g[14] - 256
    lo = g[15] - 256
    hi = g[16] - 256
    OC = g[17]
    M = g[18]
    oy = 0
    while oy < OH:
        iy0 = oy * sh - ph
        ox = 0
        while ox < OW:
            ix0 = ox * sw - pw
            oc = 0
            while oc < OC:
                ic = oc // M
                q = 4 * oc
                h = pc[q + 1]
                if h > 32767:
                    h -= 65536
                acc = (h << 16) + pc[q]
                m = pc[q + 2]
                s = pc[q + 3] - 32
                fy = 0
                while fy < KH:
                    iy = iy0 + fy * dh
                    if iy >= 0 and iy < H:
                        fx = 0
                        while fx < KW:
                            ix = ix0 + fx * dw
                            if ix >= 0 and ix < W:
                                acc += (((x[xo + (iy * W + ix) * C + ic] ^ 128) + off)
                                        * ((w[wo + (fy * KW + fx) * OC + oc] ^ 128) - 128))
                            fx += 1
                    fy += 1
                # --- MultiplyByQuantizedMultiplier(acc, m, s)
                if s > 0:
                    acc = acc << s
                c = 0x3FFFFFFF
                if acc < 0:
                    v = ~acc
                    u0 = (v & 0x7FFF) + 1
                else:
                    v = acc
                    u0 = v & 0x7FFF
                    c += 1
                u1 = (v >> 15) & 0x7FFF
                u2 = v >> 30
                b0 = m & 0x7FFF
                b1 = (m >> 15) & 0x7FFF
                b2 = m >> 30
                t = u0 * b0 + c
                t = (t >> 15) + u1 * b0 + u0 * b1
                t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
                r = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
                if acc < 0:
                    r = 0 - r
                if s < 0:
                    e = 0 - s
                    half = 1 << (e - 1)
                    rem = r & (half - 1 + half)
                    th = half - 1
                    if r < 0:
                        th += 1
                    r = r >> e
                    if rem > th:
                        r += 1
                # ---
                r += zp
                if r < lo:
                    r = lo
                if r > hi:
                    r = hi
                y[yo + (oy * OW + ox) * OC + oc] = r & 0xFF
                oc += 1
            ox += 1
        oy += 1


@micropython.viper
def pool(x: ptr8, xo: int, y: ptr8, yo: int, g: ptr32):
    # AVERAGE_POOL_2D / MAX_POOL_2D (one batch), windows clipped to the image; the
    # average divides by the clipped count with rounding half away from zero.
    H = g[0]
    W = g[1]
    C = g[2]
    KH = g[3]
    KW = g[4]
    OH = g[5]
    OW = g[6]
    sh = g[7]
    sw = g[8]
    ph = g[9]
    pw = g[10]
    lo = g[11] - 256
    hi = g[12] - 256
    avg = g[13]
    oy = 0
    while oy < OH:
        iy0 = oy * sh - ph
        fy0 = 0
        if iy0 < 0:
            fy0 = 0 - iy0
        fy1 = H - iy0
        if fy1 > KH:
            fy1 = KH
        ox = 0
        while ox < OW:
            ix0 = ox * sw - pw
            fx0 = 0
            if ix0 < 0:
                fx0 = 0 - ix0
            fx1 = W - ix0
            if fx1 > KW:
                fx1 = KW
            c = 0
            while c < C:
                acc = 0
                if avg == 0:
                    acc = -128
                n = 0
                fy = fy0
                while fy < fy1:
                    p = xo + ((iy0 + fy) * W + ix0 + fx0) * C + c
                    fx = fx0
                    while fx < fx1:
                        v = (x[p] ^ 128) - 128
                        if avg:
                            acc += v
                        elif v > acc:
                            acc = v
                        n += 1
                        p += C
                        fx += 1
                    fy += 1
                if avg and n > 0:
                    if acc > 0:
                        acc = (acc + n // 2) // n
                    else:
                        acc = 0 - ((0 - acc + n // 2) // n)
                if acc < lo:
                    acc = lo
                if acc > hi:
                    acc = hi
                y[yo + (oy * OW + ox) * C + c] = acc & 0xFF
                c += 1
            ox += 1
        oy += 1


@micropython.viper
def binop(a: ptr8, ao: int, b: ptr8, bo: int, y: ptr8, yo: int, g: ptr32, t: ptr32):
    # ADD / MUL with 4-D broadcasting. g: [mul?, d0..d3, a strides 4, b strides 4,
    # zp+256, lo+256, hi+256, a_off+256, b_off+256, multiplier, shift+32].
    # ADD: t holds TFLM's scaled inputs per byte value (+2^29), 256 for a then 256 for b.
    mul = g[0]
    d0 = g[1]
    d1 = g[2]
    d2 = g[3]
    d3 = g[4]
    zp = g[13] - 256
    lo = g[14] - 256
    hi = g[15] - 256
    oa = g[16] - 256 - 128
    ob = g[17] - 256 - 128
    m = g[18]
    s = g[19] - 32
    bias = 0x20000000
    o = yo
    i0 = 0
    while i0 < d0:
        i1 = 0
        while i1 < d1:
            i2 = 0
            while i2 < d2:
                pa = ao + i0 * g[5] + i1 * g[6] + i2 * g[7]
                pb = bo + i0 * g[9] + i1 * g[10] + i2 * g[11]
                sa = g[8]
                sb = g[12]
                i3 = 0
                while i3 < d3:
                    if mul:
                        acc = ((a[pa] ^ 128) + oa) * ((b[pb] ^ 128) + ob)
                    else:
                        acc = t[a[pa]] + t[256 + b[pb]] - bias - bias
                    # --- MultiplyByQuantizedMultiplier(acc, m, s)
                    if s > 0:
                        acc = acc << s
                    c = 0x3FFFFFFF
                    if acc < 0:
                        v = ~acc
                        u0 = (v & 0x7FFF) + 1
                    else:
                        v = acc
                        u0 = v & 0x7FFF
                        c += 1
                    u1 = (v >> 15) & 0x7FFF
                    u2 = v >> 30
                    b0 = m & 0x7FFF
                    b1 = (m >> 15) & 0x7FFF
                    b2 = m >> 30
                    tt = u0 * b0 + c
                    tt = (tt >> 15) + u1 * b0 + u0 * b1
                    tt = (tt >> 15) + u2 * b0 + u1 * b1 + u0 * b2
                    r = (tt >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
                    if acc < 0:
                        r = 0 - r
                    if s < 0:
                        e = 0 - s
                        half = 1 << (e - 1)
                        rem = r & (half - 1 + half)
                        th = half - 1
                        if r < 0:
                            th += 1
                        r = r >> e
                        if rem > th:
                            r += 1
                    # ---
                    r += zp
                    if r < lo:
                        r = lo
                    if r > hi:
                        r = hi
                    y[o] = r & 0xFF
                    o += 1
                    pa += sa
                    pb += sb
                    i3 += 1
                i2 += 1
            i1 += 1
        i0 += 1


@micropython.viper
def lut(x: ptr8, xo: int, y: ptr8, yo: int, n: int, t: ptr8):
    # element-wise int8 -> int8 through a 256-byte table indexed by the input byte
    i = 0
    while i < n:
        y[yo + i] = t[x[xo + i]]
        i += 1


@micropython.viper
def copy(s: ptr8, so: int, d: ptr8, do: int, n: int):
    i = 0
    while i < n:
        d[do + i] = s[so + i]
        i += 1


@micropython.viper
def smax_sum(x: ptr8, xo: int, n: int, tab: ptr32, r: ptr32):
    # SOFTMAX row, first pass: r[0] = max (x + 128), r[1] = sum of exps in Q12.19
    mx = 0
    i = 0
    while i < n:
        v = x[xo + i] ^ 128
        if v > mx:
            mx = v
        i += 1
    s = 0
    i = 0
    while i < n:
        e = tab[mx - (x[xo + i] ^ 128)]
        s += e >> 12  # Rescale<12>: RoundingDivideByPOT(e, 12), e >= 0
        if (e & 4095) > 2047:
            s += 1
        i += 1
    r[0] = mx
    r[1] = s


@micropython.viper
def smax_recip(r: ptr32):
    # TFLM GetReciprocal(r[1], 12): r[2] = 1 / (1 + x) in Q0.31 (gemmlowp Newton-Raphson,
    # one_over_one_plus_x_for_x_in_0_1), r[3] = bits over unit + 31 - 8. Every product is
    # a signed SaturatingRoundingDoublingHighMul done in 15-bit limbs, as in fc().
    x = r[1]
    hp1 = 0
    while hp1 < 31 and (x >> (31 - hp1)) == 0:
        hp1 += 1
    a = (x - (1 << (31 - hp1))) << hp1  # shifted_sum_minus_one, 0 <= a < 2^31
    one30 = 1
    one30 = one30 << 30  # built at run time: literals >= 2^30 are objects on 32-bit
    mx = one30 - 1 + one30  # 2^31 - 1
    hd = one30 + (a >> 1)  # RoundingHalfSum(a, One)
    c48 = 757935405
    c48 = c48 + c48  # 48/17 in Q2.29
    xx = 0
    om = 0
    step = 0
    while step < 7:
        if step == 0:
            p = hd
            q = -1010580540  # -32/17 in Q2.29
        elif step & 1:
            p = hd
            q = xx
        else:
            p = xx
            q = om
        # --- SaturatingRoundingDoublingHighMul(p, q), signed
        neg = 0
        if p < 0:
            v = ~p
            u0 = (v & 0x7FFF) + 1
            neg = 1
        else:
            v = p
            u0 = v & 0x7FFF
        u1 = (v >> 15) & 0x7FFF
        u2 = v >> 30
        if u0 > 0x7FFF:
            u0 = 0
            u1 += 1
            if u1 > 0x7FFF:
                u1 = 0
                u2 += 1
        if q < 0:
            v = ~q
            b0 = (v & 0x7FFF) + 1
            neg ^= 1
        else:
            v = q
            b0 = v & 0x7FFF
        b1 = (v >> 15) & 0x7FFF
        b2 = v >> 30
        if b0 > 0x7FFF:
            b0 = 0
            b1 += 1
            if b1 > 0x7FFF:
                b1 = 0
                b2 += 1
        c = 0x3FFFFFFF
        if neg == 0:
            c += 1
        t = u0 * b0 + c
        t = (t >> 15) + u1 * b0 + u0 * b1
        t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
        h = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
        if neg:
            h = 0 - h
        # ---
        if step == 0:
            xx = c48 + h
        elif step & 1:
            om = (1 << 29) - h
        else:  # x += SaturatingRoundingMultiplyByPOT<2>(h)
            if h > (1 << 29) - 1:
                h = mx
            elif h < 1 - (1 << 29):
                h = -mx - 1
            else:
                h = h << 2
            xx = xx + h
        step += 1
    if xx > (1 << 30) - 1:  # SaturatingRoundingMultiplyByPOT<1>
        xx = mx
    else:
        xx = xx << 1
    r[2] = xx
    r[3] = 12 - hp1 + 23


@micropython.viper
def smax_out(x: ptr8, xo: int, n: int, tab: ptr32, r: ptr32, y: ptr8, yo: int):
    # SOFTMAX row, second pass: RoundingDivideByPOT(SRDHM(scale, exp), r[3]) - 128
    mx = r[0]
    m = r[2]
    e = r[3]
    b0 = m & 0x7FFF
    b1 = (m >> 15) & 0x7FFF
    b2 = m >> 30
    half = 1 << (e - 1)
    mask = half - 1 + half
    i = 0
    while i < n:
        v = tab[mx - (x[xo + i] ^ 128)]  # 0 <= v < 2^31
        u0 = v & 0x7FFF
        u1 = (v >> 15) & 0x7FFF
        u2 = v >> 30
        c = 0x3FFFFFFF
        c += 1
        t = u0 * b0 + c
        t = (t >> 15) + u1 * b0 + u0 * b1
        t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
        p = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
        q = p >> e
        if (p & mask) > half - 1:
            q += 1
        q -= 128
        if q > 127:
            q = 127
        y[yo + i] = q & 0xFF
        i += 1


@micropython.viper
def mean(x: ptr8, xo: int, g: ptr32, acc: ptr32, ao: int, y: ptr8, yo: int, thr: ptr32):
    # MEAN over any axes of a 4-D input: biased sums (x + 128) per output into the
    # arena scratch acc, then the output byte from 255 ascending thresholds (the exact
    # TFLM function of the sum, tabulated at load: see interpreter.py).
    d0 = g[0]
    d1 = g[1]
    d2 = g[2]
    d3 = g[3]
    s0 = g[4]
    s1 = g[5]
    s2 = g[6]
    s3 = g[7]
    nout = g[8]
    i = 0
    while i < nout:
        acc[ao + i] = 0
        i += 1
    p = xo
    i0 = 0
    while i0 < d0:
        i1 = 0
        while i1 < d1:
            i2 = 0
            while i2 < d2:
                o = ao + i0 * s0 + i1 * s1 + i2 * s2
                i3 = 0
                while i3 < d3:
                    acc[o] += x[p] ^ 128
                    o += s3
                    p += 1
                    i3 += 1
                i2 += 1
            i1 += 1
        i0 += 1
    i = 0
    while i < nout:
        a = acc[ao + i]
        lo = 0
        hi = 255
        while lo < hi:
            mid = (lo + hi) >> 1
            if thr[mid] <= a:
                lo = mid + 1
            else:
                hi = mid
        y[yo + i] = (lo - 128) & 0xFF
        i += 1
