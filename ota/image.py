"""OTA images in MCUboot's format: one table of the header and TLVs, a parser, a builder
and :func:`verify`, the fail-closed check a device makes before it installs an image.

Layout (little-endian, MCUboot ``bootutil/image.h``; imgtool's ``image.py``)::

    header (32 bytes, padded to hdr_size)    | hashed
    payload (img_size bytes)                 | hashed
    protected TLV area (info magic 0x6908)   | hashed; protect_tlv_size in the header
    TLV area (info magic 0x6907)             | SHA256, then KEYHASH + signature per key

The hash is SHA-256 of the hashed region; each signature signs that digest (Ed25519
over the 32 bytes as imgtool does, ECDSA P-256 over the prehashed digest, which is what
imgtool's ECDSA over the whole region amounts to). aiotkit adds two protected TLVs of its
own in MCUboot's vendor range (0x00a0..0xfffe): ``AIOT_PAYLOAD_TYPE`` 0xa170 and
``AIOT_BOARD`` 0xa171, both ASCII strings (so ``imgtool sign --custom-tlv 0xa171 NAME``
writes them too). ota/README.md has the table of rejection reasons.

:func:`verify` is a pure function over bytes: no I/O, every offset bounds-checked, no
length trusted, the hashed region read once through a memoryview (no copy).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiotkit.ota.errors import ImageBuildError, ImageRejected
from aiotkit.ota.keys import (
    Algorithm,
    KeySet,
    Signer,
    key_id,
    public_der,
    public_from_der,
    verify_digest,
)

Buffer = bytes | bytearray | memoryview
_T = TypeVar("_T")

# --- the format, as one table ---------------------------------------------------------

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907  # unprotected TLV area
TLV_PROT_INFO_MAGIC = 0x6908  # protected TLV area
TLV_INFO_SIZE = 4  # u16 magic, u16 total size (info included)
TLV_SIZE = 4  # u16 type, u16 length
DEFAULT_HEADER_SIZE = 0x200
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class HeaderField:
    name: str
    offset: int
    fmt: str  # struct code, little-endian
    what: str


HEADER_FIELDS: tuple[HeaderField, ...] = (
    HeaderField("magic", 0, "I", "IMAGE_MAGIC 0x96f3b83d"),
    HeaderField("load_addr", 4, "I", "RAM load address (0: run in place)"),
    HeaderField("hdr_size", 8, "H", "header size with its padding (payload offset)"),
    HeaderField("protect_tlv_size", 10, "H", "size of the protected TLV area, info included"),
    HeaderField("img_size", 12, "I", "payload size"),
    HeaderField("flags", 16, "I", "IMAGE_F_* bits"),
    HeaderField("ver_major", 20, "B", "version"),
    HeaderField("ver_minor", 21, "B", "version"),
    HeaderField("ver_revision", 22, "H", "version"),
    HeaderField("ver_build", 24, "I", "version"),
    HeaderField("pad1", 28, "I", "reserved, 0"),
)
HEADER = struct.Struct("<" + "".join(f.fmt for f in HEADER_FIELDS))
HEADER_SIZE = HEADER.size  # 32
_TLV = struct.Struct("<HH")
_U32 = struct.Struct("<I")

# IMAGE_F_* (image.h). The verifier accepts only flags that do not change what the hash
# covers: an encrypted or compressed image is refused (its hash is over other bytes).
IMAGE_FLAGS = {
    "PIC": 0x0000001,
    "ENCRYPTED_AES128": 0x0000004,
    "ENCRYPTED_AES256": 0x0000008,
    "NON_BOOTABLE": 0x0000010,
    "RAM_LOAD": 0x0000020,
    "ROM_FIXED": 0x0000100,
    "COMPRESSED_LZMA1": 0x0000200,
    "COMPRESSED_LZMA2": 0x0000400,
    "COMPRESSED_ARM_THUMB": 0x0000800,
}
ACCEPTED_FLAGS = (IMAGE_FLAGS["PIC"] | IMAGE_FLAGS["NON_BOOTABLE"] | IMAGE_FLAGS["RAM_LOAD"]
                  | IMAGE_FLAGS["ROM_FIXED"])

Area = Literal["protected", "unprotected"]


@dataclass(frozen=True)
class TlvType:
    """One TLV type: its number, where it must be, its size rule, and whether aiotkit's
    verifier accepts it at all (MCUboot types it does not handle are refused)."""

    name: str
    number: int
    area: Area
    min_len: int
    max_len: int
    once: bool  # at most one per image
    accepted: bool
    what: str


TLV_TYPES: tuple[TlvType, ...] = (
    TlvType("KEYHASH", 0x01, "unprotected", 32, 32, False, True,
            "SHA-256 of the signing key's DER public key; precedes its signature"),
    TlvType("PUBKEY", 0x02, "unprotected", 32, 128, False, True,
            "the signing key's DER public key (imgtool --public-key-format full)"),
    TlvType("SHA256", 0x10, "unprotected", 32, 32, True, True,
            "SHA-256 of header + payload + protected TLVs"),
    TlvType("SHA384", 0x11, "unprotected", 48, 48, True, False, "not used here"),
    TlvType("SHA512", 0x12, "unprotected", 64, 64, True, False, "not used here"),
    TlvType("RSA2048", 0x20, "unprotected", 256, 256, False, False, "not used here"),
    TlvType("ECDSASIG", 0x22, "unprotected", 8, 72, False, True,
            "ECDSA P-256 signature of the digest (DER, zero padding allowed)"),
    TlvType("RSA3072", 0x23, "unprotected", 384, 384, False, False, "not used here"),
    TlvType("ED25519", 0x24, "unprotected", 64, 64, False, True,
            "Ed25519 signature of the digest"),
    TlvType("SIG_PURE", 0x25, "unprotected", 1, 1, True, False, "pure signatures: refused"),
    TlvType("ENCRSA2048", 0x30, "unprotected", 0, U16_MAX, True, False, "encryption: refused"),
    TlvType("ENCKW", 0x31, "unprotected", 0, U16_MAX, True, False, "encryption: refused"),
    TlvType("ENCEC256", 0x32, "unprotected", 0, U16_MAX, True, False, "encryption: refused"),
    TlvType("ENCX25519", 0x33, "unprotected", 0, U16_MAX, True, False, "encryption: refused"),
    TlvType("ENCX25519_SHA512", 0x34, "unprotected", 0, U16_MAX, True, False,
            "encryption: refused"),
    TlvType("DEPENDENCY", 0x40, "protected", 12, 12, False, False,
            "multi-image dependency: refused (not enforced here)"),
    TlvType("SEC_CNT", 0x50, "protected", 4, 4, True, True,
            "security counter, u32: never below the device's floor"),
    TlvType("BOOT_RECORD", 0x60, "protected", 0, U16_MAX, True, False, "refused"),
    TlvType("DECOMP_SIZE", 0x70, "protected", 0, U16_MAX, True, False, "refused"),
    TlvType("DECOMP_SHA", 0x71, "protected", 0, U16_MAX, True, False, "refused"),
    TlvType("DECOMP_SIGNATURE", 0x72, "protected", 0, U16_MAX, True, False, "refused"),
    TlvType("COMP_DEC_SIZE", 0x73, "protected", 0, U16_MAX, True, False, "refused"),
    TlvType("UUID_VID", 0x74, "protected", 16, 16, True, False, "refused"),
    TlvType("UUID_CID", 0x75, "protected", 16, 16, True, False, "refused"),
    TlvType("AIOT_PAYLOAD_TYPE", 0xA170, "protected", 1, 16, True, True,
            "aiotkit: what the payload is (app, model, gateway), ASCII"),
    TlvType("AIOT_BOARD", 0xA171, "protected", 1, 32, True, True,
            "aiotkit: the board the image is for (a boards/NAME.json name), ASCII"),
    TlvType("AIOT_MODEL_ID", 0xA172, "protected", 35, 81, True, True,
            "aiotkit, models only: SHA-256 of the .tflite (32 bytes), then the model "
            "card's NAME@VERSION, ASCII"),
    TlvType("AIOT_FEATURE_SPEC", 0xA173, "protected", 4, 4, True, True,
            "aiotkit, models only: the feature-spec version the model was trained on, u32"),
)
TLV_BY_NUMBER = {t.number: t for t in TLV_TYPES}
TLV = {t.name: t.number for t in TLV_TYPES}
SIGNATURE_TLVS: dict[int, Algorithm] = {TLV["ED25519"]: "ed25519",
                                        TLV["ECDSASIG"]: "ecdsa-p256"}
KEY_TLVS = (TLV["KEYHASH"], TLV["PUBKEY"])
SIG_TLV_OF: dict[Algorithm, int] = {a: n for n, a in SIGNATURE_TLVS.items()}
REQUIRED_TLVS = ("SHA256", "SEC_CNT", "AIOT_PAYLOAD_TYPE", "AIOT_BOARD")
MODEL_TLVS = ("AIOT_MODEL_ID", "AIOT_FEATURE_SPEC")  # required in a model, refused elsewhere

PAYLOAD_TYPES = ("app", "model", "gateway")
_BOARD = re.compile(rb"[a-z0-9][a-z0-9._-]{0,31}\Z")
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}\Z")
_MODEL_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,15}\Z")

# Why an image is refused: the reason code of every ImageRejected (ota/README.md).
REASONS: dict[str, str] = {
    "truncated": "shorter than its header or the lengths it declares",
    "bad-magic": "not an MCUboot image (header magic)",
    "bad-header": "a header field out of range (hdr_size below 32, pad not 0)",
    "unsupported-flags": "header flags this verifier does not accept (encrypted, "
                         "compressed, unknown)",
    "bad-tlv-info": "a TLV area does not start with its info magic",
    "protected-size-mismatch": "the header's protect_tlv_size disagrees with the "
                               "protected TLV area",
    "tlv-bounds": "a TLV runs past its area, or an area's size is inconsistent",
    "trailing-data": "bytes after the TLV area",
    "unknown-tlv": "a TLV type this verifier does not accept",
    "tlv-in-wrong-area": "a TLV outside the area its type must be in",
    "bad-tlv-size": "a TLV whose length breaks its type's size rule",
    "duplicate-tlv": "a TLV that may appear once appears twice",
    "missing-tlv": "a required TLV is absent (SHA256, SEC_CNT, payload type, board)",
    "hash-mismatch": "the SHA256 TLV is not the hash of the image",
    "unsigned": "no signature",
    "signature-without-key": "a signature TLV not preceded by a KEYHASH or PUBKEY",
    "key-without-signature": "a KEYHASH or PUBKEY not followed by a signature",
    "unknown-key": "a KEYHASH/PUBKEY naming a key not in the trusted set",
    "revoked-key": "a signature by a revoked key",
    "algorithm-mismatch": "a signature TLV of another algorithm than its key",
    "duplicate-signature": "the same key signs twice",
    "bad-signature": "a signature that does not verify",
    "no-active-signature": "no valid signature by an active key (only retired keys)",
    "rollback": "security counter below the device's floor",
    "wrong-board": "the image is for another board",
    "wrong-payload-type": "the image carries another kind of payload",
    "too-large": "the image does not fit the target slot",
    "unexpected-tlv": "a model's TLV in an image that is not a model",
    "bad-model-id": "the model id TLV is malformed or names another .tflite than the payload",
    "wrong-feature-spec": "the model was trained on another feature-spec version than the "
                          "device's",
}


def _reject(reason: str, message: str) -> ImageRejected:
    return ImageRejected(reason, message)  # tests check every reason used is in REASONS


def tlv_name(number: int) -> str:
    t = TLV_BY_NUMBER.get(number)
    return t.name if t else f"0x{number:04x}"


# --- parsed structure ------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ImageVersion:
    major: int
    minor: int
    revision: int
    build: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}+{self.build}"

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        """``MAJOR[.MINOR[.REVISION]][+BUILD]``, as imgtool's ``-v``."""
        m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\+(\d+))?", text.strip())
        if not m:
            raise ImageBuildError(f"version {text!r}: expected MAJOR.MINOR.REVISION[+BUILD]")
        major, minor, rev, build = (int(g) if g else 0 for g in m.groups())
        v = cls(major, minor, rev, build)
        if major > 0xFF or minor > 0xFF or rev > U16_MAX or build > U32_MAX:
            raise ImageBuildError(f"version {text!r}: fields are u8.u8.u16+u32")
        return v


@dataclass(frozen=True)
class Header:
    magic: int
    load_addr: int
    hdr_size: int
    protect_tlv_size: int
    img_size: int
    flags: int
    version: ImageVersion
    pad1: int

    def pack(self) -> bytes:
        v = self.version
        return HEADER.pack(self.magic, self.load_addr, self.hdr_size, self.protect_tlv_size,
                           self.img_size, self.flags, v.major, v.minor, v.revision, v.build,
                           self.pad1)


@dataclass(frozen=True)
class Tlv:
    type: int
    offset: int  # of the value, in the image
    length: int
    protected: bool

    @property
    def name(self) -> str:
        return tlv_name(self.type)


@dataclass(frozen=True)
class ParsedImage:
    """Where everything is. Only the structure is checked (bounds, magics, sizes of the
    areas): :func:`verify` checks the rest."""

    header: Header
    protected_offset: int  # = hdr_size + img_size: start of the protected area (or TLVs)
    hashed_size: int  # header + payload + protected TLVs
    size: int  # the whole image
    tlvs: tuple[Tlv, ...]

    @property
    def payload_offset(self) -> int:
        return self.header.hdr_size


def _entries(mv: memoryview, start: int, end: int, protected: bool) -> list[Tlv]:
    out = []
    off = start + TLV_INFO_SIZE
    while off < end:
        if off + TLV_SIZE > end:
            raise _reject("tlv-bounds", f"a TLV header at {off:#x} runs past its area "
                          f"(ends {end:#x})")
        kind, length = _TLV.unpack_from(mv, off)
        if off + TLV_SIZE + length > end:
            raise _reject("tlv-bounds", f"TLV {tlv_name(kind)} at {off:#x} ({length} bytes) "
                          f"runs past its area (ends {end:#x})")
        out.append(Tlv(kind, off + TLV_SIZE, length, protected))
        off += TLV_SIZE + length
    return out


def parse(image: Buffer) -> ParsedImage:
    """The image's structure; raises :class:`ImageRejected` on any inconsistency."""
    mv = memoryview(image).cast("B")
    n = len(mv)
    if n < HEADER_SIZE:
        raise _reject("truncated", f"{n} bytes: shorter than the {HEADER_SIZE}-byte header")
    f = HEADER.unpack_from(mv, 0)
    hdr = Header(f[0], f[1], f[2], f[3], f[4], f[5], ImageVersion(f[6], f[7], f[8], f[9]),
                 f[10])
    if hdr.magic != IMAGE_MAGIC:
        raise _reject("bad-magic", f"magic {hdr.magic:#010x}, expected {IMAGE_MAGIC:#010x}")
    if hdr.hdr_size < HEADER_SIZE:
        raise _reject("bad-header", f"hdr_size {hdr.hdr_size} is below {HEADER_SIZE}")
    if hdr.pad1 != 0:
        raise _reject("bad-header", f"reserved header word is {hdr.pad1:#x}, not 0")
    if hdr.flags & ~ACCEPTED_FLAGS:
        names = [k for k, v in IMAGE_FLAGS.items() if hdr.flags & v & ~ACCEPTED_FLAGS]
        unknown = hdr.flags & ~ACCEPTED_FLAGS & ~sum(IMAGE_FLAGS.values())
        what = names + ([f"{unknown:#x}"] if unknown else [])
        raise _reject("unsupported-flags", f"flags {', '.join(what)} are not accepted")
    prot_off = hdr.hdr_size + hdr.img_size
    if prot_off + TLV_INFO_SIZE > n:
        raise _reject("truncated", f"{n} bytes, but header + payload ({prot_off}) and a TLV "
                      "area do not fit")
    tlvs: list[Tlv] = []
    magic, total = _TLV.unpack_from(mv, prot_off)
    off = prot_off
    if hdr.protect_tlv_size:
        if magic != TLV_PROT_INFO_MAGIC:
            raise _reject("protected-size-mismatch", f"header says {hdr.protect_tlv_size} "
                          f"bytes of protected TLVs, but info magic at {prot_off:#x} is "
                          f"{magic:#06x}")
        if total != hdr.protect_tlv_size:
            raise _reject("protected-size-mismatch", f"header says {hdr.protect_tlv_size} "
                          f"bytes of protected TLVs, the area says {total}")
        if total < TLV_INFO_SIZE:
            raise _reject("tlv-bounds", f"protected TLV area of {total} bytes")
        if prot_off + total + TLV_INFO_SIZE > n:
            raise _reject("truncated", f"{n} bytes: the protected TLV area ends at "
                          f"{prot_off + total:#x} and the TLV area must follow")
        tlvs += _entries(mv, prot_off, prot_off + total, True)
        off = prot_off + total
        magic, total = _TLV.unpack_from(mv, off)
    elif magic == TLV_PROT_INFO_MAGIC:
        raise _reject("protected-size-mismatch", "a protected TLV area the header does not "
                      "declare (protect_tlv_size 0)")
    hashed = off
    if magic != TLV_INFO_MAGIC:
        raise _reject("bad-tlv-info", f"TLV info magic at {off:#x} is {magic:#06x}, expected "
                      f"{TLV_INFO_MAGIC:#06x}")
    if total < TLV_INFO_SIZE:
        raise _reject("tlv-bounds", f"TLV area of {total} bytes")
    end = off + total
    if end > n:
        raise _reject("truncated", f"{n} bytes, but the TLV area ends at {end:#x}")
    if end < n:
        raise _reject("trailing-data", f"{n - end} bytes after the TLV area (ends {end:#x})")
    tlvs += _entries(mv, off, end, False)
    return ParsedImage(hdr, prot_off, hashed, end, tuple(tlvs))


# --- verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImage:
    """What :func:`verify` vouches for. ``payload`` is a view into the verified bytes."""

    version: ImageVersion
    security_counter: int
    payload_type: str
    board: str
    digest: bytes
    signed_by: tuple[bytes, ...]  # ids of the active keys whose signatures verified
    header: Header
    payload: memoryview
    size: int
    model: ModelId | None = None  # a model's identity (payload type model)
    feature_spec: int | None = None  # the feature-spec version a model was trained on


@dataclass(frozen=True)
class ModelId:
    """A model's identity as its card gives it, carried in ``AIOT_MODEL_ID``: the
    SHA-256 of the .tflite, then ``NAME@VERSION`` in ASCII."""

    name: str
    version: str
    sha256: bytes

    def encode(self) -> bytes:
        if not _MODEL_NAME.match(self.name):
            raise ImageBuildError(f"model name {self.name!r}: lower-case letters, digits, "
                                  "'.', '_', '-' (max 32)")
        if not _MODEL_VERSION.match(self.version):
            raise ImageBuildError(f"model version {self.version!r}: letters, digits, "
                                  "'.', '+', '-' (max 16)")
        if len(self.sha256) != 32:
            raise ImageBuildError("model sha256: 32 bytes")
        return self.sha256 + f"{self.name}@{self.version}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> ModelId:
        try:
            name, _, version = raw[32:].decode("ascii").partition("@")
        except UnicodeDecodeError:
            name = version = ""
        if len(raw) < 35 or not _MODEL_NAME.match(name) or not _MODEL_VERSION.match(version):
            raise _reject("bad-model-id", "AIOT_MODEL_ID is not SHA-256 + NAME@VERSION")
        return cls(name, version, bytes(raw[:32]))

    def __str__(self) -> str:
        return f"{self.name}@{self.version} sha256 {self.sha256.hex()}"


def _ascii(mv: memoryview, t: Tlv) -> bytes:
    return bytes(mv[t.offset:t.offset + t.length])


def verify(image: Buffer, trusted: KeySet, *, floor: int, slot_size: int, board: str,
           payload_type: str, trailer_size: int = 0,
           feature_spec: int | None = None, any_feature_spec: bool = False) -> VerifiedImage:
    """Check ``image`` as a bootloader would, and more; raise :class:`ImageRejected`
    with a specific reason on the first fault, else return what was verified.

    Checks, in order: structure (:func:`parse`: magic, header fields, flags, TLV bounds,
    protected-area consistency, no trailing bytes); each TLV against :data:`TLV_TYPES`
    (accepted type, right area, size rule, once-only types); required TLVs; the image fits
    ``slot_size - trailer_size``; the hash (one pass over a memoryview); the signatures:
    every signature TLV directly after a KEYHASH/PUBKEY naming a key of ``trusted`` that
    is not revoked and of the signature's algorithm, every such signature valid, each key
    once, and at least one by an ``active`` key. Only then, on authentic content, the
    device's policy: board, payload type, security counter not below ``floor``; for a
    ``model``, its AIOT_MODEL_ID (naming the payload's SHA-256) and its
    AIOT_FEATURE_SPEC, which must equal ``feature_spec`` (the device's: a model trained
    on other features would compute nonsense; ``any_feature_spec``: a store serving
    devices of every spec, which check it themselves). A model's TLVs in any other image
    are refused.
    """
    if payload_type == "model" and feature_spec is None and not any_feature_spec:
        raise ValueError("a model is verified against the device's feature_spec version")
    mv = memoryview(image).cast("B")
    p = parse(mv)
    seen: dict[int, Tlv] = {}
    for t in p.tlvs:
        spec = TLV_BY_NUMBER.get(t.type)
        if spec is None or not spec.accepted:
            raise _reject("unknown-tlv", f"TLV {tlv_name(t.type)} is not accepted")
        if (spec.area == "protected") != t.protected:
            raise _reject("tlv-in-wrong-area", f"TLV {spec.name} must be in the {spec.area} "
                          "area")
        if not spec.min_len <= t.length <= spec.max_len:
            rule = (f"{spec.min_len}" if spec.min_len == spec.max_len
                    else f"{spec.min_len}..{spec.max_len}")
            raise _reject("bad-tlv-size", f"TLV {spec.name} of {t.length} bytes (must be "
                          f"{rule})")
        if spec.once and t.type in seen:
            raise _reject("duplicate-tlv", f"TLV {spec.name} appears twice")
        seen[t.type] = t
    for name in REQUIRED_TLVS:
        if TLV[name] not in seen:
            raise _reject("missing-tlv", f"no {name} TLV")

    limit = slot_size - trailer_size
    if p.size > limit:
        raise _reject("too-large", f"{p.size} bytes do not fit the slot ({slot_size} bytes"
                      + (f", {trailer_size} of them trailer)" if trailer_size else ")"))
    sha = seen[TLV["SHA256"]]
    claimed = bytes(mv[sha.offset:sha.offset + sha.length])
    # On a large image the signatures are checked (against the claimed digest) on a
    # worker thread while this one hashes: hashlib releases the GIL. The hash decides
    # first, so the reason given does not depend on the image's size.
    signatures = _start(_check_signatures, mv, p.tlvs, trusted, claimed,
                        parallel=p.hashed_size >= PARALLEL_HASH_MIN)
    digest = hashlib.sha256(mv[:p.hashed_size]).digest()
    if not hmac.compare_digest(digest, claimed):
        signatures.cancel()
        raise _reject("hash-mismatch", "the SHA256 TLV is not the image's hash")
    signed_by = signatures.result()
    # only now is the content authentic: the device's own policy
    got_board = _ascii(mv, seen[TLV["AIOT_BOARD"]])
    if not _BOARD.match(got_board) or got_board != board.encode():
        raise _reject("wrong-board", f"image for board {got_board!r}, this is {board!r}")
    got_type = _ascii(mv, seen[TLV["AIOT_PAYLOAD_TYPE"]])
    if got_type != payload_type.encode():
        raise _reject("wrong-payload-type", f"image carries {got_type!r}, expected "
                      f"{payload_type!r}")
    counter = _U32.unpack_from(mv, seen[TLV["SEC_CNT"]].offset)[0]
    if counter < floor:
        raise _reject("rollback", f"security counter {counter} is below the floor {floor}")
    payload = mv[p.payload_offset:p.payload_offset + p.header.img_size]
    model: ModelId | None = None
    trained_on: int | None = None
    if got_type == b"model":
        for name in MODEL_TLVS:
            if TLV[name] not in seen:
                raise _reject("missing-tlv", f"a model without {name}")
        model = ModelId.decode(_ascii(mv, seen[TLV["AIOT_MODEL_ID"]]))
        if not hmac.compare_digest(model.sha256, hashlib.sha256(payload).digest()):
            raise _reject("bad-model-id", f"model {model.name}@{model.version} names another"
                          " .tflite than the payload")
        trained_on = _U32.unpack_from(mv, seen[TLV["AIOT_FEATURE_SPEC"]].offset)[0]
        if not any_feature_spec and trained_on != feature_spec:
            raise _reject("wrong-feature-spec", f"model {model.name}@{model.version} is for "
                          f"feature spec {trained_on}, this device computes {feature_spec}")
    else:
        for name in MODEL_TLVS:
            if TLV[name] in seen:
                raise _reject("unexpected-tlv", f"{name} in a {got_type!r} image")

    return VerifiedImage(
        version=p.header.version, security_counter=counter,
        payload_type=got_type.decode(), board=got_board.decode(), digest=digest,
        signed_by=signed_by, header=p.header, payload=payload, size=p.size, model=model,
        feature_spec=trained_on)


# From this many hashed bytes up, the signatures are verified on a worker thread while
# the caller's thread hashes: a signature costs 70-100 us, a 1 MiB SHA-256 about 600 us.
PARALLEL_HASH_MIN = 256 * 1024
_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def _start(fn: Callable[..., _T], *args: Any, parallel: bool) -> Future[_T]:
    """``fn(*args)`` on the (lazily started, single) worker thread, or here and now."""
    global _worker
    if parallel:
        with _worker_lock:
            if _worker is None:
                _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiot-ota")
            return _worker.submit(fn, *args)
    done: Future[_T] = Future()
    try:
        done.set_result(fn(*args))
    except ImageRejected as e:
        done.set_exception(e)
    return done


def _check_signatures(mv: memoryview, tlvs: Sequence[Tlv], trusted: KeySet,
                      digest: bytes) -> tuple[bytes, ...]:
    pending: Tlv | None = None  # the KEYHASH/PUBKEY waiting for its signature
    used: set[bytes] = set()
    active: list[bytes] = []
    for t in tlvs:
        if t.type in KEY_TLVS:
            if pending is not None:
                raise _reject("key-without-signature", f"{pending.name} at {pending.offset:#x}"
                              " is not followed by its signature")
            pending = t
            continue
        if t.type not in SIGNATURE_TLVS:
            if pending is not None:  # a key TLV must be directly followed by its signature
                raise _reject("key-without-signature", f"{pending.name} at "
                              f"{pending.offset:#x} is followed by {t.name}, not a signature")
            continue
        if pending is None:
            raise _reject("signature-without-key", f"{t.name} at {t.offset:#x} has no "
                          "KEYHASH or PUBKEY before it")
        raw = bytes(mv[pending.offset:pending.offset + pending.length])
        if pending.type == TLV["KEYHASH"]:
            kid = raw
        else:
            pub = public_from_der(raw)
            if pub is None:
                raise _reject("unknown-key", "PUBKEY is not an Ed25519 or P-256 public key")
            kid = key_id(pub)
        pending = None
        entry = trusted.get(kid)
        if entry is None:
            raise _reject("unknown-key", f"key {kid.hex()[:16]}... is not trusted")
        if entry.state == "revoked":
            raise _reject("revoked-key", f"signed by revoked key {entry.name!r}")
        if SIGNATURE_TLVS[t.type] != entry.algorithm:
            raise _reject("algorithm-mismatch", f"{t.name} signature for {entry.algorithm} "
                          f"key {entry.name!r}")
        if kid in used:
            raise _reject("duplicate-signature", f"key {entry.name!r} signs twice")
        used.add(kid)
        sig = _signature_bytes(mv[t.offset:t.offset + t.length], entry.algorithm)
        if sig is None or not verify_digest(entry.key, sig, digest):
            raise _reject("bad-signature", f"the {t.name} signature of key {entry.name!r} "
                          "does not verify")
        if entry.state == "active":
            active.append(kid)
    if pending is not None:
        raise _reject("key-without-signature", f"{pending.name} at {pending.offset:#x} is "
                      "not followed by its signature")
    if not used:
        raise _reject("unsigned", "no signature TLV")
    if not active:
        raise _reject("no-active-signature", "signed only by retired keys")
    return tuple(active)


def _signature_bytes(raw: memoryview, algorithm: Algorithm) -> bytes | None:
    """The signature proper: Ed25519 as is; ECDSA a DER SEQUENCE with short-form length,
    followed only by zero padding (imgtool's --pad-sig). None if malformed."""
    if algorithm == "ed25519":
        return bytes(raw)
    if len(raw) < 2 or raw[0] != 0x30 or raw[1] >= 0x80 or raw[1] + 2 > len(raw):
        return None
    end = raw[1] + 2
    if any(raw[end:]):
        return None
    return bytes(raw[:end])


# --- building --------------------------------------------------------------------------


def mcuboot_trailer_size(align: int, max_sectors: int = 128, max_align: int = 8) -> int:
    """The swap trailer MCUboot keeps at the end of a slot (imgtool's ``_trailer_size``
    for an unencrypted, swap-capable image): ``-S`` checks image + trailer <= slot."""
    if align not in (1, 2, 4, 8, 16, 32):
        raise ImageBuildError(f"alignment {align}: one of 1, 2, 4, 8, 16, 32")
    max_align = max(max_align, align)
    magic = (16 + max_align - 1) & ~(max_align - 1)
    return max_sectors * 3 * align + max_align * 4 + magic


def tlv_area(magic: int, entries: Sequence[tuple[int, bytes]]) -> bytes:
    body = b"".join(_TLV.pack(kind, len(value)) + value for kind, value in entries)
    total = TLV_INFO_SIZE + len(body)
    if total > U16_MAX:
        raise ImageBuildError(f"TLV area of {total} bytes exceeds 65535")
    return _TLV.pack(magic, total) + body


def check_board(board: str) -> bytes:
    raw = board.encode()
    if not _BOARD.match(raw):
        raise ImageBuildError(f"board {board!r}: lower-case letters, digits, '.', '_', '-' "
                              "(max 32)")
    return raw


def build(payload: Buffer, signers: Sequence[Signer], *, version: ImageVersion,
          security_counter: int, payload_type: str, board: str,
          header_size: int = DEFAULT_HEADER_SIZE, load_addr: int = 0, flags: int = 0,
          slot_size: int = 0, trailer_size: int = 0, key_format: str = "hash",
          pad_value: int = 0xFF, model: ModelId | None = None,
          feature_spec: int | None = None) -> bytes:
    """A signed image: header (padded with ``pad_value`` to ``header_size``, as imgtool's
    ``--pad-header``), payload, protected TLVs (SEC_CNT, AIOT_PAYLOAD_TYPE, AIOT_BOARD),
    SHA256, then per signer a KEYHASH (or PUBKEY with ``key_format="full"``) and its
    signature. ``slot_size`` (0: no check) refuses an image that, with
    ``trailer_size``, would not fit. A ``model`` payload also carries AIOT_MODEL_ID
    (``model``, whose sha256 must be the payload's) and AIOT_FEATURE_SPEC
    (``feature_spec``); other payloads carry neither. A model built without them (as
    ``aiot ota sign`` would) is refused by :func:`verify` (``missing-tlv``)."""
    if not signers:
        raise ImageBuildError("at least one signing key is needed")
    if len({s.key_id for s in signers}) != len(signers):
        raise ImageBuildError("the same key is given twice")
    if not HEADER_SIZE <= header_size <= U16_MAX:
        raise ImageBuildError(f"header size {header_size}: {HEADER_SIZE}..{U16_MAX}")
    if payload_type not in PAYLOAD_TYPES:
        raise ImageBuildError(f"payload type {payload_type!r}: one of "
                              f"{', '.join(PAYLOAD_TYPES)}")
    if not 0 <= security_counter <= U32_MAX:
        raise ImageBuildError(f"security counter {security_counter}: 0..{U32_MAX}")
    if flags & ~ACCEPTED_FLAGS:
        raise ImageBuildError(f"flags {flags:#x}: only PIC, NON_BOOTABLE, RAM_LOAD, ROM_FIXED")
    if key_format not in ("hash", "full"):
        raise ImageBuildError(f"key format {key_format!r}: hash or full")
    body = memoryview(payload).cast("B")
    if len(body) > U32_MAX - header_size:
        raise ImageBuildError("payload too large for a u32 image size")
    protected = [
        (TLV["SEC_CNT"], _U32.pack(security_counter)),
        (TLV["AIOT_PAYLOAD_TYPE"], payload_type.encode()),
        (TLV["AIOT_BOARD"], check_board(board)),
    ]
    if (model is None) != (feature_spec is None):
        raise ImageBuildError("a model's identity and its feature-spec version go together")
    if payload_type == "model" and model is not None and feature_spec is not None:
        if model.sha256 != hashlib.sha256(body).digest():
            raise ImageBuildError(f"model {model.name}@{model.version}: its sha256 is not "
                                  "the payload's")
        if not 0 <= feature_spec <= U32_MAX:
            raise ImageBuildError(f"feature spec {feature_spec}: 0..{U32_MAX}")
        protected += [(TLV["AIOT_MODEL_ID"], model.encode()),
                      (TLV["AIOT_FEATURE_SPEC"], _U32.pack(feature_spec))]
    elif model is not None or feature_spec is not None:
        raise ImageBuildError(f"a {payload_type} image carries no model identity")
    prot = tlv_area(TLV_PROT_INFO_MAGIC, protected)
    header = Header(IMAGE_MAGIC, load_addr, header_size, len(prot), len(body), flags,
                    version, 0).pack()
    out = bytearray(header)
    out += bytes([pad_value]) * (header_size - HEADER_SIZE)
    out += body
    out += prot
    digest = hashlib.sha256(out).digest()
    entries: list[tuple[int, bytes]] = [(TLV["SHA256"], digest)]
    for s in signers:
        if key_format == "hash":
            entries.append((TLV["KEYHASH"], s.key_id))
        else:
            entries.append((TLV["PUBKEY"], public_der(s.public)))
        entries.append((SIG_TLV_OF[s.algorithm], s.sign_digest(digest)))
    out += tlv_area(TLV_INFO_MAGIC, entries)
    if slot_size and len(out) + trailer_size > slot_size:
        raise ImageBuildError(f"image of {len(out)} bytes"
                              + (f" + {trailer_size} bytes of trailer" if trailer_size else "")
                              + f" exceeds the slot ({slot_size} bytes)")
    return bytes(out)

