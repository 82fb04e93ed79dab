"""Nothing acknowledged is lost: the gateway process is killed (SIGKILL, no shutdown)
the moment a Send's 2.04 arrives, and the Send is in its SQLite file afterwards.

The gateway runs as a real subprocess; the node is a raw CoAP client on a UDP socket
(the benchmark's wire helpers), so nothing of the gateway's process survives the kill.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
from pathlib import Path

from aiotkit.gateway.coap import wire
from aiotkit.gateway.storage import SqliteStorage
from aiotkit.tools.bench.gateway import (
    ServerProcess,
    gateway_config,
    register_body,
    send_body,
    senml_report,
)
from plugins.services import free_port


def request(sock: socket.socket, addr: tuple[str, int], mid: int, token: bytes,
            body: bytes) -> int:
    """One CON request; the response code (piggybacked or separate, RFC 7252 §5.2)."""
    sock.sendto(wire.header(wire.CON, wire.POST, mid, token) + body, addr)
    while True:
        data, _ = sock.recvfrom(2048)
        msg = wire.parse(data)
        if msg.code == wire.EMPTY:  # empty ACK: the response follows as its own CON
            continue
        if msg.token == token:
            if msg.mtype != wire.ACK:
                sock.sendto(wire.empty_ack(msg.mid), addr)
            return msg.code


def stored_tokens(db: Path) -> set[bytes]:
    with SqliteStorage.open(db, readonly=True) as store:
        return {s.token for s in store.sends()}


def test_gateway_killed_right_after_acknowledging_a_send_has_stored_it(tmp_path):
    port = free_port()
    cfg = gateway_config(tmp_path, port)
    addr = ("127.0.0.1", port)
    rng = random.Random(7)
    acked: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)
        sock.bind(("127.0.0.1", 0))
        for run in range(3):
            gw = ServerProcess("the gateway", [sys.executable, "-m", "aiotkit.gateway.app",
                                               str(cfg), "--allow-nosec"],
                               tmp_path / f"gateway-{run}.log", "aiot gateway ready",
                               tmp_path)
            gw.start()
            try:
                if run == 0:
                    code = request(sock, addr, 1, b"register", register_body("node-kill"))
                    assert code == wire.CREATED
                for i in range(5):  # a few acknowledged, then one killed on its ACK
                    token = struct.pack("!II", run, i)
                    body = send_body(senml_report(rng, i))
                    assert request(sock, addr, 100 * run + i + 10, token, body) == wire.CHANGED
                    if i == 4:
                        assert gw.proc is not None
                        gw.proc.kill()  # no shutdown, no final checkpoint
                    acked.append(token)
            finally:
                gw.stop()
    assert set(acked) <= stored_tokens(tmp_path / "gateway.db")
    assert len(acked) == 15
