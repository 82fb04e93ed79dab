# LIS3DH driver against the register-level fake (fakebus.FakeLIS3DH) on I2C and SPI:
# exact configuration bytes per mode, right-aligned codes equal to the generated ones,
# multi-level FIFO bursts, FIFO overrun, wrong chip ID, bus errors, unsupported ODRs.
# Expected register values come from the data sheet (DocID17530 Rev 2), not the driver.
HEAPSIZE = "128K"  # compiling the fakes takes more than the driver needs

import errno
import gc
from array import array

from fakebus import FakeI2C, FakeLIS3DH, FakePin, FakeSPI, ramp
from drivers.lis3dh import LIS3DH
from drivers.bus import SensorError

# CTRL_REG1 ODR3..0 (data rate configuration table)
HR_CODES = {1: 1, 10: 2, 25: 3, 50: 4, 100: 5, 200: 6, 400: 7, 1344: 9}
LP_CODES = {1: 1, 10: 2, 25: 3, 50: 4, 100: 5, 200: 6, 400: 7, 1600: 8, 5376: 9}
FS_BITS = {2: 0, 4: 1, 8: 2, 16: 3}  # CTRL_REG4 FS1..0
BITS = {"hr": 12, "normal": 10, "lp": 8}
# Table 4, sensitivity So in mg/digit
MG = {"hr": {2: 1, 4: 2, 8: 4, 16: 12}, "normal": {2: 4, 4: 8, 8: 16, 16: 48},
      "lp": {2: 16, 4: 32, 8: 64, 16: 192}}


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


def clamp(v, bits):
    lo = -(1 << (bits - 1))
    hi = (1 << (bits - 1)) - 1
    return lo if v < lo else hi if v > hi else v


def on_i2c(gen=ramp, addr=0x18, whoami=0x33, **kw):
    chip = FakeLIS3DH(gen, whoami)
    bus = FakeI2C({addr: chip})
    return chip, bus, LIS3DH(i2c=bus, addr=addr, **kw)


def on_spi(gen=ramp, whoami=0x33, **kw):
    chip = FakeLIS3DH(gen, whoami)
    spi = FakeSPI()
    spi.attach(17, chip)
    return chip, spi, LIS3DH(spi=spi, cs=FakePin(17, FakePin.OUT, value=1), **kw)


def config_writes(odr, rng, wm, mode):
    lp = mode == "lp"
    code = (LP_CODES if lp else HR_CODES)[odr]
    return [(0x20, 0x00), (0x21, 0x00), (0x22, 0x00),
            # CTRL_REG4: BDU (bit 7), FS (5..4), HR (bit 3)
            (0x23, 0x80 | FS_BITS[rng] << 4 | (0x08 if mode == "hr" else 0)),
            (0x24, 0x40),  # CTRL_REG5: FIFO_EN
            (0x2E, 0x00), (0x2E, 0x80 | wm),  # FIFO bypass (reset), then stream + FTH
            # CTRL_REG1: ODR, LPen (bit 3), Zen Yen Xen
            (0x20, code << 4 | (0x08 if lp else 0) | 0x07)]


def test_start_writes_the_data_sheet_configuration():
    cases = [(1344, 2, 16, "hr"), (100, 16, 1, "normal"), (5376, 8, 31, "lp"),
             (1600, 4, 8, "lp"), (1, 2, 5, "hr"), (400, 4, 20, "lp")]
    for make in (on_i2c, on_spi):
        for odr, rng, wm, mode in cases:
            chip, _, s = make(odr=odr, range_g=rng, watermark=wm, mode=mode)
            s.start()
            expect_eq(chip.writes, config_writes(odr, rng, wm, mode), "%d Hz %s" % (odr, mode))
            expect_eq((s.rate, s.mode), (odr, mode), "rate/mode")


def test_default_mode_is_high_resolution_or_low_power_when_the_rate_needs_it():
    for odr, mode in ((1344, "hr"), (100, "hr"), (5376, "lp"), (1600, "lp")):
        expect_eq(LIS3DH(i2c=FakeI2C(), odr=odr).mode, mode, "mode at %d" % odr)


def test_unsupported_odr_names_the_allowed_values():
    for bad, mode in ((5376, "hr"), (1600, "normal"), (1344, "lp"), (3200, None), (0, None),
                      (2, None), (100.0, None), (True, None)):
        msg = expect_error(lambda: LIS3DH(i2c=FakeI2C(), odr=bad, mode=mode), "lis3dh", "odr")
        allowed = LP_CODES if mode == "lp" else HR_CODES
        for hz in allowed:
            if str(hz) not in msg:
                raise AssertionError("%r does not list %d" % (msg, hz))
    bus = FakeI2C()
    for kw, word in ((dict(range_g=1), "range"), (dict(watermark=0), "watermark"),
                     (dict(watermark=32), "watermark"), (dict(axis="xy"), "axis"),
                     (dict(mode="fast"), "mode")):
        expect_error(lambda: LIS3DH(i2c=bus, **kw), word)
    expect_eq(bus.transfers, 0, "no bus traffic")


def check_stream(make, axis, mode, odr):
    a = "xyz".index(axis)
    chip, bus, s = make(odr=odr, range_g=2, mode=mode, axis=axis)
    per = 2 if make is on_spi else 1  # SPI: command write + readinto per register read
    s.start()
    buf = array("h", [0] * 96)
    total = 0
    for produce, n, pos in ((31, 96, 0), (7, 96, 50), (13, 5, 3), (0, 96, 60), (31, 96, 1)):
        chip.produce(produce)
        t0 = bus.transfers
        got = s.read(buf, pos, n)
        expect_eq(got, min(n, chip.produced - total), "count")
        for j in range(got):
            want = clamp(ramp(total + j, a), BITS[mode])
            expect_eq(buf[pos + j], want, "%s sample %d" % (mode, total + j))
        total += got
        if produce == 31 and n == 96:  # FIFO_SRC, then bursts of 16 + 8 + 4 + 2 + 1 levels
            expect_eq(bus.transfers - t0, 6 * per, "transfers for 31 levels")
        if produce == 7:  # 4 + 2 + 1 levels
            expect_eq(bus.transfers - t0, 4 * per, "transfers for 7 levels")
    expect_eq((s.overruns, s.errors, chip.lost), (0, 0, 0), "clean")


def test_samples_equal_the_generated_ones_i2c_auto_increment():
    # without the sub-address MSB the fake does not auto-increment: the burst would
    # return one register over and over
    for axis in "xyz":
        for mode, odr in (("hr", 1344), ("normal", 400), ("lp", 5376)):
            check_stream(on_i2c, axis, mode, odr)


def test_samples_equal_the_generated_ones_spi_ms_bit():
    for axis in "xz":
        for mode, odr in (("hr", 1344), ("lp", 1600)):
            check_stream(on_spi, axis, mode, odr)


def test_fifo_overrun_is_detected_and_counted():
    chip, bus, s = on_i2c(odr=1344, range_g=2)
    s.start()
    chip.produce(45)
    expect_eq(chip.lost, 13, "fake lost")
    buf = array("h", [0] * 40)
    t0 = bus.transfers
    expect_eq(s.read(buf, 0, 40), 32, "32 levels although FSS says 31")
    expect_eq(bus.transfers - t0, 2, "FIFO_SRC + one 192-byte burst")
    for j in range(32):
        expect_eq(buf[j], ramp(13 + j, 2), "newest 32")
    expect_eq(s.overruns, 1, "overrun events")
    chip.produce(31)
    s.read(buf, 0, 40)
    expect_eq(s.overruns, 1, "31 levels is no overrun")


def test_partial_read_leaves_the_rest_in_the_fifo():
    chip, _, s = on_i2c(odr=100)
    s.start()
    chip.produce(20)
    buf = array("h", [0] * 20)
    expect_eq(s.read(buf, 0, 3), 3, "first")
    expect_eq(s.read(buf, 3, 17), 17, "rest")
    expect_eq(list(buf), [ramp(i, 2) for i in range(20)], "in order")


def test_wrong_chip_id_and_missing_chip():
    _, _, s = on_i2c(whoami=0x32)  # an LIS331 / LIS2DH answers 0x32 / 0x33...
    expect_error(s.start, "lis3dh", "i2c 0x18", "0x32", "0x33")
    s = LIS3DH(i2c=FakeI2C({}), addr=0x19)
    expect_error(s.start, "lis3dh", "0x19", "bus error")
    s = LIS3DH(spi=FakeSPI(), cs=FakePin(3, FakePin.OUT, value=1))
    expect_error(s.start, "lis3dh", "spi", "0xff")


def test_bus_error_at_run_time_is_counted_not_raised():
    chip, bus, s = on_i2c(odr=400)
    s.start()
    chip.produce(7)
    buf = array("h", [0] * 8)
    bus.fail_in = 2  # FIFO_SRC, 4-level burst, then the 2-level burst fails
    expect_eq(s.read(buf, 0, 8), 4, "before the error")
    expect_eq((s.errors, s.last_error), (1, errno.EIO), "errors")
    bus.fail = errno.EIO
    expect_eq(s.read(buf, 0, 8), 0, "dead")
    expect_eq(s.errors, 2, "errors")


def test_scale_matches_table_4():
    for mode, odr in (("hr", 100), ("normal", 100), ("lp", 100)):
        for rng in (2, 4, 8, 16):
            s = LIS3DH(i2c=FakeI2C(), odr=odr, range_g=rng, mode=mode)
            want = MG[mode][rng] / 1000
            got = s.scale_m * 2.0 ** s.scale_e
            if abs(got - want) > want * 2.0 ** -15:
                raise AssertionError((mode, rng, got, want))
            if not 1 << 14 <= s.scale_m < 1 << 15:
                raise AssertionError(s.scale_m)
            expect_eq(s.full_scale, (1 << (BITS[mode] - 1)) - 1, "full_scale")


def test_saturated_codes_reach_full_scale():
    def loud(i, a):
        return 30000 if i & 1 else -30000

    for mode in ("hr", "normal", "lp"):
        chip, _, s = on_i2c(gen=loud, odr=400, mode=mode)
        s.start()
        chip.produce(2)
        buf = array("h", [0, 0])
        s.read(buf, 0, 2)
        fs = (1 << (BITS[mode] - 1)) - 1
        expect_eq(list(buf), [-fs - 1, fs], mode)
        expect_eq(s.full_scale, fs, "full_scale")


def test_stop_powers_down():
    chip, _, s = on_i2c()
    s.start()
    chip.writes = []
    s.stop()
    expect_eq(chip.writes, [(0x20, 0x00), (0x2E, 0x00)], "stop")


def test_read_allocates_nothing():
    for make in (on_i2c, on_spi):
        chip, _, s = make(odr=1344)
        s.start()
        buf = array("h", [0] * 64)
        chip.produce(32)
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
