"""The LwM2M server's CoAP face: ``/rd`` (registration interface) and ``/dp`` (Send).

``LwM2MResource`` is the aiocoap root resource. It parses options and payloads, asks the
``Registry`` to decide and commit, and answers:

=====================  =========  ===========================================================
request                success    refusals
=====================  =========  ===========================================================
POST /rd?ep=&lt=&...   2.01       4.00 missing/bad ep, lt, lwm2m, b, link-format; 4.15 CF
POST /rd/{id}          2.04       4.04 unknown or expired id; 4.00 bad lt, b, link-format;
                                  4.15 CF
DELETE /rd/{id}        2.02       4.04 unknown id
POST /dp               2.04       4.15 CF not 110/112/11544; 4.04 sender not registered;
                                  4.13 payload too big; 4.00 bad SenML
any, with OSCORE       --         4.01 (no security context to verify it)
=====================  =========  ===========================================================

Register answers with Location-Path ``rd``, ``{id}``. A Send that repeats an earlier one
(same endpoint, token and payload within EXCHANGE_LIFETIME) is answered 2.04 again and
not stored twice. Any other path is 4.04, any other
method on these paths 4.05. A ``RequestError`` becomes its CoAP code with a short
diagnostic payload; anything else raised while handling is logged as a bug and answered
5.00, and the server keeps serving. The message layer (malformed datagrams,
retransmissions, in-process deduplication) is aiocoap's, with a compact deduplication
cache (``coap.layer``); the common Send (CON POST /dp, SenML, one datagram, from a
registered IPv4 peer) is served below it by ``coap.fastsend`` through ``decode_send`` and
the same group commit. A request carrying OSCORE that reaches this resource was verified
by nothing (the gateway has no security context yet; ``coap.wire``): it is refused 4.01.

Register and Send are answered once committed: those that arrive together share one
transaction (``Registry.submit_register``/``submit_send``, group commit), so the 2.01 or
2.04 still goes out only after the COMMIT that made the change durable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from ..coap.aio import Code, PathCapable, Resource, aiocoap, hostportsplit
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    RequestError,
    Unauthorized,
    UnsupportedContentFormat,
)
from ..storage.api import Registration
from . import codecs
from .ddf import ObjectDef
from .linkformat import CF_LINK_FORMAT, parse_link_format
from .params import (
    DEFAULT_BINDING,
    DEFAULT_LIFETIME,
    DEFAULT_LWM2M_VERSION,
    valid_binding,
    valid_endpoint,
    valid_lifetime,
    valid_version,
)
from .registry import Registry
from .senml import DECODERS, Record

__all__ = [
    "LwM2MResource",
    "peer_address",
    "sockaddr_peer",
]

log = logging.getLogger("aiotkit.gateway.lwm2m")

COAP_PORT = 5683
_MAX_DIAGNOSTIC = 120
# Send (TS Core 1.1 §6.4.1 / 1.2): SenML-CBOR, SenML-JSON, and LwM2M-CBOR from 1.2 clients
_SEND_FORMATS = frozenset({*DECODERS, codecs.CF_LWM2M_CBOR})

_V4_MAPPED = re.compile(r"::ffff:([0-9]{1,3}(?:\.[0-9]{1,3}){3})")  # as the kernel writes it


def sockaddr_peer(sockaddr: object) -> tuple[str, int] | None:
    """(host, port) of an IPv4 peer's IPv6 socket address (``::ffff:a.b.c.d``, no scope)
    as ``peer_address`` gives it; None for any other address."""
    if type(sockaddr) is tuple and len(sockaddr) == 4 and not sockaddr[3]:
        m = _V4_MAPPED.fullmatch(sockaddr[0])
        if m is not None:
            return m[1], sockaddr[1]
    return None


def peer_address(remote: aiocoap.interfaces.EndpointAddress) -> tuple[str, int]:
    """(host, port) of a request's sender, IPv4-mapped addresses shown as IPv4.

    An IPv4 peer's socket address is read directly: aiocoap's ``hostinfo`` parses it
    with ``ipaddress`` each time, on every Send, to say the same."""
    peer = sockaddr_peer(getattr(remote, "sockaddr", None))
    if peer is not None:
        return peer
    host, port = hostportsplit(remote.hostinfo)
    return host, COAP_PORT if port is None else port


class LwM2MResource(Resource, PathCapable):
    """Root resource of the gateway's CoAP server."""

    def __init__(self, registry: Registry, *, max_payload: int, max_records: int,
                 objects: Mapping[int, ObjectDef] | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._max_payload = max_payload
        self._max_records = max_records
        self._objects = objects  # DDF types, for LwM2M-CBOR Sends

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = request.opt.uri_path
        try:
            return await self._dispatch(request, path)
        except RequestError as e:
            log.info("%s /%s from %s refused: %s %s", request.code, "/".join(path),
                     request.remote.hostinfo, e.code, e.diagnostic)
            return aiocoap.Message(
                code=e.code, payload=e.diagnostic.encode("utf-8")[:_MAX_DIAGNOSTIC]
            )
        except Exception:
            log.exception("%s /%s from %s failed with an internal error", request.code,
                          "/".join(path), request.remote.hostinfo)
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)

    async def _dispatch(self, request: aiocoap.Message,
                        path: tuple[str, ...]) -> aiocoap.Message:
        if request.opt.oscore is not None:
            # OSCORE is verified above this resource (aiocoap's OSCORE site wrapper,
            # issue 13); one that reaches it was verified by nothing (coap/wire.py)
            raise Unauthorized("OSCORE-protected request: no security context")
        method = request.code
        if path == ("rd",):
            _allow(method, Code.POST)
            return await self._register(request)
        if len(path) == 2 and path[0] == "rd":
            if method == Code.POST:
                return self._update(request, path[1])
            _allow(method, Code.DELETE)
            return self._deregister(path[1])
        if path == ("dp",):
            _allow(method, Code.POST)
            return await self._send(request)
        raise NotFound("no such resource")

    async def _register(self, request: aiocoap.Message) -> aiocoap.Message:
        query = _query(request)
        endpoint = query.get("ep")
        if endpoint is None:
            raise BadRequest("missing ep (endpoint client name)")
        if not valid_endpoint(endpoint):
            raise BadRequest("ep must be 1..255 characters without '/', '+', '#' or spaces")
        lifetime = _lifetime(query.get("lt", str(DEFAULT_LIFETIME)))
        version = query.get("lwm2m", DEFAULT_LWM2M_VERSION)
        if not valid_version(version):
            raise BadRequest("lwm2m must be a version such as 1.1")
        binding = _binding(query.get("b", DEFAULT_BINDING))
        links = _links(request)
        if links is None:
            raise BadRequest("missing object links (link-format payload)")
        host, port = peer_address(request.remote)
        reg = await self._registry.submit_register(
            endpoint, lifetime=lifetime, lwm2m_version=version, binding=binding,
            object_links=links, host=host, port=port,
        )
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", reg.reg_id))

    def _update(self, request: aiocoap.Message, reg_id: str) -> aiocoap.Message:
        query = _query(request)
        lt = query.get("lt")
        b = query.get("b")
        links = _links(request)
        host, port = peer_address(request.remote)
        self._registry.update(
            reg_id, host=host, port=port,
            lifetime=None if lt is None else _lifetime(lt),
            binding=None if b is None else _binding(b),
            object_links=links,
        )
        return aiocoap.Message(code=Code.CHANGED)

    def _deregister(self, reg_id: str) -> aiocoap.Message:
        self._registry.deregister(reg_id)
        return aiocoap.Message(code=Code.DELETED)

    async def _send(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        if cf is None or int(cf) not in _SEND_FORMATS:
            raise UnsupportedContentFormat(
                "Send takes SenML-CBOR (112), SenML-JSON (110) or LwM2M-CBOR (11544)")
        # Leshan answers a Send from an unknown peer 4.00 "no registration found"
        # (leshan-server-cf SendResource). We answer 4.04: the LwM2M 1.1 Send response
        # table lists 4.04 for "not registered to the LwM2M Server", and it is the code
        # our Update gives for a lost registration, so a client has one rule: on 4.04,
        # register again.
        payload = request.payload
        reg, records = self.decode_send(peer_address(request.remote), int(cf), payload)
        await self._registry.submit_send(
            reg, token=request.token, content_format=int(cf), payload=payload,
            records=records,
        )
        return aiocoap.Message(code=Code.CHANGED)

    def decode_send(self, peer: tuple[str, int], cf: int,
                    payload: bytes) -> tuple[Registration, list[Record]]:
        """The registration of the Send's sender and its records (Content-Format ``cf``,
        one the Send takes); raises the ``RequestError`` to answer with."""
        reg = self._registry.sender(*peer)
        if len(payload) > self._max_payload:
            raise RequestEntityTooLarge(f"payload over {self._max_payload} bytes")
        if cf in DECODERS:  # SenML: the hot path, straight to the decoder
            return reg, DECODERS[cf](payload, max_records=self._max_records)
        return reg, codecs.decode(cf, payload, "/", self._objects,
                                  max_records=self._max_records)


def _allow(method: Code, allowed: Code) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"only {allowed} here")


def _query(request: aiocoap.Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in request.opt.uri_query:
        key, _, value = item.partition("=")
        if key in out:
            raise BadRequest(f"query parameter {key[:20]!r} given twice")
        out[key] = value
    return out


def _lifetime(text: str) -> int:
    if not valid_lifetime(text):
        raise BadRequest("lt must be a whole number of seconds, 1..4294967295")
    return int(text)


def _binding(text: str) -> str:
    if not valid_binding(text):
        raise BadRequest("b must be a binding such as U")
    return text


def _links(request: aiocoap.Message) -> str | None:
    """The object-links payload as text (None when absent)."""
    cf = request.opt.content_format
    if cf is not None and int(cf) != CF_LINK_FORMAT:
        raise UnsupportedContentFormat("registration payload must be link-format (40)")
    if not request.payload:
        return None
    try:
        text: str = request.payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest("link-format payload is not UTF-8") from e
    parse_link_format(text)
    return text
