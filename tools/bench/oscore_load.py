"""OSCORE for ``aiot bench gateway``'s protected pass: nodes provisioned in the gateway's
database through its own ``KeyStore``, and the nodes' requests protected beforehand with
aiocoap's OSCORE, so that the timed part only puts bytes on the wire.

``provision(db, key_file, endpoints)``
    a fresh at-rest key in ``key_file`` (``chmod 600``), then one context per endpoint
    created and exported (``KeyStore.create`` / ``export``) in ``db`` before the gateway
    opens it; the store is closed cleanly, so every replay window is known (no Echo).
``NodeSide``
    the node's side of a context as an aiocoap security context (the node is the
    sender): ``protect`` a request, numbers counting up from 0; nothing is kept on disk
    (a benchmark's nodes live for one run).
``protected_body(node, code, options, payload)``
    the request protected and encoded, everything after the token: the load generator
    adds its own header (type, message ID, token are outside OSCORE's AAD, RFC 8613
    §5.4), so a retransmission is the same datagram and the gateway deduplicates it.

Not a benchmark of its own (no ``main``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiotkit.gateway.coap.aio import aiocoap, oscore

__all__ = ["NodeSide", "protected_body", "provision"]

_ALG = "AES-CCM-16-64-128"  # the gateway's (gateway/security/context.py ALGORITHM)
_HASH = "sha256"


def provision(db: Path, key_file: Path, endpoints: Sequence[str]) -> tuple[list[Any], float]:
    """Contexts for ``endpoints`` in ``db`` (created and exported once each) under a new
    at-rest key written to ``key_file``; the node sides (``NodeCredentials``) and the
    seconds it took."""
    from aiotkit.gateway.config import SecurityConfig
    from aiotkit.gateway.security import KeyStore, generate_key_hex
    from aiotkit.gateway.storage import SqliteStorage

    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(generate_key_hex() + "\n")
    t0 = time.perf_counter()
    # synchronous OFF: the bench's own set-up; the gateway reopens it FULL
    storage = SqliteStorage.open(db, synchronous="OFF")
    try:
        keys = KeyStore.open(storage.keys, SecurityConfig(key_file=str(key_file)),
                             environ={}, database=str(db))
        if keys is None:  # a key file is configured: open returns a store or raises
            raise RuntimeError("no key store")
        try:
            creds = []
            for ep in endpoints:
                keys.create(ep)
                creds.append(keys.export(ep))
        finally:
            keys.close()
    finally:
        storage.close()
    return creds, time.perf_counter() - t0


class NodeSide(oscore.CanProtect, oscore.SecurityContextUtils):  # type: ignore[misc]
    """A node's side of its context (module docstring)."""

    alg_aead = oscore.algorithms[_ALG]
    hashfun = oscore.hashfunctions[_HASH]

    def __init__(self, creds: Any) -> None:
        self.sender_id = creds.sender_id
        self.recipient_id = creds.recipient_id
        self.id_context = creds.id_context
        self.derive_keys(creds.salt, creds.secret)
        self.sender_sequence_number = 0

    def post_seqnoincrease(self) -> None:
        """Nothing to keep: the run's sequence numbers start at 0 and end with it."""


def protected_body(node: NodeSide, code: Any, *, path: tuple[str, ...],
                   query: tuple[str, ...] = (), content_format: int | None = None,
                   payload: bytes = b"") -> bytes:
    """``node``'s request protected with its next sequence number, encoded, without the
    4-byte header (the token is empty): what the load generator sends after its own."""
    msg = aiocoap.Message(code=code, uri_path=path, uri_query=query,
                          content_format=content_format, payload=payload)
    msg.direction = aiocoap.message.Direction.OUTGOING
    outer, _request_id = node.protect(msg)
    outer.mtype, outer.mid, outer.token = aiocoap.CON, 0, b""
    raw: bytes = outer.encode()
    return raw[4:]
