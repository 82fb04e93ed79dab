"""The LwM2M server's CoAP face: ``/rd`` (registration interface) and ``/dp`` (Send).

``LwM2MResource`` is the aiocoap root resource. It parses options and payloads, asks the
``Registry`` to decide and commit, and answers:

=====================  =========  ===========================================================
request                success    refusals
=====================  =========  ===========================================================
POST /rd?ep=&lt=&...   2.01       4.00 missing/bad ep, lt, lwm2m, b, link-format; 4.15 CF;
                                  4.13 + Size1 links over max_links_bytes; 5.03 + Max-Age
                                  a new endpoint with max_endpoints registered (or past
                                  new_endpoints_per_s; ``registry.Full``)
POST /rd/{id}          2.04       4.04 unknown or expired id; 4.00 bad lt, b, link-format;
                                  4.15 CF; 4.13 + Size1 links over max_links_bytes
DELETE /rd/{id}        2.02       4.04 unknown id
POST /dp               2.04       4.15 CF not 110/112/11544; 4.04 sender not registered;
                                  4.13 payload too big; 4.00 bad SenML
any, unprotected       --         4.01 in ``oscore`` mode; in NoSec mode (development),
                                  4.01 for an endpoint that has an OSCORE context
any, verified          --         4.03 ep or registration of another context
any, with OSCORE       --         4.01 (no security context verified it)
=====================  =========  ===========================================================

Security (issue 13): aiocoap's OSCORE site wrapper, above this resource, verifies a
protected request under the node's context and hands it on with the context in
``request.remote`` (``verified_endpoint``). A node registers only under its own name,
and Update, De-register and Send are accepted only under the context that registered
(``Registry.owned``); a verified Send is the context's, whatever address it came from
(a new address is taken, as an Update would). ``Admission`` says whether unprotected
requests are accepted at all (NoSec, a development mode, says so in a rate-limited
WARNING at every unprotected Register).

A request in Block1 blocks is reassembled by ``coap.blockwise.BoundedSpool`` (in place
of aiocoap's unbounded spool): 4.13 + Size1 at the block that passes ``max_payload``,
5.03 + Max-Age beyond the transfers or bytes it may hold (``[coap]``). The bounds come
from the config through ``configure`` (the constructor's defaults are the config's).
Why 5.03 for a full registry rather than 4.13: nothing is wrong with the request, the
server has no room now (RFC 7252 §5.9.3.4), and Max-Age tells the client when to retry;
a known endpoint always registers again, whatever the count.

Register answers with Location-Path ``rd``, ``{id}``. A Send that repeats an earlier one
(same endpoint, token and payload within EXCHANGE_LIFETIME) is answered 2.04 again and
not stored twice. Any other path is 4.04, any other
method on these paths 4.05. A ``RequestError`` becomes its CoAP code with a short
diagnostic payload; anything else raised while handling is logged as a bug and answered
5.00, and the server keeps serving. The message layer (malformed datagrams,
retransmissions, in-process deduplication) is aiocoap's, with a compact deduplication
cache (``coap.layer``); the common Send (CON POST /dp, SenML, one datagram, from a
registered IPv4 peer, unprotected: NoSec mode) is served below it by ``coap.fastsend``
through ``decode_send`` and the same group commit.

Register and Send are answered once committed: those that arrive together share one
transaction (``Registry.submit_register``/``submit_send``, group commit), so the 2.01 or
2.04 still goes out only after the COMMIT that made the change durable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..coap.aio import Code, PathCapable, Resource, aiocoap, hostportsplit
from ..coap.blockwise import Block1Limits, BoundedSpool
from ..errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    RequestError,
    Unauthorized,
    UnsupportedContentFormat,
)
from ..logs import PeerLog
from ..ota.package import PATH as PACKAGE_PATH
from ..ota.package import PackageError, Packages
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
from .registry import Full, Registry
from .senml import DECODERS, Record

if TYPE_CHECKING:
    from ..config import CoapConfig, RegistryConfig

__all__ = [
    "MAX_LINKS_BYTES",
    "LinksTooLarge",
    "LwM2MResource",
    "peer_address",
    "sockaddr_peer",
]

log = logging.getLogger("aiotkit.gateway.lwm2m")
_peer_log = PeerLog(log)  # what a peer's requests make us write

COAP_PORT = 5683
_MAX_DIAGNOSTIC = 120
# Send (TS Core 1.1 §6.4.1 / 1.2): SenML-CBOR, SenML-JSON, and LwM2M-CBOR from 1.2 clients
_SEND_FORMATS = frozenset({*DECODERS, codecs.CF_LWM2M_CBOR})

MAX_LINKS_BYTES = 16384  # a registration's object links at most ([registry] max_links_bytes)


class LinksTooLarge(RequestEntityTooLarge):
    """4.13 for object links over the bound; ``size1``: the most accepted (RFC 7959)."""

    def __init__(self, message: str, size1: int) -> None:
        super().__init__(message)
        self.size1 = size1


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


class Admission(Protocol):
    """Who may use the registration interface: the daemon's security mode and its
    OSCORE contexts (issue 13). A request verified under a node's context reaches the
    resource with the context in ``request.remote.security_context`` (aiocoap's OSCORE
    site wrapper); its ``endpoint`` is the node the context belongs to."""

    @property
    def secure(self) -> bool:
        """True: every request must be verified under a node's context (``oscore``)."""
        ...

    def provisioned(self, endpoint: str) -> bool:
        """``endpoint`` has a context: it is never accepted unprotected."""
        ...

    def bind(self, endpoint: str, host: str, port: int) -> None:
        """``endpoint`` was last verified from ``host``/``port``: requests to it go
        there, protected under its context."""
        ...


class NoSecurity:
    """The development mode without contexts: everything unprotected is accepted."""

    secure = False

    def provisioned(self, endpoint: str) -> bool:
        return False

    def bind(self, endpoint: str, host: str, port: int) -> None:
        pass


def verified_endpoint(request: aiocoap.Message) -> str | None:
    """The endpoint whose OSCORE context verified ``request``, or None (unprotected)."""
    ctx = getattr(request.remote, "security_context", None)
    endpoint = getattr(ctx, "endpoint", None)
    return endpoint if isinstance(endpoint, str) else None


class LwM2MResource(Resource, PathCapable):
    """Root resource of the gateway's CoAP server."""

    def __init__(self, registry: Registry, *, max_payload: int, max_records: int,
                 objects: Mapping[int, ObjectDef] | None = None,
                 block1: Block1Limits | None = None,
                 max_links: int = MAX_LINKS_BYTES,
                 admission: Admission | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._admission: Admission = admission if admission is not None else NoSecurity()
        self._max_payload = max_payload
        self._max_records = max_records
        self._max_links = max_links  # bytes of a registration's object links at most
        self._objects = objects  # DDF types, for LwM2M-CBOR Sends
        # aiocoap reassembles Block1 requests in the resource's ``_block1`` spool, with
        # no bound; this one refuses past the limits (coap/blockwise.py)
        self._block1 = BoundedSpool(block1 or Block1Limits(max_payload=max_payload))
        self.packages: Packages | None = None  # firmware packages (/fw), set by the daemon

    @property
    def block1(self) -> BoundedSpool:
        """The Block1 reassembly of this resource (tests, benchmarks)."""
        return self._block1

    def configure(self, coap: CoapConfig, registry: RegistryConfig) -> None:
        """Take the bounds from ``[coap]`` and ``[registry]`` (the daemon calls this
        after construction; the constructor's defaults are the config's)."""
        self._block1.limits = Block1Limits(
            max_payload=coap.max_payload, per_peer=coap.max_block1_transfers_per_peer,
            total=coap.max_block1_transfers, total_bytes=coap.max_block1_bytes,
            idle_s=coap.block1_idle_s)
        self._max_payload = coap.max_payload
        self._max_links = registry.max_links_bytes
        self._registry.max_endpoints = registry.max_endpoints
        self._registry.new_per_s = registry.new_endpoints_per_s

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = request.opt.uri_path
        try:
            return await self._dispatch(request, path)
        except RequestError as e:
            _peer_log.info("refused", "%s /%s from %s refused: %s %s", request.code,
                           "/".join(path)[:40], request.remote.hostinfo, e.code,
                           e.diagnostic)
            answer = aiocoap.Message(
                code=e.code, payload=e.diagnostic.encode("utf-8")[:_MAX_DIAGNOSTIC]
            )
            if isinstance(e, Full):
                answer.opt.max_age = e.max_age
            elif isinstance(e, LinksTooLarge):
                answer.opt.size1 = e.size1
            return answer
        except Exception:
            log.exception("%s /%s from %s failed with an internal error", request.code,
                          "/".join(path), request.remote.hostinfo)
            return aiocoap.Message(code=Code.INTERNAL_SERVER_ERROR)

    async def _dispatch(self, request: aiocoap.Message,
                        path: tuple[str, ...]) -> aiocoap.Message:
        who = verified_endpoint(request)
        if who is None and request.opt.oscore is not None:
            # OSCORE is verified above this resource (aiocoap's OSCORE site wrapper);
            # one that reaches it was verified by nothing (coap/wire.py)
            raise Unauthorized("OSCORE-protected request: no security context")
        if who is None and self._admission.secure:
            raise Unauthorized("OSCORE required: this gateway takes protected requests only")
        method = request.code
        if path == ("rd",):
            _allow(method, Code.POST)
            return await self._register(request, who)
        if len(path) == 2 and path[0] == "rd":
            reg = self._owned(path[1], who)
            if method == Code.POST:
                return self._update(request, reg, who)
            _allow(method, Code.DELETE)
            return self._deregister(reg.reg_id)
        if path == ("dp",):
            _allow(method, Code.POST)
            return await self._send(request, who)
        if len(path) == 2 and path[0] == PACKAGE_PATH:
            _allow(method, Code.GET)
            return self._package(request, path[1], who)
        raise NotFound("no such resource")

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # a Package is cut into blocks by _package (stateless: a node resumes at any
        # block); everything else goes through aiocoap's Block1 spool and Block2 cache
        return not (request.code == Code.GET and request.opt.uri_path[:1] == (PACKAGE_PATH,))

    def _package(self, request: aiocoap.Message, image_id: str,
                 who: str | None) -> aiocoap.Message:
        # GET /fw/<image id>: one block of a signed image (gateway/ota/package.py), for a
        # registered node only (verified under its context, or its address in NoSec)
        if self.packages is None:
            raise NotFound("no firmware packages here")
        if who is not None:
            self._registry.sender_endpoint(who)
        else:
            self._registry.sender(*peer_address(request.remote))
        want = request.opt.block2
        num, szx = (0, request.remote.maximum_block_size_exp) if want is None else (
            want.block_number, want.size_exponent)
        try:
            b = self.packages.block(image_id, num, szx)
        except PackageError as e:
            if e.reason == "not_found":
                raise NotFound(str(e)) from None
            raise BadRequest(str(e)) from None
        answer = aiocoap.Message(code=Code.CONTENT, payload=b.payload, etag=b.etag)
        if b.more or num or want is not None:
            answer.opt.block2 = (b.num, b.more, b.szx)
        if num == 0:
            answer.opt.size2 = b.size
        return answer

    def _owned(self, reg_id: str, who: str | None) -> Registration:
        # the registration an Update / De-register names, if the requester may change
        # it: the context that registered it, or (NoSec) anyone but for an endpoint that
        # has a context
        reg = self._registry.owned(reg_id, who)
        if who is None:
            self._unprotected(reg.endpoint)
        return reg

    def _unprotected(self, endpoint: str) -> None:
        # an unprotected request concerning endpoint (only in NoSec mode)
        if self._admission.provisioned(endpoint):
            raise Unauthorized(f"{endpoint} has an OSCORE context: protect the request")

    async def _register(self, request: aiocoap.Message, who: str | None) -> aiocoap.Message:
        query = _query(request)
        endpoint = query.get("ep")
        if endpoint is None:
            raise BadRequest("missing ep (endpoint client name)")
        if not valid_endpoint(endpoint):
            raise BadRequest("ep must be 1..255 characters without '/', '+', '#', spaces,"
                             " control characters or Unicode noncharacters")
        if who is None:
            self._unprotected(endpoint)
            _peer_log.warning("nosec", "unprotected Register of %s from %s (NoSec mode:"
                              " anyone can take this endpoint over)", endpoint[:40],
                              request.remote.hostinfo)
        elif endpoint != who:
            raise Forbidden(f"ep {endpoint[:40]!r} is not the endpoint of the OSCORE"
                            " context the request was verified under")
        lifetime = _lifetime(query.get("lt", str(DEFAULT_LIFETIME)))
        version = query.get("lwm2m", DEFAULT_LWM2M_VERSION)
        if not valid_version(version):
            raise BadRequest("lwm2m must be a version such as 1.1")
        binding = _binding(query.get("b", DEFAULT_BINDING))
        links = self._links(request)
        if links is None:
            raise BadRequest("missing object links (link-format payload)")
        host, port = peer_address(request.remote)
        reg = await self._registry.submit_register(
            endpoint, lifetime=lifetime, lwm2m_version=version, binding=binding,
            object_links=links, host=host, port=port,
        )
        if who is not None:
            self._admission.bind(endpoint, host, port)
        return aiocoap.Message(code=Code.CREATED, location_path=("rd", reg.reg_id))

    def _update(self, request: aiocoap.Message, reg: Registration,
                who: str | None) -> aiocoap.Message:
        query = _query(request)
        lt = query.get("lt")
        b = query.get("b")
        links = self._links(request)
        host, port = peer_address(request.remote)
        if who is not None:
            self._admission.bind(who, host, port)
        self._registry.update(
            reg.reg_id, host=host, port=port,
            lifetime=None if lt is None else _lifetime(lt),
            binding=None if b is None else _binding(b),
            object_links=links,
        )
        return aiocoap.Message(code=Code.CHANGED)

    def _links(self, request: aiocoap.Message) -> str | None:
        """The object-links payload as text (None when absent); 4.13 over the bound."""
        if len(request.payload) > self._max_links:
            raise LinksTooLarge(f"object links over {self._max_links} bytes",
                                self._max_links)
        return _links(request)

    def _deregister(self, reg_id: str) -> aiocoap.Message:
        self._registry.deregister(reg_id)
        return aiocoap.Message(code=Code.DELETED)

    async def _send(self, request: aiocoap.Message, who: str | None) -> aiocoap.Message:
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
        if who is not None:  # verified: the context's registration, from any address
            reg = self._registry.sender_endpoint(who)
            host, port = peer_address(request.remote)
            if (reg.host, reg.port) != (host, port):
                self._admission.bind(who, host, port)
                reg = self._registry.update(reg.reg_id, host=host, port=port)
            records = self.decode_records(int(cf), payload)
        else:
            reg, records = self.decode_send(peer_address(request.remote), int(cf), payload)
        await self._registry.submit_send(
            reg, token=request.token, content_format=int(cf), payload=payload,
            records=records,
        )
        return aiocoap.Message(code=Code.CHANGED)

    def decode_send(self, peer: tuple[str, int], cf: int,
                    payload: bytes) -> tuple[Registration, list[Record]]:
        """The registration of an unprotected Send's sender and its records
        (Content-Format ``cf``, one the Send takes); raises the ``RequestError`` to
        answer with. The fast path (coap/fastsend.py) comes here too."""
        if self._admission.secure:
            raise Unauthorized("OSCORE required: this gateway takes protected requests only")
        reg = self._registry.sender(*peer)
        self._unprotected(reg.endpoint)
        return reg, self.decode_records(cf, payload)

    def decode_records(self, cf: int, payload: bytes) -> list[Record]:
        """The records of a Send's payload; raises the ``RequestError`` to answer with."""
        if len(payload) > self._max_payload:
            raise RequestEntityTooLarge(f"payload over {self._max_payload} bytes")
        if cf in DECODERS:  # SenML: the hot path, straight to the decoder
            return DECODERS[cf](payload, max_records=self._max_records)
        return codecs.decode(cf, payload, "/", self._objects, max_records=self._max_records)


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
