"""Device management: the LwM2M server's side of the DM&SE and information reporting
interfaces, as a Python API on the gateway (``Gateway.dm``).

Every operation sends a real CoAP request from the gateway's server socket (the LwM2M
server's address) to the address the client registered from, decodes the answer with
``codecs`` using the DDF definitions, and returns a ``DMResult``:

==================  ======  ==============================================  ==========
operation           method  request (LwM2M TS Transport 1.1 §6.4, §6.5)     success
==================  ======  ==============================================  ==========
read                GET     /O[/I[/R[/RI]]], Accept if asked                2.05
discover            GET     Accept 40 (link-format)                         2.05
write (replace)     PUT     /O/I[/R[/RI]], payload in the client's format   2.04
write (partial)     POST    /O/I[/R]                                        2.04
write_attributes    PUT     ?pmin=&pmax=&gt=&lt=&st=&epmin=&epmax=          2.04
execute             POST    /O/I/R, optional text arguments                 2.04
create              POST    /O, the new instance's resources                2.01
delete              DELETE  /O/I                                            2.02
observe             GET     Observe 0                                       2.05
cancel_observe      GET     Observe 1 (and the old token is forgotten)      2.05
read_composite      FETCH   /, SenML-CBOR list of paths, Accept 112         2.05
observe_composite   FETCH   as read_composite, Observe 0                    2.05
write_composite     iPATCH  /, SenML-CBOR records of resources (instances)  2.04
==================  ======  ==============================================  ==========

A CoAP error answer raises ``OperationFailed`` (its ``code``, e.g. 4.04 unknown path,
4.05 not allowed, and the ``result``); no answer within ``dm.request_timeout_s``
raises ``DeviceTimeout``; an endpoint that is not registered raises ``NotRegistered``.

Values to write are typed by the DDF definitions and encoded in SenML-CBOR for LwM2M 1.1+
clients, in OMA-TLV (plain text for a single resource) for LwM2M 1.0 clients, or in the
format named by ``content_format``.

Queue mode (binding with ``Q``): a request for a node that has not sent an Update (or
Register) within ``dm.queue_awake_s`` is stored durably (``Storage.dm``) and delivered,
in order, when the node next sends an Update, Register or Send; the result is recorded.
The operation methods then wait for that (wrap them in ``asyncio.timeout`` to stop
waiting: the request stays queued); ``enqueue`` returns the request id at once, and
``result``/``wait`` give the outcome later, across gateway restarts too. A queued
request the node does not answer stays queued for its next wake-up.

Observations are persisted (endpoint, paths, the Observe request, token, registration).
Each Notification is decoded and stored like a Send (``Registry.submit_send``: readings,
last values, uplink outbox, listeners), and linked to its observation in
``dm_notifications``; the first answer to Observe is stored the same way. One older
than the last seen for its observation (RFC 7641 §3.4) is dropped. A plain one-datagram
Notification may be served below aiocoap (``gateway/coap/fastnotify.py``, which finds its
observation with ``take_notification``); aiocoap hands the others to ``_on_notify``. After a
gateway restart every persisted observation of a live registration is re-established
at once (queue-mode clients: when they next wake); a new Register (which ends the
client's observations) re-applies the endpoint's Write-Attributes and re-observes; a
De-register cancels and forgets them.

Auto-observe: ``[dm] observe = ["/3313/0", ...]`` makes the gateway observe those paths on
every node that registers, at each Register (a re-Register too), through ``observe``,
when the registration's object links list that object instance (an object path: any
instance of it). It runs after the Register is answered, in the endpoint's wake-up task
(so after re-established observations and before its queue); a path already observed
live in this registration is not observed twice; a failure is logged (the
``aiotkit.gateway.dm`` logger is rate-limited by the daemon), never raised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import cbor2

from ..coap.aio import Code, aiocoap
from ..errors import BadRequest, GatewayError
from ..lwm2m import codecs
from ..lwm2m.ddf import ObjectDef, ResourceType, resource_def
from ..lwm2m.linkformat import (
    CF_LINK_FORMAT,
    content_formats,
    free_instance,
    registered_instances,
)
from ..lwm2m.paths import MAX_ID, format_path, parse_path
from ..lwm2m.registry import Registry, RegistryEvent
from ..lwm2m.senml import Record, Value, ValueKind
from ..storage.api import (
    NotificationLink,
    ObservationRow,
    Registration,
    RequestRow,
    Storage,
)

if TYPE_CHECKING:
    from ..config import DMConfig

__all__ = [
    "ATTRIBUTES",
    "OPERATIONS",
    "DMError",
    "DMResult",
    "DeviceManagement",
    "DeviceTimeout",
    "DeviceUnreachable",
    "NotRegistered",
    "OperationFailed",
    "QueueFull",
    "WireRequest",
]

log = logging.getLogger("aiotkit.gateway.dm")

_SEQ_MOD, _SEQ_HALF = 1 << 24, 1 << 23  # Observe values are 24-bit (RFC 7641 §3.4)
_OBSERVE_RESET_S = 128.0  # after this a Notification counts as newer whatever its value

Operation = Literal[
    "read", "discover", "write", "write_attributes", "execute", "create", "delete",
    "observe", "cancel_observe", "read_composite", "observe_composite",
    "cancel_observe_composite", "write_composite",
]
OPERATIONS: tuple[str, ...] = (
    "read", "discover", "write", "write_attributes", "execute", "create", "delete",
    "observe", "cancel_observe", "read_composite", "observe_composite",
    "cancel_observe_composite", "write_composite",
)
# Write-Attributes names and value types (TS Core 1.1 §5.1.2: <NOTIFICATION> class)
ATTRIBUTES: dict[str, type] = {"pmin": int, "pmax": int, "gt": float, "lt": float,
                               "st": float, "epmin": int, "epmax": int}


class DMError(GatewayError):
    """Base of the device-management errors."""


class NotRegistered(DMError):
    """The endpoint has no live registration (and is not in queue mode)."""


class QueueFull(DMError):
    """The endpoint already has ``dm.max_queued`` requests waiting."""


class DeviceUnreachable(DMError):
    """The request got no CoAP answer (a network error, or a reset)."""


class DeviceTimeout(DeviceUnreachable):
    """The node did not answer within the request timeout."""


class OperationFailed(DMError):
    """The node answered with a CoAP error code (``code``, e.g. 4.04); ``result`` has it."""

    def __init__(self, result: DMResult) -> None:
        detail = f": {result.diagnostic}" if result.diagnostic else ""
        super().__init__(f"{result.operation} {result.path} on {result.endpoint}: "
                         f"{result.code}{detail}")
        self.result = result
        self.code: Code = _code(result.code)


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A DM request as it goes on the wire (and into the queue, as JSON)."""

    op: str
    method: str  # GET, PUT, POST, DELETE, FETCH, iPATCH
    path: str  # the Uri-Path, "/" for composite operations
    paths: tuple[str, ...] = ()  # composite: the paths named in the payload
    query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    payload: bytes = b""
    observe: int | None = None

    @property
    def key(self) -> str:
        """What an observation is keyed by: its path(s)."""
        return ",".join(self.paths) if self.paths else self.path

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "method": self.method, "path": self.path,
                "paths": list(self.paths), "query": list(self.query),
                "content_format": self.content_format, "accept": self.accept,
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "observe": self.observe}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WireRequest:
        return cls(data["op"], data["method"], data["path"], tuple(data["paths"]),
                   tuple(data["query"]), data["content_format"], data["accept"],
                   base64.b64decode(data["payload"]), data["observe"])


@dataclass(frozen=True, slots=True)
class DMResult:
    """What a device-management request got back.

    ``code`` is the CoAP code as text (``"2.05"``); ``values`` the decoded resource
    values by path (empty when the answer has none or could not be decoded, then
    ``diagnostic`` says why); ``payload`` the raw answer; ``location`` the new
    instance of a Create (``"/3303/1"``); ``links`` a Discover's link-format text;
    ``observation_id`` the persisted observation of an Observe.
    """

    endpoint: str
    operation: str
    path: str
    code: str
    content_format: int | None = None
    values: dict[str, Value] = field(default_factory=dict)
    payload: bytes = b""
    t: float = 0.0
    request_id: int | None = None
    location: str | None = None
    links: str | None = None
    observation_id: int | None = None
    diagnostic: str | None = None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (bytes values as ``{"base64": ...}``)."""
        return {
            "endpoint": self.endpoint, "operation": self.operation, "path": self.path,
            "code": self.code, "ok": self.ok, "content_format": self.content_format,
            "values": {p: _json_value(v) for p, v in self.values.items()},
            "payload": base64.b64encode(self.payload).decode("ascii"), "t": self.t,
            "request_id": self.request_id, "location": self.location, "links": self.links,
            "observation_id": self.observation_id, "diagnostic": self.diagnostic,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DMResult:
        return cls(
            data["endpoint"], data["operation"], data["path"], data["code"],
            data["content_format"],
            {p: _from_json_value(v) for p, v in data["values"].items()},
            base64.b64decode(data["payload"]), data["t"], data["request_id"],
            data["location"], data["links"], data["observation_id"], data["diagnostic"],
        )


@dataclass(slots=True)
class _Live:
    """An established observation: the aiocoap request that keeps it."""

    obs_id: int
    endpoint: str
    key: str
    request: Any  # aiocoap Request with .observation
    reg_id: str
    wire: WireRequest
    peer: tuple[str, int, bytes] | None  # (host, port, token) the Notifications carry
    seq: int | None = None  # the last fresh Observe value and when it came (RFC 7641 §3.4)
    seen: float = 0.0


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a request got no answer."""

    exc: DMError
    timeout: bool


class DeviceManagement:
    """LwM2M device management over the gateway's CoAP context.

    Construct, ``Registry.add_listener(dm.on_event)``, ``await start(context)``; stop
    with ``await shutdown()``. Operation methods are coroutines on the gateway's loop.
    """

    WAKE_EVENTS: ClassVar[frozenset[str]] = frozenset({"registered", "updated", "send"})

    def __init__(self, store: Storage, registry: Registry,
                 config: DMConfig, *, objects: Mapping[int, ObjectDef] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._registry = registry
        self.db = store.dm
        self._cfg = config
        self.objects = objects
        self._clock = clock
        self._ctx: aiocoap.Context | None = None
        self._live: dict[int, _Live] = {}  # observation id -> live observation
        self._peers: dict[tuple[str, int, bytes], _Live] = {}  # (host, port, token) -> it
        self._waiters: dict[int, list[asyncio.Future[DMResult]]] = {}
        self._queued_eps: set[str] = set()  # endpoints with pending requests
        self._observed_eps: set[str] = set()  # endpoints with persisted observations
        self._waking: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._reregistered: set[str] = set()
        self._auto: set[str] = set()  # endpoints that registered: auto-observe due
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle --------------------------------------------------------------------

    async def start(self, context: aiocoap.Context) -> None:
        """Use ``context`` (the server's) for requests; re-establish what was persisted."""
        self._ctx = context
        self.db.recover(self._clock())
        self._queued_eps = self.db.queued_endpoints()
        self._observed_eps = self.db.observed_endpoints()
        for ep in sorted(self._queued_eps | self._observed_eps):
            reg = self._live_registration(ep)
            if reg is None:
                continue
            if not _queue_mode(reg) or self._awake(reg):
                self._wake(ep)

    async def shutdown(self) -> None:
        """Stop waking nodes; forget live observations (they stay persisted)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for live in list(self._live.values()):
            self._drop_live(live)
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        self._ctx = None

    # -- operations --------------------------------------------------------------------

    async def read(self, endpoint: str, path: str, *, accept: int | None = None,
                   timeout: float | None = None) -> DMResult:
        """Read an object, instance, resource or resource instance (2.05)."""
        reg = self._registration(endpoint)
        wire = self.build("read", reg, path, accept=accept)
        return await self._run(reg, wire, timeout)

    async def discover(self, endpoint: str, path: str, *,
                       timeout: float | None = None) -> DMResult:
        """Discover: the link-format text is in ``result.links``."""
        reg = self._registration(endpoint)
        return await self._run(reg, self.build("discover", reg, path), timeout)

    async def write(self, endpoint: str, path: str, value: Any, *, replace: bool = True,
                    content_format: int | None = None,
                    timeout: float | None = None) -> DMResult:
        """Write ``value`` to ``path``: PUT (replace) or POST (partial update).

        ``value`` is a single value for a resource (instance) path, a ``{ri: value}``
        dict for a multiple resource, or ``{rid: value_or_dict}`` for an object
        instance; values are typed by the DDF definitions (a wrong type raises
        ``codecs.CodecError`` before anything is sent).
        """
        reg = self._registration(endpoint)
        wire = self.build("write", reg, path, value=value, replace=replace,
                          content_format=content_format)
        return await self._run(reg, wire, timeout)

    async def write_attributes(self, endpoint: str, path: str, *, pmin: int | None = None,
                               pmax: int | None = None, gt: float | None = None,
                               lt: float | None = None, st: float | None = None,
                               epmin: int | None = None, epmax: int | None = None,
                               unset: Sequence[str] = (),
                               timeout: float | None = None) -> DMResult:
        """Write-Attributes; names in ``unset`` are removed (sent without a value)."""
        reg = self._registration(endpoint)
        attrs = {"pmin": pmin, "pmax": pmax, "gt": gt, "lt": lt, "st": st,
                 "epmin": epmin, "epmax": epmax}
        wire = self.build("write_attributes", reg, path,
                          attributes={k: v for k, v in attrs.items() if v is not None},
                          unset=unset)
        return await self._run(reg, wire, timeout)

    async def execute(self, endpoint: str, path: str, args: str | None = None, *,
                      timeout: float | None = None) -> DMResult:
        """Execute a resource, with optional arguments (TS Core §5.4.5 syntax)."""
        reg = self._registration(endpoint)
        return await self._run(reg, self.build("execute", reg, path, args=args), timeout)

    async def create(self, endpoint: str, obj: int, values: Mapping[int, Any], *,
                     instance: int | None = None, content_format: int | None = None,
                     timeout: float | None = None) -> DMResult:
        """Create an instance of object ``obj`` with resources ``{rid: value}``.

        Without ``instance`` the gateway picks the lowest id the registration does not
        list; the created instance is ``result.location``.
        """
        reg = self._registration(endpoint)
        wire = self.build("create", reg, f"/{obj}", value=dict(values), instance=instance,
                          content_format=content_format)
        return await self._run(reg, wire, timeout)

    async def delete(self, endpoint: str, path: str, *,
                     timeout: float | None = None) -> DMResult:
        """Delete an object instance (2.02)."""
        reg = self._registration(endpoint)
        return await self._run(reg, self.build("delete", reg, path), timeout)

    async def observe(self, endpoint: str, path: str, *, accept: int | None = None,
                      timeout: float | None = None) -> DMResult:
        """Observe ``path``; Notifications are stored as readings until cancelled.

        The observation is persisted (``result.observation_id``) and re-established
        after gateway restarts and re-registrations.
        """
        reg = self._registration(endpoint)
        return await self._run(reg, self.build("observe", reg, path, accept=accept), timeout)

    async def cancel_observe(self, endpoint: str, path: str, *,
                             timeout: float | None = None) -> DMResult:
        """Cancel the observation of ``path`` (GET with Observe 1) and forget it."""
        reg = self._registration(endpoint)
        return await self._run(reg, self.build("cancel_observe", reg, path), timeout)

    async def read_composite(self, endpoint: str, paths: Sequence[str], *,
                             accept: int | None = None,
                             timeout: float | None = None) -> DMResult:
        """Read-Composite: FETCH with the list of paths (SenML-CBOR)."""
        reg = self._registration(endpoint)
        wire = self.build("read_composite", reg, "/", paths=paths, accept=accept)
        return await self._run(reg, wire, timeout)

    async def write_composite(self, endpoint: str, values: Mapping[str, Any], *,
                              timeout: float | None = None) -> DMResult:
        """Write-Composite: iPATCH / with SenML-CBOR records; ``values`` is ``{path:
        value}`` for resources and resource instances (a ``{ri: value}`` dict for a
        multiple resource), typed by the DDF definitions like ``write``."""
        reg = self._registration(endpoint)
        wire = self.build("write_composite", reg, "/", value=dict(values))
        return await self._run(reg, wire, timeout)

    async def observe_composite(self, endpoint: str, paths: Sequence[str], *,
                                accept: int | None = None,
                                timeout: float | None = None) -> DMResult:
        """Observe-Composite: FETCH with Observe 0; persisted like ``observe``."""
        reg = self._registration(endpoint)
        wire = self.build("observe_composite", reg, "/", paths=paths, accept=accept)
        return await self._run(reg, wire, timeout)

    async def cancel_observe_composite(self, endpoint: str, paths: Sequence[str], *,
                                       timeout: float | None = None) -> DMResult:
        """Cancel-Observation-Composite (FETCH with Observe 1) and forget it."""
        reg = self._registration(endpoint)
        wire = self.build("cancel_observe_composite", reg, "/", paths=paths)
        return await self._run(reg, wire, timeout)

    # -- queue and results -------------------------------------------------------------

    def enqueue(self, endpoint: str, op: str, path: str | Sequence[str] = "/",
                **kwargs: Any) -> int:
        """Queue an operation for a queue-mode endpoint and return its request id now.

        ``op`` is one of ``OPERATIONS``; ``path`` a path, or the paths of a composite
        operation; ``kwargs`` as for the operation's method (``value``, ``replace``,
        ``attributes``, ``unset``, ``args``, ``accept``, ``content_format``,
        ``instance``). For an endpoint not in queue mode the request is sent right away
        in the background. ``result(id)`` / ``wait(id)`` give the outcome.
        """
        reg = self._registration(endpoint)
        if op in ("read_composite", "observe_composite", "cancel_observe_composite"):
            paths = [path] if isinstance(path, str) else list(path)
            wire = self.build(op, reg, "/", paths=paths, **kwargs)
        else:
            if not isinstance(path, str):
                raise DMError(f"{op} takes one path")
            wire = self.build(op, reg, path, **kwargs)
        return self._enqueue(reg, wire, force=True)

    def result(self, request_id: int) -> DMResult | None:
        """The recorded result of a request (None while it is pending or unknown)."""
        row = self.db.request(request_id)
        if row is None or row.result is None or "code" not in row.result:
            return None
        return DMResult.from_json(row.result)

    def request_state(self, request_id: int) -> str | None:
        """``pending``, ``sending``, ``done`` or ``failed`` (None: unknown id)."""
        row = self.db.request(request_id)
        return None if row is None else row.state

    def requests(self, endpoint: str | None = None, *, open_only: bool = False,
                 limit: int = 100) -> list[dict[str, Any]]:
        """Recorded requests as JSON-serialisable dicts, oldest first."""
        return [_request_json(r)
                for r in self.db.requests(endpoint, open_only=open_only, limit=limit)]

    def request(self, request_id: int) -> dict[str, Any] | None:
        """One recorded request as a JSON-serialisable dict (None: unknown id)."""
        row = self.db.request(request_id)
        return None if row is None else _request_json(row)

    async def wait(self, request_id: int) -> DMResult:
        """Wait for a request's result (raises ``DMError`` if it failed without one)."""
        row = self.db.request(request_id)
        if row is None:
            raise DMError(f"no request {request_id}")
        if row.state in ("done", "failed"):
            return self._outcome(row.result or {})
        fut: asyncio.Future[DMResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(fut)
        try:
            return await fut
        finally:
            futures = self._waiters.get(request_id, [])
            if fut in futures:
                futures.remove(fut)
            if not futures:
                self._waiters.pop(request_id, None)

    def observations(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Persisted observations as JSON-serialisable dicts (``live``: established now)."""
        return [{"id": o.id, "endpoint": o.endpoint, "paths": o.key.split(","),
                 "composite": o.spec.get("op") == "observe_composite",
                 "token": o.token.hex() if o.token is not None else None,
                 "reg_id": o.reg_id, "created": o.created, "established": o.established,
                 "live": o.id in self._live}
                for o in self.db.observations(endpoint)]

    # -- building requests -------------------------------------------------------------

    def build(self, op: str, reg: Registration, path: str, *, accept: int | None = None,
              value: Any = None, replace: bool = True, content_format: int | None = None,
              attributes: Mapping[str, float] | None = None, unset: Sequence[str] = (),
              args: str | None = None, instance: int | None = None,
              paths: Sequence[str] = ()) -> WireRequest:
        """The wire request of ``op`` for ``reg`` (checks and encodes; sends nothing)."""
        if op not in OPERATIONS:
            raise DMError(f"unknown operation {op!r} (one of {', '.join(OPERATIONS)})")
        ids = parse_path(path)
        text = format_path(ids)
        if op in ("read_composite", "observe_composite", "cancel_observe_composite"):
            if not paths:
                raise DMError(f"{op} needs at least one path")
            names = tuple(format_path(parse_path(p)) for p in paths)
            body = cbor2.dumps([{0: n} for n in names])
            observe = {"observe_composite": 0, "cancel_observe_composite": 1}.get(op)
            return WireRequest(op, "FETCH", "/", names, (), codecs.CF_SENML_CBOR,
                               accept if accept is not None else codecs.CF_SENML_CBOR,
                               body, observe)
        if op == "write_composite":
            if not isinstance(value, Mapping) or not value:
                raise DMError("write_composite takes {path: value}, at least one")
            records: list[Record] = []
            for where, v in value.items():
                pids = parse_path(where)
                if len(pids) < 3:
                    raise DMError("write_composite takes resource (instance) paths, not "
                                  f"{format_path(pids)}")
                records += _records(pids, v, self.objects)
            payload = codecs.encode(codecs.CF_SENML_CBOR, records, "/", self.objects)
            return WireRequest(op, "iPATCH", "/", tuple(format_path(parse_path(w))
                                                        for w in value), (),
                               codecs.CF_SENML_CBOR, None, payload)
        if op in ("read", "observe", "cancel_observe"):
            _need(ids, 1, op)
            observe = {"observe": 0, "cancel_observe": 1}.get(op)
            return WireRequest(op, "GET", text, accept=accept, observe=observe)
        if op == "discover":
            _need(ids, 1, op)
            return WireRequest(op, "GET", text, accept=CF_LINK_FORMAT)
        if op == "delete":
            if len(ids) != 2:
                raise DMError(f"delete takes an object instance path, not {text}")
            return WireRequest(op, "DELETE", text)
        if op == "execute":
            if len(ids) != 3:
                raise DMError(f"execute takes a resource path, not {text}")
            payload = (args or "").encode("utf-8")
            return WireRequest(op, "POST", text, payload=payload,
                               content_format=codecs.CF_TEXT if payload else None)
        if op == "write_attributes":
            _need(ids, 1, op)
            query = _attribute_query(attributes or {}, unset)
            return WireRequest(op, "PUT", text, query=query)
        if op == "write":
            if len(ids) < 2:
                raise DMError(f"write takes an object instance or deeper path, not {text}")
            records = _records(ids, value, self.objects)
            cf = content_format or _write_format(reg, ids, records)
            payload = codecs.encode(cf, records, ids, self.objects)
            return WireRequest(op, "PUT" if replace else "POST", text, content_format=cf,
                               payload=payload)
        # create
        if len(ids) != 1:
            raise DMError(f"create takes an object path, not {text}")
        if not isinstance(value, Mapping):
            raise DMError("create takes {resource id: value}")
        iid = instance if instance is not None else free_instance(reg.object_links, ids[0])
        base = (ids[0], iid)
        records = _records(base, value, self.objects)
        cf = content_format or _write_format(reg, base, records, single_ok=False)
        payload = codecs.encode(cf, records, ids, self.objects)
        return WireRequest(op, "POST", text, content_format=cf, payload=payload)

    # -- running requests --------------------------------------------------------------

    async def _run(self, reg: Registration, wire: WireRequest,
                   timeout: float | None) -> DMResult:
        if _queue_mode(reg) and not self._awake(reg):
            result = await self.wait(self._enqueue(reg, wire))
        else:
            rid = self.db.add_request(reg.endpoint, wire.op, wire.to_json(), queued=False,
                                      now=self._clock())
            outcome = await self._deliver(reg, wire, rid, timeout)
            if isinstance(outcome, _Failure):
                raise outcome.exc
            result = outcome
        if not result.ok:
            raise OperationFailed(result)
        return result

    def _enqueue(self, reg: Registration, wire: WireRequest, *, force: bool = False) -> int:
        if self.db.count_open(reg.endpoint) >= self._cfg.max_queued:
            raise QueueFull(f"{reg.endpoint} already has {self._cfg.max_queued} requests"
                            " waiting")
        rid = self.db.add_request(reg.endpoint, wire.op, wire.to_json(), queued=True,
                                  now=self._clock())
        self._queued_eps.add(reg.endpoint)
        log.info("queued %s %s for ep=%s (request %d)", wire.op, wire.key, reg.endpoint, rid)
        if force and (not _queue_mode(reg) or self._awake(reg)):
            self._wake(reg.endpoint)
        return rid

    async def _deliver(self, reg: Registration, wire: WireRequest, rid: int | None,
                       timeout: float | None) -> DMResult | _Failure:
        """Send ``wire``, record and return the result (or why there is none)."""
        try:
            response, request = await self._exchange(reg, wire, timeout)
        except DeviceUnreachable as e:
            if rid is not None:
                self.db.finish(rid, "failed", {"error": str(e)}, self._clock())
            return _Failure(e, isinstance(e, DeviceTimeout))
        result = self._result(reg, wire, response, rid)
        if wire.op in ("observe", "observe_composite"):
            result = self._observed(reg, wire, response, request, result)
        elif wire.op in ("cancel_observe", "cancel_observe_composite"):
            self._forget(reg.endpoint, wire.key)
        elif wire.op == "write_attributes" and result.ok:
            self.db.save_attributes(reg.endpoint, wire.path, list(wire.query), self._clock())
        if rid is not None:
            self.db.finish(rid, "done", result.to_json(), self._clock())
        return result

    async def _exchange(self, reg: Registration, wire: WireRequest,
                        timeout: float | None) -> tuple[aiocoap.Message, Any]:
        if self._ctx is None:
            raise DMError("device management is not started")
        host = f"[{reg.host}]" if ":" in reg.host else reg.host
        msg = aiocoap.Message(code=Code[wire.method], payload=wire.payload,
                              uri=f"coap://{host}:{reg.port}")
        msg.opt.uri_path = tuple(p for p in wire.path.split("/") if p)
        if wire.query:
            msg.opt.uri_query = wire.query
        if wire.content_format is not None:
            msg.opt.content_format = wire.content_format
        if wire.accept is not None:
            msg.opt.accept = wire.accept
        if wire.observe is not None:
            msg.opt.observe = wire.observe
        limit = self._cfg.request_timeout_s if timeout is None else timeout
        # Observe 1 (cancel) has no observation to follow: plain request, no blockwise
        request = self._ctx.request(msg, handle_blockwise=wire.observe != 1)
        try:
            async with asyncio.timeout(limit):
                response = await request.response
        except TimeoutError as e:
            # Lose interest explicitly: gateway/coap/layer.py then stops the CON's
            # retransmissions, which with NSTART = 1 would hold every later request.
            request.response.cancel()
            raise DeviceTimeout(f"{wire.op} {wire.key}: {reg.endpoint} did not answer"
                                f" within {limit:g} s") from e
        except aiocoap.error.Error as e:
            raise DeviceUnreachable(f"{wire.op} {wire.key}: {reg.endpoint} unreachable:"
                                    f" {e}") from e
        return response, request

    def _result(self, reg: Registration, wire: WireRequest, response: aiocoap.Message,
                rid: int | None) -> DMResult:
        code = _code_text(response.code)
        cf = response.opt.content_format
        cf_int = int(cf) if cf is not None else None
        payload = bytes(response.payload)
        values: dict[str, Value] = {}
        diagnostic = None
        links = None
        location = None
        if not response.code.is_successful():
            diagnostic = payload.decode("utf-8", "replace")[:200] or None
        elif wire.op == "discover":
            links = payload.decode("utf-8", "replace")
        elif wire.op == "create":
            location = "/" + "/".join(response.opt.location_path) \
                if response.opt.location_path else None
        elif payload:
            try:
                records = self._decode(cf_int, payload, wire)
                values = {r.path: r.value for r in records}
            except (BadRequest, codecs.UnknownContentFormat) as e:  # whatever it sent
                diagnostic = f"answer not decoded: {e}"
        return DMResult(reg.endpoint, wire.op, wire.key, code, cf_int, values, payload,
                        self._clock(), rid, location, links, None, diagnostic)

    def _decode(self, cf: int | None, payload: bytes, wire: WireRequest) -> list[Record]:
        if cf is None:
            cf = codecs.CF_TEXT  # TS Transport: no Content-Format means text/plain
        return codecs.decode(cf, payload, wire.path, self.objects)

    # -- observations ------------------------------------------------------------------

    def _observed(self, reg: Registration, wire: WireRequest, response: aiocoap.Message,
                  request: Any, result: DMResult) -> DMResult:
        """Persist an Observe that the client accepted and follow its Notifications."""
        if not result.ok:
            return result
        now = self._clock()
        obs_id = self.db.save_observation(reg.endpoint, wire.key, wire.to_json(), now)
        self._observed_eps.add(reg.endpoint)
        if response.opt.observe is None:  # answered, but not observable
            log.info("ep=%s answered Observe %s without Observe option", reg.endpoint,
                     wire.key)
            self.db.established(obs_id, None, reg.reg_id, None)
        else:
            old = self._live.pop(obs_id, None)
            if old is not None:
                self._drop_live(old)
            sockaddr = getattr(response.remote, "sockaddr", None)
            peer = (sockaddr[0], sockaddr[1], bytes(response.token)) \
                if type(sockaddr) is tuple else None
            live = _Live(obs_id, reg.endpoint, wire.key, request, reg.reg_id, wire, peer,
                         response.opt.observe, self._clock())
            self._live[obs_id] = live
            if peer is not None:
                self._peers[peer] = live
            self.db.established(obs_id, response.token, reg.reg_id, now)
            observation = request.observation
            observation.register_callback(
                lambda msg: self._on_notify(live, wire, msg), _suppress_deprecation=True)
            observation.register_errback(
                lambda exc: self._on_observe_end(live, exc), _suppress_deprecation=True)
            log.info("observing %s on ep=%s (observation %d, token %s)", wire.key,
                     reg.endpoint, obs_id, response.token.hex())
        if result.values and response.opt.oscore is None:  # unverified: not stored
            self._store_values(obs_id, reg, wire, response.opt.content_format,
                               bytes(response.payload), response.opt.observe)
        return DMResult(result.endpoint, result.operation, result.path, result.code,
                        result.content_format, result.values, result.payload, result.t,
                        result.request_id, None, None, obs_id, result.diagnostic)

    def _on_notify(self, live: _Live, wire: WireRequest, msg: aiocoap.Message) -> None:
        if self._live.get(live.obs_id) is not live:
            return
        if not msg.code.is_successful():
            log.info("ep=%s ended observation of %s with %s", live.endpoint, live.key,
                     _code_text(msg.code))
            self._drop_live(live)
            return
        if msg.opt.oscore is not None:  # no security context verified it (coap/wire.py)
            log.warning("ep=%s: OSCORE-protected Notification for %s not stored (no"
                        " security context)", live.endpoint, live.key)
            return
        reg = self._live_registration(live.endpoint)
        if reg is None:
            return
        seq = msg.opt.observe  # None: the last one (aiocoap then ends the observation)
        if seq is not None and not self._fresh(live, seq):
            return
        self._store_values(live.obs_id, reg, wire, msg.opt.content_format,
                           bytes(msg.payload), seq)

    def take_notification(self, peer: tuple[str, int, bytes], cf: int | None,
                          payload: bytes, seq: int, *,
                          ordered: bool = True) -> asyncio.Future[Any] | None:
        """A 2.xx Notification with Observe ``seq`` from ``peer`` (host and port of the
        socket address, token), received below aiocoap: stored as ``_on_notify`` does.

        None if it is no live observation's here (aiocoap is to answer it); else a
        future done once it is stored (or at once: older than the last one, unless not
        ``ordered``; not decodable; no values), failed if storing failed."""
        live = self._peers.get(peer)
        if live is None or self._live.get(live.obs_id) is not live:
            return None
        reg = self._live_registration(live.endpoint)
        if reg is None:
            return None
        future = None
        if not ordered or self._fresh(live, seq):
            future = self._store_values(live.obs_id, reg, live.wire, cf, payload, seq)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
        return future

    def _fresh(self, live: _Live, seq: int) -> bool:
        """Whether Observe ``seq`` is newer than the last one of ``live`` (RFC 7641 §3.4:
        within 2^23 ahead, modulo 2^24, or 128 s later); if so it becomes the last."""
        now = self._clock()
        last = live.seq
        if (last is None or 0 < (seq - last) % _SEQ_MOD < _SEQ_HALF
                or now > live.seen + _OBSERVE_RESET_S):
            live.seq, live.seen = seq, now
            return True
        return False

    def _on_observe_end(self, live: _Live, exc: BaseException) -> None:
        if self._live.get(live.obs_id) is live:
            log.info("observation of %s on ep=%s ended: %s", live.key, live.endpoint,
                     type(exc).__name__)
            self._unlive(live)

    def _store_values(self, live_id: int, reg: Registration, wire: WireRequest,
                      cf: int | None, payload: bytes,
                      seq: int | None) -> asyncio.Future[Any] | None:
        """Decode and submit a Notification (or the first answer to Observe); the commit
        future, or None when there is nothing to store (logged)."""
        cf_int = int(cf) if cf is not None else None
        try:
            records = self._decode(cf_int, payload, wire)
        except (BadRequest, codecs.UnknownContentFormat) as e:
            log.info("Notification from ep=%s for %s not stored: %s", reg.endpoint,
                     wire.key, e)
            return None
        if not records:
            return None
        # its dm_notifications row commits with its readings (one group commit)
        future = self._registry.submit_send(
            reg, token=b"", content_format=cf_int if cf_int is not None else codecs.CF_TEXT,
            payload=payload, records=records,
            notification=NotificationLink(live_id, seq, cf_int, self._clock()))

        def stored(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.error("Notification from ep=%s not stored: %s", reg.endpoint,
                          fut.exception())

        future.add_done_callback(stored)
        return future

    def _unlive(self, live: _Live) -> None:
        """Forget ``live`` as established (both maps), if it still is."""
        if self._live.get(live.obs_id) is live:
            del self._live[live.obs_id]
        if live.peer is not None and self._peers.get(live.peer) is live:
            del self._peers[live.peer]

    def _drop_live(self, live: _Live) -> None:
        """Stop following an observation here: Notifications go to aiocoap, which ACKs
        the next one (its observation then stops listening) and answers later ones RST."""
        self._unlive(live)
        with contextlib.suppress(Exception):
            live.request.observation.cancel()

    def _forget(self, endpoint: str, key: str) -> None:
        row = self.db.observation(endpoint, key)
        if row is None:
            return
        live = self._live.get(row.id)
        if live is not None:
            self._drop_live(live)
        self.db.delete_observation(row.id)
        log.info("observation of %s on ep=%s cancelled", key, endpoint)

    # -- registry events: waking nodes -------------------------------------------------

    def on_event(self, event: RegistryEvent) -> None:
        """Registry listener: deliver queues and (re-)observe on Register/Update/Send,
        cancel observations on De-register."""
        ep = event.endpoint
        if event.kind == "deregistered":
            self._auto.discard(ep)
            self._end_observations(ep, forget=True)
            return
        if event.kind == "expired":
            self._auto.discard(ep)
            self._end_observations(ep, forget=False)
            return
        if event.kind == "registered" and ep in self._observed_eps:
            # A new registration: the client dropped its observations (TS Core §6.2.1)
            self._end_observations(ep, forget=False)
            self._reregistered.add(ep)
        if event.kind == "registered" and self._cfg.observe:
            self._auto.add(ep)
        if event.kind in self.WAKE_EVENTS and (ep in self._queued_eps or ep in self._auto
                                               or ep in self._observed_eps):
            if event.kind == "send" and ep not in self._queued_eps and ep not in self._auto:
                return
            self._wake(ep)

    def _end_observations(self, endpoint: str, *, forget: bool) -> None:
        for live in [v for v in self._live.values() if v.endpoint == endpoint]:
            self._drop_live(live)
        if forget and endpoint in self._observed_eps:
            n = self.db.delete_observations(endpoint)
            self._observed_eps.discard(endpoint)
            log.info("ep=%s de-registered: %d observation(s) cancelled", endpoint, n)

    def _wake(self, endpoint: str) -> None:
        if self._ctx is None:
            return
        if endpoint in self._waking:
            self._again.add(endpoint)
            return
        task = asyncio.get_running_loop().create_task(self._session(endpoint),
                                                      name=f"aiot-dm-wake-{endpoint}")
        self._waking[endpoint] = task
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._waking.get(endpoint) is t:
                del self._waking[endpoint]
            if not t.cancelled() and t.exception() is not None:
                log.error("device management for ep=%s failed", endpoint,
                          exc_info=t.exception())

        task.add_done_callback(done)

    async def _session(self, endpoint: str) -> None:
        """The node is awake: re-observe what is missing, auto-observe, then deliver its
        queue."""
        # Started from a Register's commit, before the Register's render resumes: one
        # yield lets that answer go out before any request of ours reaches the node.
        await asyncio.sleep(0)
        while True:
            self._again.discard(endpoint)
            reg = self._live_registration(endpoint)
            if reg is None:
                self._auto.discard(endpoint)
                return
            if not await self._reobserve(reg):
                return
            if endpoint in self._auto:
                self._auto.discard(endpoint)
                await self._auto_observe(reg)
            if not await self._drain(reg):
                return
            if endpoint not in self._again:
                return

    async def _reobserve(self, reg: Registration) -> bool:
        """Establish persisted observations that are not live; False if the node
        stopped answering."""
        if reg.endpoint not in self._observed_eps:
            return True
        if reg.endpoint in self._reregistered:
            self._reregistered.discard(reg.endpoint)
            for path, query in self.db.attributes(reg.endpoint).items():
                wire = WireRequest("write_attributes", "PUT", path, query=tuple(query))
                outcome = await self._deliver(reg, wire, None, None)
                if isinstance(outcome, _Failure):
                    return False
        live_ids = set(self._live)
        for row in self.db.observations(reg.endpoint):
            if row.id in live_ids:
                continue
            if not await self._reobserve_one(reg, row):
                return False
        return True

    async def _reobserve_one(self, reg: Registration, row: ObservationRow) -> bool:
        wire = WireRequest.from_json(row.spec)
        outcome = await self._deliver(reg, wire, None, None)
        if isinstance(outcome, _Failure):
            log.info("re-observing %s on ep=%s: %s", row.key, reg.endpoint, outcome.exc)
            return False
        if not outcome.ok:
            log.warning("re-observing %s on ep=%s refused (%s): observation dropped",
                        row.key, reg.endpoint, outcome.code)
            self.db.delete_observation(row.id)
        else:
            log.info("re-established observation of %s on ep=%s", row.key, reg.endpoint)
        return True

    async def _auto_observe(self, reg: Registration) -> None:
        """Observe the configured ``dm.observe`` paths the registration lists."""
        listed = registered_instances(reg.object_links)
        live = {(v.key, v.reg_id) for v in self._live.values() if v.endpoint == reg.endpoint}
        for path in self._cfg.observe:
            ids = parse_path(path)
            if ids[:2] not in listed or (path, reg.reg_id) in live:
                continue
            try:
                await self.observe(reg.endpoint, path)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a node's fault must not stop the others
                log.warning("auto-observe of %s on ep=%s failed: %s", path, reg.endpoint,
                            e or type(e).__name__)

    async def _drain(self, reg: Registration) -> bool:
        """Deliver the endpoint's pending requests in order; False if it fell asleep."""
        ep = reg.endpoint
        if ep not in self._queued_eps:
            return True
        while True:
            row = self.db.next_pending(ep)
            if row is None:
                self._queued_eps.discard(ep)
                return True
            wire = WireRequest.from_json(row.spec)
            self.db.mark_sending(row.id)
            outcome = await self._deliver(reg, wire, None, None)
            if isinstance(outcome, _Failure):
                if outcome.timeout or isinstance(outcome.exc, DeviceUnreachable):
                    self.db.mark_pending(row.id)
                    log.info("ep=%s did not answer queued request %d; kept for its next"
                             " wake-up", ep, row.id)
                    return False
            else:
                result = DMResult.from_json({**outcome.to_json(), "request_id": row.id})
                self.db.finish(row.id, "done", result.to_json(), self._clock())
                log.info("delivered queued %s %s to ep=%s: %s (request %d)", wire.op,
                         wire.key, ep, result.code, row.id)
                self._resolve(row.id, result)

    def _resolve(self, request_id: int, result: DMResult) -> None:
        for fut in self._waiters.pop(request_id, []):
            if not fut.done():
                fut.set_result(result)

    def _outcome(self, stored: Mapping[str, Any]) -> DMResult:
        if "code" in stored:
            return DMResult.from_json(stored)
        raise DMError(str(stored.get("error", "request failed")))

    # -- registrations -----------------------------------------------------------------

    def _registration(self, endpoint: str) -> Registration:
        reg = self._store.registration(endpoint)
        if reg is None:
            raise NotRegistered(f"no endpoint {endpoint!r}")
        if reg.state == "registered" and self._clock() <= reg.expires_at:
            return reg
        if _queue_mode(reg) and reg.state != "deregistered":
            return reg  # asleep past its lifetime: the request waits for a Register
        state = reg.state if reg.state != "registered" else "offline"
        raise NotRegistered(f"{endpoint} is {state}")

    def _live_registration(self, endpoint: str) -> Registration | None:
        reg = self._store.registration(endpoint)
        if reg is None or reg.state != "registered" or self._clock() > reg.expires_at:
            return None
        return reg

    def _awake(self, reg: Registration) -> bool:
        return (reg.state == "registered"
                and self._clock() - reg.updated_at < self._cfg.queue_awake_s)


# -- helpers -------------------------------------------------------------------------------


def _request_json(r: RequestRow) -> dict[str, Any]:
    return {"id": r.id, "endpoint": r.endpoint, "op": r.op, "state": r.state,
            "queued": r.queued, "created": r.created, "attempts": r.attempts,
            "finished": r.finished, "result": r.result,
            "path": r.spec.get("paths") or r.spec.get("path")}


def _queue_mode(reg: Registration) -> bool:
    return "Q" in reg.binding


def _need(ids: tuple[int, ...], depth: int, op: str) -> None:
    if len(ids) < depth:
        raise DMError(f"{op} needs an object path at least, not /")


def _code_text(code: Code) -> str:
    return f"{int(code) >> 5}.{int(code) & 0x1F:02d}"


def _code(text: str) -> Code:
    cls, _, detail = text.partition(".")
    try:
        return Code((int(cls) << 5) | int(detail))
    except ValueError:
        return Code.INTERNAL_SERVER_ERROR


def _json_value(value: Value) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _from_json_value(value: Any) -> Value:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return value  # type: ignore[no-any-return]


def _attribute_query(attributes: Mapping[str, float], unset: Sequence[str]) -> tuple[str, ...]:
    query: list[str] = []
    for name, value in attributes.items():
        kind = ATTRIBUTES.get(name)
        if kind is None:
            raise DMError(f"unknown attribute {name!r} (one of {', '.join(ATTRIBUTES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DMError(f"attribute {name} takes a number")
        if kind is int:
            if not isinstance(value, int) or value < 0:
                raise DMError(f"attribute {name} takes a whole number of seconds >= 0")
            query.append(f"{name}={value}")
        else:
            query.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    for name in unset:
        if name not in ATTRIBUTES:
            raise DMError(f"unknown attribute {name!r}")
        query.append(name)
    if not query:
        raise DMError("write_attributes needs at least one attribute")
    return tuple(query)


_KINDS: dict[ResourceType, ValueKind] = {
    "integer": "v", "unsigned": "v", "time": "v", "float": "v", "string": "vs",
    "corelnk": "vs", "objlnk": "vs", "boolean": "vb", "opaque": "vd",
}


def _records(base: tuple[int, ...], value: Any,
             objects: Mapping[int, ObjectDef] | None) -> list[Record]:
    """Typed records for writing ``value`` at ``base`` (see ``DeviceManagement.write``)."""
    out: list[Record] = []

    def leaf(ids: tuple[int, ...], v: Any) -> None:
        path = format_path(ids)
        rdef = resource_def(objects, ids)
        out.append(Record(path, *_typed(path, v, rdef.type if rdef else None)))

    def ident(key: Any) -> int:
        try:
            i = int(key)
        except (TypeError, ValueError) as e:
            raise codecs.CodecError(f"{key!r} is not an id") from e
        if not 0 <= i <= MAX_ID:
            raise codecs.CodecError(f"id {i} is outside 0..{MAX_ID}")
        return i

    if len(base) == 2:
        if not isinstance(value, Mapping):
            raise codecs.CodecError(f"{format_path(base)}: an instance takes "
                                    "{resource id: value}")
        for rid, v in value.items():
            rids = (*base, ident(rid))
            if isinstance(v, Mapping):
                for ri, w in v.items():
                    leaf((*rids, ident(ri)), w)
            else:
                leaf(rids, v)
    elif len(base) == 3 and isinstance(value, Mapping):
        for ri, w in value.items():
            leaf((*base, ident(ri)), w)
    else:
        leaf(base, value)
    if not out:
        raise codecs.CodecError(f"{format_path(base)}: nothing to write")
    return out


def _typed(path: str, value: Any, rtype: ResourceType | None) -> tuple[ValueKind, Value]:
    if rtype is None:
        if isinstance(value, bool):
            return "vb", value
        if isinstance(value, (int, float)):
            return "v", value
        if isinstance(value, str):
            return "vs", value
        if isinstance(value, (bytes, bytearray)):
            return "vd", bytes(value)
        raise codecs.CodecError(f"{path}: {type(value).__name__} is not an LwM2M value")
    if rtype == "none":
        raise codecs.CodecError(f"{path}: an executable resource cannot be written")
    kind = _KINDS[rtype]
    ok = {
        "v": isinstance(value, (int, float)) and not isinstance(value, bool)
        and (rtype == "float" or isinstance(value, int)
             or (isinstance(value, float) and value.is_integer())),
        "vs": isinstance(value, str),
        "vb": isinstance(value, bool),
        "vd": isinstance(value, (bytes, bytearray)),
    }[kind]
    if not ok or (rtype == "unsigned" and value < 0):
        raise codecs.CodecError(f"{path}: a {rtype} resource cannot take "
                                f"{type(value).__name__} {value!r:.40}")
    if kind == "v" and rtype != "float":
        return kind, int(value)
    if kind == "vd":
        return kind, bytes(value)
    return kind, value


def _write_format(reg: Registration, ids: tuple[int, ...], records: list[Record], *,
                  single_ok: bool = True) -> int:
    listed = content_formats(reg.object_links)
    for cf in (codecs.CF_SENML_CBOR, codecs.CF_SENML_JSON, codecs.CF_LWM2M_CBOR,
               codecs.CF_TLV):
        if cf in listed:
            return cf
    if reg.lwm2m_version.startswith("1.0"):
        if single_ok and len(ids) >= 3 and len(records) == 1 \
                and records[0].path == format_path(ids):
            return codecs.CF_TEXT
        return codecs.CF_TLV
    return codecs.CF_SENML_CBOR


def dumps(result: DMResult) -> str:
    """``result`` as one line of JSON."""
    return json.dumps(result.to_json(), separators=(",", ":"))
