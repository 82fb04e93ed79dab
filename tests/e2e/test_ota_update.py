"""Signed app updates end to end with the real parts: the gateway (``Gateway``, OSCORE)
runs a campaign, its LwM2M delivery writes the Package URI (/5/0/1) of an image made by
``aiot firmware build``; a MicroPython node booted through the boot selector
(``aiot sim``'s ``-m boot``) pulls it block-wise over its OSCORE context, verifies it
with its own verifier, unpacks it into its free slot, reboots into a test boot on Update
(/5/0/2) and confirms after its self-test, or is rolled back.

A good app: confirmed, the node runs the new version, the campaign completes. An app
that crashes at boot, one that boots but never registers, and one that hangs at boot
(reset by the simulated board's watchdog, tools/sim.py): rolled back after the test
boots, /5/0/5 says 8, the canary fails and the campaign aborts before anything else.
Every node runs with a short watchdog (``WDT_MS``): a healthy one, downloading,
unpacking, test-booting, never trips it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.ota import NodeInfo
from aiotkit.gateway.ota.campaigns import Target
from aiotkit.gateway.security import generate_key_hex
from aiotkit.ota import image as ota_image
from aiotkit.ota import keys as ota_keys
from aiotkit.ota.image import ImageVersion
from aiotkit.tools import boards, firmwarecli, otacli
from aiotkit.tools.sim import Fleet, FleetConfig, SimNode, keystore_provisioner
from plugins.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout_s(400)]

EP = "ota-1"
SELFTEST_MS = 4000
WDT_MS = 2000  # config "wdt_ms": boot.py arms the watchdog with it (a node boots in 0.5 s)
REPORT_MS = 500
WDT_RESET = "watchdog reset: no feed"  # tools/sim.py's line when it resets a node
T = 150.0


class Lines:
    """Every node's output lines, awaitable by pattern."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def take(self, node: SimNode, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, pattern: str, timeout: float = T) -> re.Match[str]:
        rx = re.compile(pattern)

        async def found() -> re.Match[str]:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            print("node output:", *self.lines[-60:], sep="\n  ")
            raise

    async def wait_count(self, pattern: str, n: int, start: int = 0,
                         timeout: float = T) -> None:
        """Until ``n`` lines from index ``start`` on match ``pattern``."""
        rx = re.compile(pattern)

        async def found() -> None:
            while sum(1 for line in self.lines[start:] if rx.search(line)) < n:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(found(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            print("node output:", *self.lines[-60:], sep="\n  ")
            raise


@pytest.fixture(scope="module")
def signer() -> ota_keys.Signer:
    return ota_keys.generate("ed25519")


def app_image(signer: ota_keys.Signer, tmp: Path, version: str, counter: int,
              patch: Callable[[Path], None] | None = None) -> bytes:
    """The node application as ``aiot firmware build -k`` signs it, from a copy of the
    firmware changed by ``patch``."""
    src = tmp / f"src-{version}"
    shutil.copytree(paths.firmware_dir(), src, ignore=shutil.ignore_patterns("__pycache__"))
    if patch is not None:
        patch(src)
    _, _, img = firmwarecli.build_app(boards.load_board("unix-sim"),
                                      ImageVersion.parse(version), [signer], counter, src=src,
                                      cache=tmp / f"cache-{version}")
    assert img is not None
    return img


@asynccontextmanager
async def site(tmp: Path, signer: ota_keys.Signer, *, models: bool = False,
               extra: str = "") -> AsyncIterator[tuple[Gateway, Fleet, Lines]]:
    """A gateway trusting ``signer`` and one node (with the shipped models, or none),
    registered."""
    ota_keys.save_keyset(tmp / "trust.json", ota_keys.KeySet.of(("ci", signer.public)))
    (tmp / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp / "gw.key").chmod(0o600)
    port = free_port()
    (tmp / "gw.toml").write_text(
        f'[gateway]\nid = "ota"\ndb = "gw.db"\nsecurity = "oscore"\n[coap]\nport = {port}\n'
        '[shadow]\nenabled = false\n[security]\nkey_file = "gw.key"\n'
        '[ota]\ntrust_file = "trust.json"\npoll_s = 0.5\n' + extra)
    gw = Gateway(load_config(tmp / "gw.toml"))
    await gw.start()
    assert gw.keys is not None
    lines = Lines()
    fleet = Fleet(FleetConfig(gateway=f"coap://127.0.0.1:{port}", nodes=1, prefix="ota",
                              workdir=tmp / "nodes", report_ms=REPORT_MS, verbose=True,
                              ota_trust=tmp / "trust.json",
                              ota_selftest_ms=SELFTEST_MS, wdt_ms=WDT_MS, models=models),
                  on_line=lines.take, provision=keystore_provisioner(gw.keys))
    try:
        await fleet.start()
        await lines.wait_for(rf"{EP} registered")
        yield gw, fleet, lines
    finally:
        await fleet.stop()
        await gw.shutdown()


async def campaign(gw: Gateway, img: bytes, payload_type: str = "app") -> int:
    assert gw.ota is not None
    row, _ = await gw.ota.images.upload(img, board="unix-sim", payload_type=payload_type)
    engine = gw.ota.campaigns
    cid = engine.create(name="t", image=row.id, board="unix-sim",
                        target=Target(endpoints=(EP,)), waves=["1"], max_failure_ratio=0.0,
                        report_timeout_s=T, nodes=[NodeInfo(EP, board="unix-sim")])
    await engine.start_campaign(cid)
    return cid


async def ended(gw: Gateway, cid: int) -> str:
    assert gw.ota is not None
    engine = gw.ota.campaigns
    async with asyncio.timeout(T):
        while engine.campaign(cid).state in ("running", "paused"):
            await asyncio.sleep(0.2)
    return engine.campaign(cid).state


def slot_state(fleet: Fleet) -> dict:
    return json.loads((fleet.nodes[0].workdir / "slots.json").read_text())


async def test_a_campaign_updates_a_node_that_confirms_after_its_self_test(tmp_path, signer):
    img = app_image(signer, tmp_path, "2.1.0", 5)
    async with site(tmp_path, signer) as (gw, fleet, lines):
        cid = await campaign(gw, img)
        await lines.wait_for(rf"{EP} downloaded 2\.1\.0\+0")
        await lines.wait_for("test boot of slot a")
        await lines.wait_for(rf"{EP} update confirmed: slot a")
        confirmed = len(lines.lines)
        assert await ended(gw, cid) == "completed"
        assert gw.ota is not None
        node = gw.ota.campaigns.progress(cid)["nodes"][0]
        assert node["state"] == "succeeded"
        state = slot_state(fleet)
        assert (state["confirmed"], state["pending"], state["floor"], state["result"]) == (
            "a", None, 5, 1)
        r = await gw.dm.read(EP, "/5/0")
        assert (r.values["/5/0/3"], r.values["/5/0/5"], r.values["/5/0/7"]) == (0, 1,
                                                                                 "2.1.0+0")
        assert (await gw.dm.read(EP, "/3/0/3")).values["/3/0/3"] == "2.1.0+0"  # campaigns
        # select nodes by this firmware version
        # healthy all along: booted, downloaded, unpacked, test-booted, and ran three
        # watchdog timeouts' worth of reports after it, never reset
        await lines.wait_count(rf"{EP} sent \d+", 3 * WDT_MS // REPORT_MS, confirmed)
        assert not [line for line in lines.lines if WDT_RESET in line]


def _crash_at_boot(src: Path) -> None:
    (src / "app.py").write_text('raise RuntimeError("broken build")\n')


def _never_registers(src: Path) -> None:
    client = src / "lwm2m" / "client.py"
    text = client.read_text()
    assert 'w.option(_URI_PATH, b"rd")' in text
    client.write_text(text.replace('w.option(_URI_PATH, b"rd")', 'w.option(_URI_PATH, b"xx")'))


@pytest.mark.parametrize("patch, why", [(_crash_at_boot, "crash: RuntimeError"),
                                        (_never_registers, "self-test: not registered")])
async def test_a_bad_app_is_rolled_back_and_its_canary_aborts_the_campaign(tmp_path, signer,
                                                                            patch, why):
    img = app_image(signer, tmp_path, "3.0.0", 6, patch)
    async with site(tmp_path, signer) as (gw, fleet, lines):
        cid = await campaign(gw, img)
        m = await lines.wait_for(r"update failed: (rolled back after 3 boots: .*)")
        assert why in m.group(1)
        assert await ended(gw, cid) == "aborted"
        assert gw.ota is not None
        node = gw.ota.campaigns.progress(cid)["nodes"][0]
        assert node["state"] == "failed"
        assert node["reason"] == "result 8: firmware update failed (rolled back)"
        state = slot_state(fleet)
        assert (state["confirmed"], state["pending"], state["floor"], state["result"]) == (
            None, None, 0, 8)
        # the app that never registers runs its window loop past SELFTEST_MS, feeding
        assert not [line for line in lines.lines if WDT_RESET in line]


def _hangs_at_boot(src: Path) -> None:
    (src / "app.py").write_text("while True:\n    pass\n")


async def test_an_app_that_hangs_at_boot_is_reset_by_the_watchdog_and_rolled_back(tmp_path,
                                                                                   signer):
    # it never feeds the watchdog boot.py armed: each test boot is reset (the process
    # killed, as a board's watchdog resets it) and counted; the fourth boot rolls back
    img = app_image(signer, tmp_path, "3.0.0", 6, _hangs_at_boot)
    async with site(tmp_path, signer) as (gw, fleet, lines):
        cid = await campaign(gw, img)
        m = await lines.wait_for(r"update failed: (rolled back after 3 boots: .*)")
        # the reason is the watchdog's: the boot after a reset says it for the boot it
        # ended (before, "no confirm", as if the app had run without confirming)
        assert m.group(1) == "rolled back after 3 boots: watchdog reset"
        resets = [line for line in lines.lines if WDT_RESET in line]
        assert resets == [f"{WDT_RESET} in {WDT_MS} ms"] * 3, resets
        assert await ended(gw, cid) == "aborted"
        assert gw.ota is not None
        node = gw.ota.campaigns.progress(cid)["nodes"][0]
        assert (node["state"], node["reason"]) == (
            "failed", "result 8: firmware update failed (rolled back)")
        state = slot_state(fleet)
        assert (state["confirmed"], state["pending"], state["floor"], state["result"]) == (
            None, None, 0, 8)
        # the confirmed app feeds it: no more resets, and it is registered again
        assert [line for line in lines.lines if WDT_RESET in line] == resets
        assert fleet.nodes[0].state == "registered"


async def test_a_model_is_updated_alone_runs_in_shadow_and_is_promoted(tmp_path, signer):
    # a campaign of a model image: the node fetches it into a free /9 slot, verifies it
    # (key, counter, board, feature spec), and on Install runs it beside its active
    # classifier; the same model agrees on every window, so the gateway promotes it
    # (Activate): the node decides with the slot's model, its app untouched
    clf, _ = paths.shipped_models()
    blob, model, spec = otacli.model_identity(clf, clf.parent / "card.json")
    img = ota_image.build(blob, [signer], version=ImageVersion.parse("1.1.0"),
                          security_counter=2, payload_type="model", board="unix-sim",
                          model=model, feature_spec=spec)
    async with site(tmp_path, signer, models=True,
                    extra="[models]\nmin_windows = 10\n") as (gw, fleet, lines):
        app_before = sorted(p.name for p in fleet.nodes[0].workdir.iterdir())
        cid = await campaign(gw, img, "model")
        await lines.wait_for(rf"{EP} model downloaded into slot 1")
        assert await ended(gw, cid) == "completed"
        flash = fleet.nodes[0].workdir
        async with asyncio.timeout(T):
            while not json.loads((flash / "models.json").read_text())["slots"][1]["active"]:
                await asyncio.sleep(0.2)
        assert gw.models is not None
        (row,) = gw.models.candidates(EP)
        assert row["agreement"] == 1.0 and "promote" in json.dumps(row), row
        assert "slots" not in app_before and not (flash / "slots").exists()  # no app update


async def test_a_small_image_is_pushed_block_by_block_and_confirmed(tmp_path, signer):
    # push (Package /5/0/0, Block1): an app of its entry only (the rest of the node comes
    # from the base firmware), padded to 20 KB; the node stores each block as it comes
    # (never the whole body in RAM), verifies, unpacks, test-boots and confirms
    from aiotkit.ota import bundle
    from aiotkit.tools import fwbuild

    fwbuild.compile_one(paths.firmware_dir() / "app.py", tmp_path / "app.mpy", "x64",
                        name="app.py")
    files = {"app.mpy": (tmp_path / "app.mpy").read_bytes(), "pad.bin": bytes(20000)}
    payload = bundle.make_bundle(files, version="4.0.0", board="unix-sim", arch="x64")
    img = ota_image.build(payload, [signer], version=ImageVersion.parse("4.0.0"),
                          security_counter=7, payload_type="app", board="unix-sim")
    async with site(tmp_path, signer, extra="push_max_bytes = 65536\n") as (gw, fleet, lines):
        cid = await campaign(gw, img)
        m = await lines.wait_for(rf"{EP} pushed (\d+)")
        assert int(m.group(1)) == len(img)
        await lines.wait_for(rf"{EP} update confirmed: slot a")
        assert await ended(gw, cid) == "completed"
        assert not any("downloading" in line for line in lines.lines)  # not pulled
        assert (fleet.nodes[0].workdir / "slots" / "a" / "pad.bin").stat().st_size == 20000
