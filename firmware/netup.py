# Bring up a hardware board's network before the node opens its socket (node.py main):
# the board's "network" (board.json, kept in the config as "net" by storage/config.py):
#   wifi      network.WLAN(STA_IF): joins config "wifi" {"ssid", "password"} (ESP32, Pico W)
#   ethernet  network.LAN(): the link and DHCP come up on their own (NUCLEO-H743ZI)
# unix-sim ("host") has the host's network: nothing to do, this module is not imported.
#
# It waits until the interface says it is connected, checking every 100 ms; after
# 'net_timeout_ms' (20 s) without a connection it starts again with a longer wait
# (doubling up to 5 min), for as long as it takes: an access point that is down now may
# be up later, and the node has nothing to do without a network. A wrong password or
# an unknown SSID is said once per attempt (the status the interface reports), the
# password never. Returns the interface's address. The watchdog boot.py armed (``wdt``)
# is fed every _POLL_MS while it waits.
from micropython import const

_POLL_MS = const(100)
_TIMEOUT_MS = const(20000)
_MAX_WAIT_MS = const(300000)


def _why(network, status):
    """What a WLAN status says went wrong, or None while it is still trying."""
    for name, text in (("STAT_WRONG_PASSWORD", "wrong password"),
                       ("STAT_NO_AP_FOUND", "no access point with that SSID"),
                       ("STAT_CONNECT_FAIL", "connection failed")):
        code = getattr(network, name, None)
        if code is not None and status == code:
            return text
    return None


def _sleep(clock, ms, wdt):
    # clock.sleep_ms(ms), feeding wdt (machine.WDT or None) every _POLL_MS
    if wdt is not None:
        while ms > _POLL_MS:
            wdt.feed()
            clock.sleep_ms(_POLL_MS)
            ms -= _POLL_MS
        wdt.feed()
    clock.sleep_ms(ms)


def up(cfg, log, network=None, clock=None, wdt=None):
    """Connect the board's interface (module comment); its address. ``network`` and
    ``clock`` (sleep_ms, ticks_ms, ticks_diff) are the real modules on a board; ``wdt``
    the armed watchdog (None: none)."""
    if network is None:
        import network
    if clock is None:
        import time as clock
    kind = cfg["net"]
    if kind == "wifi":
        nic = network.WLAN(network.STA_IF)
    elif kind == "ethernet":
        nic = network.LAN()
    else:
        raise ValueError("'board' network %s: not wifi or ethernet" % kind)
    nic.active(True)
    wait = cfg.get("net_timeout_ms", _TIMEOUT_MS)
    attempt = 0
    while True:
        attempt += 1
        if kind == "wifi":
            w = cfg["wifi"]
            log("network: joining %s (attempt %d)" % (w["ssid"], attempt))
            nic.connect(w["ssid"], w.get("password", ""))
        else:
            log("network: waiting for the Ethernet link (attempt %d)" % attempt)
        start = clock.ticks_ms()
        why = None
        while clock.ticks_diff(clock.ticks_ms(), start) < wait:
            if nic.isconnected():
                addr = nic.ifconfig()[0]
                log("network: up, address %s" % addr)
                return addr
            if kind == "wifi":
                why = _why(network, nic.status())
                if why is not None:
                    break
            _sleep(clock, _POLL_MS, wdt)
        log("network: not up after %d ms (%s); trying again"
            % (clock.ticks_diff(clock.ticks_ms(), start), why or "no connection"))
        if kind == "wifi":
            nic.disconnect()
        _sleep(clock, min(wait, _MAX_WAIT_MS), wdt)
        wait = min(wait * 2, _MAX_WAIT_MS)
