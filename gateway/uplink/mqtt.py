"""MQTT uplink: the durable SQLite outbox published with QoS 1 (aiomqtt, MQTT 5).

Topic scheme (``{prefix}`` is ``mqtt.topic_prefix``, default ``aiot/{gateway.id}``):

``{prefix}/{endpoint}/data{path}``, e.g. ``aiot/gw/node-1/data/3313/0/5702``
    One message per stored reading, not retained. JSON payload::

        {"id": 17, "send": 5, "ep": "node-1", "path": "/3313/0/5702",
         "v": 0.25, "t": 1700000000.5, "rx": 1700000001.25}

    ``id`` is the reading's id and ``send`` the id of the Send that carried it (both
    increase in arrival order, so a consumer can drop duplicates by ``id``; a report the
    node sends again after a gateway crash is recognised and keeps its first ids, see
    ``storage.sqlite.SqliteStorage.record_send``); ``v`` is
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

Refused messages (dead letters): no single message may block the outbox, so one the
broker will never take is set aside (``Storage.outbox_set_aside``, with the reason; the
REST API's ``GET /api/v1/uplink`` lists them) and the queue moves on. A message is
refused when

* the MQTT client refuses it before sending (paho: a topic with ``+`` or ``#``, or
  longer than 65535 bytes; a payload too large for MQTT), or
* its PUBACK carries a failure reason code (MQTT 5 §3.4.2.1, e.g. 0x87 not authorized,
  0x90 topic name invalid, 0x95 packet too large, 0x99 payload format invalid), except
  0x97 quota exceeded and 0x91 packet identifier in use, which say "not now": that
  message stays waiting and is replayed after the next reconnect, or
* the broker closed the connection on it (Mosquitto does so on a malformed packet,
  e.g. a topic with U+0000): the connection was lost within ``STRIKE_WINDOW_S`` of
  publishing that message while it was the oldest one without a PUBACK, ``refused_after``
  (config ``mqtt.refused_after``, default 3) sessions in a row. After the first such
  loss the next session publishes that message alone and waits for its PUBACK before
  sending anything else, so each further strike has it alone on the wire; a PUBACK for
  it, or a loss with another message first in flight, clears the count. A network
  outage would have to cut the connection within seconds of each of those probes; a
  loss later than ``STRIKE_WINDOW_S`` after the publish (e.g. a PUBACK timeout) never
  counts.
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
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.client import CallbackOnPublish_v2
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import MqttConfig
from ..storage.api import OutboxMessage, OutboxRow, StatusChange, Storage, StoredReading

__all__ = ["KEEP_CONFIRMED", "STRIKE_WINDOW_S", "Backoff", "TopicScheme", "Uplink"]

log = logging.getLogger("aiotkit.gateway.uplink")

KEEP_CONFIRMED = 10_000  # confirmed outbox rows kept for inspection
_PRUNE_EVERY = 1_000  # confirmations between two prunes
_PUBLISH_TIMEOUT_S = 60.0  # a PUBACK later than this ends the session (then replay)
STRIKE_WINDOW_S = 5.0  # a connection lost this soon after a publish may be its refusal
_NOT_NOW = frozenset((0x91, 0x97))  # PUBACK failures that are not about the message


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


class _Refused(Exception):
    """The broker, or the MQTT client, will not take this message."""


class _Publisher:
    """QoS 1 publishes that return the PUBACK's reason code.

    aiomqtt's ``publish`` waits for the PUBACK but drops its reason code, so a refusal
    would look like a delivery: this publishes through aiomqtt's paho client and hears
    paho's ``on_publish`` first (then hands it on to aiomqtt's own).
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client  # aiomqtt's paho client
        self._waiting: dict[int, asyncio.Future[ReasonCode]] = {}
        inner = self._paho.on_publish

        def on_publish(c: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                       properties: Properties) -> None:
            fut = self._waiting.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(reason)
            if inner is not None:  # aiomqtt's, a VERSION2 callback
                cast(CallbackOnPublish_v2, inner)(c, userdata, mid, reason, properties)

        self._paho.on_publish = on_publish

    async def publish(self, row: OutboxRow) -> ReasonCode | None:
        """Publish ``row`` with QoS 1; the PUBACK's reason code (None if paho reported
        none). Raises ``_Refused`` if the client refuses it, ``aiomqtt.MqttError`` if
        the connection cannot take it or the PUBACK is late."""
        try:
            info = self._paho.publish(row.topic, row.payload, qos=1, retain=row.retain)
        except ValueError as e:  # paho checks topic and payload before sending
            raise _Refused(f"refused by the MQTT client: {e}") from e
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if info.is_published():
            return None
        fut: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = fut
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                return await fut
        except TimeoutError as e:
            raise aiomqtt.MqttError("Operation timed out") from e
        finally:
            self._waiting.pop(info.mid, None)


class Uplink:
    """Publishes the store's outbox to an MQTT broker until shut down."""

    def __init__(
        self,
        config: MqttConfig,
        store: Storage,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._store = store
        self._clock = clock  # wall clock: the outbox's timestamps
        self._monotonic = monotonic  # how soon after a publish a connection was lost
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng=rng)
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._acked_event = asyncio.Event()
        self._since_prune = 0
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # dead letters (module docstring): rows in flight (id -> when published, in
        # publish order), the message suspected of ending sessions and its strikes
        self._in_flight: dict[int, float] = {}
        self._suspect: int | None = None
        self._strikes = 0
        self.set_aside = 0  # messages set aside since start

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
                if e.args[0] == "lost":
                    self._strike(cause)
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
            self._in_flight.clear()
            if self._connected.is_set():
                failures = 0
            self._connected.clear()
            await asyncio.sleep(delay)

    def _strike(self, cause: BaseException | None) -> None:
        """The session was lost: count it against the message it may have been about
        (module docstring), and set that aside after ``refused_after`` in a row."""
        first = next(iter(self._in_flight.items()), None)
        self._in_flight.clear()
        if first is None or self._monotonic() - first[1] > STRIKE_WINDOW_S:
            self._suspect, self._strikes = None, 0
            return
        row_id = first[0]
        if row_id == self._suspect:
            self._strikes += 1
        else:
            self._suspect, self._strikes = row_id, 1
        if self._strikes >= self._cfg.refused_after:
            n, self._suspect, self._strikes = self._strikes, None, 0
            self._set_aside(row_id, f"the broker closed the connection {n} times in a row"
                                    f" right after this message was published ({cause})")

    def _set_aside(self, row_id: int, reason: str) -> None:
        if self._store.outbox_set_aside(row_id, reason, self._clock()):
            self.set_aside += 1
            log.warning("mqtt uplink: outbox message %d set aside: %s", row_id, reason)

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
            publisher = _Publisher(client)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch(client), name="aiot-uplink-watch")
                    tg.create_task(self._confirmer(), name="aiot-uplink-confirm")
                    tg.create_task(self._pump(publisher, tg, window),
                                   name="aiot-uplink-pump")
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

    async def _pump(self, publisher: _Publisher, tg: asyncio.TaskGroup,
                    window: asyncio.Semaphore) -> None:
        last = 0
        if self._suspect is not None:  # it may have ended the last session: alone first
            rows = self._store.outbox_pending(0, 1)
            if rows and rows[0].id == self._suspect:
                self._store.outbox_mark_published([rows[0].id], self._clock())
                await window.acquire()
                await self._publish(publisher, rows[0], window)
                last = rows[0].id
            self._suspect, self._strikes = None, 0  # it went through (or is gone)
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
                tg.create_task(self._publish(publisher, row, window),
                               name=f"aiot-uplink-publish-{row.id}")
                last = row.id

    async def _publish(self, publisher: _Publisher, row: OutboxRow,
                       window: asyncio.Semaphore) -> None:
        self._in_flight[row.id] = self._monotonic()
        try:
            reason = await publisher.publish(row)
        except _Refused as e:
            self._in_flight.pop(row.id, None)
            self._set_aside(row.id, str(e))
            return
        finally:
            window.release()
        self._in_flight.pop(row.id, None)
        if reason is not None and reason.is_failure:
            if reason.value in _NOT_NOW:  # not about this message: replayed next session
                log.warning("mqtt uplink: broker answered outbox message %d with %s;"
                            " it is sent again after the next reconnect", row.id, reason)
                return
            self._set_aside(row.id, f"the broker refused it: PUBACK reason code"
                                    f" 0x{reason.value:02x} {reason}")
            return
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
