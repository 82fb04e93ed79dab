"""Operations endpoints (``gateway/ops``, ``gateway/api/rest.py`` OPEN_ROUTES): liveness
and readiness without a token, and ``/metrics`` in the Prometheus text format read from
the gateway's state at scrape time, scraped over real HTTP and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import hashlib
import json

import aiohttp
import pytest
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.storage import SqliteStorage
from aiotkit.gateway.storage.api import OtaCampaignRow, OtaImageRow
from fakeclient import SENML_JSON, FakeClient
from plugins.services import free_port
from prometheus_client.parser import text_string_to_metric_families

VIEWER = "viewer-token-0123456789"
REST = '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'


@pytest.fixture
def ops_config(gateway_config, tmp_path):
    (tmp_path / "tokens").write_text(f"viewer {VIEWER} vera\n")
    (tmp_path / "tokens").chmod(0o600)

    def make(extra: str = "") -> object:
        return gateway_config(REST + extra)

    return make


def dead_mqtt() -> str:
    """An uplink to a port nobody listens on: it runs, reconnecting, never connected."""
    return (f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n")


async def get(session: aiohttp.ClientSession, url: str,
              token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def scrape(session: aiohttp.ClientSession, gw, token: str | None = None
                 ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, text = await get(session, gw.rest.url + "/metrics", token)
    assert status == 200, text
    assert ctype.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_health_and_metrics_answer_without_a_token_and_the_api_still_needs_one(
        ops_config, running_gateway):
    async with running_gateway(ops_config()) as gw, aiohttp.ClientSession() as s:
        status, _, text = await get(s, gw.rest.url + "/health/live")
        assert (status, json.loads(text)) == (200, {"status": "live"})
        status, _, text = await get(s, gw.rest.url + "/health/ready")
        assert status == 200
        assert json.loads(text) == {"status": "ready",
                                    "checks": {"coap": "ok", "store": "ok"}}
        metrics = await scrape(s, gw)
        assert metrics[("aiot_sends_stored_total", ())] == 0
        assert metrics[("aiot_uplink_enabled", ())] == 0
        # the exemption is these GET paths only: the API, and other methods, need a token
        for url in ("/api/v1/endpoints", "/api/v1", "/metrics/", "/health"):
            status, _, _ = await get(s, gw.rest.url + url)
            assert status == 401, url
        async with s.post(gw.rest.url + "/metrics") as resp:
            assert resp.status == 401


async def test_the_ops_port_serves_health_and_metrics_without_the_rest_api(
        gateway_config, running_gateway):
    # Before, /metrics and /health/* needed [rest] enabled: a scraper on another network
    # than the API's had to be let onto the API's port
    cfg = gateway_config("[ops]\nenabled = true\nport = 0\n")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        assert gw.rest is None and gw.ops is not None
        url = gw.ops.url
        status, _, text = await get(s, url + "/health/ready")
        assert status == 200 and json.loads(text)["status"] == "ready"
        status, ctype, text = await get(s, url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"aiot_sends_stored", "aiot_outbox_pending_bytes"} <= names
        # nothing else: not the API, with or without a token, not another method
        for path in ("/api/v1/endpoints", "/api/v1/whoami", "/", "/metrics/"):
            status, _, text = await get(s, url + path, VIEWER)
            assert status == 404 and json.loads(text)["error"] == "not_found", path
        async with s.post(url + "/metrics") as resp:
            assert resp.status == 404


def test_the_ops_port_may_not_be_the_rest_port(gateway_config, tmp_path):
    (tmp_path / "tokens").write_text(f"viewer {VIEWER}\n")
    with pytest.raises(ConfigError, match="ops.port"):
        gateway_config(REST.replace("port = 0", "port = 8090")
                       + "[ops]\nenabled = true\nport = 8090\n")


async def test_metrics_token_required_refuses_a_scrape_without_a_token(
        ops_config, running_gateway):
    cfg = ops_config("metrics_token_required = true\n")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        status, _, text = await get(s, gw.rest.url + "/metrics")
        assert status == 401 and json.loads(text)["error"] == "unauthorized"
        status, _, _ = await get(s, gw.rest.url + "/metrics", "not-a-token")
        assert status == 401
        assert (await scrape(s, gw, VIEWER))[("aiot_uplink_enabled", ())] == 0
        status, _, _ = await get(s, gw.rest.url + "/health/ready")  # health stays open
        assert status == 200


async def test_metrics_count_sends_ack_latency_nodes_and_the_outbox(
        ops_config, running_gateway, clock):
    cfg = ops_config(dead_mqtt())
    async with running_gateway(cfg, clock=clock) as gw, aiohttp.ClientSession() as s, \
            FakeClient("awake", gw.coap_uri) as a, \
            FakeClient("sleepy", gw.coap_uri, binding="UQ") as b, \
            FakeClient("gone", gw.coap_uri) as c:
        for dev in (a, b, c):
            await dev.register()
        await c.deregister()
        for i in range(3):
            sent = [{"n": "/3303/0/5700", "v": 20.5 + i}]
            resp = await a.send(json.dumps(sent).encode(), SENML_JSON)
            assert resp.code.is_successful()
        clock.advance(120)  # past the queue-mode awake window (93 s): "sleepy" sleeps
        m = await scrape(s, gw)
        assert m[("aiot_sends_stored_total", ())] == 3
        assert m[("aiot_ack_latency_seconds_count", ())] == 3
        assert m[("aiot_ack_latency_seconds_bucket", (("le", "+Inf"),))] == 3
        assert 0 < m[("aiot_ack_latency_seconds_sum", ())] < 60
        assert m[("aiot_nodes", (("state", "online"),))] == 1
        assert m[("aiot_nodes", (("state", "sleeping"),))] == 1
        assert m[("aiot_nodes", (("state", "deregistered"),))] == 1
        assert m[("aiot_nodes", (("state", "offline"),))] == 0
        # no broker: the readings and statuses wait in the outbox, the oldest 120 s old
        pending, _ = gw.store.outbox_counts()
        assert pending >= 3
        assert m[("aiot_outbox_pending", ())] == pending
        size = sum(len(r.payload) + len(r.topic.split("/", 2)[2])
                   for r in gw.store.outbox_pending(0, 100))  # topics kept without prefix
        assert m[("aiot_outbox_pending_bytes", ())] == size
        assert m[("aiot_outbox_oldest_age_seconds", ())] == pytest.approx(120.0)
        assert m[("aiot_uplink_enabled", ())] == 1
        assert m[("aiot_uplink_connected", ())] == 0
        assert m[("aiot_metrics_errors_total", ())] == 0


async def test_ready_is_503_with_the_reason_once_the_uplink_stopped(
        ops_config, running_gateway):
    async with running_gateway(ops_config(dead_mqtt())) as gw, aiohttp.ClientSession() as s:
        status, _, text = await get(s, gw.rest.url + "/health/ready")
        # a broker outage is no reason to leave service: the uplink runs, reconnecting
        assert status == 200, text
        assert json.loads(text)["uplink_connected"] is False
        assert gw.uplink is not None
        await gw.uplink.shutdown()
        status, _, text = await get(s, gw.rest.url + "/health/ready")
        assert status == 503
        body = json.loads(text)
        assert body["status"] == "not_ready"
        assert body["checks"]["uplink"] == "the MQTT uplink is not running"
        assert body["checks"]["coap"] == "ok"
        status, _, _ = await get(s, gw.rest.url + "/health/live")
        assert status == 200


async def test_a_registered_source_is_scraped_and_a_failing_one_spoils_nothing(
        ops_config, running_gateway):
    async with running_gateway(ops_config()) as gw, aiohttp.ClientSession() as s:
        gw.metrics.register_source("alerts_active", lambda: {"silent": 2, "drift": 1},
                                   "alerts raised and not cleared", label="rule")
        gw.metrics.register_source("broken", lambda: 1 / 0)
        m = await scrape(s, gw)
        assert m[("aiot_alerts_active", (("rule", "silent"),))] == 2
        assert m[("aiot_alerts_active", (("rule", "drift"),))] == 1
        assert m[("aiot_metrics_errors_total", ())] == 1
        assert not any(name.startswith("aiot_broken") for name, _ in m)
        with pytest.raises(ValueError):
            gw.metrics.register_source("bad name{}", lambda: 1)


def test_ota_states_are_counted_by_campaign_and_node_state(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        ota = store.ota
        digest = hashlib.sha256(b"img").hexdigest()
        ota.ota_put_image(OtaImageRow(digest, "1.0.0", "app", "unix-sim", 1, ("k",), 3, 0.0))
        cid = ota.ota_create_campaign(
            OtaCampaignRow(0, "c", digest, {}, ("100%",), 0.1, 60.0, "running", 0, None,
                           0.0, 0.0), [("a", 0), ("b", 0), ("c", 0)])
        ota.ota_set_node(cid, "a", state="succeeded")
        assert ota.ota_state_counts() == {("running", "pending"): 2,
                                          ("running", "succeeded"): 1}
    finally:
        store.close()
