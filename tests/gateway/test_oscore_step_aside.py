"""Protected (OSCORE) messages are never taken by a path that did not verify them.

The decision in ``gateway/coap/wire.py``: the plain fast paths (Send, Notification)
are never offered a datagram carrying an OSCORE option (9); protected traffic goes to
aiocoap, where the OSCORE layer verifies it with the node's security context, except
the common protected Send, which ``coap.fastoscore`` verifies itself with the same
context. Without a security context (a NoSec gateway) nothing verifies a protected
message: a protected Send or Notification from a registered node, sent on the socket
exactly as the plain fast paths would otherwise take it, must not be stored, must not
be answered 2.04 / ACKed after a commit by a fast path, and must not count as served
there. With OSCORE required, a protected Send the OSCORE fast path does not fully
verify (bad option, unknown kid, bad tag, replayed, reserved flags) is never answered
or stored by it either: aiocoap gets it and refuses it.
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


async def test_a_protected_send_the_oscore_fast_path_cannot_verify_is_never_its(
        tmp_path: Any) -> None:
    from test_fastoscore import oscore_gateway, registered, served
    from test_oscore_gateway import send_pack, stored_values

    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        assert gw.fast_oscores and not gw.fast_sends  # attached, and verifying alone
        good, _ = w.request(send_pack(1))
        msg = wire.parse(good)
        (number, option), = msg.options
        assert number == wire.OSCORE
        kid = option[1 + (option[0] & 7):]
        variants = {
            "no kid": bytes((option[0] & ~0x08,)) + option[1:1 + (option[0] & 7)],
            "no Partial IV": bytes((0x08,)) + kid,
            "group flag": bytes((option[0] | 0x20,)) + option[1:],
            "reserved flag": bytes((option[0] | 0x80,)) + option[1:],
            "Partial IV of 6 bytes": bytes((0x0E,)) + b"\x00" * 6 + kid,
            "unknown kid": option[:1 + (option[0] & 7)] + b"\x7f\x7e",
            "another Partial IV": bytes((0x09, 0x63)) + kid,
            "OSCORE option only": b"",
        }
        for what, value in variants.items():
            w.mid += 1
            datagram = wire.build(wire.CON, wire.POST, w.mid, b"tk",
                                  [(wire.OSCORE, value)], msg.payload)
            answer = aiocoap.Message.decode(await w.roundtrip(datagram))
            assert answer.code != Code.CHANGED, what  # aiocoap refused it
        # none struck the sequence number: the genuine one goes through after all that
        answer = aiocoap.Message.decode(await w.roundtrip(w.new_mid(good)))
        assert answer.code == Code.CHANGED
        assert served(gw) == 1 and stored_values(gw, "node-w") == [1]
