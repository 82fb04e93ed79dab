"""Sparkplug B on the uplink (``mqtt.format = "sparkplug"``, gateway/uplink/sparkplug.py)
against a real Mosquitto: births and the NDEATH Will, sequence numbers, a rebirth
command, a broker link cut and restored, device deaths, a Primary Host's STATE; and the
payload encoder against Google's protobuf runtime with Eclipse Tahu's .proto."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
import pytest
from aiotkit.gateway.config import GatewayConfig, MqttConfig, load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import Registration, SqliteStorage
from aiotkit.gateway.uplink import sparkplug as sp
from aiotkit.gateway.uplink.mqtt import TopicScheme, Uplink
from aiotkit.tools.tcpshim import TcpShim
from hypothesis import given, settings
from hypothesis import strategies as st
from plugins.services import Mosquitto

T0 = 1_700_000_000.0
SENML_CBOR = 112
PROTO = Path(__file__).with_name("sparkplug_b.proto")


@pytest.fixture(scope="module")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Tahu's sparkplug_b.proto compiled by protoc (grpcio-tools) for this run."""
    from grpc_tools import protoc  # the test extra (pyproject.toml)
    out = tmp_path_factory.mktemp("pb2")
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)])
    assert rc == 0, "protoc failed on sparkplug_b.proto"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("sparkplug_b_pb2")
    finally:
        sys.path.remove(str(out))


# -- the gateway side ------------------------------------------------------------------------

class Clock:
    """The uplink's and the store's wall clock, moved by the test."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def store_at(path: Path, *nodes: str) -> SqliteStorage:
    store = SqliteStorage.open(path, encoder=TopicScheme("aiot/test"))
    for ep in nodes:
        register(store, ep, T0)
    return store


def register(store: SqliteStorage, ep: str, now: float) -> Registration:
    reg = Registration(ep, f"r-{ep}", "127.0.0.1", 5683, 60, "U", "1.1", "</3/0>", now, now)
    store.save_registration(reg, "registered", "registered", now)
    return reg


def send(store: SqliteStorage, ep: str, value: Any, now: float, path: str = "/3303/0/5700",
         token: int = 0) -> None:
    reg = store.registration(ep)
    assert reg is not None
    kind = "vs" if isinstance(value, str) else "v"
    store.record_send(reg, (token or int(now * 1000)).to_bytes(8, "big"), bytes(16),
                      SENML_CBOR, [Record(path, kind, value)], now)


@contextlib.asynccontextmanager
async def edge_on(port: int, store: SqliteStorage, clock: Clock, **mqtt: Any
                  ) -> AsyncIterator[Uplink]:
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, topic_prefix="aiot/test",
                     client_id="aiot-gw1", reconnect_min_s=0.05, reconnect_max_s=0.2,
                     format="sparkplug", sparkplug_group="plant", **mqtt)
    uplink = Uplink(cfg, store, gateway_id="gw1", clock=clock)
    await uplink.start()
    try:
        yield uplink
    finally:
        await uplink.shutdown()


# -- the host side ----------------------------------------------------------------------------

@dataclass
class Msg:
    verb: str
    device: str
    p: Any  # the pb2 Payload
    qos: int
    retain: bool

    def metric(self, name: str) -> Any:
        return next(m for m in self.p.metrics if m.name == name)


class Host:
    """A Sparkplug host's view: every spBv1.0 message, decoded by protobuf."""

    def __init__(self, client: aiomqtt.Client, pb2: ModuleType) -> None:
        self.client, self.pb2 = client, pb2
        self.seen: list[Msg] = []

    async def next(self, pred: Callable[[Msg], bool] = lambda m: True,
                   timeout: float = 10.0) -> Msg:
        async with asyncio.timeout(timeout):
            async for m in self.client.messages:
                parts = str(m.topic).split("/")
                if parts[1] == "STATE" or parts[2] in ("NCMD", "DCMD"):
                    continue  # the host's own
                assert parts[:2] == ["spBv1.0", "plant"] and parts[3] == "gw1", m.topic
                p = self.pb2.Payload()
                p.ParseFromString(m.payload)
                msg = Msg(parts[2], parts[4] if len(parts) > 4 else "", p, m.qos, m.retain)
                self.seen.append(msg)
                if pred(msg):
                    return msg
        raise AssertionError("unreachable")

    async def expect(self, *verbs: str) -> list[Msg]:
        """The next messages, which must be of these verbs, in this order."""
        got = [await self.next() for _ in verbs]
        assert [(m.verb, m.device) for m in got] == [tuple(v.split(":") + [""])[:2]
                                                      for v in verbs], got
        return got

    async def command(self, metrics: list[tuple[str, bool]]) -> None:
        p = self.pb2.Payload(timestamp=1)
        for name, value in metrics:
            p.metrics.add(name=name, datatype=sp.BOOLEAN, boolean_value=value)
        await self.client.publish("spBv1.0/plant/NCMD/gw1", p.SerializeToString(), qos=0)


@contextlib.asynccontextmanager
async def host_on(broker: Mosquitto, pb2: ModuleType) -> AsyncIterator[Host]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="scada",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("spBv1.0/#", qos=1)
        yield Host(client, pb2)


def values(msg: Msg, aliases: dict[int, str]) -> list[tuple[str, Any, bool]]:
    """(metric name, value, is_historical) of a DDATA, names through the births' aliases."""
    out = []
    for m in msg.p.metrics:
        assert not m.HasField("name") and not m.HasField("datatype")  # alias only
        out.append((aliases[m.alias], getattr(m, m.WhichOneof("value")), m.is_historical))
    return out


def aliases(*births: Msg) -> dict[int, str]:
    return {m.alias: m.name for b in births for m in b.p.metrics}


# -- against the broker -----------------------------------------------------------------------

async def test_births_on_connect_and_a_cut_link_publishes_the_will_ndeath_of_the_same_bdseq(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 100)
    store = store_at(tmp_path / "gw.db", "node-1")
    send(store, "node-1", 21.5, T0 + 1)
    shim = TcpShim(mosquitto.host, mosquitto.port)
    await shim.start()
    try:
        async with host_on(mosquitto, pb2) as host, edge_on(shim.port, store, clock) as up:
            nbirth, dbirth, ddata = await host.expect("NBIRTH", "DBIRTH:node-1", "DDATA:node-1")
            assert nbirth.p.seq == 0 and nbirth.metric("bdSeq").long_value == 0
            assert nbirth.metric("bdSeq").datatype == sp.INT64
            rebirth = nbirth.metric("Node Control/Rebirth")
            assert rebirth.datatype == sp.BOOLEAN and rebirth.boolean_value is False
            assert nbirth.p.timestamp == round(clock.t * 1000)
            assert all(m.qos == 0 and not m.retain for m in (nbirth, dbirth, ddata))
            metric = dbirth.metric("3303/0/5700")  # with its datatype, alias, current value
            assert (metric.datatype, metric.double_value, metric.timestamp) == (
                sp.DOUBLE, 21.5, round((T0 + 1) * 1000))
            assert dbirth.p.seq == 1 and ddata.p.seq == 2
            # committed before this session: history, with the reading's own time
            assert values(ddata, aliases(dbirth)) == [("3303/0/5700", 21.5, True)]
            assert ddata.p.metrics[0].timestamp == round((T0 + 1) * 1000)
            await up.wait_idle()
            clock.t += 1
            send(store, "node-1", 22.0, clock.t)
            up.kick()
            live = await host.next()
            assert (live.verb, live.p.seq) == ("DDATA", 3)
            assert values(live, aliases(dbirth)) == [("3303/0/5700", 22.0, False)]
            shim.cut_all()  # the broker loses the gateway: it publishes the Will
            death = await host.next(lambda m: m.verb == "NDEATH")
            assert death.metric("bdSeq").long_value == 0 and not death.p.HasField("seq")
            assert death.qos == 1 and not death.retain
            again = await host.next(lambda m: m.verb == "NBIRTH")
            assert again.metric("bdSeq").long_value == 1 and again.p.seq == 0
    finally:
        await shim.close()
        store.close()


async def test_broker_outage_then_reconnect_births_with_the_next_bdseq_and_the_backlog_is_historical(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1", "node-2")
    shim = TcpShim(mosquitto.host, mosquitto.port)
    await shim.start()
    try:
        async with host_on(mosquitto, pb2) as host, edge_on(shim.port, store, clock) as up:
            births = await host.expect("NBIRTH", "DBIRTH:node-1", "DBIRTH:node-2")
            await up.wait_idle()
            shim.cut = 1.0  # every new connection dies at its first bytes: an outage
            shim.cut_all()
            await host.next(lambda m: m.verb == "NDEATH")
            sent = []
            for i in range(120):  # stored during the outage, both nodes
                clock.t += 0.5
                ep = f"node-{1 + i % 2}"
                send(store, ep, i, clock.t, token=i + 1)
                sent.append((ep, i))
            up.kick()
            assert store.outbox_counts()[0] == 120
            shim.cut = 0.0
            clock.t += 10
            nbirth = await host.next(lambda m: m.verb == "NBIRTH")
            assert nbirth.metric("bdSeq").long_value == 1  # the next CONNECT's
            got: list[tuple[str, int]] = []
            seqs = [nbirth.p.seq]
            births = [nbirth]
            while len(got) < len(sent):
                m = await host.next()
                seqs.append(m.p.seq)
                if m.verb == "DBIRTH":
                    births.append(m)
                    continue
                assert m.verb == "DDATA", m.verb
                for name, value, historical in values(m, aliases(*births)):
                    assert historical and name == "3303/0/5700"
                    got.append((m.device, value))
            await up.wait_idle()
        assert sorted(got) == sorted(sent)  # nothing lost, nothing twice
        assert [g for g in got if g[0] == "node-1"] == [s for s in sent if s[0] == "node-1"]
        assert seqs == list(range(len(seqs)))  # one edge-node sequence, no gap
        assert store.outbox_counts()[0] == 0
    finally:
        await shim.close()
        store.close()


async def test_seq_increments_on_every_message_and_wraps_from_255_to_0(mosquitto, pb2,
                                                                         tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    async with host_on(mosquitto, pb2) as host, \
            edge_on(mosquitto.port, store, clock, batch=1) as up:
        await host.expect("NBIRTH", "DBIRTH:node-1")
        for i in range(300):  # batch = 1: one DDATA each
            clock.t += 0.01
            send(store, "node-1", i, clock.t, token=i + 1)
        up.kick()
        # the first reading of a metric the DBIRTH did not have: a DBIRTH before it
        got = await host.expect("DBIRTH:node-1", *["DDATA:node-1"] * 300)
    store.close()
    seqs = [m.p.seq for m in got]
    assert seqs == [(2 + i) % 256 for i in range(301)]
    assert seqs[252:256] == [254, 255, 0, 1]


async def test_a_rebirth_command_republishes_nbirth_and_dbirth_with_the_same_bdseq(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    send(store, "node-1", 7, T0 + 0.5)
    async with host_on(mosquitto, pb2) as host, edge_on(mosquitto.port, store, clock) as up:
        first = await host.expect("NBIRTH", "DBIRTH:node-1", "DDATA:node-1")
        await up.wait_idle()
        await host.command([("Node Control/Rebirth", False)])  # not a request
        await host.command([("Node Control/Rebirth", True)])
        nbirth, dbirth = await host.expect("NBIRTH", "DBIRTH:node-1")
        assert nbirth.p.seq == 0 and dbirth.p.seq == 1
        assert nbirth.metric("bdSeq").long_value == first[0].metric("bdSeq").long_value
        assert dbirth.metric("3303/0/5700").long_value == 7
        assert aliases(dbirth) == aliases(first[1])  # aliases stay what they were
        clock.t += 1
        send(store, "node-1", 8, clock.t)
        up.kick()
        (ddata,) = await host.expect("DDATA:node-1")
        assert ddata.p.seq == 2
    assert up._sp is not None and up._sp.rebirths == 1
    assert up._sp.ignored_commands == 1  # the false one
    store.close()


async def test_commands_a_peer_floods_the_edge_with_are_counted_and_logged_a_few_times(
        mosquitto, pb2, tmp_path, caplog):
    # any client allowed to publish there can send them: before, each unreadable STATE
    # and each rebirth request was a log line
    store = store_at(tmp_path / "gw.db", "node-1")
    async with host_on(mosquitto, pb2) as host, \
            edge_on(mosquitto.port, store, Clock(T0 + 1)) as up:
        await host.expect("NBIRTH", "DBIRTH:node-1")
        assert up._sp is not None
        with caplog.at_level(logging.INFO, logger="aiotkit.gateway.uplink.sparkplug"):
            for i in range(40):
                await host.command([(f"Node Control/Other {i}", True)])
                await host.command([("Node Control/Rebirth", True)])
            async with asyncio.timeout(10):
                while up._sp.ignored_commands < 40 or up._sp.rebirths < 40:
                    await asyncio.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records if "sparkplug" in r.name]
        assert len([x for x in lines if "ignored" in x]) <= 3, lines
        assert len([x for x in lines if "rebirth requested" in x]) <= 3, lines
    store.close()


async def test_a_node_registering_mid_session_is_born_before_its_first_ddata_and_reborn_for_new_metrics(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    async with host_on(mosquitto, pb2) as host, edge_on(mosquitto.port, store, clock) as up:
        await host.expect("NBIRTH", "DBIRTH:node-1")
        clock.t += 1
        register(store, "node-2", clock.t)
        send(store, "node-2", 1, clock.t)
        up.kick()
        dbirth, ddata = await host.expect("DBIRTH:node-2", "DDATA:node-2")
        assert dbirth.metric("3303/0/5700").datatype == sp.INT64
        assert values(ddata, aliases(dbirth)) == [("3303/0/5700", 1, False)]
        clock.t += 1
        send(store, "node-2", "on", clock.t, path="/3311/0/5850")  # a new metric
        up.kick()
        reborn, ddata = await host.expect("DBIRTH:node-2", "DDATA:node-2")
        assert {m.name: m.datatype for m in reborn.p.metrics} == {
            "3303/0/5700": sp.INT64, "3311/0/5850": sp.STRING}
        assert values(ddata, aliases(reborn)) == [("3311/0/5850", "on", False)]
        clock.t += 1
        send(store, "node-2", 1.5, clock.t)  # a float for an Int64 metric: Double now
        up.kick()
        reborn, ddata = await host.expect("DBIRTH:node-2", "DDATA:node-2")
        assert reborn.metric("3303/0/5700").datatype == sp.DOUBLE
        assert values(ddata, aliases(reborn)) == [("3303/0/5700", 1.5, False)]
    store.close()


async def test_deregistration_and_lifetime_expiry_publish_ddeath(mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1", "node-2")
    async with host_on(mosquitto, pb2) as host, edge_on(mosquitto.port, store, clock) as up:
        await host.expect("NBIRTH", "DBIRTH:node-1", "DBIRTH:node-2")
        clock.t += 1
        for ep, state in (("node-1", "deregistered"), ("node-2", "offline")):
            reg = store.registration(ep)
            assert reg is not None
            event = "deregistered" if state == "deregistered" else "expired"
            assert store.set_state(reg, state, event, state, clock.t)  # type: ignore[arg-type]
        up.kick()
        deaths = await host.expect("DDEATH:node-1", "DDEATH:node-2")
        assert [d.p.seq for d in deaths] == [3, 4] and not deaths[0].p.metrics
        await up.wait_idle()
    store.close()


async def test_backlog_of_a_node_gone_while_the_broker_was_away_is_born_sent_and_buried(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    send(store, "node-1", 3, T0 + 0.25)
    reg = store.registration("node-1")
    assert reg is not None and store.set_state(reg, "offline", "expired", "offline", T0 + 0.5)
    async with host_on(mosquitto, pb2) as host, edge_on(mosquitto.port, store, clock) as up:
        _, dbirth, ddata, _ = await host.expect(
            "NBIRTH", "DBIRTH:node-1", "DDATA:node-1", "DDEATH:node-1")
        assert values(ddata, aliases(dbirth)) == [("3303/0/5700", 3, True)]
        await up.wait_idle()
    store.close()


async def test_births_and_data_wait_for_the_primary_host_and_its_going_offline_ends_the_session(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    async with host_on(mosquitto, pb2) as host:
        state = "spBv1.0/STATE/scada"
        await host.client.publish(state, json.dumps({"online": False, "timestamp": 1}),
                                  qos=1, retain=True)
        async with edge_on(mosquitto.port, store, clock, sparkplug_host="scada") as up:
            await up.wait_connected()
            send(store, "node-1", 5, clock.t + 1)  # stored while the host is away
            up.kick()
            clock.t += 60
            online_at = round(clock.t * 1000)
            await host.client.publish(state, json.dumps({"online": True, "timestamp": 2}),
                                      qos=1, retain=True)
            nbirth, dbirth, ddata = await host.expect("NBIRTH", "DBIRTH:node-1",
                                                      "DDATA:node-1")
            assert nbirth.p.timestamp == online_at  # not before the host was online
            assert values(ddata, aliases(dbirth)) == [("3303/0/5700", 5, True)]
            await up.wait_idle()
            await host.client.publish(state, json.dumps({"online": False, "timestamp": 3}),
                                      qos=1, retain=True)
            death = await host.next(lambda m: m.verb == "NDEATH")  # the gateway's own
            assert death.metric("bdSeq").long_value == 0
            clock.t += 1
            send(store, "node-1", 6, clock.t)
            up.kick()
            await host.client.publish(state, json.dumps({"online": True, "timestamp": 4}),
                                      qos=1, retain=True)
            nbirth = await host.next(lambda m: m.verb == "NBIRTH")
            assert nbirth.metric("bdSeq").long_value == 1
            ddata = await host.next(lambda m: m.verb == "DDATA")
            assert [v for _, v, _ in values(ddata, aliases(*host.seen[-2:-1]))] == [6]
        await host.client.publish(state, b"", qos=1, retain=True)
    store.close()


async def test_a_clean_shutdown_publishes_ndeath_and_other_kinds_keep_their_json_topics(
        mosquitto, pb2, tmp_path):
    clock = Clock(T0 + 1)  # the store's rows are older
    store = store_at(tmp_path / "gw.db", "node-1")
    from aiotkit.gateway.storage.api import OutboxMessage
    store.outbox_add([OutboxMessage("node-1/alert", b'{"a":1}', kind="alert")], T0)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="json-sub",
                              protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("aiot/test/#", qos=1)
        async with host_on(mosquitto, pb2) as host:
            async with edge_on(mosquitto.port, store, clock) as up:
                await host.expect("NBIRTH", "DBIRTH:node-1")
                async with asyncio.timeout(10):
                    alert = await anext(aiter(sub.messages))
                assert (str(alert.topic), alert.payload, alert.qos) == (
                    "aiot/test/node-1/alert", b'{"a":1}', 1)
                await up.wait_idle()
            death = await host.next(lambda m: m.verb == "NDEATH")
            assert death.metric("bdSeq").long_value == 0
    store.close()


# -- the payload --------------------------------------------------------------------------------

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    sp.INT8: st.integers(-(2**7), 2**7 - 1), sp.INT16: st.integers(-(2**15), 2**15 - 1),
    sp.INT32: st.integers(-(2**31), 2**31 - 1), sp.INT64: st.integers(-(2**63), 2**63 - 1),
    sp.UINT8: st.integers(0, 2**8 - 1), sp.UINT16: st.integers(0, 2**16 - 1),
    sp.UINT32: st.integers(0, 2**32 - 1), sp.UINT64: st.integers(0, 2**64 - 1),
    sp.FLOAT: st.floats(width=32, allow_nan=False), sp.DOUBLE: st.floats(allow_nan=False),
    sp.BOOLEAN: st.booleans(), sp.STRING: st.text(), sp.TEXT: st.text(),
    sp.DATETIME: st.integers(0, 2**64 - 1), sp.BYTES: st.binary(), sp.FILE: st.binary(),
}
_u64 = st.none() | st.integers(0, 2**64 - 1)


@st.composite
def metrics(draw: st.DrawFn) -> sp.Metric:
    dt = draw(st.sampled_from(sorted(_SCALARS)))
    null = draw(st.booleans())
    return sp.Metric(draw(st.none() | st.text()), draw(_u64), draw(_u64), dt,
                     None if null else draw(_SCALARS[dt]), draw(st.booleans()),
                     draw(st.booleans()), null, datatype_sent=draw(st.booleans()))


payloads = st.builds(sp.Payload, _u64, st.lists(metrics(), max_size=4).map(tuple), _u64)


def _pb_value(m: Any, dt: int | None) -> Any:
    which = m.WhichOneof("value")
    if which is None:
        return None
    v = getattr(m, which)
    bits = sp.DATATYPES[dt][3] if dt else 0
    if which in ("int_value", "long_value") and bits:
        width = 32 if which == "int_value" else 64
        v &= (1 << bits) - 1 if bits < width else (1 << width) - 1
        return v - (1 << bits) if v >> (bits - 1) else v
    return v


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_encoder_output_decodes_with_protobuf_to_the_same_payload(pb2, p):
    got = pb2.Payload()
    got.ParseFromString(sp.encode(p))
    assert (got.timestamp if got.HasField("timestamp") else None) == p.timestamp
    assert (got.seq if got.HasField("seq") else None) == p.seq
    assert len(got.metrics) == len(p.metrics)
    for g, m in zip(got.metrics, p.metrics, strict=True):
        assert (g.name if g.HasField("name") else None) == m.name
        assert (g.alias if g.HasField("alias") else None) == m.alias
        assert (g.timestamp if g.HasField("timestamp") else None) == m.timestamp
        assert (g.datatype if g.HasField("datatype") else None) == (
            m.datatype if m.datatype_sent else None)
        assert (g.is_historical, g.is_transient, g.is_null) == (
            m.is_historical, m.is_transient, m.is_null)
        v = _pb_value(g, m.datatype)
        if m.datatype == sp.FLOAT and m.value is not None:
            assert v == m.value or (math.isinf(v) and math.isinf(m.value))
        else:
            assert v == m.value and type(v) is type(m.value)
    # and protobuf's own bytes of it decode here to the same payload
    again = sp.decode(got.SerializeToString())
    assert again == sp.Payload(p.timestamp, tuple(
        sp.Metric(m.name, m.alias, m.timestamp, m.datatype if m.datatype_sent else None,
                  _decoded(m), m.is_historical, m.is_transient, m.is_null)
        for m in p.metrics), p.seq)


def _decoded(m: sp.Metric) -> Any:
    """What ``decode`` gives back for ``m``'s value: without a datatype on the wire an
    integer is the raw unsigned field."""
    if m.datatype_sent or not isinstance(m.value, int) or isinstance(m.value, bool):
        return m.value
    width = 32 if sp.DATATYPES[m.datatype or 0][1] == 10 else 64
    return m.value & ((1 << width) - 1)


@given(st.binary(max_size=64))
def test_a_garbage_command_raises_sparkplug_error_or_decodes_like_protobuf(pb2, data):
    from google.protobuf.message import DecodeError
    ref = pb2.Payload()
    try:
        ref.ParseFromString(data)
        ok = True
    except DecodeError:
        ok = False
    try:
        mine = sp.decode(data)
    except sp.SparkplugError:
        return  # refusing is always allowed (stricter on groups and wire types)
    assert ok, "decoded what protobuf refuses"
    assert [m.name or None for m in mine.metrics] == [
        m.name if m.HasField("name") else None for m in ref.metrics]


def test_a_truncated_payload_is_refused_with_sparkplug_error():
    good = sp.encode(sp.Payload(1, (sp.Metric("a", 1, 2, sp.STRING, "hello"),), 3))
    for cut in range(1, len(good)):
        with contextlib.suppress(sp.SparkplugError):
            p = sp.decode(good[:cut])
            assert p != sp.decode(good)


# -- configuration --------------------------------------------------------------------------

def test_format_group_and_host_are_validated_with_the_key_named(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g1"\n[mqtt]\nformat = "sparkplug"\n'
                   'sparkplug_group = "site-a"\nsparkplug_host = "scada"\n')
    m = load_config(cfg).mqtt
    assert (m.format, m.sparkplug_group, m.sparkplug_host) == ("sparkplug", "site-a", "scada")
    assert GatewayConfig.default().mqtt.format == "json"
    assert GatewayConfig.default().mqtt.sparkplug_group == "aiot"
    for bad, key in (('format = "protobuf"', "mqtt.format"),
                     ('sparkplug_group = ""', "mqtt.sparkplug_group"),
                     ('sparkplug_group = "a/b"', "mqtt.sparkplug_group"),
                     ('sparkplug_host = "h+"', "mqtt.sparkplug_host")):
        cfg.write_text(f"[mqtt]\n{bad}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(cfg)
