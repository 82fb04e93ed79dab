# Exact TFLite Micro quantization arithmetic, at model load time (see TFLITE.md).
#
# TFLM derives every requantization multiplier in double precision from float32 scales
# (QuantizeMultiplier: frexp, round half away from zero to Q31) and computes LOGISTIC,
# TANH and SOFTMAX with gemmlowp fixed point. A board's MicroPython floats are often
# 32-bit, so nothing here goes through a Python float: scales arrive as their raw IEEE
# float32 bits and every double operation TFLM performs is emulated exactly with
# integers (products of two float32 are exact in double; a quotient is rounded to 53
# bits, ties to even). Big ints are fine here: this runs once per model, never in
# invoke(). The module also runs under CPython, where the tests check it against numpy.
try:
    from micropython import const
except ImportError:  # CPython (host tests, model tools)
    def const(x):
        return x

_INT32_MAX = const(0x7FFFFFFF)
_INT32_MIN = const(-0x80000000)


class QuantError(ValueError):
    pass


def f32_parts(bits):
    """float32 bits -> (m, e) with value m * 2^e exactly (m >= 0); rejects inf/nan."""
    ex = (bits >> 23) & 0xFF
    man = bits & 0x7FFFFF
    if ex == 0xFF:
        raise QuantError("scale is inf or nan")
    if ex == 0:
        return man, -149
    m = man | 0x800000
    if bits >> 31:
        m = -m
    return m, ex - 150


def f32_value(bits):
    """Python float of float32 bits (only for messages and the float paths)."""
    m, e = f32_parts(bits)
    return m * 2.0**e


def _bitlen(x):
    n = 0
    while x >> n:
        n += 1
    return n


def round_to(num, den, e, bits):
    """Round num / den * 2^e (num >= 0, den > 0, ints) to `bits` significant bits, to
    nearest, ties to even: -> (q, E), value q * 2^E, q in [2^(bits-1), 2^bits) or 0.
    Float32-derived values stay far from the exponent limits: no subnormals here."""
    if num == 0:
        return 0, 0
    k = bits + 2 - (_bitlen(num) - _bitlen(den))  # quotient gets bits+2..bits+3 bits
    if k >= 0:
        q, r = divmod(num << k, den)
    else:
        q, r = divmod(num, den << -k)
    e -= k
    extra = _bitlen(q) - bits
    low = q & ((1 << extra) - 1)
    q >>= extra
    e += extra
    half = 1 << (extra - 1)
    if low > half or (low == half and (r or q & 1)):
        q += 1
        if q >> bits:
            q >>= 1
            e += 1
    return q, e


def to_double(num, den, e):
    """The double nearest num / den * 2^e: -> (q, E), q in [2^52, 2^53) or 0."""
    return round_to(num, den, e, 53)


def round_half_away(q, e):
    """TfLiteRound of the non-negative value q * 2^e -> int."""
    if e >= 0:
        return q << e
    if e < -60:
        return 0
    return (q + (1 << (-e - 1))) >> -e


def quantize_multiplier(q, e):
    """TFLM QuantizeMultiplier of the double q * 2^E: -> (multiplier Q31, shift)."""
    if q == 0:
        return 0, 0
    shift = e + 53  # frexp: q * 2^E = (q / 2^53) * 2^shift, fraction in [0.5, 1)
    mult = (q + (1 << 21)) >> 22  # round(fraction * 2^31), half away from zero
    if mult == 1 << 31:
        mult >>= 1
        shift += 1
    if shift < -31:
        return 0, 0
    return mult, shift


def scale_ratio(num_bits, den_bits, pot=0):
    """TFLM's double(prod(num)) / double(prod(den)) * 2^pot for float32 scales given as
    bits (at most two factors each side, so the products are exact in double): -> the
    rounded double (q, E)."""
    n = 1
    ne = pot
    for b in num_bits:
        m, e = f32_parts(b)
        n *= m
        ne += e
    d = 1
    for b in den_bits:
        m, e = f32_parts(b)
        d *= m
        ne -= e
    if n < 0 or d <= 0:
        raise QuantError("scales must be positive")
    return to_double(n, d, ne)


def multiplier(num_bits, den_bits, pot=0):
    """QuantizeMultiplier(prod(num) / prod(den) * 2^pot) as TFLM computes it."""
    q, e = scale_ratio(num_bits, den_bits, pot)
    return quantize_multiplier(q, e)


# --- gemmlowp fixed point on int32 raws (Python ints, wrapped to int32) ---------------


def wrap32(x):
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul."""
    if a == b == _INT32_MIN:
        return _INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    t = ab + nudge
    # C division truncates toward zero
    return t >> 31 if t >= 0 else -((-t) >> 31)


def rdbpot(x, e):
    """gemmlowp RoundingDivideByPOT."""
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def mbqm(x, m, s):
    """TFLM MultiplyByQuantizedMultiplier (double rounding)."""
    left = s if s > 0 else 0
    right = -s if s < 0 else 0
    return rdbpot(srdhm(wrap32(x * (1 << left)), m), right)


def _sat_shl(x, e):
    thr = (1 << (31 - e)) - 1
    if x > thr:
        return _INT32_MAX
    if x < -thr:
        return _INT32_MIN
    return x << e


def _mul_pot(x, e):  # SaturatingRoundingMultiplyByPOT
    if e > 0:
        return _sat_shl(x, e)
    if e < 0:
        return rdbpot(x, -e)
    return x


def _exp_quarter(a):  # exp_on_interval_between_negative_one_quarter_and_0_excl, Q0.31
    x = wrap32(a + (1 << 28))
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_4 = _mul_pot(x4, -2)
    t = _mul_pot(wrap32(srdhm(wrap32(x4_4 + x3), 715827883) + x2), -1)
    return wrap32(1895147668 + srdhm(1895147668, wrap32(x + t)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_neg(a, ib):
    """gemmlowp exp_on_negative_values of a raw Q(ib) value -> raw Q0.31."""
    fb = 31 - ib
    quarter = 1 << (fb - 2)
    amq = wrap32((a & (quarter - 1)) - quarter)
    result = _exp_quarter(_mul_pot(amq, ib))
    rem = wrap32(amq - a)
    for ex, mul in _EXP_BARREL:
        if ib > ex:
            if rem & (1 << (fb + ex)):
                result = srdhm(result, mul)
    if ib > 5:
        if a < -(1 << (36 - ib)):
            result = 0
    if a == 0:
        result = _INT32_MAX
    return result


def _newton_recip(a):  # shared part of one_over_one_plus_x / one_minus_x_over_one_plus_x
    s = a + _INT32_MAX  # RoundingHalfSum(a, One): (sum + sign) / 2, truncated
    hd = (s + 1) >> 1 if s >= 0 else -((1 - s) >> 1)
    x = wrap32(1515870810 + srdhm(hd, -1010580540))
    for _ in range(3):
        hdx = srdhm(hd, x)
        omx = wrap32((1 << 29) - hdx)
        x = wrap32(x + _mul_pot(srdhm(x, omx), 2))
    return x


def one_over_one_plus_x(a):
    return _mul_pot(_newton_recip(a), 1)


def logistic_raw(a):
    """gemmlowp logistic of a raw Q4.27 value -> raw Q0.31."""
    if a == 0:
        return 1 << 30
    pos = exp_neg(-a if a > 0 else a, 4)
    r = one_over_one_plus_x(pos)
    return r if a > 0 else wrap32(_INT32_MAX - r)


def tanh_raw(a):
    """gemmlowp tanh of a raw Q4.27 value -> raw Q0.31."""
    if a == 0:
        return 0
    n = a if a < 0 else -a
    e = exp_neg(n, 5)  # ExactMulByPot<1>: same raw as Q5
    t = _mul_pot(wrap32(_newton_recip(e) - (1 << 29)), 2)
    return -t if a < 0 else t


def input_radius(int_bits, left_shift, total_bits=31):
    """TFLM CalculateInputRadius."""
    num = ((1 << int_bits) - 1) << (total_bits - int_bits)
    return num >> left_shift if left_shift >= 0 else num << -left_shift


def frexp_q31(q, e):
    """TFLM's inline frexp + TfLiteRound(q * 2^31) (LOGISTIC/TANH prepare, no fix-ups)."""
    return (q + (1 << 21)) >> 22, e + 53


def act_table(kind, in_zp, in_scale_bits):
    """256-byte table (index: input byte as unsigned) of TFLM's int8 LOGISTIC/TANH."""
    q, e = scale_ratio((in_scale_bits,), (), 27)
    mult, shift = frexp_q31(q, e)
    if shift < -31 or shift > 30:
        raise QuantError("input scale out of range for %s" % kind)
    radius = input_radius(4, shift)
    out = bytearray(256)
    for u in range(256):
        x = (u - 256 if u > 127 else u) - in_zp
        if x <= -radius:
            v = -128
        elif x >= radius:
            v = 127
        elif kind == "LOGISTIC":
            v = rdbpot(logistic_raw(mbqm(x, mult, shift)), 23) - 128
        else:
            v = rdbpot(tanh_raw(mbqm(x, mult, shift)), 24)
        v = -128 if v < -128 else 127 if v > 127 else v
        out[u] = v & 0xFF
    return out


def softmax_params(beta_bits, in_scale_bits):
    """PreprocessSoftmaxScaling(beta, s_in, 5) + diff_min -> (multiplier, left_shift,
    diff_min)."""
    q, e = scale_ratio((beta_bits, in_scale_bits), (), 26)
    # std::min with 2^31 - 1.0 (a double)
    if q and (e + 53 > 31 or (e + 53 == 31 and q > ((1 << 31) - 1) << 22)):
        q, e = ((1 << 31) - 1) << 22, -22
    mult, shift = quantize_multiplier(q, e)
    if shift < 0:
        raise QuantError("SOFTMAX: beta * input scale too small")
    return mult, shift, -input_radius(5, shift)


def softmax_exp_table(beta_bits, in_scale_bits):
    """Per input difference d = x - max (0..-255, index -d): exp in Q0.31 or -1 when
    d < diff_min (TFLM skips those), as a list of ints."""
    mult, shift, diff_min = softmax_params(beta_bits, in_scale_bits)
    tab = []
    for k in range(256):
        d = -k
        if d >= diff_min:
            tab.append(exp_neg(mbqm(d, mult, shift), 5))
        else:
            tab.append(-1)
    return tab


def act_range(act, zp, scale_bits, qmin=-128, qmax=127):
    """CalculateActivationRangeQuantized (NONE, RELU, RELU_N1_TO_1, RELU6) -> (lo, hi)."""
    if act == 0:
        return qmin, qmax
    m, e = f32_parts(scale_bits)

    def quant(real):  # zp + TfLiteRound(real / scale), the quotient a float32
        q, ee = round_to(abs(real), m, -e, 24)
        v = round_half_away(q, ee)
        return zp + (v if real >= 0 else -v)

    if act == 1:
        return max(qmin, quant(0)), qmax
    if act == 3:
        return max(qmin, quant(0)), min(qmax, quant(6))
    if act == 2:
        return max(qmin, quant(-1)), min(qmax, quant(1))
    raise QuantError("fused activation %d is not supported" % act)
