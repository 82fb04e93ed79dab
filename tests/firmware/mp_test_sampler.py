# The sampler (sampler.Sampler): configuration checks, windows equal to the sample
# stream, hop/overlap, latest-window skipping, ring overflow on live sensors, never
# dropping from a non-live source, per-window overruns / dropped / saturated / errors,
# counters across the 2**30 wrap, and the real drivers on their register fakes.
HEAPSIZE = "128K"  # compiling this module and the fakes takes more than the sampler needs

import errno
from array import array

from dsp import sampler
from dsp.sampler import Sampler, SamplerError


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def f(i):
    # the test stream, independent of the code under test: both signs, |f| <= 1000
    return ((i * 7919 + 17) % 2001) - 1000


class Script:
    """A sensor whose samples are f(0), f(1), ...; `add(k)` makes k more available
    (live) or every request is served at once (not live)."""

    def __init__(self, live=True, full_scale=32767):
        self.live = live
        self.full_scale = full_scale
        self.rate = 1000
        self.scale_m = 1
        self.scale_e = -10
        self.avail = 0
        self.i = 0
        self.overruns = 0
        self.errors = 0
        self.fail = False
        self.started = 0

    def start(self):
        self.started += 1

    def stop(self):
        pass

    def add(self, k):
        self.avail += k

    def read(self, buf, pos, n):
        if self.fail:
            self.errors += 1
            return 0
        k = n if not self.live else min(n, self.avail)
        for j in range(k):
            buf[pos + j] = f(self.i + j)
        self.i += k
        if self.live:
            self.avail -= k
        return k


def expect_sampler_error(words, *args, **kw):
    try:
        Sampler(*args, **kw)
    except SamplerError as e:
        for w in words:
            if w not in str(e):
                raise AssertionError("%r does not mention %r" % (str(e), w))
        return
    raise AssertionError("accepted %r %r" % (args, kw))


def test_impossible_window_hop_ring_are_refused_with_the_value():
    s = Script()
    for args, kw, words in (((15, 15), {}, ("window", "15", "16..4096")),
                            ((4097, 1), {}, ("window", "4097")),
                            (("64", 8), {}, ("window",)),
                            ((64, 0), {}, ("hop", "1..64")),
                            ((64, 65), {}, ("hop", "65")),
                            ((64, 8.0), {}, ("hop",)),
                            ((64, 32), {"ring": 64}, ("ring", "96")),
                            ((64, 32), {"ring": 100}, ("ring", "power of two")),
                            ((4096, 4096), {"ring": 16384}, ("ring", "8192"))):
        expect_sampler_error(words, s, *args, **kw)
    expect_sampler_error(("full_scale",), Script(full_scale=0), 64, 64)
    Sampler(s, 16, 1)
    Sampler(s, 4096, 4096)  # ring 8192
    expect_eq(Sampler(s, 1000, 300).size, 2048, "default ring: power of two >= n + hop")


def check_windows(n, hop, chunks, live=True, ring=None):
    sen = Script(live=live)
    sp = Sampler(sen, n, hop, ring)
    sp.start()
    out = array("h", [0] * n)
    got = 0
    for c in chunks:
        sen.add(c)
        sp.poll()
        while sp.ready():
            flags = sp.take(out)
            expect_eq(flags, 0, "flags")
            start = got * hop
            expect_eq((sp.offset, sp.seq), (start, got + 1), "offset/seq")
            for j in range(n):
                if out[j] != f(start + j):
                    raise AssertionError("window %d sample %d: %d != %d"
                                         % (got, j, out[j], f(start + j)))
            expect_eq((sp.dropped, sp.skipped, sp.overruns, sp.errors, sp.saturated),
                      (0, 0, 0, 0, 0), "counts")
            got += 1
    return got, sen


def test_windows_equal_the_stream_for_any_chunking():
    # consumer keeps up: every window on the hop grid, in order, nothing lost
    for n, hop, chunks in ((64, 16, (1, 7, 32, 100, 3, 64, 5, 200)),
                           (64, 64, (63, 1, 64, 200, 17)),
                           (16, 1, (16, 1, 1, 5, 40)),
                           (100, 30, (31, 29, 90, 150, 1, 2, 3, 300))):
        got, sen = check_windows(n, hop, chunks, ring=512)  # room for the largest chunk
        expect_eq(got, (sen.i - n) // hop + 1, "windows for n=%d hop=%d" % (n, hop))


def test_non_live_source_is_never_dropped_from():
    sen = Script(live=False)
    sp = Sampler(sen, 64, 32)
    sp.start()
    expect_eq(sp.poll(), sp.size, "fills the ring")
    expect_eq(sp.poll(), 0, "full ring: waits for the consumer")
    out = array("h", [0] * 64)
    for w in range(50):
        expect_eq(sp.ready(), True, "ready")
        sp.take(out)
        expect_eq(sp.offset, w * 32, "offset")
        expect_eq(out[0], f(w * 32), "first sample")
        expect_eq((sp.skipped, sp.dropped), (0, 0), "nothing lost")
        sp.poll()


def test_burst_of_several_hops_yields_every_window():
    sen = Script()
    sp = Sampler(sen, 64, 16, ring=256)
    sp.start()
    sen.add(64 + 5 * 16)  # one poll brings six windows
    sp.poll()
    out = array("h", [0] * 64)
    for w in range(6):
        expect_eq(sp.take(out), 0, "flags")
        expect_eq((sp.offset, out[0]), (16 * w, f(16 * w)), "window %d" % w)
    expect_eq(sp.ready(), False, "all taken")


def test_ring_overflow_on_a_live_sensor_drops_the_oldest_and_counts_them():
    sen = Script()
    sp = Sampler(sen, 64, 32, ring=128)
    sp.start()
    sen.add(300)
    while sp.poll():
        pass
    expect_eq(sen.i, 300, "drained the sensor")
    out = array("h", [0] * 64)
    flags = sp.take(out)
    # the ring holds the newest 128 samples (172..299): the first grid start in it
    start = (300 - 128 + 31) // 32 * 32
    expect_eq(sp.offset, start, "oldest window still in the ring")
    expect_eq(list(out), [f(start + j) for j in range(64)], "its samples")
    expect_eq(sp.dropped, start, "samples before it that no window holds")
    expect_eq(flags, sampler.DROPPED, "DROPPED flag")
    while sp.ready():
        expect_eq(sp.take(out), 0, "the rest of the backlog is clean")
    expect_eq(sp.offset, (300 - 64) // 32 * 32, "up to the newest")


def test_latest_mode_gets_the_newest_window_and_counts_the_skip():
    sen = Script()
    sp = Sampler(sen, 64, 32, ring=128, latest=True)
    sp.start()
    sen.add(300)
    while sp.poll():
        pass
    out = array("h", [0] * 64)
    flags = sp.take(out)
    start = (300 - 64) // 32 * 32
    expect_eq(sp.offset, start, "newest window")
    expect_eq(list(out), [f(start + j) for j in range(64)], "its samples")
    expect_eq(sp.dropped, start, "samples before it that no window holds")
    expect_eq(flags, sampler.DROPPED | sampler.SKIPPED, "flags")
    sen.add(32 - (300 - start - 64))
    sp.poll()
    expect_eq(sp.take(out), 0, "clean again")
    expect_eq(sp.offset, start + 32, "next hop")


def test_latest_mode_skipping_overlapping_windows_drops_nothing():
    sen = Script()
    sp = Sampler(sen, 64, 16, ring=128, latest=True)
    sp.start()
    sen.add(64)
    sp.poll()
    out = array("h", [0] * 64)
    expect_eq(sp.take(out), 0, "first")
    sen.add(48)  # three hops arrive before the consumer comes back
    sp.poll()
    flags = sp.take(out)
    expect_eq((sp.offset, sp.skipped, sp.dropped), (48, 2, 0), "skipped two, lost none")
    expect_eq(flags, sampler.SKIPPED, "flags")
    expect_eq(out[0], f(48), "newest")


def test_hop_larger_gaps_are_dropped_samples_when_ring_overflows():
    sen = Script()
    sp = Sampler(sen, 32, 32, ring=64)
    sp.start()
    out = array("h", [0] * 32)
    sen.add(32)
    sp.poll()
    sp.take(out)
    sen.add(200)
    while sp.poll():
        pass
    sp.take(out)
    start = (232 - 32) // 32 * 32
    expect_eq((sp.offset, sp.dropped), (start, start - 32), "dropped = gap after window 1")
    expect_eq(sp.total_dropped, start - 32, "total")


def test_sensor_overruns_errors_and_saturation_are_reported_per_window():
    sen = Script(full_scale=950)
    sp = Sampler(sen, 64, 64)
    sp.start()
    out = array("h", [0] * 64)
    sen.add(64)
    sp.poll()
    sen.overruns += 3
    sen.errors += 2
    flags = sp.take(out)
    sat = sum(1 for j in range(64) if abs(f(j)) >= 950)
    if not sat:
        raise AssertionError("test signal has no saturated samples")
    expect_eq((sp.overruns, sp.errors, sp.saturated), (3, 2, sat), "counts")
    expect_eq(flags, sampler.OVERRUN | sampler.ERROR | sampler.SATURATED, "flags")
    sen.add(64)
    sp.poll()
    sp.take(out)
    expect_eq((sp.overruns, sp.errors), (0, 0), "only the increase is reported")
    expect_eq(sp.saturated, sum(1 for j in range(64, 128) if abs(f(j)) >= 950), "sat 2")


def test_saturation_counts_both_rails():
    class Rails(Script):
        def read(self, buf, pos, n):
            k = min(n, self.avail)
            for j in range(k):
                buf[pos + j] = (-32768, 32767, -32767, 0, 100)[(self.i + j) % 5]
            self.i += k
            self.avail -= k
            return k

    sen = Rails(full_scale=32767)
    sp = Sampler(sen, 20, 20)
    sen.add(20)
    sp.poll()
    sp.take(array("h", [0] * 20))
    expect_eq(sp.saturated, 12, "-32768, 32767 and -32767 are at full scale")


def test_a_sensor_that_stops_answering_is_not_silent():
    sen = Script()
    sp = Sampler(sen, 32, 32)
    sp.start()
    sen.fail = True
    for k in range(5):
        expect_eq(sp.poll(), 0, "nothing")
    expect_eq((sp.failing, sp.ready()), (5, False), "failing polls")
    sen.fail = False
    sen.add(32)
    sp.poll()
    expect_eq(sp.failing, 0, "recovered")
    out = array("h", [0] * 32)
    expect_eq(sp.take(out) & sampler.ERROR, sampler.ERROR, "window flags the errors")
    expect_eq(sp.errors, 5, "errors in this window")


def test_take_before_ready_and_short_output_are_errors():
    sen = Script()
    sp = Sampler(sen, 32, 8)
    for out in (array("h", [0] * 32), array("h", [0] * 31)):
        try:
            sp.take(out)
        except SamplerError:
            pass
        else:
            raise AssertionError("took")
        sen.add(40)
        sp.poll()


def test_counters_and_positions_wrap_at_2_pow_30():
    sen = Script()
    sp = Sampler(sen, 64, 16, ring=128)
    top = 1 << 30
    sen.overruns = top - 2
    sp.reset()
    # put the stream positions just below the wrap (as after ~25 h at 12 kHz)
    sp._w = sp._r = sp._end = top - 40
    sen.add(64)
    sp.poll()
    out = array("h", [0] * 64)
    sen.overruns = 1  # the driver's counter wrapped too: 3 more overruns
    sp.take(out)
    expect_eq((sp.offset, sp.overruns, sp.dropped), (top - 40, 3, 0), "first")
    expect_eq(list(out), [f(j) for j in range(64)], "samples across the wrap")
    for w in range(1, 6):
        sen.add(16)
        sp.poll()
        expect_eq(sp.take(out), 0, "flags %d" % w)
        expect_eq(sp.offset, (top - 40 + 16 * w) % top, "offset wraps")
        expect_eq(out[0], f(16 * w), "window %d" % w)


def test_start_starts_the_sensor():
    sen = Script()
    sp = Sampler(sen, 16, 16)
    sp.start()
    expect_eq(sen.started, 1, "started")


# --- the real drivers on their register fakes --------------------------------------


def test_lis3dh_windows_overrun_saturation_and_bus_error():
    import fakebus
    from drivers.lis3dh import LIS3DH

    def gen(i, a):
        return 3000 if i == 40 else fakebus.ramp(i, a)  # one saturated sample at i = 40

    chip = fakebus.FakeLIS3DH(gen)
    bus = fakebus.FakeI2C({0x19: chip})
    sen = LIS3DH(i2c=bus, addr=0x19, odr=1344, range_g=2, axis="y")
    sp = Sampler(sen, 64, 32)
    sp.start()
    out = array("h", [0] * 64)
    for _ in range(4):  # 4 x 16 samples, polled in time
        chip.produce(16)
        sp.poll()
    expect_eq(sp.take(out), sampler.SATURATED, "window 1 flags")
    want = [2047 if i == 40 else fakebus.ramp(i, 1) for i in range(64)]  # 12-bit clamp
    expect_eq(list(out), want, "window 1 = generated y")
    expect_eq(sp.saturated, 1, "saturated")
    chip.produce(40)  # the node was busy: FIFO overflows
    sp.poll()
    chip.produce(10)
    sp.poll()
    flags = sp.take(out)
    expect_eq(flags & sampler.OVERRUN, sampler.OVERRUN, "overrun flagged")
    expect_eq(sp.overruns, 1, "one overrun event")
    bus.fail = errno.EIO
    chip.produce(20)
    sp.poll()
    bus.fail = 0
    chip.produce(20)
    sp.poll()
    flags = sp.take(out)
    expect_eq(flags & sampler.ERROR, sampler.ERROR, "bus error flagged")


def test_adxl345_on_spi_feeds_windows():
    import fakebus
    from drivers.adxl345 import ADXL345

    chip = fakebus.FakeADXL345(fakebus.ramp)
    spi = fakebus.FakeSPI()
    spi.attach(5, chip)
    sen = ADXL345(spi=spi, cs=fakebus.FakePin(5, 1, value=1), odr=3200, range_g=16, axis="x")
    sp = Sampler(sen, 32, 16)
    sp.start()
    out = array("h", [0] * 32)
    taken = 0
    for _ in range(20):
        chip.produce(8)
        sp.poll()
        while sp.ready():
            expect_eq(sp.take(out), 0, "clean")
            expect_eq(list(out), [fakebus.ramp(sp.offset + j, 0) for j in range(32)], "x")
            taken += 1
    expect_eq(taken, (160 - 32) // 16 + 1, "windows")
