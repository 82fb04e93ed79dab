"""Queue mode (``b=UQ``): requests for a sleeping node are stored in SQLite and delivered,
in order, when it next sends an Update; results are recorded and survive a restart.
The OMA ETS INT document has no queue-mode case to name these after.
"""

from __future__ import annotations

import asyncio

import pytest
from aiotkit.gateway.dm import DMError, QueueFull
from fakeclient import FakeClient

QUEUE = "[dm]\nrequest_timeout_s = 2.0\nqueue_awake_s = 10.0\n"


async def test_request_queued_while_asleep_delivered_on_update(
        gateway_config, running_gateway, clock):
    cfg = gateway_config(QUEUE)
    async with running_gateway(cfg, clock=clock) as gw, FakeClient(
            "dev-q", cfg.coap_uri, binding="UQ") as dev:
        await dev.register()
        clock.advance(11)  # past the awake window: the node sleeps
        read = asyncio.create_task(gw.dm.read("dev-q", "/3/0/9"))
        await asyncio.sleep(0)
        [row] = gw.dm.requests("dev-q", open_only=True)
        assert row["state"] == "pending" and row["queued"] and row["op"] == "read"
        assert dev.seen == []  # nothing sent to a sleeping node
        await dev.update()
        res = await read
        assert res.values == {"/3/0/9": 87} and res.request_id == row["id"]
        assert gw.dm.result(row["id"]) == res
        assert gw.dm.request_state(row["id"]) == "done"


async def test_queued_requests_delivered_in_order_after_restart(
        gateway_config, running_gateway, clock):
    cfg = gateway_config(QUEUE)
    async with FakeClient("dev-q", cfg.coap_uri, binding="UQ") as dev:
        async with running_gateway(cfg, clock=clock) as gw:
            await dev.register()
            clock.advance(11)
            write = gw.dm.enqueue("dev-q", "write", "/1/0/1", value=900)
            execute = gw.dm.enqueue("dev-q", "execute", "/3/0/4", args="0")
            missing = gw.dm.enqueue("dev-q", "read", "/3/0/77")
            assert gw.dm.result(write) is None
        assert dev.seen == []
        async with running_gateway(cfg, clock=clock) as gw:
            assert dev.seen == []  # still asleep after the restart
            await dev.update()
            bad = await gw.dm.wait(missing)
            assert bad.code == "4.04"
            assert gw.dm.result(write).code == "2.04"
            assert gw.dm.result(execute).code == "2.04"
            assert [m.code.name for m in dev.seen] == ["PUT", "POST", "GET"]
            assert dev.values[(1, 0, 1)] == 900 and dev.executed == [("/3/0/4", b"0")]
            assert gw.dm.requests("dev-q", open_only=True) == []


async def test_node_asleep_again_keeps_request_for_next_update(
        gateway_config, running_gateway, clock):
    cfg = gateway_config("[dm]\nrequest_timeout_s = 0.3\nqueue_awake_s = 10.0\n")
    async with running_gateway(cfg, clock=clock) as gw, FakeClient(
            "dev-q", cfg.coap_uri, binding="UQ") as dev:
        await dev.register()
        clock.advance(11)
        rid = gw.dm.enqueue("dev-q", "read", "/3/0/0")
        await dev.update()
        dev.sleep()  # the radio is off again before the request arrives
        # no event marks "the gateway gave up": poll its state (bounded by the test timeout)
        while gw.dm.request_state(rid) != "pending" or not dev.seen:
            await asyncio.sleep(0.05)
        assert gw.dm.result(rid) is None
        dev.wake()
        await dev.update()
        assert (await gw.dm.wait(rid)).values == {"/3/0/0": "aiotkit"}
        assert gw.dm.requests("dev-q")[0]["attempts"] == 2


async def test_queue_limits_and_errors(gateway_config, running_gateway, clock):
    cfg = gateway_config(QUEUE + "max_queued = 2\n")
    async with running_gateway(cfg, clock=clock) as gw, FakeClient(
            "dev-q", cfg.coap_uri, binding="UQ") as dev:
        await dev.register()
        clock.advance(11)
        gw.dm.enqueue("dev-q", "read", "/3/0/0")
        second = gw.dm.enqueue("dev-q", "read", "/3/0/1")
        with pytest.raises(QueueFull, match="already has 2"):
            gw.dm.enqueue("dev-q", "read", "/3/0/9")
        with pytest.raises(DMError, match="unknown operation"):
            gw.dm.enqueue("dev-q", "reboot", "/3/0/4")
        waiting = asyncio.create_task(gw.dm.wait(second))
        await dev.update()
        assert (await waiting).values == {"/3/0/1": "fake-node"}
        with pytest.raises(DMError, match="no request"):
            await gw.dm.wait(12345)


def test_finished_requests_are_pruned_after_their_retention_open_ones_kept(tmp_path):
    from aiotkit.gateway.storage import SqliteStorage, dmtables

    storage = SqliteStorage.open(tmp_path / "gw.db", keep_finished_s=100.0,
                                 keep_finished_max=2)
    db = storage.dm
    try:
        t0 = 1_700_000_000.0
        ids = [db.add_request("dev", "read", {"path": f"/3/0/{i}"}, queued=True, now=t0 + i)
               for i in range(6)]
        for i in ids[:4]:
            db.finish(i, "done" if i % 2 else "failed", {"code": "2.05"}, t0 + i)
        assert db.prune(t0 + 50) == 2  # beyond the newest two finished
        assert [r.id for r in db.requests("dev")] == ids[2:]
        assert db.prune(t0 + 103.5) == 1  # older than 100 s
        assert [r.id for r in db.requests("dev")] == ids[3:]
        assert [r.state for r in db.requests("dev", open_only=True)] == ["pending"] * 2
        assert db.prune(t0 + 10_000) == 1 and db.prune(t0 + 10_000) == 0
        assert [r.id for r in db.requests("dev")] == ids[4:]  # open requests stay
    finally:
        storage.close()
    # pruned on open (recover) and every PRUNE_EVERY finishes, with the configured limits
    storage = SqliteStorage.open(tmp_path / "gw.db", keep_finished_s=1.0,
                                 keep_finished_max=1000)
    db = storage.dm
    try:
        db.recover(t0 + 10_000)
        rid = ids[4]
        db.finish(rid, "done", {}, t0)
        for _ in range(dmtables.PRUNE_EVERY - 1):
            db.finish(ids[5], "done", {}, t0 + 20_000)
        assert [r.id for r in db.requests("dev")] == [ids[5]]
    finally:
        storage.close()
