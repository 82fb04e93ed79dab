"""aiot model train / evaluate end to end.

* evaluation of the shipped models reproduces their cards (full CWRU data, skipped
  without ../shared/data/cwru);
* training on a small subset runs end to end and is deterministic: a tiny CWRU-like
  folder is made from the shipped 2 s excerpts (boards/replay), so this runs everywhere;
* bad input gives one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiotkit.boards.replay import signalfile
from aiotkit.tools import cli
from modelpaths import CWRU, MODELS, REPO, SHIPPED, needs_cwru

# file number -> the excerpt that stands in for it in the small folder
STAND_IN = {97: "normal-97", 105: "inner-105", 209: "inner-105", 108: "inner-105",
            130: "outer-130", 234: "outer-130", 118: "ball-118", 222: "ball-118"}


def run(capsys, *argv):
    code = cli.main(["model", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    import scipy.io

    d = tmp_path_factory.mktemp("cwru-small")
    for n, name in STAND_IN.items():
        x = signalfile.read(REPO / "boards" / "replay" / f"{name}.i16").values
        if n == 97:
            x = np.repeat(x, 4)  # the normal baseline is a 48 kHz file
        if n in (209, 234, 222, 108):
            x = x[::-1].copy()  # not the same windows as its sibling
        scipy.io.savemat(str(d / f"{n}.mat"), {f"X{n:03d}_DE_time": x[:, None]})
    return d


@needs_cwru
@pytest.mark.parametrize("name", SHIPPED)
def test_evaluate_reproduces_card(capsys, name):
    code, out, err = run(capsys, "evaluate", str(MODELS / name), "--data", str(CWRU),
                         "--quiet")
    assert code == 0, err
    assert "metrics match the card" in out


@needs_cwru
def test_evaluate_notices_a_changed_card(capsys, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(MODELS / "bearing-fault", d)
    card = json.loads((d / "card.json").read_text())
    card["metrics"]["test"]["macro_f1"] = 0.5
    (d / "card.json").write_text(json.dumps(card))
    code, _out, err = run(capsys, "evaluate", str(d), "--data", str(CWRU), "--quiet")
    assert code == 1
    assert "metrics.test.macro_f1: card 0.5, now" in err


def test_train_small_end_to_end_and_deterministic(capsys, small_data, tmp_path):
    outs = []
    for k in range(2):
        code, out, err = run(capsys, "train", "--data", str(small_data), "--out",
                             str(tmp_path / f"o{k}"), "--limit", "16", "--epochs", "20")
        assert code == 0, err
        assert "trained 2 models" in out and "epoch 20/20" in err
        outs.append(tmp_path / f"o{k}")
    for name in SHIPPED:
        a, b = (o / name for o in outs)
        assert (a / "model.tflite").read_bytes() == (b / "model.tflite").read_bytes()
        assert (a / "card.json").read_text() == (b / "card.json").read_text()
        card = json.loads((a / "card.json").read_text())
        assert card["training"]["split"]["windows_per_recording_limit"] == 16
        # the folder it wrote evaluates like a shipped one (same data, same card)
        code, out, err = run(capsys, "evaluate", str(a), "--data", str(small_data), "--quiet")
        assert code == 0, err


@pytest.mark.parametrize("case", ["missing", "empty", "junk", "renamed", "out-is-file"])
def test_train_bad_input_is_one_line(capsys, tmp_path, small_data, case):
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    if case != "missing":
        data.mkdir()
    if case in ("junk", "renamed", "out-is-file"):
        for p in small_data.glob("*.mat"):
            shutil.copy(p, data / p.name)
    if case == "junk":
        (data / "130.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    if case == "renamed":
        shutil.copy(small_data / "105.mat", data / "97.mat")
    if case == "out-is-file":
        out.write_text("")
    code, _o, err = run(capsys, "train", "--data", str(data), "--out", str(out), "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("aiot: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["no-card", "bad-json", "tampered"])
def test_evaluate_bad_model_dir_is_one_line(capsys, tmp_path, small_data, case):
    import shutil

    d = tmp_path / "m"
    if case == "no-card":
        d.mkdir()
    else:
        shutil.copytree(MODELS / "bearing-fault", d)
    if case == "bad-json":
        (d / "card.json").write_text("{not json")
    if case == "tampered":
        blob = bytearray((d / "model.tflite").read_bytes())
        blob[-1] ^= 1
        (d / "model.tflite").write_bytes(bytes(blob))
    code, _out, err = run(capsys, "evaluate", str(d), "--data", str(small_data))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("aiot: error: ")


def test_evaluate_refuses_other_data(capsys, small_data):
    # the small folder is not the data the shipped card was computed on
    code, _out, err = run(capsys, "evaluate", str(MODELS / "bearing-fault"), "--data",
                         str(small_data), "--quiet")
    assert code == 2 and "is not the file the card was made with" in err


@needs_cwru
def test_full_training_reproduces_shipped_models(capsys, tmp_path):
    """The shipped files are what `aiot model train` makes from the CWRU data (fixed seeds;
    numpy float results can differ in the last bits on another BLAS build)."""
    code, _out, err = run(capsys, "train", "--data", str(CWRU), "--out", str(tmp_path),
                         "--quiet")
    assert code == 0, err
    for name in SHIPPED:
        assert (tmp_path / name / "card.json").read_text() == \
            (MODELS / name / "card.json").read_text()
        assert (tmp_path / name / "model.tflite").read_bytes() == \
            (MODELS / name / "model.tflite").read_bytes()
