"""Shadow check of the nodes' on-device decisions with the reference interpreter.

A node that runs models reports its decision in object 33002 "aiotkit Window Decision"
(README, "For firmware developers"): label, confidence, anomaly score and flag, the ids
of the models (first 8 bytes of each .tflite's sha256), the window's raw int32 feature
outputs and the sensor's scale exponent. For every such Send the gateway replays the
window through the same models: it quantizes the raw features exactly as the node must
(models/inputq.py), runs the models with tflite-micro (the TFLM reference kernels the
node's interpreter is bit-exact with) and compares. A disagreement is logged as a
warning (``shadow check ep=... window=...: DISAGREES ...``) and counted; so is a
decision it cannot check (unknown model, missing resources).

Models are found by id in the shipped ``aiotkit/models/*/model.tflite`` and in the
folders of ``[shadow] models`` in the gateway config. The check needs numpy and
tflite-micro (``pip install aiotkit[model]``); without them it is off, said once at start.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import GatewayError
from ..lwm2m.registry import RegistryEvent
from ..lwm2m.senml import Record

log = logging.getLogger("aiotkit.gateway.shadow")

OBJECT = "/33002/0/"
Status = Literal["agree", "disagree", "unchecked"]
SUMMARY_EVERY = 100


class ShadowUnavailable(GatewayError):
    """numpy or tflite-micro is missing: the shadow check cannot run here."""


@dataclass
class ShadowModel:
    id: bytes
    path: Path
    kind: str
    meta: dict[str, Any]
    data: bytes
    _interp: Any = field(default=None, repr=False)

    def run(self, x: Any) -> Any:
        """int8 output row for one int8 input row (the model's own TFLM interpreter)."""
        import numpy as np

        if self._interp is None:
            from tflite_micro.python.tflite_micro import runtime

            self._interp = runtime.Interpreter.from_bytes(self.data)
        self._interp.set_input(np.asarray(x, dtype=np.int8).reshape(1, -1), 0)
        self._interp.invoke()
        return np.array(self._interp.get_output(0), dtype=np.int8).reshape(-1)


def shipped_model_dirs() -> list[Path]:
    from aiotkit import models

    return [Path(models.__file__).parent]


class ModelIndex:
    """Models by id (sha256[:8] of the file) from .tflite files in ``dirs`` and one level
    below; files without ``aiot.model`` metadata are skipped (with a debug line)."""

    def __init__(self, dirs: Iterable[Path]):
        from aiotkit.models.tflmeta import aiot_model

        self.models: dict[bytes, ShadowModel] = {}
        for d in dirs:
            d = Path(d)
            for p in sorted({*d.glob("*.tflite"), *d.glob("*/*.tflite")}):
                try:
                    data = p.read_bytes()
                    meta = aiot_model(data)
                except (OSError, ValueError) as e:
                    log.debug("shadow check: skipping %s: %s", p, e)
                    continue
                mid = hashlib.sha256(data).digest()[:8]
                self.models[mid] = ShadowModel(mid, p, str(meta.get("kind")), meta, data)

    def get(self, mid: Any) -> ShadowModel | None:
        return self.models.get(mid) if isinstance(mid, bytes) else None


@dataclass(frozen=True)
class Verdict:
    endpoint: str
    window: int | None
    status: Status
    detail: str


def decision_values(records: Sequence[Record]) -> dict[int, Any]:
    """Resource id -> value of the /33002/0 records of one Send."""
    out = {}
    for r in records:
        if r.path.startswith(OBJECT):
            rest = r.path[len(OBJECT):]
            if rest.isdigit():
                out[int(rest)] = r.value
    return out


def check(endpoint: str, values: dict[int, Any], index: ModelIndex) -> Verdict:
    """Replay one decision through the reference interpreter; see the module docstring."""
    import numpy as np
    from aiotkit.models.inputq import quantize

    seq = values.get(0)
    window = seq if isinstance(seq, int) else None

    def verdict(status: Status, detail: str) -> Verdict:
        return Verdict(endpoint, window, status, detail)

    raw = values.get(9)
    e = values.get(10)
    if not isinstance(raw, bytes) or len(raw) % 4 or not raw or not isinstance(e, int):
        return verdict("unchecked", "no raw feature outputs (/33002/0/9) or scale (/10)")
    feats = np.frombuffer(raw, dtype="<i4").astype(np.int64)[None, :]
    exps = np.array([e])
    diffs: list[str] = []
    checked: list[str] = []
    for id_res, kind in ((7, "classifier"), (8, "anomaly")):
        if id_res not in values:
            continue
        m = index.get(values[id_res])
        if m is None or m.kind != kind:
            mid = values[id_res].hex() if isinstance(values[id_res], bytes) else "?"
            return verdict("unchecked", f"{kind} model {mid} is not known to the gateway")
        inputs = m.meta.get("inputs") or []
        if any(d.get("index", 1 << 30) >= feats.shape[1] for d in inputs):
            return verdict("disagree", f"{kind} {m.path.parent.name}: the node sent"
                           f" {feats.shape[1]} feature outputs, the model reads more")
        x = quantize(feats, exps, inputs)[0]  # type: ignore[no-untyped-call]
        y = m.run(x)
        if kind == "classifier":
            label = int(np.argmax(y))  # the first largest, as the node
            conf = (int(y[label]) + 128) / 256
            labels = m.meta.get("labels") or []
            name = labels[label] if label < len(labels) else str(label)
            checked.append(f"label {name} ({conf:.3f})")
            if values.get(1) != label:
                diffs.append(f"label: node {values.get(1)} ({values.get(2)}), gateway {label}"
                             f" ({name})")
            elif values.get(3) != conf:
                diffs.append(f"confidence: node {values.get(3)}, gateway {conf}")
        else:
            score = int(((y.astype(np.int64) - x.astype(np.int64)) ** 2).sum())
            flag = score > int(m.meta.get("threshold", 0))
            checked.append(f"anomaly score {score}{' (anomalous)' if flag else ''}")
            if values.get(4) != score:
                diffs.append(f"anomaly score: node {values.get(4)}, gateway {score}")
            if values.get(5) is not flag:
                diffs.append(f"anomalous: node {values.get(5)}, gateway {flag}")
    if not checked:
        return verdict("unchecked", "no model ids (/33002/0/7, /8) in the decision")
    if diffs:
        return verdict("disagree", "; ".join(diffs))
    return verdict("agree", ", ".join(checked))


class ShadowChecker:
    """Registry listener: checks every Send that carries a decision (after it is stored,
    never delaying the acknowledgement's commit) and keeps counts and recent verdicts."""

    def __init__(self, dirs: Iterable[Path], keep: int = 100):
        try:
            import numpy  # noqa: F401
            from tflite_micro.python.tflite_micro import runtime  # noqa: F401
        except ImportError as e:
            raise ShadowUnavailable(
                f"the shadow check needs numpy and tflite-micro ({e.name} is missing):"
                " pip install 'aiotkit[model]'") from None
        self.index = ModelIndex(dirs)
        self.counts: dict[Status, int] = {"agree": 0, "disagree": 0, "unchecked": 0}
        self.recent: deque[Verdict] = deque(maxlen=keep)
        self._seen: set[str] = set()
        self._listeners: list[Callable[[Verdict], None]] = []

    def add_listener(self, listener: Callable[[Verdict], None]) -> None:
        """Call ``listener(verdict)`` after each decision is checked (the alert rules of
        kind "shadow", gateway/analytics); it must not raise or block."""
        self._listeners.append(listener)

    def on_event(self, event: RegistryEvent) -> None:
        if event.kind != "send" or not event.records:
            return
        values = decision_values(event.records)
        if not values:
            return
        try:
            v = check(event.endpoint, values, self.index)
        except Exception as e:  # a reference-interpreter failure must not stop the gateway
            log.exception("shadow check ep=%s failed", event.endpoint)
            v = Verdict(event.endpoint, None, "unchecked", f"check failed: {e}")
        self.counts[v.status] += 1
        self.recent.append(v)
        for listener in self._listeners:
            try:
                listener(v)
            except Exception:
                log.exception("shadow check listener %r failed", listener)
        first = event.endpoint not in self._seen
        self._seen.add(event.endpoint)
        if v.status == "disagree":
            log.warning("shadow check ep=%s window=%s: DISAGREES: %s", v.endpoint, v.window,
                        v.detail)
        else:
            # the first verdict of each node, then a summary every SUMMARY_EVERY checks
            what = "agrees" if v.status == "agree" else "not checked"
            (log.info if first else log.debug)(
                "shadow check ep=%s window=%s: %s: %s", v.endpoint, v.window, what, v.detail)
        n = sum(self.counts.values())
        if n % SUMMARY_EVERY == 0:
            log.info("shadow check: %d decisions, %d agree, %d disagree, %d not checked", n,
                     self.counts["agree"], self.counts["disagree"], self.counts["unchecked"])
