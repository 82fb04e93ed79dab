"""``aiot gateway check``: a config validated without starting anything, printed with
every default; and the README's list of defaults kept complete by the same code."""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

from aiotkit.gateway.config import GatewayConfig, effective_toml, load_config
from plugins.services import aiot_cmd

REPO = Path(__file__).resolve().parents[2]


def aiot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aiot_cmd(*args), capture_output=True, text=True, timeout=60,
                          cwd=cwd, check=False)


def test_check_prints_every_key_and_reads_back_as_the_same_config(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nsecurity = "nosec"\n[mqtt]\npassword = "hunter2"\n')
    r = aiot("gateway", "check", "--config", str(cfg), "--allow-nosec")
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout + r.stderr  # a secret never reaches the output
    printed = tomllib.loads(r.stdout)
    assert printed["mqtt"]["password"] == "<redacted>"
    again = tmp_path / "again.toml"
    again.write_text(r.stdout.replace("<redacted>", "hunter2"))
    assert load_config(again) == replace(load_config(cfg), source=again)


def test_a_database_folder_that_does_not_exist_is_an_error_not_created(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nsecurity = "nosec"\ndb = "typo/gateway.db"\n')
    r = aiot("gateway", "check", "--config", str(cfg), "--allow-nosec")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"aiot: error: {cfg}: gateway.db: folder "
                                f"{tmp_path / 'typo'} does not exist")
    r = aiot("gateway", "run", "--config", str(cfg), "--allow-nosec")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "typo").exists()


def test_check_refuses_what_run_would_refuse_in_one_line(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nsecurity = "nosec"\n')
    r = aiot("gateway", "check", "--config", str(cfg), cwd=tmp_path)  # no --allow-nosec
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--allow-nosec" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_readme_lists_every_default_the_gateway_has():
    """The README's defaults block must name every key ``gateway check`` prints for an
    empty file with the same value; [rest] and [bootstrap] have blocks of their own (with
    example values), which must name every key."""
    text = (REPO / "README.md").read_text()
    block = text.split("the defaults are", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    readme = tomllib.loads(block)
    for own in ("rest", "bootstrap"):
        example = next(b for b in text.split("```toml")[1:] if f"[{own}]" in b.split("```")[0])
        readme[own] = {k: None for k in tomllib.loads(example.split("```")[0])[own]}
    # values the gateway resolves at load time, shown in the README as written in a file
    resolved = {("gateway", "db"), ("mqtt", "topic_prefix"), ("mqtt", "client_id")}
    actual = tomllib.loads(effective_toml(GatewayConfig.default()))
    missing = []
    for section, keys in actual.items():
        for key, value in keys.items():
            if key not in readme.get(section, {}):
                missing.append(f"{section}.{key}")
            elif (section, key) not in resolved and section not in ("rest", "bootstrap"):
                assert readme[section][key] == value, f"{section}.{key}"
    assert not missing, f"README's defaults blocks miss {missing}"
