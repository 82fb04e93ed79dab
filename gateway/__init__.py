"""aiotkit gateway: LwM2M server on aiocoap, registry, storage and MQTT uplink.

Layers, each behind a small interface: ``lwm2m`` (CoAP resources) -> ``registry``
(what the LwM2M operations mean) -> ``store`` (SQLite) <- ``uplink`` (MQTT outbox
publisher); ``senml`` decodes payloads, ``config`` reads the TOML file, ``app`` runs the
daemon (``Gateway``, ``serve``, ``run_cli``).
"""
