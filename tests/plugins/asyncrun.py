"""The suite's one async test runner, and the leak guard every test runs under.

An ``async def test_*`` anywhere below ``tests/`` runs in its own event loop
(``asyncio.run``), bounded by a timeout (``@pytest.mark.timeout_s(N)`` changes it), and
fails if it leaves a task running.

Every test, sync or async, fails if it leaves behind a socket or a child process it
opened: the guard compares this process's open sockets (``/proc/self/fd``) and its
child processes (``/proc/*/stat``) before and after the test, fixtures included.
Session-scoped fixtures (a shared Mosquitto, a compiled firmware) are set up before the
first test that uses them and stay until the end, so they are not leaks: what a
session fixture starts during a test is recorded as the session's, not the test's.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_TIMEOUT_S = 30.0
# a socket or process may take a moment to be reaped after the test closed it
_SETTLE_S = 2.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    marker = pyfuncitem.get_closest_marker("timeout_s")
    timeout = float(marker.args[0]) if marker else DEFAULT_TIMEOUT_S
    asyncio.run(_guarded(pyfuncitem.obj(**kwargs), timeout))
    return True


async def _guarded(coro: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await coro
    me = asyncio.current_task()
    # Libraries schedule some cancellations with call_soon (aiomqtt's misc task): let
    # already-scheduled callbacks run, without waiting for anything new.
    left: list[asyncio.Task[Any]] = []
    for _ in range(5):
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not left:
            break
        await asyncio.sleep(0)
    if left:
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in left))
        pytest.fail(f"test left tasks running: {names}", pytrace=False)


# ---------------------------------------------------------------------------- leaks


def open_sockets() -> dict[str, str]:
    """This process's open sockets: ``socket:[inode]`` -> fd."""
    found = {}
    fds = Path("/proc/self/fd")
    for fd in os.listdir(fds):
        try:
            target = os.readlink(fds / fd)
        except OSError:
            continue  # closed meanwhile (listdir's own fd among them)
        if target.startswith("socket:"):
            found[target] = fd
    return found


def child_processes() -> dict[int, str]:
    """Live (not zombie) processes whose parent is this process: pid -> command name."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == me and state != "Z":
            found[int(entry)] = comm
    return found


def describe_socket(link: str) -> str:
    """``socket:[inode]`` as ``tcp 127.0.0.1:5683 -> 127.0.0.1:41234`` where /proc knows."""
    inode = link[link.index("[") + 1 : -1]
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/self/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[9] == inode:
                return f"{proto} socket {_addr(f[1])} -> {_addr(f[2])}"
    return f"socket {inode} (unix or netlink)"


def _addr(hexaddr: str) -> str:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{'.'.join(str(b) for b in raw[::-1])}:{int(port, 16)}"
    words = [raw[i : i + 4][::-1].hex() for i in range(0, 16, 4)]
    return f"[{':'.join(words)}]:{int(port, 16)}"


_OWNED = pytest.StashKey[tuple[set[str], set[int]]]()
_BEFORE = pytest.StashKey[tuple[set[str], set[int]]]()


def _owned(config: pytest.Config) -> tuple[set[str], set[int]]:
    """Sockets and processes that fixtures wider than one test opened: theirs to close."""
    return config.stash.setdefault(_OWNED, (set(), set()))


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
                         ) -> Iterator[object]:
    if fixturedef.scope == "function":
        return (yield)
    before_s, before_c = set(open_sockets()), set(child_processes())
    try:
        return (yield)
    finally:
        socks, kids = _owned(request.config)
        socks |= set(open_sockets()) - before_s
        kids |= set(child_processes()) - before_c


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_BEFORE] = (set(open_sockets()), set(child_processes()))


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if item.get_closest_marker("allow_leaks") or _BEFORE not in item.stash:
        return
    before_s, before_c = item.stash[_BEFORE]
    owned_s, owned_c = _owned(item.config)
    deadline = time.monotonic() + _SETTLE_S
    collected = False
    while True:
        socks = {k: v for k, v in open_sockets().items() if k not in before_s | owned_s}
        kids = {k: v for k, v in child_processes().items() if k not in before_c | owned_c}
        if not (socks or kids) or time.monotonic() > deadline:
            break
        if not collected:
            # a socket only garbage still holds (a client object in a reference cycle,
            # such as paho's wake-up socket pair) is closed by the collector, not leaked
            gc.collect()
            collected = True
            continue
        time.sleep(0.05)
    if socks or kids:
        what = [describe_socket(k) for k in sorted(socks)]
        what += [f"process {pid} ({name})" for pid, name in sorted(kids.items())]
        pytest.fail(f"test left behind: {', '.join(what)}", pytrace=False)
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout_s(seconds): bound on an async test")
    config.addinivalue_line(
        "markers", "allow_leaks: the test hands a socket or process to a later test on purpose"
    )
