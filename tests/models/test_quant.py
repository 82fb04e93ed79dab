"""int8 pieces: the integer input map against its float definition, and the exported
.tflite against the numpy model of TFLM's FULLY_CONNECTED (tflite-micro is the judge)."""

from __future__ import annotations

import numpy as np
import pytest
from aiotkit.models import export, inputq, nn, quant, tflm

FORMATS = [(15, "code"), (0, "code^2"), (16, "1"), (0, "count"), (8, "Hz")]
NAMES = ["rms", "band", "kurtosis", "zcr", "centroid"]


def _rows(rng, n):
    return np.stack([rng.integers(0, 2 ** 31 - 1, n), rng.integers(0, 2 ** 31 - 1, n),
                     rng.integers(0, 40 << 16, n), rng.integers(0, 1024, n),
                     rng.integers(0, 6000 << 8, n)], axis=1).astype(np.int32)


@pytest.mark.parametrize("exp", [-16, -13, -8, 0, 3])
def test_integer_map_is_round_of_physical_value(exp):
    rng = np.random.default_rng(exp + 100)
    rows = _rows(rng, 4000)
    exps = np.full(len(rows), exp)
    inputs = inputq.fit(rows, exps, NAMES, FORMATS, NAMES, lo_pct=20, hi_pct=80)
    q = inputq.quantize(rows, exps, inputs).astype(int)
    for c, d in enumerate(inputs):
        x = rows[:, c] / 2.0 ** d["frac"] * 2.0 ** (d["unit_power"] * exp)
        want = np.clip(np.floor(x / d["scale"] + 0.5) + d["zero_point"], -128, 127)
        near_tie = np.abs((x / d["scale"]) % 1 - 0.5) < 1e-6
        assert np.array_equal(q[~near_tie, c], want[~near_tie])
        assert (q[:, c] == -128).any() and (q[:, c] == 127).any()  # saturates, no wrap


def test_for_sensor_power_of_two_matches_shift():
    rng = np.random.default_rng(1)
    rows = _rows(rng, 500)
    inputs = inputq.fit(rows, np.zeros(500), NAMES, FORMATS, NAMES)
    for (m, s), d in zip(inputq.for_sensor(inputs, 1.0, -14), inputs):
        assert m == d["multiplier"] and s == d["shift"] + 14 * d["unit_power"]


def test_exported_model_is_bit_exact_with_numpy_fc_model():
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(300, 12))
    model = nn.MLP([12, 16, 8, 5], seed=3)
    qm = quant.quantize(model, x, softmax=False)
    blob = export.to_tflite(qm, description="test")
    q_in = np.concatenate([rng.integers(-128, 128, size=(1000, 12)),
                           np.full((1, 12), -128), np.full((1, 12), 127)]).astype(np.int8)
    assert np.array_equal(tflm.run(blob, q_in), quant.run_fc(qm, q_in))
    # with SOFTMAX the decision is the same as the logits' (up to int8 ties)
    qs = quant.QModel(qm.in_scale, qm.in_zero_point, qm.layers, True)
    probs = tflm.run(export.to_tflite(qs, description="t"), q_in).astype(int)
    assert probs.shape == (len(q_in), 5)
    assert (probs.max(axis=1) >= -128 + 256 // 5 - 1).all()


def test_quantized_float_agreement():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, size=(500, 6))
    model = nn.MLP([6, 10, 3], seed=0)
    qm = quant.quantize(model, x, softmax=False)
    q_in = np.round(x * 128).clip(-128, 127).astype(np.int8)
    f = model.forward(q_in / 128.0)
    last = qm.layers[-1]
    deq = (quant.run_fc(qm, q_in).astype(float) - last.out_zero_point) * last.out_scale
    assert np.abs(deq - f).max() < 6 * last.out_scale
