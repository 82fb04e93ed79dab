"""Simulated boards on a serial line (tools/simboard.py), driven by the real ``mpremote``
CLI and by pyserial at the byte level: REPL modes, files, reboots, identity, faults."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import signal
import sys
import time
import tty
from pathlib import Path
from typing import Any

import pytest
from aiotkit.boards.errors import UsageError
from aiotkit.tools.simboard import SimBoard, SimBoardError, SimBoards
from plugins.services import aiot_cmd, require_tool

pytestmark = pytest.mark.usefixtures("no_fd_leak")

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


@pytest.fixture
def mpremote(micropython) -> str:
    return require_tool("mpremote", "pip install 'aiotkit[field]'")


async def mp(mpremote: str, board: SimBoard, *args: str, timeout: float = 20.0,
             resume: bool = True) -> tuple[int | None, str]:
    """Run ``mpremote connect LINK [resume] ARGS``: (exit status or None if it had to be
    killed after ``timeout``, stdout+stderr)."""
    cmd = [mpremote, "connect", str(board.link), *(["resume"] if resume else []), *args]
    p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
        return p.returncode, out.decode(errors="replace")
    except TimeoutError:
        p.kill()
        out, _ = await p.communicate()
        return None, out.decode(errors="replace")


async def ok(mpremote: str, board: SimBoard, *args: str, **kw) -> str:
    rc, out = await mp(mpremote, board, *args, **kw)
    assert rc == 0, f"mpremote {' '.join(args)}: {rc}\n{out}"
    return out


def new_board(tmp_path: Path, name: str = "ttyACM0", **kw) -> SimBoard:
    return SimBoard(tmp_path / name, flash=tmp_path / f"{name}.flash", **kw)


async def test_mpremote_execs_copies_lists_reads_and_runs(tmp_path, mpremote):
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello from', sys.platform, 6 * 7)\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(100 * 1024))
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        assert os.path.realpath(board.link) == board.port
        assert await ok(mpremote, board, "exec", "print(1+1)") == "2\r\n"
        await ok(mpremote, board, "fs", "cp", str(script), ":hello.py")
        listing = await ok(mpremote, board, "fs", "ls")
        assert f"{script.stat().st_size} hello.py" in listing
        assert await ok(mpremote, board, "fs", "cat", "hello.py") == script.read_text().replace(
            "\n", "\r\n")
        assert (tmp_path / "ttyACM0.flash" / "hello.py").read_bytes() == script.read_bytes()
        assert await ok(mpremote, board, "run", str(script)) == "hello from linux 42\r\n"
        # the board's files are at / as on a board, and nothing else is there
        assert await ok(mpremote, board, "exec", "import os; print(os.listdir('/'))") == \
            "['hello.py']\r\n"

        t0 = time.monotonic()
        await ok(mpremote, board, "fs", "cp", str(blob), ":blob.bin", timeout=40)
        cp_s = time.monotonic() - t0
        want = hashlib.sha256(blob.read_bytes()).hexdigest()
        got = await ok(mpremote, board, "exec",
                       "import hashlib, binascii\nh = hashlib.sha256()\n"
                       "f = open('blob.bin', 'rb')\nh.update(f.read())\n"
                       "print(binascii.hexlify(h.digest()).decode())")
        assert got.strip() == want
        print(f"mpremote cp 100 KB: {cp_s:.2f} s", file=sys.stderr)
        assert board.boots == 1


async def test_soft_reset_restarts_the_process_and_the_flash_survives(tmp_path, mpremote):
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        first = board.pid
        await ok(mpremote, board, "exec", "open('kept.txt', 'w').write('still here')")
        await ok(mpremote, board, "soft-reset")
        await board.wait_boots(2)
        assert board.pid != first
        assert await ok(mpremote, board, "exec",
                        "import machine\nprint(machine.reset_cause() == machine.SOFT_RESET,"
                        " open('kept.txt').read())") == "True still here\r\n"
        # without 'resume' mpremote soft-resets at connect: the board comes back in the
        # raw REPL, as a real one does
        assert await ok(mpremote, board, "exec", "print('after reboot')",
                        resume=False) == "after reboot\r\n"
        await board.wait_boots(3)
        # machine.soft_reset() from a program is a reboot too
        await ok(mpremote, board, "exec", "import machine; machine.soft_reset()")
        await board.wait_boots(4)
        # machine.reset() is a hard reset: boot.py and main.py run, friendly REPL
        await ok(mpremote, board, "fs", "cp", str(_write(tmp_path / "main.py",
                 "open('booted', 'a').write('x')\n")), ":main.py")
        await ok(mpremote, board, "exec", "import machine; machine.reset()")
        await board.wait_boots(5)
        assert await ok(mpremote, board, "exec",
                        "import machine\nprint(machine.reset_cause() == machine.HARD_RESET,"
                        " open('booted').read())") == "True x\r\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_a_running_main_py_is_interrupted_like_a_board(tmp_path, mpremote):
    """A node app runs forever in main.py: mpremote's Ctrl-C stops it (SIGINT by the
    relay, as the unix port reads no input while it runs code)."""
    flash = tmp_path / "ttyACM0.flash"
    flash.mkdir()
    _write(flash / "main.py", "import time\nwhile True:\n    time.sleep_ms(20)\n")
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        assert await ok(mpremote, board, "exec", "print('got in')") == "got in\r\n"


async def test_unique_ids_are_stable_across_reboots_and_differ_between_boards(
        tmp_path, mpremote):
    read_id = "import machine, binascii; print(binascii.hexlify(machine.unique_id()).decode())"
    async with SimBoards(tmp_path, 2) as (a, b):
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        ids = await asyncio.gather(ok(mpremote, a, "exec", read_id),
                                   ok(mpremote, b, "exec", read_id))
        assert [i.strip() for i in ids] == [a.uid.hex(), b.uid.hex()]
        assert a.uid != b.uid and len(a.uid) == 8
        await ok(mpremote, a, "soft-reset")
        await a.wait_boots(2)
        assert (await ok(mpremote, a, "exec", read_id)).strip() == a.uid.hex()
        first_a = a.uid
    # the id is recorded with the flash folder: the same board next time, and not a file
    # the board's programs see
    again = SimBoard(tmp_path / "again", flash=tmp_path / "board-1.flash")
    async with again:
        await again.wait_ready()
        assert again.uid == first_a
        assert await ok(mpremote, again, "fs", "ls") == "ls :\n"
    given = bytes.fromhex("0011223344556677")
    async with new_board(tmp_path, "given", uid=given) as board:
        await board.wait_ready()
        assert (await ok(mpremote, board, "exec", read_id)).strip() == given.hex()


@pytest.mark.timeout_s(60)
async def test_power_cut_silences_the_port_until_power_returns(tmp_path, mpremote):
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        await ok(mpremote, board, "exec", "open('before-cut', 'w').write('1')")
        pid = board.pid
        board.power_off()
        rc, out = await mp(mpremote, board, "exec", "print(1)", timeout=20)
        assert rc not in (0, None), out
        assert "could not enter raw repl" in out
        assert not Path(f"/proc/{pid}").exists() or board.pid is None
        await board.power_on()
        await board.wait_ready()
        assert await ok(mpremote, board, "exec",
                        "import machine\nprint(machine.reset_cause() == machine.PWRON_RESET,"
                        " open('before-cut').read())") == "True 1\r\n"


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("fault", ["garble", "drop"])
async def test_garbled_or_dropped_bytes_break_the_answer_until_the_line_is_clean(
        tmp_path, mpremote, fault):
    code = "print('x' * 300)"
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        assert await ok(mpremote, board, "exec", code) == "x" * 300 + "\r\n"
        board.faults.rng.seed(15)
        setattr(board.faults, fault, 0.05)
        # mpremote either reports an error or waits for bytes that never come
        rc, out = await mp(mpremote, board, "exec", code, timeout=4)
        assert (rc, out) != (0, "x" * 300 + "\r\n")
        board.faults.clear()
        # a tool recovers by interrupting and retrying (the line is clean again)
        for _ in range(3):
            rc, out = await mp(mpremote, board, "exec", code, timeout=15)
            if rc == 0:
                break
        assert (rc, out) == (0, "x" * 300 + "\r\n")


def read_until(s: Any, end: bytes) -> bytes:
    """What pyserial port ``s`` gives up to and including ``end``; its read timeout
    fails the test."""
    data = b""
    while not data.endswith(end):
        c = s.read(1)
        assert c, f"timeout after {data!r}, waiting for {end!r}"
        data += c
    return data


async def test_raw_repl_handshake_on_the_wire(tmp_path):
    """The bytes mpremote relies on, read with pyserial."""
    serial = pytest.importorskip("serial")
    async with new_board(tmp_path) as board:
        await board.wait_ready()

        def talk() -> dict[str, bytes]:
            got = {}
            with serial.Serial(str(board.link), 115200, timeout=5) as s:
                until = functools.partial(read_until, s)
                s.write(b"\r\x03")
                until(b">>> ")
                s.write(b"\r\x01")
                got["enter"] = until(RAW_BANNER)
                s.write(b"print(6 * 7)\x04")
                got["exec"] = until(b"\x04>")
                s.write(b"\x05A\x01")
                got["paste"] = s.read(5)
                s.write(b"while True:\n    pass\n\x04")
                got["paste end"] = s.read(1)
                s.write(b"\x03")  # a board's UART interrupt; here a SIGINT by the relay
                got["interrupted"] = until(b"\x04>")
                s.write(b"\x04")  # Ctrl-D on an empty raw line: soft reset
                got["soft reset"] = until(RAW_BANNER)
                s.write(b"\r\x02")
                got["friendly"] = until(b">>> ")
            return got

        got = await asyncio.to_thread(talk)
        assert got["enter"].endswith(b"\r\n" + RAW_BANNER)
        assert got["exec"] == b"OK42\r\n\x04\x04>"
        # raw paste on, window 128 (uint16 LE), then the first window's \x01
        assert got["paste"] == b"R\x01\x80\x00\x01"
        assert got["paste end"] == b"\x04"
        assert got["interrupted"].endswith(b"KeyboardInterrupt: \r\n\x04>")
        assert got["soft reset"] == b"OK\r\nMPY: soft reboot\r\n" + RAW_BANNER
        assert got["friendly"].startswith(b"\r\nMicroPython ")
        assert board.boots == 2


async def test_binary_output_and_ctrl_c_with_the_interrupt_off_cross_the_relay_unchanged(
        tmp_path):
    """What a board leaves alone: bytes written to sys.stdout.buffer are not cooked (only
    text gets \\r\\n), and with micropython.kbd_intr(-1) a Ctrl-C is a data byte, also
    while the program waits in poll() (no SIGINT, which would kill the process)."""
    serial = pytest.importorskip("serial")
    async with new_board(tmp_path) as board:
        await board.wait_ready()

        def talk() -> dict[str, bytes]:
            got = {}
            with serial.Serial(str(board.link), 115200, timeout=5) as s:
                until = functools.partial(read_until, s)
                s.write(b"\r\x03")
                until(b">>> ")
                s.write(b"\r\x01")
                until(RAW_BANNER)
                s.write(b"import sys\nsys.stdout.buffer.write(bytes(range(256)))\n"
                        b"sys.stdout.buffer.write(b'xyz', 1, 1)\nprint('a\\nb')\x04")
                got["binary"] = until(b"\x04>")
                s.write(b"import micropython, select, sys\nmicropython.kbd_intr(-1)\n"
                        b"print('ready')\np = select.poll()\n"
                        b"p.register(sys.stdin.buffer, select.POLLIN)\np.poll(5000)\n"
                        b"print(sys.stdin.buffer.read(3))\nmicropython.kbd_intr(3)\x04")
                until(b"ready\r\n")
                s.write(b"a\x03b")
                got["ctrl-c as data"] = until(b"\x04>")
                # text that ends like the start of a frame mark is text all the same
                s.write(b"import sys\nsys.stdout.write('bye\\x00')\nsys.exit()\x04")
                got["last words"] = until(RAW_BANNER)
            return got

        got = await asyncio.to_thread(talk)
        assert got["binary"] == b"OK" + bytes(range(256)) + b"y" + b"a\r\nb\r\n\x04\x04>"
        assert got["ctrl-c as data"] == b"b'a\\x03b'\r\n\x04\x04>"
        assert got["last words"] == b"OKbye\x00\x04\x04MPY: soft reboot\r\n" + RAW_BANNER
        assert board.boots == 2


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


async def test_mpremote_mount_imports_runs_lists_and_writes_host_files_on_the_board(
        tmp_path, mpremote):
    """``mpremote mount DIR``: the board reads and writes the host folder at /remote
    through mpremote's binary protocol; the board's own flash is left alone. The names
    are picked to hit the bytes a relay could mangle: "/sensor.py" is 10 bytes long (its
    length goes out as \\n), "cal" 3 (its length comes back as Ctrl-C), the table holds
    every byte value, and the log is longer than one 64 KB frame."""
    host = tmp_path / "host"
    (host / "cal").mkdir(parents=True)
    (host / "sensor.py").write_text("GAIN = 7\n")
    table = bytes(range(256)) * 4
    (host / "cal" / "table.bin").write_bytes(table)
    (host / "stale.txt").write_text("old\n")
    job = _write(tmp_path / "job.py",
                 "import os, sensor\n"
                 "table = open('cal/table.bin', 'rb').read()\n"
                 "os.mkdir('out')\n"
                 "with open('out/log.tmp', 'wb') as f:\n"
                 "    f.write(table * 70)\n"
                 "os.rename('out/log.tmp', 'out/log.bin')\n"
                 "os.remove('stale.txt')\n"
                 "print(sensor.GAIN * 6, len(table), os.getcwd())\n")
    flash = tmp_path / "ttyACM0.flash"
    flash.mkdir()
    _write(flash / "sensor.py", "GAIN = 0\n")  # the board's own: the host's comes first
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        before = _files(flash)
        mount = ("mount", str(host))
        assert await ok(mpremote, board, *mount, "exec",
                        "import sensor; print(sensor.GAIN)") == \
            f"Local directory {host} is mounted at /remote\n7\r\n"
        out = await ok(mpremote, board, *mount, "run", str(job))
        assert out.endswith("\n42 1024 /remote\r\n"), out
        assert (host / "out" / "log.bin").read_bytes() == table * 70
        assert not (host / "stale.txt").exists() and not (host / "out" / "log.tmp").exists()
        out = await ok(mpremote, board, *mount, "exec",
                       "import os\nprint(sorted(os.listdir('/remote')),"
                       " os.stat('/remote/out/log.bin')[6],"
                       " open('/remote/cal/table.bin', 'rb').read() == bytes(range(256)) * 4)")
        assert out.endswith("\n['cal', 'out', 'sensor.py'] 71680 True\r\n"), out
        # unmounted when mpremote left: the flash is the board's again, untouched
        assert await ok(mpremote, board, "exec",
                        "import os; print(os.getcwd(), sorted(os.listdir('/')),"
                        " open('sensor.py').read())") == "/ ['sensor.py'] GAIN = 0\r\n\r\n"
        assert _files(flash) == before
        assert board.boots == 1


class Terminal:
    """A pty for an interactive program (``mpremote repl``): it gets the slave side as its
    terminal; what it prints is collected here as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.out = bytearray()
        self._new = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: nobody holds the slave side any more
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.out += data
        self._new.set()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def until(self, want: bytes, timeout: float = 10.0) -> None:
        """Until ``want`` has been printed since the last ``until``; what came before it
        is dropped."""
        try:
            async with asyncio.timeout(timeout):
                while want not in self.out:
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(f"no {want!r} in {bytes(self.out)!r}") from None
        del self.out[: self.out.index(want) + len(want)]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


async def test_mpremote_remounts_the_host_folder_after_a_soft_reset_in_its_repl(
        tmp_path, mpremote):
    """Ctrl-D in ``mpremote mount DIR repl`` soft-resets the board (a new process here) and
    mpremote mounts DIR again: the host's module imports in the new life."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "sensor.py").write_text("GAIN = 7\n")
    async with new_board(tmp_path) as board:
        await board.wait_ready()
        term = Terminal()
        proc = None
        try:
            proc = await asyncio.create_subprocess_exec(
                mpremote, "connect", str(board.link), "resume", "mount", str(host), "repl",
                stdin=term.slave, stdout=term.slave, stderr=term.slave)
            os.close(term.slave)
            term.slave = -1
            await term.until(b">>> ")
            term.type(b"import sensor; print(sensor.GAIN * 6)\r")
            await term.until(b"42\r\n>>> ")
            term.type(b"\x04")
            await term.until(b"MPY: soft reboot\r\n")
            await term.until(b"Remount local directory ")
            await term.until(b" at /remote\r\n>>> ")
            assert board.boots == 2
            term.type(b"import machine, sensor, os\r")
            await term.until(b">>> ")
            term.type(b"print(machine.reset_cause() == machine.SOFT_RESET, sensor.GAIN,"
                      b" os.getcwd())\r")
            await term.until(b"True 7 /remote\r\n>>> ")
            term.type(b"\x1d")  # Ctrl-]: mpremote unmounts and leaves
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc and proc.returncode is None:
                proc.kill()
                await proc.wait()
            term.close()
        assert board.boots == 2


async def test_aiot_sim_board_command(tmp_path, mpremote):
    link = tmp_path / "ttyUSB0"
    proc = await asyncio.create_subprocess_exec(
        *aiot_cmd("sim", "board", "--board", "unix-sim", "--link", str(link),
                  "--flash", str(tmp_path / "flash"), "--id", "de:ad:be:ef:00:00:00:01"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert f"{link} -> /dev/pts/" in line and "id deadbeef00000001" in line, line
        board = SimBoard(link)  # only its link, for mp()
        out = await ok(mpremote, board, "exec",
                       "import machine, binascii; print(binascii.hexlify(machine.unique_id()))")
        assert out == "b'deadbeef00000001'\r\n"
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, rest
        assert not link.exists() and not link.is_symlink()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_boards_that_cannot_run_say_why_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="cannot be simulated"):
        await new_board(tmp_path, board="esp32-devkitc").start()
    async with new_board(tmp_path, micropython=str(tmp_path / "no-micropython")) as board:
        with pytest.raises(SimBoardError, match="cannot run .*no-micropython"):
            await board.wait_ready()
    assert not (tmp_path / "ttyACM0").is_symlink()
