"""Application bundles: the node's compiled files (.mpy) and a manifest, as one byte
string that an ``app`` image carries as its payload (ota/README.md, "Bundles").

Layout (little-endian)::

    0   magic      4 bytes  b"AIOB"
    4   format     u16      1
    6   flags      u16      0 (reserved; anything else is refused)
    8   mlen       u32      manifest length, 2..MAX_MANIFEST
    12  manifest   mlen     canonical JSON (sorted keys, no spaces, ASCII)
    12+mlen        data     the files' bytes, in manifest order, back to back

The manifest is ``{"arch", "board", "files": [{"offset", "path", "sha256", "size"}],
"format": "aiotkit-bundle", "version"}``, files sorted by path, offsets relative to the
data and contiguous from 0; the bundle ends exactly where the last file does. The same
files, version, board and arch always give the same bytes.

:func:`read_bundle` is a pure function over bytes: every bound is checked before use,
no length is trusted, every file's SHA-256 is checked, and every path is one the node
may write inside its slot folder (relative, no ``..``, no NUL, short, no names that only
differ by case: a FAT filesystem would merge them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiotkit.ota.errors import BundleError

Buffer = bytes | bytearray | memoryview

# --- the format, as one table ---------------------------------------------------------

MAGIC = b"AIOB"
FORMAT = 1
MANIFEST_FORMAT = "aiotkit-bundle"
HEADER = struct.Struct("<4sHHI")  # magic, format, flags, manifest length
HEADER_SIZE = HEADER.size  # 12
MAX_MANIFEST = 12 * 1024  # the node parses the manifest whole (96 files fit 96K)
MAX_FILES = 96
MAX_PATH = 64  # bytes, the whole relative path
MAX_DEPTH = 4  # folders + file name
MAX_FILE = 1 << 20  # one file; the slot bounds the whole

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")  # never '.', '..', '.x'
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
_VERSION = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,5}(\+\d{1,10})?\Z")
_BOARD = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}\Z")
# mpy-cross -march values, and "bytecode" for a build without native code
ARCHES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
          "xtensa", "xtensawin", "rv32imc", "rv64imc", "bytecode")
_MANIFEST_KEYS = {"arch", "board", "files", "format", "version"}
_FILE_KEYS = {"offset", "path", "sha256", "size"}

# Why a bundle is refused: the reason code of every BundleError (ota/README.md).
REASONS: dict[str, str] = {
    "truncated": "shorter than its header, its manifest or its files",
    "bad-magic": "not a bundle (magic)",
    "unsupported-format": "a bundle format or flags this reader does not know",
    "too-large": "a manifest, a file or a file count above its limit",
    "bad-manifest": "the manifest is not canonical JSON of the expected shape",
    "bad-path": "a path the node may not write (absolute, '..', NUL, too long, bad name)",
    "duplicate-path": "two files with the same path (ignoring case), or a file where "
                      "another needs a folder",
    "bad-offset": "files not back to back in manifest order, or not sorted by path",
    "trailing-data": "bytes after the last file",
    "hash-mismatch": "a file's bytes do not have the SHA-256 its manifest entry names",
}


def _reject(reason: str, message: str) -> BundleError:
    return BundleError(reason, message)  # tests check every reason used is in REASONS


@dataclass(frozen=True)
class BundleFile:
    path: str
    offset: int  # in the bundle (not the data area)
    size: int
    sha256: bytes


@dataclass(frozen=True)
class Bundle:
    """A bundle whose every bound and hash was checked. ``data`` is the bundle itself."""

    version: str
    board: str
    arch: str
    files: tuple[BundleFile, ...]
    data: memoryview

    def read(self, path: str) -> bytes:
        for f in self.files:
            if f.path == path:
                return bytes(self.data[f.offset:f.offset + f.size])
        raise KeyError(path)

    def contents(self) -> dict[str, bytes]:
        return {f.path: bytes(self.data[f.offset:f.offset + f.size]) for f in self.files}


def check_path(path: str) -> None:
    """Raise ``bad-path`` unless ``path`` is a relative path the node may write."""
    raw = path.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_PATH:
        raise _reject("bad-path", f"{path!r}: 1..{MAX_PATH} bytes")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise _reject("bad-path", f"{path!r}: more than {MAX_DEPTH} levels")
    for p in parts:  # '' (absolute, '//'), '.', '..', NUL, '\\', non-ASCII all fail here
        if not _COMPONENT.match(p):
            raise _reject("bad-path", f"{path!r}: component {p!r} is not "
                          "[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def make_bundle(files: Mapping[str, bytes], *, version: str, board: str,
                arch: str) -> bytes:
    """The bundle of ``files`` (relative path -> bytes); deterministic. Raises
    :class:`BundleError` for what :func:`read_bundle` would refuse."""
    if not _VERSION.match(version):
        raise _reject("bad-manifest", f"version {version!r}: MAJOR.MINOR.REVISION[+BUILD]")
    if not _BOARD.match(board):
        raise _reject("bad-manifest", f"board {board!r}: not a board name")
    if arch not in ARCHES:
        raise _reject("bad-manifest", f"arch {arch!r}: one of {', '.join(ARCHES)}")
    if not files:
        raise _reject("bad-manifest", "no files")
    if len(files) > MAX_FILES:
        raise _reject("too-large", f"{len(files)} files (at most {MAX_FILES})")
    entries: list[dict[str, Any]] = []
    offset = 0
    for path in sorted(files):
        check_path(path)
        body = bytes(files[path])
        if len(body) > MAX_FILE:
            raise _reject("too-large", f"{path}: {len(body)} bytes (at most {MAX_FILE})")
        entries.append({"offset": offset, "path": path,
                        "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})
        offset += len(body)
    _check_names([e["path"] for e in entries])
    manifest = _canonical({"arch": arch, "board": board, "files": entries,
                           "format": MANIFEST_FORMAT, "version": version})
    if len(manifest) > MAX_MANIFEST:
        raise _reject("too-large", f"manifest of {len(manifest)} bytes (at most "
                      f"{MAX_MANIFEST})")
    out = bytearray(HEADER.pack(MAGIC, FORMAT, 0, len(manifest)))
    out += manifest
    for path in sorted(files):
        out += files[path]
    return bytes(out)


def _check_names(paths: list[str]) -> None:
    """No two paths equal ignoring case; no file that is also a folder of another."""
    seen: set[str] = set()
    folders: set[str] = set()
    for p in paths:
        low = p.lower()
        if low in seen:
            raise _reject("duplicate-path", f"{p!r} twice (case ignored)")
        seen.add(low)
        parts = low.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = seen & folders
    if clash:
        raise _reject("duplicate-path", f"{min(clash)!r} is a file and a folder")


def _field(d: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    v = d[key]
    if type(v) is not kind:  # bool is not an int here
        raise _reject("bad-manifest", f"{what}: {key} is not a {kind.__name__}")
    return v


def read_bundle(data: Buffer) -> Bundle:
    """Parse and check ``data``; raise :class:`BundleError` on the first fault."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < HEADER_SIZE:
        raise _reject("truncated", f"{n} bytes: shorter than the {HEADER_SIZE}-byte header")
    magic, fmt, flags, mlen = HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise _reject("bad-magic", f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if fmt != FORMAT or flags:
        raise _reject("unsupported-format", f"format {fmt} flags {flags:#x} (this reader: "
                      f"format {FORMAT}, flags 0)")
    if mlen > MAX_MANIFEST:
        raise _reject("too-large", f"manifest of {mlen} bytes (at most {MAX_MANIFEST})")
    data_off = HEADER_SIZE + mlen
    if data_off > n:
        raise _reject("truncated", f"{n} bytes, but the manifest ends at {data_off}")
    raw = bytes(mv[HEADER_SIZE:data_off])
    try:
        m = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _reject("bad-manifest", f"not ASCII JSON: {e}") from None
    if not isinstance(m, dict) or set(m) != _MANIFEST_KEYS:
        raise _reject("bad-manifest", f"the manifest's keys must be {sorted(_MANIFEST_KEYS)}")
    if _canonical(m) != raw:
        raise _reject("bad-manifest", "not in canonical form (sorted keys, no spaces, ASCII)")
    if m["format"] != MANIFEST_FORMAT:
        raise _reject("bad-manifest", f"format {m['format']!r}, expected {MANIFEST_FORMAT!r}")
    version = _field(m, "version", str, "manifest")
    board = _field(m, "board", str, "manifest")
    arch = _field(m, "arch", str, "manifest")
    if not _VERSION.match(version) or not _BOARD.match(board) or arch not in ARCHES:
        raise _reject("bad-manifest", f"version {version!r}, board {board!r} or arch "
                      f"{arch!r} malformed")
    entries = _field(m, "files", list, "manifest")
    if not entries:
        raise _reject("bad-manifest", "no files")
    if len(entries) > MAX_FILES:
        raise _reject("too-large", f"{len(entries)} files (at most {MAX_FILES})")
    files = []
    expect = 0
    last = ""
    for i, entry in enumerate(entries):
        what = f"file {i}"
        if not isinstance(entry, dict) or set(entry) != _FILE_KEYS:
            raise _reject("bad-manifest", f"{what}: keys must be {sorted(_FILE_KEYS)}")
        path = _field(entry, "path", str, what)
        size = _field(entry, "size", int, what)
        offset = _field(entry, "offset", int, what)
        digest = _field(entry, "sha256", str, what)
        check_path(path)
        if not _SHA256_HEX.match(digest):
            raise _reject("bad-manifest", f"{path}: sha256 is not 64 lower-case hex digits")
        if not 0 <= size <= MAX_FILE:
            raise _reject("too-large", f"{path}: {size} bytes (0..{MAX_FILE})")
        if i and path <= last:
            raise _reject("bad-offset", f"{path!r} after {last!r}: files must be sorted by "
                          "path")
        if offset != expect:
            raise _reject("bad-offset", f"{path}: offset {offset}, expected {expect}")
        expect += size
        if data_off + expect > n:
            raise _reject("truncated", f"{path} ends at {data_off + expect}, the bundle "
                          f"at {n}")
        files.append(BundleFile(path, data_off + offset, size, bytes.fromhex(digest)))
        last = path
    _check_names([f.path for f in files])
    if data_off + expect != n:
        raise _reject("trailing-data", f"{n - data_off - expect} bytes after the last file")
    for f in files:
        got = hashlib.sha256(mv[f.offset:f.offset + f.size]).digest()
        if not hmac.compare_digest(got, f.sha256):
            raise _reject("hash-mismatch", f"{f.path}: SHA-256 differs from the manifest")
    return Bundle(version, board, arch, tuple(files), mv)
