"""Protected (OSCORE) messages are never taken by a path that did not verify them.

The decision in ``gateway/coap/wire.py``: the fast paths step aside for any datagram
carrying an OSCORE option (9); protected traffic goes to aiocoap, where (issue 13) the
OSCORE layer verifies it with the node's security context. Until then the gateway has
no security context, so nothing verifies a protected message: a protected Send or
Notification from a registered node, sent on the socket exactly as the fast paths
would otherwise take it, must not be stored, must not be answered 2.04 / ACKed after a
commit by a fast path, and must not count as served there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK
from aiotkit.gateway.coap import wire
from test_coapmsg import SEND, SENML_CBOR, raw_peer, register
from test_fastnotify import PATH, answer_observe, committed, stored

# An OSCORE option value (RFC 8613 §6.1): flags with a 1-byte Partial IV, the PIV, kid
OSCORE_OPTION = b"\x09\x05\x01"


def protected_send(mid: int) -> bytes:
    """A CON POST /dp that the Send fast path would take, but for its OSCORE option."""
    return wire.build(wire.CON, wire.POST, mid, b"os", [
        (wire.URI_PATH, b"dp"), (wire.CONTENT_FORMAT, wire.uint(SENML_CBOR)),
        (wire.OSCORE, OSCORE_OPTION)], SEND)


def protected_notification(mid: int, token: bytes, seq: int) -> bytes:
    """A CON 2.05 Notification the Notification fast path would take, but for OSCORE."""
    payload = cbor2.dumps([{0: PATH, 2: 7.5}])
    return wire.build(wire.CON, wire.CONTENT, mid, token, [
        (wire.OBSERVE, wire.uint(seq)), (wire.CONTENT_FORMAT, wire.uint(SENML_CBOR)),
        (wire.OSCORE, OSCORE_OPTION)], payload)


def test_the_wire_module_marks_protected_datagrams():
    assert wire.parse(protected_send(1)).protected
    assert not wire.parse(wire.build(wire.CON, wire.POST, 1, b"", [(wire.URI_PATH, b"dp")],
                                     SEND)).protected


async def test_unverified_oscore_send_is_neither_stored_nor_answered_by_the_fast_path(
        gateway_config: Any, running_gateway: Any) -> None:
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        peer.send(register(1))
        await peer.answer(1)
        assert gw.fast_sends  # the fast path is on: it must step aside on its own
        peer.send(protected_send(2))
        answer = aiocoap.Message.decode(await peer.answer(2))
        assert answer.code == Code.UNAUTHORIZED  # refused where it was not verified
        assert answer.code != Code.CHANGED
        assert gw.store.readings() == []
        assert sum(f.served for f in gw.fast_sends) == 0


async def test_unverified_oscore_notification_is_not_stored_nor_acked_by_the_fast_path(
        gateway_config: Any, running_gateway: Any) -> None:
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        events = committed(gw)
        peer.send(register(1))
        await peer.answer(1)
        observe = asyncio.create_task(gw.dm.observe("node-1", PATH))
        token = await answer_observe(peer, 7)
        await observe
        await events.get()  # the first answer to Observe is stored
        before = stored(gw)
        assert gw.fast_notifies
        peer.send(protected_notification(100, token, 8))
        ack = await peer.answer(100, (ACK,))  # aiocoap's message layer ACKs on arrival
        assert aiocoap.Message.decode(ack).code == Code.EMPTY
        await asyncio.sleep(0.2)  # a group commit would have run by now
        assert events.empty()
        assert stored(gw) == before
        assert sum(f.served for f in gw.fast_notifies) == 0
