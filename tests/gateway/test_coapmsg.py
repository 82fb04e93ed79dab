"""The message-layer adjustments (``gateway/coap/layer.py``) over real UDP sockets.

A raw datagram socket on loopback plays the peer, so retransmissions are sent by hand
and the answers compared byte for byte: a retransmitted CON Register or Send gets the
very same datagram back and runs once; entries expire after EXCHANGE_LIFETIME (a short
lifetime and an injected clock here); the cache holds well under 1 kB per exchange. The
device-management case is a node that never even ACKs one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON, RST
from aiotkit.gateway.coap import layer as coapmsg
from aiotkit.gateway.coap import wire
from aiotkit.gateway.coap.dedup import DedupCache
from aiotkit.gateway.dm import DeviceTimeout
from aiotkit.gateway.errors import ConfigError
from plugins.services import free_port

SENML_CBOR, TEXT, LINK = 112, 0, 40
SEND = cbor2.dumps([{-2: "/3313/0/", 0: "5702", 2: 0.25}, {0: "5703", 2: -1}])


def message(mtype: Any, mid: int, code: Code, token: bytes = b"",
            payload: bytes = b"") -> aiocoap.Message:
    """A message with the type, MID and token a raw peer chooses itself."""
    msg = aiocoap.Message(code=code, payload=payload)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg


def coap(code: Code, path: str, mid: int, *, mtype: Any = CON, token: bytes = b"t1",
         query: tuple[str, ...] = (), payload: bytes = b"", cf: int | None = None) -> bytes:
    msg = message(mtype, mid, code, token, payload)
    msg.opt.uri_path = tuple(p for p in path.split("/") if p)
    msg.opt.uri_query = query
    if cf is not None:
        msg.opt.content_format = cf
    return msg.encode()


class Peer(asyncio.DatagramProtocol):
    """A raw UDP socket: what arrives is queued; ``answer`` waits for one MID's ACK."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    async def answer(self, mid: int, mtypes: tuple[Any, ...] = (ACK,)) -> bytes:
        async with asyncio.timeout(5):
            while True:
                data = await self.inbox.get()
                msg = aiocoap.Message.decode(data)
                if msg.mid == mid and msg.mtype in mtypes:
                    return data


@contextlib.asynccontextmanager
async def raw_peer(port: int, factory: Callable[[], Any] = Peer) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        factory, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port))
    try:
        yield peer
    finally:
        transport.close()


def register(mid: int, ep: str = "node-1") -> bytes:
    return coap(Code.POST, "/rd", mid, query=(f"ep={ep}", "lt=300", "lwm2m=1.1", "b=U"),
                payload=b"</3/0>,</3313/0>", cf=LINK)


async def test_retransmitted_register_and_send_get_the_same_bytes_and_run_once(
        gateway_config, running_gateway):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        peer.send(register(0x1234))
        first = await peer.answer(0x1234)
        peer.send(register(0x1234))
        assert await peer.answer(0x1234) == first
        assert aiocoap.Message.decode(first).code == Code.CREATED
        assert [e.kind for e in gw.store.events("node-1")] == ["registered"]

        peer.send(coap(Code.POST, "/dp", 0x1235, token=b"s1", payload=SEND, cf=SENML_CBOR))
        sent = await peer.answer(0x1235)
        stored = len(gw.store.readings())
        peer.send(coap(Code.POST, "/dp", 0x1235, token=b"s1", payload=SEND, cf=SENML_CBOR))
        assert await peer.answer(0x1235) == sent
        assert stored > 0 and len(gw.store.readings()) == stored
        [layer] = gw._coap_layers
        assert layer.dedup is not None and len(layer.dedup) == 2
        # the Send's ACK only echoes MID and token: the cache keeps its code, a shared
        # small int, under a one-int key (it held a 45-byte ACK under a 110-byte tuple)
        port = peer.transport.get_extra_info("sockname")[1]
        key = wire.dedup_key(("::ffff:127.0.0.1", port, 0, 0), 0x1235)
        assert isinstance(key, int) and layer.dedup.get(key) == wire.CHANGED
        assert isinstance(layer.dedup.get(wire.dedup_key(("::ffff:127.0.0.1", port, 0, 0),
                                                         0x1234)), bytes)  # the Register's


async def test_compact_dedup_off_keeps_aiocoaps_own(gateway_config, running_gateway):
    cfg = gateway_config("compact_dedup = false\n")
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port) as peer:
        peer.send(register(7))
        first = await peer.answer(7)
        peer.send(register(7))
        assert await peer.answer(7) == first
        assert [e.kind for e in gw.store.events("node-1")] == ["registered"]
        [layer] = gw._coap_layers
        assert layer.dedup is None


def test_compact_dedup_is_true_or_false(gateway_config):
    assert gateway_config().coap.compact_dedup is True
    with pytest.raises(ConfigError, match=r"coap\.compact_dedup: must be true or false"):
        gateway_config('compact_dedup = "no"\n')


class Slow(resource.Resource):
    """Answers 2.05 once ``release`` is set; counts how often it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return aiocoap.Message(code=Code.CONTENT, payload=b"ok " + request.payload)


@contextlib.asynccontextmanager
async def bare_server(**install: Any) -> AsyncIterator[tuple[Slow, int, list[Any]]]:
    """A plain aiocoap server with ``/slow``; ``install`` None: stock aiocoap."""
    site = resource.Site()
    slow = Slow()
    site.add_resource(["slow"], slow)
    port = free_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                      transports=["udp6"])
    layers = coapmsg.install(ctx, **install) if install.get("compact_dedup") else []
    try:
        yield slow, port, layers
    finally:
        await ctx.shutdown()
        for layer in layers:
            layer.close()


async def test_duplicate_con_while_the_handler_runs_is_dropped_then_answered():
    async with bare_server(compact_dedup=True) as (slow, port, _), raw_peer(port) as peer:
        slow.release.clear()
        peer.send(coap(Code.POST, "/slow", 40, payload=b"a"))
        await slow.entered.wait()
        peer.send(coap(Code.POST, "/slow", 40, payload=b"a"))
        # a CoAP ping behind the duplicate: its RST means the duplicate was handled
        peer.send(message(CON, 41, Code.EMPTY).encode())
        await peer.answer(41, (RST,))
        slow.release.set()
        first = await peer.answer(40)  # piggybacked 2.05, or the empty ACK if it was late
        peer.send(coap(Code.POST, "/slow", 40, payload=b"a"))
        assert await peer.answer(40) == first
        assert slow.calls == 1


async def test_entries_expire_after_the_exchange_lifetime(clock):
    async with bare_server(compact_dedup=True, lifetime=10.0, clock=clock) as (
            slow, port, [layer]), raw_peer(port) as peer:
        peer.send(coap(Code.POST, "/slow", 50, payload=b"a"))
        first = await peer.answer(50)
        clock.advance(9.9)
        peer.send(coap(Code.POST, "/slow", 50, payload=b"a"))
        assert await peer.answer(50) == first and slow.calls == 1
        clock.advance(0.1 + layer.dedup.step)  # lifetime over: the MID may be reused
        peer.send(coap(Code.POST, "/slow", 50, token=b"t2", payload=b"b"))
        again = aiocoap.Message.decode(await peer.answer(50))
        assert again.payload == b"ok b" and slow.calls == 2
        assert len(layer.dedup) == 1


def test_cache_expires_in_time_order_and_never_early(clock):
    cache = DedupCache(16.0, clock)
    assert cache.step == 1.0
    cache.add("a")
    clock.advance(0.5)
    cache.add("b")
    cache.respond("b", b"\x60\x44")
    cache.add("b")  # known: unchanged
    assert cache.get("b") == b"\x60\x44" and cache.waiting("a") and not cache.waiting("b")
    clock.advance(15.9)  # a: 16.4 s > 16 s; b: 15.9 s, same bucket, kept a little longer
    assert cache.expire() is not None and len(cache) == 2
    clock.advance(1.0)
    assert cache.expire() is None and len(cache) == 0
    assert cache.get("a", "gone") == "gone"
    cache.respond("a", b"late")  # unknown keys are not added by a response
    assert len(cache) == 0
    with pytest.raises(ValueError):
        DedupCache(0.0)


def test_version_gate():
    assert coapmsg.supported("0.4.7") and coapmsg.supported("0.4.17")
    assert coapmsg.supported("0.4.17.post0") and coapmsg.supported("0.4.18rc1")
    assert not coapmsg.supported("0.4.5") and not coapmsg.supported("0.5.0")
    assert not coapmsg.supported("0.5a1") and not coapmsg.supported("unknown")


async def test_unchecked_aiocoap_version_keeps_stock_behaviour(monkeypatch, caplog):
    monkeypatch.setattr(aiocoap.meta, "version", "0.5.0")
    with caplog.at_level(logging.WARNING, "aiotkit.gateway.coap"):
        async with bare_server(compact_dedup=True) as (slow, port, layers), \
                raw_peer(port) as peer:
            assert layers == []
            peer.send(coap(Code.POST, "/slow", 60, payload=b"a"))
            first = await peer.answer(60)
            peer.send(coap(Code.POST, "/slow", 60, payload=b"a"))
            assert await peer.answer(60) == first and slow.calls == 1
    [record] = caplog.records
    assert "aiocoap 0.5.0: internals not checked; keeping its stock" in record.getMessage()


async def _bytes_per_exchange(n: int, **install: Any) -> float:
    async with bare_server(**install) as (_slow, port, _), raw_peer(port) as peer:
        for mid in range(20):  # warm up every lazily built structure
            peer.send(coap(Code.POST, "/slow", mid))
            await peer.answer(mid)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for mid in range(100, 100 + n):
            peer.send(coap(Code.POST, "/slow", mid, token=mid.to_bytes(2, "big")))
            await peer.answer(mid)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / n


async def test_memory_per_exchange_is_bounded():
    tracemalloc.start()
    try:
        stock = await _bytes_per_exchange(400)
        compact = await _bytes_per_exchange(400, compact_dedup=True)
    finally:
        tracemalloc.stop()
    assert compact < 1000, (stock, compact)
    assert stock > 2 * compact, (stock, compact)


class IgnoresSenmlWrites(Peer):
    """A node that never answers (not even ACKs) a SenML-CBOR Write, like lwm2m-node-lib,
    and answers every other request with 2.05 "aiotkit" as plain text."""

    def __init__(self) -> None:
        super().__init__()
        self.ignored: list[int] = []
        self.ignoring = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = aiocoap.Message.decode(data)
        if not msg.code.is_request():
            super().datagram_received(data, addr)
        elif msg.opt.content_format == SENML_CBOR:
            self.ignored.append(msg.mid)
            self.ignoring.set()
        else:
            reply = message(ACK, msg.mid, Code.CONTENT, msg.token, b"aiotkit")
            reply.opt.content_format = TEXT
            self.transport.sendto(reply.encode(), addr)


async def test_request_after_an_unanswered_one_is_not_held_behind_it(
        gateway_config, running_gateway):
    cfg = gateway_config("[dm]\nrequest_timeout_s = 0.5\n")
    async with running_gateway(cfg) as gw, raw_peer(cfg.coap.port, IgnoresSenmlWrites) as node:
        node.send(register(1))
        await node.answer(1)
        with pytest.raises(DeviceTimeout):
            await gw.dm.write("node-1", "/3313/0/5750", "room", content_format=SENML_CBOR)
        assert node.ignoring.is_set()
        # NSTART = 1: this CON goes out only once the abandoned one stops; aiocoap alone
        # would retransmit that one for 93 s and hold this one (and then fail it)
        res = await gw.dm.read("node-1", "/3/0/0", accept=TEXT)
        assert res.values == {"/3/0/0": "aiotkit"}
        assert len(node.ignored) == 1  # not retransmitted (the first retry is due at 2 s)
