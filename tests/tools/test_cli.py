"""The aiot command: help, sim and demo against real processes, and user mistakes."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
from plugins.services import ManagedProcess, aiot_cmd


def aiot(*args, timeout=60, cwd=None):
    return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, check=False)


def test_help_lists_the_commands():
    r = aiot("--help")
    assert r.returncode == 0
    for cmd in ("gateway", "sim", "demo", "data"):
        assert re.search(rf"^\s+{cmd}\s", r.stdout, re.MULTILINE), r.stdout


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "aiot"]
    assert ep.value == "aiotkit.tools.cli:main"


@pytest.mark.parametrize(
    "args, message",
    [
        (["sim", "--nosec", "--gateway", "http://127.0.0.1:5683"],
         "is not a coap://HOST:PORT URI"),
        (["sim", "--nosec", "--gateway", "coap://127.0.0.1:99999"], "invalid port"),
        (["sim", "--nosec", "--gateway", "coap://h:1", "--nodes", "0"], "must be greater than 0"),
        (["sim", "--nosec", "--gateway", "coap://h:1", "--heap", "lots"], "is not like 64K"),
        (["sim", "--nosec", "--gateway", "coap://h:1", "--signal", "missing.i16"],
         "does not exist"),
        (["sim", "--gateway", "coap://h:1"], "the nodes need OSCORE keys: give --token"),
        (["gateway", "run", "--config", "missing.toml"], "missing.toml"),
    ],
)
def test_user_mistakes_get_one_line_errors(tmp_path, args, message):
    r = aiot(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_garbage_gateway_config_is_a_one_line_error(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text("[coap\nport = 'x'\n")
    r = aiot("gateway", "run", "--config", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sim_runs_nodes_that_register_and_deregister(tmp_path, gateway, processes, micropython):
    sim = ManagedProcess(
        "sim",
        aiot_cmd("sim", "--nodes", "2", "--gateway", gateway.uri, "--dir", str(tmp_path),
                 "--report-ms", "200", "--window", "128", *gateway.sim_args()),
    ).start()
    processes.append(sim)
    for ep in ("node-1", "node-2"):
        sim.wait_for(rf"\[{ep}\] aiot-node {ep} registered /rd/", timeout=30)
        assert (tmp_path / ep / "config.json").is_file()
    sim.wait_for(r"\[node-2\] aiot-node node-2 sent 0", timeout=30)
    mark = gateway.proc.mark()
    assert sim.stop(signal.SIGTERM, timeout=20) == 0, sim.output
    for ep in ("node-1", "node-2"):
        sim.wait_for(rf"\[{ep}\] aiot-node {ep} deregistered", timeout=1)
        gateway.proc.wait_for(rf"deregist\w* .*{ep}|{ep}.*deregist", timeout=5, start=mark)


def test_demo_shows_three_nodes_registered_with_readings(tmp_path, micropython):
    r = aiot("demo", "--duration", "12", "--state", str(tmp_path), "--port", "0", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    final = r.stdout.split("aiot demo: stopping")[-1]
    rows = {m.group(1): m for m in re.finditer(
        r"^(node-\d)\s+(\S+)\s+.*?\s(\d+)\s+(\d+)\s+(\d+)\s+([+-]\d\.\d+)  (.*)$", final,
        re.MULTILINE)}
    assert set(rows) == {"node-1", "node-2", "node-3"}, final
    # the shipped replays in order: normal, inner race, outer race; the shipped models
    want = {"node-1": ("normal", "ok"), "node-2": ("inner_race", "ANOMALY"),
            "node-3": ("outer_race", "ANOMALY")}
    for ep, m in rows.items():
        sends, readings = int(m.group(3)), int(m.group(4))
        # 13 window values, the 20 default features (12 kHz replays) and the 13 decision
        # resources per report
        assert sends >= 3 and readings == 46 * sends, m.group(0)
        assert m.group(2) == "deregistered", m.group(0)
        label, confidence, flag = m.group(7).split()
        assert (label, flag) == want[ep] and 0.5 < float(confidence) <= 1, m.group(0)
    assert re.search(r"shadow check .*: (\d+) agree, 0 disagree, 0 not checked", final), final
    assert "Traceback" not in r.stdout + r.stderr


def test_sim_starts_nodes_as_fresh_boards_unless_told_to_keep_state(tmp_path):
    """A report logged in an earlier run (against another gateway) must not be delivered
    to this one: each node's folder (its flash) starts empty unless --keep-state."""
    from aiotkit.boards.errors import UsageError
    from aiotkit.tools.sim import Fleet, FleetConfig

    old = tmp_path / "node-1"
    old.mkdir()
    (old / "config.json").write_text("{}")
    (old / "unsent.log").write_bytes(b"a report for the previous gateway")
    cfg = FleetConfig(gateway="coap://127.0.0.1:5683", nodes=1, workdir=tmp_path,
                      models=False, keep_state=True)
    Fleet(cfg).prepare()
    assert (old / "unsent.log").exists()
    cfg.keep_state = False
    Fleet(cfg).prepare()
    assert not (old / "unsent.log").exists() and (old / "config.json").is_file()
    stranger = tmp_path / "other" / "node-1"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("not a node")
    cfg.workdir = tmp_path / "other"
    with pytest.raises(UsageError, match="not a simulated node's folder"):
        Fleet(cfg).prepare()
    assert (stranger / "notes.txt").exists()


def test_sim_shows_progress_without_verbose(tmp_path, gateway, processes, micropython):
    sim = ManagedProcess(
        "sim",
        aiot_cmd("sim", "--nodes", "1", "--gateway", gateway.uri, "--dir", str(tmp_path),
                 "--report-ms", "200", "--window", "128", "--progress", "0.5",
                 "--no-models", *gateway.sim_args()),
    ).start()
    processes.append(sim)
    sim.wait_for(r"^aiot sim: node-1 registered [1-9]\d* sent$", timeout=30)
    assert sim.stop(signal.SIGTERM, timeout=20) == 0, sim.output


def test_sim_serial_runs_nodes_on_simulated_boards_over_their_serial_lines(
        tmp_path, gateway, processes, micropython):
    # aiot sim's nodes were processes only: none ran on a board the field tools can reach
    sim = ManagedProcess(
        "sim",
        aiot_cmd("sim", "--serial", "--nodes", "2", "--gateway", gateway.uri, "--dir",
                 str(tmp_path), "--report-ms", "200", "--window", "128",
                 *gateway.sim_args()),
    ).start()
    processes.append(sim)
    for ep in ("node-1", "node-2"):
        # deployed in threads while the loop prints: a deploy used to swallow the
        # simulator's stdout (sys.stdout redirected for every thread)
        sim.wait_for(rf"\[{ep}\] firmware deployed over .*\.ports/{ep} \(board [0-9a-f]+\)",
                     timeout=60)
        sim.wait_for(rf"\[{ep}\] aiot-node {ep} registered /rd/", timeout=60)
    sim.wait_for(r"\[node-2\] aiot-node node-2 sent 0", timeout=30)
    # the node's firmware came over the line: the deploy's manifest is in its flash
    manifest = json.loads((tmp_path / "node-1" / ".aiot" / "manifest.json").read_text())
    assert manifest["complete"] and "main.py" in manifest["files"]
    mark = gateway.proc.mark()
    assert sim.stop(signal.SIGTERM, timeout=30) == 0, sim.output
    for ep in ("node-1", "node-2"):
        sim.wait_for(rf"\[{ep}\] aiot-node {ep} deregistered", timeout=1)
        gateway.proc.wait_for(rf"deregist\w* .*{ep}|{ep}.*deregist", timeout=5, start=mark)
    assert not list((tmp_path / ".ports").iterdir())  # every port link removed
