"""Compact duplicate detection for CoAP over UDP (RFC 7252 §4.5): ``DedupCache``.

aiocoap's ``MessageManager`` remembers every received request for EXCHANGE_LIFETIME
(247 s) with the whole response ``Message`` (its request, options and remote) and one
timer each: about 3.4 kB per exchange, 34 MB for a storm of 10,000 Registers. The cache
here keeps only the key (remote, MID: ``wire.dedup_key``, one int) and the encoded
response bytes, or for an ACK that only echoes the request's MID and token (the ACK
of a Send, the empty ACK of a Notification) just its code, a shared small int
(``echo``): the cache holds an entry per request for 247 s, so at 1,000 Sends a second
each byte counts. Entries expire in time-ordered buckets. ``coap.layer`` puts it in place of
aiocoap's own and hands it to the fast paths, so a retransmission gets the same bytes
whichever path served the original.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TypeVar, overload

from . import wire

__all__ = ["DedupCache", "echo"]

_D = TypeVar("_D")


def echo(code: int, mid: int, token: bytes) -> bytes:
    """The ACK kept as its ``code``: MID and token echo the request's (a duplicate has
    the same), an empty ACK (code 0) has no token."""
    return wire.build(wire.ACK, code, mid, token if code else b"")


class DedupCache:
    """Recently received (remote, MID) keys, each with its encoded response, its code
    (an ACK that ``echo`` rebuilds) or None (not answered yet).

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
        self._entries: dict[Hashable, bytes | int | None] = {}
        self._buckets: deque[tuple[float, list[Hashable]]] = deque()  # (deadline, keys)

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def get(self, key: Hashable) -> bytes | int | None: ...

    @overload
    def get(self, key: Hashable, default: _D) -> bytes | int | None | _D: ...

    def get(self, key: Hashable, default: object = None) -> object:
        """The response bytes, or its code (``echo``), None when not sent yet, or
        ``default`` for an unknown key."""
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

    def respond(self, key: Hashable, data: bytes | int) -> None:
        """Keep ``data`` (the bytes, or an echoed ACK's code) as the answer to duplicates
        of ``key`` (if ``key`` is known)."""
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
