"""CoAP on the gateway: the wire format, aiocoap's message layer as the gateway runs it,
and the fast paths below it.

A datagram from a node is read by aiocoap's UDP transport and handed to the **datagram
hook** (``layer.DatagramHook``, one per UDP interface): it is parsed once
(``wire.parse``) and, unless it carries OSCORE, offered to the fast paths
(``fastsend.FastSend``: LwM2M Send; ``fastnotify.FastNotify``: Observe Notifications);
anything they do not take goes on to aiocoap (message layer with the compact
``dedup.DedupCache``, then the LwM2M resource in ``lwm2m.server``).

Modules and their public names: ``wire`` (``parse``, ``build``, ``Datagram``,
``WireError``, the numbers from aiocoap; the OSCORE decision is in its docstring),
``dedup`` (``DedupCache``), ``layer`` (``install``, ``MessageLayer``, ``DatagramHook``,
``FastPath``), ``fastsend`` (``FastSend``), ``fastnotify`` (``FastNotify``), ``aio``
(the one import of aiocoap). Nothing is re-exported here: ``errors`` takes aiocoap's
codes from ``aio``, and the fast paths sit above the LwM2M server and device
management, so each is imported from its module.
"""
