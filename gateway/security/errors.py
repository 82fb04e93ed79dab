"""The key store's exceptions (``gateway.security``), all ``GatewayError``\\ s.

``KeyConfigError`` and ``WrongKeyError`` are configuration mistakes (exit status 2 from
``aiot gateway run``); the others are refusals of a key-management request, each with
the HTTP status the REST API answers it with (``status``). No message ever holds a
secret: they name endpoints, kids and files.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigError, GatewayError

__all__ = ["AlreadyExported", "ContextExists", "ContextRevoked", "KeyConfigError",
           "KeyRequestError", "SecurityError", "UnknownContext", "WrongKeyError"]


class SecurityError(GatewayError):
    """Base of the key store's errors."""


class KeyConfigError(SecurityError, ConfigError):
    """The at-rest key cannot be read: file missing, unreadable or not 64 hex digits."""


class WrongKeyError(SecurityError, ConfigError):
    """The at-rest key does not open what is stored: another gateway's key, or a changed
    one. Nothing is decrypted into garbage; the gateway refuses to go on."""


class KeyRequestError(SecurityError):
    """A key-management request refused; ``status``: its HTTP status, ``kind``: the
    REST API's error kind."""

    status: ClassVar[int] = 400
    kind: ClassVar[str] = "bad_request"


class UnknownContext(KeyRequestError):
    """No security context for this endpoint."""

    status = 404
    kind = "unknown_key"


class ContextExists(KeyRequestError):
    """The endpoint has a live context already (rotate it, or revoke it first)."""

    status = 409
    kind = "key_exists"


class ContextRevoked(KeyRequestError):
    """The endpoint's context is revoked (create a new one)."""

    status = 409
    kind = "revoked"


class AlreadyExported(KeyRequestError):
    """The node's side of this context left the gateway once already; rotate for new
    material."""

    status = 410
    kind = "already_exported"
