"""The gateway daemon: life cycle (``Gateway.start()`` / ``shutdown()``), ``serve`` and
``run_cli`` behind ``aiot gateway run --config FILE``.

Start order: the database's lock (``storage/lock.py``: a second daemon on the same
database refuses to start, naming the first), store, registry, device management (``gateway/dm/manager.py``: its tables, then,
once the CoAP server runs, re-established observations and queues), CoAP server,
expiry task, MQTT uplink (if enabled), the OTA service (``gateway/ota``: campaigns
resume), REST API; shutdown stops device management and serving
first, then the tasks, then closes the stores, bounded by a timeout. When serving,
exactly one line ``aiot gateway ready coap://HOST:PORT ...`` is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

from .coap.aio import OscoreSiteWrapper, aiocoap
from .coap.fastnotify import FastNotify
from .coap.fastoscore import FastOscore
from .coap.fastsend import FastSend
from .coap.layer import MessageLayer
from .coap.layer import install as install_message_layer
from .config import GatewayConfig, check_runnable, load_config
from .dm import DeviceManagement
from .errors import ConfigError, GatewayError
from .lwm2m.bootstrap import BootstrapServer
from .lwm2m.ddf import load_shipped
from .lwm2m.registry import Registry
from .lwm2m.server import LwM2MResource
from .ops.metrics import GatewayCollector
from .ops.timecheck import TimeCheck
from .storage.api import Storage
from .storage.lock import DatabaseLock
from .storage.sqlite import SqliteStorage
from .uplink.mqtt import TopicScheme, Uplink

if TYPE_CHECKING:
    from .analytics.engine import Analytics
    from .api.rest import RestApi
    from .inference.litert import GatewayInference
    from .inference.shadow import ShadowChecker
    from .ota import Delivery, OtaService
    from .ota.models import ModelService
    from .security import KeyStore

__all__ = ["Gateway", "RateLimitFilter", "run_cli", "serve"]

log = logging.getLogger("aiotkit.gateway")

SHUTDOWN_TIMEOUT_S = 5.0
HISTORY_CHECK_S = 60.0  # how often the history is pruned ([gateway] history_s)


class RateLimitFilter(logging.Filter):
    """Let at most ``burst`` records per message template through per ``interval`` s.

    Peers decide how often the CoAP layer logs (aiocoap warns about every unparsable
    datagram; every refused request is logged): this keeps a flood from filling the log,
    and says how many records it dropped.
    """

    def __init__(self, interval: float = 10.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # start, passed, dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = str(record.msg)
        now = self._clock()
        start, passed, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self._interval:
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
            start, passed, dropped = now, 0, 0
        if passed >= self._burst:
            self._windows[key] = (start, passed, dropped + 1)
            return False
        if len(self._windows) > 256:  # bounded whatever the templates
            self._windows.clear()
        self._windows[key] = (start, passed + 1, dropped)
        return True


def _limit_peer_noise() -> None:
    for name in ("aiotkit.gateway.coap", "aiotkit.gateway.lwm2m", "aiotkit.gateway.dm"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter())


class _KeyAdmission:
    """``lwm2m.server.Admission`` over the OSCORE key store: ``secure`` (security =
    "oscore") refuses every unprotected request; an endpoint with a live context is
    never accepted unprotected."""

    def __init__(self, keys: KeyStore, secure: bool) -> None:
        self._keys = keys
        self.secure = secure

    def provisioned(self, endpoint: str) -> bool:
        return self._keys.context(endpoint) is not None

    def bind(self, endpoint: str, host: str, port: int) -> None:
        self._keys.bind_address(endpoint, host, port)


class Gateway:
    """One gateway daemon; construct, ``await start()``, ``await shutdown()``."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.time,
                 allow_nosec: bool = False, ota_delivery: Delivery | None = None,
                 monotonic: Callable[[], float] | None = None):
        """``clock`` stamps what the gateway stores (the wall clock, or ``ops/clock.py``'s
        ``GatewayClock``); registration lifetimes run on ``monotonic`` (default
        ``time.monotonic``; a test that injects only ``clock`` gets it for both)."""
        self.config = config
        if monotonic is None:
            from .ops.clock import GatewayClock

            wall = clock is time.time or isinstance(clock, GatewayClock)
            monotonic = time.monotonic if wall else clock
        self._monotonic = monotonic
        # the OTA service (gateway/ota): images and campaigns; ota_delivery reaches the
        # nodes (None: none yet, every offer fails: gateway/ota/delivery.py)
        self.ota: OtaService | None = None
        self._ota_delivery = ota_delivery
        # candidate models on the nodes and the model registry (gateway/ota/models.py)
        self.models: ModelService | None = None
        self.allow_nosec = allow_nosec  # the development switch security = "nosec" needs
        self._clock = clock
        self._store: Storage | None = None
        self._registry: Registry | None = None
        self._uplink: Uplink | None = None
        self._coap: aiocoap.Context | None = None
        self._coap_layers: list[MessageLayer] = []
        self.fast_sends: list[FastSend] = []  # coap/fastsend.py, one per UDP interface
        self.fast_notifies: list[FastNotify] = []  # coap/fastnotify.py, the same
        self.fast_oscores: list[FastOscore] = []  # coap/fastoscore.py, the same
        self._dm: DeviceManagement | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._history: asyncio.Task[None] | None = None  # _prune_history
        self.shadow: ShadowChecker | None = None  # when numpy and tflite-micro are there
        # rollups, alerts, drift ([analytics] enabled): gateway/analytics/engine.py
        self.analytics: Analytics | None = None
        # [inference] enabled: decisions for nodes that send features only (LiteRT)
        self.inference: GatewayInference | None = None
        self.time_check: TimeCheck | None = None  # node timestamps (gateway/ops/timecheck.py)
        # GET /metrics: read at scrape time (gateway/ops/metrics.py); other parts add
        # theirs with metrics.register_source(name, fn)
        self.metrics = GatewayCollector(self, clock=clock)
        self.rest: RestApi | None = None  # [rest] enabled: the REST API (gateway/api/rest.py)
        self.ops: RestApi | None = None  # [ops] enabled: health and metrics on their port
        self.bootstrap: BootstrapServer | None = None  # [bootstrap] enabled: its own socket
        self._lock: DatabaseLock | None = None  # held from start to shutdown
        # OSCORE contexts (gateway/security): when [security] names an at-rest key
        self.keys: KeyStore | None = None

    @property
    def store(self) -> Storage:
        if self._store is None:
            raise GatewayError("gateway not started")
        return self._store

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise GatewayError("gateway not started")
        return self._registry

    @property
    def dm(self) -> DeviceManagement:
        """Device management: Read/Write/Execute/Observe... on registered clients."""
        if self._dm is None:
            raise GatewayError("gateway not started")
        return self._dm

    @property
    def uplink(self) -> Uplink | None:
        return self._uplink

    @property
    def coap_uri(self) -> str:
        return self.config.coap_uri

    @property
    def serving(self) -> bool:
        """The CoAP server is up (from ``start`` until ``shutdown`` stops it)."""
        return self._coap is not None

    async def start(self) -> None:
        """Open the store and start serving; on failure everything started is undone."""
        check_runnable(self.config, allow_nosec=self.allow_nosec)  # as 'gateway check' does
        try:
            await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> None:
        cfg = self.config
        _limit_peer_noise()
        # one daemon per database (storage/lock.py), before anything else is opened
        self._lock = DatabaseLock(cfg.gateway.db)
        self._lock.acquire()
        if cfg.gateway.security == "nosec":
            log.warning("security is nosec: CoAP traffic on %s is neither authenticated"
                        " nor encrypted, anyone can take a node over (development only)",
                        cfg.coap.host)
        encoder = TopicScheme(cfg.mqtt.topic_prefix) if cfg.mqtt.enabled else None
        self._store = SqliteStorage.open(
            cfg.gateway.db, encoder=encoder,
            keep_finished_s=cfg.dm.keep_finished_days * 86400.0,
            keep_finished_max=cfg.dm.keep_finished_max)
        from .security import KeyStore

        self.keys = KeyStore.from_config(self._store, cfg, clock=self._clock)
        self._registry = Registry(self._store, clock=self._clock, monotonic=self._monotonic)
        self._registry.ack_observer = self.metrics.ack_latency.observe
        self.time_check = TimeCheck(max_future_s=cfg.time.max_future_s,
                                    max_past_s=cfg.time.max_past_s, seed=self._store.latest)
        if isinstance(self._store, SqliteStorage):
            self._store.time_check = self.time_check
        if cfg.mqtt.enabled:
            uplink = Uplink(cfg.mqtt, self._store, gateway_id=cfg.gateway.id, clock=self._clock)
            self._uplink = uplink
            self._registry.add_listener(lambda _event: uplink.kick())
        self._start_shadow()
        self._start_inference()
        objects = load_shipped()
        self._dm = DeviceManagement(self._store, self._registry, cfg.dm, objects=objects,
                                    clock=self._clock)
        self._registry.add_listener(self._dm.on_event)
        secure = cfg.gateway.security == "oscore"
        keys = self.keys
        if secure and keys is None:  # check_runnable saw a key; it did not open
            raise ConfigError("gateway.security: \"oscore\" needs the OSCORE key store")
        site = LwM2MResource(self._registry, max_payload=cfg.coap.max_payload,
                             max_records=cfg.coap.max_records, objects=objects,
                             admission=None if keys is None else _KeyAdmission(keys, secure))
        site.configure(cfg.coap, cfg.registry)  # Block1, endpoint and link-payload bounds
        root: object = site
        if keys is not None:
            # OSCORE (issue 13): aiocoap verifies protected requests under the node's
            # context (KeyStore.find_oscore) above the LwM2M resource, and protects the
            # device-management requests to a node (KeyStore.credentials_from_request,
            # by the address it registered from; after a restart, from its stored
            # registration)
            root = OscoreSiteWrapper(site, keys)
            store = self._store
            keys.locate = lambda host, port: getattr(store.by_address(host, port),
                                                     "endpoint", None)
            self._registry.add_listener(
                lambda e: keys.unbind_address(e.endpoint)
                if e.kind in ("deregistered", "expired") else None)
        try:
            self._coap = await aiocoap.Context.create_server_context(
                root, bind=(cfg.coap.host, cfg.coap.port),
                transports=["oscore", "udp6"] if keys is not None else ["udp6"],
                loggername="aiotkit.gateway.coap",
            )
        except OSError as e:
            raise GatewayError(f"cannot serve CoAP on {cfg.coap_uri}: {e.strerror or e}") from e
        if keys is not None:
            self._coap.client_credentials = keys
        self._coap_layers = install_message_layer(self._coap,
                                                  compact_dedup=cfg.coap.compact_dedup)
        # the fast paths, each attached to the datagram hook of every UDP interface
        # (coap/layer.py). The plain ones are never offered a protected (OSCORE)
        # datagram, and with OSCORE required they are not attached: they serve
        # unprotected traffic only. The protected Send path verifies OSCORE itself with
        # the key store's contexts and is offered protected datagrams only.
        hooks = [layer.hook for layer in self._coap_layers if layer.hook is not None]
        if keys is not None and secure and cfg.coap.fast_oscore:
            for hook in hooks:
                fast_oscore = FastOscore(hook, site, self._registry, keys)
                hook.add(fast_oscore, protected=True)
                self.fast_oscores.append(fast_oscore)
        for hook in (h for h in hooks if not secure):
            if cfg.coap.fast_send:
                fast_send = FastSend(hook, site, self._registry)
                hook.add(fast_send)
                self.fast_sends.append(fast_send)
            if cfg.coap.fast_notify:
                fast_notify = FastNotify(hook, self._dm)
                hook.add(fast_notify)
                self.fast_notifies.append(fast_notify)
        # Registrations that lapsed while the gateway was down go offline right away.
        self._registry.expire_due()
        await self._dm.start(self._coap)
        self._expiry = asyncio.create_task(
            self._registry.run_expiry(cfg.registry.expiry_check_s, cfg.registry.prune_after_s),
            name="aiot-registry-expiry",
        )
        self._history = asyncio.create_task(self._prune_history(), name="aiot-history")
        if self._uplink is not None:
            await self._uplink.start()
        if cfg.bootstrap.enabled:
            bs = BootstrapServer(cfg.bootstrap, server_uri=cfg.coap_uri, keys=self.keys,
                                 secure=cfg.gateway.security == "oscore")
            try:
                await bs.start()
            except OSError as e:
                raise GatewayError(f"cannot serve LwM2M bootstrap on coap://{cfg.bootstrap.host}"
                                   f":{cfg.bootstrap.port}: {e.strerror or e}") from e
            self.bootstrap = bs
        self.ota = self._start_ota_service(site)
        await self.ota.start()  # campaigns resume where the database says
        from .ota.models import ModelService

        assert isinstance(self._store, SqliteStorage)  # its model tables
        self.models = ModelService(self._store.models, self._store.ota, self.ota.images.folder,
                                   cfg.models, self._dm.execute, clock=self._clock)
        self._registry.add_listener(self.models.on_event)
        if cfg.analytics.enabled:
            await self._start_analytics()
        if cfg.rest.enabled:
            from .api.rest import RestApi

            self.rest = RestApi(self, cfg.rest, keys=self.keys)
            await self.rest.start()
        if cfg.ops.enabled:
            from .api.rest import RestApi

            self.ops = RestApi.ops(self, cfg.ops)
            await self.ops.start()
        mqtt = (f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port} prefix {cfg.mqtt.topic_prefix}"
                if cfg.mqtt.enabled else "mqtt disabled")
        rest = f", rest {self.rest.url}" if self.rest is not None else ""
        rest += f", ops {self.ops.url}" if self.ops is not None else ""
        log.info("aiot gateway ready %s (db %s, %s%s)", cfg.coap_uri, cfg.gateway.db, mqtt,
                 rest)

    def _start_ota_service(self, site: LwM2MResource) -> OtaService:
        # images, campaigns, and their delivery: LwM2M /5 pulling /fw/<image id> from
        # this CoAP server (gateway/ota/delivery.py, package.py) unless one was given
        from .ota import OtaService
        from .ota.delivery import LwM2MDelivery
        from .ota.package import Packages

        cfg = self.config
        delivery = self._ota_delivery
        if self._store is None or self._dm is None:
            raise GatewayError("the OTA service starts after the store and device management")
        ota = OtaService(self._store, cfg.ota, cfg.gateway.db, delivery=delivery,
                         clock=self._clock)
        packages = site.packages = Packages(ota.images.folder)
        if delivery is None:
            def version_of(image_id: str) -> str | None:
                row = ota.images.get(image_id)
                return None if row is None else row.version

            def type_of(image_id: str) -> str | None:
                row = ota.images.get(image_id)
                return None if row is None else row.payload_type

            lwm2m = LwM2MDelivery(self._dm, cfg.coap_uri, version_of,
                                  poll_s=cfg.ota.poll_s, type_of=type_of,
                                  data_of=packages.data, push_max=cfg.ota.push_max_bytes)
            lwm2m.report = ota.campaigns.report
            lwm2m.wanted = ota.campaigns.waiting
            ota.campaigns.delivery = lwm2m
        return ota

    def _start_inference(self) -> None:
        inf = self.config.inference
        if not inf.enabled:
            return
        from .inference.litert import GatewayInference, InferenceUnavailable

        try:
            engine = GatewayInference.from_config(inf, self.registry, clock=self._clock)
        except InferenceUnavailable as e:
            log.info("gateway-side inference off: %s", e)
            return
        self.inference = engine
        self.registry.add_listener(engine.on_event)
        log.info("gateway-side inference on: %s", engine.describe())

    async def _start_analytics(self) -> None:
        from .analytics.engine import Analytics
        from .inference.shadow import shipped_model_dirs

        assert isinstance(self._store, SqliteStorage)  # its analytics tables
        dirs = shipped_model_dirs()
        if self.config.shadow.models:
            dirs.append(Path(self.config.shadow.models))
        uplink = self._uplink
        analytics = Analytics(self.config, self._store, clock=self._clock,
                              kick=None if uplink is None else uplink.kick, model_dirs=dirs)
        self.registry.add_listener(analytics.on_event)
        if self.shadow is not None:
            self.shadow.add_listener(analytics.on_shadow)
        self.analytics = analytics
        await analytics.start()
        self.metrics.register_source("alerts_active", analytics.alerts.open_by_rule,
                                     "alerts raised and not cleared", label="rule")
        self.metrics.register_source("alert_transitions", lambda: dict(
            analytics.alerts.counts), "alerts raised, acknowledged, cleared since start",
            label="event")

    def _start_shadow(self) -> None:
        sh = self.config.shadow
        if not sh.enabled:
            return
        from .inference.shadow import ShadowChecker, ShadowUnavailable, shipped_model_dirs

        dirs = shipped_model_dirs()
        if sh.models:  # a folder: check_runnable made sure
            dirs.append(Path(sh.models))
        try:
            checker = ShadowChecker(dirs)
        except ShadowUnavailable as e:
            log.info("shadow check off: %s", e)
            return
        self.shadow = checker
        self.registry.add_listener(checker.on_event)
        log.info("shadow check on: %d model(s) known", len(checker.index.models))

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop serving and close everything, within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._stop()
        except TimeoutError:
            log.error("shutdown took longer than %.1f s; closing the store anyway", timeout)
        finally:
            if self.keys is not None:
                keys, self.keys = self.keys, None
                try:
                    keys.close()  # the contexts' state, before the store closes
                except GatewayError as e:
                    log.error("OSCORE contexts not closed cleanly: %s", e)
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.release()

    async def _stop(self) -> None:
        for api in (self.rest, self.ops):
            if api is not None:
                await api.shutdown()
        self.rest = self.ops = None
        if self.bootstrap is not None:
            bs, self.bootstrap = self.bootstrap, None
            await bs.shutdown()
        if self.models is not None:
            models, self.models = self.models, None
            await models.shutdown()
        if self.analytics is not None:
            analytics, self.analytics = self.analytics, None
            await analytics.shutdown()
        if self.ota is not None:
            ota, self.ota = self.ota, None
            await ota.shutdown()
        if self._coap is not None:
            ctx, self._coap = self._coap, None
            layers, self._coap_layers = self._coap_layers, []
            for layer in layers:  # datagrams go to aiocoap only; no fast path answers
                if layer.hook is not None:
                    layer.hook.close()
            try:
                await ctx.shutdown()
            finally:
                for layer in layers:
                    layer.close()
        for task in (self._expiry, self._history):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._expiry = self._history = None
        if self._uplink is not None:
            uplink, self._uplink = self._uplink, None
            await uplink.shutdown()

    async def _prune_history(self) -> None:
        """Keep the database's history within ``[gateway] history_s`` and
        ``history_max_sends`` (``Storage.prune_history``): every ``HISTORY_CHECK_S``,
        a chunk at a time with the loop free between chunks, so ingest never waits
        long."""
        gw = self.config.gateway
        if not gw.history_s and not gw.history_max_sends:
            return
        # Sends this run stored less than history_s ago (by the monotonic clock) are
        # young whatever their stamp: taken before the wall clock was set (a board
        # without an RTC boots in 1970), it would make them look years old
        started, first = self._monotonic(), self.store.last_send_id()
        while True:
            try:
                total, chunk = 0, 1000  # about 9 ms of the loop each
                young = first if self._monotonic() - started < gw.history_s else None
                while True:
                    before = self._clock() - gw.history_s if gw.history_s else 0.0
                    n = self.store.prune_history(before, gw.history_max_sends, chunk=chunk,
                                                 young_after=young)
                    total += n
                    if n < chunk:
                        break
                    await asyncio.sleep(0)
                if total:
                    log.info("history: deleted the %d oldest Sends (gateway.history_s %.0f,"
                             " history_max_sends %d)", total, gw.history_s,
                             gw.history_max_sends)
            except Exception:  # a disk error must not end pruning for good
                log.exception("pruning the history failed; retrying in %.0f s",
                              HISTORY_CHECK_S)
            await asyncio.sleep(HISTORY_CHECK_S)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


async def serve(
    config: GatewayConfig,
    ready_cb: Callable[[Gateway], Awaitable[None] | None] | None = None,
    *,
    stop: asyncio.Event | None = None,
    allow_nosec: bool = False,
) -> None:
    """Run a gateway until ``stop`` is set (or the task is cancelled). Its clock is
    monotonic until the system's wall clock is synchronized (``ops/clock.py``)."""
    from .ops.clock import GatewayClock

    clock = GatewayClock()
    gateway = Gateway(config, allow_nosec=allow_nosec, clock=clock)
    gateway.metrics.register_source(
        "wall_clock_synchronized", lambda: int(clock.synchronized),
        "1 once the system clock is synchronized (timestamps follow it), 0 while they"
        " run on the monotonic clock")
    await gateway.start()
    if not clock.synchronized:
        log.warning("%s", clock.describe())
    try:
        if ready_cb is not None:
            result = ready_cb(gateway)
            if result is not None:
                await result
        await (stop or asyncio.Event()).wait()
    finally:
        await gateway.shutdown()


def run_cli(config_path: str | None, *, allow_nosec: bool = False) -> int:
    """``aiot gateway run [--config FILE]``: serve until SIGTERM/SIGINT; the exit code."""
    try:
        config = load_config(config_path) if config_path else GatewayConfig.default()
    except ConfigError as e:
        print(f"aiot gateway: error: {e}", file=sys.stderr)
        return 2
    _setup_logging(config)
    # aiocoap binds with SO_REUSEPORT by default: a second daemon on the same port would
    # silently get half the traffic. The daemon wants EADDRINUSE instead.
    os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")
    try:
        asyncio.run(_serve_until_signal(config, allow_nosec))
    except ConfigError as e:
        print(f"aiot gateway: error: {e}", file=sys.stderr)
        return 2
    except GatewayError as e:
        print(f"aiot gateway: error: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(config: GatewayConfig, allow_nosec: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await serve(config, stop=stop, allow_nosec=allow_nosec)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("aiot gateway stopped")


def _setup_logging(config: GatewayConfig) -> None:
    """``[log]`` level and format (``logs.configure``: text or JSON lines on stderr)."""
    from .logs import configure

    configure(config.log)


def main(argv: list[str] | None = None) -> int:
    """``python -m aiotkit.gateway.app [CONFIG] [--allow-nosec]`` (the ``aiot`` CLI calls
    ``run_cli``)."""
    args = sys.argv[1:] if argv is None else argv
    allow_nosec = "--allow-nosec" in args
    args = [a for a in args if a != "--allow-nosec"]
    return run_cli(args[0] if args else None, allow_nosec=allow_nosec)


if __name__ == "__main__":
    raise SystemExit(main())
