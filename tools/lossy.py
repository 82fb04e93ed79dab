"""A lossy UDP link for benchmarks and fault tests: a shim between clients and one
upstream UDP server (a CoAP server, the gateway).

The shim listens on a port; each client (a source address) gets its own socket towards
the upstream, so the server tells clients apart by their source address as it would
without the shim, and answers (or requests of its own, such as an LwM2M Read) that
reach a client's socket go back to that client. Every datagram, in both directions, is
dropped with probability ``loss`` (a seeded ``random.Random``: a run is repeatable for
the same order of datagrams); ``down = True`` drops everything (a cut link) until it is
set back to False. What was forwarded and dropped is counted per direction, and
:meth:`LossyLink.until` awaits a condition on those counts (no polling with sleeps).

    link = LossyLink(("127.0.0.1", 5683), loss=0.05, seed=1)
    await link.start()          # link.port: where the clients send
    ...
    await link.until(lambda: link.to_client.forwarded >= 10)
    link.down = True
    ...
    await link.close()
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Counts", "LossyLink"]

Address = tuple[str, int]


@dataclass
class Counts:
    """One direction's datagrams: forwarded (and their bytes) and dropped."""

    forwarded: int = 0
    dropped: int = 0
    bytes: int = 0


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, link: LossyLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.link._from_client(data, (str(addr[0]), int(addr[1])))


class _Upstream(asyncio.DatagramProtocol):
    """A client's socket towards the server: what arrives on it goes to the client."""

    def __init__(self, link: LossyLink, client: Address) -> None:
        self.link = link
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.link._from_server(data, self.client)


class _Client:
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queued: list[bytes] = []  # while its socket is being opened


class LossyLink:
    """The shim (module docstring). ``upstream`` is the server's (host, port); ``host``
    and ``port`` (0: any free one) where the shim listens."""

    def __init__(self, upstream: Address, *, loss: float = 0.0, seed: int = 0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss {loss}: a probability, 0..1")
        self.upstream = upstream
        self.loss = loss
        self.down = False
        self.to_server = Counts()
        self.to_client = Counts()
        self._rng = random.Random(seed)
        self._host = host
        self._port = port
        self._listener: asyncio.DatagramTransport | None = None
        self._clients: dict[Address, _Client] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(self._host, self._port))

    @property
    def port(self) -> int:
        """The port clients send to (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("the link is not started")
        return int(self._listener.get_extra_info("sockname")[1])

    @property
    def forwarded(self) -> int:
        return self.to_server.forwarded + self.to_client.forwarded

    @property
    def dropped(self) -> int:
        return self.to_server.dropped + self.to_client.dropped

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked after every datagram."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        for t in list(self._opening):
            t.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for c in self._clients.values():
            if c.transport is not None:
                c.transport.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- the datagrams -----------------------------------------------------------------

    def _pass(self, counts: Counts, data: bytes) -> bool:
        """Count the datagram; False when it is dropped."""
        self._changed.set()
        if self.down or (self.loss and self._rng.random() < self.loss):
            counts.dropped += 1
            return False
        counts.forwarded += 1
        counts.bytes += len(data)
        return True

    def _from_client(self, data: bytes, client: Address) -> None:
        if not self._pass(self.to_server, data):
            return
        c = self._clients.get(client)
        if c is None:
            c = self._clients[client] = _Client()
            t = asyncio.get_running_loop().create_task(self._open(client, c),
                                                       name=f"lossy-open-{client[1]}")
            self._opening.add(t)
            t.add_done_callback(self._opening.discard)
        if c.transport is None:
            c.queued.append(data)
        else:
            c.transport.sendto(data)

    async def _open(self, client: Address, c: _Client) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, client), remote_addr=self.upstream)
        if self._clients.get(client) is not c:  # closed meanwhile
            transport.close()
            return
        c.transport = transport
        for data in c.queued:
            transport.sendto(data)
        c.queued.clear()

    def _from_server(self, data: bytes, client: Address) -> None:
        if self._listener is None or not self._pass(self.to_client, data):
            return
        self._listener.sendto(data, client)
