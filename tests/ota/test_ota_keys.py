"""Keys: private keys only encrypted, key ids as imgtool's KEYHASH, the trust file, and
the rotation path of ota/README.md played through (add, sign with both, retire,
revoke)."""

from __future__ import annotations

import json

import pytest
from aiotkit.ota import keys
from aiotkit.ota.errors import KeyFileError
from cryptography.hazmat.primitives import serialization
from otakit import check, keyset, make, reason, signer


@pytest.mark.parametrize("alg", keys.ALGORITHMS)
def test_private_key_round_trip_is_encrypted(alg):
    s = keys.generate(alg)
    pem = keys.private_pem(s, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keys.load_signer(pem, b"correct horse").key_id == s.key_id


def test_wrong_passphrase_is_one_clear_error():
    pem = keys.private_pem(keys.generate("ed25519"), b"right")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keys.load_signer(pem, b"wrong")


def test_unencrypted_private_key_is_refused():
    raw = keys.generate("ecdsa-p256").private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="not encrypted"):
        keys.load_signer(raw, b"")


def test_empty_passphrase_is_refused():
    with pytest.raises(KeyFileError, match="empty passphrase"):
        keys.private_pem(keys.generate("ed25519"), b"")


def test_key_id_is_sha256_of_der_public_key():
    import hashlib

    s = signer("ec-a")
    der = s.public.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert s.key_id == hashlib.sha256(der).digest()


def test_signer_repr_shows_no_secret():
    assert "PRIVATE" not in repr(signer("ed-a")) and "Signer(ed25519" in repr(signer("ed-a"))


def test_trust_file_round_trip():
    ks = keyset("ed-a", "ec-a").with_state("ed-a", "retired")
    again = keys.KeySet.from_json(ks.to_json())
    assert [(k.name, k.state, k.algorithm) for k in again.values()] == [
        ("ed-a", "retired", "ed25519"), ("ec-a", "active", "ecdsa-p256")]


def test_trust_file_with_an_id_not_matching_its_key_is_refused():
    doc = json.loads(keyset("ed-a").to_json())
    doc["keys"][0]["id"] = signer("ec-a").key_id.hex()
    with pytest.raises(KeyFileError, match="not the hash of its key"):
        keys.KeySet.from_json(json.dumps(doc))


@pytest.mark.parametrize("text", ["", "[]", '{"schema": 2, "keys": []}',
                                  '{"schema": 1, "keys": [{"id": 1}]}'])
def test_malformed_trust_file_is_refused(text):
    with pytest.raises(KeyFileError):
        keys.KeySet.from_json(text)


def test_revoked_key_never_comes_back():
    ks = keyset("ed-a").with_state("ed-a", "revoked")
    with pytest.raises(KeyFileError, match="cannot become active"):
        ks.with_state("ed-a", "active")


def test_same_key_twice_is_refused():
    with pytest.raises(KeyFileError, match="already"):
        keyset("ed-a").add("again", signer("ed-a").public)


def test_find_by_id_prefix():
    ks = keyset("ed-a", "ec-a")
    assert ks.find(signer("ec-a").key_id.hex()[:10]).name == "ec-a"
    with pytest.raises(KeyFileError):
        ks.find("abc")


def test_rotation_path():
    """Old key ed-a, new key ec-b: 1. devices trust both; 2. releases are signed with
    both; 3. the old key is retired; 4. (if compromised) revoked."""
    old_only = make("ed-a", security_counter=7)
    device = keyset("ed-a")
    check(old_only, device)
    # 1. the new key reaches the devices first (an image it signs is refused before)
    assert reason(make("ed-a", "ec-b"), device) == "unknown-key"
    device = device.add("ec-b", signer("ec-b").public)
    # 2. sign with both: old and updated devices accept
    both = make("ed-a", "ec-b", security_counter=8)
    assert set(check(both, device).signed_by) == {signer("ed-a").key_id, signer("ec-b").key_id}
    assert check(both, keyset("ed-a", "ec-b")).version
    # 3. retire the old key: its images alone no longer count, dual-signed ones still do
    device = device.with_state("ed-a", "retired")
    assert reason(old_only, device) == "no-active-signature"
    assert check(both, device).signed_by == (signer("ec-b").key_id,)
    assert check(make("ec-b", security_counter=9), device).security_counter == 9
    # 4. revoke it: anything it signed is refused, even next to the new key
    device = device.with_state("ed-a", "revoked")
    assert reason(both, device) == "revoked-key"
    check(make("ec-b", security_counter=9), device)
