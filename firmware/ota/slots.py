# The node's A/B app slots and their state (issue 14): which slot is confirmed, which is
# pending a test boot, the boot counter of that test, the security-counter floor and the
# last update result. Part of the boot code (boot.py imports it before any slot is on
# sys.path, so the app's `from ota import slots` gets this module): never updated.
#
# Slots are folders: slots/a/, slots/b/ hold an app (its main and modules, .mpy); the
# signed image it was unpacked from is kept beside it, slots/a.img, slots/b.img (outside
# the folder, which ota/bundle.py unpack() owns and prunes). The state is one JSON file,
# slots.json, written to slots.json.tmp and renamed (a power cut leaves the old state or
# the new one; where a rename over a file is remove + rename (FAT), a missing slots.json
# is read from a complete slots.json.tmp):
#   confirmed  "a" | "b" | null   the slot that boots normally (null: the base firmware)
#   pending    "a" | "b" | null   a staged slot: the next boots test it
#   boots      int                test boots of `pending` started (counted before each)
#   tries      int                test boots allowed before the rollback (default 3)
#   counter    int                security counter of the pending image
#   floor      int                lowest security counter accepted (rises at confirm)
#   result     int                LwM2M /5/0/5 Update Result: 0 none, 1 success, 8 failed
#   reason     str                why the last test boot failed / why it rolled back
# A missing or unreadable state is the factory state: slot a confirmed if slots/a
# exists, floor 0.
from micropython import const
import json
import os
import time

STATE = "slots.json"
DIR = "slots/"
IMAGE = ".img"  # slots/a.img: slot a's verified image
SLOTS = ("a", "b")
TRIES = const(3)  # test boots before the rollback
SUCCESS = const(1)  # LwM2M 1.1 /5/0/5 Update Result: "Firmware updated successfully"
FAILED = const(8)  # ... "Firmware update failed"
_REASON_MAX = const(80)

running = None  # the slot this boot runs (select()); None: the base firmware
rolled_back = None  # select() rolled a test back at this boot: the reason
_testing = False  # this boot tests the pending slot and has not confirmed it
_t0 = 0  # ticks_ms at select()
_failed = False  # this boot's failure reason is recorded (the first one is kept)


class SlotError(Exception):
    """An operation the slot state forbids (writing the running or confirmed slot)."""


def _fresh():
    try:
        os.stat(DIR + "a")
        c = "a"
    except OSError:
        c = None
    return {"confirmed": c, "pending": None, "boots": 0, "tries": TRIES, "counter": 0,
            "floor": 0, "result": 0, "reason": ""}


def _valid(s):
    if not isinstance(s, dict):
        return False
    for k in ("boots", "tries", "counter", "floor", "result"):
        if type(s.get(k)) is not int or s[k] < 0:
            return False
    c, p = s.get("confirmed"), s.get("pending")
    return (c in (None, "a", "b") and p in (None, "a", "b") and (p is None or p != c)
            and type(s.get("reason")) is str)


def load():
    """The slot state (a dict as above)."""
    for p in (STATE, STATE + ".tmp"):
        try:
            with open(p) as f:
                s = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if _valid(s):
            return s
    return _fresh()


def _save(s):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(s))
    os.rename(tmp, STATE)


def folder(slot):
    return DIR + slot


def select():
    """At boot, before the app: the slot to boot (None: the base firmware). A pending
    slot boots in test mode, its counter raised and saved first; after `tries` test
    boots without confirm() the confirmed slot boots and the result is FAILED."""
    global running, _testing, _t0, rolled_back
    s = load()
    p = s["pending"]
    _t0 = time.ticks_ms()
    if p is not None:
        if s["boots"] < s["tries"]:
            s["boots"] += 1
            _save(s)
            running = p
            _testing = True
            return p
        why = s["reason"] or "no confirm"
        s["reason"] = ("rolled back after %d boots: %s" % (s["boots"], why))[:_REASON_MAX]
        s["pending"] = None
        s["boots"] = 0
        s["result"] = FAILED
        _save(s)
        rolled_back = s["reason"]
    running = s["confirmed"]
    _testing = False
    return running


def testing():
    """True while this boot tests a pending slot (the self-test is owed)."""
    return _testing


def overdue(deadline_ms):
    """True when this boot tests a slot and deadline_ms have passed since select()."""
    return _testing and time.ticks_diff(time.ticks_ms(), _t0) >= deadline_ms


def confirm():
    """The self-test passed: the running pending slot becomes the confirmed one and the
    floor rises to its security counter (one atomic write). False if not testing."""
    global _testing
    if not _testing:
        return False
    s = load()
    if s["pending"] != running:
        _testing = False
        return False
    s["confirmed"] = running
    s["pending"] = None
    s["boots"] = 0
    if s["counter"] > s["floor"]:
        s["floor"] = s["counter"]
    s["result"] = SUCCESS
    s["reason"] = ""
    _save(s)
    _testing = False
    return True


def fail(reason):
    """The self-test failed (or the app crashed) in a test boot: keep the reason for the
    rollback report; the caller then reboots (the counter decides at the next boot).
    The first reason of a boot is kept (boot.py's "exit 3" does not hide the app's)."""
    global _failed
    if _testing and not _failed:
        _failed = True
        s = load()
        s["reason"] = str(reason)[:_REASON_MAX]
        _save(s)


def target():
    """The slot an update may be written into: neither the running nor the confirmed
    one. A slot staged but not yet booted is unstaged first (a half-written slot is
    never booted); the state is saved (the factory state, derived from the folders,
    becomes explicit before a slot folder is written). SlotError while a test boot runs (the other slot is the fallback)."""
    s = load()
    for t in SLOTS:
        if t != running and t != s["confirmed"]:
            if s["pending"] == t:
                s["pending"] = None
                s["boots"] = 0
            # saved: a factory state is derived from the folders, and this one is about
            # to be written (slots/<t> must not pass for a confirmed slot a)
            _save(s)
            return t
    raise SlotError("no free slot")


def stage(slot, keys, size, board=None, types=("app",), tries=TRIES, buf=None):
    """Mark the written, unpacked `slot` pending after verifying its image again
    (ota/image.py verify(), against the persisted floor): the next boot tests it.
    ImageError (with .result) for an image the node refuses; SlotError for the running
    or confirmed slot."""
    from ota.image import verify

    s = load()
    if slot not in SLOTS or slot == running or slot == s["confirmed"]:
        raise SlotError("slot %s is in use" % slot)
    img = verify(DIR + slot + IMAGE, keys, size, s["floor"], board, types, buf)
    s["pending"] = slot
    s["boots"] = 0
    s["tries"] = tries
    s["counter"] = img.counter
    s["result"] = 0
    s["reason"] = ""
    _save(s)
    return img
