"""``aiot bench NAME``: benchmarks that measure a part of aiotkit against a baseline in
the same run and print their figures, the last line a JSON object.

- ``features``: the node's feature extractor on the MicroPython unix port vs numpy
- ``infer``: the node's int8 interpreter vs tflite-micro
- ``gateway``: the gateway under simulated LwM2M clients vs a bare aiocoap server
- ``node``: the node's code size, data heap and boot time to first Register, optionally
  against another checkout's firmware (``--against DIR``)
- ``uplink``: the MQTT uplink end to end and draining a backlog vs a bare MQTT publisher

Each module's ``main(argv) -> int`` is what ``aiot bench`` calls; their docstrings keep
the history of the figures.
"""
