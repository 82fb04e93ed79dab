"""``aiot model train|evaluate|check|run``: the model pipeline (models/) and the node's
interpreter on the MicroPython unix port.

Hooked into the ``aiot`` parser by ``register(subparsers)``. User mistakes (a missing
folder, files that are not the CWRU recordings, a folder without a model card) raise
``ModelError`` / ``ModelRunError``, which ``aiot`` prints as one line with exit status 2;
``evaluate`` exits 1 when the recomputed metrics differ from the card's, ``check`` when
the node cannot run the model or it does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiotkit.tools.args import positive_int

PROG = "aiot model"


def _progress(quiet: bool) -> Callable[[str], None]:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    return say


def _check_dirs(data: str) -> Path:
    from aiotkit.models.errors import ModelError

    p = Path(data)
    if not p.is_dir():
        raise ModelError(f"--data {p}: not a folder")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from aiotkit.models.errors import ModelError

    data = _check_dirs(args.data)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out}: exists and is not a folder")
    from aiotkit.models import train

    t0 = time.monotonic()
    cards = train.train(data, out, limit=args.limit, epochs=args.epochs,
                        progress=_progress(args.quiet))
    for c in cards:
        print(f"{out / c['name']}: {_headline(c)}")
    print(f"trained {len(cards)} models in {time.monotonic() - t0:.1f} s")
    return 0


def _headline(card: dict[str, Any]) -> str:
    m = card["metrics"]
    if card["kind"] == "classifier":
        s = m["speed_shift"]
        return (f"macro F1 {m['test']['macro_f1']} on {m['test']['windows']} test windows, "
                f"{s['file']} inner race {s['fraction_inner_race']:.1%} of {s['windows']}")
    t = m["test"]
    s = m["speed_shift"]
    return (f"threshold {card['output']['threshold']}, false positives "
            f"{t['false_positive_rate']}, detection {t['detection_rate']}, "
            f"{s['file']} flagged {s['rate']}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aiotkit.models import evaluate

    data = _check_dirs(args.data)
    card, got, diffs = evaluate.evaluate(Path(args.model), data, progress=_progress(args.quiet))
    if args.json:
        print(json.dumps(got, indent=1))
    else:
        print(f"{card['name']} {card['version']} ({card['kind']}), sha256 "
              f"{card['model']['sha256'][:16]}...: {_headline({**card, 'metrics': got})}")
        if card["kind"] == "classifier":
            for name, p in got["test"]["per_class"].items():
                print(f"  {name:11s} precision {p['precision']:.4f} recall {p['recall']:.4f} "
                      f"f1 {p['f1']:.4f} ({p['support']} windows)")
            print("  confusion (rows true, columns predicted): "
                  + json.dumps(got["test"]["confusion"]["matrix"]))
        else:
            for name, p in got["test"]["per_class"].items():
                print(f"  {name:11s} flagged {p['flagged']}/{p['windows']} "
                      f"(score {p['score_min']}..{p['score_max']})")
    if diffs:
        print(f"{PROG}: the recomputed metrics differ from the card:", file=sys.stderr)
        for d in diffs:
            print("  " + d, file=sys.stderr)
        return 1
    print("metrics match the card")
    return 0


def register(subparsers: Any) -> Any:
    """Add ``model train`` and ``model evaluate`` to the aiot parser; returns the
    ``model`` sub-command action so other ``aiot model ...`` commands can join it."""
    m = subparsers.add_parser(
        "model", help="train, evaluate, check and run int8 models (models/, the node's interpreter)")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True

    t = msub.add_parser(
        "train",
        help="train the bearing fault classifier and anomaly detector",
        description="Compute features with the node's own code (MicroPython), train in "
        "numpy, quantize to int8, write OUT/bearing-fault and OUT/bearing-anomaly "
        "(model.tflite, card.json, README.md). Deterministic: the same data gives the same "
        "files.",
    )
    t.add_argument("--data", required=True, metavar="DIR",
                   help="folder with the CWRU .mat files (97, 105, 108, 118, 130, 209, 222, 234)")
    t.add_argument("--out", required=True, metavar="DIR", help="where the model folders go")
    t.add_argument("--limit", type=positive_int, metavar="N",
                   help="at most N windows per recording and part (quick runs; not for "
                   "shipped models)")
    t.add_argument("--epochs", type=positive_int, metavar="N",
                   help="override the training epochs (quick runs)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=cmd_train)

    e = msub.add_parser(
        "evaluate",
        help="recompute a model's metrics and compare them with its card",
        description="Recompute the time-split test metrics and the 108.mat speed-shift "
        "result of MODEL_DIR's model.tflite with tflite-micro, print them, and exit 1 if "
        "they differ from MODEL_DIR/card.json.",
    )
    e.add_argument("model", metavar="MODEL_DIR", help="a model folder (card.json, model.tflite)")
    e.add_argument("--data", required=True, metavar="DIR", help="folder with the CWRU .mat files")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    e.set_defaults(func=cmd_evaluate)

    c = msub.add_parser(
        "check",
        help="can the node run this model? (ops, types, arena, weights, board fit)",
        description="Load MODEL.tflite with the node's own interpreter on the MicroPython "
        "unix port (every op, type and option validated, as on the node) and report its ops, "
        "tensors, arena and size; with --board, whether it fits that board's heap (after the "
        "node's own 40 KB) and half an app slot of flash. Exit 1 if it cannot run or fit.",
    )
    c.add_argument("model", metavar="MODEL.tflite")
    c.add_argument("--board", metavar="NAME|FILE", help="a board (boards/NAME.json)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)

    r = msub.add_parser(
        "run",
        help="run int8 inputs through the node's interpreter (MicroPython)",
        description="Run every row of IN.npy (first axis = batch, the model's input dtype) "
        "through the node's interpreter on the MicroPython unix port and write the outputs "
        "to OUT.npy (batch first), for comparison with TFLite Micro or anything else.",
    )
    r.add_argument("model", metavar="MODEL.tflite")
    r.add_argument("--inputs", required=True, metavar="IN.npy")
    r.add_argument("--outputs", required=True, metavar="OUT.npy")
    r.add_argument("--heap", default="192K",
                   help="MicroPython heap (192K; the interpreter's x64 code lives in it)")
    r.set_defaults(func=cmd_run)
    return msub


def cmd_check(args: argparse.Namespace) -> int:
    from aiotkit.tools import modelrun

    rep = modelrun.check(Path(args.model), args.board)
    if args.json:
        print(json.dumps(rep))
    elif "error" in rep:
        print(f"{args.model}: the node cannot run it: {rep['error']}")
    else:
        ops = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in rep["ops"].items())
        print(f"{args.model}: the node can run it")
        print(f"  ops       {ops}")
        for kind in ("inputs", "outputs"):
            for t in rep[kind]:
                print(f"  {kind[:-1]:9} {t['type']} {t['shape']} scale {t['scale']} "
                      f"zero point {t['zp']}")
        print(f"  arena     {rep['arena']} bytes; interpreter RAM for this model "
              f"{rep['ram']} bytes (weights stay in the file: {rep['file_bytes']} bytes)")
        b = rep.get("board")
        if b:
            print(f"  board     {b['name']}: heap {b['heap_needed']} of {b['heap_for_model']} "
                  f"bytes {'OK' if b['fits_heap'] else 'TOO BIG'}; flash {rep['file_bytes']} "
                  f"of {b['flash_for_model']} bytes {'OK' if b['fits_flash'] else 'TOO BIG'}")
    b = rep.get("board", {})
    return 1 if "error" in rep or b.get("fits_heap") is False or b.get("fits_flash") is False \
        else 0


def cmd_run(args: argparse.Namespace) -> int:
    from aiotkit.tools import modelrun

    r = modelrun.run(Path(args.model), Path(args.inputs), Path(args.outputs), args.heap)
    print(f"{r['n']} inputs -> {args.outputs} {r['dtype']} {r['shape']}; "
          f"{r['us']:.1f} us per invoke, arena {r['arena']} bytes")
    return 0
