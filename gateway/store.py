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
COMMIT and one fsync; a call that fails inside is undone alone). ``begin_batch()`` and
``commit_later()`` do the same, with the COMMIT (its fsync, milliseconds on a busy disk)
on a writer thread: the event loop goes on receiving and decoding the next requests
meanwhile, and any use of the store first waits for that COMMIT to end (``settle()``).

What goes into the outbox is decided by an ``OutboxEncoder`` (the uplink's topic
scheme); with none (MQTT disabled) nothing is written there.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import sqlite3
import sys
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

SCHEMA_VERSION = 3
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
_CACHE_MAX = 1 << 16  # registrations (and latest path sets) kept in memory at most
LATEST_MAX_SENDS = 8  # Sends latest.sends names at most (schema v3)
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


_to_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _readings_json(records: Sequence[Record]) -> str:
    return _to_json([r[:4] if r.kind != "vd" else
                     (r.path, "vd", base64.b64encode(r.value).decode(), r.time)
                     for r in records])


def _readings_from_json(data: str) -> Iterator[tuple[str, ValueKind, Value, float | None]]:
    for path, kind, value, t in json.loads(data):
        yield path, kind, base64.b64decode(value) if kind == "vd" else value, t


# Version 3 lets an endpoint's latest values point at its latest Sends instead of holding
# a copy: latest.sends is a JSON array of Send ids, oldest first, whose readings (received
# at their received_at) go on top of latest.paths. A node sends the same paths each time
# (its report; its Notifications of an observed object), so a Send usually only rewrites
# that short array, dropping the Sends it covers, instead of reading, CBOR-decoding and
# re-encoding the whole map (about 150 us of a 33-record Send on the development VM).
# Beyond LATEST_MAX_SENDS, or LATEST_MAX_PATHS, everything is folded into latest.paths
# again. Sends are never deleted, so what latest.sends names is always there.
_SCHEMA_V3 = "ALTER TABLE latest ADD COLUMN sends TEXT"

# user_version -> (script, then a function) that bring the file to user_version + 1
_MIGRATIONS: dict[int, tuple[str, Callable[[sqlite3.Connection], None] | None]] = {
    0: (_SCHEMA_V1, None),
    1: (_SCHEMA_V2, _v2_from_v1),
    2: (_SCHEMA_V3, None),
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
        self._conn = conn
        self._encoder = encoder
        self._in_batch = False
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None  # on first use
        self._committing: concurrent.futures.Future[None] | None = None
        # Read caches, so a Send or a Notification costs no lookup (and no wait for a
        # COMMIT on its way): registrations by endpoint and the endpoint of the live one
        # at an address (filled only from committed state, dropped whenever an
        # endpoint's registration is written), and per endpoint the shape of its latest
        # row (_Top: set after each write that went through). All are emptied whenever
        # a transaction fails.
        self._by_ep: dict[str, Registration] = {}
        self._by_addr: dict[tuple[str, int], str] = {}
        self._tops: dict[str, _Top] = {}

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
            # check_same_thread off: only the COMMIT of commit_later() runs on the writer
            # thread, and nothing else touches the connection until it ended (settle())
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0,
                                   check_same_thread=False)
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
        self.settle()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        self._conn.close()

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, once no COMMIT runs on it any more."""
        if self._committing is not None:
            self.settle()
        return self._conn

    def settle(self) -> None:
        """Wait for the COMMIT ``commit_later()`` started, if it still runs."""
        committing, self._committing = self._committing, None
        if committing is None:
            return
        concurrent.futures.wait([committing])
        if committing.cancelled() or committing.exception() is not None:
            self._forget_cached()  # nothing of that batch is stored
            if self._conn.in_transaction:  # cancelled before it ran
                self._conn.execute("ROLLBACK")

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
        self.begin_batch()
        try:
            yield
        except BaseException:
            self.rollback_batch()
            raise
        self._in_batch = False
        try:
            self._commit()
        except BaseException:
            self._forget_cached()
            raise

    def begin_batch(self) -> None:
        """Start a group commit: what follows runs in one transaction, until
        ``commit_later()`` (or ``rollback_batch()``)."""
        if self._in_batch:
            raise StoreError("batch() does not nest")
        self._db.execute("BEGIN IMMEDIATE")
        self._in_batch = True

    def rollback_batch(self) -> None:
        """Undo everything since ``begin_batch()``."""
        self._in_batch = False
        self._forget_cached()
        self._conn.execute("ROLLBACK")

    def commit_later(self) -> asyncio.Future[None]:
        """COMMIT the batch on the writer thread; the future resolves once it is durable
        (or raises, and then nothing of the batch is stored)."""
        if not self._in_batch:
            raise StoreError("no batch to commit")
        self._in_batch = False
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="aiot-store-commit")
        self._committing = self._writer.submit(self._commit)
        return asyncio.wrap_future(self._committing)

    def _commit(self) -> None:
        db = self._conn
        try:
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _forget_cached(self) -> None:
        self._by_ep.clear()
        self._by_addr.clear()
        self._tops.clear()

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
            self._forget_cached()
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except BaseException:
            self._forget_cached()
            raise

    # -- registrations ---------------------------------------------------------------

    def registration(self, endpoint: str) -> Registration | None:
        """The registration of ``endpoint`` in whatever state it is."""
        cached = self._by_ep.get(endpoint)
        if cached is not None:
            return cached
        row = self._db.execute(_SELECT_REG + " WHERE endpoint = ?", (endpoint,)).fetchone()
        return self._cached(row) if row else None

    def by_reg_id(self, reg_id: str) -> Registration | None:
        """The registration with id ``reg_id`` in whatever state it is."""
        row = self._db.execute(_SELECT_REG + " WHERE reg_id = ?", (reg_id,)).fetchone()
        return _registration(row) if row else None

    def by_address(self, host: str, port: int) -> Registration | None:
        """The most recently updated live registration at ``host``/``port``."""
        addr = (host, port)
        ep = self._by_addr.get(addr)
        if ep is not None:
            reg = self._by_ep.get(ep)
            if reg is not None and (reg.host, reg.port, reg.state) == (host, port,
                                                                       "registered"):
                return reg
        row = self._db.execute(
            _SELECT_REG + " WHERE host = ? AND port = ? AND state = 'registered'"
            " ORDER BY updated_at DESC LIMIT 1",
            addr,
        ).fetchone()
        if row is None:
            return None
        reg = self._cached(row)
        if not self._conn.in_transaction:
            self._by_addr[addr] = reg.endpoint
        return reg

    def _cached(self, row: Sequence[Any]) -> Registration:
        """The registration of a row just read; kept if committed (not in a batch)."""
        reg = _registration(row)
        if not self._conn.in_transaction:  # _db waited for any COMMIT on its way
            if len(self._by_ep) >= _CACHE_MAX:
                self._by_ep.clear()
                self._by_addr.clear()
            self._by_ep[reg.endpoint] = reg
        return reg

    def _uncache(self, reg: Registration) -> None:
        """``reg`` is about to be written: forget its endpoint, and who lives at its
        address and at the address it had."""
        old = self._by_ep.pop(reg.endpoint, None)
        self._by_addr.pop((reg.host, reg.port), None)
        if old is not None:
            self._by_addr.pop((old.host, old.port), None)

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
        self._uncache(reg)
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
        self._uncache(reg)
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
        also: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> SendResult:
        """Commit a Send's readings and outbox rows in one transaction, unless duplicate.

        A Send is a duplicate when the same endpoint sent the same non-empty token with
        the same payload digest within EXCHANGE_LIFETIME (a retransmission that outlived
        the CoAP layer's own deduplication, e.g. across a gateway restart).

        ``also(connection, send id)``, for a new Send, writes rows of another module's
        tables in the same file (``dm_notifications``) inside the same transaction: they
        commit, or are undone, with the Send.
        """
        top: _Top | None = None
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
            top = self._merge_latest(db, ep, send_id, records, now)
            db.execute(
                "UPDATE registrations SET send_count = send_count + 1,"
                " reading_count = reading_count + ?, last_seen = ? WHERE endpoint = ?",
                (len(records), now, reg.endpoint),
            )
            if also is not None:
                also(db, send_id)
        assert top is not None  # set by every way through that did not return
        if len(self._tops) >= _CACHE_MAX:
            self._tops.clear()
        self._tops[ep] = top  # committed, or part of a batch that fails as a whole
        return SendResult(send_id, len(records), duplicate=False)

    def _merge_latest(self, db: sqlite3.Connection, ep: str, send_id: int,
                      records: Sequence[Record], now: float) -> _Top:
        """Put Send ``send_id`` on top of ``ep``'s latest values (schema v3 note)."""
        paths = frozenset([r.path for r in records])
        paths = _PATHSETS.setdefault(paths, paths)  # nodes send the same paths: share them
        if len(_PATHSETS) > _CACHE_MAX:
            _PATHSETS.clear()
        top = self._tops.get(ep)
        if top is None:  # not cached (the first Send since start): read the row's shape
            rows = db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                              (ep,)).fetchall()
            if not rows and len(paths) <= LATEST_MAX_PATHS:
                db.execute("INSERT INTO latest (endpoint, paths, sends) VALUES (?, ?, ?)",
                           (ep, _EMPTY_MAP, f"[{send_id}]"))
                return _EMPTY, ((send_id, paths),)
            top = _top(rows) if rows else None
        if top is not None:
            base, tops = top
            tops = (*(t for t in tops if not t[1] <= paths), (send_id, paths))
            union = paths.union(*(t[1] for t in tops[:-1]))
            covered = base <= union
            if len(tops) <= LATEST_MAX_SENDS and len(union if covered else union | base) \
                    <= LATEST_MAX_PATHS:
                sends = "[" + ",".join([str(t[0]) for t in tops]) + "]"
                if covered and base:
                    db.execute("UPDATE latest SET paths = ?, sends = ? WHERE endpoint = ?",
                               (_EMPTY_MAP, sends, ep))
                else:
                    db.execute("UPDATE latest SET sends = ? WHERE endpoint = ?", (sends, ep))
                return (_EMPTY if covered else base), tops
        # fold everything into latest.paths
        latest = _merged(db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                                    (ep,)).fetchall())
        for rec in records:
            latest[rec.path] = [rec.kind, rec.value, rec.time, now]
        if len(latest) > LATEST_MAX_PATHS:
            keep = sorted(latest.items(), key=lambda kv: kv[1][3])[-LATEST_MAX_PATHS:]
            latest = dict(keep)
        db.execute("INSERT INTO latest (endpoint, paths, sends) VALUES (?, ?, NULL)"
                   " ON CONFLICT (endpoint) DO UPDATE SET paths = excluded.paths,"
                   " sends = NULL", (ep, cbor2.dumps(latest)))
        return frozenset(latest), ()

    def latest(self, endpoint: str) -> dict[str, StoredValue]:
        """The latest value of each path ``endpoint`` sent (by path)."""
        rows = self._db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                                (endpoint,)).fetchall()
        return {path: StoredValue(*v) for path, v in _merged(rows).items()}

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
        by_ep: dict[str, list[Any]] = {}
        for ep, *row in self._db.execute(
            _SELECT_LATEST.replace("SELECT", "SELECT l.endpoint,", 1)
            + " ORDER BY l.endpoint, j.key"
        ):
            by_ep.setdefault(ep, []).append(row)
        last: dict[str, dict[str, Value]] = {
            ep: {path: v[1] for path, v in sorted(_merged(rows).items())}
            for ep, rows in by_ep.items()
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




# latest.paths, then each Send latest.sends names, oldest first (ORDER BY j.key)
_SELECT_LATEST = ("SELECT l.paths, j.value, s.data, s.received_at FROM latest AS l"
                  " LEFT JOIN json_each(l.sends) AS j LEFT JOIN sends AS s ON s.id = j.value")
_EMPTY_MAP = b"\xa0"  # CBOR {}
_EMPTY: frozenset[str] = frozenset()
_PATHSETS: dict[frozenset[str], frozenset[str]] = {}  # interned path sets (_merge_latest)
# An endpoint's latest row in short: the paths latest.paths holds, and (Send id, its
# paths) for each Send latest.sends names
_Top = tuple[frozenset[str], tuple[tuple[int, frozenset[str]], ...]]


def _merged(rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Path -> [kind, value, time, received_at] from _SELECT_LATEST rows of one endpoint."""
    if not rows:
        return {}
    latest: dict[str, list[Any]] = cbor2.loads(rows[0][0])
    for _blob, _send_id, data, received_at in rows:
        if data is not None:
            for path, kind, value, t in _readings_from_json(data):
                latest[path] = [kind, value, t, received_at]
    return latest


def _top(rows: Sequence[Sequence[Any]]) -> _Top:
    base = frozenset(cbor2.loads(rows[0][0]))
    tops = []
    for _blob, send_id, data, _t in rows:
        if data is not None:
            paths = frozenset([r[0] for r in _readings_from_json(data)])
            tops.append((int(send_id), _PATHSETS.setdefault(paths, paths)))
    return base, tuple(tops)


_SELECT_REG = (
    "SELECT endpoint, reg_id, host, port, lifetime, binding, lwm2m_version, object_links,"
    " registered_at, updated_at, state FROM registrations"
)


def _registration(row: Sequence[Any]) -> Registration:
    ep, reg_id, host, port, lifetime, binding, version, links, *rest = row
    # strings many registrations share: one copy each (RSS with 10k nodes cached)
    return Registration(ep, reg_id, sys.intern(host), port, lifetime, sys.intern(binding),
                        sys.intern(version), sys.intern(links), *rest)


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
