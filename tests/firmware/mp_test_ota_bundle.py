# The node's bundle unpacker (firmware/ota/bundle.py) under the real MicroPython: a
# bundle built here byte for byte as ota/bundle.py makes it unpacks into a slot folder;
# every fault is refused with its reason and leaves the slot's old files and no temp
# file behind: a flipped byte, a truncated payload, a path escaping the slot ("..",
# absolute, NUL, too long), a file where a folder must be, a lying offset, another
# board. tests/firmware/test_ota_bundle_node.py feeds it bundles made by ota/bundle.py.
import gc
import hashlib
import json
import os
import struct
from binascii import hexlify

from ota.bundle import BundleError, unpack

HEAPSIZE = "96K"  # the module compiles from source in the test's heap

BUF = bytearray(256)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def make(files, version="1.2.3", board="unix-sim", arch="x64", entries=None, tail=b""):
    # ota/bundle.py's layout: canonical JSON (sorted keys, no spaces), files by path
    names = sorted(files)
    if entries is None:
        entries = []
        off = 0
        for n in names:
            entries.append({"offset": off, "path": n,
                            "sha256": hexlify(hashlib.sha256(files[n]).digest()).decode(),
                            "size": len(files[n])})
            off += len(files[n])
    m = json.dumps({"arch": arch, "board": board, "files": entries,
                    "format": "aiotkit-bundle", "version": version},
                   separators=(",", ":")).encode()
    return b"AIOB" + struct.pack("<HHI", 1, 0, len(m)) + m + b"".join(
        files[n] for n in names) + tail


FILES = {"main.mpy": b"M" * 700, "coap/__init__.mpy": b"", "coap/msg.mpy": bytes(range(256)) * 3,
         "ota/image.mpy": b"\x00\xff" * 100}


def write(name, data, pad=b""):
    with open(name, "wb") as f:
        f.write(pad)
        f.write(data)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def tree(folder, rel=""):
    out = {}
    for e in os.ilistdir(folder):
        p = rel + e[0]
        if e[1] == 0x4000:
            out.update(tree(folder + "/" + e[0], p + "/"))
        else:
            out[p] = read(folder + "/" + e[0])
    return out


def rmtree(folder):
    for e in os.ilistdir(folder):
        p = folder + "/" + e[0]
        if e[1] == 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(folder)


def refused(data, reason, dest="slot", **kw):
    write("b.bin", data)
    try:
        unpack("b.bin", dest, BUF, **kw)
    except BundleError as e:
        check(e.reason == reason, "reason %s, expected %s (%s)" % (e.reason, reason, e.detail))
        return
    raise AssertionError("accepted; expected " + reason)


def fresh():
    try:
        rmtree("slot")
    except OSError:
        pass
    write("b.bin", make(FILES))
    unpack("b.bin", "slot", BUF)
    return tree("slot")


def test_unpacks_every_file_byte_for_byte():
    write("img.bin", make(FILES), pad=b"H" * 0x200)  # as in an image: after the header
    m = unpack("img.bin", "slot", BUF, offset=0x200, board="unix-sim", arch="x64")
    check(m.version == "1.2.3" and m.board == "unix-sim" and m.arch == "x64", "manifest")
    check(m.files == 4 and m.size == sum(len(v) for v in FILES.values()), "counts")
    check(tree("slot") == FILES, "files differ")


def test_a_new_version_replaces_the_old_and_removes_what_it_no_longer_has():
    fresh()
    write("slot/stale.mpy", b"old")
    write("slot/coap/.msg.mpy.new", b"left by a power cut")
    new = {"main.mpy": b"v2", "coap/msg.mpy": b"v2 msg"}
    write("b.bin", make(new, version="1.3.0"))
    unpack("b.bin", "slot", BUF)
    check(tree("slot") == new, "slot holds exactly the new bundle: %r" % list(tree("slot")))


def test_a_flipped_byte_refuses_and_leaves_the_old_slot():
    before = fresh()
    b = bytearray(make({"main.mpy": b"new" * 50, "x.mpy": b"y" * 30}))
    b[-1] ^= 1
    refused(bytes(b), "hash")
    check(tree("slot") == before, "the old files changed or a temp file remains")


def test_truncated_payload_is_refused():
    data = make(FILES)
    for n in (0, 5, 11, 12, 40, len(data) - 1):
        refused(data[:n], "truncated")
    # a length that lies about the payload: it ends early inside the file
    write("b.bin", data)
    try:
        unpack("b.bin", "slot", BUF, length=len(data) + 10)
    except BundleError as e:
        check(e.reason in ("truncated", "layout"), e.reason)
    else:
        raise AssertionError("accepted")


def test_bytes_after_the_last_file_are_refused():
    refused(make(FILES, tail=b"x"), "layout")


def test_paths_that_leave_the_slot_are_refused():
    before = fresh()
    for p in ("../evil.mpy", "/etc/passwd", "a/../../x", "./x", "a//b", "x\x00y", "",
              ".hidden", "a/" + "b" * 33, "a/b/c/d/e", "x" * 65, "a\\b", "\u00e9.mpy"):
        e = [{"offset": 0, "path": p, "sha256": "00" * 32, "size": 0}]
        refused(make({}, entries=e), "path")
    check(tree("slot") == before, "the slot changed")
    check(not any(e[0] == "evil.mpy" for e in os.ilistdir(".")), "wrote outside the slot")


def test_a_file_where_a_folder_must_be_is_refused():
    refused(make({"a": b"1", "a/b": b"2"}), "path")
    refused(make({"A.mpy": b"1", "a.mpy": b"2"}), "path")  # one file on FAT


def test_lying_layout_is_refused():
    e = [{"offset": 1, "path": "a", "sha256": "00" * 32, "size": 0}]
    refused(make({}, entries=e), "layout")
    e = [{"offset": 0, "path": "b", "sha256": "00" * 32, "size": 0},
         {"offset": 0, "path": "a", "sha256": "00" * 32, "size": 0}]
    refused(make({}, entries=e), "layout")
    e = [{"offset": 0, "path": "a", "sha256": "zz" * 32, "size": 0}]
    refused(make({}, entries=e), "manifest")
    e = [{"offset": 0, "path": "a", "sha256": "00" * 32, "size": "1"}]
    refused(make({}, entries=e), "manifest")


def test_other_faults_have_their_reasons():
    data = make(FILES)
    refused(b"XIOB" + data[4:], "magic")
    refused(data[:4] + b"\x02" + data[5:], "format")
    refused(data[:6] + b"\x01" + data[7:], "format")
    refused(data[:8] + struct.pack("<I", 16385) + data[12:], "size")
    refused(data[:12] + b"[" + data[13:], "manifest")
    refused(make(FILES, board="esp32-devkitc"), "board", board="unix-sim")
    refused(make(FILES, arch="xtensawin"), "arch", arch="x64")


def big(n):
    # n empty files: the manifest is built, written and dropped before the node reads it
    z = hexlify(hashlib.sha256(b"").digest()).decode()
    e = [{"offset": 0, "path": "coap/file_%03d.mpy" % i, "sha256": z, "size": 0}
         for i in range(n)]
    write("b.bin", make({}, entries=e))
    e = None
    gc.collect()


def test_the_most_files_a_bundle_may_hold_fit_the_heap():
    big(96)  # MAX_FILES: a 12 KiB manifest, parsed whole
    m = unpack("b.bin", "slot96", BUF)
    check(m.files == 96 and len(tree("slot96")) == 96, "96 files")


def test_more_files_than_the_node_takes_are_refused():
    big(97)
    try:
        unpack("b.bin", "slot", BUF)
    except BundleError as e:
        check(e.reason == "size", e.reason)
        return
    raise AssertionError("accepted")
