"""The aiotkit node (real MicroPython firmware, as ``aiot sim`` runs it) against a
third-party LwM2M server: lwm2m-node-lib 1.4.0's (Telefonica, from npm) server, driven by
``lwm2m_server.js``. The node registers with it and answers its Reads.

Names follow OMA-ETS-LightweightM2M_INT 1.2 (``LightweightM2M-1.1-int-NNN``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jsonpeer import JsonPeer
from plugins.services import REPO, free_port


async def _start(tmp_path: Path, node_lib: str, node_firmware, processes
                 ) -> tuple[JsonPeer, object]:
    from plugins.services import ManagedProcess

    port = free_port()
    server = await JsonPeer.start(node_lib, "lwm2m_server.js", "--port", str(port))
    await server.event(lambda e: e["event"] == "listening", "the server listening")
    shutil.copy(REPO / "boards" / "replay" / "normal-97.i16", tmp_path / "signal.i16")
    (tmp_path / "config.json").write_text(json.dumps({
        "endpoint": "aiot-node-1", "gateway": f"coap://127.0.0.1:{port}", "lifetime": 60,
        "window": 256, "report_ms": 1000, "signal": "signal.i16", "features": False}))
    node = ManagedProcess("node", node_firmware.argv(), cwd=tmp_path,
                          env=node_firmware.env()).start()
    processes.append(node)
    return server, node


async def test_int101_node_registers_with_a_third_party_server(tmp_path, node_lib,
                                                               node_firmware, processes):
    server, node = await _start(tmp_path, node_lib, node_firmware, processes)
    try:
        reg = await server.event(lambda e: e["event"] == "registration", "a registration",
                                 timeout=30)
        assert reg["endpoint"] == "aiot-node-1"
        assert reg["version"] == "1.1" and reg["lifetime"] == "60"
        assert reg["binding"] in ("U", "UQ")
        assert reg["address"] == "127.0.0.1" and isinstance(reg["port"], int)
        links = reg["payload"]
        assert "</3/0>" in links, links
        listed = await server.call(cmd="list")
        assert [d["endpoint"] for d in listed["value"]] == ["aiot-node-1"]
    finally:
        node.stop()  # type: ignore[attr-defined]
        await server.stop()


async def test_int201_third_party_server_reads_the_node_device_object(
        tmp_path, node_lib, node_firmware, processes):
    server, node = await _start(tmp_path, node_lib, node_firmware, processes)
    try:
        await server.event(lambda e: e["event"] == "registration", "a registration",
                           timeout=30)
        # lwm2m-node-lib's server reads single resources (text/plain), not instances
        manufacturer = await server.call(cmd="read", endpoint="aiot-node-1", path="/3/0/0")
        if manufacturer.get("code") == "4.04" or "not found" in str(
                manufacturer.get("error", "")).lower():
            pytest.fail(f"the node answered 4.04 to Read /3/0/0: {manufacturer}")
        assert "error" not in manufacturer, manufacturer
        assert isinstance(manufacturer["value"], str) and manufacturer["value"], manufacturer
        model = await server.call(cmd="read", endpoint="aiot-node-1", path="/3/0/1")
        assert "error" not in model and model["value"], model
        links = await server.call(cmd="discover", endpoint="aiot-node-1", path="/3/0")
        assert "error" not in links and "</3/0/0>" in links["value"], links
    finally:
        node.stop()  # type: ignore[attr-defined]
        await server.stop()
