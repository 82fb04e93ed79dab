"""``aiot ota`` as a subprocess: keygen (encrypted), trust, sign, verify, inspect; exit
status 0 accepted, 1 rejected, 2 a mistake; one line on stderr, never a traceback, and
the passphrase never on the command line nor in the output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from plugins.services import aiot_cmd

PASS = "s3cret-passphrase-for-tests"


def aiot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "AIOT_OTA_PASSPHRASE"}
    e.update(env or {})
    r = subprocess.run(aiot_cmd("ota", *args), capture_output=True, text=True, timeout=60,
                       check=False, env=e, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr, r.stderr
    assert PASS not in r.stdout + r.stderr
    return r


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "pass").write_text(PASS + "\n")
    (tmp_path / "app.bin").write_bytes(b"\x42" * 4000)
    for name, alg in (("old", "ed25519"), ("new", "ecdsa-p256")):
        r = aiot("keygen", "-k", str(tmp_path / f"{name}.pem"), "-t", alg,
                 "--passphrase-file", str(tmp_path / "pass"))
        assert r.returncode == 0, r.stderr
    r = aiot("trust", "add", str(tmp_path / "trust.json"), str(tmp_path / "old.pub.pem"),
             "--name", "old")
    assert r.returncode == 0, r.stderr
    return tmp_path


def sign(work: Path, *extra: str, keys: tuple[str, ...] = ("old",), out: str = "img.bin"):
    args = ["sign", str(work / "app.bin"), str(work / out), "-v", "1.2.3",
            "--security-counter", "7", "--payload-type", "app", "--board", "unix-sim"]
    for k in keys:
        args += ["-k", str(work / f"{k}.pem")]
    return aiot(*args, *extra, env={"AIOT_OTA_PASSPHRASE": PASS})


def verify(work: Path, *extra: str, image: str = "img.bin"):
    return aiot("verify", str(work / image), "--trust", str(work / "trust.json"),
                "--board", "unix-sim", *extra)


def test_keygen_writes_an_encrypted_private_key_mode_600(work):
    pem = (work / "old.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (work / "old.pem").stat().st_mode & 0o777 == 0o600
    assert (work / "old.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_keygen_never_overwrites(work):
    r = aiot("keygen", "-k", str(work / "old.pem"), "--passphrase-file", str(work / "pass"))
    assert r.returncode == 2 and "exists already" in r.stderr


def test_keygen_without_a_passphrase_source_is_a_usage_error(work):
    r = aiot("keygen", "-k", str(work / "k.pem"))
    assert r.returncode == 2 and "no passphrase" in r.stderr
    assert not (work / "k.pem").exists()


def test_sign_verify_inspect(work):
    r = sign(work)
    assert r.returncode == 0, r.stderr
    r = verify(work, "--floor", "7", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["version"], got["security_counter"], got["signed_by"]) == ("1.2.3+0", 7, ["old"])
    r = aiot("inspect", str(work / "img.bin"), "--json")
    assert r.returncode == 0
    names = [t["name"] for t in json.loads(r.stdout)["tlvs"]]
    assert names == ["SEC_CNT", "AIOT_PAYLOAD_TYPE", "AIOT_BOARD", "SHA256", "KEYHASH",
                     "ED25519"]
    r = aiot("inspect", str(work / "img.bin"))
    assert r.returncode == 0 and "AIOT_BOARD" in r.stdout and "unix-sim" in r.stdout


def test_verify_rejections_exit_1_with_the_reason(work):
    assert sign(work).returncode == 0
    r = verify(work, "--floor", "8")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("aiot: error: image rejected (rollback):")
    r = aiot("verify", str(work / "img.bin"), "--trust", str(work / "trust.json"),
             "--board", "rpi-pico-w")
    assert r.returncode == 1 and "(wrong-board)" in r.stderr
    r = verify(work, "--slot-size", "1000")
    assert r.returncode == 1 and "(too-large)" in r.stderr
    damaged = bytearray((work / "img.bin").read_bytes())
    damaged[0x300] ^= 1
    (work / "bad.bin").write_bytes(damaged)
    r = verify(work, image="bad.bin")
    assert r.returncode == 1 and "(hash-mismatch)" in r.stderr


def test_wrong_passphrase_is_exit_2(work):
    r = aiot("sign", str(work / "app.bin"), str(work / "img.bin"), "-k", str(work / "old.pem"),
             "-v", "1", "--security-counter", "1", "--payload-type", "app", "--board",
             "unix-sim", env={"AIOT_OTA_PASSPHRASE": "wrong"})
    assert r.returncode == 2 and "wrong passphrase" in r.stderr
    assert not (work / "img.bin").exists()


def test_sign_refuses_an_image_larger_than_the_board_slot(work):
    (work / "app.bin").write_bytes(bytes(600 * 1024))  # unix-sim slots are 512 KiB
    r = sign(work)
    assert r.returncode == 2 and "exceeds the slot" in r.stderr


def test_sign_with_trust_refuses_a_key_not_active_in_it(work):
    r = sign(work, "--trust", str(work / "trust.json"), keys=("new",))
    assert r.returncode == 2 and "not an active key" in r.stderr


def test_rotation_through_the_cli(work):
    trust = str(work / "trust.json")
    assert aiot("trust", "add", trust, str(work / "new.pub.pem"), "--name", "new").returncode == 0
    assert sign(work, keys=("old", "new")).returncode == 0
    r = verify(work, "--json")
    assert r.returncode == 0 and sorted(json.loads(r.stdout)["signed_by"]) == ["new", "old"]
    assert aiot("trust", "retire", trust, "old").returncode == 0
    r = verify(work, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["signed_by"] == ["new"]
    assert aiot("trust", "revoke", trust, "old").returncode == 0
    r = verify(work)
    assert r.returncode == 1 and "(revoked-key)" in r.stderr
    r = aiot("trust", "list", trust, "--json")
    assert [(k["name"], k["state"]) for k in json.loads(r.stdout)["keys"]] == [
        ("old", "revoked"), ("new", "active")]


def test_separate_passphrase_files_per_key(work):
    (work / "pass2").write_text("another-passphrase\n")
    r = aiot("keygen", "-k", str(work / "third.pem"), "--passphrase-file", str(work / "pass2"))
    assert r.returncode == 0
    r = aiot("sign", str(work / "app.bin"), str(work / "img.bin"), "-k", str(work / "old.pem"),
             "-k", str(work / "third.pem"), "--passphrase-file", str(work / "pass"),
             "--passphrase-file", str(work / "pass2"), "-v", "2.0.0",
             "--security-counter", "9", "--payload-type", "model", "--board", "unix-sim")
    assert r.returncode == 0, r.stderr


def test_missing_image_is_exit_2(work):
    r = verify(work, image="nope.bin")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_help_explains_exit_status():
    r = aiot("--help")
    assert r.returncode == 0 and "Exit status" in r.stdout
    r = aiot("verify", "--help")
    assert r.returncode == 0 and "--floor" in r.stdout
