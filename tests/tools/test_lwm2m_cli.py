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
from fakeclient import SENML_CBOR, SENML_JSON, TLV, FakeClient

TOKEN = "operator-token-0123456789"
TIMEOUT_S = 60


@contextlib.asynccontextmanager
async def gateway_with_node(tmp_path: Path, *, node: bool = True,
                            formats: tuple[int, ...] | None = None,
                            ) -> AsyncIterator[tuple[Gateway, FakeClient | None]]:
    (tmp_path / "tokens").write_text(f"operator {TOKEN} cli-test\n")
    (tmp_path / "tokens").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nid = "cli"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n[dm]\nrequest_timeout_s = 2.0\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n')
    gw = Gateway(load_config(conf), allow_nosec=True)
    await gw.start()
    try:
        if not node:
            yield gw, None
            return
        async with FakeClient("pump-7", gw.coap_uri, formats=formats) as dev:
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
            "ENDPOINT", "STATE", "LAST-SEEN", "ADDRESS", "LIFETIME", "BINDING", "READINGS"]
        assert out.splitlines()[1].split()[:4] == ["pump-7", "registered", "0s", "ago"]
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
        assert rc == 0 and "2.04 Changed" in out, out + err
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


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_read_format_asks_the_node_for_that_content_format(tmp_path):
    async with gateway_with_node(tmp_path, formats=(SENML_CBOR, SENML_JSON)) as (gw, dev):
        assert dev is not None
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0", "--format", "senml-json",
                                  "--json")
        assert rc == 0, err
        assert json.loads(out)["content_format"] == SENML_JSON
        assert dev.seen[-1].opt.accept == SENML_JSON
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0/9")  # negotiated: 112
        assert rc == 0 and dev.seen[-1].opt.accept == SENML_CBOR, err
        # a format the node was built without: its 5.00, one line
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0", "--format", "tlv")
        assert rc == 1 and "5.00" in err and len(err.strip().splitlines()) == 1, err
        assert dev.seen[-1].opt.accept == TLV
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0", "--format", "xml")
        assert rc == 2 and "--format" in err, err


async def _observe_proc(gw: Gateway, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, AIOT_TOKEN=TOKEN)
    return await asyncio.create_subprocess_exec(
        *aiot_cmd("lwm2m", "observe", *args, "--url", gw.rest.url),  # type: ignore[union-attr]
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _send(dev: FakeClient, value: float) -> None:
    resp = await dev.send(json.dumps([{"n": "/3303/0/5700", "v": value}]).encode(), SENML_JSON)
    assert resp.code.is_successful(), resp


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_observe_of_a_path_the_node_also_sends_shows_each_notification_once(tmp_path):
    """A node that Sends the path it is observed on: ``--count 3`` is three
    Notifications, and none of the Sent values (they were printed and counted too)."""
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        proc = await _observe_proc(gw, "pump-7", "/3303/0/5700", "--count", "3")
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert line.startswith(b"observing pump-7 /3303/0/5700"), line
            first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert first.rstrip().endswith(b"/3303/0/5700  Sensor Value  21.5"), first
            await _send(dev, 30.5)
            dev.set((3303, 0, 5700), 19.25)
            second = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert second.rstrip().endswith(b"/3303/0/5700  Sensor Value  19.25"), second
            await _send(dev, 31.5)
            dev.set((3303, 0, 5700), 18.0)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err
        assert out.rstrip().endswith(b"/3303/0/5700  Sensor Value  18.0"), out
        assert b"30.5" not in out + line + first + second and b"31.5" not in out, out


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_observe_sends_option_shows_sends_labelled_and_does_not_count_them(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        proc = await _observe_proc(gw, "pump-7", "/3303/0/5700", "--count", "2", "--sends")
        assert proc.stdout is not None
        try:
            await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)  # observing ...
            first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert b"  send  " not in first and first.rstrip().endswith(b"21.5"), first
            await _send(dev, 30.5)
            sent = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            assert b"  send  /3303/0/5700  Sensor Value  30.5" in sent, sent
            dev.set((3303, 0, 5700), 19.25)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err
        assert out.rstrip().endswith(b"/3303/0/5700  Sensor Value  19.25"), out
        assert b"send" not in out, out


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_list_shows_when_an_endpoint_was_last_seen_and_its_state(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        summary = gw.store.node_summary("pump-7")
        assert summary is not None and summary.last_seen is not None
        await dev.deregister()
        rc, out, err = await aiot(gw, "list")
        assert rc == 0, err
        header, row = out.splitlines()
        assert header.split()[:3] == ["ENDPOINT", "STATE", "LAST-SEEN"]
        assert row.split()[:4] == ["pump-7", "deregistered", "0s", "ago"], out


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_coap_codes_are_printed_with_their_meaning(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        rc, out, err = await aiot(gw, "read", "pump-7", "/3/0/99")
        assert rc == 1 and "4.04 Not Found" in err, err
        rc, out, err = await aiot(gw, "write", "pump-7", "/3/0/0", "x")  # read-only
        assert rc == 1 and "4.05 Method Not Allowed" in err, err
        assert len(err.strip().splitlines()) == 1, err
        rc, out, err = await aiot(gw, "exec", "pump-7", "/3/0/4")
        assert rc == 0 and out.strip() == "execute pump-7 /3/0/4: 2.04 Changed", out


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_latest_readings_are_listed_in_numeric_path_order_not_as_text(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        sent = [{"n": "/3/0/10", "v": 5}, {"n": "/3/0/2", "vs": "SN-1"},
                {"n": "/3/0/9", "v": 80}, {"n": "/3303/0/5700", "v": 21.5}]
        resp = await dev.send(json.dumps(sent).encode(), SENML_JSON)
        assert resp.code.is_successful(), resp
        rc, out, err = await aiot(gw, "readings", "pump-7")
        assert rc == 0, err
        paths = [ln.split()[0] for ln in out.splitlines()[1:]]
        assert paths == ["/3/0/2", "/3/0/9", "/3/0/10", "/3303/0/5700"], out
        rc, out, err = await aiot(gw, "readings", "pump-7", "/3303")
        assert rc == 0 and [ln.split()[0] for ln in out.splitlines()[1:]] == [
            "/3303/0/5700"], out


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_create_delete_attributes_cancel_work_from_the_cli_as_in_the_rest_api(tmp_path):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        rc, out, err = await aiot(gw, "create", "pump-7", "3303", "5700=12.5",
                                  "5701=Cel", "--instance", "4")
        assert rc == 0, err
        assert out.strip() == "create pump-7 3303: 2.01 Created, new instance /3303/4", out
        assert dev.values[(3303, 4, 5700)] == 12.5  # a Float by the DDF, not "12.5"
        assert dev.values[(3303, 4, 5701)] == "Cel"
        rc, out, err = await aiot(gw, "delete", "pump-7", "/3303/4")
        assert rc == 0 and out.strip() == "delete pump-7 /3303/4: 2.02 Deleted", out + err
        assert (3303, 4, 5700) not in dev.values
        rc, out, err = await aiot(gw, "attributes", "pump-7", "/3303/0/5700",
                                  "--pmin", "5", "--pmax", "60", "--st", "0.5")
        assert rc == 0 and "2.04 Changed" in out, out + err
        assert sorted(dev.attributes["/3303/0/5700"]) == ["pmax=60", "pmin=5", "st=0.5"]
        rc, out, err = await aiot(gw, "observe", "pump-7", "/3303/0/5700", "--count", "1",
                                  "--keep")
        assert rc == 0 and len(gw.dm.observations("pump-7")) == 1, err
        rc, out, err = await aiot(gw, "cancel", "pump-7", "/3303/0/5700")
        assert rc == 0 and out.splitlines()[1].split()[-1] == "21.5", out + err  # last value
        assert gw.dm.observations("pump-7") == [] and len(dev.cancels) == 1


@pytest.mark.timeout_s(TIMEOUT_S)
@pytest.mark.parametrize("args", [
    ("create", "pump-7", "3303", "5700"),  # not RES=VALUE
    ("create", "pump-7", "3303", "5700=warm"),  # not a Float
    ("create", "pump-7", "/3303/0", "5700=1"),  # not an object
    ("delete", "pump-7", "/3303"),  # not an instance
    ("attributes", "pump-7", "/3303/0/5700"),  # no attribute
    ("attributes", "pump-7", "/3303/0/5700", "--pmin", "x"),
])
async def test_create_delete_attributes_usage_mistakes_exit_2_in_one_line(tmp_path, args):
    async with gateway_with_node(tmp_path) as (gw, dev):
        assert dev is not None
        rc, out, err = await aiot(gw, *args)
        assert rc == 2 and out == "", out + err
        assert dev.seen == []  # nothing reached the node
        if args[-1] != "x":  # argparse's own message is its usage plus one line
            assert len(err.strip().splitlines()) == 1, err
