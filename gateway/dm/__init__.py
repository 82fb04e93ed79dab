"""Device management: the LwM2M server's requests to the nodes.

``DeviceManagement`` sends Read, Write, Execute, Create, Delete, Discover,
Write-Attributes, Observe and the composite operations to a registered node, queues
them for queue-mode nodes, and keeps observations whose Notifications are stored
like Sends. Results are ``DMResult``; failures raise a ``DMError`` (``NotRegistered``,
``QueueFull``, ``DeviceUnreachable``, ``DeviceTimeout``, ``OperationFailed``). Its
durable state is ``Storage.dm``.

Modules:

- ``manager``: ``DeviceManagement``, the facade: the operations, sending a request and
  recording its result, and the wake-up session of a node (on registry events);
- ``requests``: ``WireRequest``, ``DMResult`` and the pure encoding of an operation into
  its CoAP request (``build_request``; the table of operations), no I/O;
- ``errors``: ``DMError`` and its subclasses, CoAP codes as result text and back;
- ``observations``: the live observations, what a Notification means (freshness per
  RFC 7641 §3.4), storing its values, re-observing after a restart or re-Register,
  auto-observe;
- ``queue``: queue-mode delivery: requests stored for a sleeping node, delivered in
  order when it wakes, and waiting for their results.
"""

from .errors import (
    DeviceTimeout,
    DeviceUnreachable,
    DMError,
    NotRegistered,
    OperationFailed,
    QueueFull,
)
from .manager import DeviceManagement
from .requests import ATTRIBUTES, OPERATIONS, DMResult, WireRequest

__all__ = [
    "ATTRIBUTES",
    "OPERATIONS",
    "DMError",
    "DMResult",
    "DeviceManagement",
    "DeviceTimeout",
    "DeviceUnreachable",
    "NotRegistered",
    "OperationFailed",
    "QueueFull",
    "WireRequest",
]
