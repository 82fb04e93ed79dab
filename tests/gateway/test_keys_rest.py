"""The REST API's OSCORE key routes (``/api/v1/keys``): admin only, no secret in any
answer but the one export per creation or rotation, and every refusal as an error kind
and status. A real gateway with its at-rest key in ``[security] key_file``."""

from __future__ import annotations

import hashlib
import json

import aiohttp
import pytest
from aiotkit.gateway.security import generate_key_hex

VIEWER, OPERATOR, ADMIN = ("viewer-token-0123456789", "operator-token-0123456789",
                           "admin-token-0123456789")


@pytest.fixture
def keys_config(gateway_config, tmp_path, monkeypatch):
    monkeypatch.delenv("AIOT_GATEWAY_KEY", raising=False)
    (tmp_path / "tokens").write_text(
        f"viewer {VIEWER} vera\noperator {OPERATOR} otto\n"
        f"admin sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()} ada\n")
    (tmp_path / "tokens").chmod(0o600)
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)

    def make(key: bool = True) -> object:
        return gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                              + ('[security]\nkey_file = "gw.key"\n' if key else ""))

    return make


async def call(s: aiohttp.ClientSession, gw, method: str, path: str,
               token: str | None = ADMIN, **kwargs) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, gw.rest.url + "/api/v1" + path, headers=headers,
                         **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


ROUTES = [("GET", "/keys", None), ("POST", "/keys", {"endpoint": "n"}),
          ("GET", "/keys/n", None), ("POST", "/keys/n/rotate", None),
          ("POST", "/keys/n/revoke", None), ("POST", "/keys/n/export", None)]


async def test_only_an_admin_may_touch_keys(keys_config, running_gateway):
    async with running_gateway(keys_config()) as gw, aiohttp.ClientSession() as s:
        for token in (VIEWER, OPERATOR):
            for method, path, body in ROUTES:
                status, answer, _ = await call(s, gw, method, path, token, json=body)
                assert (status, answer["error"]) == (403, "forbidden"), (token, path)
        for method, path, body in ROUTES:
            status, _, _ = await call(s, gw, method, path, None, json=body)
            assert status == 401
        assert gw.keys is not None and len(gw.keys) == 0  # nothing was created


async def test_create_list_export_once_rotate_revoke(keys_config, running_gateway):
    async with running_gateway(keys_config()) as gw, aiohttp.ClientSession() as s:
        status, key, _ = await call(s, gw, "POST", "/keys", json={"endpoint": "pump/7"})
        assert status == 201 and key["state"] == "new" and key["gateway_id"] == "00"
        assert 4 <= len(key["node_id"]) <= 14 and "secret" not in key
        status, again, _ = await call(s, gw, "POST", "/keys", json={"endpoint": "pump/7"})
        assert (status, again["error"]) == (409, "key_exists")
        status, listed, _ = await call(s, gw, "GET", "/keys")
        assert status == 200 and [k["endpoint"] for k in listed["keys"]] == ["pump/7"]
        assert listed["next"] is None
        status, one, _ = await call(s, gw, "GET", "/keys/pump%2F7")
        assert status == 200 and one == key

        status, exported, headers = await call(s, gw, "POST", "/keys/pump%2F7/export")
        assert status == 200 and headers["Cache-Control"] == "no-store"
        node = exported["node"]
        assert (node["sender_id"], node["recipient_id"]) == (key["node_id"], "00")
        assert len(bytes.fromhex(node["secret"])) == 16
        assert len(bytes.fromhex(node["salt"])) == 8
        assert exported["gateway_uri"] == gw.coap_uri
        status, second, _ = await call(s, gw, "POST", "/keys/pump%2F7/export")
        assert (status, second["error"]) == (410, "already_exported")
        for path in ("/keys", "/keys/pump%2F7"):  # no answer but the export has it
            _, body, _ = await call(s, gw, "GET", path)
            assert node["secret"] not in str(body) and node["salt"] not in str(body)

        status, rotated, _ = await call(s, gw, "POST", "/keys/pump%2F7/rotate")
        assert status == 200 and rotated["generation"] == 2 and rotated["state"] == "new"
        status, exported2, _ = await call(s, gw, "POST", "/keys/pump%2F7/export")
        assert status == 200 and exported2["node"]["secret"] != node["secret"]

        status, revoked, _ = await call(s, gw, "POST", "/keys/pump%2F7/revoke")
        assert status == 200 and revoked["state"] == "revoked"
        for action in ("export", "rotate", "revoke"):
            status, body, _ = await call(s, gw, "POST", f"/keys/pump%2F7/{action}")
            assert (status, body["error"]) == (409, "revoked"), action
        status, fresh, _ = await call(s, gw, "POST", "/keys", json={"endpoint": "pump/7"})
        assert status == 201 and fresh["node_id"] != key["node_id"]


async def test_bad_requests_and_unknown_endpoints(keys_config, running_gateway):
    async with running_gateway(keys_config()) as gw, aiohttp.ClientSession() as s:
        for body in ({}, {"endpoint": 7}, {"endpoint": "n", "id_context": "xyz"},
                     {"endpoint": "n", "id_context": 5}, {"endpoint": ""},
                     {"endpoint": "a\nb"}, {"endpoint": "n", "id_context": "00" * 33}):
            status, answer, _ = await call(s, gw, "POST", "/keys", json=body)
            assert status == 400, (body, answer)
        for method, path in (("GET", "/keys/ghost"), ("POST", "/keys/ghost/rotate"),
                             ("POST", "/keys/ghost/revoke"), ("POST", "/keys/ghost/export")):
            status, answer, _ = await call(s, gw, method, path)
            assert (status, answer["error"]) == (404, "unknown_key"), path
        status, answer, _ = await call(s, gw, "POST", "/keys/ghost/destroy")
        assert status == 404
        status, answer, _ = await call(s, gw, "POST", "/keys",
                                       json={"endpoint": "n", "id_context": "0102"})
        assert status == 201 and answer["id_context"] == "0102"


async def test_keys_made_offline_are_imported_once_and_checked(keys_config,
                                                                running_gateway):
    # aiot provision --offline made keys the gateway had no way to take
    side = {"sender_id": "a1b2c3d4e5f6", "recipient_id": "00",
            "secret": "00112233445566778899aabbccddeeff", "salt": "0011223344556677"}
    async with running_gateway(keys_config()) as gw, aiohttp.ClientSession() as s:
        for bad in ({"recipient_id": "01"}, {"secret": "0011"}, {"salt": "zz"},
                    {"sender_id": "00"}, {"sender_id": "00" * 8}, {"secret": None}):
            body = {"endpoint": "far-1", "import": dict(side, **bad)}
            status, answer, _ = await call(s, gw, "POST", "/keys", json=body)
            assert status == 400, (bad, answer)
        status, answer, _ = await call(s, gw, "POST", "/keys", json={"endpoint": "far-1",
                                                                     "import": "x"})
        assert status == 400
        status, info, _ = await call(s, gw, "POST", "/keys",
                                     json={"endpoint": "far-1", "import": side})
        assert status == 201 and info["node_id"] == side["sender_id"]
        assert info["state"] == "exported" and side["secret"] not in json.dumps(info)
        status, answer, _ = await call(s, gw, "POST", "/keys/far-1/export")
        assert status == 410  # the node has it; the gateway never gives it out again
        status, answer, _ = await call(s, gw, "POST", "/keys",
                                       json={"endpoint": "far-1", "import": side})
        assert (status, answer["error"]) == (409, "key_exists")
        status, answer, _ = await call(s, gw, "POST", "/keys",  # same node ID, other ep
                                       json={"endpoint": "far-2", "import": side})
        assert status == 409 and "belongs to another endpoint" in answer["message"]


async def test_without_an_at_rest_key_the_routes_say_so(keys_config, running_gateway):
    async with running_gateway(keys_config(key=False)) as gw, aiohttp.ClientSession() as s:
        assert gw.keys is None
        status, answer, _ = await call(s, gw, "GET", "/keys")
        assert (status, answer["error"]) == (503, "keys_unavailable")
        assert "key_file" in answer["message"]


async def test_keys_are_described_in_openapi(keys_config, running_gateway):
    async with running_gateway(keys_config()) as gw, aiohttp.ClientSession() as s:
        status, body, _ = await call(s, gw, "GET", "/openapi.json", VIEWER)
        assert status == 200
        for path in ("/keys", "/keys/{ep}", "/keys/{ep}/rotate", "/keys/{ep}/revoke",
                     "/keys/{ep}/export"):
            assert path in body["paths"]
            for op in body["paths"][path].values():
                assert op["description"].startswith("Role: admin.")
