"""Store and forward, and client-initiated bootstrap, with the real parts: a MicroPython node
(the precompiled firmware in the unix-sim heap) and the real gateway (``Gateway``) on
loopback.

Gateway down for a while: the node keeps measuring, logs its reports in flash and sends
them, oldest first and with the time they were made, once the gateway is back. Node killed
(SIGKILL, as a power cut) with reports in its log: the restarted node sends them. A node
provisioned with only a bootstrap server asks the gateway's bootstrap server for its
account, then registers with the gateway it was given.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.security import KeyStore, generate_key_hex
from aiotkit.gateway.storage import SqliteStorage
from aiotkit.tools.sim import keystore_provisioner
from plugins.services import free_port

pytestmark = pytest.mark.e2e

EP = "log-node"
TIMEOUT_S = 120.0
SEQ = "/33000/0/0"


class Node:
    """The node as a subprocess; its output lines, awaitable by pattern."""

    def __init__(self, node_dir: Path, firmware) -> None:
        self.dir = node_dir
        self.firmware = firmware
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.firmware.argv(), cwd=self.dir, env=self.firmware.env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._pump = asyncio.create_task(self._read(self.proc), name="node-output")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    def mark(self) -> int:
        return len(self.lines)

    async def wait_for(self, pattern: str, start: int = 0, count: int = 1,
                       timeout: float = 60.0) -> list[re.Match[str]]:
        """The first ``count`` output lines from ``start`` on matching ``pattern``."""
        rx = re.compile(pattern)

        async def found() -> list[re.Match[str]]:
            while True:
                hits = [m for m in map(rx.search, self.lines[start:]) if m]
                if len(hits) >= count:
                    return hits[:count]
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"node exited; wanted {pattern!r}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except (TimeoutError, AssertionError):
            print("node output:", *self.lines[-40:], sep="\n  ")
            raise

    async def kill(self) -> None:
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
        if self._pump is not None:
            await self._pump
        self.proc = self._pump = None


def _gateway_config(tmp_path: Path, port: int, extra: str = "",
                    security: str = "oscore") -> Path:
    conf = tmp_path / "gw.toml"
    (tmp_path / "gw.key").write_text(generate_key_hex() + "\n")
    (tmp_path / "gw.key").chmod(0o600)
    conf.write_text(f'[gateway]\nid = "log"\ndb = "gw.db"\nsecurity = "{security}"\n'
                    f"[coap]\nport = {port}\n[shadow]\nenabled = false\n"
                    '[security]\nkey_file = "gw.key"\n' + extra)
    return conf


def _node_keys(conf: Path) -> dict[str, str]:
    """The node's OSCORE keys from the gateway's key store, made before the gateway
    runs (the node starts first), as provisioning does."""
    config = load_config(conf)
    storage = SqliteStorage.open(config.gateway.db)
    try:
        keys = KeyStore.from_config(storage, config)
        assert keys is not None
        try:
            node = keystore_provisioner(keys)(EP)
        finally:
            keys.close()
    finally:
        storage.close()
    return {k: node[k] for k in ("secret", "salt", "sender_id", "recipient_id")}


def _node_dir(tmp_path: Path, **cfg: object) -> Path:
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    shutil.copy(paths.replay_dir() / "normal-97.i16", node_dir / "signal.i16")
    # a replay that waits for the reader: one window per report, sequence numbers 0, 1, ...
    base = {"endpoint": EP, "lifetime": 30, "window": 256, "report_ms": 200,
            "signal": "signal.i16", "realtime": False, "features": False}
    (node_dir / "config.json").write_text(json.dumps(dict(base, **cfg)))
    return node_dir


def _windows(gw: Gateway) -> list[tuple[int, float | None, float]]:
    """(window sequence number, time, received_at) per Send of the node, in store order."""
    return [(int(r.value), r.time, r.received_at) for r in gw.store.readings()
            if r.endpoint == EP and r.path == SEQ]


async def _until(cond, timeout: float = 60.0) -> None:
    # the gateway commits in its own task: poll its store (no event for "stored")
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def _logged(node: Node, start: int) -> list[int]:
    rx = re.compile(r"aiot-node \S+ logged (\d+)$")
    return [int(m.group(1)) for m in map(rx.search, node.lines[start:]) if m]


async def _offline_then_online(tmp_path: Path, node_firmware) -> None:
    port = free_port()
    conf = _gateway_config(tmp_path, port)
    node = Node(_node_dir(tmp_path, gateway=f"coap://127.0.0.1:{port}",
                          oscore=_node_keys(conf)), node_firmware)
    gw: Gateway | None = None
    try:
        # 1. nobody listens on the gateway's port: the node measures and logs
        await node.start()
        await node.wait_for(r" logged \d+$", count=5)
        gw = Gateway(load_config(conf))
        await gw.start()
        up = time.time()
        offline = _logged(node, 0)
        await node.wait_for(r" sent from the log: \d+$")
        await node.wait_for(r" sent \d+$")
        await _until(lambda: len(_windows(gw)) > max(offline) + 2)
        got = _windows(gw)
        seqs = [s for s, _, _ in got]
        # in order, none missing (a report whose ACK was lost may come twice, in a row)
        assert [s for i, s in enumerate(seqs) if i == 0 or s != seqs[i - 1]] == list(
            range(max(seqs) + 1)), seqs
        first = {s: (t, rx) for s, t, rx in reversed(got)}
        times = [first[s][0] for s in offline]
        # the time each was measured (wall clock, RFC 8428 absolute), not when it arrived
        assert all(t is not None and t < up for t in times), (times, up)
        assert times == sorted(times) and len(set(times)) == len(times), times
        assert all(first[s][1] >= up for s in offline)

        # 2. the gateway goes away again; the node is killed with reports in its log
        await gw.shutdown()
        gw = None
        mark = node.mark()
        await node.wait_for(r" logged \d+$", start=mark, count=2)
        await node.kill()
        lost_in_power_cut = _logged(node, mark)
        killed = time.time()
        gw = Gateway(load_config(conf))
        await gw.start()
        before = len(_windows(gw))
        mark = node.mark()
        await node.start()
        n = int((await node.wait_for(r" logged reports: (\d+)$", start=mark))[0].group(1))
        assert n >= len(lost_in_power_cut), (n, lost_in_power_cut)
        await node.wait_for(r" sent from the log: \d+$", start=mark)
        await _until(lambda: len(_windows(gw)) >= before + n)
        after = _windows(gw)[before:]
        # the log's reports come first, with the times of the boot before the kill
        old = after[:n]
        assert [s for s, _, _ in old][-len(lost_in_power_cut):] == lost_in_power_cut
        assert all(t is not None and t < killed for _, t, _ in old), old
    finally:
        await node.kill()
        if gw is not None:
            await gw.shutdown()


@pytest.mark.timeout_s(TIMEOUT_S * 2)
async def test_reports_made_while_the_gateway_is_away_arrive_in_order_also_after_a_kill(
        tmp_path: Path, node_firmware) -> None:
    await _offline_then_online(tmp_path, node_firmware)


async def _bootstrap(tmp_path: Path, node_firmware) -> None:
    # the NoSec bootstrap of a development gateway; the protected one (bootstrap context,
    # Object 21 delivered) is tests/gateway/test_bootstrap_oscore.py
    bs_port = free_port()
    conf = _gateway_config(tmp_path, free_port(),
                           f"[bootstrap]\nenabled = true\nport = {bs_port}\n"
                           '[bootstrap.default]\nuri = ""\n', security="nosec")
    gw = Gateway(load_config(conf), allow_nosec=True)
    await gw.start()
    node_dir = _node_dir(tmp_path, bootstrap=f"coap://127.0.0.1:{bs_port}")
    node = Node(node_dir, node_firmware)
    try:
        await node.start()
        await node.wait_for(rf" bootstrapping from coap://127\.0\.0\.1:{bs_port}$")
        await node.wait_for(r" registered /rd/\S+$")
        account = json.loads((node_dir / "server.json").read_text())
        assert account["uri"] == gw.coap_uri
        await node.wait_for(r" sent \d+$")
        await _until(lambda: len(_windows(gw)) >= 1)
        reg = gw.store.registration(EP)
        assert reg is not None and reg.state == "registered"
        # a restart uses the stored account: no second bootstrap
        await node.kill()
        mark = node.mark()
        await node.start()
        await node.wait_for(r" registered /rd/\S+$", start=mark)
        assert not [x for x in node.lines[mark:] if "bootstrapping" in x]
    finally:
        await node.kill()
        await gw.shutdown()


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_a_node_with_only_a_bootstrap_server_bootstraps_then_registers(
        tmp_path: Path, node_firmware) -> None:
    await _bootstrap(tmp_path, node_firmware)
