"""The gateway's OSCORE key store: one security context per node, kept in the database.

Public names: ``KeyStore``, ``KeyInfo``, ``NodeCredentials``, ``GATEWAY_SENDER_ID``.

``KeyStore.open(storage, security_config)`` (or ``KeyStore.from_config(storage,
config)``) reads the at-rest key (``atrest``), checks it against the database, and
builds the lookup index (kid -> endpoint) of the contexts not revoked. Contexts
themselves (``context.NodeContext``: derived keys, sequence numbers, replay window) are
loaded on first use and kept, the least recently used closed (state written) beyond
``[security] max_loaded``; ``close()`` closes all of them cleanly.

Key management: ``create`` (random 16-byte master secret, 8-byte salt, a node ID of 2 to
7 bytes unique in the store; the gateway's sender ID is ``GATEWAY_SENDER_ID``, one byte,
so the two never collide), ``get`` / ``list`` (``KeyInfo``: no secret), ``rotate`` (new
secret and salt for the same IDs; the old context stops working at once), ``revoke``
(the secrets are erased; the row and its kid stay), ``export`` (the node's side,
``NodeCredentials``: **once** per creation or rotation; afterwards ``AlreadyExported``,
so a second copy of a node's key can only come from a rotation, which an admin sees).

aiocoap's interfaces:

- server: ``OscoreSiteWrapper(site, server_credentials=key_store)`` calls
  ``find_oscore(unprotected)``: one dict lookup by kid (and the kid context, if the
  request carries one), ``KeyError`` when unknown or revoked.
- client: ``Context.client_credentials = key_store``; aiocoap's OSCORE transport calls
  ``credentials_from_request(message)``, answered by the request's remote address
  (``bind_address(endpoint, host, port)`` says which endpoint lives where; the LwM2M
  registry knows it), ``CredentialsMissingError`` when no context applies: the request
  goes out unprotected, so whoever wires this must refuse that for a node that has one.
- ``endpoint_of(ctx_or_remote)``: the endpoint of a context, or of the remote aiocoap
  puts on an unprotected request (``OSCOREAddress``).

**Unclean stops.** ``oscore_meta`` says whether the last run closed cleanly; ``open``
marks the run as running (durably) and, when the last one did not end cleanly, forgets
every stored replay window (one UPDATE) so that each context starts *unknown* and uses
Echo recovery; the sequence-number bounds are always safe (``context``). ``close``
writes the windows and marks the run clean.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2

from ..coap.aio import credentials, oscore
from ..errors import StoreError
from ..storage.api import KeyStorage, OscoreRow
from .atrest import AtRestKey, context_aad
from .context import ALGORITHM, MAX_ID_BYTES, NodeContext
from .errors import (
    AlreadyExported,
    ContextExists,
    ContextRevoked,
    KeyRequestError,
    UnknownContext,
)

if TYPE_CHECKING:
    from ..config import GatewayConfig, SecurityConfig
    from ..storage.api import Storage

__all__ = ["GATEWAY_SENDER_ID", "KeyInfo", "KeyStore", "NodeCredentials"]

log = logging.getLogger("aiotkit.gateway.security")

GATEWAY_SENDER_ID = b"\x00"  # the gateway's sender ID in every context (1 byte)
NODE_ID_MIN = 2  # node IDs are 2..7 bytes: never the gateway's
SECRET_BYTES = 16
SALT_BYTES = 8
MAX_ID_CONTEXT = 32  # bytes: a kid context travels in every request that names it
_ID_TRIES = 16  # random node IDs tried per length before a longer one
_META_RUN = "run"  # "running" from open to a clean close
_META_CHECK = "key_check"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown of a context: identifiers and times, never a secret."""

    endpoint: str
    node_id: bytes  # the node's sender ID: the kid of its requests
    gateway_id: bytes
    id_context: bytes | None
    created: float
    rotated: float | None
    revoked: float | None
    exported: float | None
    generation: int

    @property
    def state(self) -> str:
        if self.revoked is not None:
            return "revoked"
        return "exported" if self.exported is not None else "new"

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "state": self.state,
                "node_id": self.node_id.hex(), "gateway_id": self.gateway_id.hex(),
                "id_context": None if self.id_context is None else self.id_context.hex(),
                "algorithm": ALGORITHM, "kdf": "HKDF-SHA-256",
                "created": self.created, "rotated": self.rotated, "revoked": self.revoked,
                "exported": self.exported, "generation": self.generation}


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """The node's side of a context (node = sender): what provisioning puts on it."""

    endpoint: str
    sender_id: bytes  # the node's ID
    recipient_id: bytes  # the gateway's ID
    secret: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    id_context: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The REST API's form (hex); ``export.aiocoap_settings`` makes aiocoap's of it."""
        return {"endpoint": self.endpoint, "sender_id": self.sender_id.hex(),
                "recipient_id": self.recipient_id.hex(), "secret": self.secret.hex(),
                "salt": self.salt.hex(),
                "id_context": None if self.id_context is None else self.id_context.hex(),
                "algorithm": ALGORITHM, "kdf": "HKDF-SHA-256"}


def _info(row: OscoreRow) -> KeyInfo:
    return KeyInfo(row.endpoint, row.kid, row.gateway_id, row.kid_context, row.created,
                   row.rotated, row.revoked, row.exported, row.generation)


def _address(host: str, port: int) -> tuple[str, int]:
    """An address as the store keys it: IPv4-mapped IPv6 as IPv4, no brackets, no zone
    surprises, names lower-case."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower(), port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), port
    return str(ip), port


def _remote_address(remote: Any) -> tuple[str, int] | None:
    """(host, port) of an aiocoap remote (a UDP endpoint address, or an undecided one
    from ``Message(uri=...)``)."""
    sockaddr = getattr(remote, "sockaddr", None)
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return _address(str(sockaddr[0]), int(sockaddr[1]))
    hostinfo = getattr(remote, "hostinfo", None)
    if isinstance(hostinfo, str):
        from ..coap.aio import hostportsplit

        try:
            host, port = hostportsplit(hostinfo)
        except ValueError:
            return None
        return _address(host, port or 5683)
    return None


class KeyStore:
    """The gateway's OSCORE contexts (module docstring); ``open`` one, ``close`` it."""

    def __init__(self, storage: KeyStorage, key: AtRestKey, *, max_loaded: int = 20000,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = storage
        self._key = key
        self._max_loaded = max_loaded
        self._clock = clock
        self._by_kid: dict[bytes, str] = {}  # contexts not revoked: kid -> endpoint
        self._loaded: OrderedDict[str, NodeContext] = OrderedDict()  # LRU
        self._by_addr: dict[tuple[str, int], str] = {}
        self._addr_of: dict[str, tuple[str, int]] = {}
        self._open = False
        self.lookups = 0  # find_oscore calls (a benchmark's counter)
        # the endpoint registered from an address (the gateway's registrations), for
        # credentials_from_request when the address was not bound since the start
        self.locate: Callable[[str, int], str | None] | None = None

    def __repr__(self) -> str:
        return f"<KeyStore {len(self._by_kid)} contexts, {len(self._loaded)} loaded>"

    @classmethod
    def open(cls, storage: KeyStorage, config: SecurityConfig, *,
             environ: Mapping[str, str] | None = None,
             clock: Callable[[], float] = time.time, database: str = "database"
             ) -> KeyStore | None:
        """The key store of ``storage`` with the key ``config`` names; None when no key
        is configured. ``KeyConfigError`` / ``WrongKeyError`` when it cannot be used."""
        key = AtRestKey.load(config, environ)
        if key is None:
            return None
        store = cls(storage, key, max_loaded=config.max_loaded, clock=clock)
        store.start(database)
        return store

    @classmethod
    def from_config(cls, storage: Storage, config: GatewayConfig, *,
                    environ: Mapping[str, str] | None = None,
                    clock: Callable[[], float] = time.time) -> KeyStore | None:
        """``open`` for a gateway: its storage's ``keys`` and its ``[security]``."""
        return cls.open(storage.keys, config.security, environ=environ, clock=clock,
                        database=str(config.gateway.db))

    def start(self, database: str = "database") -> None:
        """Check the key, recover from an unclean stop, build the index."""
        db = self._db
        check = db.oscore_meta(_META_CHECK)
        if check is None:
            db.oscore_set_meta(_META_CHECK, self._key.check_value())
        else:
            self._key.verify_check(check, database)
        if db.oscore_meta(_META_RUN) == "running":
            n = db.oscore_forget_replay()
            log.warning("the last run did not close the OSCORE contexts cleanly: %d replay"
                        " windows are unknown, nodes will be asked to prove freshness"
                        " (Echo, RFC 8613 B.1.2)", n)
        db.oscore_set_meta(_META_RUN, "running")
        self._by_kid = dict(db.oscore_index())
        self._open = True

    def close(self) -> None:
        """Close every loaded context (state written) and mark the run clean."""
        if not self._open:
            return
        self._open = False
        failed = False
        while self._loaded:
            _ep, ctx = self._loaded.popitem(last=False)
            try:
                ctx.close()
            except StoreError as e:
                failed = True
                log.error("%r: state not written at close: %s", ctx, e)
        if not failed:
            self._db.oscore_set_meta(_META_RUN, "clean")

    def abandon(self) -> None:
        """Stop using every context without writing anything: what a crash leaves (for
        tests of recovery)."""
        self._open = False
        for ctx in self._loaded.values():
            ctx.close(persist=False)
        self._loaded.clear()

    def _require_open(self) -> None:
        if not self._open:
            raise KeyRequestError("the key store is closed")

    # -- aiocoap: server side ----------------------------------------------------------

    def find_oscore(self, unprotected: Mapping[int, Any]) -> NodeContext:
        """The context of an incoming request's kid (``OscoreSiteWrapper``); KeyError
        when unknown or revoked (the wrapper answers 4.01)."""
        self.lookups += 1
        kid = unprotected.get(oscore.COSE_KID)
        ep = self._by_kid.get(kid) if isinstance(kid, bytes) else None
        if ep is None or not self._open:
            raise KeyError("no security context")
        ctx = self._context(ep)
        if ctx is None:
            raise KeyError("no security context")
        kid_context = unprotected.get(oscore.COSE_KID_CONTEXT)
        if kid_context is not None and kid_context != ctx.id_context:
            raise KeyError("no security context")
        return ctx

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        """The gateway's own recipient IDs (aiocoap asks when it picks an EDHOC C_R)."""
        return set(self._by_kid)

    # -- aiocoap: client side ----------------------------------------------------------

    def credentials_from_request(self, message: Any) -> NodeContext:
        """The context to protect a request to a node with, by its remote address
        (``bind_address``); ``CredentialsMissingError`` when there is none."""
        addr = _remote_address(message.remote)
        ep = self._by_addr.get(addr) if addr is not None else None
        if ep is None and addr is not None and self.locate is not None:
            ep = self.locate(*addr)  # not bound since the start: its stored registration
            if ep is not None and self._context(ep) is not None:
                self.bind_address(ep, *addr)
        ctx = self._context(ep) if ep is not None and self._open else None
        if ctx is None:
            raise credentials.CredentialsMissingError(
                f"no OSCORE context for {addr[0] if addr else 'this remote'}")
        return ctx

    def bind_address(self, endpoint: str, host: str, port: int) -> None:
        """``endpoint`` is at ``host``/``port`` now (its registration): requests there
        are protected with its context. The address's previous endpoint is unbound."""
        addr = _address(host, port)
        old = self._addr_of.pop(endpoint, None)
        if old is not None and self._by_addr.get(old) == endpoint:
            del self._by_addr[old]
        previous = self._by_addr.get(addr)
        if previous is not None and previous != endpoint:
            self._addr_of.pop(previous, None)
        self._by_addr[addr] = endpoint
        self._addr_of[endpoint] = addr

    def unbind_address(self, endpoint: str) -> None:
        """``endpoint`` has no address any more (de-registered, expired)."""
        addr = self._addr_of.pop(endpoint, None)
        if addr is not None and self._by_addr.get(addr) == endpoint:
            del self._by_addr[addr]

    def endpoint_of(self, ctx: Any) -> str | None:
        """The endpoint of a context of this store, or of an aiocoap remote carrying one
        (``request.remote`` of a request ``OscoreSiteWrapper`` unprotected); None for
        anything else (an unprotected request)."""
        ctx = getattr(ctx, "security_context", ctx)
        if isinstance(ctx, NodeContext) and self._loaded.get(ctx.endpoint) is ctx:
            return ctx.endpoint
        return None

    def context(self, endpoint: str) -> NodeContext | None:
        """``endpoint``'s live context (loaded if need be), None if it has none."""
        return self._context(endpoint) if self._open else None

    def __len__(self) -> int:
        return len(self._by_kid)

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    def _context(self, endpoint: str) -> NodeContext | None:
        ctx = self._loaded.get(endpoint)
        if ctx is not None:
            self._loaded.move_to_end(endpoint)
            return ctx
        row = self._db.oscore_row(endpoint)
        if row is None or row.revoked is not None:
            return None
        secret, salt = self._unseal(row)
        ctx = NodeContext(endpoint=endpoint, sender_id=row.gateway_id, recipient_id=row.kid,
                          master_secret=secret, master_salt=salt, id_context=row.kid_context,
                          seq_bound=row.seq_bound, replay=row.replay, sink=self,
                          generation=row.generation)
        self._loaded[endpoint] = ctx
        while len(self._loaded) > self._max_loaded:
            _ep, old = self._loaded.popitem(last=False)
            old.close()
        return ctx

    def _unseal(self, row: OscoreRow) -> tuple[bytes, bytes]:
        plain = self._key.unseal(row.sealed, context_aad(row.endpoint, row.kid,
                                                         row.kid_context, row.gateway_id),
                                 f"OSCORE context of {row.endpoint!r}")
        version, secret, salt = cbor2.loads(plain)
        if version != 1:
            raise StoreError(f"OSCORE context of {row.endpoint!r}: unknown format {version}")
        return bytes(secret), bytes(salt)

    # StateSink (context.NodeContext): durable when it returns, or raises
    def save_state(self, ctx: NodeContext, seq_bound: int, replay: str | None) -> None:
        self._db.oscore_save_state(ctx.endpoint, ctx.generation, seq_bound, replay)

    # -- key management ----------------------------------------------------------------

    def get(self, endpoint: str) -> KeyInfo:
        row = self._db.oscore_row(endpoint)
        if row is None:
            raise UnknownContext(f"no OSCORE context for {endpoint!r}")
        return _info(row)

    def create(self, endpoint: str, *, id_context: bytes | None = None) -> KeyInfo:
        """A new context for ``endpoint`` (fresh IDs and material); ``ContextExists``
        if it has a live one. Its node side is then ``export``\\ ed once."""
        old = self._replaceable(endpoint, id_context, "rotate it, or revoke it first")
        row = self._add(endpoint, self._new_node_id(), id_context, old)
        log.info("OSCORE context created for ep=%s (kid %s)", endpoint, row.kid.hex())
        return _info(row)

    def import_context(self, endpoint: str, *, node_id: bytes, secret: bytes, salt: bytes,
                       id_context: bytes | None = None) -> KeyInfo:
        """A context for ``endpoint`` from keys made elsewhere (``aiot provision
        --offline`` writes them to the board and to a key file; ``aiot keys import``
        brings them here). The material must look like the gateway's own: a free node
        ID of 2..7 bytes (never the gateway's), a 16-byte secret, an 8-byte salt. It
        counts as exported already: the node has it. ``ContextExists`` if ``endpoint``
        has a live context."""
        if not NODE_ID_MIN <= len(node_id) <= MAX_ID_BYTES:
            raise KeyRequestError(f"a node ID is {NODE_ID_MIN}..{MAX_ID_BYTES} bytes")
        if len(secret) != SECRET_BYTES or len(salt) != SALT_BYTES:
            raise KeyRequestError(f"the secret is {SECRET_BYTES} bytes and the salt"
                                  f" {SALT_BYTES}")
        old = self._replaceable(endpoint, id_context, "revoke it first to import keys for it")
        if node_id in self._by_kid or self._db.oscore_kid_taken(node_id):
            raise ContextExists(f"node ID {node_id.hex()} belongs to another endpoint")
        row = self._add(endpoint, node_id, id_context, old, material=(secret, salt),
                        exported=True)
        log.info("OSCORE context imported for ep=%s (kid %s)", endpoint, node_id.hex())
        return _info(row)

    def _replaceable(self, endpoint: str, id_context: bytes | None,
                     hint: str) -> OscoreRow | None:
        """Check a new context's endpoint and ID context; the endpoint's revoked context
        it replaces, if any. ``ContextExists`` (with ``hint``) if it has a live one."""
        self._require_open()
        _check_endpoint(endpoint)
        if id_context is not None and not 1 <= len(id_context) <= MAX_ID_CONTEXT:
            raise KeyRequestError(f"an ID context is 1..{MAX_ID_CONTEXT} bytes")
        old = self._db.oscore_row(endpoint)
        if old is not None and old.revoked is None:
            raise ContextExists(f"{endpoint!r} has an OSCORE context already ({hint})")
        return old

    def _add(self, endpoint: str, kid: bytes, id_context: bytes | None,
             old: OscoreRow | None, *, material: tuple[bytes, bytes] | None = None,
             exported: bool = False) -> OscoreRow:
        """Store a new context for ``endpoint`` under node ID ``kid`` in place of
        ``old`` (revoked, or None): the next generation."""
        now = self._clock()
        row = self._sealed_row(endpoint, kid, id_context, now, rotated=None,
                               generation=1 if old is None else old.generation + 1,
                               material=material, exported=now if exported else None)
        self._db.oscore_put(row)
        if old is not None:
            self._by_kid.pop(old.kid, None)
        self._by_kid[kid] = endpoint
        return row

    def rotate(self, endpoint: str) -> KeyInfo:
        """New master secret and salt for ``endpoint``'s IDs: the old context stops
        working now; the node needs the new side (``export``)."""
        self._require_open()
        old = self._db.oscore_row(endpoint)
        if old is None:
            raise UnknownContext(f"no OSCORE context for {endpoint!r}")
        if old.revoked is not None:
            raise ContextRevoked(f"{endpoint!r}'s OSCORE context is revoked; create a new"
                                 " one")
        self._drop_loaded(endpoint)
        now = self._clock()
        row = self._sealed_row(endpoint, old.kid, old.kid_context, now, rotated=now,
                               generation=old.generation + 1, created=old.created)
        self._db.oscore_put(row)
        log.info("OSCORE context rotated for ep=%s (generation %d)", endpoint,
                 row.generation)
        return _info(row)

    def revoke(self, endpoint: str) -> KeyInfo:
        """``endpoint``'s context stops working now; its secrets are erased."""
        self._require_open()
        row = self._db.oscore_row(endpoint)
        if row is None:
            raise UnknownContext(f"no OSCORE context for {endpoint!r}")
        if row.revoked is not None:
            raise ContextRevoked(f"{endpoint!r}'s OSCORE context is revoked already")
        self._drop_loaded(endpoint)
        self._by_kid.pop(row.kid, None)
        self._db.oscore_revoke(endpoint, self._clock())
        log.info("OSCORE context revoked for ep=%s (kid %s)", endpoint, row.kid.hex())
        return self.get(endpoint)

    def export(self, endpoint: str) -> NodeCredentials:
        """The node's side of ``endpoint``'s context, **once** per creation or rotation
        (``AlreadyExported`` after that). The one way a secret leaves the gateway."""
        self._require_open()
        row = self._db.oscore_row(endpoint)
        if row is None:
            raise UnknownContext(f"no OSCORE context for {endpoint!r}")
        if row.revoked is not None:
            raise ContextRevoked(f"{endpoint!r}'s OSCORE context is revoked")
        if row.exported is not None:
            raise AlreadyExported(f"{endpoint!r}'s keys were exported already; rotate to"
                                  " get new ones")
        secret, salt = self._unseal(row)
        if not self._db.oscore_mark_exported(endpoint, row.generation, self._clock()):
            raise AlreadyExported(f"{endpoint!r}'s keys were exported already; rotate to"
                                  " get new ones")
        log.info("OSCORE context exported for ep=%s (generation %d)", endpoint,
                 row.generation)
        return NodeCredentials(endpoint, row.kid, row.gateway_id, secret, salt,
                               row.kid_context)

    def _sealed_row(self, endpoint: str, kid: bytes, id_context: bytes | None, now: float,
                    *, rotated: float | None, generation: int,
                    created: float | None = None,
                    material: tuple[bytes, bytes] | None = None,
                    exported: float | None = None) -> OscoreRow:
        secret, salt = material or (secrets.token_bytes(SECRET_BYTES),
                                    secrets.token_bytes(SALT_BYTES))
        sealed = self._key.seal(cbor2.dumps([1, secret, salt]),
                                context_aad(endpoint, kid, id_context, GATEWAY_SENDER_ID))
        # a new context: nothing was ever protected with these keys, the window is empty
        return OscoreRow(endpoint, kid, id_context, GATEWAY_SENDER_ID, sealed, 0,
                         '{"index":0,"bitfield":0}', now if created is None else created,
                         rotated, None, exported, generation)

    def _drop_loaded(self, endpoint: str) -> None:
        ctx = self._loaded.pop(endpoint, None)
        if ctx is not None:
            ctx.close(persist=False)  # its generation is over: nothing to keep

    def _new_node_id(self) -> bytes:
        for length in range(NODE_ID_MIN, MAX_ID_BYTES + 1):
            for _ in range(_ID_TRIES):
                kid = secrets.token_bytes(length)
                if kid not in self._by_kid and not self._db.oscore_kid_taken(kid):
                    return kid
        raise StoreError("no free OSCORE node ID")  # 2^56 of them: not in this universe

    def list(self, after: str = "", limit: int = -1) -> builtins.list[KeyInfo]:
        """Contexts in endpoint order (revoked ones included), without secrets."""
        return [_info(r) for r in self._db.oscore_rows(after, limit)]


def _check_endpoint(endpoint: str) -> None:
    if not endpoint or len(endpoint) > 255 or any(
            ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
            for c in endpoint):
        raise KeyRequestError("an endpoint name is 1..255 characters, without control"
                              " characters or surrogates")
