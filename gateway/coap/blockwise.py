"""Block-wise uploads (RFC 7959 Block1), reassembled within bounds.

aiocoap reassembles a Block1 request on the resource that renders it
(``interfaces.Resource._render_to_pipe`` feeds every request to the resource's
``_block1``, an ``aiocoap.blockwise.Block1Spool``). That spool keeps each transfer whole
(the first block's ``Message`` plus every later block appended to its payload) for
MAX_TRANSMIT_WAIT, with no bound on how many transfers, on their size (the resource's
``max_payload`` is checked only once the last block arrived) or on their total: 27,000
transfers that never finish cost 100 MB, one of them 19 MB.

``BoundedSpool`` takes its place on the gateway's resource (``lwm2m.server``), same
contract (``feed_and_take``: the whole request, or raise what to answer), with bounds
(``Block1Limits``, from ``[coap]``):

* a transfer whose Size1 announces more than ``max_payload``, or whose blocks pass it,
  is refused **4.13 with Size1** (RFC 7959 §2.9.3) at that block and forgotten;
* a new transfer beyond ``per_peer`` live transfers from one peer (its address and
  port), or beyond ``total`` over all peers, or a block that would take the bytes buffered
  over all transfers past ``total_bytes``, is refused **5.03 with Max-Age** (the seconds
  until the oldest transfer expires): the server is full, not the request too large;
* a transfer idle for ``idle_s`` (at most EXCHANGE_LIFETIME) is dropped, oldest first,
  on the next block to arrive; a later block of it is answered 4.08 as aiocoap does;
* a block that does not continue its transfer (a gap, an overlap, a size that does not
  match its SZX) is 4.08 / 4.00 and ends the transfer, where aiocoap raised a
  ``ValueError`` (a 5.00 and a traceback).

Every refusal writes one rate-limited line (``logs.PeerLog``).

**Below aiocoap** (``Block1Gate``, a fast path of the datagram hook, ``coap.layer``): a
first block the spool would refuse whatever its transfer (Size1 over ``max_payload``;
its peer or all peers at their limit of transfers; the buffer full) is answered there,
4.13 or 5.03 piggybacked, without aiocoap's request layers (a flood of them costs about
20 us each instead of 300 us). One difference from the spool: a peer at its limit that
restarts one of its own transfers is refused by the gate until one ends or expires.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError
from ..logs import PeerLog
from . import wire
from .aio import Code, OptionNumber, aiocoap

__all__ = ["Block1Gate", "Block1Limits", "BoundedSpool", "Busy", "TooLarge"]

BLOCK1 = int(OptionNumber.BLOCK1)
SIZE1 = int(OptionNumber.SIZE1)
_TOO_LARGE = int(Code.REQUEST_ENTITY_TOO_LARGE)
_UNAVAILABLE = int(Code.SERVICE_UNAVAILABLE)

log = logging.getLogger("aiotkit.gateway.coap")
_peer_log = PeerLog(log)

_blockwise: Any = aiocoap.blockwise


@dataclass(frozen=True)
class Block1Limits:
    """Bounds on Block1 reassembly (``[coap]``, defaults as in ``config.CoapConfig``)."""

    max_payload: int = 65536  # bytes per transfer (coap.max_payload)
    per_peer: int = 4  # live transfers per peer (coap.max_block1_transfers_per_peer)
    total: int = 1000  # live transfers over all peers (coap.max_block1_transfers)
    total_bytes: int = 4 * 1024 * 1024  # bytes buffered over all (coap.max_block1_bytes)
    idle_s: float = 93.0  # a transfer with no block for this long is dropped


class TooLarge(_blockwise.ConstructionRenderableError, GatewayError):  # type: ignore[misc]
    """4.13 Request Entity Too Large, with Size1 = the largest entity accepted."""

    code = Code.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, message: str, size1: int) -> None:
        super().__init__(message)
        self.size1 = size1

    def to_message(self) -> Any:
        m = super().to_message()
        m.opt.size1 = self.size1
        return m


class Busy(_blockwise.ConstructionRenderableError, GatewayError):  # type: ignore[misc]
    """5.03 Service Unavailable, with Max-Age = seconds until there may be room."""

    code = Code.SERVICE_UNAVAILABLE

    def __init__(self, message: str, max_age: int) -> None:
        super().__init__(message)
        self.max_age = max_age

    def to_message(self) -> Any:
        m = super().to_message()
        m.opt.max_age = self.max_age
        return m


@dataclass(slots=True)
class _Transfer:
    first: Any  # the first block's Message (its options make the whole request's)
    peer: Hashable
    data: bytearray = field(default_factory=bytearray)
    touched: float = 0.0


class BoundedSpool:
    """``aiocoap.blockwise.Block1Spool`` with bounds (module docstring)."""

    def __init__(self, limits: Block1Limits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock  # monotonic seconds (tests inject theirs)
        self._transfers: OrderedDict[Hashable, _Transfer] = OrderedDict()  # oldest first
        self._per_peer: dict[Hashable, int] = {}
        self.buffered = 0  # bytes held over all transfers
        self.refused = 0  # blocks refused 4.13 or 5.03 (tests, benchmarks)

    def __len__(self) -> int:
        return len(self._transfers)

    def feed_and_take(self, req: Any) -> Any:
        """The whole request once its last block is in (``req`` itself without Block1);
        raises ``ContinueException`` (2.31) for a block taken, or the refusal."""
        block1 = req.opt.block1
        if block1 is None:
            return req
        now = self.clock()
        self._expire(now)
        key = _blockwise._extract_block_key(req)
        peer = getattr(req.remote, "sockaddr", None) or key[0]  # as the gate sees it
        lim = self.limits
        if block1.more and len(req.payload) != block1.size and not (
                block1.size_exponent == 7 and len(req.payload) % block1.size == 0):
            self._drop(key)
            raise _blockwise.BadRequest("payload size does not match Block1")
        if block1.block_number == 0:
            self._drop(key)  # a new start replaces the old one, as aiocoap does
            size1 = req.opt.size1
            if size1 is not None and size1 > lim.max_payload:
                self._refuse(req, f"announces Size1 {size1}")
                raise TooLarge(f"payload over {lim.max_payload} bytes", lim.max_payload)
            if len(req.payload) > lim.max_payload:
                self._refuse(req, "first block too large")
                raise TooLarge(f"payload over {lim.max_payload} bytes", lim.max_payload)
            if not block1.more:  # one block only: nothing to hold
                return req
            if self._per_peer.get(peer, 0) >= lim.per_peer:
                self._refuse(req, "too many transfers from this peer")
                raise Busy("too many block-wise transfers from you", self._retry(now))
            if len(self._transfers) >= lim.total:
                self._refuse(req, "too many transfers")
                raise Busy("too many block-wise transfers", self._retry(now))
            self._room(req, len(req.payload), now)
            transfer = _Transfer(req, peer, bytearray(req.payload), now)
            req.payload = b""  # held once, in ``data``
            self._transfers[key] = transfer
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            self.buffered += len(transfer.data)
            raise _blockwise.ContinueException(block1)
        transfer_or_none = self._transfers.get(key)
        if transfer_or_none is None:
            raise _blockwise.IncompleteException
        transfer = transfer_or_none
        if block1.start != len(transfer.data):
            self._drop(key)
            raise _blockwise.IncompleteException
        size = len(transfer.data) + len(req.payload)
        if size > lim.max_payload:
            self._drop(key)
            self._refuse(req, "passes max_payload")
            raise TooLarge(f"payload over {lim.max_payload} bytes", lim.max_payload)
        self._room(req, len(req.payload), now)
        transfer.data += req.payload
        self.buffered += len(req.payload)
        transfer.touched = now
        self._transfers.move_to_end(key)
        if block1.more:
            raise _blockwise.ContinueException(block1)
        self._drop(key)
        whole = transfer.first
        whole.payload = bytes(transfer.data)
        whole.opt.block1 = block1
        whole.token = req.token
        whole.mid = req.mid
        if req.opt.block2 is not None:
            whole.opt.block2 = req.opt.block2
        return whole

    def peer_transfers(self, peer: Hashable) -> int:
        """Live transfers of ``peer`` (a UDP socket address)."""
        return self._per_peer.get(peer, 0)

    def expire(self) -> float:
        """Drop the transfers idle too long; returns the time it used."""
        now = self.clock()
        self._expire(now)
        return now

    def retry_after(self, now: float) -> int:
        """Max-Age of a 5.03: seconds until the oldest transfer expires."""
        return self._retry(now)

    def clear(self) -> None:
        self._transfers.clear()
        self._per_peer.clear()
        self.buffered = 0

    def _room(self, req: Any, more: int, now: float) -> None:
        """Refuse (and end the transfer of) ``req`` if ``more`` bytes do not fit."""
        if self.buffered + more > self.limits.total_bytes:
            self._drop(_blockwise._extract_block_key(req))
            self._refuse(req, "block-wise buffer full")
            raise Busy("block-wise buffer full", self._retry(now))

    def _retry(self, now: float) -> int:
        """Seconds until the oldest transfer expires (Max-Age of a 5.03)."""
        for t in self._transfers.values():
            return max(1, math.ceil(t.touched + self.limits.idle_s - now))
        return 1

    def _expire(self, now: float) -> None:
        idle = self.limits.idle_s
        while self._transfers:
            key, oldest = next(iter(self._transfers.items()))
            if now - oldest.touched < idle:
                return
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        t = self._transfers.pop(key, None)
        if t is None:
            return
        self.buffered -= len(t.data)
        n = self._per_peer[t.peer] - 1
        if n:
            self._per_peer[t.peer] = n
        else:
            del self._per_peer[t.peer]

    def _refuse(self, req: Any, why: str) -> None:
        self.refused += 1
        _peer_log.info("block1-refused", "block-wise %s from %s refused: %s", req.code,
                       req.remote.hostinfo, why)


class Block1Gate:
    """A fast path (``coap.layer.FastPath``) that refuses, below aiocoap, a first Block1
    block ``spool`` would refuse whatever its transfer (module docstring)."""

    def __init__(self, hook: Any, spool: BoundedSpool) -> None:
        self._hook = hook
        self._spool = spool
        self.served = 0

    def take(self, msg: wire.Datagram, ancdata: Any, address: tuple[Any, ...]) -> bool:
        if not 0 < msg.code < 32 or msg.mtype not in (wire.CON, wire.NON):
            return False
        raw = msg.option(BLOCK1)
        if raw is None:
            return False
        value = wire.option_uint(raw)
        if value >> 4 or not value & 8:  # not a first block, or the only one
            return False
        spool = self._spool
        lim = spool.limits
        size1 = msg.option(SIZE1)
        if size1 is not None and wire.option_uint(size1) > lim.max_payload:
            code, option = _TOO_LARGE, (SIZE1, wire.uint(lim.max_payload))
            why = "payload over max_payload"
        else:
            now = spool.expire()
            if spool.peer_transfers(address) >= lim.per_peer:
                why = "too many block-wise transfers from you"
            elif len(spool) >= lim.total:
                why = "too many block-wise transfers"
            elif spool.buffered + len(msg.payload) > lim.total_bytes:
                why = "block-wise buffer full"
            else:
                return False
            code = _UNAVAILABLE
            option = (int(OptionNumber.MAX_AGE), wire.uint(spool.retry_after(now)))
        self.served += 1
        spool.refused += 1
        _peer_log.info("block1-refused", "block-wise request from %s refused: %s",
                       address[0], why)
        if msg.mtype == wire.CON and not self._hook.closed:
            self._hook.send(wire.build(wire.ACK, code, msg.mid, msg.token, [option],
                                       why.encode()), ancdata, address)
        return True
