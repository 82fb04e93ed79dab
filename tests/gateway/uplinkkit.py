"""What the uplink's tests share: a CoAP request as a node makes it, the ``[mqtt]``
section of a gateway config pointing at a test broker, a subscriber taking what the
uplink publishes, and a broker keeping its subscribers' sessions across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
from aiocoap.numbers.codes import Code
from plugins.services import Mosquitto, require_tool


async def ask(peer: aiocoap.Context, code: Code, uri: str, payload: bytes = b"",
              cf: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, uri=uri, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    return await peer.request(msg).response


def mqtt_section(broker: Any, extra: str = "") -> str:
    """``[mqtt]`` on ``broker``, reconnecting fast (tests stop and start brokers)."""
    return (f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\n" + extra)


@contextlib.asynccontextmanager
async def subscribed(broker: Any, topic: str, name: str, **kw: Any
                     ) -> AsyncIterator[aiomqtt.Client]:
    """An aiomqtt client ``name`` subscribed to ``topic`` at QoS 1 (``kw``: more of the
    Client's options: protocol, TLS)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=name, **kw) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def take(client: aiomqtt.Client, n: int, timeout: float = 20.0
               ) -> list[aiomqtt.Message]:
    """The next ``n`` messages, the gateways' own statuses (``aiot/GW/status``) left out."""
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            if str(m.topic).count("/") == 2 and str(m.topic).endswith("/status"):
                continue
            out.append(m)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


def persistent_broker(tmp_path: Path) -> Mosquitto:
    """Mosquitto keeping sessions across a restart, and queueing any number of messages
    for a subscriber that is away (its default keeps 1000: a consumer reconnecting
    after the gateway would miss the rest of a backlog). Not started."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(require_tool("mosquitto", "apt-get install mosquitto"), workdir)
    broker.conf.write_text(
        f"listener {broker.port} {broker.host}\nallow_anonymous true\n"
        f"persistence true\npersistence_location {workdir}/\nlog_dest stdout\n"
        "max_queued_messages 0\n"
        # run as root, mosquitto would switch to its own user and could not save here
        f"user {getpass.getuser()}\n")
    return broker
