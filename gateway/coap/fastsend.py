"""The LwM2M Send fast path: the gateway's hottest request served off the UDP socket.

A node reports with a confirmable ``POST /dp`` (SenML-CBOR or SenML-JSON, one datagram).
aiocoap spends more time on such a request than the gateway does (decoding every option
into objects, deduplication, the token and request layers, a task per request, the
response ``Message``): most of what a Send costs (``tools/bench/gateway.py`` measures
both paths). ``FastSend`` takes the datagram as the hook parsed it, and when it is
exactly that shape — CoAP
version 1, CON, POST, a token of at most 8 bytes, options Uri-Path ``dp`` and
Content-Format 110/112 only, a payload — from a registered address, and not a duplicate,
it decodes and stores the Send through the same code as the ``/dp`` resource
(``LwM2MResource.decode_send``, ``Registry.submit_send``: group commit) and answers the
piggybacked 2.04 itself once the COMMIT is done. Its key and answer go into the same
deduplication cache (``coap.dedup.DedupCache``) aiocoap's layer uses, so a
retransmission gets the same bytes whichever path served the original.

Everything else goes to aiocoap unchanged: other requests and message types, Block1,
unknown options, a sender without a registration, a payload the decoder refuses (the
resource then answers 4.04 / 4.00 / 4.13 as before), duplicates. A Send whose storing
fails is answered 5.00, as the resource does. It is a ``FastPath`` of the datagram hook
(``coap.layer``), which offers it no protected (OSCORE) datagram; it needs the compact
deduplication cache (``[coap] compact_dedup``) and can be turned off (``[coap]
fast_send``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

from ..errors import RequestError
from ..lwm2m.registry import Registry
from ..lwm2m.senml import DECODERS
from ..lwm2m.server import LwM2MResource, sockaddr_peer
from ..storage.api import SendResult
from . import wire
from .layer import Ancdata, DatagramHook, Sockaddr

__all__ = ["FastSend", "parse_send"]

log = logging.getLogger("aiotkit.gateway.coap")

_SEND_OPTIONS = 2  # Uri-Path "dp", Content-Format


def send_fields(msg: wire.Datagram) -> tuple[int, bytes] | None:
    """(Content-Format, payload) of a confirmable ``POST /dp`` with only the options
    Uri-Path ``dp`` and Content-Format 110 or 112, and a payload; None otherwise."""
    if msg.mtype != wire.CON or msg.code != wire.POST or not msg.payload:
        return None
    opts = msg.options
    if len(opts) != _SEND_OPTIONS or opts[0] != (wire.URI_PATH, b"dp"):
        return None
    number, value = opts[1]
    if number != wire.CONTENT_FORMAT or len(value) > 2:
        return None
    cf = wire.option_uint(value)
    if cf not in DECODERS:
        return None
    return cf, msg.payload


def parse_send(data: bytes) -> tuple[int, bytes, int, bytes] | None:
    """(MID, token, Content-Format, payload) of a datagram ``send_fields`` takes; None for
    anything else, well-formed or not (aiocoap judges those)."""
    try:
        msg = wire.parse(data)
    except wire.WireError:
        return None
    fields = send_fields(msg)
    if fields is None:
        return None
    return msg.mid, msg.token, fields[0], fields[1]


class FastSend:
    """Serves Sends offered by one interface's datagram ``hook`` (``coap.layer``)."""

    def __init__(self, hook: DatagramHook, resource: LwM2MResource,
                 registry: Registry) -> None:
        self._hook = hook
        self._resource = resource
        self._registry = registry
        self.served = 0  # Sends answered here (tests, benchmarks)

    def take(self, msg: wire.Datagram, ancdata: Ancdata, address: Sockaddr) -> bool:
        fields = send_fields(msg)
        if fields is None:
            return False
        cf, body = fields
        hook = self._hook
        key = wire.dedup_key(address, msg.mid)
        if hook.cache.get(key, False) is not False:
            return False  # a duplicate: aiocoap's layer answers it from the cache
        peer = sockaddr_peer(address)
        if peer is None:
            return False
        try:
            reg, records = self._resource.decode_send(peer, cf, body)
        except RequestError:
            return False  # the resource answers it (4.04, 4.00, 4.13)
        hook.admit(key)
        token = msg.token
        future = self._registry.submit_send(reg, token=token, content_format=cf,
                                            payload=body, records=records)
        head = wire.build(wire.ACK, wire.CHANGED, msg.mid, token)
        future.add_done_callback(
            lambda f: self._answer(f, head, key, ancdata, address, reg.endpoint))
        return True

    def _answer(self, future: asyncio.Future[SendResult], head: bytes, key: Hashable,
                ancdata: Ancdata, address: Sockaddr, endpoint: str) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        code = wire.CHANGED
        if exc is not None:
            log.error("Send from ep=%s not stored: %s", endpoint, exc)
            code = wire.INTERNAL_SERVER_ERROR
            head = head[:1] + bytes((code,)) + head[2:]
        self._hook.cache.respond(key, code)  # the ACK echoes MID and token: its code
        if self._hook.closed:
            return  # shut down: the client retransmits to the next gateway
        # a failed send: the client retransmits and the cache answers
        self._hook.send(head, ancdata, address)
        self.served += 1
