"""Device management: the LwM2M server's side of the DM&SE and information reporting
interfaces, as a Python API on the gateway (``Gateway.dm``).

Every operation sends a real CoAP request from the gateway's server socket (the LwM2M
server's address) to the address the client registered from, decodes the answer with
``codecs`` using the DDF definitions, and returns a ``DMResult`` (the requests and their
success codes: ``requests``).

A CoAP error answer raises ``OperationFailed`` (its ``code``, e.g. 4.04 unknown path,
4.05 not allowed, and the ``result``); no answer within ``dm.request_timeout_s``
raises ``DeviceTimeout``; an endpoint that is not registered raises ``NotRegistered``.

``DeviceManagement`` is the facade: it checks the registration, builds the request
(``requests.build_request``), sends it now or queues it for a sleeping queue-mode node
(``queue.RequestQueue``), hands an accepted Observe to ``observations.Observations``,
and on registry events wakes a node's session: re-observe, auto-observe, then deliver
its queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..coap.aio import Code, aiocoap
from ..coap.layer import keep_token
from ..errors import BadRequest
from ..lwm2m import codecs
from ..lwm2m.ddf import ObjectDef
from ..lwm2m.registry import Registry, RegistryEvent
from ..lwm2m.senml import Value
from ..storage.api import Registration, RequestRow, Storage
from .errors import (
    DeviceTimeout,
    DeviceUnreachable,
    DMError,
    NotRegistered,
    OperationFailed,
    code_text,
)
from .observations import Observations
from .queue import RequestQueue
from .requests import DMResult, Failure, WireRequest, build_request, decode

if TYPE_CHECKING:
    from ..config import DMConfig

__all__ = ["DeviceManagement"]

log = logging.getLogger("aiotkit.gateway.dm")


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
        self._obs = Observations(self.db, registry, objects=objects, clock=clock,
                                 registration=self._live_registration,
                                 deliver=self._deliver)
        self._queue = RequestQueue(self.db, config, clock=clock, deliver=self._deliver)
        self._waking: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._auto: set[str] = set()  # endpoints that registered: auto-observe due
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle --------------------------------------------------------------------

    async def start(self, context: aiocoap.Context) -> None:
        """Use ``context`` (the server's) for requests; re-establish what was persisted."""
        self._ctx = context
        self.db.recover(self._clock())
        self._queue.load()
        self._obs.load()
        for ep in sorted(self._queue.endpoints | self._obs.endpoints):
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
        self._obs.close()
        self._queue.close()
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
        return await self._queue.wait(request_id)

    def observations(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Persisted observations as JSON-serialisable dicts (``live``: established now)."""
        return [{"id": o.id, "endpoint": o.endpoint, "paths": o.key.split(","),
                 "composite": o.spec.get("op") == "observe_composite",
                 "token": o.token.hex() if o.token is not None else None,
                 "reg_id": o.reg_id, "created": o.created, "established": o.established,
                 "live": o.id in self._obs.live}
                for o in self.db.observations(endpoint)]

    # -- building requests -------------------------------------------------------------

    def build(self, op: str, reg: Registration, path: str, *, accept: int | None = None,
              value: Any = None, replace: bool = True, content_format: int | None = None,
              attributes: Mapping[str, float] | None = None, unset: Sequence[str] = (),
              args: str | None = None, instance: int | None = None,
              paths: Sequence[str] = ()) -> WireRequest:
        """The wire request of ``op`` for ``reg`` (checks and encodes; sends nothing)."""
        return build_request(op, reg, path, self.objects, accept=accept, value=value,
                             replace=replace, content_format=content_format,
                             attributes=attributes, unset=unset, args=args,
                             instance=instance, paths=paths)

    def take_notification(self, peer: tuple[str, int, bytes], cf: int | None,
                          payload: bytes, seq: int, *,
                          ordered: bool = True) -> asyncio.Future[Any] | None:
        """A Notification received below aiocoap (``coap/fastnotify.py``): see
        ``Observations.take_notification``."""
        return self._obs.take_notification(peer, cf, payload, seq, ordered=ordered)

    # -- running requests --------------------------------------------------------------

    async def _run(self, reg: Registration, wire: WireRequest,
                   timeout: float | None) -> DMResult:
        if _queue_mode(reg) and not self._awake(reg):
            result = await self.wait(self._enqueue(reg, wire))
        else:
            rid = self.db.add_request(reg.endpoint, wire.op, wire.to_json(), queued=False,
                                      now=self._clock())
            outcome = await self._deliver(reg, wire, rid, timeout)
            if isinstance(outcome, Failure):
                raise outcome.exc
            result = outcome
        if not result.ok:
            raise OperationFailed(result)
        return result

    def _enqueue(self, reg: Registration, wire: WireRequest, *, force: bool = False) -> int:
        rid = self._queue.add(reg, wire)
        if force and (not _queue_mode(reg) or self._awake(reg)):
            self._wake(reg.endpoint)
        return rid

    async def _deliver(self, reg: Registration, wire: WireRequest, rid: int | None,
                       timeout: float | None) -> DMResult | Failure:
        """Send ``wire``, record and return the result (or why there is none)."""
        try:
            response, request = await self._exchange(reg, wire, timeout)
        except DeviceUnreachable as e:
            if rid is not None:
                self.db.finish(rid, "failed", {"error": str(e)}, self._clock())
            return Failure(e, isinstance(e, DeviceTimeout))
        result = self._result(reg, wire, response, rid)
        if wire.op in ("observe", "observe_composite"):
            result = self._obs.follow(reg, wire, response, request, result)
        elif wire.op in ("cancel_observe", "cancel_observe_composite"):
            self._obs.forget(reg.endpoint, wire.key)
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
        if wire.observe == 1:  # a cancel carries the observation's own token (RFC 7641)
            token = self._obs.release(reg.endpoint, wire.key)
            if token is not None:
                keep_token(msg, token)
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
        code = code_text(response.code)
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
                records = decode(cf_int, payload, wire, self.objects)
                values = {r.path: r.value for r in records}
            except (BadRequest, codecs.UnknownContentFormat) as e:  # whatever it sent
                diagnostic = f"answer not decoded: {e}"
        return DMResult(reg.endpoint, wire.op, wire.key, code, cf_int, values, payload,
                        self._clock(), rid, location, links, None, diagnostic)

    # -- registry events: waking nodes -------------------------------------------------

    def on_event(self, event: RegistryEvent) -> None:
        """Registry listener: deliver queues and (re-)observe on Register/Update/Send,
        cancel observations on De-register."""
        ep = event.endpoint
        if event.kind == "deregistered":
            self._auto.discard(ep)
            self._obs.end(ep, forget=True)
            return
        if event.kind == "expired":
            self._auto.discard(ep)
            self._obs.end(ep, forget=False)
            return
        if event.kind == "registered" and ep in self._obs.endpoints:
            self._obs.reregistered(ep)
        if event.kind == "registered" and self._cfg.observe:
            self._auto.add(ep)
        queued = ep in self._queue.endpoints
        if event.kind in self.WAKE_EVENTS and (queued or ep in self._auto
                                               or ep in self._obs.endpoints):
            if event.kind == "send" and not queued and ep not in self._auto:
                return
            self._wake(ep)

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
            if not await self._obs.reobserve(reg):
                return
            if endpoint in self._auto:
                self._auto.discard(endpoint)
                await self._obs.auto_observe(reg, self._cfg.observe, self.observe)
            if not await self._queue.drain(reg):
                return
            if endpoint not in self._again:
                return

    # -- registrations -----------------------------------------------------------------

    def _registration(self, endpoint: str) -> Registration:
        reg = self._store.registration(endpoint)
        if reg is None:
            raise NotRegistered(f"no endpoint {endpoint!r}")
        # expiry on the registry's monotonic clock (a wall-clock jump changes nothing)
        if reg.state == "registered" and self._registry.expires_in(reg) >= 0:
            return reg
        if _queue_mode(reg) and reg.state != "deregistered":
            return reg  # asleep past its lifetime: the request waits for a Register
        state = reg.state if reg.state != "registered" else "offline"
        raise NotRegistered(f"{endpoint} is {state}")

    def _live_registration(self, endpoint: str) -> Registration | None:
        reg = self._store.registration(endpoint)
        if reg is None or reg.state != "registered" or self._registry.expires_in(reg) < 0:
            return None
        return reg

    def _awake(self, reg: Registration) -> bool:
        return (reg.state == "registered"
                # seconds since its last Register / Update, on the monotonic clock
                and reg.lifetime - self._registry.expires_in(reg) < self._cfg.queue_awake_s)


# -- helpers -------------------------------------------------------------------------------


def _request_json(r: RequestRow) -> dict[str, Any]:
    return {"id": r.id, "endpoint": r.endpoint, "op": r.op, "state": r.state,
            "queued": r.queued, "created": r.created, "attempts": r.attempts,
            "finished": r.finished, "result": r.result,
            "path": r.spec.get("paths") or r.spec.get("path")}


def _queue_mode(reg: Registration) -> bool:
    return "Q" in reg.binding
