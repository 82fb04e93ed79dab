"""The Notification fast path: Observe Notifications served off the UDP socket.

A node reports an observed value with a Notification (RFC 7641): a 2.05 response
carrying the observation's token and an Observe value. aiocoap takes such a datagram
through its message, token and observation layers before ``DeviceManagement`` stores
it. ``FastNotify`` takes it as the UDP transport hands it over when it is exactly that
shape — CoAP version 1, CON or NON, a 2.xx code, options Observe, Content-Format and
Max-Age only, a payload — and its (host, port, token) is a live observation's in
``DeviceManagement`` (``take_notification``). It is stored through the same code as
aiocoap's path (decoded by the observation's path, ``Registry.submit_send``: group
commit, linked in ``dm_notifications``), and one older than the last seen for that
observation (RFC 7641 §3.4: 2^23 / 128 s) is dropped, as aiocoap does.

A CON Notification is acknowledged with the empty ACK aiocoap sends (the same four
bytes) but only after the COMMIT: aiocoap ACKs at once, so a power cut between its
ACK and the COMMIT lost the value; here the node keeps retransmitting until it is on
disk. The ACK goes into the deduplication cache under the same (remote, MID) key
aiocoap's layer uses (``coapmsg.DedupCache``): a retransmission gets it again and is
not stored twice; one that comes while the COMMIT runs is dropped. A Notification
whose storing fails is logged and not answered: the node retransmits it and the
retransmission is stored again (an RST would end the observation on the node). A NON
is stored the same way and never answered.

Everything else goes to aiocoap unchanged: requests, other codes and options (Block2),
no payload, a token that is no live observation's (after a cancel aiocoap answers RST),
an endpoint whose registration is not live. It is installed like ``FastSend`` (compact
deduplication cache, no security) and can be turned off (``[coap] fast_notify``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Hashable
from typing import Any

from .coapmsg import udp_key
from .dm import DeviceManagement

__all__ = ["FastNotify", "parse_notification"]

log = logging.getLogger("aiotkit.gateway.coap")

_CON = 0
_NON = 1
_ACK = 0x60  # version 1, type ACK, no token (RFC 7252 §3); code 0.00 follows
_OBSERVE = 6  # RFC 7641 §2
_CONTENT_FORMAT = 12
_MAX_AGE = 14
_LONGEST = {_OBSERVE: 3, _CONTENT_FORMAT: 2, _MAX_AGE: 4}  # the options taken, their
# longest values (RFC 7252 §5.10, RFC 7641 §2)
_RETRY_MAX = 1024  # failed CON Notifications whose retransmission is stored again
_NEW = object()


def _options(data: bytes, pos: int) -> tuple[list[tuple[int, int, int]], int] | None:
    """The options from ``pos`` on, as (number, value start, value end), and where the
    payload starts (``len(data)``: none); None if malformed, or if a value is longer
    than 12 bytes or a delta needs two extension bytes (no option taken here does)."""
    n = len(data)
    number = 0
    found = []
    while pos < n:
        byte = data[pos]
        if byte == 0xFF:
            return found, pos + 1
        delta = byte >> 4
        ext = delta == 13  # one more byte: the delta - 13 (RFC 7252 §3.1)
        pos += 1
        if delta > 13 or byte & 0x0F > 12 or pos + ext > n:
            return None
        number += data[pos] + 13 if ext else delta
        pos += ext
        end = pos + (byte & 0x0F)
        if end > n:
            return None
        found.append((number, pos, end))
        pos = end
    return found, n


def parse_notification(
        data: bytes) -> tuple[int, int, bytes, int | None, int, memoryview] | None:
    """(type, MID, token, Content-Format or None, Observe, payload) of a datagram that
    is a CON or NON 2.xx response with an Observe option, no options but Content-Format
    and Max-Age besides, and a payload; None for anything else (aiocoap judges those)."""
    if len(data) < 5 or data[1] >> 5 != 2:
        return None
    b0 = data[0]
    tkl = b0 & 0x0F
    mtype = b0 >> 4 & 0x03
    if b0 >> 6 != 1 or mtype > _NON or tkl > 8:
        return None
    walked = _options(data, 4 + tkl)
    if walked is None or walked[1] >= len(data):  # no payload
        return None
    values: dict[int, int] = {}
    for number, start, end in walked[0]:
        if number not in _LONGEST or end - start > _LONGEST[number] or number in values:
            return None
        values[number] = int.from_bytes(data[start:end], "big")
    if _OBSERVE not in values:
        return None
    return (mtype, data[2] << 8 | data[3], bytes(data[4:4 + tkl]),
            values.get(_CONTENT_FORMAT), values[_OBSERVE], memoryview(data)[walked[1]:])


class FastNotify:
    """Serves Notifications on one aiocoap UDP message interface (``close``).

    ``cache`` and ``admit``: the interface's deduplication cache and its recorder, as
    for ``FastSend``. Install it after ``FastSend`` on the same interface (it passes
    what it does not take to whatever served the datagrams before it)."""

    def __init__(self, interface: Any, dm: DeviceManagement, cache: Any,
                 admit: Callable[[Any], None]) -> None:
        self._iface = interface
        self._dm = dm
        self._cache = cache
        self._admit = admit
        self._retry: dict[Hashable, None] = {}  # keys of CONs whose storing failed
        self._own = "datagram_msg_received" in interface.__dict__
        self._slow = interface.datagram_msg_received
        self.served = 0  # Notifications taken here, not their retransmissions (tests)
        self._closed = False
        interface.datagram_msg_received = self._received

    def close(self) -> None:
        """Before the context shuts down: datagrams go on as before, no answer leaves."""
        self._closed = True
        if self._iface.__dict__.get("datagram_msg_received") == self._received:
            if self._own:
                self._iface.datagram_msg_received = self._slow
            else:
                del self._iface.datagram_msg_received

    def _received(self, data: bytes, ancdata: list[Any], flags: int, address: Any) -> None:
        parsed = parse_notification(data)  # a Send or a request fails here, cheaply
        if parsed is not None and type(address) is tuple and len(address) == 4:
            try:
                if self._take(parsed, ancdata, address):
                    return
            except Exception:  # a bug here must not cost the Notification: aiocoap's
                log.exception("Notification fast path failed; passing the datagram on")
        self._slow(data, ancdata, flags, address)

    def _take(self, parsed: tuple[int, int, bytes, int | None, int, memoryview],
              ancdata: list[Any], address: Any) -> bool:
        mtype, mid, token, cf, seq, payload = parsed
        key = udp_key(address, mid) if mtype == _CON else None
        retry = False
        if key is not None:
            found = self._cache.get(key, _NEW)
            if found is not _NEW:
                if found is not None:  # a retransmission of one ACKed: the same ACK
                    if not self._closed:
                        self._send(found, ancdata, address)
                    return True
                if key not in self._retry:
                    return True  # its COMMIT still runs: dropped, as aiocoap's layer does
                retry = True
        future = self._dm.take_notification((address[0], address[1], token), cf,
                                            bytes(payload), seq, ordered=not retry)
        if future is None:
            return False
        if retry:
            del self._retry[key]
        else:
            self.served += 1
            if key is not None:
                self._admit(key)
        ack = bytes((_ACK, 0, mid >> 8, mid & 0xFF))
        future.add_done_callback(lambda f: self._answer(f, key, ack, ancdata, address))
        return True

    def _answer(self, future: asyncio.Future[Any], key: Hashable | None, ack: bytes,
                ancdata: list[Any], address: Any) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:  # DeviceManagement logged it
            if key is not None:  # no answer: the node retransmits, and that is stored
                self._retry[key] = None
                if len(self._retry) > _RETRY_MAX:
                    del self._retry[next(iter(self._retry))]
            return
        if key is None:
            return
        self._cache.respond(key, ack)
        if not self._closed:
            self._send(ack, ancdata, address)

    def _send(self, data: bytes, ancdata: list[Any], address: Any) -> None:
        # from the address the Notification came to (aiocoap answers the same way)
        pktinfo = [a for a in ancdata if a[0] == socket.IPPROTO_IPV6
                   and a[1] == socket.IPV6_PKTINFO][:1]
        self._iface.transport.sendmsg(data, pktinfo, 0, address)
