"""``aiot bench history`` on a small scale: every figure there and sane (nothing is
asserted on time), and bad options refused."""

from __future__ import annotations

import json

from aiotkit.tools.bench import history


def test_bench_history_refuses_bad_options(capsys):
    assert history.main(["--sends", "10"]) == 2
    assert "--sends at least 1000" in capsys.readouterr().err


def test_bench_history_small_prints_every_figure(capsys):
    assert history.main(["--sends", "3000", "--rounds", "2"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("bytes_per_send", "prune_chunk_ms", "prune_chunk_max_ms",
                "ingest_chunk_ms", "prune_vs_ingest"):
        assert isinstance(r[key], int | float) and r[key] > 0, (key, r)
    assert r["prune_vs_ingest"] == round(r["prune_chunk_ms"] / r["ingest_chunk_ms"], 3)
    assert (r["sends"], r["rounds"]) == (3000, 2)
