"""Device management's errors (one base, ``DMError``) and the CoAP codes they carry.

``OperationFailed`` is the node's CoAP error answer (its ``code`` and the ``DMResult``);
``DeviceUnreachable`` / ``DeviceTimeout`` mean no answer; ``NotRegistered`` and
``QueueFull`` are refusals before anything is sent. ``code_text`` and ``code_of`` turn a
CoAP code into the text a ``DMResult`` keeps (``"2.05"``) and back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..coap.aio import Code
from ..errors import GatewayError

if TYPE_CHECKING:
    from .requests import DMResult

__all__ = [
    "DMError",
    "DeviceTimeout",
    "DeviceUnreachable",
    "NotRegistered",
    "OperationFailed",
    "QueueFull",
    "code_of",
    "code_text",
]


class DMError(GatewayError):
    """Base of the device-management errors."""


class NotRegistered(DMError):
    """The endpoint has no live registration (and is not in queue mode)."""


class QueueFull(DMError):
    """The endpoint already has ``dm.max_queued`` requests waiting."""


class DeviceUnreachable(DMError):
    """The request got no CoAP answer (a network error, or a reset)."""


class DeviceTimeout(DeviceUnreachable):
    """The node did not answer within the request timeout."""


class OperationFailed(DMError):
    """The node answered with a CoAP error code (``code``, e.g. 4.04); ``result`` has it."""

    def __init__(self, result: DMResult) -> None:
        detail = f": {result.diagnostic}" if result.diagnostic else ""
        super().__init__(f"{result.operation} {result.path} on {result.endpoint}: "
                         f"{result.code}{detail}")
        self.result = result
        self.code: Code = code_of(result.code)


def code_text(code: Code) -> str:
    """``code`` as ``DMResult.code`` keeps it: ``"2.05"``."""
    return f"{int(code) >> 5}.{int(code) & 0x1F:02d}"


def code_of(text: str) -> Code:
    """The CoAP code of ``code_text``'s text (5.00 if it is none)."""
    cls, _, detail = text.partition(".")
    try:
        return Code((int(cls) << 5) | int(detail))
    except ValueError:
        return Code.INTERNAL_SERVER_ERROR
