"""``aiot bench infer``: the node's int8 interpreter (MicroPython unix port) against the
tflite-micro interpreter (TFLM reference kernels) on the same models and inputs.

Models: the shipped bearing models (models/*/model.tflite) and two reference nets built
without TensorFlow (models/opmodels.py): a reduced MLPerf-Tiny-style FC autoencoder and a
small conv net. Each runs the same random int8 inputs on both sides; the outputs must be
identical (the run fails otherwise). Times are per invoke: on the node the mean of
``time.ticks_us`` around ``invoke()`` inside one MicroPython process (precompiled
modules), for TFLM the best of three passes of ``invoke()`` timed in Python. Arena: the
node's planned arena vs TFLM's non-persistent arena ("head" of print_allocations).
The last line is one JSON object: {"models": {NAME: {"kind", "us", "tflm_us", "ratio",
"arena_bytes", "tflm_arena_bytes"}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _models() -> list[tuple[str, str, bytes]]:
    from aiotkit.boards import paths
    from aiotkit.models import opmodels

    out = [(p.parent.name, "fc", p.read_bytes()) for p in paths.shipped_models()]
    out.append(("autoencoder-64", "fc", opmodels.autoencoder(7)[0]))
    out.append(("small-cnn", "conv", opmodels.small_cnn(7)[0]))
    return out


def _tflm_us(model: bytes, x, passes: int = 3) -> float:
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    ip = runtime.Interpreter.from_bytes(model)
    shape = tuple(int(d) for d in ip.get_input_details(0)["shape"])
    best = float("inf")
    for _ in range(passes):
        total = 0.0
        for row in x:
            ip.set_input(np.ascontiguousarray(row).reshape(shape), 0)
            t0 = time.perf_counter()
            ip.invoke()
            total += time.perf_counter() - t0
        best = min(best, total / len(x))
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aiot bench infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=200, help="random inputs per model (200)")
    p.add_argument("--heap", default="192K",
                   help="MicroPython heap (192K: the interpreter's x64 code lives in it)")
    args = p.parse_args(argv)
    if args.inputs < 1:
        print("aiot bench infer: error: --inputs must be >= 1", file=sys.stderr)
        return 2
    try:
        import numpy as np
        from aiotkit.tools import tflrun
    except ImportError as e:
        print(f"aiot bench infer: error: {e.name} is missing: pip install 'aiotkit[model]'",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(1)
    results: dict[str, dict] = {}
    for name, kind, model in _models():
        print(f"[bench] {name}: {args.inputs} inputs", file=sys.stderr, flush=True)
        from tflite_micro.python.tflite_micro import runtime

        idet = runtime.Interpreter.from_bytes(model).get_input_details(0)
        shape = tuple(int(d) for d in idet["shape"])[1:]
        x = rng.integers(-128, 128, (args.inputs, *shape)).astype(np.int8)
        x[0] = -128
        x[-1] = 127
        with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
            path = Path(tmp) / f"{name}.tflite"
            path.write_bytes(model)
            try:
                y, info = tflrun.run_model_info(path, x, heap=args.heap)
            except tflrun.NodeRunError as e:
                print(f"aiot bench infer: error: {name}: {str(e).strip().splitlines()[-1]}",
                      file=sys.stderr)
                return 1
        ref = tflrun.tflm_run(model, x)
        if not np.array_equal(y, ref):
            print(f"aiot bench infer: error: {name}: outputs differ from tflite-micro",
                  file=sys.stderr)
            return 1
        tus = _tflm_us(model, x)
        head = tflrun.tflm_arena(model).get("head", 0)
        results[name] = {
            "kind": kind, "us": round(info["us"], 1), "tflm_us": round(tus, 1),
            "ratio": round(info["us"] / tus, 2), "arena_bytes": info["arena"],
            "tflm_arena_bytes": head, "bit_exact": True,
            "alloc_bytes_after_first": info["alloc_after_first"],
        }
    print(f"{'model':18} {'kind':5} {'node us':>9} {'TFLM us':>9} {'ratio':>6} "
          f"{'arena':>7} {'TFLM arena':>10}")
    for name, r in results.items():
        print(f"{name:18} {r['kind']:5} {r['us']:9.1f} {r['tflm_us']:9.1f} {r['ratio']:6.2f} "
              f"{r['arena_bytes']:7d} {r['tflm_arena_bytes']:10d}")
    print(f"(MicroPython {args.heap} heap, {args.inputs} inputs per model, outputs identical "
          "to tflite-micro)")
    print(json.dumps({"models": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
