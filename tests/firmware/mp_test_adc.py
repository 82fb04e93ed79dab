# ADC sensor sampled by a timer (adcsensor.ADCSensor) with fake machine.Timer / ADC:
# the timer is set up as asked, the callback records samples in order, a late consumer
# loses samples that are counted, rates the timer cannot make exactly are refused, and
# neither the callback nor read() allocates.
HEAPSIZE = "128K"  # compiling the fakes takes more than the sensor needs

import gc
from array import array

import fakebus
from fakebus import FakeADC, FakeTimer
from drivers.adc import ADCSensor
from drivers.bus import SensorError


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def expect_error(fn, *words):
    try:
        fn()
    except SensorError as e:
        for w in words:
            if w not in str(e):
                raise AssertionError("%r does not mention %r" % (str(e), w))
        return
    raise AssertionError("no SensorError")


def u16(i):
    return (i * 7919 + 4321) % 65536


def make(pin=34, **kw):
    fakebus.ADC_INPUTS[pin] = u16
    adc = FakeADC(pin)
    t = FakeTimer(0)
    kw.setdefault("rate", 1000)
    return adc, t, ADCSensor(adc, t, **kw)


def test_start_sets_a_periodic_timer_and_stop_releases_it():
    _, t, s = make(rate=2000)
    expect_eq(t.callback, None, "no callback before start")
    s.start()
    expect_eq((t.mode, t.freq), (FakeTimer.PERIODIC, 2000), "timer")
    if t.callback is None:
        raise AssertionError("no callback")
    s.stop()
    expect_eq(t.callback, None, "deinit")
    expect_eq(s.rate, 2000, "rate")


def test_samples_arrive_in_order_minus_zero():
    _, t, s = make(zero=32768, size=64)
    s.start()
    buf = array("h", [0] * 100)
    total = 0
    for fire, n, pos in ((10, 100, 0), (30, 7, 50), (0, 100, 3), (64, 100, 20)):
        t.fire(fire)
        got = s.read(buf, pos, n)
        for j in range(got):
            expect_eq(buf[pos + j], u16(total + j) - 32768, "sample %d" % (total + j))
        total += got
    expect_eq((total, s.overruns), (104, 0), "all delivered")


def test_late_consumer_loses_samples_and_they_are_counted():
    adc, t, s = make(size=16)
    s.start()
    t.fire(40)
    expect_eq(s.overruns, 24, "lost samples")
    buf = array("h", [0] * 32)
    expect_eq(s.read(buf, 0, 32), 16, "ring size")
    expect_eq([b + 32768 for b in buf[:16]], [u16(i) for i in range(16)], "kept the oldest")
    t.fire(3)
    expect_eq(s.read(buf, 0, 32), 3, "after")
    # the callback does not even sample the ADC when the ring is full
    expect_eq(list(buf[:3]), [u16(i) - 32768 for i in (16, 17, 18)], "resumed")
    expect_eq(adc.reads, 19, "ADC reads")


def test_codes_clamp_to_int16_and_full_scale_is_the_unclipped_span():
    for zero, raw, want, fs in ((1000, 65535, 32767, 1000), (60000, 0, -32768, 5535),
                                (32768, 0, -32768, 32767), (32767, 65535, 32767, 32767)):
        fakebus.ADC_INPUTS[1] = lambda i, v=raw: v
        t = FakeTimer(1)
        s = ADCSensor(FakeADC(1), t, 100, zero=zero)
        s.start()
        t.fire(1)
        buf = array("h", [0])
        s.read(buf, 0, 1)
        expect_eq(buf[0], want, "code for zero %d" % zero)
        expect_eq(s.full_scale, fs, "full scale for zero %d" % zero)


def test_rates_the_timer_cannot_make_exactly_are_refused():
    adc = FakeADC(34)
    for rate, tick in ((3000, 1000), (1500, 1000), (7, 1000000)):
        expect_error(lambda: ADCSensor(adc, FakeTimer(), rate, tick_hz=tick), str(rate), "tick")
    for rate in (0, -5, 20001, 100.0, None):
        expect_error(lambda: ADCSensor(adc, FakeTimer(), rate), "rate")
    ADCSensor(adc, FakeTimer(), 250, tick_hz=1000)
    ADCSensor(adc, FakeTimer(), 20000)
    for kw, word in ((dict(size=100), "size"), (dict(size=8), "size"), (dict(zero=70000), "zero"),
                     (dict(mv_per_g=0), "mv_per_g"), (dict(vref_mv=-1), "vref_mv")):
        expect_error(lambda: ADCSensor(adc, FakeTimer(), 1000, **kw), word)


def test_scale_is_vref_over_65536_steps_over_sensitivity():
    for vref, mv in ((3300, 300), (3300, 40), (1800, 57), (5000, 1)):
        _, _, s = make(vref_mv=vref, mv_per_g=mv)
        want = vref / (65536 * mv)
        got = s.scale_m * 2.0 ** s.scale_e
        if abs(got - want) > want * 2.0 ** -15:
            raise AssertionError((vref, mv, got, want))


def test_callback_and_read_allocate_nothing():
    _, t, s = make(size=256)
    s.start()
    buf = array("h", [0] * 64)
    t.fire(300)  # includes the ring-full path
    s.read(buf, 0, 64)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for k in range(100):
            t.fire(k % 70)
            s.read(buf, k % 10, 50)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    expect_eq(used, 0, "bytes allocated")
    if s.overruns == 0:
        raise AssertionError("the full-ring path was not exercised")
