"""OSCORE on the gateway (RFC 8613): per-node security contexts, kept in the database
with their secrets encrypted at rest, and the key management around them.

``context``
    ``NodeContext``: one node's aiocoap security context (AES-CCM-16-64-128,
    HKDF-SHA-256) whose sequence numbers and replay window are kept through the store.
``keystore``
    ``KeyStore``: every node's context, looked up in O(1) by kid for aiocoap's
    ``OscoreSiteWrapper`` (``find_oscore``) and by address for its client side
    (``credentials_from_request``); create / get / list / rotate / revoke / export.
    ``KeyInfo`` (no secret), ``NodeCredentials`` (the node's side, exported once).
``atrest``
    ``AtRestKey``: the AES-256-GCM key (``[security] key_file`` or
    ``$AIOT_GATEWAY_KEY``) that seals each context's secrets, bound to its row.
``export``
    ``write_credentials``: a node's side as aiocoap's credentials (a folder that
    ``aiocoap-client --credentials`` takes), for ``aiot keys export``.
``errors``
    the exceptions (``SecurityError`` and below).
"""

from .atrest import KEY_ENV, AtRestKey, generate_key_hex
from .context import NodeContext
from .errors import (
    AlreadyExported,
    ContextExists,
    ContextRevoked,
    KeyConfigError,
    KeyRequestError,
    SecurityError,
    UnknownContext,
    WrongKeyError,
)
from .export import write_credentials
from .keystore import GATEWAY_SENDER_ID, KeyInfo, KeyStore, NodeCredentials

__all__ = [
    "GATEWAY_SENDER_ID",
    "KEY_ENV",
    "AlreadyExported",
    "AtRestKey",
    "ContextExists",
    "ContextRevoked",
    "KeyConfigError",
    "KeyInfo",
    "KeyRequestError",
    "KeyStore",
    "NodeContext",
    "NodeCredentials",
    "SecurityError",
    "UnknownContext",
    "WrongKeyError",
    "generate_key_hex",
    "write_credentials",
]
