"""libcoap's ``coap-client-notls`` (Debian libcoap3-bin), a CoAP peer not written here, as an
LwM2M client of the gateway: Register with link-format, Update, Send in SenML-JSON and
SenML-CBOR, De-register; the readings are then visible through the REST API.

Every request goes out from one fixed source port (``-p``): the gateway knows a Send's
endpoint by the address it registered from. ``tests/gateway/test_lwm2m.py`` has the plain
Register/De-register exchange; this adds what a client does in between.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import aiohttp
import cbor2
import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from plugins.services import free_port, require_tool

TOKEN = "viewer-token-0123456789"


@pytest.fixture(scope="module")
def coap_client() -> str:
    return require_tool("coap-client-notls", "apt-get install libcoap3-bin")


async def _coap(binary: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", "7", "-B", "5", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode(errors="replace")


async def test_int101_int102_int306_int103_libcoap_client_through_a_registration(
        tmp_path: Path, coap_client: str):
    assert shutil.which(coap_client)
    (tmp_path / "tokens").write_text(f"viewer {TOKEN}\n")
    (tmp_path / "tokens").chmod(0o600)
    conf = tmp_path / "gw.toml"
    port = free_port()
    conf.write_text(
        '[gateway]\nid = "lc"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {port}\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n')
    gw = Gateway(load_config(conf), allow_nosec=True)
    await gw.start()
    try:
        me = str(free_port())
        base = f"coap://127.0.0.1:{port}"
        # int-101: Register, link-format payload with attributes
        out = await _coap(coap_client, "-p", me, "-m", "post", "-t", "40",
                          "-e", '</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>,</3303/0>',
                          f"{base}/rd?ep=libcoap-1&lt=120&lwm2m=1.1&b=U")
        assert "c:2.01" in out, out
        reg = gw.store.registration("libcoap-1")
        assert reg is not None and reg.port == int(me)
        assert re.search(rf"Location-Path:rd, Location-Path:{reg.reg_id}", out), out

        # int-102: Update with a new lifetime
        out = await _coap(coap_client, "-p", me, "-m", "post",
                          f"{base}/rd/{reg.reg_id}?lt=300")
        assert "c:2.04" in out, out
        assert gw.store.registration("libcoap-1").lifetime == 300  # type: ignore[union-attr]

        # int-306 (Send): SenML-JSON (110) on the command line, SenML-CBOR (112) from a file
        senml_json = json.dumps([{"bn": "/3303/0/", "n": "5700", "v": 24.5},
                                 {"n": "5701", "vs": "Cel"}])
        out = await _coap(coap_client, "-p", me, "-m", "post", "-t", "110", "-e", senml_json,
                          f"{base}/dp")
        assert "c:2.04" in out, out
        pack = tmp_path / "send.cbor"
        pack.write_bytes(cbor2.dumps([{-2: "/3/0/", 0: "9", 2: 77},
                                      {0: "15", 3: "Europe/Berlin"}]))
        out = await _coap(coap_client, "-p", me, "-m", "post", "-t", "112", "-f", str(pack),
                          f"{base}/dp")
        assert "c:2.04" in out, out
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http, http.get(
                f"{gw.rest.url}/api/v1/endpoints/libcoap-1/readings") as resp:  # type: ignore
            readings = {r["path"]: r["value"] for r in (await resp.json())["readings"]}
        assert readings == {"/3303/0/5700": 24.5, "/3303/0/5701": "Cel", "/3/0/9": 77,
                            "/3/0/15": "Europe/Berlin"}

        # a Send in a format the Send operation does not take: 4.15, nothing stored
        out = await _coap(coap_client, "-p", me, "-m", "post", "-t", "0", "-e", "24.5",
                          f"{base}/dp")
        assert "4.15" in out, out

        # int-103: De-register
        out = await _coap(coap_client, "-p", me, "-m", "delete", f"{base}/rd/{reg.reg_id}")
        assert "c:2.02" in out, out
        assert gw.store.registration("libcoap-1").state == "deregistered"  # type: ignore
    finally:
        await gw.shutdown()
