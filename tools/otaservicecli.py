"""``aiot ota image ...`` and ``aiot ota campaign ...``: a gateway's OTA service through
its REST API (``gateway/ota``; ``/api/v1/ota``).

``image upload FILE --board B [--payload-type T]`` sends a signed image; the gateway
verifies it against its trust set and keeps it, or refuses it with the verifier's reason
(exit 1). ``image list``. ``campaign create --image SHA256 ...`` makes a campaign
(``--start`` starts it), ``campaign list|show|start|pause|resume|abort``.

Same options as ``aiot keys``: ``--url`` (or ``AIOT_URL``), ``--token`` (or
``AIOT_TOKEN``; admin to change anything, viewer to look), ``--json``. Every failure is
one line on stderr: exit 2 for a usage mistake, 1 for what went wrong at the gateway.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiotkit.tools.lwm2mcli import Api, CliError, api_args, api_from, run_command

PROG = "aiot ota"
IMAGES = "/api/v1/ota/images"
CAMPAIGNS = "/api/v1/ota/campaigns"


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _upload(api: Api, data: bytes, query: dict[str, str]) -> Any:
    """POST the image as the raw body (``Api.call`` sends JSON only)."""
    url = api.base + IMAGES + "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Authorization", f"Bearer {api.token}")
    req.add_header("Content-Type", "application/octet-stream")
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=api.timeout + 5) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"{}")
        except (json.JSONDecodeError, OSError):
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        if e.code in (401, 403):
            raise CliError(f"the gateway refused: {message or e.reason}") from None
        raise CliError(message or f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"cannot reach the gateway's REST API at {api.base}: {reason}"
                       " (is the gateway running with [rest] enabled?)") from None
    except json.JSONDecodeError:
        raise CliError(f"{api.base} answered something that is not JSON") from None


def _show_image(img: dict[str, Any]) -> None:
    print(f"{img['id']}  {img['payload_type']} {img['version']} for {img['board']},"
          f" security counter {img['security_counter']}, {img['size']} bytes")


def cmd_image_upload(api: Api, args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise CliError(f"{args.file}: {e.strerror or e}", 2) from None
    img = _upload(api, data, {"board": args.board, "payload_type": args.payload_type})
    if args.json:
        print(json.dumps(img))
    else:
        _show_image(img)
    return 0


def cmd_image_list(api: Api, args: argparse.Namespace) -> int:
    images = api.call("GET", IMAGES).get("images", [])
    if args.json:
        print(json.dumps({"images": images}))
        return 0
    rows = [("SHA256", "TYPE", "VERSION", "BOARD", "SEC", "SIZE", "UPLOADED")]
    rows += [(i["id"][:16], i["payload_type"], i["version"], i["board"],
              str(i["security_counter"]), str(i["size"]), _when(i["uploaded"]))
             for i in images]
    _table(rows)
    return 0


def _waves(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def cmd_campaign_create(api: Api, args: argparse.Namespace) -> int:
    target: dict[str, Any] = {k: getattr(args, k) for k in ("board", "firmware", "model",
                                                             "tag")
                              if getattr(args, k) is not None}
    if args.endpoint:
        target["endpoints"] = args.endpoint
    body: dict[str, Any] = {"image": args.image, "target": target,
                            "waves": _waves(args.waves),
                            "max_failure_ratio": args.max_failure_ratio,
                            "report_timeout_s": args.report_timeout, "start": args.start}
    if args.name:
        body["name"] = args.name
    if args.nodes:
        try:
            body["nodes"] = json.loads(Path(args.nodes).read_text())
        except (OSError, ValueError) as e:
            raise CliError(f"--nodes {args.nodes}: {e}", 2) from None
    _show(api.call("POST", CAMPAIGNS, body), args)
    return 0


def _show(c: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(c))
        return
    print(f"campaign {c['id']} {c['name']!r}: {c['state']}, wave {c['wave']} of"
          f" {len(c.get('waves_progress', [])) or '?'}, image {c['image'][:16]},"
          f" max failure ratio {c['max_failure_ratio']:g},"
          f" report timeout {c['report_timeout_s']:g} s"
          + (f"\n  reason: {c['reason']}" if c.get("reason") else ""))
    waves = c.get("waves_progress")
    if waves:
        rows: list[tuple[str, ...]] = [("WAVE", "SIZE", "STATUS", "PENDING", "OFFERED", "UPDATING", "OK", "FAILED",
                 "TIMED-OUT")]
        rows += [(str(w["wave"]), str(w["size"]), w["status"], str(w["pending"]),
                  str(w["offered"]), str(w["updating"]), str(w["succeeded"]),
                  str(w["failed"]), str(w["timed_out"])) for w in waves]
        _table(rows)
    if getattr(args, "nodes_shown", False) and c.get("nodes"):
        nrows: list[tuple[str, ...]] = [("ENDPOINT", "WAVE", "STATE", "OFFERED", "HEARD",
                                         "REASON")]
        nrows += [(n["endpoint"], str(n["wave"]), n["state"], _when(n["offered"]),
                   _when(n["heard"]), n["reason"] or "") for n in c["nodes"]]
        _table(nrows)


def cmd_campaign_list(api: Api, args: argparse.Namespace) -> int:
    campaigns = api.call("GET", CAMPAIGNS).get("campaigns", [])
    if args.json:
        print(json.dumps({"campaigns": campaigns}))
        return 0
    rows = [("ID", "NAME", "STATE", "WAVE", "IMAGE", "UPDATED", "REASON")]
    rows += [(str(c["id"]), c["name"], c["state"], str(c["wave"]), c["image"][:16],
              _when(c["updated"]), c["reason"] or "") for c in campaigns]
    _table(rows)
    return 0


def cmd_campaign_show(api: Api, args: argparse.Namespace) -> int:
    args.nodes_shown = True
    _show(api.call("GET", f"{CAMPAIGNS}/{args.id}"), args)
    return 0


def _action(name: str) -> Any:
    def cmd(api: Api, args: argparse.Namespace) -> int:
        body = {"reason": args.reason} if getattr(args, "reason", None) else None
        _show(api.call("POST", f"{CAMPAIGNS}/{args.id}/{name}", body), args)
        return 0

    return cmd


COMMANDS = {
    ("image", "upload"): cmd_image_upload,
    ("image", "list"): cmd_image_list,
    ("campaign", "create"): cmd_campaign_create,
    ("campaign", "list"): cmd_campaign_list,
    ("campaign", "show"): cmd_campaign_show,
    **{("campaign", a): _action(a) for a in ("start", "pause", "resume", "abort")},
}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``aiot ota image|campaign``; never raises for an expected failure."""

    def call() -> int:
        api = api_from(args, " (an admin token to change anything)")
        return int(COMMANDS[(args.ota_command, args.ota_action)](api, args))

    return run_command(PROG, call)


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError("from 0 up to (not including) 1")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be over 0")
    return v


def register(osub: Any) -> None:
    """Add ``image`` and ``campaign`` under ``aiot ota``."""
    common = api_args("API token (default $AIOT_TOKEN; admin to change anything)")

    im = osub.add_parser(
        "image", help="a gateway's OTA images: upload (verified there), list",
        description="Signed images on a running gateway (REST API). An upload is verified "
        "against the gateway's trust set ([ota] trust_file) and the board's slot; a refused "
        "image is not kept and the reason is printed (exit 1).")
    isub = im.add_subparsers(dest="ota_action", metavar="ACTION")
    isub.required = True
    up = isub.add_parser("upload", parents=[common], help="send a signed image")
    up.add_argument("file", metavar="IMAGE")
    up.add_argument("--board", required=True, help="the board the image must be for")
    up.add_argument("--payload-type", default="app", choices=["app", "model", "gateway"],
                    help="what the image carries (app)")
    isub.add_parser("list", parents=[common], help="the images the gateway keeps")
    im.set_defaults(func=run)

    ca = osub.add_parser(
        "campaign", help="a gateway's OTA campaigns: create, list, show, start, pause, "
        "resume, abort",
        description="Campaigns roll an uploaded image out in waves: a canary (N nodes or "
        "P%), then cumulative percentages; a wave starts when the one before ended within "
        "--max-failure-ratio, and a campaign past it aborts itself. A node silent for "
        "--report-timeout seconds has failed.")
    csub = ca.add_subparsers(dest="ota_action", metavar="ACTION")
    csub.required = True
    cr = csub.add_parser("create", parents=[common], help="make a campaign (a draft)")
    cr.add_argument("--image", required=True, metavar="SHA256", help="an uploaded image")
    cr.add_argument("--name", help="a name (default: payload type and version)")
    cr.add_argument("--board", help="target board (default: the image's)")
    cr.add_argument("--firmware", help="only nodes running this firmware version")
    cr.add_argument("--model", help="only nodes with this model version")
    cr.add_argument("--tag", help="only nodes with this tag")
    cr.add_argument("--endpoint", action="append", metavar="EP",
                    help="only these nodes (repeat)")
    cr.add_argument("--nodes", metavar="FILE.json",
                    help="inventory to select from: [{endpoint, board, firmware, model, "
                    "tags}] (default: the registered endpoints)")
    cr.add_argument("--waves", default="1,100%",
                    help="canary N or P%%, then P%%, comma-separated (default 1,100%%)")
    cr.add_argument("--max-failure-ratio", type=_ratio, default=0.0, metavar="R",
                    help="abort when a wave's failed share passes R (0)")
    cr.add_argument("--report-timeout", type=_seconds, default=3600.0, metavar="S",
                    help="a node silent this long has failed (3600)")
    cr.add_argument("--start", action="store_true", help="start it at once")
    csub.add_parser("list", parents=[common], help="every campaign")
    for name, what in (("show", "one campaign, per wave and per node"),
                       ("start", "start a draft"), ("pause", "stop offering"),
                       ("resume", "carry on"), ("abort", "stop for good")):
        p = csub.add_parser(name, parents=[common], help=what)
        p.add_argument("id", type=int, metavar="ID")
        if name == "abort":
            p.add_argument("--reason", help="recorded with the campaign")
    ca.set_defaults(func=run)
