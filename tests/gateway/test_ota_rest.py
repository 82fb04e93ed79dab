"""The gateway's OTA service over its REST API, on a real gateway: images verified on
arrival (a refused one leaves nothing behind and says why), campaigns created, started,
paused, resumed and aborted by an admin and read by a viewer, a failing canary wave and
silent canaries stopping a campaign, and a gateway restart in the middle of a campaign."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from aiotkit.gateway.ota import RecordingDelivery
from aiotkit.ota import image as ota_image
from aiotkit.ota import keys as ota_keys

VIEWER, ADMIN = "viewer-token-0123456789", "admin-token-0123456789"
T = 300.0


def signed(signer: ota_keys.Signer, *, board: str = "unix-sim", counter: int = 7,
           payload: bytes = b"\x01\x02app" * 300, version: str = "1.2.3") -> bytes:
    return ota_image.build(payload, [signer], version=ota_image.ImageVersion.parse(version),
                           security_counter=counter, payload_type="app", board=board)


@pytest.fixture
def trusted(tmp_path) -> ota_keys.Signer:
    signer = ota_keys.generate("ed25519")
    ota_keys.save_keyset(tmp_path / "trust.json", ota_keys.KeySet.of(("ci", signer.public)))
    return signer


@pytest.fixture
def ota_config(gateway_config, tmp_path):
    (tmp_path / "tokens").write_text(
        f"viewer {VIEWER} vera\nadmin sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()}"
        " ada\n")
    (tmp_path / "tokens").chmod(0o600)

    def make(trust: bool = True, extra: str = "") -> object:
        return gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                              + ('[ota]\ntrust_file = "trust.json"\n' if trust else "")
                              + extra)

    return make


async def call(s: aiohttp.ClientSession, gw, method: str, path: str,
               token: str | None = ADMIN, **kwargs) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, gw.rest.url + "/api/v1" + path, headers=headers,
                         **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def upload(s, gw, data: bytes, board: str = "unix-sim", token: str = ADMIN):
    return await call(s, gw, "POST", f"/ota/images?board={board}&payload_type=app", token,
                      data=data)


def stored_files(gw) -> list[Path]:
    folder = gw.ota.images.folder
    return sorted(folder.iterdir()) if folder.exists() else []


NODES = [{"endpoint": f"n{i}", "board": "unix-sim", "firmware": "1.0", "tags": ["lab"]}
         for i in range(6)] + [{"endpoint": "other", "board": "rpi-pico-w"}]


async def test_a_good_image_is_stored_by_its_hash_with_its_metadata(ota_config, trusted,
                                                                    running_gateway):
    data = signed(trusted)
    sha = hashlib.sha256(data).hexdigest()
    async with running_gateway(ota_config()) as gw, aiohttp.ClientSession() as s:
        status, img = await upload(s, gw, data)
        assert status == 201
        assert {k: img[k] for k in ("id", "version", "payload_type", "board",
                                    "security_counter", "size")} == {
            "id": sha, "version": "1.2.3+0", "payload_type": "app", "board": "unix-sim",
            "security_counter": 7, "size": len(data)}
        assert img["signers"] == [ota_keys.key_id(trusted.public).hex()]
        assert stored_files(gw) == [gw.ota.images.folder / f"{sha}.img"]
        assert stored_files(gw)[0].read_bytes() == data
        assert gw.ota.images.folder.parent == gw.config.gateway.db.parent  # next to the db
        status, again = await upload(s, gw, data)
        assert status == 200 and again == img  # the same bytes: nothing new
        status, listed = await call(s, gw, "GET", "/ota/images", VIEWER)
        assert status == 200 and listed == {"images": [img]}
        assert await call(s, gw, "GET", f"/ota/images/{sha}", VIEWER) == (200, img)
        status, body = await call(s, gw, "GET", "/ota/images/" + "0" * 64, VIEWER)
        assert (status, body["error"]) == (404, "unknown_image")


@pytest.mark.parametrize("fault, reason", [
    ("untrusted-key", "unknown-key"), ("one-flipped-byte", "hash-mismatch"),
    ("other-board", "wrong-board"), ("truncated", "truncated"), ("garbage", "bad-magic")])
async def test_a_bad_image_is_refused_with_its_reason_and_nothing_is_stored(
        ota_config, trusted, running_gateway, fault, reason):
    good = signed(trusted)
    data = {
        "untrusted-key": lambda: signed(ota_keys.generate("ed25519")),
        "one-flipped-byte": lambda: good[:600] + bytes([good[600] ^ 1]) + good[601:],
        "other-board": lambda: signed(trusted, board="rpi-pico-w"),
        "truncated": lambda: good[:len(good) // 2],
        "garbage": lambda: b"\x00" * 2000,
    }[fault]()
    async with running_gateway(ota_config()) as gw, aiohttp.ClientSession() as s:
        status, body = await upload(s, gw, data)
        assert (status, body["error"], body["reason"]) == (422, "image_rejected", reason)
        assert f"({reason})" in body["message"]
        assert stored_files(gw) == []
        assert (await call(s, gw, "GET", "/ota/images", VIEWER))[1] == {"images": []}
        # and it cannot be offered: no campaign takes an unknown image
        sha = hashlib.sha256(data).hexdigest()
        status, body = await call(s, gw, "POST", "/ota/campaigns",
                                  json={"image": sha, "nodes": NODES})
        assert (status, body["error"]) == (404, "unknown_image")
        assert gw.rest.audit.path.read_text().count('"refused":"' + reason) == 1


async def test_upload_refusals_without_trust_by_role_size_and_board(ota_config, trusted,
                                                                   running_gateway):
    data = signed(trusted)
    async with running_gateway(ota_config(trust=False)) as gw, aiohttp.ClientSession() as s:
        status, body = await upload(s, gw, data)
        assert (status, body["error"]) == (503, "ota_unavailable")
        assert stored_files(gw) == []
    async with running_gateway(ota_config(extra="max_image_bytes = 1000\n")) as gw, \
            aiohttp.ClientSession() as s:
        status, body = await upload(s, gw, data, token=VIEWER)
        assert (status, body["error"]) == (403, "forbidden")
        status, body = await upload(s, gw, data)
        assert (status, body["error"]) == (413, "too_large")
        status, body = await upload(s, gw, data[:900], board="no-such-board")
        assert (status, body["error"]) == (400, "unknown_board")
        status, body = await call(s, gw, "POST", "/ota/images", data=data[:900])
        assert (status, body["error"]) == (400, "bad_query")
        assert stored_files(gw) == []


async def test_a_campaign_over_rest_completes_and_a_viewer_may_only_look(
        ota_config, trusted, running_gateway, clock):
    d = RecordingDelivery()
    async with running_gateway(ota_config(), clock=clock, ota_delivery=d) as gw, \
            aiohttp.ClientSession() as s:
        _, img = await upload(s, gw, signed(trusted))
        spec = {"image": img["id"], "name": "app 1.2.3", "nodes": NODES,
                "target": {"tag": "lab", "firmware": "1.0"}, "waves": ["2", "50%"],
                "max_failure_ratio": 0.0, "report_timeout_s": T}
        status, body = await call(s, gw, "POST", "/ota/campaigns", VIEWER, json=spec)
        assert status == 403
        status, c = await call(s, gw, "POST", "/ota/campaigns", json=spec)
        assert status == 201 and c["state"] == "draft"
        assert [(w["wave"], w["size"]) for w in c["waves_progress"]] == [(1, 2), (2, 1),
                                                                          (3, 3)]
        assert "other" not in [n["endpoint"] for n in c["nodes"]]  # another board
        cid = c["id"]
        status, body = await call(s, gw, "POST", f"/ota/campaigns/{cid}/start", VIEWER)
        assert status == 403 and d.offers == []
        status, c = await call(s, gw, "POST", f"/ota/campaigns/{cid}/start")
        assert status == 200 and c["state"] == "running" and d.offered() == ["n0", "n1"]
        for wave in (["n0", "n1"], ["n2"], ["n3", "n4", "n5"]):
            assert d.offered()[-len(wave):] == wave
            for ep in wave:
                assert gw.ota.campaigns.report(ep, "succeeded")
            await gw.ota.campaigns.step()
        status, c = await call(s, gw, "GET", f"/ota/campaigns/{cid}", VIEWER)
        assert status == 200 and c["state"] == "completed"
        assert {n["state"] for n in c["nodes"]} == {"succeeded"}
        status, listed = await call(s, gw, "GET", "/ota/campaigns", VIEWER)
        assert [x["id"] for x in listed["campaigns"]] == [cid]
        assert "nodes" not in listed["campaigns"][0]
        status, body = await call(s, gw, "POST", f"/ota/campaigns/{cid}/pause")
        assert (status, body["error"]) == (409, "wrong_state")
        status, body = await call(s, gw, "GET", "/ota/campaigns/999", VIEWER)
        assert (status, body["error"]) == (404, "unknown_campaign")


async def test_the_canary_wave_fails_and_the_campaign_stops_before_wave_2(
        ota_config, trusted, running_gateway, clock):
    d = RecordingDelivery()
    async with running_gateway(ota_config(), clock=clock, ota_delivery=d) as gw, \
            aiohttp.ClientSession() as s:
        _, img = await upload(s, gw, signed(trusted))
        _, c = await call(s, gw, "POST", "/ota/campaigns", json={
            "image": img["id"], "nodes": NODES, "waves": ["2", "50%"],
            "max_failure_ratio": 0.25, "report_timeout_s": T, "start": True})
        gw.ota.campaigns.report("n0", "failed", "signature refused on the node")
        gw.ota.campaigns.report("n1", "succeeded")
        await gw.ota.campaigns.step()
        _, c = await call(s, gw, "GET", f"/ota/campaigns/{c['id']}", VIEWER)
        assert (c["state"], c["wave"]) == ("aborted", 1)
        assert c["reason"] == "wave 1: 1 of 2 nodes failed (50%, the maximum is 25%)"
        assert [w["status"] for w in c["waves_progress"]] == ["done", "waiting", "waiting"]
        assert d.offered() == ["n0", "n1"]


async def test_silent_canaries_fail_after_the_timeout_and_pause_resume_abort(
        ota_config, trusted, running_gateway, clock):
    d = RecordingDelivery()
    async with running_gateway(ota_config(), clock=clock, ota_delivery=d) as gw, \
            aiohttp.ClientSession() as s:
        _, img = await upload(s, gw, signed(trusted))
        _, c = await call(s, gw, "POST", "/ota/campaigns", json={
            "image": img["id"], "nodes": NODES, "waves": ["1"], "report_timeout_s": T,
            "start": True})
        cid = c["id"]
        status, c = await call(s, gw, "POST", f"/ota/campaigns/{cid}/pause")
        assert (status, c["state"]) == (200, "paused")
        gw.ota.campaigns.report("n0", "succeeded")
        await gw.ota.campaigns.step()
        assert d.offered() == ["n0"]  # paused: no new offer
        status, c = await call(s, gw, "POST", f"/ota/campaigns/{cid}/resume")
        assert c["state"] == "running" and d.offered()[1:] == ["n1", "n2", "n3", "n4", "n5"]
        status, c = await call(s, gw, "POST", f"/ota/campaigns/{cid}/abort",
                               json={"reason": "field report"})
        assert (c["state"], c["reason"]) == ("aborted", "aborted by ada: field report")
        assert len(d.cancels) == 5

        # a second campaign whose canary goes silent
        _, c = await call(s, gw, "POST", "/ota/campaigns", json={
            "image": img["id"], "nodes": NODES, "waves": ["1"], "report_timeout_s": T,
            "start": True})
        clock.advance(T - 0.5)
        await gw.ota.campaigns.step()
        assert (await call(s, gw, "GET", f"/ota/campaigns/{c['id']}"))[1]["state"] == \
            "running"
        clock.advance(0.5)
        await gw.ota.campaigns.step()
        _, c = await call(s, gw, "GET", f"/ota/campaigns/{c['id']}")
        assert c["state"] == "aborted"
        assert c["nodes"][0]["state"] == "timed_out"
        assert c["nodes"][0]["reason"] == "no report within 300 s"


async def test_a_gateway_restart_mid_campaign_resumes_state_and_timers(
        ota_config, trusted, running_gateway, clock):
    cfg = ota_config()
    d = RecordingDelivery()
    async with running_gateway(cfg, clock=clock, ota_delivery=d) as gw, \
            aiohttp.ClientSession() as s:
        _, img = await upload(s, gw, signed(trusted))
        _, c = await call(s, gw, "POST", "/ota/campaigns", json={
            "image": img["id"], "nodes": NODES, "waves": ["2", "50%"],
            "max_failure_ratio": 0.5, "report_timeout_s": T, "start": True})
        cid = c["id"]
        clock.advance(10)
        gw.ota.campaigns.report("n0", "updating")
    clock.advance(200)  # the gateway is down for 200 s
    d2 = RecordingDelivery()
    async with running_gateway(cfg, clock=clock, ota_delivery=d2) as gw, \
            aiohttp.ClientSession() as s:
        _, c = await call(s, gw, "GET", f"/ota/campaigns/{cid}", VIEWER)
        assert (c["state"], c["wave"]) == ("running", 1)
        assert {n["endpoint"]: n["state"] for n in c["nodes"][:2]} == {
            "n0": "updating", "n1": "offered"}
        assert c["nodes"][1]["deadline"] == c["nodes"][1]["offered"] + T  # stored time
        assert d2.offers == []  # nothing offered twice
        clock.advance(T - 210)  # n1 was offered T s ago now
        await gw.ota.campaigns.step()
        gw.ota.campaigns.report("n0", "succeeded")
        await gw.ota.campaigns.step()
        _, c = await call(s, gw, "GET", f"/ota/campaigns/{cid}", VIEWER)
        assert c["nodes"][1]["state"] == "timed_out" and c["state"] == "running"
        assert c["wave"] == 2 and d2.offered() == ["n2"]
        assert (await call(s, gw, "GET", f"/ota/images/{img['id']}"))[0] == 200


async def test_a_model_image_is_kept_whatever_feature_spec_it_was_trained_on(
        ota_config, trusted, running_gateway):
    # the gateway serves nodes of every feature spec: each checks a model against its
    # own; the store once asked for "the device's" spec and failed on every model upload
    tflite = b"TFL3 not really a model" * 10
    ident = ota_image.ModelId("bearing-fault", "1.0.0", hashlib.sha256(tflite).digest())
    async with running_gateway(ota_config()) as gw, aiohttp.ClientSession() as s:
        for spec in (1, 7):
            data = ota_image.build(tflite, [trusted], version=ota_image.ImageVersion.parse(
                "1.0.0"), security_counter=3, payload_type="model", board="unix-sim",
                model=ident, feature_spec=spec)
            status, img = await call(s, gw, "POST",
                                     "/ota/images?board=unix-sim&payload_type=model",
                                     data=data)
            assert status == 201, img
            assert img["payload_type"] == "model"
