"""The daemon's log from ``[log]`` (``gateway/logs.py configure``): level, JSON lines
for a log shipper, the CoAP layer's rate limit still in force, no secret in either
format."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiotkit.gateway.app import RateLimitFilter, _limit_peer_noise, _setup_logging
from aiotkit.gateway.config import LogConfig, load_config
from aiotkit.gateway.errors import ConfigError
from aiotkit.gateway.logs import configure

SECRET = "s3cret-mqtt-password-42"


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    coap = logging.getLogger("aiotkit.gateway.coap")
    coap_level, coap_filters = coap.level, list(coap.filters)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    coap.setLevel(coap_level)
    coap.filters[:] = coap_filters


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_format_writes_one_parsable_object_per_record_with_the_traceback(restore_root):
    out = io.StringIO()
    configure(LogConfig(level="info", format="json"), out)
    log = logging.getLogger("aiotkit.gateway.test")
    log.info("two\nlines %s", "here")
    log.debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    got = lines(out)
    assert [(g["level"], g["logger"], g["message"]) for g in got] == [
        ("info", "aiotkit.gateway.test", "two\nlines here"),
        ("error", "aiotkit.gateway.test", "it failed")]
    assert got[0]["time"].endswith("Z") and "T" in got[0]["time"]
    assert "exc_info" not in got[0]
    assert "ValueError: boom" in got[1]["exc_info"]


def test_level_from_config_and_configure_again_replaces_only_its_own_handler(restore_root):
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    configure(LogConfig(level="warning", format="text"), first)
    configure(LogConfig(level="debug", format="text"), second)
    log = logging.getLogger("aiotkit.gateway.test")
    log.debug("debug line")
    assert first.getvalue() == ""
    assert "DEBUG aiotkit.gateway.test: debug line" in second.getvalue()
    assert other in logging.getLogger().handlers
    logging.getLogger().removeHandler(other)


def test_the_coap_rate_limit_holds_in_json_format(restore_root):
    out = io.StringIO()
    configure(LogConfig(level="info", format="json"), out)
    _limit_peer_noise()
    coap = logging.getLogger("aiotkit.gateway.coap")
    assert any(isinstance(f, RateLimitFilter) for f in coap.filters)
    for _ in range(50):
        coap.warning("malformed datagram from %s", "10.0.0.1")
    assert len(lines(out)) == 5


def test_a_bad_log_level_or_format_is_a_one_line_config_error(tmp_path):
    for text, key in (('[log]\nlevel = "loud"\n', "log.level"),
                      ('[log]\nformat = "xml"\n', "log.format")):
        (tmp_path / "g.toml").write_text(text)
        with pytest.raises(ConfigError, match=key):
            load_config(tmp_path / "g.toml")
    (tmp_path / "g.toml").write_text('[log]\nlevel = "DEBUG"\nformat = "json"\n')
    assert load_config(tmp_path / "g.toml").log == LogConfig("debug", "json")


async def test_the_mqtt_password_never_reaches_the_log_in_either_format(
        gateway_config, running_gateway, restore_root):
    for fmt in ("text", "json"):
        cfg = gateway_config(f'[log]\nlevel = "debug"\nformat = "{fmt}"\n'
                             '[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = 1\n'
                             f'username = "u"\npassword = "{SECRET}"\n'
                             "reconnect_min_s = 0.05\nreconnect_max_s = 0.1\n")
        _setup_logging(cfg)
        out = io.StringIO()
        handler = configure(cfg.log, out)
        async with running_gateway(cfg) as gw:
            assert gw.uplink is not None
        logging.getLogger().removeHandler(handler)
        text = out.getvalue()
        assert "aiot gateway ready" in text
        assert SECRET not in text
