"""The gateway's shadow check (gateway/inference/shadow.py) on the shipped models, and the .tflite
metadata reader it uses (models/tflmeta.py). The node <-> gateway agreement itself is
tested end to end in tests/e2e/test_node_decisions.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from aiotkit.boards import paths
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.inference.shadow import ModelIndex, ShadowChecker, check, shipped_model_dirs
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.models import inputq, tflm, tflmeta
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tflite_micro")

CLF, AE = paths.shipped_models()


@pytest.fixture(scope="module")
def index() -> ModelIndex:
    return ModelIndex(shipped_model_dirs())


def decision(features: np.ndarray, e: int = -14) -> dict[int, object]:
    """What a correct node reports for these raw feature outputs (computed here with
    tflite-micro and the numpy input map)."""
    out: dict[int, object] = {0: 3, 9: features.astype("<i4").tobytes(), 10: e}
    for path, kind in ((CLF, "classifier"), (AE, "anomaly")):
        data = path.read_bytes()
        meta = tflmeta.aiot_model(data)
        x = inputq.quantize(features[None, :], np.array([e]), meta["inputs"])
        y = tflm.run(data, x)[0]
        if kind == "classifier":
            label = int(np.argmax(y))
            out.update({1: label, 2: meta["labels"][label], 3: (int(y[label]) + 128) / 256,
                        7: hashlib.sha256(data).digest()[:8]})
        else:
            score = int(((y.astype(int) - x[0].astype(int)) ** 2).sum())
            out.update({4: score, 5: score > meta["threshold"], 6: meta["threshold"],
                        8: hashlib.sha256(data).digest()[:8]})
    return out


def features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**31), 2**31, 20, dtype=np.int64)


def test_index_finds_the_shipped_models_by_sha256_prefix(index):
    ids = {hashlib.sha256(p.read_bytes()).digest()[:8] for p in (CLF, AE)}
    assert ids <= set(index.models)
    assert {index.models[i].kind for i in ids} == {"classifier", "anomaly"}


@pytest.mark.parametrize("seed", range(5))
def test_a_correct_decision_agrees(index, seed):
    v = check("n", decision(features(seed)), index)
    assert v.status == "agree" and v.window == 3, v


@pytest.mark.parametrize("res, value, what", [
    (1, "other", "label"), (3, 0.001, "confidence"), (4, 12345678, "anomaly score"),
    (5, "flip", "anomalous"),
])
def test_a_changed_decision_disagrees_and_says_what(index, res, value, what):
    d = decision(features(1))
    d[res] = (d[1] + 1) % 4 if value == "other" else (not d[5]) if value == "flip" else value
    v = check("n", d, index)
    assert v.status == "disagree" and v.detail.startswith(what), v


@pytest.mark.parametrize("change, reason", [
    ({7: b"\0" * 8}, "classifier model 0000000000000000 is not known"),
    ({9: b"abc"}, "no raw feature outputs"),
    ({10: "x"}, "no raw feature outputs"),
])
def test_what_cannot_be_checked_is_said(index, change, reason):
    d = decision(features(2))
    d.update(change)
    v = check("n", d, index)
    assert v.status == "unchecked" and reason in v.detail, v


def test_too_few_features_for_the_model_is_a_disagreement(index):
    d = decision(features(3))
    d[9] = d[9][:40]
    assert check("n", d, index).status == "disagree"


def test_checker_counts_verdicts_from_send_events(index):
    sc = ShadowChecker(shipped_model_dirs())
    good = decision(features(4))
    recs = [Record(f"/33002/0/{k}", "vd" if isinstance(v, bytes) else "v", v, None)
            for k, v in good.items()]
    sc.on_event(RegistryEvent("send", "n", "r", recs))
    sc.on_event(RegistryEvent("send", "n", "r", [Record("/3313/0/5702", "v", 1.0, None)]))
    sc.on_event(RegistryEvent("registered", "n", "r"))
    assert sc.counts == {"agree": 1, "disagree": 0, "unchecked": 0}


def test_config_section(tmp_path):
    (tmp_path / "m").mkdir()
    p = tmp_path / "g.toml"
    p.write_text('[shadow]\nenabled = false\nmodels = "m"\n')
    cfg = load_config(p)
    assert cfg.shadow.enabled is False and cfg.shadow.models == str(tmp_path / "m")
    p.write_text("[shadow]\nenabled = 1\n")
    with pytest.raises(ConfigError, match="shadow.enabled: must be true or false"):
        load_config(p)


def test_metadata_reader_reads_the_shipped_models():
    m = tflmeta.aiot_model(CLF.read_bytes())
    assert m["kind"] == "classifier" and len(m["inputs"]) == 19
    assert tflmeta.aiot_model(AE.read_bytes())["threshold"] == 71045


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_metadata_reader_fuzz_gives_value_error_only(data):
    blob = bytearray(CLF.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        tflmeta.read_metadata(bytes(blob[:cut]))
    except ValueError:
        pass
