"""The REST API against slow, idle and too many clients, over real TCP: header timeout,
connection limit, and running out of file descriptors (no traceback, serving again)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import subprocess
import sys
import time

import aiohttp
import pytest
from test_rest import VIEWER


@pytest.fixture
def rest_config(gateway_config, tmp_path):
    """``make(extra)``: a config with the REST API on, ``extra`` lines in ``[rest]``."""
    (tmp_path / "tokens").write_text(f"viewer {VIEWER} vera\n")
    (tmp_path / "tokens").chmod(0o600)

    def make(extra: str = "") -> object:
        return gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                              + extra)

    return make


HOLDER = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
held = []
for _ in range(n):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        break
print(len(held), flush=True)
sys.stdin.readline()
"""


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF), at most ``seconds``."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    assert data == b"" or data.startswith(b"HTTP/1.1 4")
    return time.monotonic() - start


async def _get(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(
            url + "/api/v1", headers={"Authorization": f"Bearer {VIEWER}"}) as resp:
        return resp.status


async def test_rest_connection_that_never_sends_headers_is_closed_after_the_header_timeout(
        rest_config, running_gateway):
    async with running_gateway(rest_config("header_timeout_s = 0.5\n")) as gw:
        port = gw.rest.port
        idle = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        try:
            slow[1].write(b"GET /api/v1 HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            await slow[1].drain()
            assert await _eof_within(idle[0], 3.0) < 2.0
            assert await _eof_within(slow[0], 3.0) < 2.0
            assert await _get(gw.rest.url) == 200  # and it serves the others
        finally:
            for _r, w in (idle, slow):
                w.close()
                await w.wait_closed()


async def test_rest_at_the_connection_limit_refuses_without_a_traceback(
        rest_config, running_gateway, caplog):
    caplog.set_level(logging.INFO)
    async with running_gateway(rest_config("max_connections = 3\n")) as gw:
        port = gw.rest.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            await asyncio.sleep(0.05)
            extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            for reader, writer in extra:
                answer = await asyncio.wait_for(reader.read(), 2.0)
                assert answer.startswith(b"HTTP/1.1 503 ")
                writer.close()
                await writer.wait_closed()
            held.pop()[1].close()
            await asyncio.sleep(0.05)
            assert await _get(gw.rest.url) == 200
        finally:
            for _r, w in held:
                w.close()
                await w.wait_closed()
    busy = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert 1 <= len(busy) <= 6
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_rest_out_of_file_descriptors_logs_one_line_and_serves_again(
        rest_config, running_gateway, caplog):
    caplog.set_level(logging.INFO)
    async with running_gateway(rest_config()) as gw:
        holder = subprocess.Popen(  # noqa: ASYNC220 - starts at once, waited for below
            [sys.executable, "-c", HOLDER, str(gw.rest.port), "50"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            # a few descriptors to spare, then accept() fails with EMFILE
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (len(os.listdir("/proc/self/fd")) + 4, hard))
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            held = await asyncio.to_thread(holder.stdout.readline)
            assert int(held) == 50
            await asyncio.sleep(2.5)  # asyncio retries the accept every second
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            holder.communicate("done\n", timeout=10)
        await asyncio.sleep(1.2)  # the retry after the descriptors came back
        assert await _get(gw.rest.url) == 200
    accept = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert 1 <= len(accept) <= 5
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
