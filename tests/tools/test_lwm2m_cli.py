"""``aiot lwm2m`` as a subprocess against a running gateway's REST API, with a real
aiocoap LwM2M client (``tests/gateway/fakeclient.py``) registered behind it.

Readable tables (names and units from the DDF definitions), ``--json``, ``observe
--count``, and one-line errors with a non-zero exit for every failure an operator meets:
gateway not running, bad token, unknown endpoint, node timeout, a node's error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from plugins.services import aiot_cmd, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from fakeclient import FakeClient

TOKEN = "operator-token-0123456789"
TIMEOUT_S = 60


@contextlib.asynccontextmanager
async def gateway_with_node(tmp_path: Path, *, node: bool = True
                            ) -> AsyncIterator[tuple[Gateway, FakeClient | None]]:
    (tmp_path / "tokens").write_text(f"operator {TOKEN} cli-test\n")
    (tmp_path / "tokens").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nid = "cli"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n[dm]\nrequest_timeout_s = 2.0\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n')
    gw = Gateway(load_config(conf))
    await gw.start()
    try:
        if not node:
            yield gw, None
            return
        async with FakeClient("pump-7", gw.coap_uri) as dev:
            await dev.register()
            yield gw, dev
    finally:
        await gw.shutdown()


async def aiot(gw: Gateway | None, *args: str, token: str = TOKEN,
               url: str | None = None) -> tuple[int, str, str]:
    env = dict(os.environ, AIOT_TOKEN=token)
    env.pop("AIOT_URL", None)
    base = url or (gw.rest.url if gw is not None and gw.rest is not None else "")
    proc = await asyncio.create_subprocess_exec(
        *aiot_cmd("lwm2m", "--url", base, *args), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert b"Traceback" not in out + err, (out + err).decode()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_list_read_write_exec_discover_print_readable_tables(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        rc, out, err = await aiot(gw, "list")
        assert rc == 0, err
        assert out.splitlines()[0].split() == [
            "ENDPOINT", "STATE", "ADDRESS", "LIFETIME", "BINDING", "READINGS"]
        assert out.splitlines()[1].split()[:2] == ["pump-7", "registered"]
        rc, out, err = await aiot(gw, "read", "pump-7", "/3303/0")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["PATH", "NAME", "VALUE", "UNITS"]
        assert any(ln.split()[:4] == ["/3303/0/5700", "Sensor", "Value", "21.5"]
                   for ln in lines), out
        rc, out, err = await aiot(gw, "write", "pump-7", "/3/0/13", "1800000000")
        assert rc == 0, err
        assert dev.values[(3, 0, 13)] == 1_800_000_000  # typed by the DDF: Time
        rc, out, err = await aiot(gw, "exec", "pump-7", "/3/0/4")
        assert rc == 0 and "2.04" in out, out + err
        assert dev.executed == [("/3/0/4", b"")]
        rc, out, err = await aiot(gw, "discover", "pump-7", "/3/0")
        assert rc == 0, err
        assert any(ln.split()[:2] == ["/3/0/4", "Reboot"] for ln in out.splitlines()), out
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0/0", "--json")
        assert rc == 0, err
        assert json.loads(out)["values"] == {"/3/0/0": "aiotkit"}


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_observe_prints_notifications_until_count(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        env = dict(os.environ, AIOT_TOKEN=TOKEN)
        proc = await asyncio.create_subprocess_exec(
            *aiot_cmd("lwm2m", "observe", "pump-7", "/3303/0/5700", "--count", "2",
                      "--url", gw.rest.url), env=env,  # type: ignore[union-attr]
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert line.startswith(b"observing pump-7 /3303/0/5700"), line
            first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert first.rstrip().endswith(b"  /3303/0/5700  Sensor Value  21.5"), first
            dev.set((3303, 0, 5700), 19.25)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err
        assert out.rstrip().endswith(b"  /3303/0/5700  Sensor Value  19.25"), out
        # the CLI cancelled its observation on the way out
        assert gw.dm.observations("pump-7") == []


@pytest.mark.timeout_s(TIMEOUT_S)
@pytest.mark.parametrize("case", ["not running", "bad token", "unknown endpoint",
                                  "node timeout", "node error", "bad path", "no token"])
async def test_failures_are_one_line_and_non_zero(tmp_path, case):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        if case == "not running":
            port = free_port(kind=1)  # SOCK_STREAM: nobody listens there
            rc, out, err = await aiot(None, "list", url=f"http://127.0.0.1:{port}")
            expect = "cannot reach the gateway's REST API"
        elif case == "bad token":
            rc, out, err = await aiot(gw, "list", token="wrong-token-0123456789")
            expect = "the gateway refused the token"
        elif case == "no token":
            rc, out, err = await aiot(gw, "list", token="")
            expect = "no token"
        elif case == "unknown endpoint":
            rc, out, err = await aiot(gw, "read", "ghost", "/3/0")
            expect = "no endpoint 'ghost'"
        elif case == "node timeout":
            dev.sleep()
            rc, out, err = await aiot(gw, "read", "pump-7", "/3/0", "--timeout", "0.5")
            dev.wake()
            expect = "node timeout"
        elif case == "node error":
            rc, out, err = await aiot(gw, "read", "pump-7", "/3/0/99")
            expect = "4.04"
        else:
            rc, out, err = await aiot(gw, "read", "pump-7", "/3/zero")
            expect = "is not an LwM2M path"
        assert rc != 0
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("aiot lwm2m: error: ") and expect in err, err
