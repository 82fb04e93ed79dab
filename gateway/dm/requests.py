"""Device-management requests and results, and the pure encoding of an operation into
the CoAP request that carries it (no I/O: ``build_request`` checks and encodes).

==================  ======  ==============================================  ==========
operation           method  request (LwM2M TS Transport 1.1 §6.4, §6.5)     success
==================  ======  ==============================================  ==========
read                GET     /O[/I[/R[/RI]]], Accept (negotiated, below)     2.05
discover            GET     Accept 40 (link-format)                         2.05
write (replace)     PUT     /O/I[/R[/RI]], payload in the client's format   2.04
write (partial)     POST    /O/I[/R]                                        2.04
write_attributes    PUT     ?pmin=&pmax=&gt=&lt=&st=&epmin=&epmax=          2.04
execute             POST    /O/I/R, optional text arguments                 2.04
create              POST    /O, the new instance's resources                2.01
delete              DELETE  /O/I                                            2.02
observe             GET     Observe 0, Accept as read                       2.05
cancel_observe      GET     Observe 1, the observation's token (RFC 7641)   2.05
read_composite      FETCH   /, SenML list of paths, Accept the same SenML   2.05
observe_composite   FETCH   as read_composite, Observe 0                    2.05
write_composite     iPATCH  /, SenML-CBOR records of resources (instances)  2.04
==================  ======  ==============================================  ==========

**Content-Format negotiation** (TS Core 1.1 §6.2.1.1, §7.1). A Read or Observe always
carries an Accept option, so the client never falls back to a default format it may
not have (a 1.1 client built without TLV answers a Read without Accept 5.00):

1. the ``accept`` the caller gave (``dm.read(..., accept=)``, REST ``?format=``,
   ``aiot lwm2m read --format``) -- the override;
2. else the first of SenML-CBOR (112), SenML-JSON (110), LwM2M-CBOR (11544), TLV
   (11542) that the client listed in its registration (``</>;ct=110`` or
   ``</>;ct="110 112"``, Core §6.2.1.1);
3. else by the client's LwM2M version. 1.0 (Core 1.0 §6.4): plain text for one
   single-instance resource (or one resource instance) -- what a 1.0 client answers
   such a Read with by default -- and TLV, the multi-value format every 1.0 client
   must have, for anything else (an object, an instance, a multiple resource, a
   resource the DDF definitions do not know). 1.1 and later: SenML-CBOR (1.1 makes TLV
   optional; SenML-CBOR is the format the Send and the composite operations of 1.1
   are built on, and what 1.1 clients that list no ``ct`` speak in practice).

Composite operations (1.1 and later) use SenML: SenML-JSON when the client listed it and
not SenML-CBOR, else SenML-CBOR, for both the list of paths and the Accept. Values to
write are typed by the DDF definitions and encoded in the format of rule 2, else
OMA-TLV (plain text for a single resource) for LwM2M 1.0 clients, else SenML-CBOR; or
in the format named by ``content_format``.

``WireRequest`` is a request as it goes on the wire (and into the queue, as JSON);
``DMResult`` what it got back; ``Failure`` why it got nothing; ``Deliver`` the one
coroutine that sends a request (``DeviceManagement``'s), which the observations and the
queue are given.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cbor2

from ..lwm2m import codecs
from ..lwm2m.ddf import ObjectDef, ResourceType, resource_def
from ..lwm2m.linkformat import CF_LINK_FORMAT, content_formats, free_instance
from ..lwm2m.paths import MAX_ID, format_path, parse_path
from ..lwm2m.senml import Record, Value, ValueKind
from ..storage.api import Registration
from .errors import DMError

__all__ = [
    "ATTRIBUTES",
    "OPERATIONS",
    "DMResult",
    "Deliver",
    "Failure",
    "Operation",
    "WireRequest",
    "build_request",
    "composite_format",
    "decode",
    "dumps",
    "read_format",
]

Operation = Literal[
    "read", "discover", "write", "write_attributes", "execute", "create", "delete",
    "observe", "cancel_observe", "read_composite", "observe_composite",
    "cancel_observe_composite", "write_composite",
]
OPERATIONS: tuple[str, ...] = (
    "read", "discover", "write", "write_attributes", "execute", "create", "delete",
    "observe", "cancel_observe", "read_composite", "observe_composite",
    "cancel_observe_composite", "write_composite",
)
# Write-Attributes names and value types (TS Core 1.1 §5.1.2: <NOTIFICATION> class)
ATTRIBUTES: dict[str, type] = {"pmin": int, "pmax": int, "gt": float, "lt": float,
                               "st": float, "epmin": int, "epmax": int}


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A DM request as it goes on the wire (and into the queue, as JSON)."""

    op: str
    method: str  # GET, PUT, POST, DELETE, FETCH, iPATCH
    path: str  # the Uri-Path, "/" for composite operations
    paths: tuple[str, ...] = ()  # composite: the paths named in the payload
    query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    payload: bytes = b""
    observe: int | None = None

    @property
    def key(self) -> str:
        """What an observation is keyed by: its path(s)."""
        return ",".join(self.paths) if self.paths else self.path

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "method": self.method, "path": self.path,
                "paths": list(self.paths), "query": list(self.query),
                "content_format": self.content_format, "accept": self.accept,
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "observe": self.observe}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WireRequest:
        return cls(data["op"], data["method"], data["path"], tuple(data["paths"]),
                   tuple(data["query"]), data["content_format"], data["accept"],
                   base64.b64decode(data["payload"]), data["observe"])


@dataclass(frozen=True, slots=True)
class DMResult:
    """What a device-management request got back.

    ``code`` is the CoAP code as text (``"2.05"``); ``values`` the decoded resource
    values by path (empty when the answer has none or could not be decoded, then
    ``diagnostic`` says why); ``payload`` the raw answer; ``location`` the new
    instance of a Create (``"/3303/1"``); ``links`` a Discover's link-format text;
    ``observation_id`` the persisted observation of an Observe.
    """

    endpoint: str
    operation: str
    path: str
    code: str
    content_format: int | None = None
    values: dict[str, Value] = field(default_factory=dict)
    payload: bytes = b""
    t: float = 0.0
    request_id: int | None = None
    location: str | None = None
    links: str | None = None
    observation_id: int | None = None
    diagnostic: str | None = None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (bytes values as ``{"base64": ...}``)."""
        return {
            "endpoint": self.endpoint, "operation": self.operation, "path": self.path,
            "code": self.code, "ok": self.ok, "content_format": self.content_format,
            "values": {p: _json_value(v) for p, v in self.values.items()},
            "payload": base64.b64encode(self.payload).decode("ascii"), "t": self.t,
            "request_id": self.request_id, "location": self.location, "links": self.links,
            "observation_id": self.observation_id, "diagnostic": self.diagnostic,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DMResult:
        return cls(
            data["endpoint"], data["operation"], data["path"], data["code"],
            data["content_format"],
            {p: _from_json_value(v) for p, v in data["values"].items()},
            base64.b64decode(data["payload"]), data["t"], data["request_id"],
            data["location"], data["links"], data["observation_id"], data["diagnostic"],
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request got no answer."""

    exc: DMError
    timeout: bool


# Sends a request and records its result: (registration, request, request id or None,
# timeout or None) -> the result, or why there is none.
Deliver = Callable[[Registration, WireRequest, int | None, float | None],
                   Awaitable[DMResult | Failure]]


def build_request(op: str, reg: Registration, path: str,
                  objects: Mapping[int, ObjectDef] | None, *, accept: int | None = None,
                  value: Any = None, replace: bool = True,
                  content_format: int | None = None,
                  attributes: Mapping[str, float] | None = None, unset: Sequence[str] = (),
                  args: str | None = None, instance: int | None = None,
                  paths: Sequence[str] = ()) -> WireRequest:
    """The wire request of ``op`` for ``reg``, values typed and encoded by ``objects``
    (checks and encodes; sends nothing)."""
    if op not in OPERATIONS:
        raise DMError(f"unknown operation {op!r} (one of {', '.join(OPERATIONS)})")
    ids = parse_path(path)
    text = format_path(ids)
    if op in ("read_composite", "observe_composite", "cancel_observe_composite"):
        if not paths:
            raise DMError(f"{op} needs at least one path")
        names = tuple(format_path(parse_path(p)) for p in paths)
        cf = composite_format(reg)
        body = (json.dumps([{"n": n} for n in names], separators=(",", ":")).encode()
                if cf == codecs.CF_SENML_JSON else cbor2.dumps([{0: n} for n in names]))
        observe = {"observe_composite": 0, "cancel_observe_composite": 1}.get(op)
        return WireRequest(op, "FETCH", "/", names, (), cf,
                           accept if accept is not None else cf, body, observe)
    if op == "write_composite":
        if not isinstance(value, Mapping) or not value:
            raise DMError("write_composite takes {path: value}, at least one")
        records: list[Record] = []
        for where, v in value.items():
            pids = parse_path(where)
            if len(pids) < 3:
                raise DMError("write_composite takes resource (instance) paths, not "
                              f"{format_path(pids)}")
            records += _records(pids, v, objects)
        payload = codecs.encode(codecs.CF_SENML_CBOR, records, "/", objects)
        return WireRequest(op, "iPATCH", "/", tuple(format_path(parse_path(w))
                                                    for w in value), (),
                           codecs.CF_SENML_CBOR, None, payload)
    if op in ("read", "observe", "cancel_observe"):
        _need(ids, 1, op)
        observe = {"observe": 0, "cancel_observe": 1}.get(op)
        return WireRequest(op, "GET", text,
                           accept=accept if accept is not None
                           else read_format(reg, ids, objects), observe=observe)
    if op == "discover":
        _need(ids, 1, op)
        return WireRequest(op, "GET", text, accept=CF_LINK_FORMAT)
    if op == "delete":
        if len(ids) != 2:
            raise DMError(f"delete takes an object instance path, not {text}")
        return WireRequest(op, "DELETE", text)
    if op == "execute":
        if len(ids) != 3:
            raise DMError(f"execute takes a resource path, not {text}")
        payload = (args or "").encode("utf-8")
        return WireRequest(op, "POST", text, payload=payload,
                           content_format=codecs.CF_TEXT if payload else None)
    if op == "write_attributes":
        _need(ids, 1, op)
        query = _attribute_query(attributes or {}, unset)
        return WireRequest(op, "PUT", text, query=query)
    if op == "write":
        if len(ids) < 2:
            raise DMError(f"write takes an object instance or deeper path, not {text}")
        records = _records(ids, value, objects)
        cf = content_format or _write_format(reg, ids, records)
        payload = codecs.encode(cf, records, ids, objects)
        return WireRequest(op, "PUT" if replace else "POST", text, content_format=cf,
                           payload=payload)
    # create
    if len(ids) != 1:
        raise DMError(f"create takes an object path, not {text}")
    if not isinstance(value, Mapping):
        raise DMError("create takes {resource id: value}")
    iid = instance if instance is not None else free_instance(reg.object_links, ids[0])
    base = (ids[0], iid)
    records = _records(base, value, objects)
    cf = content_format or _write_format(reg, base, records, single_ok=False)
    payload = codecs.encode(cf, records, ids, objects)
    return WireRequest(op, "POST", text, content_format=cf, payload=payload)


def decode(cf: int | None, payload: bytes, wire: WireRequest,
           objects: Mapping[int, ObjectDef] | None) -> list[Record]:
    """The records of an answer to ``wire`` (or of a Notification)."""
    if cf is None:
        cf = codecs.CF_TEXT  # TS Transport: no Content-Format means text/plain
    return codecs.decode(cf, payload, wire.path, objects)


def _need(ids: tuple[int, ...], depth: int, op: str) -> None:
    if len(ids) < depth:
        raise DMError(f"{op} needs an object path at least, not /")


def _json_value(value: Value) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _from_json_value(value: Any) -> Value:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return value  # type: ignore[no-any-return]


def _attribute_query(attributes: Mapping[str, float], unset: Sequence[str]) -> tuple[str, ...]:
    query: list[str] = []
    for name, value in attributes.items():
        kind = ATTRIBUTES.get(name)
        if kind is None:
            raise DMError(f"unknown attribute {name!r} (one of {', '.join(ATTRIBUTES)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DMError(f"attribute {name} takes a number")
        if kind is int:
            if not isinstance(value, int) or value < 0:
                raise DMError(f"attribute {name} takes a whole number of seconds >= 0")
            query.append(f"{name}={value}")
        else:
            query.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    for name in unset:
        if name not in ATTRIBUTES:
            raise DMError(f"unknown attribute {name!r}")
        query.append(name)
    if not query:
        raise DMError("write_attributes needs at least one attribute")
    return tuple(query)


_KINDS: dict[ResourceType, ValueKind] = {
    "integer": "v", "unsigned": "v", "time": "v", "float": "v", "string": "vs",
    "corelnk": "vs", "objlnk": "vs", "boolean": "vb", "opaque": "vd",
}


def _records(base: tuple[int, ...], value: Any,
             objects: Mapping[int, ObjectDef] | None) -> list[Record]:
    """Typed records for writing ``value`` at ``base`` (see ``DeviceManagement.write``)."""
    out: list[Record] = []

    def leaf(ids: tuple[int, ...], v: Any) -> None:
        path = format_path(ids)
        rdef = resource_def(objects, ids)
        out.append(Record(path, *_typed(path, v, rdef.type if rdef else None)))

    def ident(key: Any) -> int:
        try:
            i = int(key)
        except (TypeError, ValueError) as e:
            raise codecs.CodecError(f"{key!r} is not an id") from e
        if not 0 <= i <= MAX_ID:
            raise codecs.CodecError(f"id {i} is outside 0..{MAX_ID}")
        return i

    if len(base) == 2:
        if not isinstance(value, Mapping):
            raise codecs.CodecError(f"{format_path(base)}: an instance takes "
                                    "{resource id: value}")
        for rid, v in value.items():
            rids = (*base, ident(rid))
            if isinstance(v, Mapping):
                for ri, w in v.items():
                    leaf((*rids, ident(ri)), w)
            else:
                leaf(rids, v)
    elif len(base) == 3 and isinstance(value, Mapping):
        for ri, w in value.items():
            leaf((*base, ident(ri)), w)
    else:
        leaf(base, value)
    if not out:
        raise codecs.CodecError(f"{format_path(base)}: nothing to write")
    return out


def _typed(path: str, value: Any, rtype: ResourceType | None) -> tuple[ValueKind, Value]:
    if rtype is None:
        if isinstance(value, bool):
            return "vb", value
        if isinstance(value, (int, float)):
            return "v", value
        if isinstance(value, str):
            return "vs", value
        if isinstance(value, (bytes, bytearray)):
            return "vd", bytes(value)
        raise codecs.CodecError(f"{path}: {type(value).__name__} is not an LwM2M value")
    if rtype == "none":
        raise codecs.CodecError(f"{path}: an executable resource cannot be written")
    kind = _KINDS[rtype]
    ok = {
        "v": isinstance(value, (int, float)) and not isinstance(value, bool)
        and (rtype == "float" or isinstance(value, int)
             or (isinstance(value, float) and value.is_integer())),
        "vs": isinstance(value, str),
        "vb": isinstance(value, bool),
        "vd": isinstance(value, (bytes, bytearray)),
    }[kind]
    if not ok or (rtype == "unsigned" and value < 0):
        raise codecs.CodecError(f"{path}: a {rtype} resource cannot take "
                                f"{type(value).__name__} {value!r:.40}")
    if kind == "v" and rtype != "float":
        return kind, int(value)
    if kind == "vd":
        return kind, bytes(value)
    return kind, value


# rule 2 of the negotiation (module docstring): the formats a client may list, in the
# order the gateway prefers them (all of them decoded and encoded by ``codecs``)
_PREFERRED = (codecs.CF_SENML_CBOR, codecs.CF_SENML_JSON, codecs.CF_LWM2M_CBOR,
              codecs.CF_TLV)


def _listed(reg: Registration) -> int | None:
    listed = content_formats(reg.object_links)
    return next((cf for cf in _PREFERRED if cf in listed), None)


def _lwm2m_10(reg: Registration) -> bool:
    major, _, minor = reg.lwm2m_version.partition(".")
    try:
        return (int(major), int(minor or 0)) < (1, 1)
    except ValueError:
        return False


def read_format(reg: Registration, ids: tuple[int, ...] = (),
                objects: Mapping[int, ObjectDef] | None = None) -> int:
    """The Content-Format a Read or Observe of ``ids`` on ``reg`` asks for (Accept)
    when the caller named none: rules 2 and 3 of the negotiation (module docstring)."""
    listed = _listed(reg)
    if listed is not None:
        return listed
    if not _lwm2m_10(reg):
        return codecs.CF_SENML_CBOR
    rdef = resource_def(objects, ids)
    if len(ids) == 4 or (len(ids) == 3 and rdef is not None and not rdef.multiple):
        return codecs.CF_TEXT
    return codecs.CF_TLV


def composite_format(reg: Registration) -> int:
    """The SenML format of a composite operation on ``reg`` (module docstring)."""
    listed = content_formats(reg.object_links)
    if codecs.CF_SENML_JSON in listed and codecs.CF_SENML_CBOR not in listed:
        return codecs.CF_SENML_JSON
    return codecs.CF_SENML_CBOR


def _write_format(reg: Registration, ids: tuple[int, ...], records: list[Record], *,
                  single_ok: bool = True) -> int:
    listed = _listed(reg)
    if listed is not None:
        return listed
    if _lwm2m_10(reg):
        if single_ok and len(ids) >= 3 and len(records) == 1 \
                and records[0].path == format_path(ids):
            return codecs.CF_TEXT
        return codecs.CF_TLV
    return codecs.CF_SENML_CBOR


def dumps(result: DMResult) -> str:
    """``result`` as one line of JSON."""
    return json.dumps(result.to_json(), separators=(",", ":"))
