"""The error family of every aiotkit package and command: one base, two kinds.

``AiotError`` is what the ``aiot`` command prints as one line on stderr, never with a
traceback. Its ``exit_status`` says which kind it is: **2** for a mistake in what the user
asked for (``UsageError``: a missing file, a bad option value, a malformed config or
board definition) and **1** for a failure while doing it (a node that does not answer, a
build that fails, a benchmark that could not run). Each package derives its own base
from these (``GatewayError``, ``ModelError``, ``BuildError``, ...), so a caller can catch
one package's errors, and the command line catches them all in one place.

Any other exception is a bug and keeps its traceback.

This module sits below every other package (boards, models, gateway, ota, tools all
import it; it imports nothing of theirs).
"""

from __future__ import annotations


class AiotError(Exception):
    """A failure the user should read as one line (exit status 1)."""

    exit_status = 1


class UsageError(AiotError):
    """A mistake in what the user asked for (exit status 2)."""

    exit_status = 2
