"""The gateway's CoAP message layer: aiocoap's, adjusted, and the datagram hook.

aiocoap serves CoAP over UDP (RFC 7252): message layer (retransmission, deduplication),
token layer, request layer, the LwM2M resource (``lwm2m.server``). Three adjustments sit
in its message layer, each on one context's instances (never the class):

**The datagram hook** (``DatagramHook``, one per UDP interface) is the one place that
intercepts datagrams before aiocoap. The UDP transport hands every received datagram to
the interface's ``datagram_msg_received``; the hook takes that call, parses the datagram
once (``coap.wire.parse``) and offers it to its fast paths in order. A fast path
implements ``FastPath``: ``take(msg, ancdata, address)`` serves the datagram and returns
True, or returns False and aiocoap gets it unchanged. A malformed datagram, one from an
address that is not a plain UDP socket address, and one carrying OSCORE (see
``coap.wire``) are never offered. The fast paths answer through ``send`` (from the
local address the datagram came to, as aiocoap answers) and share the compact
deduplication cache (``cache``, ``admit``) with aiocoap's layer. Today's fast paths:
``coap.fastsend`` (LwM2M Send) and ``coap.fastnotify`` (Observe Notifications).

**Compact deduplication** (§4.5, ``[coap] compact_dedup``): ``coap.dedup.DedupCache``
in place of aiocoap's per-exchange ``Message`` and timer. Semantics are aiocoap's: a
duplicate CON gets the same bytes again (piggybacked response or empty ACK) or, while
the handler still runs, nothing; a duplicate NON is dropped; the handler never runs
twice. The datagram hook needs it (fast paths record their exchanges there).

**Abandoned requests stop retransmitting.** ``TokenInterface.send_message`` may return a
canceller that the token layer calls when the request loses interest, but aiocoap's
``MessageManager`` returns none: a request given up on (a timeout) keeps being
retransmitted for MAX_TRANSMIT_WAIT (93 s), and with NSTART = 1 every later CON to that
peer waits behind it, then fails with it. ``MessageLayer`` supplies the canceller: it
ends the exchange (or drops the message from the backlog) and the next one goes out.

All three touch private parts of ``aiocoap.messagemanager.MessageManager`` and its UDP
message interface. They are installed only on aiocoap 0.4.7 up to (not including) 0.5
whose internals were read (0.4.7 and 0.4.17: ``_recent_messages``,
``_deduplicate_message``, ``_store_response_for_duplicates``, ``_active_exchanges``,
``_backlogs``, ``_continue_backlog``, ``message_interface.datagram_msg_received``) and
only when those attributes exist; otherwise ``install`` logs one line and the context
keeps aiocoap's behaviour (and no fast path runs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from . import wire
from .aio import MessageManager as _MessageManager
from .aio import Type, UDP6EndpointAddress, aiocoap
from .dedup import DedupCache

__all__ = ["DatagramHook", "FastPath", "MessageLayer", "install", "supported"]

Sockaddr = tuple[Any, ...]  # an IPv6 socket address: (host, port, flowinfo, scope id)
Ancdata = list[tuple[int, int, bytes]]  # recvmsg's ancillary data (IPV6_PKTINFO)

log = logging.getLogger("aiotkit.gateway.coap")

_CHECKED = ((0, 4, 7), (0, 5))  # aiocoap versions whose MessageManager was read
_INTERNALS = ("_recent_messages", "_deduplicate_message", "_store_response_for_duplicates",
              "_active_exchanges", "_backlogs", "_continue_backlog", "message_interface")
_CON = Type.CON
_NEW = object()


def _version(text: str) -> tuple[int, ...]:
    """``0.4.17`` -> (0, 4, 17); () for what does not start with a release number."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups("0")) if m else ()


def supported(version: str | None = None) -> bool:
    """Whether this aiocoap version is one whose message-layer internals were checked."""
    v = _version(aiocoap.meta.version if version is None else version)
    return _CHECKED[0] <= v < _CHECKED[1]


def _key(message: aiocoap.Message) -> Hashable:
    """(remote, MID), small: a UDP remote compares by host, port and flow label only
    (``UDP6EndpointAddress`` docs), so those stand for it, the host string shared."""
    remote = message.remote
    if type(remote) is UDP6EndpointAddress:
        return wire.dedup_key(remote.sockaddr, message.mid)
    return remote, message.mid


class _Dedup:
    """``DedupCache`` in place of one ``MessageManager``'s stock deduplication."""

    def __init__(self, mman: Any, cache: DedupCache, loop: asyncio.AbstractEventLoop):
        self._mman = mman
        self.cache = cache
        self._loop = loop
        self._sweep: asyncio.TimerHandle | None = None
        mman._deduplicate_message = self.deduplicate
        mman._store_response_for_duplicates = self.store_response

    def deduplicate(self, message: aiocoap.Message) -> bool:
        """aiocoap's ``_deduplicate_message``: True if ``message`` is a duplicate."""
        cache = self.cache
        cache.expire()
        key = _key(message)
        found = cache.get(key, _NEW)
        if found is _NEW:
            self.admit(key)
            return False
        if message.mtype is not _CON:
            log.info("Duplicate NON, ACK or RST received")
        elif not isinstance(found, bytes):
            log.info("Duplicate CON received, no response to send yet")
        else:
            log.info("Duplicate CON received, sending old response again")
            self._mman.message_interface.send(_outgoing(found, message.remote))
        return True

    def admit(self, key: Hashable) -> None:
        """Remember a new exchange ``key`` (no response yet); keeps expiry running."""
        self.cache.add(key)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self.cache.step, self._swept)

    def store_response(self, message: aiocoap.Message) -> None:
        """aiocoap's ``_store_response_for_duplicates``: keep the bytes, not the Message."""
        key = _key(message)
        if self.cache.waiting(key):
            self.cache.respond(key, message.encode())

    def _swept(self) -> None:
        self._sweep = None
        if self.cache.expire() is not None:
            self._sweep = self._loop.call_later(self.cache.step, self._swept)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.cache.clear()


class FastPath(Protocol):
    """A server of one kind of plain datagram below aiocoap, offered datagrams by a
    ``DatagramHook`` (``coap.fastsend``, ``coap.fastnotify``)."""

    served: int  # datagrams it served (tests, benchmarks)

    def take(self, msg: wire.Datagram, ancdata: Ancdata, address: Sockaddr) -> bool:
        """Serve ``msg`` from ``address`` and return True, or return False and leave it to
        aiocoap, unchanged. Raising is a bug: the hook logs it and aiocoap gets the
        datagram."""
        ...


class DatagramHook:
    """The one place a UDP interface's datagrams are intercepted before aiocoap (module
    docstring). ``add`` fast paths; ``close()`` before the context shuts down."""

    def __init__(self, interface: Any, dedup: _Dedup) -> None:
        self._iface = interface
        self._dedup = dedup
        self.cache: DedupCache = dedup.cache
        self.closed = False  # shut down: fast paths store nothing more, answer nothing
        self._paths: list[FastPath] = []
        self._slow: Callable[[bytes, Ancdata, int, Sockaddr], None] = (
            interface.datagram_msg_received)
        interface.datagram_msg_received = self._received

    def add(self, path: FastPath) -> None:
        """Offer datagrams to ``path`` after the paths added before it."""
        self._paths.append(path)

    def admit(self, key: Hashable) -> None:
        """Record a new exchange ``key`` (no response yet), as a request aiocoap
        receives is recorded; keeps the cache's expiry running."""
        self._dedup.admit(key)

    def send(self, data: bytes, ancdata: Ancdata, address: Sockaddr) -> None:
        """Send ``data`` to ``address`` from the local address a datagram with
        ``ancdata`` came to (aiocoap answers the same way). A failed ``sendmsg`` reaches
        the interface's ``error_received``, as for aiocoap's own answers."""
        pktinfo = [a for a in ancdata if a[0] == socket.IPPROTO_IPV6
                   and a[1] == socket.IPV6_PKTINFO][:1]
        self._iface.transport.sendmsg(data, pktinfo, 0, address)

    def close(self) -> None:
        """Datagrams go straight to aiocoap again; no fast path answers any more."""
        self.closed = True
        self._paths.clear()
        if self._iface.__dict__.get("datagram_msg_received") == self._received:
            del self._iface.datagram_msg_received

    def _received(self, data: bytes, ancdata: Ancdata, flags: int,
                  address: Sockaddr) -> None:
        if self._paths and type(address) is tuple and len(address) == 4:
            try:
                msg = wire.parse(data)
            except wire.WireError:  # aiocoap judges (and logs) malformed datagrams
                msg = None
            if msg is not None and not msg.protected:
                for path in self._paths:
                    try:
                        if path.take(msg, ancdata, address):
                            return
                    except Exception:  # a bug there must not cost the datagram
                        log.exception("fast path %s failed; passing the datagram to"
                                      " aiocoap", type(path).__name__)
                        break
        self._slow(data, ancdata, flags, address)


class MessageLayer:
    """The adjustments on one ``MessageManager``; ``close()`` when its context is shut."""

    def __init__(self, mman: Any, cache: DedupCache | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._mman = mman
        mman.send_message = functools.partial(self._send_message, mman.send_message)
        self._dedup = _Dedup(mman, cache, loop) if cache is not None else None
        # the hook needs the compact cache: fast paths record their exchanges there
        self.hook = (DatagramHook(mman.message_interface, self._dedup)
                     if self._dedup is not None else None)

    @property
    def dedup(self) -> DedupCache | None:
        """The deduplication cache (None: aiocoap's own is in use)."""
        return self._dedup.cache if self._dedup is not None else None

    def close(self) -> None:
        if self.hook is not None:
            self.hook.close()
        if self._dedup is not None:
            self._dedup.close()

    def _send_message(self, send: Callable[..., Any], message: aiocoap.Message,
                      messageerror_monitor: Callable[[], None]) -> Callable[[], None] | None:
        """``send_message`` with the canceller the token layer calls on loss of interest."""
        canceller: Callable[[], None] | None = send(message, messageerror_monitor)
        if canceller is None and message.mtype is _CON and message.code.is_request():
            return functools.partial(self._abandon, message)
        return canceller

    def _abandon(self, message: aiocoap.Message) -> None:
        """Stop retransmitting ``message`` (or drop it from the backlog); next one goes."""
        mman = self._mman
        exchanges = mman._active_exchanges
        if exchanges is None:  # shut down
            return
        remote = message.remote
        entry = exchanges.pop((remote, message.mid), None)
        if entry is not None:
            entry[1].cancel()
            log.debug("Abandoned exchange, message ID: %d", message.mid)
            mman._continue_backlog(remote)
            return
        backlog = mman._backlogs.get(remote)
        if backlog:
            backlog[:] = [item for item in backlog if item[0] is not message]


def _outgoing(data: bytes, remote: Any) -> aiocoap.Message:
    """``data``, a datagram this layer encoded before, as a message to send again."""
    msg = aiocoap.Message.decode(data, remote)
    direction = getattr(aiocoap.message, "Direction", None)  # 0.4.8 on: decode marks it
    if direction is not None:
        msg.direction = direction.OUTGOING
    return msg


def _message_managers(ctx: aiocoap.Context) -> list[Any]:
    found = []
    for ri in ctx.request_interfaces:
        mman = getattr(ri, "token_interface", None)
        if type(mman) is _MessageManager:
            found.append(mman)
    return found


def install(ctx: aiocoap.Context, *, compact_dedup: bool = True,
            lifetime: float | None = None,
            clock: Callable[[], float] | None = None) -> list[MessageLayer]:
    """Adjust every UDP message layer of ``ctx``; [] (and one log line) if unsupported.

    ``lifetime`` defaults to aiocoap's EXCHANGE_LIFETIME; ``clock`` to the loop's time.
    """
    mmans = _message_managers(ctx)
    version = aiocoap.meta.version
    missing = sorted({a for m in mmans for a in _INTERNALS if not hasattr(m, a)})
    if not supported(version) or missing:
        why = f"missing {', '.join(missing)}" if missing else "internals not checked"
        log.warning("aiocoap %s: %s; keeping its stock deduplication (about 3.4 kB per"
                    " exchange for 247 s) and retransmission of abandoned requests",
                    version, why)
        return []
    loop = asyncio.get_running_loop()
    life = wire.EXCHANGE_LIFETIME if lifetime is None else lifetime
    return [MessageLayer(m, DedupCache(life, clock or loop.time) if compact_dedup else None,
                         loop) for m in mmans]
