"""The analytics engine: rollups, alerts and drift on the registry's events.

``Analytics.on_event`` is a registry listener (``Registry.add_listener``, as the shadow
check and the uplink): it runs after a Send is committed, never delaying its
acknowledgement, and only updates memory, except for an alert transition (one short
transaction on the analytics tables, and its message queued in the outbox). The tick
task (every ``[analytics] tick_s``) closes due rollup buckets and writes them in one
transaction with their outbox messages, writes the drift states that changed, raises
``silent`` alerts and prunes old rows. ``on_shadow`` is the shadow checker's listener.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lwm2m.registry import RegistryEvent
from ..storage.api import OutboxMessage
from .alerts import AlertEngine
from .drift import DriftMonitor, load_references
from .rollups import PERIODS, Rollups
from .window import parse_window

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..inference.shadow import Verdict
    from ..storage.analyticstables import AlertRow
    from ..storage.sqlite import SqliteStorage

__all__ = ["Analytics"]

log = logging.getLogger("aiotkit.gateway.analytics")

PRUNE_EVERY_S = 600.0
WRITE_CHUNK = 250  # closed buckets written (and queued for the uplink) per step of a tick


class Analytics:
    """Rollups, alerts and drift for one gateway; ``start()`` / ``shutdown()``."""

    def __init__(self, config: GatewayConfig, store: SqliteStorage, *,
                 clock: Callable[[], float] = time.time,
                 kick: Callable[[], None] | None = None,
                 model_dirs: Sequence[Path] = ()) -> None:
        an = config.analytics
        self.config = an
        self.store = store
        self.tables = store.analytics
        self._clock = clock
        self._kick = kick
        self._publish_on = config.mqtt.enabled
        by_id, default = load_references(model_dirs, an.drift_card)
        names = (default.feature_names if default is not None else
                 next((r.feature_names for r in by_id.values()), ()))
        self.drift = DriftMonitor(by_id, default, window=an.drift_windows,
                                  min_windows=an.drift_min_windows, watch=an.drift_watch,
                                  alert=an.drift_alert)
        self.rollups = Rollups(names)
        self.alerts = AlertEngine(config.alerts.rules, self.tables,
                                  publish=self._publish if self._publish_on else None,
                                  gateway_id=config.gateway.id, feature_names=names)
        self._keep_cleared_s = config.alerts.keep_cleared_days * 86400.0
        self._closed: list[dict[str, Any]] = []  # buckets closed by a Send, to write
        self._drift_dirty: set[str] = set()
        self._drift_status: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.alerts.load(self._clock())
        self._task = asyncio.create_task(self._run(), name="aiot-analytics")

    async def shutdown(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            self._flush(self._clock())  # what is closed already; open buckets go
        except Exception:
            log.exception("analytics: rollups and drift state not written at shutdown")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                # closed buckets are written WRITE_CHUNK at a time, the loop served in
                # between: at a minute boundary 1,000 nodes close 1,000 buckets (2,000 at
                # the hour), 0.15 s of encoding and writing that held every Send back
                for _ in self._tick_steps(self._clock()):
                    await asyncio.sleep(0)
            except Exception:  # a full disk must not end the analytics for good
                log.exception("analytics tick failed")

    # -- inputs --------------------------------------------------------------------------

    def on_event(self, event: RegistryEvent) -> None:
        """Registry listener (module docstring)."""
        now = self._clock()
        ep = event.endpoint
        if event.kind == "deregistered":
            self.alerts.forget(ep, now)
            return
        if event.kind == "expired":
            return
        self.alerts.heard(ep, now)
        if event.kind != "send" or not event.records:
            return
        w = parse_window(event.records)
        if w is None:
            return
        if w.features or w.decision:  # a window of an aiotkit node (33001 / 33002)
            self._closed += self.rollups.add(ep, now, w)
        node = self.drift.add(ep, w, now)
        if node is not None and node.score is not None and node.updated == now:
            self._drift_dirty.add(ep)  # evaluated by this window
            if self._drift_status.get(ep) != node.status:
                self._drift_status[ep] = node.status
                top = sorted(node.per_input.items(), key=lambda kv: -kv[1])[:3]
                self.alerts.drift(ep, node.status, node.score, now,
                                  {"reference": node.ref.name,
                                   "nearest_label": node.nearest_label,
                                   "top_features": dict(top)})
        self.alerts.window(ep, w, now)

    def on_shadow(self, verdict: Verdict) -> None:
        """The shadow checker's listener (``ShadowChecker.add_listener``)."""
        self.alerts.shadow(verdict.endpoint, verdict.status, verdict.detail, self._clock())

    # -- periodic ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Close due buckets, write them and the changed drift states, raise silent
        alerts, prune (every ``PRUNE_EVERY_S``)."""
        for _ in self._tick_steps(now):
            pass

    def _tick_steps(self, now: float) -> Iterator[None]:
        """``tick`` in steps: one after each chunk of buckets written."""
        closed, self._closed = self._closed, []
        closed += self.rollups.close_due(now)
        for i in range(0, len(closed), WRITE_CHUNK):
            self._write_rollups(closed[i:i + WRITE_CHUNK])
            yield
        self._write_drift(now)
        self.alerts.tick(now)
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            self.prune(now)

    def _flush(self, now: float) -> None:
        """Write what is closed already and the drift states (at shutdown)."""
        closed, self._closed = self._closed, []
        self._write_rollups(closed)
        self._write_drift(now)

    def _write_rollups(self, closed: list[dict[str, Any]]) -> None:
        if closed:
            self.tables.put_rollups((c["endpoint"], c["period"], c["start"], c)
                                    for c in closed)
            if self._publish_on and self.config.publish_rollups:
                self._publish([OutboxMessage(
                    f"{c['endpoint']}/rollup/{c['period']}",
                    json.dumps(c, separators=(",", ":"), allow_nan=False).encode(),
                    kind="rollup") for c in closed])

    def _write_drift(self, now: float) -> None:
        dirty, self._drift_dirty = self._drift_dirty, set()
        rows = []
        for ep in dirty:
            state = self.drift.state(ep)
            if state is not None:
                rows.append((ep, state, now))
        if rows:
            self.tables.put_drift(rows)

    def prune(self, now: float) -> None:
        keep = {"1m": self.config.rollups_1m, "1h": self.config.rollups_1h}
        for period, length in PERIODS:
            self.tables.prune_rollups(period, now - keep[period] * length)
        self.tables.prune_alerts(now - self._keep_cleared_s)

    def _publish(self, messages: Sequence[OutboxMessage]) -> None:
        self.store.outbox_add(messages, self._clock())
        if self._kick is not None:
            self._kick()

    def ack(self, alert_id: int, by: str) -> AlertRow | None:
        """Acknowledge an active alert (``AlertEngine.ack``) at the gateway's clock."""
        return self.alerts.ack(alert_id, by, self._clock())

    # -- views ---------------------------------------------------------------------------

    def drift_state(self, endpoint: str) -> dict[str, Any] | None:
        """The node's drift (live, else as last written), None when never computed."""
        return self.drift.state(endpoint) or self.tables.drift(endpoint)
