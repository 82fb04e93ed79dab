# The unix-sim board's sensor: a recorded signal file (drivers/replay.py) behind the
# common sensor interface (see board.py), so the sampler treats it like any accelerometer.
# Its own module so a unix-sim node does not keep board.py and the drivers in RAM.
from micropython import const
import micropython
import time
from drivers.bus import SensorError, CNT_MASK

_CHUNK = const(256)  # samples per file read
_BACKLOG_MS = const(1000)  # real time: samples kept this long for a late reader


@micropython.viper
def _copy16(dst: ptr16, pos: int, src: ptr16, n: int):
    for i in range(n):
        dst[pos + i] = src[i]


class ReplayAdapter:
    """The unix-sim sensor: drivers/replay.py's ReplaySensor behind the common interface.

    realtime=False: as fast as the reader takes samples (live = False: the sampler never
    drops). realtime=True: samples become due at the file's rate on ``clock``
    (ticks_ms); read() returns only what is due and never sleeps. Like a sensor FIFO,
    up to 1 s of due samples wait for a late reader; beyond that they are counted in
    ``overruns`` (samples) and the replay resumes where it was.
    """

    def __init__(self, path, realtime=False, clock=None):
        from drivers.replay import ReplaySensor, ReplayError
        from array import array

        try:
            s = ReplaySensor(path)  # it never sleeps: pacing is here
        except ReplayError as e:
            raise SensorError("replay: %s" % e)
        self._s = s
        self._err = (ReplayError, OSError)
        self._clock = clock if clock is not None else time
        self._chunk = array("h", bytes(2 * _CHUNK))
        self._fpos = 0  # sample index in the file (chunks never cross its end)
        self.live = bool(realtime)
        self.rate = s.rate
        self.scale_m = 1
        self.scale_e = s.scale_exp  # the file's code * 2**E is the value in g
        self.full_scale = 32767
        self.overruns = 0
        self.errors = 0
        self.last_error = 0
        self._last = 0
        self._acc = 0
        self._due = 0

    def start(self):
        self._last = self._clock.ticks_ms()
        self._acc = 0
        self._due = 0

    def stop(self):
        pass

    def close(self):
        self._s.close()

    def _pace(self):
        now = self._clock.ticks_ms()
        d = time.ticks_diff(now, self._last)
        self._last = now
        if d <= 0:
            return
        rate = self.rate
        if d > _BACKLOG_MS:
            late = d - _BACKLOG_MS
            lost = (late // 1000) * rate + (late % 1000) * rate // 1000
            self.overruns = (self.overruns + lost) & CNT_MASK
            d = _BACKLOG_MS
        self._acc += d * rate  # <= 1000 * 1e6 < 2**30
        q = self._acc // 1000
        self._acc -= q * 1000
        due = self._due + q
        if due > rate:  # more than the 1 s backlog
            self.overruns = (self.overruns + due - rate) & CNT_MASK
            due = rate
        self._due = due

    def read(self, buf, pos, n):
        if n <= 0:
            return 0
        k = n
        if self.live:
            self._pace()
            if k > self._due:
                k = self._due
        s = self._s
        chunk = self._chunk
        length = s.length
        got = 0
        try:
            while got < k:
                c = k - got
                if c > _CHUNK:
                    c = _CHUNK
                left = length - self._fpos
                if c > left:
                    c = left
                s.read_into(chunk, c)
                _copy16(buf, pos + got, chunk, c)
                got += c
                self._fpos += c
                if self._fpos == length:
                    self._fpos = 0
        except self._err as e:
            self.errors = (self.errors + 1) & CNT_MASK
            self.last_error = e.errno if isinstance(e, OSError) else 0
        if self.live:
            self._due -= got
        return got
