"""The Send fast path (``gateway/coap/fastsend.py``) against aiocoap, over real UDP sockets.

``parse_send`` is checked against aiocoap's own decoder (every datagram it takes, aiocoap
reads as the same CON POST /dp; hypothesis for the rest). Through a running gateway, a
raw peer's Send is answered byte for byte as aiocoap answers it, stored once however
often it is retransmitted, and every request the fast path must leave alone (no
registration, bad SenML, NON, Block1, other options, fast_send off) gets aiocoap's answer.
"""

from __future__ import annotations

import asyncio

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON, NON
from aiotkit.gateway.coap.fastsend import parse_send
from hypothesis import given, settings
from hypothesis import strategies as st
from test_coapmsg import SEND, SENML_CBOR, coap, raw_peer, register

SENML_JSON = 110


def test_parse_send_takes_exactly_a_con_post_to_dp_with_a_senml_payload():
    data = coap(Code.POST, "/dp", 0xBEEF, token=b"tok", payload=SEND, cf=SENML_CBOR)
    mid, token, cf, payload = parse_send(data)
    assert (mid, token, cf, bytes(payload)) == (0xBEEF, b"tok", SENML_CBOR, SEND)
    assert parse_send(coap(Code.POST, "/dp", 1, token=b"", payload=b"[]",
                           cf=SENML_JSON))[1:3] == (b"", SENML_JSON)
    left_alone = [
        coap(Code.POST, "/dp", 1, mtype=NON, payload=SEND, cf=SENML_CBOR),
        coap(Code.PUT, "/dp", 1, payload=SEND, cf=SENML_CBOR),
        coap(Code.POST, "/rd", 1, payload=SEND, cf=SENML_CBOR),
        coap(Code.POST, "/dp/x", 1, payload=SEND, cf=SENML_CBOR),
        coap(Code.POST, "/dp", 1, payload=SEND, cf=11544),  # LwM2M-CBOR: the resource's
        coap(Code.POST, "/dp", 1, payload=SEND),  # no Content-Format
        coap(Code.POST, "/dp", 1, cf=SENML_CBOR),  # no payload
        coap(Code.POST, "/dp", 1, query=("x=1",), payload=SEND, cf=SENML_CBOR),
        b"\x40\x02\x00\x01\xb2dp\x11\x70\xff",  # payload marker, no payload
        b"\x49\x02\x00\x01" + b"t" * 9,  # token length 9 (reserved)
        b"\x80\x02\x00\x01",  # CoAP version 2
    ]
    block1 = aiocoap.Message(code=Code.POST, uri_path=("dp",), payload=SEND)
    block1.opt.content_format = SENML_CBOR
    block1.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 2)
    block1.mtype, block1.mid, block1.token = CON, 1, b"b"
    left_alone.append(block1.encode())
    for data in left_alone:
        assert parse_send(data) is None, data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(
    lambda mid, token, cf, body, cut: coap(Code.POST, "/dp", mid, token=token, payload=body,
                                           cf=cf)[:cut],
    st.integers(0, 0xFFFF), st.binary(max_size=8), st.sampled_from([110, 112, 60, 0]),
    st.binary(max_size=40), st.integers(0, 80)))
def test_parse_send_agrees_with_aiocoap_and_never_raises(data):
    parsed = parse_send(data)
    if parsed is None:
        return
    msg = aiocoap.Message.decode(data)  # aiocoap reads it as the same request
    mid, token, cf, payload = parsed
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (CON, Code.POST, mid, token)
    assert msg.opt.uri_path == ("dp",) and int(msg.opt.content_format) == cf
    assert msg.payload == bytes(payload) and payload
    assert {o.number for o in msg.opt.option_list()} == {11, 12}


async def test_send_is_answered_like_aiocoap_stored_once_and_counted(gateway_config,
                                                                     running_gateway):
    for fast in (True, False):
        cfg = gateway_config("" if fast else "fast_send = false\n")
        async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
            peer.send(register(1))
            await peer.answer(1)
            peer.send(coap(Code.POST, "/dp", 2, token=b"s1", payload=SEND, cf=SENML_CBOR))
            answer = await peer.answer(2)
            stored = len(gw.store.readings())
            peer.send(coap(Code.POST, "/dp", 2, token=b"s1", payload=SEND, cf=SENML_CBOR))
            assert await peer.answer(2) == answer  # the retransmission: the same bytes
            assert stored == 2 and len(gw.store.readings()) == stored
            served = sum(f.served for f in gw.fast_sends)
            assert served == (1 if fast else 0)
            # aiocoap's piggybacked 2.04 and the fast path's are the same datagram
            if fast:
                fast_answer = answer
            else:
                assert answer == fast_answer
            msg = aiocoap.Message.decode(answer)
            assert (msg.mtype, msg.code, msg.token, msg.payload) == (ACK, Code.CHANGED,
                                                                     b"s1", b"")


async def test_what_the_fast_path_leaves_alone_gets_aiocoaps_answer(gateway_config,
                                                                   running_gateway):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer, \
            raw_peer(cfg.coap.port) as stranger:
        stranger.send(coap(Code.POST, "/dp", 9, payload=SEND, cf=SENML_CBOR))
        assert aiocoap.Message.decode(await stranger.answer(9)).code == Code.NOT_FOUND
        peer.send(register(1))
        await peer.answer(1)
        peer.send(coap(Code.POST, "/dp", 3, payload=b"\xff\x00", cf=SENML_CBOR))
        assert aiocoap.Message.decode(await peer.answer(3)).code == Code.BAD_REQUEST
        peer.send(coap(Code.POST, "/dp", 4, mtype=NON, token=b"n", payload=SEND,
                       cf=SENML_CBOR))
        async with asyncio.timeout(5):
            while True:
                msg = aiocoap.Message.decode(await peer.inbox.get())
                if msg.token == b"n":
                    break
        assert (msg.mtype, msg.code) == (NON, Code.CHANGED)
        assert sum(f.served for f in gw.fast_sends) == 0
        assert len(gw.store.readings()) == 2  # the NON Send only


async def test_a_send_that_cannot_be_stored_is_answered_5_00(gateway_config,
                                                              running_gateway,
                                                              monkeypatch):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        peer.send(register(1))
        await peer.answer(1)

        def broken(*args, **kwargs):
            future = asyncio.get_running_loop().create_future()
            future.set_exception(OSError("disk full"))
            return future

        monkeypatch.setattr(gw.registry, "submit_send", broken)
        peer.send(coap(Code.POST, "/dp", 5, payload=SEND, cf=SENML_CBOR))
        msg = aiocoap.Message.decode(await peer.answer(5))
        assert msg.code == Code.INTERNAL_SERVER_ERROR
        assert gw.store.readings() == []
