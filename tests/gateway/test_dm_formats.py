"""Content-Format negotiation (``gateway/dm/requests.py``) against clients built with only
the formats they declare: a C client without TLV answers a Read without Accept 5.00."""

from __future__ import annotations

import pytest
from aiotkit.gateway.dm import OperationFailed
from fakeclient import SENML_CBOR, SENML_JSON, TEXT, TLV, FakeClient

FAST = "[dm]\nrequest_timeout_s = 2.0\n"
TEMP = "/3303/0/5700"


async def test_read_and_observe_of_a_client_without_tlv_ask_its_declared_senml_json(
        gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient(
            "dev-json", cfg.coap_uri, formats=(SENML_JSON,)) as dev:
        await dev.register()
        res = await gw.dm.read("dev-json", "/3/0")
        assert dev.seen[-1].opt.accept == SENML_JSON
        assert res.content_format == SENML_JSON and res.values["/3/0/9"] == 87
        obs = await gw.dm.observe("dev-json", TEMP)
        assert dev.seen[-1].opt.accept == SENML_JSON and obs.values == {TEMP: 21.5}
        both = await gw.dm.read_composite("dev-json", ["/3/0/9", TEMP])
        assert dev.seen[-1].opt.content_format == SENML_JSON
        assert both.values == {"/3/0/9": 87, TEMP: 21.5}
        wrote = await gw.dm.write("dev-json", "/3303/0/5750", "hall")
        assert wrote.ok and dev.values[(3303, 0, 5750)] == "hall"
        # the override still asks for what the caller named (and this client refuses it)
        with pytest.raises(OperationFailed) as refused:
            await gw.dm.read("dev-json", "/3/0", accept=TLV)
        assert refused.value.result.code == "5.00"


@pytest.mark.parametrize("lwm2m, formats, expected", [
    ("1.0", None, TLV),  # 1.0 lists nothing: TLV, the format every 1.0 client has
    ("1.1", None, SENML_CBOR),  # 1.1 lists nothing: SenML-CBOR
    ("1.1", (TLV,), TLV),  # a 1.1 client with TLV only
    ("1.0", (SENML_CBOR,), SENML_CBOR),  # what a client lists wins over its version
    ("1.1", (SENML_JSON, SENML_CBOR), SENML_CBOR),  # several: the gateway's preference
])
async def test_read_without_an_accept_option_never_leaves_the_choice_to_the_client(
        gateway_config, running_gateway, lwm2m, formats, expected):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient(
            "dev", cfg.coap_uri, lwm2m=lwm2m, formats=formats) as dev:
        await dev.register()
        res = await gw.dm.read("dev", "/3/0")
        assert dev.seen[-1].opt.accept == expected
        assert res.content_format == expected and res.values["/3/0/0"] == "aiotkit"
        if formats and len(formats) > 1:  # the override picks another declared one
            other = await gw.dm.read("dev", "/3/0", accept=SENML_JSON)
            assert other.content_format == SENML_JSON and dev.seen[-1].opt.accept == SENML_JSON


async def test_read_of_one_resource_of_a_10_client_asks_plain_text(gateway_config,
                                                                  running_gateway):
    """1.0, no ``ct``: plain text for one single-instance resource (what such a client
    answers by default; lwm2m-node-lib has nothing else), TLV for the rest."""
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev", cfg.coap_uri,
                                                      lwm2m="1.0") as dev:
        await dev.register()
        res = await gw.dm.read("dev", TEMP)
        assert dev.seen[-1].opt.accept == TEXT and res.values == {TEMP: 21.5}
        await gw.dm.read("dev", "/3303/0")
        assert dev.seen[-1].opt.accept == TLV
