"""The REST API's audit log: one JSON line per state-changing request (every method but
GET) made with a token the gateway knows, appended to ``[rest] audit_file``.

A line says when (``time``, UTC ISO 8601), who (``token``: the token's NAME, ``role``),
what (``method``, ``route``: the route pattern, ``params``: its path parameters, and for
some routes a ``detail`` such as the endpoint a key is created for), the ``status``
answered and the ``remote`` address. Never a token, never a request or answer body: a
Write may carry a node's keys, a key export answers with them.

The file is opened with ``O_APPEND`` for each request (so a rotated file is followed),
created mode 0600, and each line goes out in one ``write(2)``: a line is in the kernel
when the answer leaves, so a crash of the gateway loses none (a power cut may lose the
last ones, as any file the OS has not synced).

It fails closed: before a state-changing request runs, the file is opened and any line
an earlier failure held back is written; if that fails the request is refused 503
``audit_unavailable`` and nothing happens. A line that cannot be written after its
request ran (a disk that filled meanwhile) is held back, and no other state-changing
request runs until it is written. Failures are logged at most once a minute. Requests
refused before they run (401 for an expired or revoked token, 403 for the role) are
recorded when the file can be written, and only logged otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GatewayError
from ..logs import PeerLog
from .tokens import utc_text

__all__ = ["AuditLog", "AuditUnavailable"]

log = logging.getLogger("aiotkit.gateway.rest")

MAX_PARAM_CHARS = 512  # a path parameter longer than this is cut in the line
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditUnavailable(GatewayError):
    """The audit log cannot be written: the state-changing request is refused."""


class AuditLog:
    """Append-only JSON lines at ``path`` (module docstring); ``clock`` gives the time."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._held: list[bytes] = []  # lines of requests that ran, not written yet
        self._log = PeerLog(log, interval=60.0, burst=1)

    def check_mode(self) -> None:
        """Warn at start when the file exists and other users may read it."""
        try:
            st = self.path.stat()
        except OSError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            log.warning("%s (the REST API's audit log) can be read by other users; chmod"
                        " 600 it", self.path)

    def begin(self) -> int:
        """Before a state-changing request runs: the file open for its line, held-back
        lines written; ``AuditUnavailable`` when that cannot be done."""
        try:
            fd = os.open(self.path, _FLAGS, 0o600)
        except OSError as e:
            self._failed(e)
            raise AuditUnavailable(f"the audit log cannot be written ({e.strerror or e})"
                                   ) from None
        try:
            while self._held:
                _write_all(fd, self._held[0])
                self._held.pop(0)
        except OSError as e:
            os.close(fd)
            self._failed(e)
            raise AuditUnavailable(f"the audit log cannot be written ({e.strerror or e})"
                                   ) from None
        return fd

    def record(self, fd: int | None, entry: dict[str, Any]) -> None:
        """Append ``entry`` (its ``time`` added) through ``fd`` from ``begin`` (the file
        is closed after), or, for a request refused before it ran, on its own."""
        line = (json.dumps({"time": utc_text(self.clock()), **entry},
                           separators=(",", ":")) + "\n").encode("ascii")
        ran = fd is not None
        try:
            if fd is None:
                fd = os.open(self.path, _FLAGS, 0o600)
            _write_all(fd, line)
        except OSError as e:
            if ran:  # the next state-changing request waits for this line
                self._held.append(line)
            self._failed(e)
        finally:
            if fd is not None:
                os.close(fd)

    def _failed(self, e: OSError) -> None:
        self._log.log(logging.ERROR, "audit", "REST API: cannot write the audit log %s:"
                      " %s; state-changing requests are refused 503 until it can be",
                      self.path, e.strerror or e)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def clip(value: str) -> str:
    """A path parameter for the line: at most ``MAX_PARAM_CHARS`` characters."""
    return value if len(value) <= MAX_PARAM_CHARS else value[:MAX_PARAM_CHARS] + "..."
