"""Alerts: the rules of ``[alerts]`` (``rules.py``, where each kind and its hysteresis is
described) evaluated per node, raised and cleared in the database with their history
(``storage/analyticstables.py``), acknowledged through the REST API, and published.

Life cycle: ``active`` (raised) -> ``acknowledged`` (an operator, ``POST
/api/v1/alerts/{id}/ack``) -> ``cleared`` (the condition went away, past its
hysteresis); an alert may clear without being acknowledged. A rule has at most one open
(active or acknowledged) alert per node; once cleared, the next raise is a new alert.
Every transition is one transaction (the alert row and its history entry), then a
message on ``{ep}/alert/{rule}`` (topic relative to the uplink's prefix, kind alert)::

    {"id": 7, "rule": "fault", "kind": "label", "endpoint": "node-1",
     "severity": "warning", "event": "raised", "state": "active", "at": 1700000000.5,
     "raised_at": 1700000000.5, "acked_by": null, "gateway": "gw",
     "detail": {"not_normal": 3, "of": 5, "label": "inner_race"}}

``event`` is raised, acknowledged or cleared. In-memory evaluation state (the last n
windows of a k-of-n rule, an anomaly run's start) is not kept across a restart: open
alerts are (they are read back and stay open until their condition clears). An open
alert of a rule no longer in the config is cleared at start.

``AlertEngine.add_listener(fn)``: ``fn(AlertEvent)`` after each transition is committed
(the benchmark's "fault onset to alert" hook; the uplink is another way: the topic above).
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..logs import PeerLog
from ..storage.analyticstables import AlertRow, SqliteAnalyticsStorage
from ..storage.api import OutboxMessage
from .rules import AlertRule
from .window import Window

__all__ = ["AlertEngine", "AlertEvent", "alert_topic"]

log = logging.getLogger("aiotkit.gateway.analytics")
_peer_log = PeerLog(log)  # alert transitions: at most 5 lines per rule per 10 s

Publish = Callable[[Sequence[OutboxMessage]], None]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A committed transition: ``event`` raised, acknowledged or cleared."""

    event: str
    alert: AlertRow
    at: float


def alert_topic(endpoint: str, rule: str) -> str:
    """The alert's topic, relative to the uplink's prefix."""
    return f"{endpoint}/alert/{rule}"


class _KofN:
    __slots__ = ("bad", "last")

    def __init__(self, n: int) -> None:
        self.last: deque[bool] = deque(maxlen=n)
        self.bad = 0

    def push(self, bad: bool) -> int:
        last = self.last
        if len(last) == last.maxlen and last[0]:
            self.bad -= 1
        last.append(bad)
        self.bad += bad
        return self.bad


class _Run:
    __slots__ = ("off_since", "on_since")

    def __init__(self) -> None:
        self.on_since: float | None = None
        self.off_since: float | None = None


class AlertEngine:
    """Evaluates the rules; raises, clears and acknowledges alerts (module docstring)."""

    def __init__(self, rules: Sequence[AlertRule], tables: SqliteAnalyticsStorage, *,
                 publish: Publish | None = None, gateway_id: str = "gw",
                 feature_names: Sequence[str] = ()) -> None:
        self.rules = tuple(rules)
        self.tables = tables
        self.publish = publish
        self.gateway_id = gateway_id
        self._by_kind: dict[str, list[AlertRule]] = {}
        for r in self.rules:
            self._by_kind.setdefault(r.kind, []).append(r)
        self._features: dict[str, int | str] = {}  # range rule -> 33001 index or a path
        names = list(feature_names)
        from ..errors import ConfigError

        for r in self._by_kind.get("range", []):
            f = r.feature
            if isinstance(f, int) or (isinstance(f, str) and f.startswith("/")):
                self._features[r.name] = f
            elif isinstance(f, str) and f in names:
                self._features[r.name] = names.index(f)
            else:
                raise ConfigError(f"alerts rule {r.name}: feature {f!r} is not an output of"
                                  f" the node's feature spec ({', '.join(names) or 'unknown'});"
                                  " give its index in object 33001 or a resource path")
        self._kofn: dict[tuple[str, str], _KofN] = {}
        self._runs: dict[tuple[str, str], _Run] = {}
        self._open: dict[tuple[str, str], int] = {}  # (rule, endpoint) -> alert id
        self._heard: dict[str, float] = {}
        self._listeners: list[Callable[[AlertEvent], None]] = []
        self.counts = {"raised": 0, "acknowledged": 0, "cleared": 0}

    def add_listener(self, fn: Callable[[AlertEvent], None]) -> None:
        """Call ``fn(AlertEvent)`` after each committed transition (must not raise)."""
        self._listeners.append(fn)

    def load(self, now: float) -> None:
        """Read the open alerts back (at start); clear those of rules no longer configured."""
        known = {r.name for r in self.rules}
        for row in self.tables.open_alerts():
            if row.rule in known:
                self._open[(row.rule, row.endpoint)] = row.id
            else:
                cleared = self.tables.clear_alert(row.id, now, {"reason": "rule removed"})
                if cleared is not None:
                    self._emit("cleared", cleared, now)

    def open_count(self) -> int:
        return len(self._open)

    def open_by_rule(self) -> dict[str, int]:
        """Alerts raised and not cleared, per rule (every configured rule, 0 included)."""
        out = {r.name: 0 for r in self.rules}
        for rule, _ep in self._open:
            out[rule] = out.get(rule, 0) + 1
        return out

    # -- inputs --------------------------------------------------------------------------

    def heard(self, endpoint: str, now: float) -> None:
        """A message from the node: it is not silent."""
        self._heard[endpoint] = now
        for r in self._by_kind.get("silent", ()):
            if (r.name, endpoint) in self._open:
                self._clear(r, endpoint, now, {"heard_at": now})

    def forget(self, endpoint: str, now: float) -> None:
        """The node de-registered: it is not silent, it left."""
        self._heard.pop(endpoint, None)
        for r in self._by_kind.get("silent", ()):
            if (r.name, endpoint) in self._open:
                self._clear(r, endpoint, now, {"reason": "de-registered"})

    def window(self, endpoint: str, w: Window, now: float) -> None:
        """Evaluate the window rules (label, anomaly, range) on one Send."""
        if w.label is not None:
            for r in self._by_kind.get("label", ()):
                if r.applies(endpoint):
                    self._kofn_step(r, endpoint, w.label not in r.normal, now,
                                    {"label": w.label})
        if w.anomalous is not None:
            for r in self._by_kind.get("anomaly", ()):
                if r.applies(endpoint):
                    self._anomaly_step(r, endpoint, w.anomalous, w.score, now)
        for r in self._by_kind.get("range", ()):
            if not r.applies(endpoint):
                continue
            f = self._features[r.name]
            x = w.features.get(f) if isinstance(f, int) else w.readings.get(f)
            if x is None:
                continue
            out = (r.lo is not None and x < r.lo) or (r.hi is not None and x > r.hi)
            self._kofn_step(r, endpoint, out, now,
                            {"feature": r.feature, "value": x, "lo": r.lo, "hi": r.hi})

    def shadow(self, endpoint: str, status: str, detail: str, now: float) -> None:
        """A shadow-check verdict (agree / disagree; unchecked ones do not count)."""
        if status not in ("agree", "disagree"):
            return
        for r in self._by_kind.get("shadow", ()):
            if r.applies(endpoint):
                self._kofn_step(r, endpoint, status == "disagree", now,
                                {"last": detail[:200]})

    def drift(self, endpoint: str, status: str, score: float | None, now: float,
              detail: dict[str, Any]) -> None:
        """The node's drift result (``drift.py``): raise at "drift", clear at "ok"."""
        for r in self._by_kind.get("drift", ()):
            if not r.applies(endpoint):
                continue
            if status == "drift":
                self._raise(r, endpoint, now, {"score": score, **detail})
            elif status == "ok":
                self._clear(r, endpoint, now, {"score": score})

    def tick(self, now: float) -> None:
        """Raise ``silent`` alerts due at ``now``."""
        rules = self._by_kind.get("silent")
        if not rules:
            return
        for ep, last in list(self._heard.items()):
            for r in rules:
                if (now - last >= r.after_s and (r.name, ep) not in self._open
                        and r.applies(ep)):
                    self._raise(r, ep, now, {"last_heard": last,
                                             "silent_s": round(now - last, 3)})

    # -- evaluation ----------------------------------------------------------------------

    def _kofn_step(self, r: AlertRule, ep: str, bad: bool, now: float,
                   detail: dict[str, Any]) -> None:
        key = (r.name, ep)
        st = self._kofn.get(key)
        if st is None:
            st = self._kofn[key] = _KofN(r.n)
        count = st.push(bad)
        info = {"bad": count, "of": len(st.last), **detail}
        if key in self._open:
            if count <= r.clear_k and len(st.last) == r.n:
                self._clear(r, ep, now, info)
        elif count >= r.k:
            self._raise(r, ep, now, info)

    def _anomaly_step(self, r: AlertRule, ep: str, anomalous: bool, score: int | None,
                      now: float) -> None:
        key = (r.name, ep)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run()
        if anomalous:
            run.off_since = None
            if run.on_since is None:
                run.on_since = now
            if key not in self._open and now - run.on_since >= r.for_s:
                self._raise(r, ep, now, {"since": run.on_since, "score": score})
        else:
            run.on_since = None
            if run.off_since is None:
                run.off_since = now
            if key in self._open and now - run.off_since >= r.clear_s:
                self._clear(r, ep, now, {"since": run.off_since, "score": score})

    # -- transitions ---------------------------------------------------------------------

    def _raise(self, r: AlertRule, ep: str, now: float, detail: dict[str, Any]) -> None:
        key = (r.name, ep)
        if key in self._open:
            return
        row = self.tables.raise_alert(r.name, r.kind, ep, r.severity, now, _clean(detail))
        if row is None:  # open in the database already (another path raised it)
            existing = self.tables.alerts(endpoint=ep, rule=r.name,
                                          states=("active", "acknowledged"), limit=1)
            if existing:
                self._open[key] = existing[0].id
            return
        self._open[key] = row.id
        # nodes decide how often alerts change: the lines are rate-limited per rule
        _peer_log.log(logging.WARNING, f"raised {r.name}", "alert %s raised: rule %s (%s)"
                      " on %s: %s", row.id, r.name, r.kind, ep, json.dumps(row.detail)[:200])
        self._emit("raised", row, now)

    def _clear(self, r: AlertRule, ep: str, now: float, detail: dict[str, Any]) -> None:
        alert_id = self._open.pop((r.name, ep), None)
        if alert_id is None:
            return
        row = self.tables.clear_alert(alert_id, now, _clean(detail))
        if row is not None:
            _peer_log.log(logging.INFO, f"cleared {r.name}", "alert %s cleared: rule %s on %s",
                          row.id, r.name, ep)
            self._emit("cleared", row, now)

    def ack(self, alert_id: int, by: str, now: float) -> AlertRow | None:
        """Acknowledge an active alert; None when it is not active (see ``tables.alert``)."""
        row = self.tables.ack_alert(alert_id, by, now)
        if row is not None:
            log.info("alert %s acknowledged by %s", row.id, by)
            self._emit("acknowledged", row, now)
        return row

    def _emit(self, event: str, row: AlertRow, now: float) -> None:
        self.counts[event] += 1
        if self.publish is not None:
            body = {"id": row.id, "rule": row.rule, "kind": row.kind,
                    "endpoint": row.endpoint, "severity": row.severity, "event": event,
                    "state": row.state, "at": now, "raised_at": row.raised_at,
                    "acked_by": row.acked_by, "gateway": self.gateway_id,
                    "detail": row.detail}
            payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            try:
                self.publish([OutboxMessage(alert_topic(row.endpoint, row.rule), payload,
                                            kind="alert")])
            except Exception:  # the alert is in the database; the uplink is not
                log.exception("alert %s: could not queue its %s message", row.id, event)
        ev = AlertEvent(event, row, now)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:
                log.exception("alert listener %r failed", fn)


def _clean(detail: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe detail (no NaN or infinity; bytes as hex)."""
    out: dict[str, Any] = {}
    for k, v in detail.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        elif isinstance(v, bytes):
            v = v.hex()
        out[k] = v
    return out
