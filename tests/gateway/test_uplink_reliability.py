"""The uplink's reliability against a real Mosquitto (issue 16): a ten-minute outage
(simulated time) under 50 nodes, ``kill -9`` of the gateway daemon mid-ingest, the
outbox budget reached, and a slow, lossy link (memory stays bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import cbor2
import paho.mqtt.client as paho
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.config import MqttConfig
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import Registration, SqliteStorage
from aiotkit.gateway.storage.api import OutboxMessage
from aiotkit.gateway.uplink.consumer_example import Dedup
from aiotkit.gateway.uplink.mqtt import TopicScheme, Uplink
from aiotkit.tools.tcpshim import TcpShim
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from plugins.services import Mosquitto
from uplinkkit import ask, mqtt_section, persistent_broker

SENML_CBOR = 112
T0 = 1_700_000_000.0


class Consumer:
    """An id-honouring consumer (the consumer example's ``Dedup``): a paho MQTT 5 client
    in its own thread with a persistent session, so it misses nothing while the broker
    (persistent too) restarts. ``first``: first deliveries, in arrival order, as
    (topic, payload, key)."""

    def __init__(self, broker: Any, topic: str, name: str = "aiot-test-consumer") -> None:
        self.broker, self.topic = broker, topic
        self.dedup = Dedup()
        self.first: list[tuple[str, dict[str, Any], tuple[str, str]]] = []
        self.unkeyed = 0
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.subscribed = threading.Event()  # the broker has the subscription
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        with self._cond:
            if "gw" not in props or "msg-id" not in props:
                self.unkeyed += 1
            else:
                key = (props["gw"], props["msg-id"])
                if self.dedup.first(key):
                    self.first.append((msg.topic, json.loads(msg.payload), key))
            self._cond.notify_all()

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(self.broker.host, self.broker.port, keepalive=5,
                            clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()

    def wait_for(self, done: Callable[[list[Any]], bool], timeout: float = 60.0) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: done(self.first), timeout), \
                f"consumer has {len(self.first)} messages"
            return list(self.first)


@contextlib.asynccontextmanager
async def consuming(broker: Any, topic: str) -> AsyncIterator[Consumer]:
    c = Consumer(broker, topic)
    await asyncio.to_thread(c.start)
    assert await asyncio.to_thread(c.subscribed.wait, 30), "no SUBACK"
    try:
        yield c
    finally:
        await asyncio.to_thread(c.stop)


@contextlib.asynccontextmanager
async def peers(n: int) -> AsyncIterator[list[aiocoap.Context]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
            stack.push_async_callback(ctx.shutdown)
            out.append(ctx)
        yield out


def in_order_per_node(first: list[tuple[str, dict[str, Any], tuple[str, str]]]) -> None:
    by_ep: dict[str, list[int]] = {}
    for _, p, _ in first:
        by_ep.setdefault(p["ep"], []).append(p["id"])
    for ep, ids in by_ep.items():
        assert ids == sorted(ids), ep


@pytest.mark.timeout_s(180)
async def test_broker_down_ten_minutes_of_simulated_time_under_50_nodes_loses_nothing(
        tmp_path, gateway_config, running_gateway, clock):
    broker = persistent_broker(tmp_path)
    await asyncio.to_thread(broker.start)
    nodes = 50
    try:
        async with consuming(broker, "aiot/test/+/data/#") as consumer:
            cfg = gateway_config(mqtt_section(broker, "batch = 50\n"))
            async with running_gateway(cfg, clock=clock) as gw, peers(nodes) as ctxs:
                assert gw.uplink is not None
                await gw.uplink.wait_connected()
                for i, ctx in enumerate(ctxs):
                    resp = await ask(ctx, Code.POST, f"{cfg.coap_uri}/rd?ep=n{i:02d}&lt=86400",
                                     b"</3/0>", 40)
                    assert resp.code == Code.CREATED

                async def round_(r: int) -> None:
                    async def one(ctx: aiocoap.Context) -> None:
                        pack = cbor2.dumps([{0: "/3/0/9", 2: r}])
                        resp = await ask(ctx, Code.POST, f"{cfg.coap_uri}/dp", pack,
                                         SENML_CBOR)
                        assert resp.code == Code.CHANGED
                    await asyncio.gather(*(one(c) for c in ctxs))

                await round_(0)
                await round_(1)  # publishes are likely in flight as the broker goes:
                await asyncio.to_thread(broker.stop)
                for r in range(2, 62):  # ten minutes, a report from each node every 10 s
                    clock.advance(10)
                    await round_(r)
                assert len(gw.store.readings()) == 62 * nodes
                assert gw.store.outbox_counts()[0] > 0
                await asyncio.to_thread(broker.start)  # and it comes back
                stored = {r.id for r in gw.store.readings()}
                got = await asyncio.to_thread(
                    consumer.wait_for, lambda f: len(f) >= len(stored))
                await gw.uplink.wait_idle()
        assert {p["id"] for _, p, _ in got} == stored  # every message, none twice
        assert len(got) == len(stored) and consumer.unkeyed == 0
        in_order_per_node(got)  # first deliveries in order per node
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.mark.timeout_s(180)
async def test_kill_9_of_the_gateway_mid_ingest_three_times_loses_no_acknowledged_message(
        tmp_path, mosquitto, gateway_factory, processes):
    # NoSec keeps the node simple (aiocoap as the node); what is tested is the store,
    # the outbox and the uplink across SIGKILL, which OSCORE does not change
    gw = gateway_factory(mqtt=mosquitto, security="nosec",
                         extra="reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n")
    acked: set[tuple[str, int]] = set()
    kills = 3
    async with consuming(mosquitto, "aiot/test/+/data/#") as consumer:
        await asyncio.to_thread(gw.start, processes)
        async with peers(5) as ctxs:
            eps = [f"k{i}" for i in range(len(ctxs))]
            for ep, ctx in zip(eps, ctxs, strict=True):
                resp = await ask(ctx, Code.POST, f"{gw.uri}/rd?ep={ep}&lt=86400", b"</3/0>",
                                 40)
                assert resp.code == Code.CREATED
            stop = asyncio.Event()

            async def node(ep: str, ctx: aiocoap.Context) -> None:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    pack = cbor2.dumps([{0: "/3/0/9", 2: seq}])
                    try:
                        async with asyncio.timeout(1.0):
                            resp = await ask(ctx, Code.POST, f"{gw.uri}/dp", pack, SENML_CBOR)
                    except (TimeoutError, aiocoap.error.Error):
                        await asyncio.sleep(0.05)  # the gateway is down: a node's back-off
                        continue
                    if resp.code == Code.CHANGED:
                        acked.add((ep, seq))

            async def killer() -> None:
                for k in range(kills):
                    target = len(acked) + 150
                    while len(acked) < target:  # mid-ingest: the nodes send all along
                        await asyncio.sleep(0.01)
                    assert gw.proc is not None
                    gw.proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(gw.proc.proc.wait, 10)
                    await asyncio.to_thread(gw.start, processes)
                target = len(acked) + 100
                while len(acked) < target:
                    await asyncio.sleep(0.01)
                stop.set()

            await asyncio.gather(killer(), *(node(ep, c) for ep, c in zip(eps, ctxs,
                                                                         strict=True)))
        got = await asyncio.to_thread(
            consumer.wait_for,
            lambda f: acked <= {(p["ep"], p["v"]) for _, p, _ in f}, 60.0)
    # exactly once: no acknowledged report twice under two ids (stored twice)
    values = [(p["ep"], p["v"]) for _, p, _ in got]
    assert len(values) == len(set(values))
    assert acked <= set(values)
    assert consumer.unkeyed == 0


async def test_outbox_budget_reached_drops_by_policy_counts_add_up_and_forwarding_goes_on(
        tmp_path, gateway_config, running_gateway):
    # The consumer's session is kept by the broker while it is down, so it has every
    # message the uplink publishes once the broker is back. Before, the consumer
    # subscribed after the broker started: an uplink that connected first published
    # part of the backlog to nobody
    broker = persistent_broker(tmp_path)
    await asyncio.to_thread(broker.start)
    cfg = gateway_config(mqtt_section(broker, "outbox_max_rows = 100\nbatch = 16\n"))
    nodes, rounds, alerts = 5, 60, 7
    async with consuming(broker, "aiot/test/#") as consumer:
        await asyncio.to_thread(broker.stop)  # down while the gateway fills its outbox
        await _budget_reached(cfg, running_gateway, broker, consumer, nodes, rounds, alerts)


async def _budget_reached(cfg: Any, running_gateway: Any, broker: Mosquitto,
                          consumer: Consumer, nodes: int, rounds: int, alerts: int) -> None:
    async with running_gateway(cfg) as gw, peers(nodes) as ctxs:
        assert gw.uplink is not None
        for i, ctx in enumerate(ctxs):
            await ask(ctx, Code.POST, f"{cfg.coap_uri}/rd?ep=b{i}&lt=86400", b"</3/0>", 40)
        for r in range(rounds):
            for ctx in ctxs:
                pack = cbor2.dumps([{0: "/3/0/9", 2: r}])
                resp = await ask(ctx, Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)
                assert resp.code == Code.CHANGED  # the gateway keeps taking data
            if r % 10 == 0 and r // 10 < alerts:
                gw.store.outbox_add([OutboxMessage(f"b0/alert/{r}", b"{}", kind="alert")],
                                    T0)
        produced = nodes + nodes * rounds + min(alerts, rounds // 10)
        drops = gw.store.outbox_drops()
        assert set(drops) == {"budget_telemetry"}  # the policy: telemetry first
        pending = gw.store.outbox_counts()[0]
        assert pending == 100
        await asyncio.to_thread(broker.start)
        try:
            await gw.uplink.wait_connected()
            gw.uplink.kick()
            got = await asyncio.to_thread(consumer.wait_for, lambda f: len(f) >= pending)
            await gw.uplink.wait_idle()
            # published + dropped + pending == produced
            assert len(got) + sum(drops.values()) + gw.store.outbox_counts()[0] == produced
            kinds = [t.split("/")[3] for t, _, _ in got]
            assert kinds.count("alert") == min(alerts, rounds // 10)  # never dropped
            assert kinds.count("status") == nodes
            # the oldest telemetry went: what was delivered is the newest
            ids = sorted(p["id"] for t, p, _ in got if "/data/" in t)
            newest = sorted(r.id for r in gw.store.readings())[-len(ids):]
            assert ids == newest
            # and forwarding goes on
            pack = cbor2.dumps([{0: "/3/0/9", 2: 999}])
            await ask(ctxs[0], Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)
            more = await asyncio.to_thread(consumer.wait_for, lambda f: len(f) > len(got))
            assert more[-1][1]["v"] == 999
        finally:
            await asyncio.to_thread(broker.stop)


@pytest.mark.timeout_s(120)
async def test_a_slow_lossy_link_to_the_broker_keeps_memory_bounded(tmp_path, mosquitto):
    backlog, batch = 3000, 20
    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/test"))
    store.save_registration(Registration("s", "r", "127.0.0.1", 5683, 60, "U", "1.1",
                                         "</3/0>", T0, T0), "registered", "registered", T0)
    reg = store.registration("s")
    assert reg is not None
    with store.batch():
        for i in range(backlog):
            store.record_send(reg, i.to_bytes(4, "big"), bytes(16), SENML_CBOR,
                              [Record("/3/0/9", "v", i)], T0 + i)
    # 20 ms each way, and one chunk in 300 cuts the connection
    shim = TcpShim(mosquitto.host, mosquitto.port, delay_s=0.02, cut=1 / 300,
                   rng=random.Random(7).random)
    await shim.start()
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=shim.port, topic_prefix="aiot/test",
                     client_id="aiot-slow", batch=batch, reconnect_min_s=0.05,
                     reconnect_max_s=0.2)
    uplink = Uplink(cfg, store, gateway_id="slow")
    seen = {"in_flight": 0, "tasks": 0, "queued": 0}
    baseline = len(asyncio.all_tasks())

    def sample() -> None:  # on every delivery: what the uplink holds right then
        client = uplink._client_now
        queued = len(client._client._out_packet) if client is not None else 0
        for k, v in (("in_flight", uplink.in_flight), ("tasks", len(asyncio.all_tasks())),
                     ("queued", queued)):
            seen[k] = max(seen[k], v)

    loop = asyncio.get_running_loop()
    consumer = Consumer(mosquitto, "aiot/test/+/data/#", "aiot-slow-consumer")
    inner = consumer._on_message

    def on_message(*a: Any) -> None:
        inner(*a)
        loop.call_soon_threadsafe(sample)

    consumer.client.on_message = on_message
    await asyncio.to_thread(consumer.start)
    try:
        await uplink.start()
        got = await asyncio.to_thread(consumer.wait_for, lambda f: len(f) >= backlog, 120.0)
        await uplink.wait_idle()
    finally:
        await uplink.shutdown()
        await shim.close()
        await asyncio.to_thread(consumer.stop)
        store.close()
    assert len(got) == backlog
    assert shim.cuts >= 1  # the link did fail, and the uplink went on
    # bounded by the window, not by the backlog: at most `batch` publishes in flight,
    # one task each (and the session's own few), paho's queue no longer than that
    assert seen["in_flight"] <= batch
    assert seen["tasks"] <= baseline + batch + 16  # + the shim's and aiomqtt's own
    assert seen["queued"] <= batch + 2


@pytest.mark.timeout_s(120)
async def test_clock_jumps_forward_and_backward_expire_reorder_and_drop_nothing(
        tmp_path, mosquitto, gateway_config, running_gateway, clock):
    # lifetimes ran on the wall clock: +1 h expired every node at once, -1 h kept an
    # expired one alive; here the wall clock steps while nodes send, the monotonic
    # clock runs on, and message expiry is on
    mono = FakeMono()
    cfg = gateway_config(mqtt_section(mosquitto, "expiry_telemetry_s = 600.0\n"))
    async with consuming(mosquitto, "aiot/test/+/data/#") as consumer, \
            running_gateway(cfg, clock=clock, monotonic=mono) as gw, peers(5) as ctxs:
        assert gw.uplink is not None
        await gw.uplink.wait_connected()
        for i, ctx in enumerate(ctxs):
            resp = await ask(ctx, Code.POST, f"{cfg.coap_uri}/rd?ep=j{i}&lt=60", b"</3/0>", 40)
            assert resp.code == Code.CREATED
        sent = 0
        for step in (3600.0, -7200.0, 1800.0):  # +1 h, then back 2 h, then +30 min
            for r in range(3):
                clock.advance(step if r == 0 else 1.0)
                mono.advance(1.0)  # one real second per round
                for ctx in ctxs:
                    sent += 1
                    resp = await ask(ctx, Code.POST, f"{cfg.coap_uri}/dp",
                                     cbor2.dumps([{0: "/3/0/9", 2: sent}]), SENML_CBOR)
                    assert resp.code == Code.CHANGED, (step, r)
            assert gw.registry.expire_due() == []  # nobody expired by a step
        assert gw.store.count_registered() == 5
        got = await asyncio.to_thread(consumer.wait_for, lambda f: len(f) >= sent)
        await gw.uplink.wait_idle()
        assert sorted(p["v"] for _, p, _ in got) == list(range(1, sent + 1))  # none dropped
        assert not gw.store.outbox_drops()  # nothing expired by the jumps either
        in_order_per_node(got)
        mono.advance(61.0)  # the lifetime really runs out: expired, by the monotonic clock
        assert len(gw.registry.expire_due()) == 5


class FakeMono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
