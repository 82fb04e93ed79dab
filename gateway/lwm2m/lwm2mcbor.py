"""LwM2M-CBOR (content format 11544, LwM2M TS Core 1.2 §7.4.7): decode to records, encode.

A payload is one CBOR map. Its keys are path segments: an unsigned integer (one id) or
an array of them (several ids at once). A value is either another such map, one level
further down, or the value of the resource or resource instance its accumulated path
names. Paths are absolute and must lie at or below the request path. These all say
``/13/26/1 = 42``::

    {[13, 26, 1]: 42}    {13: {26: {1: 42}}}    {[13]: {[26, 1]: 42}}

Values are typed CBOR: integers, floats (half, single, double; a decimal fraction,
tag 4, is read as a float), booleans, text, byte strings; Time is an integer or float
under tag 1 (epoch seconds); Objlnk is text ``"O:I"``. Decoded values land in the same
``Record`` model as SenML (``v``, ``vs``, ``vb``, ``vd``; time as seconds in ``v``).
With a DDF definition a value must suit the resource's type (an integral float is
accepted for an integer, an integer for a float), and an object link is checked.

Sources, because the 1.2 text itself was not reachable from here: the shape above is
the one AVSystem Anjay implements and tests (``src/core/io/anjay_lwm2m_cbor_in.c`` and
``_out.c``, ``tests/core/io/lwm2m_cbor_in.c`` and ``_out.c``); Anjay Lite encodes Time
as tag 1 and Objlnk as ``"O:I"`` text, as here. Not supported: CBOR ``null`` values
(Anjay reads them, for Write-Composite deletions), and the LwM2M gateway prefix (a text
key naming an end device, LwM2M Gateway TS). Both raise ``LwM2MCBORError``.

Pure function over bytes: malformed CBOR, duplicate map keys, bytes after the map,
ids outside 0..65534, paths deeper than a resource instance or outside the request
path, a value above resource level, the same path twice, non-finite floats and
integers outside 64 bits raise ``LwM2MCBORError`` (CoAP 4.00), and nothing else does.
The encoder writes definite-length maps with the request path as the first key (one id
or an array), nested maps of single ids below it, ids in ascending order.
"""

from __future__ import annotations

import datetime
import decimal
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2

from ..errors import BadRequest
from .ddf import ObjectDef, ResourceDef, ResourceType, resource_def
from .paths import MAX_ID, Path, PathError, format_path, is_under, parse_objlnk, parse_path
from .senml import Record, Value, ValueKind

__all__ = ["CF_LWM2M_CBOR", "LwM2MCBORError", "decode", "encode"]

CF_LWM2M_CBOR = 11544  # application/vnd.oma.lwm2m+cbor
_TAG_EPOCH_TIME = 1  # RFC 8949 §3.4.2
_MAX_DEPTH = 16  # container nesting cbor2 may decode: 4 path levels + key arrays + tags
_INT64 = (-(2**63), 2**63 - 1)


class LwM2MCBORError(BadRequest):
    """The payload is not an LwM2M-CBOR document for this path (CoAP 4.00)."""


def decode(data: bytes, path: str | Sequence[int],
           objects: Mapping[int, ObjectDef] | None = None, *,
           max_records: int = 1000) -> list[Record]:
    """Decode the LwM2M-CBOR payload that answers ``path`` into resource records."""
    base = _base(path)
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp, max_depth=_MAX_DEPTH,
                                 allow_duplicate_keys=False).decode()
    except Exception as e:  # cbor2 raises several types on hostile input
        raise LwM2MCBORError(f"not valid CBOR: {_short(e)}") from e
    if fp.tell() != len(data):
        raise LwM2MCBORError(f"{len(data) - fp.tell()} bytes after the CBOR map")
    if not isinstance(item, dict):
        raise LwM2MCBORError("an LwM2M-CBOR payload is a map")
    walker = _Walker(base, objects, max_records)
    walker.walk((), item)
    return walker.records


def encode(records: Sequence[Record], path: str | Sequence[int],
           objects: Mapping[int, ObjectDef] | None = None) -> bytes:
    """Encode resource records at or below ``path`` as one LwM2M-CBOR map."""
    base = _base(path)
    leaves: dict[Path, Any] = {}
    parents: set[Path] = set()
    for rec in records:
        try:
            rpath = parse_path(rec.path)
        except PathError as e:
            raise LwM2MCBORError(f"record path: {e.diagnostic}") from e
        if len(rpath) < 3 or not is_under(rpath, base):
            raise LwM2MCBORError(f"{rec.path} is not a resource at or below "
                                 f"{format_path(base)}")
        if _clash(rpath, leaves, parents):
            raise LwM2MCBORError(f"{rec.path}: given twice, or as both a resource value "
                                 "and resource instances")
        parents.add(rpath[:3])
        rdef = resource_def(objects, rpath)
        _check_multiple(rpath, rdef)
        leaves[rpath] = _item(rec.value, rdef.type if rdef else None, rec.path)
    tree: dict[Any, Any] = {}
    top: Any = tree
    for rpath in sorted(leaves):
        rest = rpath[len(base):]
        if not rest:  # the request path itself is the one resource (instance)
            top = {_key(base): leaves[rpath]}
            break
        node = tree
        for i in rest[:-1]:
            node = node.setdefault(i, {})
        node[rest[-1]] = leaves[rpath]
    else:
        if base and tree:
            top = {_key(base): tree}
    try:
        return cbor2.dumps(top)
    except (UnicodeEncodeError, cbor2.CBOREncodeError) as e:  # lone surrogates in text
        raise LwM2MCBORError(f"not encodable as CBOR: {_short(e)}") from e


# -- internals ---------------------------------------------------------------------------


class _Walker:
    """Flattens the nested maps into records, checking every path on the way."""

    def __init__(self, base: Path, objects: Mapping[int, ObjectDef] | None,
                 limit: int) -> None:
        self.base = base
        self.objects = objects
        self.limit = limit
        self.records: list[Record] = []
        self.leaves: set[Path] = set()
        self.parents: set[Path] = set()  # resources that have a value or instances

    def walk(self, prefix: Path, node: dict[Any, Any]) -> None:
        # Each level adds at least one id and a path has at most four: depth <= 4.
        for key, value in node.items():
            here = prefix + _key_ids(prefix, key)
            where = format_path(here)
            if len(here) > 4:
                raise LwM2MCBORError(f"{where}: deeper than a resource instance")
            if isinstance(value, dict):
                if len(here) == 4:
                    raise LwM2MCBORError(f"{where}: a map below a resource instance")
                if not (is_under(here, self.base) or is_under(self.base, here)):
                    raise LwM2MCBORError(f"{where}: outside the request path "
                                         f"{format_path(self.base)}")
                self.walk(here, value)
            else:
                self.leaf(here, where, value)

    def leaf(self, path: Path, where: str, value: Any) -> None:
        if len(path) < 3:
            raise LwM2MCBORError(f"{where}: a value above resource level")
        if not is_under(path, self.base):
            raise LwM2MCBORError(f"{where}: outside the request path "
                                 f"{format_path(self.base)}")
        if _clash(path, self.leaves, self.parents):
            raise LwM2MCBORError(f"{where}: given twice, or as both a resource value and "
                                 "resource instances")
        if len(self.records) >= self.limit:
            raise LwM2MCBORError(f"more than the limit of {self.limit} values")
        rdef = resource_def(self.objects, path)
        _check_multiple(path, rdef)
        kind, typed = _typed(_plain(value, where), rdef.type if rdef else None, where)
        self.leaves.add(path)
        self.parents.add(path[:3])
        self.records.append(Record(where, kind, typed))


def _key_ids(prefix: Path, key: Any) -> Path:
    ids = key if isinstance(key, tuple) else (key,)
    if not ids:
        raise LwM2MCBORError(f"{format_path(prefix)}: an empty array as a map key")
    for i in ids:
        if type(i) is not int:
            raise LwM2MCBORError(f"{format_path(prefix)}: map key {_short(key)} is not an "
                                 "id or an array of ids")
        if not 0 <= i <= MAX_ID:
            raise LwM2MCBORError(f"{format_path(prefix)}: id {i} is outside 0..{MAX_ID}")
    return tuple(ids)


def _plain(value: Any, where: str) -> tuple[ValueKind, Value]:
    """A decoded CBOR item as ``(kind, value)``, before the DDF type is applied."""
    if isinstance(value, bool):
        return "vb", value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise LwM2MCBORError(f"{where}: {_short(value)} is outside the 64-bit range")
        return "v", value
    if isinstance(value, (float, decimal.Decimal)):
        try:
            real = float(value)
        except (OverflowError, ValueError) as e:
            raise LwM2MCBORError(f"{where}: {_short(value)} is not a number") from e
        if not math.isfinite(real):
            raise LwM2MCBORError(f"{where}: {_short(value)} is not a finite number")
        return "v", real
    if isinstance(value, datetime.datetime):  # tag 1 (or tag 0): epoch seconds
        if value.tzinfo is None:
            raise LwM2MCBORError(f"{where}: a date without a time zone")
        seconds = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        whole = seconds.days * 86400 + seconds.seconds
        return "v", whole if not seconds.microseconds else whole + seconds.microseconds / 1e6
    if isinstance(value, str):
        return "vs", value
    if isinstance(value, bytes):
        return "vd", value
    if value is None:
        raise LwM2MCBORError(f"{where}: null values are not supported")
    raise LwM2MCBORError(f"{where}: {type(value).__name__} {_short(value)} is not an "
                         "LwM2M value")


def _typed(plain: tuple[ValueKind, Value], rtype: ResourceType | None,
           where: str) -> tuple[ValueKind, Value]:
    kind, value = plain
    if rtype is None or rtype == "opaque" and kind == "vd":
        return plain
    if rtype in ("integer", "time", "unsigned") and kind == "v":
        if isinstance(value, float):
            if not value.is_integer() or not _INT64[0] <= value <= _INT64[1]:
                if rtype != "time":
                    raise LwM2MCBORError(f"{where}: {value} is not an integer")
                return plain
            value = int(value)
        if rtype == "unsigned" and isinstance(value, int) and value < 0:
            raise LwM2MCBORError(f"{where}: {value} is negative, the resource is unsigned")
        return "v", value
    if rtype == "float" and kind == "v":
        return "v", float(value)
    if rtype == "boolean" and kind == "vb" or rtype in ("string", "corelnk") and kind == "vs":
        return plain
    if rtype == "objlnk" and kind == "vs":
        try:
            parse_objlnk(value)  # type: ignore[arg-type]  # kind "vs" holds a str
        except PathError as e:
            raise LwM2MCBORError(f"{where}: {e.diagnostic}") from e
        return plain
    raise LwM2MCBORError(f"{where}: a {rtype} resource cannot take {_short(value)}")


def _item(value: Value | bytearray | memoryview, rtype: ResourceType | None,
          where: str) -> Any:
    """The CBOR item for ``value`` in a resource of DDF type ``rtype``."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, (bool, int, float, str, bytes)):
        raise LwM2MCBORError(f"{where}: {type(value).__name__} is not an LwM2M value")
    kind: ValueKind = ("vb" if isinstance(value, bool) else "vs" if isinstance(value, str)
                       else "vd" if isinstance(value, bytes) else "v")
    if kind == "v":
        kind, value = _plain(value, where)
    if rtype == "none":
        raise LwM2MCBORError(f"{where}: an executable resource has no value")
    kind, typed = _typed((kind, value), rtype, where)
    return cbor2.CBORTag(_TAG_EPOCH_TIME, typed) if rtype == "time" else typed


def _clash(path: Path, leaves: Mapping[Path, Any] | set[Path], parents: set[Path]) -> bool:
    """Same path twice, or a resource given both as a value and as instances."""
    return path in leaves or (path in parents if len(path) == 3 else path[:3] in leaves)


def _check_multiple(path: Path, rdef: ResourceDef | None) -> None:
    if rdef is not None and rdef.multiple != (len(path) == 4):
        raise LwM2MCBORError(f"{format_path(path)}: resource {rdef.name!r} is "
                             f"{'multiple' if rdef.multiple else 'single'}-instance")


def _key(ids: Path) -> int | tuple[int, ...]:
    return ids[0] if len(ids) == 1 else ids


def _base(path: str | Sequence[int]) -> Path:
    try:
        return parse_path(path)
    except PathError as e:
        raise LwM2MCBORError(f"request path: {e.diagnostic}") from e


def _short(thing: object) -> str:
    text = repr(thing) if not isinstance(thing, BaseException) else str(thing)
    return text if len(text) <= 60 else text[:57] + "..."
