"""Configuration: defaults, resolution, and one-line errors naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aiotkit.gateway.app import run_cli
from aiotkit.gateway.config import GatewayConfig, load_config
from aiotkit.gateway.errors import ConfigError, GatewayError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_the_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.gateway.id == "gw"
    assert cfg.gateway.db == tmp_path.resolve() / "aiot-gateway.db"
    assert cfg.gateway.security == "oscore"
    assert (cfg.coap.host, cfg.coap.port) == ("127.0.0.1", 5683)
    assert cfg.registry.expiry_check_s == 1.0
    m = cfg.mqtt
    assert (m.enabled, m.host, m.port, m.keepalive, m.batch) == (False, "127.0.0.1", 1883,
                                                                   30, 100)
    assert (m.topic_prefix, m.client_id) == ("aiot/gw", "aiot-gw")
    assert cfg.coap_uri == "coap://127.0.0.1:5683"
    assert cfg.source == tmp_path / "gw.toml"


def test_default_matches_an_empty_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from_file = load_config(write(tmp_path, ""))
    assert GatewayConfig.default() == dataclasses.replace(from_file, source=None)


def test_values_are_read_and_derived_defaults_follow_the_id(tmp_path):
    cfg = load_config(write(tmp_path, """
[gateway]
id = "site-7"
db = "/var/lib/aiot/gw.db"
security = "nosec"
[coap]
host = "::"
port = 15683
[registry]
expiry_check_s = 2
[mqtt]
enabled = true
port = 8883
username = "gw"
password = "hunter2"
"""))
    assert cfg.gateway.db == Path("/var/lib/aiot/gw.db")
    assert cfg.registry.expiry_check_s == 2.0
    assert cfg.coap_uri == "coap://[::]:15683"
    assert (cfg.mqtt.topic_prefix, cfg.mqtt.client_id) == ("aiot/site-7", "aiot-site-7")
    assert "hunter2" not in repr(cfg)


def test_relative_db_is_relative_to_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(sub, '[gateway]\ndb = "data/gw.db"\n'))
    assert cfg.gateway.db == sub.resolve() / "data" / "gw.db"


@pytest.mark.parametrize("text,expect", [
    ("[gateway\nid = 1", "TOML syntax error"),
    ('[gateway]\nid = "a"\nid = "b"\n', "TOML syntax error"),
    ("[coap]\nprot = 5683\n", "unknown key coap.prot"),
    ("[coaps]\nport = 5684\n", "unknown section or key 'coaps'"),
    ("port = 5683\n", "unknown section or key 'port'"),
    ("coap = 5\n", "coap: must be a table"),
    ('[coap]\nport = "5683"\n', "coap.port: must be an integer (got '5683')"),
    ("[coap]\nport = 70000\n", "coap.port: must be 1..65535 (got 70000)"),
    ("[coap]\nport = 0\n", "coap.port: must be 1..65535"),
    ("[mqtt]\nenabled = 1\n", "mqtt.enabled: must be true or false"),
    ("[mqtt]\nport = true\n", "mqtt.port: must be an integer"),
    ("[mqtt]\nbatch = 0\n", "mqtt.batch: must be 1..65535"),
    ("[dm]\nkeep_finished_days = 0\n", "dm.keep_finished_days: must be greater than 0"),
    ("[dm]\nkeep_finished_max = -1\n", "dm.keep_finished_max: must be greater than 0"),
    ("[mqtt]\ntopic_prefix = \"a/#\"\n", "mqtt.topic_prefix"),
    ("[registry]\nexpiry_check_s = 0\n", "registry.expiry_check_s: must be greater than 0"),
    ("[registry]\nexpiry_check_s = nan\n", "must be a finite number"),
    ('[gateway]\nsecurity = "dtls"\n', "gateway.security: must be one of oscore, nosec"),
    ('[gateway]\nid = "a/b"\n', "gateway.id: must not contain"),
    ('[gateway]\nid = ""\n', "gateway.id: must not be empty"),
])
def test_bad_config_names_file_and_key_in_one_line(tmp_path, text, expect):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and expect in msg and "\n" not in msg
    assert isinstance(info.value, GatewayError)


def test_toml_syntax_error_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3"):
        load_config(write(tmp_path, '[coap]\nport = 1\nhost = "x\n'))


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_a_mistyped_password_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[mqtt]\npassword = 987654321\n"))
    assert "987654321" not in str(info.value) and "mqtt.password" in str(info.value)


@pytest.mark.parametrize("text,expect", [
    ("[gateway\n", "TOML syntax error"),
    ("[coap]\nport = \"x\"\n", "coap.port: must be an integer"),
    ("[gateway]\nunknown = 1\n", "unknown key gateway.unknown"),
    ('[gateway]\nsecurity = "nosec"\n', "only with --allow-nosec"),
])
def test_run_cli_reports_config_errors_in_one_line_and_exits_2(tmp_path, capsys, text,
                                                              expect):
    path = write(tmp_path, text)
    assert run_cli(str(path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("aiot gateway: error:")]
    assert len(lines) == 1 and expect in lines[0] and str(path) in lines[0], err


def test_nosec_in_the_config_alone_does_not_start_a_gateway(tmp_path, capsys):
    assert run_cli(str(write(tmp_path, '[gateway]\nsecurity = "nosec"\n'))) == 2
    err = capsys.readouterr().err
    assert "--allow-nosec" in err and "development only" in err
