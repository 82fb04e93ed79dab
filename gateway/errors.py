"""The gateway's exceptions: one base, configuration errors, and errors a CoAP peer sees.

``RequestError`` and its subclasses are bad input from outside: each carries the CoAP
response code the peer gets and a short diagnostic that goes into the response payload.
Anything else raised while handling a request is a bug and answers 5.00 (see ``lwm2m.server``).
"""

from __future__ import annotations

from typing import ClassVar

from ..boards.errors import AiotError, UsageError
from .coap.aio import Code

__all__ = [
    "BadRequest",
    "ConfigError",
    "GatewayError",
    "MethodNotAllowed",
    "NotFound",
    "RequestEntityTooLarge",
    "RequestError",
    "StoreError",
    "Unauthorized",
    "UnsupportedContentFormat",
]


class GatewayError(AiotError):
    """Base of every exception the gateway raises on purpose (in the aiotkit family:
    ``aiot`` prints it as one line, exit status 1)."""


class ConfigError(GatewayError, UsageError):
    """The configuration cannot be used; the message is one line naming file and key."""


class StoreError(GatewayError):
    """The SQLite store cannot be opened or has a schema this version cannot use."""


class RequestError(GatewayError):
    """A request from a peer was refused; ``code`` is the CoAP response code it gets."""

    code: ClassVar[Code] = Code.BAD_REQUEST

    def __init__(self, diagnostic: str) -> None:
        super().__init__(diagnostic)
        self.diagnostic = diagnostic


class BadRequest(RequestError):
    """4.00: malformed query, payload or option."""

    code = Code.BAD_REQUEST


class Unauthorized(RequestError):
    """4.01: the request is protected (OSCORE) with no security context to verify it
    (RFC 8613 §8.2), or is not allowed without one."""

    code = Code.UNAUTHORIZED


class Forbidden(RequestError):
    """4.03: verified, but under another node's security context (an endpoint name, or
    a registration, that is not the context's)."""

    code = Code.FORBIDDEN


class NotFound(RequestError):
    """4.04: no such registration (the client should register again)."""

    code = Code.NOT_FOUND


class RequestEntityTooLarge(RequestError):
    """4.13: the payload exceeds what the gateway accepts."""

    code = Code.REQUEST_ENTITY_TOO_LARGE


class UnsupportedContentFormat(RequestError):
    """4.15: a content format this resource does not read."""

    code = Code.UNSUPPORTED_CONTENT_FORMAT


class MethodNotAllowed(RequestError):
    """4.05: the resource exists but does not take this method."""

    code = Code.METHOD_NOT_ALLOWED
