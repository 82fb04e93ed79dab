"""The SQLite store on its own: schema, durability settings, outbox bookkeeping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiotkit.gateway.errors import StoreError
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import SCHEMA_VERSION, Registration, SqliteStorage, StoredValue
from aiotkit.gateway.storage import sqlite as store_mod
from aiotkit.gateway.storage.api import OutboxMessage
from aiotkit.gateway.uplink.mqtt import TopicScheme

T0 = 1_700_000_000.0


def reg(endpoint: str = "node-1", reg_id: str = "r1", port: int = 40000) -> Registration:
    return Registration(endpoint, reg_id, "127.0.0.1", port, 60, "U", "1.1", "</3/0>",
                        T0, T0)


def test_new_database_is_wal_full_sync_at_the_current_schema(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2,  # FULL
                                   "user_version": SCHEMA_VERSION}
    finally:
        store.close()
    SqliteStorage.open(tmp_path / "gw.db").close()  # reopening does not migrate again


def test_a_file_that_is_not_sqlite_is_a_store_error(tmp_path):
    path = tmp_path / "gw.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        SqliteStorage.open(path)


def test_values_keep_their_types_and_outbox_rows_follow_the_data(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
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

    store = SqliteStorage.open(tmp_path / "gw.db", encoder=Exploding("p"))
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
    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("p"))
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


def test_messages_added_to_the_outbox_are_pending_in_order(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        store.outbox_add([OutboxMessage("a/1", b"x", kind="alert"),
                          OutboxMessage("a/2", b"y", retain=True)], T0)
        rows = store.outbox_pending(0, 10)
        assert [(x.topic, x.payload, x.retain) for x in rows] == [("a/1", b"x", False),
                                                                  ("a/2", b"y", True)]
    finally:
        store.close()


def test_the_oldest_waiting_row_is_found_across_priorities(tmp_path):
    # /metrics showed the age of the queue's head: an alert that overtook a day of
    # telemetry made the backlog look a second old
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        assert store.outbox_oldest() is None
        store.outbox_add([OutboxMessage("a/t", b"x")], T0)
        store.outbox_add([OutboxMessage("a/alert", b"y", kind="alert")], T0 + 86400)
        assert store.outbox_pending(0, 1)[0].topic == "a/alert"  # the queue's head
        assert store.outbox_oldest() == T0
        first = store.outbox_pending(0, 10)[1]
        store.outbox_confirm([first.id], T0 + 86401)
        assert store.outbox_oldest() == T0 + 86400
    finally:
        store.close()


def test_without_an_encoder_nothing_is_written_to_the_outbox(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        store.record_send(r, b"\x01", b"d" * 16, 112, [Record("/3/0/1", "v", 1)], T0)
        assert store.outbox_counts() == (0, 0)
    finally:
        store.close()


def test_latest_values_merge_across_sends_and_keep_their_types(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
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
            "/3/0/9": StoredValue("v", 86.5, 7.0, T0 + 2),
            "/1/0/6": StoredValue("vb", True, None, T0 + 1),
            "/5/0/0": StoredValue("vd", b"\x00", None, T0 + 2)}
        assert store.latest("nobody") == {}
    finally:
        store.close()


def test_latest_values_keep_the_most_recent_paths_when_a_client_sends_too_many(
        tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "LATEST_MAX_PATHS", 3)
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        for i in range(5):
            store.record_send(r, bytes([i + 1]), bytes([i]) * 16, 112,
                              [Record(f"/3/0/{i}", "v", i)], T0 + i)
        assert sorted(store.latest("node-1")) == ["/3/0/2", "/3/0/3", "/3/0/4"]
    finally:
        store.close()


REPORT = [Record("/3313/0/5702", "v", 0.5), Record("/33000/0/0", "v", 7)]
DECISION = [Record("/33002/0/0", "v", 7), Record("/33002/0/2", "vs", "ball")]


@contextlib.contextmanager
def registered(path: Path) -> Iterator[tuple[SqliteStorage, Registration]]:
    """A store at ``path`` with node-1 registered; closed afterwards."""
    store = SqliteStorage.open(path)
    try:
        r = reg()
        store.save_registration(r, "registered", "registered", T0)
        yield store, r
    finally:
        store.close()


def latest_row(store: SqliteStorage, ep: str = "node-1") -> tuple[bytes, str | None]:
    row = store.latest_row(ep)
    assert row is not None
    return row


def test_latest_values_of_reports_and_notifications_only_name_their_sends(tmp_path):
    with registered(tmp_path / "gw.db") as (store, r):
        ids = [store.record_send(r, bytes([i + 1]), bytes([i]) * 16, 112,
                                 REPORT if i % 2 == 0 else DECISION, T0 + i).send_id
               for i in range(5)]
        # the last report and the last decision, no copy of their values
        assert latest_row(store) == (b"\xa0", f"[{ids[3]},{ids[4]}]")
        want = {"/3313/0/5702": StoredValue("v", 0.5, None, T0 + 4),
                "/33000/0/0": StoredValue("v", 7, None, T0 + 4),
                "/33002/0/0": StoredValue("v", 7, None, T0 + 3),
                "/33002/0/2": StoredValue("vs", "ball", None, T0 + 3)}
        assert store.latest("node-1") == want
        # a Send of one path does not cover the report: both stay named
        one = store.record_send(r, b"\x09", b"9" * 16, 112,
                                [Record("/3313/0/5702", "v", -1.5)], T0 + 9).send_id
        assert latest_row(store)[1] == f"[{ids[3]},{ids[4]},{one}]"
        want["/3313/0/5702"] = StoredValue("v", -1.5, None, T0 + 9)
        assert store.latest("node-1") == want
        assert store.node_summaries()[0].last_values == {p: v.value for p, v in want.items()}
    cold = SqliteStorage.open(tmp_path / "gw.db")  # no cached shape: read back from the file
    try:
        assert cold.latest("node-1") == want
        last = cold.record_send(reg(), b"\x0a", b"a" * 16, 112, REPORT, T0 + 10).send_id
        assert latest_row(cold)[1] == f"[{ids[3]},{last}]"
    finally:
        cold.close()


def test_latest_values_fold_back_into_one_map_beyond_the_named_sends(tmp_path, monkeypatch):
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
    store = SqliteStorage.open(tmp_path / "gw.db")
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
