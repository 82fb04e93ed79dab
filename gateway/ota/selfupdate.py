"""Gateway self-update (issue 14, item 7): two install slots behind a ``current`` link,
switch, health check, then commit or roll back. ota/README.md "Gateway self-update".

Layout of a root (production: ``/opt/aiotkit``)::

    slots/a/aiotkit/...   one slot: the aiotkit package tree of a gateway image
    slots/b/aiotkit/...   the other slot
    current -> slots/a    what the daemon runs (PYTHONPATH=ROOT/current)
    state.json            the state below, written to a temp file and renamed

A slot holds source only; the Python environment (aiocoap, aiomqtt, ...) is the one
running this code. ``slots/X/aiotkit/__init__.py`` makes the tree a regular package, so
with the slot on PYTHONPATH it shadows any aiotkit installed in that environment.

The state (``state.json``)::

    confirmed  "a" | "b"                the slot that passed its health check
    floor      int                      lowest security counter accepted (rises at commit)
    phase      "idle" | "installing" | "trying"
    target     "a" | "b" | null         the slot being installed / tried
    result     "installed" | "committed" | "rolled-back" | "interrupted" | ""
    reason     str                      why the last update failed (a code: REASONS)
    detail     str                      the failure in words
    slots      {"a": SLOT | null, "b": ...}   version, security counter, sha256 of the image

Crash behaviour: every step is recorded before it is done, so :meth:`SlotRoot.recover`
(run first by every update, and by ``aiot gateway slots --recover`` at boot) can finish
any interrupted update: ``installing`` (the idle slot half written) drops the idle slot;
``trying`` (switched, or about to switch, but not committed) points ``current`` back at
the confirmed slot. An interrupted update is never resumed: it is rolled back, and the
operator runs it again. The running (confirmed) slot is never written.

Gateway images: payload type ``gateway``, board ``gateway`` (one board name for every
gateway: the payload is Python source). The payload is a bundle (ota/bundle.py) whose
files are bundles: one per folder of the package, named by its dotted path
(``gateway.lwm2m``), each holding that folder's files. Nesting keeps every part inside
the bundle limits the nodes need (96 files, 1 MiB each, 4 levels) without a second
format; every file's SHA-256 is checked twice (inner and outer manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from aiotkit.ota import bundle, image
from aiotkit.ota.errors import BundleError
from aiotkit.ota.keys import KeySet, write_atomic

from ..errors import GatewayError

__all__ = ["BOARD", "PAYLOAD_TYPE", "REASONS", "HealthCheckFailed", "Outcome",
           "SelfUpdateError", "SlotRoot", "State", "make_gateway_bundle", "package_tree",
           "read_gateway_bundle"]

BOARD = "gateway"
PAYLOAD_TYPE = "gateway"
ARCH = "bytecode"  # bundle.ARCHES: no native code
SLOTS = ("a", "b")
MAX_IMAGE = 64 << 20  # the "slot size" a gateway image is verified against
STATE_FILE = "state.json"
CURRENT = "current"
PACKAGE = "aiotkit"
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_INIT = (b'"""aiotkit, installed in a self-update slot (gateway/ota/selfupdate.py): this\n'
         b'file makes the tree a regular package that shadows an installed aiotkit."""\n')

Slot = Literal["a", "b"]
Phase = Literal["idle", "installing", "trying"]

# Why an update did not commit: the ``reason`` of the state and of HealthCheckFailed.
REASONS: dict[str, str] = {
    "interrupted": "the update tool stopped (crash, power cut, kill) before it committed",
    "daemon-exited": "the new slot's daemon exited before it was ready",
    "daemon-not-ready": "the new slot's daemon did not log 'aiot gateway ready' in time",
    "rest-unreachable": "the new daemon's REST API did not answer",
    "keys-refused": "the new daemon's key API refused the health-check endpoint's keys",
    "registration-refused": "the new daemon did not accept a LwM2M Register",
    "registration-timeout": "no answer to the LwM2M Register in time",
    "deregistration-refused": "the new daemon did not accept the De-register",
    "uplink-unreachable": "the new daemon did not connect to the MQTT broker in time",
    "unclean-stop": "the new daemon did not stop cleanly on SIGTERM",
    "deadline": "the health check did not finish within its deadline",
}


class SelfUpdateError(GatewayError):
    """The update cannot be done (root unusable, state unreadable, image not a gateway
    bundle); nothing was switched."""


class HealthCheckFailed(GatewayError):
    """The new slot failed its health check: ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"health check failed ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


# --- gateway images: the package as nested bundles --------------------------------------


def package_tree(source: Path) -> dict[str, dict[str, bytes]]:
    """The aiotkit package of the checkout at ``source``: dotted folder name (``gateway``,
    ``gateway.lwm2m``) -> {file name: bytes}. The top-level folders are those
    pyproject.toml maps to ``aiotkit.*``; caches and hidden files are left out."""
    try:
        meta = tomllib.loads((source / "pyproject.toml").read_text())
        mapping = meta["tool"]["setuptools"]["package-dir"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise SelfUpdateError(f"{source}: not an aiotkit checkout (pyproject.toml "
                              f"[tool.setuptools.package-dir]): {e}") from None
    tree: dict[str, dict[str, bytes]] = {}
    for package, folder in sorted(mapping.items()):
        top = package.removeprefix(PACKAGE + ".")
        for here, dirs, files in os.walk(source / folder):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            rel = Path(here).relative_to(source / folder).parts
            body = {f: (Path(here) / f).read_bytes() for f in sorted(files)
                    if not f.startswith(".") and not f.endswith(_SKIP_SUFFIXES)}
            if body:
                tree[".".join((top, *rel))] = body
    if not tree:
        raise SelfUpdateError(f"{source}: no package files")
    return tree


def make_gateway_bundle(tree: Mapping[str, Mapping[str, bytes]], version: str) -> bytes:
    """The payload of a gateway image: a bundle of one bundle per folder."""
    inner = {name: bundle.make_bundle(files, version=version, board=BOARD, arch=ARCH)
             for name, files in tree.items()}
    return bundle.make_bundle(inner, version=version, board=BOARD, arch=ARCH)


def read_gateway_bundle(data: image.Buffer) -> dict[str, bundle.Bundle]:
    """Check a gateway payload (every bound and hash, outer and inner); the folder
    bundles by dotted name. Raises :class:`BundleError`."""
    outer = bundle.read_bundle(data)
    out: dict[str, bundle.Bundle] = {}
    for f in outer.files:
        bundle.check_path(f.path.replace(".", "/"))  # every component a valid name
        inner = bundle.read_bundle(outer.data[f.offset:f.offset + f.size])
        for b in (outer, inner):
            if (b.board, b.arch, b.version) != (BOARD, ARCH, outer.version):
                raise BundleError("bad-manifest", f"{f.path}: board {b.board!r}, arch "
                                  f"{b.arch!r}, version {b.version!r} (a gateway bundle is "
                                  f"{BOARD}/{ARCH}, one version)")
        out[f.path] = inner
    return out


# --- the slot state ---------------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    version: str
    security_counter: int
    sha256: str  # of the image
    installed_at: float


@dataclass(frozen=True)
class State:
    confirmed: Slot | None = None
    floor: int = 0
    phase: Phase = "idle"
    target: Slot | None = None
    result: str = ""
    reason: str = ""
    detail: str = ""
    slots: dict[str, SlotInfo | None] = field(
        default_factory=lambda: {s: None for s in SLOTS})

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> State:
        try:
            d = json.loads(raw)
            slots = {s: None if d["slots"][s] is None else SlotInfo(**d["slots"][s])
                     for s in SLOTS}
            st = cls(confirmed=d["confirmed"], floor=d["floor"], phase=d["phase"],
                     target=d["target"], result=d["result"], reason=d["reason"],
                     detail=d["detail"], slots=slots)
        except (ValueError, KeyError, TypeError) as e:
            raise SelfUpdateError(f"{where}: not a self-update state ({e})") from None
        if (st.confirmed not in (*SLOTS, None) or st.target not in (*SLOTS, None)
                or st.phase not in ("idle", "installing", "trying")
                or type(st.floor) is not int or st.floor < 0):
            raise SelfUpdateError(f"{where}: not a self-update state (bad field)")
        return st


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class Outcome:
    """What :meth:`SlotRoot.update` did: ``committed`` or ``rolled-back`` (reason)."""

    result: str
    slot: Slot
    version: str
    security_counter: int
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0


Check = Callable[[Path], None]  # the health check of the slot at ROOT/current; raises
Step = Callable[[str], None]  # told each step as it is recorded (tests inject crashes)


def _no_step(name: str) -> None:
    pass


class SlotRoot:
    """The self-update root: two slots, the ``current`` link and ``state.json``."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.state_file = root / STATE_FILE
        self.current = root / CURRENT
        self._clock = clock

    def slot_dir(self, slot: Slot) -> Path:
        return self.root / "slots" / slot

    # -- state and link ------------------------------------------------------------------

    def state(self) -> State:
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return State()
        return State.from_json(raw, str(self.state_file))

    def _save(self, st: State) -> None:
        write_atomic(self.state_file, st.to_json(), mode=0o644)
        _fsync_dir(self.root)

    def linked(self) -> Slot | None:
        """The slot ``current`` points at (None: no link)."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        name = Path(target).name
        if Path(target).parent != Path("slots") or name not in SLOTS:
            raise SelfUpdateError(f"{self.current} -> {target}: not a slot")
        return cast(Slot, name)

    def _switch(self, slot: Slot) -> None:
        """Point ``current`` at ``slot`` atomically: a new link, renamed over the old."""
        tmp = self.root / f".{CURRENT}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, self.current)
        _fsync_dir(self.root)

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> str:
        """Finish an interrupted update (module docstring); what was done, in words
        ("" if there was nothing to do)."""
        st = self.state()
        confirmed = st.confirmed
        if confirmed is None:
            return ""
        said = ""
        if st.phase == "installing" and st.target is not None:
            _remove(self.slot_dir(st.target))
            _remove(self._partial(st.target))
            st = replace(st, phase="idle", target=None, result="interrupted",
                         reason="interrupted", detail=f"stopped while slot {st.target} was "
                         "written; the slot was dropped",
                         slots={**st.slots, st.target: None})
            said = st.detail
        elif st.phase == "trying":
            self._switch(confirmed)
            st = replace(st, phase="idle", target=None, result="rolled-back",
                         reason="interrupted", detail=f"stopped between the switch to slot "
                         f"{st.target} and the commit; current is slot {st.confirmed} again")
            said = st.detail
        if self.linked() != confirmed:
            self._switch(confirmed)
            said = said or f"current pointed elsewhere; back to slot {confirmed}"
        if said:
            self._save(st)
        return said

    # -- install and update --------------------------------------------------------------

    def verify(self, data: bytes, trusted: KeySet, floor: int) -> image.VerifiedImage:
        """The image as the gateway accepts it (ota/image.py), and its payload as a
        gateway bundle; raises ImageRejected / BundleError, touching nothing."""
        v = image.verify(data, trusted, floor=floor, slot_size=MAX_IMAGE, board=BOARD,
                         payload_type=PAYLOAD_TYPE)
        read_gateway_bundle(v.payload)
        return v

    def install_first(self, data: bytes, trusted: KeySet) -> Outcome:
        """The first install into an empty root: slot a, confirmed without a check
        (there is nothing to roll back to)."""
        if self.state().confirmed is not None or self.current.is_symlink():
            raise SelfUpdateError(f"{self.root} has an install already: use update")
        v = self.verify(data, trusted, floor=0)
        self.root.mkdir(parents=True, exist_ok=True)
        info = self._unpack("a", v, data)
        self._switch("a")
        st = State(confirmed="a", floor=v.security_counter, result="installed",
                   slots={"a": info, "b": None})
        self._save(st)
        return Outcome("installed", "a", info.version, v.security_counter)

    def update(self, data: bytes, trusted: KeySet, check: Check,
               on_step: Step = _no_step) -> Outcome:
        """Verify ``data``, unpack it into the idle slot, switch, run ``check``, then
        commit or roll back. A refused image raises before anything is written."""
        t0 = time.monotonic()
        self.recover()
        st = self.state()
        if st.confirmed is None:
            raise SelfUpdateError(f"{self.root}: nothing installed yet (aiot gateway "
                                  "install)")
        v = self.verify(data, trusted, floor=st.floor)
        running = st.confirmed
        target = other(running)
        st = replace(st, phase="installing", target=target)
        self._save(st)
        on_step("installing")
        info = self._unpack(target, v, data)
        on_step("unpacked")
        st = replace(st, phase="trying", slots={**st.slots, target: info})
        self._save(st)
        on_step("trying")
        self._switch(target)
        on_step("switched")
        try:
            check(self.current)
        except HealthCheckFailed as e:
            self._roll_back(st, e.reason, e.detail)
            return Outcome("rolled-back", running, info.version, v.security_counter,
                           e.reason, e.detail, time.monotonic() - t0)
        except BaseException as e:  # Ctrl-C, a bug: never leave the new slot current
            self._roll_back(st, "interrupted", f"{type(e).__name__}: {e}")
            raise
        st = replace(st, confirmed=target, floor=max(st.floor, v.security_counter),
                     phase="idle", target=None, result="committed", reason="", detail="")
        self._save(st)
        on_step("committed")
        return Outcome("committed", target, info.version, v.security_counter,
                       seconds=time.monotonic() - t0)

    def _roll_back(self, st: State, reason: str, detail: str) -> None:
        assert st.confirmed is not None
        self._switch(st.confirmed)
        self._save(replace(st, phase="idle", target=None, result="rolled-back",
                           reason=reason, detail=detail))

    def _partial(self, slot: Slot) -> Path:
        return self.root / "slots" / f".{slot}.partial"

    def _unpack(self, slot: Slot, v: image.VerifiedImage, data: bytes) -> SlotInfo:
        """Write the image's package into ``slot`` (never the linked one): a partial
        folder, every file synced, then renamed into place."""
        if slot == self.linked():
            raise SelfUpdateError(f"slot {slot} is the running slot: never written")
        folders = read_gateway_bundle(v.payload)
        dest, part = self.slot_dir(slot), self._partial(slot)
        _remove(dest)
        _remove(part)
        pkg = part / PACKAGE
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_bytes(_INIT)
        for name, b in folders.items():
            where = pkg.joinpath(*name.split("."))
            where.mkdir(parents=True, exist_ok=True)
            for f in b.files:
                with open(where / f.path, "xb") as out:
                    out.write(b.data[f.offset:f.offset + f.size])
                    os.fsync(out.fileno())
        for d, _, _ in os.walk(part):
            _fsync_dir(Path(d))
        os.rename(part, dest)
        _fsync_dir(dest.parent)
        return SlotInfo(str(v.version), v.security_counter,
                        hashlib.sha256(data).hexdigest(), self._clock())


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe(st: State, linked: Slot | None) -> dict[str, Any]:
    """The state as ``aiot gateway slots --json`` prints it."""
    out = json.loads(st.to_json())
    out["current"] = linked
    return cast(dict[str, Any], out)
