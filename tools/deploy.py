"""Deploy the node firmware to a board over its serial port, and read what is on it.

The developer's path (``aiot firmware deploy | info``, issue 15 item 3), through the raw
REPL with mpremote's ``SerialTransport`` as a library. The board keeps a manifest,
``.aiot/manifest.json`` in its file system's root (the working directory at boot)::

    {"version": "0.9.0", "board": "esp32-devkitc", "arch": "xtensawin",
     "complete": true, "files": {"boot.mpy": "<sha256 hex>", "coap/msg.mpy": ...}}

A deploy hashes on the device every file the new build has and every file the manifest
lists (the manifest is a record, the device's bytes are the truth), writes each changed
file to ``PATH.tmp`` in base64 chunks, hashes the temp file on the device (SHA-256,
streamed through a 512-byte buffer), and only if it matches renames it into place
(remove + rename where a rename over a file fails) and rewrites the manifest
(temp file + rename) with that file's entry. A cut anywhere leaves every file either
old or new and the manifest true for the files it lists, so a rerun skips the files
already verified: an interrupted deploy resumes. Files the old manifest lists and the
new build lacks are removed; files it never listed (``config.json``, ``slots.json``,
``models.json``, the OTA slots) are never touched.

``info`` runs one read-only program on the board that reports the manifest, the files'
actual hashes, ``slots.json``, ``models.json`` and a summary of ``config.json`` built on
the device: endpoint, gateway, board and the *names* of the OSCORE fields present. No
secret crosses the serial line.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiotkit.boards.errors import AiotError, UsageError

MANIFEST = ".aiot/manifest.json"  # as _AM in _HELPERS
CHUNK = 4096  # raw bytes per raw-REPL program (base64 in a bytes literal: ~3x that in RAM)
RETRIES = 3  # writes of one file whose device-side hash does not match
_RAW_TIMEOUT = 10.0  # s to get into the raw REPL / between bytes of a reply


class DeployError(AiotError):
    """The deploy or the read-out failed (one line: what and what to do; exit 1)."""


# The device side: helpers defined once per session (MicroPython; names start with _a
# so they do not collide with a user's REPL names).
_HELPERS = """\
import os, json, hashlib, binascii
_AM = '.aiot/manifest.json'
def _ah(p):
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
def _ad(p):
    q = ''
    for s in p.split('/')[:-1]:
        q += s
        try:
            os.mkdir(q)
        except OSError:
            pass
        q += '/'
def _ar(a, b):
    try:
        os.rename(a, b)
    except OSError:
        os.remove(b)
        os.rename(a, b)
def _aj(n):
    try:
        with open(n) as f:
            return json.load(f)
    except OSError:
        return None
    except ValueError:
        return 'invalid'
def _al():
    for n in (_AM, _AM + '.tmp'):
        try:
            with open(n) as f:
                m = json.load(f)
            if isinstance(m, dict) and isinstance(m.get('files'), dict):
                return m
        except (OSError, ValueError):
            pass
    return {'files': {}}
def _as():
    _ad(_AM)
    with open(_AM + '.tmp', 'w') as f:
        json.dump(_am, f)
    _ar(_AM + '.tmp', _AM)
def _aw(p, d, m):
    if m == 'wb':
        _ad(p)
    with open(p + '.tmp', m) as f:
        f.write(binascii.a2b_base64(d))
def _ac(p, w):
    t = p + '.tmp'
    g = _ah(t)
    if g != w:
        os.remove(t)
        print('BAD', p, g)
        return
    _ar(t, p)
    _am['files'][p] = w
    _as()
    print('OK', p)
def _ax(p):
    try:
        os.remove(p)
    except OSError:
        pass
    _am['files'].pop(p, None)
    _as()
    print('RM', p)
_am = _al()
"""

_SCAN = """\
_r = {}
for _p in set(PATHS) | set(_am['files']):
    if CLEANUP:
        try:
            os.remove(_p + '.tmp')
        except OSError:
            pass
    try:
        _r[_p] = _ah(_p)
    except OSError:
        _r[_p] = None
print(json.dumps({'m': _am, 'h': _r}))
del _r, _p
"""

_INFO = """\
_c = _aj('config.json')
if isinstance(_c, dict):
    _c = {'endpoint': _c.get('endpoint'), 'gateway': _c.get('gateway'),
          'bootstrap': _c.get('bootstrap'), 'board': _c.get('board'),
          'oscore': sorted(_c['oscore']) if isinstance(_c.get('oscore'), dict) else None,
          'bootstrap_oscore': sorted(_c['bootstrap_oscore'])
          if isinstance(_c.get('bootstrap_oscore'), dict) else None,
          'wifi': _c['wifi'].get('ssid') if isinstance(_c.get('wifi'), dict) else None}
_r = {}
for _p in _am['files']:
    try:
        _r[_p] = _ah(_p)
    except OSError:
        _r[_p] = None
print(json.dumps({'m': _am, 'h': _r, 'slots': _aj('slots.json'),
                  'models': _aj('models.json'), 'config': _c}))
del _c, _r
"""


def _check_port(port: str) -> str:
    """The device path behind ``port`` (a symlink such as /dev/serial/by-id/... resolved,
    so mpremote reads a pty without polling); UsageError/DeployError for the usual
    field failures, each with what to do."""
    if not port:
        raise UsageError("no port: give --port (ls /dev/ttyACM* /dev/ttyUSB*)")
    if not os.path.exists(port):
        raise UsageError(f"{port}: no such port (board unplugged? ls /dev/ttyACM* "
                         f"/dev/ttyUSB*)")
    real = os.path.realpath(port)
    import serial

    try:
        probe = serial.Serial(real, exclusive=True, timeout=0)
    except (serial.SerialException, OSError) as e:
        no = getattr(e, "errno", None)
        if no in (errno.EACCES, errno.EPERM):
            raise DeployError(f"{port}: permission denied: add yourself to the 'dialout' "
                              f"group (sudo usermod -aG dialout $USER, then log in "
                              f"again)") from None
        if no in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
            raise DeployError(f"{port}: port busy: another program has it open "
                              f"(mpremote, a serial monitor, aiot provision); close "
                              f"it") from None
        raise DeployError(f"{port}: cannot open: {e}") from None
    probe.close()
    return real


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` inside mpremote's serial transport (see ``Board.__enter__``)."""


class Board:
    """One raw-REPL session with a board on ``port`` (a context manager)."""

    def __init__(self, port: str, timeout: float = _RAW_TIMEOUT, soft_reset: bool = True):
        self.port = port
        self.timeout = timeout
        self.soft_reset = soft_reset
        self._t: Any = None

    def __enter__(self) -> Self:
        try:
            from mpremote import transport_serial  # type: ignore[import-untyped]
            from mpremote.transport import TransportError  # type: ignore[import-untyped]
            from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]
        except ImportError:
            raise DeployError("mpremote is not installed: pip install "
                              "'aiotkit[field]'") from None
        real = _check_port(self.port)
        try:  # a read timeout, or a board that goes silent blocks a pty read forever
            self._t = SerialTransport(real, timeout=1)
        except TransportError as e:
            raise DeployError(f"{self.port}: {e}") from None
        # mpremote waits up to 10 s for a prompt or a reply byte: ours is --timeout
        wait = self._t.read_until

        def read_until(n: int, ending: bytes, timeout: float | None = 10, **kw: Any) -> Any:
            return wait(n, ending, timeout=min(timeout or self.timeout, self.timeout), **kw)

        self._t.read_until = read_until
        # mpremote's transport prints what it got instead of a banner or prompt: not ours
        # to show. Silenced in its module, not by redirecting sys.stdout, which is one for
        # every thread (aiot sim --serial deploys in threads while its loop prints).
        transport_serial.print = _quiet
        try:
            try:
                self._t.enter_raw_repl(soft_reset=self.soft_reset,
                                       timeout_overall=self.timeout)
            except (TransportError, OSError):
                raise DeployError(
                    f"{self.port}: board not responding: no raw REPL in {self.timeout:g} "
                    f"s (no MicroPython on it, a program that ignores Ctrl-C, or the "
                    f"wrong port)") from None
            self.exec(_HELPERS)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._t is not None and exc[0] is None:
            try:
                self._t.exit_raw_repl()
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self._t is not None:
            try:
                self._t.close()
            except OSError:
                pass
            self._t = None

    def exec(self, code: str) -> str:
        """Run ``code`` on the board; its stdout. DeployError if the board raised or
        stopped answering."""
        from mpremote.transport import TransportError

        try:
            out, err = self._t.exec_raw(code, timeout=self.timeout)
        except (TransportError, OSError) as e:
            raise DeployError(f"{self.port}: board not responding ({e}): check the "
                              f"cable and power, then rerun (a deploy resumes)") from None
        if err:
            last = err.decode(errors="replace").strip().splitlines()
            raise DeployError(f"{self.port}: the board raised "
                              f"{last[-1] if last else 'an error'}")
        return str(out.decode(errors="replace"))

    def json(self, code: str) -> Any:
        out = self.exec(code).strip()
        try:
            return json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            raise DeployError(f"{self.port}: garbled reply from the board; rerun") from None


@dataclass
class Plan:
    """What a deploy will do: files to write (new or changed), to remove (deployed
    before, gone from the build), and unchanged ones."""

    write: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    old: dict[str, Any] = field(default_factory=dict)  # the manifest on the board
    device: dict[str, str | None] = field(default_factory=dict)  # actual hashes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan(board: Board, files: dict[str, bytes], cleanup: bool = True) -> Plan:
    """Compare ``files`` with the board's bytes (hashed on the board); with ``cleanup``
    remove temp files a cut deploy left."""
    reply = board.json(_SCAN.replace("PATHS", repr(sorted(files)))
                       .replace("CLEANUP", repr(cleanup)))
    old, dev = reply.get("m") or {}, reply.get("h") or {}
    p = Plan(old=old, device=dev)
    for path, body in files.items():
        (p.same if dev.get(path) == sha256(body) else p.write).append(path)
    p.remove = sorted(set(old.get("files", {})) - set(files))
    return p


Progress = Callable[[str], None]


def _writes(path: str, body: bytes, chunk: int) -> list[str]:
    """Lines of device code writing ``body`` to ``path``.tmp (first chunk creates it)."""
    if not body:
        return [f"_aw({path!r}, b'', 'wb')"]
    return [f"_aw({path!r}, {base64.b64encode(body[i:i + chunk])!r}, "
            f"{'wb' if i == 0 else 'ab'!r})" for i in range(0, len(body), chunk)]


def deploy(board: Board, files: dict[str, bytes], meta: dict[str, Any],
           progress: Progress = print, dry_run: bool = False, chunk: int = CHUNK,
           after_file: Callable[[str], None] | None = None) -> Plan:
    """Bring the board to ``files`` (relative path -> bytes) and write ``meta``
    (version, board, arch) into its manifest; returns the plan it carried out."""
    p = plan(board, files, cleanup=not dry_run)
    if dry_run:
        return p
    todo = list(p.write)
    if todo or p.remove:  # until the end, the manifest says the deploy is unfinished
        board.exec("_am['complete'] = False\n_as()\n")
    tries = dict.fromkeys(todo, 0)
    while todo:
        # several small files per program, a large one over several: ~chunk bytes each
        batch: list[str] = []
        size = 0
        while todo and (not batch or size + len(files[todo[0]]) <= chunk):
            batch.append(todo.pop(0))
            size += len(files[batch[-1]])
        lines: list[str] = []
        for path in batch:
            lines += _writes(path, files[path], chunk)
            lines.append(f"_ac({path!r}, {sha256(files[path])!r})")
        # one program per chunk-sized piece: the last one commits
        programs: list[list[str]] = [[]]
        for line in lines:
            if programs[-1] and len(line) + sum(map(len, programs[-1])) > chunk * 4 // 3 + 200:
                programs.append([])
            programs[-1].append(line)
        results: dict[str, str] = {}
        for prog in programs:
            for line in board.exec("\n".join(prog) + "\n").splitlines():
                word, _, rest = line.strip().partition(" ")
                if word in ("OK", "BAD"):
                    results[rest.split(" ")[0]] = word
        for path in batch:
            r = results.get(path)
            if r == "OK":
                progress(f"  wrote {path} ({len(files[path])} bytes, sha256 "
                         f"{sha256(files[path])[:16]}, verified on the board)")
                if after_file:
                    after_file(path)
                continue
            tries[path] += 1
            if r is None:
                raise DeployError(f"{board.port}: garbled reply while writing {path}; "
                                  f"rerun (a deploy resumes)")
            if tries[path] >= RETRIES:
                raise DeployError(f"{board.port}: {path}: SHA-256 on the board differs "
                                  f"from the build {RETRIES} times: the line corrupts "
                                  f"bytes (cable, baud rate?); nothing was renamed")
            progress(f"  {path}: SHA-256 on the board differs (garbled in transfer); "
                     f"not renamed, writing it again")
            todo.insert(0, path)
    for path in p.remove:
        board.exec(f"_ax({path!r})\n")
        progress(f"  removed {path} (deployed before, not in this build)")
    final = {**meta, "complete": True,
             "files": {k: sha256(v) for k, v in sorted(files.items())}}
    if p.write or p.remove or p.old != final:
        board.exec(f"_am = json.loads({json.dumps(final)!r})\n_as()\n")
    return p


def info(board: Board) -> dict[str, Any]:
    """What is on the board: manifest, actual hashes, slots, models, config summary."""
    return board.json(_INFO)  # type: ignore[no-any-return]
