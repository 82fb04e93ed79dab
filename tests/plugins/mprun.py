# MicroPython side of the test runner: import a test module, run one test function.
# Usage: micropython mprun.py MODULE FUNCTION   (MICROPYPATH must reach MODULE)
import sys

mod = __import__(sys.argv[1])
fn = getattr(mod, sys.argv[2])
try:
    fn()
except Exception as e:  # noqa: BLE001 (MicroPython: report any failure; pytest shows it)
    sys.print_exception(e)
    sys.exit(1)
print("MPTEST PASS")
