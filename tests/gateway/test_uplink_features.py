"""The uplink's features against a real Mosquitto: TLS with client certificates, topics
computed when published, priorities, expiry and message ids, the outbox budget, a full
disk, the token bucket, and their configuration."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import getpass
import ipaddress
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiotkit.gateway.config import MqttConfig, load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.storage import Registration, SqliteStorage
from aiotkit.gateway.storage.api import OutboxMessage
from aiotkit.gateway.uplink.consumer_example import Dedup, message_key
from aiotkit.gateway.uplink.mqtt import TokenBucket, TopicScheme, Uplink
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from plugins.services import Mosquitto, require_tool
from schemakit import file_at_version
from uplinkkit import subscribed, take

T0 = 1_700_000_000.0
SENML_CBOR = 112


# -- certificates the test makes ---------------------------------------------------------

def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(signer, hashes.SHA256())


def make_pki(folder: Path, name: str = "ca") -> Path:
    """A CA (``{name}.pem``), a server certificate for 127.0.0.1/localhost
    (``server.pem``/``.key``) and a client certificate (``client.pem``/``.key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"aiot test {name}")])
    ca = _cert(f"aiot test {name}", ca_key, ca_name, ca_key, ca=True)
    _write(folder / name, ca, ca_key)
    for who, server in (("server", True), ("client", False)):
        k = _key()
        _write(folder / who, _cert(who, k, ca_name, ca_key, server=server), k)
    return folder


def tls_broker(tmp_path: Path, pki: Path) -> Mosquitto:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    return Mosquitto(require_tool("mosquitto", "apt-get install mosquitto"), workdir,
                     f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
                     f"keyfile {pki / 'server.key'}\nrequire_certificate true\n"
                     # run as root, mosquitto would switch to its own user and could not
                     # read the test's files
                     f"user {getpass.getuser()}\n")


def plain_broker(tmp_path: Path) -> Mosquitto:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    return Mosquitto(require_tool("mosquitto", "apt-get install mosquitto"), workdir)


@contextlib.asynccontextmanager
async def started(broker: Mosquitto) -> AsyncIterator[Mosquitto]:
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def store_with_node(path: Path, prefix: str = "aiot/test", **open_kw: Any) -> SqliteStorage:
    store = SqliteStorage.open(path, encoder=TopicScheme(prefix), **open_kw)
    store.save_registration(Registration("node-1", "r-1", "127.0.0.1", 5683, 60, "U",
                                         "1.1", "</3/0>", T0, T0),
                            "registered", "registered", T0)
    return store


def send(store: SqliteStorage, i: int, ep: str = "node-1", now: float = T0) -> None:
    reg = store.registration(ep)
    assert reg is not None
    store.record_send(reg, i.to_bytes(4, "big"), bytes(16), SENML_CBOR,
                      [Record("/3/0/9", "v", i)], now + i * 1e-3)


@contextlib.asynccontextmanager
async def uplink_on(broker: Mosquitto, store: SqliteStorage, **mqtt: Any
                    ) -> AsyncIterator[Uplink]:
    clock = mqtt.pop("clock", None)
    cfg = MqttConfig(enabled=True, host=broker.host, port=broker.port,
                     topic_prefix=mqtt.pop("topic_prefix", "aiot/test"),
                     client_id="aiot-test", reconnect_min_s=0.05, reconnect_max_s=0.2,
                     **mqtt)
    uplink = Uplink(cfg, store, gateway_id="test", **({"clock": clock} if clock else {}))
    await uplink.start()
    try:
        yield uplink
    finally:
        await uplink.shutdown()


def subscriber(broker: Mosquitto, topic: str, name: str, **kw: Any
               ) -> contextlib.AbstractAsyncContextManager[aiomqtt.Client]:
    """uplinkkit's subscriber, speaking MQTT 5 (the user properties, expiry)."""
    return subscribed(broker, topic, name, protocol=aiomqtt.ProtocolVersion.V5, **kw)


# -- TLS ---------------------------------------------------------------------------------

async def test_tls_with_a_client_certificate_delivers_and_a_client_without_one_is_refused(
        tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = tls_broker(tmp_path, pki)
    ctx = __import__("ssl").create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    store = store_with_node(tmp_path / "gw.db")
    for i in range(3):
        send(store, i)
    try:
        async with started(broker):
            # a client that trusts the CA but shows no certificate of its own is refused
            bare = __import__("ssl").create_default_context(cafile=str(pki / "ca.pem"))
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(broker.host, broker.port, tls_context=bare,
                                          identifier="no-cert"):
                    pass
            async with subscriber(broker, "aiot/test/#", "sub-tls", tls_context=ctx) as sub, \
                    uplink_on(broker, store, tls_ca=str(pki / "ca.pem"),
                              tls_cert=str(pki / "client.pem"),
                              tls_key=str(pki / "client.key")) as uplink:
                got = await take(sub, 4)
                await uplink.wait_idle()
        assert [str(m.topic) for m in got] == [
            "aiot/test/node-1/status", *["aiot/test/node-1/data/3/0/9"] * 3]
        assert store.outbox_counts()[0] == 0
    finally:
        store.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.records), timeout), \
                [r.getMessage() for r in self.records]


async def test_a_broker_certificate_from_another_ca_is_refused_in_one_log_line(tmp_path):
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "other-ca")  # the uplink trusts this CA only
    broker = tls_broker(tmp_path, pki)
    store = store_with_node(tmp_path / "gw.db")
    seen = _Records()
    logger = logging.getLogger("aiotkit.gateway")
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with started(broker), uplink_on(
                broker, store, tls_ca=str(other / "other-ca.pem"),
                tls_cert=str(other / "client.pem"), tls_key=str(other / "client.key")) \
                as uplink:
            # three attempts at least
            await asyncio.to_thread(seen.wait, lambda rs: any(
                "(attempt 3)" in r.getMessage() for r in rs))
            assert not uplink.connected
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
        store.close()
    mine = [r for r in seen.records if r.name.startswith("aiotkit.gateway.uplink")]
    loud = [r for r in mine if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert "TLS: the broker's certificate is not trusted" in loud[0].getMessage()
    assert not any(r.exc_info for r in mine)  # no traceback


def test_tls_paths_are_relative_to_the_config_file_and_a_key_needs_a_certificate(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nid = "g1"\n[mqtt]\nenabled = true\ntls_ca = "pki/ca.pem"\n'
                   'tls_cert = "pki/c.pem"\ntls_key = "pki/c.key"\n')
    m = load_config(cfg).mqtt
    assert (m.tls_ca, m.tls_cert, m.tls_key) == tuple(
        str(tmp_path / "pki" / f) for f in ("ca.pem", "c.pem", "c.key"))
    assert not m.tls_insecure and m.client_id == "aiot-g1" and m.topic_prefix == "aiot/g1"
    cfg.write_text('[mqtt]\ntls_key = "c.key"\n')
    with pytest.raises(ConfigError, match="mqtt.tls_key: needs mqtt.tls_cert"):
        load_config(cfg)
    for bad in ("outbox_max_rows = -1", "max_rate_per_s = -2.0", "expiry_status_s = -1",
                "batch_latency_ms = 600000"):
        cfg.write_text(f"[mqtt]\n{bad}\n")
        with pytest.raises(ConfigError, match=f"mqtt.{bad.split()[0]}"):
            load_config(cfg)


async def test_a_client_certificate_that_cannot_be_loaded_is_a_config_error(tmp_path):
    store = store_with_node(tmp_path / "gw.db")
    try:
        uplink = Uplink(MqttConfig(enabled=True, tls_cert=str(tmp_path / "missing.pem")),
                        store)
        with pytest.raises(ConfigError, match="mqtt.tls_cert"):
            await uplink.start()
    finally:
        store.close()


# -- topics computed when published ------------------------------------------------------

async def test_a_changed_prefix_applies_to_the_backlog_and_old_rows_keep_their_topic(
        tmp_path):
    db = tmp_path / "gw.db"
    # a file of schema version 8 with a row as that gateway wrote it (whole topic)
    file_at_version(db, 8)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO outbox (topic, payload, retain, created) VALUES"
                     " ('aiot/old/node-0/status', x'7b7d', 1, ?)", (T0,))
    store = store_with_node(db, prefix="aiot/old")
    for i in range(2):
        send(store, i)
    store.close()
    store = store_with_node(db, prefix="site-b/gw")  # the operator changed the prefix
    broker = plain_broker(tmp_path)
    try:
        async with started(broker), subscriber(broker, "#", "sub-prefix") as sub, \
                uplink_on(broker, store, topic_prefix="site-b/gw") as uplink:
            got = await take(sub, 5)
            await uplink.wait_idle()
        # statuses first (priority), then telemetry; the v8 row as it was written
        assert [str(m.topic) for m in got] == [
            "aiot/old/node-0/status", "site-b/gw/node-1/status", "site-b/gw/node-1/status",
            "site-b/gw/node-1/data/3/0/9", "site-b/gw/node-1/data/3/0/9"]
    finally:
        store.close()


# -- priorities, message ids, expiry -----------------------------------------------------

async def test_alerts_and_ota_results_overtake_a_telemetry_backlog_order_kept_per_kind(
        tmp_path):
    store = store_with_node(tmp_path / "gw.db")
    store.save_registration(Registration("node-2", "r-2", "127.0.0.1", 5684, 60, "U",
                                         "1.1", "</3/0>", T0, T0),
                            "registered", "registered", T0)
    for i in range(40):
        send(store, i, "node-1" if i % 2 else "node-2")
    store.outbox_add([OutboxMessage("node-1/rollup/1m", b"r1", kind="rollup")], T0 + 1)
    store.outbox_add([OutboxMessage("node-2/alert", b"a1", kind="alert", msg_id="al-1"),
                      OutboxMessage("node-1/ota", b"o1", kind="ota")], T0 + 2)
    store.outbox_add([OutboxMessage("node-2/alert", b"a2", kind="alert", msg_id="al-2")],
                     T0 + 3)
    broker = plain_broker(tmp_path)
    try:
        async with started(broker), subscriber(broker, "aiot/test/#", "sub-prio") as sub, \
                uplink_on(broker, store, batch=8) as uplink:
            got = await take(sub, 2 + 40 + 4)
            await uplink.wait_idle()
    finally:
        store.close()
    kinds = [str(m.topic).split("/", 3)[3] for m in got]
    assert kinds[:3] == ["alert", "ota", "alert"]
    assert [m.payload for m in got[:3]] == [b"a1", b"o1", b"a2"]
    assert kinds[3:5] == ["status", "status"]
    assert kinds[5] == "rollup/1m"
    assert all(k == "data/3/0/9" for k in kinds[6:])
    import json
    for ep in ("node-1", "node-2"):
        values = [json.loads(m.payload)["v"] for m in got[6:] if f"/{ep}/" in str(m.topic)]
        assert values == sorted(values) and len(values) == 20
    # every message names its gateway and a stable id: the reading id for telemetry
    keys = [message_key(m) for m in got]
    assert keys[0] == ("test", "al-1") and keys[1] is not None
    assert keys[1][1].startswith("ota-")  # none given: kind and outbox row id
    assert all(k is not None and k[0] == "test" for k in keys)
    assert [k[1] for k in keys[6:] if k] == [str(json.loads(m.payload)["id"]) for m in got[6:]]
    assert len(set(keys)) == len(keys)


async def test_expired_messages_are_dropped_and_counted_the_rest_carry_what_is_left(
        tmp_path):
    store = store_with_node(tmp_path / "gw.db")  # its status, committed at T0
    send(store, 0, now=T0)  # telemetry committed at T0: 100 s old when published
    store.outbox_add([OutboxMessage("node-1/alert", b"{}", kind="alert")], T0)
    broker = plain_broker(tmp_path)
    try:
        async with started(broker), subscriber(broker, "aiot/test/#", "sub-exp") as sub, \
                uplink_on(broker, store, expiry_telemetry_s=60.0, expiry_status_s=1000.0,
                          clock=lambda: T0 + 100) as uplink:
            got = await take(sub, 2)
            await uplink.wait_idle()
        assert [str(m.topic) for m in got] == ["aiot/test/node-1/alert",
                                               "aiot/test/node-1/status"]
        alert, status = got
        assert getattr(alert.properties, "MessageExpiryInterval", None) is None  # never
        # what was left when published; the broker counts down from there
        assert 0 < status.properties.MessageExpiryInterval <= 900
        assert store.outbox_drops() == {"expired_telemetry": 1}
        assert uplink.expired == 1 and store.outbox_counts()[0] == 0
    finally:
        store.close()


def test_the_consumer_example_drops_repeats_and_forgets_only_the_oldest_keys():
    d = Dedup(keep=3)
    assert [d.first(("gw", str(i))) for i in (1, 2, 1, 3, 4)] == [True, True, False, True,
                                                                 True]
    assert d.first(("other-gw", "1"))  # the same id from another gateway is another message
    assert d.first(("gw", "2"))  # forgotten: only the newest 3 are kept
    assert d.repeats == 1


# -- the budget and a full disk ----------------------------------------------------------

def test_the_budget_drops_the_oldest_telemetry_then_rollups_then_statuses_never_alerts(
        tmp_path):
    store = store_with_node(tmp_path / "gw.db")  # 1 status
    try:
        store.outbox_set_budget(10)
        store.outbox_add([OutboxMessage(f"a/{i}", b"", kind="alert") for i in range(3)], T0)
        store.outbox_add([OutboxMessage(f"r/{i}", b"", kind="rollup") for i in range(3)], T0)
        for i in range(6):
            send(store, i)
        # 1 + 3 + 3 + 6 = 13 > 10: the three oldest readings went
        assert store.outbox_drops() == {"budget_telemetry": 3}
        pending = store.outbox_pending(0, 100)
        assert len(pending) == 10
        assert [r.kind for r in pending].count("telemetry") == 3
        values = [int(p.payload.split(b'"v":')[1].split(b",")[0])
                  for p in pending if p.kind == "telemetry"]
        assert values == [3, 4, 5]  # the newest kept
        store.outbox_add([OutboxMessage(f"a/x{i}", b"", kind="alert") for i in range(9)], T0)
        # telemetry (but the newest row's slot rules: all of it), rollups, then the status
        drops = store.outbox_drops()
        assert drops["budget_telemetry"] == 6 and drops["budget_rollup"] == 3
        assert drops["budget_status"] == 1
        kinds = [r.kind for r in store.outbox_pending(0, 100)]
        assert kinds == ["alert"] * 12  # alerts are never dropped, even beyond the budget
    finally:
        store.close()


def test_the_byte_budget_drops_the_oldest_telemetry_until_the_bytes_fit(tmp_path):
    # Before, the budget counted rows only: 1,000,000 rows of large payloads could fill
    # the disk
    store = store_with_node(tmp_path / "gw.db")  # 1 status
    try:
        status = store.outbox_pending_bytes()
        store.outbox_set_budget(0, 2000)
        store.outbox_add([OutboxMessage("n/alert", b"a" * 300, kind="alert")], T0)
        for i in range(20):
            store.outbox_add([OutboxMessage(f"n/data/{i}", bytes(100 + i),
                                            kind="telemetry")], T0)
        kept = store.outbox_pending(0, 100)
        size = sum(len(r.payload) + len(r.topic.split("/", 2)[2]) for r in kept)
        assert size == store.outbox_pending_bytes() <= 2000
        data = [r.topic.rsplit("/", 1)[1] for r in kept if r.kind == "telemetry"]
        assert data == [str(i) for i in range(20 - len(data), 20)]  # the newest kept
        # exactly as many dropped as needed: one more would have fitted
        drops = store.outbox_drops()["budget_telemetry"]
        assert drops + len(data) == 20
        assert size + len(f"n/data/{19 - len(data)}") + 100 + 19 - len(data) > 2000
        # alerts go beyond it; the status and telemetry go first
        store.outbox_add([OutboxMessage("n/alert", b"b" * 2100, kind="alert")], T0)
        assert [r.kind for r in store.outbox_pending(0, 100)] == ["alert"] * 2
        assert store.outbox_pending_bytes() == 2 * len("n/alert") + 2400
        assert store.outbox_drops()["budget_status"] == 1 and status > 0
    finally:
        store.close()


_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["telemetry", "rollup", "status", "alert"]),
              st.integers(0, 400), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("confirm"), st.integers(0, 40)),
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("aside"), st.integers(0, 40))), max_size=60)


@given(ops=_OPS, budget=st.integers(1, 3000))
@settings(deadline=None)  # a database file per example
def test_the_outbox_byte_count_stays_exact_through_adds_confirms_drops_and_dead_letters(
        tmp_path_factory, ops, budget):
    store = SqliteStorage.open(tmp_path_factory.mktemp("b") / "gw.db",
                               encoder=TopicScheme("p"))
    try:
        store.outbox_set_budget(0, budget)
        for op in ops:
            if op[0] == "add":  # topics with non-ASCII characters count their UTF-8 bytes
                store.outbox_add([OutboxMessage(op[3], bytes(op[2]), kind=op[1])], T0)
            elif op[0] == "confirm":
                store.outbox_confirm([op[1]], T0)
            elif op[0] == "drop":
                store.outbox_drop([op[1]], "expired", T0)
            else:
                store.outbox_set_aside(op[1], "refused", T0)
            kept = store.outbox_pending(0, 1000)
            size = sum(len(r.payload) + len(r.topic[2:].encode()) for r in kept)
            assert store.outbox_pending_bytes() == size
            if size > budget:  # only what is never dropped, or the newest row, is left
                newest = store.outbox_last_id()
                assert all(r.kind in ("alert", "ota") or r.id == newest for r in kept)
    finally:
        store.close()


async def test_a_full_disk_stops_storing_but_not_forwarding(tmp_path, caplog):
    store = store_with_node(tmp_path / "gw.db")
    broker = plain_broker(tmp_path)
    try:
        for i in range(50):
            send(store, i)
        db = store._conn  # the store's own connection: SQLite's page cap is per connection
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 2}")
        i = 50
        with pytest.raises(sqlite3.OperationalError, match="full"):
            while True:  # fill the file to its (simulated) end
                send(store, i)
                i += 1
        stored = i  # readings 0 .. i-1; the i-th did not fit
        assert store.outbox_counts()[0] == 1 + stored
        async with started(broker), subscriber(broker, "aiot/test/+/data/#", "sub-full") \
                as sub, uplink_on(broker, store, batch=16) as uplink:
            got = await take(sub, stored)
            await uplink.wait_idle()  # every row confirmed (deleted, where it had to be)
        ids = [int(message_key(m)[1]) for m in got]  # type: ignore[index]
        assert len(set(ids)) == stored
        assert store.outbox_counts()[0] == 0
        assert not [r for r in caplog.records if "mqtt uplink failed" in r.getMessage()]
    finally:
        store.close()


MQTT_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=300)


@given(MQTT_TEXT, MQTT_TEXT, st.integers(0, 0xFFFF_FFFF))
def test_properties_the_uplink_packs_itself_read_back_as_paho_reads_them(k, v, expiry):
    from aiotkit.gateway.uplink.mqtt import _Packed, _user_property
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    packed = _Packed(_user_property(k, v) + b"\x02" + expiry.to_bytes(4, "big")).pack()
    props = Properties(PacketTypes.PUBLISH)
    _, n = props.unpack(packed)
    assert n == len(packed)
    assert props.UserProperty == [(k, v)] and props.MessageExpiryInterval == expiry


@given(st.text(max_size=50))
def test_a_message_id_mqtt_cannot_carry_is_replaced_by_kind_and_row_id(msg_id):
    from aiotkit.gateway.storage.api import OutboxRow
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    uplink = Uplink.__new__(Uplink)  # only what _properties reads
    uplink._gw_prop = b""
    uplink._expiry = {}
    props = uplink._properties(OutboxRow(7, "t", b"", False, T0, "alert", msg_id), T0)
    assert props is not None
    got = Properties(PacketTypes.PUBLISH)
    got.unpack(props.pack())  # never a packet paho (or a broker) refuses
    ((key, value),) = got.UserProperty
    assert key == "msg-id"
    ok = msg_id and "\x00" not in msg_id and not any(0xD800 <= ord(c) <= 0xDFFF
                                                     for c in msg_id)
    assert value == (msg_id if ok else "alert-7")


# -- the token bucket --------------------------------------------------------------------

def test_the_token_bucket_allows_a_burst_then_paces_to_the_rate():
    now = [0.0]
    bucket = TokenBucket(100.0, 5, monotonic=lambda: now[0])
    assert [bucket.delay() for _ in range(5)] == [0.0] * 5  # the burst
    waits = [bucket.delay() for _ in range(3)]  # then one every 10 ms, queued
    assert waits == pytest.approx([0.01, 0.02, 0.03])
    now[0] = 1.0  # a quiet second refills up to the burst, no more
    assert [bucket.delay() for _ in range(5)] == [0.0] * 5
    assert bucket.delay() > 0
    assert TokenBucket(0.0, 5).delay() == 0.0  # 0: unlimited
