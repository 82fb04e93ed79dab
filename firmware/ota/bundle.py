# The node's unpacker of an application bundle (issue 14, ota/README.md "Bundles"): the
# payload of a verified `app` image, written file by file into a slot folder.
#
# Format (ota/bundle.py on the gateway makes it): b"AIOB", u16 format 1, u16 flags 0,
# u32 manifest length (little-endian), the manifest (JSON: arch, board, files [{offset,
# path, sha256, size}] sorted by path and back to back, format "aiotkit-bundle",
# version), then the files' bytes. Nothing in it is trusted even though the image's
# signature covers it: every length is checked against the payload's, every path must be
# relative and plain (no "..", no absolute path, no NUL, [A-Za-z0-9_][A-Za-z0-9_.-]*
# components, 64 bytes, 4 levels), and each file's SHA-256 is checked as it is written.
#
# Atomic per slot: each file is written under a temporary name (".NAME.new", which no
# bundle path can be) and only when every file has checked are they renamed into place;
# then any other file in the slot folder (an older version's, a temp file of a power
# cut) is removed. On a refusal every temp file written is removed and the slot's old
# files are left as they were. Nothing outside `dest` is written: a folder on the way
# must be a real folder (a symlink or a file there is refused).
#
# RAM: the manifest (at most 12 KiB, 96 files) and its parsed list, plus the caller's buffer that
# every file streams through.
from micropython import const
import gc
import hashlib
import os
import struct

_DEBUG = const(False)

_MAGIC = b"AIOB"
_FORMAT = const(1)
_HDR = const(12)  # magic, u16 format, u16 flags, u32 manifest length
_MANIFEST_MAX = const(12288)
_FILES_MAX = const(96)
_PATH_MAX = const(64)
_DEPTH_MAX = const(4)
_NAME_MAX = const(32)
_S_IFDIR = const(0x4000)
_S_IFREG = const(0x8000)

# reason -> LwM2M Firmware Update /5/0/5 Update Result (5 integrity check failure,
# 2 not enough flash, 6 unsupported package type, 7 invalid URI: a bad path is an
# integrity failure too)
REASONS = {
    "io": 5,  # the payload cannot be read, or the slot folder cannot be written
    "truncated": 5,  # the payload ends inside the bundle
    "magic": 6,  # not a bundle
    "format": 6,  # a format version or flags this node does not know
    "manifest": 5,  # the manifest is not the JSON object it must be
    "path": 5,  # a path the node may not write
    "size": 2,  # the manifest or the file count above the node's limits
    "layout": 5,  # files not sorted and back to back, or bytes after the last one
    "hash": 5,  # a file's bytes differ from its SHA-256
    "board": 6,  # the bundle is for another board
    "arch": 6,  # compiled for another arch
}


class BundleError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    @property
    def result(self):
        return REASONS.get(self.reason, 5)


class Manifest:
    __slots__ = ("version", "board", "arch", "files", "size")

    def __init__(self, version, board, arch, files, size):
        self.version = version
        self.board = board
        self.arch = arch
        self.files = files  # number of files
        self.size = size  # bytes of file data


def check_path(p):
    # raise BundleError("path") unless p is a relative path the node may write
    if not isinstance(p, str) or not 0 < len(p) <= _PATH_MAX:
        raise BundleError("path", "length")
    n = 0
    for part in p.split("/"):
        n += 1
        if n > _DEPTH_MAX or not 0 < len(part) <= _NAME_MAX:
            raise BundleError("path", p)
        for i in range(len(part)):
            c = ord(part[i])
            ok = (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95
                  or (i and (c == 46 or c == 45)))
            if not ok:
                raise BundleError("path", p)


def _read_exact(f, n):
    b = f.read(n)
    if b is None or len(b) != n:
        raise BundleError("truncated", "payload ends early")
    return b


def _manifest(f, length):
    # (version, board, arch, entries); entries are (path, size, sha256 bytes)
    if length < _HDR:
        raise BundleError("truncated", "header")
    h = _read_exact(f, _HDR)
    if h[:4] != _MAGIC:
        raise BundleError("magic")
    fmt, flags, mlen = struct.unpack_from("<HHI", h, 4)
    if fmt != _FORMAT or flags:
        raise BundleError("format", "%d/%d" % (fmt, flags))
    if mlen > _MANIFEST_MAX:
        raise BundleError("size", "manifest %d" % mlen)
    if _HDR + mlen > length:
        raise BundleError("truncated", "manifest")
    import json
    from binascii import unhexlify

    try:
        m = json.loads(_read_exact(f, mlen))
    except ValueError:
        raise BundleError("manifest", "not JSON")
    if not isinstance(m, dict) or m.get("format") != "aiotkit-bundle":
        raise BundleError("manifest", "format")
    version = m.get("version")
    board = m.get("board")
    arch = m.get("arch")
    files = m.get("files")
    if (not isinstance(version, str) or not isinstance(board, str)
            or not isinstance(arch, str) or not isinstance(files, list) or not files):
        raise BundleError("manifest", "fields")
    if len(files) > _FILES_MAX:
        raise BundleError("size", "%d files" % len(files))
    m = None
    gc.collect()
    out = []
    seen = set()
    folders = set()
    expect = 0
    last = ""
    for e in files:
        if not isinstance(e, dict):
            raise BundleError("manifest", "entry")
        p = e.get("path")
        size = e.get("size")
        off = e.get("offset")
        sha = e.get("sha256")
        check_path(p)
        if (type(size) is not int or type(off) is not int or size < 0
                or not isinstance(sha, str) or len(sha) != 64):
            raise BundleError("manifest", p)
        try:
            digest = unhexlify(sha)
        except ValueError:
            raise BundleError("manifest", p)
        if (out and p <= last) or off != expect:
            raise BundleError("layout", p)
        low = p.lower()
        if low in seen:
            raise BundleError("path", "twice: " + p)
        seen.add(low)
        i = low.find("/")
        while i > 0:
            folders.add(low[:i])
            i = low.find("/", i + 1)
        expect += size
        last = p
        out.append((p, size, digest))
    for d in folders:
        if d in seen:
            raise BundleError("path", "file and folder: " + d)
    if _HDR + mlen + expect != length:
        raise BundleError("truncated" if _HDR + mlen + expect > length else "layout",
                          "files end at %d, payload %d" % (_HDR + mlen + expect, length))
    return version, board, arch, out


def _kind(folder, name):
    # the type ilistdir gives name in folder (0 if absent): it does not follow symlinks
    for e in os.ilistdir(folder):
        if e[0] == name:
            return e[1]
    return 0


def _mkdirs(dest, path, made):
    # make the folders of path under dest; each must be a real folder
    parent = dest
    i = path.find("/")
    while i > 0:
        sub = path[:i]
        if sub not in made:
            name = sub[sub.rfind("/") + 1:]
            k = _kind(parent, name)
            if k == 0:
                os.mkdir(dest + "/" + sub)
            elif k != _S_IFDIR:
                raise BundleError("io", "not a folder: " + sub)
            made.add(sub)
        parent = dest + "/" + sub
        i = path.find("/", i + 1)


def _temp(dest, path):
    i = path.rfind("/") + 1
    return dest + "/" + path[:i] + "." + path[i:] + ".new"


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def _prune(folder, rel, keep, depth):
    # remove the files under folder that the bundle does not hold (folders are kept)
    if depth > _DEPTH_MAX:
        return
    for e in list(os.ilistdir(folder)):
        name = e[0]
        p = rel + name
        if e[1] == _S_IFDIR:
            _prune(folder + "/" + name, p + "/", keep, depth + 1)
        elif e[1] == _S_IFREG and p not in keep:
            os.remove(folder + "/" + name)


def unpack(src, dest, buf, offset=0, length=None, board=None, arch=None):
    """Unpack the bundle at ``offset`` (``length`` bytes; default: to the end) of the file
    ``src`` into the folder ``dest`` (made if missing), streaming through ``buf``.
    Returns a Manifest; raises BundleError with a reason from REASONS."""
    mv = memoryview(buf)
    if len(mv) < 64:
        raise ValueError("buffer")
    try:
        f = open(src, "rb")
    except OSError:
        raise BundleError("io", "cannot open")
    entries = None
    written = 0  # temp files made: removed on any refusal
    try:
        if length is None:
            length = f.seek(0, 2) - offset
        f.seek(offset)
        version, bboard, barch, entries = _manifest(f, length)
        if board is not None and bboard != board:
            raise BundleError("board", bboard)
        if arch is not None and barch != arch:
            raise BundleError("arch", barch)
        try:  # the slot folder is the caller's: made if missing, must be a folder
            os.mkdir(dest)
        except OSError:
            pass
        try:
            if not os.stat(dest)[0] & _S_IFDIR:
                raise OSError
        except OSError:
            raise BundleError("io", "slot folder")
        made = set()
        total = 0
        for p, size, digest in entries:
            try:
                _mkdirs(dest, p, made)
                tmp = _temp(dest, p)
                out = open(tmp, "wb")
            except OSError:
                raise BundleError("io", p)
            written += 1
            h = hashlib.sha256()
            left = size
            try:
                while left:
                    n = f.readinto(mv[:left] if left < len(mv) else mv)
                    if not n:
                        raise BundleError("truncated", p)
                    h.update(mv[:n])
                    if out.write(mv[:n]) != n:
                        raise BundleError("io", p)
                    left -= n
            except OSError:
                raise BundleError("io", p)
            finally:
                out.close()
            if h.digest() != digest:
                raise BundleError("hash", p)
            total += size
            if _DEBUG:
                print("bundle: checked", p, size)
        # every file checked: into place
        for p, size, digest in entries:
            final = dest + "/" + p
            tmp = _temp(dest, p)
            try:
                os.rename(tmp, final)
            except OSError:  # FAT does not rename over a file
                try:
                    os.remove(final)
                    os.rename(tmp, final)
                except OSError:
                    raise BundleError("io", p)
        written = 0
        keep = set(p for p, size, digest in entries)
        entries = None
        gc.collect()
        _prune(dest, "", keep, 1)
        return Manifest(version, bboard, barch, len(keep), total)
    finally:
        f.close()
        for i in range(written):
            _remove(_temp(dest, entries[i][0]))
