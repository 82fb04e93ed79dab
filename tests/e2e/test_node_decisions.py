"""End to end, on-node inference: four real MicroPython nodes replaying the four shipped
CWRU excerpts (normal, inner race, outer race, ball) run the shipped bearing classifier
and anomaly detector on every window; their decisions travel over LwM2M Send (object
33002) through the gateway to Mosquitto, and the gateway's shadow check (the same models
in tflite-micro, on the node's raw feature outputs) agrees with every one.

Also: a node refuses models that do not fit its configuration with one config-error line
(exit 2), and the shadow check flags a decision that the models do not give.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import aiocoap
import cbor2
import numpy as np
import pytest
from aiotkit.boards import paths
from aiotkit.models import inputq, tflm, tflmeta
from aiotkit.tools.sim import Fleet, FleetConfig
from plugins.services import ManagedProcess
from test_walking_skeleton import Subscriber

pytestmark = pytest.mark.e2e

EXPECTED = {"normal-97": "normal", "inner-105": "inner_race", "outer-130": "outer_race",
            "ball-118": "ball"}
DECISION = [f"/33002/0/{r}" for r in range(13)]
PATHS = ({"/3313/0/5702"} | {f"/33000/0/{r}" for r in range(12)}
         | {f"/33001/0/{i}" for i in range(20)} | set(DECISION))


def complete_reports(messages) -> dict[str, list[dict[str, object]]]:
    """{endpoint: [report {path: value}]} of the Sends whose readings all arrived."""
    sends: dict[tuple[str, int], dict[str, object]] = {}
    for topic, m in messages:
        if "/data/" in topic:
            sends.setdefault((m["ep"], m["send"]), {})[m["path"]] = (
                base64.b64decode(m["vd"]) if "vd" in m else m["v"])
    out: dict[str, list[dict[str, object]]] = {}
    for (ep, _), s in sorted(sends.items()):
        if set(s) == PATHS:
            out.setdefault(ep, []).append(s)
        else:
            assert set(s) < PATHS, sorted(set(s) - PATHS)  # incomplete, never foreign
    return out


def test_four_nodes_decide_on_real_recordings_and_the_gateway_agrees(
    tmp_path: Path, mosquitto, gateway_factory, processes, micropython
):
    gw = gateway_factory(mqtt=mosquitto)
    gw.start(processes)
    sub = Subscriber(mosquitto.host, mosquitto.port, "aiot/test/#")
    try:
        fleet = Fleet(FleetConfig(gateway=gw.uri, nodes=4, workdir=tmp_path / "nodes",
                                  report_ms=100), provision=gw.provision())
        fleet.prepare()
        signal_of = {}
        for node in fleet.nodes:
            argv, env = fleet.command(node)
            processes.append(ManagedProcess(node.endpoint, argv, cwd=node.workdir,
                                            env=env).start())
            signal_of[node.endpoint] = node.signal.stem
            cfg = json.loads((node.workdir / "config.json").read_text())
            assert cfg["model"] == "model.tflite" and cfg["anomaly"] == "anomaly.tflite"
        sub.wait(lambda ms: all(len(complete_reports(ms).get(ep, ())) >= 10
                                for ep in signal_of), 90, "10 decisions from each node")
        for ep, reports in complete_reports(sub.snapshot()).items():
            want = EXPECTED[signal_of[ep]]
            labels = [r["/33002/0/2"] for r in reports]
            anomalous = [r["/33002/0/5"] for r in reports]
            assert labels.count(want) >= 0.9 * len(labels), (ep, want, labels)
            if want == "normal":
                assert not any(anomalous), (ep, [r["/33002/0/4"] for r in reports])
            else:
                assert sum(anomalous) >= 0.9 * len(anomalous), (ep, anomalous)
            for r in reports:
                assert r["/33002/0/0"] == r["/33000/0/0"]  # the decision is this window's
                assert 0 < r["/33002/0/3"] <= 1 and r["/33002/0/6"] == 71045
                assert r["/33002/0/12"] in (0, 1)  # anomalous windows since the last report
                # the raw outputs are the reported features before scaling (float32)
                raw = np.frombuffer(r["/33002/0/9"], dtype="<i4")
                e = r["/33002/0/10"]
                assert len(raw) == 20 and isinstance(e, int)
                rms = np.ldexp(float(raw[1]), e - 15)  # rms: unit code, 15 fraction bits
                assert abs(rms - r["/33001/0/1"]) <= 1e-6 * rms
        # every decision replayed by the gateway through tflite-micro agrees
        for ep in signal_of:
            gw.proc.wait_for(rf"shadow check ep={ep} window=\d+: agrees: label", timeout=10)
        m = gw.proc.wait_for(r"shadow check: (\d+) decisions, (\d+) agree", timeout=60)
        assert m.group(1) == m.group(2) == "100", m.group(0)
        assert "DISAGREES" not in gw.proc.output
    finally:
        sub.close()


@pytest.mark.parametrize("setup, expect", [
    ({"window": 512, "hop": 512}, "trained on another feature spec ('window' differs"),
    ({"swap": True}, "is a classifier model, not anomaly"),
    ({"model": "missing.tflite"}, "'model' missing.tflite: cannot read the file"),
    ({"truncate": 3000}, "'model' model.tflite: "),
    ({"features": False}, "'model'/'anomaly' need the feature extractor"),
    ({"model_arena": 32}, "model.tflite: model needs an arena of 64 bytes, the limit is 32"),
])
def test_node_refuses_models_it_cannot_run_in_one_line(tmp_path, node_firmware, setup, expect):
    clf, ae = paths.shipped_models()
    shutil.copy(clf, tmp_path / "model.tflite")
    shutil.copy(clf if setup.get("swap") else ae, tmp_path / "anomaly.tflite")
    if "truncate" in setup:
        data = (tmp_path / "model.tflite").read_bytes()
        (tmp_path / "model.tflite").write_bytes(data[:setup["truncate"]])
    cfg = {"endpoint": "n1", "gateway": "coap://127.0.0.1:9", "model": "model.tflite",
           "anomaly": "anomaly.tflite",
           "signal": str(paths.replay_dir() / "inner-105.i16")}
    cfg.update({k: v for k, v in setup.items() if k not in ("swap", "truncate")})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = subprocess.run(node_firmware.argv(), cwd=tmp_path, env=node_firmware.env(),
                       capture_output=True, text=True, timeout=60, check=False)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(lines) == 1 and lines[0].startswith("aiot-node: config error: "), p.stdout
    assert expect in lines[0], lines[0]


async def test_gateway_flags_a_decision_the_models_do_not_give(tmp_path, gateway, micropython):
    """A node whose interpreter went wrong: the same Send with its label changed."""
    clf, _ = paths.shipped_models()
    data = clf.read_bytes()
    meta = tflmeta.aiot_model(data)
    feats = np.zeros((1, 20), dtype=np.int64)
    feats[0, 1] = 5000 << 15  # rms 0.3 g at E = -14: some decision
    y = tflm.run(data, inputq.quantize(feats, np.array([-14]), meta["inputs"]))[0]
    label = int(np.argmax(y))
    wrong = (label + 1) % 4

    async def main() -> list[str]:
        ctx = await aiocoap.Context.create_client_context()
        ctx.client_credentials = gateway.client_credentials("liar", tmp_path / "keys")
        try:
            reg = aiocoap.Message(code=aiocoap.POST, uri=f"{gateway.uri}/rd?ep=liar&lt=60",
                                  payload=b"</33002/0>")
            reg.opt.content_format = 40
            r = await ctx.request(reg).response
            assert r.code == aiocoap.CREATED
            codes = []
            for lab in (label, wrong):
                pack = [{-2: "/33002/0/", 0: "0", 2: 7}, {0: "1", 2: lab},
                        {0: "3", 2: (int(y[lab]) + 128) / 256},
                        {0: "7", 8: hashlib.sha256(data).digest()[:8]},
                        {0: "9", 8: feats.astype("<i4").tobytes()}, {0: "10", 2: -14}]
                send = aiocoap.Message(code=aiocoap.POST, uri=f"{gateway.uri}/dp",
                                       payload=cbor2.dumps(pack))
                send.opt.content_format = 112
                codes.append(str((await ctx.request(send).response).code))
            return codes
        finally:
            await ctx.shutdown()

    mark = gateway.proc.mark()
    assert await main() == ["2.04 Changed"] * 2
    gateway.proc.wait_for(r"shadow check ep=liar window=7: agrees", timeout=10, start=mark)
    m = gateway.proc.wait_for(r"shadow check ep=liar window=7: DISAGREES: label: node "
                              rf"{wrong} .*gateway {label}", timeout=10, start=mark)
    assert m.group(0)
