"""SQLite storage: registrations, Sends and their readings, the uplink outbox, events.

One file in WAL mode with ``synchronous=FULL``: a transaction that returned is on disk,
which is what lets the LwM2M layer acknowledge a Send only after its readings (and their
outbox rows) are committed together. (FULL rather than NORMAL: NORMAL would let a power
cut undo the last acknowledged transactions; with group commit one fsync serves a whole
batch, so FULL costs little: ~60 us per COMMIT on the development VM, against ~10 us of
SQLite CPU per stored row.) The schema version lives in ``PRAGMA user_version``
and is migrated forward on open; a newer file is refused.

Times are wall-clock epoch seconds (floats). The store is synchronous and meant to be
called from the event loop's thread only; every call is one short transaction, or, inside
``batch()``, a savepoint of one shared transaction (group commit: many Sends, one
COMMIT and one fsync; a call that fails inside is undone alone).

What goes into the outbox is decided by an ``OutboxEncoder`` (the uplink's topic
scheme); with none (MQTT disabled) nothing is written there.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import cbor2

from .errors import StoreError
from .senml import Record, Value, ValueKind

__all__ = [
    "EXCHANGE_LIFETIME_S",
    "SCHEMA_VERSION",
    "Event",
    "NodeSummary",
    "OutboxEncoder",
    "OutboxMessage",
    "OutboxRow",
    "Registration",
    "SendResult",
    "StatusChange",
    "Store",
    "StoredReading",
    "StoredValue",
]

SCHEMA_VERSION = 2
EXCHANGE_LIFETIME_S = 247.0  # RFC 7252 §4.8.2: how long a retransmission can still arrive

RegState = Literal["registered", "offline", "deregistered"]
EventKind = Literal["registered", "updated", "deregistered", "expired"]
StatusState = Literal["registered", "updated", "deregistered", "offline"]

_SCHEMA_V1 = """
CREATE TABLE registrations (
    endpoint      TEXT PRIMARY KEY,
    reg_id        TEXT NOT NULL UNIQUE,
    host          TEXT NOT NULL,
    port          INTEGER NOT NULL,
    lifetime      INTEGER NOT NULL,
    binding       TEXT NOT NULL,
    lwm2m_version TEXT NOT NULL,
    object_links  TEXT NOT NULL,
    registered_at REAL NOT NULL,
    updated_at    REAL NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('registered', 'offline', 'deregistered')),
    last_seen     REAL NOT NULL,
    send_count    INTEGER NOT NULL DEFAULT 0,
    reading_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX registrations_address ON registrations (host, port);
CREATE TABLE sends (
    id             INTEGER PRIMARY KEY,
    endpoint       TEXT NOT NULL,
    reg_id         TEXT NOT NULL,
    received_at    REAL NOT NULL,
    content_format INTEGER NOT NULL,
    token          BLOB NOT NULL,
    digest         BLOB NOT NULL,
    records        INTEGER NOT NULL
);
CREATE INDEX sends_dedup ON sends (endpoint, token);
CREATE TABLE readings (
    id       INTEGER PRIMARY KEY,
    send_id  INTEGER NOT NULL REFERENCES sends (id),
    endpoint TEXT NOT NULL,
    path     TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('v', 'vs', 'vb', 'vd')),
    value,   -- no type affinity: INTEGER, REAL, TEXT or BLOB exactly as sent
    time     REAL
);
CREATE INDEX readings_send ON readings (send_id);
CREATE TABLE last_values (
    endpoint    TEXT NOT NULL,
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    value,      -- as in readings
    time        REAL,
    received_at REAL NOT NULL,
    PRIMARY KEY (endpoint, path)
) WITHOUT ROWID;
CREATE TABLE outbox (
    id        INTEGER PRIMARY KEY,
    topic     TEXT NOT NULL,
    payload   BLOB NOT NULL,
    retain    INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL,
    published REAL,
    confirmed REAL
);
CREATE INDEX outbox_pending ON outbox (id) WHERE confirmed IS NULL;
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    t        REAL NOT NULL,
    endpoint TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('registered', 'updated', 'deregistered', 'expired')),
    reg_id   TEXT,
    detail   TEXT
);
"""

# Version 2 stores a Send's readings in its own row and an endpoint's latest values in
# one row, instead of a row per reading and per path: SQLite's cost per row (about 10 us
# with its index on the development VM) made a 33-record Send's 66 rows the bulk of the
# gateway's time per message. sends.data is a JSON array of [path, kind, value, time]
# (JSON keeps integers, floats and booleans apart; "vd" bytes are base64 text), so the
# view ``readings`` still gives one SQL row per reading; latest.paths is a CBOR map
# path -> [kind, value, time, received_at]. Reading ids are send id * READING_ID_SPAN +
# index: unique, increasing, and free to compute. _v2_from_v1 converts the v1 tables.
_SCHEMA_V2 = """
CREATE TABLE latest (
    endpoint TEXT PRIMARY KEY,
    paths    BLOB NOT NULL
) WITHOUT ROWID;
ALTER TABLE sends ADD COLUMN data TEXT;
"""
_READINGS_VIEW = """
CREATE VIEW readings (id, send_id, endpoint, path, kind, value, time, received_at) AS
SELECT s.id * 65536 + j.key, s.id, s.endpoint, j.value ->> 0, j.value ->> 1,
       j.value ->> 2, j.value ->> 3, s.received_at
FROM sends AS s, json_each(s.data) AS j
"""
_KINDS = frozenset(("v", "vs", "vb", "vd"))
LATEST_MAX_PATHS = 4096  # paths kept per endpoint; beyond, the least recently sent go
READING_ID_SPAN = 1 << 16  # readings per Send at most (config coap.max_records)


def _v2_from_v1(conn: sqlite3.Connection) -> None:
    by_ep: dict[str, dict[str, list[Any]]] = {}
    for ep, path, kind, value, t, received_at in conn.execute(
        "SELECT endpoint, path, kind, value, time, received_at FROM last_values"
    ):
        by_ep.setdefault(ep, {})[path] = [kind, _from_db(kind, value), t, received_at]
    conn.executemany("INSERT INTO latest (endpoint, paths) VALUES (?, ?)",
                     [(ep, cbor2.dumps(paths)) for ep, paths in by_ep.items()])
    by_send: dict[int, list[Record]] = {}
    for send_id, path, kind, value, t in conn.execute(
        "SELECT send_id, path, kind, value, time FROM readings ORDER BY id"
    ):
        by_send.setdefault(send_id, []).append(Record(path, kind, _from_db(kind, value), t))
    conn.execute("UPDATE sends SET data = '[]'")
    conn.executemany("UPDATE sends SET data = ? WHERE id = ?",
                     [(_readings_json(recs), send_id) for send_id, recs in by_send.items()])
    conn.execute("DROP TABLE last_values")
    conn.execute("DROP TABLE readings")
    conn.execute(_READINGS_VIEW)


def _readings_json(records: Sequence[Record]) -> str:
    return json.dumps([[r.path, r.kind, r.value, r.time] if r.kind != "vd" else
                       [r.path, "vd", base64.b64encode(r.value).decode(), r.time]
                       for r in records], separators=(",", ":"))


def _readings_from_json(data: str) -> Iterator[tuple[str, ValueKind, Value, float | None]]:
    for path, kind, value, t in json.loads(data):
        yield path, kind, base64.b64decode(value) if kind == "vd" else value, t


# user_version -> (script, then a function) that bring the file to user_version + 1
_MIGRATIONS: dict[int, tuple[str, Callable[[sqlite3.Connection], None] | None]] = {
    0: (_SCHEMA_V1, None),
    1: (_SCHEMA_V2, _v2_from_v1),
}


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
    """A reading as committed, with the ids the uplink payload refers to."""

    id: int
    send_id: int
    endpoint: str
    path: str
    kind: ValueKind
    value: Value
    time: float | None
    received_at: float


class StoredValue(NamedTuple):
    """The latest value an endpoint sent for one path (``Store.latest``)."""

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


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """What to publish: topic, payload bytes, retained or not."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row waiting for (or replayed after) a broker acknowledgement."""

    id: int
    topic: str
    payload: bytes
    retain: bool
    created: float


class OutboxEncoder(Protocol):
    """Turns stored facts into uplink messages (the uplink's topic scheme)."""

    def reading(self, r: StoredReading) -> OutboxMessage: ...

    def status(self, s: StatusChange) -> OutboxMessage: ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """Outcome of storing one Send; ``duplicate`` means nothing new was stored."""

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

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Store:
    """The gateway's SQLite database; open with ``Store.open()``."""

    def __init__(self, conn: sqlite3.Connection, encoder: OutboxEncoder | None) -> None:
        self._db = conn
        self._encoder = encoder
        self._in_batch = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        encoder: OutboxEncoder | None = None,
        synchronous: str = "FULL",
    ) -> Store:
        """Open (creating or migrating) the database at ``path``."""
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"unknown synchronous mode {synchronous!r}")
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open database: {e}") from e
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(path) != ":memory:" and mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, path)
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"{path}: {e}") from e
        except StoreError:
            conn.close()
            raise
        return cls(conn, encoder)

    def close(self) -> None:
        self._db.close()

    @property
    def outbox_enabled(self) -> bool:
        return self._encoder is not None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around several calls: it commits when the block ends.

        Each call inside runs in a savepoint, so one that raises is undone alone and the
        others still commit; if the block itself raises (or COMMIT fails) nothing of it
        is stored. Nothing inside is durable before the block has returned.
        """
        if self._in_batch:
            raise StoreError("batch() does not nest")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            yield
        except BaseException:
            self._in_batch = False
            db.execute("ROLLBACK")
            raise
        self._in_batch = False
        try:
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        if self._in_batch:
            db.execute("SAVEPOINT call")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                raise
            db.execute("RELEASE call")
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- registrations ---------------------------------------------------------------

    def registration(self, endpoint: str) -> Registration | None:
        """The registration of ``endpoint`` in whatever state it is."""
        row = self._db.execute(_SELECT_REG + " WHERE endpoint = ?", (endpoint,)).fetchone()
        return _registration(row) if row else None

    def by_reg_id(self, reg_id: str) -> Registration | None:
        """The registration with id ``reg_id`` in whatever state it is."""
        row = self._db.execute(_SELECT_REG + " WHERE reg_id = ?", (reg_id,)).fetchone()
        return _registration(row) if row else None

    def by_address(self, host: str, port: int) -> Registration | None:
        """The most recently updated live registration at ``host``/``port``."""
        row = self._db.execute(
            _SELECT_REG + " WHERE host = ? AND port = ? AND state = 'registered'"
            " ORDER BY updated_at DESC LIMIT 1",
            (host, port),
        ).fetchone()
        return _registration(row) if row else None

    def registrations(self) -> list[Registration]:
        """Every registration, by endpoint name."""
        rows = self._db.execute(_SELECT_REG + " ORDER BY endpoint").fetchall()
        return [_registration(r) for r in rows]

    def reg_id_taken(self, reg_id: str) -> bool:
        return self._db.execute(
            "SELECT 1 FROM registrations WHERE reg_id = ?", (reg_id,)
        ).fetchone() is not None

    def save_registration(
        self, reg: Registration, event: EventKind, status: StatusState, now: float,
        detail: str | None = None,
    ) -> None:
        """Insert or replace ``reg`` (keeping the endpoint's counters), log and announce."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO registrations (endpoint, reg_id, host, port, lifetime, binding,"
                " lwm2m_version, object_links, registered_at, updated_at, state, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (endpoint) DO UPDATE SET reg_id = excluded.reg_id,"
                " host = excluded.host, port = excluded.port, lifetime = excluded.lifetime,"
                " binding = excluded.binding, lwm2m_version = excluded.lwm2m_version,"
                " object_links = excluded.object_links,"
                " registered_at = excluded.registered_at, updated_at = excluded.updated_at,"
                " state = excluded.state, last_seen = excluded.last_seen",
                (reg.endpoint, reg.reg_id, reg.host, reg.port, reg.lifetime, reg.binding,
                 reg.lwm2m_version, reg.object_links, reg.registered_at, reg.updated_at,
                 reg.state, now),
            )
            self._event(db, now, reg.endpoint, event, reg.reg_id, detail)
            self._status(db, StatusChange(reg.endpoint, status, reg.reg_id, now), now)

    def set_state(
        self, reg: Registration, state: RegState, event: EventKind, status: StatusState,
        now: float,
    ) -> bool:
        """Move ``reg`` to ``state`` if it is still that registration and registered."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE registrations SET state = ? WHERE endpoint = ? AND reg_id = ?"
                " AND state = 'registered'",
                (state, reg.endpoint, reg.reg_id),
            )
            if cur.rowcount != 1:
                return False
            self._event(db, now, reg.endpoint, event, reg.reg_id, None)
            self._status(db, StatusChange(reg.endpoint, status, reg.reg_id, now), now)
        return True

    def due_for_expiry(self, now: float) -> list[Registration]:
        """Live registrations whose ``updated_at + lifetime`` has passed."""
        rows = self._db.execute(
            _SELECT_REG + " WHERE state = 'registered' AND updated_at + lifetime < ?"
            " ORDER BY endpoint",
            (now,),
        ).fetchall()
        return [_registration(r) for r in rows]

    def events(self, endpoint: str | None = None, limit: int = 100) -> list[Event]:
        """The latest events, oldest first (optionally for one endpoint)."""
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint else ("", ())
        rows = self._db.execute(
            f"SELECT id, t, endpoint, kind, reg_id, detail FROM events {where}"
            " ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [Event(*r) for r in reversed(rows)]

    def _event(self, db: sqlite3.Connection, now: float, endpoint: str, kind: EventKind,
               reg_id: str | None, detail: str | None) -> None:
        db.execute(
            "INSERT INTO events (t, endpoint, kind, reg_id, detail) VALUES (?, ?, ?, ?, ?)",
            (now, endpoint, kind, reg_id, detail),
        )

    def _status(self, db: sqlite3.Connection, change: StatusChange, now: float) -> None:
        if self._encoder is not None:
            self._outbox(db, self._encoder.status(change), now)

    def _outbox(self, db: sqlite3.Connection, msg: OutboxMessage, now: float) -> None:
        db.execute(
            "INSERT INTO outbox (topic, payload, retain, created) VALUES (?, ?, ?, ?)",
            (msg.topic, msg.payload, int(msg.retain), now),
        )

    # -- sends -----------------------------------------------------------------------

    def record_send(
        self,
        reg: Registration,
        token: bytes,
        digest: bytes,
        content_format: int,
        records: Sequence[Record],
        now: float,
    ) -> SendResult:
        """Commit a Send's readings and outbox rows in one transaction, unless duplicate.

        A Send is a duplicate when the same endpoint sent the same non-empty token with
        the same payload digest within EXCHANGE_LIFETIME (a retransmission that outlived
        the CoAP layer's own deduplication, e.g. across a gateway restart).
        """
        with self._tx() as db:
            if token:
                row = db.execute(
                    "SELECT id, records FROM sends WHERE endpoint = ? AND token = ?"
                    " AND digest = ? AND received_at >= ? ORDER BY id DESC LIMIT 1",
                    (reg.endpoint, token, digest, now - EXCHANGE_LIFETIME_S),
                ).fetchone()
                if row is not None:
                    return SendResult(row[0], row[1], duplicate=True)
            if len(records) > READING_ID_SPAN:
                raise StoreError(f"a Send holds at most {READING_ID_SPAN} readings")
            for rec in records:
                if rec.kind not in _KINDS:
                    raise StoreError(f"{rec.path}: unknown value kind {rec.kind!r}")
            data = _readings_json(records)
            send_id = db.execute(
                "INSERT INTO sends (endpoint, reg_id, received_at, content_format, token,"
                " digest, records, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (reg.endpoint, reg.reg_id, now, content_format, token, digest, len(records),
                 data),
            ).lastrowid
            assert send_id is not None  # an INSERT always sets it
            ep = reg.endpoint
            if self._encoder is not None:
                first = send_id * READING_ID_SPAN
                encode = self._encoder.reading
                db.executemany(
                    "INSERT INTO outbox (topic, payload, retain, created) VALUES (?, ?, ?, ?)",
                    [(m.topic, m.payload, int(m.retain), now) for m in (
                        encode(StoredReading(first + i, send_id, ep, rec.path, rec.kind,
                                             rec.value, rec.time, now))
                        for i, rec in enumerate(records))],
                )
            self._merge_latest(db, ep, records, now)
            db.execute(
                "UPDATE registrations SET send_count = send_count + 1,"
                " reading_count = reading_count + ?, last_seen = ? WHERE endpoint = ?",
                (len(records), now, reg.endpoint),
            )
        return SendResult(send_id, len(records), duplicate=False)

    @staticmethod
    def _merge_latest(db: sqlite3.Connection, ep: str, records: Sequence[Record],
                      now: float) -> None:
        row = db.execute("SELECT paths FROM latest WHERE endpoint = ?", (ep,)).fetchone()
        latest: dict[str, list[Any]] = cbor2.loads(row[0]) if row is not None else {}
        for rec in records:
            latest[rec.path] = [rec.kind, rec.value, rec.time, now]
        if len(latest) > LATEST_MAX_PATHS:
            keep = sorted(latest.items(), key=lambda kv: kv[1][3])[-LATEST_MAX_PATHS:]
            latest = dict(keep)
        db.execute("INSERT INTO latest (endpoint, paths) VALUES (?, ?) ON CONFLICT (endpoint)"
                   " DO UPDATE SET paths = excluded.paths", (ep, cbor2.dumps(latest)))

    def latest(self, endpoint: str) -> dict[str, StoredValue]:
        """The latest value of each path ``endpoint`` sent (by path)."""
        row = self._db.execute("SELECT paths FROM latest WHERE endpoint = ?",
                               (endpoint,)).fetchone()
        return _latest(row[0]) if row is not None else {}

    def readings(self, send_id: int | None = None) -> list[StoredReading]:
        """Stored readings (of one Send, or all), in id order; for tests and tools."""
        where, args = ("WHERE id = ?", (send_id,)) if send_id is not None else ("", ())
        out = []
        for sid, ep, received_at, data in self._db.execute(
            f"SELECT id, endpoint, received_at, data FROM sends {where} ORDER BY id", args
        ):
            first = sid * READING_ID_SPAN
            out.extend(StoredReading(first + i, sid, ep, path, kind, value, t, received_at)
                       for i, (path, kind, value, t) in enumerate(_readings_from_json(data)))
        return out

    # -- outbox ----------------------------------------------------------------------

    def outbox_pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unconfirmed rows with id above ``after_id``, oldest first."""
        rows = self._db.execute(
            "SELECT id, topic, payload, retain, created FROM outbox"
            " WHERE confirmed IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows]

    def outbox_mark_published(self, ids: Iterable[int], now: float) -> None:
        """Record when rows went out (first time only)."""
        self._update_ids("UPDATE outbox SET published = ? WHERE published IS NULL AND id IN",
                         ids, now)

    def outbox_confirm(self, ids: Iterable[int], now: float) -> None:
        """Mark rows confirmed (the broker acknowledged them)."""
        self._update_ids("UPDATE outbox SET confirmed = ? WHERE confirmed IS NULL AND id IN",
                         ids, now)

    def _update_ids(self, sql: str, ids: Iterable[int], now: float) -> None:
        batch = list(ids)
        if not batch:
            return
        with self._tx() as db:
            for i in range(0, len(batch), 500):  # SQLite's default variable limit is 999+
                chunk = batch[i:i + 500]
                db.execute(f"{sql} ({','.join('?' * len(chunk))})", (now, *chunk))

    def outbox_prune(self, keep: int) -> int:
        """Delete confirmed rows except the newest ``keep``; returns how many went."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM outbox WHERE confirmed IS NOT NULL"
                " ORDER BY id DESC LIMIT 1 OFFSET ?",
                (keep,),
            ).fetchone()
            if row is None:
                return 0
            return db.execute(
                "DELETE FROM outbox WHERE confirmed IS NOT NULL AND id <= ?", (row[0],)
            ).rowcount

    def outbox_counts(self) -> tuple[int, int]:
        """(unconfirmed, confirmed) row counts."""
        row = self._db.execute(
            "SELECT COUNT(*) - COUNT(confirmed), COUNT(confirmed) FROM outbox"
        ).fetchone()
        return int(row[0]), int(row[1])

    # -- views -----------------------------------------------------------------------

    def node_summaries(self) -> list[NodeSummary]:
        """Per endpoint: registration, counters and last value by path.

        Two reads of small tables (registrations, latest: one row per endpoint); it
        never scans readings, so calling it every second is cheap whatever the history.
        """
        last: dict[str, dict[str, Value]] = {
            ep: {path: v.value for path, v in sorted(_latest(paths).items())}
            for ep, paths in self._db.execute("SELECT endpoint, paths FROM latest")
        }
        out = []
        for (ep, state, reg_id, host, port, lifetime, registered_at, updated_at, last_seen,
             sends, readings) in self._db.execute(
            "SELECT endpoint, state, reg_id, host, port, lifetime, registered_at,"
            " updated_at, last_seen, send_count, reading_count FROM registrations"
            " ORDER BY endpoint"
        ):
            out.append(NodeSummary(ep, state, reg_id, host, port, lifetime, registered_at,
                                   updated_at, last_seen, sends, readings,
                                   last_values=last.get(ep, {})))
        return out




def _latest(blob: bytes) -> dict[str, StoredValue]:
    return {path: StoredValue(*v) for path, v in cbor2.loads(blob).items()}

_SELECT_REG = (
    "SELECT endpoint, reg_id, host, port, lifetime, binding, lwm2m_version, object_links,"
    " registered_at, updated_at, state FROM registrations"
)


def _registration(row: Sequence[Any]) -> Registration:
    return Registration(*row)


def _from_db(kind: str, value: Any) -> Value:
    if kind == "vb":
        return bool(value)
    if kind == "vd":
        return bytes(value)
    return value  # type: ignore[no-any-return]


def _migrate(conn: sqlite3.Connection, path: str | Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this gateway's"
            f" ({SCHEMA_VERSION}); upgrade the gateway"
        )
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            script, convert = _MIGRATIONS[version]
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if convert is not None:
                convert(conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        version += 1
