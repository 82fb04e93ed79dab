"""An LwM2M 1.1 bootstrap server on aiocoap (OMA-TS-LightweightM2M_Core-V1_1 section
6.1, Transport section 6.1): gives a client that asks (``POST /bs?ep=NAME``) its LwM2M
server account from the ``[bootstrap]`` configuration and, over OSCORE, the account's
OSCORE context (Object 21).

=========================  =======================================================
client -> server           answer
=========================  =======================================================
POST /bs?ep=NAME[&pct=N]   2.04, then the bootstrap sequence below (in a task);
                           4.00 missing/bad ep, an endpoint with no account and no
                           default, bad pct; 4.15 a pct other than SenML-CBOR (112);
                           4.01 unprotected where protection is needed (below);
                           4.03 protected under another endpoint's context
other path / method        4.04 / 4.05
=========================  =======================================================

The sequence, sent as a client to the address the request came from (so through the
same socket): Bootstrap-Delete ``/0`` and ``/1`` (the client keeps its bootstrap-server
account, Core section 6.1.7.5), Bootstrap-Write ``/0/1`` (URI, bootstrap false, security
mode 3 NoSec, short server id) and ``/1/0`` (short server id, lifetime, binding) in
SenML-CBOR, then Bootstrap-Finish (``POST /bs``). Each result is logged; a refused step
ends the sequence.

**OSCORE** (RFC 8613, LwM2M 1.1 Security ``/0/x/17`` and Object 21). With the gateway's
key store, a node's bootstrap exchange is protected with its *bootstrap context*: a
context of the key store named ``NAME#bs`` (``bootstrap_context_name``; ``#`` is not
allowed in an LwM2M endpoint name, so that context can never register, and the
bootstrap socket accepts no other), provisioned like a server context (``aiot keys
create 'node-7#bs'``, its export the node's config ``bootstrap_oscore``). A protected
request is answered over that context, and when the account's server is this gateway
(``uri = ""`` or its own URI) and the account has ``oscore = true`` (the default), the
sequence also deletes ``/21`` and writes ``/21/1`` (the node's side of its server
context: Master Secret 0, Sender ID 1 (the node's), Recipient ID 2, AEAD 3 = 10, HMAC
4 = -10 HKDF SHA-256, Master Salt 5, ID Context 6) and ``/0/1/17 = "21:1"``. The server
context is issued for the occasion (``issue_credentials``): created when the endpoint
has none (or a revoked one), exported if it never was, rotated first otherwise (the key
store gives a secret out once per generation). Secrets never travel in clear: an
unprotected request is refused 4.01 when ``security = "oscore"``, and in NoSec mode
(development gateways) when the endpoint has a server or bootstrap context; otherwise
(NoSec, nothing provisioned) the NoSec account of before. Nothing here logs a secret.

Configuration (TOML)::

    [bootstrap]
    enabled = true
    host = "127.0.0.1"       # where /bs is served when the server runs on its own
    port = 5685
    timeout_s = 30           # bound on each step of a sequence

    [bootstrap.default]      # for any endpoint not listed; leave out to refuse them
    uri = ""                 # "" = this gateway's own LwM2M server (coap.host/port)
    lifetime = 60
    binding = "U"
    ssid = 1
    oscore = true            # over a protected bootstrap: deliver the server context

    [bootstrap.endpoints.node-7]
    uri = "coap://192.0.2.10:5683"
    lifetime = 300
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2

from ..coap.aio import Code, OscoreSiteWrapper, Resource, Site, aiocoap
from ..errors import ConfigError
from ..logs import PeerLog
from ..security.errors import SecurityError
from .params import valid_binding, valid_endpoint
from .senml import CF_SENML_CBOR

if TYPE_CHECKING:
    from ..security import KeyStore, NodeContext, NodeCredentials

__all__ = ["BOOTSTRAP_SUFFIX", "BootstrapAccount", "BootstrapConfig", "BootstrapServer",
           "bootstrap_context_name", "issue_credentials", "parse_bootstrap"]

log = logging.getLogger("aiotkit.gateway.bootstrap")
_peer_log = PeerLog(log)  # what a peer's requests make us write

NOSEC = 3  # /0/x/2 security mode
SERVER_INSTANCE = 1  # /0/1 (/0/0 is usually the client's bootstrap-server account)
OSCORE_INSTANCE = 1  # /21/1, linked from /0/1/17
AEAD_AES_CCM_16_64_128 = 10  # /21/x/3 (RFC 8152 table 10)
HKDF_SHA_256 = -10  # /21/x/4 (RFC 8613 section 3.2.1)
BOOTSTRAP_SUFFIX = "#bs"  # a node's bootstrap context in the key store: NAME#bs
_URI = re.compile(r"coap://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]@?#]+)(:[0-9]{1,5})?/?")
_MAX_DIAGNOSTIC = 120


@dataclass(frozen=True)
class BootstrapAccount:
    """The LwM2M server account written to a client: Security /0/1, Server /1/0."""

    uri: str = ""
    lifetime: int = 60
    binding: str = "U"
    ssid: int = 1
    oscore: bool = True  # over a protected bootstrap, deliver /21 (this gateway's server)


@dataclass(frozen=True)
class BootstrapConfig:
    """``[bootstrap]``: off unless enabled; ``default`` None refuses unlisted endpoints."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5685
    timeout_s: float = 30.0
    default: BootstrapAccount | None = None
    endpoints: Mapping[str, BootstrapAccount] = field(default_factory=dict)

    def account(self, endpoint: str) -> BootstrapAccount | None:
        return self.endpoints.get(endpoint, self.default)


def parse_bootstrap(table: Any, name: str) -> BootstrapConfig:
    """The ``[bootstrap]`` table of the config file ``name``; ConfigError names the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: bootstrap: must be a table ([bootstrap])")
    top = {"enabled": bool, "host": str, "port": int, "timeout_s": float}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("default", "endpoints"):
            continue
        if key not in top:
            raise ConfigError(f"{name}: unknown key bootstrap.{key}")
        values[key] = _typed(name, f"bootstrap.{key}", value, top[key])
    port = values.get("port", BootstrapConfig.port)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: bootstrap.port: must be 1..65535 (got {port})")
    if values.get("timeout_s", 1.0) <= 0:
        raise ConfigError(f"{name}: bootstrap.timeout_s: must be greater than 0")
    if not values.get("host", "x"):
        raise ConfigError(f"{name}: bootstrap.host: must not be empty")
    default = None
    if "default" in table:
        default = _account(name, "bootstrap.default", table["default"])
    eps = table.get("endpoints", {})
    if not isinstance(eps, dict):
        raise ConfigError(f"{name}: bootstrap.endpoints: must be a table")
    endpoints: dict[str, BootstrapAccount] = {}
    for ep, acct in eps.items():
        if not valid_endpoint(ep):
            raise ConfigError(f"{name}: bootstrap.endpoints.{ep}: not a valid endpoint name")
        endpoints[ep] = _account(name, f"bootstrap.endpoints.{ep}", acct)
    return BootstrapConfig(default=default, endpoints=endpoints, **values)


def _typed(name: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name}: {key}: must be {kind.__name__} (got {value!r:.40})")
    return value


def _account(name: str, key: str, table: Any) -> BootstrapAccount:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: {key}: must be a table")
    kinds = {"uri": str, "lifetime": int, "binding": str, "ssid": int, "oscore": bool}
    values: dict[str, Any] = {}
    for k, v in table.items():
        if k not in kinds:
            raise ConfigError(f"{name}: unknown key {key}.{k}")
        values[k] = _typed(name, f"{key}.{k}", v, kinds[k])
    acct = BootstrapAccount(**values)
    if acct.uri and not _URI.fullmatch(acct.uri):
        raise ConfigError(f"{name}: {key}.uri: must be coap://HOST[:PORT] (or \"\")")
    if not 10 <= acct.lifetime <= 2**32 - 1:
        raise ConfigError(f"{name}: {key}.lifetime: must be 10..4294967295 s")
    if not valid_binding(acct.binding):
        raise ConfigError(f"{name}: {key}.binding: must be LwM2M binding letters (U, UQ..)")
    if not 1 <= acct.ssid <= 65534:
        raise ConfigError(f"{name}: {key}.ssid: must be 1..65534")
    return acct


def bootstrap_context_name(endpoint: str) -> str:
    """The key-store name of ``endpoint``'s bootstrap OSCORE context."""
    return endpoint + BOOTSTRAP_SUFFIX


def issue_credentials(keys: KeyStore, endpoint: str) -> NodeCredentials:
    """The node side of ``endpoint``'s server context for a bootstrap: a new context
    when it has none (or a revoked one), else exported if it never was, else rotated
    and exported (the key store gives each generation's secret out once).
    ``SecurityError`` when the store refuses."""
    from ..security import UnknownContext

    try:
        state: str | None = keys.get(endpoint).state
    except UnknownContext:
        state = None
    if state is None or state == "revoked":
        keys.create(endpoint)
    elif state == "exported":
        keys.rotate(endpoint)
    return keys.export(endpoint)


def senml_security(acct: BootstrapAccount, uri: str, oscore: bool = False) -> bytes:
    """Bootstrap-Write payload for /0/1: URI, not a bootstrap server, NoSec, short id;
    with ``oscore``, 17 OSCORE Security Mode linking to /21/1 (SenML ``vlo``)."""
    base = f"/0/{SERVER_INSTANCE}/"
    recs: list[dict[Any, Any]] = [{-2: base, 0: "0", 3: uri}, {0: "1", 4: False},
                                  {0: "2", 2: NOSEC}, {0: "10", 2: acct.ssid}]
    if oscore:
        recs.append({0: "17", "vlo": f"21:{OSCORE_INSTANCE}"})
    return cbor2.dumps(recs)


def senml_oscore(node: NodeCredentials) -> bytes:
    """Bootstrap-Write payload for /21/1: the node's side of its server context (the
    node is the sender). Secret material: never logged."""
    recs: list[dict[Any, Any]] = [
        {-2: f"/21/{OSCORE_INSTANCE}/", 0: "0", 8: node.secret}, {0: "1", 8: node.sender_id},
        {0: "2", 8: node.recipient_id}, {0: "3", 2: AEAD_AES_CCM_16_64_128},
        {0: "4", 2: HKDF_SHA_256}, {0: "5", 8: node.salt}]
    if node.id_context is not None:
        recs.append({0: "6", 8: node.id_context})
    return cbor2.dumps(recs)


def senml_server(acct: BootstrapAccount) -> bytes:
    """Bootstrap-Write payload for /1/0: short server id, lifetime, binding."""
    return cbor2.dumps([{-2: "/1/0/", 0: "0", 2: acct.ssid}, {0: "1", 2: acct.lifetime},
                        {0: "7", 3: acct.binding}])


class _BootstrapContexts:
    """Server credentials for ``OscoreSiteWrapper`` on the bootstrap socket: the key
    store's contexts, bootstrap ones (``NAME#bs``) only; a request under a server
    context is answered 4.01 by the wrapper (KeyError), as an unknown kid is."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    def find_oscore(self, unprotected: Mapping[int, Any]) -> NodeContext:
        ctx = self._keys.find_oscore(unprotected)
        if not ctx.endpoint.endswith(BOOTSTRAP_SUFFIX):
            raise KeyError("not a bootstrap context")
        return ctx

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        return self._keys.find_all_used_contextless_oscore_kid()


class _BsResource(Resource):
    def __init__(self, server: BootstrapServer) -> None:
        super().__init__()
        self._server = server

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return self._server.request(request)


class BootstrapServer:
    """Answers Bootstrap-Requests and runs each client's bootstrap sequence.

    Either ``await start()`` (its own aiocoap context on bootstrap.host/port) or mount
    ``resource()`` at ``("bs",)`` in a site and ``attach(context)`` the context serving
    it (the sequence goes out through it). ``server_uri`` fills an account's ``uri = ""``.
    ``keys``: the gateway's OSCORE key store (bootstrap over OSCORE, Object 21);
    ``secure``: refuse every unprotected request (``security = "oscore"``).
    ``results`` keeps the last outcome per endpoint ("finished" or the failed step)."""

    def __init__(self, config: BootstrapConfig, server_uri: str = "", *,
                 keys: KeyStore | None = None, secure: bool = False) -> None:
        self.config = config
        self.server_uri = server_uri
        self.keys = keys
        self.secure = secure
        self.results: dict[str, str] = {}
        self._ctx: aiocoap.Context | None = None
        self._own = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: dict[str, asyncio.Event] = {}

    def resource(self) -> Resource:
        return _BsResource(self)

    def attach(self, context: aiocoap.Context) -> None:
        self._ctx = context

    async def start(self) -> None:
        site = Site()
        site.add_resource(["bs"], self.resource())
        cfg = self.config
        root: Any = site
        if self.keys is not None:  # protected requests verified above /bs (aiocoap)
            root = OscoreSiteWrapper(site, _BootstrapContexts(self.keys))
        self._ctx = await aiocoap.Context.create_server_context(
            root, bind=(cfg.host, cfg.port),
            transports=["oscore", "udp6"] if self.keys is not None else ["udp6"],
            loggername="aiotkit.gateway.bootstrap.coap")
        self._own = True

    async def shutdown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own and self._ctx is not None:
            await self._ctx.shutdown()
        self._ctx = None

    async def wait(self, endpoint: str) -> str:
        """Wait until a sequence for ``endpoint`` ends; its result."""
        await self._done.setdefault(endpoint, asyncio.Event()).wait()
        return self.results[endpoint]

    def request(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer ``POST /bs`` (see the module docstring)."""
        queries = [q.partition("=") for q in request.opt.uri_query]
        eps = [v for k, _, v in queries if k == "ep"]
        peer = request.remote.hostinfo
        if len(eps) != 1 or not valid_endpoint(eps[0]):
            return self._refuse(Code.BAD_REQUEST, "missing or bad ep", peer)
        ep = eps[0]
        for k, _, v in queries:
            if k == "pct":
                if not v.isdigit():
                    return self._refuse(Code.BAD_REQUEST, "bad pct", peer)
                if int(v) != CF_SENML_CBOR:
                    return self._refuse(Code.UNSUPPORTED_CONTENT_FORMAT,
                                        "only SenML-CBOR (112)", peer)
        acct = self.config.account(ep)
        if acct is None:
            return self._refuse(Code.BAD_REQUEST, f"no bootstrap account for {ep}", peer)
        who = getattr(getattr(request.remote, "security_context", None), "endpoint", None)
        if who is not None and who != bootstrap_context_name(ep):
            return self._refuse(Code.FORBIDDEN, f"ep {ep} is not the endpoint of the"
                                " OSCORE context the request was verified under", peer)
        if who is None and (self.secure or self._provisioned(ep)):
            return self._refuse(Code.UNAUTHORIZED, f"{ep}: OSCORE required (the bootstrap"
                                " context NAME#bs)", peer)
        if self._ctx is None:
            log.error("bootstrap request from %s: no context attached", peer)
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE)
        log.info("bootstrap request ep=%s from %s", ep, peer)
        self._done[ep] = self._done.get(ep) or asyncio.Event()
        self._done[ep].clear()
        task = asyncio.create_task(self._sequence(ep, acct, request.remote, who is not None),
                                   name=f"aiot-bootstrap-{ep}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return aiocoap.Message(code=Code.CHANGED)

    def _provisioned(self, ep: str) -> bool:
        # an endpoint with a live server or bootstrap context: never bootstrapped in clear
        keys = self.keys
        return keys is not None and (keys.context(ep) is not None
                                     or keys.context(bootstrap_context_name(ep)) is not None)

    def _refuse(self, code: Code, why: str, peer: str) -> aiocoap.Message:
        _peer_log.info("refused", "bootstrap request from %s refused: %s %s", peer, code,
                       why)
        return aiocoap.Message(code=code, payload=why.encode()[:_MAX_DIAGNOSTIC])

    async def _sequence(self, ep: str, acct: BootstrapAccount, remote: Any,
                        protected: bool = False) -> None:
        uri = acct.uri or self.server_uri
        deliver = (protected and acct.oscore and self.keys is not None
                   and uri == self.server_uri)  # our server's context, over OSCORE only
        steps: list[tuple[str, Code, tuple[str, ...], bytes | None, Code]] = [
            ("delete /0", Code.DELETE, ("0",), b"", Code.DELETED),
            ("delete /1", Code.DELETE, ("1",), b"", Code.DELETED),
        ]
        if deliver:
            steps.append(("delete /21", Code.DELETE, ("21",), b"", Code.DELETED))
        steps += [
            (f"write /0/{SERVER_INSTANCE}", Code.PUT, ("0", str(SERVER_INSTANCE)),
             senml_security(acct, uri, deliver), Code.CHANGED),
        ]
        if deliver:  # the payload is made after the deletes: issuing may rotate
            steps.append((f"write /21/{OSCORE_INSTANCE}", Code.PUT,
                          ("21", str(OSCORE_INSTANCE)), None, Code.CHANGED))
        steps += [
            ("write /1/0", Code.PUT, ("1", "0"), senml_server(acct), Code.CHANGED),
            ("finish", Code.POST, ("bs",), b"", Code.CHANGED),
        ]
        result = "finished"
        what = "start"
        ctx = self._ctx
        try:
            for what, code, path, payload, want in steps:
                if payload is None:
                    payload = self._issue(ep)
                msg = aiocoap.Message(code=code, uri_path=path, payload=payload)
                if payload:
                    msg.opt.content_format = CF_SENML_CBOR
                msg.remote = remote
                if ctx is None:
                    raise aiocoap.error.LibraryShutdown()
                resp = await asyncio.wait_for(ctx.request(msg).response,
                                              self.config.timeout_s)
                if resp.code != want:
                    result = f"{what}: {resp.code}"
                    break
            log.info("bootstrap ep=%s: %s (server %s, lifetime %d, binding %s, ssid %d, %s)",
                     ep, result, uri, acct.lifetime, acct.binding, acct.ssid,
                     "OSCORE /21" if deliver else "NoSec")
        except (aiocoap.error.Error, TimeoutError, SecurityError) as e:
            result = f"{what}: {type(e).__name__} {e}".strip()
            log.warning("bootstrap ep=%s failed: %s", ep, result)
        finally:
            self.results[ep] = result
            self._done.setdefault(ep, asyncio.Event()).set()

    def _issue(self, ep: str) -> bytes:
        # /21's payload: the endpoint's server context issued now (issue_credentials)
        keys = self.keys
        if keys is None:  # a bug: deliver is False without a key store
            raise RuntimeError("no OSCORE key store to issue a context from")
        node = issue_credentials(keys, ep)
        log.info("bootstrap ep=%s: OSCORE server context issued (kid %s)", ep,
                 node.sender_id.hex())
        return senml_oscore(node)
