"""The LwM2M registry: what Register, Update, De-register, Send and expiry mean.

Transport-free: the CoAP layer (``lwm2m``) parses requests and calls this; this decides
and commits to the ``Storage`` before returning, so a caller may acknowledge right after.
Expiry runs by wall clock (``updated_at + lifetime``), also across restarts, and is
checked lazily on every lookup as well, so a registration past its lifetime is never
served even between two runs of the periodic check.

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
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from ..errors import NotFound, StoreError
from ..storage.api import NotificationLink, Registration, SendResult, Storage
from .senml import Record

__all__ = ["MAX_BATCH", "MAX_BATCH_WAIT_S", "Registry", "RegistryEvent", "new_reg_id"]

log = logging.getLogger("aiotkit.gateway.registry")

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
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id
        self._listeners: list[Callable[[RegistryEvent], None]] = []
        self._queue: list[_Queued] = []
        self._flush: asyncio.Handle | None = None  # the flush of the queue, when due
        self._full: asyncio.Handle | None = None  # the flush of a full batch, soon
        self._committing: asyncio.Future[None] | None = None  # the COMMIT on its way

    def add_listener(self, listener: Callable[[RegistryEvent], None]) -> None:
        """Call ``listener`` after each committed change (it must not raise or block)."""
        self._listeners.append(listener)

    def _emit(self, kind: EventName, reg: Registration, records: Sequence[Record] = ()) -> None:
        event = RegistryEvent(kind, reg.endpoint, reg.reg_id, records)
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
        """``register`` in the next group commit; the future resolves after COMMIT."""
        return self._submit(lambda: self._save_register(endpoint, params), self._registered)

    def _save_register(self, endpoint: str,
                       params: RegisterParams) -> tuple[Registration, str | None]:
        now = self._clock()
        old = self._store.registration(endpoint)
        reg = Registration(endpoint=endpoint, reg_id=self._fresh_id(), registered_at=now,
                           updated_at=now, **params)
        replaced = old.reg_id if old is not None and old.state == "registered" else None
        self._store.save_registration(
            reg, "registered", "registered", now,
            detail=f"replaces {replaced}" if replaced else None,
        )
        return reg, replaced

    def _registered(self, saved: tuple[Registration, str | None]) -> Registration:
        """Log and announce a committed registration."""
        reg, replaced = saved
        log.info(
            "registered ep=%s reg=%s addr=%s lt=%d lwm2m=%s b=%s%s",
            reg.endpoint, reg.reg_id, _addr(reg.host, reg.port), reg.lifetime,
            reg.lwm2m_version, reg.binding,
            f" (replaces reg={replaced})" if replaced else "",
        )
        self._emit("registered", reg)
        return reg

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
        log.info("deregistered ep=%s reg=%s", reg.endpoint, reg_id)
        self._emit("deregistered", reg)
        return replace(reg, state="deregistered")

    # -- information reporting interface -----------------------------------------------

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
        return self._submit(
            lambda: self._record_send(reg, token, content_format, payload, records,
                                      notification),
            lambda result: self._sent(reg, token, records, result),
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
              result: SendResult) -> SendResult:
        """Log and announce a committed Send; returns ``result``."""
        if result.duplicate:
            log.info("duplicate Send ep=%s token=%s acknowledged again, not stored twice",
                     reg.endpoint, token.hex())
        else:
            log.debug("Send ep=%s send=%d readings=%d", reg.endpoint, result.send_id,
                      result.readings)
            self._emit("send", reg, records)
        return result

    # -- lifetime ----------------------------------------------------------------------

    def expire_due(self) -> list[Registration]:
        """Mark every registration past its lifetime offline; returns them."""
        out = []
        for reg in self._store.due_for_expiry(self._clock()):
            if self._expire(reg):
                out.append(reg)
        return out

    async def run_expiry(self, period: float) -> None:
        """Check lifetimes every ``period`` seconds until cancelled."""
        while True:
            try:
                self.expire_due()
            except Exception:  # a bug or a disk error must not end expiry for good
                log.exception("lifetime check failed; retrying in %.1f s", period)
            await asyncio.sleep(period)

    def _expire(self, reg: Registration) -> bool:
        now = self._clock()
        if not self._store.set_state(reg, "offline", "expired", "offline", now):
            return False
        log.info("expired ep=%s reg=%s (no update for %.0f s, lifetime %d s)",
                 reg.endpoint, reg.reg_id, now - reg.updated_at, reg.lifetime)
        self._emit("expired", reg)
        return True

    def _lapsed(self, reg: Registration) -> bool:
        """True (and expire it now) if ``reg`` outlived its lifetime."""
        if reg.state == "registered" and self._clock() > reg.expires_at:
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
