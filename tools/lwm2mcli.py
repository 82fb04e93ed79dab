"""``aiot lwm2m``: the operator's view of a running gateway, through its REST API.

``aiot lwm2m list`` lists the endpoints (state, when last heard from); ``readings
ENDPOINT`` shows the latest value of every path it reported;
``read|write|exec|observe|discover|delete|cancel|attributes ENDPOINT PATH`` and ``create
ENDPOINT OBJECT [RES=VALUE ...]`` run one device-management operation, as the REST API
does. Output is a table (path in numeric order, the resource's name and units from the
DDF definitions, value), or the API's JSON with ``--json``; a CoAP code is shown with its
name (``4.04 Not Found``). ``observe`` prints each Notification of its observation as it
arrives until Ctrl-C or ``--count N`` (and cancels the observation on the way out unless
``--keep``); the node's Sends of the same paths are not Notifications, and are shown,
labelled ``send`` and not counted, only with ``--sends``. ``read`` and ``observe`` take
``--format NAME`` (``senml-json``, ``tlv``...: the names of ``codecs.NAMES``) to ask the
node for that Content-Format instead of the one the gateway negotiates from its
registration.

Every failure is one line on stderr and a non-zero exit: 1 for what went wrong at the
gateway or the node (gateway not running, bad token, unknown endpoint, node timeout, a
CoAP error from the node), 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiotkit.boards.errors import AiotError
from aiotkit.gateway.lwm2m import codecs, linkformat
from aiotkit.gateway.lwm2m.ddf import ObjectDef, resource_def
from aiotkit.gateway.lwm2m.paths import PathError, format_path, parse_path

DEFAULT_URL = "http://127.0.0.1:8080"
PROG = "aiot lwm2m"


class CliError(AiotError):
    """A failure shown as one line; ``status`` is the exit code (2: a usage mistake)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = self.exit_status = status


class Api:
    """A tiny client of the gateway's REST API (stdlib only)."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(f"--url {url!r} is not an http://HOST:PORT URL", 2)
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None, stream: bool = False) -> Any:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        # the HTTP wait covers the node's own timeout plus a margin
        wait = None if stream else self.timeout + 5
        try:
            resp = urllib.request.urlopen(req, timeout=wait)
        except urllib.error.HTTPError as e:
            raise CliError(_http_error(e)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the gateway's REST API at {self.base}: {reason}"
                           " (is the gateway running with [rest] enabled?)") from None
        if stream:
            return resp
        with resp:
            raw = resp.read()
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise CliError(f"{self.base} answered something that is not JSON;"
                           " is --url the gateway's REST API?") from None


def _http_error(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    coap = body.get("coap") if isinstance(body, dict) else None
    if e.code == 401:
        return f"the gateway refused the token: {message or 'unauthorized'} (--token/AIOT_TOKEN)"
    if e.code == 403:
        return f"not allowed: {message or 'forbidden'}"
    if e.code == 504:
        return f"node timeout: {message or 'the node did not answer'}"
    text = message or e.reason or f"HTTP {e.code}"
    if isinstance(coap, str) and coap:
        named = coap_text(coap)
        if coap not in text:
            text = f"{text} (CoAP {named})"
        elif named not in text:
            text = text.replace(coap, named, 1)
    return text


def coap_text(code: str) -> str:
    """A CoAP code as ``"4.04 Not Found"``: with aiocoap's name of it, when it has one."""
    try:
        from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

        cls, _, detail = code.partition(".")
        name = Code((int(cls) << 5) | int(detail)).name_printable
    except (ImportError, ValueError):
        return code
    return code if not name or "Unknown" in name else f"{code} {name}"


# -- presentation ------------------------------------------------------------------------


class Names:
    """Resource names and units from the shipped DDF definitions."""

    def __init__(self) -> None:
        try:
            from aiotkit.gateway.lwm2m.ddf import load_shipped

            self._objects: Mapping[int, ObjectDef] = load_shipped()
        except Exception:  # noqa: BLE001 - names are a nicety; never fail a command on them
            self._objects = {}

    def describe(self, path: str) -> tuple[str, str]:
        ids = _ids(path)
        obj = self._objects.get(ids[0]) if ids else None
        if obj is None:
            return "", ""
        if len(ids) < 3:
            return obj.name, ""
        res = resource_def(self._objects, ids)
        return (res.name, res.units) if res else ("", "")

    def type_of(self, path: str) -> str | None:
        res = resource_def(self._objects, _ids(path))
        return res.type if res else None


def _ids(path: str) -> tuple[int, ...]:
    """The ids of an LwM2M path, () for anything that is not one."""
    try:
        return parse_path(path)
    except PathError:
        return ()


def show_value(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"base64"}:
        raw = base64.b64decode(value["base64"])
        return "0x" + raw.hex() if len(raw) <= 32 else f"0x{raw[:32].hex()}... ({len(raw)} B)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def records_of(result: Any) -> list[tuple[str, Any]]:
    """(path, value) pairs of a result, whatever shape the API used."""
    if not isinstance(result, dict):
        return []
    for key in ("records", "values", "readings"):
        items = result.get(key)
        if isinstance(items, list):
            return [(str(r.get("path", "")), r.get("value", r.get("v")))
                    for r in items if isinstance(r, dict)]
        if isinstance(items, dict):
            return [(str(p), v) for p, v in items.items()]
    if "value" in result and "path" in result:
        return [(str(result["path"]), result["value"])]
    return []


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def path_order(path: str) -> tuple[int, tuple[int, ...], str]:
    """Sort key of a path: numeric (``/3/0/2`` before ``/3/0/10``); non-paths last."""
    ids = _ids(path)
    return (0, ids, "") if ids or path == "/" else (1, (), path)


def value_table(pairs: list[tuple[str, Any]], names: Names) -> str:
    rows = []
    for path, value in sorted(pairs, key=lambda pv: path_order(pv[0])):
        name, units = names.describe(path)
        rows.append([path, name, show_value(value), units])
    return table(rows, ["PATH", "NAME", "VALUE", "UNITS"])


# -- commands ----------------------------------------------------------------------------


def _ep(endpoint: str) -> str:
    return urllib.parse.quote(endpoint, safe="")


def _lwm2m_path(path: str) -> str:
    try:
        ids = parse_path(path if path.startswith("/") else "/" + path)
    except PathError:
        raise CliError(f"{path!r} is not an LwM2M path like /3/0/0", 2) from None
    return format_path(ids) if ids else ""


def cmd_list(api: Api, args: argparse.Namespace) -> int:
    result: dict[str, Any] = {"endpoints": [], "next": None}
    query: dict[str, str] = {}
    while True:  # every page: the API hands out the fleet in pages by endpoint name
        page = api.call("GET", "/api/v1/endpoints", query=query)
        result["endpoints"] += page.get("endpoints", [])
        if not page.get("next"):
            break
        query = {"after": page["next"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    now = time.time()
    rows = [[e["endpoint"], e["state"], _ago(e.get("last_seen"), now),
             e.get("address") or "", str(e.get("lifetime", "")), e.get("binding") or "",
             str(e.get("readings", ""))]
            for e in result.get("endpoints", [])]
    if not rows:
        print("no endpoints")
        return 0
    print(table(rows, ["ENDPOINT", "STATE", "LAST-SEEN", "ADDRESS", "LIFETIME", "BINDING",
                       "READINGS"]))
    return 0


def _ago(t: Any, now: float) -> str:
    """How long ago ``t`` (epoch seconds) was: ``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "never"
    age = max(0, int(now - t))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= span:
            return f"{age // span}{unit} ago"
    return f"{age}s ago"


def cmd_readings(api: Api, args: argparse.Namespace) -> int:
    query = {"path": _lwm2m_path(args.path)} if args.path else None
    result = api.call("GET", f"/api/v1/endpoints/{_ep(args.endpoint)}/readings", query=query)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pairs = records_of(result)
    print(value_table(pairs, args.names) if pairs else f"no readings from {args.endpoint}")
    return 0


def _print_result(result: Any, args: argparse.Namespace, what: str) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if isinstance(result, dict) and result.get("queued"):
        print(f"{what} queued for {args.endpoint} (request {result.get('request', '?')}):"
              " delivered when the node wakes")
        return 0
    pairs = records_of(result)
    if pairs:
        print(value_table(pairs, args.names))
    else:
        code = result.get("code", "") if isinstance(result, dict) else ""
        location = result.get("location") if isinstance(result, dict) else None
        text = coap_text(code) if isinstance(code, str) and code else "done"
        if location:
            text += f", new instance {location}"
        print(f"{what} {args.endpoint} {args.path}: {text}")
    return 0


def _query(args: argparse.Namespace) -> dict[str, str]:
    """``timeout``, and ``format`` when ``--format`` was given."""
    query = {"timeout": str(args.timeout)}
    if getattr(args, "format", None) is not None:
        query["format"] = args.format
    return query


def cmd_read(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    result = api.call("GET", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}",
                      query=_query(args))
    return _print_result(result, args, "read")


def _typed(text: str, rtype: str | None) -> Any:
    """A command-line value as the JSON value the resource's DDF type wants."""
    try:
        if rtype in ("integer", "unsigned", "time"):
            return int(text, 0)
        if rtype == "float":
            return float(text)
    except ValueError:
        raise CliError(f"{text!r} is not a valid {rtype} value", 2) from None
    if rtype == "boolean":
        low = text.lower()
        if low not in ("true", "false", "1", "0"):
            raise CliError(f"{text!r} is not a boolean (true/false)", 2)
        return low in ("true", "1")
    if rtype == "opaque":
        hexdigits = text.removeprefix("0x")
        try:
            return {"base64": base64.b64encode(bytes.fromhex(hexdigits)).decode()}
        except ValueError:
            raise CliError(f"{text!r} is not hex bytes (opaque)", 2) from None
    return text


def cmd_write(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    value = _typed(args.value, args.names.type_of(path))
    query = {"timeout": str(args.timeout)}
    if args.update:
        query["mode"] = "update"
    result = api.call("PUT", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}",
                      body={"value": value}, query=query)
    return _print_result(result, args, "write")


def cmd_exec(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    body = {"args": args.args} if args.args is not None else {}
    result = api.call("POST", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}/execute",
                      body=body, query={"timeout": str(args.timeout)})
    return _print_result(result, args, "execute")


def cmd_discover(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    result = api.call("GET", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}/discover",
                      query={"timeout": str(args.timeout)})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    links = result.get("links") if isinstance(result, dict) else None
    if not isinstance(links, str):
        return _print_result(result, args, "discover")
    rows = []
    for lpath, attrs in linkformat.links(links):
        name, units = args.names.describe(lpath)
        rows.append([lpath, name, ";".join(attrs), units])
    print(table(rows, ["PATH", "NAME", "ATTRIBUTES", "UNITS"]))
    return 0


def cmd_create(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    ids = _ids(path)
    if len(ids) != 1:
        raise CliError(f"create takes an object id like 3303 (got {args.path!r})", 2)
    values: dict[str, Any] = {}
    for item in args.values:
        rid, sep, text = item.partition("=")
        if not sep or not rid.isdigit():
            raise CliError(f"{item!r} is not RES=VALUE (a resource id, e.g. 5750=kitchen)", 2)
        instance = args.instance if args.instance is not None else 0
        values[str(int(rid))] = _typed(text, args.names.type_of(f"{path}/{instance}/{rid}"))
    body: dict[str, Any] = {"values": values}
    if args.instance is not None:
        body["instance"] = args.instance
    result = api.call("POST", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}",
                      body=body, query={"timeout": str(args.timeout)})
    return _print_result(result, args, "create")


def cmd_delete(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    if len(_ids(path)) != 2:
        raise CliError(f"delete takes an object instance like /3303/1 (got {args.path!r})", 2)
    result = api.call("DELETE", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}",
                      query={"timeout": str(args.timeout)})
    return _print_result(result, args, "delete")


ATTRIBUTE_TYPES: dict[str, type] = {"pmin": int, "pmax": int, "gt": float, "lt": float,
                                    "st": float, "epmin": int, "epmax": int}


def cmd_attributes(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    body: dict[str, Any] = {name: getattr(args, name) for name in ATTRIBUTE_TYPES
                            if getattr(args, name) is not None}
    if args.unset:
        body["unset"] = args.unset
    if not body:
        raise CliError("give at least one attribute (--pmin N, --pmax N, --gt X ...)"
                       " or --unset NAME", 2)
    result = api.call("PUT", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}/attributes",
                      body=body, query={"timeout": str(args.timeout)})
    return _print_result(result, args, "attributes")


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    path = _lwm2m_path(args.path)
    result = api.call("DELETE", f"/api/v1/endpoints/{_ep(args.endpoint)}/lwm2m{path}/observe",
                      query={"timeout": str(args.timeout)})
    return _print_result(result, args, "cancel")


def _lines(resp: Any) -> Iterator[dict[str, Any]]:
    with resp:
        for raw in resp:
            line = raw.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def cmd_observe(api: Api, args: argparse.Namespace) -> int:
    """Observe PATH and print what the node reports under it. The first report is the
    value the Observe answer carried (RFC 7641: it counts as a notification)."""
    path = _lwm2m_path(args.path)
    ep = _ep(args.endpoint)
    if args.count is not None and args.count < 1:
        raise CliError("--count must be 1 or more", 2)
    # Follow first, so no report between the Observe and the stream is missed. Only
    # this observation's Notifications count; the node's Sends of the same paths are
    # another stream, shown (labelled "send") with --sends.
    query = {"path": path or "/"}
    if not args.sends:
        query["kind"] = "notify"
    stream = api.call("GET", f"/api/v1/endpoints/{ep}/notifications", query=query,
                      stream=True)
    observed = False
    try:
        first = api.call("POST", f"/api/v1/endpoints/{ep}/lwm2m{path}/observe",
                         query=_query(args))
        observed = True
        obs_id = first.get("observation_id") if isinstance(first, dict) else None
        if args.json:
            print(json.dumps(first), flush=True)
        else:
            print(f"observing {args.endpoint} {path or '/'} (Ctrl-C to stop)", flush=True)
        seen = 0
        for note in _lines(stream):
            if note.get("event") == "gone":
                raise CliError(f"{args.endpoint} is no longer registered ({note.get('state')})")
            kind = note.get("kind", "notify")
            if kind == "notify" and obs_id is not None \
                    and note.get("observation", obs_id) != obs_id:
                continue  # another observation under the same path
            if args.json:
                print(json.dumps(note), flush=True)
            else:
                label = "  send" if kind == "send" else ""
                for p, v in records_of(note):
                    name, units = args.names.describe(p)
                    print(f"{_clock(note.get('t'))}{label}  {p}  {name}  {show_value(v)}"
                          f"{' ' + units if units else ''}", flush=True)
            if kind == "notify":
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
        raise CliError("the gateway closed the notification stream")
    finally:
        stream.close()
        if observed and not args.keep:
            try:
                api.call("DELETE", f"/api/v1/endpoints/{ep}/lwm2m{path}/observe",
                         query={"timeout": str(args.timeout)})
            except CliError as e:
                print(f"{PROG}: warning: cancelling the observation failed: {e}",
                      file=sys.stderr)


def _clock(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(t))


COMMANDS = {
    "list": cmd_list,
    "read": cmd_read,
    "write": cmd_write,
    "exec": cmd_exec,
    "observe": cmd_observe,
    "discover": cmd_discover,
    "readings": cmd_readings,
    "create": cmd_create,
    "delete": cmd_delete,
    "attributes": cmd_attributes,
    "cancel": cmd_cancel,
}


def run(args: argparse.Namespace) -> int:
    """Entry point from ``aiot lwm2m``; never raises for an expected failure."""

    def call() -> int:
        api = api_from(args)
        args.names = Names()
        return COMMANDS[args.lwm2m_command](api, args)

    return run_command(PROG, call)


def api_args(token_help: str = "API token (default $AIOT_TOKEN)") -> argparse.ArgumentParser:
    """A parent parser with the REST client's options: --url, --token (``token_help``:
    which role it needs), --json, --timeout (read by ``api_from``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", metavar="URL",
                        help=f"REST API (default $AIOT_URL or {DEFAULT_URL})")
    common.add_argument("--token", metavar="TOKEN", help=token_help)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the gateway (10)")
    return common


def api_from(args: argparse.Namespace, role: str = "") -> Api:
    """The REST client of ``--url`` / ``AIOT_URL`` and ``--token`` / ``AIOT_TOKEN``
    (``role``: the role to name when the token is missing)."""
    token = args.token or os.environ.get("AIOT_TOKEN", "")
    if not token:
        raise CliError(f"no token: give --token or set AIOT_TOKEN{role}", 2)
    url = args.url or os.environ.get("AIOT_URL") or DEFAULT_URL
    return Api(url, token, args.timeout)


def run_command(prog: str, call: Callable[[], int]) -> int:
    """``call()``'s exit status; a ``CliError`` is one line on stderr (its status), an
    interrupt 130, a closed pipe 1. The ``aiot lwm2m`` and ``aiot keys`` entry points."""
    try:
        return call()
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def register(subparsers: Any) -> None:
    """Add ``aiot lwm2m ...`` to the aiot parser."""
    lw = subparsers.add_parser(
        "lwm2m",
        help="read, write, execute, observe and discover node resources via a gateway",
        description="Device management through a running gateway's REST API ([rest] in its "
        "config). The token comes from --token or AIOT_TOKEN, the URL from --url or AIOT_URL "
        f"(default {DEFAULT_URL}).",
    )
    # The options go before or after ACTION; after it they win (SUPPRESS: no default there
    # that would overwrite one given before).
    for parser, default in ((lw, None), (common := argparse.ArgumentParser(add_help=False),
                                         argparse.SUPPRESS)):
        parser.add_argument("--url", metavar="URL", default=default,
                            help=f"REST API (default $AIOT_URL or {DEFAULT_URL})")
        parser.add_argument("--token", metavar="TOKEN", default=default,
                            help="API token (default $AIOT_TOKEN)")
        parser.add_argument("--json", action="store_true",
                            default=False if default is None else default,
                            help="print the API's JSON")
        parser.add_argument("--timeout", type=_timeout,
                            default=10.0 if default is None else default,
                            help="seconds to wait for the node (10)")
    sub = lw.add_subparsers(dest="lwm2m_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", parents=[common], help="list the endpoints the gateway knows")

    def op(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
        p.add_argument("path", metavar="PATH", help="LwM2M path: /O, /O/I, /O/I/R or /O/I/R/RI")
        return p

    def with_format(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=list(codecs.NAMES), metavar="FORMAT",
                       help="Content-Format to ask the node for (default: one it listed"
                       " when it registered; else TLV for LwM2M 1.0, SenML-CBOR for 1.1):"
                       f" {', '.join(codecs.NAMES)}")

    with_format(op("read", "read an object, instance or resource"))
    w = op("write", "write a resource (typed by its DDF definition)")
    w.add_argument("value", metavar="VALUE", help="the new value (hex for opaque)")
    w.add_argument("--update", action="store_true", help="partial update instead of replace")
    e = op("exec", "execute a resource")
    e.add_argument("args", nargs="?", metavar="ARGS", help="execute arguments, e.g. 0='x'")
    ob = op("observe", "observe and print notifications until Ctrl-C")
    ob.add_argument("--count", type=int, metavar="N",
                    help="stop after N notifications (the first is the current value)")
    ob.add_argument("--keep", action="store_true", help="leave the observation on at exit")
    ob.add_argument("--sends", action="store_true",
                    help="also show the node's Sends of PATH, labelled 'send' (not counted)")
    with_format(ob)
    op("discover", "list the resources and attributes under PATH")
    rd = sub.add_parser("readings", parents=[common],
                        help="the latest value of every path the node reported")
    rd.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    rd.add_argument("path", metavar="PATH", nargs="?", help="only those under PATH")
    cr = sub.add_parser("create", parents=[common],
                        help="create an object instance (values typed by the DDF)")
    cr.add_argument("endpoint", metavar="ENDPOINT", help="the node's endpoint name")
    cr.add_argument("path", metavar="OBJECT", help="object id, e.g. 3303 or /3303")
    cr.add_argument("values", metavar="RES=VALUE", nargs="*",
                    help="resource values of the new instance, e.g. 5750=kitchen")
    cr.add_argument("--instance", type=int, metavar="I",
                    help="instance id (default: the gateway picks a free one)")
    op("delete", "delete an object instance (/O/I)")
    at = op("attributes", "write notification attributes (Write-Attributes)")
    for name, kind in ATTRIBUTE_TYPES.items():
        at.add_argument(f"--{name}", type=kind, metavar="N" if kind is int else "X")
    at.add_argument("--unset", action="append", choices=list(ATTRIBUTE_TYPES),
                    metavar="NAME", help="remove an attribute (repeatable)")
    op("cancel", "cancel the observation of PATH")
    lw.set_defaults(func=run)


def _timeout(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 300:
        raise argparse.ArgumentTypeError("must be over 0 and at most 300 seconds")
    return v
