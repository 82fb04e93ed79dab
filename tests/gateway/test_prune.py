"""Endpoints that de-registered or expired are forgotten after ``[registry]
prune_after_s`` (``Registry.prune_ended`` over ``Storage.prune_ended``), in small
batches; live ones, and ended ones still within the time, stay."""

from __future__ import annotations

import pytest
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.registry import Registry
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import SqliteStorage

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
