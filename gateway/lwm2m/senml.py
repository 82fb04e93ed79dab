"""SenML packs (RFC 8428) decoded into LwM2M readings: SenML-CBOR (112) and SenML-JSON (110).

A pure function over bytes: no I/O, no state. Base fields (bn, bt, bu, bv, bs) apply to
the record they appear in and every following record until replaced. Each record must
carry exactly one value field (v, vs, vb, vd), and its resolved name (bn + n) must be an
LwM2M resource path ``/O/I/R`` or ``/O/I/R/RI`` (ids 0..65534, no leading zeros).
Anything else raises ``SenMLError`` (CoAP 4.00), whatever the input bytes were.

``Record.time`` is the resolved SenML time (bt + t) exactly as sent, or None when the
record has neither; per RFC 8428 §4.5.3 values below 2**28 are relative to the time of
reception, which the gateway stores alongside.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import cbor2

from ..errors import BadRequest

__all__ = [
    "CF_SENML_CBOR",
    "CF_SENML_JSON",
    "DECODERS",
    "Record",
    "SenMLError",
    "Value",
    "ValueKind",
    "decode",
    "decode_cbor",
    "decode_json",
]

CF_SENML_JSON = 110  # RFC 8428 §12.3
CF_SENML_CBOR = 112

Value = int | float | str | bool | bytes
ValueKind = Literal["v", "vs", "vb", "vd"]

_NUM = "number"
_STR = "string"
_BOOL = "boolean"
_BYTES = "bytes"
_INT = "integer"

# RFC 8428 §6 Table 6 (CBOR labels) and §4.1 (JSON names), with the type each must have.
_LABELS: tuple[tuple[str, int, str], ...] = (
    ("bver", -1, _INT),
    ("bn", -2, _STR),
    ("bt", -3, _NUM),
    ("bu", -4, _STR),
    ("bv", -5, _NUM),
    ("bs", -6, _NUM),
    ("n", 0, _STR),
    ("u", 1, _STR),
    ("v", 2, _NUM),
    ("vs", 3, _STR),
    ("vb", 4, _BOOL),
    ("s", 5, _NUM),
    ("t", 6, _NUM),
    ("ut", 7, _NUM),
    ("vd", 8, _BYTES),
)
_BY_CBOR = {label: (name, kind) for name, label, kind in _LABELS}
_BY_JSON = {name: (name, kind) for name, _label, kind in _LABELS}
_VALUE_FIELDS: tuple[ValueKind, ...] = ("v", "vs", "vb", "vd")
_MAX_BVER = 10  # the version RFC 8428 defines; a newer pack must not be processed
_INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores as INTEGER
_LWM2M_PATH = re.compile(r"/(?:0|[1-9][0-9]{0,4})(?:/(?:0|[1-9][0-9]{0,4})){2,3}")
_MAX_ID = 65534  # 65535 is reserved (LwM2M TS Core §7.1)


class SenMLError(BadRequest):
    """The payload is not a SenML pack the gateway accepts (CoAP 4.00)."""


class Record(NamedTuple):
    """One resolved SenML record: an LwM2M path, a typed value and an optional time.

    Immutable; a NamedTuple because a gateway builds tens of thousands per second (it
    constructs in a third of a frozen dataclass's time)."""

    path: str
    kind: ValueKind
    value: Value
    time: float | None = None
    unit: str | None = None


def decode_cbor(data: bytes, *, max_records: int = 1000) -> list[Record]:
    """Decode a SenML-CBOR pack (content format 112)."""
    fp = io.BytesIO(data)
    try:
        pack = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 raises several types on hostile input
        raise SenMLError(f"not valid CBOR: {_short(e)}") from e
    if fp.tell() != len(data):
        raise SenMLError(f"{len(data) - fp.tell()} bytes after the CBOR pack")
    out = _resolve_plain_cbor(pack, max_records)
    if out is None:  # something the fast path does not take: decide (and explain) slowly
        out = _resolve(pack, _BY_CBOR, max_records, _cbor_bytes)
    return out


def decode_json(data: bytes, *, max_records: int = 1000) -> list[Record]:
    """Decode a SenML-JSON pack (content format 110)."""
    try:
        text = data.decode("utf-8")
        pack = json.loads(text, parse_constant=_reject_constant,
                          object_pairs_hook=_unique_keys)
    except SenMLError:
        raise
    except Exception as e:  # UnicodeDecodeError, JSONDecodeError, RecursionError
        raise SenMLError(f"not valid JSON: {_short(e)}") from e
    return _resolve(pack, _BY_JSON, max_records, _json_bytes)


DECODERS: dict[int, Callable[..., list[Record]]] = {
    CF_SENML_CBOR: decode_cbor,
    CF_SENML_JSON: decode_json,
}


def decode(data: bytes, content_format: int, *, max_records: int = 1000) -> list[Record]:
    """Decode ``data`` by content format; the caller has checked it is in ``DECODERS``."""
    return DECODERS[content_format](data, max_records=max_records)


def _resolve(
    pack: Any,
    labels: dict[Any, tuple[str, str]],
    max_records: int,
    as_bytes: Callable[[Any], bytes | None],
) -> list[Record]:
    if not isinstance(pack, list):
        raise SenMLError("a SenML pack must be an array")
    if not pack:
        raise SenMLError("empty SenML pack")
    if len(pack) > max_records:
        raise SenMLError(f"pack has {len(pack)} records, more than the limit {max_records}")
    bn, bu = "", None
    bt: int | float | None = None
    bv: int | float | None = None
    out: list[Record] = []
    for i, raw in enumerate(pack):
        if not isinstance(raw, dict):
            raise SenMLError(f"record {i} is not a map")
        rec: dict[str, Any] = {}
        for label, value in raw.items():
            if isinstance(label, bool) or not isinstance(label, (int, str)) \
                    or label not in labels:
                raise SenMLError(f"record {i}: unknown label {_short(label)}")
            name, kind = labels[label]
            rec[name] = _typed(i, name, kind, value, as_bytes)
        if rec.get("bver", _MAX_BVER) > _MAX_BVER or rec.get("bver", 1) < 1:
            raise SenMLError(f"record {i}: unsupported bver {rec['bver']}")
        if "bn" in rec:
            bn = rec["bn"]
        if "bt" in rec:
            bt = rec["bt"]
        if "bu" in rec:
            bu = rec["bu"]
        if "bv" in rec:
            bv = rec["bv"]
        present = [f for f in _VALUE_FIELDS if f in rec]
        if not present:
            raise SenMLError(f"record {i}: no value (v, vs, vb or vd)")
        if len(present) > 1:
            raise SenMLError(f"record {i}: more than one value field ({', '.join(present)})")
        field = present[0]
        value = rec[field]
        if field == "v" and bv is not None:
            value = _number(i, "v", value + bv)
        path = bn + rec.get("n", "")
        if not _is_lwm2m_path(path):
            raise SenMLError(f"record {i}: name {_short(path)} is not an LwM2M resource path")
        time: float | None = None
        if "t" in rec or bt is not None:
            time = float(_number(i, "t", (bt or 0) + rec.get("t", 0)))
        out.append(Record(path, field, value, time, rec.get("u", bu)))
    return out


# The fast path for the common SenML-CBOR pack (what nodes send): labels bn, bt, n, u, t
# and one of v / vs / vb / vd per record, with the right types. It returns exactly what
# _resolve would, or None for anything else (base value or unit fields, bver, s, ut, any
# type or range problem), which _resolve then decodes or refuses with its message.
# Resolved paths that passed the LwM2M path check are remembered (bounded).
_N, _U, _V, _VS, _VB, _T, _VD = 0, 1, 2, 3, 4, 6, 8
_BN, _BT = -2, -3
_VALUE_KIND: dict[int, ValueKind] = {_V: "v", _VS: "vs", _VB: "vb", _VD: "vd"}
_KNOWN_PATHS: set[str] = set()
_KNOWN_PATHS_MAX = 4096


def _resolve_plain_cbor(pack: Any, max_records: int) -> list[Record] | None:
    if type(pack) is not list or not pack or len(pack) > max_records:
        return None
    lo, hi = _INT64
    known = _KNOWN_PATHS
    bn = ""
    bt: int | float | None = None
    out: list[Record] = []
    for raw in pack:
        if type(raw) is not dict:
            return None
        n = ""
        u = None
        t: int | float | None = None
        kind: ValueKind | None = None
        value: Any = None
        for label, v in raw.items():
            if type(label) is not int:  # True == 1 and 2.0 == 2 must not pass as labels
                return None
            tv = type(v)
            if label in _VALUE_KIND:
                if kind is not None:
                    return None
                kind = _VALUE_KIND[label]
                if label == _V:
                    if tv is int:
                        if not lo <= v <= hi:
                            return None
                    elif tv is not float or v - v != 0:  # inf - inf and nan are nan
                        return None
                elif tv is not (str if label == _VS else bool if label == _VB else bytes):
                    return None
                value = v
            elif label == _N and tv is str:
                n = v
            elif label == _BN and tv is str:
                bn = v
            elif (label == _T or label == _BT) and (tv is int and lo <= v <= hi
                                                    or tv is float and v - v == 0):
                if label == _T:
                    t = v
                else:
                    bt = v
            elif label == _U and tv is str:
                u = v
            else:
                return None
        if kind is None:
            return None
        path = bn + n
        if path not in known:
            if not _is_lwm2m_path(path):
                return None
            if len(known) >= _KNOWN_PATHS_MAX:
                known.clear()
            known.add(path)
        time: float | None = None
        if t is not None or bt is not None:
            tt = (bt or 0) + (t or 0)
            if type(tt) is int and not lo <= tt <= hi:
                return None
            if type(tt) is float and tt - tt != 0:
                return None
            time = float(tt)
        out.append(Record(path, kind, value, time, u))
    return out


def _typed(i: int, name: str, kind: str, value: Any,
           as_bytes: Callable[[Any], bytes | None]) -> Any:
    if kind in (_NUM, _INT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SenMLError(f"record {i}: {name} must be a {kind}")
        if kind == _INT and not isinstance(value, int):
            raise SenMLError(f"record {i}: {name} must be an integer")
        return _number(i, name, value)
    if kind == _STR:
        if not isinstance(value, str):
            raise SenMLError(f"record {i}: {name} must be a text string")
        return value
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise SenMLError(f"record {i}: {name} must be a boolean")
        return value
    data = as_bytes(value)
    if data is None:
        raise SenMLError(f"record {i}: {name} must be a byte string")
    return data


def _number(i: int, name: str, value: float) -> float:
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise SenMLError(f"record {i}: {name} is outside the 64-bit integer range")
    elif not math.isfinite(value):
        raise SenMLError(f"record {i}: {name} is not a finite number")
    return value


def _is_lwm2m_path(path: str) -> bool:
    if not _LWM2M_PATH.fullmatch(path):
        return False
    return all(int(part) <= _MAX_ID for part in path[1:].split("/"))


def _cbor_bytes(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _json_bytes(value: Any) -> bytes | None:
    """RFC 8428 §5: vd in JSON is base64url, padding optional."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", value):
        return None
    text = value.rstrip("=")
    if len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _reject_constant(name: str) -> Any:
    raise SenMLError(f"not valid JSON: {name} is not a number SenML allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SenMLError(f"duplicate label {_short(key)}")
        out[key] = value
    return out


def _short(thing: object) -> str:
    text = repr(thing) if not isinstance(thing, BaseException) else str(thing)
    return text if len(text) <= 60 else text[:57] + "..."
