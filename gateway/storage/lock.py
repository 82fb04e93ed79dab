"""One gateway per database file: an exclusive ``flock`` on ``<db>.lock``.

Two daemons on one database would both publish its outbox under one MQTT client id and
knock each other off the broker (duplicates, reordering), and both would answer for the
same registrations. The daemon takes ``DatabaseLock`` before it opens the database and
holds it for its life; the lock file then names the holder (pid, host, start time), so
a second daemon refuses to start with one line that says who has it.

``flock`` locks belong to the open file, so the kernel drops the lock when the holder
dies however it dies (SIGKILL, power cut): a lock file left behind by a dead process
never blocks a start, and its stale text is overwritten. The file is never deleted
(deleting it would let a third daemon lock a new file while the second holds the old).
A database on a network file system where ``flock`` is not shared between hosts is not
protected across hosts.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path

from ..errors import StoreError

__all__ = ["DatabaseLock", "DatabaseLocked"]

_HOLDER_MAX = 512  # bytes of the holder's line read back


class DatabaseLocked(StoreError):
    """Another process holds the database's lock."""


class DatabaseLock:
    """``<db>.lock``, held from ``acquire()`` to ``release()``."""

    def __init__(self, db: str | Path) -> None:
        self.db = Path(db)
        self.path = Path(f"{db}.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write who holds it; ``DatabaseLocked`` (naming the holder)
        if another process (or another ``DatabaseLock`` in this one) has it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open the lock file: {e.strerror or e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, _HOLDER_MAX, 0).decode("utf-8", "replace").strip()
                raise DatabaseLocked(
                    f"{self.db} is in use by another gateway"
                    f" ({holder.splitlines()[0] if holder else 'starting, not named yet'});"
                    f" lock file {self.path}") from None
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n"
                      .encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing the file does; its text stays, naming the last
        holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
