"""Fault onset to alert at the broker, for ``aiot bench uplink`` (``fault_to_alert_s``).

One real MicroPython node (tools/sim.py) replays, in real time, a recording that is the
healthy CWRU excerpt (``normal-97``) followed by the inner-race fault (``inner-105``),
and runs the shipped classifier on the node. The gateway (in this process, OSCORE, the
uplink to the given Mosquitto) has one alert rule, ``label != normal in 1 of the last 1
windows``; a subscriber records when the alert's ``raised`` message reaches the broker.

The fault's onset on the gateway's clock is computed from the node's own windows: each
Send carries the window's sample offset and rate (/33000/0/1, /3), and the node paces
the replay in real time, so ``received - (offset + length) / rate`` is when the replay
started plus the report's latency. The smallest such value over the healthy part is the
replay's start; the onset is that plus the healthy part's length.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

HEALTHY_S = 8.0  # seconds of the healthy recording before the fault


def _signal(path: Path) -> tuple[int, int]:
    """Write the healthy-then-faulty recording; (samples before the fault, rate)."""
    import numpy as np
    from aiotkit.boards import paths
    from aiotkit.boards.replay import signalfile

    files = {p.stem: p for p in paths.replay_files()}
    healthy = signalfile.read(files["normal-97"])
    fault = signalfile.read(files["inner-105"])
    if healthy.rate != fault.rate:
        raise RuntimeError("the shipped recordings differ in rate")
    n = int(HEALTHY_S * healthy.rate)
    values = np.concatenate([np.resize(healthy.values, n), np.tile(fault.values, 4)])
    both = signalfile.quantize(values)  # one scale for both parts
    signalfile.write(path, signalfile.Signal(healthy.rate, both.scale_exp, both.codes))
    return n, healthy.rate


async def fault_to_alert(work: Path, mqtt_port: int, report_ms: int = 1000) -> dict[str, Any]:
    """Run the scenario once; {"fault_to_alert_s", "report_ms", ...}."""
    import paho.mqtt.client as paho
    from aiotkit.gateway.app import Gateway
    from aiotkit.gateway.config import load_config
    from aiotkit.gateway.lwm2m.registry import RegistryEvent
    from aiotkit.gateway.security import generate_key_hex
    from aiotkit.tools.demo import pick_port
    from aiotkit.tools.sim import Fleet, FleetConfig, keystore_provisioner
    from paho.mqtt.enums import CallbackAPIVersion

    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("gw.db*"):  # a fresh gateway each run (its own at-rest key)
        old.unlink()
    sig = work / "healthy-then-inner.i16"
    onset_samples, rate = _signal(sig)
    (work / "gw.key").write_text(generate_key_hex() + "\n")
    (work / "gw.key").chmod(0o600)
    conf = work / "gw.toml"
    coap_port = pick_port(0)
    conf.write_text(
        '[gateway]\nid = "bench-alert"\ndb = "gw.db"\n'
        f'[coap]\nhost = "127.0.0.1"\nport = {coap_port}\n'
        '[security]\nkey_file = "gw.key"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        "[analytics]\npublish_rollups = false\n"
        '[[alerts.rules]]\nname = "fault"\nkind = "label"\nk = 1\nn = 1\n')
    raised: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def found(at: float) -> None:
        if not raised.done():
            raised.set_result(at)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        at = time.time()
        if msg.topic.endswith("/alert/fault") and json.loads(msg.payload).get(
                "event") == "raised":
            loop.call_soon_threadsafe(found, at)

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-alert-sub")
    sub.on_message = on_message
    sub.on_connect = lambda c, *_a: c.subscribe("#", qos=1)
    sub.connect("127.0.0.1", mqtt_port)
    sub.loop_start()
    starts: list[float] = []

    def on_event(ev: RegistryEvent) -> None:
        records = {r.path: r.value for r in ev.records}
        off, length, hz = (records.get(f"/33000/0/{i}") for i in (1, 2, 3))
        if isinstance(off, int | float) and isinstance(length, int | float) and hz:
            end = off + length
            if end <= onset_samples:  # a healthy window: when the replay started
                starts.append(time.time() - end / float(hz))

    gw = Gateway(load_config(conf))
    await gw.start()
    fleet = None
    try:
        gw.registry.add_listener(on_event)
        assert gw.keys is not None
        fleet = Fleet(FleetConfig(gateway=gw.coap_uri, nodes=1, workdir=work / "nodes",
                                  signals=[sig], realtime=True, report_ms=report_ms),
                      provision=keystore_provisioner(gw.keys))
        fleet.prepare()  # the key store is the gateway's: on this thread
        await fleet.start()
        at = await asyncio.wait_for(raised, HEALTHY_S + 60)
    finally:
        if fleet is not None:
            await fleet.stop()
        await gw.shutdown()
        sub.loop_stop()
        sub.disconnect()
    if not starts:
        raise RuntimeError("no healthy window reached the gateway before the fault")
    onset = min(starts) + onset_samples / rate
    return {"fault_to_alert_s": round(at - onset, 3), "report_ms": report_ms,
            "healthy_windows": len(starts)}
