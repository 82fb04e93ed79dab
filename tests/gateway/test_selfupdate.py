"""Gateway self-update (gateway/ota/selfupdate.py, healthcheck.py): two slots behind a
``current`` link, a real health check (the new slot's daemon as a subprocess with an
OSCORE config, a LwM2M Register over OSCORE, Mosquitto as the uplink), commit or roll
back; refused images and interrupted updates.

Faulty builds are this checkout's package with a few lines appended to one module (so
the fault survives edits elsewhere in that module): a daemon that cannot start, one
that refuses every registration.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from aiotkit.gateway.ota.healthcheck import ENDPOINT, HealthCheck
from aiotkit.gateway.ota.selfupdate import SlotRoot, make_gateway_bundle, package_tree
from aiotkit.gateway.storage import SqliteStorage
from aiotkit.ota import image, keys
from aiotkit.ota.errors import ImageRejected
from plugins.services import REPO, GatewayProcess, aiot_cmd

FIRST, NEXT = 3, 5  # security counters of the installed image and of the update

BROKEN_START = b"""
async def _injected_start(self: Gateway) -> None:
    raise GatewayError("injected: a build whose daemon cannot start")
Gateway._start = _injected_start  # type: ignore[method-assign]
"""
REFUSES_REGISTRATIONS = b"""
def _injected_refuse(self: object, *args: object, **kw: object) -> Any:
    from ..errors import Unauthorized
    raise Unauthorized("injected: this build refuses every registration")
Registry.register = _injected_refuse  # type: ignore[assignment,method-assign]
Registry.submit_register = _injected_refuse  # type: ignore[assignment,method-assign]
"""


@functools.cache
def signer(name: str) -> keys.Signer:
    return keys.generate("ed25519")


def trust(**states: keys.State) -> keys.KeySet:
    ks = keys.KeySet()
    for name in ("release", "old", *states):
        if ks.get(signer(name).key_id) is None:
            ks = ks.add(name, signer(name).public, states.get(name, "active"))
    return ks


@functools.cache
def tree() -> Mapping[str, Mapping[str, bytes]]:
    return package_tree(REPO)


def build(counter: int, *, patch: tuple[str, str, bytes] | None = None,
          key: str = "release", payload_type: str = "gateway", board: str = "gateway",
          version: str = "1.0.0") -> bytes:
    """A signed gateway image of this checkout; ``patch`` (folder, file, code) appends
    code to one module."""
    files = {k: dict(v) for k, v in tree().items()}
    if patch is not None:
        folder, name, code = patch
        files[folder][name] += code
    payload = make_gateway_bundle(files, version)
    return image.build(payload, [signer(key)], version=image.ImageVersion.parse(version),
                       security_counter=counter, payload_type=payload_type, board=board)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and link under ``root`` (bytes, or the link's target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def slot_digest(root: Path, slot: str) -> str:
    h = hashlib.sha256()
    for rel, body in snapshot(root / "slots" / slot).items():
        h.update(rel.encode() + b"\0" + hashlib.sha256(body).digest())
    return h.hexdigest()


@pytest.fixture
def installed(tmp_path: Path) -> SlotRoot:
    root = SlotRoot(tmp_path / "root")
    root.install_first(build(FIRST), trust())
    return root


def never_called(slot: Path) -> None:
    raise AssertionError("the health check ran for an image that should be refused")


def test_a_good_update_is_committed(installed, tmp_path, mosquitto):
    gw = GatewayProcess(tmp_path, mosquitto)
    check = HealthCheck(gw.config, gw.token, deadline_s=30)
    done = installed.update(build(NEXT, version="1.0.1"), trust(), check)
    assert (done.result, done.slot, done.reason) == ("committed", "b", ""), done
    st = installed.state()
    assert (installed.linked(), st.confirmed, st.floor, st.phase) == ("b", "b", NEXT, "idle")
    assert st.slots["b"] is not None and st.slots["b"].version == "1.0.1+0"
    assert check.report.passed == ["daemon started from the slot", "REST API answers",
                                   "accepted a registration under OSCORE",
                                   f"uplink connected to 127.0.0.1:{mosquitto.port}",
                                   "daemon stopped cleanly"]
    # the Register really reached the new daemon's database, and ended with a De-register
    store = SqliteStorage.open(gw.db)
    try:
        reg = store.registration(ENDPOINT)
        assert reg is not None and reg.state == "deregistered"
    finally:
        store.close()


@pytest.mark.parametrize("fault, patch, reason", [
    ("daemon exits at start", ("gateway", "app.py", BROKEN_START), "daemon-exited"),
    ("never accepts a registration", ("gateway.lwm2m", "registry.py", REFUSES_REGISTRATIONS),
     "registration-refused"),
])
def test_failing_health_check_rolled_back(installed, tmp_path, fault, patch, reason):
    gw = GatewayProcess(tmp_path, None)
    running = slot_digest(installed.root, "a")
    done = installed.update(build(NEXT, patch=patch), trust(),
                            HealthCheck(gw.config, gw.token, deadline_s=30))
    assert (done.result, done.slot, done.reason) == ("rolled-back", "a", reason), done
    assert "injected" in done.detail, done.detail  # the new slot's code is what ran
    st = installed.state()
    assert (installed.linked(), st.confirmed, st.floor) == ("a", "a", FIRST)
    assert (st.result, st.reason, st.phase) == ("rolled-back", reason, "idle")
    assert slot_digest(installed.root, "a") == running  # the running slot never written


@pytest.mark.parametrize("attack, img, reason", [
    ("wrong key", lambda: build(NEXT, key="stranger"), "unknown-key"),
    ("revoked key", lambda: build(NEXT, key="old"), "revoked-key"),
    ("security-counter rollback", lambda: build(FIRST - 1), "rollback"),
    ("app image offered as a gateway", lambda: build(NEXT, payload_type="app"),
     "wrong-payload-type"),
    ("image for a node board", lambda: build(NEXT, board="unix-sim"), "wrong-board"),
])
def test_refused_image_touches_nothing(installed, attack, img, reason):
    before = snapshot(installed.root)
    with pytest.raises(ImageRejected) as e:
        installed.update(img(), trust(old="revoked"), never_called)
    assert e.value.reason == reason
    assert snapshot(installed.root) == before


STEPS = ("installing", "unpacked", "trying", "switched", "committed")
_CRASHER = """
import os, sys
from pathlib import Path
from aiotkit.gateway.ota.selfupdate import SlotRoot
from aiotkit.ota.keys import load_keyset
root, img, trust, at = sys.argv[1:]
def step(name):
    if name == at:
        os._exit(137)  # a power cut: no finally, no cleanup
SlotRoot(Path(root)).update(Path(img).read_bytes(), load_keyset(Path(trust)),
                            lambda slot: None, on_step=step)
raise SystemExit("not cut")
"""


@pytest.mark.parametrize("at", STEPS)
def test_power_cut_at_every_step_leaves_a_consistent_root(installed, tmp_path, at):
    """Cut at each recorded step (the health check is a no-op here: the cut, not the
    check, is under test); the next start (recover) ends on a confirmed slot whose files
    are those of its image, and the running slot was never written."""
    img, trust_file = tmp_path / "next.img", tmp_path / "trust.json"
    img.write_bytes(build(NEXT))
    keys.save_keyset(trust_file, trust())
    running = slot_digest(installed.root, "a")
    cut = subprocess.run([sys.executable, "-c", _CRASHER, str(installed.root), str(img),
                          str(trust_file), at], capture_output=True, text=True, timeout=60,
                         check=False)
    assert cut.returncode == 137, cut.stderr
    installed.recover()
    st = installed.state()
    expect = "b" if at == "committed" else "a"
    assert (installed.linked(), st.confirmed, st.phase) == (expect, expect, "idle")
    assert st.floor == (NEXT if at == "committed" else FIRST)
    if at != "committed":
        assert (st.result, st.reason) in {("interrupted", "interrupted"),
                                          ("rolled-back", "interrupted")}
    assert slot_digest(installed.root, "a") == running
    assert installed.recover() == ""  # consistent: nothing left to do


def test_crash_between_switch_and_commit_is_rolled_back_at_next_start(installed, tmp_path):
    """``aiot gateway update`` killed with its daemon (the whole process group, as a power
    cut) while the health check runs: the next start rolls back to the confirmed slot,
    and a new update then goes through."""
    gw = GatewayProcess(tmp_path, None)
    img, trust_file = tmp_path / "next.img", tmp_path / "trust.json"
    img.write_bytes(build(NEXT))
    keys.save_keyset(trust_file, trust())
    cmd = aiot_cmd("gateway", "update", str(img), "--root", str(installed.root), "--trust",
                   str(trust_file), "--config", str(gw.config), "--token", gw.token)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("switched current"):
                break
        else:
            raise AssertionError("the update never switched")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    st = installed.state()
    assert (st.phase, installed.linked(), st.confirmed) == ("trying", "b", "a")

    said = installed.recover()  # what 'aiot gateway slots --recover' does at boot
    assert "between the switch to slot b and the commit" in said
    st = installed.state()
    assert (installed.linked(), st.confirmed, st.floor) == ("a", "a", FIRST)
    assert (st.result, st.reason) == ("rolled-back", "interrupted")

    # the daemon died with the tool (its database lock is free), and the update can run
    done = installed.update(img.read_bytes(), trust(),
                            HealthCheck(gw.config, gw.token, deadline_s=30))
    assert (done.result, installed.linked(), installed.state().floor) == ("committed", "b",
                                                                           NEXT)


def test_the_commands_build_install_show_and_refuse_without_a_health_check(tmp_path):
    """``build-image`` signs this checkout, ``install`` puts it in slot a, ``slots
    --json`` shows it; ``update`` with a config whose REST API is off is a usage error
    (exit 2, one line) before anything is touched."""
    env = dict(os.environ, AIOT_OTA_PASSPHRASE="pw")
    key, trust_file, img, root = (tmp_path / "k.pem", tmp_path / "trust.json",
                                  tmp_path / "gw.img", tmp_path / "root")
    key.write_bytes(keys.private_pem(signer("release"), b"pw"))
    keys.save_keyset(trust_file, trust())

    def aiot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    r = aiot("gateway", "build-image", "-k", str(key), "--security-counter", "4",
             "--version", "2.0.1", "-o", str(img))
    assert r.returncode == 0 and "version 2.0.1+0, security counter 4" in r.stdout, r.stderr
    r = aiot("gateway", "install", str(img), "--root", str(root), "--trust", str(trust_file))
    assert r.returncode == 0 and "in slot a" in r.stdout, r.stderr
    r = aiot("gateway", "slots", "--root", str(root), "--json")
    shown = json.loads(r.stdout)
    assert (shown["current"], shown["confirmed"], shown["floor"]) == ("a", "a", 4)
    assert shown["slots"]["a"]["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    before = snapshot(root)
    conf = tmp_path / "norest.toml"
    conf.write_text('[gateway]\ndb = "gw.db"\n')
    r = aiot("gateway", "update", str(img), "--root", str(root), "--trust", str(trust_file),
             "--config", str(conf), "--token", "t")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "[rest] enabled" in r.stderr
    assert snapshot(root) == before
