"""``aiot provision``: turn a blank board into a trusted fleet member (issue 15, item 2).

One board, over its serial port (mpremote's raw REPL through ``tools/deploy.py``'s
``Board``), in steps that each print one progress line::

    find board      --port PATH, or --serial SN (the USB serial number; two boards with
                    it, or none: refused, never guessed)
    connect         Ctrl-C into the raw REPL; a board that does not answer (a stuck
                    program, a board still booting) is retried with backoff
    identify        machine.unique_id() and the firmware manifest .aiot/manifest.json
                    (written by ``aiot firmware deploy``: version, board); --expect-firmware
    keys            the gateway's key API (POST /api/v1/keys, or .../rotate when the
                    endpoint has a context, then .../export: the only copy of the node's
                    side), or --offline: generated here and saved to a mode-600 file,
                    which ``aiot keys import FILE`` gives the gateway later
    write           site.json (site, calibration, board id: no secret), then config.json
                    (endpoint, gateway, board, oscore; the keys of an existing config
                    that provisioning does not own are kept): each to NAME.tmp, SHA-256
                    computed on the board and compared, then renamed. config.json is the
                    commit point: a cut leaves the old record or the new, never half
    verify          both files read back and compared byte for byte
    reset           machine.reset(): the node boots with its new identity (--offline:
                    done here; it registers once the gateway has imported its keys)
    register        the gateway's REST API until the endpoint registers after the keys
                    were made (the gateway in ``security = "oscore"`` mode answers an
                    unprotected Register 4.01, so a registration is an OSCORE one)

Batch mode (``--batch FILE.csv``) runs one board per CSV line and records a result per
line in ``FILE.csv.results.jsonl``; a rerun skips the lines already done. Every board,
alone or in a batch, appends one JSON line to the audit log: time, user, port, board id,
endpoint, firmware, result, reason. No secret is ever printed or logged: the keys exist
only in memory, on the board, and (offline) in the mode-600 key file.

Exit status: 0 every board provisioned; 1 a board failed (the message says what to do);
2 a usage error (bad option, no such port, an unreadable CSV).
"""

from __future__ import annotations

import argparse
import base64
import csv
import getpass
import hashlib
import json
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONFIG = "config.json"
SITE = "site.json"  # the record's fields the node's config may not hold (site, calibration)
MANIFEST = ".aiot/manifest.json"  # tools/deploy.py MANIFEST: the firmware version
# config.json keys provisioning owns; every other key of an existing config is kept
OWNED = ("endpoint", "gateway", "board", "oscore")
NODE_KEYS = ("secret", "salt", "sender_id", "recipient_id", "id_context")
CONNECT_TRIES = 3
BACKOFF_S = (1.0, 2.0, 4.0)  # waits between connect attempts
WRITE_TRIES = 3
DEFAULT_AUDIT = "provision-audit.jsonl"

Progress = Callable[[str], None]


class ProvisionError(AiotError):
    """One board could not be provisioned (one line: what happened, what to do)."""


@dataclass
class Job:
    """What to provision on one board."""

    port: str | None = None
    serial: str | None = None
    endpoint: str | None = None
    gateway: str | None = None
    site: str | None = None
    calibration: dict[str, Any] | None = None
    expect_firmware: str | None = None
    signal: str | None = None
    wifi_ssid: str | None = None  # a Wi-Fi board's network (the password: Settings)


@dataclass
class Settings:
    """What every board of a run shares."""

    url: str | None = None
    token: str | None = None
    offline: bool = False
    keys_dir: Path = field(default_factory=lambda: Path("provision-keys"))
    timeout: float = 60.0  # seconds to wait for the registration
    connect_timeout: float = 5.0  # seconds per attempt to get the raw REPL
    poll_s: float = 0.5
    # the Wi-Fi password of --wifi-ssid (--wifi-password-file or AIOT_WIFI_PASSWORD):
    # written into the record, never printed or logged
    wifi_password: str = field(default="", repr=False)


@dataclass
class Result:
    port: str | None
    board_id: str | None
    endpoint: str | None
    result: str  # "ok" | "offline" (written, registration pending) | "failed"
    reason: str = ""
    firmware: str | None = None
    seconds: float = 0.0
    usage: bool = False  # failed on a usage error (exit status 2 for one board)

    def audit(self) -> dict[str, Any]:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "user": _user(), "host": socket.gethostname(), "port": self.port,
                "board_id": self.board_id, "endpoint": self.endpoint,
                "firmware": self.firmware, "result": self.result, "reason": self.reason,
                "seconds": round(self.seconds, 2)}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# ---------------------------------------------------------------------- finding the board

def find_port(job: Job) -> str:
    """The port of the board ``job`` names: --port as given, or the one port whose USB
    serial number is --serial (none or several: UsageError, never a guess)."""
    if job.port:
        return job.port
    if not job.serial:
        raise UsageError("no port: give --port PATH or --serial SN (ls /dev/ttyACM* "
                         "/dev/ttyUSB*; python -m serial.tools.list_ports -v)")
    from serial.tools import list_ports

    found = [p.device for p in list_ports.comports() if p.serial_number == job.serial]
    if not found:
        raise UsageError(f"no board with USB serial number {job.serial} is attached "
                         f"(python -m serial.tools.list_ports -v lists them)")
    if len(found) > 1:
        raise UsageError(f"USB serial number {job.serial} is on {len(found)} ports "
                         f"({', '.join(found)}): give --port, refusing to guess")
    return str(found[0])


def connect(port: str, settings: Settings, progress: Progress,
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """A raw-REPL session (tools/deploy.py ``Board``, entered) with the board on ``port``.
    A board that does not answer is interrupted again (Ctrl-C, then a soft reset) after
    1, 2, 4 s; a missing, busy or forbidden port fails at once."""
    from aiotkit.tools import deploy

    deploy._check_port(port)  # no such port, busy, permission: no retry helps
    last: AiotError | None = None
    for attempt in range(CONNECT_TRIES):
        board = deploy.Board(port, timeout=settings.connect_timeout,
                             soft_reset=attempt > 0)
        try:
            return board.__enter__()
        except deploy.DeployError as e:
            last = e
            if "not responding" not in str(e) or attempt == CONNECT_TRIES - 1:
                break
            wait = BACKOFF_S[attempt]
            progress(f"  no answer from {port} (attempt {attempt + 1}/{CONNECT_TRIES}): "
                     f"interrupting again in {wait:g} s")
            sleep(wait)
    assert last is not None
    if "not responding" in str(last):
        raise ProvisionError(
            f"{port}: board not responding after {CONNECT_TRIES} attempts: check power and "
            f"cable, press its reset button, then rerun") from None
    raise ProvisionError(str(last)) from None


# ---------------------------------------------------------------------- device programs

_READ = """\
import machine
print(json.dumps({'id': binascii.hexlify(machine.unique_id()).decode(),
                  'm': _aj(_AM), 'c': _aj('config.json')}))
"""  # _aj, _AM: deploy.py's board-side helpers, defined when the session opened


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(board: Any, name: str, data: bytes, chunk: int = 2048) -> None:
    """``name`` := ``data`` on the board: NAME.tmp in base64 chunks, SHA-256 on the board
    compared with ours, then renamed over NAME (deploy.py's ``_ar``); a mismatch removes
    the temp file and writes again (3 times at most)."""
    for _ in range(WRITE_TRIES):
        for i in range(0, max(len(data), 1), chunk):
            part = base64.b64encode(data[i:i + chunk])
            board.exec(f"_aw({name!r}, {part!r}, {'wb' if i == 0 else 'ab'!r})\n")
        got = board.exec(f"print(_ah({name + '.tmp'!r}))\n").strip()
        if got == _sha(data):
            board.exec(f"_ar({name + '.tmp'!r}, {name!r})\n")
            return
        board.exec(f"os.remove({name + '.tmp'!r})\n")
    raise ProvisionError(f"{board.port}: {name}: SHA-256 on the board differs from what "
                         f"was sent {WRITE_TRIES} times: the line corrupts bytes (cable?); "
                         f"the old {name} is untouched")


def read_back(board: Any, name: str, want: bytes) -> None:
    """Read ``name`` back and compare it byte for byte (and by its on-board SHA-256)."""
    out = board.exec(f"print(_ah({name!r}))\nwith open({name!r}, 'rb') as _f:\n"
                     f"    print(binascii.b2a_base64(_f.read()).decode().strip())\n")
    lines = out.strip().splitlines()
    try:
        ok = (len(lines) == 2 and lines[0].strip() == _sha(want)
              and base64.b64decode(lines[1].strip()) == want)
    except ValueError:
        ok = False
    if not ok:
        raise ProvisionError(f"{board.port}: verification mismatch: {name} read back "
                             f"differs from what was written; rerun (the write is atomic)")


# ---------------------------------------------------------------------- keys

class Keys:
    """The node's OSCORE side, from the gateway's key API or made here (--offline)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api: Any = None
        if not settings.offline:
            from aiotkit.tools.lwm2mcli import Api, CliError

            if not settings.token:
                raise UsageError("no admin token: give --token or set AIOT_TOKEN (or "
                                 "--offline to register the keys later)")
            try:
                self.api = Api(settings.url or "http://127.0.0.1:8080", settings.token, 10.0)
            except CliError as e:
                raise UsageError(str(e)) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        from aiotkit.tools.lwm2mcli import CliError

        try:
            return self.api.call(method, path, body)
        except CliError as e:
            raise ProvisionError(f"gateway key API: {e}") from None

    def make(self, endpoint: str) -> tuple[dict[str, str], str | None, float]:
        """(node side as config "oscore" hex strings, the gateway's CoAP URI, the time
        the keys were made on the gateway's clock)."""
        if self.api is None:
            node = {"secret": secrets.token_hex(16), "salt": secrets.token_hex(8),
                    "sender_id": secrets.token_hex(6), "recipient_id": "00"}
            return node, None, time.time()
        from aiotkit.tools.lwm2mcli import CliError

        q = urllib.parse.quote(endpoint, safe="")
        try:
            self.api.call("POST", "/api/v1/keys", {"endpoint": endpoint})
        except CliError as first:
            if "cannot reach" in str(first):
                raise ProvisionError(f"gateway unreachable: {first}") from None
            try:  # it has a context: new keys for it (the old ones stop working)
                self.api.call("POST", f"/api/v1/keys/{q}/rotate")
            except CliError:
                raise ProvisionError(f"gateway key API: {first}") from None
        body = self.call("POST", f"/api/v1/keys/{q}/export")
        side = body.get("node") if isinstance(body, dict) else None
        if not isinstance(side, dict):
            raise ProvisionError("gateway key API: the export answer has no node side")
        info = self.call("GET", f"/api/v1/keys/{q}")
        made = max(float(info.get("created") or 0), float(info.get("rotated") or 0))
        keys = {k: str(side[k]) for k in NODE_KEYS if side.get(k)}
        return keys, body.get("gateway_uri"), made

    def registration(self, endpoint: str) -> dict[str, Any] | None:
        from aiotkit.tools.lwm2mcli import CliError

        q = urllib.parse.quote(endpoint, safe="")
        try:
            got = self.api.call("GET", f"/api/v1/endpoints/{q}")
        except CliError as e:
            if "cannot reach" in str(e):
                raise ProvisionError(f"gateway unreachable: {e}") from None
            return None  # 404: not registered (yet)
        return got if isinstance(got, dict) else None

    def save_offline(self, endpoint: str, board_id: str, node: dict[str, str]) -> Path:
        d = self.settings.keys_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = d / f"{endpoint}.json"
        tmp = d / f".{endpoint}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"endpoint": endpoint, "board_id": board_id, **node}, f)
        os.replace(tmp, path)
        return path


# ---------------------------------------------------------------------- one board

def _record(old: Any, job: Job, endpoint: str, gateway: str, board_name: str,
            oscore: dict[str, str], wifi_password: str = "") -> dict[str, Any]:
    """The new config.json: the old one's keys provisioning does not own, then ours; a
    unix-sim board gets the replayed sensor file its board definition names; a Wi-Fi
    board must end up with a network to join (--wifi-ssid, or the old record's)."""
    conf = {k: v for k, v in old.items() if k not in OWNED} if isinstance(old, dict) else {}
    conf.update(endpoint=endpoint, gateway=gateway, board=board_name, oscore=oscore)
    if job.wifi_ssid:
        conf["wifi"] = {"ssid": job.wifi_ssid, "password": wifi_password}
    if "wifi" not in conf and board_name != "unix-sim":
        from aiotkit.boards.errors import AiotError as _Err
        from aiotkit.tools.boards import load_board

        try:
            network = load_board(board_name).get("network")
        except _Err:
            network = None  # a board of its own: the node checks its board.json
        if network == "wifi":
            raise UsageError(f"board {board_name} joins a Wi-Fi network: give --wifi-ssid "
                             f"SSID (the password: --wifi-password-file FILE or "
                             f"AIOT_WIFI_PASSWORD)")
    if job.signal:
        conf["signal"] = job.signal
    if "signal" not in conf and board_name == "unix-sim":
        from aiotkit.tools.boards import load_board

        for s in load_board(board_name).get("sensors", []):
            if s.get("driver") == "replay":
                conf["signal"] = s["settings"]["file"]
                conf.setdefault("realtime", bool(s["settings"].get("realtime", True)))
    return conf


def provision_one(job: Job, settings: Settings, keys: Keys, progress: Progress = print,
                  sleep: Callable[[float], None] = time.sleep) -> Result:
    """Provision one board; a Result (failures are results, not exceptions)."""
    t0 = time.monotonic()
    res = Result(job.port or job.serial, None, job.endpoint, "failed")
    board = None
    try:
        port = find_port(job)
        res.port = port
        progress(f"[1/7] board: {port}")
        board = connect(port, settings, progress, sleep)
        got = board.json(_READ)
        res.board_id = str(got.get("id"))
        manifest = got.get("m") if isinstance(got.get("m"), dict) else None
        if manifest is None:
            raise ProvisionError(f"{port}: no aiotkit firmware on board {res.board_id} "
                                 f"(no {MANIFEST}): run 'aiot firmware deploy --port "
                                 f"{port}' first")
        res.firmware = str(manifest.get("version"))
        if job.expect_firmware and res.firmware != job.expect_firmware:
            raise ProvisionError(f"{port}: wrong firmware version {res.firmware} on board "
                                 f"{res.board_id}, expected {job.expect_firmware}: run "
                                 f"'aiot firmware deploy --port {port}' first")
        if manifest.get("complete") is False:
            raise ProvisionError(f"{port}: the firmware deploy on board {res.board_id} is "
                                 f"unfinished: rerun 'aiot firmware deploy --port {port}'")
        board_name = str(manifest.get("board") or "unix-sim")
        endpoint = job.endpoint or f"node-{res.board_id}"
        res.endpoint = endpoint
        progress(f"[2/7] identified: board id {res.board_id}, firmware {res.firmware} "
                 f"({board_name}), endpoint {endpoint}")
        oscore, gw_uri, made = keys.make(endpoint)
        gateway = job.gateway or gw_uri
        if not gateway:
            raise UsageError("no gateway URI: give --gateway coap://HOST[:PORT]")
        progress(f"[3/7] keys: {'generated offline' if settings.offline else 'from the gateway'}"
                 f" (sender id {oscore['sender_id']}), gateway {gateway}")
        conf = _record(got.get("c"), job, endpoint, gateway, board_name, oscore,
                       settings.wifi_password)
        site = {"endpoint": endpoint, "board_id": res.board_id, "site": job.site,
                "calibration": job.calibration or {}, "firmware": res.firmware,
                "provisioned_by": _user(),
                "provisioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        files = [(SITE, json.dumps(site, indent=1).encode() + b"\n"),
                 (CONFIG, json.dumps(conf, indent=1).encode() + b"\n")]
        for name, data in files:  # config.json last: the commit point
            write_file(board, name, data)
        # new keys, new sequence space (the node starts a new seq file)
        board.exec("for _n in ('oscore.seq', 'oscore.seq.tmp'):\n    try:\n"
                   "        os.remove(_n)\n    except OSError:\n        pass\n")
        progress(f"[4/7] written: {SITE}, {CONFIG} (temp file, SHA-256 on the board, rename)")
        for name, data in files:
            read_back(board, name, data)
        progress("[5/7] verified: read back, byte for byte")
        if settings.offline:
            path = keys.save_offline(endpoint, res.board_id, oscore)
            res.result = "offline"
            res.reason = f"keys in {path}: the gateway must learn them before it registers"
            progress(f"[6/7] offline: the node's keys are in {path} (mode 600); the node "
                     f"registers once the gateway has them: aiot keys import {path}")
        before = None if settings.offline else keys.registration(endpoint)
        board._t.exec_raw_no_follow("import machine\nmachine.reset()\n")
        board.close()
        board = None
        if settings.offline:
            progress("[7/7] reset: the node boots with its new identity (not registered)")
            return res
        progress("[6/7] reset: the node boots with its new identity")
        _watch(keys, endpoint, made, before, settings, sleep)
        res.result = "ok"
        progress(f"[7/7] registered: {endpoint} is registered with the gateway over "
                 f"OSCORE ({time.monotonic() - t0:.1f} s)")
    except AiotError as e:
        res.result = "failed"
        res.reason = str(e)
        res.usage = isinstance(e, UsageError)
    finally:
        if board is not None:
            board.close()
        res.seconds = time.monotonic() - t0
    return res


def _watch(keys: Keys, endpoint: str, made: float, before: dict[str, Any] | None,
           settings: Settings, sleep: Callable[[float], None]) -> None:
    """Until the gateway shows a registration of ``endpoint`` newer than its keys."""
    old = (before or {}).get("reg_id")
    deadline = time.monotonic() + settings.timeout
    while time.monotonic() < deadline:
        reg = keys.registration(endpoint)
        if (reg and reg.get("state") == "registered" and reg.get("reg_id") != old
                and float(reg.get("registered_at") or 0) >= made - 1.0):
            return
        sleep(settings.poll_s)
    raise ProvisionError(f"{endpoint}: written and verified, but it did not register with "
                         f"the gateway in {settings.timeout:g} s: check the gateway URI in "
                         f"--gateway is reachable from the node, then rerun")


# ---------------------------------------------------------------------- audit, batch

def append_audit(path: Path, res: Result) -> None:
    """One JSON line per board (never a secret: reasons are our one-line messages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(res.audit(), sort_keys=True) + "\n")


def _calibration(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        cal = json.loads(text)
    except ValueError:
        raise UsageError(f"calibration {text!r} is not JSON") from None
    if not isinstance(cal, dict):
        raise UsageError("calibration must be a JSON object")
    return cal


def read_batch(path: Path) -> list[Job]:
    """The CSV: a header, then one board a line; columns port or serial (one of them),
    endpoint, site, calibration (JSON), gateway, expect_firmware, signal, wifi_ssid."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageError(f"--batch {path}: {e.strerror or e}") from None
    jobs = []
    for n, row in enumerate(rows, 2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        if not row.get("port") and not row.get("serial"):
            raise UsageError(f"{path}:{n}: give a port or a serial column")
        jobs.append(Job(port=row.get("port") or None, serial=row.get("serial") or None,
                        endpoint=row.get("endpoint") or None, site=row.get("site") or None,
                        calibration=_calibration(row.get("calibration")),
                        gateway=row.get("gateway") or None,
                        expect_firmware=row.get("expect_firmware") or None,
                        signal=row.get("signal") or None,
                        wifi_ssid=row.get("wifi_ssid") or None))
    return jobs


def _key(job: Job) -> str:
    return f"{job.port or ''}|{job.serial or ''}|{job.endpoint or ''}"


def run_batch(path: Path, base: Job, settings: Settings, keys: Keys, audit: Path,
              progress: Progress = print) -> list[Result]:
    """Every line not done yet (``PATH.results.jsonl``), in order; a failed line does not
    stop the others."""
    jobs = read_batch(path)
    results = Path(str(path) + ".results.jsonl")
    done: set[str] = set()
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("result") == "ok":
                done.add(r.get("key"))
    out = []
    for i, job in enumerate(jobs, 1):
        for k in ("gateway", "expect_firmware", "signal"):
            if getattr(job, k) is None:
                setattr(job, k, getattr(base, k))
        tag = f"[line {i}/{len(jobs)}] {job.port or job.serial}"
        if _key(job) in done:
            progress(f"{tag}: done before, skipped")
            continue
        progress(f"{tag}: provisioning")

        def say(text: str, tag: str = tag) -> None:
            progress(f"{tag} {text}")

        res = provision_one(job, settings, keys, say)
        append_audit(audit, res)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": _key(job), "line": i, **res.audit()}) + "\n")
        progress(f"{tag}: {res.result}" + (f": {res.reason}" if res.reason else ""))
        out.append(res)
    return out


# ---------------------------------------------------------------------- CLI

def _wifi_password(args: argparse.Namespace) -> str:
    if args.wifi_password_file:
        try:
            with open(args.wifi_password_file, encoding="utf-8") as f:
                text = f.readline().rstrip("\r\n")
        except OSError as e:
            raise UsageError(f"--wifi-password-file {args.wifi_password_file}: "
                             f"{e.strerror or e}") from None
    else:
        text = os.environ.get("AIOT_WIFI_PASSWORD", "")
    if len(text) > 64:
        raise UsageError("the Wi-Fi password is longer than 64 characters")
    return text


def cmd_provision(args: argparse.Namespace) -> int:
    settings = Settings(url=args.url or os.environ.get("AIOT_URL"),
                        token=args.token or os.environ.get("AIOT_TOKEN"),
                        offline=args.offline, keys_dir=Path(args.keys_dir),
                        timeout=args.timeout, connect_timeout=args.connect_timeout,
                        wifi_password=_wifi_password(args))
    base = Job(port=args.port, serial=args.serial, endpoint=args.endpoint,
               gateway=args.gateway, site=args.site,
               calibration=_calibration(args.calibration),
               expect_firmware=args.expect_firmware, signal=args.signal,
               wifi_ssid=args.wifi_ssid)
    audit = Path(args.audit)
    if args.batch:
        if args.port or args.serial or args.endpoint:
            raise UsageError("--batch takes the ports and endpoints from the CSV: drop "
                             "--port/--serial/--endpoint")
        keys = Keys(settings)
        results = run_batch(Path(args.batch), base, settings, keys, audit)
        bad = [r for r in results if r.result == "failed"]
        print(f"batch: {len(results) - len(bad)} provisioned, {len(bad)} failed"
              + (" (rerun the same command: done lines are skipped)" if bad else ""))
        return EXIT_FAILED if bad else EXIT_OK
    if not (args.port or args.serial):
        raise UsageError("give --port PATH, --serial SN or --batch FILE.csv")
    keys = Keys(settings)
    res = provision_one(base, settings, keys)
    append_audit(audit, res)
    if res.result == "failed":
        raise (UsageError if res.usage else ProvisionError)(res.reason)
    if res.result == "offline":
        print(f"provisioned offline: {res.endpoint} on board {res.board_id} (not registered)")
    return EXIT_OK


EPILOG = """\
exit status: 0 every board provisioned (registered, or written with --offline);
1 a board failed (one line says what and what to do; in a batch, rerun: lines
already done are skipped); 2 a usage error (bad option, no such port, bad CSV).

CSV (--batch): a header line, then one board a line. Columns: port or serial,
endpoint, site, calibration (a JSON object), and optionally gateway,
expect_firmware, signal (defaults from the options). Results: FILE.csv.results.jsonl.
"""


def register(sub: Any) -> None:
    """Add ``aiot provision`` to the aiot parser."""
    p = sub.add_parser(
        "provision", help="provision a board: identity, OSCORE keys, config; watch it register",
        description="Provision a board over its serial port: read its id and firmware "
        "version, get its OSCORE keys from the gateway's key API (admin token), write "
        "config.json and site.json atomically (temp file, SHA-256 on the board, rename), "
        "read them back, reset the board and wait until it registers with the gateway "
        "over OSCORE. Every board appends one JSON line to the audit log (no secrets).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", metavar="PORT", help="serial port (/dev/ttyACM0)")
    where.add_argument("--serial", metavar="SN", help="USB serial number of the board")
    p.add_argument("--endpoint", metavar="NAME", help="endpoint name (default node-BOARDID)")
    p.add_argument("--gateway", metavar="coap://HOST[:PORT]",
                   help="the gateway the node registers with (default: the gateway's "
                   "own CoAP URI from the key API)")
    p.add_argument("--url", metavar="URL", help="gateway REST API (default $AIOT_URL or "
                   "http://127.0.0.1:8080)")
    p.add_argument("--token", metavar="ADMIN", help="admin API token (default $AIOT_TOKEN)")
    p.add_argument("--offline", action="store_true",
                   help="make the keys here (saved mode 600 in --keys-dir) and do not "
                   "wait for the registration")
    p.add_argument("--keys-dir", default="provision-keys", metavar="DIR",
                   help="where --offline saves the node keys (provision-keys)")
    p.add_argument("--site", metavar="S", help="site name recorded on the board")
    p.add_argument("--calibration", metavar="JSON", help="calibration object recorded")
    p.add_argument("--expect-firmware", metavar="VERSION",
                   help="refuse a board whose firmware manifest has another version")
    p.add_argument("--signal", metavar="FILE",
                   help="unix-sim: the replay file on the board (default: the board's)")
    p.add_argument("--wifi-ssid", metavar="SSID",
                   help="the Wi-Fi network a Wi-Fi board (ESP32, Pico W) joins")
    p.add_argument("--wifi-password-file", metavar="FILE",
                   help="its password, the file's first line (default $AIOT_WIFI_PASSWORD;"
                   " never on the command line, where ps and the shell history show it)")
    p.add_argument("--batch", metavar="FILE.csv", help="one board per CSV line (resumable)")
    p.add_argument("--audit", default=DEFAULT_AUDIT, metavar="FILE.jsonl",
                   help=f"audit log to append to ({DEFAULT_AUDIT})")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the registration (60)")
    p.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                   help="seconds per attempt to reach the board's raw REPL (5)")
    p.set_defaults(func=cmd_provision)
