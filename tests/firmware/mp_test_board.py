# The node side of the board definitions (firmware/board.py): every shipped hardware
# board builds its sensors on a fake `machine` with the buses, pins and clocks its JSON
# names, and the samples arrive; malformed board files and settings a driver cannot run
# raise typed errors naming the field; the unix-sim replay sensor gets the common
# interface, paced in real time without sleeping.
HEAPSIZE = "128K"  # compiling the fakes takes more than the node needs

import json
import struct
from array import array

import fakebus
import board
from drivers import simsensor
from drivers.bus import SensorError

_HERE = __file__.rsplit("/", 1)[0]
BOARDS = _HERE + "/../../boards/"


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def read_board(name):
    with open(BOARDS + name + ".json") as f:
        return json.load(f)


def reset_world():
    for d in (fakebus.I2C_BUSES, fakebus.SPI_BUSES, fakebus.PINS, fakebus.ADC_INPUTS,
              fakebus.TIMERS, fakebus.PIN_LISTENERS):
        d.clear()
    fakebus.CREATED.clear()
    fakebus.install()


def adc_in(i):
    return (i * 40503 + 99) & 0xFFFF


def wire(b):
    """Put a fake chip wherever the board's JSON says its sensors are."""
    chips = {}
    for s in b["sensors"]:
        drv = s["driver"]
        if drv == "adc":
            fakebus.ADC_INPUTS[s["pins"]["adc"]] = adc_in
            continue
        chip = (fakebus.FakeADXL345 if drv == "adxl345" else fakebus.FakeLIS3DH)(fakebus.ramp)
        chips[s["name"]] = chip
        if s["bus"] == "i2c":
            bus = fakebus.I2C_BUSES.setdefault(s["bus_id"], fakebus.FakeI2C())
            bus.devices[s["address"]] = chip
        else:
            bus = fakebus.SPI_BUSES.setdefault(s["bus_id"], fakebus.FakeSPI())
            bus.attach(s["pins"]["cs"], chip)
    return chips


def pin_ids(kw, roles):
    return {r: kw[r].id for r in roles if r in kw}


def check_hardware_board(name):
    reset_world()
    b = read_board(name)
    board.check(b, name)
    chips = wire(b)
    fixed = b["mcu"] == "stm32h743"  # hardware I2C/SPI pins come from the firmware build
    for s in b["sensors"]:
        sen = board.open_sensor(b, s["name"])
        st = s["settings"]
        expect_eq(sen.rate, st["odr"], s["name"] + " rate")
        kind, bus_id, kw = fakebus.CREATED[-1] if s["bus"] != "adc" else fakebus.CREATED[-2]
        sen.start()
        buf = array("h", [0] * 40)
        if s["driver"] == "adc":
            t = fakebus.TIMERS[st.get("timer", -1)]
            expect_eq((t.freq, t.mode), (st["odr"], fakebus.FakeTimer.PERIODIC), "timer")
            t.fire(12)
            got = sen.read(buf, 0, 40)
            expect_eq(got, 12, "adc samples")
            zero = st.get("zero", 32768)
            expect_eq(list(buf[:12]), [adc_in(i) - zero for i in range(12)], "adc codes")
            continue
        expect_eq((kind, bus_id), (s["bus"].upper(), s["bus_id"]), "bus constructed")
        if s["bus"] == "i2c":
            expect_eq(kw.get("freq"), s["freq"], "i2c freq")
            want = {} if fixed else {"scl": s["pins"]["scl"], "sda": s["pins"]["sda"]}
            expect_eq(pin_ids(kw, ("scl", "sda")), want, "i2c pins")
        else:
            expect_eq((kw.get("baudrate"), kw.get("polarity"), kw.get("phase")),
                      (s["freq"], 1, 1), "spi mode 3")
            want = {} if fixed else {r: s["pins"][r] for r in ("sck", "mosi", "miso")}
            expect_eq(pin_ids(kw, ("sck", "mosi", "miso")), want, "spi pins")
        chip = chips[s["name"]]
        chip.produce(20)
        got = sen.read(buf, 3, 40 - 3)
        a = "xyz".index(st.get("axis", "z"))
        expect_eq(got, 20, "samples")
        expect_eq(list(buf[3:23]), [fakebus.ramp(i, a) for i in range(20)], name + " samples")


def test_esp32_devkitc_sensors_build_and_deliver():
    check_hardware_board("esp32-devkitc")


def test_rpi_pico_w_sensors_build_and_deliver():
    check_hardware_board("rpi-pico-w")


def test_nucleo_h743zi_sensors_build_and_deliver():
    check_hardware_board("nucleo-h743zi")


def test_esp32_adc_uses_11db_attenuation_and_microsecond_timer_rates():
    reset_world()
    b = read_board("esp32-devkitc")
    wire(b)
    board.open_sensor(b, "analog")
    adc = [c for c in fakebus.CREATED if c[0] == "ADC"][-1]
    expect_eq(adc[2].get("atten"), fakebus.FakeADC.ATTN_11DB, "attenuation")
    b["sensors"][1]["settings"]["odr"] = 4000  # 250 us: fine with microsecond ticks
    board.open_sensor(b, "analog")
    b["mcu"] = "stm32h743"  # millisecond soft timer: 4000 Hz is not a whole period
    try:
        board.open_sensor(b, "analog")
    except SensorError as e:
        if "tick" not in str(e):
            raise
    else:
        raise AssertionError("4000 Hz accepted on a millisecond timer")


def test_wrong_chip_on_the_board_names_the_bus():
    reset_world()
    b = read_board("rpi-pico-w")
    chips = wire(b)
    chips["accel"].regs[0x0F] = 0x44
    sen = board.open_sensor(b)  # the first sensor by default
    try:
        sen.start()
    except SensorError as e:
        for w in ("lis3dh", "i2c0 0x18", "0x44"):
            if w not in str(e):
                raise AssertionError(str(e))
        return
    raise AssertionError("started with the wrong chip")


def test_settings_the_driver_cannot_run_are_refused():
    reset_world()
    b = read_board("nucleo-h743zi")
    wire(b)
    b["sensors"][1]["settings"]["odr"] = 6400
    try:
        board.open_sensor(b, "accel2")
    except SensorError as e:
        if "odr" not in str(e) or "3200" not in str(e):
            raise AssertionError(str(e))
        return
    raise AssertionError("6400 Hz accepted")


def expect_board_error(fn, *words):
    try:
        fn()
    except board.BoardError as e:
        for w in words:
            if w not in str(e):
                raise AssertionError("%r does not mention %r" % (str(e), w))
        return
    raise AssertionError("no BoardError")


def write_board(d, path="board.json"):
    with open(path, "w") as f:
        f.write(d if isinstance(d, str) else json.dumps(d))


def test_load_reads_board_json_and_reports_bad_fields():
    good = read_board("unix-sim")
    write_board(good)
    expect_eq(board.load()["name"], "unix-sim", "loaded")
    expect_board_error(lambda: board.load("missing.json"), "missing.json", "cannot read")
    write_board("{not json")
    expect_board_error(board.load, "board.json", "not valid JSON")
    cases = [
        (lambda d: d["sensors"][0].__setitem__("driver", "mpu6050"),
         "board.json: sensors[0].driver: must be one of adxl345, lis3dh, adc, replay"),
        (lambda d: d["sensors"][0].__setitem__("bus", "i2c"),
         "board.json: sensors[0].bus: must be replay for driver replay"),
        (lambda d: d.__setitem__("sensors", []), "board.json: sensors: must list"),
        (lambda d: d.pop("mcu"), "board.json: mcu: missing"),
        (lambda d: d.__setitem__("name", 7), "board.json: name: must be str"),
        (lambda d: d["sensors"][0].__setitem__("settings", []),
         "board.json: sensors[0].settings: must be dict"),
    ]
    for edit, want in cases:
        d = read_board("unix-sim")
        edit(d)
        write_board(d)
        expect_board_error(board.load, want)
    d = read_board("rpi-pico-w")
    del d["sensors"][0]["address"]
    write_board(d)
    expect_board_error(board.load, "board.json: sensors[0].address: missing")
    d = read_board("esp32-devkitc")
    del d["sensors"][0]["pins"]["cs"]
    write_board(d)
    expect_board_error(board.load, "board.json: sensors[0].pins.cs: must be a pin")
    write_board("[1, 2]")
    expect_board_error(board.load, "must be an object")
    expect_board_error(lambda: board.open_sensor(good, "gyro"), "no sensor 'gyro'")


def code(i):
    return ((i * 7919 + 123) % 65536) - 32768


def write_signal(path, n, rate=12000, exp=-13):
    with open(path, "wb") as f:
        f.write(b"AI16" + struct.pack("<BBHIb", 1, 1, 16, rate, exp) + b"\0\0\0")
        for i in range(n):
            f.write(struct.pack("<h", code(i)))


def test_unix_sim_replay_has_the_common_interface():
    write_signal("rec.i16", 700, rate=48000, exp=-14)
    b = read_board("unix-sim")
    s = board.open_sensor(b, signal="rec.i16", realtime=False)
    expect_eq((s.rate, s.scale_m, s.scale_e, s.full_scale, s.live), (48000, 1, -14, 32767, False),
              "interface")
    s.start()
    buf = array("h", [0] * 600)
    total = 0
    for pos, n in ((10, 300), (0, 1), (5, 595), (0, 600), (100, 0)):
        expect_eq(s.read(buf, pos, n), n, "as many as asked")
        for j in range(n):
            if buf[pos + j] != code((total + j) % 700):
                raise AssertionError("sample %d" % (total + j))
        total += n
    expect_eq((s.overruns, s.errors), (0, 0), "counters")
    try:
        board.open_sensor(b, signal="nope.i16")
    except SensorError as e:
        if "cannot open" not in str(e):
            raise
    else:
        raise AssertionError("opened a missing file")


class Clock:
    def __init__(self):
        self.t = 1000

    def ticks_ms(self):
        return self.t


def test_realtime_replay_delivers_what_is_due_and_never_sleeps():
    write_signal("rec.i16", 5000, rate=3000)
    c = Clock()  # no sleep_ms: a sleep would raise AttributeError
    s = simsensor.ReplayAdapter("rec.i16", realtime=True, clock=c)
    expect_eq(s.live, True, "live")
    s.start()
    buf = array("h", bytes(8000))
    expect_eq(s.read(buf, 0, 100), 0, "nothing due yet")
    c.t += 10
    expect_eq(s.read(buf, 0, 100), 30, "30 samples in 10 ms at 3 kHz")
    c.t += 1
    expect_eq(s.read(buf, 0, 2), 2, "3 due, 2 asked")
    expect_eq(s.read(buf, 0, 100), 1, "the third")
    for _ in range(3):  # 1/3 ms remainders carry
        c.t += 1
    expect_eq(s.read(buf, 0, 100), 9, "9 in 3 ms")
    c.t += 1500  # a stall longer than the 1 s backlog: the excess is counted
    expect_eq(s.read(buf, 0, 4000), 3000, "1 s of backlog")
    expect_eq(s.overruns, 1500, "samples lost beyond the backlog")
    for j in range(3000):
        if buf[j] != code(42 + j):
            raise AssertionError("sample after the stall %d" % j)


def test_node_config_naming_a_hardware_board_opens_that_boards_sensor():
    # the node's config used to refuse every board but unix-sim ("only unix-sim")
    from storage import config

    reset_world()
    b = read_board("esp32-devkitc")
    chips = wire(b)
    with open("board.json", "w") as f:
        json.dump(b, f)  # what aiot firmware deploy --board esp32-devkitc copies
    cfg = config.check({"endpoint": "pump-1", "gateway": "coap://10.0.0.2",
                        "board": "esp32-devkitc", "wifi": {"ssid": "plant-3"}})
    sen = config.open_sensor(cfg)
    expect_eq(sen.rate, b["sensors"][0]["settings"]["odr"], "rate of the first sensor")
    sen.start()
    chips[b["sensors"][0]["name"]].produce(8)
    buf = array("h", [0] * 8)
    expect_eq(sen.read(buf, 0, 8), 8, "samples from the board's accelerometer")
    for cfg, word in (({"board": "rpi-pico-w"}, "board.json is esp32-devkitc's"),
                      ({"board": "unix-sim"}, "'signal'")):
        try:
            config.check(dict({"endpoint": "p", "gateway": "coap://h"}, **cfg))
        except config.ConfigError as e:
            if word not in str(e):
                raise AssertionError(str(e))
            continue
        raise AssertionError("accepted %r" % cfg)
    import os

    os.remove("board.json")
    try:
        config.check({"endpoint": "p", "gateway": "coap://h", "board": "esp32-devkitc",
                      "wifi": {"ssid": "plant-3"}})
    except config.ConfigError as e:
        if "cannot read" not in str(e) or "aiot firmware deploy --board" not in str(e):
            raise AssertionError(str(e))
    else:
        raise AssertionError("a hardware board without board.json accepted")
