# Register-level fakes for the sensor driver tests (MicroPython; test-only, not shipped).
#
# FakeADXL345 / FakeLIS3DH model each chip's register map as the drivers see it: the ID
# register, control registers (every write is logged), the data registers, the 32-level
# FIFO in bypass / FIFO / stream mode fed from a sample generator at the chip's own pace
# (produce(k) = k sample periods elapse), the FIFO status bits (entries, watermark,
# overrun, empty), range clamping (saturation) and data alignment per mode, and the
# address auto-increment rules of I2C and SPI:
#   ADXL345: I2C multi-byte reads always increment; SPI increments only with the MB bit
#            (command bit 6). Any read of the data registers pops one FIFO entry when the
#            transfer ends.
#   LIS3DH:  I2C increments only when the sub-address MSB is set; SPI only with the MS
#            bit. In FIFO modes, reading OUT_Z_H (0x2D) pops a level and an incrementing
#            read rolls back from 0x2D to 0x28 (AN3308).
# Not modelled: timing (the 5 us FIFO pop delay, ODR accuracy), interrupts and INT pins,
# trigger mode, self-test, the high-pass filter, activity/tap functions, the LIS3DH
# auxiliary ADC and temperature sensor, the ADXL345's 33rd sample in the output
# registers, noise and offsets.
#
# FakeI2C / FakeSPI / FakePin / FakeADC / FakeTimer stand in for machine's classes;
# install() puts a fake `machine` module into sys.modules for board.py.
import errno
import sys
from array import array

I2C_BUSES = {}  # bus id -> FakeI2C, looked up by machine.I2C(id, ...)
SPI_BUSES = {}  # bus id -> FakeSPI
PINS = {}  # pin id -> level, shared by every FakePin object of that id
ADC_INPUTS = {}  # pin id -> callable(i) -> 0..65535
TIMERS = {}  # timer id -> FakeTimer (the last one created)
CREATED = []  # (kind, id, kwargs) for every machine.I2C/SPI/ADC/Timer constructed


def s16(v):
    return v - 0x10000 if v & 0x8000 else v


class Chip:
    """64 8-bit registers and a 32-level FIFO of (x, y, z) words; subclasses give the
    chip's behaviour. The read path allocates nothing, so allocation tests can run the
    fakes inside the measured region."""

    NAME = "chip"
    READ_ONLY = ()

    def __init__(self, gen, typecode):
        self.gen = gen  # gen(i, axis) -> code of sample i on axis 0/1/2
        self.regs = bytearray(64)
        self.writes = []  # (register, value) in the order written
        self.lost = 0  # samples the chip discarded because its FIFO was full
        self.produced = 0
        self.fifo = [array(typecode, bytes(64)) for _ in range(3)]  # per axis, 32 words
        self.count = 0  # unread FIFO levels
        self.head = 0  # index of the oldest level
        self.out = array(typecode, bytes(6))  # output data registers
        self._spi_state = -1
        self._spi_read = False
        self._spi_inc = False
        self._spi_reg = 0

    def begin(self):
        pass

    def end(self):
        pass

    def read_reg(self, r):
        return self.regs[r]

    def write_reg(self, r, v):
        self.writes.append((r, v))
        if r not in self.READ_ONLY:
            self.regs[r] = v

    def _word(self, axis):
        # the oldest FIFO level, or the output registers when the FIFO is empty / unused
        if self.count:
            return self.fifo[axis][self.head]
        return self.out[axis]

    def _pop(self):
        h = self.head
        f = self.fifo
        o = self.out
        o[0] = f[0][h]
        o[1] = f[1][h]
        o[2] = f[2][h]
        self.head = (h + 1) & 31
        self.count -= 1

    def _push(self, mode, x, y, z):
        # mode: 0 bypass, 1 FIFO, 2 stream (3 = trigger, treated as stream)
        if mode == 0:
            o = self.out
            o[0] = x
            o[1] = y
            o[2] = z
            return
        if self.count == 32:
            self.lost += 1
            if mode == 1:
                return  # FIFO mode stops collecting
            self.head = (self.head + 1) & 31  # stream: the oldest is replaced
            self.count -= 1
        i = (self.head + self.count) & 31
        f = self.fifo
        f[0][i] = x
        f[1][i] = y
        f[2][i] = z
        self.count += 1

    def _clear(self):
        self.count = 0
        self.head = 0

    # SPI framing: command byte = R (bit 7), increment (bit 6), register (bits 5..0)
    def spi_select(self, low):
        if low:
            self._spi_state = 0
            self.begin()
        else:
            if self._spi_state >= 0:
                self.end()
            self._spi_state = -1

    def spi_byte(self, out):
        if self._spi_state < 0:
            return 0xFF  # not selected: MISO floats high
        if self._spi_state == 0:
            self._spi_read = bool(out & 0x80)
            self._spi_inc = bool(out & 0x40)
            self._spi_reg = out & 0x3F
            self._spi_state = 1
            return 0x00
        r = self._spi_reg
        if self._spi_read:
            v = self.read_reg(r)
        else:
            self.write_reg(r, out)
            v = 0x00
        self._spi_reg = self.next_addr(r, self._spi_inc)
        return v


def _clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


class FakeADXL345(Chip):
    """ADXL345 register model (data sheet Rev. G): int16 right-justified codes."""

    NAME = "adxl345"
    READ_ONLY = (0x00, 0x30, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x39)

    def __init__(self, gen, devid=0xE5):
        super().__init__(gen, "h")
        self.regs[0x00] = devid
        self.regs[0x2C] = 0x0A  # BW_RATE reset value: 100 Hz
        self.overrun = False
        self._data_read = False

    def i2c_reg(self, sub):
        return sub & 0x3F

    def i2c_inc(self, sub):
        return True  # multi-byte I2C reads always increment

    def next_addr(self, r, inc):
        return (r + 1) & 0x3F if inc else r

    def measuring(self):
        return bool(self.regs[0x2D] & 0x08)

    def produce(self, k=1):
        """k sample periods elapse."""
        for _ in range(k):
            if not self.regs[0x2D] & 0x08:
                continue  # standby: no conversions
            fmt = self.regs[0x31]
            fs = fmt & 3
            if fmt & 0x08:  # full resolution: 256 LSB/g at every range, +-(2 << fs) g
                lo = -(512 << fs)
                hi = (512 << fs) - 1
            else:  # 10-bit
                lo = -512
                hi = 511
            i = self.produced
            g = self.gen
            self.produced = i + 1
            self._push(self.regs[0x38] >> 6, _clamp(g(i, 0), lo, hi), _clamp(g(i, 1), lo, hi),
                       _clamp(g(i, 2), lo, hi))
            if self.count == 32 and self.regs[0x38] >> 6:
                self.overrun = True  # "set when FIFO is filled"

    def read_reg(self, r):
        if r == 0x30:  # INT_SOURCE: DATA_READY, watermark, overrun
            n = self.count
            wm = self.regs[0x38] & 0x1F
            return ((0x80 if n else 0) | (0x02 if n and n >= wm else 0)
                    | (0x01 if self.overrun else 0))
        if r == 0x39:  # FIFO_STATUS entries
            return self.count
        if 0x32 <= r <= 0x37:
            self._data_read = True
            v = self._word((r - 0x32) >> 1) & 0xFFFF
            return v >> 8 if r & 1 else v & 0xFF
        return self.regs[r]

    def write_reg(self, r, v):
        Chip.write_reg(self, r, v)
        if r == 0x38 and v >> 6 == 0:  # bypass clears the FIFO
            self._clear()
            self.overrun = False

    def begin(self):
        self._data_read = False

    def end(self):
        # any read of the data registers pops one FIFO level when the transfer ends
        if self._data_read and self.count and self.regs[0x38] >> 6:
            self._pop()
            self.overrun = False  # cleared when the FIFO contents are read
        self._data_read = False


class FakeLIS3DH(Chip):
    """LIS3DH register model (DocID17530 Rev 2, AN3308): left-justified words, the
    resolution set by LPen / HR."""

    NAME = "lis3dh"
    READ_ONLY = (0x0F, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2F)

    def __init__(self, gen, whoami=0x33):
        super().__init__(gen, "H")
        self.regs[0x0F] = whoami
        self.regs[0x20] = 0x07  # CTRL_REG1 reset: power-down, axes enabled

    def i2c_reg(self, sub):
        return sub & 0x7F

    def i2c_inc(self, sub):
        return bool(sub & 0x80)  # MSB of the sub-address = increment (section 6.1.1)

    def _fifo_mode(self):
        if not self.regs[0x24] & 0x40:  # FIFO_EN
            return 0
        return self.regs[0x2E] >> 6

    def next_addr(self, r, inc):
        if not inc:
            return r
        if r == 0x2D and self._fifo_mode():
            return 0x28  # FIFO read rolls back to OUT_X_L
        return (r + 1) & 0x7F

    def bits(self):
        if self.regs[0x20] & 0x08:
            return 8  # LPen
        return 12 if self.regs[0x23] & 0x08 else 10

    def produce(self, k=1):
        for _ in range(k):
            if self.regs[0x20] >> 4 == 0:
                continue  # power-down
            b = self.bits()
            lo = -(1 << (b - 1))
            hi = (1 << (b - 1)) - 1
            sh = 16 - b
            i = self.produced
            g = self.gen
            self.produced = i + 1
            self._push(self._fifo_mode(), (_clamp(g(i, 0), lo, hi) << sh) & 0xFFFF,
                       (_clamp(g(i, 1), lo, hi) << sh) & 0xFFFF,
                       (_clamp(g(i, 2), lo, hi) << sh) & 0xFFFF)

    def read_reg(self, r):
        if r == 0x2F:  # FIFO_SRC_REG: WTM, OVRN_FIFO, EMPTY, FSS (31 with 32 unread)
            n = self.count
            fth = self.regs[0x2E] & 0x1F
            return ((0x80 if n > fth else 0) | (0x40 if n == 32 else 0)
                    | (0x20 if n == 0 else 0) | (n if n < 32 else 31))
        if r == 0x27:  # STATUS_REG: ZYXDA
            return 0x08 if self.count else 0
        if 0x28 <= r <= 0x2D:
            v = self._word((r - 0x28) >> 1)
            if r == 0x2D and self.count and self._fifo_mode():
                self._pop()
            return v >> 8 if r & 1 else v & 0xFF
        return self.regs[r]

    def write_reg(self, r, v):
        Chip.write_reg(self, r, v)
        if r == 0x2E and v >> 6 == 0:  # bypass resets the FIFO
            self._clear()


class _Failing:
    fail = 0  # errno raised by every transfer while set
    fail_in = -1  # raise EIO once, after this many more good transfers

    def _maybe_fail(self):
        self.transfers += 1
        if self.fail:
            raise OSError(self.fail)
        if self.fail_in == 0:
            self.fail_in = -1
            raise OSError(errno.EIO)
        if self.fail_in > 0:
            self.fail_in -= 1


class FakeI2C(_Failing):
    def __init__(self, devices=None):
        self.devices = devices if devices is not None else {}
        self.init_args = None
        self.transfers = 0

    def _dev(self, addr):
        self._maybe_fail()
        d = self.devices.get(addr)
        if d is None:
            raise OSError(errno.ENODEV)  # no ACK
        return d

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        d = self._dev(addr)
        r = d.i2c_reg(memaddr)
        inc = d.i2c_inc(memaddr)
        d.begin()
        for i in range(len(buf)):
            buf[i] = d.read_reg(r)
            r = d.next_addr(r, inc)
        d.end()

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        b = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, b)
        return bytes(b)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        d = self._dev(addr)
        r = d.i2c_reg(memaddr)
        inc = d.i2c_inc(memaddr)
        d.begin()
        for i in range(len(buf)):
            d.write_reg(r, buf[i])
            r = d.next_addr(r, inc)
        d.end()


PIN_LISTENERS = {}  # pin id -> [FakeSPI, ...] that have a chip selected by that pin


class FakePin:
    OUT = 1
    IN = 0

    def __init__(self, id, mode=-1, value=None):
        self.id = id
        self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return PINS.get(self.id, 1)
        v = 1 if v else 0
        old = PINS.get(self.id, 1)
        PINS[self.id] = v
        if v != old:
            lst = PIN_LISTENERS.get(self.id)
            if lst:
                for bus in lst:
                    bus.cs_changed(self.id, v)

    def __call__(self, v=None):
        return self.value(v)


class FakeSPI(_Failing):
    def __init__(self):
        self.chips = {}  # CS pin id -> chip
        self.selected = None
        self.init_args = None
        self.transfers = 0

    def attach(self, cs_id, chip):
        self.chips[cs_id] = chip
        PIN_LISTENERS.setdefault(cs_id, []).append(self)
        PINS.setdefault(cs_id, 1)

    def cs_changed(self, pin_id, level):
        c = self.chips.get(pin_id)
        if c is None:
            return
        if level == 0:
            if self.selected is not None:
                raise AssertionError("two chips selected at once")
            self.selected = c
        elif self.selected is c:
            self.selected = None
        c.spi_select(level == 0)

    def _byte(self, out):
        c = self.selected
        return c.spi_byte(out) if c is not None else 0xFF

    def write(self, buf):
        self._maybe_fail()
        for i in range(len(buf)):
            self._byte(buf[i])

    def readinto(self, buf, write=0):
        self._maybe_fail()
        for i in range(len(buf)):
            buf[i] = self._byte(write)

    def write_readinto(self, wbuf, rbuf):
        self._maybe_fail()
        for i in range(len(wbuf)):
            rbuf[i] = self._byte(wbuf[i])


class FakeADC:
    ATTN_11DB = 3

    def __init__(self, pin, **kw):
        self.pin = pin.id if isinstance(pin, FakePin) else pin
        self.reads = 0
        CREATED.append(("ADC", self.pin, kw))

    def read_u16(self):
        v = ADC_INPUTS[self.pin](self.reads)
        self.reads += 1
        return v


class FakeTimer:
    PERIODIC = 1
    ONE_SHOT = 0

    def __init__(self, id=-1):
        self.id = id
        self.callback = None
        self.freq = None
        self.mode = None
        TIMERS[id] = self
        CREATED.append(("Timer", id, {}))

    def init(self, *, mode=1, freq=None, period=None, callback=None):
        self.mode = mode
        self.freq = freq
        self.callback = callback

    def deinit(self):
        self.callback = None

    def fire(self, k=1):
        """k timer periods elapse."""
        for _ in range(k):
            if self.callback is not None:
                self.callback(self)


def _i2c(id, **kw):
    bus = I2C_BUSES[id]
    bus.init_args = kw
    CREATED.append(("I2C", id, kw))
    return bus


def _spi(id, **kw):
    bus = SPI_BUSES[id]
    bus.init_args = kw
    CREATED.append(("SPI", id, kw))
    return bus


class machine:  # noqa: N801 - stands in for the module
    Pin = FakePin
    ADC = FakeADC
    Timer = FakeTimer
    I2C = staticmethod(_i2c)
    SPI = staticmethod(_spi)


def install():
    """Make `import machine` return the fakes (before board.open_sensor runs)."""
    sys.modules["machine"] = machine
    return machine


def ramp(i, axis):
    """A test signal independent of the code under test: distinct per axis and sample,
    both signs, within +-1000 (inside every range at full resolution)."""
    if axis == 0:
        return ((i * 37) % 401) - 200
    if axis == 1:
        return ((i * 53) % 601) - 300
    return ((i * 7919 + 11) % 2001) - 1000
