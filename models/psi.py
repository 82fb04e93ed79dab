"""Feature histograms and the population stability index (PSI), one definition for the
model card writer (the training distribution) and the gateway's drift monitor
(``gateway/analytics/drift.py``). Pure Python: the gateway needs no numpy for it.

Units: a feature's value in physical units (g, g^2, Hz, 1, count), as the node sends it
in object 33001 and as ``physical`` makes it from a raw int32 output (33002/0/9) and the
sensor's scale exponent: x = out * 2**(p * E - frac), p the unit power (``inputq``).

Bins: ``histogram`` cuts at the training values' quantiles (equal-frequency bins, at most
``BINS``; ties merge bins, so a feature with few distinct values gets fewer). ``edges``
are the training minimum, the inner cut points and the maximum; bin i holds
edges[i] <= x < edges[i + 1], except that the first bin also takes everything below
and the last everything above: a live value outside the training range counts in the
nearest end bin (``bin_index``), so a shifted distribution piles up there.

PSI = sum over bins of (a - e) * ln(a / e), a and e the live and training proportions,
each floored at ``EPS`` so an empty bin stays finite. Every term is >= 0, so PSI >= 0, and
it is 0 for identical proportions. Usual reading: below 0.1 stable, 0.1-0.25 a shift to
watch, 0.25 and above a real change (drift).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

BINS = 5  # the normal training set has 163 windows: >= 30 per bin
EPS = 1e-4
UNIT_POWER = {"1": 0, "count": 0, "Hz": 0, "code": 1, "code^2": 2}  # as inputq


def physical(out: int, frac: int, unit_power: int, scale_exp: int) -> float:
    """One raw int32 feature output in physical units (see the module docstring)."""
    return math.ldexp(float(out), unit_power * scale_exp - frac)


def histogram(values: Sequence[float], bins: int | None = None) -> dict[str, Any]:
    """``{"edges": [...], "counts": [...]}`` of finite ``values``, equal-frequency bins
    (module docstring); ValueError when no value is finite or ``bins`` < 1."""
    bins = BINS if bins is None else bins
    xs = sorted(float(v) for v in values if math.isfinite(v))
    if not xs or bins < 1:
        raise ValueError("a histogram needs at least one finite value and one bin")
    n = len(xs)
    cuts = [xs[min(n - 1, (i * n) // bins)] for i in range(1, bins)]
    inner = sorted({c for c in cuts if xs[0] < c < xs[-1]})
    edges = [xs[0], *inner, xs[-1]]
    counts = [0] * (len(edges) - 1)
    for x in xs:
        counts[bin_index(edges, x)] += 1
    return {"edges": edges, "counts": counts}


def bin_index(edges: Sequence[float], x: float) -> int:
    """The bin of ``x`` (module docstring: out-of-range values go to the end bins; NaN
    to the first)."""
    if len(edges) < 2:
        raise ValueError("a histogram has at least two edges")
    if math.isnan(x):
        return 0
    return min(bisect_right(edges, x, 1, len(edges) - 1) - 1, len(edges) - 2)


def proportions(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    if total <= 0:
        raise ValueError("no counts")
    return [c / total for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = EPS) -> float:
    """Population stability index of ``actual`` against ``expected`` (proportions or
    counts, the same bins; each side normalised here)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError("PSI needs two non-empty histograms over the same bins")
    e_tot, a_tot = float(sum(expected)), float(sum(actual))
    if e_tot <= 0 or a_tot <= 0:
        raise ValueError("PSI needs counts in both histograms")
    total = 0.0
    for ev, av in zip(expected, actual, strict=True):
        e = max(ev / e_tot, eps)
        a = max(av / a_tot, eps)
        total += (a - e) * math.log(a / e)
    return max(total, 0.0)
