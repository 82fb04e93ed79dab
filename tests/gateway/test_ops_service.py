"""``aiot gateway install-service`` (``tools/servicecli.py``, ``gateway/ops/service.py``):
the systemd unit it writes runs this installation's ``aiot`` with the config, parses as
a unit file, and a bad config or a different existing unit is refused."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from aiotkit.gateway.ops.service import render, systemd_quote
from plugins.services import aiot_cmd

CONFIG = '[gateway]\nid = "gw1"\ndb = "gateway.db"\nsecurity = "nosec"\n'


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd("gateway", "install-service", *args), cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=60)


def parse_unit(text: str) -> configparser.ConfigParser:
    # a unit file is INI-like: sections, key=value, # comments; keys are case-sensitive
    unit = configparser.ConfigParser(interpolation=None, strict=True,
                                     comment_prefixes=("#", ";"), delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def test_install_service_writes_a_unit_running_this_aiot_with_the_config(tmp_path):
    folder = tmp_path / "my gateway"  # a space: ExecStart must quote it
    folder.mkdir()
    (folder / "gw 100%.toml").write_text(CONFIG)
    units = tmp_path / "units"
    done = run("--config", str(folder / "gw 100%.toml"), "--unit-dir", str(units),
               "--allow-nosec", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = units / "aiot-gateway.service"
    assert f"wrote {path}" in done.stdout
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    unit = parse_unit(path.read_text())
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["ProtectSystem"] == "full"
    # systemd's quoting is close enough to the shell's for these words (% doubled)
    argv = shlex.split(service["ExecStart"].replace("%%", "%"))
    assert Path(argv[0]).is_file() and os.access(argv[0], os.X_OK)  # aiot, or python
    assert argv[-5:] == ["gateway", "run", "--allow-nosec", "--config",
                         str(folder / "gw 100%.toml")]
    assert service["WorkingDirectory"] == str(folder)
    if shutil.which("systemd-analyze"):  # when there is one; not required
        check = subprocess.run(["systemd-analyze", "verify", str(path)],
                               check=False, capture_output=True, text=True, timeout=60)
        assert "ExecStart" not in check.stderr, check.stderr
    # the same again is fine; a different unit there is not, unless --force
    assert run("--config", str(folder / "gw 100%.toml"), "--unit-dir", str(units),
               "--allow-nosec", cwd=tmp_path).returncode == 0
    again = run("--unit-dir", str(units), "--user", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = run("--unit-dir", str(units), "--user", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    user = parse_unit(path.read_text())
    assert user["Install"]["WantedBy"] == "default.target"
    assert "ProtectSystem" not in user["Service"]
    assert user["Service"]["ExecStart"].endswith(" gateway run")


def test_dry_run_prints_the_unit_and_writes_nothing(tmp_path):
    (tmp_path / "gw.toml").write_text(CONFIG)
    done = run("--config", "gw.toml", "--unit-dir", str(tmp_path / "units"), "--dry-run",
               "--allow-nosec", "--name", "aiot-gw1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    unit = parse_unit(done.stdout)
    assert unit["Service"]["ExecStart"].endswith(f"--config {tmp_path / 'gw.toml'}")
    assert not (tmp_path / "units").exists()


def test_a_config_the_daemon_would_refuse_writes_no_unit(tmp_path):
    (tmp_path / "gw.toml").write_text(CONFIG)  # nosec without --allow-nosec
    done = run("--config", "gw.toml", "--unit-dir", str(tmp_path / "u"), cwd=tmp_path)
    assert done.returncode == 2 and "nosec" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "bad.toml").write_text("[log]\nlevel = 3\n")
    done = run("--config", "bad.toml", "--unit-dir", str(tmp_path / "u"), cwd=tmp_path)
    assert done.returncode == 2 and "log.level" in done.stderr
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize("arg, word", [
    ("/usr/bin/aiot", "/usr/bin/aiot"),
    ("/srv/my gw/g.toml", '"/srv/my gw/g.toml"'),
    ("/srv/100%/g.toml", '"/srv/100%%/g.toml"'),
    ('/srv/a"b', '"/srv/a\\"b"'),
])
def test_systemd_quote_keeps_each_argument_one_word(arg, word):
    assert systemd_quote(arg) == word


def test_render_without_a_config_runs_the_defaults_in_the_working_directory(tmp_path):
    text = render(config=None, user=True, command=["/opt/aiot/bin/aiot"], workdir=tmp_path)
    unit = parse_unit(text)
    assert unit["Service"]["ExecStart"] == "/opt/aiot/bin/aiot gateway run"
    assert unit["Service"]["WorkingDirectory"] == str(tmp_path)
