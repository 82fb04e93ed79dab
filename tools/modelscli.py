"""``aiot ota models`` and ``aiot ota candidates``: a gateway's model registry and its
candidate models under evaluation, through its REST API (``gateway/ota/models.py``;
``/api/v1/ota/models``).

``models``: every model version the gateway's image store holds (name, version, feature
spec, signer) and where it runs (node, /9 slot, active or candidate). ``candidates
[--endpoint EP]``: each candidate a node ran in shadow, its windows, agreement and
anomaly rate, and what the rule of ``[models]`` decided (promoted, refused) and why.
Options as ``aiot ota image``: ``--url``, ``--token``, ``--json``, ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from aiotkit.tools.lwm2mcli import Api, api_args, api_from, run_command
from aiotkit.tools.otaservicecli import _table, _when

PROG = "aiot ota"
MODELS = "/api/v1/ota/models"


def cmd_models(api: Api, args: argparse.Namespace) -> int:
    models = api.call("GET", MODELS).get("models", [])
    if args.json:
        print(json.dumps({"models": models}))
        return 0
    rows = [("NAME", "VERSION", "SPEC", "SHA256", "SIGNER", "UPLOADED", "RUNS ON")]
    for m in models:
        runs = ", ".join(f"{r['endpoint']} /9/{r['slot']} {r['role']}" if r["slot"] >= 0
                         else f"{r['endpoint']} config {r['role']}" for r in m["runs"])
        rows.append((m["name"], m["version"], str(m["feature_spec"]), m["sha256"][:16],
                     ",".join(s[:16] for s in m["signers"]), _when(m["uploaded"]),
                     runs or "-"))
    _table(rows)
    return 0


def cmd_candidates(api: Api, args: argparse.Namespace) -> int:
    query = "?" + urllib.parse.urlencode({"endpoint": args.endpoint}) if args.endpoint else ""
    cands = api.call("GET", MODELS + "/candidates" + query).get("candidates", [])
    if args.json:
        print(json.dumps({"candidates": cands}))
        return 0

    def share(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [("ENDPOINT", "MODEL", "SLOT", "WINDOWS", "AGREEMENT", "ANOMALY", "STATE",
             "REASON")]
    rows += [(c["endpoint"], c["model"], str(c["slot"]), str(c["windows"]),
              share(c["agreement"]), share(c["anomaly_rate"]), c["state"], c["reason"] or "")
             for c in cands]
    _table(rows)
    return 0


COMMANDS = {"models": cmd_models, "candidates": cmd_candidates}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``aiot ota models|candidates``; never raises for an expected failure."""
    return run_command(PROG, lambda: int(COMMANDS[args.ota_command](api_from(args, ""), args)))


def register(osub: Any) -> None:
    """Add ``models`` and ``candidates`` under ``aiot ota``."""
    common = api_args("API token (default $AIOT_TOKEN)")
    m = osub.add_parser("models", parents=[common], help="a gateway's model registry: every"
                        " model version, its signer and where it runs")
    m.set_defaults(func=run)
    c = osub.add_parser("candidates", parents=[common], help="candidate models on the nodes:"
                        " agreement, anomaly rate, promoted or refused and why")
    c.add_argument("--endpoint", metavar="EP", help="only this node's")
    c.set_defaults(func=run)
