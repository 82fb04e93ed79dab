"""Shared helpers of the OTA tests: keys made once, images built with the project's
builder or assembled by hand (for structures the builder refuses to make), and a
``reason`` helper that fails the test if an image is accepted."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

import pytest
from aiotkit.ota import image, keys
from aiotkit.ota.errors import ImageRejected
from aiotkit.ota.image import TLV, ImageVersion

BOARD = "unix-sim"
SLOT = 1 << 20
FLOOR = 5
COUNTER = 7
PAYLOAD = bytes(range(256)) * 20 + b"aiotkit app bundle"


@functools.cache
def signer(name: str) -> keys.Signer:
    """One key per name for the whole session: ``ed-*`` Ed25519, ``ec-*`` P-256."""
    return keys.generate("ed25519" if name.startswith("ed") else "ecdsa-p256")


def keyset(*names: str, states: dict[str, keys.State] | None = None) -> keys.KeySet:
    ks = keys.KeySet()
    for n in names:
        ks = ks.add(n, signer(n).public, (states or {}).get(n, "active"))
    return ks


def make(*names: str, payload: bytes = PAYLOAD, **kw: object) -> bytes:
    args: dict[str, object] = {"version": ImageVersion(1, 2, 3),
                               "security_counter": COUNTER, "payload_type": "app",
                               "board": BOARD}
    args.update(kw)
    signers = [signer(n) for n in names or ("ed-a",)]
    return image.build(payload, signers, **args)  # type: ignore[arg-type]


def check(img: bytes | bytearray, ks: keys.KeySet, **kw: object) -> image.VerifiedImage:
    args: dict[str, object] = {"floor": FLOOR, "slot_size": SLOT, "board": BOARD,
                               "payload_type": "app"}
    args.update(kw)
    return image.verify(img, ks, **args)  # type: ignore[arg-type]


def reason(img: bytes | bytearray, ks: keys.KeySet, **kw: object) -> str:
    with pytest.raises(ImageRejected) as e:
        check(img, ks, **kw)
    assert e.value.reason in image.REASONS
    return e.value.reason


def tlvs(img: bytes, name: str) -> list[image.Tlv]:
    return [t for t in image.parse(img).tlvs if t.type == TLV[name]]


def flip(img: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(img)
    b[offset] ^= mask
    return bytes(b)


def standard_protected(counter: int = COUNTER, board: str = BOARD,
                       ptype: str = "app") -> list[tuple[int, bytes]]:
    return [(TLV["SEC_CNT"], counter.to_bytes(4, "little")),
            (TLV["AIOT_PAYLOAD_TYPE"], ptype.encode()), (TLV["AIOT_BOARD"], board.encode())]


def signed_entries(*names: str) -> Callable[[bytes], list[tuple[int, bytes]]]:
    """SHA256, then KEYHASH + signature per key: what the builder writes."""

    def entries(digest: bytes) -> list[tuple[int, bytes]]:
        out = [(TLV["SHA256"], digest)]
        for n in names:
            s = signer(n)
            out += [(TLV["KEYHASH"], s.key_id), (image.SIG_TLV_OF[s.algorithm],
                                                 s.sign_digest(digest))]
        return out

    return entries


def assemble(protected: Sequence[tuple[int, bytes]],
             unprotected: Callable[[bytes], list[tuple[int, bytes]]],
             payload: bytes = PAYLOAD, *, flags: int = 0, hdr_size: int = 0x200,
             protect_size: int | None = None) -> bytes:
    """An image put together by hand, hashed correctly over what it contains."""
    prot = image.tlv_area(image.TLV_PROT_INFO_MAGIC, protected) if protected else b""
    size = len(prot) if protect_size is None else protect_size
    head = image.Header(image.IMAGE_MAGIC, 0, hdr_size, size, len(payload), flags,
                        ImageVersion(1, 2, 3), 0).pack()
    hashed = head + b"\xff" * (hdr_size - len(head)) + payload + prot
    digest = hashlib.sha256(hashed).digest()
    return hashed + image.tlv_area(image.TLV_INFO_MAGIC, unprotected(digest))
