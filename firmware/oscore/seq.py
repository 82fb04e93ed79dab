# The OSCORE Sender Sequence Number kept in flash so that no number is ever used twice
# under one key, across reboots and power cuts (RFC 8613 Appendix B.1.1): the file
# holds an upper bound; numbers below it may be handed out without writing; the bound
# is raised by `step` (written first, used after) when it is reached, and at boot the
# node starts from the stored bound and immediately stores bound + step. A write is a
# temporary file renamed over the old one (atomic on littlefs and the unix port; on FAT
# the old file is removed first, and a boot that finds only the temporary file takes
# it). Numbers stop below 2^30: small integers on every port (Appendix B.1.1 allows
# 2^40 - 1; a node that gets there needs new keys).
from micropython import const
import os
import struct

_MAX = const(0x3FFFFFFF)
_MAGIC = const(0x5A5A5A5A)  # the check word is the bound xor this


class SeqError(Exception):
    """The stored sequence state is unusable: the context must not send."""


def _load(path):
    # the stored bound; -1 when the file is missing; SeqError when unreadable
    try:
        with open(path, "rb") as f:
            d = f.read(9)
    except OSError:
        return -1
    if len(d) != 8:
        raise SeqError("sequence state truncated")
    v, c = struct.unpack(">II", d)
    if v ^ _MAGIC != c or v > _MAX:
        raise SeqError("sequence state corrupt")
    return v


class SeqStore:
    """Sender sequence numbers persisted in `path` (and `path` + ".tmp" while
    writing) in steps of `step`. fresh: no state existed (a new context). writes:
    flash writes so far."""

    def __init__(self, path, step=256):
        if not 0 < step < 0x100000:
            raise ValueError("step")
        self.path = path
        self.tmp = path + ".tmp"
        self.step = step
        self.writes = 0
        v = _load(path)
        self.fresh = False
        if v < 0:
            # no state: a first boot, or a cut between remove and rename (FAT), when
            # the temporary file is whole
            try:
                v = _load(self.tmp)
            except SeqError:
                v = -1  # a cut while writing the very first state: nothing was sent
            if v < 0:
                v = 0
                self.fresh = True
        self._rm(self.tmp)
        self.next = v
        self.bound = v
        self._raise(v)

    def _rm(self, p):
        try:
            os.remove(p)
        except OSError:
            pass

    def _raise(self, v):
        b = v + self.step
        if b > _MAX:
            raise SeqError("sequence numbers exhausted")
        with open(self.tmp, "wb") as f:
            f.write(struct.pack(">II", b, b ^ _MAGIC))
        try:
            os.rename(self.tmp, self.path)
        except OSError:  # FAT: rename does not replace
            self._rm(self.path)
            os.rename(self.tmp, self.path)
        self.writes += 1
        self.bound = b

    def take(self):
        """The next sequence number (never returned before, in any boot)."""
        s = self.next
        if s >= self.bound:
            self._raise(s)
        self.next = s + 1
        return s
