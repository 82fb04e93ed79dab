"""The gateway's REST API: HTTP + JSON over the registry, the store and ``Gateway.dm``.

Served with aiohttp on ``[rest] host:port`` (loopback by default). Every request carries
``Authorization: Bearer TOKEN``; the tokens file (``[rest] tokens_file``) gives each token
a role, and each role may do what the roles below it may:

========  ======================================================================
role      may
========  ======================================================================
viewer    list endpoints, registration details, events, latest readings,
          observations, queued requests and their results
operator  Read, Write, Execute, Create, Delete, Discover, Write-Attributes,
          Observe / Cancel, composite Read / Observe
admin     also end a registration (``DELETE /api/v1/endpoints/{ep}``), manage
          the nodes' OSCORE keys (``/api/v1/keys``), upload OTA images and create,
          start, pause, resume and abort OTA campaigns (viewers read them)
========  ======================================================================

Tokens file (``gateway/api/tokens.py``): one ``ROLE TOKEN [NAME] [expires=TIME] [revoked]``
per line; ``TOKEN`` may be ``sha256:HEX`` so the file need not hold the secret. Tokens
are compared by their SHA-256 in constant time; the file is read again when it changed
(``[rest] tokens_check_s``), so removing or revoking a line takes effect without a
restart. Logs and the audit log name a token by ``NAME``, never by its value.

Every route's minimum role is one table, ``ROUTES``: the application is built from it,
and a request is authenticated (401 before anything else, unknown routes included) and
checked against its route's role in one middleware, before any handler. Every
state-changing request (any method but GET) is recorded in the audit log
(``gateway/api/audit.py``, ``[rest] audit_file``); when it cannot be written the request
is refused 503 ``audit_unavailable`` (fails closed). With ``[rest] tls_cert`` and
``tls_key`` the API is served over TLS only.

Errors are JSON ``{"error": KIND, "message": TEXT}``, plus ``"coap": "4.04"`` when the node
answered with an error code: 400 bad path or value (or a malformed endpoint name), 401
missing or unknown token (``unauthorized``), expired (``token_expired``) or revoked
(``token_revoked``), 403 the role may not, 404 unknown endpoint (or route), 409 the
endpoint is not registered, 502 the node refused (its CoAP code in ``coap``), 503 the
audit log or the tokens file cannot be used, 504 the node did not answer in time. The routes
are described in ``gateway/api/openapi.json`` (also served at ``/api/v1/openapi.json``).

Read, Observe and composite Read / Observe take ``?format=NAME`` (``senml-json``,
``senml-cbor``, ``tlv``, ``lwm2m-cbor``, ``text``, ``opaque``, or the number): the
Content-Format to ask the node for, instead of the one negotiated from its registration
(``dm.requests``). Endpoint details include ``takeovers`` (``lwm2m.registry``).

OSCORE keys (``gateway/security``; admin only): ``GET /api/v1/keys`` lists the contexts
(``?after=EP&limit=N`` pages), ``POST /api/v1/keys {"endpoint": EP, "id_context": HEX?}``
creates one (201); with ``"import": {"sender_id", "recipient_id", "secret", "salt"}``
(hex, the node's side, as ``aiot provision --offline`` saves it) it takes keys made
elsewhere instead (201, counted as exported). ``GET /api/v1/keys/{ep}`` shows one,
``POST .../rotate`` and ``POST .../revoke`` do that; none of them ever answers a
secret. The node's side (master
secret included) leaves the gateway only through ``POST /api/v1/keys/{ep}/export``, and
only once per creation or rotation (then 410 ``already_exported``: a second copy needs a
rotation, which the next export shows). 503 ``keys_unavailable`` when the gateway has no
at-rest key (``[security] key_file`` or ``AIOT_GATEWAY_KEY``).

OTA (``gateway/ota``): ``POST /api/v1/ota/images?board=B&payload_type=T`` takes the
image as the raw request body (``application/octet-stream``, at most ``[ota]
max_image_bytes``): verified against ``[ota] trust_file`` and the board's slot, 201 with
its metadata (200 if those bytes were stored already), or 422 ``image_rejected`` with the
verifier's ``reason``, nothing stored. ``GET .../ota/images[/{sha256}]``. Campaigns:
``POST /api/v1/ota/campaigns`` (a draft; ``"start": true`` starts it), ``GET`` one with
its per-wave and per-node progress, ``POST .../{id}/start|pause|resume|abort``; 409
``wrong_state`` when the campaign's state does not allow it.

Operations (``OPEN_ROUTES``, outside ``/api/v1``, deliberately without a token and never
audited): ``GET /health/live``, ``GET /health/ready`` (503 with the failing checks;
``gateway/ops/health.py``) and ``GET /metrics`` (Prometheus text, ``gateway/ops/metrics.py``;
a token of any role with ``[rest] metrics_token_required``).

The notification stream (``.../notifications``) labels each report with its ``kind``:
``notify``, a Notification of the observation ``observation``, or ``send``, a report the
node Sent; ``?kind=`` (or ``?observation=ID``) follows only those, so a client observing a
path the node also Sends sees each value once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import importlib.resources
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import OpsConfig, RestConfig
from ..errors import GatewayError, RequestError
from ..logs import PeerLog
from ..lwm2m import codecs
from ..lwm2m.linkformat import parse_link_format
from ..lwm2m.params import valid_endpoint
from ..lwm2m.paths import PathError, format_path, is_under, parse_path
from ..ota.errors import OtaServiceError
from .audit import AuditLog, AuditUnavailable, clip
from .tokens import (
    Role,
    Token,
    TokenFile,
    TokensUnavailable,
    load_tokens,
    parse_tokens,
    token_digest,
    utc_text,
)

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Middleware

    from ..analytics.engine import Analytics
    from ..app import Gateway
    from ..dm import DeviceManagement
    from ..lwm2m.registry import RegistryEvent
    from ..ota import OtaService
    from ..ota.models import ModelService
    from ..security import KeyStore
    from ..storage.api import OtaImageRow, Registration

__all__ = ["ROUTES", "ApiError", "RestApi", "Role", "Token", "load_tokens", "minimum_role",
           "parse_tokens"]

log = logging.getLogger("aiotkit.gateway.rest")
_peer_log = PeerLog(log)  # what clients of the API make us write

API = "/api/v1"
MAX_BODY_BYTES = 1 << 20
DEFAULT_QUEUE_WAIT_S = 10.0  # how long a request to a queue-mode node waits before 202
MAX_TIMEOUT_S = 300.0
ENDPOINTS_PAGE = 1000  # endpoints per page of GET /api/v1/endpoints (?after=NAME&limit=N)
STREAM_QUEUE = 256  # reports a slow notification reader may fall behind by
MAX_KEY_ENDPOINT = 255  # an OSCORE context's endpoint name (gateway/security/keystore.py)
_REQUEST_ID = re.compile(r"[0-9]{1,19}")  # a request id: ASCII digits, below 2**63
_OPS = ("execute", "discover", "observe", "attributes")
_READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})  # methods that are not audited
_T = TypeVar("_T")

V, O, A = Role.viewer, Role.operator, Role.admin
# Every route of the API: method, path under /api/v1, the least role that may call it,
# and the RestApi method that serves it. The application is built from this table and
# the middleware checks each request against it: a route cannot exist without a rule.
ROUTES: tuple[tuple[str, str, Role, str], ...] = (
    ("GET", "", V, "_whoami"),
    ("GET", "/openapi.json", V, "_openapi"),
    ("GET", "/uplink", V, "_uplink"),
    ("GET", "/endpoints", V, "_endpoints"),
    ("GET", "/endpoints/{ep}", V, "_endpoint"),
    ("DELETE", "/endpoints/{ep}", A, "_delete_registration"),
    ("GET", "/endpoints/{ep}/events", V, "_events"),
    ("GET", "/endpoints/{ep}/readings", V, "_readings"),
    ("GET", "/endpoints/{ep}/observations", V, "_observations"),
    ("GET", "/endpoints/{ep}/notifications", V, "_notifications"),
    ("GET", "/endpoints/{ep}/requests", V, "_requests"),
    ("GET", "/endpoints/{ep}/requests/{id}", V, "_request"),
    ("POST", "/endpoints/{ep}/composite/{op}", O, "_composite"),
    ("GET", "/endpoints/{ep}/lwm2m{tail:(/.*)?}", O, "_lwm2m"),
    ("PUT", "/endpoints/{ep}/lwm2m{tail:(/.*)?}", O, "_lwm2m"),
    ("POST", "/endpoints/{ep}/lwm2m{tail:(/.*)?}", O, "_lwm2m"),
    ("DELETE", "/endpoints/{ep}/lwm2m{tail:(/.*)?}", O, "_lwm2m"),
    ("GET", "/keys", A, "_keys_list"),
    ("POST", "/keys", A, "_keys_create"),
    ("GET", "/keys/{ep}", A, "_keys_get"),
    ("POST", "/keys/{ep}/{action}", A, "_keys_action"),
    ("GET", "/ota/images", V, "_ota_images"),
    ("POST", "/ota/images", A, "_ota_upload"),
    ("GET", "/ota/images/{id}", V, "_ota_image"),
    ("GET", "/ota/campaigns", V, "_ota_campaigns"),
    ("POST", "/ota/campaigns", A, "_ota_create"),
    ("GET", "/ota/campaigns/{id}", V, "_ota_campaign"),
    ("POST", "/ota/campaigns/{id}/start", A, "_ota_start"),
    ("POST", "/ota/campaigns/{id}/pause", A, "_ota_pause"),
    ("POST", "/ota/campaigns/{id}/resume", A, "_ota_resume"),
    ("POST", "/ota/campaigns/{id}/abort", A, "_ota_abort"),
    ("GET", "/ota/models", V, "_ota_models"),
    ("GET", "/ota/models/candidates", V, "_ota_candidates"),
    ("GET", "/alerts", V, "_alerts"),
    ("GET", "/alerts/{id}", V, "_alert"),
    ("POST", "/alerts/{id}/ack", O, "_alert_ack"),
    ("GET", "/endpoints/{ep}/drift", V, "_drift"),
    ("GET", "/endpoints/{ep}/rollups", V, "_rollups"),
)
del V, O, A

# Routes outside /api/v1 that take NO token, deliberately: a supervisor's liveness and
# readiness probes and a Prometheus scraper hold none (``/metrics`` needs a token of any
# role with ``[rest] metrics_token_required``). Read-only, never audited, answering no
# secret and no endpoint name; the middleware lets exactly these paths (GET) through
# without authentication. Method, path, handler.
OPEN_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/health/live", "_health_live"),
    ("GET", "/health/ready", "_health_ready"),
    ("GET", "/metrics", "_metrics"),
)
_OPEN_PATHS = frozenset(path for _m, path, _h in OPEN_ROUTES)


def _hex_field(raw: Any, name: str) -> bytes:
    """A request's hex string field as bytes (400 otherwise)."""
    try:
        return bytes.fromhex(raw)
    except (ValueError, TypeError):
        raise ApiError(400, "bad_value", f"{name} is a hex string") from None


def _canonical(path: str) -> str:
    """A route path as aiohttp's ``resource.canonical`` shows it: ``{tail:RE}`` -> ``{tail}``."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


_ROLES: dict[tuple[str, str], Role] = {(m, API + _canonical(p)): role
                                       for m, p, role, _h in ROUTES}


def minimum_role(method: str, canonical: str) -> Role | None:
    """The least role that may call the route ``method canonical`` (``ROUTES``), None for
    a route the table does not know (refused)."""
    return _ROLES.get((method, canonical))


class ApiError(GatewayError):
    """An HTTP error answer: status, a short kind, a message, the node's CoAP code."""

    def __init__(self, status: int, kind: str, message: str, coap: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.coap = coap
        self.headers = dict(headers or {})

        self.result: dict[str, Any] | None = None  # the node's answer, when there is one

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.kind, "message": self.message}
        if self.coap is not None:
            out["coap"] = self.coap
        if self.result is not None:
            out["result"] = self.result
        return out


def json_value(value: Any) -> Any:
    """A stored or decoded value as JSON: opaque bytes as ``{"base64": ...}``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _registration_json(reg: Registration) -> dict[str, Any]:
    try:
        objects = parse_link_format(reg.object_links) if reg.object_links else []
    except GatewayError:
        objects = []
    return {
        "endpoint": reg.endpoint,
        "state": reg.state,
        "reg_id": reg.reg_id,
        "address": f"[{reg.host}]:{reg.port}" if ":" in reg.host else f"{reg.host}:{reg.port}",
        "lifetime": reg.lifetime,
        "binding": reg.binding,
        "lwm2m_version": reg.lwm2m_version,
        "registered_at": reg.registered_at,
        "updated_at": reg.updated_at,
        "expires_at": reg.expires_at,
        "object_links": reg.object_links,
        "objects": objects,
    }


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def _json(body: Any, *, status: int = 200,
          headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer (aiohttp is imported when the API runs)."""
    from aiohttp import web

    return web.json_response(body, status=status, headers=headers)


class RestApi:
    """The REST API of one gateway: ``await start()``, ``url``, ``await shutdown()``.
    ``tokens``: a fixed list instead of ``[rest] tokens_file`` (never read again).
    ``RestApi.ops(gateway, config.ops)``: ``OPEN_ROUTES`` only, on the ``[ops]`` port."""

    def __init__(self, gateway: Gateway, config: RestConfig,
                 tokens: list[Token] | None = None, *, keys: KeyStore | None = None,
                 open_only: bool = False) -> None:
        self._gateway = gateway
        self._config = config
        self._open_only = open_only
        self._tokens = [] if open_only else tokens
        self._token_file: TokenFile | None = None
        self._keys = keys
        self._runner: web.AppRunner | None = None
        self._tcp: asyncio.Server | None = None
        self._accept_guard: _AcceptGuard | None = None
        self._streams: set[tuple[str, asyncio.Queue[RegistryEvent | None]]] = set()
        self._clock = time.time  # wall clock: token expiry, report and audit times
        self.audit = AuditLog(config.audit_file, clock=lambda: self._clock())
        self.port: int | None = None

    @classmethod
    def ops(cls, gateway: Gateway, config: OpsConfig) -> RestApi:
        """``/health/live``, ``/health/ready`` and ``/metrics`` alone, without a token
        (``[ops]``): every other path is 404; nothing is audited."""
        return cls(gateway, RestConfig(enabled=True, host=config.host, port=config.port,
                                       max_connections=config.max_connections),
                   open_only=True)

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT`` where the API is served (after ``start``)."""
        host = self._config.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def tokens(self) -> TokenFile | None:
        """The tokens file as read (None with a fixed list of tokens)."""
        return self._token_file

    async def start(self) -> None:
        """Read the tokens and start serving; ``GatewayError`` if the port is taken,
        ``ConfigError`` if the tokens file or the TLS certificate cannot be used."""
        from aiohttp import web

        from .tls import server_context

        if self._tokens is None:
            self._token_file = TokenFile(self._config.tokens_file,
                                         self._config.tokens_check_s)
            self._token_file.load()
        tls = server_context(self._config)
        if not self._open_only:
            self.audit.check_mode()
        # keepalive_timeout is aiohttp's one timer on a connection that has no whole
        # request head: armed when it opens and after each response, it closes a
        # connection that sent nothing or only part of its headers (header_timeout_s)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0,
                               keepalive_timeout=self._config.header_timeout_s)
        await runner.setup()
        loop = asyncio.get_running_loop()
        limiter = _ConnectionLimit(runner.server, self._config.max_connections)
        try:
            # the TLS handshake comes before aiohttp sees the connection: it has the
            # header timeout of its own
            tcp = await loop.create_server(
                limiter, self._config.host, self._config.port, reuse_address=True,
                backlog=128, ssl=tls,
                ssl_handshake_timeout=self._config.header_timeout_s if tls else None)
        except OSError as e:
            await runner.cleanup()
            raise GatewayError(f"cannot serve the REST API on {self._config.host}:"
                               f"{self._config.port}: {e.strerror or e}") from e
        self._runner, self._tcp = runner, tcp
        self._accept_guard = _AcceptGuard(loop, tcp)
        if not self._open_only:
            self._gateway.registry.add_listener(self._on_event)
        sockets = list(tcp.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self._config.port
        if (self._config.host not in ("127.0.0.1", "::1", "localhost") and tls is None
                and not self._open_only):
            log.warning("REST API on %s: reachable from the network, and plain HTTP (set"
                        " [rest] tls_cert and tls_key, or put a TLS proxy in front)",
                        self._config.host)

    async def shutdown(self) -> None:
        for _ep, queue in list(self._streams):  # end the notification streams first
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            tcp.close()  # accept no more; the runner then closes the connections
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if tcp is not None:
            await tcp.wait_closed()
        if self._accept_guard is not None:
            self._accept_guard.close()
            self._accept_guard = None

    # -- application -------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: the routes of ``ROUTES``, behind ``_middleware``."""
        from aiohttp import web

        app = web.Application(middlewares=[self._middleware],
                              client_max_size=MAX_BODY_BYTES)
        for method, path, _role, handler in () if self._open_only else ROUTES:
            app.router.add_route(method, API + path, getattr(self, handler))
        for method, path, handler in OPEN_ROUTES:
            app.router.add_route(method, path, getattr(self, handler))
        return app

    def _admit(self, request: web.Request) -> Token:
        """Authenticate the request and check its route's role (``ROUTES``)."""
        token = self._authenticate(request)
        match = request.match_info
        resource = match.route.resource
        if match.http_exception is not None or resource is None:
            need = Role.viewer  # no such route or method: any valid token may learn that
        else:
            found = minimum_role(request.method, resource.canonical)
            if found is None:  # a route registered outside the table: refused
                log.error("REST API: %s %s has no rule in ROUTES; refused", request.method,
                          resource.canonical)
                raise ApiError(403, "forbidden", "this route has no access rule")
            need = found
        if token.role < need:
            raise ApiError(403, "forbidden", f"this needs the {need.name} role; the token"
                           f" has {token.role.name}")
        _exchange(request).admitted = True
        return token

    def _authenticate(self, request: web.Request) -> Token:
        """The request's token (``_Exchange.token`` once known, even expired or revoked);
        ApiError 401 otherwise. The token's value is never logged nor answered."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="aiot"'}
        if scheme.lower() != "bearer" or not value.strip():
            _peer_log.info("rest-no-token", "REST API: a request without a bearer token"
                           " from %s", request.remote)
            raise ApiError(401, "unauthorized", "missing token (Authorization: Bearer TOKEN)",
                           headers=challenge)
        if self._token_file is not None:
            tokens = self._token_file.tokens()
        else:
            tokens = self._tokens or []
        digest = token_digest(value.strip())
        found = None
        for t in tokens:  # compare with every token: no early exit on a match
            if hmac.compare_digest(t.digest, digest):
                found = t
        if found is None:
            _peer_log.info("rest-bad-token", "REST API: an unknown token from %s",
                           request.remote)
            raise ApiError(401, "unauthorized", "unknown token", headers=challenge)
        _exchange(request).token = found
        if found.revoked:
            _peer_log.warning("rest-revoked", "REST API: revoked token %s used from %s",
                              found.name, request.remote)
            raise ApiError(401, "token_revoked", f"the token {found.name} is revoked",
                           headers=challenge)
        if found.expires is not None and found.expired(self._clock()):
            _peer_log.warning("rest-expired", "REST API: expired token %s used from %s",
                              found.name, request.remote)
            raise ApiError(401, "token_expired", f"the token {found.name} expired at"
                           f" {utc_text(found.expires)}", headers=challenge)
        return found

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Admit the request, open its audit line if it changes state, run the handler;
        every error as a JSON answer."""
        from aiohttp import web

        ex = _exchange(request)
        try:
            self._admit(request)
            if request.method not in _READ_ONLY:
                ex.audit_fd = self.audit.begin()
            return await handler(request)
        except ApiError as e:
            return web.json_response(e.body(), status=e.status, headers=e.headers)
        except AuditUnavailable as e:
            ex.audit_refused = True
            return web.json_response({"error": "audit_unavailable", "message": str(e)},
                                     status=503, headers={"Retry-After": "10"})
        except TokensUnavailable:
            return web.json_response({"error": "tokens_unavailable", "message":
                                      "the tokens file cannot be used; see the gateway's log"},
                                     status=503, headers={"Retry-After": "10"})
        except web.HTTPException as e:
            if e.status < 400:
                raise
            kind = {404: "not_found", 405: "method_not_allowed",
                    413: "too_large"}.get(e.status, "http_error")
            return web.json_response({"error": kind, "message": e.reason}, status=e.status)
        except GatewayError as e:
            mapped = _map_gateway_error(e)
            return web.json_response(mapped.body(), status=mapped.status)
        except Exception:
            log.exception("%s %s failed with an internal error", request.method, request.path)
            return web.json_response({"error": "internal", "message": "internal error"},
                                     status=500)

    async def _errors_impl(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        ex = _Exchange(self._config.body_timeout_s)
        request[_exchange_key()] = ex
        status: int | None = None  # None: the request was cancelled before its answer
        try:
            resp = await self._serve(request, handler)
            status = resp.status
            return resp
        finally:
            if (request.method not in _READ_ONLY and ex.token is not None
                    and not ex.audit_refused):
                self.audit.record(ex.audit_fd, self._audit_entry(request, ex, status))

    def _audit_entry(self, request: web.Request, ex: _Exchange,
                     status: int | None) -> dict[str, Any]:
        """The audit line of a request (``audit``): never a token, never a body."""
        who = ex.token
        assert who is not None
        match = request.match_info
        resource = match.route.resource
        entry: dict[str, Any] = {"token": who.name, "role": who.role.name,
                                 "method": request.method}
        if match.http_exception is None and resource is not None:
            entry["route"] = resource.canonical
            entry["params"] = {k: clip(v) for k, v in match.items()}
        else:
            entry["route"] = None
            entry["path"] = clip(request.path)
        if ex.detail:
            entry["detail"] = ex.detail
        entry["status"] = status
        entry["remote"] = request.remote
        return entry

    @property
    def _middleware(self) -> Middleware:
        from aiohttp import web

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.method == "GET" and request.path in _OPEN_PATHS:
                return await self._open(request, handler)  # no token: OPEN_ROUTES
            if self._open_only:  # the [ops] port serves nothing else
                return web.json_response({"error": "not_found", "message": "this port"
                                          " serves /health/live, /health/ready and /metrics"
                                          " only"}, status=404)
            return await self._errors_impl(request, handler)

        return middleware

    async def _open(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A route of ``OPEN_ROUTES``: no token, no audit (read-only), errors as JSON;
        ``/metrics`` takes a token of any role with ``[rest] metrics_token_required``."""
        from aiohttp import web

        request[_exchange_key()] = _Exchange(self._config.body_timeout_s)
        try:
            if request.path == "/metrics" and self._config.metrics_token_required:
                self._authenticate(request)
            return await handler(request)
        except ApiError as e:
            return web.json_response(e.body(), status=e.status, headers=e.headers)
        except TokensUnavailable:
            return web.json_response({"error": "tokens_unavailable", "message":
                                      "the tokens file cannot be used; see the gateway's log"},
                                     status=503, headers={"Retry-After": "10"})
        except Exception:
            log.exception("GET %s failed with an internal error", request.path)
            return web.json_response({"error": "internal", "message": "internal error"},
                                     status=500)

    # -- operations (no token: OPEN_ROUTES) --------------------------------------------

    async def _health_live(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "live"}, headers={"Cache-Control": "no-store"})

    async def _health_ready(self, request: web.Request) -> web.StreamResponse:
        from ..ops.health import readiness

        ready, body = readiness(self._gateway)
        return _json(body, status=200 if ready else 503,
                     headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        from ..ops.metrics import MetricsUnavailable, render

        try:
            text = render(self._gateway.metrics)
        except MetricsUnavailable as e:
            raise ApiError(503, "metrics_unavailable", str(e)) from e
        return web.Response(body=text, headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
            "Cache-Control": "no-store"})

    # -- viewer ------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        token = _who(request)
        return _json({
            "gateway": self._gateway.config.gateway.id,
            "coap": self._gateway.coap_uri,
            "role": token.role.name,
            "token": token.name,
            "expires": utc_text(token.expires) if token.expires is not None else None,
        })

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        text = (importlib.resources.files("aiotkit.gateway.api")
                / "openapi.json").read_text("utf-8")
        from aiohttp import web

        return web.Response(text=text, content_type="application/json")

    async def _uplink(self, request: web.Request) -> web.StreamResponse:
        """The MQTT uplink's outbox, and the messages the broker refused (set aside)."""
        limit = _int_query(request, "limit", 100, 1, 10000)
        store, uplink = self._gateway.store, self._gateway.uplink
        pending, confirmed = store.outbox_counts()
        dead = [{"id": d.id, "topic": d.topic, "reason": d.reason, "created": d.created,
                 "set_aside": d.dead, "bytes": len(d.payload)}
                for d in store.outbox_dead(limit)]
        return _json({"enabled": uplink is not None,
                      "connected": uplink is not None and uplink.connected,
                      "pending": pending, "confirmed": confirmed,
                      "dead_letters": store.outbox_dead_count(),
                      "set_aside_since_start": uplink.set_aside if uplink else 0,
                      "dead": dead})

    async def _endpoints(self, request: web.Request) -> web.StreamResponse:
        # one page by endpoint name: a bounded primary-key range however large the fleet
        after = request.query.get("after", "")
        try:
            limit = int(request.query.get("limit", str(ENDPOINTS_PAGE)))
        except ValueError:
            limit = 0
        if not 1 <= limit <= ENDPOINTS_PAGE:
            raise ApiError(400, "bad_query", f"limit must be 1..{ENDPOINTS_PAGE}")
        page = self._gateway.store.node_summaries(after, limit + 1, values=False)
        more = len(page) > limit
        page = page[:limit]
        out = [{
            "endpoint": s.endpoint,
            "state": s.state,
            "reg_id": s.reg_id,
            "address": s.address,
            "lifetime": s.lifetime,
            "binding": s.binding,
            "lwm2m_version": s.lwm2m_version,
            "registered_at": s.registered_at,
            "updated_at": s.updated_at,
            "last_seen": s.last_seen,
            "sends": s.sends,
            "readings": s.readings,
        } for s in page]
        return _json({"endpoints": out, "next": page[-1].endpoint if more else None})

    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        body = _registration_json(reg)
        summary = self._gateway.store.node_summary(reg.endpoint)
        if summary is not None:
            body.update(last_seen=summary.last_seen, sends=summary.sends,
                        readings=summary.readings)
        body["takeovers"] = self._gateway.registry.takeovers(reg.endpoint).to_json()
        return _json(body)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        limit = _int_query(request, "limit", 100, 1, 10000)
        events = [{"id": e.id, "t": e.t, "kind": e.kind, "reg_id": e.reg_id,
                   "detail": e.detail}
                  for e in self._gateway.store.events(reg.endpoint, limit=limit)]
        return _json({"endpoint": reg.endpoint, "events": events})

    async def _readings(self, request: web.Request) -> web.StreamResponse:
        """The latest value of every path the node sent (Send or Notify)."""
        reg = self._registration(request)
        prefix = request.query.get("path")
        base = parse_path(prefix) if prefix else ()
        summary = self._gateway.store.node_summary(reg.endpoint)
        values = summary.last_values if summary else {}
        out = [{"path": p, "value": json_value(v)}
               for p, v in sorted(values.items(), key=lambda pv: _path_key(pv[0]))
               if _under(p, base)]
        return _json({"endpoint": reg.endpoint, "readings": out})

    async def _observations(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        items = self._dm().observations(reg.endpoint)
        return _json({"endpoint": reg.endpoint, "observations": items})

    async def _notifications(self, request: web.Request) -> web.StreamResponse:
        """Follow what the node reports as JSON lines, until the client goes away, the
        registration ends (a last ``{"event": "gone"}``) or shutdown. Each report says
        its ``kind``: ``notify`` (with its ``observation`` id) or ``send``; ``?kind=``
        keeps only one of them, ``?observation=ID`` only that observation's."""
        reg = self._registration(request)
        base = _path(request.query.get("path", "/"))
        kinds = _report_kinds(request)
        observation: int | None = None
        if "observation" in request.query:
            observation = _int_query(request, "observation", 0, 0, 2**63 - 1)
            kinds = {"notify"}
        queue: asyncio.Queue[RegistryEvent | None] = asyncio.Queue(STREAM_QUEUE)
        sub = (reg.endpoint, queue)
        self._streams.add(sub)
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        try:
            await resp.prepare(request)
            while True:
                event = await queue.get()
                if event is None:
                    break
                if event.kind in ("deregistered", "expired"):
                    line: dict[str, Any] = {"event": "gone", "state": event.kind,
                                            "t": self._clock()}
                    await resp.write(json.dumps(line).encode() + b"\n")
                    break
                kind = "send" if event.observation is None else "notify"
                if event.kind != "send" or kind not in kinds or (
                        observation is not None and event.observation != observation):
                    continue
                records = [{"path": r.path, "value": json_value(r.value), "t": r.time}
                           for r in event.records if _under(r.path, base)]
                if records:
                    line = {"event": "report", "kind": kind, "t": self._clock(),
                            "records": records}
                    if event.observation is not None:
                        line["observation"] = event.observation
                    await resp.write(json.dumps(line).encode() + b"\n")
        except ConnectionResetError:  # the client went away
            pass
        finally:
            self._streams.discard(sub)
        return resp

    def _on_event(self, event: RegistryEvent) -> None:
        for ep, queue in list(self._streams):
            if ep != event.endpoint:
                continue
            if queue.full():  # a client that does not read: it loses the oldest
                queue.get_nowait()
            queue.put_nowait(event)

    async def _requests(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        open_only = request.query.get("open", "") in ("1", "true")
        limit = _int_query(request, "limit", 100, 1, 10000)
        items = self._dm().requests(reg.endpoint, open_only=open_only, limit=limit)
        return _json({"endpoint": reg.endpoint, "requests": items})

    # -- admin -------------------------------------------------------------------------

    async def _delete_registration(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        if reg.state != "registered":
            raise ApiError(409, "not_registered",
                           f"{reg.endpoint} is {reg.state}, not registered")
        ended = self._gateway.registry.deregister(reg.reg_id)
        log.info("registration of ep=%s ended by %s", reg.endpoint, _who(request).name)
        return _json(_registration_json(ended))

    # -- operator ----------------------------------------------------------------------

    async def _lwm2m(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        ids, op = _split_tail(request.match_info.get("tail", ""))
        path = format_path(ids)
        method = request.method
        ep = reg.endpoint
        kwargs: dict[str, Any] = {}
        if op is None and method == "GET":
            name = "read"
            kwargs.update(_accept(request))
        elif op is None and method == "PUT":
            name = "write"
            kwargs["value"] = _write_value(await _json_body(request))
            kwargs["replace"] = _write_mode(request)
        elif op is None and method == "POST":
            body = await _json_body(request)
            if len(ids) != 1:
                raise ApiError(400, "bad_path", "create takes an object path (/O); use PUT"
                               " to write and .../execute to execute")
            name = "create"
            kwargs.update(_create_args(body))
        elif op is None:  # DELETE
            name = "delete"
        elif op == "execute":
            _only(method, "POST", op)
            body = await _json_body(request, required=False)
            args = body.get("args") if isinstance(body, dict) else None
            if args is not None and not isinstance(args, str):
                raise ApiError(400, "bad_value", "args must be a string")
            name, kwargs["args"] = "execute", args
        elif op == "discover":
            _only(method, "GET", op)
            name = "discover"
        elif op == "attributes":
            _only(method, "PUT", op)
            name = "write_attributes"
            kwargs.update(_attribute_args(await _json_body(request)))
        elif method == "POST":  # observe
            name = "observe"
            kwargs.update(_accept(request))
        elif method == "DELETE":
            name = "cancel_observe"
        else:
            raise ApiError(405, "method_not_allowed", "observe takes POST or DELETE")
        if name not in ("read", "discover"):
            log.info("%s %s on ep=%s by %s", name, path, ep, _who(request).name)
        return await self._operate(request, reg, name, path, kwargs)

    async def _composite(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        op = request.match_info["op"]
        names = {"read": "read_composite", "observe": "observe_composite",
                 "cancel": "cancel_observe_composite"}
        if op not in names:
            raise ApiError(404, "not_found", "composite takes read, observe or cancel")
        body = await _json_body(request)
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths:
            raise ApiError(400, "bad_value", 'give {"paths": ["/3/0/0", ...]}')
        parsed = [format_path(_path(p)) for p in paths]
        _exchange(request).detail = {"paths": parsed[:32], "count": len(parsed)}
        kwargs = _accept(request) if op != "cancel" else {}
        return await self._operate(request, reg, names[op], parsed, kwargs)

    async def _operate(self, request: web.Request, reg: Registration, name: str,
                       path: str | list[str], kwargs: dict[str, Any]) -> web.StreamResponse:
        """Run one DM operation: directly, or through the queue for a queue-mode node
        (answered 202 with the request id if the node has not answered within the
        timeout; the request stays queued)."""
        dm = self._dm()
        timeout = _timeout(request)
        from aiohttp import web

        if "Q" in reg.binding:
            request_id = dm.enqueue(reg.endpoint, name, path, **kwargs)
            wait = timeout if timeout is not None else DEFAULT_QUEUE_WAIT_S
            try:
                async with asyncio.timeout(wait):
                    result = await dm.wait(request_id)
            except TimeoutError:
                return web.json_response(
                    {"queued": True, "request_id": request_id, "endpoint": reg.endpoint,
                     "operation": name, "path": path, "state": dm.request_state(request_id)},
                    status=202)
        elif name in ("read_composite", "observe_composite", "cancel_observe_composite"):
            result = await getattr(dm, name)(reg.endpoint, path, timeout=timeout, **kwargs)
        elif name == "create":
            obj = int(str(path).strip("/"))
            result = await dm.create(reg.endpoint, obj, timeout=timeout, **kwargs)
        else:
            result = await getattr(dm, name)(reg.endpoint, path, timeout=timeout, **kwargs)
        if not result.ok:  # a queued request's outcome: the node answered with an error
            raise _node_error(result.code, f"{name} {result.path} on {reg.endpoint}: "
                              f"{result.code}", result.to_json())
        return web.json_response(result.to_json(), status=201 if name == "create" else 200)

    async def _request(self, request: web.Request) -> web.StreamResponse:
        reg = self._registration(request)
        request_id = _int_match(request, "id")
        found = self._dm().request(request_id)
        if found is None or found["endpoint"] != reg.endpoint:
            raise ApiError(404, "not_found", f"no request {request_id} for {reg.endpoint}")
        return _json(found)

    # -- admin: OSCORE keys -------------------------------------------------------------

    def _key_store(self) -> KeyStore:
        if self._keys is None:
            raise ApiError(503, "keys_unavailable", "this gateway has no at-rest key for"
                           " OSCORE contexts ([security] key_file or AIOT_GATEWAY_KEY)")
        return self._keys

    async def _keys_list(self, request: web.Request) -> web.StreamResponse:
        keys = self._key_store()
        limit = _int_query(request, "limit", ENDPOINTS_PAGE, 1, ENDPOINTS_PAGE)
        page = keys.list(request.query.get("after", ""), limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return _json({"keys": [k.to_json() for k in page],
                      "next": page[-1].endpoint if more else None})

    async def _keys_create(self, request: web.Request) -> web.StreamResponse:
        keys = self._key_store()
        body = await _json_body(request)
        ep = body.get("endpoint") if isinstance(body, dict) else None
        if not isinstance(ep, str):
            raise ApiError(400, "bad_value", 'give {"endpoint": NAME, "id_context": HEX?}')
        _exchange(request).detail = {"endpoint": clip(ep)}
        _key_endpoint(ep)
        raw = body.get("id_context")
        id_context = None if raw is None else _hex_field(raw, "id_context")
        node = body.get("import")
        if node is None:
            info = _key_call(lambda: keys.create(ep, id_context=id_context))
            log.info("OSCORE context created for ep=%s by %s", ep, _who(request).name)
            return _json(info.to_json(), status=201)
        # keys made offline by aiot provision --offline: the node's side of them
        if not isinstance(node, dict):
            raise ApiError(400, "bad_value", 'import is {"sender_id", "recipient_id",'
                                             ' "secret", "salt"} (hex, the node\'s side)')
        from ..security import GATEWAY_SENDER_ID

        gateway_id = _hex_field(node.get("recipient_id"), "import.recipient_id")
        if gateway_id != GATEWAY_SENDER_ID:
            raise ApiError(400, "bad_value", f"import.recipient_id must be the gateway's"
                                             f" sender ID {GATEWAY_SENDER_ID.hex()}")
        kid = _hex_field(node.get("sender_id"), "import.sender_id")
        secret = _hex_field(node.get("secret"), "import.secret")
        salt = _hex_field(node.get("salt"), "import.salt")
        info = _key_call(lambda: keys.import_context(ep, node_id=kid, secret=secret,
                                                     salt=salt, id_context=id_context))
        log.info("OSCORE context imported for ep=%s by %s", ep, _who(request).name)
        return _json(info.to_json(), status=201)

    async def _keys_get(self, request: web.Request) -> web.StreamResponse:
        keys = self._key_store()
        ep = _key_endpoint(request.match_info["ep"])
        return _json(_key_call(lambda: keys.get(ep)).to_json())

    async def _keys_action(self, request: web.Request) -> web.StreamResponse:
        keys = self._key_store()
        ep, action = _key_endpoint(request.match_info["ep"]), request.match_info["action"]
        who = _who(request).name
        if action == "export":
            node = _key_call(lambda: keys.export(ep))
            log.info("OSCORE keys of ep=%s exported by %s", ep, who)
            return _json({"node": node.to_json(), "gateway_uri": self._gateway.coap_uri},
                         headers={"Cache-Control": "no-store"})
        if action == "rotate":
            info = _key_call(lambda: keys.rotate(ep))
        elif action == "revoke":
            info = _key_call(lambda: keys.revoke(ep))
        else:
            raise ApiError(404, "not_found", "a key takes rotate, revoke or export")
        log.info("OSCORE context of ep=%s: %s by %s", ep, action, who)
        return _json(info.to_json())

    # -- OTA images and campaigns (gateway/ota) ------------------------------------------

    def _ota_service(self) -> OtaService:
        ota = self._gateway.ota
        if ota is None:
            raise ApiError(503, "ota_unavailable", "the OTA service is not running")
        return ota

    # -- analytics (gateway/analytics): alerts, drift, rollups ---------------------------

    def _analytics(self) -> Analytics:
        analytics = self._gateway.analytics
        if analytics is None:
            raise ApiError(503, "analytics_unavailable", "analytics are off ([analytics]"
                           " enabled = false)")
        return analytics

    async def _alerts(self, request: web.Request) -> web.StreamResponse:
        tables = self._analytics().tables
        state = request.query.get("state", "open")
        states = {"open": ("active", "acknowledged"), "all": (), "active": ("active",),
                  "acknowledged": ("acknowledged",), "cleared": ("cleared",)}.get(state)
        if states is None:
            raise ApiError(400, "bad_query", "state is open (default), active, acknowledged,"
                           " cleared or all")
        ep = request.query.get("ep") or None
        if ep is not None and not valid_endpoint(ep):
            raise ApiError(400, "bad_endpoint", f"{_shown(ep)} is not an endpoint name")
        rule = request.query.get("rule") or None
        limit = _int_query(request, "limit", 100, 1, 10000)
        rows = tables.alerts(endpoint=ep, states=states, rule=rule, limit=limit)
        return _json({"alerts": [r.to_json() for r in rows]})

    def _alert_id(self, request: web.Request) -> int:
        text = request.match_info["id"]
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise ApiError(404, "unknown_alert", f"{_shown(text)} is not an alert id")
        return int(text)

    async def _alert(self, request: web.Request) -> web.StreamResponse:
        tables = self._analytics().tables
        alert_id = self._alert_id(request)
        row = tables.alert(alert_id)
        if row is None:
            raise ApiError(404, "unknown_alert", f"no alert {alert_id}")
        return _json({**row.to_json(), "history": [h.to_json()
                                                  for h in tables.history(alert_id)]})

    async def _alert_ack(self, request: web.Request) -> web.StreamResponse:
        analytics = self._analytics()
        alert_id = self._alert_id(request)
        _exchange(request).detail = {"alert": alert_id}
        token = _who(request)
        row = analytics.ack(alert_id, token.name)
        if row is None:
            current = analytics.tables.alert(alert_id)
            if current is None:
                raise ApiError(404, "unknown_alert", f"no alert {alert_id}")
            raise ApiError(409, "not_active", f"alert {alert_id} is {current.state}: only"
                           " an active alert can be acknowledged")
        return _json(row.to_json())

    async def _drift(self, request: web.Request) -> web.StreamResponse:
        ep = request.match_info["ep"]
        if not valid_endpoint(ep):
            raise ApiError(400, "bad_endpoint", f"{_shown(ep)} is not an endpoint name")
        state = self._analytics().drift_state(ep)
        if state is None:
            raise ApiError(404, "no_drift", f"no drift result for {_shown(ep)} (it sent no"
                           " features, or no model card describes them)")
        return _json(state)

    async def _rollups(self, request: web.Request) -> web.StreamResponse:
        ep = request.match_info["ep"]
        if not valid_endpoint(ep):
            raise ApiError(400, "bad_endpoint", f"{_shown(ep)} is not an endpoint name")
        period = request.query.get("period", "1m")
        if period not in ("1m", "1h"):
            raise ApiError(400, "bad_query", "period is 1m or 1h")
        limit = _int_query(request, "limit", 60, 1, 10000)
        return _json({"endpoint": ep, "period": period, "rollups":
                      self._analytics().tables.rollups(ep, period, limit=limit)})

    def _model_service(self) -> ModelService:
        models = self._gateway.models
        if models is None:
            raise ApiError(503, "ota_unavailable", "the model service is not running")
        return models

    async def _ota_models(self, request: web.Request) -> web.StreamResponse:
        return _json({"models": self._model_service().registry()})

    async def _ota_candidates(self, request: web.Request) -> web.StreamResponse:
        return _json({"candidates": self._model_service().candidates(
            request.query.get("endpoint") or None)})

    async def _ota_images(self, request: web.Request) -> web.StreamResponse:
        return _json({"images": [_image_json(r) for r in self._ota_service().images.list()]})

    async def _ota_image(self, request: web.Request) -> web.StreamResponse:
        row = self._ota_service().images.get(request.match_info["id"].lower())
        if row is None:
            raise ApiError(404, "unknown_image", "no such image (give its sha256)")
        return _json(_image_json(row))

    async def _ota_upload(self, request: web.Request) -> web.StreamResponse:
        images = self._ota_service().images
        board = request.query.get("board", "")
        payload_type = request.query.get("payload_type", "app")
        if not board:
            raise ApiError(400, "bad_query", "give ?board=NAME (and payload_type, app by"
                           " default): what the image must be for")
        _exchange(request).detail = {"board": clip(board), "payload_type": clip(payload_type)}
        data = await _raw_body(request, images.max_bytes)
        try:
            row, new = await images.upload(data, board=board, payload_type=payload_type)
        except OtaServiceError as e:
            if e.reason is not None:
                _exchange(request).detail = {**(_exchange(request).detail or {}),
                                             "refused": e.reason}
                log.warning("OTA image refused (%s) from %s", e.reason, _who(request).name)
            return _ota_error(e)
        _exchange(request).detail = {**(_exchange(request).detail or {}), "image": row.id}
        if new:
            log.info("OTA image %s (%s %s for %s) uploaded by %s", row.id[:16],
                     row.payload_type, row.version, row.board, _who(request).name)
        return _json(_image_json(row), status=201 if new else 200)

    async def _ota_campaigns(self, request: web.Request) -> web.StreamResponse:
        from ..ota.campaigns import summary

        return _json({"campaigns": [summary(r)
                                    for r in self._ota_service().campaigns.campaigns()]})

    async def _ota_campaign(self, request: web.Request) -> web.StreamResponse:
        engine = self._ota_service().campaigns
        return await _ota_do(lambda: _done(engine.progress(_campaign_id(request))))

    async def _ota_create(self, request: web.Request) -> web.StreamResponse:
        from ..ota.campaigns import NodeInfo, Target

        ota = self._ota_service()
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_value", "give a JSON object (see openapi.json)")
        image_id = body.get("image")
        if not isinstance(image_id, str):
            raise ApiError(400, "bad_value", "image is the sha256 of an uploaded image")
        _exchange(request).detail = {"image": clip(image_id), "name": clip(
            str(body.get("name", "")))}
        image = ota.images.get(image_id.lower())
        if image is None:
            raise ApiError(404, "unknown_image", "no such image: upload it first")
        nodes_raw = body.get("nodes")
        if nodes_raw is None:
            nodes = ota.inventory.nodes()
        else:
            nodes = _node_infos(nodes_raw, NodeInfo)

        async def create() -> dict[str, Any]:
            engine = ota.campaigns
            cid = engine.create(
                name=body.get("name", f"{image.payload_type} {image.version}"),
                image=image.id, board=image.board, target=Target.from_json(body.get("target")),
                waves=body.get("waves", ["1", "100%"]),
                max_failure_ratio=body.get("max_failure_ratio", 0.0),
                report_timeout_s=body.get("report_timeout_s", 3600.0), nodes=nodes)
            log.info("OTA campaign %d created by %s", cid, _who(request).name)
            if body.get("start") is True:
                await engine.start_campaign(cid)
            return engine.progress(cid)

        return await _ota_do(create, status=201)

    async def _ota_action(self, request: web.Request, action: str) -> web.StreamResponse:
        engine = self._ota_service().campaigns
        cid = _campaign_id(request)
        reason: str | None = None
        if action == "abort":
            body = await _json_body(request, required=False)
            raw = body.get("reason") if isinstance(body, dict) else None
            reason = (f"aborted by {_who(request).name}" + (f": {raw[:200]}"
                      if isinstance(raw, str) and raw else ""))

        async def act() -> dict[str, Any]:
            if action == "start":
                await engine.start_campaign(cid)
            elif action == "pause":
                await engine.pause(cid)
            elif action == "resume":
                await engine.resume(cid)
            else:
                await engine.abort(cid, reason or "aborted")
            log.info("OTA campaign %d: %s by %s", cid, action, _who(request).name)
            return engine.progress(cid)

        return await _ota_do(act)

    async def _ota_start(self, request: web.Request) -> web.StreamResponse:
        return await self._ota_action(request, "start")

    async def _ota_pause(self, request: web.Request) -> web.StreamResponse:
        return await self._ota_action(request, "pause")

    async def _ota_resume(self, request: web.Request) -> web.StreamResponse:
        return await self._ota_action(request, "resume")

    async def _ota_abort(self, request: web.Request) -> web.StreamResponse:
        return await self._ota_action(request, "abort")

    # -- helpers -----------------------------------------------------------------------

    def _registration(self, request: web.Request) -> Registration:
        ep = request.match_info["ep"]
        if not valid_endpoint(ep):  # '/', '..', NUL, controls, 256+ characters
            raise ApiError(400, "bad_endpoint", f"{_shown(ep)} is not an endpoint name")
        reg = self._gateway.store.registration(ep)
        if reg is None:
            raise ApiError(404, "unknown_endpoint", f"no endpoint {ep!r}")
        return reg

    def _dm(self) -> DeviceManagement:
        return self._gateway.dm


# CoAP error answers from the node as HTTP statuses, as an HTTP-CoAP proxy maps them
# (RFC 8075 §7): 4.01 is 403 here (401 is about the API token); anything else 502.
_COAP_TO_HTTP = {"4.00": 400, "4.01": 403, "4.02": 400, "4.03": 403, "4.04": 404,
                 "4.05": 405, "4.06": 406, "4.08": 400, "4.12": 412, "4.13": 413,
                 "4.15": 415, "5.01": 501, "5.03": 503, "5.04": 504}


def _node_error(code: str, message: str, result: dict[str, Any] | None = None) -> ApiError:
    err = ApiError(_COAP_TO_HTTP.get(code, 502), "node_error", message, coap=code)
    err.result = result
    return err


def _key_call(call: Callable[[], _T]) -> _T:
    """A key-store call; its refusals as HTTP answers (``security.errors``)."""
    from ..security import KeyRequestError

    try:
        return call()
    except KeyRequestError as e:
        raise ApiError(e.status, e.kind, str(e)) from None


def _map_gateway_error(e: GatewayError) -> ApiError:
    """An error from device management or the codecs as an HTTP answer."""
    from ..dm import (
        DeviceTimeout,
        DeviceUnreachable,
        DMError,
        NotRegistered,
        OperationFailed,
        QueueFull,
    )

    if isinstance(e, OperationFailed):
        return _node_error(e.result.code, str(e), e.result.to_json())
    if isinstance(e, DeviceTimeout):
        return ApiError(504, "node_timeout", str(e))
    if isinstance(e, DeviceUnreachable):
        return ApiError(502, "node_unreachable", str(e))
    if isinstance(e, NotRegistered):
        return ApiError(409, "not_registered", str(e))
    if isinstance(e, QueueFull):
        return ApiError(429, "queue_full", str(e))
    if isinstance(e, PathError):
        return ApiError(400, "bad_path", str(e))
    if isinstance(e, (DMError, RequestError)):  # bad arguments, a value of the wrong type
        return ApiError(400, "bad_request", str(e))
    return ApiError(500, "internal", str(e))


def _split_tail(tail: str) -> tuple[tuple[int, ...], str | None]:
    parts = [p for p in tail.split("/") if p]
    op = None
    if parts and parts[-1] in _OPS:
        op = parts.pop()
    return _path("/" + "/".join(parts) if parts else "/"), op


def _path(text: Any) -> tuple[int, ...]:
    if not isinstance(text, str):
        raise ApiError(400, "bad_path", f"{text!r} is not an LwM2M path")
    try:
        return parse_path(text)
    except PathError as e:
        raise ApiError(400, "bad_path", str(e)) from e


def _path_key(path: str) -> tuple[tuple[int, ...], str]:
    """Numeric path order: ``/3/0/2`` before ``/3/0/10`` (anything else after, by text)."""
    try:
        return parse_path(path), ""
    except PathError:
        return (1 << 32,), path


def _under(path: str, base: tuple[int, ...]) -> bool:
    try:
        return is_under(parse_path(path), base)
    except PathError:
        return False


def _only(method: str, allowed: str, op: str) -> None:
    if method != allowed:
        raise ApiError(405, "method_not_allowed", f"{op} takes {allowed}")


def _int_match(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not _REQUEST_ID.fullmatch(text) or int(text) >= 2**63:
        raise ApiError(404, "not_found", f"{_shown(text)} is not a request id")
    return int(text)


def _shown(text: str) -> str:
    """A parameter from the request, for a message: its repr, cut at 64 characters."""
    return repr(text) if len(text) <= 64 else repr(text[:64]) + "..."


def _key_endpoint(ep: Any) -> str:
    """An endpoint name as the key store takes it (1..255 characters, no control
    character, no surrogate: ``gateway/security/keystore.py``), else 400."""
    if not isinstance(ep, str) or not 1 <= len(ep) <= MAX_KEY_ENDPOINT or any(
            ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
            for c in ep):
        shown = _shown(ep) if isinstance(ep, str) else "it"
        raise ApiError(400, "bad_endpoint", f"{shown} is not an endpoint name (1..255"
                       " characters, no control characters)")
    return ep


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        v = int(text)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be a whole number") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_query", f"{name} must be {lo}..{hi}")
    return v


def _report_kinds(request: web.Request) -> set[str]:
    """``?kind=notify`` or ``send`` (the notification stream): which reports to follow."""
    text = request.query.get("kind")
    if text is None:
        return {"notify", "send"}
    if text not in ("notify", "send"):
        raise ApiError(400, "bad_query", "kind is notify or send")
    return {text}


def _accept(request: web.Request) -> dict[str, Any]:
    """``?format=`` (a name of ``codecs.NAMES`` or a number): the Accept of a Read or
    Observe, overriding the negotiated one; {} when not given."""
    text = request.query.get("format")
    if text is None:
        return {}
    try:
        return {"accept": codecs.format_named(text)}
    except codecs.UnknownContentFormat as e:
        raise ApiError(400, "bad_query", f"format: {e}") from None


def _timeout(request: web.Request) -> float | None:
    text = request.query.get("timeout")
    if text is None:
        return None  # the gateway's [dm] request_timeout_s
    try:
        v = float(text)
    except ValueError:
        raise ApiError(400, "bad_query", "timeout must be a number of seconds") from None
    if not 0 < v <= MAX_TIMEOUT_S:
        raise ApiError(400, "bad_query", f"timeout must be over 0 and at most {MAX_TIMEOUT_S}")
    return v


async def _raw_body(request: web.Request, limit: int) -> bytes:
    """The request body as bytes, at most ``limit`` (413 beyond, without reading it all),
    within ``[rest] body_timeout_s``."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"the body is over {limit} bytes",
                       headers={"Connection": "close"})
    wait = _exchange(request).body_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(wait):
            while chunk := await request.content.read(65536):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"the body is over {limit} bytes",
                                   headers={"Connection": "close"})
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "timeout", f"request body not received within {wait:g} s",
                       headers={"Connection": "close"}) from None
    if not size:
        raise ApiError(400, "bad_value", "the image is the request body; it is empty")
    return b"".join(chunks)


def _image_json(row: OtaImageRow) -> dict[str, Any]:
    return {"id": row.id, "sha256": row.id, "version": row.version,
            "payload_type": row.payload_type, "board": row.board,
            "security_counter": row.security_counter, "signers": list(row.signers),
            "size": row.size, "uploaded": row.uploaded}


def _campaign_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not _REQUEST_ID.fullmatch(text):
        raise ApiError(404, "unknown_campaign", f"no campaign {_shown(text)}")
    return int(text)


def _ota_error(e: OtaServiceError) -> web.Response:
    body: dict[str, Any] = {"error": e.kind, "message": e.message}
    if e.reason is not None:
        body["reason"] = e.reason
    return _json(body, status=e.status)


async def _done(value: _T) -> _T:
    return value


async def _ota_do(fn: Callable[[], Awaitable[Any]], *, status: int = 200) -> web.Response:
    """``await fn()`` as a JSON answer; an ``OtaServiceError`` as its error."""
    try:
        return _json(await fn(), status=status)
    except OtaServiceError as e:
        return _ota_error(e)


def _node_infos(raw: Any, make: Any) -> list[Any]:
    """``nodes``: [{"endpoint", "board", "firmware", "model", "tags"}] as ``NodeInfo``."""
    if not isinstance(raw, list) or len(raw) > 100_000:
        raise ApiError(400, "bad_value", "nodes is a list of {endpoint, board, firmware,"
                       " model, tags}")
    out = []
    for n in raw:
        if not isinstance(n, dict) or not isinstance(n.get("endpoint"), str):
            raise ApiError(400, "bad_value", "each node has an endpoint (a string)")
        fields = {k: n.get(k) for k in ("board", "firmware", "model")}
        if any(v is not None and not isinstance(v, str) for v in fields.values()):
            raise ApiError(400, "bad_value", "a node's board, firmware, model are strings")
        tags = n.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "bad_value", "a node's tags are a list of strings")
        out.append(make(n["endpoint"], tags=tuple(tags), **fields))
    return out


async def _json_body(request: web.Request, *, required: bool = True) -> Any:
    limit = _exchange(request).body_timeout_s
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "timeout", f"request body not received within {limit:g} s",
                       headers={"Connection": "close"}) from None
    if not raw:
        if required:
            raise ApiError(400, "bad_value", "a JSON body is required")
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "bad_value", f"body is not JSON: {e}") from None


def _write_value(body: Any) -> Any:
    """``{"value": V}``: V is a value for a resource (instance), ``{"RI": V}`` for a
    multiple resource, ``{"RID": V or {"RI": V}}`` for an object instance."""
    if not isinstance(body, dict) or "value" not in body:
        raise ApiError(400, "bad_value", 'give {"value": V}')
    return _from_json(body["value"])


def _write_mode(request: web.Request) -> bool:
    mode = request.query.get("mode", "replace")
    if mode not in ("replace", "update"):
        raise ApiError(400, "bad_query", "mode is replace or update")
    return mode == "replace"


def _create_args(body: Any) -> dict[str, Any]:
    """``{"values": {"RID": V, ...}, "instance": I}`` (instance optional)."""
    if not isinstance(body, dict) or not isinstance(body.get("values"), dict):
        raise ApiError(400, "bad_value", 'give {"values": {"RID": V, ...}, "instance": I}')
    values = {}
    for key, v in body["values"].items():
        if not str(key).isdigit():
            raise ApiError(400, "bad_value", f"resource id {key!r} is not a number")
        values[int(key)] = _from_json(v)
    out: dict[str, Any] = {"values": values}
    instance = body.get("instance")
    if instance is not None:
        if isinstance(instance, bool) or not isinstance(instance, int):
            raise ApiError(400, "bad_value", "instance must be a whole number")
        out["instance"] = instance
    return out


def _attribute_args(body: Any) -> dict[str, Any]:
    """``{"pmin": 1, "pmax": 10, "gt": 2.5, "unset": ["st"]}``."""
    from ..dm import ATTRIBUTES

    if not isinstance(body, dict):
        raise ApiError(400, "bad_value", "attributes must be a JSON object")
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name == "unset":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ApiError(400, "bad_value", "unset is a list of attribute names")
            out["unset"] = value
        elif name in ATTRIBUTES:
            out[name] = value
        else:
            raise ApiError(400, "bad_value", f"unknown attribute {name!r} (one of"
                           f" {', '.join(ATTRIBUTES)}, unset)")
    return out


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"base64"}:
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (ValueError, TypeError) as e:
            raise ApiError(400, "bad_value", "base64 value is not valid base64") from e
    if isinstance(value, dict):
        return {str(k): _from_json(v) for k, v in value.items()}
    if value is None or isinstance(value, list):
        raise ApiError(400, "bad_value", "a value is a string, number, boolean,"
                       ' {"base64": ...} or an object of those by id')
    return value




@dataclass(slots=True)
class _Exchange:
    """What the middleware and the handlers share about one request."""

    body_timeout_s: float  # [rest] body_timeout_s
    token: Token | None = None  # the token presented, once known (expired or not)
    admitted: bool = False  # the token is valid and its role may call the route
    audit_fd: int | None = None  # the audit file, open for the request's line
    audit_refused: bool = False  # the audit log could not be written: refused 503
    detail: dict[str, Any] | None = None  # more for the audit line (never a secret)


@functools.cache
def _exchange_key() -> web.RequestKey[_Exchange]:
    from aiohttp import web

    return web.RequestKey("aiot_exchange", _Exchange)


def _exchange(request: web.Request) -> _Exchange:
    return request[_exchange_key()]


def _who(request: web.Request) -> Token:
    """The token of an admitted request."""
    ex = _exchange(request)
    assert ex.admitted and ex.token is not None
    return ex.token

_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's context message
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
         b"Content-Type: application/json\r\nContent-Length: 63\r\n\r\n"
         b'{"error": "busy", "message": "too many connections, try again"}')


class _Refused(asyncio.Protocol):
    """A connection over ``[rest] max_connections``: 503 and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class _ConnectionLimit:
    """The protocol factory of the REST port: aiohttp's server (``server``) while it
    holds fewer than ``limit`` connections, else ``_Refused`` (one rate-limited line)."""

    def __init__(self, server: Any, limit: int) -> None:
        self._server = server
        self._limit = limit

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._server.connections) >= self._limit:
            _peer_log.warning("rest-busy", "REST API: %d connections open, refusing more"
                              " ([rest] max_connections)", self._limit)
            return _Refused()
        proto: asyncio.BaseProtocol = self._server()
        return proto


class _AcceptGuard:
    """asyncio reports a failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of file
    descriptors or memory) to the loop's exception handler, with a traceback, each time
    it retries (every second per socket), and keeps serving once descriptors are free.
    For the REST port's sockets this writes one rate-limited line instead; everything
    else goes to the handler that was there before."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        self._loop = loop
        self._fds = {s.fileno() for s in server.sockets}
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        sock = context.get("socket")
        exc = context.get("exception")
        if (context.get("message") == _ACCEPT_FAILED and isinstance(exc, OSError)
                and sock is not None and sock.fileno() in self._fds):
            _peer_log.warning("rest-accept", "REST API: cannot accept a connection: %s;"
                              " retrying", exc.strerror or exc)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def close(self) -> None:
        if self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)
