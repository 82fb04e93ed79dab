"""Alerts (gateway/analytics/alerts.py, rules.py): rules from the config with clear
errors, each kind raised and cleared with its hysteresis, kept with their history in the
database, acknowledged through the REST API, published; end to end through a real
gateway, its REST API and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiocoap
import aiohttp
import aiomqtt
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.analytics.alerts import AlertEngine, AlertEvent
from aiotkit.gateway.analytics.rules import AlertRule, parse_alerts
from aiotkit.gateway.analytics.window import Window
from aiotkit.gateway.config import effective_toml, load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.inference.shadow import Verdict
from aiotkit.gateway.storage import SqliteStorage
from hypothesis import given, settings
from hypothesis import strategies as st
from plugins.services import aiot_cmd

SENML_CBOR = 112
VIEWER, OPERATOR = "viewer-token-0123456789", "operator-token-0123456789"
NAMES = ["mean", "rms", "std", "peak"]


# -- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("rule, message", [
    ({"kind": "label"}, "name: required"),
    ({"name": "a/b", "kind": "label"}, "name: required"),
    ({"name": "x", "kind": "loud"}, "kind: must be one of"),
    ({"name": "x", "kind": "label", "k": 6, "n": 5}, "k: must be 1..n"),
    ({"name": "x", "kind": "label", "k": 3, "clear_k": 3}, "clear_k: must be 0..k-1"),
    ({"name": "x", "kind": "label", "n": 0}, "n: must be 1..10000"),
    ({"name": "x", "kind": "label", "for_s": 3}, "not a key of a 'label' rule"),
    ({"name": "x", "kind": "range", "feature": "rms"}, "give lo, hi or both"),
    ({"name": "x", "kind": "range", "lo": 1}, "feature: required"),
    ({"name": "x", "kind": "range", "feature": "rms", "lo": 2, "hi": 1}, "must be below"),
    ({"name": "x", "kind": "range", "feature": "/3313/x", "lo": 1}, "resource path"),
    ({"name": "x", "kind": "silent", "after_s": 0}, "after_s: must be greater than 0"),
    ({"name": "x", "kind": "anomaly", "for_s": "5"}, "for_s: must be a finite number"),
    ({"name": "x", "kind": "drift", "severity": "loud"}, "severity: must be one of"),
    ({"name": "x", "kind": "drift", "endpoints": "n1"}, "endpoints: must be a list"),
])
def test_bad_rules_are_refused_naming_the_key(rule, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_alerts({"rules": [rule]}, "gw.toml")
    assert str(e.value).startswith("gw.toml: alerts.rules[0]")


def test_duplicate_rule_names_and_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="used by another rule"):
        parse_alerts({"rules": [{"name": "a", "kind": "drift"}] * 2}, "f")
    with pytest.raises(ConfigError, match="unknown key alerts.rule"):
        parse_alerts({"rule": []}, "f")
    with pytest.raises(ConfigError, match="array of tables"):
        parse_alerts({"rules": {"name": "a"}}, "f")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["name", "kind", "k", "n", "clear_k", "lo", "hi", "feature", "for_s",
                     "after_s", "normal", "endpoints", "severity", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 20), st.floats(), st.text(max_size=8),
              st.lists(st.text(max_size=4), max_size=3),
              st.sampled_from(["label", "range", "silent", "drift", "shadow", "anomaly",
                               "rms", "/3313/0/5702"]))))
def test_any_rule_table_is_accepted_or_refused_with_a_config_error(entry):
    try:
        cfg = parse_alerts({"rules": [entry]}, "f")
    except ConfigError:
        return
    (rule,) = cfg.rules
    if rule.kind in ("label", "range", "shadow"):
        assert 0 <= rule.clear_k < rule.k <= rule.n


def test_rules_load_from_the_file_and_survive_effective_toml(gateway_config, tmp_path):
    cfg = gateway_config(
        '[alerts]\nkeep_cleared_days = 7\n'
        '[[alerts.rules]]\nname = "fault"\nkind = "label"\nk = 2\nn = 4\n'
        'normal = ["normal", "idle"]\nendpoints = ["pump-*"]\nseverity = "critical"\n'
        '[[alerts.rules]]\nname = "hot"\nkind = "range"\nfeature = "rms"\nhi = 0.5\n')
    assert [r.name for r in cfg.alerts.rules] == ["fault", "hot"]
    assert cfg.alerts.rules[0].normal == ("normal", "idle")
    again = tmp_path / "again.toml"
    again.write_text(effective_toml(cfg))
    assert load_config(again).alerts == cfg.alerts


def test_analytics_section_is_validated(gateway_config):
    with pytest.raises(ConfigError, match="analytics.drift_alert: must be above"):
        gateway_config("[analytics]\ndrift_watch = 0.3\ndrift_alert = 0.2\n")
    with pytest.raises(ConfigError, match="drift_min_windows: must not be above"):
        gateway_config("[analytics]\ndrift_windows = 10\ndrift_min_windows = 20\n")


# -- the engine -------------------------------------------------------------------------

class Engine:
    """An AlertEngine on a real database, its published messages and events kept."""

    def __init__(self, tmp_path: Any, *rules: AlertRule) -> None:
        self.store = SqliteStorage.open(tmp_path / "g.db")
        self.messages: list[tuple[str, dict[str, Any], str]] = []
        self.events: list[AlertEvent] = []
        self.engine = self.make(rules)

    def make(self, rules: Any) -> AlertEngine:
        eng = AlertEngine(rules, self.store.analytics, publish=self.publish,
                          feature_names=NAMES)
        eng.add_listener(self.events.append)
        eng.load(0.0)
        return eng

    def publish(self, msgs: Any) -> None:
        self.messages += [(m.topic, json.loads(m.payload), m.kind) for m in msgs]

    def states(self) -> list[tuple[str, str, str]]:
        return [(a.rule, a.endpoint, a.state) for a in self.store.analytics.alerts(
            states=("active", "acknowledged", "cleared"))]

    def feed(self, ep: str, windows: list[Window], t0: float = 0.0) -> None:
        for i, w in enumerate(windows):
            self.engine.window(ep, w, t0 + i)


@pytest.fixture
def engine(tmp_path):
    made: list[Engine] = []

    def make(*rules: AlertRule) -> Engine:
        made.append(Engine(tmp_path, *rules))
        return made[-1]

    yield make
    for e in made:
        e.store.close()


def lbl(*labels: str) -> list[Window]:
    return [Window(label=x) for x in labels]


def test_label_k_of_n_raises_at_k_and_clears_only_at_clear_k_hysteresis(engine):
    e = engine(AlertRule("fault", "label", k=3, n=5, clear_k=0))
    e.feed("n1", lbl("normal", "ball", "normal", "ball"))
    assert e.states() == []  # 2 of 5
    e.feed("n1", lbl("ball"), 10)
    assert e.states() == [("fault", "n1", "active")]
    # 2 of the last 5 abnormal is below k but above clear_k: still raised
    e.feed("n1", lbl("normal", "normal", "ball", "normal"), 20)
    assert e.states() == [("fault", "n1", "active")]
    e.feed("n1", lbl("normal", "normal", "normal"), 30)
    assert e.states() == [("fault", "n1", "active")]  # one ball still in the last 5
    e.feed("n1", lbl("normal"), 40)
    assert e.states() == [("fault", "n1", "cleared")]
    assert [(m[0], m[1]["event"], m[2]) for m in e.messages] == [
        ("n1/alert/fault", "raised", "alert"), ("n1/alert/fault", "cleared", "alert")]
    # once cleared, the next raise is a new alert
    e.feed("n1", lbl("ball", "ball", "ball"), 50)
    rows = e.store.analytics.alerts(states=("active", "cleared"))
    assert [(r.state, r.id) for r in rows] == [("active", 2), ("cleared", 1)]


def test_anomaly_must_last_for_s_and_clears_after_clear_s(engine):
    e = engine(AlertRule("anom", "anomaly", for_s=30.0, clear_s=10.0))
    eng = e.engine
    eng.window("n1", Window(anomalous=True, score=900), 100.0)
    eng.window("n1", Window(anomalous=True, score=900), 129.0)
    assert e.states() == []
    eng.window("n1", Window(anomalous=False), 129.5)  # the run is broken: start again
    eng.window("n1", Window(anomalous=True), 130.0)
    eng.window("n1", Window(anomalous=True), 159.9)
    assert e.states() == []
    eng.window("n1", Window(anomalous=True, score=901), 160.0)
    assert e.states() == [("anom", "n1", "active")]
    assert e.events[-1].alert.detail == {"since": 130.0, "score": 901}
    eng.window("n1", Window(anomalous=False), 161.0)
    eng.window("n1", Window(anomalous=True), 165.0)  # flapping does not clear it
    eng.window("n1", Window(anomalous=False), 166.0)
    eng.window("n1", Window(anomalous=False), 175.0)
    assert e.states() == [("anom", "n1", "active")]
    eng.window("n1", Window(anomalous=False), 176.0)
    assert e.states() == [("anom", "n1", "cleared")]


def test_silent_node_raised_after_x_cleared_when_heard_forgotten_when_deregistered(engine):
    e = engine(AlertRule("quiet", "silent", after_s=60.0))
    eng = e.engine
    eng.heard("n1", 0.0)
    eng.heard("n2", 0.0)
    eng.tick(59.9)
    assert e.states() == []
    eng.heard("n2", 30.0)
    eng.tick(60.0)
    assert e.states() == [("quiet", "n1", "active")]
    eng.tick(61.0)  # raised once
    assert len(e.messages) == 1
    eng.heard("n1", 70.0)
    eng.forget("n2", 80.0)
    eng.tick(500.0)
    assert e.states() == [("quiet", "n1", "active"), ("quiet", "n1", "cleared")]


def test_feature_out_of_range_by_name_index_or_resource_path(engine):
    e = engine(AlertRule("hot", "range", feature="rms", hi=0.5, k=2, n=3, clear_k=0),
               AlertRule("low", "range", feature=0, lo=-1.0, k=1, n=1),
               AlertRule("acc", "range", feature="/3313/0/5702", lo=-2.0, hi=2.0, k=1, n=1))
    eng = e.engine
    eng.window("n1", Window(features={0: -2.0, 1: 0.9}, readings={"/3313/0/5702": 3.0}), 1)
    assert sorted(s[0] for s in e.states()) == ["acc", "low"]
    eng.window("n1", Window(features={0: 0.0, 1: 0.9}, readings={"/3313/0/5702": 0.0}), 2)
    assert sorted(e.states()) == [("acc", "n1", "cleared"), ("hot", "n1", "active"),
                                  ("low", "n1", "cleared")]
    with pytest.raises(ConfigError, match="not an output of the node's feature spec"):
        e.make([AlertRule("x", "range", feature="nope", hi=1.0)])


def test_shadow_disagreements_and_drift_levels_raise_and_clear(engine):
    e = engine(AlertRule("shadow", "shadow", k=1, n=3, clear_k=0),
               AlertRule("drift", "drift"))
    eng = e.engine
    eng.shadow("n1", "agree", "", 1)
    eng.shadow("n1", "unchecked", "unknown model", 2)  # does not count
    eng.shadow("n1", "disagree", "label: node 0, gateway 1", 3)
    assert e.states() == [("shadow", "n1", "active")]
    eng.shadow("n1", "agree", "", 4)
    eng.shadow("n1", "agree", "", 5)
    assert e.states() == [("shadow", "n1", "active")]
    eng.shadow("n1", "agree", "", 6)
    assert e.states() == [("shadow", "n1", "cleared")]
    eng.drift("n2", "drift", 0.4, 10, {"reference": "bearing-anomaly"})
    eng.drift("n2", "watch", 0.2, 11, {})  # between the levels: stays raised
    assert ("drift", "n2", "active") in e.states()
    eng.drift("n2", "ok", 0.05, 12, {})
    assert ("drift", "n2", "cleared") in e.states()


def test_shadow_checker_listener_reaches_the_rules(engine):
    """The hook in gateway/inference/shadow.py: verdicts go to listeners."""
    pytest.importorskip("tflite_micro")
    from aiotkit.gateway.inference.shadow import ShadowChecker
    from aiotkit.gateway.lwm2m.registry import RegistryEvent
    from aiotkit.gateway.lwm2m.senml import decode_cbor

    e = engine(AlertRule("shadow", "shadow", k=1, n=1))
    checker = ShadowChecker([])
    seen: list[Verdict] = []
    checker.add_listener(seen.append)
    checker.add_listener(lambda v: e.engine.shadow(v.endpoint, v.status, v.detail, 1.0))
    records = decode_cbor(cbor2.dumps([{0: "/33002/0/0", 2: 1}, {0: "/33002/0/7", 8: b"x" * 8},
                                       {0: "/33002/0/9", 8: b"\0" * 8}, {0: "/33002/0/10",
                                                                          2: -14}]))
    checker.on_event(RegistryEvent("send", "n1", "r1", records))
    assert [v.status for v in seen] == ["unchecked"]  # an unknown model: not counted
    assert e.states() == []


def test_open_alerts_survive_a_restart_and_rules_removed_are_cleared(engine, tmp_path):
    e = engine(AlertRule("fault", "label", k=1, n=1), AlertRule("gone", "label", k=1, n=1))
    e.feed("n1", lbl("ball"))
    assert len(e.states()) == 2
    again = e.make([AlertRule("fault", "label", k=1, n=1)])
    assert sorted(e.states()) == [("fault", "n1", "active"), ("gone", "n1", "cleared")]
    again.window("n1", Window(label="ball"), 5)  # open already: not raised twice
    assert [a.state for a in e.store.analytics.alerts(rule="fault")] == ["active"]
    again.window("n1", Window(label="normal"), 6)
    assert [a.state for a in e.store.analytics.alerts(rule="fault")] == ["cleared"]
    assert [h.event for h in e.store.analytics.history(
        e.store.analytics.alerts(rule="gone")[0].id)] == ["raised", "cleared"]


def test_rule_endpoint_patterns_limit_the_nodes(engine):
    e = engine(AlertRule("fault", "label", endpoints=("pump-*",), k=1, n=1))
    e.feed("fan-1", lbl("ball"))
    e.feed("pump-7", lbl("ball"))
    assert e.states() == [("fault", "pump-7", "active")]


def test_acknowledge_only_an_active_alert_and_its_history_is_kept(engine):
    e = engine(AlertRule("fault", "label", k=1, n=1))
    e.feed("n1", lbl("ball"))
    (row,) = e.store.analytics.alerts()
    acked = e.engine.ack(row.id, "otto", 5.0)
    assert acked is not None and (acked.state, acked.acked_by) == ("acknowledged", "otto")
    assert e.engine.ack(row.id, "otto", 6.0) is None  # twice: refused
    assert e.engine.ack(999, "otto", 6.0) is None
    e.feed("n1", lbl("normal"), 10)
    assert [(h.event, h.actor) for h in e.store.analytics.history(row.id)] == [
        ("raised", None), ("acknowledged", "otto"), ("cleared", None)]
    assert [ev.event for ev in e.events] == ["raised", "acknowledged", "cleared"]
    assert e.store.analytics.prune_alerts(11.0) == 1
    assert e.store.analytics.history(row.id) == []  # the history goes with it


# -- end to end -------------------------------------------------------------------------

def decision(seq: int, label: str) -> bytes:
    return cbor2.dumps([{-2: "/33002/0/", 0: "0", 2: seq}, {0: "1", 2: 0 if label ==
                        "normal" else 1}, {0: "2", 3: label}, {0: "3", 2: 0.9}])


async def test_alert_raised_acknowledged_and_cleared_through_rest_and_mqtt(
        mosquitto, gateway_config, running_gateway, clock, tmp_path):
    (tmp_path / "tokens").write_text(f"viewer {VIEWER} vera\noperator {OPERATOR} otto\n")
    (tmp_path / "tokens").chmod(0o600)
    cfg = gateway_config(
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
        f'[mqtt]\nenabled = true\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
        "[analytics]\npublish_rollups = false\n"
        '[[alerts.rules]]\nname = "fault"\nkind = "label"\nk = 2\nn = 3\n'
        'severity = "critical"\n')
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="sub-al") as sub:
        await sub.subscribe("#", qos=1)

        async def alert_messages(n: int) -> list[dict[str, Any]]:
            out = []
            async with asyncio.timeout(10):
                async for msg in sub.messages:
                    if str(msg.topic).endswith("node-1/alert/fault"):
                        assert isinstance(msg.payload, bytes) and msg.qos == 1
                        out.append(json.loads(msg.payload))
                        if len(out) == n:
                            return out
            raise AssertionError("unreachable")

        async with running_gateway(cfg, clock=clock) as gw, aiohttp.ClientSession() as http:
            async def api(method: str, path: str, token: str = OPERATOR):
                async with http.request(method, f"{gw.rest.url}/api/v1{path}",
                                        headers={"Authorization": f"Bearer {token}"}) as r:
                    return r.status, await r.json()

            ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                async def send(seq: int, label: str) -> None:
                    clock.advance(1)
                    msg = aiocoap.Message(code=Code.POST, uri=f"{cfg.coap_uri}/dp",
                                          payload=decision(seq, label))
                    msg.opt.content_format = SENML_CBOR
                    assert (await ctx.request(msg).response).code == Code.CHANGED

                reg = aiocoap.Message(code=Code.POST, uri=f"{cfg.coap_uri}/rd?ep=node-1&lt=600",
                                      payload=b"</33002/0>")
                reg.opt.content_format = 40
                assert (await ctx.request(reg).response).code == Code.CREATED
                await send(0, "normal")
                await send(1, "inner_race")
                assert (await api("GET", "/alerts", VIEWER)) == (200, {"alerts": []})
                await send(2, "inner_race")  # 2 of the last 3: raised
                raised_at = clock.now
                status, body = await api("GET", "/alerts?ep=node-1", VIEWER)
                assert status == 200 and len(body["alerts"]) == 1
                alert = body["alerts"][0]
                assert (alert["rule"], alert["kind"], alert["state"], alert["severity"],
                        alert["raised_at"]) == ("fault", "label", "active", "critical",
                                                raised_at)
                aid = alert["id"]
                async with http.get(f"{gw.rest.url}/metrics") as r:  # what /metrics says
                    scraped = await r.text()
                assert 'aiot_alerts_active{rule="fault"} 1.0' in scraped, scraped
                # a viewer may look, not acknowledge
                assert (await api("POST", f"/alerts/{aid}/ack", VIEWER))[0] == 403
                status, acked = await api("POST", f"/alerts/{aid}/ack")
                assert status == 200 and (acked["state"], acked["acked_by"]) == (
                    "acknowledged", "otto")
                status, again = await api("POST", f"/alerts/{aid}/ack")
                assert (status, again["error"]) == (409, "not_active")
                assert (await api("POST", "/alerts/99/ack"))[0] == 404
                assert (await api("GET", "/alerts/abc", VIEWER))[0] == 404
                assert (await api("GET", "/alerts?state=bogus", VIEWER))[0] == 400
                for seq in (3, 4):
                    await send(seq, "normal")
                status, body = await api("GET", f"/alerts/{aid}", VIEWER)
                assert body["state"] == "acknowledged"  # 1 of 3 still abnormal
                await send(5, "normal")
                status, body = await api("GET", f"/alerts/{aid}", VIEWER)
                assert status == 200 and body["state"] == "cleared"
                assert [(h["event"], h["actor"]) for h in body["history"]] == [
                    ("raised", None), ("acknowledged", "otto"), ("cleared", None)]
                body_history = body["history"]
                assert (await api("GET", "/alerts", VIEWER))[1] == {"alerts": []}
                status, body = await api("GET", "/alerts?state=cleared&ep=node-1", VIEWER)
                assert [a["id"] for a in body["alerts"]] == [aid]
                # and through the CLI (aiot alerts, tools/alertscli.py)
                proc = await asyncio.create_subprocess_exec(
                    *aiot_cmd("alerts", "show", str(aid), "--json", "--url", gw.rest.url,
                              "--token", VIEWER), stdout=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
                assert proc.returncode == 0 and json.loads(out)["history"] == body_history
            finally:
                await ctx.shutdown()
            got = await alert_messages(3)
            assert [(m["event"], m["state"]) for m in got] == [
                ("raised", "active"), ("acknowledged", "acknowledged"),
                ("cleared", "cleared")]
            assert all(m["id"] == aid and m["endpoint"] == "node-1" and m["gateway"] == "test"
                       for m in got)
            assert got[0]["detail"] == {"bad": 2, "of": 3, "label": "inner_race"}
