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
