"""aiotkit gateway: the LwM2M server on aiocoap, device management, storage, MQTT uplink.

A reading, from the node's socket to MQTT, through the subpackages in order:

``coap``
    the wire: aiocoap's UDP transport hands each datagram to the datagram hook
    (``coap.layer``), which offers plain Sends and Notifications to the fast paths
    (``coap.fastsend``, ``coap.fastnotify``) and everything else to aiocoap.
``lwm2m``
    the LwM2M server: the ``/rd`` and ``/dp`` resource (``lwm2m.server``), the payload
    codecs (SenML, TLV, LwM2M-CBOR, text; ``lwm2m.codecs``) with DDF object
    definitions, and the registry (``lwm2m.registry``) that decides what Register,
    Update, Send and expiry mean and commits them in group commits.
``dm``
    device management: Read/Write/Execute/Observe... to the nodes, queue mode,
    observations whose Notifications are stored like Sends.
``storage``
    one ``Storage`` interface over one SQLite file: every write the node is
    acknowledged for is on disk first, with its outbox rows.
``uplink``
    the MQTT publisher of that durable outbox.
``api``, ``inference``
    the REST API for operators; the shadow check of the nodes' decisions.

``app`` runs the daemon (``Gateway``, ``serve``, ``run_cli``), ``config`` reads its
TOML file, ``errors`` holds the exception family.
"""
