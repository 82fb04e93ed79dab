"""The REST API (``gateway/api/rest.py``): real HTTP against a real gateway on ephemeral ports,
with a real aiocoap LwM2M client (``fakeclient``) behind it.

Every role and error path: 401 missing/unknown token, 403 role, 404 unknown endpoint,
400 bad path/value, 504 node timeout, the node's CoAP error code passed through. Names
follow OMA-ETS-LightweightM2M_INT 1.2 (``LightweightM2M-1.1-int-NNN``) where one fits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import aiohttp
import pytest
from aiotkit.gateway.api.rest import Role, parse_tokens
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from fakeclient import SENML_CBOR, SENML_JSON, TLV, FakeClient

VIEWER, OPERATOR, ADMIN = ("viewer-token-0123456789", "operator-token-0123456789",
                           "admin-token-0123456789")
REST = '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
FAST = "[dm]\nrequest_timeout_s = 2.0\n"


@pytest.fixture
def rest_config(gateway_config, tmp_path):
    (tmp_path / "tokens").write_text(
        "# role token name\n"
        f"viewer {VIEWER} vera\n"
        f"operator {OPERATOR} otto\n"
        f"admin sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()} ada\n")
    (tmp_path / "tokens").chmod(0o600)

    def make(extra: str = "") -> object:
        return gateway_config(REST + FAST + extra)

    return make


class Http:
    """An aiohttp client for one gateway's API, with a default token."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def __call__(self, method: str, path: str, token: str | None = OPERATOR,
                       **kwargs) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, headers=headers,
                                        **kwargs) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body


async def _api(gw) -> tuple[aiohttp.ClientSession, Http]:
    session = aiohttp.ClientSession()
    return session, Http(session, gw.rest.url + "/api/v1")


async def test_missing_wrong_and_unknown_tokens_are_401(rest_config, running_gateway):
    async with running_gateway(rest_config()) as gw, aiohttp.ClientSession() as s:
        url = gw.rest.url + "/api/v1/endpoints"
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"},
                        {"Authorization": "Bearer "},
                        {"Authorization": "Bearer not-a-token-we-know-of"}):
            async with s.get(url, headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.json()
                assert body["error"] == "unauthorized"
        api = Http(s, gw.rest.url + "/api/v1")
        assert await api("GET", "", token=ADMIN) == (200, {
            "gateway": "test", "coap": gw.coap_uri, "role": "admin", "token": "ada",
            "expires": None})


async def test_int101_viewer_sees_registrations_but_may_not_operate(rest_config,
                                                                    running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints", token=VIEWER)
            assert status == 200
            (ep,) = body["endpoints"]
            assert (ep["endpoint"], ep["state"], ep["binding"], ep["lwm2m_version"]) == (
                "dev-1", "registered", "U", "1.1")
            status, body = await api("GET", "/endpoints/dev-1", token=VIEWER)
            assert status == 200 and body["reg_id"] == dev.location[1]
            assert "/3/0" in body["objects"] and "/3303/0" in body["objects"]
            status, body = await api("GET", "/endpoints/dev-1/events", token=VIEWER)
            assert [e["kind"] for e in body["events"]] == ["registered"]
            for method, path in (("GET", "/endpoints/dev-1/lwm2m/3/0"),
                                 ("PUT", "/endpoints/dev-1/lwm2m/3/0/13"),
                                 ("POST", "/endpoints/dev-1/lwm2m/3/0/4/execute"),
                                 ("DELETE", "/endpoints/dev-1")):
                status, body = await api(method, path, token=VIEWER, json={"value": 1})
                assert status == 403, (method, path, body)
                assert body["error"] == "forbidden"
            assert dev.seen == []  # nothing reached the node


async def test_unknown_endpoint_is_404_and_bad_paths_are_400(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            for path in ("/endpoints/ghost", "/endpoints/ghost/lwm2m/3/0",
                         "/endpoints/ghost/readings"):
                status, body = await api("GET", path)
                assert (status, body["error"]) == (404, "unknown_endpoint"), path
            for path in ("/3/x", "/70000", "/3/0/1/2/3", "/03"):
                status, body = await api("GET", f"/endpoints/dev-1/lwm2m{path}")
                assert (status, body["error"]) == (400, "bad_path"), (path, body)
            status, body = await api("GET", "/nowhere")
            assert (status, body["error"]) == (404, "not_found")
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0/0?timeout=x")
            assert (status, body["error"]) == (400, "bad_query")
            assert dev.seen == []


async def test_int223_int205_int241_read_write_execute_discover(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0")
            assert status == 200 and body["code"] == "2.05"
            assert body["values"]["/3/0/0"] == "aiotkit" and body["values"]["/3/0/9"] == 87
            status, body = await api("PUT", "/endpoints/dev-1/lwm2m/3/0/13",
                                     json={"value": 1_800_000_000})
            assert (status, body["code"]) == (200, "2.04")
            assert dev.values[(3, 0, 13)] == 1_800_000_000
            status, body = await api("PUT", "/endpoints/dev-1/lwm2m/3303/0?mode=update",
                                     json={"value": {"5750": "lab"}})
            assert (status, body["code"]) == (200, "2.04")
            assert dev.values[(3303, 0, 5750)] == "lab"
            status, body = await api("POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
            assert (status, body["code"]) == (200, "2.04")
            assert dev.executed == [("/3/0/4", b"")]
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0/discover")
            assert status == 200 and "</3/0/4>" in body["links"]
            status, body = await api("PUT", "/endpoints/dev-1/lwm2m/3303/0/5700/attributes",
                                     json={"pmin": 1, "pmax": 60})
            assert (status, body["code"]) == (200, "2.04")
            assert dev.attributes["/3303/0/5700"] == ["pmin=1", "pmax=60"]
            status, body = await api("POST", "/endpoints/dev-1/composite/read",
                                     json={"paths": ["/3/0/0", "/3303/0/5700"]})
            assert status == 200
            assert body["values"] == {"/3/0/0": "aiotkit", "/3303/0/5700": 21.5}
            status, body = await api("GET", "/endpoints/dev-1/requests", token=VIEWER)
            assert status == 200
            assert [r["op"] for r in body["requests"]] == [
                "read", "write", "write", "execute", "discover", "write_attributes",
                "read_composite"]


async def test_create_and_delete_an_instance(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, body = await api("POST", "/endpoints/dev-1/lwm2m/3303",
                                     json={"values": {"5750": "new"}, "instance": 7})
            assert (status, body["location"]) == (201, "/3303/7"), body
            assert dev.values[(3303, 7, 5750)] == "new"
            status, body = await api("DELETE", "/endpoints/dev-1/lwm2m/3303/7")
            assert (status, body["code"]) == (200, "2.02")
            assert (3303, 7, 5750) not in dev.values
            status, body = await api("POST", "/endpoints/dev-1/lwm2m/3303/0",
                                     json={"values": {}})
            assert (status, body["error"]) == (400, "bad_path")


async def test_int256_node_error_codes_pass_through(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0/99")
            assert (status, body["error"], body["coap"]) == (404, "node_error", "4.04")
            assert body["result"]["code"] == "4.04"
            # /3/0/0 is read-only: the node refuses the write with 4.05
            status, body = await api("PUT", "/endpoints/dev-1/lwm2m/3/0/0",
                                     json={"value": "x"})
            assert (status, body["coap"]) == (405, "4.05"), body
            assert dev.values[(3, 0, 0)] == "aiotkit"


@pytest.mark.parametrize("path, body", [
    ("/3/0/13", {"value": "not a time"}),  # wrong type for the DDF's Time resource
    ("/3/0/13", {"value": None}),
    ("/3/0/13", {"wrong": 1}),
    ("/3/0/13", "not json"),
    ("/3/0/13", {"value": {"base64": "%%%"}}),
    ("/3/0/4/execute", {"args": 5}),
    ("/3/0/4/attributes", {"pmin": "soon"}),
    ("/3/0/4/attributes", {"colour": 1}),
])
async def test_bad_values_are_400_and_nothing_is_sent(rest_config, running_gateway, path,
                                                      body):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            method = "POST" if path.endswith("execute") else "PUT"
            kwargs = {"data": body} if isinstance(body, str) else {"json": body}
            status, answer = await api(method, f"/endpoints/dev-1/lwm2m{path}", **kwargs)
            assert status == 400, answer
            assert answer["error"] in ("bad_value", "bad_request")
            assert dev.seen == []


async def test_node_that_does_not_answer_is_504(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        dev.sleep()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0/0?timeout=0.3")
            assert (status, body["error"]) == (504, "node_timeout")
            assert "did not answer" in body["message"]
        dev.wake()


async def test_int301_observe_streams_notifications_then_cancel(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            headers = {"Authorization": f"Bearer {VIEWER}"}
            async with s.get(f"{api.base}/endpoints/dev-1/notifications?path=/3303",
                             headers=headers) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("application/x-ndjson")
                status, body = await api("POST", "/endpoints/dev-1/lwm2m/3303/0/5700/observe")
                assert status == 200 and body["observation_id"] is not None
                assert body["values"] == {"/3303/0/5700": 21.5}
                first = json.loads(await stream.content.readline())
                assert first["event"] == "report"
                assert first["records"][0]["path"] == "/3303/0/5700"
                assert first["records"][0]["value"] == 21.5
                dev.set((3303, 0, 5700), 22.75)
                note = json.loads(await stream.content.readline())
                assert note["records"][0]["value"] == 22.75
            status, body = await api("GET", "/endpoints/dev-1/observations", token=VIEWER)
            (obs,) = body["observations"]
            assert obs["paths"] == ["/3303/0/5700"] and obs["live"] is True
            status, body = await api("GET", "/endpoints/dev-1/readings?path=/3303",
                                     token=VIEWER)
            assert body["readings"] == [{"path": "/3303/0/5700", "value": 22.75}]
            status, body = await api("DELETE", "/endpoints/dev-1/lwm2m/3303/0/5700/observe")
            assert status == 200
            status, body = await api("GET", "/endpoints/dev-1/observations", token=VIEWER)
            assert body["observations"] == []


async def test_int103_notification_stream_ends_when_the_node_deregisters(rest_config,
                                                                         running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s, s.get(f"{api.base}/endpoints/dev-1/notifications",
                            headers={"Authorization": f"Bearer {VIEWER}"}) as stream:
            await dev.deregister()
            last = json.loads(await stream.content.readline())
            assert last["event"] == "gone" and last["state"] == "deregistered"
            assert await stream.content.read() == b""


async def test_only_admin_ends_a_registration(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, _ = await api("DELETE", "/endpoints/dev-1", token=OPERATOR)
            assert status == 403
            status, body = await api("DELETE", "/endpoints/dev-1", token=ADMIN)
            assert (status, body["state"]) == (200, "deregistered")
            assert gw.store.registration("dev-1").state == "deregistered"
            status, body = await api("DELETE", "/endpoints/dev-1", token=ADMIN)
            assert (status, body["error"]) == (409, "not_registered")
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0/0")
            assert (status, body["error"]) == (409, "not_registered")


async def test_queue_mode_request_is_accepted_then_delivered_on_update(rest_config,
                                                                       running_gateway):
    cfg = rest_config("queue_awake_s = 0.001\n")
    async with running_gateway(cfg) as gw, FakeClient("sleepy", cfg.coap_uri,
                                                      binding="UQ") as dev:
        await dev.register()
        await asyncio.sleep(0.01)  # past queue_awake_s: the node counts as asleep
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/sleepy/lwm2m/3/0/0?timeout=0.2")
            assert status == 202 and body["queued"] is True, body
            request_id = body["request_id"]
            status, body = await api("GET", f"/endpoints/sleepy/requests/{request_id}",
                                     token=VIEWER)
            assert body["state"] == "pending"
            await dev.update()  # the node wakes: the gateway delivers its queue
            result = await asyncio.wait_for(gw.dm.wait(request_id), 5)
            assert result.values == {"/3/0/0": "aiotkit"}
            status, body = await api("GET", f"/endpoints/sleepy/requests/{request_id}",
                                     token=VIEWER)
            assert body["state"] == "done" and body["result"]["code"] == "2.05"
            status, body = await api("GET", "/endpoints/sleepy/requests/999", token=VIEWER)
            assert status == 404


async def test_openapi_description_is_served(rest_config, running_gateway):
    async with running_gateway(rest_config()) as gw:
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/openapi.json", token=VIEWER)
        assert status == 200 and body["openapi"].startswith("3.")
        assert "/endpoints/{ep}/lwm2m/{path}" in body["paths"]


@pytest.mark.parametrize("text, message", [
    ("", "no tokens"),
    ("viewer short\n", "16 characters"),
    ("root 0123456789abcdef0123\n", "the first word is the role"),
    ("viewer\n", "expected ROLE TOKEN"),
    ("viewer 0123456789abcdef0123\nadmin 0123456789abcdef0123\n", "listed twice"),
])
def test_bad_tokens_files_name_the_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_tokens(text, "tokens")


def test_tokens_file_roles_names_and_hashed_tokens():
    digest = hashlib.sha256(b"a-secret-only-the-client-has").hexdigest()
    tokens = parse_tokens(f"operator 0123456789abcdef0123  # bob\nadmin sha256:{digest} ada\n")
    assert [(t.role, t.name) for t in tokens] == [(Role.operator, "operator#1"),
                                                  (Role.admin, "ada")]
    assert "0123456789abcdef0123" not in repr(tokens)


def test_rest_needs_a_tokens_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("[rest]\nenabled = true\n")
    with pytest.raises(ConfigError, match="rest.tokens_file: required"):
        load_config(path)
    path.write_text('[rest]\nenabled = true\nport = 70000\ntokens_file = "t"\n')
    with pytest.raises(ConfigError, match="rest.port"):
        load_config(path)


async def test_read_and_observe_format_query_overrides_the_negotiated_content_format(
        rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient(
            "dev-1", cfg.coap_uri, formats=(SENML_CBOR, SENML_JSON)) as dev:
        await dev.register()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0?format=senml-json")
            assert status == 200 and body["content_format"] == SENML_JSON
            assert dev.seen[-1].opt.accept == SENML_JSON
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0")
            assert status == 200 and body["content_format"] == SENML_CBOR
            status, body = await api("POST",
                                     "/endpoints/dev-1/lwm2m/3303/0/5700/observe?format=110")
            assert status == 200 and dev.seen[-1].opt.accept == SENML_JSON
            status, body = await api("POST", "/endpoints/dev-1/composite/read?format=110",
                                     json={"paths": ["/3/0/0"]})
            assert status == 200 and body["content_format"] == SENML_JSON
            status, body = await api("GET", "/endpoints/dev-1/lwm2m/3/0?format=tlv")
            assert status == 502 and body["coap"] == "5.00"  # not built in
            assert dev.seen[-1].opt.accept == TLV
            for bad in ("xml", "99999", "-1"):
                status, body = await api("GET", f"/endpoints/dev-1/lwm2m/3/0?format={bad}")
                assert (status, body["error"]) == (400, "bad_query"), bad


async def test_two_nodes_with_one_endpoint_name_are_warned_about_and_counted(
        rest_config, running_gateway, caplog):
    caplog.set_level(logging.INFO, logger="aiotkit.gateway.registry")
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("twin", cfg.coap_uri) as a, \
            FakeClient("twin", cfg.coap_uri) as b:
        s, api = await _api(gw)
        async with s:
            await a.register()
            status, body = await api("GET", "/endpoints/twin", token=VIEWER)
            assert status == 200 and body["takeovers"]["count"] == 0
            for _ in range(3):  # each takes the registration from the other
                await b.register()
                await a.register()
            status, body = await api("GET", "/endpoints/twin", token=VIEWER)
            takeovers = body["takeovers"]
            assert takeovers["count"] == 6 and takeovers["contested"] == 5
            assert takeovers["last_to"] == body["address"]
            assert takeovers["last_from"] != body["address"]
            # a re-Register from the same address is no takeover
            await a.register()
            status, body = await api("GET", "/endpoints/twin", token=VIEWER)
            assert body["takeovers"]["count"] == 6
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "aiotkit.gateway.registry" and r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 5  # rate-limited
    # both addresses: the one taking the registration back, the one it is taken from
    assert takeovers["last_from"] in warnings[0] and takeovers["last_to"] in warnings[0]
    assert "ep=twin" in warnings[0]


async def test_notification_stream_labels_sends_apart_from_the_observations_notifications(
        rest_config, running_gateway):
    """A node that Sends the path it is observed on: each report says whether it is a
    Notification (and of which observation) or a Send; ``?kind=`` keeps one of them."""
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        s, api = await _api(gw)
        headers = {"Authorization": f"Bearer {VIEWER}"}
        base = f"{api.base}/endpoints/dev-1/notifications?path=/3303"
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/notifications?kind=both",
                                     token=VIEWER)
            assert (status, body["error"]) == (400, "bad_query")
            async with s.get(base, headers=headers) as both, \
                    s.get(base + "&kind=notify", headers=headers) as notes, \
                    s.get(base + "&kind=send", headers=headers) as sends:
                status, body = await api("POST",
                                         "/endpoints/dev-1/lwm2m/3303/0/5700/observe")
                obs = body["observation_id"]
                resp = await dev.send(
                    json.dumps([{"n": "/3303/0/5700", "v": 30.5}]).encode(), SENML_JSON)
                assert resp.code.is_successful()
                dev.set((3303, 0, 5700), 19.25)
                seen = [json.loads(await both.content.readline()) for _ in range(3)]
                assert sorted((n["kind"], n.get("observation"), n["records"][0]["value"])
                              for n in seen) == [("notify", obs, 19.25),
                                                 ("notify", obs, 21.5), ("send", None, 30.5)]
                for _ in range(2):
                    note = json.loads(await notes.content.readline())
                    assert (note["kind"], note["observation"]) == ("notify", obs), note
                send = json.loads(await sends.content.readline())
                assert (send["kind"], send["records"][0]["value"]) == ("send", 30.5)


async def test_latest_readings_come_in_numeric_path_order(rest_config, running_gateway):
    cfg = rest_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        sent = [{"n": "/3/0/10", "v": 5}, {"n": "/3/0/2", "vs": "SN-1"},
                {"n": "/33000/0/0", "v": 1}, {"n": "/3/0/9", "v": 80}]
        assert (await dev.send(json.dumps(sent).encode(), SENML_JSON)).code.is_successful()
        s, api = await _api(gw)
        async with s:
            status, body = await api("GET", "/endpoints/dev-1/readings", token=VIEWER)
        assert status == 200
        assert [r["path"] for r in body["readings"]] == [
            "/3/0/2", "/3/0/9", "/3/0/10", "/33000/0/0"]
