# ADXL345 3-axis accelerometer (Analog Devices, data sheet Rev. G) over I2C or SPI.
#
# One axis is delivered. The chip runs in full resolution with its 32-sample FIFO in
# stream mode; read() drains what the FIFO holds, one 6-byte burst per FIFO entry
# (DATAX0..DATAZ1: a read of the data registers pops one entry, and the six bytes of an
# entry must come in one multi-byte read, data sheet "FIFO" and "Register 0x39").
# The common sensor interface is described in board.py.
from micropython import const
import time
from drivers.bus import RegBus, SensorError, CNT_MASK

# Register map, data sheet Table 19
_DEVID = const(0x00)  # device ID
_DEVID_ADXL345 = const(0xE5)  # "Register 0x00 - DEVID": fixed 0xE5 (octal 345)
_BW_RATE = const(0x2C)  # D4 LOW_POWER, D3..D0 rate code (Table 7)
_POWER_CTL = const(0x2D)  # D3 Measure: 0 = standby
_MEASURE = const(0x08)
_INT_ENABLE = const(0x2E)  # no interrupt pins: the node polls
_INT_SOURCE = const(0x30)  # D1 Watermark, D0 Overrun
_OVERRUN = const(0x01)  # stream mode: set when the FIFO is filled, cleared by reading it
_DATA_FORMAT = const(0x31)  # D6 SPI (0 = 4-wire), D3 FULL_RES, D2 justify (0 = right), D1..D0 range
_FULL_RES = const(0x08)
_DATAX0 = const(0x32)  # X0 X1 Y0 Y1 Z0 Z1: int16 little-endian, sign-extended (justify 0)
_FIFO_CTL = const(0x38)  # D7..D6 FIFO_MODE, D5 trigger pin, D4..D0 samples (watermark)
_FIFO_BYPASS = const(0x00)  # FIFO_MODE 00 (Table 22): also empties the FIFO
_FIFO_STREAM = const(0x80)  # FIFO_MODE 10: keeps the newest 32 samples
_FIFO_STATUS = const(0x39)  # D7 FIFO_TRIG, D5..D0 entries
_ENTRIES = const(0x3F)

_DEPTH = const(32)  # FIFO entries ("FIFO": 32 levels)
_RATE_TOP = const(3200)  # rate code 0xF = 3200 Hz; each code below halves it (Table 7)
_CODE_TOP = const(0x0F)
_CODE_LOW = const(0x08)  # 25 Hz: rates below are not whole Hz (0x7 = 12.5 Hz)
_POP_US = const(5)  # >= 5 us from the end of a data read to the next FIFO read ("FIFO")
_BURST = const(6)  # bytes per FIFO entry: X, Y, Z

# Sensitivity in full resolution: 256 LSB/g typical at every range (Table 1, "scale
# factor 3.9 mg/LSB"), i.e. exactly 2**-8 g per code: scale_m = 1, scale_e = -8.
_SCALE_E = const(-8)


def rates():
    """The output data rates this driver can configure, Hz, slowest first."""
    return tuple(_RATE_TOP >> (_CODE_TOP - c) for c in range(_CODE_LOW, _CODE_TOP + 1))


class ADXL345:
    """ADXL345 on ``i2c`` (+ ``addr``, 0x53 or 0x1D) or ``spi`` (+ ``cs`` output Pin).

    odr: Hz, one of rates(); range_g: 2, 4, 8 or 16; watermark: FIFO_CTL samples
    (1..31, the level at which INT_SOURCE.Watermark rises); axis: "x", "y" or "z".
    Bad settings raise SensorError here; no bus traffic before start().

    overruns counts overrun *events*: polls that found the FIFO full (INT_SOURCE.Overrun
    or 32 entries), after which at least one sample may have been replaced unread.
    errors counts bus errors (OSError) during read(); last_error holds the last errno.
    """

    live = True

    def __init__(self, i2c=None, addr=0x53, spi=None, cs=None, odr=100, range_g=2,
                 watermark=16, axis="z", label=None):
        code = _CODE_TOP
        while code >= _CODE_LOW and _RATE_TOP >> (_CODE_TOP - code) != odr:
            code -= 1
        if code < _CODE_LOW or type(odr) is not int:
            raise SensorError("adxl345: odr %r Hz not supported; choose one of %s"
                              % (odr, ", ".join(str(r) for r in rates())))
        fs = 0
        while fs < 4 and 2 << fs != range_g:
            fs += 1
        if fs == 4 or type(range_g) is not int:
            raise SensorError("adxl345: range %r g not supported; choose 2, 4, 8 or 16"
                              % (range_g,))
        if type(watermark) is not int or not 1 <= watermark < _DEPTH:
            raise SensorError("adxl345: watermark %r must be 1..31" % (watermark,))
        if axis not in ("x", "y", "z"):
            raise SensorError("adxl345: axis %r must be x, y or z" % (axis,))
        self._bus = RegBus("adxl345", i2c, addr, spi, cs, 0, label)
        self._spi = spi is not None
        self._rate_code = code
        self._fs = fs
        self._wm = watermark
        self._off = "xyz".find(axis) * 2
        self._b1 = bytearray(1)
        self._entry = bytearray(_BURST)
        self._running = False
        self.rate = odr
        self.scale_m = 1
        self.scale_e = _SCALE_E
        # full resolution: 10 bits at +-2 g up to 13 bits at +-16 g (Table 1)
        self.full_scale = (256 << fs) * 2 - 1
        self.overruns = 0
        self.errors = 0
        self.last_error = 0

    def start(self):
        """Check DEVID, configure, enter measurement. SensorError if the chip is not there."""
        bus = self._bus
        b = self._b1
        try:
            bus.read(_DEVID, b)
            if b[0] != _DEVID_ADXL345:
                raise SensorError("%s: chip id 0x%02x, expected 0x%02x"
                                  % (bus.name, b[0], _DEVID_ADXL345))
            bus.write(_POWER_CTL, 0)  # standby while configuring
            bus.write(_INT_ENABLE, 0)
            bus.write(_BW_RATE, self._rate_code)  # LOW_POWER = 0: full noise performance
            bus.write(_DATA_FORMAT, _FULL_RES | self._fs)
            bus.write(_FIFO_CTL, _FIFO_BYPASS)  # empty the FIFO
            bus.write(_FIFO_CTL, _FIFO_STREAM | self._wm)
            bus.write(_POWER_CTL, _MEASURE)
        except OSError as e:
            raise SensorError("%s: bus error at start: %s" % (bus.name, e))
        self._running = True

    def stop(self):
        """Back to standby, FIFO bypassed (emptied)."""
        self._running = False
        bus = self._bus
        try:
            bus.write(_POWER_CTL, 0)
            bus.write(_FIFO_CTL, _FIFO_BYPASS)
        except OSError as e:
            raise SensorError("%s: bus error at stop: %s" % (bus.name, e))

    def read(self, buf, pos, n):
        """Copy up to n FIFO samples of the axis into buf[pos:]; returns how many."""
        if n <= 0 or not self._running:
            return 0
        bus = self._bus
        b = self._b1
        e6 = self._entry
        o = self._off
        got = 0
        try:
            bus.read(_INT_SOURCE, b)
            ovr = b[0] & _OVERRUN
            bus.read(_FIFO_STATUS, b)
            k = b[0] & _ENTRIES
            if ovr or k >= _DEPTH:
                self.overruns = (self.overruns + 1) & CNT_MASK
            if k > n:
                k = n
            while got < k:
                bus.read(_DATAX0, e6)
                v = e6[o] | (e6[o + 1] << 8)
                if v & 0x8000:
                    v -= 0x10000
                buf[pos + got] = v
                got += 1
                if self._spi:
                    # an I2C start + address byte alone takes longer than this
                    time.sleep_us(_POP_US)
        except OSError as e:
            self.errors = (self.errors + 1) & CNT_MASK
            self.last_error = e.errno
        return got
