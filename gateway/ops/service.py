"""The gateway's systemd unit: rendered from the shipped template
(``aiot-gateway.service`` beside this file) and written by ``aiot gateway
install-service`` (``tools/servicecli.py``).

``render`` fills in the command (``ExecStart``: the ``aiot`` executable running this
code, ``gateway run --config FILE``), the working directory (the config file's folder:
relative paths in it resolve there anyway) and, for a system unit, the sandboxing a
user unit cannot have. Arguments are quoted as systemd reads them (double quotes,
backslash escapes, ``%`` doubled), so a path with spaces or ``%`` stays one argument.
``write`` puts it in place atomically (temporary file, ``os.replace``), mode 0644.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import sys
from pathlib import Path

from ..errors import GatewayError

__all__ = ["TEMPLATE", "ServiceError", "aiot_command", "default_unit_dir", "render",
           "systemd_quote", "write"]

TEMPLATE = "aiot-gateway.service"
UNIT_NAME = "aiot-gateway.service"
# a system unit may also keep the daemon off /usr, /boot, /etc and out of shared /tmp
_SYSTEM_HARDENING = "PrivateTmp=yes\nProtectSystem=full\n"


class ServiceError(GatewayError):
    """The unit cannot be written (or would overwrite another file)."""


def template() -> str:
    return (importlib.resources.files("aiotkit.gateway.ops") / TEMPLATE).read_text("utf-8")


def systemd_quote(arg: str) -> str:
    """``arg`` as one word of a systemd command line (systemd.syntax(7), "Quoting")."""
    escaped = arg.replace("%", "%%")
    if escaped and all(c.isalnum() or c in "/._-+:=@," for c in escaped):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def aiot_command() -> list[str]:
    """How to start the ``aiot`` of this installation: its script next to the running
    interpreter (a venv's ``bin/aiot``), else the one on PATH, else ``python -m``."""
    here = Path(sys.executable).parent / "aiot"
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here)]
    found = shutil.which("aiot")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "aiotkit.tools.cli"]


def default_unit_dir(user: bool) -> Path:
    """/etc/systemd/system, or the user's ``$XDG_CONFIG_HOME/systemd/user``."""
    if not user:
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def render(*, config: Path | None, user: bool, command: list[str] | None = None,
           workdir: Path | None = None) -> str:
    """The unit's text for ``config`` (absolute; None: the defaults, run in
    ``workdir``)."""
    cmd = command if command is not None else aiot_command()
    where = workdir if workdir is not None else (config.parent if config else Path.cwd())
    text = template()
    fields = {
        "@EXEC@": " ".join(systemd_quote(c) for c in cmd),
        "@CONFIG@": f" --config {systemd_quote(str(config))}" if config else "",
        "@WORKDIR@": str(where).replace("%", "%%"),  # a path setting: no quotes
        "@HARDENING@": "" if user else _SYSTEM_HARDENING,
        "@WANTEDBY@": "default.target" if user else "multi-user.target",
    }
    for key, value in fields.items():
        text = text.replace(key, value)
    return text


def write(text: str, unit_dir: Path, *, name: str = UNIT_NAME, force: bool = False) -> Path:
    """Write ``text`` as ``unit_dir/name`` (atomically, 0644); ``ServiceError`` if a
    different file is there and not ``force``, or it cannot be written."""
    path = unit_dir / name
    try:
        if path.exists() and not force and path.read_text("utf-8") != text:
            raise ServiceError(f"{path} exists and differs (--force replaces it)")
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise ServiceError(f"cannot write {path}: {e.strerror or e}") from e
    return path
