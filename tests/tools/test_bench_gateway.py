"""``aiot bench gateway``: a small real run (gateway and bare aiocoap as processes, raw
CoAP load on loopback) whose JSON line is complete and self-consistent, and one-line
errors for bad options. No timing thresholds: figures depend on the machine."""

from __future__ import annotations

import json
import subprocess

import pytest
from plugins.services import aiot_cmd

KEYS = {
    "ingest_msgs_per_s", "aiocoap_msgs_per_s", "ingest_ratio_vs_aiocoap",
    "ingest_acked_msgs_per_s", "ingest_stored_msgs_per_s", "registrations_per_s",
    "initial_registrations_per_s", "aiocoap_registrations_per_s", "p50_ms", "p99_ms",
    "rss_mb_10k_nodes", "rss_kb_per_node", "rss_mb_idle", "sends_acked", "sends_stored",
    "registered_nodes", "nodes", "window", "failures", "notify", "notify_msgs_per_s",
    "notify_ratio_vs_aiocoap", "notify_acked_msgs_per_s", "aiocoap_notify_msgs_per_s",
    "notifications_acked", "notifications_stored", "observed_nodes", "rss_mb_after_notify",
    "abuse_transfers", "abuse_p99_ratio", "abuse_rss_mb", "abuse_p99_ms",
    "abuse_baseline_p99_ms", "abuse_baseline_rss_mb", "abuse_block1_codes",
    "abuse_register_codes", "abuse_rest_opened", "abuse_rest_closed",
}


def aiot(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_small_run_prints_a_complete_consistent_json_line():
    r = aiot("bench", "gateway", "--nodes", "50", "--messages", "200", "--passes", "2",
             "--window", "16", "--observers", "20", "--abuse", "300", "--abuse-rest", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert KEYS <= out.keys()
    assert out["failures"] == {}
    assert (out["nodes"], out["window"], out["passes"]) == (50, 16, 2)
    for key in ("ingest_msgs_per_s", "aiocoap_msgs_per_s", "ingest_ratio_vs_aiocoap",
                "registrations_per_s", "initial_registrations_per_s",
                "aiocoap_registrations_per_s", "p50_ms", "p99_ms", "rss_mb_10k_nodes",
                "rss_mb_idle", "notify_msgs_per_s", "aiocoap_notify_msgs_per_s",
                "notify_ratio_vs_aiocoap"):
        assert out[key] > 0, key
    # every node registered; every Send acknowledged was committed, and only once
    assert out["registered_nodes"] == 50
    assert out["sends_acked"] == out["sends_stored"] == 2 * 200
    assert out["ingest_acked_msgs_per_s"] == out["ingest_stored_msgs_per_s"]
    assert out["p50_ms"] <= out["p99_ms"]
    assert out["ingest_msgs_per_s"] in out["ingest_passes_msgs_per_s"]
    assert out["ingest_ratio_vs_aiocoap"] == pytest.approx(
        out["ingest_msgs_per_s"] / out["aiocoap_msgs_per_s"], abs=0.002)
    assert out["rss_mb_10k_nodes"] >= out["rss_mb_idle"] * 0.9
    # every node observed; every Notification acknowledged was committed, once
    assert out["observed_nodes"] == 20
    assert out["notifications_acked"] == out["notifications_stored"] == 2 * 200
    assert out["notify_msgs_per_s"] in out["notify_passes_msgs_per_s"]
    assert out["notify_ratio_vs_aiocoap"] == pytest.approx(
        out["notify_msgs_per_s"] / out["aiocoap_notify_msgs_per_s"], abs=0.002)
    # the abuse pass: both p99s measured, the uploads held or refused, never stored
    assert out["abuse_transfers"] == 300
    assert out["abuse_p99_ms"] > 0 and out["abuse_baseline_p99_ms"] > 0
    assert out["abuse_p99_ratio"] == pytest.approx(
        out["abuse_p99_ms"] / out["abuse_baseline_p99_ms"], rel=0.02)
    assert out["abuse_rss_mb"] > 0 and out["abuse_rest_opened"] == 20
    assert set(out["abuse_block1_codes"]) <= {"2.31", "5.03"}
    assert set(out["abuse_register_codes"]) <= {"2.01", "5.03"}
    assert "under abuse" in r.stdout
    assert "not measured" not in r.stdout
    assert "durable Notify ingest" in r.stdout and "before the gateway commits" in r.stdout


def test_json_only_prints_just_the_json_line():
    r = aiot("bench", "gateway", "--nodes", "5", "--messages", "10", "--passes", "1",
             "--abuse", "0", "--json-only")
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = r.stdout.strip().splitlines()
    assert json.loads(line)["sends_stored"] == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "0"], "--nodes must be at least 1"),
        (["--messages", "-3"], "--messages must be at least 1"),
        (["--window", "0"], "--window must be at least 1"),
        (["--observers", "0"], "--observers must be at least 1"),
        (["--sockets", "0"], "--sockets must be at least 1"),
        (["--abuse", "-1"], "--abuse must not be negative"),
        (["--sockets", "99999999"], "open-file limit"),
        (["--nodes", "many"], "invalid int value"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_options_are_one_line_errors_with_status_2(args, message):
    r = aiot("bench", "gateway", *args, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1


def test_help_says_what_is_measured():
    r = aiot("bench", "gateway", "--help", timeout=30)
    assert r.returncode == 0
    for word in ("--nodes", "--messages", "--window", "aiocoap", "Notify", "JSON", "--abuse"):
        assert word in r.stdout
