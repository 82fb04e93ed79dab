"""Time on the gateway (issue 16 item 7): registration lifetimes run on the monotonic
clock, so a step of the wall clock neither expires every node nor keeps an expired one
alive; node timestamps far off, or older than what a node sent before, are flagged on
the uplink, never reordered or dropped."""

from __future__ import annotations

import json

import pytest
from aiotkit.gateway.errors import NotFound
from aiotkit.gateway.lwm2m.registry import Registry
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import SqliteStorage

T0 = 1_700_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    s = SqliteStorage.open(tmp_path / "gw.db")
    yield s
    s.close()


def _register(registry: Registry, ep: str, port: int, lifetime: int) -> str:
    return registry.register(ep, lifetime=lifetime, lwm2m_version="1.1", binding="U",
                             object_links="</3/0>", host="127.0.0.1", port=port).reg_id


def test_clock_jump_forward_does_not_expire_every_node(store):
    wall, mono = Clock(T0), Clock(100.0)
    registry = Registry(store, clock=wall, monotonic=mono)
    for i in range(20):
        _register(registry, f"n{i}", 40000 + i, lifetime=60)
    wall.now += HOUR  # NTP steps the wall clock an hour ahead; one second passes
    mono.now += 1
    assert registry.expire_due() == []
    assert registry.sender_endpoint("n7").endpoint == "n7"  # the lazy check agrees
    assert store.count_registered() == 20
    mono.now += 60  # now the lifetime really ran out
    assert [r.endpoint for r in registry.expire_due()] == sorted(f"n{i}" for i in range(20))


def test_clock_jump_backward_does_not_keep_an_expired_node_alive(store):
    wall, mono = Clock(T0), Clock(100.0)
    registry = Registry(store, clock=wall, monotonic=mono)
    _register(registry, "short", 40001, lifetime=30)
    live = _register(registry, "long", 40002, lifetime=3 * 3600)
    wall.now -= HOUR  # the wall clock goes back an hour; 31 s pass
    mono.now += 31
    with pytest.raises(NotFound):  # the lazy check: not served past its lifetime
        registry.sender_endpoint("short")
    assert store.registration("short").state == "offline"  # type: ignore[union-attr]
    assert registry.expire_due() == []  # already expired by the lookup, once
    assert registry.sender_endpoint("long").reg_id == live


def test_update_restarts_the_lifetime_on_the_monotonic_clock(store):
    wall, mono = Clock(T0), Clock(100.0)
    registry = Registry(store, clock=wall, monotonic=mono)
    reg_id = _register(registry, "n", 40001, lifetime=30)
    mono.now += 25
    wall.now -= HOUR
    registry.update(reg_id, host="127.0.0.1", port=40001)
    mono.now += 25  # 50 s after the Register, 25 s after the Update
    assert registry.expire_due() == []
    mono.now += 6
    assert [r.endpoint for r in registry.expire_due()] == ["n"]


def test_restart_gives_a_stored_registration_what_its_wall_times_leave(store):
    wall = Clock(T0)
    _register(Registry(store, clock=wall, monotonic=Clock(0.0)), "a", 40001, lifetime=60)
    _register(Registry(store, clock=wall, monotonic=Clock(0.0)), "gone", 40002, lifetime=60)
    # the gateway restarts 40 s later; "gone" was re-stamped as if lapsed long ago
    wall.now += 40
    mono = Clock(5000.0)  # a new boot: the monotonic clock has another origin
    store.save_registration(
        _replace_updated(store.registration("gone"), T0 - 2 * HOUR), "updated", "updated",
        wall.now)
    registry = Registry(store, clock=wall, monotonic=mono)
    assert [r.endpoint for r in registry.expire_due()] == ["gone"]  # lapsed while down
    assert registry.expires_in(store.registration("a")) == pytest.approx(20.0)  # type: ignore[arg-type]
    wall.now -= 10 * HOUR  # a wall step after the restart changes nothing
    mono.now += 19
    assert registry.expire_due() == []
    mono.now += 2
    assert [r.endpoint for r in registry.expire_due()] == ["a"]


def test_restart_after_the_wall_clock_went_back_caps_the_lifetime(store):
    wall = Clock(T0)
    _register(Registry(store, clock=wall, monotonic=Clock(0.0)), "a", 40001, lifetime=60)
    wall.now -= HOUR  # down, and the clock is an hour behind when it comes back
    mono = Clock(0.0)
    registry = Registry(store, clock=wall, monotonic=mono)
    assert registry.expire_due() == []
    assert registry.expires_in(store.registration("a")) == pytest.approx(60.0)  # type: ignore[arg-type]
    mono.now += 61
    assert [r.endpoint for r in registry.expire_due()] == ["a"]


def _replace_updated(reg, updated_at):
    from dataclasses import replace

    return replace(reg, updated_at=updated_at, registered_at=updated_at)


# -- node timestamps ---------------------------------------------------------------------


@pytest.fixture
def flagged_store(tmp_path):
    from aiotkit.gateway.ops.timecheck import TimeCheck
    from aiotkit.gateway.uplink.mqtt import TopicScheme

    s = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
    s.time_check = TimeCheck(max_future_s=300, max_past_s=86400, seed=s.latest)
    yield s
    s.close()


def _send(store, reg, n: int, records, now: float) -> None:
    store.record_send(reg, f"t{n}".encode(), bytes([n]) * 16, 110, records, now)


def _published(store) -> list[dict]:
    return [json.loads(r.payload) for r in store.outbox_pending(0, 1000)
            if b'"path"' in r.payload]


def test_late_data_is_flagged_and_kept_in_arrival_order(flagged_store):
    store = flagged_store
    registry = Registry(store, clock=Clock(T0), monotonic=Clock(0.0))
    _register(registry, "n", 40001, lifetime=600)
    reg = store.registration("n")
    _send(store, reg, 1, [Record("/3303/0/5700", "v", 20.0, T0 - 10)], T0)
    # a logged report re-sent after an outage: older than the one stored before
    _send(store, reg, 2, [Record("/3303/0/5700", "v", 19.0, T0 - 60),
                          Record("/3303/0/5701", "vs", "Cel", T0 - 60)], T0 + 1)
    _send(store, reg, 3, [Record("/3303/0/5700", "v", 21.0, T0 - 5)], T0 + 2)
    got = [(p["v"], p.get("late", False)) for p in _published(store)
           if p["path"] == "/3303/0/5700"]
    assert got == [(20.0, False), (19.0, True), (21.0, False)]  # arrival order, flagged
    other = [p for p in _published(store) if p["path"] == "/3303/0/5701"]
    assert "late" not in other[0]  # another path has its own latest time
    assert store.time_check.late == 1


def test_times_far_in_the_future_or_past_are_flagged_tbad_and_do_not_poison_late(
        flagged_store):
    store = flagged_store
    registry = Registry(store, clock=Clock(T0), monotonic=Clock(0.0))
    _register(registry, "n", 40001, lifetime=600)
    reg = store.registration("n")
    path = "/3303/0/5700"
    _send(store, reg, 1, [Record(path, "v", 1.0, T0 + 10 * 86400)], T0)  # clock far ahead
    _send(store, reg, 2, [Record(path, "v", 2.0, 1_000_000_000.0)], T0)  # 2001
    _send(store, reg, 3, [Record(path, "v", 3.0, -5.0)], T0)  # relative: 5 s ago, fine
    _send(store, reg, 4, [Record(path, "v", 4.0, None)], T0)  # no time: not checked
    got = [(p["v"], p.get("tbad", False), p.get("late", False)) for p in _published(store)]
    assert got == [(1.0, True, False), (2.0, True, False), (3.0, False, False),
                   (4.0, False, False)]
    assert store.time_check.tbad == 2


def test_late_is_judged_against_the_stored_latest_after_a_restart(tmp_path):
    from aiotkit.gateway.ops.timecheck import TimeCheck
    from aiotkit.gateway.uplink.mqtt import TopicScheme

    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
    registry = Registry(store, clock=Clock(T0), monotonic=Clock(0.0))
    _register(registry, "n", 40001, lifetime=600)
    _send(store, store.registration("n"), 1, [Record("/1/0/1", "v", 1.0, T0 - 10)], T0)
    store.close()
    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
    try:
        store.time_check = TimeCheck(seed=store.latest)
        _send(store, store.registration("n"), 2, [Record("/1/0/1", "v", 2.0, T0 - 20)],
              T0 + 5)
        assert [p.get("late", False) for p in _published(store)][-1] is True
    finally:
        store.close()


def test_device_management_judges_a_node_live_and_awake_on_the_monotonic_clock(store):
    # device management compared expires_at with the wall clock: after a +1 h step it
    # called every node offline that the registry kept live
    from aiotkit.gateway.config import DMConfig
    from aiotkit.gateway.dm import DeviceManagement
    from aiotkit.gateway.dm.errors import NotRegistered

    wall, mono = Clock(T0), Clock(100.0)
    registry = Registry(store, clock=wall, monotonic=mono)
    dm = DeviceManagement(store, registry, DMConfig(queue_awake_s=93.0), clock=wall)
    _register(registry, "n", 40001, lifetime=60)
    wall.now += HOUR
    mono.now += 1
    reg = dm._registration("n")
    assert dm._live_registration("n") is not None and dm._awake(reg)
    wall.now -= 2 * HOUR  # back an hour behind the start; 100 s pass
    mono.now += 100
    assert dm._live_registration("n") is None and not dm._awake(reg)
    with pytest.raises(NotRegistered, match="offline"):
        dm._registration("n")


def test_timestamps_run_on_the_monotonic_clock_until_the_wall_clock_is_synchronized():
    # a gateway booted before NTP stamped its data with a wall clock that then jumped
    from aiotkit.gateway.ops.clock import GatewayClock, kernel_clock_synchronized

    wall, mono, synced = Clock(T0), Clock(100.0), [False]
    clock = GatewayClock(check_s=10.0, probe=lambda: synced[0], wall=wall, monotonic=mono)
    assert not clock.synchronized and clock() == T0
    wall.now += HOUR  # NTP is not there yet: something steps the clock
    mono.now += 5
    assert clock() == T0 + 5  # the step is not followed
    wall.now -= 2 * HOUR
    mono.now += 1
    assert clock() == T0 + 6  # nor a step back: never reordered
    synced[0] = True
    mono.now += 4  # the next check: 10 s after the start
    assert clock() == wall.now and clock.synchronized  # once synchronized: the wall clock
    wall.now += 7
    assert clock() == wall.now
    trusted = GatewayClock(probe=lambda: None, wall=wall, monotonic=mono)
    assert trusted.synchronized and trusted() == wall.now  # unknown: trusted as it is
    assert kernel_clock_synchronized() in (True, False, None)
