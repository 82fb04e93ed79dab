"""Storage: everything the gateway keeps, behind one typed interface.

``api`` defines it: the ``Storage`` protocol (registrations, Sends and readings, latest
values, the uplink outbox, events, per-endpoint and fleet views, the group commit) with
``Storage.dm``, a ``DeviceStorage`` (device management's requests, observations,
attributes), and the records they trade in (``Registration``, ``SendResult``,
``StoredReading``, ``NodeSummary``, ``OutboxRow``...). The registry, device management,
the REST API, the uplink, ``aiot bench gateway`` and the tests use nothing else.

``sqlite`` implements it on one SQLite file (``SqliteStorage``; ``dmtables``: the
device tables on their own connection; ``keytables``: the OSCORE contexts' rows, on
another, ``Storage.keys``: a ``KeyStorage``, ``OscoreRow``; ``otatables``: the OTA service's
images, campaigns and nodes, on a fourth, ``Storage.ota``); ``schema`` holds the tables and the migrations
(``PRAGMA user_version`` -> the step to the next version); ``lock`` keeps a second
daemon off a database (``DatabaseLock`` on ``<db>.lock``). No SQL lives outside this
package.
"""

from .api import (
    DeadLetter,
    DeviceStorage,
    Event,
    KeyStorage,
    NodeSummary,
    NotificationLink,
    ObservationRow,
    OscoreRow,
    OtaCampaignRow,
    OtaImageRow,
    OtaNodeRow,
    OtaStorage,
    OutboxEncoder,
    OutboxMessage,
    OutboxRow,
    Registration,
    RequestRow,
    SendResult,
    StatusChange,
    Storage,
    StoredReading,
    StoredSend,
    StoredValue,
)
from .schema import SCHEMA_VERSION
from .sqlite import SqliteStorage

__all__ = [
    "SCHEMA_VERSION",
    "DeadLetter",
    "DeviceStorage",
    "Event",
    "KeyStorage",
    "NodeSummary",
    "NotificationLink",
    "ObservationRow",
    "OscoreRow",
    "OtaCampaignRow",
    "OtaImageRow",
    "OtaNodeRow",
    "OtaStorage",
    "OutboxEncoder",
    "OutboxMessage",
    "OutboxRow",
    "Registration",
    "RequestRow",
    "SendResult",
    "SqliteStorage",
    "StatusChange",
    "Storage",
    "StoredReading",
    "StoredSend",
    "StoredValue",
]
