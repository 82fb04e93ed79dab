"""Group commit: Sends and registrations that arrive together share one transaction, each
is acknowledged only once committed, and one that fails inside a batch fails alone."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from aiotkit.gateway.errors import StoreError
from aiotkit.gateway.lwm2m.registry import Registry
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import NotificationLink, Registration, SqliteStorage

T0 = 1_700_000_000.0
RECORDS = [Record("/3303/0/5700", "v", 21.5), Record("/3303/0/5701", "vs", "Cel")]


def reg(endpoint: str, port: int) -> Registration:
    return Registration(endpoint, f"r-{endpoint}", "127.0.0.1", port, 60, "U", "1.1",
                        "</3303/0>", T0, T0)


def register(registry: Registry, count: int) -> list[Registration]:
    return [registry.register(f"node-{i}", lifetime=60, lwm2m_version="1.1", binding="U",
                              object_links="</3303/0>", host="127.0.0.1", port=1000 + i)
            for i in range(count)]


def committed_sends(path) -> int:
    """What another connection sees: only committed rows."""
    with SqliteStorage.open(path, readonly=True) as other:
        return other.count_sends()


def test_a_call_that_fails_inside_a_batch_is_undone_alone(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        a, b = reg("node-a", 1), reg("node-b", 2)
        for r in (a, b):
            store.save_registration(r, "registered", "registered", T0)
        with store.batch():
            store.record_send(a, b"\x01", b"d" * 16, 112, RECORDS, T0)
            with pytest.raises(StoreError, match="kind"):
                store.record_send(b, b"\x02", b"e" * 16, 112,
                                  [*RECORDS, Record("/3/0/0", "vx", 1)], T0)  # type: ignore[arg-type]
            assert committed_sends(tmp_path / "gw.db") == 0  # nothing durable yet
        assert committed_sends(tmp_path / "gw.db") == 1
        assert [r.endpoint for r in store.readings()] == ["node-a", "node-a"]
        (sa, sb) = store.node_summaries()
        assert (sa.sends, sa.readings, sb.sends, sb.readings) == (1, 2, 0, 0)
    finally:
        store.close()


def test_a_batch_that_raises_stores_nothing_and_batches_do_not_nest(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        a = reg("node-a", 1)
        store.save_registration(a, "registered", "registered", T0)
        with pytest.raises(RuntimeError), store.batch():
            store.record_send(a, b"\x01", b"d" * 16, 112, RECORDS, T0)
            raise RuntimeError("power cut")
        assert store.readings() == []
        with store.batch(), pytest.raises(StoreError, match="nest"), store.batch():
            pass
        store.record_send(a, b"\x01", b"d" * 16, 112, RECORDS, T0)  # usable afterwards
        assert len(store.readings()) == 2
    finally:
        store.close()


async def test_sends_arriving_together_share_one_commit_and_resolve_after_it(tmp_path):
    path = tmp_path / "gw.db"
    store = SqliteStorage.open(path)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        registry = Registry(store, clock=lambda: T0)
        regs = register(registry, 20)
        statements.clear()
        seen_when_resolved: list[int] = []

        async def send(r: Registration, token: bytes) -> None:
            await registry.submit_send(r, token=token, content_format=112, payload=token,
                                       records=RECORDS)
            seen_when_resolved.append(committed_sends(path))

        await asyncio.gather(*(send(r, bytes([i + 1])) for i, r in enumerate(regs)))
        assert statements.count("COMMIT") == 1
        assert seen_when_resolved == [20] * 20  # every ack came after the COMMIT
        # the same Send again in one batch: the duplicate is recognised, not stored twice
        results = await asyncio.gather(*(
            registry.submit_send(regs[0], token=b"\x63", content_format=112,
                                 payload=b"same", records=RECORDS) for _ in range(2)))
        assert [r.duplicate for r in results] == [False, True]
        assert committed_sends(path) == 21
    finally:
        store.close()


async def test_a_failing_send_in_a_batch_fails_alone(tmp_path, monkeypatch):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        registry = Registry(store, clock=lambda: T0)
        good, bad = (registry.register(ep, lifetime=60, lwm2m_version="1.1", binding="U",
                                       object_links="</3303/0>", host="127.0.0.1", port=p)
                     for ep, p in (("good", 1), ("bad", 2)))
        real = store.record_send

        def flaky(r, *args, **kwargs):
            if r.endpoint == "bad":
                raise sqlite3.OperationalError("disk I/O error")
            return real(r, *args, **kwargs)

        monkeypatch.setattr(store, "record_send", flaky)
        ok = registry.submit_send(good, token=b"\x01", content_format=112, payload=b"1",
                                  records=RECORDS)
        ko = registry.submit_send(bad, token=b"\x02", content_format=112, payload=b"2",
                                  records=RECORDS)
        assert not (await ok).duplicate
        with pytest.raises(sqlite3.OperationalError):
            await ko
        assert {r.endpoint for r in store.readings()} == {"good"}
        # registrations go through the same commit and come back registered
        again = await registry.submit_register(
            "good", lifetime=60, lwm2m_version="1.1", binding="U", object_links="</3/0>",
            host="127.0.0.1", port=3)
        assert store.by_address("127.0.0.1", 3) == again
    finally:
        store.close()


async def test_notifications_are_recorded_in_the_group_commit_of_their_readings(tmp_path):
    path = tmp_path / "gw.db"
    store = SqliteStorage.open(path)
    dm = store.dm
    commits: list[str] = []
    store._conn.set_trace_callback(commits.append)
    dm._db.set_trace_callback(commits.append)
    try:
        registry = Registry(store, clock=lambda: T0)
        regs = register(registry, 10)
        obs = dm.save_observation("node-0", "/3303/0", {}, T0)
        commits.clear()
        futures = [registry.submit_send(
            r, token=b"", content_format=112, payload=bytes([i]), records=RECORDS,
            notification=NotificationLink(obs, i, 112, T0 + i))
            for i, r in enumerate(regs)]
        # one whose Notification row cannot be written takes its readings with it
        broken = registry.submit_send(
            regs[0], token=b"", content_format=112, payload=b"x", records=RECORDS,
            notification=NotificationLink(obs, 1 << 64, 112, T0))  # no SQLite integer
        results = await asyncio.gather(*futures)
        with pytest.raises(OverflowError):
            await broken
        assert commits.count("COMMIT") == 1  # readings and Notifications: one fsync
        notes = dm.notifications(obs)
        assert notes == [(r.send_id, i, T0 + i) for i, r in enumerate(results)]
        assert committed_sends(path) == 10
    finally:
        store.close()


async def test_a_commit_that_fails_on_the_writer_thread_fails_every_caller(
        tmp_path, monkeypatch):
    path = tmp_path / "gw.db"
    store = SqliteStorage.open(path)
    try:
        registry = Registry(store, clock=lambda: T0)
        [node] = register(registry, 1)
        report = [Record("/3303/0/5700", "v", 1.0)]
        await registry.submit_send(node, token=b"\x01", content_format=112, payload=b"1",
                                   records=report)
        real = store._commit

        def disk_full() -> None:
            store._conn.rollback()
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_commit", disk_full)
        lost = [registry.submit_send(node, token=bytes([i]), content_format=112,
                                     payload=bytes([i]), records=report) for i in (2, 3)]
        for future in lost:
            with pytest.raises(sqlite3.OperationalError, match="full"):
                await future
        assert committed_sends(path) == 1
        monkeypatch.setattr(store, "_commit", real)
        other = [Record("/3/0/9", "v", 87)]
        await registry.submit_send(node, token=b"\x04", content_format=112, payload=b"4",
                                   records=other)
        # the latest values name no Send of the lost batch
        assert {p: v.value for p, v in store.latest("node-0").items()} == {
            "/3303/0/5700": 1.0, "/3/0/9": 87}
    finally:
        store.close()
