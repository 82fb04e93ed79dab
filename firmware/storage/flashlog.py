# The node's store-and-forward log in flash: a bounded FIFO of records (the SenML-CBOR
# reports the gateway did not acknowledge) that survives reboots and power cuts.
#
# One preallocated file of fixed size: a 16-byte file header, then nslots fixed-size
# slots used as a ring. A record fills one slot (at most slot_bytes - 14 bytes):
#
#   slot +0   magic 0xA5
#        +1   state: 0x80 | lap live, lap popped (lap = (seq // nslots) & 0x7F)
#        +2   u16 LE payload length n (1 .. slot_bytes - 14)
#        +4   u32 LE sequence number (mod 2**30, one more than the record before)
#        +8   u32 LE dropped counter after this record was appended
#        +12  u16 LE CRC-16/CCITT-FALSE over bytes 2..11 and the payload
#        +14  payload (n bytes); the rest of the slot is not used
#   file +0   b"aiotlog1", u16 LE slot_bytes, u16 LE nslots, u16 0, u16 LE CRC-16 of 0..13
#
# Nothing else is kept: at boot the newest slot whose CRC holds gives the next sequence
# number and the dropped counter; walking back from it over consecutive sequence
# numbers, the live records (newest back to the first one not live) are the log. An
# append torn by a power cut fails its CRC and is skipped (older records live in other
# slots and are never written by it); a pop writes one byte (the state). The state is
# not under the CRC, so it carries the record's lap: a state that does not match its
# record's lap was written for another record of that slot (a torn append wrote the
# new state but not the rest, or the rest but not the state) and counts as live (an
# append that wrote all but its state is delivered), except in the slot after the
# newest record: that is where a torn append wrote the new state over an older record,
# which must not come back. Delivery is at least once: a record popped just before a
# power cut may be delivered again, never one older.
#
# When the log is full, append() overwrites the oldest record and counts it in
# `dropped` (a record whose CRC fails when it is read is counted there too). Steady
# state (append, peek, pop) allocates nothing: a 14-byte header buffer, the caller's
# buffers, stream write(buf, n) / readinto(buf, n), a viper CRC.
#
# On littlefs an in-place write to the middle of a file rewrites the file's blocks from
# that point on (CTZ skip-list): keep the ring to a few blocks (e.g. 8 KB).
from micropython import const
import micropython

_MAGIC = const(0xA5)
_LIVE = const(0x80)
_LAP = const(0x7F)
_HDR = const(14)  # slot header
_FHDR = const(16)  # file header
_SEQ_MASK = const(0x3FFFFFFF)  # sequence numbers and the counter stay small ints
_HALF = const(0x20000000)
_MAX_SLOT = const(65535)
_SCRATCH = const(64)  # boot-time scan buffer (CRC over payloads in pieces)
_ID = b"aiotlog1"


class LogError(Exception):
    """The log file cannot be used (unreadable, or a foreign file and reformat=False)."""


@micropython.viper
def _crc16(buf: ptr8, start: int, end: int, crc: int) -> int:
    # CRC-16/CCITT-FALSE (poly 0x1021), continuing from crc (0xFFFF to start)
    for i in range(start, end):
        crc ^= buf[i] << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
    return crc


def _u16(b, o):
    return b[o] | (b[o + 1] << 8)


def _u32(b, o):
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


def _put16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


def _put32(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF
    b[o + 2] = (v >> 16) & 0xFF
    b[o + 3] = (v >> 24) & 0xFF


class Log:
    """A bounded FIFO of records in the file ``path`` (created if missing), at most
    ``capacity_bytes`` big, of slots of ``slot_bytes`` (a record holds at most
    slot_bytes - 14 bytes). A file that is not such a log (or has another geometry)
    is made a fresh log when ``reformat`` (``reformatted`` is then True), else raises
    LogError.

    count: records in the log; dropped: records lost (overwritten when full, or failing
    their CRC), persisted; capacity: records it holds; max_record: largest record;
    seq: sequence number of the next record (the oldest's is seq - count, mod 2**30);
    boot_seq: seq when the log was opened."""

    def __init__(self, path, capacity_bytes, slot_bytes, reformat=True):
        if not _HDR < slot_bytes <= _MAX_SLOT:
            raise ValueError("slot_bytes must be %d..%d" % (_HDR + 1, _MAX_SLOT))
        n = (capacity_bytes - _FHDR) // slot_bytes
        if n < 2 or n > 0xFFFF:
            raise ValueError("capacity_bytes must hold 2..65535 slots")
        self.path = path
        self.slot = slot_bytes
        self.nslots = n
        self.capacity = n
        self.max_record = slot_bytes - _HDR
        self._h = bytearray(_HDR)  # a slot header; its first byte the state a pop writes
        self._f = None
        self.head = 0  # slot of the oldest live record
        self.count = 0
        self.dropped = 0
        self.seq = 0  # sequence number of the next record
        self.reformatted = False
        self._open(reformat)
        self.boot_seq = self.seq  # records from boot_seq on were appended since opening

    # -- opening --

    def _open(self, reformat):
        try:
            f = open(self.path, "r+b")
        except OSError:
            self._create()
            return
        self._f = f
        s = bytearray(_SCRATCH)
        try:
            got = f.readinto(s, _FHDR)
        except OSError as e:
            raise LogError("cannot read %s: %s" % (self.path, e))
        ok = (got == _FHDR and s[:8] == _ID and _u16(s, 14) == _crc16(s, 0, 14, 0xFFFF)
              and _u16(s, 8) == self.slot and _u16(s, 10) == self.nslots)
        if not ok:
            if not reformat:
                f.close()
                self._f = None
                raise LogError("%s is not a log of %d slots of %d bytes"
                               % (self.path, self.nslots, self.slot))
            self.reformatted = True
            f.close()
            self._create()  # truncated to its size again
            return
        self._pad(s)
        self._scan(s)

    def _create(self):
        try:
            self._f = open(self.path, "w+b")
        except OSError as e:
            raise LogError("cannot create %s: %s" % (self.path, e))
        self._format()

    def _format(self):
        # header, then every slot zeroed (blank); the counters start again
        f = self._f
        s = bytearray(_SCRATCH)
        s[:8] = _ID
        _put16(s, 8, self.slot)
        _put16(s, 10, self.nslots)
        _put16(s, 14, _crc16(s, 0, 14, 0xFFFF))
        f.seek(0)
        f.write(s, _FHDR)
        z = bytearray(_SCRATCH)
        left = self.nslots * self.slot
        while left > 0:
            k = left if left < _SCRATCH else _SCRATCH
            f.write(z, k)
            left -= k
        f.flush()
        self.head = self.count = self.dropped = self.seq = 0

    def _pad(self, s):
        # a file cut short (power cut while it was created): the missing slots are blank
        f = self._f
        size = _FHDR + self.nslots * self.slot
        end = f.seek(0, 2)
        if end < size:
            for i in range(_SCRATCH):
                s[i] = 0
            while end < size:
                k = size - end
                k = k if k < _SCRATCH else _SCRATCH
                f.write(s, k)
                end += k
            f.flush()

    def _check(self, i, s):
        # slot i's record: -1 if blank or torn, else its sequence number (header in _h)
        f = self._f
        h = self._h
        f.seek(_FHDR + i * self.slot)
        if f.readinto(h, _HDR) != _HDR or h[0] != _MAGIC:
            return -1
        n = _u16(h, 2)
        if not 0 < n <= self.max_record:
            return -1
        crc = _crc16(h, 2, 12, 0xFFFF)
        while n > 0:
            k = n if n < _SCRATCH else _SCRATCH
            if f.readinto(s, k) != k:
                return -1
            crc = _crc16(s, 0, k, crc)
            n -= k
        if crc != _u16(h, 12):
            return -1
        return _u32(h, 4) & _SEQ_MASK

    def _scan(self, s):
        n = self.nslots
        seqs = []
        state = bytearray(n)  # 0 live, 1 popped, 2 neither
        for i in range(n):
            q = self._check(i, s)
            seqs.append(q)
            v = self._h[1]
            lap = (q // n) & _LAP
            state[i] = 1 if q < 0 or v == lap else 0 if v == _LIVE | lap else 2
        newest = -1
        for i in range(n):
            q = seqs[i]
            if q >= 0 and (newest < 0 or 0 < ((q - seqs[newest]) & _SEQ_MASK) < _HALF):
                newest = i
        if newest < 0:
            return
        self._check(newest, s)
        h = self._h
        self.dropped = _u32(h, 8) & _SEQ_MASK
        self.seq = (seqs[newest] + 1) & _SEQ_MASK
        # live records: newest back over consecutive sequence numbers while not popped
        i = newest
        want = seqs[newest]
        k = 0
        torn = (newest + 1) % n
        while k < n and seqs[i] == want and state[i] != 1 and (state[i] == 0 or i != torn):
            k += 1
            i = (i - 1) % n
            want = (want - 1) & _SEQ_MASK
        self.count = k
        self.head = (newest - k + 1) % n

    # -- operations --

    def append(self, buf, n=-1):
        """Add buf[:n] (1..max_record bytes) as the newest record; when the log is full
        the oldest is overwritten and counted in ``dropped``."""
        if n < 0:
            n = len(buf)
        if not 0 < n <= self.max_record:
            raise ValueError("record of %d bytes (1..%d)" % (n, self.max_record))
        ns = self.nslots
        if self.count == ns:
            self.head = (self.head + 1) % ns
            self.count -= 1
            self.dropped = (self.dropped + 1) & _SEQ_MASK
        i = self.head + self.count
        if i >= ns:
            i -= ns
        h = self._h
        h[0] = _MAGIC
        h[1] = _LIVE | ((self.seq // ns) & _LAP)
        _put16(h, 2, n)
        _put32(h, 4, self.seq)
        _put32(h, 8, self.dropped)
        crc = _crc16(buf, 0, n, _crc16(h, 2, 12, 0xFFFF))
        _put16(h, 12, crc)
        f = self._f
        f.seek(_FHDR + i * self.slot)
        f.write(h, _HDR)
        f.write(buf, n)
        f.flush()
        self.seq = (self.seq + 1) & _SEQ_MASK
        self.count += 1

    def peek(self, buf):
        """Read the oldest record into buf (at least max_record bytes, or the record's
        length); returns its length, 0 when the log is empty. A record that fails its
        CRC (flash gone bad since boot) is skipped and counted in ``dropped``."""
        f = self._f
        h = self._h
        while self.count:
            f.seek(_FHDR + self.head * self.slot)
            n = 0
            if f.readinto(h, _HDR) == _HDR and h[0] == _MAGIC:
                n = _u16(h, 2)
                if n > len(buf):
                    raise ValueError("buffer of %d bytes for a record of %d" % (len(buf), n))
                if not 0 < n <= self.max_record or f.readinto(buf, n) != n:
                    n = 0
                elif _crc16(buf, 0, n, _crc16(h, 2, 12, 0xFFFF)) != _u16(h, 12):
                    n = 0
            if n:
                return n
            self.dropped = (self.dropped + 1) & _SEQ_MASK
            self.head = (self.head + 1) % self.nslots
            self.count -= 1
        return 0

    def pop(self):
        """Remove the oldest record (after the gateway acknowledged it), persistently."""
        if not self.count:
            return
        f = self._f
        ns = self.nslots
        i = self.head
        # the head's lap from its sequence number (count records end before self.seq)
        q = (self.seq - self.count) & _SEQ_MASK
        h = self._h
        h[0] = (q // ns) & _LAP
        f.seek(_FHDR + i * self.slot + 1)
        f.write(h, 1)
        f.flush()
        self.head = (i + 1) % ns
        self.count -= 1

    def clear(self):
        """Empty the log and zero the counter (all slots blank again)."""
        self._format()

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
