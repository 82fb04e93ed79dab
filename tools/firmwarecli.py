"""``aiot firmware build``: the node application as an OTA payload (issue 14, item 3);
``aiot firmware deploy | info``: the firmware onto a board over serial, and what is on a
board (issue 15, item 3; tools/deploy.py).

The app is compiled with mpy-cross for the board's arch (tools/fwbuild.py: app.py
and every module it imports; the boot code, main.py and boot.py, is never in an app
slot: ``deploy`` puts it on the board), packed into a bundle (ota/bundle.py: files + manifest with
each file's SHA-256, the version, board and arch) and, with ``--key``, signed as an
MCUboot image of payload type ``app`` for that board (ota/image.py; slot size the
board's slot_a, header 0x200, MCUboot's trailer with alignment 4, as ``aiot ota sign``).
Passphrases as ``aiot ota``: ``--passphrase-file``, ``$AIOT_OTA_PASSPHRASE`` or a prompt.

A board with ``"march": null`` on ``mcu: host`` (unix-sim) runs on this machine: its
arch is this machine's (x64 on x86-64).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiotkit.boards.errors import UsageError

if TYPE_CHECKING:
    from aiotkit.ota.image import ImageVersion
    from aiotkit.ota.keys import Signer

PROG = "aiot firmware"
_HOST_ARCH = {"x86_64": "x64", "amd64": "x64", "i386": "x86", "i686": "x86", "x86": "x86"}


def board_arch(board: dict[str, Any]) -> str:
    """mpy-cross -march for a board: its ``march``, or this machine's for a host board."""
    if board.get("march"):
        return str(board["march"])
    if board.get("mcu") == "host":
        arch = _HOST_ARCH.get(platform.machine().lower())
        if arch:
            return arch
        raise UsageError(f"board {board['name']}: no arch (march null) and mpy-cross has "
                         f"no native emitter for this machine ({platform.machine()})")
    raise UsageError(f"board {board['name']}: no arch (march null): cannot compile for it")


def build_app(board: dict[str, Any], version: ImageVersion, signers: list[Signer],
              counter: int | None, src: Path | None = None,
              cache: Path | None = None) -> tuple[dict[str, bytes], bytes, bytes | None]:
    """The node application of ``src`` (default: firmware/) compiled for ``board``: its
    files, the bundle of them, and the image signed by ``signers`` with security counter
    ``counter`` (None without signers)."""
    from aiotkit.ota import bundle, image
    from aiotkit.tools import fwbuild

    name = board["name"]
    arch = board_arch(board)
    vtext = f"{version.major}.{version.minor}.{version.revision}" + (
        f"+{version.build}" if version.build else "")
    # the app: app.py and what it imports (a slot never holds the boot code)
    tree = fwbuild.build(src, march=arch, cache=cache, entry="app")  # BuildError: mpy-cross
    files = {p.relative_to(tree).as_posix(): p.read_bytes()
             for p in sorted(tree.rglob("*.mpy"))}
    data = bundle.make_bundle(files, version=vtext, board=name, arch=arch)
    bundle.read_bundle(data)  # what the node will be given, checked as the gateway would
    if not signers or counter is None:
        return files, data, None
    slot = board["flash"]["regions"]["slot_a"]["size"]
    img = image.build(data, signers, version=version, security_counter=counter,
                      payload_type="app", board=name, header_size=image.DEFAULT_HEADER_SIZE,
                      slot_size=slot, trailer_size=image.mcuboot_trailer_size(4))
    return files, data, img


def cmd_build(args: argparse.Namespace) -> int:
    from aiotkit.ota import image, keys
    from aiotkit.tools import boards, otacli

    board = boards.load_board(args.board)
    name = board["name"]
    arch = board_arch(board)
    version = image.ImageVersion.parse(args.version)
    vtext = f"{version.major}.{version.minor}.{version.revision}" + (
        f"+{version.build}" if version.build else "")
    if args.key and args.security_counter is None:
        raise UsageError("--key needs --security-counter N")
    if args.security_counter is not None and not args.key:
        raise UsageError("--security-counter without --key: nothing is signed")
    pems = [otacli._read(k, "--key") for k in args.key or []]
    out = Path(args.out) if args.out else Path("build") / name
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a folder")

    signers = []
    if pems:
        passphrases = otacli._passphrases(args, len(pems), new=False)
        signers = [keys.load_signer(pem, pw, where=k)
                   for pem, pw, k in zip(pems, passphrases, args.key, strict=True)]
    files, data, img = build_app(board, version, signers, args.security_counter)

    out.mkdir(parents=True, exist_ok=True)
    stem = f"app-{name}-{vtext}"
    bpath = out / f"{stem}.bundle"
    keys.write_atomic(bpath, data, mode=0o644)
    print(f"{bpath}: bundle of {len(files)} files ({sum(map(len, files.values()))} bytes "
          f".mpy for {arch}), {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    if args.list:
        for path, body in files.items():
            print(f"  {len(body):>7}  {hashlib.sha256(body).hexdigest()}  {path}")
    if img is not None:
        ipath = out / f"{stem}.img"
        keys.write_atomic(ipath, img, mode=0o644)
        print(f"{ipath}: app image for {name}, version {version}, security counter "
              f"{args.security_counter}, {len(img)} bytes, sha256 "
              f"{hashlib.sha256(img).hexdigest()}")
    return 0


def base_files(board: dict[str, Any], src: Path | None = None) -> dict[str, bytes]:
    """What a board carries: main.py (its start-up file, source), the boot selector
    (firmware/boot.py), the app (app.py) and every module they import, compiled for its
    arch (fwbuild's cache), and board.json (its definition: a node config naming a
    hardware board builds that board's sensor from it), {relative path: bytes}."""
    from aiotkit.boards import paths
    from aiotkit.tools import fwbuild

    tree = fwbuild.build(src, march=board_arch(board), entry="main")
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in sorted(tree.rglob("*.mpy"))}
    # a board runs main.py (source, two lines) at start-up, never main.mpy
    del files["main.mpy"]
    files["main.py"] = ((src or paths.firmware_dir()) / "main.py").read_bytes()
    files["board.json"] = json.dumps(board, separators=(",", ":")).encode()
    return files


def cmd_deploy(args: argparse.Namespace) -> int:
    import time

    from aiotkit.tools import boards, deploy

    board = boards.load_board(args.board)
    src = Path(args.src) if args.src else None
    if src is not None and not src.is_dir():
        raise UsageError(f"--src {args.src}: not a folder")
    files = base_files(board, src)
    meta = {"version": args.version or _default_version(), "board": board["name"],
            "arch": board_arch(board)}
    total = sum(map(len, files.values()))
    print(f"{board['name']}: {len(files)} files, {total} bytes .mpy for {meta['arch']}, "
          f"version {meta['version']}", flush=True)
    t0 = time.monotonic()
    with deploy.Board(args.port, timeout=args.timeout) as b:
        plan = deploy.deploy(b, files, meta, dry_run=args.dry_run,
                             progress=lambda line: print(line, flush=True))
    if args.dry_run:
        for path in plan.write:
            what = "change" if plan.device.get(path) else "new"
            print(f"  would write {path} ({what}, {len(files[path])} bytes)")
        for path in plan.remove:
            print(f"  would remove {path}")
        print(f"dry run: {len(plan.write)} to write, {len(plan.remove)} to remove, "
              f"{len(plan.same)} unchanged; nothing written")
        return 0
    nbytes = sum(len(files[p]) for p in plan.write)
    print(f"deployed to {args.port}: {len(plan.write)} written ({nbytes} bytes), "
          f"{len(plan.remove)} removed, {len(plan.same)} unchanged, "
          f"{time.monotonic() - t0:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from aiotkit.tools import deploy

    with deploy.Board(args.port, timeout=args.timeout, soft_reset=False) as b:
        got = deploy.info(b)
    if args.json:
        print(json.dumps(got, indent=1, sort_keys=True))
        return 0
    m = got.get("m") or {}
    files = m.get("files") or {}
    hashes = got.get("h") or {}
    if files:
        state = "" if m.get("complete", True) else " (INCOMPLETE: a deploy was cut; rerun it)"
        print(f"firmware: version {m.get('version', '?')}, board {m.get('board', '?')}, "
              f"arch {m.get('arch', '?')}, {len(files)} files{state}")
    else:
        print("firmware: none deployed by aiot (no .aiot/manifest.json)")
    bad = 0
    for path, want in sorted(files.items()):
        have = hashes.get(path)
        mark = "ok" if have == want else ("MISSING" if have is None else "CHANGED")
        bad += mark != "ok"
        print(f"  {mark:<7} {want[:16]}  {path}")
    if bad:
        print(f"  {bad} file(s) differ from the manifest: aiot firmware deploy repairs them")
    slots = got.get("slots")
    if isinstance(slots, dict):
        print("slots: " + ", ".join(f"{k} {slots[k]}" for k in sorted(slots)))
    else:
        print(f"slots: {'factory state (no slots.json)' if slots is None else slots}")
    models = got.get("models")
    if isinstance(models, dict) and isinstance(models.get("slots"), list):
        parts = [f"{i}: {s.get('state')} {s.get('name') or '-'} {s.get('version') or ''}"
                 f"{' active' if s.get('active') else ''}".rstrip()
                 for i, s in enumerate(models["slots"]) if isinstance(s, dict)]
        print(f"models: floor {models.get('floor')}; " + "; ".join(parts))
    else:
        print(f"models: {'none (no models.json)' if models is None else models}")
    c = got.get("config")
    if isinstance(c, dict):
        keys = c.get("oscore")
        print(f"provisioned: endpoint {c.get('endpoint')}, gateway {c.get('gateway')}, "
              f"board {c.get('board')}, OSCORE keys "
              f"{'present (' + ', '.join(keys) + ')' if keys else 'absent'}")
        if c.get("wifi"):
            print(f"wifi: joins {c['wifi']} (the password is not shown)")
    else:
        print(f"provisioned: {'no (no config.json)' if c is None else 'config.json ' + str(c)}")
    return 0


def _default_version() -> str:
    from aiotkit.tools.cli import version

    v = version()
    return v if v[:1].isdigit() else "0.0.0"


def register(subparsers: Any) -> None:
    """Add ``aiot firmware build | deploy | info`` to the aiot parser."""
    from aiotkit.tools import otacli

    f = subparsers.add_parser("firmware", help="build the node application as an OTA "
                              "bundle / signed app image")
    fsub = f.add_subparsers(dest="firmware_command", metavar="ACTION")
    fsub.required = True
    b = fsub.add_parser(
        "build", help="compile the node app for a board into a bundle (and signed image)",
        description="Compile firmware/app.py and what it imports with mpy-cross for the "
        "board's arch, pack the .mpy files into a bundle (manifest with each file's "
        "SHA-256, version, board, arch; ota/README.md 'Bundles'), and with --key sign it "
        "as an 'app' image for the board (slot size its slot_a, header 0x200). Writes "
        "OUT/app-BOARD-VERSION.bundle and .img. Exit 1 if the build fails (mpy-cross "
        "missing), 2 for a mistake (unknown board, a board without an arch).")
    b.add_argument("--board", required=True, metavar="NAME|FILE", help="boards/NAME.json")
    b.add_argument("--version", default=None,
                   help="MAJOR.MINOR.REVISION[+BUILD] (default: aiotkit's version)")
    b.add_argument("--out", metavar="DIR", help="output folder (default build/BOARD)")
    b.add_argument("-k", "--key", action="append", metavar="KEY.pem",
                   help="sign with this encrypted private key; repeat for several")
    b.add_argument("--security-counter", type=otacli._int, metavar="N",
                   help="u32, needed with --key")
    b.add_argument("--list", action="store_true", help="print every file of the bundle")
    otacli._add_passphrase_file(b, True)
    b.set_defaults(func=_build_with_default_version)

    d = fsub.add_parser(
        "deploy", help="copy the node firmware to a board over serial (changed files only)",
        description="Build (or take from the cache) the node firmware for the board "
        "(boot selector, app and every module, .mpy for its arch) and bring the board to "
        "it through the raw REPL: files are hashed on the board, each changed one is "
        "written to PATH.tmp, checked by SHA-256 on the board, renamed into place and "
        "recorded in .aiot/manifest.json. An interrupted deploy resumes; files the "
        "manifest never listed (config.json, slots.json, models.json) are never touched. "
        "Exit 1 if the board fails (not responding, busy port, permission, a hash that "
        "keeps differing), 2 for a mistake (no such port, unknown board).")
    _port_args(d)
    d.add_argument("--board", default="unix-sim", metavar="NAME|FILE",
                   help="boards/NAME.json (default unix-sim)")
    d.add_argument("--src", metavar="DIR", help="firmware source (default firmware/)")
    d.add_argument("--version", default=None, help="version recorded in the manifest "
                   "(default aiotkit's)")
    d.add_argument("-n", "--dry-run", action="store_true",
                   help="show what would be written and removed; write nothing")
    d.set_defaults(func=cmd_deploy)

    i = fsub.add_parser(
        "info", help="what is on a board: firmware version and files, slots, models, "
        "provisioning (no secrets)",
        description="Read the board's manifest and hash its files on the board, "
        "slots.json, models.json and a summary of config.json made on the board "
        "(endpoint, gateway, the names of the OSCORE fields: never their values).")
    _port_args(i)
    i.add_argument("--json", action="store_true", help="the raw report as JSON")
    i.set_defaults(func=cmd_info)


def _port_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--port", required=True, metavar="PORT",
                   help="the board's serial port (/dev/ttyACM0, /dev/ttyUSB0, a "
                   "simulated board's link)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the board (default 10)")


def _build_with_default_version(args: argparse.Namespace) -> int:
    if args.version is None:
        args.version = _default_version()
    return cmd_build(args)
