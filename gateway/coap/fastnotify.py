"""The Notification fast path: Observe Notifications served off the UDP socket.

A node reports an observed value with a Notification (RFC 7641): a 2.05 response
carrying the observation's token and an Observe value. aiocoap takes such a datagram
through its message, token and observation layers before ``DeviceManagement`` stores
it. ``FastNotify`` takes it as the datagram hook (``coap.layer``) parsed it when it is
exactly that shape — CoAP version 1, CON or NON, a 2.xx code, options Observe, Content-Format and
Max-Age only, a payload — and its (host, port, token) is a live observation's in
``DeviceManagement`` (``take_notification``). It is stored through the same code as
aiocoap's path (decoded by the observation's path, ``Registry.submit_send``: group
commit, linked in ``dm_notifications``), and one older than the last seen for that
observation (RFC 7641 §3.4: 2^23 / 128 s) is dropped, as aiocoap does.

A CON Notification is acknowledged with the empty ACK aiocoap sends (the same four
bytes) but only after the COMMIT: aiocoap ACKs at once, so a power cut between its
ACK and the COMMIT lost the value; here the node keeps retransmitting until it is on
disk. The ACK goes into the deduplication cache under the same (remote, MID) key
aiocoap's layer uses (``coap.dedup.DedupCache``): a retransmission gets it again and is
not stored twice; one that comes while the COMMIT runs is dropped. A Notification
whose storing fails is logged and not answered: the node retransmits it and the
retransmission is stored again (an RST would end the observation on the node). A NON
is stored the same way and never answered.

Everything else goes to aiocoap unchanged: requests, other codes and options (Block2),
no payload, a token that is no live observation's (after a cancel aiocoap answers RST),
an endpoint whose registration is not live. Like ``FastSend`` it is a ``FastPath`` of
the datagram hook, which offers it no protected (OSCORE) datagram; it needs the compact
deduplication cache and can be turned off (``[coap] fast_notify``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Any

from ..dm import DeviceManagement
from . import wire
from .dedup import echo
from .layer import Ancdata, DatagramHook, Sockaddr

__all__ = ["FastNotify", "parse_notification"]

log = logging.getLogger("aiotkit.gateway.coap")

# the options taken, and their longest values (RFC 7252 §5.10, RFC 7641 §2)
_LONGEST = {wire.OBSERVE: 3, wire.CONTENT_FORMAT: 2, wire.MAX_AGE: 4}
_RETRY_MAX = 1024  # failed CON Notifications whose retransmission is stored again
_NEW = object()
_SUCCESS = 2  # code class 2.xx

Notification = tuple[int | None, int, bytes]  # Content-Format, Observe, payload


def notification_fields(msg: wire.Datagram) -> Notification | None:
    """(Content-Format or None, Observe, payload) of a CON or NON 2.xx response with an
    Observe option, no options but Content-Format and Max-Age besides, and a payload;
    None for anything else."""
    if msg.code >> 5 != _SUCCESS or msg.mtype > wire.NON or not msg.payload:
        return None
    values: dict[int, int] = {}
    for number, value in msg.options:
        longest = _LONGEST.get(number)
        if longest is None or len(value) > longest or number in values:
            return None
        values[number] = wire.option_uint(value)
    if wire.OBSERVE not in values:
        return None
    return values.get(wire.CONTENT_FORMAT), values[wire.OBSERVE], msg.payload


def parse_notification(
        data: bytes) -> tuple[int, int, bytes, int | None, int, bytes] | None:
    """(type, MID, token, Content-Format or None, Observe, payload) of a datagram
    ``notification_fields`` takes; None for anything else (aiocoap judges those)."""
    try:
        msg = wire.parse(data)
    except wire.WireError:
        return None
    fields = notification_fields(msg)
    if fields is None:
        return None
    return (msg.mtype, msg.mid, msg.token, *fields)


class FastNotify:
    """Serves Notifications offered by one interface's datagram ``hook``."""

    def __init__(self, hook: DatagramHook, dm: DeviceManagement) -> None:
        self._hook = hook
        self._dm = dm
        self._retry: dict[Hashable, None] = {}  # keys of CONs whose storing failed
        self.served = 0  # Notifications taken here, not their retransmissions (tests)

    def take(self, msg: wire.Datagram, ancdata: Ancdata, address: Sockaddr) -> bool:
        fields = notification_fields(msg)  # a Send or a request fails here, cheaply
        if fields is None:
            return False
        cf, seq, payload = fields
        hook = self._hook
        key = wire.dedup_key(address, msg.mid) if msg.mtype == wire.CON else None
        retry = False
        if key is not None:
            found = hook.cache.get(key, _NEW)
            if found is not _NEW:
                if isinstance(found, int | bytes):  # one ACKed, again: the same ACK
                    data = echo(found, msg.mid, msg.token) if isinstance(found, int) else found
                    if not hook.closed:
                        hook.send(data, ancdata, address)
                    return True
                if key not in self._retry:
                    return True  # its COMMIT still runs: dropped, as aiocoap's layer does
                retry = True
        future = self._dm.take_notification((address[0], address[1], msg.token), cf,
                                            payload, seq, ordered=not retry)
        if future is None:
            return False
        if retry:
            del self._retry[key]
        else:
            self.served += 1
            if key is not None:
                hook.admit(key)
        ack = wire.empty_ack(msg.mid)
        future.add_done_callback(lambda f: self._answer(f, key, ack, ancdata, address))
        return True

    def _answer(self, future: asyncio.Future[Any], key: Hashable | None, ack: bytes,
                ancdata: Ancdata, address: Sockaddr) -> None:
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
        self._hook.cache.respond(key, wire.EMPTY)  # an empty ACK: kept as its code
        if not self._hook.closed:
            self._hook.send(ack, ancdata, address)
