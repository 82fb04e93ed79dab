"""Endpoints that de-registered or expired are forgotten after ``[registry]
prune_after_s`` (``Registry.prune_ended`` over ``Storage.prune_ended``), in small
batches; live ones, and ended ones still within the time, stay. The history (Sends,
readings, Notifications, events) goes after ``[gateway] history_s`` or beyond
``history_max_sends`` (``Storage.prune_history``); latest values stay."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.registry import Registry
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import Registration, SqliteStorage
from aiotkit.gateway.storage.api import NotificationLink
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = 1_700_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _register(registry: Registry, ep: str, port: int, lifetime: int = 60) -> str:
    reg = registry.register(ep, lifetime=lifetime, lwm2m_version="1.1", binding="U",
                            object_links="</3/0>", host="127.0.0.1", port=port)
    return reg.reg_id


def test_endpoints_that_ended_long_ago_are_listed_for_ever_unless_pruned(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    clock = Clock()
    try:
        registry = Registry(store, clock=clock)
        gone = _register(registry, "gone", 40001)
        _register(registry, "expired", 40002, lifetime=60)
        _register(registry, "live", 40003, lifetime=30 * 86400)
        store.record_send(store.registration("gone"), b"t1", b"d" * 16, 110,  # type: ignore[arg-type]
                          [Record("/3/0/9", "v", 80)], clock())
        registry.deregister(gone)
        clock.now += 120
        assert [r.endpoint for r in registry.expire_due()] == ["expired"]
        clock.now += 7 * DAY - 200  # not 7 days yet: all kept
        assert registry.prune_ended(7 * DAY) == []
        clock.now += 200
        assert registry.prune_ended(0) == []  # 0: never
        assert sorted(registry.prune_ended(7 * DAY)) == ["expired", "gone"]
        assert [s.endpoint for s in store.node_summaries()] == ["live"]
        assert store.registration("gone") is None and store.node_summary("gone") is None
        assert len(store.sends("gone")) == 1  # its history stays
        # an endpoint that comes back after being pruned registers afresh
        _register(registry, "gone", 40004)
        assert store.registration("gone").state == "registered"  # type: ignore[union-attr]
    finally:
        store.close()


def test_pruning_a_large_fleet_goes_in_small_batches(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    clock = Clock()
    try:
        registry = Registry(store, clock=clock)
        ids = [_register(registry, f"n{i}", 41000 + i) for i in range(25)]
        for reg_id in ids:
            registry.deregister(reg_id)
        clock.now += 2 * DAY
        batches = []
        after = 0
        while True:
            pruned, after = store.prune_ended(clock() - DAY, after=after, scan=10)
            batches.append(len(pruned))
            if after == 0:
                break
        assert batches == [10, 10, 5]
        assert store.node_summaries() == []
    finally:
        store.close()


def test_prune_after_s_is_a_registry_key_and_not_negative(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text("[registry]\n")
    assert load_config(conf).registry.prune_after_s == 7 * DAY
    conf.write_text("[registry]\nprune_after_s = 0\n")
    assert load_config(conf).registry.prune_after_s == 0.0
    conf.write_text("[registry]\nprune_after_s = -1\n")
    with pytest.raises(ConfigError, match="registry.prune_after_s: must not be negative"):
        load_config(conf)


# -- the history: Sends, readings, Notifications, events ([gateway] history_s) ----------

def _send(store: SqliteStorage, ep: str, t: float, paths: dict[str, int]) -> int:
    reg = store.registration(ep)
    assert reg is not None
    return store.record_send(reg, b"", b"d" * 16, 110,
                             [Record(p, "v", v) for p, v in paths.items()], t).send_id


def test_history_older_than_history_s_goes_and_latest_values_stay(tmp_path):
    # Before, Sends, their readings, Notifications and events were kept for ever: a
    # gateway taking 1,000 Sends a second filled its disk in days
    store = SqliteStorage.open(tmp_path / "gw.db")
    clock = Clock()
    try:
        registry = Registry(store, clock=clock)
        for i, ep in enumerate(("quiet", "busy")):
            _register(registry, ep, 42000 + i)
        # "quiet" sent twice, long ago: its latest row names those two Sends
        _send(store, "quiet", T0, {"/3/0/9": 1, "/3/0/7": 5})
        _send(store, "quiet", T0 + 1, {"/3/0/9": 2})
        notified = []
        for k in range(20):
            reg = store.registration("busy")
            assert reg is not None  # half of them Notifications of observation 7
            sid = store.record_send(reg, b"", b"d" * 16, 110, [Record("/3/0/9", "v", k)],
                                    T0 + 100 + k * DAY / 4,
                                    NotificationLink(7, k, 110, T0) if k % 2 else None
                                    ).send_id
            notified += [sid] if k % 2 else []
        quiet, busy = store.latest("quiet"), store.latest("busy")
        assert store.latest_row("quiet")[1] is not None  # type: ignore[index]
        old = [s.id for s in store.sends() if s.received_at < T0 + 3 * DAY]
        events = len(store.events(limit=1000))
        assert store.prune_history(T0 + 3 * DAY) == len(old)
        left = store.sends()
        assert [s.id for s in left if s.received_at < T0 + 3 * DAY] == []
        assert len(left) == 22 - len(old)
        assert {r.send_id for r in store.readings()} == {s.id for s in left}
        # latest values are whole: "quiet"'s were folded before its Sends went
        assert store.latest("quiet") == quiet and store.latest("busy") == busy
        assert store.latest_row("quiet")[1] is None  # type: ignore[index]
        assert len(store.events(limit=1000)) < events  # the registrations' events went
        kept = {s.id for s in left}
        assert [n[0] for n in store.dm.notifications(7)] == [i for i in notified if i in kept]
        assert len(store.dm.notifications(7)) < len(notified)
        # nothing left to do; the next Send gets an id never given before
        assert store.prune_history(T0 + 3 * DAY) == 0
        assert _send(store, "quiet", T0 + 6 * DAY, {"/3/0/9": 3}) > left[-1].id
        assert store.latest("quiet")["/3/0/9"].value == 3
        assert store.latest("quiet")["/3/0/7"].value == 5
    finally:
        store.close()


def test_history_beyond_history_max_sends_goes_oldest_first_in_chunks(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    clock = Clock()
    try:
        _register(Registry(store, clock=clock), "n", 42100)
        ids = [_send(store, "n", T0 + i, {f"/3/0/{i % 7}": i}) for i in range(50)]
        latest = store.latest("n")
        counts = []
        while n := store.prune_history(0.0, 12, chunk=10):
            counts.append(n)
        assert counts == [10, 10, 10, 8]  # 38 went, in chunks: the newest 12 stay
        assert [s.id for s in store.sends()] == ids[-12:]
        assert store.latest("n") == latest
    finally:
        store.close()


def test_the_newest_send_stays_so_ids_are_never_given_again(tmp_path):
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        _register(Registry(store, clock=Clock()), "n", 42200)
        ids = [_send(store, "n", T0 + i, {"/3/0/9": i}) for i in range(3)]
        assert store.prune_history(T0 + 10 * DAY) == 2  # all old: all but the newest
        assert [s.id for s in store.sends()] == ids[-1:]
        assert _send(store, "n", T0 + 11 * DAY, {"/3/0/9": 9}) == ids[-1] + 1
    finally:
        store.close()


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.dictionaries(st.sampled_from([f"/3/0/{i}" for i in range(6)]),
                                          st.integers(0, 99), min_size=1, max_size=4),
                          st.booleans()), max_size=40))
@settings(max_examples=40, deadline=None)
def test_pruning_at_any_point_keeps_every_endpoints_latest_values(tmp_path_factory, steps):
    store = SqliteStorage.open(tmp_path_factory.mktemp("h") / "gw.db")
    try:
        registry = Registry(store, clock=Clock())
        for i, ep in enumerate("abc"):
            _register(registry, ep, 42300 + i)
        model: dict[str, dict[str, int]] = {ep: {} for ep in "abc"}
        for k, (ep, paths, prune) in enumerate(steps):
            _send(store, ep, T0 + k, paths)
            model[ep].update(paths)
            if prune:  # everything but the newest Send
                store.prune_history(T0 + k + 1)
            for e in "abc":
                assert {p: v.value for p, v in store.latest(e).items()} == model[e]
    finally:
        store.close()


def test_history_s_must_cover_the_window_a_resent_report_is_recognised_in(tmp_path):
    from aiotkit.gateway import config
    from aiotkit.gateway.storage import sqlite

    assert config.REPORT_WINDOW_S == sqlite.REPORT_WINDOW_S
    path = tmp_path / "gw.toml"
    for bad, key in (("history_s = 3600.0", "history_s"),
                     ("history_max_sends = 100", "history_max_sends")):
        path.write_text(f"[gateway]\n{bad}\n")
        with pytest.raises(ConfigError, match=f"gateway.{key}"):
            load_config(path)
    path.write_text("[gateway]\nhistory_s = 0.0\nhistory_max_sends = 0\n")
    cfg = load_config(path).gateway
    assert (cfg.history_s, cfg.history_max_sends) == (0.0, 0)


async def test_the_running_gateway_keeps_its_history_within_history_s(
        gateway_config, running_gateway):
    cfg = gateway_config()  # the defaults: 30 days
    now = time.time()
    store = SqliteStorage.open(cfg.gateway.db)
    try:
        store.save_registration(Registration("n", "r", "127.0.0.1", 5683, 60, "U", "1.1",
                                             "</3/0>", now, now), "registered", "registered",
                                now)
        for k in range(30):  # one a day, the oldest 39.5 days ago
            _send(store, "n", now - (39.5 - k) * DAY, {"/3/0/9": k})
    finally:
        store.close()
    async with running_gateway(cfg) as gw:
        async with asyncio.timeout(10):
            while len(gw.store.sends()) > 20:  # pruned at start, then every minute
                await asyncio.sleep(0.01)
        assert [s.received_at for s in gw.store.sends()] == [
            now - (39.5 - k) * DAY for k in range(10, 30)]
        assert gw.store.latest("n")["/3/0/9"].value == 29


def test_sends_stamped_before_the_clock_was_set_are_not_taken_for_old(tmp_path):
    # A gateway without an RTC stamps in 1970 until NTP sets its clock: without
    # young_after, its first prune after that deleted what it had just received
    store = SqliteStorage.open(tmp_path / "gw.db")
    try:
        _register(Registry(store, clock=Clock()), "n", 42400)
        old = _send(store, "n", T0 - 90 * DAY, {"/3/0/9": 0})  # before this run
        first = store.last_send_id()
        ids = [_send(store, "n", 86400.0 * (1 + k), {"/3/0/9": k}) for k in range(5)]
        assert store.prune_history(T0 - 30 * DAY, young_after=first) == 1
        assert [s.id for s in store.sends()] == ids and old not in ids
        assert store.prune_history(T0 - 30 * DAY) == 4  # once this run is old enough
    finally:
        store.close()
