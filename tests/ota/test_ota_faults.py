"""Every fault issue 14 lists, each a named test, plus the structural faults a
bootloader must refuse: the verifier rejects with a specific reason, never accepts."""

from __future__ import annotations

import struct

import pytest
from aiotkit.ota import image
from aiotkit.ota.image import TLV
from otakit import (
    BOARD,
    PAYLOAD,
    assemble,
    check,
    flip,
    keyset,
    make,
    reason,
    signed_entries,
    signer,
    standard_protected,
    tlvs,
)

TRUSTED = keyset("ed-a", "ec-a")


@pytest.mark.parametrize("name", ["ed-a", "ec-a"])
def test_untampered_image_is_accepted(name):
    v = check(make(name), TRUSTED)
    assert v.signed_by == (signer(name).key_id,)


# --- truncation ---------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [0, 1, 31, 32, 0x200, 0x200 + len(PAYLOAD),
                                 0x200 + len(PAYLOAD) + 3, -1, -4, -64, -70])
def test_truncated_image(cut):
    img = make("ed-a")
    got = reason(img[:cut], TRUSTED)
    assert got in {"truncated", "tlv-bounds"}, got


def test_truncated_image_every_length_is_refused():
    img = make("ec-a")
    for n in range(len(img)):
        reason(img[:n], TRUSTED)


def test_truncated_image_with_a_shrunk_tlv_total_is_refused():
    """Cutting the last TLV and lowering the area's total (unhashed) to match: the
    signature is gone, so nothing signs it."""
    img = make("ed-a")
    sig = tlvs(img, "ED25519")[0]
    start = image.parse(img).hashed_size
    total = struct.unpack_from("<H", img, start + 2)[0] - 68
    cut = bytearray(img[:sig.offset - 4])
    struct.pack_into("<H", cut, start + 2, total)
    assert reason(bytes(cut), TRUSTED) == "key-without-signature"


# --- flipped bytes ------------------------------------------------------------------------

@pytest.mark.parametrize("where", [0, len(PAYLOAD) // 2, len(PAYLOAD) - 1])
def test_flipped_byte_in_payload(where):
    img = make("ed-a")
    assert reason(flip(img, 0x200 + where), TRUSTED) == "hash-mismatch"


_HEADER_RANGES = [  # header bytes -> what flipping one of them may be refused as
    (range(4), {"bad-magic"}),
    (range(4, 8), {"hash-mismatch"}),  # load_addr
    (range(8, 10), {"bad-header", "truncated", "tlv-bounds", "protected-size-mismatch",
                    "bad-tlv-info"}),
    (range(10, 12), {"protected-size-mismatch"}),
    (range(12, 16), {"truncated", "protected-size-mismatch", "bad-tlv-info", "tlv-bounds"}),
    (range(16, 20), {"unsupported-flags", "hash-mismatch"}),
    (range(20, 28), {"hash-mismatch"}),  # version
    (range(28, 32), {"bad-header"}),
]
HEADER_EXPECT = {i: reasons for r, reasons in _HEADER_RANGES for i in r}


@pytest.mark.parametrize("offset", range(32))
@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_flipped_byte_in_header(offset, mask):
    got = reason(flip(make("ed-a"), offset, mask), TRUSTED)
    assert got in HEADER_EXPECT[offset], (offset, got)


def test_flipped_byte_in_header_padding():
    assert reason(flip(make("ed-a"), 0x100), TRUSTED) == "hash-mismatch"


@pytest.mark.parametrize("name", ["SEC_CNT", "AIOT_PAYLOAD_TYPE", "AIOT_BOARD", "SHA256"])
def test_flipped_byte_in_each_tlv(name):
    img = make("ed-a")
    t = tlvs(img, name)[0]
    for off in range(t.offset, t.offset + t.length):
        assert reason(flip(img, off), TRUSTED) == "hash-mismatch", (name, off)


@pytest.mark.parametrize("name", ["SEC_CNT", "AIOT_BOARD", "SHA256", "KEYHASH", "ED25519"])
def test_flipped_byte_in_each_tlv_header(name):
    """The type and length bytes in front of a TLV: refused for what they break."""
    img = make("ed-a")
    t = tlvs(img, name)[0]
    for off in range(t.offset - 4, t.offset):
        assert reason(flip(img, off), TRUSTED) in {
            "unknown-tlv", "tlv-bounds", "bad-tlv-size", "tlv-in-wrong-area", "hash-mismatch",
            "duplicate-tlv", "missing-tlv", "signature-without-key", "key-without-signature",
            "algorithm-mismatch"}, (name, off)


@pytest.mark.parametrize("area", ["protected", "unprotected"])
def test_flipped_byte_in_tlv_info(area):
    img = make("ed-a")
    p = image.parse(img)
    start = p.protected_offset if area == "protected" else p.hashed_size
    for off in range(start, start + 4):
        got = reason(flip(img, off), TRUSTED)
        assert got in {"protected-size-mismatch", "bad-tlv-info", "truncated",
                       "tlv-bounds", "trailing-data"}, (off, got)


@pytest.mark.parametrize("name", ["ed-a", "ec-a"])
def test_flipped_byte_in_keyhash(name):
    img = make(name)
    kh = tlvs(img, "KEYHASH")[0]
    for off in (kh.offset, kh.offset + 17, kh.offset + 31):
        assert reason(flip(img, off), TRUSTED) == "unknown-key"


@pytest.mark.parametrize("name, tlv", [("ed-a", "ED25519"), ("ec-a", "ECDSASIG")])
def test_flipped_byte_in_signature(name, tlv):
    img = make(name)
    sig = tlvs(img, tlv)[0]
    for off in range(sig.offset, sig.offset + sig.length):
        assert reason(flip(img, off), TRUSTED) == "bad-signature", off


def test_flipped_byte_in_one_of_two_signatures():
    """MCUboot takes one good signature; here every signature must verify."""
    img = make("ed-a", "ec-a")
    sig = tlvs(img, "ECDSASIG")[0]
    assert reason(flip(img, sig.offset + 10), TRUSTED) == "bad-signature"


# --- keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ed-x", "ec-x"])
def test_wrong_key(name):
    assert reason(make(name), TRUSTED) == "unknown-key"


def test_wrong_key_with_keyhash_forged_to_a_trusted_key():
    img = make("ed-x")
    kh = tlvs(img, "KEYHASH")[0]
    forged = img[:kh.offset] + signer("ed-a").key_id + img[kh.offset + 32:]
    assert reason(forged, TRUSTED) == "bad-signature"


def test_wrong_key_alongside_a_trusted_one():
    """An extra signature by an untrusted key: refused (rotation must reach the device's
    trust set before images are signed with the new key)."""
    assert reason(make("ed-a", "ed-x"), TRUSTED) == "unknown-key"


def test_revoked_key():
    ks = keyset("ed-a", "ec-a").with_state("ed-a", "revoked")
    assert reason(make("ed-a"), ks) == "revoked-key"
    assert reason(make("ec-a", "ed-a"), ks) == "revoked-key"


def test_retired_key_alone_is_not_enough():
    ks = keyset("ed-a", "ec-a").with_state("ed-a", "retired")
    assert reason(make("ed-a"), ks) == "no-active-signature"
    assert check(make("ed-a", "ec-a"), ks).signed_by == (signer("ec-a").key_id,)


def test_keyhash_of_an_ecdsa_key_on_an_ed25519_signature():
    def entries(digest):
        return [(TLV["SHA256"], digest), (TLV["KEYHASH"], signer("ec-a").key_id),
                (TLV["ED25519"], signer("ed-a").sign_digest(digest))]

    img = assemble(standard_protected(), entries)
    assert reason(img, TRUSTED) == "algorithm-mismatch"


def test_signature_without_keyhash():
    def entries(digest):
        return [(TLV["SHA256"], digest), (TLV["ED25519"], signer("ed-a").sign_digest(digest))]

    assert reason(assemble(standard_protected(), entries), TRUSTED) == "signature-without-key"


def test_keyhash_without_signature():
    def entries(digest):
        return [*signed_entries("ed-a")(digest), (TLV["KEYHASH"], signer("ec-a").key_id)]

    assert reason(assemble(standard_protected(), entries), TRUSTED) == "key-without-signature"


def test_same_key_signing_twice():
    def entries(digest):
        return signed_entries("ed-a")(digest) + signed_entries("ed-a")(digest)[1:]

    assert reason(assemble(standard_protected(), entries), TRUSTED) == "duplicate-signature"


def test_unsigned_image():
    def entries(digest):
        return [(TLV["SHA256"], digest)]

    assert reason(assemble(standard_protected(), entries), TRUSTED) == "unsigned"


def test_empty_trust_set_accepts_nothing():
    assert reason(make("ed-a"), keyset()) == "unknown-key"


# --- device policy ------------------------------------------------------------------------

def test_security_counter_rollback():
    img = make("ed-a", security_counter=4)
    assert reason(img, TRUSTED, floor=5) == "rollback"
    assert check(img, TRUSTED, floor=4).security_counter == 4


def test_image_for_another_board():
    img = make("ed-a", board="rpi-pico-w")
    assert reason(img, TRUSTED, board=BOARD) == "wrong-board"
    assert check(img, TRUSTED, board="rpi-pico-w").board == "rpi-pico-w"


def test_image_with_another_payload_type():
    assert reason(make("ed-a", payload_type="model"), TRUSTED) == "wrong-payload-type"


def test_image_larger_than_the_slot():
    img = make("ed-a")
    assert reason(img, TRUSTED, slot_size=len(img) - 1) == "too-large"
    assert reason(img, TRUSTED, slot_size=len(img) + 100, trailer_size=101) == "too-large"
    assert check(img, TRUSTED, slot_size=len(img)).size == len(img)


# --- structure ----------------------------------------------------------------------------

def test_trailing_bytes_after_the_tlv_area():
    assert reason(make("ed-a") + b"\xff", TRUSTED) == "trailing-data"


def test_security_counter_outside_the_protected_area():
    def entries(digest):
        return [(TLV["SEC_CNT"], (99).to_bytes(4, "little")), *signed_entries("ed-a")(digest)]

    prot = [e for e in standard_protected() if e[0] != TLV["SEC_CNT"]]
    assert reason(assemble(prot, entries), TRUSTED) == "tlv-in-wrong-area"


@pytest.mark.parametrize("drop", ["SEC_CNT", "AIOT_PAYLOAD_TYPE", "AIOT_BOARD"])
def test_missing_protected_tlv(drop):
    prot = [e for e in standard_protected() if e[0] != TLV[drop]]
    assert reason(assemble(prot, signed_entries("ed-a")), TRUSTED) == "missing-tlv"


def test_missing_sha256():
    def entries(digest):
        return signed_entries("ed-a")(digest)[1:]

    assert reason(assemble(standard_protected(), entries), TRUSTED) == "missing-tlv"


def test_duplicate_security_counter():
    prot = [*standard_protected(), (TLV["SEC_CNT"], (1).to_bytes(4, "little"))]
    assert reason(assemble(prot, signed_entries("ed-a")), TRUSTED) == "duplicate-tlv"


def test_unknown_protected_tlv():
    prot = [*standard_protected(), (0xA1FF, b"x")]
    assert reason(assemble(prot, signed_entries("ed-a")), TRUSTED) == "unknown-tlv"


def test_dependency_tlv_is_refused():
    prot = [*standard_protected(), (TLV["DEPENDENCY"], bytes(12))]
    assert reason(assemble(prot, signed_entries("ed-a")), TRUSTED) == "unknown-tlv"


def test_security_counter_of_wrong_size():
    prot = [(TLV["SEC_CNT"], bytes(8)), *standard_protected()[1:]]
    assert reason(assemble(prot, signed_entries("ed-a")), TRUSTED) == "bad-tlv-size"


def test_protected_size_in_header_disagrees():
    prot = standard_protected()
    real = 4 + sum(4 + len(v) for _, v in prot)
    img = assemble(prot, signed_entries("ed-a"), protect_size=real + 4)
    assert reason(img, TRUSTED) == "protected-size-mismatch"


def test_protected_area_the_header_does_not_declare():
    img = assemble(standard_protected(), signed_entries("ed-a"), protect_size=0)
    assert reason(img, TRUSTED) == "protected-size-mismatch"


def test_encrypted_image_flag_is_refused():
    img = assemble(standard_protected(), signed_entries("ed-a"),
                   flags=image.IMAGE_FLAGS["ENCRYPTED_AES128"])
    assert reason(img, TRUSTED) == "unsupported-flags"


def test_header_size_below_32():
    img = bytearray(make("ed-a"))
    struct.pack_into("<H", img, 8, 16)
    assert reason(bytes(img), TRUSTED) == "bad-header"


def test_ecdsa_signature_with_garbage_padding():
    img = make("ec-a")
    sig = tlvs(img, "ECDSASIG")[0]
    raw = img[sig.offset:sig.offset + sig.length]

    def entries(digest):
        s = signer("ec-a").sign_digest(digest)
        return [(TLV["SHA256"], digest), (TLV["KEYHASH"], signer("ec-a").key_id),
                (TLV["ECDSASIG"], s + b"\x00" * (72 - len(s)))]

    padded = assemble(standard_protected(), entries)
    assert check(padded, TRUSTED).signed_by  # imgtool --pad-sig: zero padding is fine
    sig2 = tlvs(padded, "ECDSASIG")[0]
    if sig2.length > raw[1] + 2:
        assert reason(flip(padded, sig2.offset + sig2.length - 1), TRUSTED) == "bad-signature"


def test_every_reason_raised_is_in_the_table():
    import re
    from pathlib import Path

    src = Path(image.__file__).read_text()
    used = set(re.findall(r'_reject\(\s*"([a-z-]+)"', src))
    assert used <= set(image.REASONS), used - set(image.REASONS)
    assert set(image.REASONS) - used == set(), "a reason nothing raises"


@pytest.mark.parametrize("name, tlv", [("ed-a", "ED25519"), ("ec-a", "ECDSASIG")])
def test_large_image_gives_the_same_reasons(name, tlv):
    """Above PARALLEL_HASH_MIN the signatures are checked beside the hash on a worker
    thread: same verdicts, same reasons."""
    big = make(name, payload=bytes(image.PARALLEL_HASH_MIN + 1000))
    assert image.parse(big).hashed_size >= image.PARALLEL_HASH_MIN
    assert check(big, TRUSTED).signed_by == (signer(name).key_id,)
    sig = tlvs(big, tlv)[0]
    assert reason(flip(big, sig.offset + 3), TRUSTED) == "bad-signature"
    assert reason(flip(big, 0x300), TRUSTED) == "hash-mismatch"
    both = flip(flip(big, 0x300), sig.offset + 3)
    assert reason(both, TRUSTED) == "hash-mismatch"
    assert reason(make("ed-x", payload=bytes(image.PARALLEL_HASH_MIN)), TRUSTED) == "unknown-key"
