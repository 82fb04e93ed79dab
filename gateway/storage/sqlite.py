"""SQLite storage: the ``Storage`` and ``DeviceStorage`` of ``storage.api`` on one file.

One file in WAL mode with ``synchronous=FULL``: a transaction that returned is on disk,
which is what lets the LwM2M layer acknowledge a Send only after its readings (and their
outbox rows) are committed together. (FULL rather than NORMAL: NORMAL would let a power
cut undo the last acknowledged transactions; with group commit one fsync serves a whole
batch.) The schema and its migrations are ``storage.schema`` (``PRAGMA user_version``),
run on open; a newer file is refused.

Times are wall-clock epoch seconds (floats). The store is synchronous and meant to be
called from the event loop's thread only; every call is one short transaction, or, inside
``batch()``, a savepoint of one shared transaction (group commit: many Sends, one
COMMIT and one fsync; a call that fails inside is undone alone). ``begin_batch()`` and
``commit_later()`` do the same, with the COMMIT (its fsync, milliseconds on a busy disk)
on a writer thread: the event loop goes on receiving and decoding the next requests
meanwhile, and any use of the store first waits for that COMMIT to end (``settle()``).

Device management's tables (``dm``, ``storage.dmtables``) are used through a second
connection to the same file (WAL lets both work side by side): its short transactions
never wait for a group commit's fsync. A Notification's ``dm_notifications`` row is the
exception: ``record_send`` writes it on this connection, in the transaction of its
readings. The OSCORE contexts (``keys``, ``storage.keytables``) have a third connection
for the same reason, and one more: a sequence-number bound they write must be durable
when the call returns, never held in a group commit.

A report is stored once: a node that re-sends, with a new token, a report the gateway
committed but did not acknowledge (it crashed) is answered as for a retransmission,
nothing is stored again (``record_send``, ``_same_report``: what makes two Sends the same
report). An outbox row the broker refused is set aside as a dead letter
(``outbox_set_aside``; the uplink decides when, ``uplink/mqtt.py``).

What goes into the outbox is decided by an ``OutboxEncoder`` (the uplink's topic
scheme); with none (MQTT disabled) nothing is written there. Topics are stored relative
to the prefix and read back whole (``OutboxEncoder.topic``), in queue order (priority,
then id: ``OUTBOX_PRIO``). ``outbox_set_budget`` bounds the unconfirmed rows and their
bytes (``OUTBOX_SIZE``: payload and topic): an insert beyond drops by
``OUTBOX_DROP_ORDER`` in its own transaction, counted in ``outbox_drops``; on a full
disk a confirmation deletes its rows instead of marking them (``outbox_confirm``), so
forwarding frees space rather than stopping. ``open(..., readonly=True)`` reads a file
another process writes (a benchmark polling the gateway's database): no migration, no
writes, no device tables.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import cbor2

from ..errors import StoreError
from ..lwm2m.senml import Record
from . import schema
from .analyticstables import SqliteAnalyticsStorage
from .api import (
    OUTBOX_DROP_ORDER,
    OUTBOX_PRIO,
    DeadLetter,
    Event,
    EventKind,
    NodeSummary,
    NotificationLink,
    OutboxEncoder,
    OutboxMessage,
    OutboxRow,
    Registration,
    RegState,
    SendResult,
    StatusChange,
    StatusState,
    StoredReading,
    StoredSend,
    StoredValue,
)
from .dmtables import KEEP_FINISHED_MAX, KEEP_FINISHED_S, SqliteDeviceStorage
from .keytables import SqliteKeyStorage
from .modeltables import SqliteModelStorage
from .otatables import SqliteOtaStorage
from .schema import READING_ID_SPAN, readings_from_json, readings_json, report_key

__all__ = ["EXCHANGE_LIFETIME_S", "KEEP_DEAD", "LATEST_MAX_PATHS", "LATEST_MAX_SENDS",
           "REPORT_WINDOW_S", "SqliteStorage"]

EXCHANGE_LIFETIME_S = 247.0  # RFC 7252 §4.8.2: how long a retransmission can still arrive
# How long after a report was stored a re-send of it is still recognised when a time
# does not settle it (_same_report): a gateway down for a day, a node's back-off
REPORT_WINDOW_S = 86_400.0
_RELATIVE_T = float(1 << 28)  # RFC 8428 §4.5.3: SenML times below are relative to now
_SAME_T_ABS = 1e-3  # two absolute times of one report: the same float64 bt + t
_SAME_T_REL = 5.0  # a relative time made absolute: the Sends' transit times differ
_REPORT_CANDIDATES = 4  # stored Sends with a Send's report key compared with it at most
KEEP_DEAD = 10_000  # dead letters kept (the newest); the older go
# a change of the wall clock's offset from the monotonic clock beyond this between two
# outbox inserts is a step of the wall clock (outbox_clock_steps); the last ones kept
CLOCK_STEP_S = 2.0
_MAX_CLOCK_STEPS = 64

log = logging.getLogger("aiotkit.gateway.storage")

_KINDS = frozenset(("v", "vs", "vb", "vd"))
_PRIOS = sorted(set(OUTBOX_PRIO.values()))
_OUTBOX_COLUMNS = "id, topic, payload, retain, created, abs, kind, msg_id"
_INSERT_OUTBOX = ("INSERT INTO outbox (topic, payload, retain, created, kind, prio, abs,"
                  " msg_id) VALUES (?, ?, ?, ?, ?, ?, 0, ?)")
# what a row counts for in the byte budget: its payload and topic (UTF-8) bytes
OUTBOX_SIZE = "length(payload) + length(CAST(topic AS BLOB))"
_PENDING = "confirmed IS NULL AND dead IS NULL"
_COUNT_PENDING = f"SELECT COUNT(*), COALESCE(SUM({OUTBOX_SIZE}), 0) FROM outbox WHERE {_PENDING}"
LATEST_MAX_PATHS = 4096  # paths kept per endpoint; beyond, the least recently sent go
_CACHE_MAX = 1 << 16  # registrations (and latest path sets) kept in memory at most
LATEST_MAX_SENDS = 8  # Sends latest.sends names at most (schema v3)
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteStorage:
    """The gateway's SQLite database (``storage.api.Storage``); open with
    ``SqliteStorage.open()``."""

    def __init__(self, conn: sqlite3.Connection, encoder: OutboxEncoder | None,
                 dm: SqliteDeviceStorage | None,
                 keys: SqliteKeyStorage | None = None,
                 ota: SqliteOtaStorage | None = None) -> None:
        self._conn = conn
        self._ota = ota
        self._encoder = encoder
        self._dm = dm
        self._keys = keys
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
        # node time checks (gateway/ops/timecheck.py TimeCheck), set by the daemon
        self.time_check: Any = None
        # the outbox budget (outbox_set_budget; 0: none) and its unconfirmed rows and
        # their bytes as counted (None: unknown, counted again when a budget needs it)
        self._budget = 0
        self._budget_bytes = 0
        self._pending_rows: int | None = None
        self._pending_bytes = 0
        # steps of the wall clock seen by outbox inserts: (last row id before, step s)
        self._clock_offset: float | None = None
        self._clock_steps: list[tuple[int, float]] = []

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        encoder: OutboxEncoder | None = None,
        synchronous: str = "FULL",
        keep_finished_s: float = KEEP_FINISHED_S,
        keep_finished_max: int = KEEP_FINISHED_MAX,
        readonly: bool = False,
    ) -> SqliteStorage:
        """Open (creating or migrating) the database at ``path``; ``keep_finished_*``:
        how long and how many finished device-management requests are kept.
        ``readonly``: read a file that is at this gateway's schema version, as it is."""
        if synchronous.upper() not in _SYNCHRONOUS:
            raise StoreError(f"unknown synchronous mode {synchronous!r}")
        if readonly:
            return cls(_open_readonly(path), None, None)
        # check_same_thread off: only the COMMIT of commit_later() runs on the writer
        # thread, and nothing else touches the connection until it ended (settle())
        conn = _connect(path, check_same_thread=False)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(path) != ":memory:" and mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = ON")
            schema.migrate(conn, path)
            for index in _LOOKUP_INDEXES:  # on every open: files made before them too
                conn.execute(index)
            dm_conn = _connect(path)
            try:
                dm_conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            except sqlite3.Error:
                dm_conn.close()
                raise
            dm = SqliteDeviceStorage(dm_conn, keep_finished_s=keep_finished_s,
                                     keep_finished_max=keep_finished_max)
            keys_conn = _connect(path)
            try:
                keys_conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            except sqlite3.Error:
                keys_conn.close()
                dm.close()
                raise
            ota_conn = _connect(path)
            try:
                ota_conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                ota_conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error:
                ota_conn.close()
                keys_conn.close()
                dm.close()
                raise
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"{path}: {e}") from e
        except StoreError:
            conn.close()
            raise
        return cls(conn, encoder, dm, SqliteKeyStorage(keys_conn), SqliteOtaStorage(ota_conn))

    @property
    def dm(self) -> SqliteDeviceStorage:
        """Device management's tables (``storage.dmtables``)."""
        if self._dm is None:
            raise StoreError("opened read-only: no device-management tables")
        return self._dm

    @property
    def keys(self) -> SqliteKeyStorage:
        """The OSCORE security contexts' tables (``storage.keytables``)."""
        if self._keys is None:
            raise StoreError("opened read-only: no OSCORE contexts")
        return self._keys

    @property
    def ota(self) -> SqliteOtaStorage:
        """The OTA service's tables (``storage.otatables``)."""
        if self._ota is None:
            raise StoreError("opened read-only: no OTA tables")
        return self._ota

    @property
    def models(self) -> SqliteModelStorage:
        """The model registry's and candidates' tables (``storage.modeltables``), on the
        OTA tables' connection."""
        return SqliteModelStorage(self.ota._db)

    @property
    def analytics(self) -> SqliteAnalyticsStorage:
        """Rollups, alerts and drift state (``storage.analyticstables``), on the OTA
        tables' connection."""
        return SqliteAnalyticsStorage(self.ota._db)

    def close(self) -> None:
        self.settle()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        if self._dm is not None:
            self._dm.close()
        if self._keys is not None:
            self._keys.close()
        if self._ota is not None:
            self._ota.close()
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragmas(self) -> dict[str, Any]:
        """journal_mode, synchronous (0..3) and user_version, as the file has them."""
        db = self._db
        return {name: db.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "user_version")}

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
        self._pending_rows = None  # the outbox's counts too: counted again when needed
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
                self._pending_rows = None
                if db.in_transaction:  # SQLITE_FULL may have rolled it all back
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
            if db.in_transaction:  # SQLITE_FULL may have rolled it back already
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
        # the expression index registrations_expiry: the due rows only, not the fleet
        # (sorted here: an ORDER BY would make SQLite walk the primary key instead)
        rows = self._db.execute(
            _SELECT_REG + " WHERE state = 'registered' AND updated_at + lifetime < ?",
            (now,),
        ).fetchall()
        return sorted((_registration(r) for r in rows), key=lambda r: r.endpoint)

    def prune_ended(self, before: float, *, after: int = 0,
                    scan: int = 1000) -> tuple[list[str], int]:
        """Forget the endpoints that de-registered or expired and were last heard from
        before ``before``: their registration and latest values (their Sends, readings
        and events stay, as history, until ``prune_history``). One call looks at the
        ``scan`` rows after cursor ``after`` only, so it stays short at any fleet size;
        it returns the endpoints it pruned and the cursor of the next call (0: the pass
        is complete)."""
        db = self._db
        rows = db.execute(
            "SELECT rowid, endpoint, host, port FROM registrations WHERE rowid > ?"
            " AND rowid <= ? AND state != 'registered' AND max(updated_at, last_seen) < ?",
            (after, after + scan, before)).fetchall()
        last = db.execute("SELECT max(rowid) FROM registrations").fetchone()[0] or 0
        if rows:
            with self._tx() as tx:
                for rowid, ep, host, port in rows:
                    tx.execute("DELETE FROM registrations WHERE rowid = ?", (rowid,))
                    tx.execute("DELETE FROM latest WHERE endpoint = ?", (ep,))
                    self._by_ep.pop(ep, None)
                    self._by_addr.pop((host, port), None)
                    self._tops.pop(ep, None)
        return [row[1] for row in rows], (after + scan if after + scan < last else 0)

    def prune_history(self, before: float, max_sends: int = 0, *, chunk: int = 5000,
                      young_after: int | None = None) -> int:
        """Delete the history older than ``before`` (0: none by age), and beyond the
        newest ``max_sends`` Sends (0: no limit), oldest first, at most ``chunk`` Sends
        per call (call again while it returns ``chunk``): Sends with their readings,
        the ``dm_notifications`` rows of their Notifications, and registry events.
        Sends with an id above ``young_after`` (None: none) are not old, whatever their
        time says (a gateway that stamped them before its clock was set).

        Latest values are kept: an endpoint whose latest row names a Send that goes has
        its values folded into ``latest.paths`` first. The outbox is not touched (its
        rows carry their own payload). The newest Send always stays, so Send and
        reading ids are never given again. A re-sent report whose first copy went is
        stored again (``_same_report``: the history must cover ``REPORT_WINDOW_S``)."""
        db = self._db
        last = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM sends").fetchone()[0])
        cap = last - max_sends if max_sends else 0  # ids up to this are beyond the cap
        cutoff = 0
        for sid, received in db.execute(
                "SELECT id, received_at FROM sends WHERE id < ? ORDER BY id LIMIT ?",
                (last, chunk)).fetchall():
            if sid > cap and (received >= before
                              or (young_after is not None and sid > young_after)):
                break
            cutoff = sid
        with self._tx() as tx:
            n = 0
            if cutoff:
                for (ep,) in tx.execute(
                        "SELECT endpoint FROM latest WHERE sends IS NOT NULL"
                        " AND CAST(sends ->> 0 AS INTEGER) <= ?", (cutoff,)).fetchall():
                    self._fold_latest(tx, ep)
                gone = _prefix(tx, "dm_notifications", "send_id", cutoff, chunk * 4)
                tx.execute("DELETE FROM dm_notifications WHERE id <= ?", (gone,))
                n = tx.execute("DELETE FROM sends WHERE id <= ?", (cutoff,)).rowcount
            events = int(tx.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
            top = 0
            for eid, t in tx.execute("SELECT id, t FROM events WHERE id < ? ORDER BY id"
                                     " LIMIT ?", (events, chunk)).fetchall():
                if t >= before and eid > events - (max_sends or events):
                    break
                top = eid
            tx.execute("DELETE FROM events WHERE id <= ?", (top,))
        return n

    def _fold_latest(self, db: sqlite3.Connection, ep: str) -> None:
        """Copy the values of the Sends ``ep``'s latest row names into latest.paths."""
        latest = _merged(db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                                    (ep,)).fetchall())
        db.execute("UPDATE latest SET paths = ?, sends = NULL WHERE endpoint = ?",
                   (cbor2.dumps(latest), ep))
        self._tops.pop(ep, None)

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
        self._outbox_insert(db, (msg,), now)

    def _outbox_insert(self, db: sqlite3.Connection, msgs: Iterable[OutboxMessage],
                       now: float) -> None:
        """Insert outbox rows, then hold the budget (``outbox_set_budget``), in the
        caller's transaction."""
        offset = now - time.monotonic()  # the wall clock's: a change is a step
        if self._clock_offset is not None and abs(offset - self._clock_offset) > CLOCK_STEP_S:
            last = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])
            self._clock_steps.append((last, offset - self._clock_offset))
            del self._clock_steps[:-_MAX_CLOCK_STEPS]
            log.warning("the wall clock stepped by %+.1f s: the uplink corrects the ages of"
                        " the outbox's %d earlier rows", offset - self._clock_offset, last)
        self._clock_offset = offset
        rows = [(m.topic, m.payload, int(m.retain), now, m.kind, OUTBOX_PRIO[m.kind],
                 m.msg_id or None) for m in msgs]
        db.executemany(_INSERT_OUTBOX, rows)
        if self._pending_rows is not None:
            self._pending_rows += len(rows)
            self._pending_bytes += sum(len(r[1]) + len(r[0].encode()) for r in rows)
        if self._budget or self._budget_bytes:
            self._hold_budget(db)

    def outbox_clock_steps(self) -> list[tuple[int, float]]:
        return self._clock_steps

    def _hold_budget(self, db: sqlite3.Connection) -> None:
        """Drop unconfirmed rows beyond the budget (rows or bytes) by
        ``OUTBOX_DROP_ORDER``, oldest first in each kind, as few as bring it back
        under (never the newest row of the table, whose id would be given again);
        alerts and OTA results are never dropped, so they may exceed it."""
        if self._pending_rows is None:
            rows, size = db.execute(_COUNT_PENDING).fetchone()
            self._pending_rows, self._pending_bytes = int(rows), int(size)
        for kind in OUTBOX_DROP_ORDER:
            excess = self._pending_rows - self._budget if self._budget else 0
            over = self._pending_bytes - self._budget_bytes if self._budget_bytes else 0
            if excess <= 0 and over <= 0:
                return
            where = (f"prio = {OUTBOX_PRIO[kind]} AND kind = ? AND {_PENDING}"
                     " AND id < (SELECT MAX(id) FROM outbox)")
            cur = db.execute(f"SELECT id, {OUTBOX_SIZE} FROM outbox WHERE {where}"
                             " ORDER BY id", (kind,))
            last = n = freed = 0
            for last, size in cur:  # read as far as needed only
                n += 1
                freed += size
                if n >= excess and freed >= over:
                    break
            cur.close()
            if n:
                db.execute(f"DELETE FROM outbox WHERE {where} AND id <= ?", (kind, last))
                _count_drops(db, "budget", kind, n)
                self._pending_rows -= n
                self._pending_bytes -= freed

    # -- sends -----------------------------------------------------------------------

    def record_send(
        self,
        reg: Registration,
        token: bytes,
        digest: bytes,
        content_format: int,
        records: Sequence[Record],
        now: float,
        notification: NotificationLink | None = None,
    ) -> SendResult:
        """Commit a Send's readings and outbox rows in one transaction, unless duplicate.

        A Send is a duplicate when the same endpoint sent the same non-empty token with
        the same payload digest within EXCHANGE_LIFETIME (a retransmission that outlived
        the CoAP layer's own deduplication, e.g. across a gateway restart), or when it is
        a report stored before (``_same_report``: a node re-sending, with a new token, a
        report the gateway committed but crashed before acknowledging). Either way it is
        acknowledged again, with the stored Send's id, and nothing is stored twice: its
        readings keep their ids, so the uplink publishes them once.

        ``notification``: the Send is a Notification; its ``dm_notifications`` row is
        written in the same transaction, so it commits, or is undone, with the readings.
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
            data = readings_json(records)
            report: bytes | None = None
            if notification is None and records:
                # Only a Send with a time can be a re-sent report (_same_report): one
                # without is stored, with its key, for a re-send to find
                report = report_key(reg.endpoint, records, data)
                if any(r.time is not None for r in records):
                    for sid, n, stored, received_at in db.execute(
                        "SELECT id, records, data, received_at FROM sends WHERE report = ?"
                        " AND received_at >= ? ORDER BY id DESC LIMIT ?",
                        (report, now - REPORT_WINDOW_S, _REPORT_CANDIDATES),
                    ):
                        if _same_report(records, now, stored, received_at):
                            return SendResult(sid, n, duplicate=True)
            send_id = db.execute(
                "INSERT INTO sends (endpoint, reg_id, received_at, content_format, token,"
                " digest, records, data, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reg.endpoint, reg.reg_id, now, content_format, token, digest, len(records),
                 data, report),
            ).lastrowid
            if send_id is None:  # an INSERT always sets it
                raise StoreError("INSERT INTO sends gave no row id")
            ep = reg.endpoint
            # node times checked (gateway/ops/timecheck.py): flags on the uplink payload
            check = self.time_check
            flags = check.flags(ep, records, now) if check is not None else None
            if self._encoder is not None:
                first = send_id * READING_ID_SPAN
                encode = self._encoder.reading
                self._outbox_insert(db, (
                    encode(StoredReading(first + i, send_id, ep, rec.path, rec.kind,
                                         rec.value, rec.time, now,
                                         *(flags[i] if flags else (False, False))))
                    for i, rec in enumerate(records)), now)
            top = self._merge_latest(db, ep, send_id, records, now)
            db.execute(
                "UPDATE registrations SET send_count = send_count + 1,"
                " reading_count = reading_count + ?, last_seen = ? WHERE endpoint = ?",
                (len(records), now, reg.endpoint),
            )
            if notification is not None:
                db.execute(_INSERT_NOTIFICATION, (
                    notification.observation_id, send_id, notification.observe_seq,
                    notification.content_format, notification.received))
        if top is None:  # set by every way through that did not return
            raise StoreError("latest values not merged")
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

    def latest_row(self, endpoint: str) -> tuple[bytes, str | None] | None:
        """``endpoint``'s latest row as stored: the CBOR map of folded values and the
        JSON list of Send ids on top (schema v3; for tests of that layout)."""
        row = self._db.execute("SELECT paths, sends FROM latest WHERE endpoint = ?",
                               (endpoint,)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def latest(self, endpoint: str) -> dict[str, StoredValue]:
        """The latest value of each path ``endpoint`` sent (by path)."""
        rows = self._db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                                (endpoint,)).fetchall()
        return {path: StoredValue(*v) for path, v in _merged(rows).items()}

    def readings(self, send_id: int | None = None) -> list[StoredReading]:
        """Stored readings (of one Send, or all), in id order; for tests and tools."""
        where, args = ("WHERE id = ?", (send_id,)) if send_id is not None else ("", ())
        out: list[StoredReading] = []
        for sid, ep, received_at, data in self._db.execute(
            f"SELECT id, endpoint, received_at, data FROM sends {where} ORDER BY id", args
        ):
            first = sid * READING_ID_SPAN
            out.extend(StoredReading(first + i, sid, ep, path, kind, value, t, received_at)
                       for i, (path, kind, value, t) in enumerate(readings_from_json(data)))
        return out

    def sends(self, endpoint: str | None = None) -> list[StoredSend]:
        """Stored Sends and Notifications (of one endpoint), in id order, without their
        readings; for tests and tools."""
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint is not None else ("", ())
        return [StoredSend(i, ep, reg_id, t, cf, bytes(token), n) for i, ep, reg_id, t, cf,
                token, n in self._db.execute(
                    "SELECT id, endpoint, reg_id, received_at, content_format, token,"
                    f" records FROM sends {where} ORDER BY id", args)]

    def count_sends(self) -> int:
        """How many Sends (and Notifications) are stored."""
        return int(self._db.execute("SELECT COUNT(*) FROM sends").fetchone()[0])

    def last_send_id(self) -> int:
        """The id of the latest stored Send, 0 when there is none."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM sends").fetchone()[0])

    def sends_since(self, after_id: int) -> tuple[int, float]:
        """Sends stored with an id above ``after_id``: how many, and the latest
        ``received_at`` (taken inside the committing transaction; 0.0 if none)."""
        n, last = self._db.execute(
            "SELECT COUNT(*), MAX(received_at) FROM sends WHERE id > ?", (after_id,)
        ).fetchone()
        return int(n), float(last or 0.0)

    def count_registered(self) -> int:
        """How many endpoints are registered now."""
        return int(self._db.execute(
            "SELECT COUNT(*) FROM registrations WHERE state = 'registered'").fetchone()[0])

    # -- outbox ----------------------------------------------------------------------

    def outbox_add(self, messages: Sequence[OutboxMessage], now: float) -> None:
        with self._tx() as db:
            self._outbox_insert(db, messages, now)

    def outbox_set_budget(self, max_rows: int, max_bytes: int = 0) -> None:
        """Keep at most ``max_rows`` unconfirmed rows of at most ``max_bytes`` bytes
        (``OUTBOX_SIZE``; 0: no limit); see ``_hold_budget`` for what goes when an
        insert goes beyond."""
        self._budget = max(0, max_rows)
        self._budget_bytes = max(0, max_bytes)

    def outbox_pending_bytes(self) -> int:
        """The bytes (``OUTBOX_SIZE``) of the unconfirmed rows."""
        if self._pending_rows is None:
            rows, size = self._db.execute(_COUNT_PENDING).fetchone()
            self._pending_rows, self._pending_bytes = int(rows), int(size)
        return self._pending_bytes

    def _rows(self, rows: Iterable[Sequence[Any]]) -> list[OutboxRow]:
        topic = self._encoder.topic if self._encoder is not None else None
        return [OutboxRow(r[0], r[1] if r[5] or topic is None else topic(r[1]),
                          bytes(r[2]), bool(r[3]), r[4], r[6], r[7] or "")
                for r in rows]

    def outbox_pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Unconfirmed rows with id above ``after_id``, in queue order (priority, then
        id; not the dead letters)."""
        return self._rows(self._db.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE confirmed IS NULL AND dead IS NULL"
            " AND id > ? ORDER BY prio, id LIMIT ?", (after_id, limit)))

    def outbox_oldest(self) -> float | None:
        """When the oldest unconfirmed row was committed (None: none waits): the first
        row of each priority (one indexed lookup each), the earliest of them."""
        db = self._db
        times = [r[0] for prio in _PRIOS for r in db.execute(
            "SELECT created FROM outbox WHERE prio = ? AND confirmed IS NULL AND dead IS NULL"
            " ORDER BY id LIMIT 1", (prio,))]
        return min(times) if times else None

    def outbox_next(self, after: Mapping[int, int], limit: int) -> list[OutboxRow]:
        """Unconfirmed rows in queue order, of each priority those with an id above
        ``after[prio]`` only: one indexed range per priority."""
        out: list[OutboxRow] = []
        db = self._db
        for prio in _PRIOS:
            if len(out) >= limit:
                break
            out += self._rows(db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE prio = ? AND confirmed IS NULL"
                " AND dead IS NULL AND id > ? ORDER BY id LIMIT ?",
                (prio, after.get(prio, 0), limit - len(out))))
        return out

    def outbox_last_id(self) -> int:
        """The highest row id there is (0: none)."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])

    def outbox_drop(self, ids: Iterable[int], reason: str, now: float) -> int:
        """Delete unconfirmed rows unpublished, counted as dropped for ``reason``."""
        batch = list(ids)
        gone = size = 0
        with self._tx() as db:
            for i in range(0, len(batch), 500):
                chunk = batch[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for kind, n in db.execute(
                        f"SELECT kind, COUNT(*) FROM outbox WHERE {_PENDING}"
                        f" AND id IN ({marks}) GROUP BY kind", chunk).fetchall():
                    _count_drops(db, reason, kind, n)
                sizes = db.execute(f"DELETE FROM outbox WHERE {_PENDING} AND id IN ({marks})"
                                   f" RETURNING {OUTBOX_SIZE}", chunk).fetchall()
                gone += len(sizes)
                size += sum(z[0] for z in sizes)
        self._pending_gone(gone, size)
        return gone

    def _pending_gone(self, rows: int, size: int) -> None:
        if self._pending_rows is not None:
            self._pending_rows -= rows
            self._pending_bytes -= size

    def outbox_drops(self) -> dict[str, int]:
        """Messages dropped (budget, expiry) since the database was made, by
        ``{reason}_{kind}``."""
        return {f"{reason}_{kind}": int(n) for reason, kind, n in self._db.execute(
            "SELECT reason, kind, count FROM outbox_drops ORDER BY reason, kind")}

    def outbox_mark_published(self, ids: Iterable[int], now: float) -> None:
        """Record when rows went out (first time only)."""
        self._update_ids("UPDATE outbox SET published = ? WHERE published IS NULL AND id IN",
                         ids, now)

    def outbox_confirm(self, ids: Iterable[int], now: float) -> None:
        """Mark rows confirmed (the broker acknowledged them). On a full disk (setting
        ``confirmed`` can need a page more) they are deleted instead, which frees
        space: the uplink keeps forwarding what is stored while nothing can be added."""
        batch = list(ids)
        try:
            sizes = self._update_ids(f"UPDATE outbox SET confirmed = ? WHERE {_PENDING}"
                                     " AND id IN", batch, now, f" RETURNING {OUTBOX_SIZE}")
        except sqlite3.OperationalError as e:
            if not _disk_full(e):
                raise
            sizes = self._update_ids(f"DELETE FROM outbox WHERE ? IS NOT NULL AND {_PENDING}"
                                     " AND id IN", batch, now, f" RETURNING {OUTBOX_SIZE}")
        self._pending_gone(len(sizes), sum(z[0] for z in sizes))

    def _update_ids(self, sql: str, ids: Iterable[int], now: float,
                    returning: str = "") -> list[Any]:
        """Run ``sql`` (ending in ``id IN``) for ``ids`` in chunks; the rows of its
        ``returning`` clause, if any."""
        batch = list(ids)
        out: list[Any] = []
        if not batch:
            return out
        with self._tx() as db:
            for i in range(0, len(batch), 500):  # SQLite's default variable limit is 999+
                chunk = batch[i:i + 500]
                out += db.execute(f"{sql} ({','.join('?' * len(chunk))}){returning}",
                                  (now, *chunk)).fetchall()
        return out

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
        """(unconfirmed, confirmed) row counts; dead letters are neither."""
        row = self._db.execute(
            "SELECT COUNT(*) - COUNT(confirmed) - COUNT(dead), COUNT(confirmed) FROM outbox"
        ).fetchone()
        if self._pending_rows is not None and self._pending_rows != int(row[0]):
            self._pending_rows = None  # counted again, bytes too, when next needed
        return int(row[0]), int(row[1])

    def outbox_set_aside(self, row_id: int, reason: str, now: float) -> bool:
        """Make an unconfirmed row a dead letter: the broker refused it, it is not
        published again (only the newest ``KEEP_DEAD`` are kept). False if it was
        confirmed or set aside already."""
        with self._tx() as db:
            size = db.execute(f"UPDATE outbox SET dead = ?, reason = ? WHERE id = ?"
                              f" AND {_PENDING} RETURNING {OUTBOX_SIZE}",
                              (now, reason, row_id)).fetchall()
            if not size:
                return False
            self._pending_gone(1, size[0][0])
            row = db.execute("SELECT id FROM outbox WHERE dead IS NOT NULL"
                             " ORDER BY id DESC LIMIT 1 OFFSET ?", (KEEP_DEAD,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM outbox WHERE dead IS NOT NULL AND id <= ?", (row[0],))
        return True

    def outbox_dead(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        topic = self._encoder.topic if self._encoder is not None else None
        return [DeadLetter(i, t if absolute or topic is None else topic(t), bytes(payload),
                           created, dead, reason)
                for i, t, payload, created, dead, reason, absolute in self._db.execute(
                    "SELECT id, topic, payload, created, dead, reason, abs FROM outbox"
                    " WHERE dead IS NOT NULL ORDER BY id DESC LIMIT ?", (limit,))]

    def outbox_dead_count(self) -> int:
        """How many dead letters are kept."""
        return int(self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE dead IS NOT NULL").fetchone()[0])

    # -- views -----------------------------------------------------------------------

    def node_summaries(self, after: str = "", limit: int | None = None, *,
                       values: bool = True) -> list[NodeSummary]:
        """Per endpoint, in name order: registration, counters and (``values``) last value
        by path. ``after``/``limit`` page through the fleet by endpoint name (a primary-key
        range), so one page costs the same at 100,000 endpoints as at ten.

        Reads of small tables (registrations, latest: one row per endpoint); it never
        scans readings, so calling it every second is cheap whatever the history.
        """
        rows = self._db.execute(_SELECT_SUMMARY + " WHERE endpoint > ? ORDER BY endpoint"
                                " LIMIT ?", (after, -1 if limit is None else limit)).fetchall()
        by_ep: dict[str, list[Any]] = {}
        if values and rows:
            for ep, *row in self._db.execute(
                _SELECT_LATEST.replace("SELECT", "SELECT l.endpoint,", 1)
                + " WHERE l.endpoint > ? AND l.endpoint <= ? ORDER BY l.endpoint, j.key",
                (after, rows[-1][0]),
            ):
                by_ep.setdefault(ep, []).append(row)
        return [_summary(row, by_ep.get(row[0], ())) for row in rows]

    def node_summary(self, endpoint: str) -> NodeSummary | None:
        """``endpoint`` at a glance: its own rows only (two primary-key lookups)."""
        row = self._db.execute(_SELECT_SUMMARY + " WHERE endpoint = ?", (endpoint,)).fetchone()
        if row is None:
            return None
        latest = self._db.execute(_SELECT_LATEST + " WHERE l.endpoint = ? ORDER BY j.key",
                                  (endpoint,)).fetchall()
        return _summary(row, latest)


# One endpoint's events and device-management requests (REST) on the event loop: a
# scan of every row without these (events: 5 ms at 100,000 registrations, growing with
# every Register and Update).
_LOOKUP_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_endpoint ON events (endpoint, id)",
    "CREATE INDEX IF NOT EXISTS dm_requests_endpoint ON dm_requests (endpoint, id)",
    # the expiry check, every second: 15 ms of the event loop at 100,000 registrations
    ("CREATE INDEX IF NOT EXISTS registrations_expiry ON registrations (updated_at + lifetime)"
     " WHERE state = 'registered'"),
)

# latest.paths, then each Send latest.sends names, oldest first (ORDER BY j.key)
_SELECT_LATEST = ("SELECT l.paths, j.value, s.data, s.received_at FROM latest AS l"
                  " LEFT JOIN json_each(l.sends) AS j LEFT JOIN sends AS s ON s.id = j.value")
_EMPTY_MAP = b"\xa0"  # CBOR {}
_EMPTY: frozenset[str] = frozenset()
_PATHSETS: dict[frozenset[str], frozenset[str]] = {}  # interned path sets (_merge_latest)
# An endpoint's latest row in short: the paths latest.paths holds, and (Send id, its
# paths) for each Send latest.sends names
_Top = tuple[frozenset[str], tuple[tuple[int, frozenset[str]], ...]]


def _same_report(new: Sequence[Record], now: float, data: str, received_at: float) -> bool:
    """Is a Send of ``new`` records, received ``now``, the report stored as ``data``
    (``sends.data``, received at ``received_at``; same report key)?

    The same report: the same endpoint (in the key), the same records (path, kind and
    value, in order), whose times agree: where both Sends give a record a time, the
    times are equal (absolute ones exactly; a relative one, RFC 8428 §4.5.3, taken from
    its Send's reception, within _SAME_T_REL); a record without a time agrees with any
    (the node adds a base time when it re-sends a logged report). And the later Send
    has a time (``record_send`` only asks then): two identical Sends without any time
    are two readings of values that did not change, not one report.
    """
    timed = False
    old = list(readings_from_json(data))
    if len(old) != len(new):
        return False
    for rec, (path, kind, value, t) in zip(new, old, strict=True):
        if rec.path != path or rec.kind != kind or rec.value != value:
            return False  # a key collision
        a = rec.time
        if a is None or t is None:
            timed = timed or a is not None or t is not None
            continue
        timed = True
        if a >= _RELATIVE_T and t >= _RELATIVE_T:
            if abs(a - t) > _SAME_T_ABS:
                return False
        elif abs((a if a >= _RELATIVE_T else now + a)
                 - (t if t >= _RELATIVE_T else received_at + t)) > _SAME_T_REL:
            return False
    return timed


def _prefix(db: sqlite3.Connection, table: str, column: str, cutoff: int, limit: int) -> int:
    """The highest id of ``table``'s rows, oldest first, whose ``column`` is at most
    ``cutoff`` (or NULL), up to the first row beyond it: both grow together."""
    top = 0
    for rid, ref in db.execute(f"SELECT id, {column} FROM {table} ORDER BY id LIMIT ?",
                               (limit,)).fetchall():
        if ref is not None and ref > cutoff:
            break
        top = rid
    return top


def _count_drops(db: sqlite3.Connection, reason: str, kind: str, n: int) -> None:
    db.execute("INSERT INTO outbox_drops (reason, kind, count) VALUES (?, ?, ?)"
               " ON CONFLICT (reason, kind) DO UPDATE SET count = count + excluded.count",
               (reason, kind, n))


def _disk_full(e: sqlite3.Error) -> bool:
    """SQLITE_FULL: 'database or disk is full' (a full disk, or max_page_count)."""
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(e)


def _merged(rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Path -> [kind, value, time, received_at] from _SELECT_LATEST rows of one endpoint."""
    if not rows:
        return {}
    latest: dict[str, list[Any]] = cbor2.loads(rows[0][0])
    for _blob, _send_id, data, received_at in rows:
        if data is not None:
            for path, kind, value, t in readings_from_json(data):
                latest[path] = [kind, value, t, received_at]
    return latest


def _top(rows: Sequence[Sequence[Any]]) -> _Top:
    base = frozenset(cbor2.loads(rows[0][0]))
    tops = []
    for _blob, send_id, data, _t in rows:
        if data is not None:
            paths = frozenset([r[0] for r in readings_from_json(data)])
            tops.append((int(send_id), _PATHSETS.setdefault(paths, paths)))
    return base, tuple(tops)


_SELECT_SUMMARY = (
    "SELECT endpoint, state, reg_id, host, port, lifetime, registered_at, updated_at,"
    " last_seen, send_count, reading_count, binding, lwm2m_version FROM registrations"
)
_INSERT_NOTIFICATION = (
    "INSERT INTO dm_notifications (observation_id, send_id, observe_seq, content_format,"
    " received) VALUES (?, ?, ?, ?, ?)"
)


def _summary(row: Sequence[Any], latest: Sequence[Sequence[Any]]) -> NodeSummary:
    """A ``_SELECT_SUMMARY`` row and the endpoint's ``_SELECT_LATEST`` rows."""
    (ep, state, reg_id, host, port, lifetime, registered_at, updated_at, last_seen, sends,
     readings, binding, version) = row
    values = {path: v[1] for path, v in sorted(_merged(latest).items())}
    return NodeSummary(ep, state, reg_id, host, port, lifetime, registered_at, updated_at,
                       last_seen, sends, readings, last_values=values, binding=binding,
                       lwm2m_version=version)


def _connect(path: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0,
                               check_same_thread=check_same_thread)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open database: {e}") from e
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"{path}: {e}") from e
    return conn


def _open_readonly(path: str | Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=10.0)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open database: {e}") from e
    try:
        at = schema.version(conn)
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"{path}: {e}") from e
    if at != schema.SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"{path}: schema version {at}, not this gateway's"
                         f" ({schema.SCHEMA_VERSION}); open it read-write to migrate")
    return conn


_SELECT_REG = (
    "SELECT endpoint, reg_id, host, port, lifetime, binding, lwm2m_version, object_links,"
    " registered_at, updated_at, state FROM registrations"
)


def _registration(row: Sequence[Any]) -> Registration:
    ep, reg_id, host, port, lifetime, binding, version, links, *rest = row
    # strings many registrations share: one copy each (RSS with 10k nodes cached)
    return Registration(ep, reg_id, sys.intern(host), port, lifetime, sys.intern(binding),
                        sys.intern(version), sys.intern(links), *rest)


