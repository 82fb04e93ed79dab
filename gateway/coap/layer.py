"""The gateway's CoAP message layer: aiocoap's, adjusted, and the datagram hook.

aiocoap serves CoAP over UDP (RFC 7252): message layer (retransmission, deduplication),
token layer, request layer, the LwM2M resource (``lwm2m.server``). Three adjustments sit
in its message layer, and two more below (a kept token, a text-option guard), each on
one context's instances (never the class):

**The datagram hook** (``DatagramHook``, one per UDP interface) is the one place that
intercepts datagrams before aiocoap. The UDP transport hands every received datagram to
the interface's ``datagram_msg_received``; the hook takes that call, parses the datagram
once (``coap.wire.parse``) and offers it to its fast paths in order. A fast path
implements ``FastPath``: ``take(msg, ancdata, address)`` serves the datagram and returns
True, or returns False and aiocoap gets it unchanged. A malformed datagram and one
from an address that is not a plain UDP socket address are never offered. A datagram
carrying OSCORE (see ``coap.wire``) is offered only to the paths added with
``protected=True``, which verify it themselves (``coap.fastoscore``), a plain one only
to the others. The fast paths answer through ``send`` (from the local address the
datagram came to, as aiocoap answers) and share the compact deduplication cache
(``cache``, ``admit``) with aiocoap's layer. Today's fast paths: ``coap.fastsend``
(LwM2M Send) and ``coap.fastnotify`` (Observe Notifications), plain; ``coap.fastoscore``
(the protected LwM2M Send), protected.

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

All of them touch private parts of ``aiocoap.messagemanager.MessageManager``, its UDP
message interface and its ``TokenManager`` (``request``, ``next_token``). They are installed only on aiocoap 0.4.7 up to (not including) 0.5
whose internals were read (0.4.7 and 0.4.17: ``_recent_messages``,
``_deduplicate_message``, ``_store_response_for_duplicates``, ``_active_exchanges``,
``_backlogs``, ``_continue_backlog``, ``message_interface.datagram_msg_received``) and
only when those attributes exist; otherwise ``install`` logs one line and the context
keeps aiocoap's behaviour (and no fast path runs).

**A request may keep its token** (``keep_token``). aiocoap's token layer gives every
request a fresh token; a cancelling GET (Observe 1) must carry the token of the
observation it cancels (RFC 7641 §3.6), or a client that matches observations by token
keeps notifying. ``keep_token(message, token)`` marks a message (only that object, not
the copies blockwise makes) and the token layer's ``request`` sends it with that token.
Without the adjustments (an unchecked aiocoap) the mark is ignored: fresh token.

**Text options that are not UTF-8.** aiocoap decodes Uri-Path, Uri-Query and the other
string options as UTF-8 and raises on anything else, out of the transport's read
callback: a traceback at ERROR per datagram. The hook (installed with or without the
compact cache; fast paths only with it) checks what the fast paths left for aiocoap
(``wire.bad_text_option``): a CON request is answered 4.00, a CON response RST, a
NON/ACK/RST dropped, with one rate-limited log line (``logs.PeerLog``) and no traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from ..logs import PeerLog
from . import wire
from .aio import MessageManager as _MessageManager
from .aio import Type, UDP6EndpointAddress, aiocoap
from .blockwise import Block1Gate, BoundedSpool
from .dedup import DedupCache, echo

__all__ = ["DatagramHook", "FastPath", "MessageLayer", "install", "keep_token", "supported"]

Sockaddr = tuple[Any, ...]  # an IPv6 socket address: (host, port, flowinfo, scope id)
Ancdata = list[tuple[int, int, bytes]]  # recvmsg's ancillary data (IPV6_PKTINFO)

log = logging.getLogger("aiotkit.gateway.coap")
_peer_log = PeerLog(log)

_CHECKED = ((0, 4, 7), (0, 5))  # aiocoap versions whose MessageManager was read
_INTERNALS = ("_recent_messages", "_deduplicate_message", "_store_response_for_duplicates",
              "_active_exchanges", "_backlogs", "_continue_backlog", "message_interface")
_TOKEN_INTERNALS = ("request", "next_token")  # TokenManager: keep_token
_CON = Type.CON
_NEW = object()
_KEEP = "_aiot_keep_token"  # the mark keep_token sets on one message object


def keep_token(message: aiocoap.Message, token: bytes) -> None:
    """Send ``message`` (a request) with ``token`` rather than a fresh one (module
    docstring); the caller makes sure no other live request of its own uses it."""
    message.token = token
    setattr(message, _KEEP, token)


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
        elif isinstance(found, int):  # an ACK kept as its code (dedup.echo)
            log.info("Duplicate CON received, sending old response again")
            data = echo(found, message.mid, message.token)
            self._mman.message_interface.send(_outgoing(data, message.remote))
        elif isinstance(found, bytes):
            log.info("Duplicate CON received, sending old response again")
            self._mman.message_interface.send(_outgoing(found, message.remote))
        else:
            log.info("Duplicate CON received, no response to send yet")
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
    """A server of one kind of datagram below aiocoap, offered datagrams by a
    ``DatagramHook`` (``coap.fastsend``, ``coap.fastnotify``; protected:
    ``coap.fastoscore``)."""

    served: int  # datagrams it served (tests, benchmarks)

    def take(self, msg: wire.Datagram, ancdata: Ancdata, address: Sockaddr) -> bool:
        """Serve ``msg`` from ``address`` and return True, or return False and leave it to
        aiocoap, unchanged. Raising is a bug: the hook logs it and aiocoap gets the
        datagram."""
        ...


class DatagramHook:
    """The one place a UDP interface's datagrams are intercepted before aiocoap (module
    docstring). ``add`` fast paths; ``close()`` before the context shuts down."""

    def __init__(self, interface: Any, dedup: _Dedup | None) -> None:
        self._iface = interface
        self._dedup = dedup
        self.closed = False  # shut down: fast paths store nothing more, answer nothing
        self._paths: list[FastPath] = []  # offered plain datagrams
        self._protected: list[FastPath] = []  # offered OSCORE datagrams (coap.wire)
        self._slow: Callable[[bytes, Ancdata, int, Sockaddr], None] = (
            interface.datagram_msg_received)
        interface.datagram_msg_received = self._received

    @property
    def cache(self) -> DedupCache:
        """The compact deduplication cache the fast paths share with aiocoap's layer."""
        if self._dedup is None:
            raise RuntimeError("no compact deduplication cache: no fast path can run")
        return self._dedup.cache

    def add(self, path: FastPath, *, protected: bool = False) -> None:
        """Offer datagrams to ``path`` after the paths added before it: plain ones, or
        (``protected``) only those carrying OSCORE, which ``path`` verifies itself."""
        (self._protected if protected else self._paths).append(path)

    def admit(self, key: Hashable) -> None:
        """Record a new exchange ``key`` (no response yet), as a request aiocoap
        receives is recorded; keeps the cache's expiry running."""
        if self._dedup is not None:
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
        self._protected.clear()
        if self._iface.__dict__.get("datagram_msg_received") == self._received:
            del self._iface.datagram_msg_received

    def _received(self, data: bytes, ancdata: Ancdata, flags: int,
                  address: Sockaddr) -> None:
        try:
            msg: wire.Datagram | None = wire.parse(data)
        except wire.WireError:  # aiocoap judges (and logs) malformed datagrams
            msg = None
        if msg is not None:
            paths = self._protected if msg.protected else self._paths
            if paths and type(address) is tuple and len(address) == 4:
                for path in paths:
                    try:
                        if path.take(msg, ancdata, address):
                            return
                    except Exception:  # a bug there must not cost the datagram
                        log.exception("fast path %s failed; passing the datagram to"
                                      " aiocoap", type(path).__name__)
                        break
            # below the fast paths (which take only options they know): aiocoap raises
            # on a text option that is not UTF-8, with a traceback per datagram
            bad = wire.bad_text_option(msg)
            if bad is not None:
                self._refuse_text(msg, bad, ancdata, address)
                return
        self._slow(data, ancdata, flags, address)

    def _refuse_text(self, msg: wire.Datagram, option: int, ancdata: Ancdata,
                     address: Sockaddr) -> None:
        """A datagram with option ``option`` not UTF-8: a CON request is answered 4.00
        (piggybacked), a CON response RST, anything else dropped; one rate-limited line."""
        peer = address[0] if type(address) is tuple and address else address
        _peer_log.info("bad-utf8-option", "datagram from %s refused: option %d is not"
                       " UTF-8", peer, option)
        if self.closed or msg.mtype != wire.CON:
            return
        if 0 < msg.code < 32:  # a request (class 0, not Empty)
            answer = wire.build(wire.ACK, wire.BAD_REQUEST, msg.mid, msg.token,
                                payload=f"option {option} is not UTF-8".encode())
        else:
            answer = wire.build(wire.RST, wire.EMPTY, msg.mid)
        self.send(answer, ancdata, address)


class MessageLayer:
    """The adjustments on one ``MessageManager``; ``close()`` when its context is shut."""

    def __init__(self, mman: Any, cache: DedupCache | None,
                 loop: asyncio.AbstractEventLoop, tman: Any = None) -> None:
        self._mman = mman
        self._tman = tman
        mman.send_message = functools.partial(self._send_message, mman.send_message)
        if tman is not None:
            tman.request = functools.partial(self._request, tman.request)
        self._dedup = _Dedup(mman, cache, loop) if cache is not None else None
        # the hook guards aiocoap always; fast paths need the compact cache (they record
        # their exchanges there), so without it the hook is not offered to them
        self._hook = DatagramHook(mman.message_interface, self._dedup)
        self.hook = self._hook if self._dedup is not None else None
        self.guard = self._hook  # the hook, with or without the cache (Block1Gate)

    @property
    def dedup(self) -> DedupCache | None:
        """The deduplication cache (None: aiocoap's own is in use)."""
        return self._dedup.cache if self._dedup is not None else None

    def close(self) -> None:
        self._hook.close()
        if self._tman is not None and "request" in self._tman.__dict__:
            del self._tman.request
        if self._dedup is not None:
            self._dedup.close()

    def _request(self, request: Callable[[Any], None], pipe: Any) -> None:
        """The token layer's ``request``, sending a message marked by ``keep_token`` with
        its token (``next_token`` answers it, for this one call)."""
        token = getattr(pipe.request, _KEEP, None)
        if not token:
            request(pipe)
            return
        tman = self._tman
        tman.next_token = lambda: token
        try:
            request(pipe)
        finally:
            del tman.next_token

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


def _message_managers(ctx: aiocoap.Context) -> list[tuple[Any, Any]]:
    """(token manager, its message manager) of each UDP interface."""
    found = []
    for ri in ctx.request_interfaces:
        mman = getattr(ri, "token_interface", None)
        if type(mman) is _MessageManager:
            found.append((ri, mman))
    return found


def install(ctx: aiocoap.Context, *, compact_dedup: bool = True,
            lifetime: float | None = None,
            clock: Callable[[], float] | None = None) -> list[MessageLayer]:
    """Adjust every UDP message layer of ``ctx``; [] (and one log line) if unsupported.

    ``lifetime`` defaults to aiocoap's EXCHANGE_LIFETIME; ``clock`` to the loop's time.
    """
    managers = _message_managers(ctx)
    version = aiocoap.meta.version
    missing = sorted({a for _t, m in managers for a in _INTERNALS if not hasattr(m, a)}
                     | {a for t, _m in managers for a in _TOKEN_INTERNALS
                        if not hasattr(t, a)})
    if not supported(version) or missing:
        why = f"missing {', '.join(missing)}" if missing else "internals not checked"
        log.warning("aiocoap %s: %s; keeping its stock deduplication (about 3.4 kB per"
                    " exchange for 247 s) and retransmission of abandoned requests",
                    version, why)
        return []
    loop = asyncio.get_running_loop()
    life = wire.EXCHANGE_LIFETIME if lifetime is None else lifetime
    layers = [MessageLayer(m, DedupCache(life, clock or loop.time) if compact_dedup else None,
                           loop, t) for t, m in managers]
    # a burst (a flood of 1 KiB blocks, a fleet's reports at once) waits in the socket's
    # receive buffer while the loop is busy; the default (about 200 kB, some 180 such
    # datagrams) drops the fleet's Sends with it, and each drop costs a 2 s retransmission
    for _t, mman in managers:
        _grow_receive_buffer(mman.message_interface)
    # Block1 uploads the resource's bounded spool would refuse anyway are refused below
    # aiocoap (coap/blockwise.py), with or without the compact cache
    spool = getattr(ctx.serversite, "block1", None)
    if isinstance(spool, BoundedSpool):
        for layer in layers:
            layer.guard.add(Block1Gate(layer.guard, spool))
    return layers


RECEIVE_BUFFER = 4 << 20  # bytes asked for; Linux caps it at net.core.rmem_max


def _grow_receive_buffer(interface: Any) -> None:
    """Ask for a ``RECEIVE_BUFFER`` receive buffer on the interface's UDP socket."""
    transport = getattr(interface, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError as e:  # not a real socket (tests), or not allowed: keep the default
        log.debug("cannot grow the UDP receive buffer: %s", e)
