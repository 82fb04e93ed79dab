"""``aiot alerts list|show|ack``: a gateway's alerts through its REST API
(``gateway/analytics/alerts.py``; ``/api/v1/alerts``).

``list [--state open|active|acknowledged|cleared|all] [--ep EP] [--rule NAME]``,
``show ID`` (with its history), ``ack ID`` (an operator token). Same options as ``aiot
keys``: ``--url`` (or ``AIOT_URL``), ``--token`` (or ``AIOT_TOKEN``), ``--json``. Every
failure is one line on stderr: exit 2 for a usage mistake, 1 for what went wrong at the
gateway (an unknown alert, one acknowledged already).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aiotkit.tools.lwm2mcli import Api, api_args, api_from, run_command

PROG = "aiot alerts"
ALERTS = "/api/v1/alerts"


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _line(a: dict[str, Any]) -> str:
    return (f"{a['id']:>6}  {a['state']:<12}  {a['severity']:<8}  {a['endpoint']}  "
            f"{a['rule']} ({a['kind']})  raised {_when(a['raised_at'])}"
            + (f", acknowledged by {a['acked_by']}" if a.get("acked_by") else "")
            + (f", cleared {_when(a['cleared_at'])}" if a.get("cleared_at") else ""))


def cmd_list(api: Api, args: argparse.Namespace) -> int:
    query = {"state": args.state, "limit": str(args.limit)}
    if args.ep:
        query["ep"] = args.ep
    if args.rule:
        query["rule"] = args.rule
    body = api.call("GET", ALERTS, query=query)
    if args.json:
        print(json.dumps(body, indent=1))
    else:
        for a in body["alerts"]:
            print(_line(a))
    return 0


def cmd_show(api: Api, args: argparse.Namespace) -> int:
    body = api.call("GET", f"{ALERTS}/{args.id}")
    if args.json:
        print(json.dumps(body, indent=1))
        return 0
    print(_line(body))
    print(f"        detail {json.dumps(body['detail'])}")
    for h in body.get("history", []):
        who = f" by {h['actor']}" if h.get("actor") else ""
        print(f"        {_when(h['at'])}  {h['event']}{who}")
    return 0


def cmd_ack(api: Api, args: argparse.Namespace) -> int:
    body = api.call("POST", f"{ALERTS}/{args.id}/ack")
    print(json.dumps(body, indent=1) if args.json else _line(body))
    return 0


COMMANDS = {"list": cmd_list, "show": cmd_show, "ack": cmd_ack}


def run(args: argparse.Namespace) -> int:
    return run_command(PROG, lambda: COMMANDS[args.alerts_action](api_from(args), args))


def register(subparsers: Any) -> None:
    """Add ``aiot alerts ...`` to the aiot parser."""
    common = api_args("API token (default $AIOT_TOKEN; operator to acknowledge)")
    al = subparsers.add_parser(
        "alerts", help="a gateway's alerts: list, show, ack",
        description="Alerts a running gateway raised by its [alerts] rules (REST API).")
    sub = al.add_subparsers(dest="alerts_action", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", parents=[common], help="alerts, newest first")
    ls.add_argument("--state", default="open",
                    choices=["open", "active", "acknowledged", "cleared", "all"],
                    help="open (default): active and acknowledged")
    ls.add_argument("--ep", help="one node")
    ls.add_argument("--rule", help="one rule")
    ls.add_argument("--limit", type=int, default=100, help="at most (100)")
    for name, what in (("show", "one alert and its history"),
                       ("ack", "acknowledge an active alert")):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("id", type=int, metavar="ID")
    al.set_defaults(func=run)
