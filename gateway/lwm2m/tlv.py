"""OMA-TLV (content format 11542, LwM2M TS Core 1.1 §7.4.3): decode to records, encode.

Every TLV is a type byte, an identifier, an optional length field and the value::

    type byte  bits 7-6  what it is: 00 object instance, 01 resource instance,
                         10 multiple resource, 11 resource with value
               bit 5     identifier length: 0 -> 8 bits, 1 -> 16 bits
               bits 4-3  length field: 00 none (bits 2-0 hold the value length),
                         01/10/11 -> an 8/16/24-bit length follows the identifier
               bits 2-0  value length when bits 4-3 are 00 (ignored otherwise)
    identifier, length   big-endian unsigned integers

An object instance holds resource TLVs (10 and 11), a multiple resource holds resource
instance TLVs (01); the others hold a value. Which TLVs may stand at the top depends on
the path the payload answers:

=============  =============================================================
request path   payload
=============  =============================================================
``/O``         object instances; resource TLVs alone mean instance 0 (Leshan
               accepts that from single-instance objects, so does this)
``/O/I``       resource TLVs, or one object instance TLV with id I
``/O/I/R``     one resource TLV with id R (11 or 10), or resource instances
``/O/I/R/RI``  one resource instance TLV with id RI
=============  =============================================================

Values are untyped bytes; the resource's DDF type gives them meaning (TS Core
Appendix C): integer and time are 1, 2, 4 or 8 bytes of signed two's complement,
unsigned integer the same lengths unsigned, float 4 or 8 bytes IEEE 754, boolean one
byte 0 or 1, objlnk two 16-bit ids (object, instance), string and corelnk UTF-8, opaque
raw. Without a definition a value stays opaque bytes (``kind`` ``"vd"``). Decoded values
land in the same ``Record`` model as SenML: ``v`` for numbers (time included, in
seconds), ``vs`` for strings and object links (``"O:I"``), ``vb``, ``vd``.

Like ``senml``, this is a pure function over bytes: every length is checked against the
bytes that are there, ids are 0..65534, the same path twice, values outside 64-bit
integers, non-finite floats and structures the table above does not allow all raise
``TLVError`` (CoAP 4.00), and nothing else is raised whatever the input bytes were.
The encoder writes ids in ascending order, integers in the shortest of 1/2/4/8 bytes,
floats in 4 bytes when that is exact and 8 otherwise, and the shortest length field.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BadRequest
from .ddf import ObjectDef, ResourceDef, ResourceType, resource_def
from .paths import MAX_ID, Path, PathError, format_path, parse_objlnk, parse_path
from .senml import Record, Value, ValueKind

__all__ = [
    "CF_TLV",
    "MULTIPLE_RESOURCE",
    "OBJECT_INSTANCE",
    "RESOURCE_INSTANCE",
    "RESOURCE_VALUE",
    "TLV",
    "TLVError",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
    "parse",
    "serialize",
]

CF_TLV = 11542  # application/vnd.oma.lwm2m+tlv

# Type byte bits 7-6 (TS Core 1.1 §7.4.3 Table 7.4.3-1), with what each may contain.
OBJECT_INSTANCE = 0b00
RESOURCE_INSTANCE = 0b01
MULTIPLE_RESOURCE = 0b10
RESOURCE_VALUE = 0b11
_NAMES = {
    OBJECT_INSTANCE: "object instance",
    RESOURCE_INSTANCE: "resource instance",
    MULTIPLE_RESOURCE: "multiple resource",
    RESOURCE_VALUE: "resource",
}
_CHILDREN = {
    OBJECT_INSTANCE: (RESOURCE_VALUE, MULTIPLE_RESOURCE),
    MULTIPLE_RESOURCE: (RESOURCE_INSTANCE,),
}
_ID16 = 0x20  # bit 5
_LEN_SHIFT = 3  # bits 4-3: bytes in the length field
_MAX_VALUE = (1 << 24) - 1  # the 24-bit length field bounds a value at 16 MiB - 1
_INT64 = (-(2**63), 2**63 - 1)
_INT_SIZES = (1, 2, 4, 8)


class TLVError(BadRequest):
    """The payload is not an OMA-TLV document for this path (CoAP 4.00)."""


@dataclass(frozen=True, slots=True)
class TLV:
    """One parsed TLV: ``value`` is bytes for leaves, child TLVs for containers."""

    type: int
    id: int
    value: bytes | tuple[TLV, ...]


def parse(data: bytes) -> list[TLV]:
    """Split ``data`` into TLVs, checking structure and lengths but not meaning."""
    view = memoryview(bytes(data))
    return _parse(view, 0, len(view), None)


def serialize(tlvs: Sequence[TLV]) -> bytes:
    """The bytes of ``tlvs``: shortest identifier and length fields."""
    out = bytearray()
    for t in tlvs:
        body = serialize(t.value) if isinstance(t.value, tuple) else bytes(t.value)
        out += _header(t.type, t.id, len(body)) + body
    return bytes(out)


def decode(data: bytes, path: str | Sequence[int],
           objects: Mapping[int, ObjectDef] | None = None, *,
           max_records: int = 1000) -> list[Record]:
    """Decode the TLV payload that answers ``path`` into resource records."""
    base = _base(path)
    tlvs = parse(data)
    out = _Records(objects, max_records)
    level = len(base)
    types = {t.type for t in tlvs}
    if level == 1:
        if types <= {OBJECT_INSTANCE}:
            for t in tlvs:
                out.instance(base + (t.id,), t)
        elif types <= {RESOURCE_VALUE, MULTIPLE_RESOURCE}:
            out.resources(base + (0,), tlvs)
        else:
            raise TLVError(f"{format_path(base)}: expected object instance TLVs, "
                           "or resource TLVs of instance 0")
    elif level == 2:
        if types == {OBJECT_INSTANCE} and len(tlvs) == 1:
            if tlvs[0].id != base[1]:
                raise TLVError(f"{format_path(base)}: payload is object instance "
                               f"{tlvs[0].id}")
            out.instance(base, tlvs[0])
        elif types <= {RESOURCE_VALUE, MULTIPLE_RESOURCE}:
            out.resources(base, tlvs)
        else:
            raise TLVError(f"{format_path(base)}: expected resource TLVs or one object "
                           "instance TLV")
    elif level == 3:
        if len(tlvs) == 1 and tlvs[0].type in (RESOURCE_VALUE, MULTIPLE_RESOURCE):
            if tlvs[0].id != base[2]:
                raise TLVError(f"{format_path(base)}: payload is resource {tlvs[0].id}")
            out.resources(base[:2], tlvs)
        elif tlvs and types == {RESOURCE_INSTANCE}:
            out.resources(base[:2], [TLV(MULTIPLE_RESOURCE, base[2], tuple(tlvs))])
        else:
            raise TLVError(f"{format_path(base)}: expected one resource TLV or resource "
                           "instance TLVs")
    else:
        if len(tlvs) != 1 or tlvs[0].type != RESOURCE_INSTANCE or tlvs[0].id != base[3]:
            raise TLVError(f"{format_path(base)}: expected one resource instance TLV with "
                           f"id {base[3]}")
        out.leaf(base, tlvs[0], single=False)
    return out.records


def encode(records: Sequence[Record], path: str | Sequence[int],
           objects: Mapping[int, ObjectDef] | None = None) -> bytes:
    """Encode resource records below ``path`` as the TLV payload for that path."""
    base = _base(path)
    # instance id -> resource id -> bytes (single) or {resource instance id: bytes}
    tree: dict[int, dict[int, bytes | dict[int, bytes]]] = {}
    for rec in records:
        try:
            rpath = parse_path(rec.path)
        except PathError as e:
            raise TLVError(f"record path: {e.diagnostic}") from e
        if len(rpath) < 3 or rpath[: len(base)] != base:
            raise TLVError(f"{rec.path} is not a resource below {format_path(base)}")
        rdef = resource_def(objects, rpath)
        if rdef is not None and rdef.multiple != (len(rpath) == 4):
            raise TLVError(f"{rec.path}: resource {rdef.name!r} is "
                           f"{'multiple' if rdef.multiple else 'single'}-instance")
        value = encode_value(rec.value, rdef.type if rdef else None, rec.path)
        resources = tree.setdefault(rpath[1], {})
        slot = resources.get(rpath[2])
        if len(rpath) == 3:
            if slot is not None:
                raise TLVError(f"{rec.path}: given twice, or also as resource instances")
            resources[rpath[2]] = value
        else:
            if slot is None:
                slot = resources[rpath[2]] = {}
            if not isinstance(slot, dict) or rpath[3] in slot:
                raise TLVError(f"{rec.path}: given twice, or also as a single value")
            slot[rpath[3]] = value
    return serialize(_tlvs(base, tree))


def decode_value(raw: bytes, rtype: ResourceType | None,
                 where: str = "value") -> tuple[ValueKind, Value]:
    """One TLV value as ``(kind, value)`` for a resource of DDF type ``rtype``."""
    raw = bytes(raw)
    if rtype is None or rtype in ("opaque", "none"):
        return "vd", raw
    if rtype in ("string", "corelnk"):
        try:
            return "vs", raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TLVError(f"{where}: not UTF-8 text") from e
    if rtype in ("integer", "time", "unsigned"):
        if len(raw) not in _INT_SIZES:
            raise TLVError(f"{where}: an integer is 1, 2, 4 or 8 bytes, not {len(raw)}")
        number = int.from_bytes(raw, "big", signed=rtype != "unsigned")
        if number > _INT64[1]:
            raise TLVError(f"{where}: {number} is outside the 64-bit integer range")
        return "v", number
    if rtype == "float":
        if len(raw) not in (4, 8):
            raise TLVError(f"{where}: a float is 4 or 8 bytes, not {len(raw)}")
        real = struct.unpack(">f" if len(raw) == 4 else ">d", raw)[0]
        if not math.isfinite(real):
            raise TLVError(f"{where}: {real} is not a finite number")
        return "v", real
    if rtype == "boolean":
        if raw not in (b"\x00", b"\x01"):
            raise TLVError(f"{where}: a boolean is one byte 0 or 1, not {raw[:8].hex()}")
        return "vb", raw == b"\x01"
    # objlnk
    if len(raw) != 4:
        raise TLVError(f"{where}: an object link is 4 bytes, not {len(raw)}")
    oid, iid = struct.unpack(">HH", raw)
    return "vs", f"{oid}:{iid}"


def encode_value(value: Value, rtype: ResourceType | None, where: str = "value") -> bytes:
    """The TLV value bytes of ``value`` for a resource of DDF type ``rtype``.

    Without a type the Python type decides: bool, int, float, str or bytes.
    """
    if rtype is None:
        rtype = _inferred(value, where)
    if rtype in ("string", "corelnk"):
        if not isinstance(value, str):
            raise _mismatch(where, rtype, value)
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates
            raise TLVError(f"{where}: text is not encodable as UTF-8") from e
    if rtype in ("integer", "time", "unsigned"):
        number = _integral(value, rtype, where)
        signed = rtype != "unsigned"
        for size in _INT_SIZES:
            try:
                return number.to_bytes(size, "big", signed=signed)
            except OverflowError:
                continue
        raise TLVError(f"{where}: {number} does not fit 64 bits")
    if rtype == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _mismatch(where, rtype, value)
        try:
            real = float(value)
        except OverflowError as e:
            raise TLVError(f"{where}: {value} is too large for a float") from e
        if not math.isfinite(real):
            raise TLVError(f"{where}: {real} is not a finite number")
        try:
            single = struct.pack(">f", real)
        except OverflowError:
            return struct.pack(">d", real)
        return single if struct.unpack(">f", single)[0] == real else struct.pack(">d", real)
    if rtype == "boolean":
        if not isinstance(value, bool):
            raise _mismatch(where, rtype, value)
        return b"\x01" if value else b"\x00"
    if rtype == "opaque":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _mismatch(where, rtype, value)
        return bytes(value)
    if rtype == "objlnk":
        if not isinstance(value, str):
            raise _mismatch(where, rtype, value)
        try:
            oid, iid = parse_objlnk(value)
        except PathError as e:
            raise TLVError(f"{where}: {e.diagnostic}") from e
        return struct.pack(">HH", oid, iid)
    raise TLVError(f"{where}: an executable resource has no value")


# -- internals ---------------------------------------------------------------------------


class _Records:
    """Collects records from validated TLVs: no path twice, at most ``limit`` records."""

    def __init__(self, objects: Mapping[int, ObjectDef] | None, limit: int) -> None:
        self.objects = objects
        self.limit = limit
        self.records: list[Record] = []
        self.seen: set[Path] = set()

    def instance(self, ipath: Path, t: TLV) -> None:
        self._claim(ipath, "object instance")
        self.resources(ipath, _children(t))

    def resources(self, ipath: Path, tlvs: Sequence[TLV]) -> None:
        for t in tlvs:
            rpath = ipath + (t.id,)
            rdef = resource_def(self.objects, rpath)
            if t.type == RESOURCE_VALUE:
                self.leaf(rpath, t, single=True)
                continue
            self._claim(rpath, "resource")
            if rdef is not None and not rdef.multiple:
                raise TLVError(f"{format_path(rpath)}: resource {rdef.name!r} is "
                               "single-instance, payload has resource instances")
            for child in _children(t):
                self.leaf(rpath + (child.id,), child, single=False)

    def leaf(self, path: Path, t: TLV, *, single: bool) -> None:
        where = format_path(path)
        rdef = resource_def(self.objects, path)
        if rdef is not None and rdef.multiple == single:
            raise TLVError(f"{where}: resource {rdef.name!r} is "
                           f"{'multiple' if rdef.multiple else 'single'}-instance")
        self._claim(path, "resource" if single else "resource instance")
        if len(self.records) >= self.limit:
            raise TLVError(f"more than the limit of {self.limit} values")
        if not isinstance(t.value, bytes):
            raise TLVError(f"{where}: a {_NAMES[t.type]} TLV where a value belongs")
        kind, value = decode_value(t.value, _type(rdef), where)
        self.records.append(Record(where, kind, value))

    def _claim(self, path: Path, what: str) -> None:
        if path in self.seen:
            raise TLVError(f"{format_path(path)}: {what} appears twice")
        self.seen.add(path)


def _children(t: TLV) -> tuple[TLV, ...]:
    if not isinstance(t.value, tuple):
        raise TLVError(f"{_NAMES[t.type]} {t.id}: a value where TLVs belong")
    return t.value


def _type(rdef: ResourceDef | None) -> ResourceType | None:
    return None if rdef is None else rdef.type


def _parse(data: memoryview, pos: int, end: int, parent: int | None) -> list[TLV]:
    out: list[TLV] = []
    while pos < end:
        start = pos
        type_byte = data[pos]
        kind = type_byte >> 6
        if parent is not None and kind not in _CHILDREN[parent]:
            raise TLVError(f"byte {start}: {_NAMES[kind]} TLV not allowed in "
                           f"{_NAMES[parent]} TLV")
        id_size = 2 if type_byte & _ID16 else 1
        len_size = (type_byte >> _LEN_SHIFT) & 0x03
        pos += 1
        if pos + id_size + len_size > end:
            raise TLVError(f"byte {start}: TLV header runs past the end of its container")
        ident = int.from_bytes(data[pos:pos + id_size], "big")
        pos += id_size
        if ident > MAX_ID:
            raise TLVError(f"byte {start}: id {ident} is outside 0..{MAX_ID}")
        if len_size:
            length = int.from_bytes(data[pos:pos + len_size], "big")
            pos += len_size
        else:
            length = type_byte & 0x07
        if length > end - pos:
            raise TLVError(f"byte {start}: {_NAMES[kind]} {ident} has {length} bytes of "
                           f"value, {end - pos} are left")
        if kind in _CHILDREN:
            out.append(TLV(kind, ident, tuple(_parse(data, pos, pos + length, kind))))
        else:
            out.append(TLV(kind, ident, bytes(data[pos:pos + length])))
        pos += length
    return out


def _header(kind: int, ident: int, length: int) -> bytes:
    if not 0 <= ident <= MAX_ID:
        raise TLVError(f"id {ident} is outside 0..{MAX_ID}")
    if length > _MAX_VALUE:
        raise TLVError(f"a TLV value of {length} bytes exceeds the 24-bit length field")
    first = kind << 6
    ident_bytes = ident.to_bytes(2 if ident > 0xFF else 1, "big")
    if ident > 0xFF:
        first |= _ID16
    if length < 8:
        return bytes([first | length]) + ident_bytes
    size = 1 if length <= 0xFF else 2 if length <= 0xFFFF else 3
    return bytes([first | size << _LEN_SHIFT]) + ident_bytes + length.to_bytes(size, "big")


def _tlvs(base: Path, tree: dict[int, dict[int, bytes | dict[int, bytes]]]) -> list[TLV]:
    def resource(rid: int, slot: bytes | dict[int, bytes]) -> TLV:
        if isinstance(slot, bytes):
            return TLV(RESOURCE_VALUE, rid, slot)
        return TLV(MULTIPLE_RESOURCE, rid, tuple(
            TLV(RESOURCE_INSTANCE, riid, slot[riid]) for riid in sorted(slot)))

    def instance(resources: dict[int, bytes | dict[int, bytes]]) -> tuple[TLV, ...]:
        return tuple(resource(rid, resources[rid]) for rid in sorted(resources))

    if len(base) == 1:
        return [TLV(OBJECT_INSTANCE, iid, instance(tree[iid])) for iid in sorted(tree)]
    resources = tree.get(base[1], {})
    if len(base) == 2:
        return list(instance(resources))
    if not resources:
        raise TLVError(f"{format_path(base)}: no value to encode")
    top = resource(base[2], resources[base[2]])
    return [top] if len(base) == 3 else list(_children(top))


def _base(path: str | Sequence[int]) -> Path:
    try:
        base = parse_path(path)
    except PathError as e:
        raise TLVError(f"request path: {e.diagnostic}") from e
    if not base:
        raise TLVError("TLV answers a path of at least an object (/O)")
    return base


def _inferred(value: Value, where: str) -> ResourceType:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "opaque"
    raise TLVError(f"{where}: {type(value).__name__} is not an LwM2M value")


def _integral(value: Value, rtype: str, where: str) -> int:
    if isinstance(value, bool):
        raise _mismatch(where, rtype, value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _mismatch(where, rtype, value)
    if rtype == "unsigned" and value < 0:
        raise TLVError(f"{where}: {value} is negative, the resource is unsigned")
    return value


def _mismatch(where: str, rtype: str, value: object) -> TLVError:
    return TLVError(f"{where}: a {rtype} resource cannot take {type(value).__name__} "
                    f"{_short(value)}")


def _short(thing: object) -> str:
    text = repr(thing)
    return text if len(text) <= 40 else text[:37] + "..."
