"""``aiot gateway install-service``: write the gateway's systemd unit
(``gateway/ops/service.py``, template ``gateway/ops/aiot-gateway.service``).

The configuration is read first, as ``aiot gateway check`` does, so a unit is never
written for a file the daemon would refuse. Exit status: 0 written (or printed with
``--dry-run``); 1 it cannot be written; 2 a bad configuration or option.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError, UsageError


def cmd_install_service(args: argparse.Namespace) -> int:
    from aiotkit.gateway.config import check_runnable, load_config
    from aiotkit.gateway.errors import ConfigError
    from aiotkit.gateway.ops import service

    config: Path | None = None
    if args.config:
        config = Path(args.config).expanduser().resolve()
        try:
            check_runnable(load_config(config), allow_nosec=args.allow_nosec)
        except ConfigError as e:
            raise UsageError(str(e)) from e
    name = args.name if args.name.endswith(".service") else f"{args.name}.service"
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name: {args.name!r} is not a unit name")
    text = service.render(config=config, user=args.user)
    if args.allow_nosec:
        text = text.replace(" gateway run", " gateway run --allow-nosec", 1)
    if args.dry_run:
        print(text, end="")
        return 0
    unit_dir = Path(args.unit_dir) if args.unit_dir else service.default_unit_dir(args.user)
    try:
        path = service.write(text, unit_dir, name=name, force=args.force)
    except service.ServiceError as e:
        raise AiotError(str(e)) from e
    ctl = "systemctl --user" if args.user else "systemctl"
    print(f"wrote {path}")
    print(f"next: {ctl} daemon-reload && {ctl} enable --now {name}")
    return 0


def register(gsub: Any) -> None:
    """Add ``install-service`` to the ``aiot gateway`` sub-commands."""
    p = gsub.add_parser(
        "install-service",
        help="write a systemd unit that runs the gateway",
        description="Write a systemd unit (aiot-gateway.service) whose ExecStart runs this "
        "installation's 'aiot gateway run --config FILE', in FILE's folder, restarted on "
        "failure. The configuration is checked first. Then: systemctl daemon-reload && "
        "systemctl enable --now aiot-gateway (with --user for a user unit).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration the unit runs with "
                   "(default: none, the defaults in the current folder)")
    p.add_argument("--unit-dir", metavar="DIR", help="where to write the unit (default: "
                   "/etc/systemd/system, or ~/.config/systemd/user with --user)")
    p.add_argument("--user", action="store_true", help="a user unit (systemctl --user)")
    p.add_argument("--name", default="aiot-gateway", help="unit name (default: "
                   "aiot-gateway; another one for a second gateway on this machine)")
    p.add_argument("--force", action="store_true", help="replace a different unit file")
    p.add_argument("--dry-run", action="store_true", help="print the unit, write nothing")
    p.add_argument("--allow-nosec", action="store_true",
                   help="development only: the unit runs with --allow-nosec")
    p.set_defaults(func=cmd_install_service)
