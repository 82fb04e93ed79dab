"""A model bigger than the heap runs: weights stay in the file and stream through one
chunk buffer (Interpreter(path, stream=True)); outputs still equal TFLM's."""

from __future__ import annotations

import numpy as np
import pytest
from aiotkit.models.opmodels import inputs_for
from aiotkit.models.tflbuild import ModelBuilder
from aiotkit.tools.tflrun import NodeRunError, run_model_info, tflm_run


def big_fc(k=640, n=320, seed=3):
    rng = np.random.default_rng(seed)
    mb = ModelBuilder()
    sx = np.float32(0.05)
    x = mb.add_tensor([1, k], "int8", scale=sx, zero_point=-1)
    sw = rng.uniform(0.001, 0.01, n).astype(np.float32)
    w = mb.add_tensor([n, k], "int8", scale=sw, zero_point=0,
                      data=rng.integers(-127, 128, (n, k)).astype(np.int8))
    b = mb.add_tensor([n], "int32", scale=(sx * sw).astype(np.float32), zero_point=0,
                      data=rng.integers(-5000, 5000, n).astype(np.int32))
    h = mb.add_tensor([1, n], "int8", scale=0.2, zero_point=-128)
    mb.add_op("FULLY_CONNECTED", [x, w, b], [h], fused_activation_function="RELU")
    return mb.build([x], [h])


def test_model_larger_than_heap_streams_weights(tmp_path):
    model = big_fc()
    assert len(model) > 200_000
    path = tmp_path / "big.tflite"
    path.write_bytes(model)
    x = inputs_for(np.int8, (1, 640), n=200)
    with pytest.raises(NodeRunError, match="MemoryError|memory"):
        run_model_info(path, x[:2], heap="160K")  # whole model in RAM: does not fit
    got, info = run_model_info(path, x, heap="160K", stream=True, chunk=4096)
    assert np.array_equal(got, tflm_run(model, x))
    assert info["alloc_after_first"] == 0, info
