"""Sparkplug B 3.0 on the MQTT uplink (``[mqtt] format = "sparkplug"``).

For SCADA hosts that speak Sparkplug (Ignition's MQTT Engine, HiveMQ or EMQX with a
Sparkplug host, any Eclipse Tahu host): the gateway is one Edge Node (edge node id =
``gateway.id``) in the group ``mqtt.sparkplug_group``, and each LwM2M endpoint is a
Device (device id = endpoint name). Telemetry and node states leave as Sparkplug; the
other kinds (rollups, alerts, OTA results) keep their JSON topics under
``mqtt.topic_prefix`` with QoS 1 (``mqtt.py``), outside the ``spBv1.0`` namespace. The
gateway's JSON status (``mqtt.gateway_status``) is not published: NBIRTH and NDEATH say
it, and an MQTT session has one Will.

Topics (``{g}`` group, ``{e}`` edge node, ``{d}`` device)::

    spBv1.0/{g}/NBIRTH/{e}      on every connect and on a rebirth request
    spBv1.0/{g}/NDEATH/{e}      the session's Will; also published on a clean shutdown
    spBv1.0/{g}/DBIRTH/{e}/{d}  a node's metrics, their datatypes and aliases
    spBv1.0/{g}/DDATA/{e}/{d}   readings
    spBv1.0/{g}/DDEATH/{e}/{d}  the node de-registered or went offline (lifetime lapsed)
    spBv1.0/{g}/NCMD/{e}        subscribed: 'Node Control/Rebirth' republishes the births
    spBv1.0/{g}/DCMD/{e}/+      subscribed: writes to nodes are not supported (logged)
    spBv1.0/STATE/{host}        subscribed if ``mqtt.sparkplug_host`` names a Primary Host

Payloads are Sparkplug B protobuf (Eclipse Tahu ``sparkplug_b.proto``), encoded here
(``encode``/``decode``: the few fields an Edge Node uses; tested against Google's
``protobuf`` runtime with Tahu's .proto). A metric is named by its LwM2M path without the
leading slash (``3303/0/5700``); its datatype follows the value: Boolean, Int64 (UInt64
above 2**63-1), Double, String, Bytes. A metric's datatype is kept for the session: an
integer for a Double metric is sent as a double; a value that does not fit (a float for
an Int64 metric, a string for a number) makes a new DBIRTH first with the wider type
(Double for mixed numbers). DBIRTH carries every path the node has a stored value for
(``Storage.latest``) with that value; a path not in it yet makes a new DBIRTH before the
DDATA that brings it. Metrics are bound to aliases in the births; DDATA carries aliases
only (Sparkplug 3.0 §6.4.6). Timestamps are epoch milliseconds: a metric's is the
reading's time (SenML time; the gateway's receive time when the node sent none or a
relative one), the payload's is the publish time.

Session and sequence numbers (where they live): the outbox keeps the JSON rows
``TopicScheme`` commits (``mqtt.py``), unchanged; this module turns them into Sparkplug
messages when they are published, so everything Sparkplug numbers is assigned then, in
memory: ``bdSeq`` is 0 for the first CONNECT of the process and one more (mod 256) for
the CONNECT after each one the broker accepted, carried by that CONNECT's Will (NDEATH)
and by the NBIRTH right after it and after every rebirth of that session; ``seq`` is 0
on NBIRTH and one more (mod 256) on every DBIRTH, DDATA and DDEATH of the edge node, in
publish order (assigned in the same synchronous step that hands the message to the MQTT
client). Switching ``format`` applies to the backlog, as a changed ``topic_prefix`` does.

History: a row committed before the NBIRTH of the session that publishes it (so kept in
the outbox through a broker outage, a gateway restart or a Primary Host's absence) is
sent with ``is_historical = true`` on each of its metrics: hosts store it in history
without moving the live value back (Sparkplug's store and forward). Statuses committed
before that NBIRTH are not replayed: the births of the new session (a DBIRTH for each
node registered at that moment) supersede them. A node with backlog readings that is no
longer registered is born for them and given its DDEATH right after.

Quality of service and what is still guaranteed: Sparkplug 3.0 requires QoS 0 and no
retain for NBIRTH, DBIRTH, DDATA and DDEATH (tck-id-topics-*-mqtt), and the NDEATH Will
at QoS 1, not retained; this module follows that. QoS 0 has no PUBACK, so a row is
confirmed once the broker has answered an UNSUBSCRIBE (of a topic never subscribed)
sent after its message on the same connection: MQTT clients and brokers process one
connection's packets in order, so the broker had taken every message before it. A
session that ends before that answer leaves the rows unconfirmed: they are published
again in the next session (then historical). So the guarantee up to the broker is the
JSON format's (at least once, nothing acknowledged is dropped, ``mqtt.py``); beyond it,
QoS 0 means the broker forwards a message only to subscribers connected at that moment,
does not queue it for a disconnected persistent session, and may drop it under
overload; a broker that refuses a QoS 0 publish (e.g. an ACL) drops it silently. That is
what ``mqtt.sparkplug_host`` is for, as the spec intends: births and data wait until the
Primary Host's STATE says online, and when it goes offline the gateway publishes NDEATH,
disconnects and keeps the data in the outbox until the host is back (then historical).
Without a Primary Host, readings published while no host is subscribed are lost to it.
Grant the gateway publish rights on ``spBv1.0/{g}/#``.

Not supported: DCMD writes to nodes and NCMD metrics other than the rebirth request
(each logged as a warning, counted); Templates, DataSets, properties; bdSeq continuity
across gateway restarts (the spec's start at zero is followed).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as paho

from ..config import MqttConfig
from ..errors import GatewayError
from ..logs import PeerLog
from ..storage.api import OutboxRow, Storage

__all__ = ["DATATYPES", "SPARKPLUG_KINDS", "Metric", "Payload", "SparkplugEdge",
           "SparkplugError", "decode", "encode", "varint"]

log = logging.getLogger("aiotkit.gateway.uplink.sparkplug")
# what other MQTT clients make it say (STATE, NCMD, DCMD): a few lines a minute at most
_peer_log = PeerLog(log, interval=60.0, burst=3)

NAMESPACE: Final = "spBv1.0"
SPARKPLUG_KINDS: Final = frozenset(("telemetry", "status"))  # outbox kinds sent as Sparkplug
REBIRTH: Final = "Node Control/Rebirth"
_BARRIER_TIMEOUT_S = 60.0  # an UNSUBACK later than this ends the session (then replay)
_RELATIVE_T = 2**28  # SenML: a time below this is relative to reception (RFC 8428 §4.5.3)
_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# -- the payload: Sparkplug 3.0 §6.4.16 datatypes, the Metric value field each one uses ----
# (Tahu sparkplug_b.proto: int_value 10 uint32, long_value 11 uint64, float_value 12,
# double_value 13, boolean_value 14, string_value 15, bytes_value 16; signed integers as
# two's complement of their width in int_value/long_value)
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # protobuf wire types
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
BYTES, FILE = 17, 18
# datatype: (name, Metric value field, wire type, signed bits or 0)
DATATYPES: Final[dict[int, tuple[str, int, int, int]]] = {
    INT8: ("Int8", 10, _VARINT, 8), INT16: ("Int16", 10, _VARINT, 16),
    INT32: ("Int32", 10, _VARINT, 32), INT64: ("Int64", 11, _VARINT, 64),
    UINT8: ("UInt8", 10, _VARINT, 0), UINT16: ("UInt16", 10, _VARINT, 0),
    UINT32: ("UInt32", 10, _VARINT, 0), UINT64: ("UInt64", 11, _VARINT, 0),
    FLOAT: ("Float", 12, _I32, 0), DOUBLE: ("Double", 13, _I64, 0),
    BOOLEAN: ("Boolean", 14, _VARINT, 0), STRING: ("String", 15, _LEN, 0),
    DATETIME: ("DateTime", 11, _VARINT, 0), TEXT: ("Text", 15, _LEN, 0),
    UUID: ("UUID", 15, _LEN, 0), BYTES: ("Bytes", 16, _LEN, 0), FILE: ("File", 16, _LEN, 0),
}
_VALUE_FIELDS = frozenset(range(10, 20))  # the Metric oneof (17..19: not used here)
_NUMERIC = frozenset((INT64, UINT64, DOUBLE))

MetricValue = bool | int | float | str | bytes


class SparkplugError(GatewayError):
    """A Sparkplug payload from outside (a command) that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One Sparkplug metric; ``value`` None with ``is_null``: an explicit null. Integers
    are the values themselves (negative ones for signed datatypes). ``datatype`` picks
    the value's field; ``datatype_sent`` False leaves it out of the bytes (DATA
    messages: tck-id-payloads-metric-datatype-not-req), so it decodes as None."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    value: MetricValue | None = None
    is_historical: bool = False
    is_transient: bool = False
    is_null: bool = False
    datatype_sent: bool = True


@dataclass(frozen=True, slots=True)
class Payload:
    """A Sparkplug B payload: message timestamp (ms), metrics, sequence number."""

    timestamp: int | None = None
    metrics: tuple[Metric, ...] = ()
    seq: int | None = None


def encode(p: Payload) -> bytes:
    """The protobuf bytes of ``p`` (fields in number order, as protobuf writes them).
    TypeError or ValueError for a value its datatype cannot carry (a caller's bug)."""
    out = bytearray()
    if p.timestamp is not None:
        out += _tag(1, _VARINT) + varint(p.timestamp)
    for m in p.metrics:
        body = _metric(m)
        out += _tag(2, _LEN) + varint(len(body)) + body
    if p.seq is not None:
        out += _tag(3, _VARINT) + varint(p.seq)
    return bytes(out)


def _metric(m: Metric) -> bytes:
    out = bytearray()
    if m.name is not None:
        raw = m.name.encode("utf-8")
        out += _tag(1, _LEN) + varint(len(raw)) + raw
    for number, flag in ((2, m.alias), (3, m.timestamp),
                         (4, m.datatype if m.datatype_sent else None)):
        if flag is not None:
            out += _tag(number, _VARINT) + varint(flag)
    for number, on in ((5, m.is_historical), (6, m.is_transient), (7, m.is_null)):
        if on:
            out += _tag(number, _VARINT) + b"\x01"
    if m.value is None:
        return bytes(out)
    if m.datatype not in DATATYPES:
        raise ValueError(f"metric {m.name or m.alias}: a value needs a known datatype"
                         f" (got {m.datatype})")
    name, number, wire, bits = DATATYPES[m.datatype]
    v = m.value
    out += _tag(number, wire)
    if wire == _VARINT:
        if isinstance(v, bool):
            if m.datatype != BOOLEAN:
                raise TypeError(f"{name}: a boolean value")
            out += b"\x01" if v else b"\x00"
            return bytes(out)
        if not isinstance(v, int):
            raise TypeError(f"{name}: {type(v).__name__} value")
        width = 32 if number == 10 else 64
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if bits else (0, 1 << width)
        if name.startswith("UInt") and width == 32:
            hi = 1 << {UINT8: 8, UINT16: 16, UINT32: 32}[m.datatype]
        if not lo <= v < hi:
            raise ValueError(f"{name}: {v} out of range")
        out += varint(v & (_MASK32 if width == 32 else _MASK64))
    elif wire == _I32:
        out += struct.pack("<f", _float(v, name))
    elif wire == _I64:
        out += struct.pack("<d", _float(v, name))
    else:
        if isinstance(v, str) and number == 15:
            raw = v.encode("utf-8")
        elif isinstance(v, bytes) and number == 16:
            raw = v
        else:
            raise TypeError(f"{name}: {type(v).__name__} value")
        out += varint(len(raw)) + raw
    return bytes(out)


def _float(v: MetricValue | None, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"{name}: {type(v).__name__} value")
    return float(v)


def _tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def varint(n: int) -> bytes:
    """Base 128, low group first, the high bit saying more follow: protobuf's varint,
    and MQTT's Variable Byte Integer (MQTT 5 §1.5.5) below 2**28."""
    if not 0 <= n <= _MASK64:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        n, low = n >> 7, n & 0x7F
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode(data: bytes) -> Payload:
    """The payload in ``data``; fields this module does not use (uuid, body, metadata,
    properties, DataSets, Templates, extensions) are skipped. SparkplugError when the
    bytes are not a well-formed payload."""
    timestamp = seq = None
    metrics: list[Metric] = []
    for number, wire, value in _fields(memoryview(data)):
        if number == 1:
            timestamp = _want_int(value, wire, "timestamp")
        elif number == 2:
            if wire != _LEN:
                raise SparkplugError(f"payload: metric with wire type {wire}")
            metrics.append(_decode_metric(value))  # type: ignore[arg-type]
        elif number == 3:
            seq = _want_int(value, wire, "seq")
    return Payload(timestamp, tuple(metrics), seq)


def _decode_metric(data: memoryview) -> Metric:
    f: dict[str, Any] = {}
    raw: tuple[int, int, int | memoryview] | None = None
    for number, wire, value in _fields(data):
        if number == 1:
            f["name"] = _text(value, wire, "metric name")
        elif number in (2, 3, 4):
            f[("alias", "timestamp", "datatype")[number - 2]] = _want_int(
                value, wire, f"metric field {number}")
        elif number in (5, 6, 7):
            f[("is_historical", "is_transient", "is_null")[number - 5]] = bool(
                _want_int(value, wire, f"metric field {number}"))
        elif number in _VALUE_FIELDS:
            raw = (number, wire, value)  # the oneof: the last one counts
    dt = f.get("datatype")
    if raw is not None and raw[0] <= 16:
        number, wire, value = raw
        expected = {10: _VARINT, 11: _VARINT, 12: _I32, 13: _I64, 14: _VARINT, 15: _LEN,
                    16: _LEN}[number]
        if wire != expected:
            raise SparkplugError(f"metric value field {number} with wire type {wire}")
        if isinstance(value, int):  # 10, 11, 14: varints
            if number == 10:  # uint32: protobuf keeps the low 32 bits
                bits = DATATYPES.get(dt or 0, ("", 0, 0, 0))[3]
                f["value"] = _signed(value, bits) if bits else value & _MASK32
            elif number == 11:
                f["value"] = _signed(value, 64) if dt == INT64 else value
            else:
                f["value"] = bool(value)
        elif number == 12:
            f["value"] = struct.unpack("<f", value)[0]
        elif number == 13:
            f["value"] = struct.unpack("<d", value)[0]
        elif number == 15:
            f["value"] = _text(value, wire, "metric string value")
        else:
            f["value"] = bytes(value)
    return Metric(**f)


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _want_int(value: int | memoryview, wire: int, what: str) -> int:
    if wire != _VARINT or not isinstance(value, int):
        raise SparkplugError(f"{what}: wire type {wire}, expected a varint")
    return value


def _text(value: int | memoryview, wire: int, what: str) -> str:
    if wire != _LEN or isinstance(value, int):
        raise SparkplugError(f"{what}: wire type {wire}, expected length-delimited")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SparkplugError(f"{what}: not UTF-8") from e


def _fields(data: memoryview) -> Iterable[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field in ``data``: an int for varints,
    the bytes of the others; every length checked against what is left."""
    i, n = 0, len(data)
    while i < n:
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise SparkplugError("field number 0")
        if wire == _VARINT:
            value, i = _read_varint(data, i)
            yield number, wire, value
            continue
        if wire == _I64:
            size = 8
        elif wire == _I32:
            size = 4
        elif wire == _LEN:
            size, i = _read_varint(data, i)
        else:  # 3, 4: groups (not in this .proto); 6, 7: invalid
            raise SparkplugError(f"field {number}: unsupported wire type {wire}")
        if size > n - i:
            raise SparkplugError(f"field {number}: {size} bytes, {n - i} left")
        yield number, wire, data[i:i + size]
        i += size


def _read_varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    for j in range(i, min(i + 10, len(data))):
        b = data[j]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value > _MASK64:
                raise SparkplugError("varint above 64 bits")
            return value, j + 1
        shift += 7
    raise SparkplugError("truncated or over-long varint")


# -- the Edge Node ---------------------------------------------------------------------------

def datatype_of(v: MetricValue) -> int:
    """The datatype a reading's value is sent as."""
    if isinstance(v, bool):
        return BOOLEAN
    if isinstance(v, int):
        return INT64 if -(1 << 63) <= v < (1 << 63) else UINT64 if 0 <= v <= _MASK64 else DOUBLE
    if isinstance(v, float):
        return DOUBLE
    return STRING if isinstance(v, str) else BYTES


def _widen(known: int | None, new: int) -> int:
    """The datatype a metric needs to carry values of ``known`` and ``new`` types."""
    if known is None or known == new:
        return new
    if known in _NUMERIC and new in _NUMERIC:
        return DOUBLE
    return new


def _as(dt: int, v: MetricValue) -> MetricValue:
    """``v`` as a value of datatype ``dt`` (integers into a Double metric)."""
    if dt == DOUBLE and not isinstance(v, float):
        return float(v)
    if dt == STRING and isinstance(v, str):
        return v.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    return v


def _ms(t: float | None, rx: float) -> int:
    """A reading's epoch milliseconds: its SenML time, or relative to reception."""
    when = rx if t is None else rx + t if t < _RELATIVE_T else t
    return max(0, round(when * 1000)) if math.isfinite(when) else 0


@dataclass(slots=True)
class _Reading:
    name: str
    value: MetricValue
    ms: int


@dataclass(slots=True)
class Unit:
    """What one publish step sends: a status change (``state``) or readings of one
    node, and the outbox rows it confirms."""

    device: str
    ids: list[int]
    state: str = ""
    historical: bool = False
    readings: list[_Reading] = field(default_factory=list)


class SparkplugEdge:
    """The Edge Node's Sparkplug session over the uplink's MQTT connections (module
    docstring). ``Uplink`` (``mqtt.py``) calls ``will`` when it connects, ``begin`` once
    connected, ``plan`` and ``send`` for outbox rows, ``barrier`` before confirming them,
    ``on_message`` for what arrives, and ``death`` on a clean shutdown."""

    def __init__(self, cfg: MqttConfig, store: Storage, edge: str, *,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self.edge = edge
        self.group = cfg.sparkplug_group
        self.host = cfg.sparkplug_host
        self._base = f"{NAMESPACE}/{self.group}"
        self._barrier_topic = f"{self._base}/NCMD/{edge}/barrier"  # never subscribed
        self._next_bd = 0  # the bdSeq of the next CONNECT
        self._will_bd = 0  # the bdSeq of the Will of the last CONNECT
        self.bd_seq = 0  # this session's
        self._seq = 0  # the next DBIRTH/DDATA/DDEATH's
        self.started = math.inf  # wall clock of this session's (first) NBIRTH
        self._client: aiomqtt.Client | None = None
        self._born: dict[str, dict[str, int]] = {}  # device -> metric -> datatype (session)
        self._types: dict[tuple[str, str], int] = {}  # (device, metric) -> last datatype
        self._aliases: dict[tuple[str, str], int] = {}  # stable while the process runs
        self._host_ts = -1  # the newest STATE timestamp seen
        self.ignored_commands = 0
        self.rebirths = 0

    # -- session -------------------------------------------------------------------------

    def will(self) -> aiomqtt.Will:
        """NDEATH for the next CONNECT (QoS 1, not retained: tck-id-payloads-ndeath-*)."""
        self._will_bd = self._next_bd
        return aiomqtt.Will(*self._ndeath(self._will_bd), qos=1, retain=False)

    def death(self) -> tuple[str, bytes]:
        """This session's NDEATH, to publish before a clean disconnect."""
        return self._ndeath(self.bd_seq)

    def _ndeath(self, bd: int) -> tuple[str, bytes]:
        return (f"{self._base}/NDEATH/{self.edge}",
                encode(Payload(self._now_ms(), (Metric("bdSeq", datatype=INT64, value=bd),))))

    async def begin(self, client: aiomqtt.Client) -> None:
        """The broker accepted the CONNECT: subscribe, wait for the Primary Host (if
        one is configured), publish NBIRTH and the DBIRTHs. MqttError if the session
        ends meanwhile."""
        self._client = client
        # QoS 0 publishes and the barrier are small writes that get no reply to carry
        # the peer's ACK: with Nagle, each barrier would wait for a delayed ACK (40 ms)
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bd_seq = self._will_bd
        self._next_bd = (self._will_bd + 1) & 0xFF
        self._born.clear()
        self.started = math.inf
        await client.subscribe(f"{self._base}/NCMD/{self.edge}", qos=0)
        await client.subscribe(f"{self._base}/DCMD/{self.edge}/+", qos=0)
        if self.host:
            await client.subscribe(f"{NAMESPACE}/STATE/{self.host}", qos=1)
            log.info("sparkplug: waiting for primary host %s to be online", self.host)
            async for m in client.messages:
                if self._host_state(m) is True:
                    break
        self.started = self._clock()
        self._births()

    def on_message(self, m: aiomqtt.Message) -> None:
        """A command or a STATE. MqttError (the session ends, after NDEATH) when the
        Primary Host went offline."""
        topic = str(m.topic)
        if topic == f"{self._base}/NCMD/{self.edge}":
            self._command(bytes(m.payload) if isinstance(m.payload, bytes | bytearray)
                          else b"")
        elif topic.startswith(f"{self._base}/DCMD/{self.edge}/"):
            self._ignored(f"DCMD for {topic.rsplit('/', 1)[1]!r}: writes to nodes from"
                          " Sparkplug are not supported")
        elif self.host and topic == f"{NAMESPACE}/STATE/{self.host}" \
                and self._host_state(m) is False:
            self._publish(*self.death())
            raise aiomqtt.MqttError(f"sparkplug primary host {self.host} went offline")

    def _host_state(self, m: aiomqtt.Message) -> bool | None:
        """The Primary Host's STATE (3.0: ``{"online": bool, "timestamp": ms}``; the
        plain ``ONLINE``/``OFFLINE`` of older hosts too); None if it cannot be read or
        is older than one seen before."""
        raw = m.payload if isinstance(m.payload, bytes | bytearray) else b""
        text = bytes(raw).decode("utf-8", "replace").strip()
        if text in ("ONLINE", "OFFLINE"):
            return text == "ONLINE"
        try:
            body = json.loads(text)
            online, ts = body["online"], body.get("timestamp", 0)
        except (ValueError, TypeError, KeyError):
            _peer_log.warning("sp-state", "sparkplug: unreadable STATE from %s: %.80r",
                              self.host, text)
            return None
        if not isinstance(online, bool) or not isinstance(ts, int):
            _peer_log.warning("sp-state", "sparkplug: unreadable STATE from %s: %.80r",
                              self.host, text)
            return None
        if ts < self._host_ts:
            return None  # an older STATE than one seen (3.0 §: stale STATE is ignored)
        self._host_ts = ts
        return online

    def _command(self, payload: bytes) -> None:
        try:
            p = decode(payload)
        except SparkplugError as e:
            self._ignored(f"NCMD that cannot be decoded: {e}")
            return
        for m in p.metrics:
            if m.name == REBIRTH and m.value is True:
                self.rebirths += 1
                _peer_log.info("sp-rebirth", "sparkplug: rebirth requested")
                self._births()
            else:
                self._ignored(f"NCMD metric {m.name or m.alias!r}: not supported")

    def _ignored(self, what: str) -> None:
        self.ignored_commands += 1
        _peer_log.warning("sp-ignored", "sparkplug: ignored %s (%d commands ignored)",
                          what, self.ignored_commands)

    def _births(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq), then a DBIRTH for each node registered
        now; both synchronous, so no DATA is sent between them."""
        self._seq = 0
        self._born.clear()
        metrics = (Metric("bdSeq", timestamp=self._now_ms(), datatype=INT64,
                          value=self.bd_seq),
                   Metric(REBIRTH, timestamp=self._now_ms(), datatype=BOOLEAN, value=False))
        self._publish(f"{self._base}/NBIRTH/{self.edge}", encode(
            Payload(self._now_ms(), metrics, self._next_seq())))
        for reg in self._store.registrations():
            if reg.state == "registered" and _device_ok(reg.endpoint):
                self._dbirth(reg.endpoint, {})

    # -- outbox rows -----------------------------------------------------------------------

    def plan(self, rows: Iterable[OutboxRow]) -> tuple[list[Unit], list[tuple[int, str]]]:
        """The publish steps for ``rows`` (in order; a node's readings of one kind of
        history in one DDATA, a metric at most once per timestamp in it), and the rows
        that cannot be sent, with the reason (set aside as dead letters)."""
        units: list[Unit] = []
        bad: list[tuple[int, str]] = []
        open_: dict[tuple[str, bool], tuple[Unit, set[tuple[str, int]]]] = {}
        for row in rows:
            try:
                body = json.loads(row.payload)
                device = body["ep"]
                if not isinstance(device, str) or not _device_ok(device):
                    raise ValueError(f"endpoint {device!r} cannot be a Sparkplug device id"
                                     " ('/', '+', '#', NUL or empty)")
                historical = row.created < self.started
                if row.kind == "status":
                    state = body["state"]
                    if not isinstance(state, str):
                        raise ValueError("state is not a string")
                    # an earlier session's status: the births said the present state
                    units.append(Unit(device, [row.id], "" if historical else state))
                    continue
                reading = _reading(body)
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                why = f"not a reading or status the sparkplug format can send: {e}"
                bad.append((row.id, why))
                continue
            key = (device, historical)
            unit, seen = open_.get(key, (None, set()))
            stamp = (reading.name, reading.ms)
            if unit is None or stamp in seen:
                unit, seen = Unit(device, [], historical=historical), set()
                open_[key] = (unit, seen)
                units.append(unit)
            seen.add(stamp)
            unit.ids.append(row.id)
            unit.readings.append(reading)
        return units, bad

    def send(self, unit: Unit) -> None:
        """Publish ``unit`` now (QoS 0), with the births it needs first; MqttError if
        the connection cannot take it."""
        dev = unit.device
        if not unit.readings:
            if unit.state == "registered" or (unit.state == "updated"
                                              and dev not in self._born):
                self._dbirth(dev, {})
            elif unit.state in ("deregistered", "offline") and dev in self._born:
                self._ddeath(dev)
            return
        born = self._born.get(dev)
        need: dict[str, int] = {}
        for r in unit.readings:
            dt = _widen((born or {}).get(r.name, self._types.get((dev, r.name))),
                        datatype_of(r.value))
            if born is None or born.get(r.name) != dt:
                need[r.name] = dt
        by_data = born is None
        if need:
            self._dbirth(dev, need)
        types = self._born[dev]
        readings = unit.readings if unit.historical else sorted(
            unit.readings, key=lambda r: r.ms)  # live values in time order (§5.x)
        metrics = tuple(Metric(alias=self._alias(dev, r.name), timestamp=r.ms,
                               datatype=types[r.name], value=_as(types[r.name], r.value),
                               is_historical=unit.historical, datatype_sent=False)
                        for r in readings)
        self._publish(f"{self._base}/DDATA/{self.edge}/{dev}",
                      encode(Payload(self._now_ms(), metrics, self._next_seq())))
        if by_data:  # born for backlog readings: is it still there?
            reg = self._store.registration(dev)
            if reg is None or reg.state != "registered":
                self._ddeath(dev)

    async def barrier(self) -> None:
        """Return once the broker has processed everything published before (module
        docstring); MqttError if the session ends first."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected")
        await client.unsubscribe(self._barrier_topic, timeout=_BARRIER_TIMEOUT_S)

    # -- messages ----------------------------------------------------------------------------

    def _dbirth(self, dev: str, need: dict[str, int]) -> None:
        """DBIRTH: every stored path of ``dev`` with its latest value, and ``need``."""
        latest = {path.lstrip("/"): v for path, v in self._store.latest(dev).items()}
        types: dict[str, int] = {}
        metrics: list[Metric] = []
        for name in sorted(set(latest) | set(need)):
            known = need.get(name, self._types.get((dev, name)))
            stored = latest.get(name)
            value = None if stored is None else stored.value
            dt = known if value is None else _widen(known, datatype_of(value))
            if dt is None:
                continue
            types[name] = dt
            self._types[(dev, name)] = dt
            ms = self._now_ms() if stored is None else _ms(stored.time, stored.received_at)
            metrics.append(Metric(name, self._alias(dev, name), ms, dt,
                                  None if value is None else _as(dt, value),
                                  is_null=value is None))
        self._publish(f"{self._base}/DBIRTH/{self.edge}/{dev}",
                      encode(Payload(self._now_ms(), tuple(metrics), self._next_seq())))
        self._born[dev] = types

    def _ddeath(self, dev: str) -> None:
        self._born.pop(dev, None)
        self._publish(f"{self._base}/DDEATH/{self.edge}/{dev}",
                      encode(Payload(self._now_ms(), (), self._next_seq())))

    def _alias(self, dev: str, name: str) -> int:
        key = (dev, name)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = len(self._aliases) + 1
        return alias

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) & 0xFF
        return seq

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _publish(self, topic: str, payload: bytes) -> None:
        """QoS 0, not retained, handed to the client's queue now (so in seq order)."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected")
        info = client._client.publish(topic, payload, qos=0, retain=False)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")


def _reading(body: dict[str, Any]) -> _Reading:
    path, rx, t = body["path"], body["rx"], body.get("t")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path {path!r}")
    if "vd" in body:
        value: MetricValue = base64.b64decode(body["vd"], validate=True)
    else:
        value = body["v"]
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"value {value!r}")
    if not isinstance(rx, int | float) or not (t is None or isinstance(t, int | float)):
        raise ValueError("times are not numbers")
    return _Reading(path[1:], value, _ms(t, rx))


def _device_ok(name: str) -> bool:
    return bool(name) and not set(name) & set("/+#\x00")
