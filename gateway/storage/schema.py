"""The gateway database's schema: every table, and the migrations that build it.

One SQLite file holds everything the gateway keeps (registrations, Sends and their
readings, latest values, the uplink outbox, events, and the device-management tables).
Its version is ``PRAGMA user_version``, the only version mark: ``MIGRATIONS`` maps a
version to the step that brings a file to the next one (an SQL script, then an optional
conversion in Python), and ``migrate`` runs the steps a file needs on open, each in one
transaction, so a crash leaves the file at a whole version. A file newer than
``SCHEMA_VERSION`` is refused.

===========  ====================================================================
to version   what the step does
===========  ====================================================================
1            registrations, sends, readings, last_values, outbox, events
2            a Send's readings as one JSON row (``sends.data``), latest values as
             one CBOR row per endpoint (``latest``); the view ``readings``
3            ``latest.sends``: latest values point at recent Sends
4            the device-management tables (``dm_requests``, ``dm_observations``,
             ``dm_attributes``, ``dm_notifications``); a file whose ``dm_*``
             tables were made by the gateway before version 4 (versioned in a
             ``dm_meta`` table of their own) keeps its rows, and ``dm_meta`` goes
5            ``outbox.dead``/``outbox.reason``: dead letters (a message the broker
             refused, set aside); ``sends.report``: what identifies a report
             across re-sends (``storage.sqlite.report_key``)
6            ``oscore_contexts``: each endpoint's OSCORE security context, its
             secrets sealed (``gateway.security``); ``oscore_meta``
7            the OTA service's tables (``gateway.ota``): ``ota_images`` (verified
             images, their files content-addressed), ``ota_campaigns``,
             ``ota_nodes`` (each target node's wave and state)
8            the model registry and candidate evaluation (``gateway.ota.models``):
             ``model_versions``, ``model_placements``, ``model_candidates``
9            the uplink's outbox: ``outbox.kind``/``prio`` (priorities and the
             drop policy), ``outbox.abs`` (topics are stored relative to the
             prefix; older rows keep their whole topic), ``outbox.msg_id``;
             ``outbox_drops`` (messages dropped, by reason and kind)
10           rollups, alerts and drift (``gateway.analytics``): ``rollups``,
             ``alerts``, ``alert_history``, ``drift_state``
===========  ====================================================================
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import cbor2

from ..errors import StoreError
from ..lwm2m.senml import Record, Value, ValueKind

__all__ = ["MIGRATIONS", "READING_ID_SPAN", "SCHEMA_VERSION", "Migration", "migrate",
           "readings_from_json", "readings_json", "report_key", "version"]

SCHEMA_VERSION = 10
READING_ID_SPAN = 1 << 16  # readings per Send at most (config coap.max_records)
_DM_META_VERSION = 1  # the last version the pre-4 dm_meta table could hold

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
# one row, instead of a row per reading and per path (SQLite's cost is per row; the
# measurements are in ``tools/bench/gateway.py``). sends.data is a JSON array of [path, kind, value, time]
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

_to_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def readings_json(records: Sequence[Record]) -> str:
    return _to_json([r[:4] if r.kind != "vd" else
                     (r.path, "vd", base64.b64encode(cast(bytes, r.value)).decode(), r.time)
                     for r in records])


def report_key(endpoint: str, records: Sequence[Record], data: str | None = None) -> bytes:
    """``sends.report``: the endpoint and each record's path, kind and value, in order,
    without the times (hashed, 16 bytes). Two Sends with the same key are candidates for
    being the same report; ``storage.sqlite`` decides by their times. ``data``: the
    records' ``readings_json`` if at hand (without times, it is that text already)."""
    if data is None or any(r.time is not None for r in records):
        data = readings_json([r if r.time is None else Record(r.path, r.kind, r.value)
                              for r in records])
    return hashlib.blake2b(f"{endpoint}\0{data}".encode(errors="surrogatepass"),
                           digest_size=16).digest()


def readings_from_json(data: str) -> Iterator[tuple[str, ValueKind, Value, float | None]]:
    for path, kind, value, t in json.loads(data):
        yield path, kind, base64.b64decode(value) if kind == "vd" else value, t


def _from_db(kind: str, value: Any) -> Value:
    if kind == "vb":
        return bool(value)
    if kind == "vd":
        return bytes(value)
    return value  # type: ignore[no-any-return]


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
                     [(readings_json(recs), send_id) for send_id, recs in by_send.items()])
    conn.execute("DROP TABLE last_values")
    conn.execute("DROP TABLE readings")
    conn.execute(_READINGS_VIEW)


# Version 3 lets an endpoint's latest values point at its latest Sends instead of holding
# a copy: latest.sends is a JSON array of Send ids, oldest first, whose readings (received
# at their received_at) go on top of latest.paths. A node sends the same paths each time
# (its report; its Notifications of an observed object), so a Send usually only rewrites
# that short array, dropping the Sends it covers, instead of reading, CBOR-decoding and
# re-encoding the whole map.
# Beyond LATEST_MAX_SENDS, or LATEST_MAX_PATHS, everything is folded into latest.paths
# again. A Send latest.sends names is folded into latest.paths before the history is
# pruned of it (``SqliteStorage.prune_history``), so what latest.sends names is there.
_SCHEMA_V3 = "ALTER TABLE latest ADD COLUMN sends TEXT"

# Version 4: the device-management tables join the schema. Before, ``dmstore`` created
# them on open (IF NOT EXISTS) and versioned them in ``dm_meta``; a file from then has
# them already, with rows, and keeps both (hence IF NOT EXISTS here too).
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS dm_requests (
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
CREATE INDEX IF NOT EXISTS dm_requests_open ON dm_requests (endpoint, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS dm_requests_finished ON dm_requests (finished)
    WHERE state IN ('done', 'failed');
CREATE TABLE IF NOT EXISTS dm_observations (
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
CREATE TABLE IF NOT EXISTS dm_attributes (
    endpoint   TEXT NOT NULL,
    path       TEXT NOT NULL,
    attributes TEXT NOT NULL,        -- the Write-Attributes query, JSON list
    t          REAL NOT NULL,
    PRIMARY KEY (endpoint, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dm_notifications (
    id             INTEGER PRIMARY KEY,
    observation_id INTEGER NOT NULL,
    send_id        INTEGER,          -- the Send row its readings were stored under
    observe_seq    INTEGER,
    content_format INTEGER,
    received       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dm_notifications_obs ON dm_notifications (observation_id);
"""


def _v4_from_dm_meta(conn: sqlite3.Connection) -> None:
    """Retire the old second version mark (``dm_meta``), refusing a newer one."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dm_meta'"
                    ).fetchone() is None:
        return
    row = conn.execute("SELECT value FROM dm_meta WHERE key = 'version'").fetchone()
    if row is not None and int(row[0]) > _DM_META_VERSION:
        raise StoreError(f"device-management tables are version {row[0]}, newer than this"
                         f" gateway's ({_DM_META_VERSION})")
    conn.execute("DROP TABLE dm_meta")


# Version 5: dead letters and report keys.
# An outbox row the broker refused (uplink/mqtt.py: a PUBACK with a failure reason code,
# or the connection closed on it again and again) is set aside: ``dead`` is when, and
# ``reason`` why; it is no longer pending (the partial index now leaves it out), is never
# published again, and stays for the operator to see (``Storage.outbox_dead``).
# ``sends.report`` is a Send's report key (``storage.sqlite.report_key``: endpoint and
# resolved records without their times); a node that re-sends a report the gateway
# stored but did not acknowledge (a crash) is recognised by it and not stored twice.
# Rows from before have none (NULL): nothing re-sent can match them.
_SCHEMA_V5 = """
ALTER TABLE outbox ADD COLUMN dead REAL;
ALTER TABLE outbox ADD COLUMN reason TEXT;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE confirmed IS NULL AND dead IS NULL;
CREATE INDEX outbox_dead ON outbox (id) WHERE dead IS NOT NULL;
ALTER TABLE sends ADD COLUMN report BLOB;
CREATE INDEX sends_report ON sends (report) WHERE report IS NOT NULL
"""


# Version 6: OSCORE security contexts (gateway/security), one per endpoint.
# ``sealed`` holds the master secret and salt encrypted with the gateway's at-rest key
# (AES-256-GCM, bound to endpoint and identifiers: gateway/security/atrest.py); nothing
# secret is stored in clear. ``kid`` (the node's sender ID, what an incoming request
# names) is unique, revoked rows included, so a revoked kid is never given to another
# endpoint while its row stays. ``seq_bound``: the gateway used no sender sequence
# number at or above it (RFC 8613 B.1.1); ``replay``: the replay window written at a
# clean close (JSON), NULL when unknown (B.1.2: Echo recovery). ``oscore_meta`` holds
# the key check and whether the last run ended cleanly.
_SCHEMA_V6 = """
CREATE TABLE oscore_contexts (
    endpoint    TEXT PRIMARY KEY,
    kid         BLOB NOT NULL UNIQUE,
    kid_context BLOB,
    gateway_id  BLOB NOT NULL,
    sealed      BLOB NOT NULL,
    seq_bound   INTEGER NOT NULL DEFAULT 0,
    replay      TEXT,
    created     REAL NOT NULL,
    rotated     REAL,
    revoked     REAL,
    exported    REAL,
    generation  INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE oscore_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID
"""


# Version 7: the OTA service (gateway/ota). ``ota_images``: one row per verified image,
# ``id`` the SHA-256 (hex) of its bytes, which are a file of that name in the images
# folder; ``signers``: JSON list of the key ids (hex) whose signatures counted.
# ``ota_campaigns``: ``target`` and ``waves`` as JSON (what the operator asked for),
# ``wave`` the index of the wave under way, ``reason`` why it stopped (aborted).
# ``ota_nodes``: each target node's wave, state and times (``offered``: when it was
# offered the image; ``heard``: its last report; a silent node's deadline is the later
# of the two plus the campaign's ``report_timeout_s``, so it survives a restart).
_SCHEMA_V7 = """
CREATE TABLE ota_images (
    id               TEXT PRIMARY KEY,
    version          TEXT NOT NULL,
    payload_type     TEXT NOT NULL,
    board            TEXT NOT NULL,
    security_counter INTEGER NOT NULL,
    signers          TEXT NOT NULL,
    size             INTEGER NOT NULL,
    uploaded         REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE ota_campaigns (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL,
    image             TEXT NOT NULL REFERENCES ota_images (id),
    target            TEXT NOT NULL,
    waves             TEXT NOT NULL,
    max_failure_ratio REAL NOT NULL,
    report_timeout_s  REAL NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('draft', 'running', 'paused',
                                                     'aborted', 'completed')),
    wave              INTEGER NOT NULL DEFAULT 0,
    reason            TEXT,
    created           REAL NOT NULL,
    updated           REAL NOT NULL
);
CREATE TABLE ota_nodes (
    campaign INTEGER NOT NULL REFERENCES ota_campaigns (id),
    endpoint TEXT NOT NULL,
    wave     INTEGER NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('pending', 'offered', 'updating', 'succeeded',
                                            'failed', 'timed_out')),
    offered  REAL,
    heard    REAL,
    reason   TEXT,
    PRIMARY KEY (campaign, endpoint)
) WITHOUT ROWID;
CREATE INDEX ota_nodes_endpoint ON ota_nodes (endpoint, state)
"""


# Version 8: models (gateway/ota/models.py). ``model_versions``: one row per signed model
# image in the image store (``image`` its id), with its card's identity (``name``,
# ``version``, ``sha256`` of the .tflite) and feature-spec version. ``model_placements``:
# where models run, per endpoint, as its latest decision report says (``model``: the
# node's 8-byte model id, hex; ``slot``: its /9 instance, -1 the config's; ``role``).
# ``model_candidates``: each candidate a node ran: running totals since the gateway first
# saw it (``windows``, ``agree``, ``anomalies``), the node's own counters at its last
# report (``seen_*``: a node counts from its boot, the totals add the differences), and
# the decision (``state``, ``reason``).
_SCHEMA_V8 = """
CREATE TABLE model_versions (
    image        TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    feature_spec INTEGER NOT NULL,
    board        TEXT NOT NULL,
    signers      TEXT NOT NULL,
    security_counter INTEGER NOT NULL,
    uploaded     REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX model_versions_sha ON model_versions (sha256);
CREATE TABLE model_placements (
    endpoint TEXT NOT NULL,
    model    TEXT NOT NULL,
    slot     INTEGER NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('active', 'candidate')),
    updated  REAL NOT NULL,
    PRIMARY KEY (endpoint, model, role)
) WITHOUT ROWID;
CREATE TABLE model_candidates (
    endpoint       TEXT NOT NULL,
    model          TEXT NOT NULL,
    slot           INTEGER NOT NULL,
    windows        INTEGER NOT NULL DEFAULT 0,
    agree          INTEGER NOT NULL DEFAULT 0,
    anomalies      INTEGER NOT NULL DEFAULT 0,
    seen_windows   INTEGER NOT NULL DEFAULT 0,
    seen_agree     INTEGER NOT NULL DEFAULT 0,
    seen_anomalies INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL CHECK (state IN ('evaluating', 'promoting', 'promoted',
                                                  'refusing', 'refused')),
    reason         TEXT,
    started        REAL NOT NULL,
    updated        REAL NOT NULL,
    PRIMARY KEY (endpoint, model)
) WITHOUT ROWID
"""

# Version 9: the uplink's outbox (gateway/uplink/mqtt.py).
# ``topic`` is now relative to ``mqtt.topic_prefix`` (``node-1/data/3313/0/5702``), which
# the uplink puts in front when it publishes, so a changed prefix applies to the backlog;
# ``abs = 1`` marks a row that holds its whole topic: every row written before this
# version (the column's default, so the step rewrites no row; new rows set 0), published
# as it was. ``kind`` is the ``OutboxKind`` and ``prio`` its rank (0 alert and ota,
# 1 status, 2 rollup, 3 telemetry; ``storage.sqlite.OUTBOX_PRIO``): the queue is read in
# (prio, id) order. Old retained rows were node statuses. ``msg_id``: the message's
# stable id for consumers (a reading's id; NULL: the uplink makes one from ``kind`` and
# the row id). ``outbox_drops`` counts what the budget or expiry dropped.
_SCHEMA_V9 = """
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'telemetry';
ALTER TABLE outbox ADD COLUMN prio INTEGER NOT NULL DEFAULT 3;
ALTER TABLE outbox ADD COLUMN abs INTEGER NOT NULL DEFAULT 1;
ALTER TABLE outbox ADD COLUMN msg_id TEXT;
UPDATE outbox SET kind = 'status', prio = 1 WHERE retain = 1;
DROP INDEX outbox_pending;
CREATE INDEX outbox_queue ON outbox (prio, id) WHERE confirmed IS NULL AND dead IS NULL;
CREATE TABLE outbox_drops (
    reason TEXT NOT NULL,
    kind   TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (reason, kind)
) WITHOUT ROWID
"""

# rollups, alerts and drift (gateway/analytics/): ``rollups`` one row per node, period
# ("1m", "1h") and bucket start (its statistics as JSON); ``alerts`` one row per raised
# alert (at most one open per rule and node: the partial unique index), ``alert_history``
# its raise / acknowledge / clear events; ``drift_state`` each node's latest drift result.
_SCHEMA_V10 = """
CREATE TABLE rollups (
    endpoint TEXT NOT NULL,
    period   TEXT NOT NULL,
    start    REAL NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (endpoint, period, start)
) WITHOUT ROWID;
CREATE INDEX rollups_age ON rollups (period, start);
CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY,
    rule       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    severity   TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'acknowledged', 'cleared')),
    raised_at  REAL NOT NULL,
    acked_at   REAL,
    acked_by   TEXT,
    cleared_at REAL,
    detail     TEXT NOT NULL
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule, endpoint) WHERE state != 'cleared';
CREATE INDEX alerts_endpoint ON alerts (endpoint, id);
CREATE INDEX alerts_cleared ON alerts (cleared_at) WHERE state = 'cleared';
CREATE TABLE alert_history (
    alert  INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    at     REAL NOT NULL,
    event  TEXT NOT NULL CHECK (event IN ('raised', 'acknowledged', 'cleared')),
    actor  TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (alert, seq)
) WITHOUT ROWID;
CREATE TABLE drift_state (
    endpoint TEXT PRIMARY KEY,
    data     TEXT NOT NULL,
    updated  REAL NOT NULL
) WITHOUT ROWID
"""


class Migration(NamedTuple):
    """What brings a file from one ``user_version`` to the next."""

    script: str  # SQL statements, separated by ';'
    convert: Callable[[sqlite3.Connection], None] | None = None  # then this, if any


# user_version -> the migration to user_version + 1
MIGRATIONS: dict[int, Migration] = {
    0: Migration(_SCHEMA_V1),
    1: Migration(_SCHEMA_V2, _v2_from_v1),
    2: Migration(_SCHEMA_V3),
    3: Migration(_SCHEMA_V4, _v4_from_dm_meta),
    4: Migration(_SCHEMA_V5),
    5: Migration(_SCHEMA_V6),
    6: Migration(_SCHEMA_V7),
    7: Migration(_SCHEMA_V8),
    8: Migration(_SCHEMA_V9),
    9: Migration(_SCHEMA_V10),
}


def version(conn: sqlite3.Connection) -> int:
    """The file's schema version (``PRAGMA user_version``)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: str | Path) -> None:
    """Bring the file to ``SCHEMA_VERSION``, one transaction per step (``MIGRATIONS``)."""
    at = version(conn)
    if at > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {at} is newer than this gateway's"
            f" ({SCHEMA_VERSION}); upgrade the gateway"
        )
    while at < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            script, convert = MIGRATIONS[at]
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if convert is not None:
                convert(conn)
            conn.execute(f"PRAGMA user_version = {at + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        at += 1
