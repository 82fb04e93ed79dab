"""Board definitions: the shipped boards validate and agree with their hardware, every kind
of mistake gets an error naming the file and the field, and the schema's chip limits
agree with the firmware drivers (asked under MicroPython)."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
from pathlib import Path

import pytest
from aiotkit.boards import paths
from aiotkit.tools import boards
from aiotkit.tools.boards import BoardError, check_main, load_board

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("esp32-devkitc", "nucleo-h743zi", "rpi-pico-w", "unix-sim")
# mpy-cross -march per board family (MicroPython's py/persistentcode.h and port
# Makefiles: ESP32 xtensawin, RP2040 armv6m, STM32H743 built with fpv5-d16 = armv7emdp)
MARCH = {"esp32-devkitc": "xtensawin", "rpi-pico-w": "armv6m",
         "nucleo-h743zi": "armv7emdp", "unix-sim": None}
FLASH = {"esp32-devkitc": 4 << 20, "rpi-pico-w": 2 << 20, "nucleo-h743zi": 2 << 20}
NETWORK = {"esp32-devkitc": "wifi", "rpi-pico-w": "wifi", "nucleo-h743zi": "ethernet",
           "unix-sim": "host"}


def raw(name: str) -> dict:
    return json.loads((REPO / "boards" / f"{name}.json").read_text())


def test_the_shipped_boards_are_the_four_of_the_issue():
    assert tuple(boards.shipped_boards()) == SHIPPED
    assert paths.boards_dir().resolve() == (REPO / "boards").resolve()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_board_validates_and_matches_its_hardware(name):
    b = load_board(name)
    assert b["name"] == name
    assert b["march"] == MARCH[name]
    assert b["network"] == NETWORK[name]
    if name in FLASH:
        assert b["flash"]["size"] == FLASH[name]
    # independent of the validator: regions lie inside the flash and do not overlap
    spans = sorted((r["offset"], r["offset"] + r["size"]) for r in b["flash"]["regions"].values())
    assert spans[-1][1] <= b["flash"]["size"]
    assert all(a1 <= b0 for (_, a1), (b0, _) in itertools.pairwise(spans))
    assert {"slot_a", "slot_b", "data_log", "config"} <= set(b["flash"]["regions"])


def test_unix_sim_is_a_448k_replay_board():
    # 448K: the x64 unix port keeps the code (about 180 KB) in the heap (tests/firmware/
    # mp_test_node_memory.py holds the node's data to 48K, 74K with the models); at 256K
    # a node with both models and the flash log had 24 KB free at its first Register in
    # pieces of at most 1.6 KB, and the 1152-byte UDP receive failed; at 320K through the
    # boot selector (firmware/boot.py) some heap sizes left no block for the log buffer
    b = load_board("unix-sim")
    assert b["heap"] == 448 * 1024
    assert [s["driver"] for s in b["sensors"]] == ["replay"]
    assert min(load_board(n)["heap"] for n in SHIPPED) == 64 * 1024


def test_load_by_path_and_by_name_agree(tmp_path):
    p = tmp_path / "rpi-pico-w.json"
    p.write_text((REPO / "boards" / "rpi-pico-w.json").read_text())
    assert load_board(str(p)) == load_board("rpi-pico-w")


def test_check_main_prints_ok_per_board(capsys):
    assert check_main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [f"OK boards/{n}.json" for n in SHIPPED]


def _set(d: dict, path: str, value) -> None:
    parts = path.replace("[", ".").replace("]", "").split(".")
    keys = [int(k) if k.isdigit() else k for k in parts]
    for k in keys[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()

# (board, [(path, value), ...], field named in the error, words in the problem)
BAD = [
    ("esp32-devkitc", [("sensors[0].bus", "uart")], "sensors[0].bus",
     "must be one of i2c, spi, adc, replay"),
    ("esp32-devkitc", [("sensors[0].driver", "mpu6050")], "sensors[0].driver", "adxl345"),
    ("esp32-devkitc", [("heap", _DELETE)], "heap", "missing"),
    ("esp32-devkitc", [("colour", "red")], "colour", "unknown field"),
    ("esp32-devkitc", [("heap", True)], "heap", "must be an integer"),
    ("esp32-devkitc", [("heap", 65536.0)], "heap", "must be an integer"),
    ("esp32-devkitc", [("heap", 1 << 20)], "heap", "RAM"),
    ("esp32-devkitc", [("schema", 2)], "schema", "must be one of 1"),
    ("esp32-devkitc", [("march", "xtensa")], "march", "xtensawin"),
    ("nucleo-h743zi", [("march", "armv7m")], "march", "armv7emdp"),
    ("rpi-pico-w", [("march", None)], "march", "armv6m"),
    ("unix-sim", [("march", "x64")], "march", "null"),
    ("esp32-devkitc", [("network", "ethernet")], "network", "wifi"),
    ("esp32-devkitc", [("network", "host")], "network", "host mcu only"),
    ("esp32-devkitc", [("mcu", "esp8266")], "mcu", "must be one of"),
    ("esp32-devkitc", [("name", "esp32-other")], "name", "does not match the file name"),
    ("esp32-devkitc", [("flash.size", 8 << 20)], "flash.size", "4194304"),
    ("nucleo-h743zi", [("flash.erase", 4096)], "flash.erase", "131072"),
    ("esp32-devkitc", [("flash.regions.slot_b.offset", 65536 + 4096)],
     "flash.regions.slot_b", "overlaps slot_a"),
    ("rpi-pico-w", [("flash.regions.config.size", 2 * 65536)], "flash.regions.config",
     "past the flash size"),
    ("nucleo-h743zi", [("flash.regions.slot_a.offset", 0x21000)],
     "flash.regions.slot_a.offset", "multiple of the erase block"),
    ("rpi-pico-w", [("flash.regions.slot_b.size", 131072)], "flash.regions.slot_b.size",
     "must equal slot_a.size"),
    ("unix-sim", [("flash.regions.data_log", _DELETE)], "flash.regions.data_log", "missing"),
    ("unix-sim", [("flash.regions.swap", {"offset": 0, "size": 4096})],
     "flash.regions.swap", "unknown region"),
    ("unix-sim", [("flash.regions.slot_a.size", "512K")], "flash.regions.slot_a.size",
     "must be an integer"),
    ("unix-sim", [("flash.slot_content", "both")], "flash.slot_content", "image, app"),
    ("esp32-devkitc", [("sensors[0].pins.cs", 6)], "sensors[0].pins.cs", "reserved_pins"),
    ("esp32-devkitc", [("sensors[0].pins.sck", 20)], "sensors[0].pins.sck",
     "not a pin of the esp32"),
    ("esp32-devkitc", [("sensors[0].pins.mosi", 35)], "sensors[0].pins.mosi", "input only"),
    ("esp32-devkitc", [("sensors[0].pins.cs", "5")], "sensors[0].pins.cs",
     "not a pin of the esp32"),
    ("esp32-devkitc", [("sensors[0].pins.clk", 18)], "sensors[0].pins.clk", "unknown role"),
    ("esp32-devkitc", [("sensors[0].pins.miso", _DELETE)], "sensors[0].pins.miso", "missing"),
    ("esp32-devkitc", [("sensors[0].bus_id", 0)], "sensors[0].bus_id", "spi 1, 2"),
    ("esp32-devkitc", [("sensors[1].pins.adc", 25), ("sensors[1].bus_id", 2)],
     "sensors[1].bus_id", "Wi-Fi"),
    ("esp32-devkitc", [("sensors[1].pins.adc", 25)], "sensors[1].pins.adc",
     "not an input of ADC unit 1"),
    ("esp32-devkitc", [("sensors[1].pins.adc", 19)], "sensors[1].pins.adc",
     "not an input of ADC unit 1"),
    ("esp32-devkitc", [("sensors[1].settings.timer", 4)], "sensors[1].settings.timer",
     "0, 1, 2, 3"),
    ("rpi-pico-w", [("sensors[0].pins.sda", 5), ("sensors[0].pins.scl", 4)],
     "sensors[0].pins.scl", "cannot be i2c0 SCL"),
    ("rpi-pico-w", [("sensors[0].pins.sda", 6), ("sensors[0].pins.scl", 7)],
     "sensors[0].pins.scl", "cannot be i2c0 SCL"),
    ("rpi-pico-w", [("sensors[1].pins.adc", 22)], "sensors[1].pins.adc",
     "not an input of ADC unit 0"),
    ("rpi-pico-w", [("sensors[1].pins.adc", 29)], "sensors[1].pins.adc", "reserved_pins"),
    ("rpi-pico-w", [("sensors[1].settings.odr", 3)], "sensors[1].settings.odr",
     "whole number of the timer's ticks"),
    ("rpi-pico-w", [("sensors[1].settings.timer", 0)], "sensors[1].settings.timer",
     "must be one of -1"),
    ("rpi-pico-w", [("sensors[1].settings.buffer", 100)], "sensors[1].settings.buffer",
     "power of two"),
    ("rpi-pico-w", [("sensors[0].address", 0x53)], "sensors[0].address", "0x18"),
    ("rpi-pico-w", [("sensors[0].address", _DELETE)], "sensors[0].address",
     "missing (needed on i2c)"),
    ("rpi-pico-w", [("sensors[0].freq", 1_000_000)], "sensors[0].freq", "up to 400000"),
    ("rpi-pico-w", [("sensors[0].settings.odr", 5376)], "sensors[0].settings.odr",
     "needs mode lp"),
    ("rpi-pico-w", [("sensors[0].settings.odr", 5376), ("sensors[0].settings.mode", "lp")],
     "sensors[0].settings.odr", "use SPI"),
    ("rpi-pico-w", [("sensors[0].settings.odr", 1344), ("sensors[0].settings.mode", "lp")],
     "sensors[0].settings.odr", "not available in mode lp"),
    ("rpi-pico-w", [("sensors[0].settings.odr", 1000)], "sensors[0].settings.odr",
     "must be one of 1, 10, 25"),
    ("rpi-pico-w", [("sensors[0].settings.watermark", 32)], "sensors[0].settings.watermark",
     "at most 31"),
    ("rpi-pico-w", [("sensors[0].settings.range", 3)], "sensors[0].settings.range",
     "2, 4, 8, 16"),
    ("rpi-pico-w", [("sensors[0].settings.axis", "w")], "sensors[0].settings.axis", "x, y, z"),
    ("rpi-pico-w", [("sensors[0].settings.gain", 2)], "sensors[0].settings.gain",
     "unknown field"),
    ("rpi-pico-w", [("sensors[0].settings.odr", _DELETE)], "sensors[0].settings.odr",
     "missing"),
    ("rpi-pico-w", [("sensors[1].name", "accel")], "sensors[1].name", "used by another"),
    ("nucleo-h743zi", [("sensors[1].pins.scl", "B6")], "sensors[1].pins.scl", "'B8'"),
    ("nucleo-h743zi", [("sensors[0].bus_id", 1)], "sensors[0].bus_id", "spi 3"),
    ("nucleo-h743zi", [("sensors[0].pins.cs", "A7")], "sensors[0].pins.cs", "reserved_pins"),
    ("nucleo-h743zi", [("sensors[0].pins.cs", "Z9")], "sensors[0].pins.cs", "not a pin"),
    ("nucleo-h743zi", [("sensors[0].pins.cs", 14)], "sensors[0].pins.cs", "not a pin"),
    ("nucleo-h743zi", [("sensors[0].freq", 20_000_000)], "sensors[0].freq",
     "up to 10000000"),
    ("nucleo-h743zi", [("sensors[1].settings.odr", 3200)], "sensors[1].settings.odr",
     "needs SPI"),
    ("nucleo-h743zi", [("sensors[1].freq", 100_000)], "sensors[1].settings.odr",
     "400000 Hz or more"),
    ("nucleo-h743zi", [("sensors[1].address", 0x1D), ("sensors[1].settings.odr", 6400)],
     "sensors[1].settings.odr", "3200"),
    ("esp32-devkitc", [("sensors[0].freq", 1_000_000)], "sensors[0].settings.odr",
     "2000000 Hz or more"),
    ("esp32-devkitc", [("sensors[0].address", 0x53)], "sensors[0].address", "not used on spi"),
    ("esp32-devkitc", [("sensors", [])], "sensors", "at least one"),
    ("esp32-devkitc", [("reserved_pins", [1, 1])], "reserved_pins[1]", "twice"),
    ("esp32-devkitc", [("reserved_pins", [40])], "reserved_pins[0]", "not a pin"),
    ("unix-sim", [("sensors[0].driver", "adxl345"), ("sensors[0].bus", "i2c")],
     "sensors[0].bus", "no hardware buses"),
    ("unix-sim", [("sensors[0].bus", "i2c")], "sensors[0].bus", "works on replay"),
    ("unix-sim", [("sensors[0].settings.file", _DELETE)], "sensors[0].settings.file",
     "missing"),
    ("unix-sim", [("sensors[0].settings.realtime", "yes")], "sensors[0].settings.realtime",
     "true or false"),
]


@pytest.mark.parametrize("board, edits, fieldname, words", BAD,
                         ids=[f"{b}-{f}-{w[:20]}" for b, _, f, w in BAD])
def test_bad_board_error_names_file_and_field(tmp_path, board, edits, fieldname, words):
    d = copy.deepcopy(raw(board))
    for path, value in edits:
        _set(d, path, value)
    p = tmp_path / f"{board}.json"
    p.write_text(json.dumps(d))
    with pytest.raises(BoardError) as ei:
        load_board(str(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {fieldname}: "), msg
    assert words in msg, msg
    assert "\n" not in msg


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@pytest.mark.parametrize("name", SHIPPED)
def test_any_damaged_field_is_a_board_error_never_a_crash(name):
    """Every field replaced by every JSON type (or deleted): BoardError or valid."""
    base = raw(name)
    tried = 0
    for path in list(_paths(base))[1:]:
        for bad in (None, True, -1, 0, "x", [], {}, 1.5, [1], _DELETE):
            d = copy.deepcopy(base)
            node = d
            for k in path[:-1]:
                node = node[k]
            if bad is _DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = bad
            try:
                boards.validate(d, "t.json", name)
            except BoardError as e:
                assert str(e).startswith("t.json: ")
            tried += 1
    assert tried > 100


def test_two_sensors_on_one_bus_share_lines_but_not_cs_or_address(tmp_path):
    d = raw("esp32-devkitc")
    second = copy.deepcopy(d["sensors"][0])
    second["name"] = "accel_b"
    second["pins"]["cs"] = 4
    d["sensors"].append(second)
    p = tmp_path / "esp32-devkitc.json"
    p.write_text(json.dumps(d))
    load_board(str(p))  # SCK/MOSI/MISO shared on SPI 2: fine
    second["pins"]["cs"] = 5
    p.write_text(json.dumps(d))
    with pytest.raises(BoardError, match=r"sensors\[2\]\.pins\.cs: 5 is already accel's"):
        load_board(str(p))
    second["pins"]["cs"] = 34  # the ADC sensor's pin, and input only
    p.write_text(json.dumps(d))
    with pytest.raises(BoardError, match=r"sensors\[2\]\.pins\.cs: 34 is input only"):
        load_board(str(p))
    d = raw("nucleo-h743zi")
    twin = copy.deepcopy(d["sensors"][1])
    twin["name"] = "twin"
    d["sensors"].append(twin)
    p = tmp_path / "nucleo-h743zi.json"
    p.write_text(json.dumps(d))
    with pytest.raises(BoardError, match=r"sensors\[2\]\.address: also used by accel2"):
        load_board(str(p))


@pytest.mark.parametrize("text, words", [
    ("{", "not valid JSON"),
    ("[]", "(top level): must be an object"),
    ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
    (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
])
def test_unreadable_files(tmp_path, text, words):
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(BoardError) as ei:
        load_board(str(p))
    assert str(ei.value).startswith(f"{p}: ") and words in str(ei.value)


def test_unknown_board_name_lists_the_shipped_ones():
    with pytest.raises(BoardError) as ei:
        load_board("esp8266")
    assert str(ei.value) == ("boards/esp8266.json: no such board file (shipped boards: "
                             + ", ".join(SHIPPED) + ")")
    with pytest.raises(BoardError, match="not a board name"):
        load_board("Bad Name!")


def test_check_main_reports_each_bad_board_and_exits_2(tmp_path, capsys):
    d = raw("rpi-pico-w")
    d["sensors"][0]["bus"] = "uart"
    bad = tmp_path / "rpi-pico-w.json"
    bad.write_text(json.dumps(d))
    assert check_main(["unix-sim", str(bad), "nope"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("OK boards/unix-sim.json: host march=null heap=458752")
    assert err.splitlines() == [
        f"{bad}: sensors[0].bus: must be one of i2c, spi, adc, replay",
        "boards/nope.json: no such board file (shipped boards: " + ", ".join(SHIPPED) + ")",
    ]


def test_check_main_help(capsys):
    assert check_main(["--help"]) == 0
    assert "aiot board check" in capsys.readouterr().out


def test_schema_tables_agree_with_the_firmware_drivers():
    """The ODR lists the validator allows are exactly what the drivers accept."""
    mp = paths.find_micropython()
    if mp is None:
        pytest.skip("MicroPython unix port not installed")
    code = ("from drivers import adxl345, lis3dh\n"
            "print(list(adxl345.rates()))\n"
            "print(list(lis3dh.rates('hr')))\n"
            "print(list(lis3dh.rates('lp')))\n")
    r = subprocess.run([mp, "-c", code], capture_output=True, text=True, timeout=30,
                       env={"MICROPYPATH": str(REPO / "firmware")}, check=False)
    assert r.returncode == 0, r.stderr
    adxl, hr, lp = (json.loads(line) for line in r.stdout.splitlines())
    assert tuple(adxl) == boards.DRIVERS["adxl345"].odr
    assert set(hr) | set(lp) == set(boards.DRIVERS["lis3dh"].odr)
    assert set(lp) - set(hr) == set(boards.LIS3DH_LP_ONLY)
    assert set(hr) - set(lp) == set(boards.LIS3DH_NOT_LP)


def test_every_field_in_the_tables_is_documented_in_the_readme():
    readme = (REPO / "boards" / "README.md").read_text()
    tables = [boards.BOARD, boards.FLASH, boards.REGION, boards.SENSOR, *boards.SETTINGS.values()]
    for table in tables:
        for key, f in table.items():
            assert f"`{key}`" in readme, key
            assert f.doc, key
    for region in boards.REGIONS_REQUIRED + boards.REGIONS_OPTIONAL:
        assert f"`{region}`" in readme
