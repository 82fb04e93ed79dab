"""The Notification fast path (``gateway/coap/fastnotify.py``) against aiocoap, over real UDP.

``parse_notification`` is checked against aiocoap's own decoder (every datagram it takes,
aiocoap reads as the same Notification; hypothesis for the rest). Through a running
gateway observed by a raw peer, with the fast path on and off: a CON Notification is
stored once and ACKed with the same bytes, a retransmission gets that ACK again and is
not stored twice, an older one (RFC 7641 §3.4) is ACKed and not stored, and after a
cancel (or a De-register) the next ones get aiocoap's answers (ACK, then RST) and are
not stored. A Notification whose storing fails is not ACKed; its retransmission is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON, NON, RST
from aiotkit.gateway.coap.fastnotify import parse_notification
from hypothesis import given, settings
from hypothesis import strategies as st
from test_coapmsg import coap, message, raw_peer, register

PATH = "/3313/0/5702"
TEXT = 0


def notification(mid: int, token: bytes, seq: int | None, payload: bytes = b"2.5", *,
                 mtype: Any = CON, code: Code = Code.CONTENT, cf: int | None = TEXT,
                 **options: Any) -> bytes:
    """A Notification as a node encodes it; ``options``: more (``max_age=60``...)."""
    msg = message(mtype, mid, code, token, payload)
    msg.opt.observe = seq
    if cf is not None:
        msg.opt.content_format = cf
    for name, value in options.items():
        setattr(msg.opt, name, value)
    return msg.encode()


def test_parse_notification_takes_exactly_a_plain_notification():
    parsed = parse_notification(notification(0xBEEF, b"tok", 0x123456, max_age=60))
    mtype, mid, token, cf, seq, payload = parsed
    assert (mtype, mid, token, cf, seq, bytes(payload)) == (0, 0xBEEF, b"tok", TEXT,
                                                            0x123456, b"2.5")
    assert parse_notification(notification(1, b"", 0, mtype=NON, cf=None))[:5] == (
        1, 1, b"", None, 0)
    block = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 2)
    left_alone = [
        notification(1, b"t", None),  # no Observe: the last one, aiocoap ends it
        notification(1, b"t", 3, b""),  # no payload
        notification(1, b"t", 3, mtype=ACK),  # a piggybacked answer: aiocoap's
        notification(1, b"t", 3, code=Code.NOT_FOUND),  # ends the observation
        notification(1, b"t", 3, code=Code.GET),
        notification(1, b"t", 3, block2=block),
        notification(1, b"t", 3, etag=b"e"),
        b"\x41\x45\x00\x01t\x61\x03\xff",  # payload marker, no payload
        b"\x49\x45\x00\x01" + b"t" * 9,  # token length 9 (reserved)
        b"\x81\x45\x00\x01t\x61\x03\xffx",  # CoAP version 2
        b"\x41\x45\x00\x01t\x61\x03\x01\x04\xffx",  # Observe twice
    ]
    for data in left_alone:
        assert parse_notification(data) is None, data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(
    lambda mtype, mid, token, seq, body, cf, age, cut: notification(
        mid, token, seq, body, mtype=mtype, cf=cf,
        **({} if age is None else {"max_age": age}))[:cut],
    st.sampled_from([CON, NON, ACK]), st.integers(0, 0xFFFF), st.binary(max_size=8),
    st.none() | st.integers(0, 0xFFFFFF), st.binary(max_size=20),
    st.none() | st.sampled_from([0, 60, 112, 11543]), st.none() | st.integers(0, 2**32 - 1),
    st.integers(0, 60)))
def test_parse_notification_agrees_with_aiocoap_and_never_raises(data):
    parsed = parse_notification(data)
    if parsed is None:
        return
    msg = aiocoap.Message.decode(data)  # aiocoap reads it as the same Notification
    mtype, mid, token, cf, seq, payload = parsed
    assert msg.mtype in (CON, NON) and int(msg.mtype) == mtype
    assert msg.code.is_successful() and (msg.mid, msg.token) == (mid, token)
    assert msg.opt.observe == seq and msg.payload == bytes(payload) and payload
    assert (None if msg.opt.content_format is None else int(msg.opt.content_format)) == cf
    assert {o.number for o in msg.opt.option_list()} <= {6, 12, 14}


async def request(peer: Any) -> aiocoap.Message:
    """The next request the gateway sends the peer."""
    async with asyncio.timeout(5):
        while True:
            msg = aiocoap.Message.decode(await peer.inbox.get())
            if msg.code.is_request():
                return msg


async def answer_observe(peer: Any, observe: int | None) -> bytes:
    """Answer the gateway's next request (piggybacked 2.05, "1.5"); its token."""
    req = await request(peer)
    ack = message(ACK, req.mid, Code.CONTENT, req.token, b"1.5")
    ack.opt.observe = observe
    ack.opt.content_format = TEXT
    peer.send(ack.encode())
    return req.token


def stored(gw: Any) -> list[object]:
    return [r.value for r in gw.store.readings() if r.path == PATH]


def committed(gw: Any) -> asyncio.Queue[object]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    gw.registry.add_listener(lambda e: queue.put_nowait(e) if e.kind == "send" else None)
    return queue


async def test_notifications_are_acked_like_aiocoap_stored_once_in_order(
        gateway_config, running_gateway):
    seen: dict[bool, list[bytes]] = {}
    for fast in (True, False):
        cfg = gateway_config("" if fast else "fast_notify = false\n")
        async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
            events = committed(gw)
            old = len(stored(gw))  # both runs share one database
            peer.send(register(1))
            await peer.answer(1)
            observe = asyncio.create_task(gw.dm.observe("node-1", PATH))
            token = await answer_observe(peer, 7)
            assert (await observe).values == {PATH: 1.5}
            await events.get()
            peer.send(notification(100, token, 8))
            acked = await peer.answer(100)
            await events.get()
            peer.send(notification(100, token, 8))  # retransmitted: the same ACK
            again = await peer.answer(100)
            peer.send(notification(101, token, 6, b"9.5"))  # older: ACKed, dropped
            older = await peer.answer(101)
            peer.send(notification(102, token, 9, b"3.5", mtype=NON, max_age=30))
            await events.get()
            assert stored(gw)[old:] == [1.5, 2.5, 3.5]
            served = sum(f.served for f in gw.fast_notifies)
            assert served == (3 if fast else 0)  # 8, 6 (dropped) and 9
            cancel = asyncio.create_task(gw.dm.cancel_observe("node-1", PATH))
            await answer_observe(peer, None)
            await cancel
            # the cancel carried the observation's token (RFC 7641 §3.6) and its answer
            # ended it: aiocoap knows the token no more and answers later ones RST;
            # none is stored
            peer.send(notification(103, token, 10, b"4.5"))
            late = await peer.answer(103, (RST,))
            peer.send(notification(104, token, 11, b"5.5"))
            reset = await peer.answer(104, (RST,))
            assert stored(gw)[old:] == [1.5, 2.5, 3.5]
            assert sum(f.served for f in gw.fast_notifies) == served
            seen[fast] = [acked, again, older, late, reset]
    assert seen[True] == seen[False]
    assert seen[True][:3] == [b"\x60\x00\x00\x64"] * 2 + [b"\x60\x00\x00\x65"]
    assert seen[True][3:] == [b"\x70\x00\x00\x67", b"\x70\x00\x00\x68"]  # RST 103, 104


async def test_a_notification_that_cannot_be_stored_is_not_acked_until_it_is(
        gateway_config, running_gateway, monkeypatch, caplog):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        peer.send(register(1))
        await peer.answer(1)
        observe = asyncio.create_task(gw.dm.observe("node-1", PATH))
        token = await answer_observe(peer, 1)
        await observe
        submit = gw.registry.submit_send
        refused = asyncio.Event()

        def broken(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(OSError("disk full"))
            refused.set()
            return future

        monkeypatch.setattr(gw.registry, "submit_send", broken)
        peer.send(notification(200, token, 2, b"2.5"))
        await refused.wait()
        monkeypatch.setattr(gw.registry, "submit_send", submit)
        await asyncio.sleep(0)  # the failure is handled: no ACK, the key kept for a retry
        peer.send(notification(200, token, 2, b"2.5"))  # the node retransmits
        assert await peer.answer(200) == b"\x60\x00\x00\xc8"
        peer.send(b"\x40\x00\x00\xc9")  # a CoAP ping: answered after any stray ACK
        await peer.answer(0xC9, (RST,))
        assert all(aiocoap.Message.decode(d).mid != 200 for d in drain(peer))
        assert stored(gw) == [1.5, 2.5]
        assert sum(f.served for f in gw.fast_notifies) == 1
        assert "not stored: disk full" in caplog.text


def drain(peer: Any) -> list[bytes]:
    out = []
    while not peer.inbox.empty():
        out.append(peer.inbox.get_nowait())
    return out


async def test_after_a_deregister_the_old_token_is_aiocoaps(gateway_config, running_gateway):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        events = committed(gw)
        peer.send(register(1))
        location = aiocoap.Message.decode(await peer.answer(1)).opt.location_path
        observe = asyncio.create_task(gw.dm.observe("node-1", PATH))
        token = await answer_observe(peer, 1)
        await observe
        await events.get()
        peer.send(coap(Code.DELETE, "/" + "/".join(location), 2))
        assert aiocoap.Message.decode(await peer.answer(2)).code == Code.DELETED
        peer.send(notification(3, token, 2, b"2.5"))
        await peer.answer(3, (ACK, RST))
        assert stored(gw) == [1.5] and sum(f.served for f in gw.fast_notifies) == 0
