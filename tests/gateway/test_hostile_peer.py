"""What a hostile or broken CoAP peer sends, over real sockets: text options that are not
UTF-8, endpoint names the MQTT uplink could not carry, two nodes fighting over one
endpoint name."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.coap import wire
from aiotkit.gateway.logs import PeerLog
from aiotkit.gateway.lwm2m.bootstrap import BootstrapAccount, BootstrapConfig, BootstrapServer
from aiotkit.gateway.lwm2m.params import valid_endpoint
from plugins.services import free_port

SENML_CBOR, LINK = 112, 40
SEND = cbor2.dumps([{-2: "/3313/0/", 0: "5702", 2: 0.25}])


class Raw:
    """A UDP socket on loopback: exact bytes out, whatever comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    async def send(self, port: int, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", port))

    async def recv(self, timeout: float = 5.0) -> aiocoap.Message:
        loop = asyncio.get_running_loop()
        reply, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), timeout)
        return aiocoap.Message.decode(reply)

    async def exchange(self, port: int, data: bytes) -> aiocoap.Message:
        await self.send(port, data)
        return await self.recv()


def con(mid: int, code: Code, path: tuple[str, ...], payload: bytes = b"",
        cf: int | None = None, query: tuple[str, ...] = ()) -> bytes:
    msg = aiocoap.Message(code=code, uri_path=path, uri_query=query, payload=payload)
    msg.mtype, msg.mid, msg.token = aiocoap.CON, mid, mid.to_bytes(2, "big")
    if cf is not None:
        msg.opt.content_format = cf
    return msg.encode()


def register(mid: int, ep: str) -> bytes:
    return con(mid, Code.POST, ("rd",), b"</3/0>,</3313/0>", LINK,
               (f"ep={ep}", "lt=300", "lwm2m=1.1", "b=U"))


# -- text options that are not UTF-8 ---------------------------------------------------


def _bad_utf8(i: int) -> bytes:
    """A datagram with a text option that is not UTF-8: CON or NON, several options."""
    mtype = wire.CON if i % 2 == 0 else wire.NON
    bad = [b"\xff\xfe", b"\xc3", b"rd\x80", b"\xed\xa0\x80"][i % 3]  # last: a surrogate
    options = [[(wire.URI_PATH, bad)], [(wire.URI_PATH, b"rd"), (wire.URI_QUERY, b"ep=" + bad)],
               [(wire.URI_PATH, b"dp" + bad)], [(wire.URI_QUERY, bad)]][i % 4]
    if i % 3:
        options.append((wire.CONTENT_FORMAT, wire.uint(SENML_CBOR)))
    return wire.build(mtype, wire.POST, i & 0xFFFF, b"\x01\x02", options,
                      SEND if i % 3 else b"")


async def test_invalid_utf8_in_text_options_is_refused_quietly_without_traceback(
        gateway_config, running_gateway, caplog):
    for name in ("", "aiotkit.gateway", "aiotkit.gateway.coap"):  # whatever ran before
        caplog.set_level(logging.INFO, logger=name)
    cfg = gateway_config()
    port = cfg.coap.port
    raw = Raw()
    try:
        async with running_gateway(cfg):
            # one CON on its own: 4.00, piggybacked, same MID and token
            answer = await raw.exchange(port, _bad_utf8(0))
            assert answer.code == Code.BAD_REQUEST and answer.mid == 0
            assert answer.mtype == aiocoap.ACK and answer.token == b"\x01\x02"
            # a NON gets nothing
            await raw.send(port, _bad_utf8(1))
            with pytest.raises(TimeoutError):
                await raw.recv(0.3)
            answers = 0
            for i in range(2, 1002):
                await raw.send(port, _bad_utf8(i))
                if i % 2 == 0:  # a CON: its answer (a NON's would come before it)
                    msg = await raw.recv()
                    assert msg.code == Code.BAD_REQUEST and msg.mid == i, msg
                    answers += 1
            assert answers == 500
            with pytest.raises(TimeoutError):
                await raw.recv(0.3)
            # and the server still serves: a Register and a Send right after
            assert (await raw.exchange(port, register(5000, "node-1"))).code == Code.CREATED
            sent = await raw.exchange(port, con(5001, Code.POST, ("dp",), SEND, SENML_CBOR))
            assert sent.code == Code.CHANGED
    finally:
        raw.close()
    noisy = [r for r in caplog.records if r.name.startswith(("aiocoap", "asyncio",
                                                             "aiotkit.gateway.coap"))
             and r.levelno >= logging.INFO]
    assert len(noisy) <= 6, [r.getMessage() for r in noisy]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("not UTF-8" in r.getMessage() and "suppressed" not in r.getMessage()
               for r in noisy)


# -- endpoint names ----------------------------------------------------------------------


BAD_NAMES = ["node\u0085x", "node\ufffe", "node\ufdd0", "\u0000", "a\u009fb", "x\U0001fffe",
             "x\U0010ffff", "x\ud800", "node\x7f"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_endpoint_names_outside_the_mqtt_utf8_rules_are_invalid(name):
    assert not valid_endpoint(name)


@pytest.mark.parametrize("name", ["node-1", "nöde-\u00a0é", "\u4e2d\u6587", "x\ufdcf\ufdf0",
                                  "x\U0001f600", "a" * 255])
def test_ordinary_unicode_endpoint_names_stay_valid(name):
    assert valid_endpoint(name)


async def test_register_with_control_or_noncharacter_endpoint_name_is_refused_4_00(
        gateway_config, running_gateway):
    cfg = gateway_config()
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            for mid, name in enumerate(["node\u0085x", "node\ufffe", "node\ufdd0"], 1):
                answer = await raw.exchange(cfg.coap.port, register(mid, name))
                assert answer.code == Code.BAD_REQUEST, name
            assert gw.store.registrations() == []
            ok = await raw.exchange(cfg.coap.port, register(9, "node-\u00e9"))
            assert ok.code == Code.CREATED
    finally:
        raw.close()


async def test_bootstrap_request_with_control_or_noncharacter_endpoint_name_is_refused(
        ) -> None:
    cfg = BootstrapConfig(enabled=True, port=free_port(), timeout_s=5.0,
                          default=BootstrapAccount())
    bs = BootstrapServer(cfg, server_uri="coap://127.0.0.1:5683")
    await bs.start()
    ctx = await aiocoap.Context.create_client_context()
    try:
        for name in ("node\u0085x", "node\ufffe", "node\ufdd0"):
            msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{cfg.port}/bs")
            msg.opt.uri_query = (f"ep={name}",)
            assert (await ctx.request(msg).response).code == Code.BAD_REQUEST, name
        assert bs.results == {}
    finally:
        await ctx.shutdown()
        await bs.shutdown()


def test_peer_log_lets_a_burst_through_per_kind_then_counts_what_it_dropped(caplog):
    caplog.set_level(logging.INFO, logger="aiotkit.test.peerlog")
    now = [0.0]
    plog = PeerLog(logging.getLogger("aiotkit.test.peerlog"), interval=10.0, burst=3,
                   clock=lambda: now[0])
    written = [plog.warning("flood", "line %d", i) for i in range(1000)]
    assert written[:3] == [True] * 3 and not any(written[3:])
    assert plog.info("other", "another kind")  # kinds are limited separately
    now[0] = 10.0
    assert plog.warning("flood", "after the window")
    lines = [r.getMessage() for r in caplog.records if r.name == "aiotkit.test.peerlog"]
    assert lines == ["line 0", "line 1", "line 2", "another kind",
                     "after the window [997 similar line(s) suppressed]"]


async def test_invalid_utf8_option_is_refused_without_the_compact_cache_too(
        gateway_config, running_gateway, caplog):
    cfg = gateway_config("compact_dedup = false\n")
    raw = Raw()
    try:
        async with running_gateway(cfg):
            answer = await raw.exchange(cfg.coap.port, _bad_utf8(0))
            assert answer.code == Code.BAD_REQUEST
            ok = await raw.exchange(cfg.coap.port, register(7, "node-1"))
            assert ok.code == Code.CREATED
    finally:
        raw.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
