"""``aiot firmware build``: the node application as an OTA payload (issue 14, item 3).

The firmware is compiled with mpy-cross for the board's arch (tools/fwbuild.py: main.py
and every module it imports), packed into a bundle (ota/bundle.py: files + manifest with
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
    tree = fwbuild.build(src, march=arch, cache=cache)  # BuildError without mpy-cross
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


def _default_version() -> str:
    from aiotkit.tools.cli import version

    v = version()
    return v if v[:1].isdigit() else "0.0.0"


def register(subparsers: Any) -> None:
    """Add ``aiot firmware build`` to the aiot parser."""
    from aiotkit.tools import otacli

    f = subparsers.add_parser("firmware", help="build the node application as an OTA "
                              "bundle / signed app image")
    fsub = f.add_subparsers(dest="firmware_command", metavar="ACTION")
    fsub.required = True
    b = fsub.add_parser(
        "build", help="compile the node app for a board into a bundle (and signed image)",
        description="Compile firmware/main.py and what it imports with mpy-cross for the "
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


def _build_with_default_version(args: argparse.Namespace) -> int:
    if args.version is None:
        args.version = _default_version()
    return cmd_build(args)
