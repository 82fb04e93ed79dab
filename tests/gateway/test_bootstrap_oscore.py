"""Bootstrap over OSCORE (gateway/lwm2m/bootstrap.py, firmware/lwm2m/bootstrap.py): the
bootstrap exchange is protected with the node's bootstrap context (``NAME#bs`` in the
gateway's key store, the node's config ``bootstrap_oscore``), the gateway writes Security
``/0/1`` in OSCORE mode (resource 17 linking to ``/21/1``) and ``/21/1`` with the node's
side of a server context it issues for the occasion, and the node then registers under
that context. Secrets never travel or print in clear: unprotected bootstrap requests are
refused where keys are at stake, and a bootstrap context cannot register.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import oscore, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.numbers.codes import Code
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiotkit.boards import paths
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.dm import OperationFailed
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from aiotkit.gateway.security import generate_key_hex, write_credentials
from plugins.services import free_port

EP = "node-7"
BS = f"{EP}#bs"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, security: str = "oscore",
                  account: str = 'uri = ""\n') -> AsyncIterator[Gateway]:
    """A gateway with its key store and bootstrap server (default account: itself)."""
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[gateway]\nid = "bs"\ndb = "gw.db"\nsecurity = "{security}"\n'
                    f'[coap]\nport = {free_port()}\n[security]\nkey_file = "gw.key"\n'
                    "[dm]\nrequest_timeout_s = 10.0\n[shadow]\nenabled = false\n"
                    f"[bootstrap]\nenabled = true\nport = {free_port()}\ntimeout_s = 10\n"
                    f"[bootstrap.default]\n{account}")
    gw = Gateway(load_config(conf), allow_nosec=security == "nosec")
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()


def bs_uri(gw: Gateway) -> str:
    return f"coap://127.0.0.1:{gw.config.bootstrap.port}"


class Registered:
    """The registry's "registered" event for EP, awaitable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __call__(self, event: RegistryEvent) -> None:
        if event.endpoint == EP and event.kind == "registered":
            self.event.set()


@pytest.mark.timeout_s(120)
async def test_node_bootstraps_over_oscore_stores_21_and_registers_under_it(
        tmp_path: Path, node_firmware: Any) -> None:
    """End to end with the real node (precompiled firmware, MicroPython unix port): config
    with only ``bootstrap`` and ``bootstrap_oscore``; the gateway issues the server
    context, the node keeps it in server.json and registers protected with it."""
    async with gateway(tmp_path) as gw:
        assert gw.keys is not None
        gw.keys.create(BS)
        bs_keys = gw.keys.export(BS).to_json()
        registered = Registered()
        gw.registry.add_listener(registered)
        node_dir = tmp_path / "node"
        node_dir.mkdir()
        shutil.copy(paths.replay_dir() / "normal-97.i16", node_dir / "signal.i16")
        cfg = {"endpoint": EP, "bootstrap": bs_uri(gw), "lifetime": 30, "window": 256,
               "report_ms": 200, "signal": "signal.i16", "realtime": True,
               "features": False,
               "bootstrap_oscore": {k: bs_keys[k] for k in
                                    ("secret", "salt", "sender_id", "recipient_id")}}
        (node_dir / "config.json").write_text(json.dumps(cfg))
        proc = await asyncio.create_subprocess_exec(
            *node_firmware.argv(), cwd=node_dir, env=node_firmware.env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        lines: list[str] = []

        async def pump() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                lines.append(line.decode(errors="replace").rstrip())

        pumping = asyncio.create_task(pump())
        try:
            await asyncio.wait_for(registered.event.wait(), 60)
            assert gw.bootstrap is not None
            assert await gw.bootstrap.wait(EP) == "finished"
            # the server context was issued by the bootstrap, exported once
            info = gw.keys.get(EP)
            assert info.state == "exported"
            # the node kept the account with /21's values (and nothing else of them)
            stored = json.loads((node_dir / "server.json").read_text())
            assert stored["uri"] == gw.coap_uri and stored["ssid"] == 1
            osc = stored["oscore"]
            assert osc["sender_id"] == info.node_id.hex()
            assert osc["recipient_id"] == info.gateway_id.hex()
            assert len(bytes.fromhex(osc["secret"])) == 16
            # the registration is the context's: device management goes protected
            reg = gw.store.registration(EP)
            assert reg is not None and reg.state == "registered"
            assert gw.keys.context(EP) is not None
            res = await gw.dm.read(EP, "/3/0/0")
            assert res.code == "2.05" and res.values == {"/3/0/0": "aiotkit"}
            # and the server may not read what the bootstrap wrote
            for path in ("/21/0", "/21/0/0", "/0/0/17"):
                with pytest.raises(OperationFailed) as failed:
                    await gw.dm.read(EP, path)
                assert failed.value.result.code == "4.01", path
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await pumping
        text = "\n".join(lines)
        print(text)
        for secret in (osc["secret"], bs_keys["secret"], osc["salt"], bs_keys["salt"]):
            assert secret not in text.lower()
        assert f"aiot-node {EP} registered" in text


# -- the gateway's side against aiocoap as the node ---------------------------------


class FakeNode(resource.Resource, resource.PathCapable):
    """What the bootstrap server asks of a node: records (code, path, protected,
    payload); answers as a node does."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str, bool, bytes]] = []

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = "/" + "/".join(request.opt.uri_path)
        protected = getattr(request.remote, "security_context", None) is not None
        self.ops.append((str(request.code), path, protected, request.payload))
        if request.code == Code.DELETE:
            return aiocoap.Message(code=Code.DELETED)
        return aiocoap.Message(code=Code.CHANGED)


@contextlib.asynccontextmanager
async def fake_node(gw: Gateway, folder: Path, context: str | None
                    ) -> AsyncIterator[tuple[aiocoap.Context, FakeNode]]:
    """An aiocoap node holding ``context``'s exported side for the bootstrap port (None:
    unprotected)."""
    creds = CredentialsMap()
    if context is not None:
        assert gw.keys is not None
        write_credentials(folder, gw.keys.export(context).to_json(), bs_uri(gw))
        sc = oscore.FilesystemSecurityContext(str(next(folder.iterdir())))
        creds[f"{bs_uri(gw)}/*"] = sc
        creds[":bs"] = sc
    site = FakeNode()
    ctx = await aiocoap.Context.create_server_context(
        OscoreSiteWrapper(site, creds), bind=("127.0.0.1", free_port()),
        transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    try:
        yield ctx, site
    finally:
        await ctx.shutdown()


async def _ask(ctx: aiocoap.Context, gw: Gateway, ep: str = EP) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code.POST, uri=f"{bs_uri(gw)}/bs?ep={ep}")
    return await ctx.request(msg).response


@pytest.mark.timeout_s(60)
async def test_protected_sequence_writes_21_and_the_link_and_rotates_on_the_next(
        tmp_path: Path) -> None:
    import cbor2

    async with gateway(tmp_path) as gw:
        assert gw.keys is not None and gw.bootstrap is not None
        gw.keys.create(BS)
        async with fake_node(gw, tmp_path / "n", BS) as (ctx, node):
            assert (await _ask(ctx, gw)).code == Code.CHANGED
            assert await gw.bootstrap.wait(EP) == "finished"
            assert [(c, p, prot) for c, p, prot, _ in node.ops] == [
                ("DELETE", "/0", True), ("DELETE", "/1", True), ("DELETE", "/21", True),
                ("PUT", "/0/1", True), ("PUT", "/21/1", True), ("PUT", "/1/0", True),
                ("POST", "/bs", True)]
            sec = cbor2.loads(node.ops[3][3])
            assert sec[2] == {0: "2", 2: 3} and sec[4] == {0: "17", "vlo": "21:1"}
            osc = {r[0]: r.get(8, r.get(2)) for r in cbor2.loads(node.ops[4][3])}
            info = gw.keys.get(EP)
            assert info.state == "exported" and info.generation == 1
            assert osc["1"] == info.node_id and osc["2"] == info.gateway_id
            assert osc["3"] == 10 and osc["4"] == -10 and len(osc["0"]) == 16
            first = osc["0"]
            # a second bootstrap: the exported context is rotated, a new secret goes out
            node.ops.clear()
            assert (await _ask(ctx, gw)).code == Code.CHANGED
            assert await gw.bootstrap.wait(EP) == "finished"
            osc2 = {r[0]: r.get(8) for r in cbor2.loads(node.ops[4][3])}
            assert gw.keys.get(EP).generation == 2 and osc2["0"] != first
            assert osc2["1"] == info.node_id


@pytest.mark.timeout_s(60)
async def test_unprotected_or_wrongly_protected_bootstrap_requests_are_refused(
        tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        assert gw.keys is not None and gw.bootstrap is not None
        gw.keys.create(BS)
        gw.keys.create("other#bs")
        gw.keys.create("other")
        async with fake_node(gw, tmp_path / "p", None) as (plain, _):
            # security = "oscore": never in clear, keys or not
            assert (await _ask(plain, gw)).code == Code.UNAUTHORIZED
            assert (await _ask(plain, gw, "nobody")).code == Code.UNAUTHORIZED
        async with fake_node(gw, tmp_path / "o", "other#bs") as (ctx, node):
            # another endpoint's bootstrap context: 4.03, nothing written
            assert (await _ask(ctx, gw)).code == Code.FORBIDDEN
        async with fake_node(gw, tmp_path / "s", "other") as (ctx, node):
            # a server context is no bootstrap context: the bootstrap port does not
            # know it (4.01, which the node cannot verify)
            with pytest.raises(oscore.NotAProtectedMessage) as info:
                await _ask(ctx, gw, "other")
            assert info.value.plain_message.code == Code.UNAUTHORIZED
        assert gw.bootstrap.results == {} and node.ops == []
        assert EP not in [i.endpoint for i in gw.keys.list()]  # nothing issued


@pytest.mark.timeout_s(60)
async def test_a_bootstrap_context_cannot_register(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        assert gw.keys is not None
        gw.keys.create(BS)
        async with fake_node(gw, tmp_path / "n", BS) as (ctx, _):
            creds = ctx.client_credentials
            creds[f"{gw.coap_uri}/*"] = creds[":bs"]
            for ep in (EP, BS):
                msg = aiocoap.Message(code=Code.POST, uri=f"{gw.coap_uri}/rd",
                                      payload=b"</3/0>", content_format=40)
                msg.opt.uri_query = (f"ep={ep}", "lt=60")
                r = await ctx.request(msg).response
                assert r.code in (Code.FORBIDDEN, Code.BAD_REQUEST), (ep, r)
        assert gw.store.registration(EP) is None


@pytest.mark.timeout_s(60)
async def test_nosec_gateway_keeps_nosec_bootstrap_but_never_sends_keys_in_clear(
        tmp_path: Path) -> None:
    async with gateway(tmp_path, security="nosec") as gw:
        assert gw.keys is not None and gw.bootstrap is not None
        async with fake_node(gw, tmp_path / "p", None) as (plain, node):
            # nothing provisioned: the NoSec account of before, no /21
            assert (await _ask(plain, gw, "dev")).code == Code.CHANGED
            assert await gw.bootstrap.wait("dev") == "finished"
            assert [p for _, p, _, _ in node.ops] == ["/0", "/1", "/0/1", "/1/0", "/bs"]
            # an endpoint with a server or a bootstrap context: refused in clear
            gw.keys.create("keyed")
            gw.keys.create("booted#bs")
            assert (await _ask(plain, gw, "keyed")).code == Code.UNAUTHORIZED
            assert (await _ask(plain, gw, "booted")).code == Code.UNAUTHORIZED
            assert gw.keys.get("keyed").state == "new"


@pytest.mark.timeout_s(60)
async def test_an_account_on_another_server_gets_no_keys_of_ours(tmp_path: Path) -> None:
    async with gateway(tmp_path, account='uri = "coap://192.0.2.1:5683"\n') as gw:
        assert gw.keys is not None and gw.bootstrap is not None
        gw.keys.create(BS)
        async with fake_node(gw, tmp_path / "n", BS) as (ctx, node):
            assert (await _ask(ctx, gw)).code == Code.CHANGED
            assert await gw.bootstrap.wait(EP) == "finished"
            assert [p for _, p, _, _ in node.ops] == ["/0", "/1", "/0/1", "/1/0", "/bs"]
            assert all(prot for _, _, prot, _ in node.ops)  # still protected
        assert [i.endpoint for i in gw.keys.list()] == [BS]  # nothing issued
