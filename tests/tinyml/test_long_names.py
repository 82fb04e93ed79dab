"""Tensor and metadata names are metadata: TensorFlow's converter writes fused-op names of
many KB ("a;b;c" joined), tflite-micro never reads them, and the node must neither refuse
such a model nor copy the names into RAM (firmware/tinyml/flatbuf.py keeps a bounded
prefix for messages)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from aiotkit.models.opmodels import inputs_for
from aiotkit.models.tflbuild import ModelBuilder
from aiotkit.tools.tflrun import run_model_info, tflm_run
from cpyfw import load

tflite = load()
HEAP = "192K"  # as test_ops_diff.py: the unix port keeps the interpreter's code in the heap
NAME_BYTES = 64 * 1024
SHOW = 48  # flatbuf._SHOW


def long_name(tag: str, n: int = NAME_BYTES) -> str:
    """A converter-style fused name: scopes joined with ';', exactly n bytes."""
    parts = [f"{tag}/sequential/dense_{k}/MatMul;{tag}/sequential/dense_{k}/BiasAdd"
             for k in range(n // 40 + 1)]
    return ";".join(parts)[:n]


def fc_softmax(names, x_zp=-1, meta=()):
    rng = np.random.default_rng(11)
    mb = ModelBuilder()
    sx = np.float32(0.05)
    x = mb.add_tensor([1, 16], "int8", scale=sx, zero_point=x_zp, name=names[0])
    sw = rng.uniform(0.002, 0.02, 8).astype(np.float32)
    w = mb.add_tensor([8, 16], "int8", scale=sw, zero_point=0, name=names[1],
                      data=rng.integers(-127, 128, (8, 16)).astype(np.int8))
    b = mb.add_tensor([8], "int32", scale=(sx * sw).astype(np.float32), zero_point=0,
                      name=names[2], data=rng.integers(-3000, 3000, 8).astype(np.int32))
    h = mb.add_tensor([1, 8], "int8", scale=0.1, zero_point=3, name=names[3])
    y = mb.add_tensor([1, 8], "int8", scale=1 / 256, zero_point=-128, name=names[4])
    mb.add_op("FULLY_CONNECTED", [x, w, b], [h])
    mb.add_op("SOFTMAX", [h], [y])
    for k, v in meta:
        mb.add_metadata(k, v)
    return mb.build([x], [y])


def names64k():
    return [long_name(f"t{i}") for i in range(5)]


def test_a_model_with_64_kb_tensor_names_loads_and_matches_tflite_micro(tmp_path):
    model = fc_softmax(names64k(), meta=[("aiot.card", b"{}")])
    # five 64 KB names: more than the whole heap, so the node cannot hold them in RAM
    assert len(model) > 5 * NAME_BYTES > 192 * 1024
    path = tmp_path / "long-names.tflite"
    path.write_bytes(model)
    x = inputs_for(np.int8, (1, 16), n=300, seed=4)
    got, info = run_model_info(path, x, heap=HEAP, stream=True)
    assert info["n"] == len(x)
    assert np.array_equal(got, tflm_run(model, x))
    assert info["alloc_after_first"] == 0, info


def test_64_kb_names_are_kept_as_a_bounded_prefix_and_long_metadata_names_skipped():
    names = names64k()
    ip = tflite.Interpreter(fc_softmax(names, meta=[(long_name("meta"), b"{}"),
                                                     ("aiot.card", b'{"v": 1}')]))
    for t, full in zip(ip.tensors, names):
        assert t.name == full[:SHOW] + "..."
    # the node looks metadata up by short names; a 64 KB one is skipped, not refused
    assert list(ip.metadata) == ["aiot.card"]


def test_a_bad_tensor_with_a_64_kb_name_is_named_in_one_bounded_line():
    names = names64k()
    try:
        tflite.Interpreter(fc_softmax(names, x_zp=300))
    except tflite.TFLiteError as e:
        msg = str(e)
    else:
        raise AssertionError("zero point 300 was accepted")
    assert msg == f"tensor 0 ({names[0][:SHOW]}...): zero point 300 outside int8"


def test_names_that_are_not_printable_utf8_do_not_refuse_the_model():
    base = ["x" * (SHOW - 1) + "é" + "y" * 100, "a\nb\x7fc", "MARK" + "z" * 10, "w", "é"]
    model = bytearray(fc_softmax(base))
    k = model.index(b"MARKzz")
    model[k:k + 4] = b"\xff\xfe\xc3("  # invalid UTF-8
    ip = tflite.Interpreter(bytes(model))
    got = [t.name for t in ip.tensors]
    # a multi-byte character cut by the prefix is dropped, not garbled
    assert got == ["x" * (SHOW - 1) + "...", "a?b?c", "???(" + "z" * 10, "w", "é"]


def test_model_check_prints_a_bounded_name(tmp_path):
    names = names64k()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(fc_softmax(names, x_zp=300))
    good = tmp_path / "good.tflite"
    good.write_bytes(fc_softmax(names))
    r = subprocess.run([sys.executable, "-m", "aiotkit.tools.cli", "model", "check", str(bad),
                        "--json"], capture_output=True, text=True, timeout=300, check=False)
    rep = json.loads(r.stdout)
    assert rep["error"] == f"tensor 0 ({names[0][:SHOW]}...): zero point 300 outside int8"
    r = subprocess.run([sys.executable, "-m", "aiotkit.tools.cli", "model", "check", str(bad)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and len(r.stdout + r.stderr) < 400, r.stdout + r.stderr
    assert f"({names[0][:SHOW]}...)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "aiotkit.tools.cli", "model", "check", str(good),
                        "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ops"] == {"FULLY_CONNECTED": 1, "SOFTMAX": 1}
