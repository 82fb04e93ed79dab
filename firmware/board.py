"""The node's board: read the board definition (board.json on the node's filesystem,
a copy of boards/NAME.json), check what the node relies on, and build sensor drivers
by name. Drivers are imported only when a board uses them.

The full schema is checked on the host (tools/boards.py, ``aiot board check``); here a
malformed file raises BoardError naming the field, and a driver refuses settings it
cannot run with SensorError (sensorbus.py).

Common sensor interface (adxl345.ADXL345, lis3dh.LIS3DH, adcsensor.ADCSensor,
board.ReplayAdapter):

  rate        int, Hz: the output data rate actually configured
  scale_m, scale_e
              ints: value in g = code * scale_m * 2**scale_e (the data sheet's nominal
              sensitivity as an integer times a power of two; each driver documents
              its approximation). |code * scale_m| < 2**30.
  full_scale  the largest |code| the sensor produces in its configured mode (positive
              full scale; a sample with |code| >= full_scale is counted as saturated
              by the sampler)
  live        True if samples arrive on the sensor's clock and are lost when not read
              in time; False if the source waits for the reader (replay not in real
              time)
  start()     check the chip (ID register), configure it, start sampling; raises
              SensorError (wrong ID, bus error, nothing answering)
  stop()      stop sampling
  read(buf, pos, n) -> int
              non-blocking: copy up to n new samples (int16 codes of the configured
              axis, oldest first) into the array('h') ``buf`` from index ``pos``;
              returns how many. Allocates nothing. Never raises for a bus error: it
              counts it in ``errors``, keeps its errno in ``last_error`` and returns
              the samples it had copied before the error.
  overruns    cumulative (modulo 2**30) count of data lost before read() got it.
              Unit per driver: FIFO accelerometers count overrun events (a poll found
              the FIFO full), the ADC and the real-time replay count lost samples.
  errors      cumulative (modulo 2**30) bus errors seen by read(); the sampler
              reports the increase with each window (sampler.py).
"""
from micropython import const
import micropython
import time
from sensorbus import SensorError, CNT_MASK

_CHUNK = const(256)  # replay: samples per file read
_BACKLOG_MS = const(1000)  # real-time replay: samples kept this long for a late reader
_DRIVERS = ("adxl345", "lis3dh", "adc", "replay")
_DRIVER_BUS = (("i2c", "spi"), ("i2c", "spi"), ("adc",), ("replay",))
_FIXED_PINS = ("stm32h743",)  # hardware I2C/SPI pins are set by the firmware build


class BoardError(ValueError):
    """The board definition is missing, not JSON, or has a bad field (named in the text)."""


def load(path="board.json"):
    """Read and check the board definition at ``path``; returns the dict."""
    import json

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise BoardError("%s: cannot read" % path)
    try:
        b = json.loads(text)
    except ValueError:
        raise BoardError("%s: not valid JSON" % path)
    check(b, path)
    return b


def _fail(where, field, msg):
    raise BoardError("%s: %s: %s" % (where, field, msg))


def _get(where, d, field, key, kind, required=True):
    v = d.get(key)
    if v is None:
        if required:
            _fail(where, field + key, "missing")
        return None
    if type(v) is not kind:
        _fail(where, field + key, "must be %s" % kind.__name__)
    return v


def check(b, where="board.json"):
    """The checks the node needs: raises BoardError('<where>: <field>: <problem>')."""
    if type(b) is not dict:
        _fail(where, "(top level)", "must be an object")
    _get(where, b, "", "name", str)
    _get(where, b, "", "mcu", str)
    sensors = _get(where, b, "", "sensors", list)
    if not sensors:
        _fail(where, "sensors", "must list at least one sensor")
    for i, s in enumerate(sensors):
        f = "sensors[%d]." % i
        if type(s) is not dict:
            _fail(where, f[:-1], "must be an object")
        _get(where, s, f, "name", str)
        drv = _get(where, s, f, "driver", str)
        if drv not in _DRIVERS:
            _fail(where, f + "driver", "must be one of " + ", ".join(_DRIVERS))
        bus = _get(where, s, f, "bus", str)
        buses = _DRIVER_BUS[_DRIVERS.index(drv)]
        if bus not in buses:
            _fail(where, f + "bus", "must be %s for driver %s" % (" or ".join(buses), drv))
        _get(where, s, f, "settings", dict, False)
        if bus in ("i2c", "spi", "adc"):
            _get(where, s, f, "bus_id", int)
            pins = _get(where, s, f, "pins", dict)
            roles = ("scl", "sda") if bus == "i2c" else ("adc",) if bus == "adc" else (
                "sck", "mosi", "miso", "cs")
            for r in roles:
                p = pins.get(r)
                if type(p) is not int and type(p) is not str:
                    _fail(where, f + "pins." + r, "must be a pin number or name")
        if bus in ("i2c", "spi"):
            _get(where, s, f, "freq", int)
        if bus == "i2c":
            _get(where, s, f, "address", int)


def _find(b, name):
    for s in b["sensors"]:
        if name is None or s["name"] == name:
            return s
    raise BoardError("board %s has no sensor %r" % (b["name"], name))


def open_sensor(b, name=None, signal=None, realtime=None):
    """The driver for sensor ``name`` (default: the first) of board ``b``, not started.

    signal / realtime override a replay sensor's file and pacing (the node config's
    'signal' and 'realtime'). Raises BoardError or SensorError.
    """
    s = _find(b, name)
    drv = s["driver"]
    cfg = s.get("settings") or {}
    if drv == "replay":
        path = signal if signal is not None else cfg.get("file")
        if not isinstance(path, str):
            raise BoardError("sensor %s: no replay file" % s["name"])
        rt = realtime if realtime is not None else cfg.get("realtime", False)
        return ReplayAdapter(path, rt)
    import machine

    mcu = b["mcu"]
    pins = s["pins"]
    bus_id = s["bus_id"]
    if drv == "adc":
        import adcsensor

        p = machine.Pin(pins["adc"])
        if mcu == "esp32":
            adc = machine.ADC(p, atten=machine.ADC.ATTN_11DB)  # ~0..3.1 V input range
        else:
            adc = machine.ADC(p)
        tick = 1000 if mcu in _FIXED_PINS else 1000000  # ms soft timers on stm32
        return adcsensor.ADCSensor(
            adc, machine.Timer(cfg.get("timer", -1)), cfg.get("odr"),
            zero=cfg.get("zero", 32768), mv_per_g=cfg.get("mv_per_g", 300),
            vref_mv=cfg.get("vref_mv", 3300), tick_hz=tick, size=cfg.get("buffer", 256))
    kw = {"odr": cfg.get("odr"), "range_g": cfg.get("range", 2),
          "watermark": cfg.get("watermark", 16), "axis": cfg.get("axis", "z")}
    if drv == "lis3dh":
        kw["mode"] = cfg.get("mode")
    fixed = mcu in _FIXED_PINS
    if s["bus"] == "i2c":
        addr = s["address"]
        if fixed:
            i2c = machine.I2C(bus_id, freq=s["freq"])
        else:
            i2c = machine.I2C(bus_id, scl=machine.Pin(pins["scl"]),
                              sda=machine.Pin(pins["sda"]), freq=s["freq"])
        kw["i2c"] = i2c
        kw["addr"] = addr
        kw["label"] = "i2c%d 0x%02x" % (bus_id, addr)
    else:
        # both chips: SPI mode 3 (CPOL 1, CPHA 1), MSB first
        if fixed:
            spi = machine.SPI(bus_id, baudrate=s["freq"], polarity=1, phase=1)
        else:
            spi = machine.SPI(bus_id, baudrate=s["freq"], polarity=1, phase=1,
                              sck=machine.Pin(pins["sck"]), mosi=machine.Pin(pins["mosi"]),
                              miso=machine.Pin(pins["miso"]))
        kw["spi"] = spi
        kw["cs"] = machine.Pin(pins["cs"], machine.Pin.OUT, value=1)
        kw["label"] = "spi%d cs %s" % (bus_id, pins["cs"])
    if drv == "adxl345":
        import adxl345

        return adxl345.ADXL345(**kw)
    import lis3dh

    return lis3dh.LIS3DH(**kw)


@micropython.viper
def _copy16(dst: ptr16, pos: int, src: ptr16, n: int):
    for i in range(n):
        dst[pos + i] = src[i]


class ReplayAdapter:
    """The unix-sim sensor: replay.ReplaySensor behind the common interface.

    realtime=False: as fast as the reader takes samples (live = False: the sampler never
    drops). realtime=True: samples become due at the file's rate on ``clock``
    (ticks_ms); read() returns only what is due and never sleeps. Like a sensor FIFO,
    up to 1 s of due samples wait for a late reader; beyond that they are counted in
    ``overruns`` (samples) and the replay resumes where it was.
    """

    def __init__(self, path, realtime=False, clock=None):
        import replay
        from array import array

        try:
            s = replay.ReplaySensor(path, False)  # never let it sleep: pacing is here
        except replay.ReplayError as e:
            raise SensorError("replay: %s" % e)
        self._s = s
        self._err = (replay.ReplayError, OSError)
        self._clock = clock if clock is not None else time
        self._chunk = array("h", bytes(2 * _CHUNK))
        self._fpos = 0  # sample index in the file (chunks never cross its end)
        self.live = bool(realtime)
        self.rate = s.rate
        self.scale_m = 1
        self.scale_e = s.scale_exp  # the file's code * 2**E is the value in g
        self.full_scale = 32767
        self.overruns = 0
        self.errors = 0
        self.last_error = 0
        self._last = 0
        self._acc = 0
        self._due = 0

    def start(self):
        self._last = self._clock.ticks_ms()
        self._acc = 0
        self._due = 0

    def stop(self):
        pass

    def close(self):
        self._s.close()

    def _pace(self):
        now = self._clock.ticks_ms()
        d = time.ticks_diff(now, self._last)
        self._last = now
        if d <= 0:
            return
        rate = self.rate
        if d > _BACKLOG_MS:
            late = d - _BACKLOG_MS
            lost = (late // 1000) * rate + (late % 1000) * rate // 1000
            self.overruns = (self.overruns + lost) & CNT_MASK
            d = _BACKLOG_MS
        self._acc += d * rate  # <= 1000 * 1e6 < 2**30
        q = self._acc // 1000
        self._acc -= q * 1000
        due = self._due + q
        if due > rate:  # more than the 1 s backlog
            self.overruns = (self.overruns + due - rate) & CNT_MASK
            due = rate
        self._due = due

    def read(self, buf, pos, n):
        if n <= 0:
            return 0
        k = n
        if self.live:
            self._pace()
            if k > self._due:
                k = self._due
        s = self._s
        chunk = self._chunk
        length = s.length
        got = 0
        try:
            while got < k:
                c = k - got
                if c > _CHUNK:
                    c = _CHUNK
                left = length - self._fpos
                if c > left:
                    c = left
                s.read_into(chunk, c)
                _copy16(buf, pos + got, chunk, c)
                got += c
                self._fpos += c
                if self._fpos == length:
                    self._fpos = 0
        except self._err as e:
            self.errors = (self.errors + 1) & CNT_MASK
            self.last_error = e.errno if isinstance(e, OSError) else 0
        if self.live:
            self._due -= got
        return got
