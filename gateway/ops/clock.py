"""The gateway's wall clock: monotonic until the system's wall clock is known to be right.

A gateway often boots before NTP (or GPS, or an RTC read) has set the time: the wall
clock may start in 1970 or at the last shutdown and then jump. Every timestamp the
gateway writes (a Send's receive time, an outbox row, an alert) comes from one clock,
``GatewayClock``:

* while the kernel says the wall clock is **not synchronized** (``adjtimex``: the
  ``STA_UNSYNC`` status bit), time is the wall time read at start plus the monotonic
  time since: it never steps, so nothing the gateway stamps is reordered by a jump;
* once the kernel reports it synchronized (checked every ``check_s``), the clock
  switches to the wall clock, once, logging the step it made (the offset between the
  two); from then on it is ``time.time()``.

Where ``adjtimex`` is not available (not Linux), the wall clock is trusted as it is.
Registration lifetimes do not depend on this at all: they run on ``time.monotonic``
(``lwm2m/registry.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["GatewayClock", "kernel_clock_synchronized"]

log = logging.getLogger("aiotkit.gateway.clock")

_STA_UNSYNC = 0x0040  # linux/timex.h: the clock is not synchronized
_TIME_ERROR = 5  # adjtimex's answer while unsynchronized


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h, x86-64 and arm64 layouts: longs, then padding)
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long),
                ("freq", ctypes.c_long), ("maxerror", ctypes.c_long),
                ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long),
                ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
                ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


def kernel_clock_synchronized() -> bool | None:
    """What the kernel says of the wall clock (``adjtimex`` with no modes: a read):
    True synchronized, False not, None unknown (no adjtimex here)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    tx = _Timex()
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


class GatewayClock:
    """A callable wall clock (module docstring); ``synchronized`` says which it is."""

    def __init__(self, *, check_s: float = 10.0,
                 probe: Callable[[], bool | None] = kernel_clock_synchronized,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._wall = wall
        self._mono = monotonic
        self._check_s = check_s
        state = probe()
        self.synchronized = state is not False  # unknown: trusted as it is
        self._base_wall = wall()
        self._base_mono = monotonic()
        self._next_check = self._base_mono + check_s

    def describe(self) -> str:
        """One line for the log: which clock the timestamps follow."""
        if self.synchronized:
            return "timestamps follow the system clock"
        return (f"the system clock is not synchronized (NTP?): timestamps run on the"
                f" monotonic clock from {_iso(self._base_wall)} until it is")

    def __call__(self) -> float:
        if self.synchronized:
            return self._wall()
        mono = self._mono()
        if mono >= self._next_check:
            self._next_check = mono + self._check_s
            if self._probe():
                self.synchronized = True
                wall = self._wall()
                step = wall - (self._base_wall + mono - self._base_mono)
                log.warning("the system clock is synchronized now: timestamps follow it"
                            " (a step of %+.3f s from the monotonic time)", step)
                return wall
        return self._base_wall + (mono - self._base_mono)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
