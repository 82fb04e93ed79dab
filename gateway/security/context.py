"""One node's OSCORE security context on the gateway: ``NodeContext``.

An aiocoap security context (``CanProtect``, ``CanUnprotect``,
``SecurityContextUtils``: AES-CCM-16-64-128, HKDF-SHA-256, RFC 8613) whose state is
kept in the gateway's database through a ``StateSink`` (the key store) instead of
aiocoap's files. Public names: ``NodeContext``, ``StateSink``, ``ALGORITHM``,
``MAX_ID_BYTES``, ``SEQ_CHUNK_START``, ``SEQ_CHUNK_LIMIT``.

Roles: the gateway is the sender with ``sender_id`` (the gateway's ID) and the node the
recipient with ``recipient_id`` (the node's ID: the kid a node's request carries and the
key store looks up). ``id_context`` is the optional ID context.

**Sender sequence numbers** never repeat, a crash included (RFC 8613 B.1.1, as
aiocoap's ``FilesystemSecurityContext`` does it): the store holds a bound under which
every number used lies; when the next number reaches it, the bound moves ``K`` ahead
and is written (durably) *before* that number goes out. ``K`` starts at
``SEQ_CHUNK_START`` and doubles with each write up to ``SEQ_CHUNK_LIMIT``: a context
that sends 1,000 messages writes 7 times. A context loaded after a crash continues
from the stored bound (at most ``K`` numbers are skipped, never reused); ``close()``
writes the exact next number.

**Replay window**: written on a clean ``close()``; loaded from the store when the last
run ended cleanly, else left *unknown* (the key store decides, see ``keystore``), and
then aiocoap's Echo recovery (RFC 8613 B.1.2, ``echo_recovery``) answers the node's
first request 4.01 with an Echo option and accepts the request that repeats it.

Secrets (the master secret, the derived keys) are never in a repr, a log or an error.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any, Protocol

from ..coap.aio import oscore

__all__ = ["ALGORITHM", "MAX_ID_BYTES", "SEQ_CHUNK_LIMIT", "SEQ_CHUNK_START",
           "NodeContext", "StateSink"]

ALGORITHM = "AES-CCM-16-64-128"  # COSE alg 10, RFC 8613's mandatory one
HASHFUN = "sha256"
_ALG = oscore.algorithms[ALGORITHM]
_HASH = oscore.hashfunctions[HASHFUN]
MAX_ID_BYTES = _ALG.iv_bytes - 6  # 7: a longer sender ID does not fit the nonce
REPLAY_WINDOW = 32  # aiocoap's DEFAULT_WINDOWSIZE
SEQ_CHUNK_START = 10  # aiocoap's sequence_number_chunksize_start
SEQ_CHUNK_LIMIT = 10000  # ... and _limit


class StateSink(Protocol):
    """Where a context writes its state; durable when the call returns, or raises."""

    def save_state(self, ctx: NodeContext, seq_bound: int, replay: str | None) -> None: ...


if TYPE_CHECKING:

    class _AiocoapContext:
        """What the gateway uses of aiocoap's security context classes."""

        sender_id: bytes
        recipient_id: bytes
        id_context: bytes | None
        sender_sequence_number: int
        recipient_replay_window: Any
        echo_recovery: bytes | None
        common_iv: bytes
        alg_aead: Any
        hashfun: Any

        def derive_keys(self, master_salt: bytes, master_secret: bytes) -> None: ...

        def protect(self, message: Any, request_id: Any = None, *,
                    kid_context: Any = True) -> tuple[Any, Any]: ...

        def unprotect(self, protected_message: Any,
                      request_id: Any = None) -> tuple[Any, Any]: ...

else:

    class _AiocoapContext(oscore.CanProtect, oscore.CanUnprotect,
                          oscore.SecurityContextUtils):
        pass


class NodeContext(_AiocoapContext):
    """The gateway's OSCORE context with one node (module docstring). Made by the key
    store; ``close()`` ends it (state written, keys dropped)."""

    alg_aead = _ALG
    hashfun = _HASH

    def __init__(self, *, endpoint: str, sender_id: bytes, recipient_id: bytes,
                 master_secret: bytes, master_salt: bytes, id_context: bytes | None,
                 seq_bound: int, replay: str | None, sink: StateSink,
                 generation: int = 1) -> None:
        self.endpoint = endpoint
        self.generation = generation
        self.sender_id = sender_id
        self.recipient_id = recipient_id
        self.id_context = id_context
        self.derive_keys(master_salt, master_secret)
        self._sink: StateSink | None = sink
        # Always armed: with an unknown window the first request gets 4.01 + Echo
        self.echo_recovery = secrets.token_bytes(8)
        self.recipient_replay_window = oscore.ReplayWindow(REPLAY_WINDOW, _nothing)
        if replay is None:
            pass  # unknown: Echo recovery (B.1.2) initialises it from a fresh request
        else:
            try:
                state = json.loads(replay)
                self.recipient_replay_window.initialize_from_persisted(
                    {"index": int(state["index"]), "bitfield": int(state["bitfield"])})
            except (ValueError, TypeError, KeyError):
                pass  # not understood: unknown, as after a crash (never a wider window)
        self.sender_sequence_number = seq_bound
        self.sequence_number_persisted = seq_bound
        self.sequence_number_chunksize = SEQ_CHUNK_START

    def __repr__(self) -> str:
        return (f"<NodeContext {self.endpoint!r} kid={self.recipient_id.hex()}"
                f" sender={self.sender_id.hex()}>")

    @property
    def closed(self) -> bool:
        return self._sink is None

    @property
    def replay_known(self) -> bool:
        """Whether the replay window is known (else Echo recovery is pending)."""
        return bool(self.recipient_replay_window.is_initialized())

    def replay_state(self) -> str | None:
        """The replay window as stored (JSON), None when unknown."""
        w = self.recipient_replay_window
        if not w.is_initialized():
            return None
        return json.dumps(w.persist(), separators=(",", ":"))

    # aiocoap calls this after taking each sender sequence number, before it is used
    def post_seqnoincrease(self) -> None:
        if self.sender_sequence_number <= self.sequence_number_persisted:
            return
        if self._sink is None:
            raise oscore.ContextUnavailable("security context closed")
        bound = self.sequence_number_persisted + self.sequence_number_chunksize
        try:
            self._sink.save_state(self, bound, None)
        except Exception as e:
            # not durable: this number must not go out (and is never handed out again)
            raise oscore.ContextUnavailable(
                "cannot store the sequence number bound") from e
        self.sequence_number_persisted = bound
        self.sequence_number_chunksize = min(self.sequence_number_chunksize * 2,
                                             SEQ_CHUNK_LIMIT)

    def close(self, *, persist: bool = True) -> None:
        """End the context: write the exact next sequence number and the replay window
        (``persist``), then drop the keys; using it afterwards fails."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if persist:
            sink.save_state(self, self.sender_sequence_number, self.replay_state())
        self.sender_key = b""
        self.recipient_key = b""
        self.sender_sequence_number = oscore.MAX_SEQNO  # protect() refuses from now on


def _nothing() -> None:
    """A replay window's strike-out callback: the window is written at close only
    (after an unclean stop it is unknown, whatever happened before)."""
