"""The daemon as a process: ready line, signals, exit codes (``python -m aiotkit.gateway.app``).

``aiot gateway run`` (the lead's CLI) calls the same ``run_cli``; these tests run the
module directly so they do not depend on the CLI being wired yet.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiotkit.gateway.storage import SqliteStorage
from plugins.services import ManagedProcess, free_port

READY = r"aiot gateway ready coap://127.0.0.1:(\d+)"


def config_file(tmp_path: Path, port: int, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        '[gateway]\nid = "t"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {port}\n"
    )
    return path


def daemon(config: Path, processes: list[ManagedProcess]) -> ManagedProcess:
    proc = ManagedProcess(
        "gateway", [sys.executable, "-m", "aiotkit.gateway.app", str(config),
                    "--allow-nosec"]
    ).start()
    processes.append(proc)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_logs_ready_once_serves_and_stops_cleanly_on_signal(
        tmp_path, processes, coap_client, sig):
    port = free_port()
    proc = daemon(config_file(tmp_path, port), processes)
    m = proc.wait_for(READY, timeout=20)
    assert int(m.group(1)) == port
    out = subprocess.run(
        [coap_client, "-m", "post", "-t", "40", "-e", "</3/0>", "-B", "5",
         f"coap://127.0.0.1:{port}/rd?ep=proc-node&lt=60"],
        capture_output=True, text=True, timeout=15, check=False,
    )
    assert out.returncode == 0, out
    proc.wait_for(r"registered ep=proc-node reg=\S+ addr=127\.0\.0\.1:\d+ lt=60", timeout=10)
    assert proc.stop(sig) == 0
    assert "aiot gateway stopped" in proc.output
    assert len(re.findall(READY, proc.output)) == 1
    assert "Traceback" not in proc.output
    with SqliteStorage.open(tmp_path / "gw.db", readonly=True) as store:
        assert [(r.endpoint, r.state) for r in store.registrations()] == [
            ("proc-node", "registered")]


def test_port_already_taken_exits_1_with_one_line(tmp_path, processes):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        holder.bind(("::", 0))
        port = holder.getsockname()[1]
        proc = daemon(config_file(tmp_path, port), processes)
        assert proc.proc is not None
        assert proc.proc.wait(20) == 1
    errors = [line for line in proc.output.splitlines() if line.startswith("aiot gateway: error:")]
    assert len(errors) == 1 and f"coap://127.0.0.1:{port}" in errors[0], proc.output
    assert "Traceback" not in proc.output


def test_second_daemon_on_the_same_port_is_refused(tmp_path, processes):
    port = free_port()
    first = daemon(config_file(tmp_path, port, "a.toml"), processes)
    first.wait_for(READY, timeout=20)
    (tmp_path / "b").mkdir()
    second = daemon(config_file(tmp_path / "b", port), processes)
    assert second.proc is not None and second.proc.wait(20) == 1
    assert "aiot gateway: error: cannot serve CoAP" in second.output
    assert first.stop() == 0


def test_bad_config_exits_2_before_doing_anything(tmp_path, processes):
    path = tmp_path / "gw.toml"
    path.write_text("[coap]\nport = 99999\n")
    proc = daemon(path, processes)
    assert proc.proc is not None and proc.proc.wait(20) == 2
    assert proc.output.strip() == (
        f"aiot gateway: error: {path}: coap.port: must be 1..65535 (got 99999)")
    assert not (tmp_path / "aiot-gateway.db").exists()
