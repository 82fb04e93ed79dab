"""Interop wiring: third-party LwM2M peers from npm (``lwm2m-node-lib``, Telefonica), run
by Node.js scripts in this folder that speak JSON lines on stdin/stdout.

``tools/bootstrap.sh test`` installs them (``npm ci`` here, from package-lock.json).
Without node or the installed package a test is skipped, except under ``CI=true`` where
it fails (as for every real part, ``plugins/services.py``). ``async def`` tests run
under ``tests/plugins/asyncrun.py``, with a longer timeout here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TEST_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(pytest.mark.timeout_s(TEST_TIMEOUT_S))


def _missing(msg: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " - CI must provide every real part", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def node_lib() -> str:
    """The ``node`` binary, once lwm2m-node-lib is installed next to these scripts."""
    node = shutil.which("node")
    if node is None:
        _missing("node not found (apt-get install nodejs)")
    if not (HERE / "node_modules" / "lwm2m-node-lib" / "package.json").is_file():
        _missing("lwm2m-node-lib not installed (tools/bootstrap.sh test, or npm ci in "
                 "tests/interop)")
    return node  # type: ignore[return-value]


class JsonPeer:
    """A Node.js peer script as an asyncio subprocess: JSON commands in, JSON events out."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._next_id = 0

    @classmethod
    async def start(cls, node: str, script: str, *args: str) -> JsonPeer:
        proc = await asyncio.create_subprocess_exec(
            node, str(HERE / script), *args, cwd=HERE, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(script, proc)

    async def event(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 20.0) -> dict[str, Any]:
        """The first event (seen before or arriving now) that matches ``predicate``."""
        for e in self.events:
            if predicate(e):
                return e
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise AssertionError(f"{self.name} exited waiting for {what}:"
                                             f" {self.events} {await self._err()}")
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the library's own log lines
                    self.events.append(e)
                    if e.get("event") == "error":
                        raise AssertionError(f"{self.name}: {e}")
                    if predicate(e):
                        return e
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout} s;"
                                 f" events {self.events}") from None

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()

    async def call(self, **cmd: Any) -> dict[str, Any]:
        """A command answered by a ``result`` event with the same id."""
        self._next_id += 1
        rid = self._next_id
        await self.send(id=rid, **cmd)
        return await self.event(lambda e: e.get("event") == "result" and e.get("id") == rid,
                                f"result of {cmd}")

    async def _err(self) -> str:
        if self.proc.stderr is None:
            return ""
        try:
            async with asyncio.timeout(2):
                self.stderr += await self.proc.stderr.read()
        except TimeoutError:
            pass
        return self.stderr.decode(errors="replace")[-2000:]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
def json_peer() -> type[JsonPeer]:
    return JsonPeer
