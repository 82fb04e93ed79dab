# The node's OSCORE contexts as hex strings: the Master Secret, Master Salt, Sender and
# Recipient IDs and ID Context of RFC 8613 section 3 (LwM2M Object 21 resources 0, 5, 1,
# 2, 6). config.json "oscore" (the server's) and "bootstrap_oscore" (the bootstrap
# server's), written by provisioning, and the "oscore" of a bootstrapped account in
# server.json (lwm2m/bootstrap.py). Loaded only for a config or account that has them.

# name -> (required, bytes at least, at most). The ids are at most 7 bytes
# (AES-CCM-16-64-128: a 13-byte nonce); sender_id is the node's own id, the key id the
# gateway finds the context by.
_KEYS = (("secret", True, 16, 64), ("salt", False, 0, 32), ("sender_id", True, 0, 7),
         ("recipient_id", True, 0, 7), ("id_context", False, 1, 16))


def parse(o, error, name="oscore"):
    """The context object ``name`` with its hex strings as bytes (salt b"" and
    id_context None when absent); raises ``error`` (storage/config.py ConfigError)
    naming the key."""
    from binascii import unhexlify

    if not isinstance(o, dict):
        raise error("'%s' must be an object of hex strings" % name)
    names = [k for k, _, _, _ in _KEYS]
    for key in o:
        if key not in names:
            raise error("unknown key '%s.%s' (known: %s)" % (name, str(key)[:32],
                                                            ", ".join(names)))
    out = {}
    for key, need, lo, hi in _KEYS:
        v = o.get(key)
        if v is None:
            if need:
                raise error("missing required key '%s.%s'" % (name, key))
            out[key] = b"" if key == "salt" else None
            continue
        try:
            b = unhexlify(v) if isinstance(v, str) else None
        except ValueError:
            b = None
        if b is None or not lo <= len(b) <= hi:
            raise error("'%s.%s' must be %d..%d bytes in hex" % (name, key, lo, hi))
        out[key] = b
    if out["sender_id"] == out["recipient_id"]:
        raise error("'%s.sender_id' and '%s.recipient_id' must differ" % (name, name))
    return out
