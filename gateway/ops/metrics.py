"""The gateway's Prometheus metrics, read from its state at scrape time.

``GatewayCollector`` is a ``prometheus_client`` custom collector: each scrape asks the
store, the registry, the uplink and the registered sources for what they hold now, so the
hot paths carry no instrumentation at all, with one exception: the acknowledgement
latency, which only the Send path sees. It is a ``LatencyHistogram`` the registry feeds
(``Registry.ack_observer``: seconds from a Send's submission to the COMMIT after which it
is acknowledged), one bucket increment per Send, no allocation.

Metrics (all prefixed ``aiot_``):

==================================  =========  ==========================================
name                                type       what
==================================  =========  ==========================================
sends_stored_total                  counter    Sends (and Notifications) stored: the
                                               ingest rate is its ``rate()``
ack_latency_seconds                 histogram  Send received -> stored, may be ACKed
outbox_pending                      gauge      outbox rows waiting for the broker
outbox_pending_bytes                gauge      their payload and topic bytes (budget)
outbox_confirmed                    gauge      rows the broker confirmed, still kept
outbox_dead_letters                 gauge      rows the broker refused (set aside)
outbox_oldest_age_seconds           gauge      age of the oldest waiting row (0: none)
outbox_dropped_total{reason}        counter    rows dropped by the outbox budget's policy
uplink_enabled, uplink_connected    gauge      0/1
uplink_set_aside_total              counter    rows set aside since start
nodes{state}                        gauge      online, sleeping (queue mode, past its
                                               awake window), offline, deregistered
ota_nodes{campaign_state,state}     gauge      nodes of OTA campaigns by state
readings_time_flagged_total{flag}   counter    readings flagged ``late`` / ``tbad``
inference_decisions_total           counter    decisions the gateway made (LiteRT)
shadow_checks_total{status}         counter    shadow-check verdicts
<source>{<label>}                   gauge      each ``register_source`` (alerts...)
metrics_errors_total                counter    sections a scrape could not read
==================================  =========  ==========================================

Other parts add theirs with ``register_source(name, fn, help, label)``: ``fn()`` returns
a number or a mapping label value -> number, read at every scrape (it must be cheap and
must not block); e.g. the alert engine's ``alerts_active`` by rule.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import GatewayError

if TYPE_CHECKING:
    from ..app import Gateway

__all__ = ["ACK_BUCKETS", "GatewayCollector", "LatencyHistogram", "MetricsUnavailable",
           "Source", "render"]

log = logging.getLogger("aiotkit.gateway.metrics")

# upper bounds, seconds: a group commit is an fsync (0.1..20 ms on an SSD, more on SD)
ACK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
               5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Source = Callable[[], "float | Mapping[str, float]"]


class MetricsUnavailable(GatewayError):
    """``prometheus-client`` is not installed."""


class LatencyHistogram:
    """Fixed-bucket histogram with O(log buckets) ``observe`` and no allocation beyond
    the running sum; read whole at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = ACK_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound as text, observations at or below it)."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((repr(bound), float(total)))
        out.append(("+Inf", float(self.count)))
        return out


class GatewayCollector:
    """Reads ``gateway``'s state at every ``collect()`` (a prometheus_client collector).
    ``clock``: the wall clock the outbox and registrations are stamped with."""

    def __init__(self, gateway: Gateway, *, clock: Callable[[], float] = time.time) -> None:
        self._gateway = gateway
        self._clock = clock
        self.ack_latency = LatencyHistogram()
        self._sources: dict[str, tuple[Source, str, str]] = {}
        self.errors = 0
        self._registry: Any = None  # the prometheus_client registry ``render`` uses

    def register_source(self, name: str, fn: Source, help: str = "",
                        label: str = "kind") -> None:
        """Expose ``fn()`` as the gauge ``aiot_<name>`` (a mapping: one sample per key,
        under ``label``). A source of that name is replaced."""
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"metric name {name!r}: letters, digits and _ only")
        self._sources[name] = (fn, help or name.replace("_", " "), label)

    def unregister_source(self, name: str) -> None:
        self._sources.pop(name, None)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: names are only known at collect time

    def collect(self) -> Iterator[Any]:
        sections: list[Callable[[], Iterator[Any]]] = [
            self._ingest, self._outbox, self._uplink, self._nodes, self._ota,
            self._analysis, self._registered]
        for section in sections:
            try:
                yield from list(section())
            except Exception as e:  # noqa: BLE001 - one section failing spoils no scrape
                self.errors += 1
                log.debug("metrics: %s failed: %s", section.__name__, e)
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("aiot_metrics_errors", "sections a scrape could not read",
                                  value=self.errors)

    # -- sections ------------------------------------------------------------------------

    def _ingest(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        store = self._gateway.store
        # Send ids only grow (never reused: sends are kept as history), so the latest id
        # counts them with one index lookup rather than a COUNT(*) of the whole table
        yield CounterMetricFamily("aiot_sends_stored", "Sends and Notifications stored",
                                  value=store.last_send_id())
        h = self.ack_latency
        yield HistogramMetricFamily(
            "aiot_ack_latency_seconds", "a Send's arrival to the COMMIT it is acknowledged"
            " after (group commit included)", buckets=h.cumulative(), sum_value=h.sum)

    def _outbox(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        store = self._gateway.store
        pending, confirmed = store.outbox_counts()
        yield GaugeMetricFamily("aiot_outbox_pending", "outbox rows waiting for the broker",
                                value=pending)
        yield GaugeMetricFamily("aiot_outbox_pending_bytes", "payload and topic bytes of"
                                " the outbox rows waiting (outbox_max_bytes)",
                                value=store.outbox_pending_bytes())
        yield GaugeMetricFamily("aiot_outbox_confirmed", "outbox rows confirmed, still kept",
                                value=confirmed)
        yield GaugeMetricFamily("aiot_outbox_dead_letters",
                                "outbox rows the broker refused (set aside)",
                                value=store.outbox_dead_count())
        created = store.outbox_oldest() if pending else None
        age = max(0.0, self._clock() - created) if created is not None else 0.0
        yield GaugeMetricFamily("aiot_outbox_oldest_age_seconds",
                                "age of the oldest outbox row waiting (0: none)", value=age)
        drops_of = getattr(store, "outbox_drops", None)
        drops: Mapping[str, int] = drops_of() if callable(drops_of) else {}
        fam = CounterMetricFamily("aiot_outbox_dropped", "outbox rows dropped by the"
                                  " budget's policy, by reason", labels=["reason"])
        for reason, n in sorted(drops.items()):
            fam.add_metric([str(reason)], float(n))
        yield fam

    def _uplink(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        uplink = self._gateway.uplink
        yield GaugeMetricFamily("aiot_uplink_enabled", "the MQTT uplink is configured",
                                value=float(uplink is not None))
        yield GaugeMetricFamily("aiot_uplink_connected", "a broker session is up",
                                value=float(uplink is not None and uplink.connected))
        yield CounterMetricFamily("aiot_uplink_set_aside", "outbox rows set aside since"
                                  " start", value=uplink.set_aside if uplink else 0)

    def _nodes(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gw = self._gateway
        awake_s = gw.config.dm.queue_awake_s
        now = self._clock()
        counts = {"online": 0, "sleeping": 0, "offline": 0, "deregistered": 0}
        for reg in gw.store.registrations():
            if reg.state == "registered":
                asleep = "Q" in reg.binding and now - reg.updated_at >= awake_s
                counts["sleeping" if asleep else "online"] += 1
            else:
                counts["offline" if reg.state == "offline" else "deregistered"] += 1
        fam = GaugeMetricFamily("aiot_nodes", "nodes by state (sleeping: queue mode, past"
                                " its awake window)", labels=["state"])
        for state, n in counts.items():
            fam.add_metric([state], n)
        yield fam

    def _ota(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ota = getattr(self._gateway.store, "ota", None)
        counts_of = getattr(ota, "ota_state_counts", None)
        fam = GaugeMetricFamily("aiot_ota_nodes", "nodes of OTA campaigns by campaign and"
                                " node state", labels=["campaign_state", "state"])
        if callable(counts_of):
            for (cs, ns), n in sorted(counts_of().items()):
                fam.add_metric([cs, ns], n)
        yield fam

    def _analysis(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        gw = self._gateway
        flagged = CounterMetricFamily("aiot_readings_time_flagged", "readings whose node"
                                      " time was flagged on the uplink", labels=["flag"])
        tc = gw.time_check
        flagged.add_metric(["late"], tc.late if tc else 0)
        flagged.add_metric(["tbad"], tc.tbad if tc else 0)
        yield flagged
        inf = gw.inference
        yield CounterMetricFamily("aiot_inference_decisions", "decisions the gateway made"
                                  " for nodes that send features only",
                                  value=inf.decisions if inf is not None else 0)
        shadow = CounterMetricFamily("aiot_shadow_checks", "shadow-check verdicts",
                                     labels=["status"])
        if gw.shadow is not None:
            for status, n in gw.shadow.counts.items():
                shadow.add_metric([status], n)
        yield shadow

    def _registered(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for name, (fn, help_text, label) in list(self._sources.items()):
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - a source's bug spoils no scrape
                self.errors += 1
                log.debug("metrics: source %s failed: %s", name, e)
                continue
            if isinstance(value, Mapping):
                fam = GaugeMetricFamily(f"aiot_{name}", help_text, labels=[label])
                for key, v in sorted(value.items()):
                    fam.add_metric([str(key)], float(v))
            else:
                fam = GaugeMetricFamily(f"aiot_{name}", help_text, value=float(value))
            yield fam


def render(collector: GatewayCollector, *, process: bool = True) -> bytes:
    """The text exposition of ``collector`` (and the process's CPU, memory and file
    descriptors: prometheus_client's ``ProcessCollector``, Linux only)."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    except ImportError as e:
        raise MetricsUnavailable("the metrics need prometheus-client: pip install"
                                 " 'prometheus-client>=0.20'") from e
    registry = collector._registry
    if registry is None:
        registry = collector._registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        if process:
            ProcessCollector(registry=registry)
    return bytes(generate_latest(registry))
