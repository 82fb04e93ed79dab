"""LwM2MDelivery's follow-up of a node (gateway/ota/delivery.py) against a stand-in for
device management: a node no campaign waits for any more (timed out, its campaign
aborted or completed) is no longer read; a node that downloaded is sent Update once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiotkit.gateway.ota.delivery import LwM2MDelivery


class Result:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values


class DM:
    """Device management of one node whose /5/0 state the test sets."""

    def __init__(self) -> None:
        self.state, self.result, self.version = 1, 0, ""
        self.reads = 0
        self.calls: list[tuple[str, str]] = []
        self.read_done = asyncio.Event()

    async def write(self, ep: str, path: str, value: Any, **kw: Any) -> Result:
        self.calls.append(("write", path))
        return Result({})

    async def execute(self, ep: str, path: str, **kw: Any) -> Result:
        self.calls.append(("execute", path))
        return Result({})

    async def read(self, ep: str, path: str, **kw: Any) -> Result:
        self.reads += 1
        self.read_done.set()
        return Result({"/5/0/3": self.state, "/5/0/5": self.result, "/5/0/7": self.version})


async def test_a_node_no_campaign_waits_for_is_no_longer_read():
    dm = DM()
    d = LwM2MDelivery(dm, "coap://gw", lambda i: "2.0.0+0", poll_s=0.001)  # type: ignore[arg-type]
    told: list[tuple[str, str, str]] = []
    d.report = lambda ep, outcome, reason="": told.append((ep, outcome, reason)) or True
    wanted = {"n1": True}
    d.wanted = lambda ep: wanted[ep]
    await d.offer("n1", "ab" * 32)
    await dm.read_done.wait()
    assert told == [("n1", "updating", "")]
    wanted["n1"] = False  # its campaign timed it out
    async with asyncio.timeout(5):
        while d._follow:
            await asyncio.sleep(0.001)
    reads = dm.reads
    await asyncio.sleep(0.02)
    assert dm.reads == reads  # nothing more is read
    assert ("execute", "/5/0/2") not in dm.calls


async def test_a_downloaded_node_is_updated_once_then_succeeds_on_its_version():
    dm = DM()
    d = LwM2MDelivery(dm, "coap://gw", lambda i: "2.0.0+0", poll_s=0.001)  # type: ignore[arg-type]
    told: list[tuple[str, str, str]] = []
    d.report = lambda ep, outcome, reason="": told.append((ep, outcome, reason)) or True
    dm.state = 2  # Downloaded
    await d.offer("n1", "ab" * 32)
    async with asyncio.timeout(5):
        while ("execute", "/5/0/2") not in dm.calls:
            await asyncio.sleep(0.001)
    dm.state, dm.result, dm.version = 0, 1, "1.0.0+0"  # an old result: not this image
    await asyncio.sleep(0.02)
    assert [c for c in dm.calls if c[0] == "execute"] == [("execute", "/5/0/2")]
    assert told == [("n1", "updating", "")]
    dm.version = "2.0.0+0"
    async with asyncio.timeout(5):
        while d._follow:
            await asyncio.sleep(0.001)
    assert told == [("n1", "updating", ""), ("n1", "succeeded", "")]
    assert dm.calls[0] == ("write", "/5/0/1")
