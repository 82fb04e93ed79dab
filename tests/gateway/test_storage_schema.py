"""The database file as other programs see it: files written by earlier gateways are
migrated without losing a row, a newer file is refused, and the ``readings`` view gives
one SQL row per reading.

This is the one test module that writes SQL itself, on purpose: its fixtures are files
as an earlier gateway (or a later one) left them, built here with that gateway's own
schema SQL, and the ``readings`` view is read as an operator's ``sqlite3`` would.
Everything else goes through ``storage.api``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import pytest
from aiotkit.gateway.errors import StoreError
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import SCHEMA_VERSION, Registration, SqliteStorage, StoredValue, schema

T0 = 1_700_000_000.0

# The schema the gateway wrote before storage had one version mark: store.py at
# user_version 3, and dmstore.py's tables versioned in dm_meta (sqlite_master as that
# gateway left a new file).
OLD_SCHEMA = """
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
, data TEXT);
CREATE INDEX sends_dedup ON sends (endpoint, token);
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
CREATE TABLE latest (
    endpoint TEXT PRIMARY KEY,
    paths    BLOB NOT NULL
, sends TEXT) WITHOUT ROWID;
CREATE VIEW readings (id, send_id, endpoint, path, kind, value, time, received_at) AS
SELECT s.id * 65536 + j.key, s.id, s.endpoint, j.value ->> 0, j.value ->> 1,
       j.value ->> 2, j.value ->> 3, s.received_at
FROM sends AS s, json_each(s.data) AS j;
CREATE TABLE dm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE dm_requests (
    id       INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    op       TEXT NOT NULL,
    spec     TEXT NOT NULL,          -- the wire request, JSON
    queued   INTEGER NOT NULL,       -- 1: queue mode, delivered when the node wakes
    state    TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'failed')),
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished REAL,
    result   TEXT                    -- DMResult JSON, or the failure
);
CREATE INDEX dm_requests_open ON dm_requests (endpoint, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX dm_requests_finished ON dm_requests (finished)
    WHERE state IN ('done', 'failed');
CREATE TABLE dm_observations (
    id          INTEGER PRIMARY KEY,
    endpoint    TEXT NOT NULL,
    key         TEXT NOT NULL,       -- the observed path(s), comma-separated
    spec        TEXT NOT NULL,       -- the Observe request, JSON
    token       BLOB,                -- of the live CoAP observation, when there is one
    reg_id      TEXT,                -- registration it was last established in
    created     REAL NOT NULL,
    established REAL,
    UNIQUE (endpoint, key)
);
CREATE TABLE dm_attributes (
    endpoint   TEXT NOT NULL,
    path       TEXT NOT NULL,
    attributes TEXT NOT NULL,        -- the Write-Attributes query, JSON list
    t          REAL NOT NULL,
    PRIMARY KEY (endpoint, path)
) WITHOUT ROWID;
CREATE TABLE dm_notifications (
    id             INTEGER PRIMARY KEY,
    observation_id INTEGER NOT NULL,
    send_id        INTEGER,          -- the Send row its readings were stored under
    observe_seq    INTEGER,
    content_format INTEGER,
    received       REAL NOT NULL
);
CREATE INDEX dm_notifications_obs ON dm_notifications (observation_id);
"""


def sql(path: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    return {r[0] for r in sql(path, "SELECT name FROM sqlite_master")}


def old_file(path: Path, *, dm_version: str = "1") -> None:
    """A file as the gateway before the storage package left it, with a row in every
    table: store.py at user_version 3, dmstore.py's tables and dm_meta."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO registrations VALUES ('node-1', 'r1', '127.0.0.1', 40000, 60,"
                 " 'UQ', '1.1', '</3/0>', ?, ?, 'registered', ?, 2, 3)", (T0, T0, T0 + 2))
    data = json.dumps([["/3/0/9", "v", 87, None], ["/3/0/0", "vs", "acme", 5.0]])
    conn.execute("INSERT INTO sends VALUES (1, 'node-1', 'r1', ?, 112, x'01', x'02', 2, ?)",
                 (T0 + 1, data))
    conn.execute("INSERT INTO sends VALUES (2, 'node-1', 'r1', ?, 112, x'', x'03', 1, ?)",
                 (T0 + 2, json.dumps([["/3303/0/5700", "v", 21.5, None]])))
    conn.execute("INSERT INTO latest VALUES ('node-1', ?, '[1,2]')", (cbor2.dumps({}),))
    conn.execute("INSERT INTO outbox (topic, payload, retain, created) VALUES"
                 " ('aiot/gw/node-1/status', x'7b7d', 1, ?)", (T0,))
    conn.execute("INSERT INTO events (t, endpoint, kind, reg_id, detail) VALUES"
                 " (?, 'node-1', 'registered', 'r1', NULL)", (T0,))
    conn.execute("INSERT INTO dm_meta VALUES ('version', ?)", (dm_version,))
    conn.execute("INSERT INTO dm_requests (endpoint, op, spec, queued, state, created)"
                 " VALUES ('node-1', 'read', '{\"path\": \"/3/0\"}', 1, 'pending', ?)", (T0,))
    conn.execute("INSERT INTO dm_observations (endpoint, key, spec, token, reg_id, created,"
                 " established) VALUES ('node-1', '/3303/0', '{}', x'aa', 'r1', ?, ?)",
                 (T0, T0))
    conn.execute("INSERT INTO dm_attributes VALUES ('node-1', '/3303/0', '[\"pmin=5\"]', ?)",
                 (T0,))
    conn.execute("INSERT INTO dm_notifications (observation_id, send_id, observe_seq,"
                 " content_format, received) VALUES (1, 2, 7, 112, ?)", (T0 + 2,))
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


def test_a_file_of_the_gateway_before_one_version_mark_migrates_without_losing_rows(
        tmp_path):
    path = tmp_path / "gw.db"
    old_file(path)
    with SqliteStorage.open(path) as store:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION
        [reg] = store.registrations()
        assert (reg.endpoint, reg.reg_id, reg.binding, reg.state) == ("node-1", "r1", "UQ",
                                                                      "registered")
        assert [(r.send_id, r.path, r.value, r.time) for r in store.readings()] == [
            (1, "/3/0/9", 87, None), (1, "/3/0/0", "acme", 5.0),
            (2, "/3303/0/5700", 21.5, None)]
        assert store.latest("node-1") == {
            "/3/0/9": StoredValue("v", 87, None, T0 + 1),
            "/3/0/0": StoredValue("vs", "acme", 5.0, T0 + 1),
            "/3303/0/5700": StoredValue("v", 21.5, None, T0 + 2)}
        summary = store.node_summary("node-1")
        assert summary is not None and (summary.sends, summary.readings) == (2, 3)
        assert [o.topic for o in store.outbox_pending()] == ["aiot/gw/node-1/status"]
        assert [(e.kind, e.reg_id) for e in store.events("node-1")] == [("registered", "r1")]
        [req] = store.dm.requests("node-1")
        assert (req.op, req.spec, req.state, req.queued) == ("read", {"path": "/3/0"},
                                                             "pending", True)
        [obs] = store.dm.observations("node-1")
        assert (obs.key, obs.token, obs.reg_id) == ("/3303/0", b"\xaa", "r1")
        assert store.dm.attributes("node-1") == {"/3303/0": ["pmin=5"]}
        assert store.dm.notifications(obs.id) == [(2, 7, T0 + 2)]
        # and it goes on working: a new Send after the migrated ones
        result = store.record_send(reg, b"\x09", b"x" * 16, 112,
                                   [Record("/3/0/9", "v", 88)], T0 + 3)
        assert result.send_id == 3 and store.latest("node-1")["/3/0/9"].value == 88
    assert "dm_meta" not in tables(path)  # one version mark: user_version
    with SqliteStorage.open(path) as store:  # reopening migrates nothing more
        assert store.count_sends() == 3


def test_device_tables_from_a_newer_gateway_are_refused_and_the_file_left_as_it_was(
        tmp_path):
    path = tmp_path / "gw.db"
    old_file(path, dm_version="2")
    with pytest.raises(StoreError, match="newer"):
        SqliteStorage.open(path)
    assert "dm_meta" in tables(path)
    assert sql(path, "PRAGMA user_version") == [(3,)]


def test_the_migration_table_reaches_the_schema_version_one_step_at_a_time():
    assert sorted(schema.MIGRATIONS) == list(range(SCHEMA_VERSION))


def reg(endpoint: str = "node-1", reg_id: str = "r1", port: int = 40000) -> Registration:
    return Registration(endpoint, reg_id, "127.0.0.1", port, 60, "U", "1.1", "</3/0>",
                        T0, T0)


def test_database_from_a_newer_gateway_is_refused(tmp_path):
    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStorage.open(path)


def test_a_version_1_database_is_migrated_with_its_last_values(tmp_path):
    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema._SCHEMA_V1)
    conn.executemany(
        "INSERT INTO last_values (endpoint, path, kind, value, time, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [("a", "/3/0/9", "v", 87, None, T0), ("a", "/1/0/6", "vb", 1, 3.0, T0 + 1),
         ("b", "/5/0/0", "vd", b"\x01\x02", None, T0 + 2)])
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStorage.open(path)
    try:
        assert store.pragmas()["user_version"] == SCHEMA_VERSION
        assert store.latest("a") == {
            "/3/0/9": StoredValue("v", 87, None, T0),
            "/1/0/6": StoredValue("vb", True, 3.0, T0 + 1)}
        assert store.latest("b") == {"/5/0/0": StoredValue("vd", b"\x01\x02", None,
                                                                     T0 + 2)}
        assert "last_values" not in tables(path)
    finally:
        store.close()


def test_a_version_1_database_keeps_its_readings_after_migration(tmp_path):
    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema._SCHEMA_V1)
    conn.executemany(
        "INSERT INTO sends (id, endpoint, reg_id, received_at, content_format, token, digest,"
        " records) VALUES (?, ?, 'r', ?, 112, x'01', x'02', ?)",
        [(1, "a", T0, 2), (2, "a", T0 + 1, 0), (3, "b", T0 + 2, 1)])
    conn.executemany(
        "INSERT INTO readings (id, send_id, endpoint, path, kind, value, time)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(1, 1, "a", "/3/0/9", "v", 87, None), (2, 1, "a", "/1/0/6", "vb", 1, 4.0),
         (3, 3, "b", "/5/0/0", "vd", b"\x01", None)])
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStorage.open(path)
    try:
        got = [(r.send_id, r.endpoint, r.path, r.kind, r.value, r.time, r.received_at)
               for r in store.readings()]
        assert got == [(1, "a", "/3/0/9", "v", 87, None, T0),
                       (1, "a", "/1/0/6", "vb", True, 4.0, T0),
                       (3, "b", "/5/0/0", "vd", b"\x01", None, T0 + 2)]
        assert store.readings(2) == []
        # new Sends go on after the migrated ones, with larger reading ids
        r = reg("a")
        store.save_registration(r, "registered", "registered", T0)
        result = store.record_send(r, b"\x09", b"x" * 16, 112, [Record("/3/0/9", "v", 1)],
                                   T0 + 3)
        (new,) = store.readings(result.send_id)
        assert result.send_id == 4 and new.id > max(x.id for x in store.readings()[:-1])
    finally:
        store.close()


def test_the_readings_view_gives_one_sql_row_per_reading(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        result = store.record_send(
            r, b"\x01", b"a" * 16, 112,
            [Record("/3/0/9", "v", 2**62 + 1), Record("/3/0/10", "v", 0.1, 5.0),
             Record("/1/0/6", "vb", False), Record("/3/0/0", "vs", "é"),
             Record("/5/0/0", "vd", b"\xff\x00")], T0 + 1)
        rows = sql(tmp_path / "gw.db",
                   "SELECT id, send_id, endpoint, path, kind, value, time, received_at"
                   " FROM readings ORDER BY id")
        first = result.send_id * 65536
        assert rows == [
            (first, 1, "node-1", "/3/0/9", "v", 2**62 + 1, None, T0 + 1),
            (first + 1, 1, "node-1", "/3/0/10", "v", 0.1, 5.0, T0 + 1),
            (first + 2, 1, "node-1", "/1/0/6", "vb", 0, None, T0 + 1),
            (first + 3, 1, "node-1", "/3/0/0", "vs", "é", None, T0 + 1),
            (first + 4, 1, "node-1", "/5/0/0", "vd", "/wA=", None, T0 + 1)]  # base64
        assert [x.id for x in store.readings()] == [row[0] for row in rows]
        assert store.readings()[4].value == b"\xff\x00"
    finally:
        store.close()
