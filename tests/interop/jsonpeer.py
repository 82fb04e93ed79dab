"""A Node.js peer script of this folder as an asyncio subprocess (its own module so that
tests import it by a name no other test folder uses, unlike ``conftest``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


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
