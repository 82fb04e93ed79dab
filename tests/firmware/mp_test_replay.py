# The unix-sim board's signal file reader (firmware/drivers/replay.py) under MicroPython:
# samples, wrap-around, offset, bad headers (real-time pacing: drivers/simsensor.py,
# mp_test_board.py and mp_test_sampler_memory.py).
import struct
from array import array

from drivers import replay


def code(i):
    # test signal: covers negative and positive int16 values, independent of the reader
    return ((i * 7919 + 123) % 65536) - 32768


def write_signal(path, n, rate=12000, exp=-12, magic=b"AI16", version=1, channels=1,
                 hsize=16, reserved=b"\0\0\0", extra=b""):
    with open(path, "wb") as f:
        f.write(magic + struct.pack("<BBHIb", version, channels, hsize, rate, exp) + reserved)
        for i in range(n):
            f.write(struct.pack("<h", code(i)))
        f.write(extra)


def test_header_fields():
    write_signal("s.i16", 37, rate=48000, exp=-14)
    s = replay.ReplaySensor("s.i16")
    if (s.rate, s.scale_exp, s.length, s.offset) != (48000, -14, 37, 0):
        raise AssertionError((s.rate, s.scale_exp, s.length, s.offset))


def test_samples_wrap_around_and_offset_keeps_counting():
    L = 37
    write_signal("s.i16", L)
    s = replay.ReplaySensor("s.i16")
    buf = array("h", [0] * 100)
    total = 0
    for n in (10, 10, 10, 10, 1, 0, 36, 100, 74, 3):
        s.read_into(buf, n)
        for j in range(n):
            want = code((total + j) % L)
            if buf[j] != want:
                raise AssertionError("sample %d: %d != %d" % (total + j, buf[j], want))
        total += n
        if s.offset != total:
            raise AssertionError("offset %d != %d" % (s.offset, total))
    if total <= 2 * L:
        raise AssertionError("test did not wrap twice")


def test_read_into_a_window_tail_memoryview():
    write_signal("s.i16", 50)
    s = replay.ReplaySensor("s.i16")
    win = array("h", [7] * 16)
    tail = memoryview(win)[12:]
    s.read_into(tail, 4)
    s.read_into(tail, 4)
    got = list(win)
    want = [7] * 12 + [code(i) for i in range(4, 8)]
    if got != want:
        raise AssertionError(got)
    try:
        s.read_into(tail, 5)
    except ValueError:
        return
    raise AssertionError("read past the buffer")


def test_steady_state_read_allocates_nothing():
    import gc

    write_signal("s.i16", 4000)
    s = replay.ReplaySensor("s.i16")
    buf = array("h", [0] * 64)
    s.read_into(buf, 64)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(50):
            s.read_into(buf, 64)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    if used:
        raise AssertionError("allocated %d bytes" % used)


_BAD = [
    (dict(magic=b"AI17"), "magic"),
    (dict(version=2), "version"),
    (dict(channels=2), "channels"),
    (dict(hsize=20), "header size"),
    (dict(rate=0), "sample rate"),
    (dict(rate=2000000), "sample rate"),
    (dict(reserved=b"\0\1\0"), "reserved"),
    (dict(n=0), "not whole"),
    (dict(extra=b"\1"), "not whole"),
]


def test_bad_headers_raise_typed_errors_naming_the_problem():
    for kw, word in _BAD:
        n = kw.pop("n", 5)
        write_signal("bad.i16", n, **kw)
        try:
            replay.ReplaySensor("bad.i16")
        except replay.ReplayError as e:
            if word not in str(e):
                raise AssertionError("%r does not mention %r" % (str(e), word))
            continue
        raise AssertionError("accepted %r" % kw)
    with open("short.i16", "wb") as f:
        f.write(b"AI16\x01\x01\x10\x00")
    for path, word in (("short.i16", "truncated header"), ("missing.i16", "cannot open")):
        try:
            replay.ReplaySensor(path)
        except replay.ReplayError as e:
            if word not in str(e):
                raise AssertionError("%r does not mention %r" % (str(e), word))
            continue
        raise AssertionError("accepted " + path)


def test_refuses_big_endian_host():
    write_signal("s.i16", 5)
    replay._host_order = "big"
    try:
        replay.ReplaySensor("s.i16")
    except replay.ReplayError as e:
        if "big-endian" not in str(e):
            raise AssertionError(str(e))
        return
    finally:
        replay._host_order = "little"
    raise AssertionError("ran on a big-endian host")
