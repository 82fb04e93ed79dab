"""Rollups: per node, 1-minute and 1-hour min / max / mean / count of every feature
(object 33001, in physical units) and accelerometer reading (3313), and the node's
inference statistics (windows, class counts, mean confidence, anomalous windows,
anomaly-score percentiles p50 / p90 / p99). Only Sends that carry a window (33001
features or a 33002 decision) count: a device that sends 3313 readings alone has no
rollups (its readings are forwarded one by one already).

Buckets are aligned to the gateway's receive time (a Send counts in the bucket
``floor(received / period) * period``, whatever the node's own timestamps say). Each
Send only updates running sums in memory (``add``, a few dictionary operations per
value); a bucket is closed, stored and published when its period has passed
(``close_due``, called by the engine's tick) or when the node's next Send falls in a later
bucket. A crash or restart loses the open buckets (at most the current minute and the
current hour's 1-hour bucket; the 1-minute rows of that hour are kept). Percentiles come
from at most ``SCORE_SAMPLE`` scores per bucket (a uniform reservoir sample; exact while
a bucket holds fewer).

Published payload (topic ``{ep}/rollup/1m`` or ``{ep}/rollup/1h``, kind rollup)::

    {"endpoint": "node-1", "period": "1m", "start": 1700000040.0, "end": 1700000100.0,
     "sends": 12,
     "features": {"/33001/0/1": {"name": "rms", "min": ..., "max": ..., "mean": ...,
                                 "count": 12}, "/3313/0/5702": {...}},
     "inference": {"windows": 12, "classes": {"normal": 11, "ball": 1},
                   "mean_confidence": 0.93, "anomalous": 0,
                   "score_p50": 210, "score_p90": 388, "score_p99": 401, "scores": 12}}

``inference`` is null when the bucket held no decision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .window import Window

__all__ = ["PERIODS", "Rollups", "percentile"]

PERIODS: tuple[tuple[str, float], ...] = (("1m", 60.0), ("1h", 3600.0))
SCORE_SAMPLE = 1024
MAX_KEYS = 128  # features and readings per node and bucket at most


@dataclass(slots=True)
class _Stat:
    count: int = 0
    lo: float = math.inf
    hi: float = -math.inf
    total: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)


@dataclass(slots=True)
class _Bucket:
    start: float
    sends: int = 0
    values: dict[str, _Stat] = field(default_factory=dict)
    windows: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    conf_n: int = 0
    conf_sum: float = 0.0
    anomalous: int = 0
    scores: list[int] = field(default_factory=list)
    scores_seen: int = 0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values (not empty)."""
    n = len(sorted_values)
    rank = max(1, math.ceil(q / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


class Rollups:
    """Open buckets of every node; ``add`` per Send, ``close_due`` per tick."""

    def __init__(self, names: Sequence[str] = (), *, seed: int = 0) -> None:
        self._names = list(names)  # 33001 resource i -> the feature spec's output name
        self._open: dict[tuple[str, str], _Bucket] = {}
        self._rng = random.Random(seed)
        self._next_due = math.inf

    def add(self, endpoint: str, now: float, window: Window) -> list[dict[str, Any]]:
        """Count one Send's window; returns the node's buckets this closed (the Send is
        in a later bucket than the open one)."""
        closed: list[dict[str, Any]] = []
        for period, length in PERIODS:
            start = math.floor(now / length) * length
            key = (endpoint, period)
            b = self._open.get(key)
            if b is None or b.start < start:
                if b is not None:
                    closed.append(self._summary(endpoint, period, length, b))
                b = self._open[key] = _Bucket(start)
                self._next_due = min(self._next_due, start + length)
            # b.start > start: the clock went back; the Send counts in the open bucket
            self._count(b, window)
        return closed

    def _count(self, b: _Bucket, w: Window) -> None:
        b.sends += 1
        values = b.values
        for i, x in w.features.items():
            self._value(values, f"/33001/0/{i}", x)
        for path, x in w.readings.items():
            self._value(values, path, x)
        if not w.decision:
            return
        b.windows += 1
        if w.label is not None:
            b.classes[w.label] = b.classes.get(w.label, 0) + 1
        if w.confidence is not None:
            b.conf_n += 1
            b.conf_sum += w.confidence
        if w.anomalous:
            b.anomalous += 1
        if w.score is not None:
            b.scores_seen += 1
            if len(b.scores) < SCORE_SAMPLE:
                b.scores.append(w.score)
            else:  # reservoir sampling: every score kept with the same probability
                j = self._rng.randrange(b.scores_seen)
                if j < SCORE_SAMPLE:
                    b.scores[j] = w.score

    @staticmethod
    def _value(values: dict[str, _Stat], key: str, x: float) -> None:
        s = values.get(key)
        if s is None:
            if len(values) >= MAX_KEYS:
                return
            s = values[key] = _Stat()
        s.add(x)

    def close_due(self, now: float) -> list[dict[str, Any]]:
        """Close every bucket whose period has passed at ``now``; their summaries."""
        if now < self._next_due:
            return []
        closed: list[dict[str, Any]] = []
        lengths = dict(PERIODS)
        nxt = math.inf
        for key, b in list(self._open.items()):
            length = lengths[key[1]]
            if b.start + length <= now:
                closed.append(self._summary(key[0], key[1], length, b))
                del self._open[key]
            else:
                nxt = min(nxt, b.start + length)
        self._next_due = nxt
        return closed

    def forget(self, endpoint: str) -> None:
        for period, _ in PERIODS:
            self._open.pop((endpoint, period), None)

    def open_count(self) -> int:
        return len(self._open)

    def _summary(self, endpoint: str, period: str, length: float,
                 b: _Bucket) -> dict[str, Any]:
        feats: dict[str, Any] = {}
        for key, s in b.values.items():
            entry: dict[str, Any] = {"min": s.lo, "max": s.hi, "mean": s.total / s.count,
                                     "count": s.count}
            if key.startswith("/33001/0/"):
                i = int(key[len("/33001/0/"):])
                if i < len(self._names):
                    entry = {"name": self._names[i], **entry}
            feats[key] = entry
        inference: dict[str, Any] | None = None
        if b.windows:
            scores = sorted(b.scores)
            inference = {
                "windows": b.windows,
                "classes": dict(sorted(b.classes.items())),
                "mean_confidence": b.conf_sum / b.conf_n if b.conf_n else None,
                "anomalous": b.anomalous,
                "scores": b.scores_seen,
            }
            for q in (50, 90, 99):
                inference[f"score_p{q}"] = percentile(scores, q) if scores else None
        return {"endpoint": endpoint, "period": period, "start": b.start,
                "end": b.start + length, "sends": b.sends, "features": feats,
                "inference": inference}
