"""Peer checks with the real ``imgtool`` (MCUboot's, from PyPI) as a subprocess: what
aiotkit signs passes ``imgtool verify``; what imgtool signs passes aiotkit's verifier; an
imgtool image with its KEYHASH altered still passes ``imgtool verify`` and is refused
here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiotkit.ota import image, keys
from otakit import BOARD, COUNTER, check, flip, keyset, make, reason, signer, tlvs

IMGTOOL = Path(sys.executable).parent / "imgtool"
pytestmark = pytest.mark.skipif(not IMGTOOL.exists(), reason="imgtool (test extra) missing")
SLOT = "0x80000"
TYPES = {"ed25519": "ed25519", "ecdsa-p256": "ecdsa-p256"}


def imgtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IMGTOOL), *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


def imgtool_verify(pub: Path, img: Path) -> subprocess.CompletedProcess[str]:
    return imgtool("verify", "-k", str(pub), str(img))


def accepted(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == 0 and "Image was correctly validated" in r.stdout


@pytest.fixture(scope="module")
def imgtool_keys(tmp_path_factory):
    """Keys made by imgtool itself (unencrypted: imgtool cannot take a passphrase from
    anywhere but a terminal), with their public PEM and aiotkit's view of them."""
    d = tmp_path_factory.mktemp("imgtool-keys")
    out = {}
    for alg in TYPES:
        priv, pub = d / f"{alg}.pem", d / f"{alg}.pub.pem"
        r = imgtool("keygen", "-k", str(priv), "-t", alg)
        assert r.returncode == 0, r.stderr
        r = imgtool("getpub", "-k", str(priv), "-e", "pem")
        assert r.returncode == 0, r.stderr
        pub.write_text(r.stdout)
        out[alg] = (priv, pub, keys.load_public(pub.read_bytes()))
    return out


def imgtool_sign(tmp_path: Path, priv: Path, *extra: str, custom: bool = True) -> bytes:
    src, dst = tmp_path / "in.bin", tmp_path / f"signed-{priv.stem}.bin"
    src.write_bytes(b"\x5a" * 3000 + b"imgtool payload")
    tlv_args = ["--custom-tlv", "0xa170", "app", "--custom-tlv", "0xa171", BOARD] if custom else []
    r = imgtool("sign", "-k", str(priv), "--align", "4", "-v", "1.2.3", "-H", "0x200",
                "--pad-header", "-S", SLOT, "--security-counter", str(COUNTER), *tlv_args,
                *extra, str(src), str(dst))
    assert r.returncode == 0, r.stderr + r.stdout
    return dst.read_bytes()


# --- aiotkit signs, imgtool verifies ----------------------------------------------------

@pytest.mark.parametrize("name", ["ed-a", "ec-a"])
def test_aiotkit_signed_image_passes_imgtool_verify(tmp_path, name):
    img, pub = tmp_path / "img.bin", tmp_path / "pub.pem"
    img.write_bytes(make(name))
    pub.write_bytes(keys.public_pem(signer(name).public))
    r = imgtool_verify(pub, img)
    assert accepted(r), r.stdout + r.stderr
    assert "Image version: 1.2.3+0" in r.stdout


def test_aiotkit_dual_signed_image_passes_imgtool_verify_with_either_key(tmp_path):
    img = tmp_path / "img.bin"
    img.write_bytes(make("ed-a", "ec-a"))
    for name in ("ed-a", "ec-a"):
        pub = tmp_path / f"{name}.pem"
        pub.write_bytes(keys.public_pem(signer(name).public))
        assert accepted(imgtool_verify(pub, img)), name


def test_aiotkit_image_with_a_flipped_payload_byte_fails_imgtool_verify(tmp_path):
    """The peer check can fail: imgtool does notice a broken hash."""
    img, pub = tmp_path / "img.bin", tmp_path / "pub.pem"
    img.write_bytes(flip(make("ed-a"), 0x210))
    pub.write_bytes(keys.public_pem(signer("ed-a").public))
    r = imgtool_verify(pub, img)
    assert not accepted(r) and "invalid hash" in r.stdout


def test_imgtool_dumpinfo_reads_aiotkit_images(tmp_path):
    img = tmp_path / "img.bin"
    img.write_bytes(make("ec-a"))
    r = imgtool("dumpinfo", str(img))
    assert r.returncode == 0, r.stderr
    assert "0x96f3b83d" in r.stdout.lower() and "0xa171" in r.stdout.lower()


# --- imgtool signs, aiotkit verifies ----------------------------------------------------

@pytest.mark.parametrize("alg", TYPES)
def test_imgtool_signed_image_passes_aiotkit_verify(tmp_path, imgtool_keys, alg):
    priv, _, pub = imgtool_keys[alg]
    img = imgtool_sign(tmp_path, priv)
    ks = keys.KeySet.of(("imgtool", pub))
    v = check(img, ks, slot_size=int(SLOT, 16))
    assert (str(v.version), v.security_counter, v.board, v.payload_type) == (
        "1.2.3+0", COUNTER, BOARD, "app")
    # imgtool's KEYHASH is aiotkit's key id: SHA-256 of the DER public key
    assert tlvs(img, "KEYHASH")[0].length == 32
    kh = tlvs(img, "KEYHASH")[0]
    assert img[kh.offset:kh.offset + 32] == keys.key_id(pub) == v.signed_by[0]


@pytest.mark.parametrize("alg", TYPES)
def test_imgtool_signed_image_with_full_public_key_passes_aiotkit_verify(tmp_path,
                                                                        imgtool_keys, alg):
    priv, _, pub = imgtool_keys[alg]
    img = imgtool_sign(tmp_path, priv, "--public-key-format", "full")
    assert not tlvs(img, "KEYHASH")
    pk = tlvs(img, "PUBKEY")[0]
    assert img[pk.offset:pk.offset + pk.length] == keys.public_der(pub)
    assert check(img, keys.KeySet.of(("imgtool", pub))).signed_by == (keys.key_id(pub),)


def test_imgtool_padded_ecdsa_signature_passes_aiotkit_verify(tmp_path, imgtool_keys):
    priv, _, pub = imgtool_keys["ecdsa-p256"]
    img = imgtool_sign(tmp_path, priv, "--pad-sig")
    assert tlvs(img, "ECDSASIG")[0].length == 72
    assert check(img, keys.KeySet.of(("imgtool", pub))).security_counter == COUNTER


def test_imgtool_image_without_board_and_payload_type_is_refused(tmp_path, imgtool_keys):
    """The issue's imgtool command line alone leaves out aiotkit's protected TLVs: the
    verifier cannot check board and payload type, so it refuses (fails closed)."""
    priv, _, pub = imgtool_keys["ed25519"]
    img = imgtool_sign(tmp_path, priv, custom=False)
    assert reason(img, keys.KeySet.of(("imgtool", pub))) == "missing-tlv"


def test_imgtool_image_for_another_board_is_refused(tmp_path, imgtool_keys):
    priv, _, pub = imgtool_keys["ed25519"]
    img = imgtool_sign(tmp_path, priv)
    assert reason(img, keys.KeySet.of(("imgtool", pub)), board="rpi-pico-w") == "wrong-board"


def test_imgtool_image_signed_by_an_untrusted_key_is_refused(tmp_path, imgtool_keys):
    priv, _, _ = imgtool_keys["ecdsa-p256"]
    assert reason(imgtool_sign(tmp_path, priv), keyset("ed-a", "ec-a")) == "unknown-key"


@pytest.mark.parametrize("alg", TYPES)
def test_imgtool_image_with_altered_keyhash_passes_imgtool_but_is_refused(tmp_path,
                                                                         imgtool_keys, alg):
    priv, pubfile, pub = imgtool_keys[alg]
    img = imgtool_sign(tmp_path, priv)
    kh = tlvs(img, "KEYHASH")[0]
    altered = tmp_path / "altered.bin"
    altered.write_bytes(flip(img, kh.offset + 5, 0xFF))
    r = imgtool_verify(pubfile, altered)
    assert accepted(r), "imgtool now checks KEYHASH: REFERENCE.md's finding has changed"
    got = reason(altered.read_bytes(), keys.KeySet.of(("imgtool", pub)))
    assert got == "unknown-key"


def test_imgtool_security_counter_below_the_floor_is_refused(tmp_path, imgtool_keys):
    priv, _, pub = imgtool_keys["ed25519"]
    img = imgtool_sign(tmp_path, priv)
    assert reason(img, keys.KeySet.of(("imgtool", pub)), floor=COUNTER + 1) == "rollback"


def test_imgtool_table_numbers_match_aiotkit_table():
    from imgtool import image as imgtool_image

    ours = {t.name: t.number for t in image.TLV_TYPES if not t.name.startswith("AIOT_")}
    assert ours == {k: v for k, v in imgtool_image.TLV_VALUES.items() if k in ours}
    assert imgtool_image.IMAGE_MAGIC == image.IMAGE_MAGIC
    assert imgtool_image.TLV_INFO_MAGIC == image.TLV_INFO_MAGIC
    assert imgtool_image.TLV_PROT_INFO_MAGIC == image.TLV_PROT_INFO_MAGIC
    assert imgtool_image.IMAGE_F == image.IMAGE_FLAGS
    lo, hi = imgtool_image.TLV_VENDOR_RES_MIN, imgtool_image.TLV_VENDOR_RES_MAX
    assert all(lo <= t.number <= hi for t in image.TLV_TYPES if t.name.startswith("AIOT_"))
    assert image.mcuboot_trailer_size(4) == imgtool_image.Image(align=4)._trailer_size(
        4, 128, False, None, False, 0)
