"""Fixtures of the tools' tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Every pty, pipe and file a test opened is closed at its end (the simulated boards'
    tests: a leaked pty would keep a board's port alive)."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    deadline = time.monotonic() + 2.0
    while True:
        left = {fd: _target(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
        left = {fd: t for fd, t in left.items() if t}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"test left fds open: {left}"


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
