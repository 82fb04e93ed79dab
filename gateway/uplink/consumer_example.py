"""A consumer of the uplink that de-duplicates by message id (an example to copy).

The uplink delivers at least once: a message whose PUBACK was lost, or whose
confirmation the gateway could not store, is published again after a reconnect. Each
message carries the MQTT 5 user properties ``gw`` (the gateway's id) and ``msg-id``
(stable over every delivery of it: a reading's id for telemetry, see
``uplink/mqtt.py``), so a consumer that keeps the keys it has handled drops repeats::

    python -m aiotkit.gateway.uplink.consumer_example --host broker --topic 'aiot/+/+/data/#'

prints one JSON line per first delivery: ``{"gw": ..., "msg_id": ..., "topic": ...,
"payload": {...}}``. Run it with ``--client-id`` fixed: it keeps a persistent MQTT 5
session (``--session-expiry``), so messages published while it is away are kept for
it by the broker.

``Dedup`` remembers the newest ``keep`` keys: a repeat comes within one reconnect of
the first delivery, so a window much larger than the gateways' ``mqtt.batch`` times
their number is enough; a consumer that must never see a repeat keeps the keys with
the data it writes (e.g. a unique index on ``(gw, msg_id)``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Dedup", "consume", "main", "message_key"]

Key = tuple[str, str]


class Dedup:
    """The newest ``keep`` message keys seen; ``first(key)`` is True once per key."""

    def __init__(self, keep: int = 100_000) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._keep = keep
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self.repeats = 0  # deliveries dropped as repeats

    def first(self, key: Key) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            self.repeats += 1
            return False
        self._seen[key] = None
        if len(self._seen) > self._keep:
            self._seen.popitem(last=False)
        return True


def message_key(message: aiomqtt.Message) -> Key | None:
    """``(gw, msg-id)`` from the message's user properties (None: it has none)."""
    props = message.properties
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    if not pairs:
        return None
    found = dict(pairs)
    gw, msg_id = found.get("gw"), found.get("msg-id")
    if gw is None or msg_id is None:
        return None
    return str(gw), str(msg_id)


async def consume(client: aiomqtt.Client, handle: Callable[[Key, aiomqtt.Message], Any],
                  dedup: Dedup) -> None:
    """Hand every first delivery to ``handle`` (messages without a key, too: they cannot
    be told apart), until the connection ends."""
    async for message in client.messages:
        key = message_key(message)
        if key is None or dedup.first(key):
            handle(key or ("", ""), message)


def _print(key: Key, message: aiomqtt.Message) -> None:
    payload: Any = message.payload
    if isinstance(payload, bytes | bytearray):
        try:
            payload = json.loads(payload)
        except ValueError:
            payload = payload.hex()
    print(json.dumps({"gw": key[0], "msg_id": key[1], "topic": str(message.topic),
                      "payload": payload}), flush=True)


async def _run(args: argparse.Namespace) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = args.session_expiry
    dedup = Dedup(args.keep)
    async with aiomqtt.Client(args.host, args.port, identifier=args.client_id,
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                              properties=props) as client:
        await client.subscribe(args.topic, qos=1)
        await consume(client, _print, dedup)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="consumer_example", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", default="aiot/+/+/data/#")
    p.add_argument("--client-id", default="aiot-consumer-example")
    p.add_argument("--session-expiry", type=int, default=3600,
                   help="seconds the broker keeps this consumer's session while away")
    p.add_argument("--keep", type=int, default=100_000, help="message keys remembered")
    args = p.parse_args(argv)
    try:
        asyncio.run(_run(args))
    except aiomqtt.MqttError as e:
        print(f"consumer_example: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
