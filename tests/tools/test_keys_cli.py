"""``aiot keys`` as a subprocess against a running gateway's REST API, and the peer
check: the exported node side used by the real ``aiocoap-client --credentials`` for a
protected GET against an aiocoap server whose OSCORE contexts are the gateway's key
store, refused after ``aiot keys revoke``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.security import generate_key_hex
from plugins.services import aiot_cmd, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from oscorekit import oscore_server

ADMIN = "admin-token-0123456789"
OPERATOR = "operator-token-0123456789"
TIMEOUT_S = 60
AIOCOAP_CLIENT = Path(sys.executable).parent / "aiocoap-client"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    (tmp_path / "tokens").write_text(f"admin {ADMIN} ada\noperator {OPERATOR} otto\n")
    (tmp_path / "tokens").chmod(0o600)
    (tmp_path / "gw.key").write_text(generate_key_hex())
    (tmp_path / "gw.key").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nid = "keys"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
        '[security]\nkey_file = "gw.key"\n')
    # nosec needs the development switch where the gateway has one (the OSCORE of the
    # CoAP server is not under test here: the key store and its REST API are)
    dev = {"allow_nosec": True} if "allow_nosec" in inspect.signature(Gateway).parameters \
        else {}
    gw = Gateway(load_config(conf), **dev)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()


async def run(*cmd: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    return proc.returncode or 0, out.decode(), err.decode()


async def aiot(gw: Gateway | None, *args: str, token: str | None = ADMIN,
               url: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIOT_URL", "AIOT_TOKEN", "AIOT_GATEWAY_KEY")}
    if token:
        env["AIOT_TOKEN"] = token
    base = url or (gw.rest.url if gw is not None and gw.rest is not None else "")
    rc, out, err = await run(*aiot_cmd("keys", "--url", base, *args), env=env)
    assert "Traceback" not in out + err, out + err
    return rc, out, err


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_create_list_rotate_revoke_export(tmp_path):
    async with gateway(tmp_path) as gw:
        rc, out, err = await aiot(gw, "create", "pump-7")
        assert rc == 0, err
        assert out.startswith("pump-7: new, node id ") and "aiot keys export" in out
        rc, out, err = await aiot(gw, "list")
        assert rc == 0, err
        header, row = out.splitlines()
        assert header.split() == ["ENDPOINT", "STATE", "NODE-ID", "GEN", "CREATED",
                                  "ROTATED", "REVOKED"]
        assert row.split()[:2] == ["pump-7", "new"]
        rc, out, err = await aiot(gw, "export", "pump-7", "--out", str(tmp_path / "n"))
        assert rc == 0, err
        creds = json.loads((tmp_path / "n" / "credentials.json").read_text())
        assert creds == {f"{gw.coap_uri}/*": {"oscore": {"basedir": "pump-7/"}}}
        settings = json.loads((tmp_path / "n" / "pump-7" / "settings.json").read_text())
        assert settings["recipient-id_hex"] == "00"
        assert len(bytes.fromhex(settings["secret_hex"])) == 16
        assert (tmp_path / "n" / "pump-7" / "settings.json").stat().st_mode & 0o077 == 0
        # once only: the second export is refused, nothing written
        rc, out, err = await aiot(gw, "export", "pump-7", "--out", str(tmp_path / "n2"))
        assert rc == 1 and "exported already" in err and not (tmp_path / "n2").exists()
        rc, out, err = await aiot(gw, "--json", "rotate", "pump-7", "--out",
                                  str(tmp_path / "n3"))
        assert rc == 0, err
        assert json.loads(out)["credentials"] == str(tmp_path / "n3" / "credentials.json")
        new = json.loads((tmp_path / "n3" / "pump-7" / "settings.json").read_text())
        assert new["secret_hex"] != settings["secret_hex"]
        rc, out, err = await aiot(gw, "revoke", "pump-7")
        assert rc == 0 and out.startswith("pump-7: revoked"), err
        rc, out, err = await aiot(gw, "--json", "list")
        assert [k["state"] for k in json.loads(out)["keys"]] == ["revoked"]


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_mistakes_are_one_line_with_exit_2_and_failures_exit_1(tmp_path):
    async with gateway(tmp_path) as gw:
        rc, _, err = await aiot(gw, "list", token=None)
        assert rc == 2 and "no token" in err
        rc, _, err = await aiot(gw, "create", "n", "--id-context", "xyz")
        assert rc == 2 and "--id-context 'xyz' is not hex" in err
        rc, _, err = await aiot(gw, "export", "n")
        assert rc == 2 and "--out" in err
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "credentials.json").write_text("{}")
        rc, _, err = await aiot(gw, "create", "n", "--out", str(tmp_path / "full"))
        assert rc == 2 and "exists already" in err
        rc, _, _ = await aiot(gw, "list")  # checked before anything was created
        rc, out, err = await aiot(gw, "--json", "list")
        assert json.loads(out) == {"keys": []}
        rc, _, err = await aiot(gw, "create", "n", "--out", str(tmp_path / "no" / "such"))
        assert rc == 2 and "does not exist" in err
        rc, _, err = await aiot(gw, "list", token=OPERATOR)
        assert rc == 1 and "not allowed" in err and "admin" in err
        rc, _, err = await aiot(gw, "list", token="wrong-token-0123456789")
        assert rc == 1 and "refused the token" in err
        rc, _, err = await aiot(gw, "rotate", "ghost")
        assert rc == 1 and "no OSCORE context for 'ghost'" in err
        rc, _, err = await aiot(gw, "list", url="ftp://x")
        assert rc == 2
        rc, out, err = await aiot(gw, "bogus")
        assert rc == 2 and "invalid choice" in err
    rc, _, err = await aiot(None, "list", url=f"http://127.0.0.1:{free_port()}")
    assert rc == 1 and "cannot reach the gateway" in err


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_genkey_writes_a_private_key_file_and_never_overwrites(tmp_path):
    rc, out, err = await aiot(None, "genkey", str(tmp_path / "gw.key"), token=None)
    assert rc == 0, err
    text = (tmp_path / "gw.key").read_text().strip()
    assert len(bytes.fromhex(text)) == 32 and text not in out
    assert (tmp_path / "gw.key").stat().st_mode & 0o777 == 0o600
    rc, _, err = await aiot(None, "genkey", str(tmp_path / "gw.key"), token=None)
    assert rc == 2 and "exists already" in err
    assert (tmp_path / "gw.key").read_text().strip() == text


async def test_help_explains_the_one_time_export():
    rc, out, _ = await run(*aiot_cmd("keys", "--help"))
    assert rc == 0 and "once per creation or rotation" in out
    rc, out, _ = await run(*aiot_cmd("keys", "export", "--help"))
    assert rc == 0 and "--out DIR" in out and "--gateway URI" in out


@pytest.mark.timeout_s(TIMEOUT_S)
@pytest.mark.skipif(not AIOCOAP_CLIENT.exists() and not shutil.which("aiocoap-client"),
                    reason="aiocoap-client not installed")
async def test_peer_check_aiocoap_client_acts_as_the_node_until_revoked(tmp_path):
    client = str(AIOCOAP_CLIENT if AIOCOAP_CLIENT.exists() else shutil.which("aiocoap-client"))
    port = free_port()
    uri = f"coap://127.0.0.1:{port}"
    async with gateway(tmp_path) as gw:
        assert gw.keys is not None
        rc, _, err = await aiot(gw, "create", "pump-7", "--out", str(tmp_path / "node"),
                                "--gateway", uri)
        assert rc == 0, err
        # aiocoap resolves basedir "pump-7/" against the working directory: run it there
        creds = "credentials.json"
        async with oscore_server(gw.keys, port):
            rc, out, err = await run(client, "--credentials", creds, f"{uri}/hello",
                                     cwd=tmp_path / "node")
            assert rc == 0 and out.strip() == "hello pump-7", (out, err)
            assert gw.keys.context("pump-7").sender_sequence_number >= 0
            rc, out, err = await aiot(gw, "revoke", "pump-7")
            assert rc == 0, err
            rc, out, err = await run(client, "--credentials", creds, f"{uri}/hello",
                                     cwd=tmp_path / "node")
            assert "hello" not in out, (out, err)
            assert rc != 0 or "4.01" in out + err or "Unauthorized" in out + err, (out, err)
