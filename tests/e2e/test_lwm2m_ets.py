"""OMA ETS interoperability cases, node <-> gateway: a real MicroPython node (the
precompiled firmware in the unix-sim heap) and the real gateway (``Gateway``, its
device-management API ``gw.dm``) on loopback, every exchange OSCORE-protected (the node
provisioned from the gateway's key store, as ``aiot sim`` does).

Case IDs and titles are those of OMA-ETS-LightweightM2M-V1_1 (``LightweightM2M-1.1-int-NNN``),
as Zephyr's LwM2M interoperability suite (tests/net/lib/lwm2m/interop) lists them:
101 initial registration, 102 registration update, 103 de-registration, 104
Registration Update Trigger, 107 extending the lifetime, 201 querying basic information
in plain text, 221 operations on Security refused, 222/223/224/225 Read on object,
instance, resource, resource instance, 226 Write (partial update), 227 Write (replace),
228 Write on a resource instance, 229/280 Read-Composite, 232 querying basic information
in SenML-CBOR, 241 Execute: rebooting the device, 256 Write failure, 260 Discover, 281
partially successful Read-Composite, 301 Observe and Notify, 303 cancel with Observe=1,
306 Send, 230 Write-Composite, 1630/1635 Create/Delete a Portfolio (16) instance. The
node offers neither TLV nor SenML-JSON (203/204/215/220/231/234); the gateway's side
of those is tested against a fake client in tests/gateway. Observe-Composite (304-310)
is tested here without case numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.dm import OperationFailed
from aiotkit.gateway.lwm2m.codecs import CodecError
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from aiotkit.gateway.security import generate_key_hex
from aiotkit.tools.sim import keystore_provisioner
from plugins.services import free_port

pytestmark = pytest.mark.e2e

EP = "ets-node"
TIMEOUT_S = 60.0


class Events:
    """Registry events of one endpoint, awaitable by kind."""

    def __init__(self) -> None:
        self.seen: list[RegistryEvent] = []
        self._changed = asyncio.Condition()

    def __call__(self, event: RegistryEvent) -> None:
        if event.endpoint == EP:
            self.seen.append(event)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, kind: str, after: int = 0, timeout: float = 30.0) -> RegistryEvent:
        async def found() -> RegistryEvent:
            async with self._changed:
                while True:
                    for e in self.seen[after:]:
                        if e.kind == kind:
                            return e
                    await self._changed.wait()

        return await asyncio.wait_for(found(), timeout)


@contextlib.asynccontextmanager
async def node_and_gateway(tmp_path: Path, node_firmware, **node_cfg: object
                           ) -> AsyncIterator[tuple[Gateway, Events, asyncio.subprocess.Process]]:
    conf = tmp_path / "gw.toml"
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)
    conf.write_text('[gateway]\nid = "ets"\ndb = "gw.db"\n'  # OSCORE: the default
                    f"[coap]\nport = {free_port()}\n[dm]\nrequest_timeout_s = 10.0\n"
                    '[shadow]\nenabled = false\n[security]\nkey_file = "gw.key"\n')
    gw = Gateway(load_config(conf))
    events = Events()
    await gw.start()
    assert gw.keys is not None
    node_keys = keystore_provisioner(gw.keys)(EP)
    gw.registry.add_listener(events)
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    shutil.copy(paths.replay_dir() / "normal-97.i16", node_dir / "signal.i16")
    cfg = {"endpoint": EP, "gateway": gw.coap_uri, "lifetime": 30, "window": 256,
           "report_ms": 200, "signal": "signal.i16", "realtime": True, "features": False}
    cfg["oscore"] = {k: node_keys[k] for k in ("secret", "salt", "sender_id", "recipient_id")}
    cfg.update(node_cfg)
    (node_dir / "config.json").write_text(json.dumps(cfg))
    argv = node_firmware.argv()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=node_dir, env=node_firmware.env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            output.append(line.decode(errors="replace").rstrip())

    pumping = asyncio.create_task(pump())
    failed = True
    try:
        yield gw, events, proc
        failed = False
    finally:
        if failed:
            print("node output:", *output[-40:], sep="\n  ")
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await pumping
        await gw.shutdown()


async def window_notifications(events: Events, paths: list[str], n: int
                               ) -> tuple[list[int], float]:
    """The window counters (/33000/0/0) of the next ``n`` notifications of exactly
    ``paths`` (the node's own Sends name more), and the seconds they took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    seqs: list[int] = []
    mark = len(events.seen)
    while len(seqs) < n:
        e = await events.wait("send", mark, timeout=15)
        mark = events.seen.index(e) + 1
        if sorted(r.path for r in e.records) == sorted(paths):
            seqs.append(int(next(r.value for r in e.records if r.path == "/33000/0/0")))
    return seqs, loop.time() - t0


async def links_until(gw: Gateway, events: Events, mark: int, ok) -> None:
    """Wait for the node's Updates from event ``mark`` on until ``ok(its links)``."""
    while True:
        e = await events.wait("updated", mark, timeout=15)
        mark = events.seen.index(e) + 1
        if ok(gw.store.registration(EP).object_links):
            return


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_int101_int103_register_read_device_and_deregister(tmp_path, node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, proc):
        await events.wait("registered")  # int-101
        reg = gw.store.registration(EP)
        assert reg is not None and reg.lwm2m_version == "1.1" and reg.lifetime == 30
        for link in ("</1/0>", "</3/0>", "</3313/0>", "</33000/0>"):
            assert link in reg.object_links, reg.object_links
        # int-232 / int-223: the device's basic information, in SenML-CBOR
        res = await gw.dm.read(EP, "/3/0")
        assert res.code == "2.05" and res.content_format == 112
        assert res.values["/3/0/0"] == "aiotkit"
        assert isinstance(res.values["/3/0/3"], str) and res.values["/3/0/3"]
        assert "/3/0/4" not in res.values  # Reboot is executable, not readable
        # int-201: the same in plain text, one resource at a time
        one = await gw.dm.read(EP, "/3/0/0", accept=0)
        assert one.content_format == 0 and one.values == {"/3/0/0": "aiotkit"}
        # int-222 / int-224 / int-225: Read on object, resource, resource instance
        obj = await gw.dm.read(EP, "/1")
        assert obj.values["/1/0/1"] == 30 and obj.values["/1/0/7"] == "U"
        assert (await gw.dm.read(EP, "/1/0/1")).values == {"/1/0/1": 30}
        inst = await gw.dm.read(EP, "/3/0/11/0")
        assert list(inst.values) == ["/3/0/11/0"]
        with pytest.raises(OperationFailed) as info:
            await gw.dm.read(EP, "/3/0/4")
        assert info.value.result.code == "4.05"
        with pytest.raises(OperationFailed) as info:
            await gw.dm.read(EP, "/3/7")
        assert info.value.result.code == "4.04"
        # int-221: a LwM2M Server may not read, write nor set attributes on Security
        for op in (gw.dm.read(EP, "/0/0"), gw.dm.write(EP, "/0/0/0", "coap://x"),
                   gw.dm.write_attributes(EP, "/0", pmin=10)):
            with pytest.raises(OperationFailed) as info:
                await op
            assert info.value.result.code == "4.01"
        # int-260: Discover lists the object's and the instance's resources
        disc = await gw.dm.discover(EP, "/3")
        assert disc.links is not None and "</3/0>" in disc.links
        disc = await gw.dm.discover(EP, "/3/0")
        assert disc.links is not None
        for link in ("</3/0/0>", "</3/0/3>", "</3/0/4>"):
            assert link in disc.links, disc.links
        # int-229 / int-280 / int-281: Read-Composite; /1/0/8 (executable) and a
        # path the node does not have are left out
        comp = await gw.dm.read_composite(EP, ["/3/0/0", "/1/0/1", "/1/0/8", "/3303"])
        assert comp.code == "2.05"
        assert comp.values == {"/3/0/0": "aiotkit", "/1/0/1": 30}
        # int-103: the node de-registers when it stops
        mark = len(events.seen)
        proc.send_signal(signal.SIGINT)
        await events.wait("deregistered", mark)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_int102_int104_int107_int226_int227_int256_updates_and_writes(tmp_path,
                                                                      node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
        await events.wait("registered")
        # int-104: the Registration Update Trigger (Execute /1/0/8) makes it Update
        mark = len(events.seen)
        res = await gw.dm.execute(EP, "/1/0/8")
        assert res.code == "2.04"
        await events.wait("updated", mark, timeout=15)  # int-102
        # int-227 / int-107: writing the lifetime makes the node Update with it
        mark = len(events.seen)
        res = await gw.dm.write(EP, "/1/0/1", 45)
        assert res.code == "2.04"
        await events.wait("updated", mark, timeout=15)
        assert gw.store.registration(EP).lifetime == 45
        assert (await gw.dm.read(EP, "/1/0/1")).values == {"/1/0/1": 45}
        # int-226: partial update of the Server instance (POST, two resources)
        mark = len(events.seen)
        res = await gw.dm.write(EP, "/1/0", {1: 60, 6: True}, replace=False)
        assert res.code == "2.04"
        await events.wait("updated", mark, timeout=15)
        got = (await gw.dm.read(EP, "/1/0")).values
        assert got["/1/0/1"] == 60 and got["/1/0/6"] is True
        # int-256: writing a read-only resource fails and changes nothing
        short_id = (await gw.dm.read(EP, "/1/0/0")).values["/1/0/0"]
        with pytest.raises(OperationFailed) as info:
            await gw.dm.write(EP, "/1/0/0", short_id + 1)
        assert info.value.result.code == "4.05"
        assert (await gw.dm.read(EP, "/1/0/0")).values == {"/1/0/0": short_id}
        # a wrong type is refused by the gateway (DDF types) before it is sent, and
        # by the node (tests/firmware/mp_test_lwm2m_client.py); nothing changes
        with pytest.raises(CodecError):
            await gw.dm.write(EP, "/1/0/1", "forty")
        assert (await gw.dm.read(EP, "/1/0/1")).values == {"/1/0/1": 60}


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_int1630_int228_int230_int1635_portfolio_create_write_delete(tmp_path,
                                                                     node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
        await events.wait("registered")
        # int-1630: Create a Portfolio instance (typed by gateway/objects/16.xml);
        # the node Updates with the new instance in its links
        mark = len(events.seen)
        res = await gw.dm.create(EP, 16, {0: {0: "a", 1: "b"}}, instance=0)
        assert res.code == "2.01"
        await links_until(gw, events, mark, lambda links: "</16/0>" in links)
        got = await gw.dm.read(EP, "/16/0/0")
        assert got.values == {"/16/0/0/0": "a", "/16/0/0/1": "b"}
        # int-228: Write on a resource instance
        assert (await gw.dm.write(EP, "/16/0/0/0", "test")).code == "2.04"
        assert (await gw.dm.read(EP, "/16/0/0/0")).values == {"/16/0/0/0": "test"}
        # int-230: Write-Composite across objects, a Portfolio resource instance too
        res = await gw.dm.write_composite(EP, {"/1/0/2": 102, "/1/0/6": True,
                                               "/16/0/0/1": "bb"})
        assert res.code == "2.04"
        got = await gw.dm.read_composite(EP, ["/1/0/2", "/1/0/6", "/16/0/0"])
        assert got.values == {"/1/0/2": 102, "/1/0/6": True, "/16/0/0/0": "test",
                              "/16/0/0/1": "bb"}
        with pytest.raises(OperationFailed) as info:  # one read-only record: nothing
            await gw.dm.write_composite(EP, {"/1/0/2": 7, "/3/0/0": "x"})
        assert info.value.result.code == "4.05"
        assert (await gw.dm.read(EP, "/1/0/2")).values == {"/1/0/2": 102}
        # a second instance with the id the gateway picks
        mark = len(events.seen)
        res = await gw.dm.create(EP, 16, {0: {0: "c"}})
        assert res.code == "2.01" and res.location == "/16/1"
        await links_until(gw, events, mark, lambda links: "</16/1>" in links)
        # int-1635: Delete; the node Updates without it, a second Delete is 4.04
        mark = len(events.seen)
        assert (await gw.dm.delete(EP, "/16/0")).code == "2.02"
        await links_until(gw, events, mark, lambda links: "</16/0>" not in links)
        assert "</16/1>" in gw.store.registration(EP).object_links
        with pytest.raises(OperationFailed) as info:
            await gw.dm.delete(EP, "/16/0")
        assert info.value.result.code == "4.04"


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_int241_execute_reboot_then_the_node_registers_again(tmp_path, node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, proc):
        await events.wait("registered")
        res = await gw.dm.execute(EP, "/3/0/4")
        assert res.code == "2.04"
        # the node answers first, then logs "rebooting" and exits with status 3 for
        # its supervisor (firmware/lwm2m/session.py); started again, it registers anew
        assert await asyncio.wait_for(proc.wait(), 15) == 3
        mark = len(events.seen)
        again = await asyncio.create_subprocess_exec(
            *node_firmware.argv(), cwd=tmp_path / "node", env=node_firmware.env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await events.wait("registered", mark)
            assert (await gw.dm.read(EP, "/3/0/0")).values == {"/3/0/0": "aiotkit"}
        finally:
            again.kill()
            await again.wait()


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_int301_int303_int306_observe_with_pmin_then_cancel_and_sends_stored(
        tmp_path, node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
        await events.wait("registered")
        # int-306: the node's own reports (Send) arrive and are stored
        await events.wait("send")
        # int-301: observe the window counter with pmin 1 s
        res = await gw.dm.write_attributes(EP, "/33000/0/0", pmin=1)
        assert res.code == "2.04"
        res = await gw.dm.observe(EP, "/33000/0/0")
        assert res.code == "2.05" and "/33000/0/0" in res.values
        first = res.values["/33000/0/0"]
        seqs, elapsed = await window_notifications(events, ["/33000/0/0"], 3)
        assert seqs == sorted(seqs) and seqs[0] >= first
        assert elapsed >= 1.5, f"3 notifications in {elapsed:.2f} s despite pmin 1"
        assert [o["paths"] for o in gw.dm.observations(EP)] in ([["/33000/0/0"]],
                                                                [("/33000/0/0",)])
        # int-303: cancel; no more notifications of that path
        res = await gw.dm.cancel_observe(EP, "/33000/0/0")
        assert res.code == "2.05"
        assert gw.dm.observations(EP) == []


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_observe_composite_notifies_with_the_paths_attributes_then_cancels(
        tmp_path, node_firmware):
    """Observe-Composite (Core 6.4.3) served by the node: the FETCH registers, the
    notifications read every path again, pmin of one path bounds them, a Cancel-
    Observation-Composite ends them, and a list longer than the node keeps is 4.00."""
    comp = ["/33000/0/0", "/3/0/0"]
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
        await events.wait("send")  # a window is done: /33000/0/0 counts from 0
        assert (await gw.dm.write_attributes(EP, "/33000/0/0", pmin=1)).code == "2.04"
        res = await gw.dm.observe_composite(EP, comp)
        assert res.code == "2.05"
        assert set(res.values) == set(comp) and res.values["/3/0/0"] == "aiotkit"
        first = res.values["/33000/0/0"]
        seqs, elapsed = await window_notifications(events, comp, 3)
        assert seqs == sorted(seqs) and seqs[0] >= first and len(set(seqs)) == 3
        assert elapsed >= 1.5, f"3 notifications in {elapsed:.2f} s despite pmin 1"
        assert [o["composite"] for o in gw.dm.observations(EP)] == [True]
        res = await gw.dm.cancel_observe_composite(EP, comp)
        assert res.code == "2.05"
        assert gw.dm.observations(EP) == []
        # the node's own Sends go on (every 200 ms); none is that notification any more
        mark = len(events.seen)
        for _ in range(8):
            e = await events.wait("send", mark, timeout=15)
            mark = events.seen.index(e) + 1
            assert sorted(r.path for r in e.records) != sorted(comp)
        with pytest.raises(OperationFailed) as info:
            await gw.dm.read_composite(EP, [f"/3/0/{r}" for r in range(9)])
        assert info.value.result.code == "4.00"
