"""Two gateways on one database file: the second refuses to start, naming the first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.storage.lock import DatabaseLock, DatabaseLocked
from plugins.services import aiot_cmd, free_port


def run_second(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd("gateway", "run", "--config", str(config), "--allow-nosec"),
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_second_gateway_on_the_same_database_refuses_to_start_naming_the_first(
        gateway_factory, processes):
    # before, both started and their uplinks knocked each other off the broker
    gw = gateway_factory()
    first = gw.start(processes)
    # the same database, its own CoAP port (so only the database is shared)
    other = gw.workdir / "other.toml"
    other.write_text(gw.config.read_text().replace(f"port = {gw.port}\n",
                                                   f"port = {free_port()}\n"))
    second = run_second(other)
    assert second.returncode == 1, second
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("aiot gateway: error: ")
    assert f"in use by another gateway (pid {first.proc.pid} on {socket.gethostname()}," \
        " started " in lines[0]
    assert "aiot gateway ready" not in second.stdout + second.stderr
    assert gw.stop() == 0
    # once the first stopped, a gateway starts on that database
    gw.start(processes)
    assert gw.stop() == 0


async def test_second_gateway_in_process_is_refused_until_the_first_shut_down(
        gateway_config):
    cfg = gateway_config()
    first = Gateway(cfg, allow_nosec=True)
    await first.start()
    try:
        with pytest.raises(DatabaseLocked, match=rf"\(pid {os.getpid()} on "):
            await Gateway(gateway_config(name="other.toml"), allow_nosec=True).start()
    finally:
        await first.shutdown()
    again = Gateway(cfg, allow_nosec=True)
    await again.start()
    await again.shutdown()


def test_a_lock_left_by_a_killed_gateway_does_not_block_a_start(tmp_path):
    db = tmp_path / "gateway.db"
    # a process takes the lock, names itself in the file, and is killed (SIGKILL)
    code = ("import os, signal, sys; from aiotkit.gateway.storage.lock import DatabaseLock;"
            f"DatabaseLock({str(db)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    dead = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert dead.returncode == -9
    assert (tmp_path / "gateway.db.lock").read_text().startswith("pid ")
    lock = DatabaseLock(db)
    lock.acquire()  # the kernel let the dead process's lock go
    try:
        assert f"pid {os.getpid()} " in (tmp_path / "gateway.db.lock").read_text()
    finally:
        lock.release()
