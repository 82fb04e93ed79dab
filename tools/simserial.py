"""``aiot sim --serial``: the simulator's nodes on simulated serial boards.

Each node is a ``SimBoard`` (tools/simboard.py: the MicroPython unix port behind a pty
that behaves like a USB board) whose flash folder is the node's folder. The fleet
treats it as a developer treats a board on a cable:

1. the board powers on blank (or with what ``--keep-state`` kept);
2. ``aiot firmware deploy``'s library (tools/deploy.py) writes the firmware over the
   serial line: only files that differ, each SHA-256-checked on the board before it is
   renamed into place;
3. the node's ``config.json`` (with its OSCORE keys), its models and its replayed
   signal are in its flash as ``Fleet.prepare`` wrote them (the signal copied in as
   ``signal.i16``: the board sees only its flash);
4. a soft reset (Ctrl-D at the REPL) boots ``main.py``, the boot selector, the node;
5. the fleet reads the console like a serial monitor: the node's ``aiot-node ...``
   lines, parsed as for process nodes;
6. stopping sends Ctrl-C (the node de-registers and returns to the REPL), then cuts
   the power.

A node that crashes drops to the REPL, as on a board; the fleet reports it and, like a
watchdog, resets the board after a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import termios
import tty
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError
from aiotkit.tools.sim import Fleet, SimNode

_REPL = b">>> "
_SOFT_REBOOT = "soft reboot"  # what the board prints as it boots again (tools/simboard.py)
_REBOOT = b"\x04"  # Ctrl-D on an empty REPL line: soft reset
_INTERRUPT = b"\x03"


class _Console:
    """The host end of a board's serial port, read like a serial monitor. ``ended`` is
    set when the REPL prompt comes back after a reboot: the program it ran ended."""

    def __init__(self, port: str, on_line: Any) -> None:
        self._fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd, termios.TCSANOW)
        self._buf = b""
        self._on_line = on_line
        self._running = False
        self.ended = asyncio.Event()
        self._prompt = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            if _SOFT_REBOOT in line:
                self._running = True
                self.ended.clear()
            self._on_line(line)
        if self._buf.endswith(_REPL):
            self._prompt.set()
            if self._running:
                self._running = False
                self.ended.set()

    async def reboot(self) -> None:
        """Soft-reset the board from its friendly REPL (Ctrl-D on an empty line) once
        its prompt is there: a byte sent while the REPL sets itself up may be lost."""
        self.ended.clear()
        for _ in range(10):
            self._prompt.clear()
            self.write(b"\r")  # a fresh prompt
            try:
                await asyncio.wait_for(self._prompt.wait(), 1.0)
                break
            except TimeoutError:
                continue
        self.write(_REBOOT)

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, data)

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class SerialFleet(Fleet):
    """A ``Fleet`` whose nodes run on simulated serial boards (module docstring)."""

    def prepare(self) -> None:
        super().prepare()
        from aiotkit.tools import boards, firmwarecli

        board = boards.load_board("unix-sim")
        self._files = firmwarecli.base_files(board)
        self._meta = {"version": "sim", "board": board["name"],
                      "arch": firmwarecli.board_arch(board)}
        for node in self.nodes:  # the board sees its flash only
            shutil.copyfile(node.signal, node.workdir / "signal.i16")
            conf_path = node.workdir / "config.json"
            conf = json.loads(conf_path.read_text())
            conf["signal"] = "signal.i16"
            tmp = node.workdir / "config.json.tmp"
            tmp.write_text(json.dumps(conf, indent=1) + "\n")
            os.replace(tmp, conf_path)
        self._ports = Path(self.cfg.workdir) / ".ports"
        self._ports.mkdir(parents=True, exist_ok=True)

    async def _supervise(self, node: SimNode) -> None:
        from aiotkit.tools import deploy
        from aiotkit.tools.simboard import SimBoard

        board = SimBoard(self._ports / node.endpoint, flash=node.workdir, heap=self.cfg.heap)
        self._boards[node.endpoint] = board
        node.state = "deploying"
        try:
            await board.start()
            await board.wait_ready()

            def quiet(line: str) -> None:
                if self.cfg.verbose:
                    self._emit(node, line)

            def write_firmware() -> None:
                with deploy.Board(board.port, timeout=20.0) as b:
                    deploy.deploy(b, self._files, self._meta, progress=quiet)

            try:
                await asyncio.to_thread(write_firmware)
            except (AiotError, OSError) as e:  # a deploy error ends this node only
                node.state, node.last_error = "failed", f"deploy: {e}"
                self._emit(node, node.last_error)
                return
            uid = board.uid.hex() if board.uid else "?"
            self._emit(node, f"firmware deployed over {board.link} (board {uid})")
            console = _Console(board.port, lambda line: self._take_line(node, line))
            self._consoles[node.endpoint] = console
            delay = 1.0
            while not self.stopping():
                node.state = "starting"
                await console.reboot()  # main.py runs the boot selector, the node
                await console.ended.wait()  # the REPL is back: the node ended
                if self.stopping():
                    return
                if node.last_error.startswith("aiot-node: config error"):
                    node.state = "failed"  # a reboot cannot fix it
                    return
                node.state = "crashed"
                node.restarts += 1
                self._emit(node, f"node ended at the REPL; resetting the board in"
                                 f" {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        except (AiotError, OSError) as e:  # the board failed (no micropython, a dead pty)
            node.state, node.last_error = "failed", f"board: {e}"
            self._emit(node, node.last_error)

    async def start(self) -> None:
        self._boards: dict[str, Any] = {}
        self._consoles: dict[str, _Console] = {}
        await super().start()

    async def stop(self, timeout: float = 8.0) -> None:
        """Ctrl-C to every running node (it de-registers and returns to the REPL), then
        cut the power of every board."""
        self._stopping = True
        consoles = list(self._consoles.values())
        for console in consoles:
            console.write(_INTERRUPT)
        if consoles:
            await asyncio.wait([asyncio.create_task(c.ended.wait()) for c in consoles],
                               timeout=timeout)
        for console in consoles:
            console.close()
        self._consoles.clear()
        for board in self._boards.values():
            await board.stop()
        self._boards.clear()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
