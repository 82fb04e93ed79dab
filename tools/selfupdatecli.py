"""``aiot gateway build-image | install | update | slots``: the gateway's own signed
updates (issue 14, item 7; gateway/ota/selfupdate.py, ota/README.md "Gateway
self-update").

``build-image`` signs the aiotkit package of this checkout as a ``gateway`` image;
``install`` puts a first image into an empty root (slot a); ``update`` verifies an image,
installs it into the idle slot, switches ``current``, runs the health check with the
operator's configuration and commits or rolls back; ``slots`` shows the state and, with
``--recover``, finishes an interrupted update (at boot, before the daemon starts).

Exit status: 0 done (``update``: committed); 1 refused image, failed health check
(rolled back) or another failure; 2 a mistake in the command or its input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError, UsageError


def _root(args: argparse.Namespace) -> Any:
    from aiotkit.gateway.ota.selfupdate import SlotRoot

    return SlotRoot(Path(args.root))


def _image_and_trust(args: argparse.Namespace) -> tuple[bytes, Any]:
    from aiotkit.ota import keys
    from aiotkit.tools import otacli

    return otacli._read(args.image, "image"), keys.load_keyset(Path(args.trust))


def cmd_build_image(args: argparse.Namespace) -> int:
    from aiotkit.gateway.ota import selfupdate
    from aiotkit.ota import image, keys
    from aiotkit.tools import firmwarecli, otacli

    version = image.ImageVersion.parse(args.version or firmwarecli._default_version())
    vtext = f"{version.major}.{version.minor}.{version.revision}" + (
        f"+{version.build}" if version.build else "")
    source = Path(args.source) if args.source else Path(__file__).resolve().parents[1]
    tree = selfupdate.package_tree(source)
    payload = selfupdate.make_gateway_bundle(tree, vtext)
    pems = [otacli._read(k, "--key") for k in args.key]
    passphrases = otacli._passphrases(args, len(pems), new=False)
    signers = [keys.load_signer(pem, pw, where=k)
               for pem, pw, k in zip(pems, passphrases, args.key, strict=True)]
    img = image.build(payload, signers, version=version,
                      security_counter=args.security_counter,
                      payload_type=selfupdate.PAYLOAD_TYPE, board=selfupdate.BOARD,
                      slot_size=selfupdate.MAX_IMAGE)
    out = Path(args.out) if args.out else Path("build") / "gateway" / f"gateway-{vtext}.img"
    out.parent.mkdir(parents=True, exist_ok=True)
    keys.write_atomic(out, img, mode=0o644)
    files = sum(len(f) for f in tree.values())
    print(f"{out}: gateway image of {source} ({files} files in {len(tree)} folders), "
          f"version {version}, security counter {args.security_counter}, {len(img)} bytes, "
          f"sha256 {hashlib.sha256(img).hexdigest()}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    data, trust = _image_and_trust(args)
    root = _root(args)
    done = root.install_first(data, trust)
    print(f"{root.root}: installed version {done.version} (security counter "
          f"{done.security_counter}) in slot a; current -> slots/a")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from aiotkit.gateway.config import load_config
    from aiotkit.gateway.ota.healthcheck import HealthCheck

    cfg = load_config(args.config)  # a mistake here is found before anything is touched
    if not cfg.rest.enabled:
        raise UsageError(f"{args.config}: the health check needs [rest] enabled (it asks the"
                         " new daemon's REST API)")
    token = args.token or os.environ.get("AIOT_TOKEN", "")
    if not token:
        raise UsageError("no token: give --token or set AIOT_TOKEN (admin role: the health "
                         "check makes its endpoint's OSCORE keys)")
    data, trust = _image_and_trust(args)
    root = _root(args)
    said = root.recover()
    if said:
        print(f"recovered an interrupted update: {said}", flush=True)
    check = HealthCheck(Path(args.config), token, deadline_s=args.deadline,
                        allow_nosec=args.allow_nosec)

    def step(name: str) -> None:
        st = root.state()
        if name == "installing":
            print(f"verified; installing into slot {st.target} (slot {st.confirmed} runs)",
                  flush=True)
        elif name == "switched":
            print(f"switched current -> slots/{st.target}; health check (deadline "
                  f"{args.deadline:g} s)", flush=True)

    done = root.update(data, trust, check, on_step=step)
    for what in check.report.passed:
        print(f"  ok: {what}")
    for what in check.report.skipped:
        print(f"  skipped: {what}")
    if done.result != "committed":
        raise AiotError(f"rolled back to slot {done.slot} ({done.reason}): {done.detail}")
    print(f"committed: slot {done.slot} runs version {done.version}, security-counter "
          f"floor {root.state().floor} ({done.seconds:.1f} s, health check "
          f"{check.report.seconds:.1f} s)")
    return 0


def cmd_slots(args: argparse.Namespace) -> int:
    from aiotkit.gateway.ota.selfupdate import describe

    root = _root(args)
    if args.recover:
        said = root.recover()
        print(f"recovered: {said}" if said else "nothing to recover")
    st = root.state()
    if args.json:
        print(json.dumps(describe(st, root.linked()), sort_keys=True))
        return 0
    print(f"{root.root}: current -> {root.linked() or '(none)'}, confirmed "
          f"{st.confirmed or '(none)'}, floor {st.floor}, phase {st.phase}")
    for name, info in st.slots.items():
        what = (f"version {info.version}, security counter {info.security_counter}, "
                f"image sha256 {info.sha256[:16]}..." if info else "empty")
        print(f"  slot {name}: {what}")
    if st.result:
        print(f"  last: {st.result}" + (f" ({st.reason}): {st.detail}" if st.reason else ""))
    return 0


def register(gateway_sub: Any) -> None:
    """Add the self-update actions to ``aiot gateway``."""
    from aiotkit.tools import otacli

    def root_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", required=True, metavar="DIR",
                       help="the self-update root: slots/a, slots/b, current, state.json "
                       "(production: /opt/aiotkit)")

    def image_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("image", metavar="IMAGE", help="a signed gateway image")
        root_arg(p)
        p.add_argument("--trust", required=True, metavar="TRUST.json",
                       help="the trust file the image is verified against")

    b = gateway_sub.add_parser(
        "build-image", help="sign this checkout's aiotkit package as a gateway image",
        description="Bundle the aiotkit package of the checkout (the folders pyproject.toml "
        "maps; no caches) and sign it as an MCUboot image of payload type 'gateway', board "
        "'gateway'. Writes OUT (default build/gateway/gateway-VERSION.img).")
    b.add_argument("-k", "--key", action="append", required=True, metavar="KEY.pem",
                   help="sign with this encrypted private key; repeat for several")
    b.add_argument("--security-counter", type=otacli._int, required=True, metavar="N",
                   help="u32; an update is refused below the installed floor")
    b.add_argument("--version", help="MAJOR.MINOR.REVISION[+BUILD] (default: aiotkit's)")
    b.add_argument("--source", metavar="DIR", help="the checkout (default: this one)")
    b.add_argument("-o", "--out", metavar="FILE", help="the image file")
    otacli._add_passphrase_file(b, True)
    b.set_defaults(func=cmd_build_image)

    i = gateway_sub.add_parser(
        "install", help="first install of a gateway image into an empty root",
        description="Verify IMAGE against TRUST.json and unpack it into slot a of an "
        "empty root; current -> slots/a. No health check: there is nothing to roll back "
        "to. Later images go through 'aiot gateway update'.")
    image_args(i)
    i.set_defaults(func=cmd_install)

    u = gateway_sub.add_parser(
        "update", help="install a signed gateway image: switch, health check, commit or "
        "roll back",
        description="Verify IMAGE (signature against TRUST.json, payload type and board "
        "'gateway', security counter not below the floor); unpack it into the slot that "
        "is not running; switch current to it; start its daemon with --config and check "
        "it (ready, REST API answers, accepts a LwM2M registration, MQTT uplink connects, "
        "stops cleanly); commit (floor raised) or switch back. Stop the gateway service "
        "first: the check uses the configured ports and database. Exit 1 when refused or "
        "rolled back, with the reason.")
    image_args(u)
    u.add_argument("--config", required=True, metavar="FILE",
                   help="the gateway configuration the new daemon is checked with")
    u.add_argument("--token", metavar="TOKEN", help="admin token of the REST API "
                   "(default $AIOT_TOKEN)")
    u.add_argument("--deadline", type=float, default=60.0, metavar="S",
                   help="seconds for the whole health check (60)")
    u.add_argument("--allow-nosec", action="store_true",
                   help='development only: check a config with security = "nosec"')
    u.set_defaults(func=cmd_update)

    s = gateway_sub.add_parser(
        "slots", help="show the self-update slots; --recover finishes an interrupted "
        "update",
        description="Print which slot is current and confirmed, the security-counter "
        "floor, each slot's version and the last result. --recover rolls back an update "
        "that was interrupted before its commit (run it before the daemon starts).")
    root_arg(s)
    s.add_argument("--recover", action="store_true", help="finish an interrupted update")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=cmd_slots)
