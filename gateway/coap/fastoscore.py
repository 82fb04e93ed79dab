"""The protected Send fast path: OSCORE (RFC 8613) verified below aiocoap.

With OSCORE required every Send is protected, and aiocoap's path (message, token and
request layers, ``OscoreSiteWrapper``, a task per request) costs most of what a Send
costs. ``FastOscore`` verifies the common protected Send itself, with the node's
``NodeContext`` from the key store (the same keys and the same replay window aiocoap
uses), stores it through the same group commit as ``coap.fastsend`` and answers the
protected 2.04 once the COMMIT is done.

**What it takes.** A CON datagram whose outer message is POST with the OSCORE option as
its only option and a ciphertext, from a plain IPv4(-mapped) UDP peer, not a
duplicate (the compact deduplication cache), whose OSCORE option (§6.1) carries a
Partial IV of 1 to 5 bytes and a kid (a kid context only if it is the context's),
whose kid names a context of the key store (``KeyStore.find_oscore``, loaded on first
use) whose replay window is known, and whose inner message, once verified, is exactly
what ``coap.fastsend`` takes: POST, Uri-Path ``dp``, Content-Format 110/112, a payload,
nothing else (no Echo, no Block1/Block2, no Observe), from an endpoint with a live
registration whose SenML decodes.

**Verification, in order** (RFC 8613 §8.2; nothing is changed until the last step):
the OSCORE option decompressed (§6.1: reserved and group bits refuse it); the context
by kid (and kid context); the Partial IV checked against the replay window (§7.4,
``ReplayWindow.is_valid``, read only); the nonce (§5.2: the request's Partial IV and
the node's Sender ID, XORed with the Common IV) and the AAD (§5.4: ``Enc_structure``
over ``[1, [10], request kid, request Partial IV, h'']``); AES-CCM-16-64-128 decryption
and tag check (``cryptography``'s ``AESCCM``, 8-byte tag); the inner message parsed
(``wire.plaintext``); registration and records (``Registry.sender_endpoint``,
``LwM2MResource.decode_records``). Only then is the request *taken*: the sequence
number is struck out of the window (``strike_out``, exactly as aiocoap's context does:
``NodeContext`` writes its window at ``close()`` only), the exchange admitted to the
deduplication cache, a new address bound and the registration moved to it (as
``LwM2MResource._send`` does for a verified Send), and the Send queued for the group
commit. Any earlier refusal returns False with nothing changed, and aiocoap gets the
datagram unchanged: it verifies it again itself and answers as before (4.01 Replay
detected, 4.01 + Echo for an unknown window, 4.00 Decryption failed, 4.01 unknown kid,
a protected 4.04 / 4.00 / 4.13 from the resource), and the window is struck once, by
whichever path takes the request.

**The answer** (§8.3): once the COMMIT is done, the piggybacked ACK with outer code 2.04
and an empty OSCORE option (no Partial IV: the request's nonce is reused, §5.2, as
aiocoap does for a response that is not a Notification), its payload the inner code
2.04 encrypted with the sender key under the same nonce and AAD. A Send whose storing
fails is answered the same way with inner code 5.00, as the resource's 5.00 is. The
bytes go into the deduplication cache under the datagram's (peer, MID): a
retransmission gets them again from aiocoap's layer; one that arrives during the COMMIT
is dropped there. The answer is protected with the keys the request was verified with
(captured when it was taken), even if the context is closed meanwhile (least recently
used beyond ``[security] max_loaded``).

The token stored with the Send is empty: OSCORE does not protect the outer token, and
aiocoap's path hands the resource the inner message, whose token is empty, so both
paths store the same. A ``FastPath`` of the datagram hook, offered protected datagrams
only (``DatagramHook.add(..., protected=True)``); it needs the compact deduplication
cache and can be turned off (``[coap] fast_oscore``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Hashable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from ..errors import RequestError
from ..lwm2m.registry import Registry
from ..lwm2m.server import LwM2MResource, sockaddr_peer
from . import wire
from .aio import oscore
from .fastsend import send_fields
from .layer import Ancdata, DatagramHook, Sockaddr

if TYPE_CHECKING:
    from ..security import KeyStore
    from ..security.context import NodeContext
    from ..storage.api import SendResult

__all__ = ["FastOscore", "Suite"]

log = logging.getLogger("aiotkit.gateway.coap")

_AES_CCM_16_64_128 = 10  # COSE algorithm (RFC 8152 §10.2), the contexts' (§3.2.1)
_NONCE = 13  # bytes: AES-CCM-16-64-128's nonce
_TAG = 8  # bytes: its tag
_PIV_BYTES = 5  # the Partial IV in the nonce (§5.2); longer ones are handed over
_MAX_DIAGNOSTIC = 120  # bytes of a refusal's diagnostic, as the resource sends
_ENCRYPT0 = b"\x83\x68Encrypt0\x40"  # CBOR ["Encrypt0", h'', ...] (§5.4, RFC 8152 §5.3)


def _bstr(value: bytes) -> bytes:
    """A CBOR byte string of fewer than 24 bytes (kid, Partial IV, the AAD array)."""
    return bytes((0x40 | len(value),)) + value


class Suite:
    """A context's AES-CCM keys, nonce base and AAD head, for requests from the node
    (the recipient) and the answers to them; made once per ``NodeContext``."""

    __slots__ = ("_aad_head", "_base", "kid", "opener", "sealer")

    def __init__(self, ctx: NodeContext) -> None:
        kid = ctx.recipient_id
        if ctx.alg_aead.value != _AES_CCM_16_64_128 or not 0 <= len(kid) <= _NONCE - 6 \
                or len(ctx.common_iv) < _NONCE:
            raise ValueError("not an AES-CCM-16-64-128 context this path can verify")
        self.kid = kid
        self.opener = AESCCM(ctx.recipient_key, _TAG)
        self.sealer = AESCCM(ctx.sender_key, _TAG)
        # §5.2: size of the ID, the ID left-padded to 7 bytes, the Partial IV to 5
        ident = bytes((len(kid),)) + bytes(_NONCE - 6 - len(kid)) + kid
        self._base = (int.from_bytes(ctx.common_iv[:_NONCE], "big")
                      ^ int.from_bytes(ident, "big") << 8 * _PIV_BYTES)
        # §5.4: external_aad = [oscore_version 1, [alg], request_kid, request_piv, I]
        self._aad_head = b"\x85\x01\x81" + bytes((_AES_CCM_16_64_128,)) + _bstr(kid)

    def nonce(self, seqno: int) -> bytes:
        """The nonce of the node's Partial IV ``seqno`` (< 2**40), §5.2."""
        return (self._base ^ seqno).to_bytes(_NONCE, "big")

    def aad(self, piv: bytes) -> bytes:
        """The AAD (``Enc_structure``) of a request with Partial IV ``piv`` as sent,
        and of the response to it (§5.4: the request's kid and Partial IV in both)."""
        return _ENCRYPT0 + _bstr(self._aad_head + _bstr(piv) + b"\x40")


class FastOscore:
    """Serves protected Sends offered by one interface's datagram ``hook``."""

    def __init__(self, hook: DatagramHook, resource: LwM2MResource, registry: Registry,
                 keys: KeyStore) -> None:
        self._hook = hook
        self._resource = resource
        self._registry = registry
        self._keys = keys
        self._suites: weakref.WeakKeyDictionary[NodeContext, Suite] = (
            weakref.WeakKeyDictionary())
        self.served = 0  # protected Sends answered here (tests, benchmarks)

    def take(self, msg: wire.Datagram, ancdata: Ancdata, address: Sockaddr) -> bool:
        # the outer message: CON POST, the OSCORE option alone, a ciphertext (§4.2)
        if msg.mtype != wire.CON or msg.code != wire.POST or len(msg.options) != 1 \
                or len(msg.payload) <= _TAG:
            return False
        number, value = msg.options[0]
        if number != wire.OSCORE:
            return False
        hook = self._hook
        key = wire.dedup_key(address, msg.mid)
        if hook.cache.get(key, False) is not False:
            return False  # a duplicate: aiocoap's layer answers it from the cache
        peer = sockaddr_peer(address)
        if peer is None:
            return False
        # §6.1: the compressed COSE object
        option = wire.oscore_option(value)
        if option is None or option.kid is None or not 0 < len(option.piv) <= _PIV_BYTES:
            return False
        piv = option.piv
        # §8.2 step 3: the recipient context, by kid (and kid context)
        unprotected: dict[int, bytes] = {oscore.COSE_KID: option.kid}
        if option.kid_context is not None:
            unprotected[oscore.COSE_KID_CONTEXT] = option.kid_context
        try:
            ctx = self._keys.find_oscore(unprotected)
        except KeyError:
            return False  # aiocoap answers 4.01
        if ctx.closed:
            return False
        # §7.4: the replay window, read only; unknown: aiocoap's Echo recovery (B.1.2)
        window = ctx.recipient_replay_window
        seqno = int.from_bytes(piv, "big")
        if not window.is_initialized() or not window.is_valid(seqno):
            return False
        suite = self._suite(ctx)
        if suite is None:
            return False
        # §5.2, §5.4, §8.2 steps 5-7: nonce, AAD, AES-CCM
        nonce = suite.nonce(seqno)
        aad = suite.aad(piv)
        try:
            plaintext = suite.opener.decrypt(nonce, msg.payload, aad)
        except InvalidTag:
            return False  # aiocoap answers 4.00 Decryption failed
        # the inner message: exactly the Send fastsend takes
        try:
            code, options, payload = wire.plaintext(plaintext)
        except wire.WireError:
            return False
        fields = send_fields(wire.Datagram(wire.CON, code, msg.mid, msg.token, options,
                                           payload, False))
        if fields is None:
            return False
        cf, body = fields
        endpoint = ctx.endpoint
        try:
            reg = self._registry.sender_endpoint(endpoint)
            records = self._resource.decode_records(cf, body)
        except RequestError:
            return False  # the resource answers it, protected (4.04, 4.00, 4.13)
        # taken: from here on the request is this path's
        window.strike_out(seqno)  # as aiocoap's context does once it has decrypted
        hook.admit(key)
        head = wire.header(wire.ACK, wire.CHANGED, msg.mid, msg.token)
        answer = _Answer(self, suite, nonce, aad, head, key, ancdata, address, endpoint)
        try:
            if (reg.host, reg.port) != peer:  # verified: the context's, from any address
                self._keys.bind_address(endpoint, *peer)
                reg = self._registry.update(reg.reg_id, host=peer[0], port=peer[1])
            future = self._registry.submit_send(reg, token=b"", content_format=cf,
                                                payload=body, records=records)
        except RequestError as e:
            answer.send(int(e.code), e.diagnostic.encode("utf-8")[:_MAX_DIAGNOSTIC])
            return True
        except Exception:
            log.exception("protected Send from ep=%s failed with an internal error",
                          endpoint)
            answer.send(wire.INTERNAL_SERVER_ERROR)
            return True
        future.add_done_callback(answer.stored)
        return True

    def _suite(self, ctx: NodeContext) -> Suite | None:
        suite = self._suites.get(ctx)
        if suite is None:
            try:
                suite = Suite(ctx)
            except ValueError:
                return None
            self._suites[ctx] = suite
        return suite


class _Answer:
    """The protected answer to one taken request, sent once its Send is stored."""

    __slots__ = (
        "_aad",
        "_address",
        "_ancdata",
        "_endpoint",
        "_head",
        "_key",
        "_nonce",
        "_path",
        "_suite",
    )

    def __init__(self, path: FastOscore, suite: Suite, nonce: bytes, aad: bytes,
                 head: bytes, key: Hashable, ancdata: Ancdata, address: Sockaddr,
                 endpoint: str) -> None:
        self._path = path
        self._suite = suite
        self._nonce = nonce
        self._aad = aad
        self._head = head
        self._key = key
        self._ancdata = ancdata
        self._address = address
        self._endpoint = endpoint

    def stored(self, future: asyncio.Future[SendResult]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("protected Send from ep=%s not stored: %s", self._endpoint, exc)
            self.send(wire.INTERNAL_SERVER_ERROR)
        else:
            self.send(wire.CHANGED)

    def send(self, code: int, payload: bytes = b"") -> None:
        """Answer inner ``code`` (and ``payload``) protected under the request's nonce:
        outer 2.04, an empty OSCORE option (§8.3, §6.1)."""
        inner = bytes((code,)) + (b"\xff" + payload if payload else b"")
        sealed = self._suite.sealer.encrypt(self._nonce, inner, self._aad)
        data = self._head + wire.after_token(((wire.OSCORE, b""),), sealed)
        path = self._path
        hook = path._hook
        hook.cache.respond(self._key, data)
        if hook.closed:
            return  # shut down: the node retransmits to the next gateway
        hook.send(data, self._ancdata, self._address)
        path.served += 1
