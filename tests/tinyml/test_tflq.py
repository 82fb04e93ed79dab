"""Quantization constants from float32 bits (firmware/tinyml/quant.py) vs TFLM's double math.

TFLM computes M = double(s_in) * double(s_w) / double(s_out) (per-channel; per-tensor
FULLY_CONNECTED takes the float32 product s_in * s_w first) and QuantizeMultiplier
(frexp, round half away from zero, Q31). The node derives the same (multiplier, shift)
with integers from the raw bits, so a board with 32-bit floats gets them exactly. Here
CPython's doubles are the reference, on hypothesis-drawn float32 scales (any exponent,
any mantissa). The limb arithmetic the viper kernels use for SaturatingRoundingDoubling-
HighMul is checked against the int64 definition the same way.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from cpyfw import load
from hypothesis import given, settings
from hypothesis import strategies as st

load()
from tinyml import quant

scale_bits = st.integers(0x00800000, 0x7F000000)  # positive normal float32


def f(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def quantize_multiplier(d):
    if d == 0:
        return 0, 0
    q, sh = math.frexp(d)
    qf = math.floor(q * 2**31 + 0.5)
    if qf == 2**31:
        qf //= 2
        sh += 1
    if sh < -31:
        return 0, 0
    return qf, sh


@settings(max_examples=3000, deadline=None)
@given(scale_bits, scale_bits, scale_bits)
def test_per_channel_multiplier_matches_double_math(a, b, c):
    want = quantize_multiplier(f(a) * f(b) / f(c))
    assert quant.multiplier((a, b), (c,)) == want


@settings(max_examples=2000, deadline=None)
@given(scale_bits, scale_bits, scale_bits)
def test_float32_product_variant(a, b, c):
    with np.errstate(over="ignore"):  # an overflowing product is refused below
        prod = float(np.float32(f(a)) * np.float32(f(b)))
    if prod < np.finfo(np.float32).tiny or math.isinf(prod):
        return  # the node refuses products that underflow float32
    pm, pe = quant.f32_parts(a)
    qm, qe = quant.f32_parts(b)
    cm, ce = quant.f32_parts(c)
    q, e = quant.round_to(pm * qm, 1, pe + qe, 24)
    q, e = quant.to_double(q, cm, e - ce)
    assert quant.quantize_multiplier(q, e) == quantize_multiplier(prod / f(c))


@settings(max_examples=2000, deadline=None)
@given(scale_bits, st.integers(-128, 127), st.sampled_from([0, 1, 2, 3]))
def test_activation_range(sb, zp, act):
    s = np.float32(f(sb))
    if s < 1e-30:
        return
    lo, hi = -128, 127

    def to_q(r):
        v = np.float32(r) / s
        if not np.isfinite(v) or abs(v) > 2**30:
            return None
        return zp + math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)

    ref = {0: (lo, hi)}
    q0, q6, qm1, q1 = to_q(0), to_q(6), to_q(-1), to_q(1)
    if None in (q0, q6, qm1, q1):
        return
    ref[1] = (max(lo, q0), hi)
    ref[3] = (max(lo, q0), min(hi, q6))
    ref[2] = (max(lo, qm1), min(hi, q1))
    assert quant.act_range(act, zp, sb) == ref[act]


def limb_srdhm(acc, m):
    """The viper kernels' SRDHM (15-bit limbs, every intermediate inside int32)."""
    inter = []
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
    b0, b1, b2 = m & 0x7FFF, (m >> 15) & 0x7FFF, m >> 30
    t = u0 * b0 + c
    inter.append(t)
    t = (t >> 15) + u1 * b0 + u0 * b1
    inter.append(t)
    t = (t >> 15) + u2 * b0 + u1 * b1 + u0 * b2
    inter.append(t)
    r = (t >> 1) + ((u2 * b1 + u1 * b2) << 14) + ((u2 * b2) << 29)
    inter.append(r)
    for x in inter:
        assert -(2**31) <= x < 2**31
    return -r if acc < 0 else r


@settings(max_examples=5000, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**31 - 1))
def test_limb_srdhm_matches_int64_definition(acc, m):
    assert limb_srdhm(acc, m) == quant.srdhm(acc, m)


def test_limb_srdhm_extremes():
    for acc in (-(2**31), 2**31 - 1, -1, 0, 1, -(2**30), 2**30):
        for m in (0, 1, 2**30, 2**31 - 1, 1518500250):
            assert limb_srdhm(acc, m) == quant.srdhm(acc, m)
