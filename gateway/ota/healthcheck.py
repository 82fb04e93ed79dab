"""The health check of a gateway self-update slot (gateway/ota/selfupdate.py): the new
slot's daemon, run with the operator's configuration, must

1. start: ``aiot gateway run`` from the slot (``PYTHONPATH=SLOT``) logs ``aiot gateway
   ready``, and its REST API answers ``GET /api/v1`` with the operator's token;
2. accept a registration: keys for the endpoint ``aiot-selfupdate-check`` are made and
   exported through the REST key API (admin token), an aiocoap client registers under
   that OSCORE context (``POST /rd``, 2.01), de-registers (2.02), and the keys are
   revoked (a NoSec development gateway: the same, unprotected);
3. reach its uplink: with ``[mqtt] enabled``, ``GET /api/v1/uplink`` says connected
   (without an uplink the step is skipped and the report says so);
4. stop cleanly on SIGTERM (exit status 0).

All within one deadline; the first failure raises :class:`HealthCheckFailed` with a
reason of ``selfupdate.REASONS``. The daemon gets SIGTERM from the kernel if the process
running the check dies (``PR_SET_PDEATHSIG``), so a killed update leaves no daemon
holding the database lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import os
import signal
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp

from ..coap.aio import aiocoap, credentials, oscore
from ..config import GatewayConfig, load_config
from .selfupdate import HealthCheckFailed

__all__ = ["ENDPOINT", "HealthCheck", "HealthReport"]

ENDPOINT = "aiot-selfupdate-check"  # the registration the check makes and removes
READY = "aiot gateway ready"
STOP_S = 10.0  # SIGTERM to exit, then SIGKILL
_LINKS = b"</1/0>,</3/0>"
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_PR_SET_PDEATHSIG = 1


@dataclass
class HealthReport:
    """What passed, in order, and what was skipped (with why)."""

    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class HealthCheck:
    """The check of the slot at a path (``ROOT/current``), for ``SlotRoot.update``."""

    config: Path
    token: str
    deadline_s: float = 60.0
    python: str = sys.executable
    allow_nosec: bool = False
    report: HealthReport = field(default_factory=HealthReport)

    def __call__(self, slot: Path) -> None:
        asyncio.run(self.run(slot))

    async def run(self, slot: Path) -> HealthReport:
        cfg = load_config(self.config)
        t0 = time.monotonic()
        step = ["start"]  # what the deadline interrupts
        try:
            async with asyncio.timeout(self.deadline_s), self._daemon(slot):
                await self._checks(cfg, step)
                step[0] = "stop"
        except TimeoutError:
            reason = {"start": "daemon-not-ready", "register": "registration-timeout",
                      "uplink": "uplink-unreachable"}.get(step[0], "deadline")
            raise HealthCheckFailed(reason, f"deadline of {self.deadline_s:g} s passed "
                                    f"during {step[0]}") from None
        self.report.seconds = time.monotonic() - t0
        return self.report

    @contextlib.asynccontextmanager
    async def _daemon(self, slot: Path) -> AsyncIterator[None]:
        """The slot's daemon, from its start until it logs that it is ready; stopped
        (and its exit status checked) when the block ends."""
        env = dict(os.environ, PYTHONPATH=str(slot), PYTHONUNBUFFERED="1")
        nosec = ["--allow-nosec"] if self.allow_nosec else []
        proc = await asyncio.create_subprocess_exec(
            self.python, "-P", "-m", "aiotkit.tools.cli", "gateway", "run", "--config",
            str(self.config), *nosec, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent())
        tail: collections.deque[str] = collections.deque(maxlen=20)
        ready = asyncio.Event()
        pump = asyncio.create_task(_pump(proc, tail, ready), name="aiot-selfupdate-pump")
        ok = False
        try:
            exited = asyncio.create_task(proc.wait(), name="aiot-selfupdate-wait")
            waiter = asyncio.create_task(ready.wait(), name="aiot-selfupdate-ready")
            try:
                await asyncio.wait((exited, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                exited.cancel()
            if not ready.is_set():
                await pump  # the rest of its output
                raise HealthCheckFailed("daemon-exited", f"exit status {proc.returncode}"
                                        f" before it was ready; last lines: {_last(tail)}")
            self.report.passed.append("daemon started from the slot")
            yield
            ok = True
        finally:
            code = await _stop(proc)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if ok and code != 0:
            raise HealthCheckFailed("unclean-stop", f"exit status {code} after SIGTERM; "
                                    f"last lines: {_last(tail)}")
        if ok:
            self.report.passed.append("daemon stopped cleanly")

    async def _checks(self, cfg: GatewayConfig, step: list[str]) -> None:
        async with _Rest(cfg, self.token) as rest:
            step[0] = "rest"
            status, body = await rest.call("GET", "")
            if status != 200:
                raise HealthCheckFailed("rest-unreachable", f"GET /api/v1: {status} {body}")
            self.report.passed.append("REST API answers")
            step[0] = "keys"
            node = await _node_keys(rest) if cfg.gateway.security == "oscore" else None
            try:
                step[0] = "register"
                await _register(_coap_uri(cfg), node)
                self.report.passed.append("accepted a registration"
                                          + (" under OSCORE" if node else " (NoSec)"))
            finally:
                if node is not None:  # the check's keys never outlive it
                    with contextlib.suppress(HealthCheckFailed):
                        await rest.call("POST", f"/keys/{ENDPOINT}/revoke")
            if not cfg.mqtt.enabled:
                self.report.skipped.append("uplink: [mqtt] is not enabled in the config")
                return
            step[0] = "uplink"
            while True:  # bounded by the deadline (run)
                status, body = await rest.call("GET", "/uplink")
                if status == 200 and isinstance(body, dict) and body.get("connected"):
                    break
                await asyncio.sleep(0.1)
            self.report.passed.append(f"uplink connected to {cfg.mqtt.host}:{cfg.mqtt.port}")


async def _pump(proc: asyncio.subprocess.Process, tail: collections.deque[str],
                ready: asyncio.Event) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        if READY in line:
            ready.set()


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_S):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
    return await proc.wait()


def _last(tail: collections.deque[str]) -> str:
    return " | ".join(list(tail)[-3:]) or "(no output)"


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function that asks Linux to SIGTERM the child when its parent dies
    (looked up before the fork: the child only makes the call)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def _coap_uri(cfg: GatewayConfig) -> str:
    host = _LOOPBACK.get(cfg.coap.host, cfg.coap.host)
    return f"coap://{f'[{host}]' if ':' in host else host}:{cfg.coap.port}"


class _Rest:
    """The new daemon's REST API, with the operator's token."""

    def __init__(self, cfg: GatewayConfig, token: str) -> None:
        host = _LOOPBACK.get(cfg.rest.host, cfg.rest.host)
        scheme = "https" if cfg.rest.tls_cert else "http"
        self.base = f"{scheme}://{f'[{host}]' if ':' in host else host}:{cfg.rest.port}"
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cfg.rest.tls_cert) if cfg.rest.tls_cert
            else False)
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._session is not None
        url = f"{self.base}/api/v1{path}"
        try:
            async with self._session.request(method, url, json=body, ssl=self._ssl) as r:
                raw = await r.read()
        except (aiohttp.ClientError, OSError) as e:
            raise HealthCheckFailed("rest-unreachable", f"{method} {url}: {e}") from None
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw[:200].decode("utf-8", "replace")


async def _node_keys(rest: _Rest) -> dict[str, Any]:
    """The node side of fresh keys for :data:`ENDPOINT` (created, or rotated if the
    endpoint has keys from an earlier check)."""
    ep = urllib.parse.quote(ENDPOINT, safe="")
    status, body = await rest.call("POST", "/keys", {"endpoint": ENDPOINT})
    if status != 201:
        status, body = await rest.call("POST", f"/keys/{ep}/rotate")
    if status != 200 and status != 201:
        raise HealthCheckFailed("keys-refused", f"POST /api/v1/keys: {status} {body}")
    status, body = await rest.call("POST", f"/keys/{ep}/export")
    node = body.get("node") if isinstance(body, dict) else None
    if status != 200 or not isinstance(node, dict):
        raise HealthCheckFailed("keys-refused", f"export: {status} {body}")
    return node


async def _register(uri: str, node: dict[str, Any] | None) -> None:
    """Register and de-register :data:`ENDPOINT` at ``uri`` (under ``node``'s OSCORE
    context when given)."""
    from ..security import write_credentials
    from ..security.export import credentials_dirname

    with tempfile.TemporaryDirectory(prefix="aiot-selfupdate-") as tmp:
        ctx = await aiocoap.Context.create_client_context(
            transports=["oscore", "udp6"] if node else ["udp6"])
        sc: Any = None
        try:
            if node is not None:
                write_credentials(Path(tmp) / "creds", node, uri)
                sc = oscore.FilesystemSecurityContext(
                    str(Path(tmp) / "creds" / credentials_dirname(ENDPOINT)))
                creds = credentials.CredentialsMap()
                creds[f"{uri}/*"] = sc
                ctx.client_credentials = creds
            reg = aiocoap.Message(code=aiocoap.POST, uri=f"{uri}/rd?ep={ENDPOINT}&lt=60"
                                  "&lwm2m=1.1", payload=_LINKS, content_format=40)
            try:
                r = await ctx.request(reg).response
            except aiocoap.error.Error as e:
                raise HealthCheckFailed("registration-refused", f"Register: {e}") from None
            if r.code != aiocoap.CREATED:
                raise HealthCheckFailed("registration-refused", f"Register answered "
                                        f"{r.code} {r.payload[:100]!r}")
            where = "/".join(r.opt.location_path)
            r = await ctx.request(aiocoap.Message(code=aiocoap.DELETE,
                                                  uri=f"{uri}/{where}")).response
            if r.code != aiocoap.DELETED:
                raise HealthCheckFailed("deregistration-refused", f"De-register of /{where}"
                                        f" answered {r.code}")
        finally:
            await ctx.shutdown()
            if sc is not None:  # store and unlock now, not at garbage collection
                sc._destroy()  # (after the folder is gone); aiocoap has no public close
