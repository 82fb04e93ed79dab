"""Drift monitoring: each node's recent feature distribution against the training
distribution in a model card (``training_distribution``, written by ``models/card.py``;
bins and PSI defined once in ``models/psi.py``).

Reference: the card of the node's anomaly model (33002/0/8, found by model id: the first
8 bytes of the .tflite's sha256, as in the shadow check), else of its classifier
(33002/0/7), else the configured card (``[analytics] drift_card``, by default the
shipped bearing-anomaly card, trained on normal windows only). A classifier's card
holds its histograms per class too: the node is compared with each class's and the
nearest class counts (``nearest_label``), since a classifier's training set is a mixture
of the classes.

Live values: per input of the reference (the model's inputs), the window's feature in
physical units, from 33001 (``/33001/0/<index>``) or else from the raw int32 outputs
33002/0/9 with the scale exponent 33002/0/10 (x = out * 2**(p*E - frac)): the units the
histogram was made in. Each node keeps its last ``window`` windows' bin numbers and the
running bin counts (a window is O(inputs) to add); the PSI is recomputed from the counts
every ``every`` windows (and while fewer than ``min_windows`` have arrived).

Score: the median over the inputs of the per-input PSI (inputs whose training values
fall in a single bin are left out: they cannot show a change). A change of gain, mounting
or load moves most features; one odd feature shows in the per-input table without
raising. Levels (``[analytics]``): below ``drift_watch`` (0.1) "ok", up to
``drift_alert`` (0.25) "watch", at or above it "drift". Fewer than ``min_windows``
windows: "collecting". Measured on the committed replay recordings (boards/replay,
hop 512, 45 windows) against the shipped bearing-anomaly card: the healthy recording 0.06, the same
with the sensor's gain x1.2 4.8 and x1.5 7.1, the fault recordings above 7.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotkit.models import psi

from ..errors import ConfigError
from .window import Window

__all__ = ["DriftMonitor", "NodeDrift", "Reference", "load_references"]

log = logging.getLogger("aiotkit.gateway.analytics")


@dataclass(frozen=True)
class _Input:
    name: str
    index: int
    unit_power: int
    frac: int
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    by_label: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Reference:
    """One card's training distribution."""

    name: str  # the card's name and version
    model_id: bytes | None
    inputs: tuple[_Input, ...]
    labels: tuple[str, ...]  # classes with histograms of their own (classifier cards)
    feature_names: tuple[str, ...]

    @classmethod
    def from_card(cls, card: dict[str, Any], model_id: bytes | None = None) -> Reference:
        dist = card.get("training_distribution")
        if not isinstance(dist, dict) or not dist.get("features"):
            raise ValueError(f"card {card.get('name')}: no training_distribution")
        inputs = []
        for f in dist["features"]:
            edges = tuple(float(e) for e in f["edges"])
            counts = tuple(int(c) for c in f["counts"])
            if (len(edges) != len(counts) + 1 or not counts or sum(counts) <= 0
                    or len(counts) > 255):  # a window keeps one byte per input's bin
                raise ValueError(f"card {card.get('name')}: feature {f.get('name')}: bad"
                                 " histogram (1..255 bins)")
            by = {str(k): tuple(int(c) for c in v) for k, v in f.get("by_label", {}).items()
                  if len(v) == len(counts)}
            inputs.append(_Input(str(f["name"]), int(f["index"]), int(f["unit_power"]),
                                 int(f["frac"]), edges, counts, by))
        labels = tuple(sorted(set.intersection(*(set(i.by_label) for i in inputs))))
        return cls(f"{card.get('name')} {card.get('version')}", model_id, tuple(inputs),
                   labels, tuple(card.get("feature_names") or ()))

    def value(self, inp: _Input, w: Window) -> float | None:
        x = w.features.get(inp.index)
        if x is not None:
            return x
        out = w.raw_output(inp.index)
        if out is None or w.scale_exp is None or not -64 <= w.scale_exp <= 64:
            return None
        return psi.physical(out, inp.frac, inp.unit_power, w.scale_exp)


def _card_reference(folder: Path) -> Reference:
    card = json.loads((folder / "card.json").read_text())
    mid = None
    mfile = folder / str(card.get("model", {}).get("file", "model.tflite"))
    if mfile.is_file():
        mid = hashlib.sha256(mfile.read_bytes()).digest()[:8]
    return Reference.from_card(card, mid)


def load_references(dirs: Iterable[Path], default: str = "") -> tuple[
        dict[bytes, Reference], Reference | None]:
    """Cards with a training distribution in ``dirs`` (each a folder of model folders),
    by model id, and the default reference (``default``: a model folder; empty: the
    shipped bearing-anomaly). ConfigError when ``default`` is given but unusable."""
    by_id: dict[bytes, Reference] = {}
    fallback: Reference | None = None
    for d in dirs:
        for card in sorted(Path(d).glob("*/card.json")):
            try:
                ref = _card_reference(card.parent)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.debug("drift: skipping %s: %s", card, e)
                continue
            if ref.model_id is not None:
                by_id[ref.model_id] = ref
            if not default and card.parent.name == "bearing-anomaly":
                fallback = ref
    if default:
        try:
            fallback = _card_reference(Path(default))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"analytics.drift_card: {default}: not a model folder with a"
                              f" card.json holding a training_distribution ({e})") from e
    return by_id, fallback


@dataclass
class NodeDrift:
    """One node's sliding window and its latest result."""

    ref: Reference
    bins: deque[bytes]  # per window, each input's bin (a byte each: 53 bytes, not 200)
    counts: list[list[int]]
    score: float | None = None
    status: str = "collecting"
    nearest_label: str | None = None
    per_input: dict[str, float] = field(default_factory=dict)
    updated: float | None = None
    added: int = 0  # windows counted since the node's reference was set

    def to_json(self, endpoint: str, watch: float, alert: float) -> dict[str, Any]:
        return {"endpoint": endpoint, "reference": self.ref.name,
                "model_id": self.ref.model_id.hex() if self.ref.model_id else None,
                "windows": len(self.bins), "status": self.status, "score": self.score,
                "nearest_label": self.nearest_label, "thresholds":
                {"watch": watch, "drift": alert}, "features": dict(self.per_input),
                "updated": self.updated}


class DriftMonitor:
    """Per node drift against its reference (module docstring)."""

    def __init__(self, by_id: dict[bytes, Reference], default: Reference | None, *,
                 window: int = 200, min_windows: int = 50, watch: float = 0.1,
                 alert: float = 0.25, every: int = 10, max_nodes: int = 100000) -> None:
        self.by_id = by_id
        self.default = default
        self.window = window
        self.min_windows = min_windows
        self.watch = watch
        self.alert = alert
        self.every = max(1, every)  # windows between two evaluations (PSI is O(bins))
        self.max_nodes = max_nodes
        self.nodes: dict[str, NodeDrift] = {}

    def reference_for(self, w: Window) -> Reference | None:
        for mid in (w.ae_id, w.clf_id):
            if mid is not None and mid in self.by_id:
                return self.by_id[mid]
        return self.default

    def add(self, endpoint: str, w: Window, now: float) -> NodeDrift | None:
        """Count one window; the node's state (None: no reference or no values)."""
        ref = self.reference_for(w)
        if ref is None:
            return None
        values = [ref.value(inp, w) for inp in ref.inputs]
        if any(v is None for v in values):
            return self.nodes.get(endpoint)
        node = self.nodes.get(endpoint)
        if node is None or node.ref is not ref:  # new node, or it runs another model now
            if node is None and len(self.nodes) >= self.max_nodes:
                return None
            node = self.nodes[endpoint] = NodeDrift(
                ref, deque(), [[0] * len(i.counts) for i in ref.inputs])
        bins = bytes(psi.bin_index(inp.edges, v)
                     for inp, v in zip(ref.inputs, values, strict=True) if v is not None)
        if len(node.bins) >= self.window:
            old = node.bins.popleft()
            for c, b in zip(node.counts, old, strict=True):
                c[b] -= 1
        node.bins.append(bins)
        for c, b in zip(node.counts, bins, strict=True):
            c[b] += 1
        node.added += 1
        if (len(node.bins) < self.min_windows or node.score is None
                or node.added % self.every == 0):
            self._evaluate(node, now)
        return node

    def _evaluate(self, node: NodeDrift, now: float) -> None:
        node.updated = now
        if len(node.bins) < self.min_windows:
            node.status, node.score = "collecting", None
            return
        ref = node.ref
        best: tuple[float, str | None, dict[str, float]] | None = None
        for label in (ref.labels or (None,)):
            per: dict[str, float] = {}
            for inp, live in zip(ref.inputs, node.counts, strict=True):
                expected = inp.counts if label is None else inp.by_label[label]
                if sum(expected) <= 0:
                    continue
                per[inp.name] = psi.psi(expected, live)
            informative = sorted(per[i.name] for i in ref.inputs
                                 if len(i.counts) > 1 and i.name in per)
            score = _median(informative)
            if best is None or score < best[0]:
                best = (score, label, per)
        if best is None:
            return
        score, label, per = best
        node.score = round(score, 6)
        node.nearest_label = label
        node.per_input = {k: round(v, 6) for k, v in per.items()}
        node.status = ("drift" if score >= self.alert else
                       "watch" if score >= self.watch else "ok")

    def state(self, endpoint: str) -> dict[str, Any] | None:
        node = self.nodes.get(endpoint)
        return None if node is None else node.to_json(endpoint, self.watch, self.alert)

    def forget(self, endpoint: str) -> None:
        self.nodes.pop(endpoint, None)


def _median(xs: list[float]) -> float:
    if not xs:
        return 0.0
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
