"""``aiot demo``: a gateway and simulated nodes on one machine, with a live summary.

The gateway runs in this process on embedded defaults (SQLite in a state folder, no
cloud account, MQTT only if asked for); the nodes are real MicroPython processes
replaying bearing vibration recordings. The summary is redrawn every second on a
terminal, and printed every few seconds when the output is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aiotkit.boards.errors import AiotError
from aiotkit.gateway.lwm2m.senml import Value
from aiotkit.gateway.storage import NodeSummary
from aiotkit.tools.sim import Fleet, FleetConfig, SimNode, keystore_provisioner

if TYPE_CHECKING:
    from aiotkit.gateway.inference.shadow import ShadowChecker

X_PATH = "/3313/0/5702"
SEQ_PATH = "/33000/0/0"
LABEL_PATH, CONF_PATH, ANOMALOUS_PATH = "/33002/0/2", "/33002/0/3", "/33002/0/5"


def pick_port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else one the kernel hands out."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free UDP port on loopback")


def gateway_toml(db: Path, port: int, mqtt: tuple[str, int] | None) -> str:
    text = (
        "# written by aiot demo\n"
        "[gateway]\n"
        'id = "demo"\n'
        f"db = {str(db)!r}\n"
        'security = "oscore"  # every node has its own OSCORE context\n'
        "[coap]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "[security]\n"
        'key_file = "gateway.key"  # the at-rest key of the nodes\' secrets\n'
    )
    if mqtt:
        host, mport = mqtt
        text += f"[mqtt]\nenabled = true\nhost = {json.dumps(host)}\nport = {mport}\n"
    return text


def _age(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    d = max(0.0, now - float(ts))
    return f"{d:4.0f}s ago" if d < 3600 else f"{d / 3600:4.1f}h ago"


def _decision(values: dict[str, Value]) -> str:
    """The node's latest on-device decision: label (confidence), anomaly flag."""
    label = values.get(LABEL_PATH)
    if isinstance(label, bytes):
        label = label.decode(errors="replace")
    anomalous = values.get(ANOMALOUS_PATH)
    if label is None and anomalous is None:
        return "-"
    text = "" if label is None else f"{label} {float(values.get(CONF_PATH, 0)):.2f}"
    if anomalous is not None:
        text += (" " if text else "") + ("ANOMALY" if anomalous else "ok")
    return text


def render(
    summaries: list[NodeSummary], fleet: Fleet, events: Iterable[str], started: float, db: Path,
    shadow: ShadowChecker | None = None,
) -> str:
    now = time.time()
    up = time.monotonic() - started
    rows = [
        f"aiotkit demo - gateway up {up:5.0f} s - database {db}",
        "",
        (f"{'endpoint':<10} {'state':<13} {'registered':>11} {'last seen':>11} "
         f"{'sends':>6} {'readings':>9} {'window':>7} {'X (g)':>10}  decision (on the node)"),
    ]
    for s in sorted(summaries, key=lambda s: s.endpoint):
        x = s.last_values.get(X_PATH)
        if not isinstance(x, float | int):
            x = None
        seq = s.last_values.get(SEQ_PATH)
        rows.append(
            f"{s.endpoint:<10} {s.state:<13} "
            f"{_age(s.registered_at, now):>11} {_age(s.last_seen, now):>11} "
            f"{s.sends:>6} {s.readings:>9} "
            f"{'-' if seq is None else int(seq):>7} {'-' if x is None else f'{x:+.5f}':>10}"
            f"  {_decision(s.last_values)}"
        )
    if not summaries:
        rows.append("(no node has registered yet)")
    rows.append("")
    rows.append(
        "nodes: "
        + ", ".join(f"{n.endpoint} {n.state}" + (f" ({n.restarts} restarts)" if n.restarts else "")
                    for n in fleet.nodes)
    )
    if shadow is not None:
        c = shadow.counts
        rows.append(f"shadow check (gateway replays each decision with tflite-micro): "
                    f"{c['agree']} agree, {c['disagree']} disagree, {c['unchecked']} not checked")
    rows.append("recent events:")
    rows.extend(f"  {e}" for e in events)
    return "\n".join(rows)


async def run_demo(
    nodes: int = 3,
    duration: float | None = None,
    state: Path | None = None,
    port: int = 5683,
    mqtt: tuple[str, int] | None = None,
    report_ms: int = 1000,
) -> int:
    from aiotkit.gateway.app import Gateway
    from aiotkit.gateway.config import load_config

    tmp = None
    if state is None:
        tmp = tempfile.mkdtemp(prefix="aiot-demo-")
        state = Path(tmp)
    state.mkdir(parents=True, exist_ok=True)
    db = state / "gateway.db"
    port = pick_port(port)
    key = state / "gateway.key"
    if not key.exists():  # the demo's own at-rest key, made once (aiot keys genkey)
        from aiotkit.gateway.security import generate_key_hex

        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key_hex() + "\n")
    conf_path = state / "gateway.toml"
    conf_path.write_text(gateway_toml(db, port, mqtt))
    config = load_config(str(conf_path))

    tty = sys.stdout.isatty()
    events: deque[str] = deque(maxlen=8)

    def on_line(node: SimNode, line: str) -> None:
        if " sent " in line:
            return
        stamp = time.strftime("%H:%M:%S")
        events.append(f"{stamp} {node.endpoint}: {line}")
        if not tty:
            print(f"[{node.endpoint}] {line}", flush=True)

    gw = Gateway(config)
    await gw.start()
    if gw.keys is None:  # the config names a key file
        raise AiotError("aiot demo: the gateway has no OSCORE key store")
    uri = f"coap://127.0.0.1:{port}"
    print(f"aiot demo: gateway on {uri}, state in {state}", flush=True)
    fleet = Fleet(
        FleetConfig(gateway=uri, nodes=nodes, workdir=state / "nodes", report_ms=report_ms),
        on_line=on_line,
        provision=keystore_provisioner(gw.keys),  # each node its own OSCORE keys
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        fleet.prepare()
        await fleet.start()
        last_print = 0.0
        while not stop.is_set():
            if duration is not None and time.monotonic() - started >= duration:
                break
            now = time.monotonic()
            if tty or now - last_print >= 5.0:
                text = render(gw.store.node_summaries(), fleet, events, started, db, gw.shadow)
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + text + "\n\n(Ctrl-C to stop)\n")
                else:
                    sys.stdout.write(text + "\n\n")
                sys.stdout.flush()
                last_print = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("aiot demo: stopping nodes (they de-register) and the gateway", flush=True)
        await fleet.stop()
        final = render(gw.store.node_summaries(), fleet, events, started, db, gw.shadow)
        await gw.shutdown()
        print(final, flush=True)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
