"""A third-party LwM2M client (lwm2m-node-lib 1.4.0, Telefonica, from npm) against the
gateway: it registers, is read through ``Gateway.dm`` and through the REST API, written,
executed, observed (its Notifications stored as readings), updates and de-registers.

The library is an LwM2M 1.0 client (plain text values, resource paths only; it does not
answer a SenML-CBOR Write at all): it registers with ``lwm2m=1.0`` so the gateway writes
plain text to it. Quirk seen on the wire: its first Notification repeats the Observe
sequence number of the Observe answer (1), which an RFC 7641 client must treat as stale,
so the test changes the value twice and expects the second change.

Names follow OMA-ETS-LightweightM2M_INT 1.2 (``LightweightM2M-1.1-int-NNN``).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from plugins.services import free_port

TOKEN = "operator-token-0123456789"


async def _gateway(tmp_path: Path) -> Gateway:
    (tmp_path / "tokens").write_text(f"operator {TOKEN} interop\n")
    (tmp_path / "tokens").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nid = "interop"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n[dm]\nrequest_timeout_s = 5.0\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n')
    gw = Gateway(load_config(conf), allow_nosec=True)
    await gw.start()
    return gw


async def test_int101_to_int103_node_lib_client_registers_is_read_observed_deregisters(
        tmp_path, node_lib, json_peer):
    gw = await _gateway(tmp_path)
    client = None
    try:
        client = await json_peer.start(node_lib, "lwm2m_client.js", "--host", "127.0.0.1",
                                       "--port", str(gw.config.coap.port),
                                       "--endpoint", "nodelib-1", "--lifetime", "60")
        # int-101: initial registration
        reg_event = await client.event(lambda e: e["event"] == "registered", "registration")
        reg = gw.store.registration("nodelib-1")
        assert reg is not None and reg.state == "registered"
        assert reg_event["location"] == f"/rd/{reg.reg_id}"
        assert (reg.lwm2m_version, reg.binding, reg.lifetime) == ("1.0", "U", 60)
        assert reg.object_links == "</3/0>,</3303/0>"
        assert reg.port == reg_event["port"]  # it serves on the port it registered from

        # int-2xx: Read through the Python API, the values typed by the DDF
        res = await gw.dm.read("nodelib-1", "/3/0/0")
        assert res.values == {"/3/0/0": "Telefonica lwm2m-node-lib"}
        res = await gw.dm.read("nodelib-1", "/3303/0/5700")
        assert res.values == {"/3303/0/5700": 21.5}
        await client.event(lambda e: e.get("event") == "read" and e["path"] == "/3303/0/5700",
                           "the client's read handler")

        # ... through the REST API, then Write (plain text) and Execute
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            base = f"{gw.rest.url}/api/v1/endpoints/nodelib-1/lwm2m"  # type: ignore[union-attr]
            async with http.get(f"{base}/3/0/2") as resp:
                assert resp.status == 200
                assert (await resp.json())["values"] == {"/3/0/2": "SN-nodelib-1"}
            async with http.put(f"{base}/3/0/1", json={"value": "renamed"}) as resp:
                assert resp.status == 200, await resp.text()
            write = await client.event(lambda e: e.get("event") == "write", "the write")
            assert (write["path"], write["value"]) == ("/3/0/1", "renamed")
            async with http.get(f"{base}/3/0/1") as resp:
                assert (await resp.json())["values"] == {"/3/0/1": "renamed"}
            async with http.post(f"{base}/3/0/4/execute") as resp:
                assert resp.status == 200, await resp.text()
            await client.event(lambda e: e.get("event") == "execute", "the execute")
            async with http.get(f"{base}/3/0/9") as resp:  # a resource it does not have
                body = await resp.json()
                assert (resp.status, body["coap"]) == (404, "4.04")

        # int-3xx: Observe; Notifications are stored as readings of the endpoint
        res = await gw.dm.observe("nodelib-1", "/3303/0/5700")
        assert res.observation_id is not None and res.values == {"/3303/0/5700": 21.5}
        for value in ("22.25", "23.5"):
            await client.send(cmd="set", path="/3303/0/5700", value=value)
            await client.event(lambda e, v=value: e.get("event") == "set" and e["value"] == v,
                               f"set {value}")
        await _until(lambda: _last_value(gw, "nodelib-1", "/3303/0/5700") == 23.5,
                     "the Notification of 23.5 stored")
        (obs,) = gw.dm.observations("nodelib-1")
        assert obs["live"] and obs["paths"] == ["/3303/0/5700"]
        assert len(gw.dm.db.notifications(obs["id"])) >= 2  # the first answer + a Notify

        # int-102: registration update (the library updates from a new port)
        await client.send(cmd="update")
        await client.event(lambda e: e.get("event") == "updated", "update")
        after = gw.store.registration("nodelib-1")
        assert after is not None and after.reg_id == reg.reg_id and after.state == "registered"
        res = await gw.dm.read("nodelib-1", "/3/0/0")  # reachable at its new address
        assert res.values == {"/3/0/0": "Telefonica lwm2m-node-lib"}

        # int-103: de-registration; the gateway forgets the observation
        await client.send(cmd="deregister")
        await client.event(lambda e: e.get("event") == "deregistered", "de-registration")
        await _until(lambda: gw.store.registration("nodelib-1").state == "deregistered",
                     "the registration ended")
        assert gw.dm.observations("nodelib-1") == []
    finally:
        if client is not None:
            await client.stop()
        await gw.shutdown()


def _last_value(gw: Gateway, ep: str, path: str) -> object:
    for s in gw.store.node_summaries():
        if s.endpoint == ep:
            return s.last_values.get(path)
    return None


async def _until(check, what: str, timeout: float = 10.0) -> None:
    """Let the gateway's loop run until ``check()`` holds (it is our own loop)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
