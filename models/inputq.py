"""How a node turns its int32 feature outputs into the model's int8 input.

The per-feature normalisation lives here, in the input quantization: each model input j
reads one extractor output (``index``) and maps it to int8 with its own affine step, so
the model's input tensor needs a single scale (1/128, zero point 0: the real value the
network sees is q/128, about -1..1 for every feature).

Definition (exact, integers only; the node does the same):

    p  = unit power of the output: 0 for "1", "count", "Hz"; 1 for "code"; 2 for "code^2"
    E  = the sensor's scale exponent (value in g = code * 2**E; scale_m = 1)
    n  = shift - p * E
    v  = out * multiplier                              (|out| < 2^31, multiplier < 2^15)
    r  = (v + 2**(n - 1)) >> n      if n > 0           (round half up; >> is floor)
         v << -n                    if n <= 0
    q  = clamp(r + zero_point, -128, 127)

so q = clamp(round(x / scale) + zero_point) with x the output in physical units (g, g^2,
Hz, ...) and scale = 2**(shift - frac) / multiplier, the physical step stored beside it.
For a sensor whose scale is not a power of two (value = code * scale_m * 2**E), compute
a new multiplier/shift from ``scale`` for that sensor (``for_sensor``).
"""

from __future__ import annotations

import math

UNIT_POWER = {"1": 0, "count": 0, "Hz": 0, "code": 1, "code^2": 2}
QMIN, QMAX = -128, 127
INPUT_SCALE = 1.0 / 128  # the model input tensor: real = q / 128
INPUT_ZERO_POINT = 0


def _mult_shift(k: float) -> tuple[int, int]:
    """k ~= multiplier * 2**-shift with 2**14 <= multiplier < 2**15."""
    if not k > 0 or not math.isfinite(k):
        raise ValueError(f"scale factor {k!r} is not a positive number")
    shift = 14 - math.floor(math.log2(k))
    m = round(k * 2.0 ** shift)
    while m >= 1 << 15:
        shift -= 1
        m = round(k * 2.0 ** shift)
    while m < 1 << 14:
        shift += 1
        m = round(k * 2.0 ** shift)
    return m, shift


def fit(rows, exps, names, formats, select, *, lo_pct=0.5, hi_pct=99.5, margin=0.0):
    """Per-feature maps from training rows: the [lo_pct, hi_pct] percentile range of each
    selected output (in physical units), widened by `margin` of its width on each side,
    spans -128..127. Returns the list stored in the model card under "inputs"."""
    import numpy as np

    out = []
    for name in select:
        j = names.index(name)
        frac, unit = formats[j]
        p = UNIT_POWER[unit]
        x = rows[:, j].astype(np.float64) / 2.0 ** frac * np.exp2(p * np.asarray(exps, float))
        lo, hi = np.percentile(x, [lo_pct, hi_pct])
        width = max(hi - lo, abs(hi) * 1e-6, 1e-30)
        lo, hi = lo - margin * width, hi + margin * width
        scale = (hi - lo) / (QMAX - QMIN)
        # the code-domain factor for a 1 g/code sensor: x = out * 2^-frac
        m, shift = _mult_shift(1.0 / (scale * 2.0 ** frac))
        scale = 2.0 ** (shift - frac) / m  # the exact step these integers give
        zp = int(round(QMIN - lo / scale))  # noqa: RUF046 (numpy scalars round to float)
        zp = max(-(1 << 30), min(1 << 30, zp))
        out.append({"name": name, "index": j, "unit": unit, "unit_power": p, "frac": frac,
                    "multiplier": m, "shift": shift, "zero_point": zp, "scale": scale})
    return out


def quantize(rows, exps, inputs):
    """int8 model inputs (n, len(inputs)) from int32 feature rows and each row's scale
    exponent E, by the exact integer definition above."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    exps = np.asarray(exps, dtype=np.int64)
    q = np.empty((len(rows), len(inputs)), dtype=np.int8)
    for c, d in enumerate(inputs):
        v = rows[:, d["index"]] * d["multiplier"]  # < 2^46
        n = d["shift"] - d["unit_power"] * exps
        r = np.empty_like(v)
        pos = n > 0
        npos = np.where(pos, n, 1)
        r[pos] = (v[pos] + (np.int64(1) << (npos[pos] - 1))) >> npos[pos]
        neg = ~pos
        # the result saturates anyway: bound v before the left shift so it cannot overflow
        lim = np.int64(1) << 40
        r[neg] = np.clip(v[neg], -lim, lim) << np.minimum(-n[neg], 20)
        q[:, c] = np.clip(r + d["zero_point"], QMIN, QMAX)
    return q


def for_sensor(inputs, scale_m: float, scale_e: int):
    """(multiplier, shift) per input for a sensor with value = code * scale_m * 2**scale_e,
    to be used with E = 0 in the definition above."""
    res = []
    for d in inputs:
        k = (scale_m * 2.0 ** scale_e) ** d["unit_power"] / (d["scale"] * 2.0 ** d["frac"])
        res.append(_mult_shift(k))
    return res

