"""What the analytics read from one stored Send: the window's features (object 33001),
the accelerometer's readings (3313) and the node's decision (33002)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..lwm2m.senml import Record

__all__ = ["Window", "parse_window"]

_FEATURES = "/33001/0/"
_DECISION = "/33002/0/"
_ACCEL = "/3313/"
MAX_FEATURES = 32  # DDF 33001.xml: resources 0..31


@dataclass(slots=True)
class Window:
    """One Send's analytics view; absent resources stay None / empty."""

    features: dict[int, float] = field(default_factory=dict)  # 33001/0/i, physical units
    readings: dict[str, float] = field(default_factory=dict)  # numeric 3313 resources
    label: str | None = None  # 33002/0/2 (or the index as text)
    confidence: float | None = None
    score: int | None = None
    anomalous: bool | None = None
    raw: bytes | None = None  # 33002/0/9: int32 little-endian per feature output
    scale_exp: int | None = None  # 33002/0/10
    clf_id: bytes | None = None  # 33002/0/7
    ae_id: bytes | None = None  # 33002/0/8

    @property
    def decision(self) -> bool:
        return self.label is not None or self.score is not None or self.anomalous is not None

    def raw_output(self, index: int) -> int | None:
        """Raw int32 feature output ``index`` from 33002/0/9, if the node sent it."""
        raw = self.raw
        if raw is None or len(raw) % 4 or not 0 <= index < len(raw) // 4:
            return None
        return int.from_bytes(raw[4 * index:4 * index + 4], "little", signed=True)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def parse_window(records: Sequence[Record]) -> Window | None:
    """The window of one Send's records; None when it holds none of the objects."""
    w = Window()
    seen = False
    label_index: int | None = None
    for r in records:
        path = r.path
        if path.startswith(_FEATURES):
            rest = path[len(_FEATURES):]
            x = _number(r.value)
            if rest.isdigit() and int(rest) < MAX_FEATURES and x is not None:
                w.features[int(rest)] = x
                seen = True
        elif path.startswith(_DECISION):
            rest = path[len(_DECISION):]
            if not rest.isdigit():
                continue
            rid, v = int(rest), r.value
            seen = True
            if rid == 1 and isinstance(v, int) and not isinstance(v, bool):
                label_index = v
            elif rid == 2 and isinstance(v, str):
                w.label = v[:64]
            elif rid == 3:
                w.confidence = _number(v)
            elif rid == 4 and isinstance(v, int) and not isinstance(v, bool):
                w.score = v
            elif rid == 5 and isinstance(v, bool):
                w.anomalous = v
            elif rid == 7 and isinstance(v, bytes):
                w.clf_id = v
            elif rid == 8 and isinstance(v, bytes):
                w.ae_id = v
            elif rid == 9 and isinstance(v, bytes):
                w.raw = v
            elif rid == 10 and isinstance(v, int) and not isinstance(v, bool):
                w.scale_exp = v
        elif path.startswith(_ACCEL):
            x = _number(r.value)
            if x is not None and path.count("/") == 3 and len(w.readings) < 64:
                w.readings[path] = x
                seen = True
    if w.label is None and label_index is not None:
        w.label = str(label_index)
    return w if seen else None
