"""OMA ETS interoperability cases, node <-> gateway: a real MicroPython node (the
precompiled firmware in the unix-sim heap) and the real gateway (``Gateway``, its
device-management API ``gw.dm``) on loopback.

Case IDs are those of OMA-ETS-LightweightM2M_INT-V1_1 (``LightweightM2M-1.1-int-NNN``):
101 initial registration, 102 registration update, 103 de-registration, 104
Registration Update Trigger, 201/203 querying the device's basic information (Read of
object 3), 221 Discover, 227 Write (replace) of a server resource, 241 Execute, 301
Observe with attributes (pmin), 303 Cancel Observe, 401 Send (the node's reports).
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

from aiotkit.gateway.app import Gateway
from aiotkit.gateway.codecs import CodecError
from aiotkit.gateway.config import load_config
from aiotkit.gateway.dm import OperationFailed
from aiotkit.gateway.registry import RegistryEvent
from aiotkit.tools import paths
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
    conf.write_text('[gateway]\nid = "ets"\ndb = "gw.db"\nsecurity = "nosec"\n'
                    f"[coap]\nport = {free_port()}\n[dm]\nrequest_timeout_s = 10.0\n"
                    "[shadow]\nenabled = false\n")
    gw = Gateway(load_config(conf))
    events = Events()
    await gw.start()
    gw.registry.add_listener(events)
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    shutil.copy(paths.replay_dir() / "normal-97.i16", node_dir / "signal.i16")
    cfg = {"endpoint": EP, "gateway": gw.coap_uri, "lifetime": 30, "window": 256,
           "report_ms": 200, "signal": "signal.i16", "realtime": True, "features": False}
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


def run(test) -> None:
    asyncio.run(asyncio.wait_for(test, TIMEOUT_S * 2))


def test_int101_int103_register_read_device_and_deregister(tmp_path, node_firmware):
    async def main() -> None:
        async with node_and_gateway(tmp_path, node_firmware) as (gw, events, proc):
            await events.wait("registered")  # int-101
            reg = gw.store.registration(EP)
            assert reg is not None and reg.lwm2m_version == "1.1" and reg.lifetime == 30
            for link in ("</1/0>", "</3/0>", "</3313/0>", "</33000/0>"):
                assert link in reg.object_links, reg.object_links
            # int-201/203: the device's basic information, in SenML-CBOR
            res = await gw.dm.read(EP, "/3/0")
            assert res.code == "2.05" and res.content_format == 112
            assert res.values["/3/0/0"] == "aiotkit"
            assert isinstance(res.values["/3/0/3"], str) and res.values["/3/0/3"]
            one = await gw.dm.read(EP, "/3/0/0", accept=0)
            assert one.content_format == 0 and one.values == {"/3/0/0": "aiotkit"}
            with pytest.raises(OperationFailed) as info:
                await gw.dm.read(EP, "/3/0/4")  # Reboot is executable, not readable
            assert info.value.result.code == "4.05"
            with pytest.raises(OperationFailed) as info:
                await gw.dm.read(EP, "/3/7")
            assert info.value.result.code == "4.04"
            # int-221: Discover lists the instance's resources in link-format
            disc = await gw.dm.discover(EP, "/3/0")
            assert disc.links is not None and "</3/0/0>" in disc.links
            # int-103: the node de-registers when it stops
            mark = len(events.seen)
            proc.send_signal(signal.SIGINT)
            await events.wait("deregistered", mark)
            assert await asyncio.wait_for(proc.wait(), 10) == 0

    run(main())


def test_int102_int104_int227_int241_update_on_trigger_and_lifetime_write(tmp_path,
                                                                            node_firmware):
    async def main() -> None:
        async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
            await events.wait("registered")
            # int-104 / int-241: the Registration Update Trigger makes the node Update
            mark = len(events.seen)
            res = await gw.dm.execute(EP, "/1/0/8")
            assert res.code == "2.04"
            await events.wait("updated", mark, timeout=15)  # int-102
            # int-227: writing the lifetime makes the node Update with the new lifetime
            mark = len(events.seen)
            res = await gw.dm.write(EP, "/1/0/1", 45)
            assert res.code == "2.04"
            await events.wait("updated", mark, timeout=15)
            assert gw.store.registration(EP).lifetime == 45
            assert (await gw.dm.read(EP, "/1/0/1")).values == {"/1/0/1": 45}
            # a wrong type is refused by the gateway (DDF types) before it is sent, and
            # by the node (tests/firmware/mp_test_lwm2m_client.py); nothing changes
            with pytest.raises(CodecError):
                await gw.dm.write(EP, "/1/0/1", "forty")
            assert (await gw.dm.read(EP, "/1/0/1")).values == {"/1/0/1": 45}

    run(main())


def test_int301_int303_int401_observe_with_pmin_then_cancel_and_sends_stored(
        tmp_path, node_firmware):
    async def main() -> None:
        async with node_and_gateway(tmp_path, node_firmware) as (gw, events, _):
            await events.wait("registered")
            # int-401: the node's own reports (Send) arrive and are stored
            await events.wait("send")
            # int-301: observe the window counter with pmin 1 s
            res = await gw.dm.write_attributes(EP, "/33000/0/0", pmin=1)
            assert res.code == "2.04"
            res = await gw.dm.observe(EP, "/33000/0/0")
            assert res.code == "2.05" and "/33000/0/0" in res.values
            first = res.values["/33000/0/0"]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            seqs: list[int] = []
            mark = len(events.seen)
            while len(seqs) < 3:
                e = await events.wait("send", mark, timeout=15)
                mark = events.seen.index(e) + 1
                if [r.path for r in e.records] == ["/33000/0/0"]:  # a notification
                    seqs.append(int(e.records[0].value))
            elapsed = loop.time() - t0
            assert seqs == sorted(seqs) and seqs[0] >= first
            assert elapsed >= 1.5, f"3 notifications in {elapsed:.2f} s despite pmin 1"
            assert [o["paths"] for o in gw.dm.observations(EP)] in ([["/33000/0/0"]],
                                                                    [("/33000/0/0",)])
            # int-303: cancel; no more notifications of that path
            res = await gw.dm.cancel_observe(EP, "/33000/0/0")
            assert res.code == "2.05"
            assert gw.dm.observations(EP) == []

    run(main())
