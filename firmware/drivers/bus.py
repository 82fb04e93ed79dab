# Register access to a sensor chip over I2C or SPI, the sensor error type and the
# fixed-point scale helper shared by the drivers (adxl345, lis3dh, adc).
#
# Both accelerometers frame SPI the same way: the first byte is bit 7 = read, bit 6 =
# address auto-increment (ADXL345 "MB", LIS3DH "MS"), bits 5..0 = register; then data
# bytes while CS stays low (ADXL345 datasheet Rev. G, "SPI", figs. 37-39; LIS3DH
# datasheet DocID17530 Rev 2, section 6.2). Both use SPI mode 3 (CPOL = 1, CPHA = 1).
# Over I2C the ADXL345 always auto-increments; the LIS3DH only when bit 7 of the
# sub-address is set (LIS3DH section 6.1.1): the driver passes that bit in `i2c_inc`.
from micropython import const

_SPI_READ = const(0x80)  # command byte bit 7: read
_SPI_INC = const(0x40)  # command byte bit 6: auto-increment (MB / MS)
_REG_MASK = const(0x3F)  # command byte bits 5..0: register address
CNT_MASK = const(0x3FFFFFFF)  # counters wrap at 2**30: always small ints on 32-bit ports


class SensorError(Exception):
    """A sensor is missing, answers wrongly, or was asked for something it cannot do."""


class RegBus:
    """Register reads/writes on one chip, over I2C (``i2c``, ``addr``) or SPI (``spi``,
    ``cs`` an output Pin). ``name`` says which chip and bus in error messages.

    Reads go into the caller's buffer (``readfrom_mem_into`` / ``readinto``); nothing is
    allocated per transfer. OSError from the bus propagates: the driver decides.
    """

    def __init__(self, chip, i2c=None, addr=0, spi=None, cs=None, i2c_inc=0, label=None):
        if (i2c is None) == (spi is None):
            raise SensorError("%s: give exactly one of i2c or spi" % chip)
        if spi is not None and cs is None:
            raise SensorError("%s: SPI needs a chip-select pin" % chip)
        self._i2c = i2c
        self._addr = addr
        self._spi = spi
        self._cs = cs
        self._i2c_inc = i2c_inc
        self._cmd = bytearray(1)
        self._wr = bytearray(2)
        self._one = memoryview(self._wr)[1:]  # the value byte alone, for I2C writes
        if label is None:
            label = ("i2c 0x%02x" % addr) if i2c is not None else "spi"
        self.name = "%s (%s)" % (chip, label)
        if cs is not None:
            cs(1)  # deselected until a transfer

    def read(self, reg, buf):
        """Read len(buf) bytes starting at ``reg`` (auto-increment) into ``buf``."""
        if self._i2c is not None:
            if len(buf) > 1:
                reg |= self._i2c_inc
            self._i2c.readfrom_mem_into(self._addr, reg, buf)
            return
        c = self._cmd
        c[0] = _SPI_READ | (_SPI_INC if len(buf) > 1 else 0) | (reg & _REG_MASK)
        cs = self._cs
        cs(0)
        try:
            self._spi.write(c)
            self._spi.readinto(buf, 0)
        finally:
            cs(1)

    def write(self, reg, value):
        """Write one register."""
        w = self._wr
        if self._i2c is not None:
            w[1] = value
            self._i2c.writeto_mem(self._addr, reg, self._one)
            return
        w[0] = reg & _REG_MASK
        w[1] = value
        cs = self._cs
        cs(0)
        try:
            self._spi.write(w)
        finally:
            cs(1)


def dyadic(num, den):
    """num/den (> 0) as (m, e) with m * 2**e ~= num/den and 2**14 <= m < 2**15.

    m is rounded to nearest, so the relative error is below 2**-15; |code * m| stays
    below 2**30 for any int16 code, a small int on 32-bit ports. Called at start-up only
    (the intermediate may be a long int there).
    """
    if num <= 0 or den <= 0:
        raise SensorError("scale %d/%d must be positive" % (num, den))
    e = 0
    while num >= den << 15:
        den <<= 1
        e += 1
    while num < den << 14:
        num <<= 1
        e -= 1
    m = (2 * num + den) // (2 * den)
    if m == 1 << 15:  # rounded up past the range
        m >>= 1
        e += 1
    return m, e
