# The node's own check of a signed MCUboot image in its update slot, before it marks
# the slot pending (issue 14): magic, header, every TLV length, the SHA-256 over header,
# payload and protected TLVs, the signing key against the node's trusted keys (a
# revoked key refuses the image), the Ed25519 / ECDSA P-256 signature(s), the security
# counter against the node's floor, the board and the payload type.
#
# Format (mcu-tools/mcuboot boot/bootutil/include/bootutil/image.h, imgtool image.py):
# a little-endian 32-byte header padded to hdr_size, the payload (img_size bytes), the
# protected TLV area (info 0x6908, its total length equal to the header's
# protect_tlv_size; hashed) and the unprotected TLV area (info 0x6907: SHA256, KEYHASH
# or PUBKEY, then that key's signature; several key/signature pairs may follow). A
# TLV is u16 type, u16 length, value. No length is trusted: each is checked against
# the area it lies in and the slot size before anything is read, and reading stops at
# the end of the unprotected area (the slot's tail is not read).
#
# The image streams through one buffer (the caller's, or 1 KiB): a 256 KB image
# verifies in a 64 KB heap. Every refusal is an ImageError with a reason from REASONS;
# nothing else escapes for any bytes in the slot (the tests feed it garbage).
from micropython import const
import hashlib
import struct

_DEBUG = const(False)

_MAGIC = b"\x3d\xb8\xf3\x96"  # IMAGE_MAGIC 0x96f3b83d, little-endian
_HDR = const(32)  # struct image_header
_INFO_PROT = const(0x6908)  # IMAGE_TLV_PROT_INFO_MAGIC
_INFO = const(0x6907)  # IMAGE_TLV_INFO_MAGIC

# header flags (image.h IMAGE_F_*): the ones that change nothing for the node
_F_OK = const(0x0131)  # PIC 0x01, NON_BOOTABLE 0x10, RAM_LOAD 0x20, ROM_FIXED 0x100

# TLV types (image.h IMAGE_TLV_*)
_T_KEYHASH = const(0x01)
_T_PUBKEY = const(0x02)
_T_SHA256 = const(0x10)
_T_ECDSASIG = const(0x22)
_T_ED25519 = const(0x24)
_T_DEPENDENCY = const(0x40)
_T_SEC_CNT = const(0x50)
_T_BOOT_RECORD = const(0x60)
_T_DECOMP_LO = const(0x70)  # DECOMP_SIZE .. COMP_DEC_SIZE: compressed images
_T_DECOMP_HI = const(0x73)
# aiotkit's own protected TLVs, as the gateway's ota/image.py TLV_TYPES defines them
# (MCUboot's vendor range; ASCII; imgtool sign --custom-tlv 0xa171 BOARD writes one)
TLV_TYPE = const(0xA170)  # AIOT_PAYLOAD_TYPE: app, model, gateway (1..16 bytes)
TLV_BOARD = const(0xA171)  # AIOT_BOARD: a boards/NAME.json name (1..32 bytes)
_BOARD_MAX = const(32)
_TYPE_MAX = const(16)

_MAX_SIGS = const(4)  # key/signature pairs in one image
_PUBKEY_MAX = const(128)

# DER SubjectPublicKeyInfo prefixes (RFC 8410 section 4; RFC 5480 section 2): what
# imgtool hashes into KEYHASH is prefix + raw key
_SPKI_ED25519 = b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00"
_SPKI_P256 = (
    b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"
    b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00"
)

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
ACTIVE = "active"
RETIRED = "retired"
REVOKED = "revoked"

# reason -> LwM2M Firmware Update /5/0/5 Update Result (5 integrity check failure,
# 6 unsupported package type, 2 not enough flash)
REASONS = {
    "io": 5,  # the slot cannot be read
    "truncated": 5,  # the slot ends inside the image
    "magic": 5,  # no MCUboot image magic
    "header": 5,  # hdr_size below 32
    "size": 2,  # the image does not fit the slot
    "unsupported": 6,  # encrypted, compressed, with dependencies, unknown flags
    "tlv": 5,  # a TLV area or entry is malformed, misplaced or repeated
    "hash": 5,  # SHA256 TLV missing or not the image's digest
    "key": 5,  # no signature by a trusted (active) key
    "revoked": 5,  # signed by a revoked key
    "signature": 5,  # a signature by a trusted key does not verify
    "counter": 5,  # no security counter, or one below the node's floor
    "board": 6,  # built for another board (or for none)
    "type": 6,  # a payload type the caller does not take (or none)
}


class ImageError(Exception):
    """An image the node refuses: reason (a key of REASONS), detail (text)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    @property
    def result(self):
        """The LwM2M Firmware Update Result for this refusal."""
        return REASONS.get(self.reason, 5)


class Key:
    """A public key the node trusts (or has revoked).

    pub: the raw key (Ed25519: 32 bytes; P-256: the 65-byte uncompressed point
    0x04 || X || Y), its DER SubjectPublicKeyInfo (44 or 91 bytes, as imgtool and
    ota/keys.py write it) or that in PEM ("-----BEGIN PUBLIC KEY-----"). state:
    ACTIVE (its signature admits an image), RETIRED (checked, does not admit),
    REVOKED (an image carrying it is refused). id: SHA-256 of the SubjectPublicKeyInfo
    (the KEYHASH TLV's value). ValueError for anything else or a point off its curve."""

    def __init__(self, pub, state=ACTIVE):
        if state not in (ACTIVE, RETIRED, REVOKED):
            raise ValueError("key state")
        if isinstance(pub, str) or (len(pub) > 100 and bytes(pub[:5]) == b"-----"):
            pub = _pem(pub)
        pub = bytes(pub)
        if len(pub) == 44 and pub[:12] == _SPKI_ED25519:
            pub = pub[12:]
        elif len(pub) == 91 and pub[:26] == _SPKI_P256:
            pub = pub[26:]
        if len(pub) == 32:
            from ota import ed25519

            self.alg = ED25519
            self.point = ed25519.decode(pub)
            if self.point is None:
                raise ValueError("Ed25519 key: not a point")
            spki = _SPKI_ED25519
        elif len(pub) == 65:
            from ota import p256

            self.alg = ECDSA_P256
            self.point = p256.pubkey(pub)
            spki = _SPKI_P256
        else:
            raise ValueError("key: raw Ed25519 (32), P-256 point (65), SPKI DER or PEM")
        self.raw = pub
        self.state = state
        h = hashlib.sha256(spki)
        h.update(pub)
        self.id = h.digest()


def _pem(text):
    # the base64 body of a PEM PUBLIC KEY block
    import binascii

    if not isinstance(text, str):
        text = bytes(text).decode()
    lines = [ln.strip() for ln in text.strip().split("\n")]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueError("PEM public key")
    return binascii.a2b_base64("".join(lines[1:-1]))


def keys_from_file(path):
    """The keys of a trust file on flash: ota/keys.py's trust file (keys_from_trust), or
    a JSON list of PEM public keys, all active. OSError, ValueError."""
    import json

    with open(path) as f:
        doc = json.loads(f.read())
    if isinstance(doc, list):
        return [Key(k) for k in doc]
    return keys_from_trust(doc)


def keys_from_trust(doc):
    """Keys from ota/keys.py's trust file (parsed JSON: {"schema": 1, "keys": [{"id",
    "name", "algorithm", "state", "public_key" (PEM)}]}), each id checked against its
    key. ValueError for a malformed document."""
    import binascii

    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("keys"), list):
        raise ValueError("trust file: schema 1 with a list of keys")
    out = []
    for e in doc["keys"]:
        if not isinstance(e, dict):
            raise ValueError("trust file: key entry")
        k = Key(e.get("public_key") or "", e.get("state"))
        if binascii.hexlify(k.id).decode() != str(e.get("id", "")).lower() or k.alg != e.get("algorithm"):
            raise ValueError("trust file: id or algorithm does not match the key")
        out.append(k)
    return out


class Image:
    """What verify() found in an image it accepted."""

    def __init__(self):
        self.version = None  # (major, minor, revision, build)
        self.hdr_size = 0
        self.size = 0  # payload bytes (img_size)
        self.total = 0  # header + payload + both TLV areas: the bytes that matter
        self.flags = 0
        self.load_addr = 0
        self.counter = None  # SEC_CNT
        self.board = None  # bytes
        self.type = None  # bytes
        self.digest = None  # SHA-256, 32 bytes
        self.key_ids = []  # ids of the keys whose signatures verified


class _Reader:
    # the slot, read in order through one buffer, hashing what is asked

    def __init__(self, f, buf):
        self.f = f
        self.buf = buf
        self.mv = memoryview(buf)
        self.pos = 0
        self.sha = hashlib.sha256()

    def read(self, n, hash_it):
        # exactly n bytes (n <= len(buf)) into buf[0:n]
        mv = self.mv
        got = 0
        while got < n:
            try:
                k = self.f.readinto(mv[got:n])
            except OSError as e:
                raise ImageError("io", "read at %d: %s" % (self.pos + got, e))
            if not k:
                raise ImageError("truncated", "the slot ends at %d" % (self.pos + got))
            got += k
        self.pos += n
        if hash_it:
            self.sha.update(mv[:n] if n < len(mv) else mv)
        return self.buf

    def skip(self, n, hash_it):
        # n bytes through the buffer
        step = len(self.buf)
        while n > 0:
            k = step if n > step else n
            self.read(k, hash_it)
            n -= k


def _u16(b, o):
    return b[o] | (b[o + 1] << 8)


def _sig_tlv(alg):
    return _T_ED25519 if alg == ED25519 else _T_ECDSASIG


def verify(f, keys, size, floor=0, board=None, types=None, buf=None):
    """Verify the image at the start of f (a file open for binary reading, or a path)
    and return its Image; raise ImageError (reason, detail) for every refusal.

    keys: the node's Key list (trusted and revoked). size: the slot size (the image with
    its TLVs must fit). floor: the lowest security counter the node accepts (its
    persisted floor). board: the node's board name (bytes or str), or None not to check.
    types: the payload types the caller takes (bytes or str, a tuple), or None not to
    check. buf: a bytearray of 128 bytes or more to stream through (default: 1 KiB)."""
    if buf is None:
        buf = bytearray(1024)
    elif len(buf) < 128:
        raise ValueError("buf: 128 bytes or more")
    if isinstance(board, str):
        board = board.encode()
    if types is not None:
        types = tuple(t.encode() if isinstance(t, str) else bytes(t) for t in types)
    if isinstance(f, str):
        try:
            fh = open(f, "rb")
        except OSError as e:
            raise ImageError("io", "%s: %s" % (f, e))
        try:
            return _verify(fh, keys, size, floor, board, types, buf)
        finally:
            fh.close()
    return _verify(f, keys, size, floor, board, types, buf)


def _verify(f, keys, size, floor, board, types, buf):
    rd = _Reader(f, buf)
    img = Image()
    # the header (image.h struct image_header)
    b = rd.read(_HDR, True)
    if bytes(b[0:4]) != _MAGIC:
        raise ImageError("magic", "no image magic")
    (img.load_addr, hdr_size, prot_size, img_size, flags, major, minor, rev, build) = (
        struct.unpack_from("<IHHIIBBHI", b, 4)
    )
    img.version = (major, minor, rev, build)
    img.hdr_size = hdr_size
    img.size = img_size
    img.flags = flags
    if hdr_size < _HDR:
        raise ImageError("header", "hdr_size %d" % hdr_size)
    if flags & ~_F_OK:
        raise ImageError("unsupported", "flags 0x%x" % flags)
    if prot_size and prot_size < 4:
        raise ImageError("tlv", "protect_tlv_size %d" % prot_size)
    end_prot = hdr_size + img_size + prot_size
    if end_prot + 4 > size:
        raise ImageError("size", "%d bytes and TLVs in a %d-byte slot" % (end_prot, size))
    rd.skip(hdr_size - _HDR + img_size, True)

    # the protected TLV area: hashed, checked entry by entry
    if prot_size:
        b = rd.read(4, True)
        if _u16(b, 0) != _INFO_PROT or _u16(b, 2) != prot_size:
            raise ImageError("tlv", "protected TLV info %04x %d" % (_u16(b, 0), _u16(b, 2)))
        left = prot_size - 4
        while left:
            if left < 4:
                raise ImageError("tlv", "protected TLV header cut")
            b = rd.read(4, True)
            t = _u16(b, 0)
            n = _u16(b, 2)
            left -= 4
            if n > left:
                raise ImageError("tlv", "protected TLV 0x%x: %d bytes past the area" % (t, n))
            left -= n
            if t == _T_SEC_CNT:
                if n != 4 or img.counter is not None:
                    raise ImageError("tlv", "SEC_CNT")
                img.counter = struct.unpack_from("<I", rd.read(4, True), 0)[0]
            elif t == TLV_BOARD or t == TLV_TYPE:
                mx = _BOARD_MAX if t == TLV_BOARD else _TYPE_MAX
                if not 0 < n <= mx or (img.board if t == TLV_BOARD else img.type) is not None:
                    raise ImageError("tlv", "TLV 0x%x: %d bytes" % (t, n))
                v = bytes(rd.read(n, True)[:n])
                if t == TLV_BOARD:
                    img.board = v
                else:
                    img.type = v
            elif t == _T_DEPENDENCY or _T_DECOMP_LO <= t <= _T_DECOMP_HI:
                raise ImageError("unsupported", "TLV 0x%x" % t)
            elif t in (_T_KEYHASH, _T_PUBKEY, _T_SHA256, _T_ECDSASIG, _T_ED25519):
                raise ImageError("tlv", "TLV 0x%x in the protected area" % t)
            else:
                rd.skip(n, True)  # BOOT_RECORD, UUID_VID/CID, other vendor TLVs
    img.digest = rd.sha.digest()

    # the unprotected TLV area
    b = rd.read(4, False)
    tot = _u16(b, 2)
    if _u16(b, 0) != _INFO or tot < 4:
        raise ImageError("tlv", "TLV info %04x %d" % (_u16(b, 0), tot))
    img.total = end_prot + tot
    if img.total > size:
        raise ImageError("size", "%d bytes in a %d-byte slot" % (img.total, size))
    left = tot - 4
    found = None
    sigs = []  # [key id, TLV type, signature]
    kid = None
    while left:
        if left < 4:
            raise ImageError("tlv", "TLV header cut")
        b = rd.read(4, False)
        t = _u16(b, 0)
        n = _u16(b, 2)
        left -= 4
        if n > left:
            raise ImageError("tlv", "TLV 0x%x: %d bytes past the area" % (t, n))
        left -= n
        if t == _T_SHA256:
            if n != 32 or found is not None:
                raise ImageError("tlv", "SHA256")
            found = bytes(rd.read(32, False)[:32])
        elif t == _T_KEYHASH or t == _T_PUBKEY:
            if (t == _T_KEYHASH and n != 32) or not 0 < n <= _PUBKEY_MAX:
                raise ImageError("tlv", "key TLV 0x%x: %d bytes" % (t, n))
            if kid is not None:
                raise ImageError("tlv", "two keys before a signature")
            v = rd.read(n, False)
            if t == _T_PUBKEY:
                kid = hashlib.sha256(memoryview(v)[:n]).digest()
            else:
                kid = bytes(v[:32])
        elif t == _T_ED25519 or t == _T_ECDSASIG:
            if kid is None:
                raise ImageError("tlv", "signature TLV 0x%x without a key" % t)
            if len(sigs) == _MAX_SIGS or (t == _T_ED25519 and n != 64) or not 8 <= n <= 72:
                raise ImageError("tlv", "signature TLV 0x%x: %d bytes" % (t, n))
            sigs.append((kid, t, bytes(rd.read(n, False)[:n])))
            kid = None
        elif (
            t == _T_SEC_CNT
            or t == TLV_BOARD
            or t == TLV_TYPE
            or t == _T_DEPENDENCY
            or t == _T_BOOT_RECORD
            or _T_DECOMP_LO <= t <= _T_DECOMP_HI
        ):
            raise ImageError("tlv", "protected TLV 0x%x outside the protected area" % t)
        else:
            rd.skip(n, False)  # SHA384/512, RSA, encryption keys ...: not the node's
    if kid is not None:
        raise ImageError("tlv", "a key without a signature")

    # the checks, most fundamental first
    if found is None:
        raise ImageError("hash", "no SHA256 TLV")
    if found != img.digest:
        raise ImageError("hash", "the image is not what its SHA256 TLV says")
    known = []
    for kid, t, sig in sigs:
        for k in keys:
            if k.id == kid:
                if k.state == REVOKED:
                    raise ImageError("revoked", "signed by a revoked key")
                known.append((k, t, sig))
    if not known:
        raise ImageError("key", "no signature by a key the node trusts")
    active = 0
    for k, t, sig in known:
        if t != _sig_tlv(k.alg) or not _check(k, img.digest, sig):
            raise ImageError("signature", "a %s signature does not verify" % k.alg)
        img.key_ids.append(k.id)
        if k.state == ACTIVE:
            active += 1
    if not active:
        raise ImageError("key", "signed by retired keys only")
    if img.counter is None:
        raise ImageError("counter", "no security counter")
    if img.counter < floor:
        raise ImageError("counter", "security counter %d below %d" % (img.counter, floor))
    if board is not None and img.board != board:
        raise ImageError("board", "built for %r" % img.board)
    if types is not None and img.type not in types:
        raise ImageError("type", "payload type %r" % img.type)
    if _DEBUG:
        print("ota: image ok", img.version, img.counter)
    return img


def _check(k, digest, sig):
    # one signature over the image digest, as imgtool makes them: Ed25519 over the
    # 32-byte digest (not pure); ECDSA P-256 of the digest (prehashed), DER
    if k.alg == ED25519:
        from ota import ed25519

        return ed25519.verify(k.raw, digest, sig, k.point)
    from ota import p256

    rs = p256.der_sig(sig)
    return rs is not None and p256.verify(k.point, digest, rs[0], rs[1])
