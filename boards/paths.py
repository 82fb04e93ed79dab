"""Where an installed (or editable) aiotkit keeps firmware, boards and replay data."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path


def firmware_dir() -> Path:
    return Path(str(resources.files("aiotkit.firmware")))


def boards_dir() -> Path:
    return Path(str(resources.files("aiotkit.boards")))


def replay_dir() -> Path:
    return boards_dir() / "replay"


def replay_files() -> list[Path]:
    """The shipped replay signals, in the order simulated nodes take them."""
    order = ["normal-97", "inner-105", "outer-130", "ball-118"]
    files = {p.stem: p for p in replay_dir().glob("*.i16")}
    ranked = [files.pop(n) for n in order if n in files]
    return ranked + sorted(files.values())


def models_dir() -> Path:
    return Path(str(resources.files("aiotkit.models")))


def shipped_models() -> tuple[Path, Path]:
    """The bearing fault classifier and anomaly detector (12 kHz, window 1024)."""
    d = models_dir()
    return d / "bearing-fault" / "model.tflite", d / "bearing-anomaly" / "model.tflite"


def state_dir() -> Path:
    """Per-user state (XDG_STATE_HOME), for things that must survive a restart."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aiotkit"


def find_tool(name: str) -> str | None:
    """A command on PATH or next to this Python (a venv's bin/)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def find_micropython() -> str | None:
    """The MicroPython unix port."""
    return find_tool("micropython")


def cache_dir() -> Path:
    """Per-user cache (XDG_CACHE_HOME), for things that can be rebuilt."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aiotkit"
