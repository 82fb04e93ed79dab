"""``aiot ota image ...`` and ``aiot ota campaign ...`` as subprocesses against a running
gateway's REST API: an image uploaded (and a bad one refused with its reason, exit 1),
a campaign created, started, shown, paused, resumed and aborted, and the failures a
command line meets (no token, a viewer token, an unknown campaign)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import load_config
from aiotkit.gateway.ota import RecordingDelivery
from aiotkit.ota import image as ota_image
from aiotkit.ota import keys as ota_keys
from plugins.services import aiot_cmd, free_port

ADMIN = "admin-token-0123456789"
VIEWER = "viewer-token-0123456789"
TIMEOUT_S = 60


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, delivery: RecordingDelivery) -> AsyncIterator[Gateway]:
    (tmp_path / "tokens").write_text(f"admin {ADMIN} ada\nviewer {VIEWER} vera\n")
    (tmp_path / "tokens").chmod(0o600)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        '[gateway]\nid = "ota"\ndb = "gw.db"\nsecurity = "nosec"\n'
        f"[coap]\nport = {free_port()}\n"
        '[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
        '[ota]\ntrust_file = "trust.json"\n')
    gw = Gateway(load_config(conf), allow_nosec=True, ota_delivery=delivery)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()


async def aiot(gw: Gateway, *args: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AIOT_URL", "AIOT_TOKEN")}
    if token:
        env["AIOT_TOKEN"] = token
    assert gw.rest is not None
    action, rest = args[:2], args[2:]
    proc = await asyncio.create_subprocess_exec(
        *aiot_cmd("ota", *action, "--url", gw.rest.url, *rest), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    text = out.decode() + err.decode()
    assert "Traceback" not in text, text
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.timeout_s(TIMEOUT_S)
async def test_upload_create_show_pause_resume_abort(tmp_path):
    signer = ota_keys.generate("ed25519")
    ota_keys.save_keyset(tmp_path / "trust.json", ota_keys.KeySet.of(("ci", signer.public)))
    good = ota_image.build(b"app" * 500, [signer], version=ota_image.ImageVersion(2, 0, 1),
                           security_counter=3, payload_type="app", board="unix-sim")
    (tmp_path / "good.img").write_bytes(good)
    (tmp_path / "bad.img").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    (tmp_path / "nodes.json").write_text(json.dumps(
        [{"endpoint": f"pump-{i}", "board": "unix-sim", "tags": ["north"]} for i in range(4)]))
    sha = hashlib.sha256(good).hexdigest()
    d = RecordingDelivery()
    async with gateway(tmp_path, d) as gw:
        rc, out, err = await aiot(gw, "image", "upload", str(tmp_path / "bad.img"),
                                  "--board", "unix-sim")
        assert rc == 1 and "image rejected (bad-signature)" in err, err
        rc, out, _ = await aiot(gw, "image", "upload", str(tmp_path / "good.img"),
                                "--board", "unix-sim", "--json")
        assert rc == 0 and json.loads(out)["id"] == sha
        rc, out, _ = await aiot(gw, "image", "list", token=VIEWER)
        assert rc == 0 and sha[:16] in out and "2.0.1+0" in out

        rc, out, err = await aiot(gw, "campaign", "create", "--image", sha, "--nodes",
                                  str(tmp_path / "nodes.json"), "--tag", "north",
                                  "--waves", "1,50%", "--max-failure-ratio", "0.5",
                                  "--report-timeout", "120", "--name", "pumps", "--json")
        assert rc == 0, err
        c = json.loads(out)
        assert (c["state"], [w["size"] for w in c["waves_progress"]]) == ("draft", [1, 1, 2])
        cid = str(c["id"])
        rc, out, err = await aiot(gw, "campaign", "start", cid, token=VIEWER)
        assert rc == 1 and "not allowed" in err and d.offers == []
        rc, out, _ = await aiot(gw, "campaign", "start", cid)
        assert rc == 0 and "running" in out and d.offered() == ["pump-0"]
        gw.ota.campaigns.report("pump-0", "succeeded")
        await gw.ota.campaigns.step()
        rc, out, _ = await aiot(gw, "campaign", "pause", cid)
        assert rc == 0 and "paused" in out
        rc, out, _ = await aiot(gw, "campaign", "show", cid, token=VIEWER)
        assert rc == 0 and "pump-1" in out and "succeeded" in out
        rc, out, _ = await aiot(gw, "campaign", "resume", cid)
        assert rc == 0 and "running" in out
        rc, out, _ = await aiot(gw, "campaign", "abort", cid, "--reason", "enough")
        assert rc == 0 and "aborted by ada: enough" in out
        rc, out, _ = await aiot(gw, "campaign", "list", "--json", token=VIEWER)
        assert [x["state"] for x in json.loads(out)["campaigns"]] == ["aborted"]
        rc, _, err = await aiot(gw, "campaign", "resume", cid)
        assert rc == 1 and "aborted: cannot resume" in err
        rc, _, err = await aiot(gw, "campaign", "show", "77")
        assert rc == 1 and "no campaign 77" in err
        rc, _, err = await aiot(gw, "campaign", "list", token=None)
        assert rc == 2 and "no token" in err
