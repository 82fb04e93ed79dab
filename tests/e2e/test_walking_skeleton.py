"""End to end: Mosquitto + gateway + three real MicroPython nodes.

An MQTT subscriber sees readings from all three nodes whose values equal, bit for bit,
the recordings the nodes replay; one node's de-registration reaches the gateway; a
gateway restarted mid-test keeps its registrations and the nodes keep sending.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from aiotkit.boards.replay import signalfile
from aiotkit.tools.sim import Fleet, FleetConfig
from plugins.services import ManagedProcess

pytestmark = pytest.mark.e2e

X, SEQ, OFFSET, N, RATE, MIN, MAX = (
    "/3313/0/5702", "/33000/0/0", "/33000/0/1", "/33000/0/2", "/33000/0/3", "/33000/0/4",
    "/33000/0/5",
)


class Subscriber:
    """A paho-mqtt subscriber collecting every message under a topic filter."""

    def __init__(self, host: str, port: int, topic: str):
        self.messages: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-test")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "MQTT subscription not acknowledged"

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self._cond.notify_all()

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; got {len(self.messages)}")
                self._cond.wait(left)

    def snapshot(self):
        with self._cond:
            return list(self.messages)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


FLAGS = "/33000/0/6"
RMS, PEAK = "/33001/0/1", "/33001/0/3"  # outputs 1 and 3 of the default feature set
REPORT_PATHS = ({X, SEQ, OFFSET, N, RATE, MIN, MAX}
                | {f"/33000/0/{r}" for r in range(6, 12)}
                | {f"/33001/0/{i}" for i in range(20)})


def sends_by_node(messages, since: float = 0.0) -> dict[str, dict[int, dict[str, object]]]:
    """{endpoint: {send id: {path: value}}} of the reports whose readings have all arrived
    (each reading is its own MQTT message), received by the gateway after ``since``."""
    out: dict[str, dict[int, dict[str, object]]] = {}
    for topic, m in messages:
        if "/data/" in topic and m["rx"] >= since:
            assert topic.endswith(f"/{m['ep']}/data{m['path']}"), topic
            out.setdefault(m["ep"], {}).setdefault(m["send"], {})[m["path"]] = m["v"]
    for sends in out.values():
        for sid in [sid for sid, s in sends.items() if set(s) != REPORT_PATHS]:
            assert set(sends[sid]) < REPORT_PATHS, sends[sid]  # incomplete, never foreign
            del sends[sid]
    return out


def check_window_values(send: dict[str, object], sig) -> None:
    """Every value of one report equals what the replayed recording says."""
    n, off = int(send[N]), int(send[OFFSET])
    window = np.ldexp(sig.codes[(off + np.arange(n)) % len(sig.codes)].astype(float), sig.scale_exp)
    assert send[RATE] == sig.rate
    assert send[X] == window[-1]
    assert send[MIN] == window.min()
    assert send[MAX] == window.max()
    assert send[FLAGS] == 0
    # features computed on the node (every feature's bound is checked in tests/features)
    assert send[PEAK] == np.abs(window).max()
    rms = np.sqrt(np.mean(window**2))
    assert abs(send[RMS] - rms) <= 1e-4 * rms


def test_three_nodes_register_send_survive_gateway_restart_and_deregister(
    tmp_path: Path, mosquitto, gateway_factory, processes, micropython
):
    gw = gateway_factory(mqtt=mosquitto)
    gw.start(processes)
    sub = Subscriber(mosquitto.host, mosquitto.port, "aiot/test/#")
    try:
        fleet = Fleet(FleetConfig(gateway=gw.uri, nodes=3, workdir=tmp_path / "nodes",
                                  lifetime=20, window=256, report_ms=200),
                      provision=gw.provision())  # OSCORE: keys through the REST API
        fleet.prepare()
        nodes = {}
        for node in fleet.nodes:
            argv, env = fleet.command(node)
            p = ManagedProcess(node.endpoint, argv, cwd=node.workdir, env=env).start()
            processes.append(p)
            nodes[node.endpoint] = (node, p)
        signals = {ep: signalfile.read(n.signal) for ep, (n, _) in nodes.items()}
        eps = set(nodes)

        # 1. readings from all three nodes, values equal to the replayed recordings
        sub.wait(lambda ms: all(len(sends_by_node(ms).get(ep, {})) >= 5 for ep in eps),
                 60, "5 reports from each node")
        for ep, sends in sends_by_node(sub.snapshot()).items():
            assert ep in eps
            seqs = sorted(int(s[SEQ]) for s in sends.values())
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            for s in sends.values():
                check_window_values(s, signals[ep])
        for ep, (_, p) in nodes.items():
            p.wait_for(rf"aiot-node {ep} registered /rd/\S+", timeout=5)

        # 2. gateway restart: registrations survive, nodes keep sending
        assert gw.stop() == 0, gw.proc.output[-2000:]
        restarted_at = time.time()
        gw.start(processes)
        sub.wait(
            lambda ms: all(len(sends_by_node(ms, restarted_at).get(ep, {})) >= 3 for ep in eps),
            60, "reports after the gateway restart",
        )
        for ep, sends in sends_by_node(sub.snapshot(), restarted_at).items():
            for s in sends.values():
                check_window_values(s, signals[ep])
        for ep, (_, p) in nodes.items():
            registered = [ln for ln in p.lines if f"aiot-node {ep} registered" in ln]
            assert len(registered) == 1, f"{ep} had to register again: {registered}"

        # 3. a node de-registers on shutdown and the gateway sees it
        gone, (_, gone_proc) = "node-3", nodes["node-3"]
        mark = gw.proc.mark()
        assert gone_proc.close_stdin() == 0  # as aiot sim stops a node
        gone_proc.wait_for(rf"aiot-node {gone} deregistered", timeout=1)
        sub.wait(
            lambda ms: any(t.endswith(f"/{gone}/status") and m["state"] == "deregistered"
                           for t, m in ms),
            20, "the deregistered status of node-3",
        )
        gw.proc.wait_for(gone, timeout=5, start=mark)
    finally:
        sub.close()
