"""The analytics' rows (``gateway.analytics``) in SQLite: ``rollups``, ``alerts``,
``alert_history`` and ``drift_state`` (``storage.schema``, version 10). They ride on the
OTA tables' connection (``SqliteStorage.analytics``), never inside the group commit of
the readings: every call is one short transaction, durable when it returns."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .owntx import OwnConnection

__all__ = ["AlertEventRow", "AlertRow", "SqliteAnalyticsStorage"]


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One raised alert; ``state`` active, acknowledged or cleared."""

    id: int
    rule: str
    kind: str
    endpoint: str
    severity: str
    state: str
    raised_at: float
    acked_at: float | None
    acked_by: str | None
    cleared_at: float | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "kind": self.kind,
                "endpoint": self.endpoint, "severity": self.severity, "state": self.state,
                "raised_at": self.raised_at, "acked_at": self.acked_at,
                "acked_by": self.acked_by, "cleared_at": self.cleared_at,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class AlertEventRow:
    """One entry of an alert's history."""

    at: float
    event: str
    actor: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, "actor": self.actor,
                "detail": self.detail}


_ALERT_COLS = ("id, rule, kind, endpoint, severity, state, raised_at, acked_at, acked_by,"
               " cleared_at, detail")


def _alert(r: tuple[Any, ...]) -> AlertRow:
    return AlertRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], float(r[6]), r[7], r[8], r[9],
                    json.loads(r[10]))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class SqliteAnalyticsStorage(OwnConnection):
    """Analytics tables on the OTA tables' connection (``SqliteStorage.analytics``)."""

    what = "analytics tables"

    def close(self) -> None:
        """Nothing: the connection is the OTA tables' (they close it)."""

    # -- rollups -------------------------------------------------------------------------

    def put_rollups(self, rows: Iterable[tuple[str, str, float, dict[str, Any]]]) -> None:
        """(endpoint, period, start, data) rows, one transaction (a bucket written again
        replaces the earlier row)."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO rollups (endpoint, period, start, data)"
                           " VALUES (?, ?, ?, ?)",
                           [(ep, period, start, _dumps(data))
                            for ep, period, start, data in rows])

    def rollups(self, endpoint: str, period: str, *, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """A node's buckets of one period, oldest first (from ``since``, at most
        ``limit``, the latest ones)."""
        rows = self._db.execute(
            "SELECT data FROM rollups WHERE endpoint = ? AND period = ? AND start >= ?"
            " ORDER BY start DESC LIMIT ?",
            (endpoint, period, -1e300 if since is None else since, limit)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def prune_rollups(self, period: str, before: float) -> int:
        """Delete the buckets of ``period`` that start before ``before``."""
        with self._tx() as db:
            return db.execute("DELETE FROM rollups WHERE period = ? AND start < ?",
                              (period, before)).rowcount

    # -- alerts --------------------------------------------------------------------------

    def raise_alert(self, rule: str, kind: str, endpoint: str, severity: str, at: float,
                    detail: dict[str, Any]) -> AlertRow | None:
        """A new active alert with its "raised" history entry; None when the rule has an
        open (not cleared) alert for the node already."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO alerts (rule, kind, endpoint, severity, state, raised_at,"
                " detail) VALUES (?, ?, ?, ?, 'active', ?, ?) ON CONFLICT DO NOTHING",
                (rule, kind, endpoint, severity, at, _dumps(detail)))
            if cur.rowcount != 1 or cur.lastrowid is None:
                return None
            alert_id = int(cur.lastrowid)
            self._history(db, alert_id, at, "raised", None, detail)
        return self.alert(alert_id)

    def ack_alert(self, alert_id: int, by: str, at: float) -> AlertRow | None:
        """active -> acknowledged; None when the alert is not active (unknown,
        acknowledged or cleared already: ``alert`` tells which)."""
        with self._tx() as db:
            if db.execute("UPDATE alerts SET state = 'acknowledged', acked_at = ?,"
                          " acked_by = ? WHERE id = ? AND state = 'active'",
                          (at, by, alert_id)).rowcount != 1:
                return None
            self._history(db, alert_id, at, "acknowledged", by, {})
        return self.alert(alert_id)

    def clear_alert(self, alert_id: int, at: float, detail: dict[str, Any]) -> AlertRow | None:
        """An open alert -> cleared; None when it is not open."""
        with self._tx() as db:
            if db.execute("UPDATE alerts SET state = 'cleared', cleared_at = ? WHERE id = ?"
                          " AND state != 'cleared'", (at, alert_id)).rowcount != 1:
                return None
            self._history(db, alert_id, at, "cleared", None, detail)
        return self.alert(alert_id)

    @staticmethod
    def _history(db: Any, alert_id: int, at: float, event: str, actor: str | None,
                 detail: dict[str, Any]) -> None:
        db.execute("INSERT INTO alert_history (alert, seq, at, event, actor, detail)"
                   " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM alert_history"
                   " WHERE alert = ?", (alert_id, at, event, actor, _dumps(detail), alert_id))

    def alert(self, alert_id: int) -> AlertRow | None:
        r = self._db.execute(f"SELECT {_ALERT_COLS} FROM alerts WHERE id = ?",
                             (alert_id,)).fetchone()
        return None if r is None else _alert(r)

    def alerts(self, *, endpoint: str | None = None, states: Iterable[str] = (),
               rule: str | None = None, limit: int = 1000) -> list[AlertRow]:
        """Alerts, newest first, filtered by node, states and rule."""
        where, args = [], []
        if endpoint is not None:
            where.append("endpoint = ?")
            args.append(endpoint)
        st = list(states)
        if st:
            where.append(f"state IN ({', '.join('?' * len(st))})")
            args += st
        if rule is not None:
            where.append("rule = ?")
            args.append(rule)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        return [_alert(r) for r in self._db.execute(
            f"SELECT {_ALERT_COLS} FROM alerts {cond} ORDER BY id DESC LIMIT ?",
            (*args, limit))]

    def open_alerts(self) -> list[AlertRow]:
        return self.alerts(states=("active", "acknowledged"), limit=1 << 31)

    def history(self, alert_id: int) -> list[AlertEventRow]:
        return [AlertEventRow(float(at), ev, actor, json.loads(d)) for at, ev, actor, d in
                self._db.execute("SELECT at, event, actor, detail FROM alert_history"
                                 " WHERE alert = ? ORDER BY seq", (alert_id,))]

    def prune_alerts(self, cleared_before: float) -> int:
        """Delete the alerts cleared before ``cleared_before`` (their history goes too)."""
        with self._tx() as db:
            return db.execute("DELETE FROM alerts WHERE state = 'cleared' AND cleared_at < ?",
                              (cleared_before,)).rowcount

    # -- drift ---------------------------------------------------------------------------

    def put_drift(self, rows: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO drift_state (endpoint, data, updated)"
                           " VALUES (?, ?, ?)",
                           [(ep, _dumps(data), at) for ep, data, at in rows])

    def drift(self, endpoint: str) -> dict[str, Any] | None:
        r = self._db.execute("SELECT data FROM drift_state WHERE endpoint = ?",
                             (endpoint,)).fetchone()
        return None if r is None else dict(json.loads(r[0]))
