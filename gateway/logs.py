"""Log lines a remote peer can trigger, rate-limited where they are written.

A peer decides how often such a line is written (a malformed datagram, a refused
request, two nodes fighting over one endpoint name), so a flood of them must not flood
the log. ``PeerLog`` wraps a logger: each line names a ``kind`` (a short fixed string,
never peer data, so a peer cannot mint new kinds), and at most ``burst`` lines of one
kind pass per ``interval`` seconds; the first line after a quiet window says how many
were dropped. Never a traceback: these are expected conditions, not bugs.

The daemon also filters whole loggers (``app.RateLimitFilter``); this helper works
without it (in tests, in library use) and at any level, WARNING included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["PeerLog"]

MAX_KINDS = 256  # kinds tracked at once; the table is bounded whatever the callers


class PeerLog:
    """``logger`` with at most ``burst`` lines per ``kind`` per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # kind -> [start, passed, dropped]

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` is over its rate; True if
        written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self._interval:
            dropped = int(window[2]) if window is not None else 0
            if len(self._windows) >= MAX_KINDS:
                self._windows.clear()
            window = self._windows[kind] = [now, 0.0, 0.0]
            if dropped:
                msg = f"{msg} [{dropped} similar line(s) suppressed]"
        if window[1] >= self._burst:
            window[2] += 1
            return False
        window[1] += 1
        self.logger.log(level, msg, *args)
        return True

    def info(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, msg, *args)

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)
