"""Resource bounds a hostile peer tries, over real sockets: Block1 uploads that never
finish or never end, registrations past the fleet's size, object links of megabytes."""

from __future__ import annotations

from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.coap.blockwise import BoundedSpool
from test_hostile_peer import LINK, SENML_CBOR, Raw, register

SZX_64, SZX_1K = 2, 6
LINKS = b"</1/0>,</3/0>,</3313/0>,</33000/0>,</33001/0>,</33002/0>,</33003/0>,</4/0>"


def _site(gw: Gateway) -> Any:
    """The gateway's LwM2M resource, given the bounds of its config (``configure``; the
    daemon does the same at start once app.py wires it: calling it twice is harmless)."""
    site = gw._coap.serversite
    site.configure(gw.config.coap, gw.config.registry)
    return site


def block(mid: int, path: tuple[str, ...], num: int, more: bool, szx: int, payload: bytes,
          cf: int, query: tuple[str, ...] = (), size1: int | None = None) -> bytes:
    msg = aiocoap.Message(code=Code.POST, uri_path=path, uri_query=query, payload=payload)
    msg.mtype, msg.mid, msg.token = aiocoap.CON, mid & 0xFFFF, mid.to_bytes(4, "big")
    msg.opt.content_format = cf
    msg.opt.block1 = BlockOption.BlockwiseTuple(num, more, szx)
    if size1 is not None:
        msg.opt.size1 = size1
    return msg.encode()


def reg_query(ep: str) -> tuple[str, ...]:
    return (f"ep={ep}", "lt=300", "lwm2m=1.1", "b=U")


async def _start(raw: Raw, port: int, mid: int, ep: str) -> aiocoap.Message:
    """The first 64-byte block of a Register of ``ep`` that never finishes."""
    return await raw.exchange(port, block(mid, ("rd",), 0, True, SZX_64, LINKS[:64], LINK,
                                          reg_query(ep)))


async def test_unfinished_block1_transfers_are_bounded_per_peer_and_in_total(
        gateway_config, running_gateway):
    cfg = gateway_config("max_block1_transfers_per_peer = 3\nmax_block1_transfers = 5\n")
    port = cfg.coap.port
    a, b = Raw(), Raw()
    try:
        async with running_gateway(cfg) as gw:
            spool: BoundedSpool = _site(gw).block1
            now = [1000.0]
            spool.clock = lambda: now[0]
            for i in range(3):
                assert (await _start(a, port, i, f"a{i}")).code == Code.CONTINUE
            busy = await _start(a, port, 3, "a3")  # a fourth from the same peer
            assert busy.code == Code.SERVICE_UNAVAILABLE
            assert 1 <= busy.opt.max_age <= 93
            for i in range(2):
                assert (await _start(b, port, 10 + i, f"b{i}")).code == Code.CONTINUE
            assert (await _start(b, port, 12, "b2")).code == Code.SERVICE_UNAVAILABLE
            assert len(spool) == 5 and spool.buffered == 5 * 64
            # a transfer that ends frees its place; the one that took it goes on
            last = block(20, ("rd",), 1, False, SZX_64, LINKS[64:], LINK, reg_query("a0"))
            assert (await a.exchange(port, last)).code == Code.CREATED
            assert gw.store.registration("a0") is not None
            assert (await _start(b, port, 21, "b2")).code == Code.CONTINUE
            # idle transfers are dropped after block1_idle_s: room for new ones again
            now[0] += cfg.coap.block1_idle_s + 1
            for i in range(3):
                assert (await _start(a, port, 30 + i, f"c{i}")).code == Code.CONTINUE
            assert len(spool) == 3
            late = block(40, ("rd",), 1, False, SZX_64, LINKS[64:], LINK, reg_query("b0"))
            assert (await b.exchange(port, late)).code == Code.REQUEST_ENTITY_INCOMPLETE
    finally:
        a.close()
        b.close()


async def test_a_block1_upload_past_max_payload_is_refused_4_13_at_the_block_that_passes_it(
        gateway_config, running_gateway):
    cfg = gateway_config("max_payload = 256\nmax_block1_bytes = 100000\n")
    port = cfg.coap.port
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            spool: BoundedSpool = _site(gw).block1
            for num in range(4):  # 4 x 64 = 256 bytes: still within max_payload
                answer = await raw.exchange(port, block(num, ("dp",), num, True, SZX_64,
                                                        b"x" * 64, SENML_CBOR))
                assert answer.code == Code.CONTINUE, num
            answer = await raw.exchange(port, block(4, ("dp",), 4, True, SZX_64, b"x" * 64,
                                                    SENML_CBOR))
            assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE
            assert answer.opt.size1 == 256
            assert len(spool) == 0 and spool.buffered == 0  # forgotten at once
            answer = await raw.exchange(port, block(5, ("dp",), 5, True, SZX_64, b"x" * 64,
                                                    SENML_CBOR))
            assert answer.code == Code.REQUEST_ENTITY_INCOMPLETE
            # a first block that announces too much (Size1) is refused before any buffering
            answer = await raw.exchange(port, block(6, ("dp",), 0, True, SZX_64, b"x" * 64,
                                                    SENML_CBOR, size1=10**6))
            assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE and answer.opt.size1 == 256
            assert len(spool) == 0
    finally:
        raw.close()


async def test_a_13_mb_link_payload_is_refused(gateway_config, running_gateway):
    cfg = gateway_config()
    port = cfg.coap.port
    links = (",".join(f"</{n}/0>" for n in range(200000)).encode())[:1_300_000]
    links = links[:links.rindex(b",")]  # valid link-format: only its size is wrong
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            spool: BoundedSpool = _site(gw).block1
            blocks = [links[i:i + 1024] for i in range(0, len(links), 1024)]
            refused_at = None
            for num, chunk in enumerate(blocks):
                more = num < len(blocks) - 1
                answer = await raw.exchange(port, block(num, ("rd",), num, more, SZX_1K,
                                                        chunk, LINK, reg_query("big")))
                if answer.code != Code.CONTINUE:
                    refused_at = num
                    break
            assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE
            assert refused_at == cfg.coap.max_payload // 1024  # the block that passes it
            assert answer.opt.size1 == cfg.coap.max_payload
            assert spool.buffered == 0
            assert gw.store.registration("big") is None
    finally:
        raw.close()


async def test_object_links_over_max_links_bytes_are_refused_4_13(
        gateway_config, running_gateway):
    cfg = gateway_config("[registry]\nmax_links_bytes = 2048\n")
    port = cfg.coap.port
    links = ",".join(f"</{n}/0>" for n in range(3000, 3500)).encode()[:4096]
    links = links[:links.rindex(b",")]
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            _site(gw)
            blocks = [links[i:i + 1024] for i in range(0, len(links), 1024)]
            for num, chunk in enumerate(blocks):
                more = num < len(blocks) - 1
                answer = await raw.exchange(port, block(num, ("rd",), num, more, SZX_1K,
                                                        chunk, LINK, reg_query("wide")))
            assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE
            assert answer.opt.size1 == 2048
            assert gw.store.registration("wide") is None
            ok = await raw.exchange(port, register(99, "narrow"))
            assert ok.code == Code.CREATED
    finally:
        raw.close()


async def test_registrations_beyond_max_endpoints_are_refused_and_known_ones_still_update(
        gateway_config, running_gateway):
    cfg = gateway_config("[registry]\nmax_endpoints = 3\n")
    port = cfg.coap.port
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            _site(gw)
            locations = {}
            for i in range(3):
                answer = await raw.exchange(port, register(i, f"ep-{i}"))
                assert answer.code == Code.CREATED
                locations[i] = answer.opt.location_path
            full = await raw.exchange(port, register(3, "ep-new"))
            assert full.code == Code.SERVICE_UNAVAILABLE
            assert full.opt.max_age and full.opt.max_age > 0
            assert gw.store.registration("ep-new") is None
            # a known endpoint registers again, and Updates go on
            assert (await raw.exchange(port, register(4, "ep-0"))).code == Code.CREATED
            update = aiocoap.Message(code=Code.POST, uri_path=locations[1])
            update.mtype, update.mid, update.token = aiocoap.CON, 5, b"\x05"
            assert (await raw.exchange(port, update.encode())).code == Code.CHANGED
            # a de-registration makes room for a new endpoint
            bye = aiocoap.Message(code=Code.DELETE, uri_path=locations[2])
            bye.mtype, bye.mid, bye.token = aiocoap.CON, 6, b"\x06"
            assert (await raw.exchange(port, bye.encode())).code == Code.DELETED
            assert (await raw.exchange(port, register(7, "ep-new"))).code == Code.CREATED
            assert (await raw.exchange(port, register(8, "ep-more"))).code == \
                Code.SERVICE_UNAVAILABLE
            # the de-registered endpoint is known: it always comes back
            assert (await raw.exchange(port, register(9, "ep-2"))).code == Code.CREATED
    finally:
        raw.close()


async def test_a_flood_of_new_endpoints_past_new_endpoints_per_s_is_refused_5_03(
        gateway_config, running_gateway):
    cfg = gateway_config("[registry]\nnew_endpoints_per_s = 2\n")
    port = cfg.coap.port
    raw = Raw()
    try:
        async with running_gateway(cfg) as gw:
            _site(gw)
            codes = [(await raw.exchange(port, register(i, f"flood-{i}"))).code
                     for i in range(5)]
            assert codes.count(Code.CREATED) <= 2 + 2  # a second boundary may pass
            refused = await raw.exchange(port, register(9, "flood-9"))
            if refused.code == Code.SERVICE_UNAVAILABLE:
                assert refused.opt.max_age == 1
            assert Code.SERVICE_UNAVAILABLE in codes or \
                refused.code == Code.SERVICE_UNAVAILABLE
            # known endpoints are never counted as new
            assert (await raw.exchange(port, register(10, "flood-0"))).code == Code.CREATED
    finally:
        raw.close()
