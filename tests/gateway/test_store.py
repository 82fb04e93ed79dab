"""The SQLite store on its own: schema, durability settings, outbox bookkeeping."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiotkit.gateway.errors import StoreError
from aiotkit.gateway.senml import Record
from aiotkit.gateway.store import SCHEMA_VERSION, Registration, Store
from aiotkit.gateway.uplink import TopicScheme

T0 = 1_700_000_000.0


def reg(endpoint: str = "node-1", reg_id: str = "r1", port: int = 40000) -> Registration:
    return Registration(endpoint, reg_id, "127.0.0.1", port, 60, "U", "1.1", "</3/0>",
                        T0, T0)


def test_new_database_is_wal_full_sync_at_the_current_schema(tmp_path):
    store = Store.open(tmp_path / "gw.db")
    try:
        db = store._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()
    Store.open(tmp_path / "gw.db").close()  # reopening does not migrate again


def test_database_from_a_newer_gateway_is_refused(tmp_path):
    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_a_file_that_is_not_sqlite_is_a_store_error(tmp_path):
    path = tmp_path / "gw.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store.open(path)


def test_values_keep_their_types_and_outbox_rows_follow_the_data(tmp_path):
    store = Store.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        records = [Record("/3/0/0", "vs", "acme"), Record("/3/0/9", "v", 87),
                   Record("/3/0/10", "v", 1.5, 12.0), Record("/1/0/6", "vb", True),
                   Record("/5/0/0", "vd", b"\x00\x01")]
        result = store.record_send(r, b"\x01", b"d" * 16, 112, records, T0 + 1)
        assert not result.duplicate and result.readings == 5
        got = store.readings(result.send_id)
        assert [(x.path, x.kind, x.value, x.time) for x in got] == [
            ("/3/0/0", "vs", "acme", None), ("/3/0/9", "v", 87, None),
            ("/3/0/10", "v", 1.5, 12.0), ("/1/0/6", "vb", True, None),
            ("/5/0/0", "vd", b"\x00\x01", None)]
        pending = store.outbox_pending(0, 100)
        assert [p.topic for p in pending] == [
            "aiot/t/node-1/status", "aiot/t/node-1/data/3/0/0", "aiot/t/node-1/data/3/0/9",
            "aiot/t/node-1/data/3/0/10", "aiot/t/node-1/data/1/0/6",
            "aiot/t/node-1/data/5/0/0"]
        assert [p.retain for p in pending] == [True] + [False] * 5
        (s,) = store.node_summaries()
        assert s.last_values["/1/0/6"] is True and s.last_values["/5/0/0"] == b"\x00\x01"
    finally:
        store.close()


def test_a_failing_send_leaves_nothing_behind(tmp_path):
    class Exploding(TopicScheme):
        def reading(self, r):  # type: ignore[no-untyped-def]
            if r.path == "/3/0/2":
                raise RuntimeError("boom")
            return super().reading(r)

    store = Store.open(tmp_path / "gw.db", encoder=Exploding("p"))
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        records = [Record("/3/0/1", "v", 1), Record("/3/0/2", "v", 2)]
        with pytest.raises(RuntimeError):
            store.record_send(r, b"\x01", b"d" * 16, 112, records, T0)
        assert store.readings() == []
        assert store.outbox_counts() == (1, 0)  # the registration's status only
        assert store.node_summaries()[0].sends == 0
    finally:
        store.close()


def test_outbox_confirm_and_prune_keep_it_bounded(tmp_path):
    store = Store.open(tmp_path / "gw.db", encoder=TopicScheme("p"))
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        store.record_send(r, b"", b"d" * 16, 112,
                          [Record(f"/3/0/{i}", "v", i) for i in range(20)], T0)
        rows = store.outbox_pending(0, 1000)
        assert len(rows) == 21
        store.outbox_mark_published([x.id for x in rows], T0)
        store.outbox_confirm([x.id for x in rows[:15]], T0)
        assert store.outbox_counts() == (6, 15)
        assert [x.id for x in store.outbox_pending(0, 100)] == [x.id for x in rows[15:]]
        assert store.outbox_prune(keep=5) == 10
        assert store.outbox_counts() == (6, 5)
        assert store.outbox_prune(keep=5) == 0
    finally:
        store.close()


def test_without_an_encoder_nothing_is_written_to_the_outbox(tmp_path):
    store = Store.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        store.record_send(r, b"\x01", b"d" * 16, 112, [Record("/3/0/1", "v", 1)], T0)
        assert store.outbox_counts() == (0, 0)
    finally:
        store.close()


def test_latest_values_merge_across_sends_and_keep_their_types(tmp_path):
    from aiotkit.gateway import store as store_mod

    store = Store.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        store.record_send(r, b"\x01", b"a" * 16, 112,
                          [Record("/3/0/9", "v", 87), Record("/1/0/6", "vb", True)], T0 + 1)
        store.record_send(r, b"\x02", b"b" * 16, 112,
                          [Record("/3/0/9", "v", 86.5, 7.0), Record("/5/0/0", "vd", b"\x00")],
                          T0 + 2)
        latest = store.latest("node-1")
        assert latest == {
            "/3/0/9": store_mod.StoredValue("v", 86.5, 7.0, T0 + 2),
            "/1/0/6": store_mod.StoredValue("vb", True, None, T0 + 1),
            "/5/0/0": store_mod.StoredValue("vd", b"\x00", None, T0 + 2)}
        assert store.latest("nobody") == {}
    finally:
        store.close()


def test_latest_values_keep_the_most_recent_paths_when_a_client_sends_too_many(
        tmp_path, monkeypatch):
    from aiotkit.gateway import store as store_mod

    monkeypatch.setattr(store_mod, "LATEST_MAX_PATHS", 3)
    store = Store.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        for i in range(5):
            store.record_send(r, bytes([i + 1]), bytes([i]) * 16, 112,
                              [Record(f"/3/0/{i}", "v", i)], T0 + i)
        assert sorted(store.latest("node-1")) == ["/3/0/2", "/3/0/3", "/3/0/4"]
    finally:
        store.close()


def test_a_version_1_database_is_migrated_with_its_last_values(tmp_path):
    from aiotkit.gateway import store as store_mod

    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.executescript(store_mod._SCHEMA_V1)
    conn.executemany(
        "INSERT INTO last_values (endpoint, path, kind, value, time, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [("a", "/3/0/9", "v", 87, None, T0), ("a", "/1/0/6", "vb", 1, 3.0, T0 + 1),
         ("b", "/5/0/0", "vd", b"\x01\x02", None, T0 + 2)])
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store.open(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert store.latest("a") == {
            "/3/0/9": store_mod.StoredValue("v", 87, None, T0),
            "/1/0/6": store_mod.StoredValue("vb", True, 3.0, T0 + 1)}
        assert store.latest("b") == {"/5/0/0": store_mod.StoredValue("vd", b"\x01\x02", None,
                                                                     T0 + 2)}
        tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master")}
        assert "last_values" not in tables
    finally:
        store.close()


def test_a_version_1_database_keeps_its_readings_after_migration(tmp_path):
    from aiotkit.gateway import store as store_mod

    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)
    conn.executescript(store_mod._SCHEMA_V1)
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
    store = Store.open(path)
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
    store = Store.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        result = store.record_send(
            r, b"\x01", b"a" * 16, 112,
            [Record("/3/0/9", "v", 2**62 + 1), Record("/3/0/10", "v", 0.1, 5.0),
             Record("/1/0/6", "vb", False), Record("/3/0/0", "vs", "é"),
             Record("/5/0/0", "vd", b"\xff\x00")], T0 + 1)
        rows = store._db.execute(
            "SELECT id, send_id, endpoint, path, kind, value, time, received_at"
            " FROM readings ORDER BY id").fetchall()
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


REPORT = [Record("/3313/0/5702", "v", 0.5), Record("/33000/0/0", "v", 7)]
DECISION = [Record("/33002/0/0", "v", 7), Record("/33002/0/2", "vs", "ball")]


@contextlib.contextmanager
def registered(path: Path) -> Iterator[tuple[Store, Registration]]:
    """A store at ``path`` with node-1 registered; closed afterwards."""
    store = Store.open(path)
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        yield store, r
    finally:
        store.close()


def latest_row(store: Store, ep: str = "node-1") -> tuple[bytes, str | None]:
    row = store._db.execute("SELECT paths, sends FROM latest WHERE endpoint = ?",
                            (ep,)).fetchone()
    return bytes(row[0]), row[1]


def test_latest_values_of_reports_and_notifications_only_name_their_sends(tmp_path):
    from aiotkit.gateway import store as store_mod

    with registered(tmp_path / "gw.db") as (store, r):
        ids = [store.record_send(r, bytes([i + 1]), bytes([i]) * 16, 112,
                                 REPORT if i % 2 == 0 else DECISION, T0 + i).send_id
               for i in range(5)]
        # the last report and the last decision, no copy of their values
        assert latest_row(store) == (b"\xa0", f"[{ids[3]},{ids[4]}]")
        want = {"/3313/0/5702": store_mod.StoredValue("v", 0.5, None, T0 + 4),
                "/33000/0/0": store_mod.StoredValue("v", 7, None, T0 + 4),
                "/33002/0/0": store_mod.StoredValue("v", 7, None, T0 + 3),
                "/33002/0/2": store_mod.StoredValue("vs", "ball", None, T0 + 3)}
        assert store.latest("node-1") == want
        # a Send of one path does not cover the report: both stay named
        one = store.record_send(r, b"\x09", b"9" * 16, 112,
                                [Record("/3313/0/5702", "v", -1.5)], T0 + 9).send_id
        assert latest_row(store)[1] == f"[{ids[3]},{ids[4]},{one}]"
        want["/3313/0/5702"] = store_mod.StoredValue("v", -1.5, None, T0 + 9)
        assert store.latest("node-1") == want
        assert store.node_summaries()[0].last_values == {p: v.value for p, v in want.items()}
    cold = Store.open(tmp_path / "gw.db")  # no cached shape: read back from the file
    try:
        assert cold.latest("node-1") == want
        last = cold.record_send(reg(), b"\x0a", b"a" * 16, 112, REPORT, T0 + 10).send_id
        assert latest_row(cold)[1] == f"[{ids[3]},{last}]"
    finally:
        cold.close()


def test_latest_values_fold_back_into_one_map_beyond_the_named_sends(tmp_path, monkeypatch):
    from aiotkit.gateway import store as store_mod

    monkeypatch.setattr(store_mod, "LATEST_MAX_SENDS", 2)
    with registered(tmp_path / "gw.db") as (store, r):
        for i in range(3):  # three disjoint path sets: the third folds
            store.record_send(r, bytes([i + 1]), bytes([i]) * 16, 112,
                              [Record(f"/3/0/{i}", "v", i)], T0 + i)
        blob, sends = latest_row(store)
        assert sends is None and len(blob) > 1
        assert {p: v.value for p, v in store.latest("node-1").items()} == {
            "/3/0/0": 0, "/3/0/1": 1, "/3/0/2": 2}
        # a Send that covers every path empties the map again
        covering = [Record(f"/3/0/{i}", "v", 10 + i) for i in range(3)]
        sid = store.record_send(r, b"\x07", b"7" * 16, 112, covering, T0 + 7).send_id
        assert latest_row(store) == (b"\xa0", f"[{sid}]")
        assert {p: v.value for p, v in store.latest("node-1").items()} == {
            "/3/0/0": 10, "/3/0/1": 11, "/3/0/2": 12}


def test_power_cut_in_a_batch_leaves_latest_values_and_lookups_as_committed(tmp_path):
    with registered(tmp_path / "gw.db") as (store, a):
        first = store.record_send(a, b"\x01", b"1" * 16, 112, REPORT, T0 + 1).send_id
        assert store.by_address("127.0.0.1", 40000) == a
        with pytest.raises(RuntimeError), store.batch():
            store.record_send(a, b"\x02", b"2" * 16, 112, REPORT, T0 + 2)
            store.save_registration(reg("node-2", "r2"), "registered", "registered", T0 + 2)
            raise RuntimeError("power cut")
        assert store.by_address("127.0.0.1", 40000) == a  # not node-2's lost registration
        assert latest_row(store)[1] == f"[{first}]"
        later = store.record_send(a, b"\x03", b"3" * 16, 112, DECISION, T0 + 3).send_id
        assert latest_row(store)[1] == f"[{first},{later}]"  # not the lost Send's id
        assert set(store.latest("node-1")) == {r.path for r in REPORT + DECISION}


def test_address_lookups_follow_registration_changes(tmp_path):
    store = Store.open(tmp_path / "gw.db")
    try:
        a = reg("node-a", "ra")
        store.save_registration(a, "registered", "registered", T0)
        assert store.by_address("127.0.0.1", 40000) == a
        b = Registration("node-b", "rb", "127.0.0.1", 40000, 60, "U", "1.1", "</3/0>",
                         T0 + 1, T0 + 1)  # another node, later, at the same address
        store.save_registration(b, "registered", "registered", T0 + 1)
        assert store.by_address("127.0.0.1", 40000) == b
        moved = Registration("node-b", "rb", "127.0.0.1", 40001, 60, "U", "1.1", "</3/0>",
                             T0, T0 + 2)
        store.save_registration(moved, "updated", "updated", T0 + 2)
        assert store.by_address("127.0.0.1", 40001) == moved
        assert store.by_address("127.0.0.1", 40000) == a  # the older one is still there
        assert store.registration("node-b") == moved
        assert store.set_state(moved, "offline", "expired", "offline", T0 + 3)
        assert store.by_address("127.0.0.1", 40001) is None
        assert store.registration("node-b").state == "offline"
    finally:
        store.close()
