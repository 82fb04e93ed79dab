"""The REST API's access control and audit trail, over real HTTP against a real gateway:
every route the application registers checked against the role table with every role,
tokens that expired, were revoked or were removed from the file (read again without a
restart), the audit log (one line per state-changing request, no secret in it, fails
closed), and no token value in any log line, error or answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import stat

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from aiotkit.gateway.api import ROUTES, Role, minimum_role, parse_tokens
from aiotkit.gateway.api.rest import OPEN_ROUTES
from aiotkit.gateway.api.tokens import TokenFile
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.security import generate_key_hex
from fakeclient import FakeClient

VIEWER, OPERATOR, ADMIN = ("viewer-token-0123456789", "operator-token-0123456789",
                           "admin-token-0123456789")
EXPIRED, REVOKED = "expired-token-0123456789", "revoked-token-0123456789"
TOKENS = {Role.viewer: VIEWER, Role.operator: OPERATOR, Role.admin: ADMIN}
NAMES = {VIEWER: "vera", OPERATOR: "otto", ADMIN: "ada"}
ALL_TOKENS = (VIEWER, OPERATOR, ADMIN, EXPIRED, REVOKED)
# sample values for the path parameters of a route pattern
SAMPLES = {"ep": "dev-1", "id": "1", "op": "read", "action": "rotate", "tail": "/3/0/0"}
# the operations routes outside /api/v1 that take no token, deliberately (rest.py)
OPEN_PATHS = {path for _m, path, _h in OPEN_ROUTES}


def tokens_text(extra: str = "") -> str:
    admin = hashlib.sha256(ADMIN.encode()).hexdigest()
    return (f"viewer {VIEWER} vera\noperator {OPERATOR} otto\nadmin sha256:{admin} ada"
            f" expires=2100-01-01T00:00:00Z\n"
            f"operator {EXPIRED} eve expires=2020-01-01T00:00:00+01:00\n"
            f"operator {REVOKED} rob revoked\n" + extra)


@pytest.fixture
def sec_config(gateway_config, tmp_path, monkeypatch):
    """``make(extra)``: REST on with the tokens above and an at-rest key (key routes)."""
    monkeypatch.delenv("AIOT_GATEWAY_KEY", raising=False)
    (tmp_path / "tokens").write_text(tokens_text())
    (tmp_path / "tokens").chmod(0o600)
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)

    def make(extra: str = "") -> object:
        return gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                              + extra + '[dm]\nrequest_timeout_s = 2.0\n'
                              '[security]\nkey_file = "gw.key"\n')

    return make


async def call(s: aiohttp.ClientSession, gw, method: str, path: str,
               token: str | None = OPERATOR, **kwargs) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, gw.rest.url + "/api/v1" + path, headers=headers,
                         **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def audit_lines(gw) -> list[dict]:
    path = gw.rest.audit.path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def concrete(canonical: str) -> str:
    """A route pattern with its parameters filled in from ``SAMPLES``."""
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], canonical)


async def test_every_registered_route_is_in_the_role_table_and_enforced_for_every_role(
        sec_config, running_gateway):
    """A route added without a rule in ROUTES fails here; each role gets 403 below the
    route's role and something else at or above it; every non-GET call is audited."""
    async with running_gateway(sec_config()) as gw, aiohttp.ClientSession() as s:
        every = [(r.method, r.resource.canonical) for r in gw.rest.app().router.routes()
                 if r.resource is not None]
        # the token-free operations routes are exactly OPEN_ROUTES (test_ops_metrics.py)
        routes = [r for r in every if r[1] not in OPEN_PATHS]
        assert {r for r in every if r[1] in OPEN_PATHS} == {(m, p) for m, p, _h in OPEN_ROUTES}
        assert len(routes) == len(set(routes)) == len(ROUTES)
        unruled = [r for r in routes if minimum_role(*r) is None]
        assert not unruled, f"routes without a rule in ROUTES: {unruled}"
        calls = 0
        for method, canonical in routes:
            need = minimum_role(method, canonical)
            assert need is not None
            for role, token in TOKENS.items():
                status, body = await call(s, gw, method, concrete(canonical)[len("/api/v1"):],
                                          token)
                if role < need:
                    assert (status, body["error"]) == (403, "forbidden"), (method, canonical,
                                                                          role)
                else:
                    assert status not in (401, 403), (method, canonical, role, body)
                if method != "GET":
                    calls += 1
                    line = audit_lines(gw)[-1]
                    assert (line["token"], line["role"], line["method"], line["route"],
                            line["status"]) == (NAMES[token], role.name, method, canonical,
                                                status)
        lines = audit_lines(gw)
        assert len(lines) == calls  # one line per state-changing call, none for GETs


async def test_the_openapi_description_names_the_role_of_the_route_that_serves_it(
        sec_config, running_gateway):
    async with running_gateway(sec_config()) as gw, aiohttp.ClientSession() as s:
        _, spec = await call(s, gw, "GET", "/openapi.json", VIEWER)
        app = gw.rest.app()
        seen = set()
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                url = "/api/v1" + concrete(path.replace("{path}", "{tail}")
                                           .replace("{tail}", SAMPLES["tail"][1:]))
                match = await app.router.resolve(make_mocked_request(method.upper(), url))
                assert match.http_exception is None, (method, path)
                canonical = match.route.resource.canonical
                role = minimum_role(method.upper(), canonical)
                assert op["description"].startswith(f"Role: {role.name}."), (method, path)
                seen.add((method.upper(), canonical))
        assert seen == {(m, r.resource.canonical) for r in app.router.routes()
                        for m in [r.method]
                        if r.resource.canonical not in OPEN_PATHS}  # every route is described


async def test_no_token_malformed_header_expired_revoked_are_401_lower_role_403(
        sec_config, running_gateway):
    cfg = sec_config()
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev, \
            aiohttp.ClientSession() as s:
        await dev.register()
        url = gw.rest.url + "/api/v1/endpoints/dev-1/lwm2m/3/0/13"
        for header in (None, "Bearer", "Bearer ", "Token " + OPERATOR, OPERATOR,
                       "Bearer " + OPERATOR + " extra", "Basic b3BlcmF0b3I6eA=="):
            headers = {} if header is None else {"Authorization": header}
            async with s.put(url, headers=headers, json={"value": 5}) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]) == (401, "unauthorized"), header
        status, body = await call(s, gw, "PUT", "/endpoints/dev-1/lwm2m/3/0/13", EXPIRED,
                                  json={"value": 5})
        assert (status, body["error"]) == (401, "token_expired")
        assert body["message"] == "the token eve expired at 2019-12-31T23:00:00.000Z"
        status, body = await call(s, gw, "PUT", "/endpoints/dev-1/lwm2m/3/0/13", REVOKED,
                                  json={"value": 5})
        assert (status, body["error"]) == (401, "token_revoked")
        status, body = await call(s, gw, "PUT", "/endpoints/dev-1/lwm2m/3/0/13", VIEWER,
                                  json={"value": 5})
        assert (status, body["error"]) == (403, "forbidden")
        for method, path in (("GET", "/endpoints"), ("GET", "/nowhere")):
            assert (await call(s, gw, method, path, EXPIRED))[0] == 401
            assert (await call(s, gw, method, path, None))[0] == 401
        assert dev.seen == []  # none of them reached the node
        # the refusals made with a known token are audited; the anonymous ones are not
        assert [(a["token"], a["status"]) for a in audit_lines(gw)] == [
            ("eve", 401), ("rob", 401), ("vera", 403)]
        status, body = await call(s, gw, "GET", "", ADMIN)
        assert body["expires"] == "2100-01-01T00:00:00.000Z"


async def test_a_non_utf8_authorization_header_is_401_not_a_crash(sec_config,
                                                                  running_gateway):
    async with running_gateway(sec_config()) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.rest.port)
        writer.write(b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer \xff\xfe-not-utf8-at-all\r\n\r\n")
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]


async def test_a_token_expires_at_its_time_by_the_gateway_clock(sec_config, running_gateway,
                                                                clock, tmp_path):
    (tmp_path / "tokens").write_text(tokens_text(
        f"operator soon-over-0123456789 sam expires={int(clock.now) + 60}\n"))
    async with running_gateway(sec_config()) as gw, aiohttp.ClientSession() as s:
        gw.rest._clock = clock
        assert (await call(s, gw, "GET", "/endpoints", "soon-over-0123456789"))[0] == 200
        clock.advance(59.9)
        assert (await call(s, gw, "GET", "/endpoints", "soon-over-0123456789"))[0] == 200
        clock.advance(0.1)
        status, body = await call(s, gw, "GET", "/endpoints", "soon-over-0123456789")
        assert (status, body["error"]) == (401, "token_expired")


async def test_revoking_or_removing_a_line_applies_without_a_restart_after_the_check_interval(
        sec_config, running_gateway, clock, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aiotkit.gateway.rest")
    tokens = tmp_path / "tokens"
    async with running_gateway(sec_config("tokens_check_s = 30.0\n")) as gw, \
            aiohttp.ClientSession() as s:
        assert gw.rest.tokens is not None
        gw.rest.tokens.monotonic = clock
        gw.rest.tokens.tokens()  # its next look is now 30 s after the clock's now
        tokens.write_text(tokens_text().replace("otto\n", "otto revoked\n").replace(
            f"viewer {VIEWER} vera\n", "") + "viewer new-token-0123456789 nina\n")
        assert (await call(s, gw, "GET", "/endpoints", OPERATOR))[0] == 200  # not yet
        clock.advance(30.0)
        status, body = await call(s, gw, "GET", "/endpoints", OPERATOR)
        assert (status, body["error"]) == (401, "token_revoked")
        status, body = await call(s, gw, "GET", "/endpoints", VIEWER)
        assert (status, body["error"]) == (401, "unauthorized")
        assert (await call(s, gw, "GET", "/endpoints", "new-token-0123456789"))[0] == 200

        tokens.write_text("viewer half-written")  # broken: fail closed, say so once
        clock.advance(30.0)
        for _ in range(3):
            status, body = await call(s, gw, "GET", "/endpoints", ADMIN)
            assert (status, body["error"]) == (503, "tokens_unavailable")
        clock.advance(30.0)
        assert (await call(s, gw, "GET", "/endpoints", ADMIN))[0] == 503
        tokens.unlink()  # gone: still closed
        clock.advance(30.0)
        assert (await call(s, gw, "GET", "/endpoints", ADMIN))[0] == 503
        tokens.write_text(tokens_text())
        clock.advance(30.0)
        assert (await call(s, gw, "GET", "/endpoints", ADMIN))[0] == 200
        assert (await call(s, gw, "GET", "/endpoints", OPERATOR))[0] == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "tokens:1: " in errors[0] and "cannot read" in errors[1]


def test_a_zero_check_interval_reads_the_file_at_every_request(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"viewer {VIEWER}\n")
    tf = TokenFile(path, 0.0)
    tf.load()
    path.write_text(f"viewer {VIEWER} revoked\n")
    assert tf.tokens()[0].revoked


async def test_audit_lines_name_who_what_and_result_never_a_secret(sec_config,
                                                                   running_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = sec_config()
    answers = []
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev, \
            aiohttp.ClientSession() as s:
        await dev.register()
        for method, path, token, body in (
                ("PUT", "/endpoints/dev-1/lwm2m/3/0/13", OPERATOR, {"value": 1_800_000_000}),
                ("POST", "/endpoints/dev-1/lwm2m/3/0/4/execute", OPERATOR, None),
                ("POST", "/endpoints/dev-1/composite/read", OPERATOR, {"paths": ["/3/0/0"]}),
                ("POST", "/keys", ADMIN, {"endpoint": "dev-1"}),
                ("POST", "/keys/dev-1/export", ADMIN, None),
                ("POST", "/keys/dev-1/rotate", ADMIN, None),
                ("DELETE", "/endpoints/dev-1", ADMIN, None),
                ("GET", "/endpoints/dev-1", VIEWER, None)):
            answers.append(await call(s, gw, method, path, token, json=body))
        secret = answers[4][1]["node"]["secret"]
        assert answers[4][0] == 200 and len(secret) == 32
        for status, _ in answers:
            assert status in (200, 201)
        lines = audit_lines(gw)
        audit = gw.rest.audit.path
    text = audit.read_text()
    assert stat.S_IMODE(os.stat(audit).st_mode) == 0o600
    assert audit == cfg.gateway.db.with_suffix(".audit.jsonl")
    assert [(a["method"], a["route"], a["params"], a["token"], a["role"], a["status"])
            for a in lines] == [
        ("PUT", "/api/v1/endpoints/{ep}/lwm2m{tail}", {"ep": "dev-1", "tail": "/3/0/13"},
         "otto", "operator", 200),
        ("POST", "/api/v1/endpoints/{ep}/lwm2m{tail}",
         {"ep": "dev-1", "tail": "/3/0/4/execute"}, "otto", "operator", 200),
        ("POST", "/api/v1/endpoints/{ep}/composite/{op}", {"ep": "dev-1", "op": "read"},
         "otto", "operator", 200),
        ("POST", "/api/v1/keys", {}, "ada", "admin", 201),
        ("POST", "/api/v1/keys/{ep}/{action}", {"ep": "dev-1", "action": "export"}, "ada",
         "admin", 200),
        ("POST", "/api/v1/keys/{ep}/{action}", {"ep": "dev-1", "action": "rotate"}, "ada",
         "admin", 200),
        ("DELETE", "/api/v1/endpoints/{ep}", {"ep": "dev-1"}, "ada", "admin", 200)]
    assert lines[2]["detail"] == {"paths": ["/3/0/0"], "count": 1}
    assert lines[3]["detail"] == {"endpoint": "dev-1"}
    for a in lines:
        assert a["remote"] == "127.0.0.1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["time"])
    # no secret anywhere: not the node's key, not the written value, not any token
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret_text in (secret, secret.upper(), *ALL_TOKENS):
        assert secret_text not in text and secret_text not in logged
    assert "1800000000" not in text  # request bodies stay out
    for _, body in answers:
        assert not any(t in json.dumps(body) for t in ALL_TOKENS)


async def test_an_audit_log_that_cannot_be_opened_refuses_changes_but_not_reads(
        sec_config, running_gateway, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aiotkit.gateway.rest")
    (tmp_path / "audit").mkdir()
    cfg = sec_config('audit_file = "audit/rest.jsonl"\n')
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev, \
            aiohttp.ClientSession() as s:
        await dev.register()
        (tmp_path / "audit").rename(tmp_path / "gone")  # the folder went away
        for _ in range(3):
            status, body = await call(s, gw, "POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
            assert (status, body["error"]) == (503, "audit_unavailable"), body
        status, body = await call(s, gw, "POST", "/keys", ADMIN, json={"endpoint": "n"})
        assert status == 503 and len(gw.keys) == 0
        assert dev.executed == []  # refused before it ran
        assert (await call(s, gw, "GET", "/endpoints/dev-1/lwm2m/3/0/0"))[0] == 200
        (tmp_path / "gone").rename(tmp_path / "audit")
        status, body = await call(s, gw, "POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
        assert status == 200 and len(dev.executed) == 1
        assert [a["status"] for a in audit_lines(gw)] == [200]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "audit log" in errors[0].getMessage()


async def test_a_line_lost_after_its_request_ran_blocks_the_next_change_until_written(
        sec_config, running_gateway, tmp_path):
    """/dev/full opens but every write fails (ENOSPC): the first request runs, its line
    is held back, and the next state-changing request is refused until the line is out."""
    cfg = sec_config('audit_file = "/dev/full"\n')
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev, \
            aiohttp.ClientSession() as s:
        await dev.register()
        status, _ = await call(s, gw, "POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
        assert status == 200 and len(dev.executed) == 1  # it ran; its line is held
        status, body = await call(s, gw, "POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
        assert (status, body["error"]) == (503, "audit_unavailable")
        assert len(dev.executed) == 1
        gw.rest.audit.path = tmp_path / "fresh.jsonl"  # space again
        status, _ = await call(s, gw, "POST", "/endpoints/dev-1/lwm2m/3/0/4/execute")
        assert status == 200 and len(dev.executed) == 2
        lines = audit_lines(gw)
        assert [a["status"] for a in lines] == [200, 200]  # the held line first
        assert lines[0]["time"] <= lines[1]["time"]


@pytest.mark.parametrize("line, message", [
    (f"{VIEWER} viewer\n", "the first word is the role"),  # swapped: not echoed
    (f"viewer {VIEWER} vera expires=tomorrow\n", "expires= is ISO 8601"),
    (f"viewer {VIEWER} vera expires=2027-01-31T00:00:00\n", "needs its time zone"),
    (f"viewer {VIEWER} vera expires=2027-01-31\n", "needs its time zone"),
    (f"viewer {VIEWER} vera bob\n", "one NAME at most"),
    (f"viewer {VIEWER} vera revoked revoked\n", "each at most once"),
    (f"viewer {VIEWER} vera colour=red\n", "each at most once"),
])
def test_bad_token_lines_name_the_line_never_the_token(line, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_tokens(line, "tokens")
    assert "tokens:1:" in str(info.value) and VIEWER not in str(info.value)


def test_old_lines_still_parse_and_the_new_words_come_in_any_order():
    digest = hashlib.sha256(VIEWER.encode()).hexdigest()
    tokens = parse_tokens(f"operator {OPERATOR}\nviewer sha256:{digest} vera\n"
                          f"admin {ADMIN} revoked expires=1801353600 ada\n"
                          f"viewer {EXPIRED} expires=2027-01-31T01:00:00+01:00\n")
    assert [(t.role, t.name, t.expires, t.revoked) for t in tokens] == [
        (Role.operator, "operator#1", None, False), (Role.viewer, "vera", None, False),
        (Role.admin, "ada", 1801353600.0, True),
        (Role.viewer, "viewer#4", 1801353600.0, False)]


def test_rest_config_keys_resolve_and_validate(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\ndb = "data/gw.db"\n[rest]\n')
    rest = load_config(path).rest
    assert rest.audit_file == str(tmp_path / "data" / "gw.audit.jsonl")
    assert (rest.tokens_check_s, rest.tls_cert, rest.tls_key) == (5.0, "", "")
    path.write_text('[rest]\naudit_file = "logs/a.jsonl"\ntls_cert = "c.pem"\n'
                    'tls_key = "k.pem"\ntokens_check_s = 0\n')
    rest = load_config(path).rest
    assert rest.audit_file == str(tmp_path / "logs" / "a.jsonl")
    assert (rest.tls_cert, rest.tls_key) == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    for text, message in (('[rest]\ntls_cert = "c.pem"\n', "rest.tls_key: rest.tls_cert and"),
                          ('[rest]\ntls_key = "k.pem"\n', "rest.tls_key"),
                          ("[rest]\ntokens_check_s = -1\n", "rest.tokens_check_s"),
                          ('[gateway]\ndb = "x.db"\n[rest]\naudit_file = "x.db"\n',
                           "rest.audit_file: must not be the database")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)
