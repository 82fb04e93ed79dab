# The boot selector (issue 14): the only code never updated, with ota/slots.py. It
# picks the slot (ota/slots.py select(): the confirmed one, or the pending one in test
# mode with its boot counter raised first, or back to the confirmed one after the
# failed test boots), puts that slot's folder first on sys.path and runs the app (app.py).
# In a test boot a crash or a non-zero exit is recorded as the reason (slots.fail())
# and the process ends: the board reboots (tools/sim.py restarts it) and the counter
# decides. A config error (exit 2) in a test boot becomes a reboot (3): the supervisor
# restarts after it, so the new app is rolled back instead of the node stopping.
import gc
import sys
from ota import slots


def _boot():
    s = slots.select()
    if slots.rolled_back is not None:  # the app's /5/0/5 says 8; this says why
        print("aiot-node: update failed:", slots.rolled_back)
    elif slots.testing():
        print("aiot-node: test boot of slot", s)
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
