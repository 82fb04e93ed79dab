"""Board definitions (``boards/NAME.json``): loader and schema validator.

The schema is the tables below: ``BOARD``, ``FLASH``, ``REGION``, ``SENSOR`` and
``SETTINGS`` give every field's type, whether it is required, and its allowed values or
range; ``MCUS`` holds what each microcontroller really has (mpy-cross ``-march``, flash
erase size, RAM, pins, which pins can do what, bus and timer ids); ``DRIVERS`` holds the
sensor chips' limits from their data sheets. Cross-field rules (regions that overlap or
leave the flash, pins a board cannot use, an output data rate the bus cannot carry) are
checked after the fields. boards/README.md documents the schema for people.

A bad file raises :class:`BoardError` whose one-line message names the file and the
field: ``boards/x.json: sensors[0].bus: must be one of i2c, spi, adc, replay``.
The node checks much less (firmware/board.py); run ``aiot board check`` before deploying.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aiotkit.boards import paths
from aiotkit.boards.errors import UsageError

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")
_SENSOR_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")


class BoardError(UsageError, ValueError):
    """A board definition that cannot be used; the message names the file and field."""

    def __init__(self, where: str, fieldname: str, problem: str):
        super().__init__(f"{where}: {fieldname}: {problem}" if fieldname else f"{where}: {problem}")
        self.where = where
        self.field = fieldname
        self.problem = problem


# --- field tables -------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One JSON field: its type(s), whether it must be there, and what values it takes."""

    kind: tuple[type, ...]
    required: bool = True
    choices: tuple[Any, ...] | None = None
    lo: int | None = None
    hi: int | None = None
    pattern: re.Pattern[str] | None = None
    doc: str = ""


def _f(kind: type | tuple[type, ...], doc: str = "", **kw: Any) -> Field:
    return Field(kind if isinstance(kind, tuple) else (kind,), doc=doc, **kw)


BOARD: dict[str, Field] = {
    "schema": _f(int, "schema version of this file", choices=(SCHEMA_VERSION,)),
    "name": _f(str, "board name, equal to the file name without .json", pattern=_NAME_RE),
    "description": _f(str, "what the board is", required=False),
    "mcu": _f(str, "microcontroller family (a key of MCUS)"),
    "march": _f((str, type(None)), "mpy-cross -march for native code; null = bytecode only"),
    "micropython_board": _f(str, "the MicroPython firmware build (port board name)"),
    "heap": _f(int, "heap budget of the node application, bytes", lo=16384, hi=8 << 20),
    "network": _f(str, "how the node reaches the gateway", choices=("wifi", "ethernet", "host")),
    "flash": _f(dict, "flash layout"),
    "reserved_pins": _f(list, "pins the board itself uses (flash, radio, USB, LEDs...)",
                        required=False),
    "sensors": _f(list, "the sensors, first = the node's default"),
}

FLASH: dict[str, Field] = {
    "size": _f(int, "flash size, bytes", lo=1 << 16, hi=1 << 26),
    "erase": _f(int, "erase block, bytes (must equal the chip's)", lo=256, hi=1 << 20),
    "slot_content": _f(str, "what an A/B slot holds: a whole board image, or the app "
                       "bundle (.mpy + manifest) next to a fixed firmware",
                       choices=("image", "app")),
    "regions": _f(dict, "named regions, each {offset, size}"),
}
REGIONS_REQUIRED = ("slot_a", "slot_b", "data_log", "config")
REGIONS_OPTIONAL = ("boot",)  # bootloader / fixed firmware / partition table
REGION: dict[str, Field] = {
    "offset": _f(int, "bytes from the start of flash", lo=0, hi=1 << 26),
    "size": _f(int, "bytes", lo=1, hi=1 << 26),
}

BUSES = ("i2c", "spi", "adc", "replay")
SENSOR: dict[str, Field] = {
    "name": _f(str, "sensor name, unique on the board", pattern=_SENSOR_NAME_RE),
    "driver": _f(str, "firmware driver", choices=("adxl345", "lis3dh", "adc", "replay")),
    "bus": _f(str, "how it is connected", choices=BUSES),
    "bus_id": _f(int, "I2C/SPI bus number, or the ADC unit (i2c, spi, adc only)",
                 required=False, lo=-1, hi=16),
    "address": _f(int, "7-bit I2C address (i2c only)", required=False, lo=0x08, hi=0x77),
    "freq": _f(int, "bus clock, Hz (i2c, spi only)", required=False, lo=10_000, hi=80_000_000),
    "pins": _f(dict, "pin per role (i2c: scl sda; spi: sck mosi miso cs; adc: adc)",
               required=False),
    "settings": _f(dict, "driver settings (SETTINGS[driver])"),
}
BUS_PINS = {"i2c": ("scl", "sda"), "spi": ("sck", "mosi", "miso", "cs"), "adc": ("adc",)}
OUTPUT_ROLES = ("scl", "sda", "sck", "mosi", "cs")
BUS_FIELDS = {  # which optional sensor fields a bus needs
    "i2c": ("bus_id", "address", "freq", "pins"),
    "spi": ("bus_id", "freq", "pins"),
    "adc": ("bus_id", "pins"),
    "replay": (),
}

_AXIS = _f(str, "delivered axis", required=False, choices=("x", "y", "z"))
_RANGE = _f(int, "full scale, +-g", required=False, choices=(2, 4, 8, 16))
_WM = _f(int, "FIFO watermark, samples", required=False, lo=1, hi=31)


@dataclass(frozen=True)
class Driver:
    """A sensor chip's limits, from its data sheet."""

    buses: tuple[str, ...]
    odr: tuple[int, ...] = ()
    addresses: tuple[int, ...] = ()
    i2c_max_hz: int = 0
    spi_max_hz: int = 0


DRIVERS: dict[str, Driver] = {
    # ADXL345 data sheet Rev. G: Table 7 rates (25..3200 Hz whole-Hz codes), ALT ADDRESS
    # low 0x53 / high 0x1D, I2C up to 400 kHz, SPI up to 5 MHz
    "adxl345": Driver(("i2c", "spi"), (25, 50, 100, 200, 400, 800, 1600, 3200),
                      (0x53, 0x1D), 400_000, 5_000_000),
    # LIS3DH DocID17530 Rev 2: CTRL_REG1 rates; 1600 and 5376 Hz are low-power only,
    # 1344 Hz is HR/normal only; SA0 low 0x18 / high 0x19; I2C 400 kHz, SPI 10 MHz
    "lis3dh": Driver(("i2c", "spi"), (1, 10, 25, 50, 100, 200, 400, 1344, 1600, 5376),
                     (0x18, 0x19), 400_000, 10_000_000),
    "adc": Driver(("adc",)),
    "replay": Driver(("replay",)),
}
LIS3DH_LP_ONLY = (1600, 5376)
LIS3DH_NOT_LP = (1344,)

SETTINGS: dict[str, dict[str, Field]] = {
    "adxl345": {
        "odr": _f(int, "output data rate, Hz", choices=DRIVERS["adxl345"].odr),
        "range": _RANGE,
        "watermark": _WM,
        "axis": _AXIS,
    },
    "lis3dh": {
        "odr": _f(int, "output data rate, Hz", choices=DRIVERS["lis3dh"].odr),
        "range": _RANGE,
        "watermark": _WM,
        "axis": _AXIS,
        "mode": _f(str, "hr 12-bit, normal 10-bit, lp 8-bit (default: hr, or lp if the "
                   "rate needs it)", required=False, choices=("hr", "normal", "lp")),
    },
    "adc": {
        "odr": _f(int, "sample rate, Hz (a whole number of timer ticks)", lo=1, hi=20_000),
        "timer": _f(int, "machine.Timer id", required=False, lo=-1, hi=16),
        "zero": _f(int, "read_u16() value at 0 g", required=False, lo=0, hi=65535),
        "mv_per_g": _f(int, "sensor sensitivity, mV/g", required=False, lo=1, hi=100_000),
        "vref_mv": _f(int, "ADC full-scale voltage, mV", required=False, lo=1, hi=100_000),
        "buffer": _f(int, "interrupt ring, samples (power of two)", required=False,
                     lo=16, hi=8192),
    },
    "replay": {
        "file": _f(str, "replay signal file on the node (config 'signal' overrides)"),
        "realtime": _f(bool, "deliver at the file's rate (else as fast as taken)",
                       required=False),
    },
}


# --- what each microcontroller has --------------------------------------------------


def _stm32_pins() -> frozenset[str]:
    # STM32H743ZI (LQFP144): ports A..G complete, H0/H1 (oscillator)
    return frozenset([f"{p}{n}" for p in "ABCDEFG" for n in range(16)] + ["H0", "H1"])


@dataclass(frozen=True)
class MCU:
    march: str | None
    erase: int
    flash_max: int
    ram: int
    pins: frozenset[Any] = frozenset()
    input_only: frozenset[Any] = frozenset()
    adc_units: dict[int, frozenset[Any]] = field(default_factory=dict)
    adc_not_with_wifi: tuple[int, ...] = ()  # ADC units the radio takes over
    i2c_ids: tuple[int, ...] = ()
    spi_ids: tuple[int, ...] = ()
    timers: tuple[int, ...] = ()
    timer_tick_hz: int = 1_000_000
    # hardware buses whose pins are fixed by the firmware build: {(bus, id): {role: pin}}
    fixed_bus_pins: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    pin_kind: type = int
    function_check: str = ""  # name of an extra per-pin function check


_ESP32_GPIO = frozenset(list(range(20)) + [21, 22, 23, 25, 26, 27] + list(range(32, 40)))

MCUS: dict[str, MCU] = {
    # ESP32 (Xtensa LX6): mpy-cross xtensawin; 4 KB flash sectors; 520 KB SRAM; GPIO
    # matrix routes I2C/SPI to any output pin; GPIO34-39 are input only; ADC2 cannot be
    # used while Wi-Fi runs. MicroPython: I2C 0/1, SPI 1 (HSPI) / 2 (VSPI), Timer 0-3.
    "esp32": MCU(
        march="xtensawin", erase=4096, flash_max=16 << 20, ram=520 << 10,
        pins=_ESP32_GPIO, input_only=frozenset(range(34, 40)),
        adc_units={1: frozenset(range(32, 40)),
                   2: frozenset([0, 2, 4, 12, 13, 14, 15, 25, 26, 27])},
        adc_not_with_wifi=(2,), i2c_ids=(0, 1), spi_ids=(1, 2), timers=(0, 1, 2, 3),
        timer_tick_hz=1_000_000,
    ),
    # RP2040 (Cortex-M0+): armv6m; 4 KB sectors; 264 KB SRAM; GPIO0-29, each with fixed
    # I2C/SPI functions (data sheet 1.4.3); ADC inputs GPIO26-29; MicroPython's Timer is
    # a virtual microsecond timer (id -1).
    "rp2040": MCU(
        march="armv6m", erase=4096, flash_max=16 << 20, ram=264 << 10,
        pins=frozenset(range(30)), adc_units={0: frozenset([26, 27, 28, 29])},
        i2c_ids=(0, 1), spi_ids=(0, 1), timers=(-1,), timer_tick_hz=1_000_000,
        function_check="rp2040",
    ),
    # STM32H743 (Cortex-M7 with double-precision FPU, built with -mfpu=fpv5-d16, so
    # MicroPython's native arch is ARMV7EMDP: armv7emdp code runs, and uses the FPU);
    # 2 MB internal flash in 128 KB sectors; 1 MB RAM. machine.Timer is the millisecond
    # soft timer (id -1). Hardware I2C/SPI pins are fixed by the MicroPython board
    # definition (ports/stm32/boards/NUCLEO_H743ZI/mpconfigboard.h).
    "stm32h743": MCU(
        march="armv7emdp", erase=128 << 10, flash_max=2 << 20, ram=1 << 20,
        pins=_stm32_pins(),
        adc_units={u: frozenset([f"A{n}" for n in range(8)] + ["B0", "B1"]
                                + [f"C{n}" for n in range(6)]
                                + [f"F{n}" for n in range(3, 15)]) for u in (1, 2, 3)},
        i2c_ids=(1, 2, 4), spi_ids=(3,), timers=(-1,), timer_tick_hz=1000,
        fixed_bus_pins={("i2c", 1): {"scl": "B8", "sda": "B9"},
                        ("i2c", 2): {"scl": "F1", "sda": "F0"},
                        ("i2c", 4): {"scl": "F14", "sda": "F15"},
                        ("spi", 3): {"sck": "B3", "miso": "B4", "mosi": "B5"}},
        pin_kind=str,
    ),
    # The MicroPython unix port (unix-sim): no pins, replayed sensors only. Its native
    # code is x64, but simulated nodes run bytecode.
    "host": MCU(march=None, erase=4096, flash_max=64 << 20, ram=1 << 30),
}

# Facts about the boards shipped in boards/, from their makers' documentation: a file
# of that name must agree with them.
KNOWN_BOARDS: dict[str, dict[str, Any]] = {
    "esp32-devkitc": {"mcu": "esp32", "network": "wifi", "flash.size": 4 << 20},
    "rpi-pico-w": {"mcu": "rp2040", "network": "wifi", "flash.size": 2 << 20},
    "nucleo-h743zi": {"mcu": "stm32h743", "network": "ethernet", "flash.size": 2 << 20},
    "unix-sim": {"mcu": "host", "network": "host"},
}


def _rp2040_function(pin: int, bus: str, bus_id: int, role: str) -> bool:
    """RP2040 data sheet 1.4.3 (GPIO function table): the fixed I2C/SPI roles of a pin."""
    if bus == "i2c":
        return (pin >> 1) & 1 == bus_id and role == ("sda", "scl")[pin & 1]
    if bus == "spi":
        if role == "cs":
            return True  # chip select is a plain GPIO driven by the driver
        return (pin >> 3) & 1 == bus_id and role == ("miso", "cs", "sck", "mosi")[pin & 3]
    return True


# --- loading ------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def board_path(name_or_path: str | Path) -> tuple[Path, str]:
    """The file for a board name or path, and how to name it in messages."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith(".json"):
        return Path(text), text
    if not _NAME_RE.fullmatch(text):
        raise BoardError(text, "", "not a board name (letters, digits, -) or a .json file")
    return paths.boards_dir() / f"{text}.json", f"boards/{text}.json"


def shipped_boards() -> list[str]:
    return sorted(p.stem for p in paths.boards_dir().glob("*.json"))


def load_board(name_or_path: str | Path) -> dict[str, Any]:
    """Read and validate a board definition; returns the parsed dict or raises BoardError."""
    path, where = board_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(shipped_boards())
        raise BoardError(where, "", f"no such board file (shipped boards: {known})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BoardError(where, "", f"cannot read: {e}") from None
    try:
        data: dict[str, Any] = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise BoardError(where, "", f"not valid JSON: {e}") from None
    validate(data, where, path.stem)
    return data


# --- validation ---------------------------------------------------------------------


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, fieldname: str, problem: str) -> NoReturn:
        raise BoardError(self.where, fieldname, problem)

    def fields(self, obj: Any, table: dict[str, Field], prefix: str,
               allowed_extra: tuple[str, ...] = ()) -> None:
        """Types, required keys, unknown keys, choices and ranges of one object."""
        name = prefix.rstrip(".") or "(top level)"
        if not isinstance(obj, dict):
            self.fail(name, "must be an object")
        for key in obj:
            if key not in table and key not in allowed_extra:
                self.fail(prefix + key, f"unknown field (known: {', '.join(table)})")
        for key, f in table.items():
            if key not in obj:
                if f.required:
                    self.fail(prefix + key, "missing")
                continue
            self.value(obj[key], f, prefix + key)

    def value(self, v: Any, f: Field, name: str) -> None:
        # bool is an int in Python; JSON true is not a number
        ok = any(type(v) is k for k in f.kind)
        if not ok:
            kinds = " or ".join(_kind_name(k) for k in f.kind)
            self.fail(name, f"must be {kinds}, not {_kind_name(type(v))}")
        if f.choices is not None and v not in f.choices:
            self.fail(name, "must be one of " + ", ".join(str(c) for c in f.choices))
        if f.lo is not None and type(v) is int and v < f.lo:
            self.fail(name, f"must be at least {f.lo}")
        if f.hi is not None and type(v) is int and v > f.hi:
            self.fail(name, f"must be at most {f.hi}")
        if f.pattern is not None and isinstance(v, str) and not f.pattern.fullmatch(v):
            self.fail(name, f"must match {f.pattern.pattern}")


def _kind_name(k: type) -> str:
    return {int: "an integer", str: "a string", bool: "true or false", dict: "an object",
            list: "a list", type(None): "null", float: "a number"}.get(k, k.__name__)


def validate(data: Any, where: str = "board", stem: str | None = None) -> None:
    """Validate a parsed board definition; raises BoardError naming the field."""
    c = _Checker(where)
    c.fields(data, BOARD, "")
    if stem is not None and data["name"] != stem:
        c.fail("name", f"{data['name']!r} does not match the file name {stem!r}")
    mcu = MCUS.get(data["mcu"])
    if mcu is None:
        c.fail("mcu", "must be one of " + ", ".join(MCUS))
    if data["march"] != mcu.march:
        c.fail("march", f"must be {json.dumps(mcu.march)} for mcu {data['mcu']}")
    if data["heap"] > mcu.ram // 2:
        c.fail("heap", f"{data['heap']} bytes is more than half the {data['mcu']}'s "
                       f"{mcu.ram} bytes of RAM")
    if (data["network"] == "host") != (data["mcu"] == "host"):
        c.fail("network", "'host' is the network of the host mcu only")
    _check_flash(c, data["flash"], mcu, data["mcu"])
    known = KNOWN_BOARDS.get(data["name"], {})
    for key, want in known.items():
        got = data["flash"]["size"] if key == "flash.size" else data[key]
        if got != want:
            c.fail(key, f"the {data['name']} has {want}, not {got}")
    reserved = _check_reserved(c, data.get("reserved_pins", []), mcu, data["mcu"])
    _check_sensors(c, data["sensors"], mcu, data, reserved)


def _check_flash(c: _Checker, fl: Any, mcu: MCU, mcu_name: str) -> None:
    c.fields(fl, FLASH, "flash.")
    size = fl["size"]
    if size > mcu.flash_max:
        c.fail("flash.size", f"{size} bytes is more than the {mcu_name} can address "
                             f"({mcu.flash_max})")
    if fl["erase"] != mcu.erase:
        c.fail("flash.erase", f"the {mcu_name} erases {mcu.erase}-byte blocks")
    if size % fl["erase"]:
        c.fail("flash.size", "must be a whole number of erase blocks")
    regions = fl["regions"]
    if not isinstance(regions, dict):
        c.fail("flash.regions", "must be an object")
    for name in REGIONS_REQUIRED:
        if name not in regions:
            c.fail(f"flash.regions.{name}", "missing")
    spans = []
    for name, r in regions.items():
        f = f"flash.regions.{name}"
        if name not in REGIONS_REQUIRED + REGIONS_OPTIONAL:
            c.fail(f, "unknown region (known: "
                      + ", ".join(REGIONS_REQUIRED + REGIONS_OPTIONAL) + ")")
        c.fields(r, REGION, f + ".")
        for key in ("offset", "size"):
            if r[key] % fl["erase"]:
                c.fail(f"{f}.{key}", f"must be a multiple of the erase block {fl['erase']}")
        if r["offset"] + r["size"] > size:
            c.fail(f, f"ends at {r['offset'] + r['size']:#x}, past the flash size {size:#x}")
        spans.append((r["offset"], r["offset"] + r["size"], name))
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in itertools.pairwise(spans):
        if b0 < a1:
            c.fail(f"flash.regions.{bn}", f"overlaps {an} ({a0:#x}..{a1:#x})")
    if regions["slot_a"]["size"] != regions["slot_b"]["size"]:
        c.fail("flash.regions.slot_b.size", "must equal slot_a.size (A/B slots swap)")


def _pin_ok(mcu: MCU, pin: Any) -> bool:
    return type(pin) is mcu.pin_kind and pin in mcu.pins


def _check_reserved(c: _Checker, pins: Any, mcu: MCU, mcu_name: str) -> set[Any]:
    if not isinstance(pins, list):
        c.fail("reserved_pins", "must be a list")
    seen: set[Any] = set()
    for i, p in enumerate(pins):
        if not _pin_ok(mcu, p):
            c.fail(f"reserved_pins[{i}]", f"{p!r} is not a pin of the {mcu_name}")
        if p in seen:
            c.fail(f"reserved_pins[{i}]", f"{p!r} listed twice")
        seen.add(p)
    return seen


def _check_sensors(c: _Checker, sensors: Any, mcu: MCU, board: dict[str, Any],
                   reserved: set[Any]) -> None:
    if not sensors:
        c.fail("sensors", "must list at least one sensor")
    names: set[str] = set()
    pin_use: dict[Any, tuple[str, int | None, str, str]] = {}  # pin -> bus, id, role, where
    i2c_addrs: dict[tuple[int, int], str] = {}
    for i, s in enumerate(sensors):
        p = f"sensors[{i}]."
        c.fields(s, SENSOR, p)
        if s["name"] in names:
            c.fail(p + "name", f"{s['name']!r} is used by another sensor")
        names.add(s["name"])
        drv = DRIVERS[s["driver"]]
        bus = s["bus"]
        if bus not in drv.buses:
            c.fail(p + "bus", f"driver {s['driver']} works on " + " or ".join(drv.buses))
        if board["mcu"] == "host" and bus != "replay":
            c.fail(p + "bus", "the host has no hardware buses: use replay")
        for key in ("bus_id", "address", "freq", "pins"):
            if key in BUS_FIELDS[bus] and key not in s:
                c.fail(p + key, f"missing (needed on {bus})")
            if key not in BUS_FIELDS[bus] and key in s:
                c.fail(p + key, f"not used on {bus}")
        _check_settings(c, s, p, mcu)
        if bus == "replay":
            continue
        bus_id = s["bus_id"]
        ids = {"i2c": mcu.i2c_ids, "spi": mcu.spi_ids, "adc": tuple(mcu.adc_units)}[bus]
        if bus_id not in ids:
            c.fail(p + "bus_id", f"the {board['mcu']} has {bus} " + ", ".join(map(str, ids)))
        if bus == "i2c":
            if s["address"] not in drv.addresses:
                c.fail(p + "address", f"the {s['driver']} answers at "
                                      + " or ".join(f"{a} (0x{a:02x})" for a in drv.addresses))
            at = (bus_id, s["address"])
            if at in i2c_addrs:
                c.fail(p + "address", f"also used by {i2c_addrs[at]} on i2c {bus_id}")
            i2c_addrs[at] = s["name"]
        if bus in ("i2c", "spi"):
            top = drv.i2c_max_hz if bus == "i2c" else drv.spi_max_hz
            if s["freq"] > top:
                c.fail(p + "freq", f"the {s['driver']} runs {bus} at up to {top} Hz")
            _check_throughput(c, s, p)
        _check_pins(c, s, p, mcu, board, reserved, pin_use)


def _check_settings(c: _Checker, s: dict[str, Any], p: str, mcu: MCU) -> None:
    st = s["settings"]
    c.fields(st, SETTINGS[s["driver"]], p + "settings.")
    if s["driver"] == "lis3dh":
        odr = st["odr"]
        mode = st.get("mode", "lp" if odr in LIS3DH_LP_ONLY else "hr")
        if odr in LIS3DH_LP_ONLY and mode != "lp":
            c.fail(p + "settings.odr", f"{odr} Hz needs mode lp")
        if odr in LIS3DH_NOT_LP and mode == "lp":
            c.fail(p + "settings.odr", f"{odr} Hz is not available in mode lp (5376 is)")
    if s["driver"] == "adc":
        odr = st["odr"]
        if mcu.timer_tick_hz % odr:
            c.fail(p + "settings.odr", f"{odr} Hz is not a whole number of the timer's "
                                       f"ticks ({mcu.timer_tick_hz} Hz)")
        t = st.get("timer", -1)
        if t not in mcu.timers:
            c.fail(p + "settings.timer", "must be one of " + ", ".join(map(str, mcu.timers)))
        b = st.get("buffer", 256)
        if b & (b - 1):
            c.fail(p + "settings.buffer", "must be a power of two")


def _check_throughput(c: _Checker, s: dict[str, Any], p: str) -> None:
    odr = s["settings"]["odr"]
    freq = s["freq"]
    if s["driver"] == "adxl345":
        # data sheet Table 7 notes: 3200/1600 Hz need SPI >= 2 MHz; 800 Hz needs >= 400 kHz
        # and lower rates scale with it (one FIFO entry per 6-byte transfer)
        need = 2_000_000 if odr >= 1600 else odr * 500
        if s["bus"] == "i2c" and odr >= 1600:
            c.fail(p + "settings.odr", f"{odr} Hz needs SPI at 2 MHz or more, not I2C")
        if freq < need:
            c.fail(p + "settings.odr", f"{odr} Hz needs a bus clock of {need} Hz or more")
    elif s["driver"] == "lis3dh" and s["bus"] == "i2c":
        # 6 bytes of 9 clocks per sample; keep the bus at most half busy
        need = odr * 6 * 9 * 2
        if freq < need:
            c.fail(p + "settings.odr", f"{odr} Hz over I2C needs a clock of {need} Hz "
                                       f"(the LIS3DH stops at 400000): use SPI")


def _check_pins(c: _Checker, s: dict[str, Any], p: str, mcu: MCU, board: dict[str, Any],
                reserved: set[Any], pin_use: dict[Any, tuple[str, int | None, str, str]]) -> None:
    bus = s["bus"]
    bus_id = s["bus_id"]
    pins = s["pins"]
    roles = BUS_PINS[bus]
    for role in pins:
        if role not in roles:
            c.fail(f"{p}pins.{role}", f"unknown role on {bus} (roles: {', '.join(roles)})")
    fixed = mcu.fixed_bus_pins.get((bus, bus_id), {})
    for role in roles:
        f = f"{p}pins.{role}"
        if role not in pins:
            c.fail(f, "missing")
        pin = pins[role]
        if not _pin_ok(mcu, pin):
            c.fail(f, f"{pin!r} is not a pin of the {board['mcu']}")
        if pin in reserved:
            c.fail(f, f"{pin!r} is used by the board itself (reserved_pins)")
        if role in OUTPUT_ROLES and pin in mcu.input_only:
            c.fail(f, f"{pin!r} is input only on the {board['mcu']}")
        if role in fixed and fixed[role] != pin:
            c.fail(f, f"{bus} {bus_id} of {board['micropython_board']} has {role} on "
                      f"{fixed[role]!r}")
        if (mcu.fixed_bus_pins and bus in ("i2c", "spi") and role != "cs"
                and (bus, bus_id) not in mcu.fixed_bus_pins):
            c.fail(p + "bus_id", f"{bus} {bus_id} has no pins in {board['micropython_board']}")
        if mcu.function_check == "rp2040" and not _rp2040_function(pin, bus, bus_id, role):
            c.fail(f, f"GPIO{pin} cannot be {bus}{bus_id} {role.upper()} on the rp2040")
        if bus == "adc":
            if pin not in mcu.adc_units.get(bus_id, ()):
                c.fail(f, f"{pin!r} is not an input of ADC unit {bus_id}")
            if bus_id in mcu.adc_not_with_wifi and board["network"] == "wifi":
                c.fail(p + "bus_id", f"ADC unit {bus_id} is not usable while Wi-Fi runs")
        use = (bus, bus_id, role, s["name"])
        prev = pin_use.get(pin)
        if prev is not None:
            shared = prev[:3] == use[:3] and bus in ("i2c", "spi") and role != "cs"
            if not shared:
                c.fail(f, f"{pin!r} is already {prev[3]}'s {prev[0]} {prev[2]}")
        pin_use[pin] = use


# --- aiot board check -----------------------------------------------------------------


def check_main(argv: list[str]) -> int:
    """``aiot board check [NAME|FILE ...]``: validate boards (default: all shipped).

    Prints ``OK <file> ...`` per good board on stdout and the error line per bad one on
    stderr; returns 0, or 2 if any board is bad.
    """
    if any(a in ("-h", "--help") for a in argv):
        print("usage: aiot board check [NAME|FILE ...]\n\n"
              "Validate board definitions (default: every board shipped in boards/).")
        return 0
    targets = list(argv) or shipped_boards()
    status = 0
    for t in targets:
        try:
            b = load_board(t)
        except BoardError as e:
            print(str(e), file=sys.stderr)
            status = 2
            continue
        where = board_path(t)[1]
        sensors = ", ".join(f"{s['name']}={s['driver']}/{s['bus']}" for s in b["sensors"])
        print(f"OK {where}: {b['mcu']} march={json.dumps(b['march'])} heap={b['heap']} "
              f"network={b['network']} sensors: {sensors}")
    return status


if __name__ == "__main__":
    sys.exit(check_main(sys.argv[1:]))
