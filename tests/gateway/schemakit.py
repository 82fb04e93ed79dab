"""An empty database file at an older schema version, built by the migration table's
own steps (gateway/storage/schema.py MIGRATIONS): what a gateway of that version left."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aiotkit.gateway.storage import schema


def file_at_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for at in range(version):
            script, convert = schema.MIGRATIONS[at]
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if convert is not None:
                convert(conn)
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()
