"""int8 post-training quantization of an MLP (TFLite int8 conventions).

* input: int8, scale 1/128, zero point 0 (inputq.py maps each feature into it);
* weights: int8 symmetric per output channel (axis 0), scale max|W[o]| / 127;
* biases: int32, scale s_in * s_w[o], zero point 0;
* activations: int8 asymmetric from the min/max the float model reaches on the
  representative (training) data; a ReLU layer's range starts at 0 (zero point -128);
* the classifier ends in SOFTMAX (scale 1/256, zero point -128, TFLite's fixed choice),
  the autoencoder's output keeps the input's quantization (scale 1/128, zero point 0) so
  the node compares input and reconstruction code by code.

``QModel`` is the neutral description handed to the .tflite writer (export.py).
``run_fc`` is a numpy model of TFLM's reference FULLY_CONNECTED kernel, for quick
checks only: the metrics in model cards come from the tflite-micro interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiotkit.models.inputq import INPUT_SCALE, INPUT_ZERO_POINT


@dataclass
class QLayer:
    weights: object  # int8 (out, in)
    w_scales: list  # per output channel
    bias: object  # int32 (out,)
    out_scale: float
    out_zero_point: int
    relu: bool


@dataclass
class QModel:
    in_scale: float
    in_zero_point: int
    layers: list  # QLayer
    softmax: bool  # SOFTMAX after the last layer (scale 1/256, zero point -128)


def _range_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zp = int(round(-128 - lo / scale))  # noqa: RUF046 (numpy scalars round to float)
    return scale, max(-128, min(127, zp))


def quantize(model, representative, *, softmax: bool, out_like_input: bool = False) -> QModel:
    """int8 version of a trained nn.MLP; `representative` are float inputs (q / 128)."""
    import numpy as np

    _, acts = model.forward(representative, keep=True)
    s_in = INPUT_SCALE
    layers = []
    for k, (W, b) in enumerate(zip(model.W, model.b)):
        last = k == len(model.W) - 1
        sw = np.maximum(np.abs(W).max(axis=1), 1e-12) / 127.0
        qw = np.clip(np.round(W / sw[:, None]), -127, 127).astype(np.int8)
        qb = np.round(b / (s_in * sw)).astype(np.int64)
        qb = np.clip(qb, -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        a = acts[k + 1]
        if last and out_like_input:
            so, zo = INPUT_SCALE, INPUT_ZERO_POINT
        else:
            so, zo = _range_params(float(a.min()), float(a.max()))
        layers.append(QLayer(qw, [float(x) for x in sw], qb, so, zo, relu=not last))
        s_in = so
    return QModel(INPUT_SCALE, INPUT_ZERO_POINT, layers, softmax)


# --- numpy model of the TFLM reference kernels (checks only) ---------------------------


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: m = q * 2^(shift - 31), q in [2^30, 2^31)."""
    if m == 0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = math.floor(abs(frac) * (1 << 31) + 0.5)  # round half away from zero
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def _mbqm(acc, q: int, shift: int):
    """MultiplyByQuantizedMultiplier (gemmlowp double rounding) on an int64 array."""
    import numpy as np

    left = max(shift, 0)
    right = max(-shift, 0)
    a = acc.astype(np.int64) * (1 << left)
    a = np.clip(a, -(2 ** 31), 2 ** 31 - 1)
    # SaturatingRoundingDoublingHighMul: |a| <= 2^31, q < 2^31, so a*q fits int64
    ab = a * q + np.where(a * q >= 0, 1 << 30, 1 - (1 << 30))
    hi = np.sign(ab) * (np.abs(ab) >> 31)  # C++ division truncates toward zero
    # RoundingDivideByPOT
    if right:
        mask = (1 << right) - 1
        rem = hi & mask
        thr = (mask >> 1) + (hi < 0)
        hi = (hi >> right) + (rem > thr)
    return hi


def run_fc(qm: QModel, q_in):
    """int8 outputs of the last FC layer (before any SOFTMAX) for int8 inputs (n, in)."""
    import numpy as np

    x = np.asarray(q_in, dtype=np.int64)
    s_in, z_in = qm.in_scale, qm.in_zero_point
    for L in qm.layers:
        acc = (x - z_in) @ L.weights.astype(np.int64).T + L.bias.astype(np.int64)
        out = np.empty_like(acc)
        for o in range(acc.shape[1]):
            q, sh = quantize_multiplier(s_in * L.w_scales[o] / L.out_scale)
            out[:, o] = _mbqm(acc[:, o], q, sh)
        out += L.out_zero_point
        lo = L.out_zero_point if L.relu else -128
        x = np.clip(out, max(lo, -128), 127)
        s_in, z_in = L.out_scale, L.out_zero_point
    return x.astype(np.int8)
