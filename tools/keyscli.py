"""``aiot keys``: the nodes' OSCORE keys on a running gateway, through its REST API.

``aiot keys create ENDPOINT [--out DIR]`` makes a new security context for a node;
``list`` shows every context (never a secret); ``rotate ENDPOINT [--out DIR]`` gives it
new keys (the old ones stop working at once); ``revoke ENDPOINT`` ends it; ``export
ENDPOINT --out DIR`` fetches the node's side and writes it as aiocoap credentials
(``DIR/credentials.json`` and ``DIR/ENDPOINT/settings.json``: ``aiocoap-client
--credentials DIR/credentials.json coap://GATEWAY/...`` then acts as that node).
``create`` and ``rotate`` with ``--out`` export in the same go. ``genkey FILE`` writes a
new at-rest key for the gateway's ``[security] key_file`` (local, no gateway needed).
``import FILE...`` registers keys made offline (``aiot provision --offline`` saves one
mode-600 file per node): each file's context is created on the gateway with those keys,
then the file is deleted (``--keep`` keeps it); a file that fails is kept and named.

A node's keys leave the gateway **once** per creation or rotation: a second ``export``
fails (rotate to get new ones). So the target folder is checked before the export is
fetched, and nothing there is overwritten.

Same options as ``aiot lwm2m``: ``--url`` (or ``AIOT_URL``), ``--token`` (or
``AIOT_TOKEN``; the admin role is needed), ``--json``. Every failure is one line on
stderr: exit 2 for a usage mistake, 1 for what went wrong at the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiotkit.tools.lwm2mcli import DEFAULT_URL, Api, CliError, api_from, run_command

PROG = "aiot keys"
KEYS = "/api/v1/keys"


def _ep(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _out_folder(args: argparse.Namespace) -> Path | None:
    """``--out DIR``, checked before anything is asked of the gateway."""
    if args.out is None:
        return None
    from aiotkit.gateway.security.errors import KeyRequestError
    from aiotkit.gateway.security.export import check_target

    folder = Path(args.out)
    try:
        check_target(folder, args.endpoint)
    except KeyRequestError as e:
        raise CliError(f"--out: {e}", 2) from None
    return folder


def _export(api: Api, args: argparse.Namespace, folder: Path) -> int:
    from aiotkit.gateway.security.export import write_credentials

    body = api.call("POST", f"{KEYS}/{_ep(args.endpoint)}/export")
    if not isinstance(body, dict) or not isinstance(body.get("node"), dict):
        raise CliError("the gateway's export answer is not what this command expects")
    uri = args.gateway or body.get("gateway_uri") or ""
    if not uri.startswith("coap://"):
        raise CliError("the gateway did not say its CoAP URI; give --gateway coap://HOST:PORT")
    try:
        path = write_credentials(folder, body["node"], uri)
    except OSError as e:
        raise CliError(f"cannot write {folder}: {e.strerror or e}; the keys left the gateway"
                       f" and are lost: run 'aiot keys rotate {args.endpoint} --out DIR'"
                       ) from None
    if args.json:
        print(json.dumps({"credentials": str(path), "gateway_uri": uri,
                          "endpoint": args.endpoint}))
    else:
        print(f"{args.endpoint}: node keys written to {path} (for {uri}); keep it private,"
              " the gateway will not give them again")
    return 0


def _show(info: Any, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(info))
        return
    print(f"{info['endpoint']}: {info['state']}, node id {info['node_id']},"
          f" gateway id {info['gateway_id']}, generation {info['generation']}")


def cmd_create(api: Api, args: argparse.Namespace) -> int:
    folder = _out_folder(args)
    body: dict[str, Any] = {"endpoint": args.endpoint}
    if args.id_context is not None:
        body["id_context"] = args.id_context
    info = api.call("POST", KEYS, body)
    if folder is not None:
        return _export(api, args, folder)
    _show(info, args)
    if not args.json:
        print(f"export the node's side once: aiot keys export {args.endpoint} --out DIR")
    return 0


def cmd_rotate(api: Api, args: argparse.Namespace) -> int:
    folder = _out_folder(args)
    info = api.call("POST", f"{KEYS}/{_ep(args.endpoint)}/rotate")
    if folder is not None:
        return _export(api, args, folder)
    _show(info, args)
    return 0


def cmd_revoke(api: Api, args: argparse.Namespace) -> int:
    _show(api.call("POST", f"{KEYS}/{_ep(args.endpoint)}/revoke"), args)
    return 0


def cmd_export(api: Api, args: argparse.Namespace) -> int:
    folder = _out_folder(args)
    if folder is None:
        raise CliError("give --out DIR: where the node's credentials go", 2)
    return _export(api, args, folder)


def cmd_list(api: Api, args: argparse.Namespace) -> int:
    keys: list[dict[str, Any]] = []
    after = ""
    while True:
        page = api.call("GET", KEYS, query={"after": after} if after else None)
        keys += page.get("keys", [])
        after = page.get("next") or ""
        if not after:
            break
    if args.json:
        print(json.dumps({"keys": keys}))
        return 0
    rows = [("ENDPOINT", "STATE", "NODE-ID", "GEN", "CREATED", "ROTATED", "REVOKED")]
    rows += [(k["endpoint"], k["state"], k["node_id"], str(k["generation"]),
              _when(k["created"]), _when(k["rotated"]), _when(k["revoked"])) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_import(api: Api, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        path = Path(name)
        try:
            side = json.loads(path.read_text())
            endpoint = side["endpoint"]
            body = {"endpoint": endpoint, "import": {
                k: side[k] for k in ("sender_id", "recipient_id", "secret", "salt")}}
            if side.get("id_context"):
                body["id_context"] = side["id_context"]
        except OSError as e:
            failed += 1
            print(f"{path}: cannot read it: {e.strerror or e}")
            continue
        except (ValueError, KeyError, TypeError):
            failed += 1
            print(f"{path}: not a key file of aiot provision --offline (JSON with endpoint,"
                  " sender_id, recipient_id, secret, salt)")
            continue
        try:
            info = api.call("POST", KEYS, body)
        except CliError as e:
            if e.status == 2 or "cannot reach" in str(e):
                raise  # no token, bad URL, no gateway: the same for every file
            failed += 1
            print(f"{path}: {endpoint}: {e}")
            continue
        if not args.keep:
            path.unlink(missing_ok=True)
        kept = "kept" if args.keep else "deleted"
        print(f"{path}: {endpoint} imported (node id {info['node_id']}); file {kept}")
    if failed:
        raise CliError(f"{failed} of {len(args.files)} key files not imported (kept)")
    return 0


def cmd_genkey(args: argparse.Namespace) -> int:
    from aiotkit.gateway.security.atrest import generate_key_hex

    path = Path(args.file)
    if not path.parent.is_dir():
        raise CliError(f"folder {path.parent} does not exist", 2)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists already: a gateway's key is never overwritten", 2
                       ) from None
    with os.fdopen(fd, "w") as f:
        f.write(generate_key_hex() + "\n")
    print(f"at-rest key written to {path} (chmod 600); point [security] key_file at it and"
          " keep a copy apart from the database")
    return 0


COMMANDS = {
    "create": cmd_create,
    "list": cmd_list,
    "rotate": cmd_rotate,
    "revoke": cmd_revoke,
    "export": cmd_export,
    "import": cmd_import,
}


def run(args: argparse.Namespace) -> int:
    """Entry point from ``aiot keys``; never raises for an expected failure."""

    def call() -> int:
        if args.keys_command == "genkey":
            return cmd_genkey(args)
        api = api_from(args, " (an admin token)")
        if getattr(args, "id_context", None) is not None:
            try:
                bytes.fromhex(args.id_context)
            except ValueError:
                raise CliError(f"--id-context {args.id_context!r} is not hex", 2) from None
        return COMMANDS[args.keys_command](api, args)

    return run_command(PROG, call)


def register(subparsers: Any) -> None:
    """Add ``aiot keys ...`` to the aiot parser."""
    ks = subparsers.add_parser(
        "keys",
        help="create, list, rotate, revoke and export the nodes' OSCORE keys via a gateway",
        description="The nodes' OSCORE security contexts on a running gateway, through its "
        "REST API (admin token). A node's keys leave the gateway once per creation or "
        "rotation: 'export' (or 'create'/'rotate' with --out) writes them as aiocoap "
        "credentials, DIR/credentials.json and DIR/ENDPOINT/settings.json. The token comes "
        "from --token or AIOT_TOKEN, the URL from --url or AIOT_URL "
        f"(default {DEFAULT_URL}).",
    )
    for parser, default in ((ks, None), (common := argparse.ArgumentParser(add_help=False),
                                         argparse.SUPPRESS)):
        parser.add_argument("--url", metavar="URL", default=default,
                            help=f"REST API (default $AIOT_URL or {DEFAULT_URL})")
        parser.add_argument("--token", metavar="TOKEN", default=default,
                            help="admin API token (default $AIOT_TOKEN)")
        parser.add_argument("--json", action="store_true",
                            default=False if default is None else default,
                            help="print JSON")
        parser.add_argument("--timeout", type=float,
                            default=10.0 if default is None else default,
                            help="seconds to wait for the gateway (10)")
    sub = ks.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True

    def with_out(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--out", metavar="DIR", help=what)
        p.add_argument("--gateway", metavar="URI",
                       help="coap://HOST:PORT the node reaches the gateway at (default: the"
                       " gateway's own [coap] address)")

    cr = sub.add_parser("create", parents=[common], help="make a new context for a node")
    cr.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    cr.add_argument("--id-context", metavar="HEX", help="an OSCORE ID context (hex)")
    with_out(cr, "export the node's side into DIR at once")
    sub.add_parser("list", parents=[common], help="list the contexts (never a secret)")
    ro = sub.add_parser("rotate", parents=[common],
                        help="new keys for a node; the old ones stop working now")
    ro.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    with_out(ro, "export the node's new side into DIR at once")
    rv = sub.add_parser("revoke", parents=[common],
                        help="end a node's context; its keys are erased")
    rv.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    ex = sub.add_parser("export", parents=[common],
                        help="write a node's side as aiocoap credentials (once per key)")
    ex.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    with_out(ex, "folder for credentials.json and ENDPOINT/settings.json (required)")
    im = sub.add_parser("import", parents=[common],
                        help="register keys made by aiot provision --offline")
    im.add_argument("files", nargs="+", metavar="FILE",
                    help="key files (provision-keys/ENDPOINT.json)")
    im.add_argument("--keep", action="store_true",
                    help="keep each file after its import (default: delete it)")
    gk = sub.add_parser("genkey", help="write a new at-rest key file for [security] key_file")
    gk.add_argument("file", metavar="FILE", help="the key file to create (never overwritten)")
    ks.set_defaults(func=run)
