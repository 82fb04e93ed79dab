# Zero allocation per window in steady state, in the smallest board's 64K heap: the
# sampler over the unix-sim replay sensor (as fast as the consumer takes it, and in real
# time on a simulated clock) and over the timer-sampled ADC sensor, each for 100+
# windows with the garbage collector disabled. The fakes here are small on purpose
# (fakebus.py does not compile in 64K); the accelerometer drivers' read paths are
# measured the same way in mp_test_adxl345.py / mp_test_lis3dh.py.
import gc
import struct
from array import array

from dsp.sampler import Sampler


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def code(i):
    return ((i * 7919 + 123) % 65536) - 32768


def write_signal(path, n, rate=12000):
    with open(path, "wb") as f:
        f.write(b"AI16" + struct.pack("<BBHIb", 1, 1, 16, rate, -12) + b"\0\0\0")
        for i in range(n):
            f.write(struct.pack("<h", code(i)))


def run(sp, out, windows, step=None):
    """Poll and take until ``windows`` windows; returns (windows, bytes allocated)."""
    got = 0
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(windows * 64):
            if step is not None:
                step()
            sp.poll()
            while sp.ready():
                sp.take(out)
                got += 1
            if got >= windows:
                break
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    return got, used


def test_replay_as_fast_as_taken_allocates_nothing_per_window():
    from drivers import simsensor

    L = 3001  # odd length: chunks end at the file's end at varying offsets
    write_signal("s.i16", L)
    sen = simsensor.ReplayAdapter("s.i16")
    sp = Sampler(sen, 1024, 512)
    sp.start()
    out = array("h", bytes(2048))
    run(sp, out, 3)  # warm up: first window, first wrap
    got, used = run(sp, out, 150)
    expect_eq(got, 150, "windows")
    expect_eq(used, 0, "bytes allocated over 150 windows")
    for j in range(1024):
        if out[j] != code((sp.offset + j) % L):
            raise AssertionError("sample %d of window at %d" % (j, sp.offset))
    expect_eq(sp.flags, 0, "flags")


class Clock:
    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t


def test_realtime_replay_allocates_nothing_per_window():
    from drivers import simsensor

    write_signal("s.i16", 5000, rate=12000)
    clock = Clock()
    sen = simsensor.ReplayAdapter("s.i16", realtime=True, clock=clock)
    sp = Sampler(sen, 256, 128)
    sp.start()
    out = array("h", bytes(512))

    def tick():
        clock.t += 7  # 84 samples due per step

    run(sp, out, 5, tick)
    got, used = run(sp, out, 120, tick)
    expect_eq(got, 120, "windows")
    expect_eq(used, 0, "bytes allocated over 120 windows")
    expect_eq((sp.total_dropped, sen.overruns), (0, 0), "kept up")
    # 120 windows of hop 128 at 12 kHz need 1280 ms of simulated time, give or take
    # one step and the first window
    if not 125 * 128 * 1000 // 12000 <= clock.t <= 130 * 128 * 1000 // 12000 + 7:
        raise AssertionError("paced at the wrong rate: %d ms" % clock.t)


class Timer:
    PERIODIC = 1

    def init(self, mode, freq, callback):
        self.cb = callback

    def deinit(self):
        self.cb = None


class ADC:
    def __init__(self):
        self.i = 0

    def read_u16(self):
        self.i += 1
        return (self.i * 40503) & 0xFFFF


def test_adc_sensor_allocates_nothing_per_window():
    from drivers.adc import ADCSensor

    t = Timer()
    sen = ADCSensor(ADC(), t, 1000, size=64)
    sp = Sampler(sen, 256, 128)
    sp.start()
    out = array("h", bytes(512))

    def tick():
        cb = t.cb
        for _ in range(40):  # 40 timer periods between polls
            cb(t)

    run(sp, out, 3, tick)
    got, used = run(sp, out, 110, tick)
    expect_eq(got, 110, "windows")
    expect_eq(used, 0, "bytes allocated over 110 windows")
    expect_eq(sp.total_overruns, 0, "the ring kept up")
