"""Device management: the LwM2M server's requests to the nodes (``manager``).

``DeviceManagement`` sends Read, Write, Execute, Create, Delete, Discover,
Write-Attributes, Observe and the composite operations to a registered node, queues
them for queue-mode nodes, and keeps observations whose Notifications are stored
like Sends. Results are ``DMResult``; failures raise a ``DMError`` (``NotRegistered``,
``QueueFull``, ``DeviceUnreachable``, ``DeviceTimeout``, ``OperationFailed``). Its
durable state is ``Storage.dm``.
"""

from .manager import (
    ATTRIBUTES,
    OPERATIONS,
    DeviceManagement,
    DeviceTimeout,
    DeviceUnreachable,
    DMError,
    DMResult,
    NotRegistered,
    OperationFailed,
    QueueFull,
    WireRequest,
)

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
