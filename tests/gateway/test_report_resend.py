"""A report the gateway stored but did not acknowledge (it crashed) comes again from the
node's flash log, with a new token: it is acknowledged, stored once, published once,
and its reading ids stay those of the first arrival."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
import cbor2
from aiocoap.numbers.codes import Code
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import NotificationLink, Registration, SqliteStorage
from aiotkit.gateway.uplink.mqtt import TopicScheme

SENML_CBOR = 112
WALL = 1_700_000_000.5  # the node's wall clock when it took the report


def report(seq: int, bt: float | None = None) -> bytes:
    """The node's report as SenML-CBOR; ``bt``: the base time the node adds when it
    re-sends a report from its flash log (firmware/node.py ``_fill_log``)."""
    first: dict[int, Any] = {-2: "/33000/0/", 0: "0", 2: seq}
    if bt is not None:
        first[-3] = bt
    return cbor2.dumps([first, {0: "1", 2: seq * 512}, {-2: "/3313/0/", 0: "5702", 2: 0.25}])


async def post(peer: aiocoap.Context, uri: str, payload: bytes = b"",
               cf: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code.POST, uri=uri, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    return await peer.request(msg).response  # a new token and MID every time


async def test_report_resent_after_a_crash_before_the_ack_is_one_reading_with_one_id(
        mosquitto, gateway_config, running_gateway, coap_peer):
    # before, each re-send was stored again and published with new reading ids
    cfg = gateway_config(f'[mqtt]\nenabled = true\nhost = "{mosquitto.host}"\n'
                         f"port = {mosquitto.port}\nreconnect_min_s = 0.05\n"
                         "reconnect_max_s = 0.2\n")
    data: list[dict[str, Any]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="sub") as sub, \
            coap_peer() as node:
        await sub.subscribe("aiot/test/+/data/#", qos=1)

        async def collect() -> None:
            async for msg in sub.messages:
                assert isinstance(msg.payload, bytes)
                data.append(json.loads(msg.payload))

        collector = asyncio.create_task(collect())
        try:
            async with running_gateway(cfg) as gw:
                resp = await post(node, f"{cfg.coap_uri}/rd?ep=node-1&lt=3600", b"</3/0>", 40)
                assert resp.code == Code.CREATED
                # the live report (no time), committed; the ACK "lost" (the gateway
                # crashed): the node logs it and sends it again with its base time
                assert (await post(node, f"{cfg.coap_uri}/dp", report(7), SENML_CBOR)).code \
                    == Code.CHANGED
                assert (await post(node, f"{cfg.coap_uri}/dp", report(7, WALL),
                                   SENML_CBOR)).code == Code.CHANGED
                ids = [r.id for r in gw.store.readings()]
                assert gw.uplink is not None
                await gw.uplink.wait_idle()
            async with running_gateway(cfg) as gw:  # restarted: once more from the log
                assert (await post(node, f"{cfg.coap_uri}/dp", report(7, WALL),
                                   SENML_CBOR)).code == Code.CHANGED
                # the next report is a new one
                assert (await post(node, f"{cfg.coap_uri}/dp", report(8), SENML_CBOR)).code \
                    == Code.CHANGED
                assert len(gw.store.sends()) == 2
                assert [r.id for r in gw.store.readings()][:3] == ids
                assert gw.store.node_summary("node-1").sends == 2  # type: ignore[union-attr]
                assert gw.uplink is not None
                await gw.uplink.wait_idle()
                async with asyncio.timeout(10):
                    while len(data) < 6:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # nothing more comes
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
    assert [d["id"] for d in data][:3] == ids
    assert len(data) == 6 and len({d["id"] for d in data}) == 6
    assert [d["v"] for d in data] == [7, 7 * 512, 0.25, 8, 8 * 512, 0.25]


# -- what counts as the same report (storage/sqlite.py _same_report) --------------------

def open_store(tmp_path: Path) -> tuple[SqliteStorage, Registration]:
    store = SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t"))
    reg = Registration("node-1", "r1", "127.0.0.1", 5683, 60, "U", "1.1", "</3/0>", 1.0, 1.0)
    store.save_registration(reg, "registered", "registered", 1.0)
    return store, reg


def recs(seq: int, t: float | None) -> list[Record]:
    return [Record("/33000/0/0", "v", seq, t), Record("/33000/0/1", "v", seq * 512, t)]


def test_resent_report_with_a_new_token_is_stored_once_also_after_reopening(tmp_path):
    store, reg = open_store(tmp_path)
    first = store.record_send(reg, b"\x01", bytes(16), SENML_CBOR, recs(1, WALL), 10.0)
    again = store.record_send(reg, b"\x02", bytes(16), SENML_CBOR, recs(1, WALL), 20.0)
    assert again.duplicate and again.send_id == first.send_id and not first.duplicate
    outbox = store.outbox_counts()
    store.close()
    with SqliteStorage.open(tmp_path / "gw.db", encoder=TopicScheme("aiot/t")) as store:
        later = store.record_send(reg, b"\x03", bytes(16), SENML_CBOR, recs(1, WALL), 3600.0)
        assert later.duplicate and later.send_id == first.send_id
        assert len(store.sends()) == 1 and store.outbox_counts() == outbox


def test_identical_reports_without_any_time_are_two_readings(tmp_path):
    # nothing tells a re-send from a new reading of values that did not change
    with open_store(tmp_path)[0] as store:
        reg = store.registration("node-1")
        assert reg is not None
        a = store.record_send(reg, b"\x01", bytes(16), SENML_CBOR, recs(1, None), 10.0)
        b = store.record_send(reg, b"\x02", bytes(16), SENML_CBOR, recs(1, None), 20.0)
        assert not b.duplicate and a.send_id != b.send_id


def test_same_values_at_other_times_or_other_endpoints_are_other_reports(tmp_path):
    store, reg = open_store(tmp_path)
    other = Registration("node-2", "r2", "127.0.0.1", 5684, 60, "U", "1.1", "</3/0>", 1.0, 1.0)
    store.save_registration(other, "registered", "registered", 1.0)
    with store:
        store.record_send(reg, b"\x01", bytes(16), SENML_CBOR, recs(1, WALL), 10.0)
        assert not store.record_send(reg, b"\x02", bytes(16), SENML_CBOR, recs(1, WALL + 1),
                                     11.0).duplicate
        assert not store.record_send(other, b"\x03", bytes(16), SENML_CBOR, recs(1, WALL),
                                     12.0).duplicate
        assert not store.record_send(reg, b"\x04", bytes(16), SENML_CBOR, recs(2, WALL),
                                     13.0).duplicate


def test_relative_times_match_when_they_name_the_same_moment(tmp_path):
    # RFC 8428: below 2**28 a time is relative to reception; a node without a wall clock
    # re-sends a logged report with a negative bt
    with open_store(tmp_path)[0] as store:
        reg = store.registration("node-1")
        assert reg is not None
        store.record_send(reg, b"\x01", bytes(16), SENML_CBOR, recs(1, -2.0), 1000.0)
        assert store.record_send(reg, b"\x02", bytes(16), SENML_CBOR, recs(1, -32.2),
                                 1030.0).duplicate
        assert not store.record_send(reg, b"\x03", bytes(16), SENML_CBOR, recs(1, -2.0),
                                     1100.0).duplicate


def test_notifications_with_the_same_values_are_each_stored(tmp_path):
    with open_store(tmp_path)[0] as store:
        reg = store.registration("node-1")
        assert reg is not None
        obs = store.dm.save_observation("node-1", "/33000/0", {}, 1.0)
        for i in range(2):
            link = NotificationLink(obs, i, SENML_CBOR, 10.0 + i)
            assert not store.record_send(reg, bytes([i + 1]), bytes(16), SENML_CBOR,
                                         recs(1, WALL), 10.0 + i, notification=link).duplicate
