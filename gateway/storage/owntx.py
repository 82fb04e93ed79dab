"""Table families on a connection of their own (the OSCORE contexts, the OTA service):
each call is one short transaction, durable when it returns, never inside the group
commit of the readings. ``OwnConnection`` gives them ``close`` and ``_tx``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StoreError


class OwnConnection:
    """Base of the table families that own a connection; ``what`` names them in errors."""

    what = "tables"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._db = conn

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; a SQLite error becomes ``StoreError`` after a
        ROLLBACK, anything else rolls back and propagates."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"{self.what}: {e}") from e
        try:
            yield db
        except sqlite3.Error as e:
            db.execute("ROLLBACK")
            raise StoreError(f"{self.what}: {e}") from e
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.what}: {e}") from e
