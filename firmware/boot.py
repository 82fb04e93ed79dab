# The boot selector (issue 14): the only code never updated, with ota/slots.py. It
# picks the slot (ota/slots.py select(): the confirmed one, or the pending one in test
# mode with its boot counter raised first, or back to the confirmed one after the
# failed test boots), arms the hardware watchdog, puts that slot's folder first on
# sys.path and runs the app (app.py).
# In a test boot a crash or a non-zero exit is recorded as the reason (slots.fail())
# and the process ends: the board reboots (tools/sim.py restarts it) and the counter
# decides. A config error (exit 2) in a test boot becomes a reboot (3): the supervisor
# restarts after it, so the new app is rolled back instead of the node stopping.
#
# The watchdog (config "wdt_ms", default 30 s, 0: none) is armed at every boot, test
# boot or not, before the app is imported: a board's machine.WDT cannot be stopped once
# started, and an app that hangs anywhere, at import included, is reset by it. A reset
# in a test boot is a failed test boot like a crash (the counter was raised before).
# The app feeds it through slots.wdt (None: no watchdog) at least every slots.wdt_ms / 2
# (lwm2m/session.py, coap/endpoint.py, node.py, netup.py). A port without machine.WDT
# (the unix port outside tools/sim.py, whose machine stand-in has one) runs without;
# a timeout the port refuses is said once and the node runs without.
from micropython import const
import gc
import sys
from ota import slots

_WDT_MS = const(30000)  # config "wdt_ms" by default
_WDT_MIN_MS = const(1000)  # the bounds storage/config.py checks: a value it refuses is
_WDT_MAX_MS = const(600000)  # not armed (the default is), so its config error is said


def _watchdog():
    # slots.wdt: machine.WDT armed with config "wdt_ms", or None
    slots.wdt = None
    slots.wdt_ms = 0
    import json

    path = sys.argv[1] if len(sys.argv) > 1 else "config.json"  # as node.main reads it
    try:
        with open(path) as f:
            ms = json.loads(f.read()).get("wdt_ms", _WDT_MS)
    except (OSError, ValueError, AttributeError):
        ms = _WDT_MS
    if type(ms) is not int or not (ms == 0 or _WDT_MIN_MS <= ms <= _WDT_MAX_MS):
        ms = _WDT_MS
    if not ms:
        return
    import machine

    wdt = getattr(machine, "WDT", None)
    if wdt is None:
        return
    try:
        slots.wdt = wdt(timeout=ms)
    except (ValueError, OSError) as e:  # beyond this port's range (rp2: 8388 ms)
        print("aiot-node: watchdog not armed:", e)
        return
    slots.wdt_ms = ms


def _reset_reason():
    # A test boot the watchdog reset could not say why it failed: say it for it (the
    # first reason of a boot is kept, so one the app recorded stays)
    import machine

    cause = getattr(machine, "reset_cause", None)
    if cause is None or cause() != getattr(machine, "WDT_RESET", -1):
        return
    s = slots.load()
    if s["pending"] is not None and s["boots"] and not s["reason"]:
        s["reason"] = "watchdog reset"
        slots._save(s)


def _boot():
    _reset_reason()
    s = slots.select()
    if slots.rolled_back is not None:  # the app's /5/0/5 says 8; this says why
        print("aiot-node: update failed:", slots.rolled_back)
    elif slots.testing():
        print("aiot-node: test boot of slot", s)
    _watchdog()
    if s is not None:
        d = slots.folder(s)
        try:
            open(d + "/app.mpy").close()
        except OSError:
            open(d + "/app.py").close()  # neither: OSError, a failed boot
        sys.path.insert(0, d)
    gc.collect()  # the selector's garbage goes before the app allocates its buffers
    import app  # noqa: F401 (the app runs on import)


try:
    _boot()
except SystemExit as e:
    c = e.args[0] if e.args else 0
    if c and slots.testing():
        slots.fail("exit %s" % c)
        if c == 2:
            c = 3
    sys.exit(c)
except Exception as e:
    if slots.testing():
        slots.fail("crash: %r" % e)
    raise
