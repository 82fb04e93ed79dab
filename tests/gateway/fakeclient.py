"""A small LwM2M client on a real aiocoap socket, for the device-management tests.

It registers on ``/rd`` from the same socket it serves on (so the gateway's requests
reach it), and serves its objects: Read (SenML-CBOR built here with cbor2, OMA-TLV, plain
text), Discover (link-format), Write (PUT/POST), Write-Attributes, Execute, Create,
Delete, Read-Composite / Observe-Composite (FETCH) and Observe. ``formats`` makes it a
client built with only those content formats: it lists them in its registration
(``</>;ct=110``), and a request for any other format -- a Read without Accept falls back
to its default, TLV, which it does not have -- is answered 5.00, as such a client in C
does. ``observe_tokens`` makes it match observations by token (RFC 7641 §3.6): a GET
with Observe 1 cancels the observation with that token only. ``sleep()`` makes it
stop answering (requests hang, as to a node whose radio is off); every request it sees
is appended to ``seen``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable
from typing import Any, Self

import aiocoap
import cbor2
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiotkit.gateway.lwm2m import tlv
from aiotkit.gateway.lwm2m.ddf import load_shipped
from aiotkit.gateway.lwm2m.senml import Record

SENML_CBOR, SENML_JSON, TLV, TEXT, LINK = 112, 110, 11542, 0, 40
Path = tuple[int, ...]

# (type, writable): the resources this client has
DEFAULT_OBJECTS: dict[Path, tuple[str, bool, Any]] = {
    (1, 0, 0): ("integer", False, 1),
    (1, 0, 1): ("integer", True, 300),
    (3, 0, 0): ("string", False, "aiotkit"),
    (3, 0, 1): ("string", False, "fake-node"),
    (3, 0, 9): ("integer", False, 87),
    (3, 0, 13): ("time", True, 1_700_000_000),
    (3303, 0, 5700): ("float", False, 21.5),
    (3303, 0, 5701): ("string", False, "Cel"),
    (3303, 0, 5750): ("string", True, "room"),
}
EXECUTABLE: frozenset[Path] = frozenset({(3, 0, 4)})


def _under(path: Path, base: Path) -> bool:
    return path[: len(base)] == base


def _text(path: Iterable[int]) -> str:
    return "/" + "/".join(str(i) for i in path)


class FakeClient(resource.ObservableResource, resource.PathCapable):
    """The client's root resource; ``async with FakeClient(...) as c: await c.register()``."""

    def __init__(self, endpoint: str, gateway_uri: str, *, lwm2m: str = "1.1",
                 binding: str = "U", lifetime: int = 300, default_format: int = SENML_CBOR,
                 formats: tuple[int, ...] | None = None):
        super().__init__()
        self.endpoint = endpoint
        self.gateway_uri = gateway_uri
        self.lwm2m = lwm2m
        self.binding = binding
        self.lifetime = lifetime
        self.default_format = TLV if formats is not None else default_format
        self.formats = formats
        self.cancels: list[aiocoap.Message] = []  # GETs with Observe 1
        self.observe_tokens: dict[bytes, tuple[str, Any]] = {}  # token -> (key, observation)
        self.values: dict[Path, Any] = {p: v for p, (_t, _w, v) in DEFAULT_OBJECTS.items()}
        self.types: dict[Path, tuple[str, bool]] = {
            p: (t, w) for p, (t, w, _v) in DEFAULT_OBJECTS.items()}
        self.attributes: dict[str, list[str]] = {}
        self.executed: list[tuple[str, bytes]] = []
        self.seen: list[aiocoap.Message] = []
        self.observers: dict[str, list[Any]] = {}  # observed key -> server observations
        self.location: tuple[str, ...] = ()
        self.new_observation = asyncio.Event()  # set whenever an Observe is accepted
        self.ctx: aiocoap.Context | None = None
        self._awake = asyncio.Event()
        self._awake.set()
        self.objects = load_shipped()

    async def __aenter__(self) -> Self:
        self.ctx = await aiocoap.Context.create_server_context(
            self, bind=("127.0.0.1", 0), transports=["udp6"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._awake.set()
        if self.ctx is not None:
            await self.ctx.shutdown()

    # -- client side: registration ---------------------------------------------------

    def links(self) -> str:
        instances = sorted({p[:2] for p in self.values} | {p[:2] for p in EXECUTABLE})
        root = []
        if self.formats is not None:
            ct = " ".join(str(f) for f in self.formats)
            root = [f'</>;ct="{ct}"' if len(self.formats) > 1 else f"</>;ct={ct}"]
        return ",".join(root + [f"<{_text(i)}>" for i in instances])

    async def request(self, code: Code, path: str, payload: bytes = b"",
                      cf: int | None = None) -> aiocoap.Message:
        assert self.ctx is not None
        msg = aiocoap.Message(code=code, uri=f"{self.gateway_uri}{path}", payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        return await self.ctx.request(msg).response

    async def register(self) -> aiocoap.Message:
        resp = await self.request(
            Code.POST, f"/rd?ep={self.endpoint}&lt={self.lifetime}&lwm2m={self.lwm2m}"
            f"&b={self.binding}", self.links().encode(), LINK)
        assert resp.code == Code.CREATED, resp
        self.location = resp.opt.location_path
        return resp

    async def update(self) -> aiocoap.Message:
        resp = await self.request(Code.POST, "/" + "/".join(self.location))
        assert resp.code == Code.CHANGED, resp
        return resp

    async def deregister(self) -> aiocoap.Message:
        resp = await self.request(Code.DELETE, "/" + "/".join(self.location))
        assert resp.code == Code.DELETED, resp
        return resp

    async def send(self, payload: bytes, cf: int) -> aiocoap.Message:
        return await self.request(Code.POST, "/dp", payload, cf)

    def sleep(self) -> None:
        """Stop answering (the requests that arrive wait until ``wake()``)."""
        self._awake.clear()

    def wake(self) -> None:
        self._awake.set()

    def set(self, path: Path, value: Any) -> None:
        """Change a value, notifying observers of any path above it."""
        self.values[path] = value
        for key, observers in self.observers.items():
            if any(_under(path, p) for p in _key_paths(key)):
                for o in list(observers):
                    o.trigger()

    # -- server side -------------------------------------------------------------------

    async def add_observation(self, request: aiocoap.Message, serverobservation: Any) -> None:
        key = _observe_key(request)
        if not key or not any(_under(p, q) for q in _key_paths(key) for p in self.values):
            return  # not accepted: the first answer (4.04) ends it
        self.observers.setdefault(key, []).append(serverobservation)
        self.observe_tokens[bytes(request.token)] = (key, serverobservation)

        def cancelled() -> None:
            if serverobservation in self.observers[key]:
                self.observers[key].remove(serverobservation)

        serverobservation.accept(cancelled)
        self.new_observation.set()

    def observing(self, key: str) -> int:
        return len(self.observers.get(key, []))

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        self.seen.append(request)
        await self._awake.wait()
        try:
            path = tuple(int(p) for p in request.opt.uri_path)
        except ValueError:
            return aiocoap.Message(code=Code.NOT_FOUND)
        code = request.code
        if request.opt.observe == 1:  # a cancel: the observation with this token ends
            self.cancels.append(request)
            found = self.observe_tokens.pop(bytes(request.token), None)
            if found is not None and found[1] in self.observers.get(found[0], []):
                self.observers[found[0]].remove(found[1])
        if code == Code.FETCH:
            names = _fetch_names(request)
            paths = [tuple(int(p) for p in n.strip("/").split("/")) for n in names]
            accept = request.opt.accept
            return self._content(paths, int(accept) if accept is not None else SENML_CBOR)
        if code == Code.iPATCH and not path:  # Write-Composite
            return self._write(path, request)
        if code == Code.GET:
            if request.opt.accept == LINK:
                return self._discover(path)
            if any(_under(path, p) or _under(p, path) for p in EXECUTABLE) \
                    and len(path) >= 3:
                return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
            fmt = request.opt.accept if request.opt.accept is not None \
                else self.default_format
            return self._content([path], int(fmt))
        if code == Code.PUT and not request.payload:
            self.attributes.setdefault(_text(path), []).extend(request.opt.uri_query)
            return aiocoap.Message(code=Code.CHANGED)
        if code in (Code.PUT, Code.POST) and path in EXECUTABLE:
            if code == Code.PUT:
                return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
            self.executed.append((_text(path), request.payload))
            return aiocoap.Message(code=Code.CHANGED)
        if code == Code.POST and len(path) == 1:
            return self._create(path, request)
        if code in (Code.PUT, Code.POST):
            return self._write(path, request)
        if code == Code.DELETE:
            if len(path) != 2 or not any(_under(p, path) for p in self.values):
                return aiocoap.Message(code=Code.NOT_FOUND)
            for p in [p for p in self.values if _under(p, path)]:
                del self.values[p]
            return aiocoap.Message(code=Code.DELETED)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    def _records(self, paths: list[Path]) -> list[tuple[Path, Any]]:
        return [(p, self.values[p]) for p in sorted(self.values)
                if any(_under(p, base) for base in paths)]

    def _content(self, paths: list[Path], fmt: int) -> aiocoap.Message:
        if self.formats is not None and fmt not in self.formats and fmt != LINK:
            # not compiled in: a C client's encoder for it is missing (issue 12)
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)
        found = self._records(paths)
        if not found:
            return aiocoap.Message(code=Code.NOT_FOUND)
        if fmt == SENML_CBOR:
            body = cbor2.dumps([{0: _text(p), **_senml_value(v)} for p, v in found])
        elif fmt == SENML_JSON:
            body = json.dumps([{"n": _text(p), **_senml_json_value(v)}
                               for p, v in found]).encode()
        elif fmt == TLV:
            body = tlv.encode([Record(_text(p), *_kind(v)) for p, v in found], paths[0],
                              self.objects)
        elif fmt == TEXT and len(found) == 1 and found[0][0] == paths[0]:
            body = str(found[0][1]).encode()
        else:
            return aiocoap.Message(code=Code.NOT_ACCEPTABLE)
        msg = aiocoap.Message(code=Code.CONTENT, payload=body)
        msg.opt.content_format = fmt
        return msg

    def _discover(self, path: Path) -> aiocoap.Message:
        items = sorted({p for p in self.values if _under(p, path)} | {
            p for p in EXECUTABLE if _under(p, path)})
        if not items:
            return aiocoap.Message(code=Code.NOT_FOUND)
        links = [f"<{_text(path)}>"] + [
            f"<{_text(p)}>" + "".join(f";{a}" for a in self.attributes.get(_text(p), []))
            for p in items]
        msg = aiocoap.Message(code=Code.CONTENT, payload=",".join(links).encode())
        msg.opt.content_format = LINK
        return msg

    def _decode(self, request: aiocoap.Message, path: Path) -> list[tuple[Path, Any]] | None:
        cf = request.opt.content_format
        if self.formats is not None and cf not in self.formats and cf != TEXT:
            return None
        if cf == SENML_JSON:
            return [(tuple(int(x) for x in rec["n"].strip("/").split("/")),
                     next(rec[k] for k in ("v", "vs", "vb", "vlo") if k in rec))
                    for rec in json.loads(request.payload)]
        if cf == SENML_CBOR:
            out = []
            for rec in cbor2.loads(request.payload):
                value = next(rec[k] for k in (2, 3, 4, 8, "vlo") if k in rec)
                out.append((tuple(int(x) for x in rec[0].strip("/").split("/")), value))
            return out
        if cf == TLV:
            return [(tuple(int(x) for x in r.path.strip("/").split("/")), r.value)
                    for r in tlv.decode(request.payload, path, self.objects)]
        if cf == TEXT and len(path) >= 3:
            rtype = self.types.get(path, ("string", True))[0]
            text = request.payload.decode()
            return [(path, int(text) if rtype in ("integer", "time") else
                     float(text) if rtype == "float" else text)]
        return None

    def _write(self, path: Path, request: aiocoap.Message) -> aiocoap.Message:
        if not any(_under(p, path) for p in self.types):
            return aiocoap.Message(code=Code.NOT_FOUND)
        values = self._decode(request, path)
        if values is None:
            return aiocoap.Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        for p, _v in values:
            if p not in self.types:
                return aiocoap.Message(code=Code.NOT_FOUND)
            if not self.types[p][1]:
                return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)
        for p, v in values:
            self.set(p, v)
        return aiocoap.Message(code=Code.CHANGED)

    def _create(self, path: Path, request: aiocoap.Message) -> aiocoap.Message:
        values = self._decode(request, path)
        if not values:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        instance = values[0][0][:2]
        if any(_under(p, instance) for p in self.values):
            return aiocoap.Message(code=Code.BAD_REQUEST)
        for p, v in values:
            self.values[p] = v
            self.types[p] = ("string", True)
        return aiocoap.Message(code=Code.CREATED, location_path=[str(i) for i in instance])


def _fetch_names(request: aiocoap.Message) -> list[str]:
    if request.opt.content_format == SENML_JSON:
        return [rec["n"] for rec in json.loads(request.payload)]
    return [rec[0] for rec in cbor2.loads(request.payload)]


def _observe_key(request: aiocoap.Message) -> str:
    if request.code == Code.FETCH:
        return ",".join(_fetch_names(request))
    return "/" + "/".join(request.opt.uri_path)


def _key_paths(key: str) -> list[Path]:
    return [tuple(int(x) for x in k.strip("/").split("/") if x) for k in key.split(",")]


def _senml_value(value: Any) -> dict[int, Any]:
    if isinstance(value, bool):
        return {4: value}
    if isinstance(value, (int, float)):
        return {2: value}
    if isinstance(value, bytes):
        return {8: value}
    return {3: value}


def _senml_json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"vb": value}
    if isinstance(value, (int, float)):
        return {"v": value}
    if isinstance(value, bytes):
        return {"vd": base64.urlsafe_b64encode(value).decode().rstrip("=")}
    return {"vs": value}


def _kind(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return "vb", value
    if isinstance(value, (int, float)):
        return "v", value
    if isinstance(value, bytes):
        return "vd", value
    return "vs", value


__all__ = ["SENML_CBOR", "SENML_JSON", "TEXT", "TLV", "FakeClient"]
