# HMAC-SHA-256 (RFC 2104) and HKDF (RFC 5869) on hashlib.sha256, and the OSCORE key
# derivation (RFC 8613 section 3.2.1). Setup time only: these allocate.
import hashlib

_ALG = 10  # AES-CCM-16-64-128 (RFC 8613 section 3.2.1: alg_aead in info)


def hmac(key, msg):
    """HMAC-SHA-256(key, msg) -> 32 bytes."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = bytearray(64)
    k[: len(key)] = key
    ipad = bytes(b ^ 0x36 for b in k)
    opad = bytes(b ^ 0x5C for b in k)
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf(salt, ikm, info, n):
    """HKDF-SHA-256: extract with salt (empty: 32 zero bytes, the same key), expand
    to n bytes (n <= 8160)."""
    prk = hmac(salt, ikm)
    out = b""
    t = b""
    i = 1
    while len(out) < n:
        t = hmac(prk, t + info + bytes((i,)))
        out += t
        i += 1
    return out[:n]


def _bstr(b):
    # CBOR byte string (major type 2) of up to 255 bytes
    n = len(b)
    return (bytes((0x40 | n,)) if n < 24 else bytes((0x58, n))) + bytes(b)


def info(ident, id_context, kind, n):
    """The HKDF info of section 3.2.1: CBOR [id, id_context or nil, alg_aead, type, L]
    with type "Key" or "IV"."""
    ctx = b"\xf6" if id_context is None else _bstr(id_context)
    t = b"\x63Key" if kind == "Key" else b"\x62IV"
    return b"\x85" + _bstr(ident) + ctx + bytes((_ALG,)) + t + bytes((n,))


def derive(secret, salt, sender_id, recipient_id, id_context=None):
    """Sender Key, Recipient Key (16 bytes each) and Common IV (13 bytes)."""
    return (
        hkdf(salt, secret, info(sender_id, id_context, "Key", 16), 16),
        hkdf(salt, secret, info(recipient_id, id_context, "Key", 16), 16),
        hkdf(salt, secret, info(b"", id_context, "IV", 13), 13),
    )
