"""The OSCORE security contexts' rows (``storage.api.KeyStorage``) in SQLite.

The ``oscore_contexts`` and ``oscore_meta`` tables of the gateway's database file
(``storage.schema``, version 6), used through a connection of their own that
``SqliteStorage.open`` makes, like the device tables: every call here is one short
transaction, committed (``synchronous=FULL``: on disk) when it returns, never part of a
group commit. That matters for ``oscore_save_state``: a sequence-number bound must be
durable before any number under it is sent (RFC 8613 B.1.1), whatever batch the main
connection has open.

Nothing secret is written in clear: ``sealed`` is what ``gateway.security`` encrypted.
"""

from __future__ import annotations

from typing import Any

from .api import OscoreRow
from .owntx import OwnConnection

__all__ = ["SqliteKeyStorage"]

_COLS = ("endpoint, kid, kid_context, gateway_id, sealed, seq_bound, replay, created,"
         " rotated, revoked, exported, generation")


def _row(r: tuple[Any, ...]) -> OscoreRow:
    (ep, kid, kid_context, gateway_id, sealed, seq_bound, replay, created, rotated, revoked,
     exported, generation) = r
    return OscoreRow(ep, bytes(kid), None if kid_context is None else bytes(kid_context),
                     bytes(gateway_id), bytes(sealed), int(seq_bound), replay, created,
                     rotated, revoked, exported, int(generation))


class SqliteKeyStorage(OwnConnection):
    """OSCORE tables on their own connection (made by ``SqliteStorage.open``)."""

    what = "OSCORE contexts"

    def oscore_row(self, endpoint: str) -> OscoreRow | None:
        r = self._db.execute(f"SELECT {_COLS} FROM oscore_contexts WHERE endpoint = ?",
                             (endpoint,)).fetchone()
        return None if r is None else _row(r)

    def oscore_rows(self, after: str = "", limit: int = -1) -> list[OscoreRow]:
        """Rows in endpoint order after ``after`` (a primary-key range: one page costs
        the same at any fleet size)."""
        return [_row(r) for r in self._db.execute(
            f"SELECT {_COLS} FROM oscore_contexts WHERE endpoint > ? ORDER BY endpoint"
            " LIMIT ?", (after, limit))]

    def oscore_index(self) -> list[tuple[bytes, str]]:
        """(kid, endpoint) of every context not revoked: the lookup index."""
        return [(bytes(kid), ep) for kid, ep in self._db.execute(
            "SELECT kid, endpoint FROM oscore_contexts WHERE revoked IS NULL")]

    def oscore_kid_taken(self, kid: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM oscore_contexts WHERE kid = ?",
                                (kid,)).fetchone() is not None

    def oscore_put(self, row: OscoreRow) -> None:
        """Insert ``row``, or replace the endpoint's row (rotation, a new context after
        a revocation); ``StoreError`` if another endpoint holds its kid."""
        with self._tx() as db:
            db.execute(f"INSERT INTO oscore_contexts ({_COLS}) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE"
                       " SET kid = excluded.kid, kid_context = excluded.kid_context,"
                       " gateway_id = excluded.gateway_id, sealed = excluded.sealed,"
                       " seq_bound = excluded.seq_bound, replay = excluded.replay,"
                       " created = excluded.created, rotated = excluded.rotated,"
                       " revoked = excluded.revoked, exported = excluded.exported,"
                       " generation = excluded.generation",
                       (row.endpoint, row.kid, row.kid_context, row.gateway_id, row.sealed,
                        row.seq_bound, row.replay, row.created, row.rotated, row.revoked,
                        row.exported, row.generation))

    def oscore_save_state(self, endpoint: str, generation: int, seq_bound: int,
                          replay: str | None) -> bool:
        """Write a live context's sequence-number bound and replay window (None:
        unknown); ignored (False) once the context was rotated or revoked."""
        with self._tx() as db:
            return db.execute(
                "UPDATE oscore_contexts SET seq_bound = ?, replay = ? WHERE endpoint = ?"
                " AND generation = ? AND revoked IS NULL",
                (seq_bound, replay, endpoint, generation)).rowcount == 1

    def oscore_revoke(self, endpoint: str, now: float) -> bool:
        """Mark the context revoked and drop its sealed secrets; False if there is no
        live one. The row (and its kid) stays."""
        with self._tx() as db:
            return db.execute(
                "UPDATE oscore_contexts SET revoked = ?, sealed = x'', replay = NULL"
                " WHERE endpoint = ? AND revoked IS NULL", (now, endpoint)).rowcount == 1

    def oscore_mark_exported(self, endpoint: str, generation: int, now: float) -> bool:
        """Record that the node's side of this generation left the gateway; False if
        it had already (or the context is revoked or was rotated meanwhile)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE oscore_contexts SET exported = ? WHERE endpoint = ?"
                " AND generation = ? AND exported IS NULL AND revoked IS NULL",
                (now, endpoint, generation)).rowcount == 1

    def oscore_forget_replay(self) -> int:
        """Every replay window becomes unknown (after an unclean stop)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE oscore_contexts SET replay = NULL WHERE replay IS NOT NULL").rowcount

    def oscore_meta(self, key: str) -> str | None:
        r = self._db.execute("SELECT value FROM oscore_meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def oscore_set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO oscore_meta (key, value) VALUES (?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
