"""A TCP shim between a client and a server: latency, and loss as cut connections.

``tools/lossy.py`` drops datagrams; over TCP a lost segment is retransmitted by the
kernel, so what a client sees of a bad link is delay, and now and then a connection
that dies. This shim forwards every chunk ``delay_s`` late (each direction, order kept)
and, with probability ``cut`` per chunk, closes both sides instead of forwarding it.
``rng`` is injected so a test can make it deterministic. It buffers at most ``window``
bytes per direction beyond what the other side has taken (reading stops meanwhile), so
a slow peer slows the sender instead of growing the shim's memory.

    shim = TcpShim("127.0.0.1", broker_port, delay_s=0.05, cut=0.001)
    await shim.start()          # shim.port: connect here instead
    ...
    await shim.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

__all__ = ["TcpShim"]


class TcpShim:
    """Forwards connections to ``host:port`` through a loopback listener."""

    def __init__(self, host: str, port: int, *, delay_s: float = 0.0, cut: float = 0.0,
                 window: int = 1 << 16, rng: Callable[[], float] = random.random) -> None:
        self.host, self.target_port = host, port
        self.delay_s, self.cut, self.window = delay_s, cut, window
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and end every connection."""
        if self._server is not None:
            self._server.close()
        self.cut_all()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut_all(self) -> None:
        """End every open connection now (the link went away)."""
        for w in list(self._writers):
            w.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        self._writers.add(writer)
        up_w: asyncio.StreamWriter | None = None
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.target_port)
            self._writers.add(up_w)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(reader, up_w))
                tg.create_task(self._pipe(up_r, writer))
        except* (OSError, EOFError, ConnectionError):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        room = asyncio.Semaphore(max(1, self.window // 4096))
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
                room.release()
            dst.close()

        sender = asyncio.create_task(deliver())
        try:
            while data := await src.read(4096):
                if self.cut and self._rng() < self.cut:
                    self.cuts += 1
                    raise ConnectionError("cut by the shim")
                await room.acquire()
                queue.put_nowait((loop.time() + self.delay_s, data))
            queue.put_nowait(None)
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
