"""Several gateways, one broker: client ids, topics and retained statuses never collide,
and a node moving from one gateway to the other is told apart by the consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from aiocoap.numbers.codes import Code
from aiotkit.gateway.config import GatewayConfig, load_config
from aiotkit.gateway.uplink.consumer_example import Dedup, Key, consume
from conftest import FakeClock
from plugins.services import free_port
from uplinkkit import ask

SENML_CBOR = 112


def config(tmp_path: Path, gw_id: str, broker: Any) -> GatewayConfig:
    """A NoSec gateway ``gw_id`` in a folder of its own, forwarding to ``broker`` with
    the default client id and topic prefix (both derived from the id)."""
    d = tmp_path / gw_id
    d.mkdir()
    (d / "gateway.toml").write_text(
        f'[gateway]\nid = "{gw_id}"\ndb = "gateway.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n"
        f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
        "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n")
    return load_config(d / "gateway.toml")


@contextlib.asynccontextmanager
async def consumer(broker: Any, topics: list[str]) -> AsyncIterator[
        tuple[list[tuple[Key, aiomqtt.Message]], asyncio.Condition, Dedup]]:
    """The consumer example running on ``topics``: (first deliveries, a condition
    notified on each, its Dedup)."""
    got: list[tuple[Key, aiomqtt.Message]] = []
    cond = asyncio.Condition()
    dedup = Dedup()

    def handle(key: Key, message: aiomqtt.Message) -> None:
        got.append((key, message))

        async def tell() -> None:
            async with cond:
                cond.notify_all()
        asyncio.get_running_loop().create_task(tell())

    async with aiomqtt.Client(broker.host, broker.port, identifier="consumer",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        task = asyncio.create_task(consume(client, handle, dedup))
        try:
            yield got, cond, dedup
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(cond: asyncio.Condition, pred: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout), cond:
        await cond.wait_for(pred)


async def test_two_gateways_share_a_broker_and_a_node_moving_between_them_stays_apart(
        tmp_path, mosquitto, running_gateway, coap_peer):
    cfg_a, cfg_b = config(tmp_path, "gw-a", mosquitto), config(tmp_path, "gw-b", mosquitto)
    assert (cfg_a.mqtt.client_id, cfg_b.mqtt.client_id) == ("aiot-gw-a", "aiot-gw-b")
    clock_a, clock_b = FakeClock(), FakeClock()
    async with consumer(mosquitto, ["aiot/+/+/data/#", "aiot/+/+/status"]) as (
            got, cond, dedup), \
            running_gateway(cfg_a, clock=clock_a) as gw_a, \
            running_gateway(cfg_b, clock=clock_b) as gw_b, coap_peer() as node:
        assert gw_a.uplink is not None and gw_b.uplink is not None
        await gw_a.uplink.wait_connected()
        await gw_b.uplink.wait_connected()

        async def reports(cfg: GatewayConfig, values: range) -> None:
            await ask(node, Code.POST, f"{cfg.coap_uri}/rd?ep=node-m&lt=60", b"</3/0>", 40)
            for v in values:
                pack = cbor2.dumps([{0: "/3/0/9", 2: v}])
                resp = await ask(node, Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)
                assert resp.code == Code.CHANGED

        await reports(cfg_a, range(3))  # the node starts on gateway A
        await reports(cfg_b, range(3, 6))  # and moves to gateway B (same address even)
        clock_a.advance(61)  # A sees it lapse
        assert [r.endpoint for r in gw_a.registry.expire_due()] == ["node-m"]
        await wait_until(cond, lambda: len(got) == 6 + 3)
        await gw_a.uplink.wait_idle()
        await gw_b.uplink.wait_idle()
        # both sessions stayed up all along: a shared client id would have had the
        # broker close one for the other, again and again
        assert gw_a.uplink.connected and gw_b.uplink.connected

    data = [(k, m) for k, m in got if "/data/" in str(m.topic)]
    by_gw = {gw: [json.loads(m.payload)["v"] for k, m in data if k[0] == gw]
             for gw in ("gw-a", "gw-b")}
    assert by_gw == {"gw-a": [0, 1, 2], "gw-b": [3, 4, 5]}
    assert all(str(m.topic).startswith(f"aiot/{k[0]}/node-m/data/") for k, m in data)
    # each gateway numbers its readings from 1: the same reading ids come from both,
    # the (gw, msg-id) keys keep them apart
    ids = {gw: [k[1] for k, _ in data if k[0] == gw] for gw in by_gw}
    assert ids["gw-a"] == ids["gw-b"]
    assert dedup.repeats == 0 and len({k for k, _ in data}) == 6

    # retained: each gateway's view of the node, and each gateway's own state
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="late",
                              protocol=aiomqtt.ProtocolVersion.V5) as late:
        await late.subscribe("aiot/+/node-m/status", qos=1)
        await late.subscribe("aiot/+/status", qos=1)
        seen: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(10):
            async for m in late.messages:
                assert m.retain
                seen[str(m.topic)] = json.loads(m.payload)
                if len(seen) == 4:
                    break
    assert seen["aiot/gw-a/node-m/status"]["state"] == "offline"
    assert seen["aiot/gw-b/node-m/status"]["state"] == "registered"
    # both shut down cleanly: each says so under its own topic
    assert {seen[f"aiot/{g}/status"]["state"] for g in ("gw-a", "gw-b")} == {"offline"}
    assert seen["aiot/gw-a/status"]["gw"] == "gw-a"
