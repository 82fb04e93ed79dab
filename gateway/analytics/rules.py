"""``[alerts]`` in the gateway config: the alert rules (``gateway/analytics/alerts.py``).

    [alerts]
    keep_cleared_days = 90          # cleared alerts (and their history) kept this long

    [[alerts.rules]]
    name = "fault"                  # unique; part of the MQTT topic {ep}/alert/{name}
    kind = "label"                  # label | anomaly | silent | range | drift | shadow
    severity = "warning"            # info | warning | critical
    endpoints = ["pump-*"]          # fnmatch patterns; empty or absent: every node
    k = 3                           # label, range, shadow: raise at >= k of the last n
    n = 5
    clear_k = 0                     # ... and clear at <= clear_k of the last n (< k)

Per kind (hysteresis in brackets):

- ``label``: the decision's label (33002/0/2) is not one of ``normal`` (default
  ``["normal"]``) in at least ``k`` of the node's last ``n`` decisions [cleared when at
  most ``clear_k`` of the last ``n`` are];
- ``anomaly``: the anomaly flag (33002/0/5) has been set in every decision for
  ``for_s`` seconds [cleared once it has been off in every decision for ``clear_s``,
  default ``for_s``];
- ``silent``: nothing (Send, Register, Update) heard from the node for ``after_s``
  seconds [cleared by the next message; a node that de-registers is forgotten];
- ``range``: ``feature`` (an output name of the node's feature spec such as ``"rms"``,
  its index in 33001, or an LwM2M resource path such as ``"/3313/0/5702"``) outside
  ``[lo, hi]`` (either may be omitted) in ``k`` of the last ``n`` windows [cleared at
  most ``clear_k`` of the last ``n``];
- ``drift``: the node's drift score (median per-feature PSI, ``drift.py``) reaches
  ``[analytics] drift_alert`` [cleared below ``drift_watch``];
- ``shadow``: the gateway's shadow check (``gateway/inference/shadow.py``) disagrees with
  the node in ``k`` of the last ``n`` checked decisions (default 1 of 10) [cleared at
  most ``clear_k``].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["KINDS", "AlertRule", "AlertsConfig", "alerts_toml", "parse_alerts"]

Kind = Literal["label", "anomaly", "silent", "range", "drift", "shadow"]
KINDS: tuple[str, ...] = ("label", "anomaly", "silent", "range", "drift", "shadow")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
MAX_RULES = 256
MAX_N = 10000
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# kind -> its own keys and their defaults (k-of-n defaults differ per kind)
_KEYS: dict[str, dict[str, Any]] = {
    "label": {"k": 3, "n": 5, "clear_k": 0, "normal": ("normal",)},
    "anomaly": {"for_s": 30.0, "clear_s": None},
    "silent": {"after_s": 600.0},
    "range": {"feature": None, "lo": None, "hi": None, "k": 3, "n": 5, "clear_k": 0},
    "drift": {},
    "shadow": {"k": 1, "n": 10, "clear_k": 0},
}
_COMMON = ("name", "kind", "severity", "endpoints")


@dataclass(frozen=True)
class AlertRule:
    """One ``[[alerts.rules]]`` entry (module docstring); unused keys keep defaults."""

    name: str
    kind: Kind
    severity: str = "warning"
    endpoints: tuple[str, ...] = ()
    k: int = 1
    n: int = 1
    clear_k: int = 0
    normal: tuple[str, ...] = ("normal",)
    for_s: float = 30.0
    clear_s: float = 30.0
    after_s: float = 600.0
    feature: str | int | None = None
    lo: float | None = None
    hi: float | None = None

    def applies(self, endpoint: str) -> bool:
        from fnmatch import fnmatchcase

        return not self.endpoints or any(fnmatchcase(endpoint, p) for p in self.endpoints)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind,
                               "severity": self.severity, "endpoints": list(self.endpoints)}
        for key in _KEYS[self.kind]:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class AlertsConfig:
    """``[alerts]``: the rules, and how long cleared alerts are kept."""

    rules: tuple[AlertRule, ...] = ()
    keep_cleared_days: float = 90.0


def parse_alerts(table: Any, name: str) -> AlertsConfig:
    """The ``[alerts]`` table of the config file ``name``; ConfigError names the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: alerts: must be a table ([alerts])")
    for key in table:
        if key not in ("rules", "keep_cleared_days"):
            raise ConfigError(f"{name}: unknown key alerts.{key}")
    keep = _number(name, "alerts.keep_cleared_days", table.get("keep_cleared_days", 90.0))
    if keep <= 0:
        raise ConfigError(f"{name}: alerts.keep_cleared_days: must be greater than 0")
    raw = table.get("rules", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: alerts.rules: must be an array of tables"
                          " ([[alerts.rules]])")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"{name}: alerts.rules: at most {MAX_RULES} rules")
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        rule = _rule(name, f"alerts.rules[{i}]", entry)
        if rule.name in seen:
            raise ConfigError(f"{name}: alerts.rules[{i}].name: {rule.name!r} is used by"
                              " another rule")
        seen.add(rule.name)
        rules.append(rule)
    return AlertsConfig(tuple(rules), keep)


def _rule(name: str, where: str, entry: Any) -> AlertRule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{name}: {where}: must be a table")
    rname = entry.get("name")
    if not isinstance(rname, str) or not _NAME.fullmatch(rname):
        raise ConfigError(f"{name}: {where}.name: required, 1-64 of A-Z a-z 0-9 _ . -"
                          f" (it is part of an MQTT topic; got {_show(rname)})")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{name}: {where}.kind: must be one of {', '.join(KINDS)}"
                          f" (got {_show(kind)})")
    own = _KEYS[kind]
    for key in entry:
        if key not in _COMMON and key not in own:
            raise ConfigError(f"{name}: {where}.{key}: not a key of a {kind!r} rule"
                              f" (its keys: {', '.join((*_COMMON, *own))})")
    severity = entry.get("severity", "warning")
    if severity not in SEVERITIES:
        raise ConfigError(f"{name}: {where}.severity: must be one of {', '.join(SEVERITIES)}"
                          f" (got {_show(severity)})")
    eps = entry.get("endpoints", [])
    if not isinstance(eps, list) or not all(isinstance(e, str) and e for e in eps):
        raise ConfigError(f"{name}: {where}.endpoints: must be a list of endpoint names or"
                          " patterns")
    values: dict[str, Any] = {}
    if "k" in own:
        k = _int(name, f"{where}.k", entry.get("k", own["k"]))
        n = _int(name, f"{where}.n", entry.get("n", own["n"]))
        clear_k = _int(name, f"{where}.clear_k", entry.get("clear_k", own["clear_k"]))
        if not 1 <= n <= MAX_N:
            raise ConfigError(f"{name}: {where}.n: must be 1..{MAX_N} (got {n})")
        if not 1 <= k <= n:
            raise ConfigError(f"{name}: {where}.k: must be 1..n ({n}) (got {k})")
        if not 0 <= clear_k < k:
            raise ConfigError(f"{name}: {where}.clear_k: must be 0..k-1 ({k - 1}): it clears"
                              f" below the raise level (hysteresis) (got {clear_k})")
        values.update(k=k, n=n, clear_k=clear_k)
    if kind == "label":
        normal = entry.get("normal", ["normal"])
        if isinstance(normal, str):
            normal = [normal]
        if (not isinstance(normal, list) or not normal
                or not all(isinstance(x, str) and x for x in normal)):
            raise ConfigError(f"{name}: {where}.normal: a label or a list of labels")
        values["normal"] = tuple(normal)
    elif kind == "anomaly":
        for_s = _number(name, f"{where}.for_s", entry.get("for_s", 30.0))
        clear_s = _number(name, f"{where}.clear_s", entry.get("clear_s", for_s))
        if for_s < 0 or clear_s < 0:
            raise ConfigError(f"{name}: {where}: for_s and clear_s must not be negative")
        values.update(for_s=for_s, clear_s=clear_s)
    elif kind == "silent":
        after = _number(name, f"{where}.after_s", entry.get("after_s", 600.0))
        if after <= 0:
            raise ConfigError(f"{name}: {where}.after_s: must be greater than 0")
        values["after_s"] = after
    elif kind == "range":
        feature = entry.get("feature")
        if isinstance(feature, bool) or not isinstance(feature, (str, int)) or (
                isinstance(feature, int) and not 0 <= feature <= 31) or feature == "":
            raise ConfigError(f"{name}: {where}.feature: required: a feature name (\"rms\"),"
                              " its index 0..31 in object 33001, or a resource path"
                              f" (\"/3313/0/5702\") (got {_show(feature)})")
        if isinstance(feature, str) and feature.startswith("/"):
            parts = feature.strip("/").split("/")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise ConfigError(f"{name}: {where}.feature: a resource path is"
                                  f" /object/instance/resource (got {_show(feature)})")
        lo = entry.get("lo")
        hi = entry.get("hi")
        lo = None if lo is None else _number(name, f"{where}.lo", lo)
        hi = None if hi is None else _number(name, f"{where}.hi", hi)
        if lo is None and hi is None:
            raise ConfigError(f"{name}: {where}: give lo, hi or both")
        if lo is not None and hi is not None and not lo < hi:
            raise ConfigError(f"{name}: {where}: lo ({lo}) must be below hi ({hi})")
        values.update(feature=feature, lo=lo, hi=hi)
    return AlertRule(rname, kind, severity, tuple(eps), **values)


def _int(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: {key}: must be an integer (got {_show(value)})")
    return value


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise ConfigError(f"{name}: {key}: must be a finite number (got {_show(value)})")
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def alerts_toml(cfg: AlertsConfig) -> list[str]:
    """``[alerts]`` as TOML lines that ``parse_alerts`` reads back (``effective_toml``)."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)

    out = ["[alerts]", f"keep_cleared_days = {value(cfg.keep_cleared_days)}"]
    for rule in cfg.rules:
        out += ["", "[[alerts.rules]]"]
        out += [f"{k} = {value(v)}" for k, v in rule.to_json().items() if v is not None]
    return out
