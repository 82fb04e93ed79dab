"""TLS for the REST API: ``[rest] tls_cert`` and ``tls_key`` (PEM files) as a server
context. TLS 1.2 at least, Python's default ciphers; no client certificates (the bearer
token authenticates). Kept apart from ``rest`` so ``aiot gateway check`` can load the
files without aiohttp."""

from __future__ import annotations

import ssl

from ..config import RestConfig
from ..errors import ConfigError

__all__ = ["server_context"]


def server_context(config: RestConfig) -> ssl.SSLContext | None:
    """The server's TLS context, None when no certificate is configured; ``ConfigError``
    names the file that cannot be used."""
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except OSError as e:  # ssl.SSLError is an OSError too
        what = e.strerror or getattr(e, "reason", None) or e
        raise ConfigError(f"rest.tls_cert / rest.tls_key: {config.tls_cert},"
                          f" {config.tls_key}: cannot be used ({what})") from e
    return ctx
