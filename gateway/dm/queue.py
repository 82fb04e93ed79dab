"""Queue-mode delivery: requests stored for a sleeping node, delivered when it wakes.

Queue mode (binding with ``Q``): a request for a node that has not sent an Update (or
Register) within ``dm.queue_awake_s`` is stored durably (``Storage.dm``) and delivered,
in order, when the node next sends an Update, Register or Send; the result is recorded.
The operation methods then wait for that (wrap them in ``asyncio.timeout`` to stop
waiting: the request stays queued); ``enqueue`` returns the request id at once, and
``result``/``wait`` give the outcome later, across gateway restarts too. A queued
request the node does not answer stays queued for its next wake-up.

``RequestQueue`` adds to the queue (``Storage.dm``), delivers it in order through
``Deliver`` when ``DeviceManagement`` sees the node awake, and resolves whoever waits for
a result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..storage.api import DeviceStorage, Registration
from .errors import DeviceUnreachable, DMError, QueueFull
from .requests import Deliver, DMResult, Failure, WireRequest

if TYPE_CHECKING:
    from ..config import DMConfig

__all__ = ["RequestQueue"]

log = logging.getLogger("aiotkit.gateway.dm")


class RequestQueue:
    """The queued requests in ``db`` (at most ``dm.max_queued`` open per endpoint) and
    the futures waiting for request results."""

    def __init__(self, db: DeviceStorage, config: DMConfig, *, clock: Callable[[], float],
                 deliver: Deliver) -> None:
        self.db = db
        self._cfg = config
        self._clock = clock
        self._deliver = deliver
        self.endpoints: set[str] = set()  # endpoints with pending requests
        self._waiters: dict[int, list[asyncio.Future[DMResult]]] = {}

    def load(self) -> None:
        """Read which endpoints have pending requests (at start)."""
        self.endpoints = self.db.queued_endpoints()

    def close(self) -> None:
        """Cancel every wait for a result."""
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()

    def add(self, reg: Registration, wire: WireRequest) -> int:
        """Store ``wire`` for ``reg``'s endpoint; its request id."""
        if self.db.count_open(reg.endpoint) >= self._cfg.max_queued:
            raise QueueFull(f"{reg.endpoint} already has {self._cfg.max_queued} requests"
                            " waiting")
        rid = self.db.add_request(reg.endpoint, wire.op, wire.to_json(), queued=True,
                                  now=self._clock())
        self.endpoints.add(reg.endpoint)
        log.info("queued %s %s for ep=%s (request %d)", wire.op, wire.key, reg.endpoint, rid)
        return rid

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

    async def drain(self, reg: Registration) -> bool:
        """Deliver the endpoint's pending requests in order; False if it fell asleep."""
        ep = reg.endpoint
        if ep not in self.endpoints:
            return True
        while True:
            row = self.db.next_pending(ep)
            if row is None:
                self.endpoints.discard(ep)
                return True
            wire = WireRequest.from_json(row.spec)
            self.db.mark_sending(row.id)
            outcome = await self._deliver(reg, wire, None, None)
            if isinstance(outcome, Failure):
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

