"""pyproject's package list follows the tree: a subpackage left out of it would be missing
from a normal (non-editable) install while every editable-install test still passes."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_cpython_subpackage_is_listed_in_pyproject():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(meta["packages"])
    missing = []
    for package, folder in meta["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            name = ".".join([package, *rel.parts])
            if "node_modules" in rel.parts:
                continue
            if name not in listed:
                missing.append(name)
    assert not missing, f"not in pyproject's [tool.setuptools] packages: {missing}"


def test_every_firmware_module_ships_as_package_data():
    """The node's modules are package data (MicroPython packages have no __init__.py):
    the globs must reach every folder depth the firmware uses."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = meta["package-data"]["aiotkit.firmware"]
    fw = REPO / "firmware"
    shipped = {p for g in globs for p in fw.glob(g)}  # setuptools globs the same way
    unshipped = [str(p.relative_to(fw)) for p in fw.rglob("*.py") if p not in shipped]
    assert not unshipped, f"firmware files no package-data glob ships: {unshipped}"
