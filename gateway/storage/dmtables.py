"""Device management's durable state (``storage.api.DeviceStorage``) in SQLite: queued
requests with their results, observations, Write-Attributes, and which stored Send
each Notification became.

The ``dm_*`` tables of the gateway's database file (``storage.schema``, version 4), used
through a connection of their own that ``SqliteStorage.open`` makes (WAL lets it and the
main connection share the file; every call here is one short transaction on the event
loop's thread, so neither waits for the other's group commit).

``dm_requests`` holds every request the gateway sent or queued: ``queued`` ones (queue
mode) start ``pending``, become ``sending`` while on the wire and end ``done`` (any CoAP
answer, success or not) or ``failed`` (no answer, or an error on the gateway side); the
answer is kept as the result's JSON. After a restart a queued request left ``sending``
goes back to ``pending`` (the node may or may not have executed it: at least once), and
a direct one left ``sending`` is marked ``failed``. Finished requests (``done``,
``failed``) are kept for ``keep_finished_s`` and at most ``keep_finished_max`` of them
(``[dm]`` config): the others are deleted at start (``recover``) and every
``PRUNE_EVERY`` finishes. Open requests are never deleted.

A Notification's ``dm_notifications`` row is written by ``SqliteStorage.record_send``
on the main connection, in the transaction (group commit) that stores its readings.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import StoreError
from .api import ObservationRow, RequestRow, RequestState

__all__ = ["KEEP_FINISHED_MAX", "KEEP_FINISHED_S", "PRUNE_EVERY", "SqliteDeviceStorage"]

KEEP_FINISHED_S = 7 * 86400.0  # finished requests are kept a week by default
KEEP_FINISHED_MAX = 10000  # and at most this many of them
PRUNE_EVERY = 256  # finishes between two prunings

_REQ_COLS = "id, endpoint, op, spec, queued, state, created, attempts, finished, result"
_OBS_COLS = "id, endpoint, key, spec, token, reg_id, created, established"


class SqliteDeviceStorage:
    """Device-management tables on their own connection (made by
    ``SqliteStorage.open``)."""

    def __init__(self, conn: sqlite3.Connection, *, keep_finished_s: float = KEEP_FINISHED_S,
                 keep_finished_max: int = KEEP_FINISHED_MAX) -> None:
        self._db = conn
        self._keep_s = keep_finished_s
        self._keep_max = keep_finished_max
        self._finished = 0  # since the last pruning

    def close(self) -> None:
        self._db.close()

    # -- requests ----------------------------------------------------------------------

    def add_request(self, endpoint: str, op: str, spec: dict[str, Any], *, queued: bool,
                    now: float) -> int:
        """Record a request (``pending`` when queued, else ``sending``); its id."""
        with self._db:
            cur = self._db.execute(
                "INSERT INTO dm_requests (endpoint, op, spec, queued, state, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (endpoint, op, json.dumps(spec), int(queued),
                 "pending" if queued else "sending", now),
            )
        if cur.lastrowid is None:  # an INSERT always sets it
            raise StoreError("INSERT INTO dm_requests gave no row id")
        return cur.lastrowid

    def mark_sending(self, request_id: int) -> None:
        with self._db:
            self._db.execute(
                "UPDATE dm_requests SET state = 'sending', attempts = attempts + 1"
                " WHERE id = ?", (request_id,))

    def mark_pending(self, request_id: int) -> None:
        """Back in the queue (the node did not answer; try again when it wakes)."""
        with self._db:
            self._db.execute("UPDATE dm_requests SET state = 'pending' WHERE id = ?",
                             (request_id,))

    def finish(self, request_id: int, state: RequestState, result: dict[str, Any],
               now: float) -> None:
        with self._db:
            self._db.execute(
                "UPDATE dm_requests SET state = ?, result = ?, finished = ? WHERE id = ?",
                (state, json.dumps(result), now, request_id))
        self._finished += 1
        if self._finished >= PRUNE_EVERY:
            self.prune(now)

    def prune(self, now: float) -> int:
        """Delete finished requests older than the retention or beyond the newest
        ``keep_finished_max``; how many went. Open ones are never touched."""
        self._finished = 0
        with self._db:
            gone = self._db.execute(
                "DELETE FROM dm_requests WHERE state IN ('done', 'failed') AND finished < ?",
                (now - self._keep_s,)).rowcount
            row = self._db.execute(
                "SELECT id FROM dm_requests WHERE state IN ('done', 'failed')"
                " ORDER BY id DESC LIMIT 1 OFFSET ?", (self._keep_max,)).fetchone()
            if row is not None:
                gone += self._db.execute(
                    "DELETE FROM dm_requests WHERE state IN ('done', 'failed') AND id <= ?",
                    (row[0],)).rowcount
        return gone

    def request(self, request_id: int) -> RequestRow | None:
        row = self._db.execute(f"SELECT {_REQ_COLS} FROM dm_requests WHERE id = ?",
                               (request_id,)).fetchone()
        return _request(row) if row else None

    def requests(self, endpoint: str | None = None, *, open_only: bool = False,
                 limit: int = 100) -> list[RequestRow]:
        """Requests, oldest first (of one endpoint; only pending/sending ones)."""
        where, args = [], []
        if endpoint is not None:
            where.append("endpoint = ?")
            args.append(endpoint)
        if open_only:
            where.append("state IN ('pending', 'sending')")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {_REQ_COLS} FROM dm_requests {clause} ORDER BY id DESC LIMIT ?",
            (*args, limit)).fetchall()
        return [_request(r) for r in reversed(rows)]

    def next_pending(self, endpoint: str) -> RequestRow | None:
        row = self._db.execute(
            f"SELECT {_REQ_COLS} FROM dm_requests WHERE endpoint = ? AND state = 'pending'"
            " ORDER BY id LIMIT 1", (endpoint,)).fetchone()
        return _request(row) if row else None

    def count_open(self, endpoint: str) -> int:
        return int(self._db.execute(
            "SELECT COUNT(*) FROM dm_requests WHERE endpoint = ?"
            " AND state IN ('pending', 'sending')", (endpoint,)).fetchone()[0])

    def queued_endpoints(self) -> set[str]:
        return {r[0] for r in self._db.execute(
            "SELECT DISTINCT endpoint FROM dm_requests WHERE state = 'pending'")}

    def recover(self, now: float) -> None:
        """After a restart: queued requests left on the wire are pending again, direct
        ones failed (nobody waits for them any more)."""
        with self._db:
            self._db.execute("UPDATE dm_requests SET state = 'pending'"
                             " WHERE state = 'sending' AND queued = 1")
            self._db.execute(
                "UPDATE dm_requests SET state = 'failed', finished = ?, result = ?"
                " WHERE state = 'sending' AND queued = 0",
                (now, json.dumps({"error": "gateway restarted before the answer"})))
        self.prune(now)

    # -- observations ------------------------------------------------------------------

    def save_observation(self, endpoint: str, key: str, spec: dict[str, Any],
                         now: float) -> int:
        """Persist (or keep) the observation of ``key``; its id."""
        with self._db:
            self._db.execute(
                "INSERT INTO dm_observations (endpoint, key, spec, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (endpoint, key) DO UPDATE SET spec = excluded.spec",
                (endpoint, key, json.dumps(spec), now))
        row = self._db.execute("SELECT id FROM dm_observations WHERE endpoint = ? AND key = ?",
                               (endpoint, key)).fetchone()
        return int(row[0])

    def established(self, obs_id: int, token: bytes | None, reg_id: str | None,
                    now: float | None) -> None:
        with self._db:
            self._db.execute(
                "UPDATE dm_observations SET token = ?, reg_id = ?, established = ?"
                " WHERE id = ?", (token, reg_id, now, obs_id))

    def observation(self, endpoint: str, key: str) -> ObservationRow | None:
        row = self._db.execute(
            f"SELECT {_OBS_COLS} FROM dm_observations WHERE endpoint = ? AND key = ?",
            (endpoint, key)).fetchone()
        return _observation(row) if row else None

    def observations(self, endpoint: str | None = None) -> list[ObservationRow]:
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint else ("", ())
        rows = self._db.execute(
            f"SELECT {_OBS_COLS} FROM dm_observations {where} ORDER BY id", args).fetchall()
        return [_observation(r) for r in rows]

    def delete_observation(self, obs_id: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM dm_observations WHERE id = ?", (obs_id,))

    def delete_observations(self, endpoint: str) -> int:
        with self._db:
            return self._db.execute("DELETE FROM dm_observations WHERE endpoint = ?",
                                    (endpoint,)).rowcount

    def observed_endpoints(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT DISTINCT endpoint FROM dm_observations")}

    def notifications(self, obs_id: int) -> list[tuple[int | None, int | None, float]]:
        """(send id, Observe sequence number, time) of an observation's Notifications."""
        return [(r[0], r[1], r[2]) for r in self._db.execute(
            "SELECT send_id, observe_seq, received FROM dm_notifications"
            " WHERE observation_id = ? ORDER BY id", (obs_id,))]

    # -- attributes --------------------------------------------------------------------

    def save_attributes(self, endpoint: str, path: str, query: list[str], now: float) -> None:
        """Remember what Write-Attributes set on ``path`` (merged by name)."""
        row = self._db.execute(
            "SELECT attributes FROM dm_attributes WHERE endpoint = ? AND path = ?",
            (endpoint, path)).fetchone()
        merged: dict[str, str] = {}
        for item in (json.loads(row[0]) if row else []) + query:
            name, eq, _ = item.partition("=")
            if eq:
                merged[name] = item
            else:  # a bare name removes the attribute
                merged.pop(name, None)
        with self._db:
            self._db.execute(
                "INSERT INTO dm_attributes VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, path)"
                " DO UPDATE SET attributes = excluded.attributes, t = excluded.t",
                (endpoint, path, json.dumps(sorted(merged.values())), now))

    def attributes(self, endpoint: str) -> dict[str, list[str]]:
        """Path -> Write-Attributes query items last set there."""
        return {r[0]: json.loads(r[1]) for r in self._db.execute(
            "SELECT path, attributes FROM dm_attributes WHERE endpoint = ? ORDER BY path",
            (endpoint,))}


def _request(row: Any) -> RequestRow:
    return RequestRow(row[0], row[1], row[2], json.loads(row[3]), bool(row[4]), row[5],
                      row[6], row[7], row[8], json.loads(row[9]) if row[9] else None)


def _observation(row: Any) -> ObservationRow:
    return ObservationRow(row[0], row[1], row[2], json.loads(row[3]),
                          bytes(row[4]) if row[4] is not None else None, row[5], row[6],
                          row[7])
