"""Observations: what the gateway follows on each node and what a Notification means.

Observations are persisted (endpoint, paths, the Observe request, token, registration).
Each Notification is decoded and stored like a Send (``Registry.submit_send``: readings,
last values, uplink outbox, listeners), and linked to its observation in
``dm_notifications``; the first answer to Observe is stored the same way. One older
than the last seen for its observation (RFC 7641 §3.4) is dropped. A plain one-datagram
Notification may be served below aiocoap (``gateway/coap/fastnotify.py``, which finds its
observation with ``take_notification``); aiocoap hands the others to ``_on_notify``. A
cancel (GET or FETCH with Observe 1) carries the observation's own token (RFC 7641 §3.6;
``release`` gives it and lets the live request go, ``coap.layer.keep_token`` sends it):
a client that matches observations by token ends the right one. After a
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

``Observations`` keeps the live ones (by observation id, and by the peer and token their
Notifications carry) over ``Storage.dm``; ``DeviceManagement`` sends its requests
(``Deliver``) and calls it when an Observe is answered, when a node wakes and on
registry events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..coap.aio import aiocoap
from ..errors import BadRequest
from ..lwm2m import codecs
from ..lwm2m.ddf import ObjectDef
from ..lwm2m.linkformat import registered_instances
from ..lwm2m.paths import parse_path
from ..lwm2m.registry import Registry
from ..storage.api import DeviceStorage, NotificationLink, ObservationRow, Registration
from .errors import code_text
from .requests import Deliver, DMResult, Failure, WireRequest, decode

__all__ = ["Observations"]

log = logging.getLogger("aiotkit.gateway.dm")

_SEQ_MOD, _SEQ_HALF = 1 << 24, 1 << 23  # Observe values are 24-bit (RFC 7641 §3.4)
_OBSERVE_RESET_S = 128.0  # after this a Notification counts as newer whatever its value


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


class Observations:
    """The observations of the registered nodes: persisted in ``db``, followed here while
    established, their Notifications stored through ``registry`` like Sends.

    ``registration(endpoint)`` is the endpoint's live registration (or None); ``deliver``
    sends a request (re-observing, re-applying Write-Attributes).
    """

    def __init__(self, db: DeviceStorage, registry: Registry, *,
                 objects: Mapping[int, ObjectDef] | None, clock: Callable[[], float],
                 registration: Callable[[str], Registration | None],
                 deliver: Deliver) -> None:
        self.db = db
        self._registry = registry
        self._objects = objects
        self._clock = clock
        self._registration = registration
        self._deliver = deliver
        self.live: dict[int, _Live] = {}  # observation id -> live observation
        self._peers: dict[tuple[str, int, bytes], _Live] = {}  # (host, port, token) -> it
        self.endpoints: set[str] = set()  # endpoints with persisted observations
        self._reregistered: set[str] = set()

    def load(self) -> None:
        """Read which endpoints have persisted observations (at start)."""
        self.endpoints = self.db.observed_endpoints()

    def close(self) -> None:
        """Forget the live observations (they stay persisted)."""
        for live in list(self.live.values()):
            self._drop_live(live)

    def follow(self, reg: Registration, wire: WireRequest, response: aiocoap.Message,
               request: Any, result: DMResult) -> DMResult:
        """Persist an Observe that the client accepted and follow its Notifications."""
        if not result.ok:
            return result
        now = self._clock()
        obs_id = self.db.save_observation(reg.endpoint, wire.key, wire.to_json(), now)
        self.endpoints.add(reg.endpoint)
        if response.opt.observe is None:  # answered, but not observable
            log.info("ep=%s answered Observe %s without Observe option", reg.endpoint,
                     wire.key)
            self.db.established(obs_id, None, reg.reg_id, None)
        else:
            old = self.live.pop(obs_id, None)
            if old is not None:
                self._drop_live(old)
            sockaddr = getattr(response.remote, "sockaddr", None)
            peer = (sockaddr[0], sockaddr[1], bytes(response.token)) \
                if type(sockaddr) is tuple else None
            live = _Live(obs_id, reg.endpoint, wire.key, request, reg.reg_id, wire, peer,
                         response.opt.observe, self._clock())
            self.live[obs_id] = live
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
        if self.live.get(live.obs_id) is not live:
            return
        if not msg.code.is_successful():
            log.info("ep=%s ended observation of %s with %s", live.endpoint, live.key,
                     code_text(msg.code))
            self._drop_live(live)
            return
        if msg.opt.oscore is not None:  # no security context verified it (coap/wire.py)
            log.warning("ep=%s: OSCORE-protected Notification for %s not stored (no"
                        " security context)", live.endpoint, live.key)
            return
        reg = self._registration(live.endpoint)
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
        if live is None or self.live.get(live.obs_id) is not live:
            return None
        reg = self._registration(live.endpoint)
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
        if self.live.get(live.obs_id) is live:
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
            records = decode(cf_int, payload, wire, self._objects)
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
        if self.live.get(live.obs_id) is live:
            del self.live[live.obs_id]
        if live.peer is not None and self._peers.get(live.peer) is live:
            del self._peers[live.peer]

    def _drop_live(self, live: _Live) -> None:
        """Stop following an observation here: Notifications go to aiocoap, which ACKs
        the next one (its observation then stops listening) and answers later ones RST."""
        self._unlive(live)
        with contextlib.suppress(Exception):
            live.request.observation.cancel()

    def release(self, endpoint: str, key: str) -> bytes | None:
        """The token of ``endpoint``'s observation of ``key``, for the GET with Observe 1
        that cancels it (RFC 7641 §3.6: same token); its live request is let go first,
        so aiocoap no longer holds the token. None: no observation or token known."""
        row = self.db.observation(endpoint, key)
        if row is None:
            return None
        token = row.token
        live = self.live.get(row.id)
        if live is not None:
            if live.peer is not None:
                token = live.peer[2]
            self._drop_live(live)
        return bytes(token) if token else None

    def forget(self, endpoint: str, key: str) -> None:
        """The observation of ``key`` was cancelled: stop following it and delete it."""
        row = self.db.observation(endpoint, key)
        if row is None:
            return
        live = self.live.get(row.id)
        if live is not None:
            self._drop_live(live)
        self.db.delete_observation(row.id)
        log.info("observation of %s on ep=%s cancelled", key, endpoint)

    def reregistered(self, endpoint: str) -> None:
        """A new registration of ``endpoint``: the client dropped its observations (TS
        Core §6.2.1); its Write-Attributes are re-applied before they are re-observed."""
        self.end(endpoint, forget=False)
        self._reregistered.add(endpoint)

    def end(self, endpoint: str, *, forget: bool) -> None:
        """Stop following ``endpoint``'s observations; ``forget``: delete them too."""
        for live in [v for v in self.live.values() if v.endpoint == endpoint]:
            self._drop_live(live)
        if forget and endpoint in self.endpoints:
            n = self.db.delete_observations(endpoint)
            self.endpoints.discard(endpoint)
            log.info("ep=%s de-registered: %d observation(s) cancelled", endpoint, n)

    async def reobserve(self, reg: Registration) -> bool:
        """Establish persisted observations that are not live; False if the node
        stopped answering."""
        if reg.endpoint not in self.endpoints:
            return True
        if reg.endpoint in self._reregistered:
            self._reregistered.discard(reg.endpoint)
            for path, query in self.db.attributes(reg.endpoint).items():
                wire = WireRequest("write_attributes", "PUT", path, query=tuple(query))
                outcome = await self._deliver(reg, wire, None, None)
                if isinstance(outcome, Failure):
                    return False
        live_ids = set(self.live)
        for row in self.db.observations(reg.endpoint):
            if row.id in live_ids:
                continue
            if not await self._reobserve_one(reg, row):
                return False
        return True

    async def _reobserve_one(self, reg: Registration, row: ObservationRow) -> bool:
        wire = WireRequest.from_json(row.spec)
        outcome = await self._deliver(reg, wire, None, None)
        if isinstance(outcome, Failure):
            log.info("re-observing %s on ep=%s: %s", row.key, reg.endpoint, outcome.exc)
            return False
        if not outcome.ok:
            log.warning("re-observing %s on ep=%s refused (%s): observation dropped",
                        row.key, reg.endpoint, outcome.code)
            self.db.delete_observation(row.id)
        else:
            log.info("re-established observation of %s on ep=%s", row.key, reg.endpoint)
        return True

    async def auto_observe(self, reg: Registration, paths: Sequence[str],
                           observe: Callable[[str, str], Awaitable[DMResult]]) -> None:
        """Observe those of ``paths`` (``dm.observe``) the registration lists, through
        ``observe`` (``DeviceManagement.observe``)."""
        listed = registered_instances(reg.object_links)
        live = {(v.key, v.reg_id) for v in self.live.values() if v.endpoint == reg.endpoint}
        for path in paths:
            ids = parse_path(path)
            if ids[:2] not in listed or (path, reg.reg_id) in live:
                continue
            try:
                await observe(reg.endpoint, path)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a node's fault must not stop the others
                log.warning("auto-observe of %s on ep=%s failed: %s", path, reg.endpoint,
                            e or type(e).__name__)

