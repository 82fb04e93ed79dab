# An analog accelerometer (e.g. ADXL335, ADXL1002) on an ADC input, sampled by a
# hardware timer. The timer callback only reads the ADC into a preallocated ring; read()
# hands the ring's samples to the consumer. The common sensor interface is in board.py.
#
# The callback is an interrupt handler on most ports: it must not allocate (no floats,
# no big ints, no new objects, no bound-method lookups: the callback is bound once in
# the constructor). Its counters wrap below 2**30 so they stay small ints, and the ring
# indices run modulo 2*size (one writer: the callback; one reader: read()), so neither
# side needs a lock and a full ring is told apart from an empty one.
from micropython import const
from array import array
from drivers.bus import SensorError, CNT_MASK, dyadic

_MAX_RATE = const(20000)  # Hz: a MicroPython callback per sample costs tens of us
_ADC_SPAN = const(65536)  # read_u16() is 0..65535 whatever the converter's width


class ADCSensor:
    """Samples ``adc`` (has read_u16) at ``rate`` Hz from ``timer`` (a machine.Timer).

    zero: the read_u16() value at 0 g; code = read_u16() - zero, clamped to int16.
    mv_per_g, vref_mv: the sensor's sensitivity and the ADC's full-scale voltage, so
    value in g = code * vref_mv / (65536 * mv_per_g) ~= code * scale_m * 2**scale_e.
    tick_hz: the timer's resolution (1000 for the millisecond soft timers of the stm32
    port, 1000000 for microsecond ones): a rate that is not a whole number of ticks is
    refused, so ``rate`` is exactly what runs. size: ring samples, a power of two.

    overruns counts *samples* lost: timer ticks that found the ring full because the
    consumer was late. errors stays 0 (an ADC read cannot fail at run time).
    """

    live = True

    def __init__(self, adc, timer, rate, zero=32768, mv_per_g=300, vref_mv=3300,
                 tick_hz=1000000, size=256):
        if type(rate) is not int or not 1 <= rate <= _MAX_RATE:
            raise SensorError("adc: rate %r Hz must be 1..%d" % (rate, _MAX_RATE))
        if type(tick_hz) is not int or tick_hz < 1 or tick_hz % rate:
            raise SensorError("adc: %d Hz is not a whole number of timer ticks (%r Hz)"
                              % (rate, tick_hz))
        if type(zero) is not int or not 0 <= zero < _ADC_SPAN:
            raise SensorError("adc: zero %r must be 0..65535" % (zero,))
        for name, v in (("mv_per_g", mv_per_g), ("vref_mv", vref_mv)):
            if type(v) is not int or not 1 <= v <= 100000:
                raise SensorError("adc: %s %r must be 1..100000" % (name, v))
        if type(size) is not int or size < 16 or size > 8192 or size & (size - 1):
            raise SensorError("adc: ring size %r must be a power of two, 16..8192" % (size,))
        self._adc = adc
        self._timer = timer
        self._zero = zero
        self._ring = array("h", bytes(2 * size))
        self._size = size
        self._imask = size - 1
        self._wrap = 2 * size - 1
        self._head = 0  # written by the callback only
        self._tail = 0  # written by read() only
        self._lost = 0  # written by the callback only
        self._cb = self._tick  # bound once: fetching a bound method allocates
        self.rate = rate
        self.scale_m, self.scale_e = dyadic(vref_mv, mv_per_g)
        self.scale_e -= 16  # / 65536
        # the largest |code| that is not clipped on either side of zero
        fs = zero if zero < _ADC_SPAN - 1 - zero else _ADC_SPAN - 1 - zero
        self.full_scale = fs if fs < 32767 else 32767
        self.errors = 0
        self.last_error = 0

    @property
    def overruns(self):
        return self._lost

    def _tick(self, _t):
        # Interrupt context: record one sample, allocate nothing.
        h = self._head
        if (h - self._tail) & self._wrap >= self._size:
            self._lost = (self._lost + 1) & CNT_MASK
            return
        v = self._adc.read_u16() - self._zero
        if v > 32767:
            v = 32767
        elif v < -32768:
            v = -32768
        self._ring[h & self._imask] = v
        self._head = (h + 1) & self._wrap

    def start(self):
        t = self._timer
        self._tail = self._head
        t.init(mode=t.PERIODIC, freq=self.rate, callback=self._cb)

    def stop(self):
        self._timer.deinit()

    def read(self, buf, pos, n):
        """Copy up to n samples from the ring into buf[pos:]; returns how many."""
        t = self._tail
        k = (self._head - t) & self._wrap
        if k > n:
            k = n
        ring = self._ring
        m = self._imask
        for i in range(k):
            buf[pos + i] = ring[(t + i) & m]
        self._tail = (t + k) & self._wrap
        return k
