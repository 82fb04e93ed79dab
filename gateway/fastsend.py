"""The LwM2M Send fast path: the gateway's hottest request served off the UDP socket.

A node reports with a confirmable ``POST /dp`` (SenML-CBOR or SenML-JSON, one datagram).
aiocoap spends more time on such a request than the gateway does (decoding every option
into objects, deduplication, the token and request layers, a task per request, the
response ``Message``): about 300 us of the 600 us a Send cost. ``FastSend`` takes the
datagram as the UDP transport hands it over, and when it is exactly that shape — CoAP
version 1, CON, POST, a token of at most 8 bytes, options Uri-Path ``dp`` and
Content-Format 110/112 only, a payload — from a registered address, and not a duplicate,
it decodes and stores the Send through the same code as the ``/dp`` resource
(``LwM2MResource.decode_send``, ``Registry.submit_send``: group commit) and answers the
piggybacked 2.04 itself once the COMMIT is done. Its key and answer go into the same
deduplication cache (``coapmsg.DedupCache``) aiocoap's layer uses, so a retransmission
gets the same bytes whichever path served the original.

Everything else goes to aiocoap unchanged: other requests and message types, Block1,
unknown options, a sender without a registration, a payload the decoder refuses (the
resource then answers 4.04 / 4.00 / 4.13 as before), duplicates. A Send whose storing
fails is answered 5.00, as the resource does. It is installed only with the compact
deduplication cache (``[coap] compact_dedup``) and without security (OSCORE would wrap
the request), and can be turned off (``[coap] fast_send``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from .coapmsg import udp_key
from .errors import RequestError
from .lwm2m import LwM2MResource, sockaddr_peer
from .registry import Registry
from .senml import DECODERS

__all__ = ["FastSend", "parse_send"]

log = logging.getLogger("aiotkit.gateway.coap")

_CON = 0
_POST = 0x02
_CHANGED = 0x44
_SERVER_ERROR = 0xA0
_URI_PATH = 11
_CONTENT_FORMAT = 12


def parse_send(data: bytes) -> tuple[int, bytes, int, memoryview] | None:
    """(MID, token, Content-Format, payload) of a datagram that is a confirmable
    ``POST /dp`` with only Uri-Path and Content-Format options (110 or 112) and a
    payload; None for anything else (well-formed or not: aiocoap judges those)."""
    n = len(data)
    if n < 5:
        return None
    b0 = data[0]
    tkl = b0 & 0x0F
    if b0 & 0xF0 != 0x40 | _CON << 4 or tkl > 8 or data[1] != _POST:
        return None
    pos = 4 + tkl
    number = 0
    path = 0
    cf = -1
    while pos < n:
        byte = data[pos]
        if byte == 0xFF:
            pos += 1
            break
        delta = byte >> 4
        length = byte & 0x0F
        pos += 1
        if delta == 13:
            if pos >= n:
                return None
            delta = data[pos] + 13
            pos += 1
        elif delta > 12:  # 14 (two bytes) is no option of ours, 15 is a format error
            return None
        if length > 12:  # values of Uri-Path "dp" and a Content-Format are short
            return None
        number += delta
        value = data[pos:pos + length]
        pos += length
        if pos > n:
            return None
        if number == _URI_PATH:
            if path or value != b"dp":
                return None
            path = 1
        elif number == _CONTENT_FORMAT:
            if cf >= 0 or length > 2:
                return None
            cf = int.from_bytes(value, "big")
        else:
            return None
    else:
        return None  # no payload marker: no payload
    if not path or cf not in DECODERS or pos >= n:
        return None
    mid = data[2] << 8 | data[3]
    return mid, bytes(data[4:4 + tkl]), cf, memoryview(data)[pos:]


class FastSend:
    """Serves Sends on one aiocoap UDP message interface (``install``; ``close``).

    ``cache``: the interface's deduplication cache (``coapmsg.DedupCache``); ``admit``:
    records a new key there (and keeps its expiry running), as aiocoap's layer does."""

    def __init__(self, interface: Any, resource: LwM2MResource, registry: Registry,
                 cache: Any, admit: Callable[[Any], None]) -> None:
        self._iface = interface
        self._resource = resource
        self._registry = registry
        self._cache = cache
        self._admit = admit
        self._slow = interface.datagram_msg_received
        self.served = 0  # Sends answered here (tests, benchmarks)
        self._closed = False
        interface.datagram_msg_received = self._received

    def close(self) -> None:
        """Before the context shuts down: datagrams go to aiocoap, no answer leaves."""
        self._closed = True
        if self._iface.__dict__.get("datagram_msg_received") == self._received:
            del self._iface.datagram_msg_received

    def _received(self, data: bytes, ancdata: list[Any], flags: int, address: Any) -> None:
        try:
            taken = self._take(data, ancdata, address)
        except Exception:  # a bug here must not cost the Send: aiocoap serves it
            log.exception("Send fast path failed; passing the datagram to aiocoap")
            taken = False
        if not taken:
            self._slow(data, ancdata, flags, address)

    def _take(self, data: bytes, ancdata: list[Any], address: Any) -> bool:
        parsed = parse_send(data)
        if parsed is None or type(address) is not tuple or len(address) != 4:
            return False
        mid, token, cf, payload = parsed
        key = udp_key(address, mid)
        if self._cache.get(key, False) is not False:
            return False  # a duplicate: aiocoap's layer answers it from the cache
        peer = sockaddr_peer(address)
        if peer is None:
            return False
        body = bytes(payload)
        try:
            reg, records = self._resource.decode_send(peer, cf, body)
        except RequestError:
            return False  # the resource answers it (4.04, 4.00, 4.13)
        self._admit(key)
        future = self._registry.submit_send(reg, token=token, content_format=cf,
                                            payload=body, records=records)
        pktinfo = [a for a in ancdata if a[0] == socket.IPPROTO_IPV6
                   and a[1] == socket.IPV6_PKTINFO][:1]
        head = bytes((0x60 | len(token), _CHANGED, mid >> 8, mid & 0xFF)) + token
        future.add_done_callback(
            lambda f: self._answer(f, head, key, pktinfo, address, reg.endpoint))
        return True

    def _answer(self, future: asyncio.Future[Any], head: bytes, key: Any,
                pktinfo: list[Any], address: Any, endpoint: str) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("Send from ep=%s not stored: %s", endpoint, exc)
            head = head[:1] + bytes((_SERVER_ERROR,)) + head[2:]
        self._cache.respond(key, head)
        if self._closed:
            return  # shut down: the client retransmits to the next gateway
        # the transport reports a failed sendmsg to the interface (error_received), as
        # for aiocoap's own answers; the client then retransmits and the cache answers
        self._iface.transport.sendmsg(head, pktinfo, 0, address)
        self.served += 1
