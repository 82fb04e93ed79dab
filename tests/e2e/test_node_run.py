"""``aiot node run --config FILE``: one node by hand, a real ``aiot`` subprocess running
the real MicroPython node (through the boot selector) against a real gateway: it
registers; a Reboot (/3/0/4) starts it again as a board would; Ctrl-C de-registers it and
the command exits 0. A config the node cannot run is one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from plugins.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout_s(120)]


def write_config(folder: Path, **cfg: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "config.json"
    p.write_text(json.dumps(cfg))
    return p


async def node_run(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiotkit.tools.cli", "node", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def line(proc: asyncio.subprocess.Process, pattern: str, seen: list[str]) -> str:
    assert proc.stdout is not None
    rx = re.compile(pattern)
    async with asyncio.timeout(60):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"ended before {pattern!r}: {seen[-20:]}")
            text = raw.decode(errors="replace").rstrip()
            seen.append(text)
            if rx.search(text):
                return text


async def test_a_node_runs_by_hand_reboots_and_stops(tmp_path):
    (tmp_path / "gw.toml").write_text(
        f'[gateway]\nid = "hand"\ndb = "gw.db"\nsecurity = "nosec"\n[coap]\nport = '
        f'{free_port()}\n[shadow]\nenabled = false\n')
    cfg = load_config(tmp_path / "gw.toml")
    config = write_config(tmp_path / "n1", endpoint="hand-1", gateway=cfg.coap_uri,
                          signal=str(paths.replay_files()[0]), report_ms=1000)
    gw = Gateway(cfg, allow_nosec=True)
    await gw.start()
    try:
        proc = await node_run(config)
        seen: list[str] = []
        try:
            await line(proc, r"hand-1 registered", seen)
            r = await gw.dm.execute("hand-1", "/3/0/4")
            assert r.code == "2.04"
            await line(proc, r"aiot node: rebooting", seen)
            await line(proc, r"hand-1 registered", seen)  # the same folder, a new process
            proc.send_signal(signal.SIGINT)
            await line(proc, r"hand-1 deregistered", seen)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert (tmp_path / "n1" / "unsent.log").exists()  # the node's flash is its folder
        reg = gw.store.registration("hand-1")
        assert reg is not None and reg.state == "deregistered"
    finally:
        await gw.shutdown()


async def test_a_config_the_node_cannot_run_is_one_line_and_exit_2(tmp_path):
    config = write_config(tmp_path / "bad", endpoint="x", gateway="coap://127.0.0.1:9",
                          windoww=1024)
    proc = await node_run(config)
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 2, text
    assert "config error: unknown key 'windoww'" in text and "Traceback" not in text
    missing = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiotkit.tools.cli", "node", "run", "--config",
        str(tmp_path / "none.json"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(os.environ))
    out, _ = await missing.communicate()
    assert missing.returncode == 2 and "no such file" in out.decode()
