"""MQTT uplink: the durable SQLite outbox published with QoS 1 (aiomqtt, MQTT 5).

Topic scheme (``{prefix}`` is ``mqtt.topic_prefix``, default ``aiot/{gateway.id}``, so
several gateways on one broker never share a topic; the client id defaults to
``aiot-{gateway.id}``, unique per gateway too):

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
    expired). Each gateway has its own (its prefix): a node that moved to another
    gateway shows ``registered`` under the new one, and its old gateway's status ends
    ``offline`` when the lifetime lapses there.

``{prefix}/status``
    The gateway's own state, retained: ``{"gw": "gw", "state": "online", "t": ...}`` on
    every connect; ``offline`` on a clean shutdown and, as the session's Will, when the
    broker loses the gateway (``mqtt.gateway_status``, default on).

Other kinds (rollups, alerts, OTA results) are added by their producers with
``Storage.outbox_add``, their topics relative to the prefix too.

``format = "sparkplug"`` publishes telemetry and statuses as Sparkplug B 3.0 instead
(``sparkplug.py``: topics, births and deaths, QoS 0 and what it still guarantees); the
outbox rows stay as above and are turned into Sparkplug when published.

Message ids (for idempotent consumers): every message carries two MQTT 5 user
properties, ``gw`` (``gateway.id``) and ``msg-id``: the reading id for telemetry (the
payload's ``id``), the producer's id if it gave one, else ``{kind}-{outbox row id}``.
``(gw, msg-id)`` is the same on every delivery of a message, replays included, and
never names two messages: a consumer de-duplicates by it
(``uplink/consumer_example.py``). Reading ids restart on every gateway: the ``gw`` part
is what keeps them apart.

The topic is computed when a message is published: the outbox keeps it relative to
the prefix (``node-1/data/3313/0/5702``; ``OutboxEncoder.topic`` puts the prefix in
front when a row is read), so a changed ``topic_prefix`` applies to the backlog. Rows
written before schema version 9 hold their whole topic and are published to it as they
are (``storage.schema``).

Delivery: every message is first an outbox row, committed in the same transaction as
the data it reports. The publisher takes unconfirmed rows in queue order, keeps up to
``mqtt.batch`` publishes in flight, and marks a row confirmed when its PUBACK arrives
(aiomqtt's ``publish`` with QoS 1 returns only then). When the broker goes away it
reconnects with jittered exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``)
and replays every unconfirmed row: at-least-once; a message is published twice only if
its PUBACK was lost (or its confirmation could not be stored, below). Confirmed rows are
pruned down to the newest ``KEEP_CONFIRMED``; confirmations are gathered for up to
``_CONFIRM_GATHER_S`` so that one transaction (one fsync) records many. Publish times
are not recorded (``outbox.published`` stays NULL: a transaction per batch for a figure
nothing read).

Queue order and priorities: ``alert`` and ``ota`` messages first, then ``status``,
then ``rollup``, then ``telemetry`` (``storage.sqlite.OUTBOX_PRIO``); within one
priority in commit order. Guarantee: two messages of the same kind (so two readings of
one node, or two statuses of one node) are first published in the order they were
committed, in every session, replays included; messages of different kinds may
overtake each other (an alert committed after a backlog of telemetry goes out before
it). A batch is read once ``mqtt.batch`` rows are waiting or ``batch_latency_ms`` after
the first of them was announced, whichever comes first; publishes are paced by a token
bucket (``max_rate_per_s``, burst ``batch``; 0: unlimited), which is what paces the
catch-up after an outage.

Expiry: ``expiry_telemetry_s``, ``expiry_rollup_s``, ``expiry_status_s`` (0: never;
alerts and OTA results never expire). A message carries the MQTT 5 Message Expiry
Interval of what is left of it (counted from when it was committed); one older than
that when its turn comes is not published but dropped, counted as ``expired``. Ages
are corrected for steps of the wall clock the store saw while it ran
(``Storage.outbox_clock_steps``); a step while the gateway was down is not seen.

Bounded disk: ``outbox_max_rows`` unconfirmed rows of ``outbox_max_bytes`` bytes of
payload and topic at most (``Storage.outbox_set_budget``); an insert beyond either
drops the oldest telemetry, then the oldest rollups, then the oldest statuses, never
alerts or OTA results (they may exceed the budget), counted by reason and kind
(``Storage.outbox_drops``, e.g. ``budget_telemetry``). A full disk stops new data from
being stored (and so acknowledged), not the forwarding: the publisher keeps
publishing what is stored; a confirmation that cannot be stored as such deletes the
row instead (which frees space), and one that cannot be stored at all is kept in memory
(and such a row is not published again while the gateway runs) and written later.

TLS: ``tls = true``, or any of ``tls_ca``/``tls_cert``, connects with TLS: the server
is verified against ``tls_ca`` (PEM; empty: the system's CAs) and its host name
(``tls_insecure = true`` skips the host-name check only, never the chain);
``tls_cert``/``tls_key`` are the gateway's client certificate. A handshake the gateway
refuses (e.g. a server certificate from another CA) is one warning naming the cause,
then retried with the backoff like any unreachable broker.

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
import math
import random
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.client import CallbackOnPublish_v2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import MqttConfig
from ..errors import ConfigError, StoreError
from ..storage.api import (
    OUTBOX_PRIO,
    OutboxMessage,
    OutboxRow,
    StatusChange,
    Storage,
    StoredReading,
)
from .sparkplug import SPARKPLUG_KINDS, SparkplugEdge, varint

__all__ = ["KEEP_CONFIRMED", "STRIKE_WINDOW_S", "Backoff", "TokenBucket", "TopicScheme",
           "Uplink", "tls_context"]

log = logging.getLogger("aiotkit.gateway.uplink")

KEEP_CONFIRMED = 10_000  # confirmed outbox rows kept for inspection
_PRUNE_EVERY = 1_000  # confirmations between two prunes
_PUBLISH_TIMEOUT_S = 60.0  # a PUBACK later than this ends the session (then replay)
STRIKE_WINDOW_S = 5.0  # a connection lost this soon after a publish may be its refusal
_NOT_NOW = frozenset((0x91, 0x97))  # PUBACK failures that are not about the message
_CONFIRM_GATHER_S = 0.02  # confirmations wait this long to share a transaction
_RETRY_CONFIRM_S = 1.0  # confirmations the store could not take are tried again after
_STATUS_TIMEOUT_S = 2.0  # the clean shutdown's "offline" status waits this long at most
_EXPIRY_MAX_S = 0xFFFF_FFFF  # MQTT 5 §3.3.2.3.3: a four-byte integer


class TopicScheme:
    """Builds the uplink's messages (implements the store's ``OutboxEncoder``): topics
    relative to the prefix, which ``topic`` puts in front when a row is read."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def topic(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def reading(self, r: StoredReading) -> OutboxMessage:
        body: dict[str, object] = {"id": r.id, "send": r.send_id, "ep": r.endpoint,
                                   "path": r.path}
        if isinstance(r.value, bytes):
            body["vd"] = base64.b64encode(r.value).decode("ascii")
        else:
            body["v"] = r.value
        body["t"] = r.time
        body["rx"] = r.received_at
        if r.late:  # node time flagged (gateway/ops/timecheck.py); absent when fine
            body["late"] = True
        if r.tbad:
            body["tbad"] = True
        return OutboxMessage(f"{r.endpoint}/data{r.path}", _json(body), msg_id=str(r.id))

    def status(self, s: StatusChange) -> OutboxMessage:
        body = {"ep": s.endpoint, "state": s.state, "reg": s.reg_id, "t": s.t}
        return OutboxMessage(f"{s.endpoint}/status", _json(body), retain=True,
                             kind="status")


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context ``cfg`` asks for (None: plain TCP); ConfigError, naming the key
    and the file, if a certificate or key cannot be loaded."""
    if not (cfg.tls or cfg.tls_ca or cfg.tls_cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"mqtt.tls_ca: cannot load {cfg.tls_ca}: {e}") from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls_insecure:  # the chain is still verified, the host name is not
        ctx.check_hostname = False
    if cfg.tls_cert:
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"mqtt.tls_cert/tls_key: cannot load {cfg.tls_cert}"
                              f" ({cfg.tls_key or 'key in the same file'}): {e}") from e
    return ctx


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


class TokenBucket:
    """At most ``rate`` publishes a second on average, bursts of ``burst``; rate 0:
    no limit. ``delay()`` takes a token and says how long to wait for it (a pure
    function of the injected clock); ``take()`` waits that long."""

    def __init__(self, rate: float, burst: int, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate = rate
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()

    def delay(self) -> float:
        if self.rate <= 0:
            return 0.0
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self) -> None:
        d = self.delay()
        if d > 0:
            await self._sleep(d)


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

    async def publish(self, row: OutboxRow, properties: Properties | None = None
                      ) -> ReasonCode | None:
        """Publish ``row`` with QoS 1; the PUBACK's reason code (None if paho reported
        none). Raises ``_Refused`` if the client refuses it, ``aiomqtt.MqttError`` if
        the connection cannot take it or the PUBACK is late."""
        try:
            info = self._paho.publish(row.topic, row.payload, qos=1, retain=row.retain,
                                      properties=properties)
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
    """Publishes the store's outbox to an MQTT broker until shut down.

    ``gateway_id``: the ``gw`` user property of every message and the gateway status's
    (default: the client id). ``clock`` is the wall clock of the outbox's timestamps
    (and of expiry), ``monotonic`` paces the token bucket and times the strikes.
    """

    def __init__(
        self,
        config: MqttConfig,
        store: Storage,
        *,
        gateway_id: str = "",
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._store = store
        self._gw = gateway_id or config.client_id
        self._clock = clock  # wall clock: the outbox's timestamps
        self._monotonic = monotonic  # how soon after a publish a connection was lost
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng=rng)
        self._bucket = TokenBucket(config.max_rate_per_s, config.batch, monotonic=monotonic)
        self._expiry = {"telemetry": config.expiry_telemetry_s,
                        "rollup": config.expiry_rollup_s, "status": config.expiry_status_s}
        self._tls: ssl.SSLContext | None = None
        self._gw_prop = _user_property("gw", self._gw)
        self._wake = asyncio.Event()
        self._acked: list[int] = []
        self._acked_event = asyncio.Event()
        # acknowledged by the broker, but the store could not record it (a full disk):
        # kept here, never published again while this runs, written again later
        self._unsaved: set[int] = set()
        self._store_failures = 0
        self._since_prune = 0
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client_now: aiomqtt.Client | None = None
        # dead letters (module docstring): rows in flight (id -> when published, in
        # publish order), the message suspected of ending sessions and its strikes
        self._in_flight: dict[int, float] = {}
        self._suspect: int | None = None
        self._strikes = 0
        self.set_aside = 0  # messages set aside since start
        self.published = 0  # PUBACKs (success) since start
        self.expired = 0  # messages dropped unpublished since start (expiry)
        # Sparkplug B (sparkplug.py): the Edge Node's session, None for the JSON format
        self._sp = (SparkplugEdge(config, store, self._gw, clock=clock)
                    if config.format == "sparkplug" else None)
        store.outbox_set_budget(config.outbox_max_rows, config.outbox_max_bytes)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def in_flight(self) -> int:
        """Publishes waiting for their PUBACK now (at most ``mqtt.batch``)."""
        return len(self._in_flight)

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
        rows = self._store.outbox_pending(0, len(self._unsaved) + 1)
        if all(r.id in self._unsaved for r in rows):
            self._idle.set()

    async def start(self) -> None:
        """Start the publisher task (it connects, and reconnects, on its own); a TLS
        certificate or key that cannot be loaded raises ConfigError here."""
        if self._task is None:
            self._tls = tls_context(self._cfg)
            self._task = asyncio.create_task(self._run(), name="aiot-uplink")

    async def shutdown(self) -> None:
        """Stop publishing; unconfirmed rows stay in the outbox for the next run. The
        gateway's status says ``offline`` first (if connected, within a short bound)."""
        task, self._task = self._task, None
        client = self._client_now
        if task is not None and client is not None and self._sp is not None \
                and self._connected.is_set():  # Sparkplug: NDEATH, then DISCONNECT
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(_STATUS_TIMEOUT_S):
                    await client.publish(*self._sp.death(), qos=1, retain=False)
        elif task is not None and client is not None and self._cfg.gateway_status \
                and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(_STATUS_TIMEOUT_S):
                    await client.publish(*self._gateway_status("offline"), qos=1, retain=True)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_acked()

    def _gateway_status(self, state: str) -> tuple[str, bytes]:
        body = {"gw": self._gw, "state": state, "t": self._clock()}
        return f"{self._cfg.topic_prefix}/status", _json(body)

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
                # (the cause as text: a record holding it would hold its frames, and a
                # socket a failed TLS handshake left in them)
                if e.args[0] == "lost":
                    log.warning("mqtt uplink lost %s: %s; reconnecting in %.2f s",
                                where, str(cause), delay)
                elif failures == 1:
                    log.warning("mqtt uplink cannot reach %s: %s; retrying in %.2f s",
                                where, _why(cause), delay)
                else:
                    log.debug("mqtt uplink still cannot reach %s (attempt %d): %s;"
                              " retrying in %.2f s", where, failures, _why(cause), delay)
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
        try:
            done = self._store.outbox_set_aside(row_id, reason, self._clock())
        except (StoreError, sqlite3.Error) as e:  # a full disk: it stays pending
            self._store_failed("set aside a refused message", e)
            return
        if done:
            self.set_aside += 1
            log.warning("mqtt uplink: outbox message %d set aside: %s", row_id, reason)

    def _store_failed(self, what: str, e: BaseException) -> None:
        """The store refused a write (a full disk): forwarding goes on; said once, then
        every 100th time."""
        self._store_failures += 1
        if self._store_failures % 100 == 1:
            log.warning("mqtt uplink: cannot %s in the database (%s); forwarding goes on"
                        " (%d such failures)", what, e, self._store_failures)

    def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        # paho logs a lost connection as an ERROR of its own; the uplink reports every
        # connection change (with the cause) itself, so paho's records stay below that.
        paho_log = logging.getLogger("aiotkit.gateway.uplink.mqtt")
        if paho_log.level == logging.NOTSET:
            paho_log.setLevel(logging.CRITICAL)
        will = None
        if self._sp is not None:  # Sparkplug: NDEATH with the next bdSeq
            will = self._sp.will()
        elif cfg.gateway_status:
            topic, payload = self._gateway_status("offline")
            will = aiomqtt.Will(topic, payload, qos=1, retain=True)
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
            tls_context=self._tls,
            will=will,
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
            self._client_now = client
            self._connected.set()
            self._backoff.reset()
            pending, _ = self._store.outbox_counts()
            log.info("mqtt uplink connected to %s:%d as %s%s (%d messages waiting)",
                     self._cfg.host, self._cfg.port, self._cfg.client_id,
                     " (TLS)" if self._tls else "", pending)
            window = asyncio.Semaphore(self._cfg.batch)
            publisher = _Publisher(client)
            try:
                if self._sp is not None:  # Sparkplug: subscriptions, NBIRTH, DBIRTHs
                    await self._sp.begin(client)
                elif self._cfg.gateway_status:
                    await client.publish(*self._gateway_status("online"), qos=1, retain=True)
            except aiomqtt.MqttError as e:
                lost = e
            else:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._watch(client), name="aiot-uplink-watch")
                        tg.create_task(self._confirmer(), name="aiot-uplink-confirm")
                        tg.create_task(self._pump(publisher, tg, window),
                                       name="aiot-uplink-pump")
                except* aiomqtt.MqttError as group:
                    lost = group.exceptions[0]
        finally:
            self._client_now = None
            self._flush_acked()
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        if lost is not None:
            raise _SessionLost("lost") from lost

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raise MqttError when the connection drops (nothing is subscribed, but
        Sparkplug's commands and STATE)."""
        async for m in client.messages:
            if self._sp is not None:
                self._sp.on_message(m)

    async def _pump(self, publisher: _Publisher, tg: asyncio.TaskGroup,
                    window: asyncio.Semaphore) -> None:
        # per priority, the last row id published this session (the queue's cursors)
        after: dict[int, int] = {}
        if self._suspect is not None:  # it may have ended the last session: alone first
            rows = self._store.outbox_pending(0, 1)
            if rows and rows[0].id == self._suspect:
                await window.acquire()
                await self._publish(publisher, rows[0], window, self._properties(rows[0]))
                after[_prio(rows[0])] = rows[0].id
            self._suspect, self._strikes = None, 0  # it went through (or is gone)
        linger = self._cfg.batch_latency_ms / 1000.0
        while True:
            self._wake.clear()
            # SQLite gives the id of a deleted highest row (dropped, expired, confirmed
            # by deletion) to the next insert: no cursor may stay above the top
            top = self._store.outbox_last_id()
            for prio, last in after.items():
                if last > top:
                    after[prio] = top
            rows = self._store.outbox_next(after, self._cfg.batch)
            if not rows:
                self._check_idle()
                await self._wake.wait()
                if linger > 0:  # let a batch gather, for this long at most
                    await asyncio.sleep(linger)
                continue
            for row in rows:
                after[_prio(row)] = row.id
            now = self._clock()
            send: list[tuple[OutboxRow, Properties]] = []
            expired: list[int] = []
            for row in rows:
                if row.id in self._unsaved:
                    continue
                props = self._properties(row, now)
                if props is None:
                    expired.append(row.id)
                else:
                    send.append((row, props))
            if expired:
                self._drop_expired(expired, now)
            if self._sp is not None:  # Sparkplug: telemetry and statuses, QoS 0
                await self._sp_send([r for r, _ in send if r.kind in SPARKPLUG_KINDS],
                                    tg, window)
                send = [(r, p) for r, p in send if r.kind not in SPARKPLUG_KINDS]
            for row, props in send:
                await self._bucket.take()
                await window.acquire()
                tg.create_task(self._publish(publisher, row, window, props),
                               name=f"aiot-uplink-publish-{row.id}")

    # -- Sparkplug B (sparkplug.py) --
    async def _sp_send(self, rows: list[OutboxRow], tg: asyncio.TaskGroup,
                       window: asyncio.Semaphore) -> None:
        """Publish ``rows`` as Sparkplug messages (QoS 0, one window slot and one token
        each); they are confirmed once the broker has answered the barrier after them."""
        sp = self._sp
        if sp is None or not rows:
            return
        units, bad = sp.plan(rows)
        for row_id, reason in bad:
            self._set_aside(row_id, reason)
        ids: list[int] = []
        held = 0
        for unit in units:
            await self._bucket.take()
            await window.acquire()
            held += 1
            sp.send(unit)
            ids += unit.ids
        if ids:
            tg.create_task(self._sp_confirm(ids, held, window),
                           name=f"aiot-uplink-sparkplug-{ids[0]}")

    async def _sp_confirm(self, ids: list[int], held: int, window: asyncio.Semaphore
                          ) -> None:
        try:
            await cast(SparkplugEdge, self._sp).barrier()
        finally:
            for _ in range(held):
                window.release()
        self.published += len(ids)
        self._acked += ids
        self._acked_event.set()

    def _properties(self, row: OutboxRow, now: float | None = None) -> Properties | None:
        """The PUBLISH's MQTT 5 properties (message id, expiry left); None: it expired."""
        msg_id = row.msg_id if _mqtt_string(row.msg_id) else f"{row.kind}-{row.id}"
        packed = self._gw_prop + _user_property("msg-id", msg_id)
        expiry = self._expiry.get(row.kind, 0.0)
        if expiry > 0:
            age = (self._clock() if now is None else now) - row.created
            # stamped before a step of the wall clock (the store saw it): corrected, so
            # a step forward expires nothing early and one back keeps nothing longer
            for last_before, step in self._store.outbox_clock_steps():
                if row.id <= last_before:
                    age -= step
            age = max(0.0, age)
            if age >= expiry:
                return None
            left = min(_EXPIRY_MAX_S, math.ceil(expiry - age))
            packed += b"\x02" + left.to_bytes(4, "big")  # Message Expiry Interval
        return _Packed(packed)

    def _drop_expired(self, ids: list[int], now: float) -> None:
        try:
            self.expired += self._store.outbox_drop(ids, "expired", now)
        except (StoreError, sqlite3.Error) as e:
            self._store_failed("drop expired messages", e)

    async def _publish(self, publisher: _Publisher, row: OutboxRow,
                       window: asyncio.Semaphore, props: Properties | None) -> None:
        self._in_flight[row.id] = self._monotonic()
        try:
            reason = await publisher.publish(row, props)
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
        self.published += 1
        self._acked.append(row.id)
        self._acked_event.set()

    async def _confirmer(self) -> None:
        while True:
            if self._unsaved:  # the store refused them last time: try again in a while
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RETRY_CONFIRM_S):
                        await self._acked_event.wait()
            else:
                await self._acked_event.wait()
                # gather a few more: one transaction (one fsync) for many confirmations
                if len(self._acked) < self._cfg.batch:
                    await asyncio.sleep(_CONFIRM_GATHER_S)
            self._acked_event.clear()
            self._flush_acked()

    def _flush_acked(self) -> None:
        ids, self._acked = self._acked, []
        ids += self._unsaved
        if not ids:
            return
        try:
            self._store.outbox_confirm(ids, self._clock())
        except (StoreError, sqlite3.Error) as e:
            self._unsaved.update(ids)
            self._store_failed("record confirmations", e)
            return
        self._unsaved.clear()
        self._check_idle()
        self._since_prune += len(ids)
        if self._since_prune >= _PRUNE_EVERY:
            self._since_prune = 0
            try:
                pruned = self._store.outbox_prune(KEEP_CONFIRMED)
            except (StoreError, sqlite3.Error) as e:
                self._store_failed("prune confirmed messages", e)
                return
            if pruned:
                log.debug("pruned %d confirmed outbox rows", pruned)


class _Packed(Properties):
    """PUBLISH properties the uplink packed itself: paho's ``Properties`` builds its
    name tables on every instance and packs by name lookups, most of a publish's cost
    at a backlog's rate. paho only calls ``pack()`` on it."""

    def __init__(self, packed: bytes) -> None:  # (not Properties.__init__: see above)
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", varint(len(packed)) + packed)

    def pack(self) -> bytes:
        return cast(bytes, self._packed)  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"<{len(self.pack())} bytes of MQTT 5 properties>"


def _mqtt_string(s: str) -> bool:
    """A non-empty string MQTT can carry (§1.5.4: UTF-8, no U+0000, at most 65535
    bytes): a producer's message id that is not one is replaced by ``{kind}-{row id}``."""
    if not s or "\x00" in s:
        return False
    try:
        return len(s.encode("utf-8")) <= 0xFFFF
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _user_property(name: str, value: str) -> bytes:
    """MQTT 5 §3.3.2.3.7: identifier 0x26, then two UTF-8 strings."""
    k, v = name.encode(), value.encode()
    return b"\x26" + len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v


def _prio(row: OutboxRow) -> int:
    return OUTBOX_PRIO[row.kind]


def _why(cause: BaseException | None) -> str:
    """A connect failure in one line: a TLS refusal names its reason."""
    seen = cause
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: the broker's certificate is not trusted ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return str(cause)
