"""Application bundles (ota/bundle.py): the same inputs give the same bytes; a bundle
reads back file for file; every corruption is refused with its reason (a flipped byte in
a file, a truncated bundle, bytes appended, a manifest that lies about offsets, sizes or
order, a path escaping the slot, two names one FAT file would merge); random damage never
raises anything but BundleError."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from aiotkit.boards.errors import AiotError
from aiotkit.ota import bundle
from aiotkit.ota.bundle import BundleError, make_bundle, read_bundle
from aiotkit.ota.errors import OtaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FILES = {"main.mpy": b"M" * 300, "coap/__init__.mpy": b"", "coap/msg.mpy": bytes(range(256)),
         "dsp/features.mpy": b"\x00\xff" * 500}
META = {"version": "1.2.3", "board": "unix-sim", "arch": "x64"}


def make(files=FILES, **kw) -> bytes:
    return make_bundle(files, **{**META, **kw})


def reason(data: bytes) -> str:
    with pytest.raises(BundleError) as e:
        read_bundle(data)
    assert e.value.reason in bundle.REASONS
    return e.value.reason


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack_from("<I", data, 8)[0]
    return json.loads(data[12:12 + n]), data[12 + n:]


def join(manifest: dict, body: bytes, canonical: bool = True) -> bytes:
    m = (json.dumps(manifest, sort_keys=True, separators=(",", ":")) if canonical
         else json.dumps(manifest, indent=1)).encode()
    return b"AIOB" + struct.pack("<HHI", 1, 0, len(m)) + m + body


def test_round_trip_file_for_file():
    b = read_bundle(make())
    assert (b.version, b.board, b.arch) == ("1.2.3", "unix-sim", "x64")
    assert b.contents() == FILES
    assert [f.path for f in b.files] == sorted(FILES)
    assert all(f.sha256 == hashlib.sha256(FILES[f.path]).digest() for f in b.files)


def test_same_inputs_same_bytes_whatever_the_order():
    assert make() == make(dict(reversed(list(FILES.items()))))
    assert make() != make(version="1.2.4")


def test_errors_are_the_ota_family_exit_1():
    with pytest.raises(BundleError) as e:
        read_bundle(b"")
    assert isinstance(e.value, OtaError) and isinstance(e.value, AiotError)
    assert e.value.exit_status == 1 and "truncated" in str(e.value)


def test_flipped_byte_in_a_file():
    data = bytearray(make())
    data[-3] ^= 0x10
    assert reason(bytes(data)) == "hash-mismatch"


def test_truncated_anywhere():
    data = make()
    for n in (0, 3, 11, 12, 40, len(data) - 1):
        assert reason(data[:n]) in ("truncated", "bad-manifest"), n


def test_bytes_appended():
    assert reason(make() + b"\0") == "trailing-data"


def test_wrong_magic_format_flags():
    data = make()
    assert reason(b"AIOX" + data[4:]) == "bad-magic"
    assert reason(data[:4] + b"\x02\x00" + data[6:]) == "unsupported-format"
    assert reason(data[:6] + b"\x01\x00" + data[8:]) == "unsupported-format"
    assert reason(data[:8] + struct.pack("<I", bundle.MAX_MANIFEST + 1) + data[12:]) \
        == "too-large"


def test_manifest_that_lies():
    m, body = split(make())
    for change, why in (
        (lambda m: m["files"][1].update(offset=m["files"][1]["offset"] + 1), "bad-offset"),
        (lambda m: m["files"].reverse(), "bad-offset"),
        (lambda m: m["files"][0].update(size=m["files"][0]["size"] + 1), "bad-offset"),
        (lambda m: m["files"][-1].update(size=m["files"][-1]["size"] + 1), "truncated"),
        (lambda m: m["files"][-1].update(size=m["files"][-1]["size"] - 1), "trailing-data"),
        (lambda m: m["files"][0].update(sha256="AB" * 32), "bad-manifest"),
        (lambda m: m["files"][0].update(size=True), "bad-manifest"),
        (lambda m: m["files"][0].update(extra=1), "bad-manifest"),
        (lambda m: m.update(format="other"), "bad-manifest"),
        (lambda m: m.update(arch="z80"), "bad-manifest"),
        (lambda m: m.update(files=[]), "bad-manifest"),
        (lambda m: m.pop("version"), "bad-manifest"),
    ):
        mm = json.loads(json.dumps(m))
        change(mm)
        assert reason(join(mm, body)) == why, why
    assert reason(join(m, body, canonical=False)) == "bad-manifest"
    assert reason(join(m, body)[:12] + b"\xff" + join(m, body)[13:]) == "bad-manifest"


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "./x", "a//b",
                                  "x\x00y", "", ".hidden", "a\\b", "\u00e9", "x" * 65,
                                  "a/b/c/d/e", "a/" + "b" * 33, "a/"])
def test_path_escaping_the_slot(path):
    with pytest.raises(BundleError) as e:
        make({path: b"x"})
    assert e.value.reason == "bad-path"
    entry = {"offset": 0, "path": path, "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1}
    m = {"arch": "x64", "board": "unix-sim", "files": [entry], "format": "aiotkit-bundle",
         "version": "1.0.0"}
    assert reason(join(m, b"x")) == "bad-path"


def test_names_one_fat_file_or_a_file_and_folder():
    for files in ({"A.mpy": b"", "a.mpy": b""}, {"a": b"", "a/b.mpy": b""}):
        with pytest.raises(BundleError) as e:
            make(files)
        assert e.value.reason == "duplicate-path"
        m, body = split(make({f"f{i}": files[k] for i, k in enumerate(sorted(files))}))
        for f, name in zip(m["files"], sorted(files), strict=True):
            f["path"] = name
        assert reason(join(m, body)) == "duplicate-path"


def test_limits():
    with pytest.raises(BundleError) as e:
        make({f"f{i}": b"" for i in range(bundle.MAX_FILES + 1)})
    assert e.value.reason == "too-large"
    with pytest.raises(BundleError):
        make({}, )
    with pytest.raises(BundleError):
        make(version="1.x")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_damage_only_ever_raises_bundle_error(data):
    raw = bytearray(make())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 50))]
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            raw[i] = data.draw(st.sampled_from([0, 0x22, 0x2E, 0x2F, 0x5C, 0x7B, 0xFF]))
    try:
        b = read_bundle(bytes(raw))
    except BundleError as e:
        assert e.reason in bundle.REASONS
        return
    for f in b.files:  # accepted: then everything it says holds
        bundle.check_path(f.path)
        assert hashlib.sha256(b.read(f.path)).digest() == f.sha256


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_garbage(raw):
    with pytest.raises(BundleError):
        read_bundle(b"AIOB\x01\x00\x00\x00" + struct.pack("<I", len(raw)) + raw)
