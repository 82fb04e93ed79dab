"""The storage interface: what the gateway keeps, as typed records and ``Protocol``s.

Everything above the storage package (the LwM2M registry, device management, the REST
API, the uplink, the benchmark, the tests) sees the database only through these:

``Storage``
    registrations (``registration``, ``by_address``, ``save_registration``,
    ``set_state``, ``due_for_expiry``...), Sends and their readings (``record_send``,
    ``latest``, ``readings``, ``sends``), the uplink outbox (``outbox_*``; a message the
    broker refused is set aside as a dead letter, ``outbox_set_aside``), events, the
    views (``node_summaries`` for the fleet, ``node_summary`` for one endpoint: one
    endpoint's rows only), counters a benchmark polls (``count_sends``,
    ``sends_since``...), the group commit (``begin_batch``, ``commit_later``,
    ``settle``, ``rollback_batch``, ``batch``) and ``dm``:
``DeviceStorage``
    device management's durable state: queued requests and their results,
    observations, Write-Attributes, and the Notifications each observation stored.

``KeyStorage``
    the gateway's OSCORE security contexts (``Storage.keys``): one row per endpoint with
    its identifiers, its secrets sealed by ``gateway.security`` (never in clear here),
    the durable sequence-number bound and the replay window of a clean stop.

``OtaStorage``
    the OTA service's images, campaigns and each campaign's nodes (``Storage.ota``,
    ``gateway.ota``).

``storage.sqlite.SqliteStorage`` implements them on one SQLite file
(``storage.schema``). A Notification's link to its observation (``NotificationLink``)
is written by ``record_send`` in the transaction of its readings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from ..lwm2m.senml import Record, Value, ValueKind

__all__ = [
    "OUTBOX_DROP_ORDER",
    "OUTBOX_PRIO",
    "DeadLetter",
    "DeviceStorage",
    "Event",
    "EventKind",
    "KeyStorage",
    "NodeSummary",
    "NotificationLink",
    "ObservationRow",
    "OscoreRow",
    "OtaCampaignRow",
    "OtaImageRow",
    "OtaNodeRow",
    "OtaStorage",
    "OutboxEncoder",
    "OutboxKind",
    "OutboxMessage",
    "OutboxRow",
    "RegState",
    "Registration",
    "RequestRow",
    "RequestState",
    "SendResult",
    "StatusChange",
    "StatusState",
    "Storage",
    "StoredReading",
    "StoredSend",
    "StoredValue",
]

RegState = Literal["registered", "offline", "deregistered"]
EventKind = Literal["registered", "updated", "deregistered", "expired"]
StatusState = Literal["registered", "updated", "deregistered", "offline"]
RequestState = Literal["pending", "sending", "done", "failed"]


@dataclass(frozen=True, slots=True)
class Registration:
    """A client's registration as the server keeps it."""

    endpoint: str
    reg_id: str
    host: str
    port: int
    lifetime: int
    binding: str
    lwm2m_version: str
    object_links: str
    registered_at: float
    updated_at: float
    state: RegState = "registered"

    @property
    def expires_at(self) -> float:
        return self.updated_at + self.lifetime


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as committed, with the ids the uplink payload refers to; ``late`` and
    ``tbad``: its node time was flagged (``gateway/ops/timecheck.py``; uplink only)."""

    id: int
    send_id: int
    endpoint: str
    path: str
    kind: ValueKind
    value: Value
    time: float | None
    received_at: float
    late: bool = False
    tbad: bool = False


class StoredValue(NamedTuple):
    """The latest value an endpoint sent for one path (``Storage.latest``)."""

    kind: ValueKind
    value: Value
    time: float | None
    received_at: float


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A node's state as announced on the uplink."""

    endpoint: str
    state: StatusState
    reg_id: str
    t: float


# what an outbox message reports: telemetry (readings), rollup, status (a node's
# registration state), alert, ota (an update's result)
OutboxKind = Literal["telemetry", "rollup", "status", "alert", "ota"]
# The outbox's queue order: a backlog goes out by priority (lowest first), then in id
# (commit) order, so within a kind, and so per node, messages keep their order.
OUTBOX_PRIO: dict[str, int] = {"alert": 0, "ota": 0, "status": 1, "rollup": 2,
                               "telemetry": 3}
# What the outbox budget drops, in this order (oldest first within each); never alerts
# or OTA results
OUTBOX_DROP_ORDER: tuple[OutboxKind, ...] = ("telemetry", "rollup", "status")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """What to publish: topic, payload bytes, retained or not, and what kind of message
    it is (``OutboxKind``: the uplink's priorities and drop policy go by it).

    ``topic`` is relative to the uplink's prefix (``node-1/alert``, not
    ``aiot/gw/node-1/alert``): the prefix is put in front when the message is
    published (``OutboxEncoder.topic``), so a changed ``mqtt.topic_prefix`` applies to
    the backlog. ``msg_id``: a stable id consumers de-duplicate by (with the gateway's
    id); empty: the uplink uses ``{kind}-{outbox row id}``."""

    topic: str
    payload: bytes
    retain: bool = False
    kind: OutboxKind = "telemetry"
    msg_id: str = ""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row waiting for (or replayed after) a broker acknowledgement; ``topic``
    is the whole topic to publish to (the prefix applied when the row was read)."""

    id: int
    topic: str
    payload: bytes
    retain: bool
    created: float
    kind: OutboxKind = "telemetry"
    msg_id: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An outbox row the broker refused, set aside (never published again)."""

    id: int
    topic: str
    payload: bytes
    created: float
    dead: float  # when it was set aside
    reason: str


class OutboxEncoder(Protocol):
    """Turns stored facts into uplink messages (the uplink's topic scheme)."""

    def reading(self, r: StoredReading) -> OutboxMessage: ...

    def status(self, s: StatusChange) -> OutboxMessage: ...

    def topic(self, relative: str) -> str:
        """The topic to publish a stored (prefix-relative) topic to."""
        ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """Outcome of storing one Send; ``duplicate`` means nothing new was stored: it was
    a retransmission, or a report stored before (``send_id`` is the stored one's)."""

    send_id: int
    readings: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Event:
    """One registry event as recorded."""

    id: int
    t: float
    endpoint: str
    kind: EventKind
    reg_id: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """One endpoint at a glance (the ``aiot demo`` live view)."""

    endpoint: str
    state: RegState
    reg_id: str
    host: str
    port: int
    lifetime: int
    registered_at: float
    updated_at: float
    last_seen: float
    sends: int
    readings: int
    last_values: dict[str, Value] = field(default_factory=dict)
    binding: str = ""
    lwm2m_version: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StoredSend:
    """A stored Send (or Notification), without its readings."""

    id: int
    endpoint: str
    reg_id: str
    received_at: float
    content_format: int
    token: bytes
    records: int


class NotificationLink(NamedTuple):
    """Which observation a Notification (stored like a Send) belongs to."""

    observation_id: int
    observe_seq: int | None
    content_format: int | None
    received: float


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One row of ``dm_requests``."""

    id: int
    endpoint: str
    op: str
    spec: dict[str, Any]
    queued: bool
    state: RequestState
    created: float
    attempts: int
    finished: float | None
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ObservationRow:
    """One persisted observation."""

    id: int
    endpoint: str
    key: str
    spec: dict[str, Any]
    token: bytes | None
    reg_id: str | None
    created: float
    established: float | None


@dataclass(frozen=True, slots=True)
class OscoreRow:
    """One endpoint's OSCORE security context as stored (``oscore_contexts``).

    ``sealed`` is the master secret and salt encrypted at rest (``gateway.security``);
    ``seq_bound``: no sender sequence number at or above it was used; ``replay``: the
    replay window as persisted on a clean close (JSON), None when unknown;
    ``generation`` counts rotations (a state write of an older one is ignored)."""

    endpoint: str
    kid: bytes  # the node's sender ID: what the gateway looks up
    kid_context: bytes | None
    gateway_id: bytes  # the gateway's sender ID in this context
    sealed: bytes
    seq_bound: int
    replay: str | None
    created: float
    rotated: float | None = None
    revoked: float | None = None
    exported: float | None = None
    generation: int = 1

    def __repr__(self) -> str:  # the sealed blob is not shown either
        return (f"OscoreRow({self.endpoint!r}, kid={self.kid.hex()},"
                f" generation={self.generation}, revoked={self.revoked})")


class KeyStorage(Protocol):
    """The OSCORE contexts' rows (``oscore_contexts``, ``oscore_meta``). Every call is
    one short transaction of its own, durable when it returns (a sequence-number bound
    must be on disk before a number under it goes out), independent of the group
    commit."""

    def oscore_row(self, endpoint: str) -> OscoreRow | None: ...

    def oscore_rows(self, after: str = "", limit: int = -1) -> list[OscoreRow]: ...

    def oscore_index(self) -> list[tuple[bytes, str]]: ...

    def oscore_kid_taken(self, kid: bytes) -> bool: ...

    def oscore_put(self, row: OscoreRow) -> None: ...

    def oscore_save_state(self, endpoint: str, generation: int, seq_bound: int,
                          replay: str | None) -> bool: ...

    def oscore_revoke(self, endpoint: str, now: float) -> bool: ...

    def oscore_mark_exported(self, endpoint: str, generation: int, now: float) -> bool: ...

    def oscore_forget_replay(self) -> int: ...

    def oscore_meta(self, key: str) -> str | None: ...

    def oscore_set_meta(self, key: str, value: str) -> None: ...


class DeviceStorage(Protocol):
    """Device management's durable state (``dm_*`` tables); each call is one short
    transaction of its own, independent of the group commit."""

    # requests: pending -> sending -> done | failed
    def add_request(self, endpoint: str, op: str, spec: dict[str, Any], *, queued: bool,
                    now: float) -> int: ...

    def mark_sending(self, request_id: int) -> None: ...

    def mark_pending(self, request_id: int) -> None: ...

    def finish(self, request_id: int, state: RequestState, result: dict[str, Any],
               now: float) -> None: ...

    def prune(self, now: float) -> int: ...

    def request(self, request_id: int) -> RequestRow | None: ...

    def requests(self, endpoint: str | None = None, *, open_only: bool = False,
                 limit: int = 100) -> list[RequestRow]: ...

    def next_pending(self, endpoint: str) -> RequestRow | None: ...

    def count_open(self, endpoint: str) -> int: ...

    def queued_endpoints(self) -> set[str]: ...

    def recover(self, now: float) -> None: ...

    # observations
    def save_observation(self, endpoint: str, key: str, spec: dict[str, Any],
                         now: float) -> int: ...

    def established(self, obs_id: int, token: bytes | None, reg_id: str | None,
                    now: float | None) -> None: ...

    def observation(self, endpoint: str, key: str) -> ObservationRow | None: ...

    def observations(self, endpoint: str | None = None) -> list[ObservationRow]: ...

    def delete_observation(self, obs_id: int) -> None: ...

    def delete_observations(self, endpoint: str) -> int: ...

    def observed_endpoints(self) -> set[str]: ...

    def notifications(self, obs_id: int) -> list[tuple[int | None, int | None, float]]: ...

    # Write-Attributes
    def save_attributes(self, endpoint: str, path: str, query: list[str],
                        now: float) -> None: ...

    def attributes(self, endpoint: str) -> dict[str, list[str]]: ...


@dataclass(frozen=True, slots=True)
class OtaImageRow:
    """A verified OTA image as stored (``ota_images``): ``id`` is the SHA-256 (hex) of
    its bytes, the name of its file; ``signers``: hex ids of the keys that counted."""

    id: str
    version: str
    payload_type: str
    board: str
    security_counter: int
    signers: tuple[str, ...]
    size: int
    uploaded: float


@dataclass(frozen=True, slots=True)
class OtaCampaignRow:
    """An OTA campaign as stored (``ota_campaigns``); ``wave``: the index of the wave
    under way (or the last one, once it ended); ``reason``: why it was aborted."""

    id: int
    name: str
    image: str
    target: dict[str, Any]
    waves: tuple[str, ...]
    max_failure_ratio: float
    report_timeout_s: float
    state: str
    wave: int
    reason: str | None
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class OtaNodeRow:
    """One target node of a campaign (``ota_nodes``)."""

    campaign: int
    endpoint: str
    wave: int
    state: str
    offered: float | None
    heard: float | None
    reason: str | None


class OtaStorage(Protocol):
    """The OTA service's rows; every call one short transaction, durable on return."""

    def ota_put_image(self, row: OtaImageRow) -> bool: ...

    def ota_image(self, image_id: str) -> OtaImageRow | None: ...

    def ota_images(self) -> list[OtaImageRow]: ...

    def ota_create_campaign(self, row: OtaCampaignRow,
                            nodes: Iterable[tuple[str, int]]) -> int: ...

    def ota_campaign(self, campaign_id: int) -> OtaCampaignRow | None: ...

    def ota_campaigns(self, states: tuple[str, ...] = ()) -> list[OtaCampaignRow]: ...

    def ota_set_campaign(self, campaign_id: int, *, state: str, wave: int,
                         reason: str | None, now: float) -> None: ...

    def ota_nodes(self, campaign_id: int) -> list[OtaNodeRow]: ...

    def ota_node_campaigns(self, endpoint: str, states: tuple[str, ...]) -> list[int]: ...

    def ota_set_node(self, campaign_id: int, endpoint: str, *, state: str,
                     offered: float | None = None, heard: float | None = None,
                     reason: str | None = None) -> None: ...


class Storage(Protocol):
    """The gateway's storage (module docstring). Synchronous, for the event loop's
    thread; a write returns once committed, or, inside a batch, once in the batch."""

    @property
    def dm(self) -> DeviceStorage: ...

    @property
    def keys(self) -> KeyStorage: ...

    @property
    def ota(self) -> OtaStorage: ...

    def close(self) -> None: ...

    # group commit: one transaction, one COMMIT (on a writer thread), many callers
    def batch(self) -> AbstractContextManager[None]: ...

    def begin_batch(self) -> None: ...

    def rollback_batch(self) -> None: ...

    def commit_later(self) -> asyncio.Future[None]: ...

    def settle(self) -> None: ...

    # registrations
    def registration(self, endpoint: str) -> Registration | None: ...

    def by_reg_id(self, reg_id: str) -> Registration | None: ...

    def by_address(self, host: str, port: int) -> Registration | None: ...

    def registrations(self) -> list[Registration]: ...

    def reg_id_taken(self, reg_id: str) -> bool: ...

    def save_registration(self, reg: Registration, event: EventKind, status: StatusState,
                          now: float, detail: str | None = None) -> None: ...

    def set_state(self, reg: Registration, state: RegState, event: EventKind,
                  status: StatusState, now: float) -> bool: ...

    def due_for_expiry(self, now: float) -> list[Registration]: ...

    def prune_ended(self, before: float, *, after: int = 0,
                    scan: int = 1000) -> tuple[list[str], int]: ...

    def prune_history(self, before: float, max_sends: int = 0, *, chunk: int = 5000,
                      young_after: int | None = None) -> int: ...

    def events(self, endpoint: str | None = None, limit: int = 100) -> list[Event]: ...

    # Sends (and Notifications) and their readings
    def record_send(self, reg: Registration, token: bytes, digest: bytes,
                    content_format: int, records: Sequence[Record], now: float,
                    notification: NotificationLink | None = None) -> SendResult: ...

    def latest(self, endpoint: str) -> dict[str, StoredValue]: ...

    def readings(self, send_id: int | None = None) -> list[StoredReading]: ...

    def sends(self, endpoint: str | None = None) -> list[StoredSend]: ...

    def count_sends(self) -> int: ...

    def last_send_id(self) -> int: ...

    def sends_since(self, after_id: int) -> tuple[int, float]: ...

    def count_registered(self) -> int: ...

    # the uplink outbox
    def outbox_add(self, messages: Sequence[OutboxMessage], now: float) -> None:
        """Commit ``messages`` to the outbox in one transaction (for the uplink)."""
        ...

    def outbox_oldest(self) -> float | None:
        """When the oldest row waiting for the broker was committed; None: none waits."""
        ...

    def outbox_clock_steps(self) -> list[tuple[int, float]]:
        """Steps of the wall clock seen between outbox inserts while this store was
        open: (the last row id stamped before the step, the step in seconds), oldest
        first; the uplink corrects message ages by them."""
        ...

    def outbox_pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unconfirmed rows with an id above ``after_id``, in queue order (priority,
        then id)."""
        ...

    def outbox_next(self, after: Mapping[int, int], limit: int) -> list[OutboxRow]:
        """Unconfirmed rows in queue order, of each priority only those with an id
        above ``after[prio]`` (the publisher's cursors)."""
        ...

    def outbox_last_id(self) -> int:
        """The highest outbox row id there is (0: none). An id is given again only
        after the row holding the highest was deleted: the publisher's cursors go no
        higher than this."""
        ...

    def outbox_set_budget(self, max_rows: int, max_bytes: int = 0) -> None:
        """Keep at most ``max_rows`` unconfirmed rows of at most ``max_bytes`` bytes of
        payload and topic (0: no limit): adding beyond drops by the policy of
        ``storage.sqlite`` (oldest telemetry first)."""
        ...

    def outbox_pending_bytes(self) -> int:
        """The payload and topic bytes of the unconfirmed rows (the byte budget's)."""
        ...

    def outbox_drop(self, ids: Iterable[int], reason: str, now: float) -> int:
        """Delete unconfirmed rows without publishing them, counted under ``reason``
        (e.g. ``expired``); returns how many went."""
        ...

    def outbox_drops(self) -> dict[str, int]:
        """Messages dropped since the database was made, by ``{reason}_{kind}``
        (``budget_telemetry``, ``expired_rollup``...)."""
        ...

    def outbox_mark_published(self, ids: Iterable[int], now: float) -> None: ...

    def outbox_confirm(self, ids: Iterable[int], now: float) -> None: ...

    def outbox_prune(self, keep: int) -> int: ...

    def outbox_counts(self) -> tuple[int, int]: ...

    def outbox_set_aside(self, row_id: int, reason: str, now: float) -> bool: ...

    def outbox_dead(self, limit: int = 100) -> list[DeadLetter]: ...

    def outbox_dead_count(self) -> int: ...

    # views
    def node_summaries(self, after: str = "", limit: int | None = None, *,
                       values: bool = True) -> list[NodeSummary]: ...

    def node_summary(self, endpoint: str) -> NodeSummary | None: ...
