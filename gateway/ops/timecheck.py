"""Node timestamps checked, never corrected: ``late`` and ``tbad`` flags per reading.

A reading's SenML time (``Record.time``: absolute, or below 2**28 relative to its
reception, RFC 8428 §4.5.3) is resolved to wall time and checked:

* ``tbad``: more than ``max_future_s`` ahead of the gateway's clock, or more than
  ``max_past_s`` behind it (a node whose clock was never set, or set wrongly). Such a
  time is not used as the path's latest time.
* ``late``: older than the latest time the same node sent for the same path before
  (a node's logged reports re-sent after an outage, a reordering network, a node clock
  stepped back). Compared with the latest time of that path since the gateway started,
  seeded at an endpoint's first Send from its stored latest values.

The readings are stored and forwarded as they came, in arrival order, with the flags on
the uplink payload (``"late": true``, ``"tbad": true``: ``gateway/uplink/mqtt.py``) and
counted (``late``, ``tbad``: the metrics). Readings without a time are not checked.
Memory: one float per (endpoint, path), at most ``max_paths`` (beyond it the table is
emptied and seeded again: a late reading may then pass unflagged once per path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..lwm2m.senml import Record

__all__ = ["MAX_PATHS", "RELATIVE_T", "TimeCheck"]

RELATIVE_T = float(1 << 28)  # RFC 8428 §4.5.3: SenML times below are relative to now
MAX_PATHS = 200_000
MAX_FUTURE_S = 300.0
MAX_PAST_S = 7 * 86400.0

Flags = tuple[bool, bool]  # (late, tbad)
_NONE: Flags = (False, False)


def resolve(t: float, received_at: float) -> float:
    """A SenML time as wall time: absolute as is, relative from its reception."""
    return t if t >= RELATIVE_T else received_at + t


class TimeCheck:
    """Flags readings' node times (module docstring). ``seed(endpoint)``: that
    endpoint's stored latest values (``Storage.latest``), read at its first Send."""

    def __init__(self, *, max_future_s: float = MAX_FUTURE_S,
                 max_past_s: float = MAX_PAST_S,
                 seed: Callable[[str], Mapping[str, Any]] | None = None,
                 max_paths: int = MAX_PATHS) -> None:
        self.max_future_s = max_future_s
        self.max_past_s = max_past_s
        self._seed = seed
        self._max_paths = max_paths
        self._last: dict[tuple[str, str], float] = {}
        self._seeded: set[str] = set()
        self.late = 0  # readings flagged since start
        self.tbad = 0

    def flags(self, endpoint: str, records: Sequence[Record],
              now: float) -> list[Flags] | None:
        """(late, tbad) per record of one Send received ``now``; None when no record
        has a time (the common case of a node without a clock: nothing to do)."""
        if all(r.time is None for r in records):
            return None
        if endpoint not in self._seeded:
            self._seed_endpoint(endpoint)
        last = self._last
        lo, hi = now - self.max_past_s, now + self.max_future_s
        out: list[Flags] = []
        for r in records:
            if r.time is None:
                out.append(_NONE)
                continue
            t = resolve(r.time, now)
            if not lo <= t <= hi:
                self.tbad += 1
                out.append((False, True))
                continue
            key = (endpoint, r.path)
            before = last.get(key)
            if before is not None and t < before:
                self.late += 1
                out.append((True, False))
                continue
            last[key] = t
            out.append(_NONE)
        if len(last) > self._max_paths:
            last.clear()
            self._seeded.clear()
        return out

    def _seed_endpoint(self, endpoint: str) -> None:
        self._seeded.add(endpoint)
        if self._seed is None:
            return
        try:
            latest = self._seed(endpoint)
        except Exception:  # noqa: BLE001 - no seed: the next readings start the record
            return
        now_ok = self._last
        for path, v in latest.items():
            t, rx = getattr(v, "time", None), getattr(v, "received_at", None)
            if isinstance(t, int | float) and isinstance(rx, int | float):
                at = resolve(float(t), float(rx))
                if rx - self.max_past_s <= at <= rx + self.max_future_s:  # not a bad one
                    now_ok.setdefault((endpoint, path), at)
