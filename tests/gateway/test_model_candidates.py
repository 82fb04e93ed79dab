"""Candidate models evaluated by rule (gateway/ota/models.py, issue 14 item 5): the
decision reports of a node that runs a candidate beside its active model are added up in
the gateway's database; once the candidate ran ``min_windows`` windows it is promoted
(Execute /9/x/10) when it agreed often enough and flagged few enough windows, refused
(Execute /9/x/6) otherwise, with the reason stored. The issue's fault: a candidate that
disagrees is not promoted. The counts survive a gateway restart and a node reboot (its
counters start again from 0). The registry lists the model images of the image store
with their card, signers and where they run."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from aiotkit.gateway.config import ModelsConfig
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from aiotkit.gateway.lwm2m.senml import Record
from aiotkit.gateway.ota.models import ModelService, decide
from aiotkit.gateway.storage import OtaImageRow, SqliteStorage
from aiotkit.ota import image, keys
from aiotkit.ota.image import ImageVersion, ModelId

ACTIVE = bytes.fromhex("81be6f41d1320440")
CAND = bytes.fromhex("0123456789abcdef")
RULE = ModelsConfig(min_windows=500, min_agreement=0.98, max_anomaly_rate=0.05)


class Node:
    """What device management's Execute got, answered with ``code``."""

    def __init__(self, code: str = "2.04") -> None:
        self.calls: list[tuple[str, str]] = []
        self.code = code

    async def execute(self, endpoint: str, path: str) -> Any:
        self.calls.append((endpoint, path))
        return type("R", (), {"code": self.code})()


def report(windows: int, agree: int, anomalies: int = 0, slot: int = 1,
           cand: bytes = CAND) -> RegistryEvent:
    def rec(rid: int, value: Any) -> Record:
        return Record(f"/33002/0/{rid}", "opaque" if isinstance(value, bytes) else "int",
                      value)

    return RegistryEvent("send", "n1", "r1", (
        rec(0, windows), rec(7, ACTIVE), rec(13, slot), rec(14, cand), rec(18, windows),
        rec(19, agree), rec(20, anomalies)))


def service(db: Path, node: Node, rule: ModelsConfig = RULE) -> tuple[SqliteStorage,
                                                                      ModelService]:
    store = SqliteStorage.open(db)
    return store, ModelService(store.models, store.ota, db.parent, rule, node.execute,
                               clock=lambda: 1000.0)


async def settle(svc: ModelService) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await svc.shutdown()


def test_rule():
    assert decide(RULE, 499, 499, 0).action is None
    assert decide(RULE, 500, 490, 0).action == "promote"  # 0.98 exactly
    assert decide(RULE, 500, 489, 0).action == "refuse"
    assert decide(RULE, 500, 500, 26).action == "refuse"  # anomaly rate 0.052


async def test_candidate_agreeing_promoted(tmp_path: Path):
    node = Node()
    store, svc = service(tmp_path / "gw.db", node)
    try:
        for w in range(100, 501, 100):
            svc.on_event(report(w, w - w // 100))  # 99 % agreement
        await settle(svc)
        assert node.calls == [("n1", "/9/1/10")]  # Activate the candidate's slot
        (c,) = svc.candidates("n1")
        assert c["state"] == "promoted" and c["windows"] == 500 and c["agree"] == 495
        assert "agreement 0.9900" in c["reason"]
    finally:
        store.close()


async def test_candidate_disagreeing_not_promoted(tmp_path: Path):
    node = Node()
    store, svc = service(tmp_path / "gw.db", node)
    try:
        for w in range(100, 601, 100):
            svc.on_event(report(w, w * 9 // 10))  # agrees on 90 % of the windows
        await settle(svc)
        assert node.calls == [("n1", "/9/1/6")]  # Uninstall: refused, never Activate
        (c,) = svc.candidates("n1")
        assert c["state"] == "refused" and "agreement 0.9000 (min 0.98)" in c["reason"]
    finally:
        store.close()


async def test_candidate_flagging_too_many_windows_not_promoted(tmp_path: Path):
    node = Node()
    store, svc = service(tmp_path / "gw.db", node)
    try:
        svc.on_event(report(500, 500, anomalies=60))
        await settle(svc)
        assert node.calls == [("n1", "/9/1/6")]
        assert "anomaly rate 0.1200" in svc.candidates()[0]["reason"]
    finally:
        store.close()


async def test_counts_durable_across_gateway_restart_and_node_reboot(tmp_path: Path):
    db = tmp_path / "gw.db"
    node = Node()
    store, svc = service(db, node)
    svc.on_event(report(300, 300))
    await settle(svc)
    store.close()
    store, svc = service(db, node)  # the gateway restarted
    try:
        assert svc.candidates("n1")[0]["windows"] == 300
        svc.on_event(report(100, 100))  # the node rebooted: its counters start from 0
        assert svc.candidates("n1")[0]["windows"] == 400
        assert node.calls == []
        svc.on_event(report(200, 200))
        await settle(svc)
        assert node.calls == [("n1", "/9/1/10")]
        assert svc.candidates("n1")[0]["windows"] == 500
    finally:
        store.close()


async def test_node_refusing_the_activate_is_recorded(tmp_path: Path):
    node = Node("4.05")
    store, svc = service(tmp_path / "gw.db", node)
    try:
        svc.on_event(report(500, 500))
        await settle(svc)
        c = svc.candidates("n1")[0]
        assert c["state"] == "refused" and "answered 4.05 to /9/1/10" in c["reason"]
    finally:
        store.close()


async def test_registry_keeps_every_model_version_with_its_card_signer_and_place(
        tmp_path: Path):
    node = Node()
    store, svc = service(tmp_path / "gw.db", node)
    try:
        signer = keys.generate("ed25519")
        payload = b"TFL3 candidate model" * 8
        sha = hashlib.sha256(payload).digest()
        data = image.build(payload, [signer], version=ImageVersion(1, 1, 0),
                           security_counter=7, payload_type="model", board="unix-sim",
                           model=ModelId("bearing-fault", "1.1.0", sha), feature_spec=1)
        iid = hashlib.sha256(data).hexdigest()
        (tmp_path / f"{iid}.img").write_bytes(data)
        store.ota.ota_put_image(OtaImageRow(iid, "1.1.0", "model", "unix-sim", 7,
                                            (signer.key_id.hex(),), len(data), 5.0))
        svc.on_event(report(10, 10, cand=sha[:8]))
        (v,) = svc.registry()
        assert (v["name"], v["version"], v["sha256"], v["feature_spec"]) == (
            "bearing-fault", "1.1.0", sha.hex(), 1)
        assert v["signers"] == [signer.key_id.hex()] and v["security_counter"] == 7
        assert v["runs"] == [{"endpoint": "n1", "slot": 1, "role": "candidate"}]
    finally:
        store.close()


async def test_rest_and_cli_show_the_candidates(tmp_path: Path, gateway_config,
                                                running_gateway):
    import json
    import subprocess
    import sys

    import aiohttp

    viewer = "viewer-token-0123456789"
    (tmp_path / "tokens").write_text(f"viewer {viewer} vera\n")
    (tmp_path / "tokens").chmod(0o600)
    cfg = gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                         "[models]\nmin_windows = 100\nact = false\n")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        gw.models.on_event(report(100, 50))
        headers = {"Authorization": f"Bearer {viewer}"}
        async with s.get(gw.rest.url + "/api/v1/ota/models/candidates?endpoint=n1",
                         headers=headers) as resp:
            assert resp.status == 200
            (c,) = (await resp.json())["candidates"]
        assert (c["state"], c["windows"], c["agreement"]) == ("refusing", 100, 0.5)
        async with s.get(gw.rest.url + "/api/v1/ota/models", headers=headers) as resp:
            assert resp.status == 200 and (await resp.json()) == {"models": []}
        p = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "aiotkit.tools.cli", "ota", "candidates",
                             "--url", gw.rest.url, "--token", viewer, "--json"],
            capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["candidates"][0]["reason"] == c["reason"]
