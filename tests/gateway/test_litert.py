"""Gateway-side inference with LiteRT (``gateway/inference/litert.py``) for nodes that
send features only: LiteRT against the project's reference (tflite-micro) on the shipped
int8 models and on a float model built here, the features' quantization, and the whole
path: a node's features in, a decision stored as the node's would be, on the uplink."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from aiotkit.gateway.inference.litert import (
    TOKEN,
    GatewayInference,
    InferenceUnavailable,
    load_model,
    quantize_features,
)
from aiotkit.models import tflm
from aiotkit.models.tflbuild import ModelBuilder
from aiotkit.models.tflmeta import aiot_model
from fakeclient import SENML_JSON, FakeClient
from plugins.services import free_port

pytest.importorskip("ai_edge_litert")

ROWS = 2000


def _reference_rows(name: str, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    from aiotkit import models

    data = (Path(models.__file__).parent / name / "model.tflite").read_bytes()
    x = np.random.default_rng(seed).integers(-128, 128, size=(ROWS, 19)).astype(np.int8)
    return data, x, tflm.run(data, x).astype(np.int64)


def _litert_rows(name: str, x: np.ndarray) -> np.ndarray:
    model = load_model(name)
    assert not model.is_float
    return np.stack([model.run(row) for row in x]).astype(np.int64)


def test_litert_int8_classifier_agrees_with_tflite_micro_on_every_label():
    _data, x, ref = _reference_rows("bearing-fault", 1)
    got = _litert_rows("bearing-fault", x)
    # LiteRT's int8 requantization rounds a few values differently from the TFLM
    # reference kernels (module docstring): bounded, and never another decision
    assert np.abs(got - ref).max() <= 3
    assert (got != ref).any(axis=1).mean() < 0.01
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def test_litert_int8_anomaly_model_is_within_one_step_of_tflite_micro():
    data, x, ref = _reference_rows("bearing-anomaly", 2)
    got = _litert_rows("bearing-anomaly", x)
    assert np.abs(got - ref).max() <= 1
    xi = x.astype(np.int64)
    s_ref, s_got = ((ref - xi) ** 2).sum(axis=1), ((got - xi) ** 2).sum(axis=1)
    assert (np.abs(s_got - s_ref) <= 0.01 * s_ref + 64).all()
    threshold = aiot_model(data)["threshold"]
    assert ((s_got > threshold) == (s_ref > threshold)).all()


def float_classifier(meta: dict) -> bytes:
    """A float32 19 -> 4 FULLY_CONNECTED + SOFTMAX model with the shipped classifier's
    input map (tflbuild: the pipeline's writer, float tensors without quantization)."""
    rng = np.random.default_rng(7)
    mb = ModelBuilder(description="float test classifier")
    x = mb.add_tensor([1, 19], "float32", name="features")
    w = mb.add_tensor([4, 19], "float32", data=rng.normal(0, 1, (4, 19)).astype(np.float32))
    b = mb.add_tensor([4], "float32", data=rng.normal(0, 0.1, 4).astype(np.float32))
    logits = mb.add_tensor([1, 4], "float32", name="logits")
    p = mb.add_tensor([1, 4], "float32", name="probabilities")
    mb.add_op("FULLY_CONNECTED", [x, w, b], [logits])
    mb.add_op("SOFTMAX", [logits], [p], beta=1.0)
    mb.add_metadata("aiot.model", json.dumps(meta).encode())
    return mb.build(inputs=[x], outputs=[p])


def test_litert_float_model_is_close_to_tflite_micro(tmp_path):
    from aiotkit import models

    meta = aiot_model((Path(models.__file__).parent / "bearing-fault" / "model.tflite")
                      .read_bytes())
    data = float_classifier(meta)
    (tmp_path / "float.tflite").write_bytes(data)
    model = load_model(tmp_path / "float.tflite")
    assert model.is_float and model.kind == "classifier"
    from tflite_micro.python.tflite_micro import runtime

    ref = runtime.Interpreter.from_bytes(data)
    rng = np.random.default_rng(3)
    for _ in range(200):
        x = rng.uniform(-1, 1, (1, 19)).astype(np.float32)
        ref.set_input(x, 0)
        ref.invoke()
        want = np.asarray(ref.get_output(0)).reshape(-1)
        assert np.allclose(model.run(x), want, rtol=1e-5, atol=1e-6)


def test_features_in_physical_units_quantize_to_the_nodes_int8_codes():
    model = load_model("bearing-fault")
    rng = np.random.default_rng(4)
    for _ in range(200):
        want = rng.integers(-128, 128, len(model.inputs))
        feats = {}
        for d, q in zip(model.inputs, want, strict=True):
            step = 2.0 ** (d["shift"] - d["frac"]) / d["multiplier"]
            feats[d["index"]] = float(np.float32((int(q) - d["zero_point"]) * step))
        got, _ = quantize_features(feats, model.inputs)
        assert got == [int(q) for q in want]
    big = {d["index"]: 1e30 for d in model.inputs}
    assert set(quantize_features(big, model.inputs)[0]) == {127}  # clamped, as the node
    with pytest.raises(ValueError):
        quantize_features({**big, 1: math.nan}, model.inputs)
    with pytest.raises(KeyError):
        quantize_features({1: 0.5}, model.inputs)


def _features_for(q: list[int], model) -> list[dict]:
    records = [{"n": "/33000/0/0", "v": 41}]
    feats = {i: 0.0 for i in range(20)}
    for d, code in zip(model.inputs, q, strict=True):
        feats[d["index"]] = (code - d["zero_point"]) * 2.0 ** (d["shift"] - d["frac"]) \
            / d["multiplier"]
    records += [{"n": f"/33001/0/{i}", "v": v} for i, v in sorted(feats.items())]
    return records


async def test_a_node_sending_features_only_gets_the_gateways_decision_stored_and_uplinked(
        gateway_config, running_gateway):
    cfg = gateway_config("[inference]\nenabled = true\n"
                         f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\n'
                         "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n")
    clf, ae = load_model("bearing-fault"), load_model("bearing-anomaly")
    q = [int(v) for v in np.random.default_rng(5).integers(-100, 100, 19)]
    want_label = int(np.argmax(tflm.run(_bytes(clf), np.array([q], dtype=np.int8))[0]))
    # the anomaly model maps the same features with its own steps (models/inputq.py)
    feats = {int(r["n"].rsplit("/", 1)[1]): r["v"] for r in _features_for(q, clf)
             if r["n"].startswith("/33001/")}
    q_ae = [max(-128, min(127, math.floor(
        feats[d["index"]] * d["multiplier"] * 2.0 ** (d["frac"] - d["shift"]) + 0.5)
        + d["zero_point"])) for d in ae.inputs]
    recon = tflm.run(_bytes(ae), np.array([q_ae], dtype=np.int8))[0].astype(np.int64)
    want_score = int(((recon - np.array(q_ae)) ** 2).sum())
    async with running_gateway(cfg) as gw, FakeClient("tiny", gw.coap_uri) as node, \
            FakeClient("smart", gw.coap_uri) as smart:
        assert isinstance(gw.inference, GatewayInference)
        await node.register()
        await smart.register()
        resp = await node.send(json.dumps(_features_for(q, clf)).encode(), SENML_JSON)
        assert resp.code.is_successful()
        # a node that decided itself is left alone
        own = _features_for(q, clf) + [{"n": "/33002/0/1", "v": 0}]
        assert (await smart.send(json.dumps(own).encode(), SENML_JSON)).code.is_successful()
        await asyncio.gather(*gw.inference.futures)
        assert gw.inference.decisions == 1
        sends = gw.store.sends("tiny")
        assert [s.token == TOKEN for s in sends] == [False, True]  # the node's, then ours
        decided = {r.path: r.value for r in gw.store.readings(sends[1].id)}
        assert decided["/33002/0/0"] == 41  # the window it decided for
        assert decided["/33002/0/1"] == want_label
        assert decided["/33002/0/2"] == clf.meta["labels"][want_label]
        assert decided["/33002/0/4"] == pytest.approx(want_score, rel=0.01, abs=64)
        assert decided["/33002/0/5"] is (decided["/33002/0/4"] > ae.meta["threshold"])
        assert decided["/33002/0/7"] == clf.id and decided["/33002/0/8"] == ae.id
        assert [s.token == TOKEN for s in gw.store.sends("smart")] == [False]
        # on its way to the broker like a node's decision
        topics = [r.topic for r in gw.store.outbox_pending(0, 10000)]
        assert any(t.endswith("tiny/data/33002/0/1") for t in topics), topics


def _bytes(model) -> bytes:
    return model.path.read_bytes()


async def test_a_float_model_from_the_config_decides_too(
        gateway_config, running_gateway, tmp_path):
    meta = aiot_model(_bytes(load_model("bearing-fault")))
    (tmp_path / "float.tflite").write_bytes(float_classifier(meta))
    cfg = gateway_config('[inference]\nenabled = true\nclassifier = "float.tflite"\n'
                         'anomaly = ""\nendpoints = ["tiny"]\n')
    async with running_gateway(cfg) as gw, FakeClient("tiny", gw.coap_uri) as node, \
            FakeClient("other", gw.coap_uri) as other:
        assert gw.inference is not None and gw.inference.models[0].is_float
        await node.register()
        await other.register()
        payload = json.dumps(_features_for([10] * 19, gw.inference.models[0])).encode()
        assert (await node.send(payload, SENML_JSON)).code.is_successful()
        assert (await other.send(payload, SENML_JSON)).code.is_successful()  # not listed
        await asyncio.gather(*gw.inference.futures)
        decided = {r.path: r.value for r in gw.store.readings(gw.store.sends("tiny")[-1].id)}
        assert 0 < decided["/33002/0/3"] <= 1.0 and "/33002/0/4" not in decided
        assert len(gw.store.sends("other")) == 1


async def test_without_litert_the_gateway_runs_and_says_inference_is_off_once(
        gateway_config, running_gateway, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    cfg = gateway_config("[inference]\nenabled = true\n")
    with caplog.at_level(logging.INFO, logger="aiotkit.gateway"):
        async with running_gateway(cfg) as gw:
            assert gw.inference is None
    lines = [r.getMessage() for r in caplog.records if "inference" in r.getMessage()]
    assert lines == [("gateway-side inference off: gateway-side inference needs numpy and"
                      " ai-edge-litert (ai_edge_litert is missing): pip install"
                      " 'aiotkit[infer]'")]


def test_a_model_that_cannot_be_used_is_a_clear_error(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"not a model")
    with pytest.raises(InferenceUnavailable, match="aiot.model"):
        load_model(tmp_path / "junk.tflite")
    with pytest.raises(InferenceUnavailable, match="cannot read"):
        load_model(tmp_path / "missing.tflite")
