# The install path of Object 9 (ota/models.py Software): verify a model image on flash
# and, for an Install, write its payload as the slot's .tflite and load it. Imported for
# that only and dropped afterwards (ota/models.py _check): a node pays its RAM, and the
# verifier's, only while it installs.
from micropython import const
import os
from ota.models import (Refused, image_path, model_path, remove, R_INTEGRITY, R_UNSUPPORTED,
                        R_INSTALL_FAILED, TRUST)

_MAX_IMAGE = const(0x40000)  # the largest model image a slot takes (256 KB)
_T_MODEL_ID = const(0xA172)  # ota/image.py TLV_TYPES: SHA-256 of the .tflite + NAME@VERSION
_T_FEATURE_SPEC = const(0xA173)  # u32: the feature-spec version it was trained on
_INFO_PROT = const(0x6908)
# verify() reasons answered 54 (unsupported package) rather than 53 (integrity)
_UNSUPPORTED = ("unsupported", "board", "type", "size")


def _keys(cfg):
    from ota.image import keys_from_file

    return keys_from_file(cfg.get("ota_trust", TRUST))


def _model_tlvs(path, buf):
    # (model id TLV value, feature-spec version) from a verified image's protected TLV
    # area (verify() checked its bounds; checked again, nothing trusted)
    import struct

    with open(path, "rb") as f:
        if f.readinto(buf) < 32:
            raise ValueError("header")
        hdr, prot, size = struct.unpack_from("<HHI", buf, 8)
        if not 4 <= prot <= len(buf):
            raise ValueError("protected TLV area of %d bytes" % prot)
        f.seek(hdr + size)
        if f.readinto(buf) < prot:
            raise ValueError("protected TLV area cut")
    if struct.unpack_from("<HH", buf, 0) != (_INFO_PROT, prot):
        raise ValueError("protected TLV info")
    mid = spec = None
    p = 4
    while p + 4 <= prot:
        t, n = struct.unpack_from("<HH", buf, p)
        p += 4
        if p + n > prot:
            raise ValueError("TLV 0x%x past the area" % t)
        if t == _T_MODEL_ID and 35 <= n <= 81:
            mid = bytes(buf[p:p + n])
        elif t == _T_FEATURE_SPEC and n == 4:
            spec = struct.unpack_from("<I", buf, p)[0]
        p += n
    if mid is None or spec is None:
        raise ValueError("no model id or feature-spec TLV")
    return mid, spec, hdr, size


def _extract(src, off, n, dst, buf):
    # the payload (n bytes at off) to dst through a temporary file; its SHA-256
    import hashlib

    h = hashlib.sha256()
    mv = memoryview(buf)
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        f.seek(off)
        while n:
            k = f.readinto(mv[:min(n, len(buf))])
            if not k:
                raise ValueError("payload cut")
            h.update(mv[:k])
            g.write(mv[:k])
            n -= k
    os.rename(dst + ".tmp", dst)
    return h.digest()


def check(sw, slot, install):
    # the image in models/<slot>.img against the node's keys, floor, board and spec;
    # with install, its payload becomes models/<slot>.tflite and is loaded
    # (sw._model): (Image, model id TLV, kind). Refused otherwise.
    from ota.image import verify, ImageError

    path = image_path(slot)
    buf = bytearray(512)
    try:
        img = verify(path, _keys(sw.node.cfg), _MAX_IMAGE, sw.s["floor"], sw.node.cfg["board"],
                     ("model",), buf)
    except ImageError as e:
        raise Refused(R_UNSUPPORTED if e.reason in _UNSUPPORTED else R_INTEGRITY,
                      "%s: %s" % (e.reason, e.detail))
    except (OSError, ValueError) as e:
        raise Refused(R_INTEGRITY, "keys: %s" % e)
    try:
        mid, fspec, off, n = _model_tlvs(path, buf)
    except (OSError, ValueError) as e:
        raise Refused(R_INTEGRITY, "model TLVs: %s" % e)
    if fspec != sw.spec.get("version"):
        raise Refused(R_UNSUPPORTED, "feature spec %d, the node runs %s"
                      % (fspec, sw.spec.get("version")))
    if b"@" not in mid[32:]:
        raise Refused(R_INTEGRITY, "model id TLV")
    if not install:
        return img, mid, None
    dst = model_path(slot)
    try:
        digest = _extract(path, off, n, dst, buf)
    except (OSError, ValueError) as e:
        raise Refused(R_INSTALL_FAILED, "write: %s" % e)
    if digest != mid[:32]:
        remove(dst)
        raise Refused(R_INTEGRITY, "the payload is not the model its id names")
    sw.s["slots"][slot]["kind"] = ""
    try:
        m = sw._load(slot)
    except (ValueError, MemoryError) as e:  # ModelError, TFLiteError
        remove(dst)
        raise Refused(R_INSTALL_FAILED, str(e))
    kind = "classifier" if m.labels else "anomaly"
    d = sw.node.decider
    if (d.clf if m.labels else d.ae) is None:
        remove(dst)
        raise Refused(R_INSTALL_FAILED, "no active %s model to run beside" % kind)
    sw._model = m
    return img, mid, kind
