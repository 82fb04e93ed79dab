"""Two adjustments to aiocoap's CoAP-over-UDP message layer (RFC 7252 §4), version-gated.

**Compact deduplication** (§4.5, ``[coap] compact_dedup``). aiocoap's ``MessageManager``
remembers every received request for EXCHANGE_LIFETIME (247 s) with the whole response
``Message`` (its request, options and remote) and one timer each: about 3.4 kB per
exchange, 34 MB for a storm of 10,000 Registers. ``DedupCache`` keeps only the key
(remote, MID) and the encoded response bytes, and expires entries in time-ordered
buckets swept by one timer. Semantics are aiocoap's: a duplicate CON gets the same
bytes again (piggybacked response or empty ACK) or, while the handler still runs,
nothing; a duplicate NON is dropped; the handler never runs twice.

**Abandoned requests stop retransmitting.** ``TokenInterface.send_message`` may return a
canceller that the token layer calls when the request loses interest, but aiocoap's
``MessageManager`` returns none: a request given up on (a timeout) keeps being
retransmitted for MAX_TRANSMIT_WAIT (93 s), and with NSTART = 1 every later CON to that
peer waits behind it, then fails with it. ``MessageLayer`` supplies the canceller: it
ends the exchange (or drops the message from the backlog) and the next one goes out.

Both replace private parts of ``aiocoap.messagemanager.MessageManager`` on one context's
instances (never the class). They are installed only on aiocoap 0.4.7 up to (not
including) 0.5 whose internals were read (0.4.7 and 0.4.17: ``_recent_messages``,
``_deduplicate_message``, ``_store_response_for_duplicates``, ``_active_exchanges``,
``_backlogs``, ``_continue_backlog``) and only when those attributes exist; otherwise
``install`` logs one line and the context keeps aiocoap's behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import aiocoap
import aiocoap.meta
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import CON
from aiocoap.transports.udp6 import UDP6EndpointAddress

__all__ = ["DedupCache", "MessageLayer", "install", "supported", "udp_key"]

log = logging.getLogger("aiotkit.gateway.coap")

_CHECKED = ((0, 4, 7), (0, 5))  # aiocoap versions whose MessageManager was read
_INTERNALS = ("_recent_messages", "_deduplicate_message", "_store_response_for_duplicates",
              "_active_exchanges", "_backlogs", "_continue_backlog", "message_interface")
_NEW = object()


def _version(text: str) -> tuple[int, ...]:
    """``0.4.17`` -> (0, 4, 17); () for what does not start with a release number."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups("0")) if m else ()


def supported(version: str = aiocoap.meta.version) -> bool:
    """Whether this aiocoap version is one whose message-layer internals were checked."""
    v = _version(version)
    return _CHECKED[0] <= v < _CHECKED[1]


class DedupCache:
    """Recently received (remote, MID) keys, each with its encoded response or None.

    Every entry lives ``lifetime`` seconds and up to ``lifetime / 16`` (at most 1 s)
    more: entries are filed in buckets by deadline, and ``expire()`` drops whole
    buckets, oldest first. No I/O and no timers: the clock is injected.
    """

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic):
        if lifetime <= 0:
            raise ValueError(f"lifetime must be positive (got {lifetime})")
        self.lifetime = lifetime
        self.step = min(1.0, lifetime / 16)
        self._clock = clock
        self._entries: dict[Hashable, bytes | None] = {}
        self._buckets: deque[tuple[float, list[Hashable]]] = deque()  # (deadline, keys)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The response bytes (None: not sent yet), or ``default`` for an unknown key."""
        return self._entries.get(key, default)

    def add(self, key: Hashable) -> None:
        """Remember a new key (no response yet); a known key is left as it is."""
        if key in self._entries:
            return
        deadline = self._clock() + self.lifetime
        if not self._buckets or self._buckets[-1][0] < deadline:
            self._buckets.append((deadline + self.step, []))
        self._buckets[-1][1].append(key)
        self._entries[key] = None

    def waiting(self, key: Hashable) -> bool:
        """Whether ``key`` is known and has no response yet."""
        return key in self._entries and self._entries[key] is None

    def respond(self, key: Hashable, data: bytes) -> None:
        """Keep ``data`` as the answer to duplicates of ``key`` (if ``key`` is known)."""
        if key in self._entries:
            self._entries[key] = data

    def expire(self) -> float | None:
        """Drop the entries whose lifetime is over; the next bucket's deadline or None."""
        now = self._clock()
        buckets, entries = self._buckets, self._entries
        while buckets and buckets[0][0] <= now:
            for key in buckets.popleft()[1]:
                del entries[key]
        return buckets[0][0] if buckets else None

    def clear(self) -> None:
        self._entries.clear()
        self._buckets.clear()


def _key(message: aiocoap.Message) -> Hashable:
    """(remote, MID), small: a UDP remote compares by host, port and flow label only
    (``UDP6EndpointAddress`` docs), so those stand for it, the host string shared."""
    remote = message.remote
    if type(remote) is UDP6EndpointAddress:
        return udp_key(remote.sockaddr, message.mid)
    return remote, message.mid


def udp_key(sockaddr: tuple[Any, ...], mid: int) -> Hashable:
    """The deduplication key of message ID ``mid`` from the UDP peer ``sockaddr``."""
    host, port, flowinfo = sockaddr[:3]
    return sys.intern(host), flowinfo, port << 16 | mid


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
        if message.mtype is not CON:
            log.info("Duplicate NON, ACK or RST received")
        elif found is None:
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


class MessageLayer:
    """The adjustments on one ``MessageManager``; ``close()`` when its context is shut."""

    def __init__(self, mman: Any, cache: DedupCache | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._mman = mman
        mman.send_message = functools.partial(self._send_message, mman.send_message)
        self._dedup = _Dedup(mman, cache, loop) if cache is not None else None

    @property
    def dedup(self) -> DedupCache | None:
        """The deduplication cache (None: aiocoap's own is in use)."""
        return self._dedup.cache if self._dedup is not None else None

    @property
    def interface(self) -> Any:
        """The message interface (for UDP: aiocoap's ``MessageInterfaceUDP6``)."""
        return self._mman.message_interface

    def admit(self, key: Hashable) -> None:
        """Record a new exchange key in the compact cache, as a received request does
        (for a request served below aiocoap, ``gateway/fastsend.py``)."""
        if self._dedup is None:
            raise RuntimeError("no compact deduplication cache")
        self._dedup.admit(key)

    def close(self) -> None:
        if self._dedup is not None:
            self._dedup.close()

    def _send_message(self, send: Callable[..., Any], message: aiocoap.Message,
                      messageerror_monitor: Callable[[], None]) -> Callable[[], None] | None:
        """``send_message`` with the canceller the token layer calls on loss of interest."""
        canceller = send(message, messageerror_monitor)
        if canceller is None and message.mtype is CON and message.code.is_request():
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
        if type(mman) is MessageManager:
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
    life = TransportTuning().EXCHANGE_LIFETIME if lifetime is None else lifetime
    return [MessageLayer(m, DedupCache(life, clock or loop.time) if compact_dedup else None,
                         loop) for m in mmans]
