"""Observe / Notify through ``Gateway.dm``: stored as readings, persisted, restored after a
gateway restart and a re-Register, cancelled on De-register; Send in every format.

OMA ETS INT 1.2 names: int-301 observation and notification, int-303 cancel with
Observe=1, int-304/305 Observe-Composite and its cancel, int-306 Send (here in the
formats a third-party client may use). Restart, re-Register and De-register behaviour
has no ETS case.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.dm import OperationFailed
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from fakeclient import FakeClient

FAST = "[dm]\nrequest_timeout_s = 2.0\n"
TEMP = "/3303/0/5700"


def readings_of(gw, path: str) -> list[object]:
    return [r.value for r in gw.store.readings() if r.path == path]


def sends(gw) -> Callable[[], asyncio.Queue[RegistryEvent]]:
    """A queue of the gateway's committed "send" events (Sends and Notifications)."""
    queue: asyncio.Queue[RegistryEvent] = asyncio.Queue()
    gw.registry.add_listener(lambda e: queue.put_nowait(e) if e.kind == "send" else None)
    return queue


async def test_int301_observe_notifications_stored_as_readings(gateway_config,
                                                               running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        res = await gw.dm.observe("dev-1", TEMP)
        assert res.code == "2.05" and res.values == {TEMP: 21.5}
        assert res.observation_id is not None
        assert dev.seen[-1].opt.observe == 0 and dev.observing(TEMP) == 1
        await events.get()  # the first answer is stored too
        dev.set((3303, 0, 5700), 22.25)
        event = await events.get()
        assert [(r.path, r.value) for r in event.records] == [(TEMP, 22.25)]
        assert readings_of(gw, TEMP) == [21.5, 22.25]
        [obs] = gw.dm.observations("dev-1")
        assert obs["live"] and obs["paths"] == [TEMP] and obs["token"]
        await asyncio.sleep(0)  # the link to the Send is written once its COMMIT returned
        notes = gw.dm.db.notifications(res.observation_id)
        assert len(notes) == 2 and notes[1][1] == 1  # Observe sequence number 1
        json.dumps(gw.dm.observations())


async def test_int303_cancel_observation_with_observe_1(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        await gw.dm.observe("dev-1", TEMP)
        await events.get()  # the first answer's readings are committed
        await gw.dm.cancel_observe("dev-1", TEMP)
        assert dev.seen[-1].code == Code.GET and dev.seen[-1].opt.observe == 1
        assert gw.dm.observations("dev-1") == []
        before = len(gw.store.readings())
        dev.set((3303, 0, 5700), 30.0)  # ACKed, not stored (RST from the next)
        await gw.dm.read("dev-1", "/3/0/9")
        assert len(gw.store.readings()) == before


async def test_observe_unknown_path_is_404_and_not_persisted(gateway_config,
                                                             running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        with pytest.raises(OperationFailed) as info:
            await gw.dm.observe("dev-1", "/3303/0/5999")
        assert info.value.code == Code.NOT_FOUND
        assert gw.dm.observations() == []


async def test_int304_int305_observe_composite_and_cancel(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        res = await gw.dm.observe_composite("dev-1", ["/3/0/9", TEMP])
        assert res.values == {"/3/0/9": 87, TEMP: 21.5}
        assert dev.seen[-1].code == Code.FETCH and dev.seen[-1].opt.observe == 0
        await events.get()
        dev.set((3, 0, 9), 55)
        event = await events.get()
        assert {r.path: r.value for r in event.records} == {"/3/0/9": 55, TEMP: 21.5}
        [obs] = gw.dm.observations("dev-1")
        assert obs["composite"] and obs["paths"] == ["/3/0/9", TEMP]
        res = await gw.dm.cancel_observe_composite("dev-1", ["/3/0/9", TEMP])
        assert res.code == "2.05" and dev.seen[-1].code == Code.FETCH
        assert dev.seen[-1].opt.observe == 1 and gw.dm.observations() == []


async def test_observation_restored_after_gateway_restart(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with FakeClient("dev-1", cfg.coap_uri) as dev:
        async with running_gateway(cfg) as gw:
            await dev.register()
            await gw.dm.observe("dev-1", TEMP)
        dev.new_observation.clear()
        async with running_gateway(cfg) as gw:
            events = sends(gw)
            await dev.new_observation.wait()  # re-observed at start: registration live
            await events.get()  # its first answer
            dev.set((3303, 0, 5700), 19.0)
            while (await events.get()).records[0].value != 19.0:
                pass
            assert readings_of(gw, TEMP)[-1] == 19.0
            [obs] = gw.dm.observations("dev-1")
            assert obs["live"]


async def test_reregister_reobserves_and_reapplies_attributes(gateway_config,
                                                              running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        await gw.dm.write_attributes("dev-1", TEMP, pmax=30)
        await gw.dm.observe("dev-1", TEMP)
        await events.get()
        dev.attributes.clear()  # a rebooted client forgot them
        await dev.register()  # a new registration
        await events.get()  # the re-established observation's first answer
        assert dev.attributes == {TEMP: ["pmax=30"]}
        puts = [m for m in dev.seen if m.code == Code.PUT]
        assert list(puts[-1].opt.uri_query) == ["pmax=30"]
        [obs] = gw.dm.observations("dev-1")
        assert obs["live"] and obs["reg_id"] == dev.location[1]


async def test_deregister_cancels_observations(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        await gw.dm.observe("dev-1", TEMP)
        await dev.deregister()
        assert gw.dm.observations("dev-1") == []


async def test_int306_send_lwm2m_cbor_and_senml_json(gateway_config, running_gateway):
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        await dev.register()
        resp = await dev.send(cbor2.dumps({3303: {0: {5700: 23.5}}}), 11544)
        assert resp.code == Code.CHANGED, resp.payload
        resp = await dev.send(json.dumps([{"n": "/3/0/9", "v": 50}]).encode(), 110)
        assert resp.code == Code.CHANGED, resp.payload
        assert readings_of(gw, TEMP) == [23.5] and readings_of(gw, "/3/0/9") == [50]
        resp = await dev.send(b"\x00", 11542)  # TLV cannot carry a Send
        assert resp.code == Code.UNSUPPORTED_CONTENT_FORMAT
        resp = await dev.send(cbor2.dumps({3303: {0: {5700: "hot"}}}), 11544)
        assert resp.code == Code.BAD_REQUEST  # a float resource, by its DDF


# -- auto-observe: [dm] observe ------------------------------------------------------------

AUTO = FAST + 'observe = ["/3313/0", "/3303/0", "/3/0/9"]\n'


def observes_of(dev: FakeClient, path: str) -> int:
    """Observe (0) requests the client got for ``path``."""
    return sum(1 for m in dev.seen if m.code == Code.GET and m.opt.observe == 0
               and "/" + "/".join(m.opt.uri_path) == path)


async def test_auto_observe_on_register_persists_and_stores_notifications(
        gateway_config, running_gateway):
    cfg = gateway_config(AUTO)
    assert cfg.dm.observe == ("/3313/0", "/3303/0", "/3/0/9")
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()  # answered before any Observe: the test got its 2.01
        firsts = {(await events.get()).records[0].path for _ in range(2)}
        assert firsts == {"/3/0/9", TEMP}  # both first answers stored
        assert dev.observing("/3303/0") == dev.observing("/3/0/9") == 1
        assert observes_of(dev, "/3313/0") == 0  # the node has no /3313/0
        obs = {o["paths"][0]: o for o in gw.dm.observations("dev-1")}
        assert sorted(obs) == ["/3/0/9", "/3303/0"]
        assert all(o["live"] and o["reg_id"] == dev.location[1] for o in obs.values())
        dev.set((3303, 0, 5700), 24.5)
        event = await events.get()
        assert [(r.path, r.value) for r in event.records if r.path == TEMP] == [(TEMP, 24.5)]
        assert readings_of(gw, TEMP) == [21.5, 24.5]
        await asyncio.sleep(0)
        assert len(gw.dm.db.notifications(obs["/3303/0"]["id"])) == 2


async def test_auto_observe_skips_a_node_without_the_object(gateway_config,
                                                            running_gateway):
    cfg = gateway_config(AUTO)
    async with running_gateway(cfg) as gw, FakeClient("dev-2", cfg.coap_uri) as dev:
        for path in [p for p in dev.values if p[:2] == (3303, 0)]:
            del dev.values[path]
        events = sends(gw)
        await dev.register()
        await events.get()  # /3/0/9 observed, configured after /3303/0: that one skipped
        assert observes_of(dev, "/3303/0") == observes_of(dev, "/3313/0") == 0
        assert [o["paths"] for o in gw.dm.observations("dev-2")] == [["/3/0/9"]]


async def test_auto_observe_on_reregister_observes_each_path_once(gateway_config,
                                                                  running_gateway):
    cfg = gateway_config(FAST + 'observe = ["/3303/0"]\n')
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        await events.get()
        await dev.register()  # a new registration: the old observation is gone
        await events.get()  # the first answer of the observation established again
        assert observes_of(dev, "/3303/0") == 2  # once per registration, not twice
        [obs] = gw.dm.observations("dev-1")
        assert obs["live"] and obs["reg_id"] == dev.location[1]


async def test_auto_observe_refused_is_logged_not_raised(gateway_config, running_gateway,
                                                         caplog):
    cfg = gateway_config(FAST + 'observe = ["/3303/0/5999", "/3/0/9"]\n')
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        await events.get()  # /3/0/9, configured after the refused path
        assert "auto-observe of /3303/0/5999 on ep=dev-1 failed" in caplog.text
        assert [o["paths"] for o in gw.dm.observations("dev-1")] == [["/3/0/9"]]
        await dev.update()  # the gateway still serves the node


@pytest.mark.parametrize("value, problem", [
    ('"/3303/0"', "must be a list of strings"),
    ('["/3303/x"]', "is not an LwM2M path"),
    ('["/"]', "the root / cannot be observed"),
    ('[3303]', "must be a list of strings"),
])
def test_auto_observe_config_rejects_bad_paths(gateway_config, value, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        gateway_config(f"[dm]\nobserve = {value}\n")
    assert "dm.observe" in str(info.value)


def _observe_request(dev: FakeClient, key: str) -> object:
    return next(m for m in reversed(dev.seen) if m.opt.observe == 0
                and (m.code == Code.FETCH or "/" + "/".join(m.opt.uri_path) == key))


async def test_cancel_observation_carries_the_observations_own_token(gateway_config,
                                                                     running_gateway):
    """A client that matches observations by token (RFC 7641 §3.6) stops notifying only
    when the cancelling GET carries that token; a fresh token cancels nothing."""
    cfg = gateway_config(FAST)
    async with running_gateway(cfg) as gw, FakeClient("dev-1", cfg.coap_uri) as dev:
        events = sends(gw)
        await dev.register()
        await gw.dm.observe("dev-1", TEMP)
        await events.get()
        token = _observe_request(dev, TEMP).token  # type: ignore[attr-defined]
        assert dev.observing(TEMP) == 1
        res = await gw.dm.cancel_observe("dev-1", TEMP)
        assert res.code == "2.05"
        [cancel] = dev.cancels
        assert cancel.opt.observe == 1 and cancel.token == token
        assert dev.observing(TEMP) == 0  # the client's observation is gone, not just ours
        # the same for a composite observation
        await gw.dm.observe_composite("dev-1", ["/3/0/9", TEMP])
        key = f"/3/0/9,{TEMP}"
        token = _observe_request(dev, key).token  # type: ignore[attr-defined]
        await gw.dm.cancel_observe_composite("dev-1", ["/3/0/9", TEMP])
        assert dev.cancels[-1].token == token and dev.observing(key) == 0
        # and a read right after still works (the kept token left nothing behind)
        assert (await gw.dm.read("dev-1", "/3/0/9")).values == {"/3/0/9": 87}


async def test_cancel_after_a_gateway_restart_uses_the_reestablished_token(gateway_config,
                                                                           running_gateway):
    cfg = gateway_config(FAST)
    async with FakeClient("dev-1", cfg.coap_uri) as dev:
        async with running_gateway(cfg) as gw:
            await dev.register()
            await gw.dm.observe("dev-1", TEMP)
        dev.new_observation.clear()
        async with running_gateway(cfg) as gw:
            await dev.new_observation.wait()  # re-observed at start, with a new token
            token = _observe_request(dev, TEMP).token  # type: ignore[attr-defined]
            while not gw.dm.observations("dev-1")[0]["live"]:
                await asyncio.sleep(0.01)
            before = dev.observing(TEMP)  # the first run's too: it shut down, no cancel
            await gw.dm.cancel_observe("dev-1", TEMP)
            assert dev.cancels[-1].token == token and token not in dev.observe_tokens
            assert dev.observing(TEMP) == before - 1
