"""The Server object (/1/0) the gateway writes survives the node's reboot: a real
MicroPython node and the real gateway on loopback (``node_and_gateway`` of
test_lwm2m_ets.py). The gateway writes the lifetime, default pmin/pmax, notification
storing and the binding, reboots the node (Execute /3/0/4: exit status 3, started again
as a supervisor would), and the node registers again with what was written; it never
falls back to config.json's lifetime."""

from __future__ import annotations

import asyncio

import pytest
from test_lwm2m_ets import EP, TIMEOUT_S, node_and_gateway

pytestmark = pytest.mark.e2e


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_lifetime_written_by_the_gateway_survives_a_node_reboot(tmp_path,
                                                                     node_firmware):
    async with node_and_gateway(tmp_path, node_firmware) as (gw, events, proc):
        await events.wait("registered")
        mark = len(events.seen)
        res = await gw.dm.write(EP, "/1/0", {1: 45, 2: 1, 3: 90, 6: True}, replace=False)
        assert res.code == "2.04"
        await events.wait("updated", mark, timeout=15)
        assert gw.store.registration(EP).lifetime == 45
        assert (await gw.dm.execute(EP, "/3/0/4")).code == "2.04"
        assert await asyncio.wait_for(proc.wait(), 15) == 3
        assert (tmp_path / "node" / "serverobj.json").is_file()
        mark = len(events.seen)
        again = await asyncio.create_subprocess_exec(
            *node_firmware.argv(), cwd=tmp_path / "node", env=node_firmware.env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await events.wait("registered", mark)
            # the Register itself carried the written lifetime (config.json says 30)
            assert gw.store.registration(EP).lifetime == 45
            got = (await gw.dm.read(EP, "/1/0")).values
            assert (got["/1/0/1"], got["/1/0/2"], got["/1/0/3"], got["/1/0/6"]) == (
                45, 1, 90, True)
        finally:
            again.kill()
            await again.wait()
