"""Keys at rest: the OSCORE master secrets are stored encrypted, never in clear.

Public names: ``AtRestKey`` (``load``, ``seal``, ``unseal``, ``check_value``,
``verify_check``), ``context_aad``, ``KEY_ENV``, ``generate_key_hex``.

**Where the key comes from.** 32 random bytes written as 64 hex digits, in the file
named by ``[security] key_file`` (relative to the config file), or, when that is empty,
in the environment variable ``AIOT_GATEWAY_KEY``. A file comes first because it keeps
the key apart from both the database (a backup or a copy of the ``.db`` is useless
without it) and the config file (which ``aiot gateway check`` prints and which is often
readable by all); it can have its own permissions (``chmod 600``, warned about
otherwise), live on another volume, or be a systemd credential (``LoadCredential=``
gives a file). The environment variable is for containers whose secret manager injects
variables; it is read only when no file is configured, so one configuration never has
two keys. The key never appears in the config, a log, an error or a repr.

**What is sealed.** Each context's master secret and salt, as CBOR ``[1, secret,
salt]``, with AES-256-GCM (``cryptography``) under a fresh random 96-bit nonce; the
blob is ``b"\\x01" + nonce + ciphertext-and-tag``. The associated data
(``context_aad``) is the row's endpoint, kid, kid context and gateway sender ID, so a
row's blob copied into another row (or an identifier edited) fails to open instead of
giving a node another node's key.

**A wrong key.** GCM authenticates: a wrong key fails the tag check, never decrypts to
garbage. The first key store on a database seals a known text (``check_value``) into
``oscore_meta``; each start opens it first (``verify_check``), so a wrong key stops the
gateway with one line (``WrongKeyError``) before any context is used.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2

from .errors import KeyConfigError, WrongKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ..config import SecurityConfig

__all__ = ["KEY_ENV", "AtRestKey", "context_aad", "generate_key_hex"]

log = logging.getLogger("aiotkit.gateway.security")

KEY_ENV = "AIOT_GATEWAY_KEY"
KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12
_CHECK_AAD = b"aiot-oscore-key-check-v1"
_CHECK_TEXT = b"aiotkit gateway at-rest key"


def generate_key_hex() -> str:
    """A new at-rest key as 64 hex digits (what a key file holds)."""
    return secrets.token_hex(KEY_BYTES)


def context_aad(endpoint: str, kid: bytes, kid_context: bytes | None,
                gateway_id: bytes) -> bytes:
    """The associated data that binds a sealed blob to its row."""
    return cbor2.dumps(["aiot-oscore-v1", endpoint, kid, kid_context, gateway_id])


class AtRestKey:
    """The AES-256-GCM key that seals the contexts' secrets (module docstring)."""

    __slots__ = ("_aead", "source")

    def __init__(self, key: bytes, source: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"{source}: the at-rest key must be {KEY_BYTES} bytes")
        self._aead: AESGCM = AESGCM(key)
        self.source = source  # where it came from, for messages: a file name or KEY_ENV

    def __repr__(self) -> str:
        return f"AtRestKey(<redacted>, from {self.source})"

    @classmethod
    def from_hex(cls, text: str, source: str) -> AtRestKey:
        text = text.strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            # the value is not shown: it may be the key with a typo
            raise KeyConfigError(f"{source}: must hold the at-rest key as {2 * KEY_BYTES} hex"
                                 " digits (make one with: aiot keys genkey FILE)")
        return cls(key, source)

    @classmethod
    def load(cls, config: SecurityConfig,
             environ: Mapping[str, str] | None = None) -> AtRestKey | None:
        """The key ``[security]`` names (``key_file``, else ``$AIOT_GATEWAY_KEY``);
        None when neither is set. ``KeyConfigError`` says what is wrong with it."""
        env = os.environ if environ is None else environ
        if config.key_file:
            path = Path(config.key_file)
            try:
                text = path.read_text("ascii")
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) else "not hex text"
                raise KeyConfigError(f"security.key_file: {path}: cannot read"
                                     f" ({why or e})") from None
            try:
                if path.stat().st_mode & 0o077:
                    log.warning("%s can be read by other users; chmod 600 it", path)
            except OSError:
                pass
            return cls.from_hex(text, f"security.key_file {path}")
        value = env.get(KEY_ENV, "")
        if value:
            return cls.from_hex(value, KEY_ENV)
        return None

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes, what: str) -> bytes:
        """Open ``blob``; ``WrongKeyError`` naming ``what`` if this key (or this row)
        did not seal it."""
        from cryptography.exceptions import InvalidTag

        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise WrongKeyError(f"{what}: the stored secrets are not in a format this"
                                " gateway reads")
        nonce, sealed = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise WrongKeyError(
                f"{what}: the at-rest key ({self.source}) does not open the stored"
                " secrets: another gateway's key, or the row was altered") from None

    def check_value(self) -> str:
        """A known text sealed with this key (hex), kept to recognise it later."""
        return self.seal(_CHECK_TEXT, _CHECK_AAD).hex()

    def verify_check(self, value: str, database: str) -> None:
        """``WrongKeyError`` unless ``value`` (``check_value`` of a key) is this key's."""
        try:
            blob = bytes.fromhex(value)
        except ValueError:
            blob = b""
        try:
            ok = self.unseal(blob, _CHECK_AAD, database) == _CHECK_TEXT
        except WrongKeyError:
            ok = False
        if not ok:
            raise WrongKeyError(
                f"{database}: the at-rest key ({self.source}) is not the one its OSCORE"
                " secrets were stored with; give that key ([security] key_file or"
                f" {KEY_ENV})")
