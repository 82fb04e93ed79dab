# Checks that the harness really runs MicroPython with the board's heap limit.
import sys


def test_is_micropython():
    if sys.implementation.name != "micropython":
        raise AssertionError("not running under MicroPython: " + sys.implementation.name)


def test_heap_is_limited():
    import gc

    gc.collect()
    total = gc.mem_free() + gc.mem_alloc()
    if total > 64 * 1024:
        raise AssertionError("heap is %d bytes, expected <= 64K" % total)
    try:
        bytearray(80 * 1024)
    except MemoryError:
        return
    raise AssertionError("allocated 80K on a 64K heap")
