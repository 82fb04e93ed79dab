"""aiocoap as the gateway imports it: the one module that imports the library.

aiocoap ships no type information (no ``py.typed``, no stubs), so to mypy every name it
exports is ``Any``. Importing it here, once, keeps the ``import-untyped`` findings in one
place, and the few aiocoap classes the gateway subclasses get the small typed shape it
relies on (``Resource``, ``PathCapable``), so subclasses are checked as real classes.
Every other gateway module takes aiocoap from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.blockwise  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.message  # type: ignore[import-untyped]
import aiocoap.meta  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
from aiocoap import credentials, oscore
from aiocoap.messagemanager import MessageManager  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.numbers.constants import TransportTuning  # type: ignore[import-untyped]
from aiocoap.numbers.contentformat import ContentFormat  # type: ignore[import-untyped]
from aiocoap.numbers.optionnumbers import OptionNumber  # type: ignore[import-untyped]
from aiocoap.numbers.types import Type  # type: ignore[import-untyped]
from aiocoap.optiontypes import StringOption  # type: ignore[import-untyped]
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper  # type: ignore[import-untyped]
from aiocoap.transports.udp6 import UDP6EndpointAddress  # type: ignore[import-untyped]
from aiocoap.util import hostportsplit  # type: ignore[import-untyped]

__all__ = [
    "Code",
    "ContentFormat",
    "Context",
    "Message",
    "MessageManager",
    "OptionNumber",
    "OscoreSiteWrapper",
    "PathCapable",
    "Resource",
    "Site",
    "StringOption",
    "TransportTuning",
    "Type",
    "UDP6EndpointAddress",
    "aiocoap",
    "credentials",
    "hostportsplit",
    "oscore",
]

Message = aiocoap.Message
Context = aiocoap.Context

if TYPE_CHECKING:

    class Resource:
        """What the gateway uses of ``aiocoap.resource.Resource``."""

        async def render(self, request: Any) -> Any: ...

    class PathCapable:
        """``aiocoap.resource.PathCapable``: the resource takes every path below it."""

    class Site(Resource):
        """``aiocoap.resource.Site``."""

        def add_resource(self, path: Any, resource: Any) -> None: ...

else:
    Resource = aiocoap.resource.Resource
    PathCapable = aiocoap.resource.PathCapable
    Site = aiocoap.resource.Site
