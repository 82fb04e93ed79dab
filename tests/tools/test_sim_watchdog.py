"""The simulated nodes' hardware watchdog (tools/sim.py ``Watchdog`` and the node's
``machine.WDT`` stand-in, ``MACHINE``), with real MicroPython processes: a process that
hangs after arming it, busy or blocked, is killed (SIGKILL, as a reset) once it stops
feeding, and not while it feeds at less than the timeout; one that never arms it is
never killed; a feed allocates nothing on the node. Before, the unix port had no
watchdog and a hung node ran forever."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from aiotkit.tools.sim import WDT_FD_ENV, Watchdog, write_machine

TIMEOUT_MS = 300

_FEEDS_THEN = f"""
import machine, time
w = machine.WDT(timeout={TIMEOUT_MS})
for _ in range(10):  # 1 s: three timeouts, fed every 100 ms
    time.sleep_ms(100)
    w.feed()
print("hang")
"""


async def run(micropython: str, tmp_path: Path, code: str) -> tuple[int, str, Watchdog]:
    """``code`` in micropython with the stand-in machine and a watchdog that kills it;
    (exit status, output, the watchdog)."""
    folder = write_machine(tmp_path / "machine")
    proc: asyncio.subprocess.Process | None = None

    def reset(w: Watchdog) -> None:
        if proc is not None and proc.returncode is None:
            proc.kill()

    wdt = Watchdog(reset)
    try:
        fd = wdt.open()
        env = dict(os.environ, MICROPYPATH=str(folder), **{WDT_FD_ENV: str(fd)})
        try:
            proc = await asyncio.create_subprocess_exec(
                micropython, "-c", code, env=env, pass_fds=(fd,),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        finally:
            wdt.started()
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode if proc.returncode is not None else 0, out.decode(), wdt
    finally:
        wdt.close()
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("hang", ["while True:\n    pass\n", "time.sleep(3600)\n"],
                         ids=["busy", "blocked"])
async def test_a_process_that_stops_feeding_is_reset_after_its_timeout(micropython, tmp_path,
                                                                        hang):
    code, out, wdt = await run(micropython, tmp_path, _FEEDS_THEN + hang)
    assert "hang" in out, out  # not reset while it fed, three timeouts long
    assert code == -signal.SIGKILL, (code, out)
    assert wdt.tripped and wdt.timeout_ms == TIMEOUT_MS


async def test_a_process_that_never_arms_the_watchdog_is_never_reset(micropython, tmp_path):
    code, out, wdt = await run(micropython, tmp_path,
                               "import machine, time\ntime.sleep_ms(600)\nprint('done')\n")
    assert (code, out.strip(), wdt.tripped, wdt.timeout_ms) == (0, "done", False, 0)


async def test_a_feed_allocates_nothing_on_the_node(micropython, tmp_path):
    code, out, wdt = await run(micropython, tmp_path, """
import gc, machine, time
w = machine.WDT(timeout=160)  # a write to the pipe every 10 ms
def feed(n):
    i = 0
    while i < n:
        w.feed()
        i += 1
feed(1000)
a = b = t = 0  # globals made before the measurement (a new one grows the dict)
gc.collect()
a = gc.mem_alloc()
t = time.ticks_us()
feed(200000)
t = time.ticks_diff(time.ticks_us(), t)
b = gc.mem_alloc()
print("allocated", b - a, "us per feed", t / 200000)
""")
    assert code == 0 and not wdt.tripped, out
    assert out.split()[:2] == ["allocated", "0"], out
    print(out)


def test_the_machine_stand_in_keeps_the_ports_own_machine(micropython, tmp_path):
    import subprocess

    folder = write_machine(tmp_path / "machine")
    code = ("import machine\nprint(machine.idle, machine.WDT)\n"
            "try:\n    machine.WDT(timeout=1000)\nexcept OSError as e:\n"
            "    print('no supervisor', e.errno)\n")
    r = subprocess.run([micropython, "-c", code], env=dict(os.environ, MICROPYPATH=str(folder)),
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "<function>" in r.stdout and "no supervisor 19" in r.stdout, r.stdout


async def test_a_node_starved_of_cpu_is_not_taken_for_a_hung_one():
    # A board has its own CPU; 200 simulated nodes booting on two cores wait for one.
    # Without the run-queue credit the watchdog reset nodes that were only waiting
    waits = iter([0.0, 0.0] + [0.2 * i for i in range(1, 6)])  # then it stops waiting
    tripped = asyncio.get_running_loop().create_future()
    times: list[float] = []

    def waited(pid: int) -> float:
        times.append(asyncio.get_running_loop().time())
        return next(waits, 1.0)

    wdt = Watchdog(lambda w: tripped.set_result(asyncio.get_running_loop().time()),
                   waited=waited)
    try:
        fd = wdt.open()
        wdt.watch(4242)  # the fake run-queue wait stands in for the kernel's
        t0 = asyncio.get_running_loop().time()
        os.write(fd, b"100\n")  # armed for 100 ms, then no feed
        at = await asyncio.wait_for(tripped, 10)
        # the 1.0 s it waited for a CPU (in 0.2 s steps) came on top of the 100 ms
        assert at - t0 >= 1.0 + 0.1
        assert wdt.tripped and wdt.timeout_ms == 100
    finally:
        wdt.close()  # both ends
