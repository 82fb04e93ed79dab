# LIS3DH 3-axis accelerometer (ST, data sheet DocID17530 Rev 2; FIFO: application note
# AN3308) over I2C or SPI.
#
# One axis is delivered. The 32-level FIFO runs in stream mode; read() drains it with
# multi-byte reads from OUT_X_L: in FIFO modes the read address rolls back from 0x2D
# to 0x28 and every 6 bytes pop one level (AN3308, "Retrieving data from FIFO"), so k
# levels come in one 6*k-byte burst. Bursts use preallocated views of 32/16/8/4/2/1
# levels, at most six transfers per read. The common sensor interface is in board.py.
from micropython import const
from drivers.bus import RegBus, SensorError, CNT_MASK, dyadic

# Register map, data sheet section 7 (Table 17) and section 8
_WHO_AM_I = const(0x0F)
_WHO_AM_I_LIS3DH = const(0x33)
_CTRL_REG1 = const(0x20)  # ODR3..0 (7..4), LPen (3), Zen Yen Xen (2..0)
_LPEN = const(0x08)
_XYZ = const(0x07)  # all three axes on: a FIFO level always holds X, Y, Z
_CTRL_REG2 = const(0x21)  # high-pass filter: 0 = bypassed (gravity stays in the data)
_CTRL_REG3 = const(0x22)  # INT1 sources: 0 = none, the node polls
_CTRL_REG4 = const(0x23)  # BDU (7), BLE (6), FS1..0 (5..4), HR (3), ST (2..1), SIM (0)
_BDU = const(0x80)  # L and H bytes of one sample never come from different samples
_HR = const(0x08)
_CTRL_REG5 = const(0x24)  # BOOT (7), FIFO_EN (6)
_FIFO_EN = const(0x40)
_OUT_X_L = const(0x28)  # X L/H, Y L/H, Z L/H: int16 little-endian, left-justified
_FIFO_CTRL_REG = const(0x2E)  # FM1..0 (7..6), TR (5), FTH4..0 (4..0)
_FM_BYPASS = const(0x00)  # bypass also resets the FIFO (AN3308)
_FM_STREAM = const(0x80)  # FM = 10: the newest 32 levels are kept
_FIFO_SRC_REG = const(0x2F)  # WTM (7), OVRN_FIFO (6), EMPTY (5), FSS4..0 (4..0)
_OVRN = const(0x40)  # set while the FIFO holds 32 unread levels; the next sample overwrites
_FSS = const(0x1F)
_I2C_INC = const(0x80)  # I2C: sub-address MSB = 1 auto-increments (section 6.1.1)

_DEPTH = const(32)
_LEVEL = const(6)  # bytes per FIFO level

# CTRL_REG1 ODR codes (data rate configuration table): code 9 is 1344 Hz in HR/normal
# and 5376 Hz in low-power mode; code 8 (1600 Hz) is low-power only.
_ODRS = ((1, 1), (10, 2), (25, 3), (50, 4), (100, 5), (200, 6), (400, 7))
_MODES = ("hr", "normal", "lp")
_BITS = (12, 10, 8)  # output resolution per mode (section 3.2.1, operating modes table)
# Sensitivity, mg/digit of the right-aligned code, per mode and full scale +-2/4/8/16 g
# (Table 4, "So"). value in g = code * mg / 1000 ~= code * scale_m * 2**scale_e, with
# (scale_m, scale_e) = bus.dyadic(mg, 1000): 2**14 <= scale_m < 2**15, rounded to
# nearest (relative error < 2**-15). E.g. 1 mg -> 16777 * 2**-24 = 0.99999 mg.
_MG = ((1, 2, 4, 12), (4, 8, 16, 48), (16, 32, 64, 192))


def rates(mode="hr"):
    """Output data rates (Hz) available in ``mode``, slowest first."""
    r = [hz for hz, _ in _ODRS]
    if mode == "lp":
        r += [1600, 5376]
    else:
        r.append(1344)
    return tuple(r)


class LIS3DH:
    """LIS3DH on ``i2c`` (+ ``addr``, 0x18 or 0x19) or ``spi`` (+ ``cs`` output Pin).

    odr: Hz; range_g: 2, 4, 8, 16; watermark: FTH (1..31); axis "x", "y", "z";
    mode: "hr" (12-bit), "normal" (10-bit), "lp" (8-bit) or None = "hr", or "lp" when
    the rate needs it (1600, 5376 Hz). Bad settings raise SensorError here.

    Codes are the right-aligned mode resolution (12-bit: -2048..2047). overruns counts
    overrun *events* (polls that found FIFO_SRC_REG.OVRN_FIFO set: 32 unread levels,
    the next sample overwrites the oldest). errors / last_error: bus errors in read().
    """

    live = True

    def __init__(self, i2c=None, addr=0x18, spi=None, cs=None, odr=100, range_g=2,
                 watermark=16, axis="z", mode=None, label=None):
        if mode is None:
            mode = "lp" if odr in (1600, 5376) else "hr"
        if mode not in _MODES:
            raise SensorError("lis3dh: mode %r must be hr, normal or lp" % (mode,))
        m = _MODES.index(mode)
        code = 0
        for hz, c in _ODRS:
            if hz == odr:
                code = c
        if odr == 1344 and m != 2 or odr == 5376 and m == 2:
            code = 9
        elif odr == 1600 and m == 2:
            code = 8
        if code == 0 or type(odr) is not int:
            raise SensorError("lis3dh: odr %r Hz not supported in %s mode; choose one of %s"
                              % (odr, mode, ", ".join(str(r) for r in rates(mode))))
        fs = 0
        while fs < 4 and 2 << fs != range_g:
            fs += 1
        if fs == 4 or type(range_g) is not int:
            raise SensorError("lis3dh: range %r g not supported; choose 2, 4, 8 or 16"
                              % (range_g,))
        if type(watermark) is not int or not 1 <= watermark < _DEPTH:
            raise SensorError("lis3dh: watermark %r must be 1..31" % (watermark,))
        if axis not in ("x", "y", "z"):
            raise SensorError("lis3dh: axis %r must be x, y or z" % (axis,))
        self._bus = RegBus("lis3dh", i2c, addr, spi, cs, _I2C_INC, label)
        self._reg1 = code << 4 | (_LPEN if m == 2 else 0) | _XYZ
        self._reg4 = _BDU | fs << 4 | (_HR if m == 0 else 0)
        self._wm = watermark
        self._off = "xyz".find(axis) * 2
        self._shift = 16 - _BITS[m]
        self._b1 = bytearray(1)
        fifo = memoryview(bytearray(_DEPTH * _LEVEL))
        self._views = (fifo, fifo[: 16 * _LEVEL], fifo[: 8 * _LEVEL], fifo[: 4 * _LEVEL],
                       fifo[: 2 * _LEVEL], fifo[:_LEVEL])
        self._fifo = fifo
        self._running = False
        self.mode = mode
        self.rate = odr
        self.scale_m, self.scale_e = dyadic(_MG[m][fs], 1000)
        self.full_scale = (1 << (_BITS[m] - 1)) - 1
        self.overruns = 0
        self.errors = 0
        self.last_error = 0

    def start(self):
        """Check WHO_AM_I, configure, start sampling. SensorError if the chip is not there."""
        bus = self._bus
        b = self._b1
        try:
            bus.read(_WHO_AM_I, b)
            if b[0] != _WHO_AM_I_LIS3DH:
                raise SensorError("%s: chip id 0x%02x, expected 0x%02x"
                                  % (bus.name, b[0], _WHO_AM_I_LIS3DH))
            bus.write(_CTRL_REG1, 0)  # power-down while configuring
            bus.write(_CTRL_REG2, 0)
            bus.write(_CTRL_REG3, 0)
            bus.write(_CTRL_REG4, self._reg4)
            bus.write(_CTRL_REG5, _FIFO_EN)
            bus.write(_FIFO_CTRL_REG, _FM_BYPASS)  # empty the FIFO
            bus.write(_FIFO_CTRL_REG, _FM_STREAM | self._wm)
            bus.write(_CTRL_REG1, self._reg1)
        except OSError as e:
            raise SensorError("%s: bus error at start: %s" % (bus.name, e))
        self._running = True

    def stop(self):
        """Power-down, FIFO bypassed (emptied)."""
        self._running = False
        bus = self._bus
        try:
            bus.write(_CTRL_REG1, 0)
            bus.write(_FIFO_CTRL_REG, _FM_BYPASS)
        except OSError as e:
            raise SensorError("%s: bus error at stop: %s" % (bus.name, e))

    def read(self, buf, pos, n):
        """Copy up to n FIFO samples of the axis into buf[pos:]; returns how many."""
        if n <= 0 or not self._running:
            return 0
        bus = self._bus
        b = self._b1
        fb = self._fifo
        views = self._views
        o = self._off
        sh = self._shift
        got = 0
        try:
            bus.read(_FIFO_SRC_REG, b)
            src = b[0]
            k = src & _FSS
            if src & _OVRN:
                k = _DEPTH  # FSS saturates at 31 with 32 unread levels (AN3308)
                self.overruns = (self.overruns + 1) & CNT_MASK
            if k > n:
                k = n
            c = _DEPTH
            j = 0
            while got < k:
                while k - got < c:
                    c >>= 1
                    j += 1
                bus.read(_OUT_X_L, views[j])
                q = o
                p = pos + got
                for _ in range(c):
                    v = fb[q] | (fb[q + 1] << 8)
                    if v & 0x8000:
                        v -= 0x10000
                    buf[p] = v >> sh
                    p += 1
                    q += _LEVEL
                got += c
        except OSError as e:
            self.errors = (self.errors + 1) & CNT_MASK
            self.last_error = e.errno
        return got
