"""The gateway with OSCORE required (``security = "oscore"``, the default) against nodes
played by aiocoap with the node side ``aiot keys export`` gives (aiocoap's own OSCORE,
a peer not written here): registration, Send and device management protected end to
end, and the attacks of issue 13 refused with nothing stored.

Before, with NoSec, anyone on the network took a node over: the registration id is in
the retained MQTT status, an Update from another address moved the registration to the
attacker (whose Sends were then stored as the victim's), and a DELETE removed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import oscore, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.security import generate_key_hex, write_credentials
from oscorekit import oscore_gateway
from plugins.services import free_port, require_tool

LINKS = b'</>;rt="oma.lwm2m";ct=112,</3/0>'


class Device(resource.Resource):
    """/3/0/0 of a node: its manufacturer, to protected requests only."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        if getattr(request.remote, "security_context", None) is None:
            return aiocoap.Message(code=aiocoap.UNAUTHORIZED)
        return aiocoap.Message(payload=cbor2.dumps([{-2: "/3/0/", 0: "0", 3: "acme"}]),
                               content_format=112)


class Node:
    """An aiocoap context on its own port, holding one node's exported OSCORE side for
    its requests to the gateway and for the gateway's requests to it."""

    def __init__(self, ctx: aiocoap.Context, gateway: str) -> None:
        self.ctx = ctx
        self.gateway = gateway
        self.location: tuple[str, ...] = ()

    async def ask(self, code: Any, path: str, payload: bytes = b"", *, query: str = "",
                  cf: int | None = None, location: tuple[str, ...] = ()) -> aiocoap.Message:
        uri = f"{self.gateway}/{'/'.join(location) if location else path.strip('/')}"
        msg = aiocoap.Message(code=code, uri=uri + (f"?{query}" if query else ""),
                              payload=payload, content_format=cf)
        return await self.ctx.request(msg).response

    async def register(self, ep: str) -> aiocoap.Message:
        r = await self.ask(aiocoap.POST, "rd", LINKS, query=f"ep={ep}&lt=60&lwm2m=1.1",
                           cf=40)
        if r.code == aiocoap.CREATED:
            self.location = tuple(r.opt.location_path)
        return r

    async def send(self, value: int, location: tuple[str, ...] = ()) -> aiocoap.Message:
        pack = cbor2.dumps([{-2: "/33000/0/", 0: "0", 2: value}])
        return await self.ask(aiocoap.POST, "dp", pack, cf=112)


@contextlib.asynccontextmanager
async def node(gw: Gateway, folder: Path, ep: str | None,
               name: str = "") -> AsyncIterator[Node]:
    """A node holding ``ep``'s exported context (None: no context, unprotected)."""
    creds = CredentialsMap()
    if ep is not None:
        if gw.keys is None:
            raise AssertionError("the gateway has no key store")
        gw.keys.create(ep)
        write_credentials(folder, gw.keys.export(ep).to_json(), gw.coap_uri)
        sc = oscore.FilesystemSecurityContext(str(folder / ep))  # one: it locks its folder
        creds[f"{gw.coap_uri}/*"] = sc
        creds[":gateway"] = sc
    site = resource.Site()
    site.add_resource(["3", "0", "0"], Device())
    ctx = await aiocoap.Context.create_server_context(
        OscoreSiteWrapper(site, creds), bind=("127.0.0.1", free_port()),
        transports=["oscore", "udp6"])
    ctx.client_credentials = creds
    try:
        yield Node(ctx, gw.coap_uri)
    finally:
        await ctx.shutdown()


def stored_values(gw: Gateway, ep: str) -> list[object]:
    return [r.value for r in gw.store.readings() if r.endpoint == ep]


@pytest.mark.timeout_s(60)
async def test_a_node_registers_sends_and_is_managed_under_its_oscore_context(tmp_path):
    async with oscore_gateway(tmp_path) as gw, node(gw, tmp_path / "a", "node-a") as a:
        r = await a.register("node-a")
        assert r.code == aiocoap.CREATED, r
        assert (await a.send(7)).code == aiocoap.CHANGED
        assert stored_values(gw, "node-a") == [7]
        # device management goes to the node protected, under the same context
        res = await gw.dm.read("node-a", "/3/0/0")
        assert res.code == "2.05" and res.values == {"/3/0/0": "acme"}
        r = await a.ask(aiocoap.POST, "", location=a.location)  # Update
        assert r.code == aiocoap.CHANGED
        r = await a.ask(aiocoap.DELETE, "", location=a.location)
        assert r.code == aiocoap.DELETED
        assert gw.store.registration("node-a").state == "deregistered"


@pytest.mark.timeout_s(60)
async def test_unprotected_requests_are_refused_4_01_when_oscore_is_required(tmp_path):
    async with oscore_gateway(tmp_path) as gw, node(gw, tmp_path / "p", None) as plain:
        r = await plain.register("anyone")
        assert r.code == aiocoap.UNAUTHORIZED
        assert gw.store.registration("anyone") is None
        assert (await plain.send(1)).code == aiocoap.UNAUTHORIZED


@pytest.mark.timeout_s(60)
async def test_the_takeover_is_refused_registration_update_send_and_delete(tmp_path):
    """The attack of the issue, with and without a valid context of another node."""
    async with (oscore_gateway(tmp_path) as gw,
                node(gw, tmp_path / "v", "victim") as victim,
                node(gw, tmp_path / "m", "mallory") as mallory,
                node(gw, tmp_path / "x", None) as plain):
        assert (await victim.register("victim")).code == aiocoap.CREATED
        before = gw.store.registration("victim")
        # a valid context of another node cannot register under the victim's name
        r = await mallory.register("victim")
        assert r.code == aiocoap.FORBIDDEN, r
        # nor update, delete or send into the victim's registration
        assert (await mallory.ask(aiocoap.POST, "", location=victim.location)).code \
            == aiocoap.FORBIDDEN
        assert (await mallory.ask(aiocoap.DELETE, "", location=victim.location)).code \
            == aiocoap.FORBIDDEN
        assert (await mallory.register("mallory")).code == aiocoap.CREATED
        assert (await mallory.send(666)).code == aiocoap.CHANGED
        # unprotected, nothing at all
        assert (await plain.ask(aiocoap.POST, "", location=victim.location)).code \
            == aiocoap.UNAUTHORIZED
        assert (await plain.ask(aiocoap.DELETE, "", location=victim.location)).code \
            == aiocoap.UNAUTHORIZED
        after = gw.store.registration("victim")
        assert after.state == "registered" and (after.host, after.port) == (
            before.host, before.port)
        assert stored_values(gw, "victim") == [] and stored_values(gw, "mallory") == [666]


@pytest.mark.timeout_s(60)
async def test_a_revoked_context_is_refused_and_the_registration_stays_its_own(tmp_path):
    async with oscore_gateway(tmp_path) as gw, node(gw, tmp_path / "a", "node-a") as a:
        assert (await a.register("node-a")).code == aiocoap.CREATED
        assert gw.keys is not None
        gw.keys.revoke("node-a")
        with pytest.raises(oscore.NotAProtectedMessage) as info:  # an unknown kid now:
            await a.send(1)  # the gateway's 4.01 cannot be protected (RFC 8613 8.2)
        assert info.value.plain_message.code == aiocoap.UNAUTHORIZED
        assert stored_values(gw, "node-a") == []


class Wire:
    """A node's side as raw datagrams: requests protected with aiocoap's own context,
    sent from a plain UDP socket, so they can be replayed and tampered with."""

    def __init__(self, gw: Gateway, folder: Path, ep: str) -> None:
        if gw.keys is None:
            raise AssertionError("the gateway has no key store")
        gw.keys.create(ep)
        write_credentials(folder, gw.keys.export(ep).to_json(), gw.coap_uri)
        self.ctx = oscore.FilesystemSecurityContext(str(folder / ep))
        self.port = gw.config.coap.port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.mid = 100

    def protect(self, code: Any, path: str, payload: bytes = b"", query: str = "",
                cf: int | None = None) -> bytes:
        msg = aiocoap.Message(code=code, uri_path=tuple(p for p in path.split("/") if p),
                              uri_query=tuple(q for q in query.split("&") if q),
                              payload=payload, content_format=cf)
        protected, _ = self.ctx.protect(msg)
        self.mid += 1
        protected.mid, protected.token, protected.mtype = self.mid, b"tk", aiocoap.CON
        return bytes(protected.encode())

    async def exchange(self, datagram: bytes, mid: int | None = None) -> aiocoap.Message:
        """Send (with a fresh MID unless given) and return the gateway's answer."""
        data = bytearray(datagram)
        self.mid += 1
        data[2:4] = (mid if mid is not None else self.mid).to_bytes(2, "big")
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, bytes(data), ("127.0.0.1", self.port))
        return aiocoap.Message.decode(await self.answer())

    async def answer(self) -> bytes:
        """The gateway's answer to the request just sent: piggybacked, or separate
        (RFC 7252 section 5.2.2: an empty ACK first when answering takes a while, then
        the response as a CON, which is acknowledged here)."""
        loop = asyncio.get_running_loop()
        raw = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), 10)
        if raw[1] == 0 and raw[0] >> 4 & 3 == 2:  # an empty ACK: the response follows
            raw = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), 10)
            if raw[0] >> 4 & 3 == 0:  # a CON response: ACK it (type 2, code 0, its MID)
                await loop.sock_sendto(self.sock, bytes([0x60, 0, raw[2], raw[3]]),
                                       ("127.0.0.1", self.port))
        return raw

    def close(self) -> None:
        self.sock.close()


def send_pack(value: int) -> bytes:
    return cbor2.dumps([{-2: "/33000/0/", 0: "0", 2: value}])


@pytest.mark.timeout_s(60)
async def test_replayed_tampered_truncated_and_wrongly_keyed_requests_store_nothing(tmp_path):
    async with oscore_gateway(tmp_path) as gw:
        w = Wire(gw, tmp_path / "w", "node-w")
        try:
            reg = w.protect(aiocoap.POST, "rd", LINKS, "ep=node-w&lt=60", cf=40)
            assert (await w.exchange(reg)).code == aiocoap.CHANGED  # protected: outer 2.04
            send = w.protect(aiocoap.POST, "dp", send_pack(1), cf=112)
            assert (await w.exchange(send)).code == aiocoap.CHANGED
            assert stored_values(gw, "node-w") == [1]
            # the same protected Send again, as a new message: a replay
            r = await w.exchange(send)
            assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None
            # one ciphertext bit flipped; the tag cut short; the right kid, a wrong key
            fresh = w.protect(aiocoap.POST, "dp", send_pack(2), cf=112)
            flipped = bytearray(fresh)
            flipped[-3] ^= 0x01
            assert (await w.exchange(bytes(flipped))).code == aiocoap.BAD_REQUEST
            assert (await w.exchange(fresh[:-2])).code == aiocoap.BAD_REQUEST
            w.ctx.sender_key = bytes(16)  # what a node with another secret would use
            wrong = w.protect(aiocoap.POST, "dp", send_pack(3), cf=112)
            assert (await w.exchange(wrong)).code == aiocoap.BAD_REQUEST
            assert stored_values(gw, "node-w") == [1]
        finally:
            w.close()


@pytest.mark.timeout_s(60)
async def test_a_request_under_a_key_id_the_gateway_does_not_know_is_refused(tmp_path):
    async with oscore_gateway(tmp_path) as gw:
        w = Wire(gw, tmp_path / "w", "node-w")
        try:
            w.ctx.sender_id = b"\x7f\x7e\x7d"  # a kid no context of the gateway has
            r = await w.exchange(w.protect(aiocoap.POST, "rd", LINKS, "ep=node-w", cf=40))
            assert r.code == aiocoap.UNAUTHORIZED
            assert gw.store.registration("node-w") is None
        finally:
            w.close()


@pytest.mark.timeout_s(60)
async def test_nosec_gateway_refuses_unprotected_requests_for_a_provisioned_endpoint(tmp_path):
    """In the development mode too, an endpoint that has an OSCORE context is never
    accepted unprotected (its name cannot be taken over); other endpoints can."""
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\nid = "dev"\ndb = "gw.db"\nsecurity = "nosec"\n'
                    f'[coap]\nport = {free_port()}\n[security]\nkey_file = "gw.key"\n'
                    "[shadow]\nenabled = false\n")
    gw = Gateway(load_config(conf), allow_nosec=True)
    await gw.start()
    try:
        async with node(gw, tmp_path / "a", "node-a") as a, \
                node(gw, tmp_path / "p", None) as plain:
            assert (await plain.register("node-a")).code == aiocoap.UNAUTHORIZED
            assert (await a.register("node-a")).code == aiocoap.CREATED
            assert (await plain.ask(aiocoap.DELETE, "", location=a.location)).code \
                == aiocoap.UNAUTHORIZED
            assert (await plain.register("dev-board")).code == aiocoap.CREATED
    finally:
        await gw.shutdown()


@pytest.mark.timeout_s(90)
async def test_aiocoap_client_with_exported_credentials_registers_and_sends(tmp_path):
    """The peer check of the issue: the node side as exported (aiocoap's credentials
    format), used by the real ``aiocoap-client`` command against the real gateway."""
    client = require_tool("aiocoap-client", "pip install 'aiocoap[oscore]'")
    async with oscore_gateway(tmp_path) as gw:
        assert gw.keys is not None
        gw.keys.create("node-c")
        creds = write_credentials(tmp_path / "creds", gw.keys.export("node-c").to_json(),
                                  gw.coap_uri)
        (tmp_path / "creds" / "links").write_bytes(LINKS)
        (tmp_path / "creds" / "pack").write_bytes(send_pack(42))

        async def run(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                client, "--credentials", str(creds), *args, cwd=tmp_path / "creds",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode(errors="replace")
            return out.decode(errors="replace")

        await run("-m", "POST", "--content-format", "application/link-format",
                  "--payload", "@links", f"{gw.coap_uri}/rd?ep=node-c&lt=60")
        reg = gw.store.registration("node-c")
        assert reg is not None and reg.state == "registered"
        await run("-m", "POST", "--content-format", "application/senml+cbor",
                  "--payload", "@pack", f"{gw.coap_uri}/dp")
        assert stored_values(gw, "node-c") == [42]
        # the same client without the credentials: refused, nothing stored
        proc = await asyncio.create_subprocess_exec(
            client, "-m", "POST", "--content-format", "application/senml+cbor",
            "--payload", "@pack", f"{gw.coap_uri}/dp", cwd=tmp_path / "creds",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert b"4.01" in out or b"Unauthorized" in out, out
        assert stored_values(gw, "node-c") == [42]


def test_gateway_check_refuses_a_bad_key_file_in_one_line(tmp_path):
    """Before, 'aiot gateway check' passed a config whose key file was unreadable or
    not a key; only 'run' found out."""
    from aiotkit.gateway.config import check_runnable
    from aiotkit.gateway.errors import ConfigError

    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\ndb = "gw.db"\n[security]\nkey_file = "gw.key"\n')
    (tmp_path / "gw.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match="security.key_file"):
        check_runnable(load_config(conf))
    (tmp_path / "gw.key").unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        check_runnable(load_config(conf))
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    check_runnable(load_config(conf))
