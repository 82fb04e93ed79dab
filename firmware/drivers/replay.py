# The unix-sim board's signal source: reads a recorded int16 signal file (the sensor
# interface and real-time pacing are drivers/simsensor.py's).
#
# File format (all fields little-endian; host side: boards/replay/signalfile.py):
#   0   4  magic b"AI16"
#   4   1  version (1)
#   5   1  channels (1)
#   6   2  u16 header size (16)
#   8   4  u32 sample rate, Hz
#   12  1  i8 scale exponent E: value in g = code * 2**E
#   13  3  reserved, zero
#   16  2n int16 samples, little-endian
#
# Samples are read straight from the file into the caller's array('h') with readinto,
# so they are only right on a little-endian host: the sensor refuses to start on a
# big-endian one rather than deliver byte-swapped data.
from micropython import const
import sys

_MAGIC = b"AI16"
_VERSION = const(1)
_HEADER_SIZE = const(16)
_MAX_RATE = const(1000000)  # same bound as boards/replay/signalfile.py
_host_order = sys.byteorder  # a module global so the big-endian refusal can be tested


class ReplayError(ValueError):
    """The signal file cannot be replayed (the message names the problem)."""


class ReplaySensor:
    """Replay ``path`` as an endless sample stream (wraps at the end of the file).

    rate: sample rate, Hz. scale_exp: value in g = code * 2**scale_exp.
    length: samples in the file. offset: samples delivered since start (never wraps).
    read_into() returns at once: pacing to the sample rate is drivers/simsensor.py's.
    """

    def __init__(self, path):
        if _host_order != "little":
            raise ReplayError("samples are little-endian; this host is big-endian")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise ReplayError("%s: cannot open (%s)" % (path, e))
        try:
            hdr = bytearray(_HEADER_SIZE)
            n = f.readinto(hdr)
            if n is None or n < _HEADER_SIZE:
                raise ReplayError("%s: truncated header" % path)
            if hdr[0:4] != _MAGIC:
                raise ReplayError("%s: bad magic, expected AI16" % path)
            if hdr[4] != _VERSION:
                raise ReplayError("%s: unsupported version %d" % (path, hdr[4]))
            if hdr[5] != 1:
                raise ReplayError("%s: %d channels, only 1 is supported" % (path, hdr[5]))
            hsize = hdr[6] | (hdr[7] << 8)
            if hsize != _HEADER_SIZE:
                raise ReplayError("%s: header size %d, expected 16" % (path, hsize))
            rate = hdr[8] | (hdr[9] << 8) | (hdr[10] << 16) | (hdr[11] << 24)
            if rate < 1 or rate > _MAX_RATE:
                raise ReplayError("%s: sample rate %d Hz out of range" % (path, rate))
            exp = hdr[12]
            if exp > 127:
                exp -= 256
            if hdr[13] or hdr[14] or hdr[15]:
                raise ReplayError("%s: reserved header bytes are not zero" % path)
            size = f.seek(0, 2)
            body = size - _HEADER_SIZE
            if body <= 0 or body & 1:
                raise ReplayError("%s: sample data of %d bytes is not whole int16 samples"
                                  % (path, body))
            f.seek(_HEADER_SIZE)
        except BaseException:
            f.close()
            raise
        self._f = f
        self.rate = rate
        self.scale_exp = exp
        self.length = body >> 1
        self.offset = 0
        self._pos = 0  # next sample index in the file

    def read_into(self, buf, n):
        """Fill buf[0:n] (an array('h') or a memoryview of one) with the next n samples."""
        if n < 0 or n > len(buf):
            raise ValueError("n out of range")
        f = self._f
        got = 0
        while got < n:
            k = n - got
            left = self.length - self._pos
            if k > left:
                k = left
            if got == 0:
                r = f.readinto(buf, k << 1)  # no allocation
            else:
                # after a wrap: a slice of the caller's buffer (one small memoryview)
                r = f.readinto(memoryview(buf)[got : got + k])
            if r != k << 1:
                raise ReplayError("short read (file changed?)")
            got += k
            self._pos += k
            if self._pos == self.length:
                f.seek(_HEADER_SIZE)
                self._pos = 0
        self.offset += n
        return n

    def close(self):
        self._f.close()
