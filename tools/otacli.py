"""``aiot ota``: signing keys, trust files and signed OTA images (MCUboot format).

``keygen`` makes a key pair (private key encrypted); ``trust add|retire|revoke|list``
keeps the trust file a device verifies against; ``sign`` makes an image from a payload
file; ``verify`` checks an image as a device would (fails closed, with a reason code);
``inspect`` dumps an image's header and TLVs. ota/README.md describes the format and the
key rotation path. ``image upload|list`` and ``campaign create|list|show|start|pause|
resume|abort`` talk to a running gateway's OTA service (``tools/otaservicecli.py``).

Passphrases never come from the command line: ``--passphrase-file FILE`` (one per
``--key``, or one for all), else the ``AIOT_OTA_PASSPHRASE`` environment variable, else a
prompt on the terminal.

Exit status: 0 done (``verify``: the image is accepted); 1 the image is rejected, or a
failure; 2 a mistake in the command or its input (a missing file, a wrong passphrase).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import UsageError

PROG = "aiot ota"
PASSPHRASE_ENV = "AIOT_OTA_PASSPHRASE"


def _int(text: str) -> int:
    """A whole number, decimal or 0x-hex (imgtool's -H 0x200 -S 0x80000)."""
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return v


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path}: is a folder") from None


def _passphrases(args: argparse.Namespace, count: int, *, new: bool) -> list[bytes]:
    files = args.passphrase_file or []
    if files:
        if len(files) not in (1, count):
            raise UsageError(f"give one --passphrase-file, or one per key ({count})")
        out = []
        for f in files:
            text = _read(f, "--passphrase-file").decode("utf-8", "replace")
            out.append(text.rstrip("\r\n").encode())
        return out * count if len(out) == 1 else out
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return [env.encode()] * count
    if not sys.stdin.isatty():
        raise UsageError(f"no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}"
                         " (no terminal to ask on)")
    out = []
    for i in range(count):
        what = f" for key {i + 1}" if count > 1 else ""
        p = getpass.getpass(f"passphrase{what}: ")
        if new and getpass.getpass("again: ") != p:
            raise UsageError("the passphrases differ")
        out.append(p.encode())
    return out


def _exclusive_write(path: Path, data: bytes, mode: int) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists already: a key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _board_slot(board: str) -> int | None:
    """The board's slot_a size from boards/NAME.json, if that board is shipped."""
    from aiotkit.boards.paths import boards_dir

    path = boards_dir() / f"{board}.json"
    if not path.is_file():
        return None
    try:
        size = json.loads(path.read_text())["flash"]["regions"]["slot_a"]["size"]
    except (ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) else None


def cmd_keygen(args: argparse.Namespace) -> int:
    from aiotkit.ota import keys

    out = Path(args.key)
    pub = Path(args.public) if args.public else out.with_name(out.stem + ".pub.pem")
    for p in (out, pub):
        if p.exists():
            raise UsageError(f"{p} exists already: a key is never overwritten")
    trust = keys.load_keyset(Path(args.trust)) if args.trust else None
    (passphrase,) = _passphrases(args, 1, new=True)
    signer = keys.generate(args.type)
    pem = keys.private_pem(signer, passphrase)
    if trust is not None:
        trust = trust.add(args.name or out.stem, signer.public)
    _exclusive_write(out, pem, 0o600)
    _exclusive_write(pub, keys.public_pem(signer.public), 0o644)
    print(f"{args.type} key {signer.key_id.hex()}: private (encrypted) {out}, public {pub}")
    if trust is not None:
        keys.save_keyset(Path(args.trust), trust)
        print(f"added to {args.trust} as {args.name or out.stem!r} (active)")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from aiotkit.ota import keys

    path = Path(args.trust)
    if args.trust_command == "add":
        ks = keys.load_keyset(path) if path.exists() else keys.KeySet()
        pub = keys.load_public(_read(args.public, "public key"), where=args.public)
        ks = ks.add(args.name, pub)
        keys.save_keyset(path, ks)
        print(f"{args.name}: {keys.algorithm_of(pub)} {keys.key_id(pub).hex()} added (active)")
        return 0
    ks = keys.load_keyset(path)
    if args.trust_command in ("retire", "revoke"):
        ks = ks.with_state(args.ref,
                           "retired" if args.trust_command == "retire" else "revoked")
        keys.save_keyset(path, ks)
        k = ks.find(args.ref)
        print(f"{k.name}: {k.id.hex()} is now {k.state}")
        return 0
    if args.json:
        print(json.dumps({"keys": [{k: v for k, v in e.to_json().items() if k != "public_key"}
                                   for e in ks.values()]}))
        return 0
    for e in ks.values():
        print(f"{e.id.hex()}  {e.algorithm:<10}  {e.state:<7}  {e.name}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from aiotkit.ota import image, keys

    payload = _read(args.input, "input")
    pems = [_read(k, "--key") for k in args.key]
    trust = keys.load_keyset(Path(args.trust)) if args.trust else None
    version = image.ImageVersion.parse(args.version)
    image.check_board(args.board)
    slot = args.slot_size if args.slot_size is not None else _board_slot(args.board) or 0
    trailer = image.mcuboot_trailer_size(args.align, args.max_sectors) if slot else 0
    passphrases = _passphrases(args, len(pems), new=False)
    signers = [keys.load_signer(pem, pw, where=k)
               for pem, pw, k in zip(pems, passphrases, args.key, strict=True)]
    if trust is not None:
        for s, k in zip(signers, args.key, strict=True):
            entry = trust.get(s.key_id)
            if entry is None or entry.state != "active":
                state = "not in it" if entry is None else entry.state
                raise UsageError(f"--key {k}: not an active key of {args.trust} ({state})")
    data = image.build(
        payload, signers, version=version, security_counter=args.security_counter,
        payload_type=args.payload_type, board=args.board, header_size=args.header_size,
        load_addr=args.load_addr, slot_size=slot, trailer_size=trailer,
        key_format=args.public_key_format)
    from aiotkit.ota.keys import write_atomic

    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist")
    write_atomic(out, data, mode=0o644)
    print(f"{out}: {len(data)} bytes, version {version}, security counter "
          f"{args.security_counter}, {args.payload_type} for {args.board}, signed by "
          + ", ".join(s.key_id.hex()[:16] for s in signers))
    return 0


def model_identity(model: Path, card_path: Path | None) -> tuple[bytes, Any, int]:
    """The .tflite's bytes, its identity (the card's name and version, the file's
    SHA-256) and its feature-spec version; the card must describe this very file and
    agree with the model's own ``aiot.model`` metadata."""
    from aiotkit.models import tflmeta
    from aiotkit.ota.image import ModelId

    blob = _read(str(model), "model")
    card_path = card_path or model.with_name("card.json")
    try:
        card = json.loads(_read(str(card_path), "model card"))
        name, version = card["name"], card["version"]
        card_sha, spec = card["model"]["sha256"], card["feature_spec"]["version"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"model card {card_path}: not a model card ({e})") from None
    digest = hashlib.sha256(blob).digest()
    if card_sha != digest.hex():
        raise UsageError(f"model card {card_path} describes another .tflite (sha256 "
                         f"{str(card_sha)[:16]}..., {model} is {digest.hex()[:16]}...)")
    try:
        meta = tflmeta.aiot_model(blob)
    except ValueError as e:
        raise UsageError(f"{model}: {e}") from None
    inner = (meta.get("feature_spec") or {}).get("version")
    if type(spec) is not int or inner != spec:
        raise UsageError(f"{model}: feature spec {inner!r} in the model, {spec!r} in its card")
    return blob, ModelId(str(name), str(version), digest), spec


def cmd_sign_model(args: argparse.Namespace) -> int:
    from aiotkit.ota import image, keys

    blob, model, spec = model_identity(Path(args.model),
                                       Path(args.card) if args.card else None)
    version = image.ImageVersion.parse(args.version or model.version)
    image.check_board(args.board)
    slot = args.slot_size if args.slot_size is not None else _board_slot(args.board) or 0
    trailer = image.mcuboot_trailer_size(4) if slot else 0
    pems = [_read(k, "--key") for k in args.key]
    passphrases = _passphrases(args, len(pems), new=False)
    signers = [keys.load_signer(pem, pw, where=k)
               for pem, pw, k in zip(pems, passphrases, args.key, strict=True)]
    data = image.build(blob, signers, version=version, security_counter=args.security_counter,
                       payload_type="model", board=args.board, slot_size=slot,
                       trailer_size=trailer, model=model, feature_spec=spec)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist")
    keys.write_atomic(out, data, mode=0o644)
    print(f"{out}: {len(data)} bytes, model {model.name}@{model.version} (sha256 "
          f"{model.sha256.hex()}), feature spec {spec}, for {args.board}, version {version},"
          f" security counter {args.security_counter}, image sha256 "
          f"{hashlib.sha256(data).hexdigest()}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from aiotkit.ota import image, keys

    if args.payload_type == "model" and args.feature_spec is None:
        raise UsageError("--payload-type model needs --feature-spec N (the device's)")

    data = _read(args.image, "image")
    trust = keys.load_keyset(Path(args.trust))
    slot = args.slot_size if args.slot_size is not None else _board_slot(args.board)
    if slot is None:
        raise UsageError(f"board {args.board!r} is not shipped: give --slot-size")
    v = image.verify(data, trust, floor=args.floor, slot_size=slot, board=args.board,
                     payload_type=args.payload_type, trailer_size=args.trailer_size,
                     feature_spec=args.feature_spec if args.payload_type == "model" else None)
    names = [trust[k].name for k in v.signed_by]
    model = f", model {v.model.name}@{v.model.version} feature spec {v.feature_spec}" \
        if v.model else ""
    if args.json:
        print(json.dumps({"ok": True, "version": str(v.version),
                          "security_counter": v.security_counter,
                          "payload_type": v.payload_type, "board": v.board,
                          "sha256": v.digest.hex(), "signed_by": names, "size": v.size,
                          **({"model": {"name": v.model.name, "version": v.model.version,
                                        "sha256": v.model.sha256.hex(),
                                        "feature_spec": v.feature_spec}}
                             if v.model else {})}))
    else:
        print(f"{args.image}: OK, version {v.version}, security counter {v.security_counter},"
              f" {v.payload_type} for {v.board}{model}, sha256 {v.digest.hex()}, signed by "
              + ", ".join(names))
    return 0


def inspect_dict(data: bytes) -> dict[str, Any]:
    from aiotkit.ota import image

    p = image.parse(data)
    h = p.header
    tlvs = []
    for t in p.tlvs:
        raw = data[t.offset:t.offset + t.length]
        entry: dict[str, Any] = {"type": f"0x{t.type:04x}", "name": t.name,
                                 "area": "protected" if t.protected else "unprotected",
                                 "offset": t.offset, "length": t.length, "hex": raw.hex()}
        if t.type == image.TLV["SEC_CNT"] and t.length == 4:
            entry["value"] = int.from_bytes(raw, "little")
        elif t.type in (image.TLV["AIOT_BOARD"], image.TLV["AIOT_PAYLOAD_TYPE"]):
            entry["value"] = raw.decode("ascii", "replace")
        elif t.type == image.TLV["AIOT_FEATURE_SPEC"] and t.length == 4:
            entry["value"] = int.from_bytes(raw, "little")
        elif t.type == image.TLV["AIOT_MODEL_ID"] and t.length > 32:
            entry["value"] = (raw[32:].decode("ascii", "replace") + " sha256 "
                              + raw[:32].hex())
        tlvs.append(entry)
    flags = [k for k, v in image.IMAGE_FLAGS.items() if h.flags & v]
    return {
        "header": {"magic": f"0x{h.magic:08x}", "load_addr": h.load_addr,
                   "hdr_size": h.hdr_size, "protect_tlv_size": h.protect_tlv_size,
                   "img_size": h.img_size, "flags": flags, "version": str(h.version)},
        "hashed_size": p.hashed_size, "size": p.size, "tlvs": tlvs,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_dict(_read(args.image, "image"))
    if args.json:
        print(json.dumps(info))
        return 0
    h = info["header"]
    print(f"{args.image}: MCUboot image, {info['size']} bytes (hashed {info['hashed_size']})")
    print(f"  version {h['version']}  hdr_size {h['hdr_size']:#x}  img_size {h['img_size']}"
          f"  protect_tlv_size {h['protect_tlv_size']}  load_addr {h['load_addr']:#x}"
          f"  flags {','.join(h['flags']) or '-'}")
    for t in info["tlvs"]:
        shown = t.get("value", t["hex"] if len(t["hex"]) <= 64 else t["hex"][:64] + "...")
        print(f"  {t['area']:<11} {t['type']} {t['name']:<17} {t['length']:>4}  {shown}")
    return 0


def _add_passphrase_file(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("--passphrase-file", action="append", metavar="FILE",
                   help="read the passphrase from FILE (first line)"
                   + ("; repeat once per --key, in order" if many else "")
                   + f"; default ${PASSPHRASE_ENV}, else a prompt")


def register(subparsers: Any) -> None:
    """Add ``aiot ota ...`` to the aiot parser."""
    from aiotkit.ota import image, keys

    o = subparsers.add_parser(
        "ota",
        help="signing keys and signed OTA images (MCUboot format, imgtool-compatible)",
        description="Keys, trust files and signed OTA images in MCUboot's format: what "
        "'aiot ota sign' makes passes 'imgtool verify', and 'aiot ota verify' accepts what "
        "imgtool signs (with aiotkit's board and payload-type TLVs). Private keys are "
        f"encrypted; passphrases come from --passphrase-file, ${PASSPHRASE_ENV} or a prompt."
        " Exit status: 0 done/accepted, 1 rejected or failed, 2 a mistake in the command.",
    )
    osub = o.add_subparsers(dest="ota_command", metavar="ACTION")
    osub.required = True

    kg = osub.add_parser(
        "keygen", help="make a signing key pair (private key encrypted)",
        description="Write a new private key as encrypted PKCS#8 PEM (mode 600) and its "
        "public key as PEM. Nothing is overwritten. --trust also adds the key to a trust "
        "file as active.")
    kg.add_argument("-k", "--key", required=True, metavar="KEY.pem", help="private key file")
    kg.add_argument("-t", "--type", choices=keys.ALGORITHMS, default="ed25519",
                    help="algorithm (default ed25519)")
    kg.add_argument("--public", metavar="PUB.pem", help="public key file (KEY.pub.pem)")
    kg.add_argument("--trust", metavar="TRUST.json", help="add the key to this trust file")
    kg.add_argument("--name", help="its name in the trust file (default: KEY)")
    _add_passphrase_file(kg, False)
    kg.set_defaults(func=cmd_keygen)

    tr = osub.add_parser(
        "trust", help="the trust file: add, retire, revoke, list keys",
        description="The keys a device accepts, by id (SHA-256 of the DER public key, as "
        "imgtool's KEYHASH). active: signs and counts; retired: no longer counts; revoked: "
        "an image it signed is refused. Keys move forward only. Rotation: add the new key, "
        "sign with both, retire the old (ota/README.md).")
    tsub = tr.add_subparsers(dest="trust_command", metavar="ACTION")
    tsub.required = True
    ta = tsub.add_parser("add", help="add a public key (active); creates the file")
    ta.add_argument("trust", metavar="TRUST.json")
    ta.add_argument("public", metavar="PUB.pem")
    ta.add_argument("--name", required=True, help="a name for the key")
    for name, what in (("retire", "stop counting a key's signatures"),
                       ("revoke", "refuse every image a key signed")):
        t = tsub.add_parser(name, help=what)
        t.add_argument("trust", metavar="TRUST.json")
        t.add_argument("ref", metavar="KEY", help="name, or hex id (8+ digits)")
    tl = tsub.add_parser("list", help="show the keys")
    tl.add_argument("trust", metavar="TRUST.json")
    tl.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=cmd_trust)

    sg = osub.add_parser(
        "sign", help="make a signed image from a payload file",
        description="Header (padded to -H), payload, protected TLVs (SEC_CNT, "
        "AIOT_PAYLOAD_TYPE, AIOT_BOARD), SHA256, then KEYHASH + signature for each --key. "
        "-S (default: the board's slot_a size) refuses an image that with MCUboot's "
        "trailer (--align, --max-sectors) would not fit.")
    sg.add_argument("input", metavar="PAYLOAD")
    sg.add_argument("output", metavar="IMAGE")
    sg.add_argument("-k", "--key", action="append", required=True, metavar="KEY.pem",
                    help="encrypted private key; repeat to sign with several (rotation)")
    sg.add_argument("-v", "--version", required=True, help="MAJOR.MINOR.REVISION[+BUILD]")
    sg.add_argument("--security-counter", type=_int, required=True, metavar="N",
                    help="u32; devices refuse an image below their floor")
    sg.add_argument("--payload-type", choices=image.PAYLOAD_TYPES, required=True)
    sg.add_argument("--board", required=True, help="board name (boards/NAME.json)")
    sg.add_argument("-H", "--header-size", type=_int, default=image.DEFAULT_HEADER_SIZE,
                    help="header size with padding (default 0x200)")
    sg.add_argument("-S", "--slot-size", type=_int, help="slot size (default: the board's)")
    sg.add_argument("--align", type=int, choices=[1, 2, 4, 8, 16, 32], default=4,
                    help="flash write alignment, for the trailer (4)")
    sg.add_argument("--max-sectors", type=_int, default=128, help="for the trailer (128)")
    sg.add_argument("--load-addr", type=_int, default=0, help="RAM load address (0)")
    sg.add_argument("--public-key-format", choices=["hash", "full"], default="hash",
                    help="KEYHASH (default) or the full PUBKEY before each signature")
    sg.add_argument("--trust", metavar="TRUST.json",
                    help="refuse to sign with a key that is not active in this trust file")
    _add_passphrase_file(sg, True)
    sg.set_defaults(func=cmd_sign)

    vf = osub.add_parser(
        "verify", help="check an image as a device would (exit 1 with a reason if refused)",
        description="Structure and bounds, TLV table, hash, every signature against the "
        "trust file (KEYHASH naming a trusted, unrevoked key), then board, payload type, "
        "security counter >= --floor and size <= slot. Prints 'image rejected (REASON): "
        "...' and exits 1 on any fault; reasons are listed in ota/README.md.")
    vf.add_argument("image", metavar="IMAGE")
    vf.add_argument("--trust", required=True, metavar="TRUST.json")
    vf.add_argument("--board", required=True, help="the device's board")
    vf.add_argument("--payload-type", choices=image.PAYLOAD_TYPES, default="app",
                    help="what the slot takes (default app)")
    vf.add_argument("--floor", type=_int, default=0,
                    help="the device's security counter floor (0)")
    vf.add_argument("-S", "--slot-size", type=_int, help="slot size (default: the board's)")
    vf.add_argument("--trailer-size", type=_int, default=0,
                    help="bytes at the slot's end the image may not use (0)")
    vf.add_argument("--feature-spec", type=_int, metavar="N",
                    help="with --payload-type model: the device's feature-spec version; a "
                    "model for another is refused (wrong-feature-spec)")
    vf.add_argument("--json", action="store_true", help="print JSON")
    vf.set_defaults(func=cmd_verify)

    sm = osub.add_parser(
        "sign-model", help="make a signed model image from a .tflite and its model card",
        description="Sign MODEL.tflite as payload type 'model' for a board, carrying the "
        "model card's identity (AIOT_MODEL_ID 0xa172: the file's SHA-256 and NAME@VERSION) "
        "and its feature-spec version (AIOT_FEATURE_SPEC 0xa173), both protected. The card "
        "(default card.json beside the model) must name this file's SHA-256 and the "
        "feature spec in the model's own metadata. A device verifies with "
        "'aiot ota verify --payload-type model --feature-spec N'.")
    sm.add_argument("model", metavar="MODEL.tflite")
    sm.add_argument("output", metavar="IMAGE")
    sm.add_argument("--card", metavar="card.json", help="model card (default: beside it)")
    sm.add_argument("-k", "--key", action="append", required=True, metavar="KEY.pem",
                    help="encrypted private key; repeat to sign with several")
    sm.add_argument("--board", required=True, help="board name (boards/NAME.json)")
    sm.add_argument("--security-counter", type=_int, required=True, metavar="N",
                    help="u32; devices refuse an image below their floor")
    sm.add_argument("-v", "--version", help="image version (default: the card's version)")
    sm.add_argument("-S", "--slot-size", type=_int, help="slot size (default: the board's)")
    _add_passphrase_file(sm, True)
    sm.set_defaults(func=cmd_sign_model)

    ins = osub.add_parser(
        "inspect", help="dump an image's header and TLVs (no signature check)",
        description="Header fields and every TLV (type, area, length, value). The "
        "structure is checked (bounds, magics); trust is not: use verify for that.")
    ins.add_argument("image", metavar="IMAGE")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=cmd_inspect)

    from aiotkit.tools import modelscli, otaservicecli

    otaservicecli.register(osub)
    modelscli.register(osub)
