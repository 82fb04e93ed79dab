"""One entry point for every LwM2M payload format: ``decode`` what a client sends,
``encode`` what the server writes.

=======  =============  ==========================================  ===================
format   content fmt    what it carries                             module
=======  =============  ==========================================  ===================
text     0              one resource (instance) value, as text      here
opaque   42             one resource (instance) value, raw bytes    here
SenML    110 JSON,      records with absolute names                 ``senml`` (decode),
         112 CBOR                                                   here (encode)
TLV      11542          object / instance / resource trees          ``tlv``
LwM2M    11544          nested maps keyed by path ids               ``lwm2mcbor``
 CBOR
=======  =============  ==========================================  ===================

``NAMES`` gives each format the name an operator types (``aiot lwm2m read --format
senml-json``, REST ``?format=senml-json``); ``format_named(text)`` reads a name or a
number.

Every decoder returns ``Record`` objects (``senml.Record``) with full resource paths,
``/O/I/R`` or ``/O/I/R/RI``, all at or below the request ``path``. Formats that carry
untyped values (text, TLV) need the resource's DDF type (``objects``, e.g.
``ddf.load_shipped()``) to give them a type; without one a TLV value stays bytes and a
text value stays a string.

Plain text per TS Core 1.1 Appendix C: integers and time as decimal ASCII, floats as
decimal numbers, booleans ``0``/``1``, object links ``O:I``, opaque as base64
(RFC 4648 §4, padded). On the write side SenML object links use ``vlo`` (TS Core 1.1
§7.4.4); SenML names are written in full, without a base name.

An unknown content format raises ``UnknownContentFormat`` (CoAP 4.15). Everything
wrong with a payload or its path raises a ``BadRequest`` (4.00): ``CodecError`` from
here, ``SenMLError``, ``TLVError``, ``LwM2MCBORError`` or ``PathError`` from the format
modules. No other exception escapes, whatever the bytes were.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import cbor2

from ..errors import BadRequest, UnsupportedContentFormat
from . import lwm2mcbor, senml, tlv
from .ddf import ObjectDef, ResourceType, resource_def
from .paths import Path, PathError, format_path, is_under, parse_objlnk, parse_path
from .senml import Record, Value, ValueKind

__all__ = [
    "CF_LWM2M_CBOR",
    "CF_OPAQUE",
    "CF_SENML_CBOR",
    "CF_SENML_JSON",
    "CF_TEXT",
    "CF_TLV",
    "DECODABLE",
    "ENCODABLE",
    "NAMES",
    "CodecError",
    "UnknownContentFormat",
    "decode",
    "encode",
    "format_named",
]

CF_TEXT = 0  # text/plain;charset=utf-8 (RFC 7252 §12.3)
CF_OPAQUE = 42  # application/octet-stream
CF_SENML_JSON = senml.CF_SENML_JSON  # 110
CF_SENML_CBOR = senml.CF_SENML_CBOR  # 112
CF_TLV = tlv.CF_TLV  # 11542
CF_LWM2M_CBOR = lwm2mcbor.CF_LWM2M_CBOR  # 11544

# the formats by the names operators use (the table above)
NAMES: dict[str, int] = {"text": CF_TEXT, "opaque": CF_OPAQUE, "senml-json": CF_SENML_JSON,
                         "senml-cbor": CF_SENML_CBOR, "tlv": CF_TLV,
                         "lwm2m-cbor": CF_LWM2M_CBOR}

Objects = Mapping[int, ObjectDef] | None
RecordsOrValue = Record | Sequence[Record] | Value

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]{1,400}(?:\.[0-9]{0,400})?|\.[0-9]{1,400})"
                         r"(?:[eE][+-]?[0-9]{1,4})?")
_INT64 = (-(2**63), 2**63 - 1)
_SENML_LABELS = {"v": 2, "vs": 3, "vb": 4, "vd": 8}  # RFC 8428 Table 6
_SENML_N, _SENML_U, _SENML_T = 0, 1, 6
_VLO = "vlo"  # TS Core 1.1 §7.4.4: object link value, text label in JSON and CBOR


class CodecError(BadRequest):
    """A text or opaque payload, or a record set, that does not fit its path (CoAP 4.00)."""


class UnknownContentFormat(UnsupportedContentFormat):
    """A content format the gateway does not read or write (CoAP 4.15)."""


def format_named(text: str) -> int:
    """A format by its name in ``NAMES`` or its number (``senml-json`` or ``110``);
    ``UnknownContentFormat`` for one the gateway cannot decode."""
    cf = NAMES.get(text.strip().lower())
    if cf is None and text.strip().isdigit() and len(text.strip()) <= 5:
        cf = int(text)
    if cf is None or cf not in DECODABLE:
        raise UnknownContentFormat(
            f"unknown format {text[:20]!r} (one of {', '.join(NAMES)} or its number)")
    return cf


def decode(content_format: int, payload: bytes, path: str | Sequence[int],
           objects: Objects = None, *, max_records: int = 1000) -> list[Record]:
    """Decode ``payload`` (answering ``path``) by its CoAP content format."""
    decoder = _DECODERS.get(content_format) if type(content_format) is int else None
    if decoder is None:
        raise UnknownContentFormat(f"content format {_short(content_format)} is not one "
                                   f"the gateway reads ({_list(_DECODERS)})")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, not {type(payload).__name__}")
    return decoder(bytes(payload), parse_path(path), objects, max_records)


def encode(content_format: int, records_or_value: RecordsOrValue, path: str | Sequence[int],
           objects: Objects = None) -> bytes:
    """Encode records (or one value for ``path``) in the content format a server writes."""
    encoder = _ENCODERS.get(content_format) if type(content_format) is int else None
    if encoder is None:
        raise UnknownContentFormat(f"content format {_short(content_format)} is not one "
                                   f"the gateway writes ({_list(_ENCODERS)})")
    base = parse_path(path)
    return encoder(_as_records(records_or_value, base), base, objects)


# -- text and opaque ---------------------------------------------------------------------


def _decode_text(data: bytes, base: Path, objects: Objects, _limit: int) -> list[Record]:
    where = _single_value_path(base, "plain text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"{where}: plain text is not UTF-8") from e
    rdef = resource_def(objects, base)
    kind, value = _from_text(text, rdef.type if rdef else None, where)
    return [Record(where, kind, value)]


def _from_text(text: str, rtype: ResourceType | None, where: str) -> tuple[ValueKind, Value]:
    if rtype is None or rtype in ("string", "corelnk"):
        return "vs", text
    if rtype in ("integer", "time", "unsigned"):
        if not _INT_TEXT.fullmatch(text):
            raise CodecError(f"{where}: {_short(text)} is not an integer")
        number = int(text)
        if not _INT64[0] <= number <= _INT64[1]:
            raise CodecError(f"{where}: {number} is outside the 64-bit integer range")
        if rtype == "unsigned" and number < 0:
            raise CodecError(f"{where}: {number} is negative, the resource is unsigned")
        return "v", number
    if rtype == "float":
        if not _FLOAT_TEXT.fullmatch(text):
            raise CodecError(f"{where}: {_short(text)} is not a decimal number")
        real = float(text)
        if not math.isfinite(real):
            raise CodecError(f"{where}: {_short(text)} is not a finite number")
        return "v", real
    if rtype == "boolean":
        if text not in ("0", "1"):
            raise CodecError(f"{where}: a boolean is 0 or 1 in plain text, not "
                             f"{_short(text)}")
        return "vb", text == "1"
    if rtype == "opaque":
        try:
            return "vd", base64.b64decode(text.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError) as e:
            raise CodecError(f"{where}: opaque in plain text is base64, "
                             f"{_short(text)} is not") from e
    if rtype == "objlnk":
        try:
            parse_objlnk(text)
        except PathError as e:
            raise CodecError(f"{where}: {e.diagnostic}") from e
        return "vs", text
    raise CodecError(f"{where}: an executable resource has no value")


def _encode_text(records: list[Record], base: Path, objects: Objects) -> bytes:
    rec = _only(records, base, "plain text")
    rdef = resource_def(objects, base)
    rtype = rdef.type if rdef else _inferred(rec.value, rec.path)
    value = rec.value
    if rtype in ("string", "corelnk", "objlnk") and isinstance(value, str):
        if rtype == "objlnk":
            _from_text(value, "objlnk", rec.path)
        text = value
    elif rtype in ("integer", "time", "unsigned") and _is_int(value) \
            and not (rtype == "unsigned" and int(value) < 0):
        text = str(int(value))
    elif rtype == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            text = repr(_finite(float(value), rec.path))
        except OverflowError as e:
            raise CodecError(f"{rec.path}: {_short(value)} is too large for a float") from e
    elif rtype == "boolean" and isinstance(value, bool):
        text = "1" if value else "0"
    elif rtype == "opaque" and isinstance(value, (bytes, bytearray, memoryview)):
        text = base64.b64encode(bytes(value)).decode("ascii")
    else:
        raise CodecError(f"{rec.path}: a {rtype} resource cannot take "
                         f"{type(value).__name__} {_short(value)}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CodecError(f"{rec.path}: text is not encodable as UTF-8") from e


def _decode_opaque(data: bytes, base: Path, objects: Objects, _limit: int) -> list[Record]:
    where = _single_value_path(base, "opaque")
    rdef = resource_def(objects, base)
    if rdef is not None and rdef.type != "opaque":
        raise CodecError(f"{where}: resource {rdef.name!r} is {rdef.type}, opaque carries "
                         "only opaque resources")
    return [Record(where, "vd", data)]


def _encode_opaque(records: list[Record], base: Path, objects: Objects) -> bytes:
    rec = _only(records, base, "opaque")
    rdef = resource_def(objects, base)
    if rdef is not None and rdef.type != "opaque":
        raise CodecError(f"{rec.path}: resource {rdef.name!r} is {rdef.type}, opaque "
                         "carries only opaque resources")
    if not isinstance(rec.value, (bytes, bytearray, memoryview)):
        raise CodecError(f"{rec.path}: opaque carries bytes, not "
                         f"{type(rec.value).__name__}")
    return bytes(rec.value)


# -- SenML, TLV, LwM2M-CBOR ----------------------------------------------------------------


def _decode_senml(decoder: Callable[..., list[Record]]) -> Callable[..., list[Record]]:
    def decode_senml(data: bytes, base: Path, _objects: Objects,
                     limit: int) -> list[Record]:
        records = decoder(data, max_records=limit)
        if not base:
            return records
        # SenML names come out as canonical /O/I/R[/RI] text (senml checks them), so a
        # prefix test says what is_under(parse_path(...)) would, in a tenth of the time
        top = format_path(base)
        below = top + "/"
        for rec in records:
            if rec.path != top and not rec.path.startswith(below):
                raise CodecError(f"{rec.path}: outside the request path {top}")
        return records
    return decode_senml


def _senml_pack(records: list[Record], base: Path, objects: Objects,
                json_names: bool) -> list[dict[Any, Any]]:
    pack: list[dict[Any, Any]] = []
    for rec in records:
        rpath = _resource_path(rec, base)
        rdef = resource_def(objects, rpath)
        label: Any
        value: Any
        if rdef is not None and rdef.type == "objlnk":
            if not isinstance(rec.value, str):
                raise CodecError(f"{rec.path}: an objlnk resource takes \"O:I\" text")
            _from_text(rec.value, "objlnk", rec.path)
            label, value = _VLO, rec.value
        else:
            kind, value = _checked(rec)
            label = kind if json_names else _SENML_LABELS[kind]
            if kind == "vd" and json_names:
                value = base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")
        entry: dict[Any, Any] = {("n" if json_names else _SENML_N): rec.path, label: value}
        if rec.unit is not None:
            entry["u" if json_names else _SENML_U] = rec.unit
        if rec.time is not None:
            entry["t" if json_names else _SENML_T] = _finite(rec.time, rec.path)
        pack.append(entry)
    return pack


def _encode_senml_cbor(records: list[Record], base: Path, objects: Objects) -> bytes:
    pack = _senml_pack(records, base, objects, json_names=False)
    try:
        return cbor2.dumps(pack)
    except (UnicodeEncodeError, cbor2.CBOREncodeError) as e:  # lone surrogates in text
        raise CodecError(f"not encodable as CBOR: {_short(e)}") from e


def _encode_senml_json(records: list[Record], base: Path, objects: Objects) -> bytes:
    pack = _senml_pack(records, base, objects, json_names=True)
    try:
        return json.dumps(pack, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates in text
        raise CodecError(f"not encodable as UTF-8 JSON: {_short(e)}") from e


def _decode_tlv(data: bytes, base: Path, objects: Objects, limit: int) -> list[Record]:
    return tlv.decode(data, base, objects, max_records=limit)


def _encode_tlv(records: list[Record], base: Path, objects: Objects) -> bytes:
    return tlv.encode(records, base, objects)


def _decode_lwm2m_cbor(data: bytes, base: Path, objects: Objects,
                       limit: int) -> list[Record]:
    return lwm2mcbor.decode(data, base, objects, max_records=limit)


def _encode_lwm2m_cbor(records: list[Record], base: Path, objects: Objects) -> bytes:
    return lwm2mcbor.encode(records, base, objects)


_DECODERS: dict[int, Callable[[bytes, Path, Objects, int], list[Record]]] = {
    CF_TEXT: _decode_text,
    CF_OPAQUE: _decode_opaque,
    CF_SENML_JSON: _decode_senml(senml.decode_json),
    CF_SENML_CBOR: _decode_senml(senml.decode_cbor),
    CF_TLV: _decode_tlv,
    CF_LWM2M_CBOR: _decode_lwm2m_cbor,
}
_ENCODERS: dict[int, Callable[[list[Record], Path, Objects], bytes]] = {
    CF_TEXT: _encode_text,
    CF_OPAQUE: _encode_opaque,
    CF_SENML_JSON: _encode_senml_json,
    CF_SENML_CBOR: _encode_senml_cbor,
    CF_TLV: _encode_tlv,
    CF_LWM2M_CBOR: _encode_lwm2m_cbor,
}
DECODABLE = frozenset(_DECODERS)
ENCODABLE = frozenset(_ENCODERS)


# -- helpers -------------------------------------------------------------------------------


def _as_records(records_or_value: RecordsOrValue, base: Path) -> list[Record]:
    if isinstance(records_or_value, Record):
        return [records_or_value]
    if isinstance(records_or_value, (list, tuple)):
        if not all(isinstance(r, Record) for r in records_or_value):
            raise CodecError("a record list holds only Record objects")
        return list(records_or_value)
    value = cast(Value, records_or_value)
    where = _single_value_path(base, "a single value")
    return [Record(where, _kind(value, where), value)]


def _kind(value: object, where: str) -> ValueKind:
    if isinstance(value, bool):
        return "vb"
    if isinstance(value, (int, float)):
        return "v"
    if isinstance(value, str):
        return "vs"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "vd"
    raise CodecError(f"{where}: {type(value).__name__} is not an LwM2M value")


def _checked(rec: Record) -> tuple[ValueKind, Value]:
    """The record's kind and value, refusing what SenML cannot carry."""
    value = rec.value
    kind = rec.kind
    ok = {
        "v": _is_number(value),
        "vs": isinstance(value, str),
        "vb": isinstance(value, bool),
        "vd": isinstance(value, (bytes, bytearray, memoryview)),
    }.get(kind, False)
    if not ok:
        raise CodecError(f"{rec.path}: kind {kind!r} cannot hold {type(value).__name__} "
                         f"{_short(value)}")
    if kind == "v":
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise CodecError(f"{rec.path}: {value} is outside the 64-bit integer range")
        if isinstance(value, float):
            _finite(value, rec.path)
    if kind == "vd":
        value = bytes(value)  # type: ignore[arg-type]  # checked above
    return kind, value


def _resource_path(rec: Record, base: Path) -> Path:
    try:
        rpath = parse_path(rec.path)
    except PathError as e:
        raise CodecError(f"record path: {e.diagnostic}") from e
    if len(rpath) < 3 or not is_under(rpath, base):
        raise CodecError(f"{rec.path} is not a resource at or below {format_path(base)}")
    return rpath


def _only(records: list[Record], base: Path, what: str) -> Record:
    where = _single_value_path(base, what)
    if len(records) != 1 or records[0].path != where:
        raise CodecError(f"{what} carries exactly one value, for {where}")
    return records[0]


def _single_value_path(base: Path, what: str) -> str:
    if len(base) < 3:
        raise CodecError(f"{format_path(base)}: {what} needs a resource or resource "
                         "instance path")
    return format_path(base)


def _inferred(value: Value, where: str) -> ResourceType:
    kind = _kind(value, where)
    if kind == "v":
        return "integer" if isinstance(value, int) else "float"
    return {"vs": "string", "vb": "boolean", "vd": "opaque"}[kind]  # type: ignore[return-value]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and abs(value) < 2**63
    return isinstance(value, int) and _INT64[0] <= value <= _INT64[1]


def _finite(value: float, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise CodecError(f"{where}: {_short(value)} is not a finite number")
    return value


def _list(table: Mapping[int, object]) -> str:
    return ", ".join(str(cf) for cf in sorted(table))


def _short(thing: object) -> str:
    text = repr(thing)
    return text if len(text) <= 60 else text[:57] + "..."
