# The sampler: pulls int16 samples from a sensor (common interface: see board.py) into
# a preallocated ring and cuts it into windows of N samples every H samples.
#
# Stream positions (samples since start) are kept modulo 2**30 so every counter stays a
# small int on 32-bit ports; the ring size C is a power of two, so position & (C-1) is
# the ring index. Window k covers positions [k*H, k*H + N).
#
# take() returns the oldest complete window not yet taken, so a consumer that keeps up
# on average gets every window even when samples arrive in bursts (a FIFO drained 32 at
# a time). With latest=True it returns the newest complete window instead and skips
# the older ones (lower latency; the skip is reported).
#
# Nothing is ever lost silently. take() returns flags and sets per-window counts:
#   overruns   the sensor's overruns since the previous window (the driver's unit:
#              overrun events for the FIFO accelerometers, lost samples for the ADC
#              and real-time replay)
#   dropped    samples between the previous window and this one that no window holds:
#              overwritten in a full ring (live sensors: the consumer fell more than
#              C - N samples behind) or skipped with latest=True
#   skipped    windows skipped by take() (latest=True only); `offset` then jumps by
#              (skipped + 1) * H
#   saturated  samples of this window with |code| >= sensor.full_scale
#   errors     sensor bus errors since the previous window (the driver counts them in
#              read() and returns what it has; it never raises at run time). A sensor
#              that stops answering produces no windows: poll() returns 0 and
#              `failing` counts the consecutive polls that saw only new errors.
# Allocation: poll(), ready() and take() allocate nothing (bound methods are not
# fetched, every buffer exists from the constructor on, counters stay small ints).
from micropython import const
import micropython
from array import array

_MIN_N = const(16)
_MAX_N = const(4096)
_MAX_RING = const(8192)  # samples: 16 KiB, a quarter of the smallest heap budget
_POS = const(0x3FFFFFFF)  # stream positions and counters: modulo 2**30
_HALF = const(0x20000000)

OVERRUN = const(1)  # take() flags
DROPPED = const(2)
SATURATED = const(4)
ERROR = const(8)
SKIPPED = const(16)


class SamplerError(ValueError):
    """The window configuration cannot work (the message says which value and why)."""


@micropython.viper
def _copy_window(dst: ptr16, src: ptr16, start: int, n: int, mask: int, fs: int) -> int:
    # dst[0:n] = src[(start + i) & mask]; returns how many have |code| >= fs
    sat = 0
    for i in range(n):
        v = src[(start + i) & mask]
        dst[i] = v
        if v & 0x8000:
            v = 0x10000 - v  # |negative code|
        if v >= fs:
            sat += 1
    return sat


def _ring_for(n, h):
    c = _MIN_N
    while c < n + h:
        c <<= 1
    return c


class Sampler:
    """Windows of ``n`` samples every ``hop`` samples from ``sensor``.

    ring: ring size in samples (a power of two >= n + hop, at most 8192); default the
    smallest such. latest: take() skips to the newest complete window. Bad values
    raise SamplerError naming the value.
    """

    def __init__(self, sensor, n, hop, ring=None, latest=False):
        if type(n) is not int or not _MIN_N <= n <= _MAX_N:
            raise SamplerError("window %r must be an integer in %d..%d" % (n, _MIN_N, _MAX_N))
        if type(hop) is not int or not 1 <= hop <= n:
            raise SamplerError("hop %r must be an integer in 1..%d (the window)" % (hop, n))
        if ring is None:
            ring = _ring_for(n, hop)
        if type(ring) is not int or ring < n + hop or ring > _MAX_RING or ring & (ring - 1):
            raise SamplerError("ring %r must be a power of two in %d..%d (window + hop)"
                               % (ring, n + hop, _MAX_RING))
        fs = sensor.full_scale
        if type(fs) is not int or not 0 < fs <= 32767:
            raise SamplerError("sensor full_scale %r must be 1..32767" % (fs,))
        self.sensor = sensor
        self.n = n
        self.hop = hop
        self.size = ring
        self._ring = array("h", bytes(2 * ring))
        self._mask = ring - 1
        self._live = bool(getattr(sensor, "live", True))
        self._fs = fs
        self._latest = bool(latest)
        self.reset()

    def reset(self):
        """Forget buffered samples; counting starts again at position 0."""
        s = self.sensor
        self._w = 0  # position of the next sample to write
        self._r = 0  # start of the next window
        self._end = 0  # end of the last window taken (before the first: position 0)
        self._ov0 = s.overruns
        self._er0 = s.errors
        self.seq = 0  # windows taken, modulo 2**30
        self.offset = 0  # position of the last window's first sample
        self.overruns = 0
        self.dropped = 0
        self.skipped = 0
        self.saturated = 0
        self.errors = 0
        self.flags = 0
        self.failing = 0
        self.total_overruns = 0  # since reset, modulo 2**30
        self.total_dropped = 0

    def start(self):
        """Start the sensor and count from here."""
        self.sensor.start()
        self.reset()

    def stop(self):
        self.sensor.stop()

    def poll(self):
        """Pull what the sensor has into the ring; returns the number of samples read.

        A non-live source (replay as fast as the consumer takes it) is read only into free
        space. A live one is drained: when the ring is full its oldest unconsumed samples
        are overwritten and the next window start moves past them (counted in `dropped`).
        """
        s = self.sensor
        ring = self._ring
        size = self.size
        mask = self._mask
        err0 = s.errors
        total = 0
        while total < size:
            pending = (self._w - self._r) & _POS
            idx = self._w & mask
            k = size - idx  # contiguous room up to the end of the ring
            if not self._live and k > size - pending:
                k = size - pending
            if k <= 0:
                break
            got = s.read(ring, idx, k)
            if got <= 0:
                break
            self._w = (self._w + got) & _POS
            total += got
            pending += got
            if pending > size:
                # overwritten: move the next window start onto the grid past them
                over = pending - size
                steps = (over + self.hop - 1) // self.hop
                self._r = (self._r + steps * self.hop) & _POS
            if got < k:
                break
        if s.errors != err0 and total == 0:
            self.failing += 1
        elif total:
            self.failing = 0
        return total

    def ready(self):
        """True when a complete window can be taken."""
        return (self._w - self._r) & _POS >= self.n

    def take(self, out):
        """Copy the next complete window (oldest sample first; with latest=True the
        newest one) into ``out`` (an array('h') of n samples) and advance by the hop
        past it. Returns the flags
        (0 = a clean window); the counts are in the attributes (see the module notes).
        Raises SamplerError if no window is ready or ``out`` is too short.
        """
        n = self.n
        h = self.hop
        avail = (self._w - self._r) & _POS
        if avail < n:
            raise SamplerError("no complete window: call ready() first")
        if len(out) < n:
            raise SamplerError("output buffer of %d samples, window is %d" % (len(out), n))
        skip = (avail - n) // h if self._latest else 0
        start = (self._r + skip * h) & _POS
        gap = (start - self._end) & _POS
        if gap >= _HALF:
            gap = 0  # overlaps the previous window (hop < n)
        s = self.sensor
        ov = s.overruns
        er = s.errors
        self.overruns = (ov - self._ov0) & _POS
        self.errors = (er - self._er0) & _POS
        self._ov0 = ov
        self._er0 = er
        self.dropped = gap
        self.skipped = skip
        self.saturated = _copy_window(out, self._ring, start & self._mask, n, self._mask,
                                      self._fs)
        self.offset = start
        self._end = (start + n) & _POS
        self._r = (start + h) & _POS
        self.seq = (self.seq + 1) & _POS
        self.total_overruns = (self.total_overruns + self.overruns) & _POS
        self.total_dropped = (self.total_dropped + gap) & _POS
        f = 0
        if self.overruns:
            f |= OVERRUN
        if gap:
            f |= DROPPED
        if self.saturated:
            f |= SATURATED
        if self.errors:
            f |= ERROR
        if skip:
            f |= SKIPPED
        self.flags = f
        return f
