# The slot state file (firmware/ota/slots.py) under the real MicroPython, in a fresh
# folder (the node's flash): the factory state, a torn or invalid slots.json, a rename
# that a FAT board does as remove + rename (cut in between: the complete .tmp is read),
# the boot counter and the rollback, confirm and fail outside a test boot. Signed images,
# stage() and the power-cut sweep are in test_ota_slots_node.py.
import json
import os

from ota import slots


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def fresh():
    # a new boot: the module's boot-time variables as after power-on
    slots.running = None
    slots._testing = False
    slots._failed = False
    for p in (slots.STATE, slots.STATE + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


def state(**kw):
    s = {"confirmed": "a", "pending": None, "boots": 0, "tries": 3, "counter": 1,
         "floor": 1, "result": 0, "reason": ""}
    s.update(kw)
    return s


def test_factory_state_without_a_file():
    fresh()
    check(slots.load()["confirmed"] is None, "no slots/a: the base firmware")
    check(slots.select() is None and not slots.testing(), "base boots")
    os.mkdir("slots")
    os.mkdir("slots/a")
    check(slots.select() == "a", "slots/a: slot a confirmed")
    check(slots.load()["floor"] == 0, "floor 0")
    try:
        os.stat(slots.STATE)
        raise AssertionError("a normal boot wrote the state")
    except OSError:
        pass


def test_torn_or_invalid_state_reads_the_tmp_or_the_factory():
    fresh()
    good = json.dumps(state(confirmed="b", floor=4))
    write(slots.STATE, good[: len(good) // 2])  # torn (cannot happen with rename; still)
    write(slots.STATE + ".tmp", good)
    check(slots.load()["floor"] == 4, "torn file: the complete tmp")
    for bad in (state(confirmed="c"), state(pending="a"), state(boots=-1),
                state(floor="4"), state(reason=None), [1]):
        fresh()
        write(slots.STATE, json.dumps(bad))
        check(slots.load()["floor"] == 0, "invalid state refused: %r" % (bad,))


def test_fat_rename_cut_between_remove_and_rename():
    fresh()
    write(slots.STATE + ".tmp", json.dumps(state(pending="b", boots=2, floor=3)))
    s = slots.load()
    check(s["pending"] == "b" and s["boots"] == 2 and s["floor"] == 3, s)


def test_counter_before_each_test_boot_then_rollback():
    fresh()
    write(slots.STATE, json.dumps(state(pending="b", tries=2, counter=9)))
    for n in (1, 2):
        slots._failed = False
        check(slots.select() == "b" and slots.testing(), "test boot %d" % n)
        check(slots.load()["boots"] == n, "counted before the boot")
        slots.fail("crash: %d" % n)
        slots.fail("exit 3")  # boot.py's after the app's: the first reason stays
        check(slots.load()["reason"] == "crash: %d" % n, slots.load())
    check(slots.select() == "a" and not slots.testing(), "rolled back")
    s = slots.load()
    check(s["result"] == 8 and s["pending"] is None and s["floor"] == 1, s)
    check(s["reason"] == "rolled back after 2 boots: crash: 2", s["reason"])
    check(not slots.confirm(), "nothing to confirm")
    check(slots.target() == "b", "b is free again")


def test_confirm_raises_the_floor_only_in_a_test_boot():
    fresh()
    write(slots.STATE, json.dumps(state(pending="b", counter=9)))
    check(not slots.confirm(), "before select: not a test boot")
    check(slots.select() == "b", "test boot")
    check(not slots.overdue(60000), "deadline not passed")
    check(slots.overdue(0), "deadline 0 passed")
    check(slots.confirm() and not slots.testing(), "confirmed")
    s = slots.load()
    check((s["confirmed"], s["pending"], s["floor"], s["result"]) == ("b", None, 9, 1), s)
    check(not slots.overdue(0), "no self-test owed after confirm")
    check(slots.target() == "a", "a is free")
    slots.fail("late")  # not a test boot any more: no write
    check(slots.load()["reason"] == "", "fail outside a test boot")
