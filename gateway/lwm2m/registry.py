"""The LwM2M registry: what Register, Update, De-register, Send and expiry mean.

Transport-free: the CoAP layer (``lwm2m``) parses requests and calls this; this decides
and commits to the ``Storage`` before returning, so a caller may acknowledge right after.

**Lifetimes run on the monotonic clock.** What is stored and shown (``registered_at``,
``updated_at``, events) is wall time; whether a registration outlived its lifetime is
decided on ``time.monotonic``: a Register or Update sets the registration's deadline to
``monotonic() + lifetime``, so setting the wall clock forward or back (NTP stepping it
after boot, an operator's ``date -s``) neither expires every node at once nor keeps a
30 s lifetime alive for an hour. A registration the registry has not seen since the
gateway started (loaded from the store after a restart) gets, once, the lifetime its
stored wall times leave (``updated_at + lifetime - now``, at most ``lifetime``; already
past: expired at the first check, as when the gateway was down for longer than it), and
runs on the monotonic clock from then on. Expiry is checked periodically (a heap of
deadlines: the due ones only) and lazily on every lookup as well, so a registration past
its lifetime is never served even between two runs of the periodic check.

Registrations and Sends arriving together are committed together (``submit_register``,
``submit_send``: group commit): queued operations are all stored, in order, in one
transaction (one COMMIT, one fsync) as soon as the previous batch's COMMIT has returned,
after ``MAX_BATCH_WAIT_S`` when none is on its way, or once ``MAX_BATCH`` are queued.
The COMMIT runs on the store's writer thread (``Storage.commit_later``): the event loop
keeps receiving and decoding while it fsyncs, and what arrives meanwhile makes the next
batch, so batches grow with the load and the disk's latency by themselves. Each caller's
future resolves, and the change is logged and announced, only after the COMMIT that
holds it returned, so an acknowledgement still means "on disk"; an operation that fails
inside the batch fails alone.

**Bounds.** At most ``max_endpoints`` registrations are live: a Register of an endpoint
the store does not know is refused ``Full`` (5.03 with Max-Age) beyond it, checked before
it is queued (a flood of them costs one lookup each, no transaction) and again inside
the batch; a known endpoint always registers again. The live count is taken once
(``count_registered``) and kept by Register, De-register and expiry. Also refused 5.03
(Max-Age 1): a new endpoint while ``MAX_NEW_PENDING`` new ones wait for their COMMIT (an
open-loop flood; a client waiting for its answer never gets there) or beyond
``new_per_s`` new ones in the last second (0: no such limit).

**Takeovers.** A Register for an endpoint whose registration is live, from another
address, takes the registration over. One is a node that rebooted behind a new port;
back and forth is two nodes configured with the same endpoint name, each replacing the
other's registration at every Register. Every takeover is counted per endpoint
(``takeovers``, shown by the REST API; in memory, since the gateway started); one that
returns the registration to the address it was taken from is logged as a WARNING with
both addresses (rate-limited), the others at INFO.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from ..coap.aio import Code
from ..errors import Forbidden, NotFound, RequestError, StoreError
from ..logs import PeerLog
from ..storage.api import NotificationLink, Registration, SendResult, Storage
from .senml import Record

__all__ = ["FULL_RETRY_S", "MAX_BATCH", "MAX_BATCH_WAIT_S", "MAX_ENDPOINTS", "NEW_PER_S",
           "Full",
           "Registry", "RegistryEvent", "Takeovers",
           "new_reg_id"]

log = logging.getLogger("aiotkit.gateway.registry")
_peer_log = PeerLog(log)

MAX_ENDPOINTS = 10000  # registered endpoints at most ([registry] max_endpoints)
NEW_PER_S = 0  # new endpoints admitted per second at most, 0: no limit ([registry] ...)
# Registers of new endpoints waiting for their COMMIT at most: a client (or a whole
# fleet starting) that waits for its answer never has this many in flight; more means
# an open-loop flood, and the ones beyond are refused 5.03 (Max-Age 1) so that it cannot
# queue the fleet's Sends behind it
MAX_NEW_PENDING = 128
FULL_RETRY_S = 60  # Max-Age of the 5.03 a Register of a new endpoint gets when full
MAX_BATCH = 256  # operations per group commit at most
MAX_BATCH_WAIT_S = 0.0  # how long the first of a batch waits for company (none busy)

_T = TypeVar("_T")

EventName = Literal["registered", "updated", "deregistered", "expired", "send"]


class RegisterParams(TypedDict):
    """What a Register carries besides the endpoint name (TS Core §6.2.1)."""

    lifetime: int
    lwm2m_version: str
    binding: str
    object_links: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """Something the registry committed; listeners use it to wake the uplink, a UI..."""

    kind: EventName
    endpoint: str
    reg_id: str
    records: Sequence[Record] = ()  # a "send": its decoded records (already committed)
    observation: int | None = None  # a "send" that is an Observe Notification: its id


@dataclass(slots=True)
class Takeovers:
    """How often an endpoint's live registration was taken over from another address,
    and the last time: when, from which address (the holder), by which (the new one)."""

    count: int = 0
    last_at: float | None = None
    last_from: str | None = None
    last_to: str | None = None
    contested: int = 0  # of them, how many went back to the address they came from

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "contested": self.contested, "last_at": self.last_at,
                "last_from": self.last_from, "last_to": self.last_to}


class Full(RequestError):
    """5.03 Service Unavailable: the registry holds ``max_endpoints`` live registrations
    and the Register is for an endpoint it does not know; ``max_age``: retry after."""

    code = Code.SERVICE_UNAVAILABLE

    def __init__(self, diagnostic: str, max_age: int = FULL_RETRY_S) -> None:
        super().__init__(diagnostic)
        self.max_age = max_age


def new_reg_id() -> str:
    """A short random registration id (8 URL-safe characters, 48 bits)."""
    return secrets.token_urlsafe(6)


class Registry:
    """Registrations and Sends, committed to ``store`` before each call returns."""

    def __init__(
        self,
        store: Storage,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_reg_id,
        max_endpoints: int = MAX_ENDPOINTS,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        # lifetimes run on ``monotonic`` (module docstring); a caller that injects only
        # a wall ``clock`` (a test moving time by hand) gets that clock for both
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        self._mono = monotonic
        # endpoint -> (reg_id, updated_at, monotonic deadline) of its live registration,
        # and the deadlines as a heap (entries no longer in the map are skipped)
        self._deadlines: dict[str, tuple[str, float, float]] = {}
        self._due: list[tuple[float, str]] = []
        self._adopted = False  # the store's live registrations given deadlines (once)
        # called with the seconds from a Send's submission to its COMMIT (when it may be
        # acknowledged): the operations metrics' acknowledgement latency (gateway/ops)
        self.ack_observer: Callable[[float], None] | None = None
        # live registrations at most; a Register of an endpoint the store does not know
        # is refused ``Full`` (5.03) beyond it, a known endpoint is always taken back
        self.max_endpoints = max_endpoints
        self._live_count: int | None = None  # registered endpoints (counted once, kept)
        # new endpoints admitted per second at most (a Register flood of made-up names
        # must not take the event loop and the disk from the fleet's Sends)
        self.new_per_s = NEW_PER_S
        self._new_window = 0.0
        self._new_in_window = 0
        self._new_pending = 0  # Registers of new endpoints queued, not yet committed
        self._clock = clock
        self._new_id = new_id
        self._listeners: list[Callable[[RegistryEvent], None]] = []
        self._queue: list[_Queued] = []
        self._flush: asyncio.Handle | None = None  # the flush of the queue, when due
        self._full: asyncio.Handle | None = None  # the flush of a full batch, soon
        self._committing: asyncio.Future[None] | None = None  # the COMMIT on its way
        self._takeovers: dict[str, Takeovers] = {}  # endpoint -> its takeovers
        self._prune_cursor = 0  # where the next prune_ended batch starts

    def takeovers(self, endpoint: str) -> Takeovers:
        """The takeovers of ``endpoint``'s registration since the gateway started."""
        return self._takeovers.get(endpoint) or Takeovers()

    def add_listener(self, listener: Callable[[RegistryEvent], None]) -> None:
        """Call ``listener`` after each committed change (it must not raise or block)."""
        self._listeners.append(listener)

    def _emit(self, kind: EventName, reg: Registration, records: Sequence[Record] = (),
              observation: int | None = None) -> None:
        event = RegistryEvent(kind, reg.endpoint, reg.reg_id, records, observation)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("registry listener %r failed on %s", listener, kind)

    # -- client registration interface -------------------------------------------------

    def register(self, endpoint: str, **params: Unpack[RegisterParams]) -> Registration:
        """Register ``endpoint``; a registration it already had is replaced."""
        return self._registered(self._save_register(endpoint, params))

    def submit_register(self, endpoint: str,
                        **params: Unpack[RegisterParams]) -> asyncio.Future[Registration]:
        """``register`` in the next group commit; the future resolves after COMMIT.
        A new endpoint with no room is refused here already (``Full``), without a
        transaction: a flood of them costs a lookup each."""
        if self._store.registration(endpoint) is not None:
            return self._submit(lambda: self._save_register(endpoint, params),
                                self._registered)
        self._admit_new()
        future = self._submit(lambda: self._save_register(endpoint, params), self._registered)
        self._new_pending += 1
        future.add_done_callback(self._new_done)
        return future

    def _new_done(self, _future: asyncio.Future[Registration]) -> None:
        self._new_pending -= 1

    def _admit_new(self) -> None:
        """Raise ``Full`` unless a new endpoint may register now: room below
        ``max_endpoints`` and, over the last second, fewer than ``new_per_s`` new ones."""
        if self._count() >= self.max_endpoints:
            raise Full(f"{self.max_endpoints} endpoints registered: no room for a new one")
        if self._new_pending >= MAX_NEW_PENDING:  # an open-loop flood: shed it
            raise Full("too many new endpoints registering at once", max_age=1)
        now = time.monotonic()
        if now - self._new_window >= 1.0:
            self._new_window, self._new_in_window = now, 0
        if self.new_per_s and self._new_in_window >= self.new_per_s:
            raise Full("too many new endpoints registering at once", max_age=1)
        self._new_in_window += 1

    def _save_register(self, endpoint: str,
                       params: RegisterParams) -> tuple[Registration, Registration | None]:
        now = self._clock()
        old = self._store.registration(endpoint)
        live = self._count()
        if old is None and live >= self.max_endpoints:
            raise Full(f"{self.max_endpoints} endpoints registered: no room for a new one")
        reg = Registration(endpoint=endpoint, reg_id=self._fresh_id(), registered_at=now,
                           updated_at=now, **params)
        replaced = old if old is not None and old.state == "registered" else None
        self._store.save_registration(
            reg, "registered", "registered", now,
            detail=f"replaces {replaced.reg_id}" if replaced else None,
        )
        self._track(reg)
        if replaced is None:
            self._live_count = live + 1
        return reg, replaced

    def _count(self) -> int:
        """Registered endpoints now: one COUNT at first use, then kept by Register,
        De-register and expiry (the only ways a registration goes live or not)."""
        if self._live_count is None:
            self._live_count = self._store.count_registered()
        return self._live_count

    def _went_down(self) -> None:
        if self._live_count is not None:
            self._live_count = max(0, self._live_count - 1)

    def _registered(self, saved: tuple[Registration, Registration | None]) -> Registration:
        """Log and announce a committed registration."""
        reg, replaced = saved
        log.info(
            "registered ep=%s reg=%s addr=%s lt=%d lwm2m=%s b=%s%s",
            reg.endpoint, reg.reg_id, _addr(reg.host, reg.port), reg.lifetime,
            reg.lwm2m_version, reg.binding,
            f" (replaces reg={replaced.reg_id})" if replaced else "",
        )
        if replaced is not None and (replaced.host, replaced.port) != (reg.host, reg.port):
            self._taken_over(reg, _addr(replaced.host, replaced.port))
        self._emit("registered", reg)
        return reg

    def _taken_over(self, reg: Registration, holder: str) -> None:
        """Count a takeover of ``reg.endpoint`` from ``holder``; WARNING when it goes
        back to the address it was taken from (two nodes, one name)."""
        new = _addr(reg.host, reg.port)
        seen = self._takeovers.setdefault(reg.endpoint, Takeovers())
        contested = seen.last_from == new and seen.last_to == holder
        seen.count += 1
        seen.contested += contested
        seen.last_at, seen.last_from, seen.last_to = reg.registered_at, holder, new
        if contested:
            _peer_log.warning(
                "takeover", "ep=%s registered from %s again, taking the registration back"
                " from %s (%d takeovers): two nodes share this endpoint name?",
                reg.endpoint, new, holder, seen.count)
        else:
            _peer_log.info("takeover-moved", "ep=%s registration taken over by %s from %s",
                           reg.endpoint, new, holder)

    def update(
        self,
        reg_id: str,
        *,
        host: str,
        port: int,
        lifetime: int | None = None,
        binding: str | None = None,
        object_links: str | None = None,
    ) -> Registration:
        """Refresh a live registration (and change what the Update carried)."""
        old = self._live(reg_id)
        now = self._clock()
        reg = replace(
            old,
            host=host,
            port=port,
            lifetime=old.lifetime if lifetime is None else lifetime,
            binding=old.binding if binding is None else binding,
            object_links=old.object_links if object_links is None else object_links,
            updated_at=now,
        )
        self._store.save_registration(reg, "updated", "updated", now)
        self._track(reg)
        changes = [
            f"{name}={new}"
            for name, before, new in (
                ("addr", _addr(old.host, old.port), _addr(host, port)),
                ("lt", old.lifetime, reg.lifetime),
                ("b", old.binding, reg.binding),
            )
            if before != new
        ]
        if object_links is not None and object_links != old.object_links:
            changes.append("objects")
        log.info("updated ep=%s reg=%s%s", reg.endpoint, reg_id,
                 f" ({', '.join(changes)})" if changes else "")
        self._emit("updated", reg)
        return reg

    def deregister(self, reg_id: str) -> Registration:
        """End a live registration."""
        reg = self._live(reg_id)
        now = self._clock()
        if not self._store.set_state(reg, "deregistered", "deregistered", "deregistered", now):
            raise NotFound(f"no registration {reg_id}")
        self._deadlines.pop(reg.endpoint, None)
        self._went_down()
        log.info("deregistered ep=%s reg=%s", reg.endpoint, reg_id)
        self._emit("deregistered", reg)
        return replace(reg, state="deregistered")

    # -- information reporting interface -----------------------------------------------

    def owned(self, reg_id: str, endpoint: str | None) -> Registration:
        """The live registration ``reg_id``, when ``endpoint`` (the OSCORE context the
        request was verified under; None: unprotected) may change it: Update, De-register
        and Send are accepted only under the context that registered (issue 13)."""
        reg = self._live(reg_id)
        if endpoint is not None and reg.endpoint != endpoint:
            raise Forbidden(f"registration {reg_id} is not {endpoint}'s")
        return reg

    def sender_endpoint(self, endpoint: str) -> Registration:
        """The live registration of ``endpoint`` (a Send verified under its context)."""
        reg = self._store.registration(endpoint)
        if reg is None or reg.state != "registered" or self._lapsed(reg):
            raise NotFound(f"{endpoint} is not registered; register first")
        return reg

    def sender(self, host: str, port: int) -> Registration:
        """The live registration the request from ``host``/``port`` belongs to."""
        reg = self._store.by_address(host, port)
        if reg is None or self._lapsed(reg):
            raise NotFound(f"no registration for {_addr(host, port)}; register first")
        return reg

    def submit_send(
        self,
        reg: Registration,
        *,
        token: bytes,
        content_format: int,
        payload: bytes,
        records: Sequence[Record],
        notification: NotificationLink | None = None,
    ) -> asyncio.Future[SendResult]:
        """Queue a decoded Send for the next group commit (call from the event loop).

        The future resolves once the transaction holding it has committed, or raises what
        storing it raised (nothing of it is stored then). ``notification``: it is an
        Observe Notification, linked to its observation in the same transaction.
        """
        submitted = time.perf_counter()  # the acknowledgement latency's start (real time)

        def done(result: SendResult) -> SendResult:
            out = self._sent(reg, token, records, result,
                             notification.observation_id if notification else None)
            if self.ack_observer is not None:
                self.ack_observer(time.perf_counter() - submitted)
            return out

        return self._submit(
            lambda: self._record_send(reg, token, content_format, payload, records,
                                      notification),
            done,
        )

    def _submit(self, work: Callable[[], Any], done: Callable[[Any], _T]) -> asyncio.Future[_T]:
        """Run ``work`` in the next group commit; after COMMIT, ``done(its result)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.append(_Queued(work, done, future))
        if len(self._queue) >= MAX_BATCH and self._full is None:
            self._full = loop.call_soon(self._flush_now)  # full: commit without waiting
        elif self._flush is None and self._committing is None:  # else: when that ends
            self._flush = loop.call_later(MAX_BATCH_WAIT_S, self._flush_now)
        return future

    def _flush_now(self) -> None:
        for handle in (self._flush, self._full):
            if handle is not None:
                handle.cancel()
        self._flush = self._full = None
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        self._commit(batch)

    def _commit(self, batch: list[_Queued]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        store = self._store
        try:
            store.begin_batch()
        except Exception as e:  # noqa: BLE001 - every caller hears why
            self._failed(batch, e)
            return
        try:
            for item in batch:
                try:
                    outcomes.append((True, item.work()))
                # whatever it raised goes to its caller; it alone is undone (savepoint)
                except Exception as e:  # noqa: BLE001
                    outcomes.append((False, e))
        except BaseException:
            store.rollback_batch()
            raise
        try:
            durable = store.commit_later()  # the loop goes on while the fsync runs
        except Exception as e:  # noqa: BLE001 - e.g. no thread to be had
            store.rollback_batch()
            self._failed(batch, e)
            return
        self._committing = durable
        durable.add_done_callback(lambda f: self._committed(batch, outcomes, f))

    def _committed(self, batch: list[_Queued], outcomes: list[tuple[bool, Any]],
                   durable: asyncio.Future[None]) -> None:
        self._store.settle()
        if self._committing is durable:
            self._committing = None
            if self._queue and self._flush is None:  # what came in meanwhile goes next
                self._flush = asyncio.get_running_loop().call_soon(self._flush_now)
        if durable.cancelled():
            self._failed(batch, StoreError("group commit cancelled"))
        elif durable.exception() is not None:
            self._failed(batch, durable.exception())  # type: ignore[arg-type]
        else:
            self._resolve(batch, outcomes)

    def _failed(self, batch: list[_Queued], e: BaseException) -> None:
        """BEGIN or COMMIT failed: nothing of the batch is stored."""
        log.error("group commit of %d operation(s) failed: %s", len(batch), e)
        self._resolve(batch, [(False, e)] * len(batch))

    def _resolve(self, batch: list[_Queued], outcomes: list[tuple[bool, Any]]) -> None:
        for item, (ok, outcome) in zip(batch, outcomes, strict=True):
            if ok:
                try:
                    outcome = item.done(outcome)
                except Exception as e:  # noqa: BLE001 - raised to the caller, as unbatched
                    ok, outcome = False, e
            if item.future.done():  # the caller went away (cancelled)
                continue
            if ok:
                item.future.set_result(outcome)
            else:
                item.future.set_exception(outcome)

    def _record_send(self, reg: Registration, token: bytes, content_format: int,
                     payload: bytes, records: Sequence[Record],
                     notification: NotificationLink | None = None,
                     ) -> SendResult:
        digest = hashlib.sha256(payload).digest()[:16]
        return self._store.record_send(
            reg, token, digest, content_format, records, self._clock(), notification=notification)

    def _sent(self, reg: Registration, token: bytes, records: Sequence[Record],
              result: SendResult, observation: int | None = None) -> SendResult:
        """Log and announce a committed Send; returns ``result``."""
        if result.duplicate:
            log.info("duplicate Send ep=%s token=%s acknowledged again, not stored twice",
                     reg.endpoint, token.hex())
        else:
            log.debug("Send ep=%s send=%d readings=%d", reg.endpoint, result.send_id,
                      result.readings)
            self._emit("send", reg, records, observation)
        return result

    # -- lifetime ----------------------------------------------------------------------

    def expire_due(self) -> list[Registration]:
        """Mark every registration past its lifetime (on the monotonic clock) offline;
        returns them, by endpoint name."""
        if not self._adopted:  # the registrations stored before this registry existed
            for stored in self._store.registrations():
                if stored.state == "registered":
                    self._deadline(stored)
            self._adopted = True
        out: list[Registration] = []
        now = self._mono()
        due = self._due
        while due and due[0][0] < now:
            deadline, endpoint = heapq.heappop(due)
            entry = self._deadlines.get(endpoint)
            if entry is None or entry[2] != deadline:
                continue  # an Update moved it, or it ended: a stale heap entry
            reg = self._store.registration(endpoint)
            if reg is None or reg.state != "registered":
                self._deadlines.pop(endpoint, None)
                continue
            if (reg.reg_id, reg.updated_at) != entry[:2]:
                self._deadlines.pop(endpoint, None)
                self._deadline(reg)  # changed behind the registry's back: adopt it
                continue
            if self._expire(reg):
                out.append(reg)
        return sorted(out, key=lambda r: r.endpoint)

    def expires_in(self, reg: Registration) -> float:
        """Seconds until ``reg`` outlives its lifetime, on the monotonic clock (negative:
        it has); for ``reg`` as stored now."""
        return self._deadline(reg) - self._mono()

    def _track(self, reg: Registration) -> None:
        """``reg`` was just registered or updated: its lifetime starts now."""
        deadline = self._mono() + reg.lifetime
        self._deadlines[reg.endpoint] = (reg.reg_id, reg.updated_at, deadline)
        heapq.heappush(self._due, (deadline, reg.endpoint))

    def _deadline(self, reg: Registration) -> float:
        """``reg``'s monotonic deadline; one the registry did not set (stored before it
        started) gets what its wall times leave of its lifetime, once."""
        entry = self._deadlines.get(reg.endpoint)
        if entry is not None and entry[0] == reg.reg_id and entry[1] == reg.updated_at:
            return entry[2]
        left = reg.expires_at - self._clock()
        # already past by the wall clock: due at once; never more than one lifetime (the
        # wall clock may have gone back while the gateway was down)
        deadline = (-math.inf if left < 0
                    else self._mono() + min(float(reg.lifetime), left))
        self._deadlines[reg.endpoint] = (reg.reg_id, reg.updated_at, deadline)
        heapq.heappush(self._due, (deadline, reg.endpoint))
        return deadline

    def prune_ended(self, older_than_s: float) -> list[str]:
        """Forget endpoints that de-registered or expired over ``older_than_s`` ago (0:
        never), one small batch of the store per call; returns the ones pruned."""
        if older_than_s <= 0:
            return []
        pruned, self._prune_cursor = self._store.prune_ended(
            self._clock() - older_than_s, after=self._prune_cursor)
        for ep in pruned:
            self._takeovers.pop(ep, None)
        if pruned:
            log.info("pruned %d endpoint(s) ended over %.0f s ago: %s", len(pruned),
                     older_than_s, ", ".join(pruned[:10]) + (" ..." if len(pruned) > 10 else ""))
        return pruned

    async def run_expiry(self, period: float, prune_after_s: float = 0.0) -> None:
        """Check lifetimes (and prune ended endpoints, ``prune_ended``) every ``period``
        seconds until cancelled."""
        while True:
            try:
                self.expire_due()
                self.prune_ended(prune_after_s)
            except Exception:  # a bug or a disk error must not end expiry for good
                log.exception("lifetime check failed; retrying in %.1f s", period)
            await asyncio.sleep(period)

    def _expire(self, reg: Registration) -> bool:
        now = self._clock()
        if not self._store.set_state(reg, "offline", "expired", "offline", now):
            return False
        self._deadlines.pop(reg.endpoint, None)
        self._went_down()
        log.info("expired ep=%s reg=%s (no update for %.0f s, lifetime %d s)",
                 reg.endpoint, reg.reg_id, now - reg.updated_at, reg.lifetime)
        self._emit("expired", reg)
        return True

    def _lapsed(self, reg: Registration) -> bool:
        """True (and expire it now) if ``reg`` outlived its lifetime (monotonic clock)."""
        if reg.state == "registered" and self._mono() > self._deadline(reg):
            self._expire(reg)
            return True
        return False

    def _live(self, reg_id: str) -> Registration:
        reg = self._store.by_reg_id(reg_id)
        if reg is None or reg.state != "registered" or self._lapsed(reg):
            raise NotFound(f"no registration {reg_id}")
        return reg

    def _fresh_id(self) -> str:
        for _ in range(16):
            reg_id = self._new_id()
            if not self._store.reg_id_taken(reg_id):
                return reg_id
        raise RuntimeError("could not draw an unused registration id")


@dataclass(slots=True)
class _Queued:
    work: Callable[[], Any]
    done: Callable[[Any], Any]
    future: asyncio.Future[Any]


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
