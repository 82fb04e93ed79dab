# A hardware board's network before the node connects (firmware/netup.py), on a fake
# `network` module (the radio and the Ethernet PHY cannot exist here) and a fake clock:
# Wi-Fi joined with the config's SSID, a wrong password said and retried with a longer
# wait, Ethernet waited for; the config requires 'wifi' on a Wi-Fi board and never
# prints the password. Before, a node config naming a hardware board had no network.
# The firmware runs precompiled, as on the board: compiled from source, config.py and
# board.py fragment the ESP32's 64K heap and the check ran out of it on some paths.
FIRMWARE = "mpy"
import json

import netup
from storage import config

_HERE = __file__.rsplit("/", 1)[0]


class Clock:
    def __init__(self):
        self.now = 0
        self.slept = []

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now += ms
        self.slept.append(ms)


class FakeNic:
    def __init__(self, up_after, statuses=()):
        self.up_after = up_after  # isconnected() polls until up (per connect)
        self.statuses = list(statuses)  # status() answers, in order, then "connecting"
        self.joins = []
        self.polls = 0
        self.on = False
        self.drops = 0

    def active(self, on):
        self.on = on

    def connect(self, ssid, password):
        self.joins.append((ssid, password))
        self.polls = 0

    def disconnect(self):
        self.drops += 1

    def isconnected(self):
        self.polls += 1
        return self.on and self.up_after is not None and self.polls > self.up_after

    def status(self):
        return self.statuses.pop(0) if self.statuses else 1

    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")


class FakeNetwork:
    STA_IF = 0
    STAT_WRONG_PASSWORD = 202
    STAT_NO_AP_FOUND = 201
    STAT_CONNECT_FAIL = 203

    def __init__(self, nic):
        self.nic = nic

    def WLAN(self, which):
        if which != self.STA_IF:
            raise AssertionError(which)
        return self.nic

    def LAN(self):
        return self.nic


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def test_wifi_joins_the_configured_network_and_returns_its_address():
    nic = FakeNic(up_after=5)
    lines = []
    cfg = {"net": "wifi", "wifi": {"ssid": "plant-3", "password": "s3cr3t-pass"}}
    addr = netup.up(cfg, lines.append, FakeNetwork(nic), Clock())
    expect(addr == "10.0.0.7" and nic.on, addr)
    expect(nic.joins == [("plant-3", "s3cr3t-pass")], nic.joins)
    expect(not any("s3cr3t" in x for x in lines), lines)  # never the password
    expect(lines[-1] == "network: up, address 10.0.0.7", lines)


def test_a_wrong_password_is_said_and_tried_again_with_a_longer_wait():
    nic = FakeNic(up_after=None, statuses=[1, 202])
    clock = Clock()
    net = FakeNetwork(nic)
    cfg = {"net": "wifi", "wifi": {"ssid": "plant-3", "password": "x"}, "net_timeout_ms": 1000}
    lines = []

    def log(x):
        lines.append(x)
        if "(attempt 2)" in x:
            nic.up_after = 3  # the access point takes it the second time

    expect(netup.up(cfg, log, net, clock) == "10.0.0.7", lines)
    expect(len(nic.joins) == 2 and nic.drops == 1, (nic.joins, nic.drops))
    expect(any("wrong password" in x for x in lines), lines)
    expect(1000 in clock.slept, clock.slept)  # waited before the second attempt


def test_no_connection_within_the_timeout_doubles_the_wait():
    nic = FakeNic(up_after=None)
    clock = Clock()
    lines = []

    def log(x):
        lines.append(x)
        if "(attempt 3)" in x:
            nic.up_after = 0

    cfg = {"net": "wifi", "wifi": {"ssid": "s"}, "net_timeout_ms": 1000}
    netup.up(cfg, log, FakeNetwork(nic), clock)
    waits = [ms for ms in clock.slept if ms >= 1000]
    expect(waits == [1000, 2000], waits)
    expect(sum("no connection" in x for x in lines) == 2, lines)


def test_ethernet_waits_for_the_link():
    nic = FakeNic(up_after=10)
    lines = []
    expect(netup.up({"net": "ethernet"}, lines.append, FakeNetwork(nic), Clock())
           == "10.0.0.7", lines)
    expect(nic.on and nic.joins == [], nic.joins)


def _board(name):
    with open(_HERE + "/../../boards/" + name + ".json") as f:
        b = json.load(f)
    with open("board.json", "w") as f:
        json.dump(b, f)


def test_config_of_a_wifi_board_needs_wifi_and_an_ethernet_board_does_not():
    base = {"endpoint": "p", "gateway": "coap://10.0.0.2"}
    _board("esp32-devkitc")
    for bad in (None, "plant-3", {"password": "x"}, {"ssid": ""}, {"ssid": "x" * 33},
                {"ssid": "ok", "password": 5}):
        cfg = dict(base, board="esp32-devkitc")
        if bad is not None:
            cfg["wifi"] = bad
        try:
            config.check(cfg)
        except config.ConfigError as e:
            expect("'wifi'" in str(e) and "s3cr3t" not in str(e), str(e))
            continue
        raise AssertionError("accepted wifi %r" % (bad,))
    c = config.check(dict(base, board="esp32-devkitc", wifi={"ssid": "plant-3",
                                                             "password": "s3cr3t"}))
    expect(c["net"] == "wifi" and c["wifi"]["ssid"] == "plant-3", c)
    _board("nucleo-h743zi")
    c = config.check(dict(base, board="nucleo-h743zi", net_timeout_ms=5000))
    expect(c["net"] == "ethernet" and "wifi" not in c and c["net_timeout_ms"] == 5000, c)
    try:
        config.check(dict(base, board="nucleo-h743zi", net_timeout_ms=10))
    except config.ConfigError as e:
        expect("'net_timeout_ms'" in str(e), str(e))
    else:
        raise AssertionError("net_timeout_ms 10 accepted")
