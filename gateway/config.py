"""Gateway configuration: a TOML file read into frozen dataclasses.

Every key is optional. Unknown sections or keys, wrong types and out-of-range values
raise ``ConfigError`` with one line naming the file and the key, so a typo never
silently falls back to a default. ``GatewayConfig.default()`` is the configuration of
an empty file read from the current directory.

``security = "oscore"`` is the default: every CoAP request must be verified under a
node's OSCORE context. ``"nosec"`` (no protection) is for development only: it also needs
the command-line switch (``aiot gateway run --allow-nosec``, ``Gateway(...,
allow_nosec=True)``), and the gateway warns at start-up and at every unprotected
Register.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .analytics.rules import AlertsConfig, alerts_toml, parse_alerts
from .errors import ConfigError
from .lwm2m.bootstrap import BootstrapConfig, parse_bootstrap
from .lwm2m.paths import PathError, format_path, parse_path

__all__ = [
    "AnalyticsConfig",
    "CoapConfig",
    "DMConfig",
    "GatewayConfig",
    "GatewaySection",
    "InferenceConfig",
    "LogConfig",
    "ModelsConfig",
    "MqttConfig",
    "OpsConfig",
    "OtaConfig",
    "RegistryConfig",
    "RestConfig",
    "SecurityConfig",
    "TimeConfig",
    "check_runnable",
    "effective_toml",
    "load_config",
]

Security = Literal["oscore", "nosec"]
SECURITY_MODES: tuple[str, ...] = ("oscore", "nosec")
# Characters that would change the meaning of an MQTT topic built from the value.
_TOPIC_UNSAFE = frozenset("+#\x00")
# Keys whose values never appear in a message or log.
_SECRET_KEYS = frozenset({"mqtt.password"})


# storage.sqlite.REPORT_WINDOW_S: the history covers it (tests/gateway/test_prune.py)
REPORT_WINDOW_S = 86_400.0


@dataclass(frozen=True)
class GatewaySection:
    """``[gateway]``: identity, database and security mode, and how much history the
    database keeps (``SqliteStorage.prune_history``): Sends with their readings,
    Notifications and registry events older than ``history_s`` (0: any age), and
    beyond the newest ``history_max_sends`` Sends (0: any number), are deleted; latest
    values and the outbox stay."""

    id: str = "gw"
    db: Path = Path("aiot-gateway.db")
    security: Security = "oscore"
    history_s: float = 30 * 86400.0
    history_max_sends: int = 2_000_000


@dataclass(frozen=True)
class CoapConfig:
    """``[coap]``: where the LwM2M server listens and how much one Send may carry.
    ``compact_dedup``: remember each exchange for duplicate detection (RFC 7252 §4.5) as
    its key and encoded response only, about 0.4 kB instead of aiocoap's 3.4 kB for
    247 s (``gateway/coap/layer.py``); false keeps aiocoap's own. ``fast_send``: serve the
    common LwM2M Send (CON POST /dp, SenML, one datagram, from a registered IPv4 peer)
    below aiocoap's request layers (``gateway/coap/fastsend.py``; needs compact_dedup).
    ``fast_notify``: the same for plain Notifications of live observations
    (``gateway/coap/fastnotify.py``; needs compact_dedup); a CON one is ACKed after its
    COMMIT, not on arrival as aiocoap does. ``fast_oscore``: with OSCORE, the common
    protected Send verified (RFC 8613, the node's context and replay window) and stored
    below aiocoap (``gateway/coap/fastoscore.py``; needs compact_dedup); anything it does
    not fully verify goes to aiocoap's OSCORE layer unchanged."""

    host: str = "127.0.0.1"
    port: int = 5683
    max_records: int = 1000
    max_payload: int = 65536
    compact_dedup: bool = True
    fast_send: bool = True
    fast_notify: bool = True
    fast_oscore: bool = True
    # Block1 uploads being reassembled (gateway/coap/blockwise.py): at most this many per
    # peer and in all (more: 5.03 with Max-Age), this many bytes buffered in all, and
    # dropped after this long without a block; one past max_payload is 4.13 at once
    max_block1_transfers_per_peer: int = 4
    max_block1_transfers: int = 1000
    max_block1_bytes: int = 4194304
    block1_idle_s: float = 93.0


@dataclass(frozen=True)
class RegistryConfig:
    """``[registry]``: how often registration lifetimes are checked, and how long an
    endpoint that de-registered or expired is kept (0: for ever)."""

    expiry_check_s: float = 1.0
    prune_after_s: float = 7 * 86400.0
    # registered endpoints at most: a Register of a new endpoint beyond it is refused 5.03
    # with Max-Age (a known endpoint always registers again); a registration's object
    # links (link-format payload) at most, larger is refused 4.13 (gateway/lwm2m/server.py)
    max_endpoints: int = 10000
    max_links_bytes: int = 16384
    # new endpoints (names the store does not know) admitted per second at most, 0: no
    # limit; more are refused 5.03 with Max-Age 1 (a whole fleet's first Register counts)
    new_endpoints_per_s: int = 0


@dataclass(frozen=True)
class DMConfig:
    """``[dm]``: device management (``gateway/dm/manager.py``). ``request_timeout_s``: how long
    a node has to answer a request; ``queue_awake_s``: how long a queue-mode node
    counts as awake after a Register/Update (TS Transport: MAX_TRANSMIT_WAIT, 93 s);
    ``max_queued``: requests waiting per endpoint at most; ``observe``: paths observed on
    every node that registers their object instance, at each Register (auto-observe);
    ``keep_finished_days`` / ``keep_finished_max``: how long, and how many at most,
    finished requests and their results are kept (``gateway/storage/dmtables.py``)."""

    request_timeout_s: float = 30.0
    queue_awake_s: float = 93.0
    max_queued: int = 100
    observe: tuple[str, ...] = ()
    keep_finished_days: float = 7.0
    keep_finished_max: int = 10000


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the cloud uplink; ``topic_prefix``/``client_id`` are resolved."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = ""
    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    keepalive: int = 30
    batch: int = 100
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # a message is set aside (a dead letter) once the broker closed the connection this
    # many times in a row right after it was published (gateway/uplink/mqtt.py)
    refused_after: int = 3
    # TLS (gateway/uplink/mqtt.py): on with tls = true or any of tls_ca/tls_cert; PEM
    # files relative to the config file; tls_ca empty: the system's CAs; tls_insecure
    # skips the server's host-name check (never the chain)
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure: bool = False
    # unconfirmed outbox rows kept at most, and their bytes (payloads and topics);
    # beyond either, the oldest telemetry goes first (then rollups, then statuses;
    # never alerts or OTA results); 0: no limit
    outbox_max_rows: int = 1_000_000
    outbox_max_bytes: int = 256 << 20
    # publishes per second at most (a token bucket, burst `batch`): paces the catch-up
    # after an outage; 0: no limit
    max_rate_per_s: float = 0.0
    # a batch is read when `batch` rows wait or this long after new ones were announced
    batch_latency_ms: int = 5
    # MQTT 5 Message Expiry Interval per kind, from when a message was committed; one
    # older is dropped unpublished (counted); 0: never (alerts, OTA results: never)
    expiry_telemetry_s: float = 0.0
    expiry_rollup_s: float = 0.0
    expiry_status_s: float = 0.0
    # the gateway's own retained status ({prefix}/status: online, offline as its Will)
    gateway_status: bool = True
    # -- Sparkplug B (gateway/uplink/sparkplug.py) --
    # "json": the topics and payloads of gateway/uplink/mqtt.py; "sparkplug": telemetry
    # and node states as Sparkplug B 3.0 (the gateway an Edge Node, each node a Device)
    format: str = "json"
    sparkplug_group: str = "aiot"  # the Sparkplug Group ID
    # a Primary Host Application's id: births and data wait until its STATE is online;
    # empty: none
    sparkplug_host: str = ""


@dataclass(frozen=True)
class ShadowConfig:
    """``[shadow]``: replay the nodes' decisions through tflite-micro (gateway/inference/shadow.py).
    ``models``: a folder of more .tflite models (besides the shipped ones), relative to
    the config file."""

    enabled: bool = True
    models: str = ""


@dataclass(frozen=True)
class RestConfig:
    """``[rest]``: the HTTP REST API (gateway/api/rest.py). Every request needs a bearer token;
    ``tokens_file`` (relative to the config file) lists them with their roles. ``port = 0``
    lets the kernel pick a free port (logged in the ready line)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    tokens_file: str = ""
    # a connection that has not sent a whole request head this long after it opened (or
    # after its last response) is closed; a request body must arrive within body_timeout_s
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # connections open at once at most; more are answered 503 and closed at once
    max_connections: int = 256
    # the tokens file is read again (and its changes, revocations included, apply) at
    # the first request this long after the last look; 0: at every request
    tokens_check_s: float = 5.0
    # one JSON line per state-changing request (gateway/api/audit.py); "": next to the
    # database (gateway.db -> gateway.audit.jsonl); resolved at load
    audit_file: str = ""
    # PEM certificate (chain) and key: the API is served over TLS (https) only
    tls_cert: str = ""
    tls_key: str = ""
    # GET /metrics (Prometheus) needs a token of any role; false: open, like /health/*
    # (for a scraper on a private network; the figures name endpoints by count only)
    metrics_token_required: bool = False


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: the key the OSCORE contexts' secrets are encrypted with at rest
    (``gateway/security/atrest.py``). ``key_file`` (relative to the config file): a file
    holding 32 random bytes as 64 hex digits (``chmod 600``); when empty the key comes
    from the environment variable ``AIOT_GATEWAY_KEY`` (same format); with neither the
    gateway has no key store. ``max_loaded``: security contexts kept in memory at most
    (loaded on a node's first message; the least recently used beyond are closed)."""

    key_file: str = ""
    max_loaded: int = 20000


@dataclass(frozen=True)
class OtaConfig:
    """``[ota]``: the OTA service (``gateway/ota``). ``trust_file`` (relative to the
    config file): the trust set uploaded images are verified against (``aiot ota trust``);
    empty: uploads are refused. ``images_dir``: where verified images are kept, by their
    SHA-256; empty: ``<db>.ota-images`` next to the database. ``max_image_bytes``: the
    largest upload accepted. ``poll_s``: how often a node being updated is read (/5/0).
    ``push_max_bytes``: an app image up to this size is pushed (written to /5/0/0,
    Block1) rather than pulled from its Package URI; 0: always pulled (resumable); at
    most 65536 (a device-management request is kept in the database)."""

    trust_file: str = ""
    images_dir: str = ""
    max_image_bytes: int = 4194304
    poll_s: float = 2.0
    push_max_bytes: int = 0


@dataclass(frozen=True)
class ModelsConfig:
    """``[models]``: candidate models on the nodes (``gateway/ota/models.py``). Once a
    node's candidate ran ``min_windows`` windows the gateway promotes it (Execute
    Activate on its /9 slot) if it agreed with the active model on at least
    ``min_agreement`` of them and flagged at most ``max_anomaly_rate`` as anomalous,
    and refuses it (Execute Uninstall) otherwise. ``act`` false: decide and record, send
    nothing."""

    min_windows: int = 500
    min_agreement: float = 0.98
    max_anomaly_rate: float = 0.05
    act: bool = True


@dataclass(frozen=True)
class AnalyticsConfig:
    """``[analytics]``: rollups and drift monitoring (``gateway/analytics``).
    ``rollups_1m`` / ``rollups_1h``: how many 1-minute / 1-hour buckets per node the
    database keeps (older ones are pruned); ``publish_rollups``: publish each closed
    bucket on ``{ep}/rollup/1m`` and ``{ep}/rollup/1h`` (kind rollup). ``drift_card``: a
    model folder (card.json with ``training_distribution``, relative to the config file)
    compared with nodes that report no model the gateway knows; empty: the shipped
    bearing-anomaly card. ``drift_windows``: the sliding window (a node's last windows)
    compared with it, once it holds ``drift_min_windows``; ``drift_watch`` /
    ``drift_alert``: the PSI levels of "watch" and "drift" (``drift`` alert rules raise
    at ``drift_alert`` and clear below ``drift_watch``). ``tick_s``: how often buckets
    are closed and silent nodes looked for."""

    enabled: bool = True
    rollups_1m: int = 1440
    rollups_1h: int = 720
    publish_rollups: bool = True
    drift_card: str = ""
    drift_windows: int = 200
    drift_min_windows: int = 50
    drift_watch: float = 0.1
    drift_alert: float = 0.25
    tick_s: float = 1.0


@dataclass(frozen=True)
class OpsConfig:
    """``[ops]``: ``GET /health/live``, ``/health/ready`` and ``/metrics`` on a port of
    their own (plain HTTP, no token, nothing else served), with or without the REST
    API: for a supervisor and a Prometheus scraper on a network the API is not on.
    ``port = 0``: any free port (the ready line says which)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464
    max_connections: int = 16


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the daemon's log (``gateway/logs.py``). ``level``: debug, info,
    warning or error; ``format``: ``text`` (one line per record) or ``json`` (one JSON
    object per line: time, level, logger, message, exc_info)."""

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class TimeConfig:
    """``[time]``: node timestamps (``gateway/ops/timecheck.py``). A reading whose SenML
    time is more than ``max_future_s`` ahead of the gateway's clock or ``max_past_s``
    behind it is flagged ``tbad`` on the uplink; one older than the node's latest time
    for the same path ``late``. Nothing is dropped or reordered."""

    max_future_s: float = 300.0
    max_past_s: float = 7 * 86400.0


@dataclass(frozen=True)
class InferenceConfig:
    """``[inference]``: the gateway runs models, with LiteRT (``ai-edge-litert``), for
    nodes that send features (/33001) without a decision (/33002)
    (``gateway/inference/litert.py``). ``classifier`` / ``anomaly``: a shipped model's
    name (``bearing-fault``), or a .tflite file or model folder (relative to the config
    file); empty: none of that kind. ``endpoints``: only these endpoints (empty: every
    endpoint that sends features without a decision)."""

    enabled: bool = False
    classifier: str = "bearing-fault"
    anomaly: str = "bearing-anomaly"
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    """The whole configuration; ``source`` is the file it came from (None: defaults)."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    coap: CoapConfig = field(default_factory=CoapConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    dm: DMConfig = field(default_factory=DMConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)  # health and metrics port
    security: SecurityConfig = field(default_factory=SecurityConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)  # gateway/lwm2m/bootstrap.py
    ota: OtaConfig = field(default_factory=OtaConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # gateway/analytics/rules.py
    log: LogConfig = field(default_factory=LogConfig)  # gateway/logs.py
    time: TimeConfig = field(default_factory=TimeConfig)  # gateway/ops/timecheck.py
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    source: Path | None = None

    @classmethod
    def default(cls) -> GatewayConfig:
        """The configuration of an empty file in the current directory."""
        return _build({}, "<defaults>", Path.cwd(), None)

    @property
    def coap_uri(self) -> str:
        """``coap://HOST:PORT`` of the configured bind address."""
        host = self.coap.host
        if ":" in host:
            host = f"[{host}]"
        return f"coap://{host}:{self.coap.port}"


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: TOML syntax error: {e}") from e
    return _build(data, str(p), p.resolve().parent, p)


_SECTIONS: dict[str, type] = {
    "gateway": GatewaySection,
    "coap": CoapConfig,
    "registry": RegistryConfig,
    "dm": DMConfig,
    "mqtt": MqttConfig,
    "shadow": ShadowConfig,
    "rest": RestConfig,
    "ops": OpsConfig,
    "security": SecurityConfig,
    "ota": OtaConfig,
    "models": ModelsConfig,
    "analytics": AnalyticsConfig,
    "log": LogConfig,
    "time": TimeConfig,
    "inference": InferenceConfig,
}


def _build(data: dict[str, Any], name: str, base: Path, source: Path | None) -> GatewayConfig:
    data = dict(data)
    bootstrap = parse_bootstrap(data.pop("bootstrap", {}), name)  # its own parser
    alerts = parse_alerts(data.pop("alerts", {}), name)  # so are the alert rules
    for key, value in data.items():
        if key not in _SECTIONS:
            raise ConfigError(f"{name}: unknown section or key {key!r}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: {key}: must be a table ([{key}])")
    parsed: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        table = data.get(section, {})
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{name}: unknown key {section}.{key}")
            values[key] = _check(name, f"{section}.{key}", value, known[key].default)
        parsed[section] = values

    gw = parsed["gateway"]
    ident = gw.get("id", GatewaySection.id)
    _require(name, "gateway.id", bool(ident), "must not be empty")
    _require(name, "gateway.id", not (set(ident) & (_TOPIC_UNSAFE | {"/"})),
             "must not contain '/', '+', '#' or NUL (it is part of MQTT topics)")
    security = gw.get("security", GatewaySection.security)
    _require(name, "gateway.security", security in SECURITY_MODES,
             f"must be one of {', '.join(SECURITY_MODES)} (got {security!r})")
    db = Path(gw.get("db", str(GatewaySection.db))).expanduser()
    _require(name, "gateway.db", str(db) != "", "must not be empty")
    if not db.is_absolute():
        db = base / db
    history_s = gw.get("history_s", GatewaySection.history_s)
    _require(name, "gateway.history_s", history_s == 0 or history_s >= REPORT_WINDOW_S,
             f"must be 0 (any age) or at least {REPORT_WINDOW_S:.0f} (a re-sent report is"
             " recognised by the Send stored for it that long)")
    max_sends = gw.get("history_max_sends", GatewaySection.history_max_sends)
    _require(name, "gateway.history_max_sends", max_sends == 0 or max_sends >= 10_000,
             "must be 0 (no limit) or at least 10000")

    coap = parsed["coap"]
    _require(name, "coap.host", bool(coap.get("host", "x")), "must not be empty")
    _port(name, "coap.port", coap.get("port", CoapConfig.port))
    _positive(name, "coap.max_records", coap.get("max_records", 1))
    _require(name, "coap.max_records", coap.get("max_records", 1) <= 65536,
             f"must be at most 65536 (got {coap.get('max_records')})")
    _positive(name, "coap.max_payload", coap.get("max_payload", 1))
    for key in ("max_block1_transfers_per_peer", "max_block1_transfers",
                "max_block1_bytes"):
        _positive(name, f"coap.{key}", coap.get(key, 1))
    _require(name, "coap.block1_idle_s", 0 < coap.get("block1_idle_s", 1.0) <= 247.0,
             "must be greater than 0 and at most EXCHANGE_LIFETIME, 247 s")

    reg = parsed["registry"]
    _positive(name, "registry.expiry_check_s", reg.get("expiry_check_s", 1.0))
    _positive(name, "registry.max_endpoints", reg.get("max_endpoints", 1))
    _positive(name, "registry.max_links_bytes", reg.get("max_links_bytes", 1))
    _require(name, "registry.new_endpoints_per_s", reg.get("new_endpoints_per_s", 0) >= 0,
             "must not be negative (0: no limit)")
    _require(name, "registry.prune_after_s", reg.get("prune_after_s", 0.0) >= 0,
             "must not be negative (0: never prune)")

    dm = parsed["dm"]
    _positive(name, "dm.request_timeout_s", dm.get("request_timeout_s", 1.0))
    _require(name, "dm.queue_awake_s", dm.get("queue_awake_s", 0.0) >= 0,
             "must not be negative")
    _positive(name, "dm.max_queued", dm.get("max_queued", 1))
    _positive(name, "dm.keep_finished_days", dm.get("keep_finished_days", 1.0))
    _positive(name, "dm.keep_finished_max", dm.get("keep_finished_max", 1))
    dm["observe"] = tuple(_lwm2m_path(name, "dm.observe", p) for p in dm.get("observe", ()))

    mq = dict(parsed["mqtt"])
    _require(name, "mqtt.host", bool(mq.get("host", "x")), "must not be empty")
    _port(name, "mqtt.port", mq.get("port", MqttConfig.port))
    _require(name, "mqtt.keepalive", 0 <= mq.get("keepalive", 30) <= 65535,
             "must be 0..65535 seconds")
    _require(name, "mqtt.batch", 1 <= mq.get("batch", 100) <= 65535, "must be 1..65535")
    _require(name, "mqtt.refused_after", 1 <= mq.get("refused_after", 3) <= 1000,
             "must be 1..1000")
    _positive(name, "mqtt.reconnect_min_s", mq.get("reconnect_min_s", 1.0))
    _positive(name, "mqtt.reconnect_max_s", mq.get("reconnect_max_s", 1.0))
    _require(name, "mqtt.reconnect_max_s",
             mq.get("reconnect_max_s", MqttConfig.reconnect_max_s)
             >= mq.get("reconnect_min_s", MqttConfig.reconnect_min_s),
             "must not be less than mqtt.reconnect_min_s")
    prefix = mq.get("topic_prefix", "") or f"aiot/{ident}"
    _require(name, "mqtt.topic_prefix",
             not (set(prefix) & _TOPIC_UNSAFE) and not prefix.endswith("/"),
             "must not contain '+', '#' or NUL nor end with '/'")
    mq["topic_prefix"] = prefix
    mq["client_id"] = mq.get("client_id", "") or f"aiot-{ident}"
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if mq.get(key):
            mq[key] = str(base / Path(mq[key]).expanduser())
    _require(name, "mqtt.tls_key", bool(mq.get("tls_key")) <= bool(mq.get("tls_cert")),
             "needs mqtt.tls_cert (the client certificate it belongs to)")
    for key in ("outbox_max_rows", "outbox_max_bytes"):
        _require(name, f"mqtt.{key}", mq.get(key, 0) >= 0,
                 "must not be negative (0: no limit)")
    _require(name, "mqtt.max_rate_per_s", mq.get("max_rate_per_s", 0.0) >= 0,
             "must not be negative (0: no limit)")
    _require(name, "mqtt.batch_latency_ms", 0 <= mq.get("batch_latency_ms", 0) <= 60_000,
             "must be 0..60000")
    for kind in ("telemetry", "rollup", "status"):
        _require(name, f"mqtt.expiry_{kind}_s",
                 0 <= mq.get(f"expiry_{kind}_s", 0.0) <= 0xFFFF_FFFF,
                 "must be 0 (never) .. 4294967295 seconds")
    # -- Sparkplug B (gateway/uplink/sparkplug.py) --
    _require(name, "mqtt.format", mq.get("format", "json") in ("json", "sparkplug"),
             f"must be \"json\" or \"sparkplug\" (got {mq.get('format')!r})")
    for key in ("sparkplug_group", "sparkplug_host"):
        sp_id = mq.get(key, "x" if key == "sparkplug_group" else "")
        _require(name, f"mqtt.{key}", key == "sparkplug_host" or bool(sp_id),
                 "must not be empty")
        _require(name, f"mqtt.{key}", not (set(sp_id) & (_TOPIC_UNSAFE | {"/"})),
                 "must not contain '/', '+', '#' or NUL (it is a Sparkplug topic level)")

    sh = dict(parsed["shadow"])
    if sh.get("models"):
        sh["models"] = str(base / Path(sh["models"]).expanduser())

    rest = dict(parsed["rest"])
    _require(name, "rest.host", bool(rest.get("host", "x")), "must not be empty")
    _require(name, "rest.port", 0 <= rest.get("port", RestConfig.port) <= 65535,
             f"must be 0..65535 (got {rest.get('port')})")
    _positive(name, "rest.header_timeout_s", rest.get("header_timeout_s", 1.0))
    _positive(name, "rest.body_timeout_s", rest.get("body_timeout_s", 1.0))
    _positive(name, "rest.max_connections", rest.get("max_connections", 1))
    if rest.get("tokens_file"):
        rest["tokens_file"] = str(base / Path(rest["tokens_file"]).expanduser())
    _require(name, "rest.tokens_file", bool(rest.get("tokens_file")) or not rest.get("enabled"),
             "required when rest.enabled (every REST request needs a token)")
    _require(name, "rest.tokens_check_s", rest.get("tokens_check_s", 0.0) >= 0,
             "must not be negative (0: at every request)")
    audit = (base / Path(rest["audit_file"]).expanduser() if rest.get("audit_file")
             else db.with_suffix(".audit.jsonl"))
    _require(name, "rest.audit_file", audit != db, "must not be the database")
    rest["audit_file"] = str(audit)
    for key in ("tls_cert", "tls_key"):
        if rest.get(key):
            rest[key] = str(base / Path(rest[key]).expanduser())
    _require(name, "rest.tls_key", bool(rest.get("tls_cert")) == bool(rest.get("tls_key")),
             "rest.tls_cert and rest.tls_key go together (PEM files)")

    ops = dict(parsed["ops"])
    _require(name, "ops.host", bool(ops.get("host", "x")), "must not be empty")
    _require(name, "ops.port", 0 <= ops.get("port", OpsConfig.port) <= 65535,
             f"must be 0..65535 (got {ops.get('port')})")
    _positive(name, "ops.max_connections", ops.get("max_connections", 1))
    _require(name, "ops.port", not (ops.get("enabled") and rest.get("enabled")
                                    and ops.get("port", OpsConfig.port)
                                    == rest.get("port", RestConfig.port) != 0
                                    and ops.get("host", OpsConfig.host)
                                    == rest.get("host", RestConfig.host)),
             "is rest.port: the two need ports of their own")

    sec = dict(parsed["security"])
    if sec.get("key_file"):
        sec["key_file"] = str(base / Path(sec["key_file"]).expanduser())
    _positive(name, "security.max_loaded", sec.get("max_loaded", 1))

    ota = dict(parsed["ota"])
    for key in ("trust_file", "images_dir"):
        if ota.get(key):
            ota[key] = str(base / Path(ota[key]).expanduser())
    _positive(name, "ota.max_image_bytes", ota.get("max_image_bytes", 1))
    _positive(name, "ota.poll_s", ota.get("poll_s", 1))
    _require(name, "ota.push_max_bytes", 0 <= ota.get("push_max_bytes", 0) <= 65536,
             "must be 0..65536")

    mo = dict(parsed["models"])
    _positive(name, "models.min_windows", mo.get("min_windows", 1))
    for key in ("min_agreement", "max_anomaly_rate"):
        _require(name, f"models.{key}", 0.0 <= mo.get(key, 0.0) <= 1.0, "must be 0..1")

    return GatewayConfig(
        gateway=GatewaySection(id=ident, db=db, security=security, history_s=history_s,
                               history_max_sends=max_sends),
        coap=CoapConfig(**coap),
        registry=RegistryConfig(**reg),
        dm=DMConfig(**dm),
        mqtt=MqttConfig(**mq),
        shadow=ShadowConfig(**sh),
        rest=RestConfig(**rest),
        ops=OpsConfig(**ops),
        security=SecurityConfig(**sec),
        ota=OtaConfig(**ota),
        models=ModelsConfig(**mo),
        analytics=_analytics(name, base, parsed["analytics"]),
        alerts=alerts,
        log=_log(name, parsed["log"]),
        time=_time(name, parsed["time"]),
        inference=_inference(name, base, parsed["inference"]),
        bootstrap=bootstrap,
        source=source,
    )


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def _log(name: str, values: dict[str, Any]) -> LogConfig:
    lg = dict(values)
    level = str(lg.get("level", LogConfig.level)).lower()
    _require(name, "log.level", level in LOG_LEVELS,
             f"must be one of {', '.join(LOG_LEVELS)} (got {lg.get('level')!r})")
    _require(name, "log.format", lg.get("format", "text") in LOG_FORMATS,
             f"must be one of {', '.join(LOG_FORMATS)} (got {lg.get('format')!r})")
    lg["level"] = level
    return LogConfig(**lg)


def _time(name: str, values: dict[str, Any]) -> TimeConfig:
    for key in ("max_future_s", "max_past_s"):
        _positive(name, f"time.{key}", values.get(key, 1.0))
    return TimeConfig(**values)


def _inference(name: str, base: Path, values: dict[str, Any]) -> InferenceConfig:
    inf = dict(values)
    for key in ("classifier", "anomaly"):
        text = inf.get(key)
        if text and ("/" in text or text.endswith(".tflite")):  # a path, not a name
            inf[key] = str(base / Path(text).expanduser())
    inf["endpoints"] = tuple(inf.get("endpoints", ()))
    for ep in inf["endpoints"]:
        _require(name, "inference.endpoints", isinstance(ep, str) and bool(ep),
                 "must be a list of endpoint names")
    return InferenceConfig(**inf)


def _analytics(name: str, base: Path, values: dict[str, Any]) -> AnalyticsConfig:
    an = dict(values)
    for key in ("rollups_1m", "rollups_1h", "drift_windows", "drift_min_windows",
                "drift_watch", "drift_alert", "tick_s"):
        _positive(name, f"analytics.{key}", an.get(key, 1))
    _require(name, "analytics.drift_min_windows",
             an.get("drift_min_windows", AnalyticsConfig.drift_min_windows)
             <= an.get("drift_windows", AnalyticsConfig.drift_windows),
             "must not be above analytics.drift_windows")
    _require(name, "analytics.drift_windows", an.get("drift_windows", 1) <= 100000,
             "must be at most 100000")
    _require(name, "analytics.drift_alert",
             an.get("drift_watch", AnalyticsConfig.drift_watch)
             < an.get("drift_alert", AnalyticsConfig.drift_alert),
             "must be above analytics.drift_watch (the level the alert clears below)")
    if an.get("drift_card"):
        an["drift_card"] = str(base / Path(an["drift_card"]).expanduser())
    return AnalyticsConfig(**an)


def _check(name: str, key: str, value: Any, default: Any) -> Any:
    """Type-check one value against its default's type (bool is not a number here)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, tuple):  # a list of strings
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of strings"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
        if ok:
            value = float(value)
            ok = math.isfinite(value)
            want = "a finite number"
    else:  # str and Path are both written as strings
        ok, want = isinstance(value, str), "a string"
    if not ok:
        shown = "a value of another type" if key in _SECRET_KEYS else _show(value)
        raise ConfigError(f"{name}: {key}: must be {want} (got {shown})")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _require(name: str, key: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {key}: {problem}")


def _lwm2m_path(name: str, key: str, text: str) -> str:
    """An object, instance, resource or resource-instance path, normalised."""
    try:
        ids = parse_path(text)
    except PathError as e:
        raise ConfigError(f"{name}: {key}: {e}") from e
    _require(name, key, bool(ids), "the root / cannot be observed")
    return format_path(ids)


def _port(name: str, key: str, port: int) -> None:
    _require(name, key, 1 <= port <= 65535, f"must be 1..65535 (got {port})")


def _positive(name: str, key: str, value: float) -> None:
    _require(name, key, value > 0, f"must be greater than 0 (got {value})")


def effective_toml(cfg: GatewayConfig) -> str:
    """The configuration as the gateway runs it, every key with its value (defaults
    filled in, paths resolved, secrets redacted), as TOML that ``load_config`` reads back
    (``aiot gateway check`` prints it)."""
    out: list[str] = []
    sections: list[tuple[str, Any]] = [(name, getattr(cfg, name)) for name in _SECTIONS]
    for name, section in sections:
        out.append(f"[{name}]")
        for f in fields(section):
            value = getattr(section, f.name)
            if f"{name}.{f.name}" in _SECRET_KEYS and value:
                value = "<redacted>"
            out.append(f"{f.name} = {_toml_value(value)}")
        out.append("")
    bs = cfg.bootstrap
    out.append("[bootstrap]")
    out += [f"{k} = {_toml_value(getattr(bs, k))}" for k in ("enabled", "host", "port",
                                                               "timeout_s")]
    accounts = ([("bootstrap.default", bs.default)] if bs.default else []) + [
        (f"bootstrap.endpoints.{_toml_value(ep)}", acc) for ep, acc in bs.endpoints.items()]
    for title, acc in accounts:
        out += ["", f"[{title}]"]
        out += [f"{f.name} = {_toml_value(getattr(acc, f.name))}" for f in fields(acc)]
    out += ["", *alerts_toml(cfg.alerts)]
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # a TOML basic string: JSON's escapes are TOML's for everything json.dumps writes
    return json.dumps(str(value), ensure_ascii=False)


def check_runnable(cfg: GatewayConfig, *, allow_nosec: bool = False) -> None:
    """What a valid file may still ask for that this gateway will not do; ``ConfigError``
    names it. ``Gateway.start()`` and ``aiot gateway check`` both apply it.
    ``allow_nosec`` is the command line's development switch (``--allow-nosec``)."""
    where = cfg.source if cfg.source is not None else "<defaults>"
    if cfg.security.key_file or os.environ.get("AIOT_GATEWAY_KEY"):
        from .security.atrest import AtRestKey  # its format, not yet the database's check

        AtRestKey.load(cfg.security)  # KeyConfigError (a ConfigError) names what is wrong
    if (cfg.gateway.security == "oscore" and not cfg.security.key_file
            and not os.environ.get("AIOT_GATEWAY_KEY")):
        raise ConfigError(
            f'{where}: gateway.security: "oscore" needs the key the OSCORE secrets are'
            " encrypted with: [security] key_file (make one with 'aiot keys genkey FILE')"
            " or AIOT_GATEWAY_KEY"
        )
    if cfg.gateway.security == "nosec" and not allow_nosec:
        raise ConfigError(
            f'{where}: gateway.security: "nosec" runs without any protection (anyone on'
            " the network can take a node over): development only, and only with"
            " --allow-nosec"
        )
    folder = cfg.gateway.db.parent
    if not folder.is_dir():
        # a typo in a folder name must not start an empty gateway somewhere unexpected
        raise ConfigError(f"{where}: gateway.db: folder {folder} does not exist")
    card = cfg.analytics.drift_card
    if cfg.analytics.enabled and card and not (Path(card) / "card.json").is_file():
        raise ConfigError(f"{where}: analytics.drift_card: {card} holds no card.json")
    models = cfg.shadow.models
    if cfg.shadow.enabled and models and not Path(models).is_dir():
        raise ConfigError(f"{where}: shadow.models: {models} is not a folder")
    if cfg.rest.enabled:
        audit = Path(cfg.rest.audit_file).parent
        if not audit.is_dir():
            raise ConfigError(f"{where}: rest.audit_file: folder {audit} does not exist")
        from .api.tls import server_context

        server_context(cfg.rest)  # the certificate and key load
