"""``aiot bench uplink``: the MQTT uplink end to end and draining a backlog, next to a
bare MQTT publisher on the same broker in the same run (issue 16, "Performance").

One Mosquitto (found on PATH or in /usr/sbin, ``--mosquitto``) on a free loopback port
serves every part:

* **Bare publisher** (``bare_publisher_msgs_per_s``): aiomqtt, MQTT 5, QoS 1, the same
  in-flight window as the uplink (``--window``, the uplink's ``mqtt.batch``), the same
  payload (a reading as the uplink encodes it) and topic shape, ``--backlog`` messages;
  timed until the last PUBACK.
* **Drain** (``drain_msgs_per_s``): the gateway's ``Uplink`` on a database whose outbox
  holds ``--backlog`` readings (100,000; made once, copied for each repetition), as
  after an outage: timed from ``start()`` (the broker is up) until no row waits for a
  PUBACK (every row confirmed in SQLite, ``synchronous = FULL``). Same process and
  event loop as the bare publisher, repetitions interleaved with it; medians.
  ``drain_ratio`` = drain / bare (goal >= 0.8).
* **End to end** (``e2e_msgs_per_s``, ``p99_ms``): the gateway daemon
  (``python -m aiotkit.gateway.app``, NoSec, MQTT on) with ``--nodes`` (1,000) nodes
  registered from their own UDP sockets (``bench/gateway.py``'s load generator), then
  ``--messages`` Sends of one reading each, round robin over the nodes, at most
  ``--coap-window`` in flight; a paho subscriber counts the readings arriving on
  ``aiot/bench/+/data/#``. Throughput = readings received / (first Send .. last reading
  received); ``p99_ms`` is the 99th percentile of (received by the subscriber - the
  gateway's receive time ``rx`` in the payload): gateway -> broker -> consumer; the
  node -> gateway leg (the CoAP acknowledgement) is ``ack_p99_ms``. ``--reps`` passes;
  medians.
* **Memory** (``rss_mb_1k_nodes``): that daemon's VmRSS after the Send passes, with
  ``--nodes`` registered and sending (goal < 60 MB at 1,000). The daemon runs with
  ``[shadow] enabled = false``: the shadow check's tflite-micro models (about 19 MB,
  loaded whether or not a node sends decisions) are not the data plane's; ``--shadow``
  keeps them (``shadow`` in the JSON says which).
* **Fault onset to alert** (``fault_to_alert_s``, ``bench/alerting.py``): one real
  MicroPython node replays in real time the healthy recording, then the inner-race
  fault, through a gateway with OSCORE and the rule "label != normal in 1 of the last
  1"; from the fault's onset (on the gateway's clock, from the node's window offsets)
  until the alert's ``raised`` message reaches a subscriber. Goal: within two report
  periods (``--report-ms``, 1000). ``--reps`` runs, median.

The last line is one JSON object. Exit status 2 without mosquitto, 1 when a part fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiotkit.boards.errors import AiotError

PROG = "aiot bench uplink"
GOAL_DRAIN_RATIO = 0.8
GOAL_RSS_MB = 60.0
T0 = 1_700_000_000.0


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def find_mosquitto(given: str | None) -> str | None:
    for c in (given, shutil.which("mosquitto"), "/usr/sbin/mosquitto",
              "/usr/local/sbin/mosquitto"):
        if c and Path(c).is_file():
            return c
    return None


class Broker:
    """Mosquitto on a free loopback port (no persistence, any queue length)."""

    def __init__(self, binary: str, work: Path) -> None:
        from aiotkit.tools.bench.gateway import free_tcp_port

        self.port = free_tcp_port()
        self.conf = work / "mosquitto.conf"
        import getpass

        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             "persistence false\nmax_queued_messages 0\n"
                             f"log_dest none\nuser {getpass.getuser()}\n")
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import socket

        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def reading_message(i: int) -> Any:
    from aiotkit.gateway.storage.api import StoredReading
    from aiotkit.gateway.uplink.mqtt import TopicScheme

    ep = f"bench-{i % 1000:05d}"
    return TopicScheme("aiot/bench").reading(StoredReading(
        65536 * (i + 1), i + 1, ep, "/3313/0/5702", "v", 0.25 + i * 1e-6, None, T0 + i))


def make_backlog(db: Path, n: int) -> None:
    from aiotkit.gateway.storage import SqliteStorage
    from aiotkit.gateway.uplink.mqtt import TopicScheme

    with SqliteStorage.open(db, encoder=TopicScheme("aiot/bench")) as store:
        for start in range(0, n, 5000):
            store.outbox_add([reading_message(i) for i in range(start, min(n, start + 5000))],
                             T0)


async def bare_publisher(port: int, n: int, window: int) -> float:
    """Messages per second of a bare aiomqtt publisher (QoS 1, ``window`` in flight)."""
    import aiomqtt

    msgs = [reading_message(i) for i in range(min(n, 1000))]
    sem = asyncio.Semaphore(window)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare",
                              protocol=aiomqtt.ProtocolVersion.V5,
                              max_inflight_messages=window) as client:
        client.pending_calls_threshold = window

        async def one(i: int) -> None:
            try:
                m = msgs[i % len(msgs)]
                await client.publish(f"aiot/bare/{m.topic}", m.payload, qos=1)
            finally:
                sem.release()

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                await sem.acquire()
                tg.create_task(one(i))
        return n / (time.perf_counter() - t0)


async def drain(port: int, template: Path, work: Path, n: int, window: int) -> float:
    """Messages per second of the Uplink draining a backlog of ``n`` rows."""
    from aiotkit.gateway.config import MqttConfig
    from aiotkit.gateway.storage import SqliteStorage
    from aiotkit.gateway.uplink.mqtt import TopicScheme, Uplink

    db = work / "drain.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, db)
    # (the store's topic scheme puts the prefix in front: not the e2e subscriber's)
    store = SqliteStorage.open(db, encoder=TopicScheme("aiot/drain"))
    try:
        if store.outbox_counts()[0] != n:
            raise RuntimeError("the backlog copy is not whole")
        cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, batch=window,
                         topic_prefix="aiot/drain", client_id="bench-drain")
        uplink = Uplink(cfg, store, gateway_id="bench")
        t0 = time.perf_counter()
        await uplink.start()
        try:
            await uplink.wait_connected()
            await uplink.wait_idle()
        finally:
            await uplink.shutdown()
        seconds = time.perf_counter() - t0
        if store.outbox_counts()[0] != 0:
            raise RuntimeError("the drain left rows unconfirmed")
        return n / seconds
    finally:
        store.close()


class Subscriber:
    """A paho subscriber counting readings and their gateway -> consumer latencies."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.count = 0
        self.last = 0.0
        self.latencies: list[float] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        rx = json.loads(msg.payload)["rx"]
        with self._cond:
            self.count += 1
            self.last = time.perf_counter()
            self.latencies.append(now - rx)
            self._cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout):
                raise RuntimeError(f"only {self.count} of {n} readings reached the broker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_config(work: Path, coap_port: int, mqtt_port: int, window: int,
                   shadow: bool) -> Path:
    path = work / "gateway.toml"
    path.write_text(
        "# aiot bench uplink: nosec on loopback, MQTT to the bench's broker\n"
        '[gateway]\nid = "bench"\ndb = "gateway.db"\nsecurity = "nosec"\n'
        f'[coap]\nhost = "127.0.0.1"\nport = {coap_port}\n'
        f"[shadow]\nenabled = {'true' if shadow else 'false'}\n"
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        f"batch = {window}\n")
    return path


async def end_to_end(args: argparse.Namespace, work: Path, port: int,
                     bare_and_drain: Callable[[int], Any]) -> dict[str, Any]:
    """The daemon with ``--nodes`` nodes; ``--reps`` Send passes, each followed by a
    bare/drain repetition (interleaved)."""
    import cbor2
    from aiotkit.gateway.coap import wire
    from aiotkit.tools.bench.gateway import (
        LoadGenerator,
        ServerProcess,
        free_udp_port,
        register_body,
        rss_kb,
        send_body,
    )

    coap_port = free_udp_port()
    cfg = gateway_config(work, coap_port, port, args.window, args.shadow)
    gw = ServerProcess("the gateway", [sys.executable, "-m", "aiotkit.gateway.app", str(cfg),
                                       "--allow-nosec"], work / "gateway.log",
                       "aiot gateway ready", work)
    addr = ("127.0.0.1", coap_port)
    nodes = args.nodes
    bodies = [send_body(cbor2.dumps([{0: "/3313/0/5702", 2: 0.25 + k * 1e-3}]))
              for k in range(64)]
    gen = LoadGenerator(nodes)
    sub = Subscriber(port, "aiot/bench/+/data/#")
    out: dict[str, Any] = {"e2e": [], "p99": [], "ack_p99": []}
    try:
        gw.start()
        await gen.open()
        progress(f"{nodes} nodes registering")

        def regs() -> Iterator[tuple[int, bytes, int]]:
            for i in range(nodes):
                yield i, register_body(f"bench-{i:05d}"), wire.CREATED

        r = await gen.run("register", addr, regs(), nodes, args.coap_window, gw.alive)
        if r.ok != nodes:
            raise RuntimeError(f"{r.failed} registrations failed: {r.codes}")
        expected = 0
        for rep in range(args.reps):
            def sends() -> Iterator[tuple[int, bytes, int]]:
                for k in range(args.messages):
                    yield k % nodes, bodies[k % len(bodies)], wire.CHANGED

            with sub._cond:
                sub.latencies.clear()
            t0 = time.perf_counter()
            r = await gen.run(f"send {rep + 1}", addr, sends(), args.messages,
                              args.coap_window, gw.alive)
            expected += r.ok
            await asyncio.to_thread(sub.wait_count, expected, 120.0)
            rate = r.ok / (sub.last - t0)
            lat = sorted(sub.latencies)
            out["e2e"].append(rate)
            out["p99"].append(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))])
            acks = sorted(r.latencies)
            out["ack_p99"].append(1000 * acks[min(len(acks) - 1, int(0.99 * len(acks)))])
            progress(f"e2e pass {rep + 1}: {rate:.0f} readings/s end to end, "
                     f"p99 {out['p99'][-1]:.1f} ms (gateway -> consumer)")
            await bare_and_drain(rep)
        out["rss_mb"] = rss_kb(gw.pid) / 1024
    finally:
        gen.close()
        sub.close()
        gw.stop()
    return out


async def run(args: argparse.Namespace, work: Path, binary: str) -> dict[str, Any]:
    broker = Broker(binary, work)
    broker.start()
    try:
        template = work / "backlog.db"
        progress(f"making a backlog of {args.backlog} readings")
        make_backlog(template, args.backlog)
        bare: list[float] = []
        drained: list[float] = []

        async def bare_and_drain(rep: int) -> None:
            bare.append(await bare_publisher(broker.port, args.backlog, args.window))
            drained.append(await drain(broker.port, template, work, args.backlog,
                                       args.window))
            progress(f"rep {rep + 1}: bare publisher {bare[-1]:.0f} msgs/s, uplink drain "
                     f"{drained[-1]:.0f} msgs/s")

        e2e = await end_to_end(args, work, broker.port, bare_and_drain)
        from aiotkit.tools.bench.alerting import fault_to_alert

        alert_s: list[float] = []
        for rep in range(args.reps):
            got = await fault_to_alert(work / "alert", broker.port, args.report_ms)
            alert_s.append(got["fault_to_alert_s"])
            progress(f"rep {rep + 1}: fault onset to alert at the broker "
                     f"{alert_s[-1]:.2f} s (reports every {args.report_ms} ms)")
    finally:
        broker.stop()
    med = statistics.median
    result: dict[str, Any] = {
        "e2e_msgs_per_s": round(med(e2e["e2e"]), 1),
        "drain_msgs_per_s": round(med(drained), 1),
        "bare_publisher_msgs_per_s": round(med(bare), 1),
        "drain_ratio": round(med(drained) / med(bare), 3),
        "p99_ms": round(med(e2e["p99"]), 2),
        "ack_p99_ms": round(med(e2e["ack_p99"]), 2),
        "rss_mb_1k_nodes": round(e2e["rss_mb"], 1),
        "nodes": args.nodes,
        "shadow": args.shadow,
        "backlog": args.backlog,
        "window": args.window,
        "reps": args.reps,
        "fault_to_alert_s": round(med(alert_s), 3),
        "report_ms": args.report_ms,
    }
    result["goal_drain"] = result["drain_ratio"] >= GOAL_DRAIN_RATIO
    result["goal_rss"] = result["rss_mb_1k_nodes"] < GOAL_RSS_MB
    result["goal_alert"] = result["fault_to_alert_s"] <= 2 * args.report_ms / 1000
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("--backlog", type=int, default=100_000,
                    help="outbox rows drained (and bare publishes) per repetition")
    ap.add_argument("--messages", type=int, default=20_000, help="Sends per e2e pass")
    ap.add_argument("--nodes", type=int, default=1000, help="registered, sending nodes")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--window", type=int, default=100,
                    help="publishes in flight (the uplink's mqtt.batch)")
    ap.add_argument("--coap-window", type=int, default=64, help="Sends in flight")
    ap.add_argument("--shadow", action="store_true",
                    help="keep the gateway's shadow check on (its models: ~19 MB of RSS)")
    ap.add_argument("--report-ms", type=int, default=1000,
                    help="the alerting node's report period, ms (goal: alert within two)")
    ap.add_argument("--mosquitto", help="the mosquitto binary")
    ap.add_argument("--dir", type=Path, help="work here instead of a temporary folder")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.backlog, args.messages, args.nodes, args.reps, args.window,
           args.coap_window, args.report_ms) < 1:
        print(f"{PROG}: error: every count must be at least 1", file=sys.stderr)
        return 2
    binary = find_mosquitto(args.mosquitto)
    if binary is None:
        print(f"{PROG}: error: no mosquitto (apt-get install mosquitto, or --mosquitto)",
              file=sys.stderr)
        return 2
    try:
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
            result = asyncio.run(run(args, args.dir, binary))
        else:
            with tempfile.TemporaryDirectory(prefix="aiot-uplink-bench-") as tmp:
                result = asyncio.run(run(args, Path(tmp), binary))
    except (AiotError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
