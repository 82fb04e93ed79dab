"""The LwM2M server over real UDP sockets, with aiocoap clients and libcoap as peers.

Test names follow OMA's interoperability cases where one fits (int-101 register,
int-102 update, int-103 de-register) and otherwise the fault they try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiotkit.gateway.lwm2m.registry import RegistryEvent
from aiotkit.gateway.storage import SqliteStorage
from aiotkit.gateway.storage.sqlite import EXCHANGE_LIFETIME_S

LINKS = b"</1/0>,</3/0>,</3313/0>"
SENML_CBOR = 112
SENML_JSON = 110


def req(code: Code, uri: str, payload: bytes = b"", cf: int | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, uri=uri, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    return msg


async def ask(peer: aiocoap.Context, msg: aiocoap.Message) -> aiocoap.Message:
    return await peer.request(msg).response


async def register(peer: aiocoap.Context, base: str, query: str = "ep=node-1&lt=300&lwm2m=1.1&b=U",
                   payload: bytes = LINKS, cf: int | None = 40) -> aiocoap.Message:
    return await ask(peer, req(Code.POST, f"{base}/rd?{query}", payload, cf))


def pack(*records: dict[int, Any]) -> bytes:
    return cbor2.dumps(list(records))


ACCEL = pack(
    {-2: "/3313/0/", -3: 1_700_000_000.0, 0: "5702", 2: 0.25, 6: 0.5},
    {0: "5703", 2: -1},
    {0: "5704", 2: 9.81},
)


@contextlib.contextmanager
def other_connection(config: Any) -> Iterator[SqliteStorage]:
    """The gateway's database through a second connection (sees commits only)."""
    with SqliteStorage.open(config.gateway.db, readonly=True) as store:
        yield store


# -- registration interface ------------------------------------------------------------


async def test_int101_register_answers_created_with_location(gateway_config, running_gateway,
                                                              coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        resp = await register(peer, cfg.coap_uri)
        assert resp.code == Code.CREATED
        path = resp.opt.location_path
        assert len(path) == 2 and path[0] == "rd"
        reg = gw.store.registration("node-1")
        assert reg is not None and path[1] == reg.reg_id
        assert (reg.state, reg.lifetime, reg.lwm2m_version, reg.binding) == (
            "registered", 300, "1.1", "U")
        assert reg.object_links == LINKS.decode()
        assert reg.host == "127.0.0.1" and reg.port > 0
        assert [e.kind for e in gw.store.events("node-1")] == ["registered"]


async def test_register_defaults_lifetime_version_and_binding(gateway_config, running_gateway,
                                                               coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        resp = await register(peer, cfg.coap_uri, "ep=bare", b"</3/0>", cf=None)
        assert resp.code == Code.CREATED
        reg = gw.store.registration("bare")
        assert reg is not None
        assert (reg.lifetime, reg.lwm2m_version, reg.binding) == (86400, "1.0", "U")


async def test_int102_update_refreshes_and_changes_lifetime_binding_objects(
        gateway_config, running_gateway, coap_peer, clock):
    cfg = gateway_config()
    async with running_gateway(cfg, clock=clock) as gw, coap_peer() as peer:
        loc = (await register(peer, cfg.coap_uri)).opt.location_path
        clock.advance(10)
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}?lt=600&b=UQ",
                                   b"</3/0>,</5/0>", 40))
        assert resp.code == Code.CHANGED
        reg = gw.store.registration("node-1")
        assert reg is not None
        assert (reg.lifetime, reg.binding, reg.object_links) == (600, "UQ", "</3/0>,</5/0>")
        assert reg.updated_at == reg.registered_at + 10
        # an empty Update only refreshes
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))
        assert resp.code == Code.CHANGED
        assert [e.kind for e in gw.store.events("node-1")] == ["registered", "updated",
                                                                "updated"]


async def test_int103_deregister_answers_deleted_then_not_found(gateway_config, running_gateway,
                                                                coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        loc = (await register(peer, cfg.coap_uri)).opt.location_path
        resp = await ask(peer, req(Code.DELETE, f"{cfg.coap_uri}/rd/{loc[1]}"))
        assert resp.code == Code.DELETED
        reg = gw.store.registration("node-1")
        assert reg is not None and reg.state == "deregistered"
        for again in (req(Code.DELETE, f"{cfg.coap_uri}/rd/{loc[1]}"),
                      req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}")):
            assert (await ask(peer, again)).code == Code.NOT_FOUND
        # and its Sends are no longer accepted
        send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
        assert (await ask(peer, send)).code == Code.NOT_FOUND


async def test_reregistration_replaces_the_old_registration(gateway_config, running_gateway,
                                                            coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as first, coap_peer() as second:
        old = (await register(first, cfg.coap_uri)).opt.location_path[1]
        new = (await register(second, cfg.coap_uri, "ep=node-1&lt=120")).opt.location_path[1]
        assert new != old
        assert (await ask(second, req(Code.POST, f"{cfg.coap_uri}/rd/{old}"))).code \
            == Code.NOT_FOUND
        assert (await ask(second, req(Code.POST, f"{cfg.coap_uri}/rd/{new}"))).code \
            == Code.CHANGED
        regs = gw.store.registrations()
        assert [(r.endpoint, r.reg_id, r.lifetime) for r in regs] == [("node-1", new, 120)]
        # Sends now come from the new address only
        send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
        assert (await ask(first, send)).code == Code.NOT_FOUND
        send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
        assert (await ask(second, send)).code == Code.CHANGED
        events = gw.store.events("node-1")
        assert [(e.kind, e.detail) for e in events] == [
            ("registered", None), ("registered", f"replaces {old}"), ("updated", None)]


async def test_registrations_survive_a_gateway_restart(gateway_config, running_gateway,
                                                       coap_peer):
    cfg = gateway_config()
    async with coap_peer() as peer:
        async with running_gateway(cfg):
            loc = (await register(peer, cfg.coap_uri)).opt.location_path
        async with running_gateway(cfg) as gw:
            reg = gw.store.registration("node-1")
            assert reg is not None and reg.state == "registered" and reg.reg_id == loc[1]
            resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))
            assert resp.code == Code.CHANGED
            send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
            assert (await ask(peer, send)).code == Code.CHANGED


async def test_lifetime_expiry_marks_offline_and_update_gets_not_found(
        gateway_config, running_gateway, coap_peer, clock):
    cfg = gateway_config("[registry]\nexpiry_check_s = 0.02\n")
    async with running_gateway(cfg, clock=clock) as gw, coap_peer() as peer:
        expired = asyncio.Event()

        def on_event(ev: RegistryEvent) -> None:
            if ev.kind == "expired":
                expired.set()

        gw.registry.add_listener(on_event)
        loc = (await register(peer, cfg.coap_uri, "ep=node-1&lt=60")).opt.location_path
        clock.advance(59)
        assert (await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))).code \
            == Code.CHANGED  # refreshed at t+59: now valid until t+119
        clock.advance(61)
        await expired.wait()
        reg = gw.store.registration("node-1")
        assert reg is not None and reg.state == "offline"
        assert [e.kind for e in gw.store.events("node-1")] == ["registered", "updated",
                                                                "expired"]
        assert (await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))).code \
            == Code.NOT_FOUND
        send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
        assert (await ask(peer, send)).code == Code.NOT_FOUND
        # the client registers again and is back
        assert (await register(peer, cfg.coap_uri)).code == Code.CREATED
        assert gw.store.registration("node-1").state == "registered"  # type: ignore[union-attr]


async def test_lapsed_registration_is_refused_before_the_periodic_check_runs(
        gateway_config, running_gateway, coap_peer, clock):
    cfg = gateway_config("[registry]\nexpiry_check_s = 3600\n")
    async with running_gateway(cfg, clock=clock) as gw, coap_peer() as peer:
        loc = (await register(peer, cfg.coap_uri, "ep=node-1&lt=30")).opt.location_path
        clock.advance(31)
        assert (await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))).code \
            == Code.NOT_FOUND
        assert gw.store.registration("node-1").state == "offline"  # type: ignore[union-attr]


async def test_registration_that_lapsed_while_gateway_was_down_is_offline_after_restart(
        gateway_config, running_gateway, coap_peer, clock):
    cfg = gateway_config()
    async with coap_peer() as peer:
        async with running_gateway(cfg, clock=clock):
            loc = (await register(peer, cfg.coap_uri, "ep=node-1&lt=30")).opt.location_path
        clock.advance(3600)
        async with running_gateway(cfg, clock=clock) as gw:
            assert gw.store.registration("node-1").state == "offline"  # type: ignore[union-attr]
            assert (await ask(peer, req(Code.POST, f"{cfg.coap_uri}/rd/{loc[1]}"))).code \
                == Code.NOT_FOUND


# -- registration interface: bad input ------------------------------------------------

BAD_REGISTRATIONS = [
    # (name, query, payload, content format, expected code)
    ("missing ep", "lt=60", LINKS, 40, Code.BAD_REQUEST),
    ("empty ep", "ep=&lt=60", LINKS, 40, Code.BAD_REQUEST),
    ("ep with a slash (would split MQTT topics)", "ep=a/b", LINKS, 40, Code.BAD_REQUEST),
    ("ep with an MQTT wildcard", "ep=a%23", LINKS, 40, Code.BAD_REQUEST),
    ("lt not a number", "ep=n&lt=abc", LINKS, 40, Code.BAD_REQUEST),
    ("lt zero", "ep=n&lt=0", LINKS, 40, Code.BAD_REQUEST),
    ("lt negative", "ep=n&lt=-5", LINKS, 40, Code.BAD_REQUEST),
    ("lt over 32 bits", "ep=n&lt=99999999999", LINKS, 40, Code.BAD_REQUEST),
    ("lt given twice", "ep=n&lt=60&lt=70", LINKS, 40, Code.BAD_REQUEST),
    ("lwm2m not a version", "ep=n&lwm2m=one", LINKS, 40, Code.BAD_REQUEST),
    ("unknown binding", "ep=n&b=Z", LINKS, 40, Code.BAD_REQUEST),
    ("text/plain payload", "ep=n", LINKS, 0, Code.UNSUPPORTED_CONTENT_FORMAT),
    ("json payload", "ep=n", b'["/3/0"]', 50, Code.UNSUPPORTED_CONTENT_FORMAT),
    ("no objects", "ep=n", b"", 40, Code.BAD_REQUEST),
    ("unterminated link", "ep=n", b"</3/0", 40, Code.BAD_REQUEST),
    ("link without brackets", "ep=n", b"3/0", 40, Code.BAD_REQUEST),
    ("empty link between commas", "ep=n", b"</1/0>,,</3/0>", 40, Code.BAD_REQUEST),
    ("trailing comma", "ep=n", b"</1/0>,", 40, Code.BAD_REQUEST),
    ("space between links", "ep=n", b"</1/0> </3/0>", 40, Code.BAD_REQUEST),
    ("dangling attribute separator", "ep=n", b"</3/0>;", 40, Code.BAD_REQUEST),
    ("relative uri", "ep=n", b"<3/0>", 40, Code.BAD_REQUEST),
    ("unterminated quoted attribute", "ep=n", b'</>;rt="oma.lwm2m', 40, Code.BAD_REQUEST),
    ("not UTF-8", "ep=n", b"</3/0>\xff", 40, Code.BAD_REQUEST),
]


@pytest.mark.parametrize("name,query,payload,cf,code", BAD_REGISTRATIONS,
                         ids=[b[0] for b in BAD_REGISTRATIONS])
async def test_malformed_registration_is_refused_and_nothing_stored(
        gateway_config, running_gateway, coap_peer, name, query, payload, cf, code):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        resp = await register(peer, cfg.coap_uri, query, payload, cf)
        assert resp.code == code, resp.payload
        assert resp.payload  # a diagnostic says why
        assert gw.store.registrations() == []
        with other_connection(cfg) as db:
            assert db.events() == []


async def test_link_format_with_attributes_and_alternate_root_is_accepted(
        gateway_config, running_gateway, coap_peer):
    cfg = gateway_config()
    links = b'</>;rt="oma.lwm2m";ct=11543,</1/0>,</3>;ver=1.1,</3/0>,</3313/0>;ver="1.1,x"'
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        assert (await register(peer, cfg.coap_uri, "ep=n", links)).code == Code.CREATED
        assert gw.store.registration("n").object_links == links.decode()  # type: ignore


async def test_bad_update_and_deregister_requests(gateway_config, running_gateway, coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        rid = (await register(peer, cfg.coap_uri)).opt.location_path[1]
        before = gw.store.registration("node-1")
        cases = [
            (req(Code.POST, f"{cfg.coap_uri}/rd/nosuchid"), Code.NOT_FOUND),
            (req(Code.DELETE, f"{cfg.coap_uri}/rd/nosuchid"), Code.NOT_FOUND),
            (req(Code.POST, f"{cfg.coap_uri}/rd/{rid}?lt=x"), Code.BAD_REQUEST),
            (req(Code.POST, f"{cfg.coap_uri}/rd/{rid}?b=%3F"), Code.BAD_REQUEST),
            (req(Code.POST, f"{cfg.coap_uri}/rd/{rid}", b"<oops", 40), Code.BAD_REQUEST),
            (req(Code.POST, f"{cfg.coap_uri}/rd/{rid}", b"</3/0>", 0),
             Code.UNSUPPORTED_CONTENT_FORMAT),
            (req(Code.GET, f"{cfg.coap_uri}/rd/{rid}"), Code.METHOD_NOT_ALLOWED),
            (req(Code.PUT, f"{cfg.coap_uri}/rd"), Code.METHOD_NOT_ALLOWED),
            (req(Code.GET, f"{cfg.coap_uri}/dp"), Code.METHOD_NOT_ALLOWED),
            (req(Code.POST, f"{cfg.coap_uri}/bs?ep=n"), Code.NOT_FOUND),
            (req(Code.GET, f"{cfg.coap_uri}/.well-known/core"), Code.NOT_FOUND),
        ]
        for msg, code in cases:
            resp = await ask(peer, msg)
            assert resp.code == code, (msg.opt.uri_path, msg.opt.uri_query, resp)
        assert gw.store.registration("node-1") == before
        assert [e.kind for e in gw.store.events()] == ["registered"]


# -- Send ------------------------------------------------------------------------------


async def test_send_is_committed_before_the_response(gateway_config, running_gateway,
                                                     coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg), coap_peer() as peer:
        await register(peer, cfg.coap_uri)
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR))
        assert resp.code == Code.CHANGED
        # read through another connection the moment the response is in
        with other_connection(cfg) as db:
            rows = [(r.endpoint, r.path, r.value, r.time) for r in db.readings()]
            sends = [(s.endpoint, s.content_format, s.records) for s in db.sends()]
            outbox = db.outbox_counts()
        assert rows == [
            ("node-1", "/3313/0/5702", 0.25, 1_700_000_000.5),
            ("node-1", "/3313/0/5703", -1, 1_700_000_000.0),
            ("node-1", "/3313/0/5704", 9.81, 1_700_000_000.0),
        ]
        assert sends == [("node-1", SENML_CBOR, 3)]
        assert outbox == (0, 0)  # MQTT disabled


async def test_senml_json_send_is_accepted(gateway_config, running_gateway, coap_peer):
    cfg = gateway_config()
    body = (b'[{"bn":"/3303/0/","n":"5700","v":21.5},{"n":"5701","vs":"Cel"},'
            b'{"n":"5750","vb":true},{"n":"5751","vd":"AAEC"}]')
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await register(peer, cfg.coap_uri)
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", body, SENML_JSON))
        assert resp.code == Code.CHANGED
        got = [(r.path, r.kind, r.value) for r in gw.store.readings()]
        assert got == [("/3303/0/5700", "v", 21.5), ("/3303/0/5701", "vs", "Cel"),
                       ("/3303/0/5750", "vb", True), ("/3303/0/5751", "vd", b"\x00\x01\x02")]


def _bad_sends() -> list[tuple[str, bytes, int | None, Code]]:
    def c(*records: Any) -> bytes:
        return cbor2.dumps(list(records))

    return [
        ("content format text/plain", ACCEL, 0, Code.UNSUPPORTED_CONTENT_FORMAT),
        ("no content format", ACCEL, None, Code.UNSUPPORTED_CONTENT_FORMAT),
        ("plain CBOR instead of SenML-CBOR", ACCEL, 60, Code.UNSUPPORTED_CONTENT_FORMAT),
        ("LwM2M-TLV not supported yet", b"\xc8\x00\x01\x02", 11542,
         Code.UNSUPPORTED_CONTENT_FORMAT),
        ("not CBOR at all", b"\xff\xfe\xfd", SENML_CBOR, Code.BAD_REQUEST),
        ("truncated CBOR", ACCEL[:-3], SENML_CBOR, Code.BAD_REQUEST),
        ("trailing bytes after the pack", ACCEL + b"\x00", SENML_CBOR, Code.BAD_REQUEST),
        ("a map, not an array", cbor2.dumps({0: "/3/0/0", 2: 1}), SENML_CBOR,
         Code.BAD_REQUEST),
        ("empty pack", c(), SENML_CBOR, Code.BAD_REQUEST),
        ("record is not a map", c([0, "/3/0/0"]), SENML_CBOR, Code.BAD_REQUEST),
        ("value is a string in v", c({0: "/3/0/0", 2: "1.0"}), SENML_CBOR, Code.BAD_REQUEST),
        ("value is a bool in v", c({0: "/3/0/0", 2: True}), SENML_CBOR, Code.BAD_REQUEST),
        ("name is a number", c({0: 5, 2: 1}), SENML_CBOR, Code.BAD_REQUEST),
        ("time is a string", c({0: "/3/0/0", 2: 1, 6: "now"}), SENML_CBOR, Code.BAD_REQUEST),
        ("unknown label", c({0: "/3/0/0", 2: 1, 99: 0}), SENML_CBOR, Code.BAD_REQUEST),
        ("text label in CBOR", c({"n": "/3/0/0", "v": 1}), SENML_CBOR, Code.BAD_REQUEST),
        ("missing value", c({0: "/3/0/0"}), SENML_CBOR, Code.BAD_REQUEST),
        ("two values", c({0: "/3/0/0", 2: 1, 3: "x"}), SENML_CBOR, Code.BAD_REQUEST),
        ("name is an object instance", c({0: "/3313/0", 2: 1}), SENML_CBOR,
         Code.BAD_REQUEST),
        ("name is not a path", c({0: "temperature", 2: 1}), SENML_CBOR, Code.BAD_REQUEST),
        ("id over 65534", c({0: "/3/0/65535", 2: 1}), SENML_CBOR, Code.BAD_REQUEST),
        ("NaN value", c({0: "/3/0/0", 2: math.nan}), SENML_CBOR, Code.BAD_REQUEST),
        ("infinite time", c({0: "/3/0/0", 2: 1, 6: math.inf}), SENML_CBOR,
         Code.BAD_REQUEST),
        ("integer beyond 64 bits", c({0: "/3/0/0", 2: 2**70}), SENML_CBOR, Code.BAD_REQUEST),
        ("more records than allowed", c(*({0: f"/3/0/{i}", 2: i} for i in range(6))),
         SENML_CBOR, Code.BAD_REQUEST),
        ("JSON with NaN", b'[{"n":"/3/0/0","v":NaN}]', SENML_JSON, Code.BAD_REQUEST),
        ("JSON with a duplicate label", b'[{"n":"/3/0/0","v":1,"v":2}]', SENML_JSON,
         Code.BAD_REQUEST),
        ("payload larger than allowed", c({0: "/3/0/0", 3: "x" * 3000}), SENML_CBOR,
         Code.REQUEST_ENTITY_TOO_LARGE),
    ]


BAD_SENDS = _bad_sends()


@pytest.mark.parametrize("name,payload,cf,code", BAD_SENDS, ids=[b[0] for b in BAD_SENDS])
async def test_bad_send_is_refused_and_nothing_stored(gateway_config, running_gateway,
                                                      coap_peer, name, payload, cf, code):
    cfg = gateway_config("max_records = 5\nmax_payload = 2048\n")  # appended to [coap]
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await register(peer, cfg.coap_uri)
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", payload, cf))
        assert resp.code == code, resp.payload
        with other_connection(cfg) as db:
            assert db.count_sends() == 0 and db.readings() == []
        assert gw.store.node_summaries()[0].sends == 0


async def test_send_from_an_unregistered_address_gets_not_found(gateway_config,
                                                                 running_gateway, coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg), coap_peer() as node, coap_peer() as stranger:
        await register(node, cfg.coap_uri)
        resp = await ask(stranger, req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR))
        assert resp.code == Code.NOT_FOUND
        with other_connection(cfg) as db:
            assert db.readings() == []


# -- the message layer and faults -----------------------------------------------------


class RawPeer:
    """A CoAP client on a plain UDP socket: exact bytes, chosen token and message id."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    async def exchange(self, port: int, data: bytes) -> aiocoap.Message:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, ("127.0.0.1", port))
        reply, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), 5)
        return aiocoap.Message.decode(reply)

    async def garbage(self, port: int, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", port))


def con(mid: int, token: bytes, code: Code, path: tuple[str, ...], payload: bytes = b"",
        cf: int | None = None, query: tuple[str, ...] = ()) -> bytes:
    msg = aiocoap.Message(code=code, uri_path=path, uri_query=query, payload=payload)
    msg.mtype, msg.mid, msg.token = aiocoap.CON, mid, token
    if cf is not None:
        msg.opt.content_format = cf
    return msg.encode()


async def test_duplicate_send_across_a_restart_is_acknowledged_and_not_stored_twice(
        gateway_config, running_gateway, clock):
    cfg = gateway_config()
    port = cfg.coap.port
    peer = RawPeer()
    try:
        send = con(2, b"\x5e\x4d", Code.POST, ("dp",), ACCEL, SENML_CBOR)
        async with running_gateway(cfg, clock=clock) as gw:
            reg = await peer.exchange(port, con(1, b"\x01", Code.POST, ("rd",), LINKS, 40,
                                                ("ep=raw", "lt=3600")))
            assert reg.code == Code.CREATED
            assert (await peer.exchange(port, send)).code == Code.CHANGED
            # a retransmission (same message id) within the process: aiocoap's dedup
            assert (await peer.exchange(port, send)).code == Code.CHANGED
            assert len(gw.store.readings()) == 3
        clock.advance(30)
        async with running_gateway(cfg, clock=clock) as gw:
            # the same datagram after a restart: only the token (+payload) can tell
            assert (await peer.exchange(port, send)).code == Code.CHANGED
            assert len(gw.store.readings()) == 3
            # the same report (same records, same SenML time) under a new token, as a
            # node re-sends it from its flash log: acknowledged, still stored once
            fresh = con(3, b"\x5e\x4e", Code.POST, ("dp",), ACCEL, SENML_CBOR)
            assert (await peer.exchange(port, fresh)).code == Code.CHANGED
            assert len(gw.store.readings()) == 3
            # the old token with a different payload is a different Send
            other = con(4, b"\x5e\x4d", Code.POST, ("dp",), pack({0: "/3/0/9", 2: 1}),
                        SENML_CBOR)
            assert (await peer.exchange(port, other)).code == Code.CHANGED
            assert len(gw.store.readings()) == 4
            # past EXCHANGE_LIFETIME the token may be reused: the bytes are still the
            # same report (test_report_resend.py has the rule), so still stored once
            clock.advance(EXCHANGE_LIFETIME_S + 1)
            again = con(5, b"\x5e\x4d", Code.POST, ("dp",), ACCEL, SENML_CBOR)
            assert (await peer.exchange(port, again)).code == Code.CHANGED
            assert len(gw.store.readings()) == 4
            assert gw.store.node_summaries()[0].sends == 2
    finally:
        peer.close()


async def test_garbage_datagrams_do_not_disturb_the_server(gateway_config, running_gateway,
                                                           coap_peer, caplog):
    cfg = gateway_config()
    rng = random.Random(7)
    junk = [
        b"",
        b"\x00",
        b"\xff" * 4,
        b"\x40",  # a CON header cut short
        b"\x4f\x02\x00\x01",  # token length 15 (reserved)
        b"\x00\x02\x00\x01",  # version 0
        b"\x40\x02\x00\x01\xbd",  # option with a 13-extended delta and no extension byte
        b"\x40\x02\x00\x01\xff",  # payload marker and no payload
        b"\x40\x02\x00\x01\xb2rd\x45",  # truncated option value
        b"\x44\x02\x00\x01\x01\x02\x03",  # token longer than the datagram
        con(9, b"\x09", Code.POST, ("dp",), b"\x00" * 40, 112)[:-20],
        *(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 1200))) for _ in range(50)),
    ]
    raw = RawPeer()
    try:
        async with running_gateway(cfg) as gw, coap_peer() as peer:
            for data in junk:
                await raw.garbage(cfg.coap.port, data)
            assert (await register(peer, cfg.coap_uri)).code == Code.CREATED
            send = req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR)
            assert (await ask(peer, send)).code == Code.CHANGED
            assert [r.endpoint for r in gw.store.registrations()] == ["node-1"]
            assert len(gw.store.readings()) == 3
        # a flood of junk does not flood the log
        noise = [r for r in caplog.records if r.name == "aiotkit.gateway.coap"
                 and r.levelno >= logging.WARNING]
        assert len(noise) <= 5
    finally:
        raw.close()


async def test_disk_error_during_send_answers_5_00_and_the_server_keeps_serving(
        gateway_config, running_gateway, coap_peer, monkeypatch):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await register(peer, cfg.coap_uri)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        with monkeypatch.context() as m:
            m.setattr(gw.store, "record_send", broken)
            resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR))
            assert resp.code == Code.INTERNAL_SERVER_ERROR
        resp = await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", ACCEL, SENML_CBOR))
        assert resp.code == Code.CHANGED
        assert len(gw.store.readings()) == 3


async def test_node_summaries_track_counts_and_last_values(gateway_config, running_gateway,
                                                           coap_peer):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw, coap_peer() as peer:
        await register(peer, cfg.coap_uri)
        for v in (1.5, 2.5):
            body = pack({0: "/3303/0/5700", 2: v}, {0: "/3303/0/5701", 3: "Cel"})
            assert (await ask(peer, req(Code.POST, f"{cfg.coap_uri}/dp", body,
                                        SENML_CBOR))).code == Code.CHANGED
        (s,) = gw.store.node_summaries()
        assert (s.endpoint, s.state, s.sends, s.readings) == ("node-1", "registered", 2, 4)
        assert s.last_values == {"/3303/0/5700": 2.5, "/3303/0/5701": "Cel"}
        assert s.address.startswith("127.0.0.1:") and s.last_seen >= s.updated_at


# -- a peer we did not write: libcoap's coap-client ---------------------------------------


async def _coap_client(binary: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", "7", "-B", "5", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return out.decode(errors="replace")


async def test_libcoap_client_registers_and_deregisters(gateway_config, running_gateway,
                                                        coap_client):
    cfg = gateway_config()
    async with running_gateway(cfg) as gw:
        out = await _coap_client(
            coap_client, "-m", "post", "-t", "40", "-e", "</3/0>",
            f"coap://127.0.0.1:{cfg.coap.port}/rd?ep=x&lt=60&lwm2m=1.1&b=U",
        )
        reg = gw.store.registration("x")
        assert reg is not None and reg.state == "registered", out
        assert "c:2.01" in out, out
        assert f"Location-Path:rd, Location-Path:{reg.reg_id}" in out, out
        assert (reg.lifetime, reg.lwm2m_version, reg.binding, reg.object_links) == (
            60, "1.1", "U", "</3/0>")
        out = await _coap_client(coap_client, "-m", "delete",
                                 f"coap://127.0.0.1:{cfg.coap.port}/rd/{reg.reg_id}")
        assert "c:2.02" in out, out
        assert gw.store.registration("x").state == "deregistered"  # type: ignore[union-attr]


@pytest.mark.parametrize("host,port", [
    ("127.0.0.1", 40000), ("10.0.0.254", 5683), ("224.0.1.187", 5683), ("::1", 40000),
    ("2001:db8::7", 5683), ("::ffff:0:1", 1234),
])
def test_peer_address_reads_a_socket_address_as_aiocoap_hostinfo_does(host, port):
    from aiocoap.transports.udp6 import UDP6EndpointAddress
    from aiocoap.util import hostportsplit
    from aiotkit.gateway.lwm2m.server import peer_address

    sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, family=socket.AF_INET6,
                                  flags=socket.AI_V4MAPPED)[0][-1]
    interface = type("FakeMessageInterface", (), {})()  # as aiocoap's own doctest does
    remote = UDP6EndpointAddress(sockaddr, interface)
    want_host, want_port = hostportsplit(remote.hostinfo)
    assert peer_address(remote) == (want_host, want_port or 5683)
