"""Hostile path parameters against the REST API, sent as raw request lines over TCP (so no
client library normalises them): ``../`` plain and percent-encoded, NUL, control
characters, very long values, non-UTF-8 bytes, odd digits. Each is refused 400 or 404
(never a 500), nothing reaches the node, no file outside the gateway's own changes, and
each state-changing one leaves exactly one well-formed audit line."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakeclient import FakeClient
from test_rest_security import ADMIN, OPERATOR, audit_lines, sec_config  # noqa: F401

E = b"/api/v1/endpoints"
K = b"/api/v1/keys"
CASES = [  # method, request target, status, error kind (None: aiohttp's own plain 400)
    (b"GET", E + b"/..%2F..%2Fgateway.toml", 400, "bad_endpoint"),
    (b"GET", E + b"/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 400, "bad_endpoint"),
    (b"DELETE", E + b"/..%2f..", 400, "bad_endpoint"),
    (b"GET", E + b"/dev-1/lwm2m/../../../keys", 400, "bad_path"),
    (b"POST", E + b"/dev-1/lwm2m/%2e%2e/%2e%2e/%2e%2e/keys", 400, "bad_path"),
    (b"PUT", E + b"/dev-1/lwm2m/3/0/..%2f..%2f13", 400, "bad_path"),
    (b"GET", E + b"/dev-1%00", 400, "bad_endpoint"),
    (b"POST", E + b"/dev-1%0Aforged%20line/lwm2m/3/0/4/execute", 400, "bad_endpoint"),
    (b"PUT", E + b"/dev-1/lwm2m/3/0%00/13", 400, "bad_path"),
    (b"GET", E + b"/" + b"a" * 300, 400, "bad_endpoint"),
    (b"POST", E + b"/" + b"a" * 300 + b"/lwm2m/3/0/4/execute", 400, "bad_endpoint"),
    (b"GET", E + b"/" + b"a" * 9000, 400, None),
    (b"GET", E + b"/%ff%fe", 404, "unknown_endpoint"),
    (b"GET", E + b"/\xff\xfe", 400, None),
    (b"GET", E + b"/dev-1/requests/99999999999999999999999", 404, "not_found"),
    (b"GET", E + b"/dev-1/requests/%d9%a3", 404, "not_found"),  # ARABIC-INDIC THREE
    (b"GET", E + b"/dev-1/readings?path=%00", 400, "bad_path"),
    (b"GET", E + b"/dev-1/notifications?path=/3/..", 400, "bad_path"),
    (b"GET", K + b"/..%2F..%2Fgw.key", 404, "unknown_key"),
    (b"POST", K + b"/..%2F..%2Fgw.key/export", 404, "unknown_key"),
    (b"POST", K + b"/a%00b/export", 400, "bad_endpoint"),
    (b"POST", K + b"/a%0D%0Ab/rotate", 400, "bad_endpoint"),
    (b"GET", K + b"/" + b"k" * 300, 400, "bad_endpoint"),
    (b"POST", K + b"/%ff%fe/revoke", 404, "unknown_key"),
    (b"POST", K + b"/pump/7/export", 404, "not_found"),
]


async def raw(port: int, method: bytes, target: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Authorization: Bearer " + ADMIN.encode() + b"\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def parsed(answer: bytes) -> tuple[int, dict | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"application/json" not in head:
        return status, None
    return status, json.loads(body)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` but the gateway's own database and audit log."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".db" not in p.name and "audit" not in p.name}


@pytest.mark.timeout_s(60)
async def test_hostile_path_parameters_are_refused_and_touch_nothing(
        sec_config, running_gateway, tmp_path):  # noqa: F811
    cfg = sec_config()
    (tmp_path.parent / "victim").write_text("outside")
    before = snapshot(tmp_path)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        state_changing = 0
        for method, target, want, kind in CASES:
            status, body = parsed(await raw(gw.rest.port, method, target))
            assert status == want, (method, target[:80], status, body)
            assert (body or {}).get("error") == kind, (method, target[:80], body)
            if method != b"GET" and kind is not None:
                state_changing += 1
        for endpoint in ("\udcff", "a\x00b", "k" * 256, ""):  # in a create's body
            text = json.dumps({"endpoint": endpoint}).encode()
            status, body = parsed(await raw(gw.rest.port, b"POST", K, text))
            assert (status, body["error"]) == (400, "bad_endpoint"), endpoint[:10]
            state_changing += 1
        assert dev.seen == [] and dev.executed == []
        assert len(gw.keys) == 0
        lines = audit_lines(gw)  # one JSON line each: a %0A in a name splits nothing
        assert len(lines) == state_changing
        assert all(line["token"] == "ada" and line["status"] in (400, 404)
                   for line in lines)
        forged = next(a for a in lines if "forged" in a["params"].get("ep", ""))
        assert forged["params"]["ep"] == "dev-1\nforged line"
    assert snapshot(tmp_path) == before
    assert (tmp_path.parent / "victim").read_text() == "outside"


async def test_an_operator_cannot_reach_admin_routes_through_dot_segments(
        sec_config, running_gateway):  # noqa: F811
    async with running_gateway(sec_config()) as gw:
        for target in (E + b"/dev-1/lwm2m/../../../keys",
                       E + b"/dev-1/lwm2m/%2e%2e/%2e%2e/%2e%2e/keys",
                       E + b"/dev-1/../../keys"):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.rest.port)
            writer.write(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Authorization: Bearer " + OPERATOR.encode() + b"\r\n"
                         b"Content-Length: 17\r\n\r\n" + b'{"endpoint": "x"}')
            status, body = parsed(await reader.read())
            writer.close()
            await writer.wait_closed()
            assert status in (400, 403, 404), (target, status, body)
        assert len(gw.keys) == 0
