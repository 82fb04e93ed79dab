"""Log lines a remote peer can trigger, rate-limited where they are written.

A peer decides how often such a line is written (a malformed datagram, a refused
request, two nodes fighting over one endpoint name), so a flood of them must not flood
the log. ``PeerLog`` wraps a logger: each line names a ``kind`` (a short fixed string,
never peer data, so a peer cannot mint new kinds), and at most ``burst`` lines of one
kind pass per ``interval`` seconds; the first line after a quiet window says how many
were dropped. Never a traceback: these are expected conditions, not bugs.

The daemon also filters whole loggers (``app.RateLimitFilter``); this helper works
without it (in tests, in library use) and at any level, WARNING included.

``configure`` sets up the daemon's log from ``[log]``: the root level and one handler on
stderr, writing text lines or, with ``format = "json"``, one JSON object per line
(``JsonFormatter``: ``time`` as RFC 3339 UTC, ``level``, ``logger``, ``message``, and
``exc_info`` with the formatted traceback when there is one) for a log shipper. The
message is the same text either way: what keeps secrets out of it (no secret is ever an
argument of a log call) and the rate limits (filters on the loggers) hold for both.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .config import LogConfig

__all__ = ["JsonFormatter", "PeerLog", "configure"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the daemon's handler: marked, so configure() replaces its own and no one else's
_HANDLER_MARK = "_aiot_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, object] = {
            "time": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(config: LogConfig, stream: TextIO | None = None) -> logging.Handler:
    """Set the root logger's level and its one daemon handler (on ``stream``, stderr by
    default) from ``[log]``; a handler this set up before is replaced. The CoAP layer
    stays at WARNING unless the level is debug (aiocoap reports retransmissions and
    similar peer behaviour at INFO)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if config.format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    level = getattr(logging, config.level.upper())
    handler.setLevel(level)  # also for a logger set lower than the root
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiotkit.gateway.coap").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    return handler

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
