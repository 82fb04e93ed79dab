"""MQTT uplink: the durable SQLite outbox published with QoS 1 (aiomqtt, MQTT 5).

Topic scheme (``{prefix}`` is ``mqtt.topic_prefix``, default ``aiot/{gateway.id}``):

``{prefix}/{endpoint}/data{path}``, e.g. ``aiot/gw/node-1/data/3313/0/5702``
    One message per stored reading, not retained. JSON payload::

        {"id": 17, "send": 5, "ep": "node-1", "path": "/3313/0/5702",
         "v": 0.25, "t": 1700000000.5, "rx": 1700000001.25}

    ``id`` is the reading's id and ``send`` the id of the Send that carried it (both
    increase in arrival order, so a consumer can drop duplicates by ``id``); ``v`` is
    the value as sent (number, string or boolean); a byte-string value (SenML ``vd``)
    is sent as ``"vd": "<base64>"`` instead of ``v``; ``t`` is the resolved SenML time
    (bt + t, null if none; below 2**28 it is relative to reception) and ``rx`` the
    gateway's receive time, both epoch seconds.

``{prefix}/{endpoint}/status``
    Retained, so a new subscriber learns each node's last state::

        {"ep": "node-1", "state": "registered", "reg": "Xy3_aB9q", "t": 1700000000.0}

    ``state`` is ``registered``, ``updated``, ``deregistered`` or ``offline`` (lifetime
    expired).

Delivery: every message is first an outbox row, committed in the same transaction as
the data it reports. The publisher takes unconfirmed rows in id order, keeps up to
``mqtt.batch`` publishes in flight, and marks a row confirmed when its PUBACK arrives
(aiomqtt's ``publish`` with QoS 1 returns only then). When the broker goes away it
reconnects with jittered exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``)
and replays every unconfirmed row, oldest first: at-least-once, in order; a message is
published twice only if its PUBACK was lost. Confirmed rows are pruned down to the
newest ``KEEP_CONFIRMED``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable

import aiomqtt

from ..config import MqttConfig
from ..storage.api import OutboxMessage, OutboxRow, StatusChange, Storage, StoredReading

__all__ = ["KEEP_CONFIRMED", "Backoff", "TopicScheme", "Uplink"]

log = logging.getLogger("aiotkit.gateway.uplink")

KEEP_CONFIRMED = 10_000  # confirmed outbox rows kept for inspection
_PRUNE_EVERY = 1_000  # confirmations between two prunes
_PUBLISH_TIMEOUT_S = 60.0  # a PUBACK later than this ends the session (then replay)


class TopicScheme:
    """Builds the uplink's messages (implements the store's ``OutboxEncoder``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def reading(self, r: StoredReading) -> OutboxMessage:
        body: dict[str, object] = {"id": r.id, "send": r.send_id, "ep": r.endpoint,
                                   "path": r.path}
        if isinstance(r.value, bytes):
            body["vd"] = base64.b64encode(r.value).decode("ascii")
        else:
            body["v"] = r.value
        body["t"] = r.time
        body["rx"] = r.received_at
        return OutboxMessage(f"{self.prefix}/{r.endpoint}/data{r.path}", _json(body))

    def status(self, s: StatusChange) -> OutboxMessage:
        body = {"ep": s.endpoint, "state": s.state, "reg": s.reg_id, "t": s.t}
        return OutboxMessage(f"{self.prefix}/{s.endpoint}/status", _json(body), retain=True)


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


class Backoff:
    """Exponential backoff with equal jitter.

    Attempt n waits between d/2 and d, where d = min(cap, base * 2**n).
    """

    def __init__(self, base: float, cap: float, *, rng: Callable[[], float] = random.random):
        self._base = base
        self._cap = cap
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        d = min(self._cap, self._base * float(2 ** min(self._attempt, 32)))
        self._attempt += 1
        return d / 2 + self._rng() * d / 2

    def reset(self) -> None:
        self._attempt = 0


class _SessionLost(Exception):
    """The broker connection ended; the cause is chained."""


class Uplink:
    """Publishes the store's outbox to an MQTT broker until shut down."""

    def __init__(
        self,
        config: MqttConfig,
        store: Storage,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._cfg = config
        self._store = store
        self._clock = clock
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng=rng)
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._acked_event = asyncio.Event()
        self._since_prune = 0
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once a broker session is up."""
        await self._connected.wait()

    async def wait_idle(self) -> None:
        """Return once no outbox row is waiting for a broker acknowledgement.

        Checked by the publisher, i.e. while a broker session is up.
        """
        await self._idle.wait()

    def kick(self) -> None:
        """Tell the publisher new outbox rows were committed."""
        self._idle.clear()
        self._wake.set()

    def _check_idle(self) -> None:
        if not self._store.outbox_pending(0, 1):
            self._idle.set()

    async def start(self) -> None:
        """Start the publisher task (it connects, and reconnects, on its own)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="aiot-uplink")

    async def shutdown(self) -> None:
        """Stop publishing; unconfirmed rows stay in the outbox for the next run."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_acked()

    async def _run(self) -> None:
        where = f"{self._cfg.host}:{self._cfg.port}"
        failures = 0
        while True:
            try:
                await self._session()
            except _SessionLost as e:
                cause = e.__cause__
                failures += 1
                delay = self._backoff.next()
                if e.args[0] == "lost":
                    log.warning("mqtt uplink lost %s: %s; reconnecting in %.2f s",
                                where, cause, delay)
                elif failures == 1:
                    log.warning("mqtt uplink cannot reach %s: %s; retrying in %.2f s",
                                where, cause, delay)
                else:
                    log.debug("mqtt uplink still cannot reach %s (attempt %d): %s;"
                              " retrying in %.2f s", where, failures, cause, delay)
                    if failures % 20 == 0:
                        log.info("mqtt uplink: %s unreachable for %d attempts", where,
                                 failures)
            except Exception:  # a bug: keep the daemon alive, but say so
                delay = self._backoff.next()
                log.exception("mqtt uplink failed; restarting in %.2f s", delay)
            else:
                delay = self._backoff.next()
            if self._connected.is_set():
                failures = 0
            self._connected.clear()
            await asyncio.sleep(delay)

    def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        # paho logs a lost connection as an ERROR of its own; the uplink reports every
        # connection change (with the cause) itself, so paho's records stay below that.
        paho_log = logging.getLogger("aiotkit.gateway.uplink.mqtt")
        if paho_log.level == logging.NOTSET:
            paho_log.setLevel(logging.CRITICAL)
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username or None,
            password=cfg.password or None,
            keepalive=cfg.keepalive,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=cfg.batch,
            logger=paho_log,
        )
        # aiomqtt warns on every publish beyond 10 outstanding; ours are bounded by batch.
        client.pending_calls_threshold = cfg.batch
        return client

    async def _session(self) -> None:
        client = self._client()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as e:
            raise _SessionLost("connect") from e
        lost: BaseException | None = None
        try:
            self._connected.set()
            self._backoff.reset()
            pending, _ = self._store.outbox_counts()
            log.info("mqtt uplink connected to %s:%d as %s (%d messages waiting)",
                     self._cfg.host, self._cfg.port, self._cfg.client_id, pending)
            window = asyncio.Semaphore(self._cfg.batch)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch(client), name="aiot-uplink-watch")
                    tg.create_task(self._confirmer(), name="aiot-uplink-confirm")
                    tg.create_task(self._pump(client, tg, window), name="aiot-uplink-pump")
            except* aiomqtt.MqttError as group:
                lost = group.exceptions[0]
        finally:
            self._flush_acked()
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        if lost is not None:
            raise _SessionLost("lost") from lost

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raise MqttError when the connection drops (nothing is subscribed)."""
        async for _ in client.messages:
            pass

    async def _pump(self, client: aiomqtt.Client, tg: asyncio.TaskGroup,
                    window: asyncio.Semaphore) -> None:
        last = 0
        while True:
            self._wake.clear()
            rows = self._store.outbox_pending(last, self._cfg.batch)
            if not rows:
                self._check_idle()
                await self._wake.wait()
                continue
            self._store.outbox_mark_published([r.id for r in rows], self._clock())
            for row in rows:
                await window.acquire()
                tg.create_task(self._publish(client, row, window),
                               name=f"aiot-uplink-publish-{row.id}")
                last = row.id

    async def _publish(self, client: aiomqtt.Client, row: OutboxRow,
                       window: asyncio.Semaphore) -> None:
        try:
            await client.publish(row.topic, row.payload, qos=1, retain=row.retain,
                                 timeout=_PUBLISH_TIMEOUT_S)
        finally:
            window.release()
        self._acked.append(row.id)
        self._acked_event.set()

    async def _confirmer(self) -> None:
        while True:
            await self._acked_event.wait()
            self._acked_event.clear()
            self._flush_acked()

    def _flush_acked(self) -> None:
        ids, self._acked = self._acked, []
        if not ids:
            return
        self._store.outbox_confirm(ids, self._clock())
        self._check_idle()
        self._since_prune += len(ids)
        if self._since_prune >= _PRUNE_EVERY:
            self._since_prune = 0
            pruned = self._store.outbox_prune(KEEP_CONFIRMED)
            if pruned:
                log.debug("pruned %d confirmed outbox rows", pruned)
