"""The ``aiot`` command: one entry point for every aiotkit user.

Exit status: 0 done; 1 a failure while doing it; 2 a mistake in what was asked (a bad
option, a missing file, a malformed config); 130 interrupted. Every error is one line on
stderr: sub-commands raise the aiotkit error family (``aiotkit.boards.errors``: an
``AiotError`` carries its exit status) and ``main`` prints it. A traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError, UsageError
from aiotkit.tools.args import host_port, nonneg_float, port, positive_int

PROG = "aiot"
_NOSEC_HELP = ('development only: accept a config with security = "nosec" (no OSCORE:'
               " anyone on the network can take a node over)")


def cmd_gateway_run(args: argparse.Namespace) -> int:
    from aiotkit.gateway.app import run_cli

    return run_cli(args.config, allow_nosec=args.allow_nosec)


def cmd_gateway_check(args: argparse.Namespace) -> int:
    from aiotkit.gateway.config import (
        GatewayConfig,
        check_runnable,
        effective_toml,
        load_config,
    )

    config = load_config(args.config) if args.config else GatewayConfig.default()
    where = args.config or "the defaults"
    print(f"# {where}: the effective configuration (every key, defaults filled in)")
    print(effective_toml(config), end="")
    # what 'gateway run' would still refuse: exit 2, one line
    check_runnable(config, allow_nosec=args.allow_nosec)
    print(f"# {where}: valid; 'aiot gateway run' accepts it")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from aiotkit.tools.sim import Fleet, FleetConfig, rest_provisioner

    if args.gateway is None:  # required unless a sub-command ('sim board') is given
        args.sim_parser.error("the following arguments are required: --gateway")
    cfg = FleetConfig(
        gateway=args.gateway,
        nodes=args.nodes,
        prefix=args.prefix,
        signals=[Path(s) for s in args.signal],
        lifetime=args.lifetime,
        window=args.window,
        hop=args.hop,
        report_ms=args.report_ms,
        realtime=args.realtime,
        heap=args.heap,
        verbose=args.verbose,
        model=Path(args.model) if args.model else None,
        anomaly=Path(args.anomaly) if args.anomaly else None,
        models=not args.no_models,
        keep_state=args.keep_state,
        ota_trust=Path(args.ota_trust) if args.ota_trust else None,
    )
    if args.dir:
        cfg.workdir = Path(args.dir)

    def on_line(node: Any, line: str) -> None:
        if args.verbose or " sent " not in line or line.endswith(" sent 0"):
            print(f"[{node.endpoint}] {line}", flush=True)

    if args.nosec:
        provision = None
    elif not args.token:
        raise UsageError("the nodes need OSCORE keys: give --token (admin role of the "
                         "gateway's REST API, or AIOT_TOKEN), or --nosec for a gateway run "
                         "with --allow-nosec")
    else:
        provision = rest_provisioner(args.url, args.token)

    async def main() -> int:
        import signal

        if args.serial:
            from aiotkit.tools.simserial import SerialFleet

            fleet: Fleet = SerialFleet(cfg, on_line=on_line, provision=provision)
        else:
            fleet = Fleet(cfg, on_line=on_line, provision=provision)
        await asyncio.to_thread(fleet.prepare)  # builds, and asks the gateway for keys
        print(
            f"aiot sim: {cfg.nodes} node(s) -> {cfg.gateway}, folders in {cfg.workdir}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await fleet.start()
        deadline = None if args.duration is None else loop.time() + args.duration
        try:
            while not stop.is_set():
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                waits = [w for w in (args.progress or None, left) if w is not None]
                try:
                    await asyncio.wait_for(stop.wait(), timeout=min(waits) if waits else None)
                except TimeoutError:
                    if args.progress and not args.verbose:
                        print("aiot sim: " + progress_line(fleet), flush=True)
        finally:
            print("aiot sim: stopping nodes", flush=True)
            await fleet.stop()
        failed = [n.endpoint for n in fleet.nodes if n.state == "failed"]
        if failed:
            print(f"aiot sim: configuration error on {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())


def cmd_sim_board(args: argparse.Namespace) -> int:
    from aiotkit.tools.simboard import FaultSwitch, SimBoard, parse_uid, run_board

    board = SimBoard(
        args.link,
        flash=args.flash,
        uid=parse_uid(args.id) if args.id else None,
        board=args.board,
        heap=args.heap,
        on_event=(lambda line: print(f"aiot sim board: {line}", flush=True))
        if args.verbose else None,
    )
    board.faults = FaultSwitch(drop=args.drop, garble=args.garble)
    return asyncio.run(run_board(board))


def progress_line(fleet: Any) -> str:
    """One line for the whole fleet: each node's state and reports sent so far."""
    return ", ".join(f"{n.endpoint} {n.state} {n.sent} sent" for n in fleet.nodes)


def cmd_demo(args: argparse.Namespace) -> int:
    from aiotkit.tools.demo import run_demo

    return asyncio.run(
        run_demo(
            nodes=args.nodes,
            duration=args.duration,
            state=Path(args.state) if args.state else None,
            port=args.port,
            mqtt=args.mqtt,
        )
    )


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    bench = importlib.import_module(f"aiotkit.tools.bench.{args.name}")
    return int(bench.main(args.rest))


def cmd_board_check(args: argparse.Namespace) -> int:
    from aiotkit.tools.boards import check_main

    return check_main(args.boards)


def cmd_data_convert(args: argparse.Namespace) -> int:
    from aiotkit.boards.replay import cwru, signalfile

    if bool(args.input) == bool(args.data):
        raise UsageError("give either one FILE.mat or --data DIR")
    if args.data:
        src = Path(args.data)
        if not src.is_dir():
            raise UsageError(f"--data {src}: not a folder")
        jobs = sorted(src.glob("*.mat"), key=lambda p: (cwru.file_number(p) or 0, p.name))
        if not jobs:
            raise UsageError(f"--data {src}: no .mat files in it")
        out = Path(args.out or ".")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: must be a folder when converting --data")
        targets = [(p, out / f"{p.stem}.i16") for p in jobs]
    else:
        p = Path(args.input)
        targets = [(p, Path(args.out) if args.out else p.with_suffix(".i16"))]
    for i, (p, dst) in enumerate(targets, 1):
        sig = cwru.convert(
            p,
            rate=args.rate,
            start_s=args.start,
            seconds=args.seconds,
            channel=args.channel,
            in_rate=args.in_rate,
        )
        signalfile.write(dst, sig)
        print(
            f"[{i}/{len(targets)}] {p.name} -> {dst} ({len(sig.codes)} samples, "
            f"{sig.seconds:.2f} s at {sig.rate} Hz, step 2^{sig.scale_exp} g)",
            flush=True,
        )
    return 0


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability (0..1)")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="aiotkit: MicroPython sensor nodes, an LwM2M/CoAP gateway, and their tools.",
        epilog="Exit status: 0 done, 1 failed, 2 a mistake in the command or its input, "
        "130 interrupted. Errors are one line on stderr.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("gateway", help="run and manage the gateway daemon")
    gsub = g.add_subparsers(dest="gateway_command", metavar="ACTION")
    gsub.required = True
    gr = gsub.add_parser(
        "run",
        help="run the gateway until SIGTERM/Ctrl-C",
        description="Run the LwM2M/CoAP gateway: registrations and readings go to SQLite, "
        "readings and node status to MQTT when [mqtt] is enabled.",
    )
    gr.add_argument("--config", metavar="FILE", help="TOML configuration (defaults for all keys)")
    gr.add_argument("--allow-nosec", action="store_true", help=_NOSEC_HELP)
    gr.set_defaults(func=cmd_gateway_run)
    gc = gsub.add_parser(
        "check",
        help="validate a configuration and print it with every default",
        description="Read FILE as 'gateway run' would, print the effective configuration "
        "(every key with its value: defaults filled in, paths resolved, the MQTT password "
        "redacted) as TOML, and exit 2 with one line if the file is invalid or asks for "
        "something this gateway cannot run.",
    )
    gc.add_argument("--config", metavar="FILE", help="TOML configuration (default: none)")
    gc.add_argument("--allow-nosec", action="store_true", help=_NOSEC_HELP)
    gc.set_defaults(func=cmd_gateway_check)
    from aiotkit.tools import selfupdatecli

    selfupdatecli.register(gsub)  # build-image, install, update, slots
    from aiotkit.tools import servicecli

    servicecli.register(gsub)  # install-service (gateway/ops/service.py)

    s = sub.add_parser(
        "sim",
        help="run simulated nodes (real MicroPython processes) against a gateway",
        usage="%(prog)s --gateway coap://HOST:PORT [options]   (nodes against a gateway)\n"
        "       %(prog)s board --link PATH [options]          (one board on a serial line)",
        description="Start N MicroPython unix-port nodes, each with its own endpoint name and "
        "folder, replaying bearing vibration recordings. Each node gets its own OSCORE keys "
        "from the gateway's REST API (--token of the admin role; new keys every run unless "
        "--keep-state), or runs unprotected with --nosec (a gateway run with "
        "--allow-nosec). Stops (nodes de-register) on Ctrl-C.",
    )
    s.add_argument("--nodes", type=positive_int, default=3, help="how many nodes (default 3)")
    s.add_argument("--gateway", metavar="coap://HOST:PORT", help="gateway URI (required)")
    s.add_argument("--prefix", default="node", help="endpoint names are PREFIX-1.. (default node)")
    s.add_argument("--url", default=os.environ.get("AIOT_URL", "http://127.0.0.1:8080"),
                   help="the gateway's REST API, for the nodes' OSCORE keys (AIOT_URL; "
                   "default http://127.0.0.1:8080)")
    s.add_argument("--token", default=os.environ.get("AIOT_TOKEN"),
                   help="admin token of the REST API (AIOT_TOKEN)")
    s.add_argument("--nosec", action="store_true",
                   help="development only: nodes without OSCORE (the gateway must run "
                   "with --allow-nosec)")
    s.add_argument(
        "--dir", metavar="DIR", help="nodes' folders (default ~/.local/state/aiotkit/sim)"
    )
    s.add_argument(
        "--signal", action="append", default=[], metavar="FILE.i16",
        help="replay file; repeat to give nodes different ones "
        "(default: the shipped CWRU excerpts)",
    )
    s.add_argument("--lifetime", type=positive_int, default=60, help="LwM2M lifetime s (60)")
    s.add_argument("--window", type=positive_int, default=1024, help="window samples (1024)")
    s.add_argument("--hop", type=positive_int, help="hop samples (default: the window)")
    s.add_argument("--report-ms", type=int, default=1000, help="min ms between reports (1000)")
    s.add_argument("--realtime", action="store_true", help="replay at the recording's own rate")
    s.add_argument("--heap", default="448K",
                   help="MicroPython heap per node (448K: the unix-sim board; the x64 code "
                   "lives in the heap)")
    s.add_argument("--model", metavar="FILE.tflite",
                   help="classifier every node runs on its windows (default: the shipped "
                   "bearing-fault model, for 12 kHz signals and --window 1024)")
    s.add_argument("--anomaly", metavar="FILE.tflite",
                   help="anomaly detector every node runs (default: the shipped "
                   "bearing-anomaly model, same conditions)")
    s.add_argument("--no-models", action="store_true",
                   help="nodes report features only, no on-node inference")
    s.add_argument("--duration", type=nonneg_float, help="stop after this many seconds")
    s.add_argument("--verbose", action="store_true", help="print every report")
    s.add_argument("--progress", type=nonneg_float, default=10.0, metavar="S",
                   help="print each node's state and reports sent every S seconds "
                   "(default 10; 0: never; not with --verbose)")
    s.add_argument("--ota-trust", metavar="FILE",
                   help="the trust set of signed updates (aiot ota trust; the gateway's "
                   "[ota] trust_file), copied to every node: without it the nodes refuse "
                   "every update")
    s.add_argument("--keep-state", action="store_true",
                   help="keep each node's flash from the previous run (unsent reports, "
                   "server account); by default every node starts as a freshly flashed "
                   "board")
    s.add_argument("--serial", action="store_true",
                   help="run each node on a simulated serial board (as 'aiot sim board'): "
                   "the firmware is deployed over its serial line, the node booted by a "
                   "soft reset and its console read like a serial monitor; the ports are "
                   "DIR/.ports/ENDPOINT")
    s.set_defaults(func=cmd_sim, sim_parser=s)
    ssub = s.add_subparsers(dest="sim_command", metavar="board",
                            help="'aiot sim board --help': one simulated board on a serial "
                            "line (without it: nodes against a gateway)")
    sb = ssub.add_parser(
        "board",
        prog="aiot sim board",
        help="one simulated board on a serial line (a pty) until Ctrl-C",
        description="Run a MicroPython unix-port process behind a pty that behaves like a "
        "board on a USB serial port: mpremote and the field tools can use LINK. Soft "
        "reset and machine.reset() reboot it, its flash is a folder that survives "
        "reboots, machine.unique_id() is its id. SIGUSR1 cuts the power and restores it.",
    )
    sb.add_argument("--board", default="unix-sim",
                    help="board definition (default unix-sim; only mcu 'host' boards)")
    sb.add_argument("--link", required=True, metavar="PATH",
                    help="the serial port to publish: a symlink to the pty (replaced)")
    sb.add_argument("--flash", metavar="DIR",
                    help="the board's flash (default ~/.local/state/aiotkit/boards/<link name>)")
    sb.add_argument("--id", metavar="HEX",
                    help="machine.unique_id() in hex, 4-16 bytes (default: the id recorded "
                    "with the flash folder, a random one the first time)")
    sb.add_argument("--heap", help="MicroPython heap (default: the board's, 448K)")
    sb.add_argument("--drop", type=_probability, default=0.0, metavar="P",
                    help="fault: drop each byte with probability P (both directions)")
    sb.add_argument("--garble", type=_probability, default=0.0, metavar="P",
                    help="fault: flip a bit in each byte with probability P")
    sb.add_argument("--verbose", action="store_true", help="print boots, reboots and power")
    sb.set_defaults(func=cmd_sim_board)

    d = sub.add_parser(
        "demo",
        help="gateway + simulated nodes with a live summary",
        description="Run a gateway (SQLite, no cloud account) and simulated nodes on this "
        "machine and show nodes registering and readings arriving.",
    )
    d.add_argument("--nodes", type=positive_int, default=3, help="how many nodes (default 3)")
    d.add_argument("--duration", type=nonneg_float, help="stop after this many seconds")
    d.add_argument("--state", metavar="DIR", help="keep the database and node folders here "
                   "(default: a temporary folder, removed at the end)")
    d.add_argument("--port", type=port, default=5683, help="CoAP port (5683; another if busy)")
    d.add_argument("--mqtt", metavar="HOST[:PORT]", type=host_port,
                   help="also forward to this MQTT broker (port 1883 unless given)")
    d.set_defaults(func=cmd_demo)

    be = sub.add_parser(
        "bench",
        help="benchmarks that print their figures (last line: JSON)",
        description="aiot bench features [--windows N ...]: the node's feature extractor on "
        "the MicroPython unix port against numpy. aiot bench infer [--inputs N]: the node's "
        "int8 interpreter against tflite-micro. aiot bench gateway [--nodes N ...]: the "
        "gateway under simulated LwM2M clients against bare aiocoap (and, with OSCORE "
        "required, against itself unprotected). aiot bench node "
        "[--against DIR]: the node's code bytes, data heap and boot time to first Register. "
        "aiot bench oscore [--reps R]: what OSCORE costs the node (protect/verify "
        "microseconds, bytes allocated, flash writes) under the MicroPython unix port. "
        "aiot bench ota [--quick]: signed updates: gateway verification against plain "
        "SHA-256, the node's verification of 256 KB, download goodput through a lossy link "
        "(0, 5, 20 % loss), a roll-out to 200 simulated nodes in two waves. "
        "aiot bench provision [--boards N]: the field tools on simulated serial boards: "
        "deploy (full, one file) next to mpremote cp, one board provisioned until "
        "registered, a batch's boards per minute. "
        "aiot bench uplink [--backlog N ...]: the MQTT uplink end to end and draining a "
        "backlog against a bare MQTT publisher on the same Mosquitto; the gateway's RSS "
        "with 1,000 nodes. aiot bench history [--sends N]: what bounding the database's "
        "history costs: bytes per Send, a prune chunk against an ingest chunk. "
        "'aiot bench NAME --help' for options.",
    )
    be.add_argument("name", choices=["features", "gateway", "history", "infer", "node",
                                     "oscore", "ota", "provision", "uplink"],
                    help="which benchmark")
    be.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    be.set_defaults(func=cmd_bench)

    b = sub.add_parser("board", help="board definitions (boards/)")
    bsub = b.add_subparsers(dest="board_command", metavar="ACTION")
    bsub.required = True
    bc = bsub.add_parser(
        "check",
        help="validate board definitions",
        description="Validate board definitions against the schema (tools/boards.py): types, "
        "pins, flash layout, sensor settings. Without arguments, every shipped board.",
    )
    bc.add_argument("boards", nargs="*", metavar="NAME|FILE", help="board names or JSON files")
    bc.set_defaults(func=cmd_board_check)

    da = sub.add_parser("data", help="prepare recordings for simulated nodes")
    dsub = da.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    dc = dsub.add_parser(
        "convert",
        help="convert CWRU .mat recordings into replay files (.i16)",
        description="Convert a CWRU .mat recording (or a folder of them) into the int16 replay "
        "format the unix-sim board reads. 48 kHz files (97..100) are decimated to --rate.",
    )
    dc.add_argument("input", nargs="?", metavar="FILE.mat", help="one recording")
    dc.add_argument("--data", metavar="DIR", help="convert every .mat file in DIR")
    dc.add_argument("-o", "--out", metavar="PATH", help="output file (or folder with --data)")
    dc.add_argument("--rate", type=positive_int, default=12000, help="output rate Hz (12000)")
    dc.add_argument("--in-rate", type=positive_int, help="input rate Hz (default: CWRU table)")
    dc.add_argument("--start", type=nonneg_float, default=0.0, help="excerpt start s (0)")
    dc.add_argument("--seconds", type=nonneg_float, help="excerpt length s (default: all)")
    dc.add_argument("--channel", default="DE", choices=["DE", "FE", "BA"], help="sensor (DE)")
    dc.set_defaults(func=cmd_data_convert)

    from aiotkit.tools import firmwarecli, keyscli, lwm2mcli, modelcli, nodecli, otacli, tokenscli

    modelcli.register(sub)
    lwm2mcli.register(sub)
    keyscli.register(sub)
    tokenscli.register(sub)
    otacli.register(sub)
    firmwarecli.register(sub)
    from aiotkit.tools import provision

    provision.register(sub)
    nodecli.register(sub)
    from aiotkit.tools import alertscli

    alertscli.register(sub)  # aiot alerts list|show|ack (gateway/analytics, REST)
    return p


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("aiotkit")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AiotError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_status
    except OSError as e:  # the system refused: a full disk, a permission, a busy port
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG}: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
