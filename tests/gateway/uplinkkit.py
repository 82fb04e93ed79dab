"""What the uplink's tests share: a CoAP request as a node makes it, and the ``[mqtt]``
section of a gateway config pointing at a test broker."""

from __future__ import annotations

from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code


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
