"""The lossy UDP link (tools/lossy.py) over real loopback sockets: each client gets its
own source address at the server, answers and the server's own datagrams find their
client, loss is seeded and counted in both directions, a link that is down drops
everything and forwards again once up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiotkit.tools.lossy import LossyLink


class Peer(asyncio.DatagramProtocol):
    """A UDP socket whose datagrams land in a queue (data, source address)."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait((data, (addr[0], addr[1])))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.got.get(), 5)


async def peer() -> Peer:
    _, p = await asyncio.get_running_loop().create_datagram_endpoint(
        Peer, local_addr=("127.0.0.1", 0))
    return p


class Site:
    def __init__(self, server: Peer, link: LossyLink, clients: list[Peer]) -> None:
        self.server, self.link, self.clients = server, link, clients

    @property
    def shim(self) -> tuple[str, int]:
        return ("127.0.0.1", self.link.port)

    async def close(self) -> None:
        await self.link.close()
        for p in (self.server, *self.clients):
            assert p.transport is not None
            p.transport.close()


async def site(n: int = 1, **kw: Any) -> Site:
    server = await peer()
    link = LossyLink(("127.0.0.1", server.port), **kw)
    await link.start()
    return Site(server, link, [await peer() for _ in range(n)])


async def test_each_client_has_its_own_address_and_gets_its_answers():
    s = await site(2)
    try:
        seen = {}
        for i, c in enumerate(s.clients):
            c.send(b"hello %d" % i, s.shim)
            data, src = await s.server.recv()
            assert data == b"hello %d" % i
            seen[i] = src
        assert seen[0] != seen[1] and s.link.clients == 2
        assert all(src[1] != s.link.port for src in seen.values())
        # an answer, and a request of the server's own, reach the right client
        for i in (1, 0, 1):
            s.server.send(b"to %d" % i, seen[i])
            data, src = await s.clients[i].recv()
            assert (data, src) == (b"to %d" % i, s.shim)
        s.clients[0].send(b"again", s.shim)
        assert await s.server.recv() == (b"again", seen[0])
        assert (s.link.to_server.forwarded, s.link.to_client.forwarded) == (3, 3)
        assert s.link.to_server.bytes == len(b"hello 0hello 1again")
        assert s.link.dropped == 0
    finally:
        await s.close()


async def test_datagrams_sent_before_the_clients_socket_is_open_keep_their_order():
    s = await site(1)
    try:
        for i in range(20):
            s.clients[0].send(b"%d" % i, s.shim)
        got = [(await s.server.recv())[0] for _ in range(20)]
        assert got == [b"%d" % i for i in range(20)]
    finally:
        await s.close()


async def run_lossy(seed: int) -> tuple[int, int, int, int]:
    s = await site(1, loss=0.25, seed=seed)
    try:
        c = s.clients[0]
        n = 400
        up, down = s.link.to_server, s.link.to_client
        # in batches that fit a socket's receive buffer: the kernel drops no datagram
        for i in range(n):
            c.send(b"%d" % i, s.shim)
            if i % 25 == 24:
                await s.link.until(lambda n=i + 1: up.forwarded + up.dropped == n)
        src = None
        for _ in range(up.forwarded):
            _, src = await s.server.recv()
        assert src is not None
        for i in range(n):
            s.server.send(b"%d" % i, src)
            if i % 25 == 24:
                await s.link.until(lambda n=i + 1: down.forwarded + down.dropped == n)
        for _ in range(down.forwarded):
            await c.recv()
        assert s.server.got.empty() and c.got.empty()
        return up.forwarded, up.dropped, down.forwarded, down.dropped
    finally:
        await s.close()


async def test_loss_is_seeded_and_counted_both_ways():
    a = await run_lossy(7)
    assert a == await run_lossy(7)  # the same seed drops the same datagrams
    assert a != await run_lossy(8)
    up_f, up_d, down_f, down_d = a
    assert up_f + up_d == down_f + down_d == 400
    assert 60 <= up_d <= 140 and 60 <= down_d <= 140  # about a quarter each way


async def test_a_link_that_is_down_drops_everything_until_it_is_up_again():
    s = await site(1)
    try:
        c = s.clients[0]
        c.send(b"first", s.shim)
        _, src = await s.server.recv()
        s.link.down = True
        for i in range(5):
            c.send(b"lost %d" % i, s.shim)
            s.server.send(b"lost %d" % i, src)
        await s.link.until(lambda: s.link.dropped == 10)
        assert s.server.got.empty() and c.got.empty()
        s.link.down = False
        c.send(b"back", s.shim)
        assert await s.server.recv() == (b"back", src)
        s.server.send(b"answer", src)
        assert (await c.recv())[0] == b"answer"
        assert (s.link.forwarded, s.link.dropped) == (3, 10)
    finally:
        await s.close()


def test_loss_outside_0_to_1_is_refused():
    with pytest.raises(ValueError):
        LossyLink(("127.0.0.1", 1), loss=1.5)
