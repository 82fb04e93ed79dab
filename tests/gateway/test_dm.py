"""Device management (``gateway/dm/manager.py``) against a real aiocoap LwM2M client on loopback.

Names follow OMA's interoperability cases (OMA-ETS-LightweightM2M_INT 1.2,
``LightweightM2M-1.1-int-NNN``) where one fits: 201 plain text, 203 TLV, 205/215 writes
in text/TLV, 223/232 read instance (SenML-CBOR), 226 partial update, 227 write replace,
241 execute (reboot), 256 write failure, 260 discover + write-attributes, 270/290
create/delete (the ETS delegates them to its Portfolio cases 1630/1635), 280
Read-Composite, 257 Write-Composite; observe/Send cases are in ``test_dm_observe.py``.
"""

from __future__ import annotations

import asyncio
import json

import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.dm import (
    DeviceTimeout,
    DMError,
    DMResult,
    NotRegistered,
    OperationFailed,
)
from aiotkit.gateway.lwm2m.codecs import CodecError
from fakeclient import SENML_CBOR, TEXT, TLV, FakeClient

FAST = "[dm]\nrequest_timeout_s = 2.0\n"


async def test_int223_int232_read_device_instance_senml_cbor(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.read("dev-1", "/3/0")
        assert res.code == "2.05" and res.content_format == SENML_CBOR
        assert res.values["/3/0/0"] == "aiotkit"
        assert res.values["/3/0/9"] == 87
        one = await gw.dm.read("dev-1", "/3303/0/5700")
        assert one.values == {"/3303/0/5700": 21.5}
        # the request came from the LwM2M server's own port
        assert dev.seen[-1].remote.hostinfo.endswith(f":{cfg.coap.port}")
        json.dumps(res.to_json())  # REST-ready
        assert DMResult.from_json(res.to_json()) == res


async def test_int203_int201_read_tlv_and_text_typed_by_ddf(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient(
            "dev-tlv", cfg.coap_uri, lwm2m="1.0", default_format=TLV) as dev:
        await dev.register()
        res = await gw.dm.read("dev-tlv", "/3/0", accept=TLV)
        assert res.content_format == TLV and dev.seen[-1].opt.accept == TLV
        assert res.values["/3/0/9"] == 87 and res.values["/3/0/0"] == "aiotkit"
        text = await gw.dm.read("dev-tlv", "/3303/0/5700", accept=TEXT)
        assert text.content_format == TEXT and text.values == {"/3303/0/5700": 21.5}


async def test_read_unknown_path_is_404(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        with pytest.raises(OperationFailed) as info:
            await gw.dm.read("dev-1", "/3/0/77")
        assert info.value.code == Code.NOT_FOUND and info.value.result.code == "4.04"
        with pytest.raises(OperationFailed) as info:
            await gw.dm.read("dev-1", "/3/0/4")  # executable
        assert info.value.code == Code.METHOD_NOT_ALLOWED
        # the failures are recorded too
        states = [r["state"] for r in gw.dm.requests("dev-1")]
        assert states == ["done", "done"]


async def test_operation_on_unregistered_endpoint(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw:
        with pytest.raises(NotRegistered):
            await gw.dm.read("nobody", "/3/0")


async def test_silent_node_times_out(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        dev.sleep()
        with pytest.raises(DeviceTimeout):
            await gw.dm.read("dev-1", "/3/0", timeout=0.3)
        [row] = gw.dm.requests("dev-1")
        assert row["state"] == "failed" and "did not answer" in row["result"]["error"]


async def test_int227_int226_write_replace_and_partial_senml(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.write("dev-1", "/1/0/1", 600)
        assert res.code == "2.04"
        assert dev.values[(1, 0, 1)] == 600
        put = dev.seen[-1]
        assert put.code == Code.PUT and put.opt.content_format == SENML_CBOR
        assert cbor2.loads(put.payload) == [{0: "/1/0/1", 2: 600}]
        await gw.dm.write("dev-1", "/3303/0", {5750: "hall"}, replace=False)
        assert dev.seen[-1].code == Code.POST and dev.values[(3303, 0, 5750)] == "hall"


async def test_int205_int215_lwm2m_10_client_written_in_text_and_tlv(
        gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient(
            "dev-10", cfg.coap_uri, lwm2m="1.0", default_format=TLV) as dev:
        await dev.register()
        await gw.dm.write("dev-10", "/1/0/1", 120)
        assert dev.seen[-1].opt.content_format == TEXT and dev.seen[-1].payload == b"120"
        await gw.dm.write("dev-10", "/3303/0", {5750: "attic"}, replace=False)
        assert dev.seen[-1].opt.content_format == TLV
        assert dev.values[(3303, 0, 5750)] == "attic" and dev.values[(1, 0, 1)] == 120


async def test_int256_write_failures(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        with pytest.raises(CodecError):  # wrong type: refused before sending
            await gw.dm.write("dev-1", "/1/0/1", "soon")
        with pytest.raises(OperationFailed) as info:  # read-only resource
            await gw.dm.write("dev-1", "/3/0/0", "other")
        assert info.value.code == Code.METHOD_NOT_ALLOWED
        with pytest.raises(OperationFailed) as info:
            await gw.dm.write("dev-1", "/3303/0/5751", "x")
        assert info.value.code == Code.NOT_FOUND


async def test_int241_execute_with_and_without_arguments(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        assert (await gw.dm.execute("dev-1", "/3/0/4")).code == "2.04"
        await gw.dm.execute("dev-1", "/3/0/4", "0='now'")
        assert dev.executed == [("/3/0/4", b""), ("/3/0/4", b"0='now'")]
        with pytest.raises(OperationFailed) as info:
            await gw.dm.execute("dev-1", "/3/0/77")
        assert info.value.code == Code.NOT_FOUND


async def test_int270_int290_create_and_delete_instance(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.create("dev-1", 3303, {5750: "new sensor"})
        assert res.code == "2.01" and res.location == "/3303/1"
        assert dev.values[(3303, 1, 5750)] == "new sensor"
        assert (await gw.dm.delete("dev-1", "/3303/1")).code == "2.02"
        assert (3303, 1, 5750) not in dev.values
        with pytest.raises(OperationFailed) as info:
            await gw.dm.delete("dev-1", "/3303/1")
        assert info.value.code == Code.NOT_FOUND


async def test_int260_discover_and_write_attributes(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.write_attributes("dev-1", "/3303/0/5700", pmin=5, pmax=60,
                                           st=0.5)
        assert res.code == "2.04"
        assert list(dev.seen[-1].opt.uri_query) == ["pmin=5", "pmax=60", "st=0.5"]
        disc = await gw.dm.discover("dev-1", "/3303/0")
        assert disc.links is not None
        assert "</3303/0/5700>;pmin=5;pmax=60;st=0.5" in disc.links
        assert dev.seen[-1].opt.accept == 40
        with pytest.raises(OperationFailed) as info:
            await gw.dm.discover("dev-1", "/9/0")
        assert info.value.code == Code.NOT_FOUND


async def test_int280_read_composite(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.read_composite("dev-1", ["/3/0/0", "/3303/0"])
        fetch = dev.seen[-1]
        assert fetch.code == Code.FETCH and fetch.opt.content_format == SENML_CBOR
        assert cbor2.loads(fetch.payload) == [{0: "/3/0/0"}, {0: "/3303/0"}]
        assert res.values == {"/3/0/0": "aiotkit", "/3303/0/5700": 21.5,
                              "/3303/0/5701": "Cel", "/3303/0/5750": "room"}
        assert res.path == "/3/0/0,/3303/0"


async def test_int257_write_composite_typed_by_ddf(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        res = await gw.dm.write_composite("dev-1", {"/3303/0/5750": "hall",
                                                    "/1/0/1": 120})
        patch = dev.seen[-1]
        assert res.code == "2.04"
        assert patch.code == Code.iPATCH and patch.opt.content_format == SENML_CBOR
        assert patch.opt.uri_path == ()
        assert dev.values[(3303, 0, 5750)] == "hall" and dev.values[(1, 0, 1)] == 120
        with pytest.raises(CodecError):  # the DDF says integer: nothing is sent
            await gw.dm.write_composite("dev-1", {"/1/0/1": "long"})
        with pytest.raises(DMError):
            await gw.dm.write_composite("dev-1", {"/1/0": 5})
        with pytest.raises(DMError):
            await gw.dm.write_composite("dev-1", {})
        assert dev.seen[-1] is patch


async def test_enqueue_on_an_awake_endpoint_runs_in_background(gateway_config,
                                                               running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        rid = gw.dm.enqueue("dev-1", "read", "/3/0/9")
        res = await gw.dm.wait(rid)
        assert res.values == {"/3/0/9": 87} and res.request_id == rid
        assert gw.dm.result(rid) == res and gw.dm.request_state(rid) == "done"
        await asyncio.sleep(0)
