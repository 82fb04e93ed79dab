"""The node's board: read the board definition (board.json on the node's filesystem,
a copy of boards/NAME.json), check what the node relies on, and build sensor drivers
by name. Drivers are imported only when a board uses them.

The full schema is checked on the host (tools/boards.py, ``aiot board check``); here a
malformed file raises BoardError naming the field, and a driver refuses settings it
cannot run with SensorError (drivers/bus.py).

Common sensor interface (drivers/: adxl345.ADXL345, lis3dh.LIS3DH, adc.ADCSensor,
simsensor.ReplayAdapter):

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
              reports the increase with each window (dsp/sampler.py).
"""

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
        from drivers.simsensor import ReplayAdapter

        return ReplayAdapter(path, rt)
    import machine

    mcu = b["mcu"]
    pins = s["pins"]
    bus_id = s["bus_id"]
    if drv == "adc":
        from drivers.adc import ADCSensor

        p = machine.Pin(pins["adc"])
        if mcu == "esp32":
            adc = machine.ADC(p, atten=machine.ADC.ATTN_11DB)  # ~0..3.1 V input range
        else:
            adc = machine.ADC(p)
        tick = 1000 if mcu in _FIXED_PINS else 1000000  # ms soft timers on stm32
        return ADCSensor(
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
        from drivers.adxl345 import ADXL345

        return ADXL345(**kw)
    from drivers.lis3dh import LIS3DH

    return LIS3DH(**kw)
