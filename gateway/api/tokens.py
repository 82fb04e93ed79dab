"""The REST API's bearer tokens: the tokens file, parsed into hashed ``Token``s, and read
again when it changes (``TokenFile``).

One token a line (``#`` starts a comment)::

    ROLE TOKEN [NAME] [expires=TIME] [revoked]

``ROLE`` is viewer, operator or admin. ``TOKEN`` is the token itself (16 characters at
least) or ``sha256:HEX``, the SHA-256 of it (``aiot tokens hash`` prints it), so the file
need not hold the secret; either way only the digest is kept in memory and a presented
token is compared by its digest, in constant time, with every line. ``NAME`` (no ``=``)
names the token in logs and in the audit log (default ``ROLE#LINE``); the token's value
is never written anywhere. The words after ``TOKEN`` come in any order:

- ``expires=TIME``: from then on the token is refused (401 ``token_expired``). ``TIME``
  is ISO 8601 with its zone (``2027-01-31T00:00:00Z``, ``2027-01-31T01:00:00+01:00``) or
  Unix seconds (``1801353600``).
- ``revoked``: the line stays (so logs and the audit log still name whoever tries it),
  the token is refused (401 ``token_revoked``). Deleting the line refuses it too, as an
  unknown token (401 ``unauthorized``).

The file is read again, without a restart, at the first request after ``[rest]
tokens_check_s`` seconds (0: at every request), and its tokens replace the old ones when
its content changed. A file that then cannot be read or parsed refuses every request
(503 ``tokens_unavailable``, logged once per change) until it is valid again: a
half-edited file must not keep a removed token alive.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from ..errors import ConfigError, GatewayError

__all__ = ["Role", "Token", "TokenFile", "TokensUnavailable", "load_tokens", "parse_tokens",
           "token_digest", "token_line_form"]

log = logging.getLogger("aiotkit.gateway.rest")

MIN_TOKEN_CHARS = 16
MAX_FILE_BYTES = 1 << 20  # a tokens file larger than this is refused, not read whole
_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")


class Role(IntEnum):
    """What a token may do; a higher role may do everything a lower one may."""

    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True, slots=True)
class Token:
    """One token of the file: the SHA-256 of its value, its role, a name for logs, when
    it expires (Unix seconds; None: never) and whether it is revoked."""

    digest: bytes
    role: Role
    name: str
    expires: float | None = None
    revoked: bool = False

    def __repr__(self) -> str:  # never show even the digest
        return f"Token({self.role.name}, {self.name!r})"

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class TokensUnavailable(GatewayError):
    """The tokens file changed into something that cannot be used: every request is
    refused until it is fixed (the message names the file and line, never a token)."""


def token_digest(secret: str) -> bytes:
    """The SHA-256 of a token, as the file's ``sha256:`` form holds it (a header's
    undecodable bytes are hashed as they came)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def token_line_form(secret: str) -> str:
    """``sha256:HEX`` of a token: what goes in the tokens file instead of the token."""
    return "sha256:" + token_digest(secret).hex()


def _expiry(value: str, where: str) -> float:
    if _UNIX_TIME.fullmatch(value):
        return float(value)
    hint = "ISO 8601 with a zone, 2027-01-31T00:00:00Z, or Unix seconds"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{where}: expires= is {hint}") from None
    if when.tzinfo is None:
        raise ConfigError(f"{where}: expires= needs its time zone ({hint})")
    return when.timestamp()


def parse_tokens(text: str, source: str = "<tokens>") -> list[Token]:
    """Parse a tokens file (module docstring); ``ConfigError`` names the line, never the
    token on it."""
    tokens: list[Token] = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}:{n}"
        if len(words) < 2:
            raise ConfigError(f"{where}: expected ROLE TOKEN [NAME] [expires=TIME] [revoked]")
        role_name, secret, *more = words
        if role_name not in Role.__members__:  # not echoed: it may be a misplaced token
            raise ConfigError(f"{where}: the first word is the role, one of"
                              f" {', '.join(Role.__members__)}")
        name: str | None = None
        expires: float | None = None
        revoked = False
        for word in more:
            key, eq, value = word.partition("=")
            if word == "revoked" and not revoked:
                revoked = True
            elif eq and key == "expires" and expires is None:
                expires = _expiry(value, where)
            elif eq or word == "revoked":
                raise ConfigError(f"{where}: after the token: one NAME, expires=TIME and"
                                  " revoked, each at most once")
            elif name is None:
                name = word
            else:
                raise ConfigError(f"{where}: one NAME at most (no spaces in it)")
        hashed = _SHA256.fullmatch(secret)
        if hashed:
            digest = bytes.fromhex(hashed.group(1))
        elif len(secret) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{where}: a token needs {MIN_TOKEN_CHARS} characters"
                              " at least (or give sha256:HEX)")
        else:
            digest = token_digest(secret)
        if any(hmac.compare_digest(t.digest, digest) for t in tokens):
            raise ConfigError(f"{where}: the same token is listed twice")
        tokens.append(Token(digest, Role[role_name], name or f"{role_name}#{n}",
                            expires, revoked))
    if not tokens:
        raise ConfigError(f"{source}: no tokens (lines ROLE TOKEN [NAME])")
    return tokens


def _read(p: Path) -> bytes:
    try:
        with p.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"rest.tokens_file: {p}: cannot read ({e.strerror or e})") from e
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"rest.tokens_file: {p}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _parse(p: Path, data: bytes) -> list[Token]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"rest.tokens_file: {p}: cannot read (not UTF-8 text)") from e
    try:
        if p.stat().st_mode & 0o077:
            log.warning("%s can be read by other users; chmod 600 it", p)
    except OSError:
        pass
    return parse_tokens(text, str(p))


def load_tokens(path: str | Path) -> list[Token]:
    """Read the tokens file at ``path``."""
    p = Path(path)
    return _parse(p, _read(p))


class TokenFile:
    """The tokens of ``path``, read again when ``tokens()`` is asked ``check_s`` seconds
    (``monotonic``) after the last look, and replaced when the content changed."""

    def __init__(self, path: str | Path, check_s: float, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._check_s = check_s
        self.monotonic = monotonic
        self._tokens: list[Token] = []
        self._seen = b""  # SHA-256 of the content last read
        self._broken: str | None = None  # why the current content cannot be used
        self._checked = 0.0

    def load(self) -> list[Token]:
        """The first read (at start): ``ConfigError`` stops the gateway."""
        data = _read(self.path)
        self._tokens = _parse(self.path, data)
        self._seen = hashlib.sha256(data).digest()
        self._checked = self.monotonic()
        return self._tokens

    def tokens(self) -> list[Token]:
        """The tokens in force; ``TokensUnavailable`` while the file is unusable."""
        now = self.monotonic()
        if now - self._checked >= self._check_s:
            self._checked = now
            self._reread()
        if self._broken is not None:
            raise TokensUnavailable(self._broken)
        return self._tokens

    def _reread(self) -> None:
        try:
            data = _read(self.path)
        except ConfigError as e:
            self._fail(hashlib.sha256(str(e).encode()).digest(), str(e))
            return
        seen = hashlib.sha256(data).digest()
        if seen == self._seen:
            return
        try:
            tokens = _parse(self.path, data)
        except ConfigError as e:
            self._fail(seen, str(e))
            return
        self._seen, self._tokens, self._broken = seen, tokens, None
        log.info("%s changed: %d token(s) (%d revoked) now in force", self.path,
                 len(tokens), sum(t.revoked for t in tokens))

    def _fail(self, seen: bytes, why: str) -> None:
        if seen != self._seen:  # once per change, however many requests follow
            log.error("%s; the REST API refuses every request until it is fixed", why)
        self._seen, self._broken = seen, why


def utc_text(t: float) -> str:
    """Unix seconds as ISO 8601 UTC, ``2027-01-31T00:00:00.000Z``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
