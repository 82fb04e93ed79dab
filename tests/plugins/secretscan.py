"""No secret the suite creates ever reaches a log line (issue 13).

The secrets: every OSCORE master secret a gateway in this process unseals (creation,
loading, export), every node side a test or the simulator is given (``write_credentials``,
``Fleet`` provisioning, also from gateways in subprocesses through the REST API), and
what tests register with ``remember`` (at-rest keys, REST tokens). The log lines: every
record of this process's loggers (``aiotkit`` at DEBUG while the suite runs, the rest at
their own levels) and every line of every ``ManagedProcess`` (gateways, simulators and
nodes run as subprocesses). After each test both are scanned for each secret as hex
(either case), as Python's bytes repr and as base64; a hit fails the test, naming where
without printing the secret.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest

_SECRETS: set[bytes] = set()
_LINES: list[str] = []


def remember(secret: bytes | str) -> None:
    """Register a secret (bytes, or a hex string) that no log line may contain."""
    if isinstance(secret, str):
        try:
            secret = bytes.fromhex(secret)
        except ValueError:
            secret = secret.encode()
    if len(secret) >= 8:  # shorter ones (IDs) are not secret and would match by chance
        _SECRETS.add(bytes(secret))


def _forms(secret: bytes) -> tuple[str, ...]:
    return (secret.hex(), secret.hex().upper(), repr(secret)[2:-1],
            base64.b64encode(secret).decode().rstrip("="))


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LINES.append(self.format(record))
        except Exception:  # noqa: BLE001 (what logging's own handlers do)
            self.handleError(record)


def _wrap(owner: Any, name: str, pick: Any) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        for s in pick(args, out):
            remember(s)
        return out

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def pytest_configure(config: pytest.Config) -> None:
    handler = _Collect(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("aiotkit").setLevel(logging.DEBUG)
    from aiotkit.gateway import security
    from aiotkit.gateway.security import export, keystore
    from aiotkit.tools import sim

    _wrap(keystore.KeyStore, "_unseal", lambda a, out: out[:1])
    for owner in (export, security):  # the package re-exports it
        _wrap(owner, "write_credentials", lambda a, out: [a[1].get("secret", "")])
    _wrap(sim.Fleet, "_keys", lambda a, out: [(out or {}).get("secret", "")])


def _scan(where: str, lines: list[str]) -> list[str]:
    found = []
    for secret in _SECRETS:
        forms = _forms(secret)
        for i, line in enumerate(lines):
            if any(f in line for f in forms):
                found.append(f"{where} line {i + 1}: a secret of {len(secret)} bytes")
                break
    return found


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(request: pytest.FixtureRequest) -> Iterator[None]:
    from plugins.services import ManagedProcess

    _LINES.clear()
    ManagedProcess.made.clear()
    yield
    found = _scan("log", _LINES)
    for proc in ManagedProcess.made:
        found += _scan(f"{proc.name}'s output", proc.lines)
    _LINES.clear()
    ManagedProcess.made.clear()
    if found:
        pytest.fail("a secret reached a log: " + "; ".join(found), pytrace=False)
