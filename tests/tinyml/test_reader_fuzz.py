"""Bad .tflite input: truncated, corrupted, offsets outside the buffer, unsupported ops,
types and options. The loader must raise TFLiteError (with a message naming the problem)
and nothing else: never IndexError, struct.error, MemoryError from a huge length, a crash.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess

import numpy as np
import pytest
from aiotkit.models.opmodels import CASES
from aiotkit.models.tflbuild import ModelBuilder
from aiotkit.tools.tflrun import compiled_firmware, micropython_exe
from cpyfw import load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tflite = load()
TFLiteError = tflite.TFLiteError
SEEDS = [CASES[n]()[0] for n in ("fc_channel_relu", "conv_same", "small_cnn", "mean_hw_same")]


def load_or_error(data: bytes):
    try:
        tflite.Interpreter(data)
    except TFLiteError as e:
        assert str(e)
        return str(e)
    return None


def test_seed_models_load_under_cpython():
    for m in SEEDS:
        assert load_or_error(m) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_truncated_model_raises_only_tfliteerror(i, data):
    m = SEEDS[i]
    n = data.draw(st.integers(0, len(m) - 1))
    assert load_or_error(m[:n]) is not None or n >= len(m) - 16


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_bytes_raise_only_tfliteerror(i, edits):
    b = bytearray(SEEDS[i])
    for pos, val in edits:
        b[pos % len(b)] = val
    load_or_error(bytes(b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 1 << 20),
       st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0x10000, 4]))
def test_offsets_outside_the_buffer(i, where, value):
    b = bytearray(SEEDS[i])
    pos = (where % (len(b) - 4)) & ~3
    struct.pack_into("<I", b, pos, value)
    load_or_error(bytes(b))


def _single(op, opts=None, xtype="int8", yshape=(1, 4), wshape=None, **kw):
    mb = ModelBuilder()
    x = mb.add_tensor([1, 4], xtype, scale=0.1, zero_point=0)
    ins = [x]
    if wshape:
        ins.append(mb.add_tensor(wshape, "int8", scale=0.01, zero_point=0,
                                 data=np.ones(wshape, np.int8)))
    y = mb.add_tensor(list(yshape), "int8", scale=0.1, zero_point=0)
    mb.add_op(op, ins, [y], **(opts or {}), **kw)
    return mb.build([x], [y])


def _conv(**opts):
    mb = ModelBuilder()
    x = mb.add_tensor([1, 5, 5, 2], "int8", scale=0.1, zero_point=0)
    w = mb.add_tensor([3, 3, 3, 2], "int8", scale=0.01, zero_point=0,
                      data=np.ones((3, 3, 3, 2), np.int8))
    y = mb.add_tensor([1, 5, 5, 3], "int8", scale=0.1, zero_point=0)
    opts.setdefault("padding", "SAME")
    mb.add_op("CONV_2D", [x, w], [y], **opts)
    return mb.build([x], [y])


@pytest.mark.parametrize("model, words", [
    (lambda: _single("SQUARE"), "unsupported op SQUARE (builtin 92)"),
    (lambda: _single(83), "unsupported op PACK"),
    (lambda: _conv(dilation_h_factor=0), "op 0 (CONV_2D): dilation 0 is invalid"),
    (lambda: _conv(stride_w=0, stride_h=1), "stride 1x0 is invalid"),
    (lambda: _conv(fused_activation_function="TANH"), "fused activation TANH"),
    (lambda: _conv(padding=7), "padding 7 is invalid"),
    (lambda: _single("FULLY_CONNECTED", wshape=(4, 4), xtype="int16"), "is INT16, expected INT8"),
    (lambda: _single("FULLY_CONNECTED", wshape=(4, 4), weights_format=1), "weights_format 1"),
    (lambda: _single("FULLY_CONNECTED", wshape=(3, 4)), "output shape [1, 4]"),
    (lambda: _single("LOGISTIC"), "scale 1/256 and zero point -128"),
    (lambda: b"\0" * 64, "file identifier"),
    (lambda: b"TFL3", "not a TFLite model"),
])
def test_unsupported_or_invalid_is_named(model, words):
    msg = load_or_error(model())
    assert msg is not None and words in msg, msg


def test_arena_limit_is_enforced():
    with pytest.raises(TFLiteError, match="arena of .* bytes, the limit is 16"):
        tflite.Interpreter(CASES["conv_same"]()[0], arena_limit=16)


def test_fuzz_on_micropython_itself(tmp_path):
    """A few hundred corrupted files through the real port, in one process."""
    rng = np.random.default_rng(7)
    files = []
    for k in range(300):
        b = bytearray(SEEDS[k % len(SEEDS)])
        if k % 3 == 0:
            b = b[: rng.integers(0, len(b))]
        else:
            for _ in range(rng.integers(1, 6)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        p = tmp_path / f"m{k}.tflite"
        p.write_bytes(bytes(b))
        files.append(str(p))
    (tmp_path / "list.txt").write_text("\n".join(files))
    drv = tmp_path / "fz.py"
    drv.write_text(
        "import sys, json\nfrom tinyml import interpreter as tflite\n"
        "res = {'ok': 0, 'err': 0, 'other': []}\n"
        "for p in open(sys.argv[1]).read().split():\n"
        "    try:\n"
        "        with open(p, 'rb') as f:\n"
        "            tflite.Interpreter(f.read())\n"
        "        res['ok'] += 1\n"
        "    except tflite.TFLiteError:\n"
        "        res['err'] += 1\n"
        "    except Exception as e:\n"
        "        res['other'].append(p + ': ' + repr(e))\n"
        "print(json.dumps(res))\n")
    env = dict(os.environ, MICROPYPATH=str(compiled_firmware()))
    proc = subprocess.run([micropython_exe(), "-X", "heapsize=1M", str(drv),
                           str(tmp_path / "list.txt")], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["other"] == [], res["other"][:5]
    assert res["err"] > 100
