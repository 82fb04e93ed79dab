# ADXL345 driver against the register-level fake (fakebus.FakeADXL345) on I2C and SPI:
# exact configuration bytes, samples equal to the generated ones, FIFO overrun, wrong
# chip ID, missing chip, bus errors at start and at run time, unsupported settings.
# Expected register values are written here from the data sheet (Rev. G), not taken
# from the driver.
HEAPSIZE = "128K"  # compiling the fakes takes more than the driver needs

import errno
import gc
from array import array

import fakebus
from fakebus import FakeADXL345, FakeI2C, FakePin, FakeSPI, ramp
from drivers.adxl345 import ADXL345
from drivers.bus import SensorError

# data sheet Table 7: output data rate (Hz) -> BW_RATE rate code
RATE_CODES = {3200: 0x0F, 1600: 0x0E, 800: 0x0D, 400: 0x0C, 200: 0x0B, 100: 0x0A, 50: 0x09,
              25: 0x08}
RANGE_BITS = {2: 0, 4: 1, 8: 2, 16: 3}  # DATA_FORMAT D1..D0
AXIS = {"x": 0, "y": 1, "z": 2}


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
        return str(e)
    raise AssertionError("no SensorError")


def on_i2c(gen=ramp, addr=0x53, devid=0xE5, **kw):
    chip = FakeADXL345(gen, devid)
    bus = FakeI2C({addr: chip})
    return chip, bus, ADXL345(i2c=bus, addr=addr, **kw)


def on_spi(gen=ramp, devid=0xE5, **kw):
    chip = FakeADXL345(gen, devid)
    spi = FakeSPI()
    spi.attach(5, chip)
    cs = FakePin(5, FakePin.OUT, value=1)
    return chip, spi, ADXL345(spi=spi, cs=cs, **kw)


def config_writes(odr, range_g, wm):
    # POWER_CTL standby, INT_ENABLE off, BW_RATE, DATA_FORMAT (FULL_RES D3), FIFO_CTL
    # bypass (clears), FIFO_CTL stream (D7..D6 = 10) + samples, POWER_CTL Measure (D3)
    return [(0x2D, 0x00), (0x2E, 0x00), (0x2C, RATE_CODES[odr]),
            (0x31, 0x08 | RANGE_BITS[range_g]), (0x38, 0x00), (0x38, 0x80 | wm),
            (0x2D, 0x08)]


def test_start_writes_the_data_sheet_configuration_on_i2c_and_spi():
    for make in (on_i2c, on_spi):
        for odr, rng, wm in ((3200, 16, 20), (100, 2, 16), (25, 8, 1), (800, 4, 31)):
            chip, _, s = make(odr=odr, range_g=rng, watermark=wm, axis="x")
            s.start()
            expect_eq(chip.writes, config_writes(odr, rng, wm), "config %d Hz" % odr)
            expect_eq(s.rate, odr, "rate")


def test_every_rate_of_table_7_and_nothing_else():
    for odr in RATE_CODES:
        ADXL345(i2c=FakeI2C(), odr=odr)
    for bad in (0, 12, 24, 3199, 6400, 12.5, "100", True):
        msg = expect_error(lambda: ADXL345(i2c=FakeI2C(), odr=bad), "adxl345", "odr")
        for odr in RATE_CODES:
            if str(odr) not in msg:
                raise AssertionError("%r does not list %d" % (msg, odr))


def test_bad_range_watermark_axis_refused_before_any_bus_traffic():
    bus = FakeI2C()
    for kw, word in ((dict(range_g=3), "range"), (dict(range_g=32), "range"),
                     (dict(watermark=0), "watermark"), (dict(watermark=32), "watermark"),
                     (dict(axis="w"), "axis")):
        expect_error(lambda: ADXL345(i2c=bus, **kw), word)
    expect_eq(bus.transfers, 0, "transfers")


def check_stream(make, axis):
    chip, _, s = make(odr=3200, range_g=16, watermark=16, axis=axis)
    s.start()
    a = AXIS[axis]
    buf = array("h", [0x5555] * 80)
    total = 0
    for produce, n, pos in ((20, 64, 5), (10, 4, 0), (0, 64, 10), (31, 64, 40), (1, 1, 79)):
        chip.produce(produce)
        got = s.read(buf, pos, n)
        for j in range(got):
            expect_eq(buf[pos + j], ramp(total + j, a), "sample %d" % (total + j))
        total += got
        expect_eq(got, min(n, chip.produced - (total - got)), "count")
    # everything produced has been delivered in order, nothing lost
    rest = chip.produced - total
    got = s.read(buf, 0, 80)
    expect_eq(got, rest, "rest")
    for j in range(got):
        expect_eq(buf[j], ramp(total + j, a), "rest sample")
    expect_eq((s.overruns, s.errors, chip.lost), (0, 0, 0), "overruns/errors/lost")


def test_samples_equal_the_generated_ones_on_i2c():
    for axis in "xyz":
        check_stream(on_i2c, axis)


def test_samples_equal_the_generated_ones_on_spi_with_the_mb_bit():
    # without MB (multi-byte) the fake does not advance the register address and the
    # samples would come out wrong
    for axis in "xyz":
        check_stream(on_spi, axis)


def test_read_does_not_write_outside_its_slice():
    chip, _, s = on_i2c(odr=100, range_g=16)
    s.start()
    chip.produce(8)
    buf = array("h", [7] * 20)
    expect_eq(s.read(buf, 6, 5), 5, "count")
    expect_eq(list(buf[:6]) + list(buf[11:]), [7] * 15, "outside the slice")


def test_fifo_overrun_is_detected_and_counted():
    chip, _, s = on_i2c(odr=3200, range_g=16)
    s.start()
    chip.produce(40)  # the reader is late: 8 samples replaced in the 32-level FIFO
    expect_eq(chip.lost, 8, "fake lost")
    buf = array("h", [0] * 64)
    got = s.read(buf, 0, 64)
    expect_eq(got, 32, "FIFO depth")
    for j in range(32):
        expect_eq(buf[j], ramp(8 + j, 2), "newest 32")
    expect_eq(s.overruns, 1, "overrun events")
    chip.produce(5)
    expect_eq(s.read(buf, 0, 64), 5, "after")
    expect_eq(s.overruns, 1, "no new overrun")
    chip.produce(32)  # exactly full: the data sheet sets Overrun when the FIFO fills
    s.read(buf, 0, 64)
    expect_eq(s.overruns, 2, "full FIFO counts")


def test_wrong_chip_id_names_chip_bus_and_id():
    _, _, s = on_i2c(devid=0xE6)
    expect_error(s.start, "adxl345", "i2c 0x53", "0xe6", "0xe5")
    # SPI with no chip answering: MISO floats high
    spi = FakeSPI()
    s = ADXL345(spi=spi, cs=FakePin(9, FakePin.OUT, value=1))
    expect_error(s.start, "adxl345", "spi", "0xff")


def test_missing_chip_and_bus_error_at_start():
    s = ADXL345(i2c=FakeI2C({}), addr=0x1D)
    expect_error(s.start, "adxl345", "0x1d", "bus error")
    chip, bus, s = on_i2c()
    bus.fail_in = 3  # fails in the middle of the configuration
    expect_error(s.start, "bus error")


def test_bus_error_at_run_time_is_counted_not_raised():
    chip, bus, s = on_i2c(odr=800, range_g=16)
    s.start()
    chip.produce(10)
    buf = array("h", [0] * 32)
    bus.fail_in = 2 + 4  # INT_SOURCE, FIFO_STATUS, 4 entries, then EIO
    got = s.read(buf, 0, 32)
    expect_eq(got, 4, "samples before the error")
    expect_eq((s.errors, s.last_error), (1, errno.EIO), "error count")
    got2 = s.read(buf, 4, 28)
    expect_eq(got + got2, 10, "the rest after the error")
    for j in range(10):
        expect_eq(buf[j], ramp(j, 2), "sample")
    bus.fail = errno.ETIMEDOUT  # the chip stops answering
    for _ in range(3):
        expect_eq(s.read(buf, 0, 32), 0, "dead bus")
    expect_eq((s.errors, s.last_error), (4, errno.ETIMEDOUT), "errors")


def test_saturated_codes_reach_full_scale():
    def loud(i, a):
        return 5000 if i & 1 else -5000

    for rng in (2, 4, 8, 16):
        chip, _, s = on_i2c(gen=loud, odr=100, range_g=rng)
        s.start()
        chip.produce(4)
        buf = array("h", [0] * 4)
        s.read(buf, 0, 4)
        lsb = 256 * rng  # full resolution: 256 LSB/g (Table 1), +-rng g
        expect_eq(list(buf), [-lsb, lsb - 1, -lsb, lsb - 1], "clamped codes")
        expect_eq(s.full_scale, lsb - 1, "full_scale")


def test_scale_is_the_data_sheet_sensitivity():
    s = ADXL345(i2c=FakeI2C())
    g = s.scale_m * 2.0 ** s.scale_e
    if abs(g * 1000 - 3.9) > 0.01:  # 3.9 mg/LSB typical, full resolution
        raise AssertionError(g)


def test_stop_returns_to_standby():
    chip, _, s = on_i2c()
    s.start()
    chip.writes = []
    s.stop()
    expect_eq(chip.writes, [(0x2D, 0x00), (0x38, 0x00)], "stop")
    chip.produce(5)
    expect_eq(s.read(array("h", [0] * 8), 0, 8), 0, "no samples when stopped")


def test_read_allocates_nothing():
    for make in (on_i2c, on_spi):
        chip, _, s = make(odr=3200, range_g=16)
        s.start()
        buf = array("h", [0] * 64)
        chip.produce(20)
        s.read(buf, 0, 64)
        gc.collect()
        gc.disable()
        try:
            before = gc.mem_alloc()
            for k in range(60):
                chip.produce(k % 33)
                s.read(buf, k % 30, 34)
            used = gc.mem_alloc() - before
        finally:
            gc.enable()
        expect_eq(used, 0, "bytes allocated")
    fakebus.CREATED.clear()
