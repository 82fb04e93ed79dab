"""CoAP over UDP on the wire (RFC 7252 §3): the gateway's one parser and builder.

Every byte-level look at a CoAP datagram on the gateway side goes through here: the
datagram hook (``coap.layer``) parses each datagram once and offers it to the fast
paths (``coap.fastsend``, ``coap.fastnotify``, ``coap.fastoscore``); the load generator of ``aiot bench
gateway`` builds and reads its requests with the same functions. aiocoap keeps its own
codec for everything it serves; the numbers below are aiocoap's (``aiocoap.numbers``),
never re-declared.

``parse(data)`` returns a ``Datagram`` (type, code, message ID, token, options as
``(number, value)`` pairs in wire order, payload) or raises ``WireError`` for anything
RFC 7252 §3 calls a message format error: version other than 1, token length 9-15,
an option nibble of 15 outside the payload marker, an option running past the end, a
payload marker with no payload behind it. It never raises anything else, whatever the
bytes. ``bad_text_option(msg)`` names a text option (Uri-Path, Uri-Query... : aiocoap's
string options) whose value is not UTF-8: aiocoap's own decoder raises on it, so the
datagram hook refuses such a datagram before aiocoap sees it (``coap.layer``). ``build`` and ``encode_options`` write the same format (options sorted by
number, delta and length extended as §3.1 says).

**OSCORE (issue 13) and the fast paths.** OSCORE (RFC 8613) protects a request or
response end to end: the real code, most options and the payload travel encrypted in
the payload of an outer message whose code is POST (or FETCH) / 2.04, marked by the
OSCORE option (9). aiocoap places OSCORE above its message layer
(``aiocoap.oscore_sitewrapper`` for a server site, ``transports.oscore`` for requests
the gateway sends): deduplication and retransmission see the outer message, and the
security context (replay window, sequence numbers) verifies and unprotects the inner
one before any resource sees it. Decision (first "protected traffic goes to aiocoap",
changed for one case by the protected-ingest issue): **protected traffic goes to
aiocoap, but for the common protected Send, which ``coap.fastoscore`` verifies
itself.** The datagram hook offers a datagram carrying an OSCORE option
(``Datagram.protected``) only to fast paths added as protected, and a plain one only
to the others: the plain Send and Notification paths never see, store or answer a
protected datagram. ``coap.fastoscore`` takes a protected CON POST whose kid names a
context of the key store, verifies it exactly as aiocoap's context would (the replay
window read, the nonce and AAD of RFC 8613 §5, AES-CCM), and takes it only when the
inner message is the plain Send ``coap.fastsend`` takes, from a registered endpoint;
only then does it strike the sequence number out of the *same* replay window, store
the Send (group commit) and answer the protected 2.04. Anything it does not fully
verify or understand goes to aiocoap unchanged, with no state changed, and aiocoap
verifies it itself: the rule stays that a fast path handles exactly the messages it
fully understands (and, if protected, has verified), and everything else goes to
aiocoap unchanged. ``oscore_option`` (RFC 8613 §6.1) and ``plaintext`` (the inner
message, §5.3) read the protected parts. Until OSCORE is configured the gateway has no
security context and no protected fast path, so the LwM2M resource and device
management refuse a protected message themselves (4.01 / not stored): nothing
unverified is ever taken as data. ``tests/gateway/test_oscore_step_aside.py`` fails if
that ever changes.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple

from ..errors import BadRequest
from .aio import Code, OptionNumber, StringOption, TransportTuning, Type

__all__ = [
    "ACK",
    "CON",
    "NON",
    "RST",
    "Datagram",
    "OscoreOption",
    "WireError",
    "after_token",
    "bad_text_option",
    "build",
    "dedup_key",
    "empty_ack",
    "encode_options",
    "header",
    "option_uint",
    "oscore_option",
    "parse",
    "peek",
    "plaintext",
    "uint",
]

# RFC 7252 §3 message types, §12.1 codes (as the byte on the wire), §12.2 options
CON, NON, ACK, RST = (int(t) for t in (Type.CON, Type.NON, Type.ACK, Type.RST))
EMPTY = int(Code.EMPTY)
GET = int(Code.GET)
POST = int(Code.POST)
CREATED = int(Code.CREATED)
CHANGED = int(Code.CHANGED)
CONTENT = int(Code.CONTENT)
NOT_FOUND = int(Code.NOT_FOUND)
INTERNAL_SERVER_ERROR = int(Code.INTERNAL_SERVER_ERROR)
BAD_REQUEST = int(Code.BAD_REQUEST)
OBSERVE = int(OptionNumber.OBSERVE)  # RFC 7641 §2
OSCORE = int(OptionNumber.OSCORE)  # RFC 8613 §2
URI_PATH = int(OptionNumber.URI_PATH)
CONTENT_FORMAT = int(OptionNumber.CONTENT_FORMAT)
MAX_AGE = int(OptionNumber.MAX_AGE)
URI_QUERY = int(OptionNumber.URI_QUERY)
# the options aiocoap decodes as UTF-8 text (RFC 7252 §3.2 "string")
TEXT_OPTIONS = frozenset(int(n) for n in OptionNumber if n.format is StringOption)
_TUNING = TransportTuning()
ACK_TIMEOUT: float = _TUNING.ACK_TIMEOUT  # §4.8
ACK_RANDOM_FACTOR: float = _TUNING.ACK_RANDOM_FACTOR
MAX_RETRANSMIT: int = _TUNING.MAX_RETRANSMIT
EXCHANGE_LIFETIME: float = _TUNING.EXCHANGE_LIFETIME  # §4.8.2, 247 s

_VERSION = 1
_MARKER = 0xFF  # payload marker


class WireError(BadRequest):
    """The bytes are not a well-formed CoAP message (RFC 7252 §3 format error)."""


class Datagram(NamedTuple):
    """One CoAP message as it came off the socket."""

    mtype: int  # CON, NON, ACK, RST
    code: int  # the code byte: class << 5 | detail
    mid: int
    token: bytes
    options: tuple[tuple[int, bytes], ...]  # (number, value), in wire order
    payload: bytes
    protected: bool  # it carries an OSCORE option (RFC 8613): see the docstring

    def option(self, number: int) -> bytes | None:
        """The value of the first option ``number``, or None."""
        for n, value in self.options:
            if n == number:
                return value
        return None


def parse(data: bytes) -> Datagram:
    """Read one CoAP message; ``WireError`` if it is malformed (module docstring)."""
    n = len(data)
    if n < 4:
        raise WireError("shorter than the 4-byte header")
    b0 = data[0]
    if b0 >> 6 != _VERSION:
        raise WireError(f"version {b0 >> 6}")
    tkl = b0 & 0x0F
    if tkl > 8:
        raise WireError(f"token length {tkl}")
    pos = 4 + tkl
    if pos > n:
        raise WireError("token past the end")
    options, pos, protected = _options(data, pos)
    return Datagram(b0 >> 4 & 0x03, data[1], data[2] << 8 | data[3], bytes(data[4:4 + tkl]),
                    options, bytes(data[pos:]), protected)


def _options(data: bytes, pos: int) -> tuple[tuple[tuple[int, bytes], ...], int, bool]:
    """The options from ``pos`` on, where the payload starts, whether one is OSCORE."""
    n = len(data)
    options: list[tuple[int, bytes]] = []
    number = 0
    protected = False
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == _MARKER:
            if pos == n:
                raise WireError("payload marker without a payload")
            break
        delta, length = byte >> 4, byte & 0x0F
        if delta >= 13:
            delta, pos = _extended(data, pos, delta)
        if length >= 13:
            length, pos = _extended(data, pos, length)
        end = pos + length
        if end > n:
            raise WireError("option past the end")
        number += delta
        if number == OSCORE:
            protected = True
        options.append((number, data[pos:end]))
        pos = end
    else:
        pos = n
    return tuple(options), pos, protected


def plaintext(data: bytes) -> tuple[int, tuple[tuple[int, bytes], ...], bytes]:
    """(code, options, payload) of an OSCORE plaintext (RFC 8613 §5.3: the inner code,
    the Class E options, the payload marker and payload as §3 writes them);
    ``WireError`` if it is malformed (an inner OSCORE option included, §4.1)."""
    if not data:
        raise WireError("empty plaintext")
    options, pos, protected = _options(data, 1)
    if protected:
        raise WireError("an OSCORE option inside OSCORE")
    return data[0], options, bytes(data[pos:])


class OscoreOption(NamedTuple):
    """The OSCORE option's value decompressed (RFC 8613 §6.1)."""

    piv: bytes  # the Partial IV as sent (b"": none)
    kid_context: bytes | None
    kid: bytes | None


_OSCORE_N = 0x07  # flag bits (RFC 8613 §6.1): n, the Partial IV's length
_OSCORE_K = 0x08  # k: a kid follows
_OSCORE_H = 0x10  # h: a kid context follows (its length byte first)
_OSCORE_RESERVED = 0xE0  # must be 0 (0x20: the group flag of Group OSCORE, not ours)


def oscore_option(value: bytes) -> OscoreOption | None:
    """The OSCORE option ``value`` decompressed (RFC 8613 §6.1), or None when it is
    malformed, uses a reserved bit (Group OSCORE's included) or a Partial IV length of
    6 or 7 (reserved); an empty value has no Partial IV and no kid."""
    if not value:
        return OscoreOption(b"", None, None)
    flags = value[0]
    if flags & _OSCORE_RESERVED or flags == 0:  # all-zero flags: the value is empty
        return None
    n = flags & _OSCORE_N
    if n > 5:
        return None
    pos = 1 + n
    if pos > len(value):
        return None
    piv = bytes(value[1:pos])
    kid_context = None
    if flags & _OSCORE_H:
        if pos >= len(value):
            return None
        s = value[pos]
        pos += 1
        if pos + s > len(value):
            return None
        kid_context = bytes(value[pos:pos + s])
        pos += s
    if flags & _OSCORE_K:
        return OscoreOption(piv, kid_context, bytes(value[pos:]))
    if pos != len(value):
        return None  # bytes no flag accounts for
    return OscoreOption(piv, kid_context, None)


def bad_text_option(msg: Datagram) -> int | None:
    """The number of the first text option of ``msg`` that is not UTF-8, or None."""
    for number, value in msg.options:
        if number in TEXT_OPTIONS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def peek(data: bytes) -> tuple[int, int, int, int] | None:
    """(type, code, MID, token length) from a datagram's 4-byte header, reading nothing
    further (a load generator matching answers); None if it is no CoAP 1 header."""
    if len(data) < 4 or data[0] >> 6 != _VERSION:
        return None
    b0 = data[0]
    return b0 >> 4 & 0x03, data[1], data[2] << 8 | data[3], b0 & 0x0F


def _extended(data: bytes, pos: int, nibble: int) -> tuple[int, int]:
    """An option delta or length nibble of 13 or 14 with its extension bytes (§3.1)."""
    if nibble == 13:
        if pos >= len(data):
            raise WireError("option extension past the end")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 1 >= len(data):
            raise WireError("option extension past the end")
        return (data[pos] << 8 | data[pos + 1]) + 269, pos + 2
    raise WireError("option nibble 15")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options as §3.1 writes them: sorted by number, delta-encoded, extended as needed."""
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, length = number - last, len(value)
        last = number
        head = len(out)
        out.append(0)
        nibbles = []
        for field in (delta, length):
            if field < 13:
                nibbles.append(field)
            elif field < 269:
                nibbles.append(13)
                out.append(field - 13)
            else:
                nibbles.append(14)
                out += (field - 269).to_bytes(2, "big")
        out[head] = nibbles[0] << 4 | nibbles[1]
        out += value
    return bytes(out)


def build(mtype: int, code: int, mid: int, token: bytes = b"",
          options: Iterable[tuple[int, bytes]] = (), payload: bytes = b"") -> bytes:
    """One CoAP message; ``payload`` gets the marker when there is one."""
    return header(mtype, code, mid, token) + after_token(options, payload)


def after_token(options: Iterable[tuple[int, bytes]] = (), payload: bytes = b"") -> bytes:
    """What follows the token: the options, then the payload marker and the payload
    when there is one."""
    return encode_options(options) + (bytes((_MARKER,)) + payload if payload else b"")


def header(mtype: int, code: int, mid: int, token: bytes = b"") -> bytes:
    """The 4-byte header (§3) and the token: what precedes the options."""
    if len(token) > 8:
        raise WireError(f"token length {len(token)}")
    return bytes((_VERSION << 6 | mtype << 4 | len(token), code, mid >> 8 & 0xFF,
                  mid & 0xFF)) + token


def empty_ack(mid: int) -> bytes:
    """The empty ACK of message ID ``mid`` (§4.2), as aiocoap encodes it."""
    return build(ACK, EMPTY, mid)


def uint(n: int) -> bytes:
    """An unsigned option value in the fewest bytes (0 is empty, §3.2)."""
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def option_uint(value: bytes) -> int:
    """An unsigned option value (§3.2)."""
    return int.from_bytes(value, "big")


def dedup_key(sockaddr: tuple[Any, ...], mid: int) -> Hashable:
    """The deduplication key (§4.5) of message ID ``mid`` from the UDP peer ``sockaddr``:
    what aiocoap compares a UDP remote by (host, port, flow label), as one int (address,
    20-bit flow label, port, MID: about 48 bytes, where a tuple of them took 110; the
    cache holds one per request for 247 s). A host that is not an IPv6 literal (a scope
    is ignored, as in the comparison) keeps a tuple."""
    host, port, flowinfo = sockaddr[:3]
    addr = _HOSTS.get(host)
    if addr is None:
        try:
            addr = int.from_bytes(socket.inet_pton(socket.AF_INET6,
                                                   host.partition("%")[0]), "big")
        except (OSError, ValueError):
            return sys.intern(host), flowinfo, port << 16 | mid
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[host] = addr
    return int(((addr << 20 | flowinfo) << 16 | port) << 16 | mid)


_HOSTS: dict[str, int] = {}  # host string -> its address as an int (dedup_key)
_HOSTS_MAX = 4096
