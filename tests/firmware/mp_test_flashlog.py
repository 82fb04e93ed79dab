# The node's flash log (firmware/storage/flashlog.py) under MicroPython: order, wrap-around, the
# dropped counter, reboots (a new Log on the same file), power cuts at every byte of an
# append and of a pop, foreign files, and no allocation per append/peek/pop.
import gc
import os
import time

from storage.flashlog import Log, LogError

_PATH = "log.bin"
_SLOT = 64
_CAP = 16 + 8 * _SLOT  # 8 slots


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def rec(i, n=0):
    # record i: its number and a pattern, n bytes (default 5 + i % 40)
    n = n or 5 + i % 40
    b = bytearray(n)
    for k in range(n):
        b[k] = (i * 31 + k * 7 + 1) & 0xFF
    b[0] = i & 0xFF
    return bytes(b)


def drain(log):
    buf = bytearray(_SLOT)
    out = []
    while True:
        n = log.peek(buf)
        if not n:
            return out
        out.append(bytes(buf[:n]))
        log.pop()


def contents(log):
    # the records without popping them: reopen, read, pop on a copy of the file
    data = read(_PATH)
    write("copy.bin", data)
    c = Log("copy.bin", _CAP, _SLOT)
    out = drain(c)
    c.close()
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def fresh():
    try:
        os.remove(_PATH)
    except OSError:
        pass
    return Log(_PATH, _CAP, _SLOT)


def test_order_kept():
    log = fresh()
    check(log.capacity == 8 and log.max_record == 50, "geometry")
    check(log.count == 0 and log.peek(bytearray(64)) == 0, "empty")
    for i in range(5):
        log.append(rec(i))
    check(log.count == 5, "count %d" % log.count)
    check(drain(log) == [rec(i) for i in range(5)], "order")
    check(log.count == 0 and log.dropped == 0, "after drain")


def test_wrap_around_and_dropped_counter():
    log = fresh()
    for i in range(20):
        log.append(rec(i))
    check(log.count == 8, "full: %d" % log.count)
    check(log.dropped == 12, "dropped %d" % log.dropped)
    check(drain(log) == [rec(i) for i in range(12, 20)], "newest 8 kept in order")
    # interleaved appends and pops across the wrap
    buf = bytearray(_SLOT)
    want = []
    nxt = 100
    for step in range(60):
        for _ in range(step % 3 + 1):
            log.append(rec(nxt))
            want.append(rec(nxt))
            nxt += 1
        want = want[-8:]
        n = log.peek(buf)
        check(bytes(buf[:n]) == want[0], "step %d oldest" % step)
        log.pop()
        want.pop(0)
    check(drain(log) == want, "interleaved")


def test_reopen_after_reboot_keeps_records_and_counter():
    log = fresh()
    for i in range(11):
        log.append(rec(i))
    log.pop()  # record 3 (0..2 dropped)
    log.close()
    log = Log(_PATH, _CAP, _SLOT)
    check(not log.reformatted, "kept")
    check(log.count == 7 and log.dropped == 3, "count %d dropped %d" % (log.count, log.dropped))
    log.append(rec(11))
    log.close()
    log = Log(_PATH, _CAP, _SLOT)
    check(drain(log) == [rec(i) for i in range(4, 12)], "records after two reboots")
    log.close()
    log = Log(_PATH, _CAP, _SLOT)
    check(log.count == 0 and log.dropped == 3, "popped stay popped")
    log.append(rec(12))
    check(drain(log) == [rec(12)], "appends after")


def _torn_append(before, after, wrapped):
    # every prefix of the append's bytes (the rest as before), and every single
    # corrupted byte: the earlier records are intact, the torn one absent
    k0 = 0
    while before[k0] == after[k0]:
        k0 += 1
    k1 = len(after)
    while before[k1 - 1] == after[k1 - 1]:
        k1 -= 1
    log = Log(_PATH, _CAP, _SLOT)
    full = drain(log)
    log.close()
    earlier = full[:-1]
    cases = 0
    for cut in range(k0, k1):
        slot = 16 + (k0 - 16) // _SLOT * _SLOT
        torn = [(after[:cut] + before[cut:], earlier)]  # written up to cut
        if cut > k0:
            # written from cut on: complete but for magic and state, it is delivered
            full_but_state = cut <= slot + 2 and before[slot] == 0xA5
            torn.append((before[:cut] + after[cut:k1] + before[k1:],
                         full if full_but_state else earlier))
        for data, want in torn:
            write(_PATH, data)
            log = Log(_PATH, _CAP, _SLOT)
            got = drain(log)
            log.close()
            check(got == want, "cut %d: %d records, want %d" % (cut, len(got), len(want)))
            cases += 1
        bad = bytearray(after)
        bad[cut] ^= 0x41
        write(_PATH, bad)
        log = Log(_PATH, _CAP, _SLOT)
        got = drain(log)
        log.close()
        # a garbled state counts as live (deliver again)
        check(got == (full if cut == slot + 1 else earlier), "corrupt byte %d" % cut)
        if not wrapped:
            write(_PATH, after[:cut])  # file cut short (a host filesystem)
            log = Log(_PATH, _CAP, _SLOT)
            got = drain(log)
            log.close()
            check(got == earlier, "truncated at %d" % cut)
    print("torn append: %d bytes, %d cases" % (k1 - k0, cases))


def test_power_cut_during_append():
    for wrapped in (False, True):
        log = fresh()
        for i in range(11 if wrapped else 3):
            log.append(rec(i))
        log.pop()
        log.close()
        before = read(_PATH)
        log = Log(_PATH, _CAP, _SLOT)
        log.append(rec(50, 44))
        log.close()
        after = read(_PATH)
        _torn_append(before, after, wrapped)


def test_power_cut_during_pop():
    log = fresh()
    for i in range(10):
        log.append(rec(i))
    log.close()
    before = read(_PATH)
    log = Log(_PATH, _CAP, _SLOT)
    log.pop()
    log.close()
    after = read(_PATH)
    diff = [k for k in range(len(after)) if before[k] != after[k]]
    check(len(diff) == 1, "a pop writes one byte: %r" % diff)
    for data, want in ((before, range(2, 10)), (after, range(3, 10))):
        write(_PATH, data)
        log = Log(_PATH, _CAP, _SLOT)
        check(drain(log) == [rec(i) for i in want], "pop persisted or not")
        log.close()
    # the state byte is live (0x80 | lap, record 2 is in lap 0), popped, or garbled:
    # record 2's slot follows the newest record's (9), where a torn append could have
    # written the state of its lap 1, so garbled counts as popped there
    for v in (0x80, 0x81, 0, 0xFF, 0x01):
        bad = bytearray(after)
        bad[diff[0]] = v
        write(_PATH, bad)
        log = Log(_PATH, _CAP, _SLOT)
        want = range(2 if v == 0x80 else 3, 10)
        check(drain(log) == [rec(i) for i in want], "state byte %x" % v)
        log.close()


def test_foreign_file_is_reformatted_or_refused():
    for data in (b"", b"hello", b"{\"endpoint\": \"n1\"}\n" * 40, bytes(_CAP), b"\xff" * 3000):
        write(_PATH, data)
        try:
            Log(_PATH, _CAP, _SLOT, reformat=False)
            raise AssertionError("accepted a foreign file %r" % data[:10])
        except LogError as e:
            print("refused:", e)
        log = Log(_PATH, _CAP, _SLOT)
        check(log.reformatted and log.count == 0, "fresh log")
        log.append(rec(1))
        log.close()
        check(len(read(_PATH)) == _CAP, "size")
        log = Log(_PATH, _CAP, _SLOT)
        check(drain(log) == [rec(1)], "usable after")
        log.close()
    # another geometry is another file
    log = Log(_PATH, _CAP, 32)
    check(log.reformatted, "geometry change reformats")
    log.close()
    # a log whose slots are garbage (not its own writes) opens empty
    data = bytearray(read(_PATH))
    for k in range(16, len(data)):
        data[k] = (k * 89 + 0xA5) & 0xFF
    write(_PATH, data)
    log = Log(_PATH, _CAP, 32)
    check(log.count == 0 and not log.reformatted, "garbage slots")
    log.close()


def test_bad_arguments():
    log = fresh()
    for n in (0, 51):
        try:
            log.append(bytes(n))
            raise AssertionError("record of %d accepted" % n)
        except ValueError:
            pass
    log.append(rec(1, 50))
    try:
        log.peek(bytearray(10))
        raise AssertionError("short buffer accepted")
    except ValueError:
        pass
    for cap, slot in ((_CAP, 14), (16 + _SLOT, _SLOT), (_CAP, 70000)):
        try:
            Log("x.bin", cap, slot)
            raise AssertionError("geometry %d/%d accepted" % (cap, slot))
        except ValueError:
            pass
    log.clear()
    check(log.count == 0 and log.dropped == 0, "clear")


def test_no_allocation_per_append_peek_pop():
    os.remove(_PATH) if _PATH in os.listdir() else None
    log = Log(_PATH, 16 + 16 * 512, 512)
    data = bytearray(rec(7, 400))
    mv = memoryview(data)
    buf = bytearray(512)
    for _ in range(20):
        log.append(data, 400)
        log.peek(buf)
        log.pop()
    gc.collect()
    gc.disable()
    try:
        n = 50
        before = gc.mem_alloc()
        t0 = time.ticks_us()
        for _ in range(n):
            log.append(mv, 400)
        t1 = time.ticks_us()
        a_app = gc.mem_alloc() - before
        for _ in range(n):
            log.peek(buf)
            log.pop()
        t2 = time.ticks_us()
        a_rest = gc.mem_alloc() - before - a_app
    finally:
        gc.enable()
    print("append 400 B: %d us, peek+pop: %d us (allocated %d / %d bytes over %d)"
          % (time.ticks_diff(t1, t0) // n, time.ticks_diff(t2, t1) // n, a_app, a_rest, n))
    check(a_app == 0 and a_rest == 0, "allocated %d / %d bytes" % (a_app, a_rest))
    gc.collect()
    m0 = gc.mem_alloc()
    log2 = Log("b.bin", 16 + 16 * 512, 512)
    gc.collect()
    print("a Log object and its buffers: %d bytes of heap" % (gc.mem_alloc() - m0))
    log2.close()
