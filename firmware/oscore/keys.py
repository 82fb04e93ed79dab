# The node's OSCORE context in config.json ("oscore", written by provisioning): the
# Master Secret, Master Salt, Sender and Recipient IDs and ID Context of RFC 8613 section
# 3 (LwM2M Object 21 resources 0, 5, 1, 2, 6) as hex strings. Loaded by storage/config.py
# only for a config that has them.

# name -> (required, bytes at least, at most). The ids are at most 7 bytes
# (AES-CCM-16-64-128: a 13-byte nonce); sender_id is the node's own id, the key id the
# gateway finds the context by.
_KEYS = (("secret", True, 16, 64), ("salt", False, 0, 32), ("sender_id", True, 0, 7),
         ("recipient_id", True, 0, 7), ("id_context", False, 1, 16))


def parse(o, error):
    """The "oscore" object with its hex strings as bytes (salt b"" and id_context None
    when absent); raises ``error`` (storage/config.py ConfigError) naming the key."""
    from binascii import unhexlify

    if not isinstance(o, dict):
        raise error("'oscore' must be an object of hex strings")
    names = [k for k, _, _, _ in _KEYS]
    for key in o:
        if key not in names:
            raise error("unknown key 'oscore.%s' (known: %s)" % (str(key)[:32],
                                                                ", ".join(names)))
    out = {}
    for key, need, lo, hi in _KEYS:
        v = o.get(key)
        if v is None:
            if need:
                raise error("missing required key 'oscore.%s'" % key)
            out[key] = b"" if key == "salt" else None
            continue
        try:
            b = unhexlify(v) if isinstance(v, str) else None
        except ValueError:
            b = None
        if b is None or not lo <= len(b) <= hi:
            raise error("'oscore.%s' must be %d..%d bytes in hex" % (key, lo, hi))
        out[key] = b
    if out["sender_id"] == out["recipient_id"]:
        raise error("'oscore.sender_id' and 'oscore.recipient_id' must differ")
    return out
