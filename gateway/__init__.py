"""aiotkit gateway: LwM2M server on aiocoap, registry, storage and MQTT uplink."""
