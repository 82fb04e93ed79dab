"""The node's CoAP server and block-wise client against peers not written here.

The node's endpoint (firmware/coap/: endpoint.py, server.py, observe.py, block.py;
precompiled as the simulator runs it) serves tests/firmware/coaptree.py on a real UDP socket
(tests/firmware/coapnode.py). libcoap's ``coap-client-notls`` and aiocoap read it
(Block2 at several sizes), write it (Block1), and observe it (RFC 7641). The other way
round, the node's client sends a body larger than its buffer with Block1 to an aiocoap
server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiocoap
import aiocoap.resource
import pytest
from plugins.services import ManagedProcess, free_port

TESTS = Path(__file__).parent
BIG = bytes(33 + (i * 7 + i // 256) % 90 for i in range(3000))  # coaptree.big_byte


@pytest.fixture
def coapnode(node_firmware, processes):
    port = free_port()
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(node_firmware.code), str(TESTS)]))
    p = ManagedProcess("coapnode", [node_firmware.micropython, "-X", "heapsize=128K",
                                    str(TESTS / "coapnode.py"), str(port), "200"],
                       env=env).start()
    processes.append(p)
    p.wait_for(r"coapnode ready", timeout=20)
    yield f"coap://127.0.0.1:{port}"
    p.stop()


def client(coap_client: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([coap_client, "-B", "8", *args], capture_output=True,
                          timeout=timeout, check=False)


def test_libcoap_reads_small_resource(coap_client, coapnode):
    r = client(coap_client, "-m", "get", coapnode + "/hello")
    assert r.returncode == 0 and r.stdout.rstrip(b"\n") == b"hello world", r


@pytest.mark.parametrize("size", [16, 64, 1024, None])
def test_libcoap_reads_block2(coap_client, coapnode, tmp_path, size):
    out = tmp_path / "big.out"
    args = ["-m", "get", "-o", str(out)] + (["-b", str(size)] if size else [])
    r = client(coap_client, *args, coapnode + "/big")
    assert r.returncode == 0, r
    assert out.read_bytes() == BIG


def test_libcoap_writes_block1_and_reads_it_back(coap_client, coapnode, tmp_path):
    data = os.urandom(3500)
    (tmp_path / "up.bin").write_bytes(data)
    r = client(coap_client, "-m", "put", "-b", "64", "-f", str(tmp_path / "up.bin"),
               coapnode + "/store")
    assert r.returncode == 0, r
    r = client(coap_client, "-m", "get", "-b", "256", "-o", str(tmp_path / "back"),
               coapnode + "/store")
    assert r.returncode == 0 and (tmp_path / "back").read_bytes() == data


def test_libcoap_oversized_block1_body_gets_413(coap_client, coapnode, tmp_path):
    (tmp_path / "huge.bin").write_bytes(os.urandom(5000))  # the node takes 4096
    r = client(coap_client, "-m", "post", "-b", "256", "-f", str(tmp_path / "huge.bin"),
               "-v", "6", coapnode + "/store")
    assert b"4.13" in r.stdout + r.stderr, r


def test_libcoap_observes_counter_and_cancels(coap_client, coapnode, tmp_path):
    out = tmp_path / "values"
    r = client(coap_client, "-m", "get", "-s", "2", "-w", "-v", "7", "-o", str(out),
               coapnode + "/counter")
    assert r.returncode == 0, r
    values = [int(x) for x in out.read_bytes().split()]
    assert len(values) >= 5 and values == sorted(set(values)), values
    log = r.stdout + r.stderr
    assert b"t:NON c:2.05" in log and b"t:CON c:2.05" in log  # both kinds of notification
    assert b"Observe:1" in log  # libcoap cancelled, and the node answered
    again = client(coap_client, "-m", "get", coapnode + "/counter")
    assert again.returncode == 0 and int(again.stdout) >= values[-1]


async def test_aiocoap_reads_writes_and_observes(coapnode):
    ctx = await aiocoap.Context.create_client_context()
    try:
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=coapnode + "/big")).response
        assert r.code == aiocoap.CONTENT and r.payload == BIG
        data = os.urandom(2700)
        r = await ctx.request(aiocoap.Message(code=aiocoap.PUT, uri=coapnode + "/store",
                                              payload=data)).response
        assert r.code == aiocoap.CHANGED, r
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=coapnode + "/store")).response
        assert r.payload == data
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=coapnode + "/obj/3303/7")).response
        assert r.payload == b"3303,7"
        pr = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=coapnode + "/counter",
                                         observe=0))
        first = await pr.response
        seen = [int(first.payload)]
        async for n in pr.observation:
            seen.append(int(n.payload))
            if len(seen) == 4:
                pr.observation.cancel()
                break
        assert seen == sorted(set(seen)), seen
    finally:
        await ctx.shutdown()


NODE_CLIENT = r"""
import sys
from coap.endpoint import Endpoint
from coap.msg import code_str
from coap.udp import UdpTransport
PUT = 3
port = int(sys.argv[1]); n = int(sys.argv[2])
body = bytes((i * 31 + 7) & 0xFF for i in range(n))
ep = Endpoint(UdpTransport("127.0.0.1", port))
w = ep.begin(PUT)
w.option(11, b"up")
r = ep.exchange_body(body, deadline_ms=10000)
print("final", code_str(r.code))
"""


class Upload(aiocoap.resource.Resource):
    def __init__(self):
        super().__init__()
        self.got: list[bytes] = []

    async def render_put(self, request):
        self.got.append(request.payload)
        return aiocoap.Message(code=aiocoap.CHANGED)


@pytest.mark.parametrize("n", [300, 2600])
async def test_node_client_block1_to_aiocoap_server(node_firmware, tmp_path, n):
    port = free_port()
    up = Upload()
    (tmp_path / "nc.py").write_text(NODE_CLIENT)

    async def run():
        root = aiocoap.resource.Site()
        root.add_resource(["up"], up)
        ctx = await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", port))
        try:
            proc = await asyncio.create_subprocess_exec(
                node_firmware.micropython, "-X", "heapsize=128K", str(tmp_path / "nc.py"),
                str(port), str(n), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ, MICROPYPATH=str(node_firmware.code)))
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            return out.decode()
        finally:
            await ctx.shutdown()

    out = await run()
    assert "final 2.04" in out, out
    assert up.got == [bytes((i * 31 + 7) & 0xFF for i in range(n))]
