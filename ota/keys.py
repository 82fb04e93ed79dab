"""Signing keys and the trusted key set of OTA images.

Two algorithms, as MCUboot signs: **Ed25519** (signature TLV ``ED25519`` over the image's
SHA-256 digest, as imgtool does) and **ECDSA P-256** (TLV ``ECDSASIG``, a DER signature
of SHA-256 over the hashed region, i.e. over the same digest, prehashed).

- A **key id** is SHA-256 of the public key's DER SubjectPublicKeyInfo: exactly what
  imgtool writes into the ``KEYHASH`` TLV, and what MCUboot compares with its built-in
  keys.
- **Private keys** are stored as encrypted PKCS#8 PEM (``BestAvailableEncryption``); this
  module refuses to load or write an unencrypted one. The passphrase is bytes given by
  the caller (the CLI reads it from a prompt, ``AIOT_OTA_PASSPHRASE`` or a file, never
  from the command line).
- The **trust file** (JSON, :class:`KeySet`) lists the public keys a device accepts, each
  with a name and a state: ``active`` (its signatures count), ``retired`` (no longer
  signs new images; a signature by it is still checked but does not count) or
  ``revoked`` (any image carrying its signature is refused). ota/README.md gives the
  rotation path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

from aiotkit.ota.errors import KeyFileError
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

Algorithm = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ed25519", "ecdsa-p256")
State = Literal["active", "retired", "revoked"]
STATES: tuple[State, ...] = ("active", "retired", "revoked")
TRUST_SCHEMA = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

PublicKeyObj = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKeyObj = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def public_der(key: PublicKeyObj) -> bytes:
    """DER SubjectPublicKeyInfo: what MCUboot embeds and imgtool hashes."""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKeyObj) -> bytes:
    """SHA-256 of the DER public key: the value of a ``KEYHASH`` TLV."""
    return hashlib.sha256(public_der(key)).digest()


def algorithm_of(key: PublicKeyObj | PrivateKeyObj) -> Algorithm:
    """The algorithm of a key object; any other key type is refused."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise KeyFileError(f"unsupported elliptic curve {key.curve.name}: only P-256 (and "
                       "Ed25519) sign OTA images")


def verify_digest(key: PublicKeyObj, signature: bytes, digest: bytes) -> bool:
    """Whether ``signature`` signs the 32-byte image ``digest`` with ``key`` (imgtool's
    conventions: Ed25519 over the digest, ECDSA over the prehashed digest, DER)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, digest)
        else:
            key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """A private key that signs image digests (the builder takes one or more)."""

    private: PrivateKeyObj

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.private)

    @property
    def public(self) -> PublicKeyObj:
        return self.private.public_key()

    @property
    def key_id(self) -> bytes:
        return key_id(self.public)

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)
        return self.private.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def __repr__(self) -> str:  # never the key itself
        return f"Signer({self.algorithm}, {self.key_id.hex()[:16]})"


def generate(algorithm: Algorithm) -> Signer:
    if algorithm == "ed25519":
        return Signer(ed25519.Ed25519PrivateKey.generate())
    if algorithm == "ecdsa-p256":
        return Signer(ec.generate_private_key(ec.SECP256R1()))
    raise KeyFileError(f"unknown algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")


def private_pem(signer: Signer, passphrase: bytes) -> bytes:
    """The key as encrypted PKCS#8 PEM; an empty passphrase is refused."""
    if not passphrase:
        raise KeyFileError("an empty passphrase would leave the private key unencrypted")
    return signer.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase))


def public_pem(key: PublicKeyObj) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def is_encrypted_pem(pem: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem


def load_signer(pem: bytes, passphrase: bytes, *, where: str = "key") -> Signer:
    """An encrypted PKCS#8 private key; an unencrypted one is refused."""
    if b"PRIVATE KEY-----" not in pem:
        raise KeyFileError(f"{where}: not a PEM private key")
    if not is_encrypted_pem(pem):
        raise KeyFileError(f"{where}: the private key is not encrypted; signing keys are "
                           "stored encrypted (aiot ota keygen writes them so)")
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{where}: wrong passphrase or damaged key file") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError(f"{where}: {type(key).__name__} keys do not sign OTA images "
                           "(Ed25519 or ECDSA P-256)")
    signer = Signer(key)
    algorithm_of(key)  # refuses other curves
    return signer


def load_public(pem: bytes, *, where: str = "public key") -> PublicKeyObj:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{where}: not a PEM public key") from None
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise KeyFileError(f"{where}: {type(key).__name__} keys do not sign OTA images "
                           "(Ed25519 or ECDSA P-256)")
    algorithm_of(key)
    return key


def public_from_der(der: bytes) -> PublicKeyObj | None:
    """A DER SubjectPublicKeyInfo (a ``PUBKEY`` TLV) as a key, None if it is not one."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return None
    if isinstance(key, ed25519.Ed25519PublicKey) or (
            isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        return key
    return None


@dataclass(frozen=True)
class TrustedKey:
    """One entry of the trust file."""

    id: bytes
    name: str
    algorithm: Algorithm
    state: State
    key: PublicKeyObj

    def to_json(self) -> dict[str, str]:
        return {"id": self.id.hex(), "name": self.name, "algorithm": self.algorithm,
                "state": self.state, "public_key": public_pem(self.key).decode()}


class KeySet(Mapping[bytes, TrustedKey]):
    """The public keys a device trusts, by key id (immutable: changes return a new set).

    Keys are parsed once, when the set is made, so verifying an image costs no parsing.
    """

    def __init__(self, keys: tuple[TrustedKey, ...] = ()) -> None:
        by_id: dict[bytes, TrustedKey] = {}
        names: set[str] = set()
        for k in keys:
            if k.id in by_id:
                raise KeyFileError(f"key {k.id.hex()[:16]} is listed twice")
            if k.name in names:
                raise KeyFileError(f"two keys are named {k.name!r}")
            by_id[k.id] = k
            names.add(k.name)
        self._keys = by_id

    def __getitem__(self, kid: bytes) -> TrustedKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet({', '.join(f'{k.name}:{k.state}' for k in self._keys.values())})"

    @classmethod
    def of(cls, *pairs: tuple[str, PublicKeyObj], state: State = "active") -> KeySet:
        """A set of keys in one state (tests, and a device's built-in keys)."""
        return cls(tuple(TrustedKey(key_id(k), name, algorithm_of(k), state, k)
                         for name, k in pairs))

    def add(self, name: str, key: PublicKeyObj, state: State = "active") -> KeySet:
        if not _NAME.match(name):
            raise KeyFileError(f"key name {name!r}: letters, digits, '.', '_', '-' (max 64)")
        entry = TrustedKey(key_id(key), name, algorithm_of(key), state, key)
        if entry.id in self._keys:
            raise KeyFileError(f"this key is in the set already, as "
                               f"{self._keys[entry.id].name!r}")
        return KeySet((*self._keys.values(), entry))

    def find(self, ref: str) -> TrustedKey:
        """A key by name, by full hex id or by a unique hex id prefix of 8+ digits."""
        for k in self._keys.values():
            if k.name == ref:
                return k
        ref_l = ref.lower()
        hits = [k for k in self._keys.values()
                if len(ref_l) >= 8 and k.id.hex().startswith(ref_l)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise KeyFileError(f"{ref!r} matches {len(hits)} keys: give more digits")
        raise KeyFileError(f"no key named {ref!r} or with that id in the trust file")

    def with_state(self, ref: str, state: State) -> KeySet:
        """The set with one key moved to ``state``. Keys only move forward
        (active -> retired -> revoked); a revoked key never comes back."""
        k = self.find(ref)
        if STATES.index(state) < STATES.index(k.state):
            raise KeyFileError(f"key {k.name!r} is {k.state}: it cannot become {state} again")
        return KeySet(tuple(replace(e, state=state) if e.id == k.id else e
                            for e in self._keys.values()))

    def to_json(self) -> str:
        doc = {"schema": TRUST_SCHEMA, "keys": [k.to_json() for k in self._keys.values()]}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "trust file") -> KeySet:
        """Parse a trust file; each entry's id must be the hash of its key."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise KeyFileError(f"{where}: not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("schema") != TRUST_SCHEMA:
            raise KeyFileError(f"{where}: expected an object with \"schema\": {TRUST_SCHEMA}")
        raw = doc.get("keys")
        if not isinstance(raw, list):
            raise KeyFileError(f"{where}: \"keys\" must be a list")
        entries = []
        for i, ent in enumerate(raw):
            at = f"{where}: keys[{i}]"
            if not isinstance(ent, dict) or not all(
                    isinstance(ent.get(f), str)
                    for f in ("id", "name", "algorithm", "state", "public_key")):
                raise KeyFileError(f"{at}: needs id, name, algorithm, state and public_key "
                                   "(strings)")
            key = load_public(ent["public_key"].encode(), where=at)
            kid = key_id(key)
            if ent["id"].lower() != kid.hex():
                raise KeyFileError(f"{at}: id {ent['id'][:16]}... is not the hash of its key")
            if ent["algorithm"] != algorithm_of(key):
                raise KeyFileError(f"{at}: algorithm {ent['algorithm']!r} but the key is "
                                   f"{algorithm_of(key)}")
            if ent["state"] not in STATES:
                raise KeyFileError(f"{at}: state must be one of {', '.join(STATES)}")
            if not _NAME.match(ent["name"]):
                raise KeyFileError(f"{at}: bad name {ent['name']!r}")
            entries.append(TrustedKey(kid, ent["name"], algorithm_of(key),
                                      cast(State, ent["state"]), key))
        return cls(tuple(entries))


def load_keyset(path: Path) -> KeySet:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such trust file") from None
    return KeySet.from_json(text, where=str(path))


def save_keyset(path: Path, keys: KeySet) -> None:
    """Write the trust file whole or not at all (temp file, then ``os.replace``)."""
    write_atomic(path, keys.to_json().encode(), mode=0o644)


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
