"""The MQTT uplink against a real Mosquitto: topics, payloads, and a broker outage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import cbor2
import paho.mqtt.client as paho
from aiocoap.numbers.codes import Code
from aiotkit.gateway.config import MqttConfig
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import Registration, SqliteStorage
from aiotkit.gateway.uplink.mqtt import Backoff, TopicScheme, Uplink
from plugins.services import Mosquitto, free_port, require_tool
from uplinkkit import ask, mqtt_section, persistent_broker, subscribed, take

SENML_CBOR = 112


def body(msg: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(msg.payload, bytes)
    return json.loads(msg.payload)


async def test_readings_and_status_arrive_with_the_documented_topics_and_payloads(
        mosquitto, gateway_config, running_gateway, coap_peer, clock):
    cfg = gateway_config(mqtt_section(mosquitto))
    assert cfg.mqtt.topic_prefix == "aiot/test"
    pack = cbor2.dumps([
        {-2: "/3313/0/", 0: "5702", 2: 0.25, 6: 1_700_000_000.5},
        {0: "5703", 2: -3},
        {-2: "/3/0/", 0: "0", 3: "acme"},
        {0: "13", 4: True},
        {-2: "/5/0/", 0: "0", 8: b"\x00\xff"},
    ])
    async with subscribed(mosquitto, "aiot/test/#", "sub-live") as sub, \
            running_gateway(cfg, clock=clock) as gw, coap_peer() as peer:
        assert gw.uplink is not None
        resp = await ask(peer, Code.POST, f"{cfg.coap_uri}/rd?ep=node-1&lt=60", b"</3/0>", 40)
        reg_id = resp.opt.location_path[1]
        registered_at = clock.now
        clock.advance(1)
        assert (await ask(peer, Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)).code \
            == Code.CHANGED
        rx = clock.now
        got = await take(sub, 6)
        assert str(got[0].topic) == "aiot/test/node-1/status"
        assert body(got[0]) == {"ep": "node-1", "state": "registered", "reg": reg_id,
                                "t": registered_at}
        ids = [r.id for r in gw.store.readings()]
        send_id = gw.store.readings()[0].send_id
        common = {"send": send_id, "ep": "node-1", "rx": rx}
        assert [(str(m.topic), body(m)) for m in got[1:]] == [
            ("aiot/test/node-1/data/3313/0/5702", {"id": ids[0], **common,
             "path": "/3313/0/5702", "v": 0.25, "t": 1_700_000_000.5}),
            ("aiot/test/node-1/data/3313/0/5703", {"id": ids[1], **common,
             "path": "/3313/0/5703", "v": -3, "t": None}),
            ("aiot/test/node-1/data/3/0/0", {"id": ids[2], **common, "path": "/3/0/0",
             "v": "acme", "t": None}),
            ("aiot/test/node-1/data/3/0/13", {"id": ids[3], **common, "path": "/3/0/13",
             "v": True, "t": None}),
            ("aiot/test/node-1/data/5/0/0", {"id": ids[4], **common, "path": "/5/0/0",
             "vd": base64.b64encode(b"\x00\xff").decode(), "t": None}),
        ]
        assert all(m.qos == 1 for m in got)

        await ask(peer, Code.POST, f"{cfg.coap_uri}/rd/{reg_id}")
        await ask(peer, Code.DELETE, f"{cfg.coap_uri}/rd/{reg_id}")
        states = [body(m)["state"] for m in await take(sub, 2)]
        assert states == ["updated", "deregistered"]

        # lifetime expiry is announced as offline
        async with coap_peer() as other:
            await ask(other, Code.POST, f"{cfg.coap_uri}/rd?ep=node-2&lt=5", b"</3/0>", 40)
            clock.advance(6)
            assert [r.endpoint for r in gw.registry.expire_due()] == ["node-2"]
        states = [(str(m.topic), body(m)["state"]) for m in await take(sub, 2)]
        assert states == [("aiot/test/node-2/status", "registered"),
                          ("aiot/test/node-2/status", "offline")]

        await gw.uplink.wait_idle()
        assert gw.store.outbox_counts() == (0, 10)

    # status is retained: a late subscriber learns each node's last state
    async with subscribed(mosquitto, "aiot/test/+/status", "sub-late") as late:
        got = await take(late, 2)
        assert sorted((body(m)["ep"], body(m)["state"], m.retain) for m in got) == [
            ("node-1", "deregistered", True), ("node-2", "offline", True)]


class Collector:
    """A paho subscriber in its own thread with a persistent session (survives restarts)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.dups: list[bool] = []  # the broker's DUP flag: its own redelivery
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id="aiot-test-collector", clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self.dups.append(bool(msg.dup))
            self._cond.notify_all()

    def start(self) -> None:
        self.client.connect(self.host, self.port, keepalive=5)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho keeps its wake-up channel (a loopback socket pair) until the client is freed
        self.client._reset_sockets()

    def wait_for(self, done: Callable[[list[tuple[str, dict[str, Any]]]], bool],
                 timeout: float = 15.0) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"collector has {len(self.messages)} messages")
                self._cond.wait(left)
            return list(self.messages)


async def test_broker_down_then_back_everything_queued_arrives_in_order(
        tmp_path, gateway_config, running_gateway, coap_peer, caplog):
    broker = persistent_broker(tmp_path)
    await asyncio.to_thread(broker.start)
    collector = Collector(broker.host, broker.port, "aiot/test/+/data/#")
    try:
        collector.start()
        cfg = gateway_config(mqtt_section(broker, "batch = 4\n"))
        async with running_gateway(cfg) as gw, coap_peer() as a, coap_peer() as b:
            assert gw.uplink is not None
            await gw.uplink.wait_connected()
            peers = {"node-a": a, "node-b": b}
            for ep, peer in peers.items():
                await ask(peer, Code.POST, f"{cfg.coap_uri}/rd?ep={ep}", b"</3/0>", 40)

            async def sends(rounds: int) -> None:
                for i in range(rounds):
                    for peer in peers.values():
                        pack = cbor2.dumps([{0: f"/3/0/{k}", 2: i * 10 + k} for k in range(5)])
                        resp = await ask(peer, Code.POST, f"{cfg.coap_uri}/dp", pack,
                                         SENML_CBOR)
                        assert resp.code == Code.CHANGED

            await sends(2)
            await asyncio.to_thread(collector.wait_for, lambda m: len(m) >= 20)
            await sends(2)  # and without waiting, so publishes are likely in flight:
            await asyncio.to_thread(broker.stop)  # the broker goes away
            await sends(4)  # Sends are still accepted and stored
            assert len(gw.store.readings()) == 80
            assert gw.store.outbox_counts()[0] > 0
            await asyncio.to_thread(broker.start)  # and comes back

            stored = {r.id: r.endpoint for r in gw.store.readings()}
            got = await asyncio.to_thread(
                collector.wait_for, lambda m: {p["id"] for _, p in m} >= stored.keys())
            await gw.uplink.wait_idle()
            assert gw.store.outbox_counts()[0] == 0
        ids = [p["id"] for _, p in got]
        # the broker itself redelivers (DUP flag) what it had in flight to the collector
        # when it stopped; those repeats are not the gateway's
        gateway_sent = [i for i, dup in zip(ids, collector.dups, strict=False) if not dup]
        assert set(ids) == set(stored)  # nothing lost
        for ep in peers:  # first deliveries are in order per endpoint
            firsts = list(dict.fromkeys(i for i in ids if stored[i] == ep))
            assert firsts == sorted(firsts)
        # a message comes twice only if its PUBACK was lost: at most one window's worth
        assert len(gateway_sent) - len(set(gateway_sent)) <= cfg.mqtt.batch
        # the outage is reported, the library's per-publish chatter is not
        assert not [r for r in caplog.records if r.name == "aiotkit.gateway.uplink.mqtt"
                    and r.levelno >= logging.WARNING]
        lost = [r.getMessage() for r in caplog.records if r.name == "aiotkit.gateway.uplink"
                and r.levelno == logging.WARNING]
        assert lost and "mqtt uplink lost" in lost[0]
    finally:
        collector.stop()
        await asyncio.to_thread(broker.stop)


async def test_unreachable_broker_does_not_stop_the_gateway(gateway_config, running_gateway,
                                                            coap_peer):
    nobody = free_port(socket.SOCK_STREAM)
    cfg = gateway_config(f'[mqtt]\nenabled = true\nport = {nobody}\n')
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await ask(peer, Code.POST, f"{cfg.coap_uri}/rd?ep=n", b"</3/0>", 40)
        pack = cbor2.dumps([{0: "/3/0/9", 2: 50}])
        assert (await ask(peer, Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)).code \
            == Code.CHANGED
        assert gw.uplink is not None and not gw.uplink.connected
        assert gw.store.outbox_counts() == (2, 0)
        started = time.monotonic()
    # shutdown is not held up by the reconnect back-off (up to 30 s); generous for slow CI
    assert time.monotonic() - started < 10.0


async def test_mqtt_disabled_writes_nothing_to_the_outbox(gateway_config, running_gateway,
                                                          coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await ask(peer, Code.POST, f"{cfg.coap_uri}/rd?ep=n", b"</3/0>", 40)
        pack = cbor2.dumps([{0: "/3/0/9", 2: 50}])
        await ask(peer, Code.POST, f"{cfg.coap_uri}/dp", pack, SENML_CBOR)
        assert gw.uplink is None
        assert gw.store.outbox_counts() == (0, 0)


def test_backoff_grows_exponentially_with_jitter_within_bounds_and_resets():
    lo = Backoff(0.5, 30.0, rng=lambda: 0.0)
    hi = Backoff(0.5, 30.0, rng=lambda: 1.0)
    lows = [lo.next() for _ in range(10)]
    highs = [hi.next() for _ in range(10)]
    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert lows == [h / 2 for h in highs]
    hi.reset()
    assert hi.next() == 0.5


# -- a message the broker refuses is set aside (dead letter); the queue moves on --------

def broker_with(tmp_path: Path, options: str = "") -> Mosquitto:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    return Mosquitto(require_tool("mosquitto", "apt-get install mosquitto"), workdir, options)


def crafted_outbox(path: Path, bad_endpoint: str, good: int = 3) -> SqliteStorage:
    """A store whose oldest outbox row is ``bad_endpoint``'s status, then ``good``
    readings of node-ok (one per Send)."""
    store = SqliteStorage.open(path, encoder=TopicScheme("aiot/test"))
    for ep in (bad_endpoint, "node-ok"):
        store.save_registration(Registration(ep, f"r-{len(ep)}", "127.0.0.1", 5683, 60, "U",
                                             "1.1", "</3/0>", 1.0, 1.0),
                                "registered", "registered", 1.0)
    ok = store.registration("node-ok")
    assert ok is not None
    for i in range(good):
        store.record_send(ok, bytes([i + 1]), bytes(16), SENML_CBOR,
                          [Record("/3/0/9", "v", i)], 2.0 + i)
    return store


@contextlib.asynccontextmanager
async def uplink_on(broker: Mosquitto, store: SqliteStorage, **mqtt: Any
                    ) -> AsyncIterator[Uplink]:
    cfg = MqttConfig(enabled=True, host=broker.host, port=broker.port,
                     topic_prefix="aiot/test", client_id="aiot-test-gw",
                     reconnect_min_s=0.05, reconnect_max_s=0.2, **mqtt)
    uplink = Uplink(cfg, store)
    await uplink.start()
    try:
        yield uplink
    finally:
        await uplink.shutdown()


async def test_broker_closing_the_connection_on_a_malformed_topic_does_not_block_the_outbox(
        tmp_path, caplog):
    # U+0000 is malformed in an MQTT topic: Mosquitto closes the connection on it; before,
    # the uplink replayed it first after every reconnect, forever, and nothing else went out
    broker = broker_with(tmp_path)
    await asyncio.to_thread(broker.start)
    store = crafted_outbox(tmp_path / "gw.db", "bad\x00node")
    try:
        async with subscribed(broker, "aiot/test/#", "sub-dead") as sub, \
                uplink_on(broker, store, batch=4) as uplink:
            got = await take(sub, 4)  # node-ok's status and its three readings
            assert [str(m.topic) for m in got] == [
                "aiot/test/node-ok/status", *["aiot/test/node-ok/data/3/0/9"] * 3]
            assert [body(m)["v"] for m in got[1:]] == [0, 1, 2]
            await uplink.wait_idle()
            assert uplink.set_aside == 1
        dead = store.outbox_dead()
        assert [d.topic for d in dead] == ["aiot/test/bad\x00node/status"]
        assert "closed the connection 3 times in a row" in dead[0].reason
        assert store.outbox_dead_count() == 1
        assert store.outbox_counts() == (0, 4)
    finally:
        store.close()
        await asyncio.to_thread(broker.stop)
    # the dead letter survives a restart as one, and is not sent again
    with SqliteStorage.open(tmp_path / "gw.db") as again:
        assert again.outbox_pending() == [] and again.outbox_dead_count() == 1
    assert [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]


async def test_puback_with_a_failure_reason_code_sets_the_message_aside(tmp_path):
    # Mosquitto answers a PUBLISH its ACL denies with PUBACK 0x87 "not authorized"
    # (MQTT 5): before, the uplink took any PUBACK for a delivery
    acl = tmp_path / "acl"
    acl.write_text("topic read aiot/test/#\ntopic write aiot/test/node-ok/#\n")
    # (run as root, mosquitto would switch to its own user and could not read it)
    broker = broker_with(tmp_path, f"acl_file {acl}\nuser {getpass.getuser()}\n")
    await asyncio.to_thread(broker.start)
    store = crafted_outbox(tmp_path / "gw.db", "node-denied")
    try:
        async with subscribed(broker, "aiot/test/#", "sub-puback") as sub, \
                uplink_on(broker, store) as uplink:
            got = await take(sub, 4)
            assert [str(m.topic) for m in got] == [
                "aiot/test/node-ok/status", *["aiot/test/node-ok/data/3/0/9"] * 3]
            await uplink.wait_idle()
        (dead,) = store.outbox_dead()  # not taken for delivered
        assert dead.topic == "aiot/test/node-denied/status"
        assert "PUBACK reason code 0x87" in dead.reason
        assert uplink.set_aside == 1
        assert store.outbox_counts() == (0, 4)
    finally:
        store.close()
        await asyncio.to_thread(broker.stop)


async def test_a_topic_the_mqtt_client_refuses_is_set_aside(tmp_path):
    # '+' is a wildcard: paho refuses to publish to it (ValueError); before, that ended
    # every session as a bug, forever
    broker = broker_with(tmp_path)
    await asyncio.to_thread(broker.start)
    store = crafted_outbox(tmp_path / "gw.db", "node+1")
    try:
        async with subscribed(broker, "aiot/test/#", "sub-client") as sub, \
                uplink_on(broker, store) as uplink:
            got = await take(sub, 4)
            assert str(got[0].topic) == "aiot/test/node-ok/status"
            await uplink.wait_idle()
        (dead,) = store.outbox_dead()
        assert dead.topic == "aiot/test/node+1/status"
        assert "refused by the MQTT client" in dead.reason
    finally:
        store.close()
        await asyncio.to_thread(broker.stop)


async def test_a_message_the_broker_refused_is_reported_by_the_rest_api(
        tmp_path, gateway_config, running_gateway):
    # the crafted endpoint's status (U+0000 in its topic) waits in the database when the
    # gateway starts, as after the restarts that used to keep it stuck
    broker = broker_with(tmp_path)
    await asyncio.to_thread(broker.start)
    (tmp_path / "tokens").write_text("viewer viewer-token-0123456789 vera\n")
    (tmp_path / "tokens").chmod(0o600)
    cfg = gateway_config(mqtt_section(broker) + '[rest]\nenabled = true\nport = 0\n'
                         'tokens_file = "tokens"\n')
    crafted_outbox(cfg.gateway.db, "bad\x00node").close()
    try:
        async with subscribed(broker, "aiot/test/#", "sub-rest") as sub, \
                running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
            assert gw.uplink is not None and gw.rest is not None
            await take(sub, 4)
            await gw.uplink.wait_idle()
            async with http.get(gw.rest.url + "/api/v1/uplink", headers={
                    "Authorization": "Bearer viewer-token-0123456789"}) as resp:
                assert resp.status == 200
                answer = await resp.json()
        assert answer["enabled"] and answer["connected"]
        # its status as registered, and as offline (its lifetime lapsed while stopped)
        assert (answer["pending"], answer["dead_letters"], answer["set_aside_since_start"]) \
            == (0, 2, 2)
        assert [d["topic"] for d in answer["dead"]] == ["aiot/test/bad\x00node/status"] * 2
        assert all(d["reason"].startswith("the broker closed the connection 3 times")
                   for d in answer["dead"])
    finally:
        await asyncio.to_thread(broker.stop)
