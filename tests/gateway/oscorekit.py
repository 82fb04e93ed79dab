"""Shared pieces of the OSCORE key-store tests: a store on a fresh database, a node's
side as aiocoap loads it (``FilesystemSecurityContext`` from what the gateway
exported), messages put on the wire and read back, an aiocoap server whose site is
wrapped in ``OscoreSiteWrapper`` with a ``KeyStore`` as its credentials, and a whole
gateway with OSCORE required (``oscore_gateway``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap import oscore, resource
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import SecurityConfig, load_config
from aiotkit.gateway.security import KeyStore, generate_key_hex, write_credentials
from aiotkit.gateway.storage import SqliteStorage
from plugins.services import free_port

KEY = generate_key_hex()


def open_store(db: Path, key: str = KEY, *, synchronous: str = "FULL",
               max_loaded: int = 20000) -> tuple[SqliteStorage, KeyStore]:
    storage = SqliteStorage.open(db, synchronous=synchronous)
    try:
        ks = KeyStore.open(storage.keys, SecurityConfig(max_loaded=max_loaded),
                           environ={"AIOT_GATEWAY_KEY": key}, database=str(db))
    except BaseException:
        storage.close()
        raise
    assert ks is not None
    return storage, ks


def node_side(ks: KeyStore, endpoint: str, folder: Path,
              uri: str = "coap://127.0.0.1:5683") -> Path:
    """Export ``endpoint``'s node side into ``folder`` (aiocoap's credentials)."""
    return write_credentials(folder, ks.export(endpoint).to_json(), uri)


def node_context(folder: Path, endpoint: str) -> Any:
    """The node's own context, as aiocoap-client would load it."""
    return oscore.FilesystemSecurityContext(str(folder / endpoint))


def on_the_wire(msg: aiocoap.Message | bytes, mid: int = 1) -> aiocoap.Message:
    """``msg`` (or the datagram it was) as the other side receives it; a message read
    this way keeps its datagram (``.datagram``) for a replay."""
    if isinstance(msg, aiocoap.Message):
        msg.mid = mid
        msg.token = b"tk"
        msg.mtype = aiocoap.CON
        raw = msg.encode()
    else:
        raw = msg
    out = aiocoap.Message.decode(raw)
    out.datagram = raw
    return out


def request_from(node: Any, path: str = "hello", mid: int = 1) -> aiocoap.Message:
    protected, _ = node.protect(aiocoap.Message(code=aiocoap.GET, uri_path=(path,)))
    return on_the_wire(protected, mid)


class Hello(resource.Resource):
    """GET: who the key store says asked (``endpoint_of(request.remote)``); 4.01 for an
    unprotected request."""

    def __init__(self, ks: KeyStore) -> None:
        super().__init__()
        self.ks = ks

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        endpoint = self.ks.endpoint_of(request.remote)
        if endpoint is None:  # not protected with a context of the store
            return aiocoap.Message(code=aiocoap.UNAUTHORIZED)
        return aiocoap.Message(payload=f"hello {endpoint}".encode())


@contextlib.asynccontextmanager
async def oscore_server(ks: KeyStore, port: int) -> AsyncIterator[aiocoap.Context]:
    site = resource.Site()
    site.add_resource(["hello"], Hello(ks))
    ctx = await aiocoap.Context.create_server_context(
        OscoreSiteWrapper(site, ks), bind=("127.0.0.1", port), transports=["oscore", "udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


@contextlib.asynccontextmanager
async def oscore_gateway(tmp_path: Path, coap: str = "") -> AsyncIterator[Gateway]:
    """A gateway with OSCORE required (the default) in ``tmp_path``; ``coap``: more
    ``[coap]`` lines. Started again on the same folder, it keeps its database."""
    key = tmp_path / "gw.key"
    if not key.exists():
        key.write_text(generate_key_hex() + "\n")
        key.chmod(0o600)
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text('[gateway]\nid = "osc"\ndb = "gw.db"\n'
                        f'[coap]\nport = {free_port()}\n{coap}'
                        '[security]\nkey_file = "gw.key"\n'
                        "[dm]\nrequest_timeout_s = 10.0\n[shadow]\nenabled = false\n")
    gw = Gateway(load_config(conf))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()
