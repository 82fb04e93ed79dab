"""The shipped models agree with their cards: file hash and size, feature spec (the node's
own default, asked of MicroPython), feature names, input map, tensor quantization, and
the metadata the node reads from the .tflite itself."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from aiotkit.models import evaluate, featurize
from modelpaths import MODELS, SHIPPED


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    card, blob = evaluate.read_card(MODELS / request.param)
    return card, blob


def test_file_matches_card(shipped):
    card, blob = shipped
    assert card["model"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert card["model"]["bytes"] == len(blob)
    readme = (MODELS / card["name"] / "README.md").read_text()
    assert card["model"]["sha256"] in readme


def test_spec_is_the_node_default(shipped, default_spec):
    card, _ = shipped
    assert card["feature_spec"] == default_spec
    assert (card["rate"], card["window"]) == (default_spec["rate"], default_spec["window"])
    # the names the node's extractor gives this spec, and the input map points into them
    _, names, formats = featurize.extract(np.zeros((1, card["window"]), np.int16),
                                          card["feature_spec"])
    assert card["feature_names"] == names
    for d in card["input"]["features"]:
        assert names[d["index"]] == d["name"]
        assert list(formats[d["index"]]) == [d["frac"], d["unit"]]
        assert 1 << 14 <= d["multiplier"] < 1 << 15
        assert d["scale"] == 2.0 ** (d["shift"] - d["frac"]) / d["multiplier"]


def test_tensors_match_card(shipped):
    from tflite_micro.python.tflite_micro import runtime

    card, blob = shipped
    interp = runtime.Interpreter.from_bytes(blob)
    for det, want in ((interp.get_input_details(0), card["input"]["tensor"]),
                      (interp.get_output_details(0), card["output"]["tensor"])):
        assert det["dtype"] == np.int8
        assert det["shape"].tolist() == want["shape"]
        q = det["quantization_parameters"]
        assert q["scales"].tolist() == [want["scale"]]
        assert q["zero_points"].tolist() == [want["zero_point"]]
    assert card["input"]["tensor"]["shape"][1] == len(card["input"]["features"])


def test_metadata_in_tflite_matches_card(shipped):
    card, blob = shipped
    meta = {"kind": card["kind"], "feature_spec": card["feature_spec"],
            "inputs": [{k: d[k] for k in ("name", "index", "unit_power", "multiplier",
                                          "shift", "zero_point")}
                       for d in card["input"]["features"]]}
    if card["kind"] == "classifier":
        meta["labels"] = card["output"]["labels"]
    else:
        meta["threshold"] = card["output"]["threshold"]
        meta["score"] = card["output"]["score"]
    assert json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() in blob


def test_goals_recorded(shipped):
    card, _ = shipped
    m = card["metrics"]
    if card["kind"] == "classifier":
        assert card["output"]["labels"] == ["normal", "inner_race", "outer_race", "ball"]
        assert m["test"]["macro_f1"] >= 0.95
        assert m["speed_shift"]["fraction_inner_race"] >= 0.90
        assert sum(map(sum, m["test"]["confusion"]["matrix"])) == m["test"]["windows"]
    else:
        assert m["test"]["per_class"]["normal"]["windows"] > 0
        assert isinstance(card["output"]["threshold"], int)
