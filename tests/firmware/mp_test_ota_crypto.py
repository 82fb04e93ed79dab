# The node's OTA signature primitives (firmware/ota/) under the real MicroPython:
# SHA-512 against FIPS 180-4 / CPython digests, Ed25519 against RFC 8032 section 7.1,
# ECDSA P-256 against RFC 6979 appendix A.2.5, and the refusals: altered message,
# signature or key, S >= L, non-canonical encodings, r or s out of range, keys off the
# curve, malformed DER. tests/firmware/test_ota_node_verify.py adds signatures made by
# `cryptography` and images made by imgtool.
HEAPSIZE = "128K"  # the modules compile from source in the test's heap

from binascii import unhexlify as h

from ota.sha512 import Sha512, sha512

from ota import ed25519, p256


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def flip(b, i, bit=1):
    b = bytearray(b)
    b[i] ^= bit
    return bytes(b)


# FIPS 180-4 examples (the 1-block and 2-block messages) and CPython's hashlib.sha512 for
# lengths around the padding boundaries (111 bytes: one block; 112: two)
SHA512 = (
    (b"", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"),
    (b"abc", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c33596fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu", "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"),
    (b"a" * 111, "fa9121c7b32b9e01733d034cfc78cbf67f926c7ed83e82200ef86818196921760b4beff48404df811b953828274461673c68d04e297b0eb7b2b4d60fc6b566a2"),
    (b"a" * 112, "c01d080efd492776a1c43bd23dd99d0a2e626d481e16782e75d54c2503b5dc32bd05f0f1ba33e568b88fd2d970929b719ecbb152f58f130a407c8830604b70ca"),
    (b"a" * 127, "828613968b501dc00a97e08c73b118aa8876c26b8aac93df128502ab360f91bab50a51e088769a5c1eff4782ace147dce3642554199876374291f5d921629502"),
    (b"a" * 128, "b73d1929aa615934e61a871596b3f3b33359f42b8175602e89f7e06e5f658a243667807ed300314b95cacdd579f3e33abdfbe351909519a846d465c59582f321"),
    (b"a" * 239, "52c853cb8d907f3d4d6b889beb027985d7c273486d75f8baf26f80d24e90c74c6c3de3e22131582380a7d14d43f2941a31385439cd6ddc469f628015e50bf286"),
    (b"a" * 240, "4c296d90c61052a62ffb1dd196f1b7b09373b1f93e71836baebf89690546b7595684dbe9467a8e484fa0d1094272b4344a7c24f5fee8daedeb0bf549c985ab5f"),
    (b"a" * 1000, "67ba5535a46e3f86dbfbed8cbbaf0125c76ed549ff8b0b9e03e0c88cf90fa634fa7b12b47d77b694de488ace8d9a65967dc96df599727d3292a8d9d447709c97"),
)

# RFC 8032 section 7.1: TEST 1, TEST 2, TEST 3, TEST SHA(abc) (public key, message,
# signature; the SHA(abc) message is SHA-512("abc"), checked above)
ED25519 = (
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
)
_L = 2**252 + 27742317777372353535851937790883648493
_P25519 = 2**255 - 19

# RFC 6979 appendix A.2.5: P-256, private key C9AF..6721, SHA-256 of "sample" and "test"
P256_Q = h(
    "04"
    "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
    "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
)
P256 = (
    (b"sample", "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716",
     "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"),
    (b"test", "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367",
     "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083"),
)
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF


def test_sha512_known_digests():
    for msg, want in SHA512:
        check(sha512(msg) == h(want), f"sha512 of {len(msg)} bytes")


def test_sha512_updates_across_blocks():
    # the same digest whatever the pieces: 1, 7, 127, 128 and 129 bytes at a time
    msg = bytes((i * 7 + 3) & 0xFF for i in range(1000))
    want = sha512(msg)
    for step in (1, 7, 127, 128, 129):
        s = Sha512()
        for i in range(0, len(msg), step):
            s.update(memoryview(msg)[i : i + step])
        check(s.digest() == want, f"pieces of {step}")
    check(sha512(b"a" * 1000) == h(SHA512[-1][1]), "1000 x a")


def test_ed25519_rfc8032_vectors():
    for pub, msg, sig in ED25519:
        check(ed25519.verify(h(pub), h(msg), h(sig)), f"RFC 8032 vector {pub[:8]}")
        # the same with the key decoded beforehand (as ota/image.py Key does)
        pt = ed25519.decode(h(pub))
        check(ed25519.verify(h(pub), h(msg), h(sig), pt), "decoded key")


def test_ed25519_refuses_altered_message_signature_key():
    for pub, msg, sig in ED25519:
        pub, msg, sig = h(pub), h(msg), h(sig)
        check(not ed25519.verify(pub, msg + b"\x00", sig), "longer message")
        if msg:
            check(not ed25519.verify(pub, flip(msg, 0), sig), "altered message")
        for i in (0, 17, 31, 32, 45, 62):  # R, then S (S keeps below L: byte 63 untouched)
            check(not ed25519.verify(pub, msg, flip(sig, i)), f"altered signature byte {i}")
        other = h(ED25519[0][0]) if pub != h(ED25519[0][0]) else h(ED25519[1][0])
        check(not ed25519.verify(other, msg, sig), "another key")
        check(not ed25519.verify(flip(pub, 3), msg, sig), "altered key")
        check(not ed25519.verify(pub, msg, sig[:63]), "short signature")
        check(not ed25519.verify(pub[:31], msg, sig), "short key")


def test_ed25519_refuses_s_at_or_above_l():
    # S + L satisfies the group equation ([S + L]B = [S]B): only the range check refuses it
    for pub, msg, sig in ED25519:
        pub, msg, sig = h(pub), h(msg), h(sig)
        s = int.from_bytes(sig[32:], "little")
        for bad in (s + _L, _L, 2**256 - 1):
            check(not ed25519.verify(pub, msg, sig[:32] + bad.to_bytes(32, "little")),
                  "S >= L accepted")


def test_ed25519_refuses_bad_encodings():
    # y >= p (y = p + 1 encodes y = 1 non-canonically), x = 0 with the sign bit set,
    # a y with no x on the curve (y = 2)
    noncanon = (_P25519 + 1).to_bytes(32, "little")
    check(ed25519.decode(noncanon) is None, "y >= p decoded")
    neg_zero = (1 | (1 << 255)).to_bytes(32, "little")
    check(ed25519.decode(neg_zero) is None, "x = 0 with sign 1 decoded")
    check(ed25519.decode((2).to_bytes(32, "little")) is None, "y = 2 is not on the curve")
    check(ed25519.decode((1).to_bytes(32, "little"))[:2] == (0, 1), "the neutral point")
    pub, msg, sig = (h(x) for x in ED25519[0])
    check(not ed25519.verify(noncanon, msg, sig), "non-canonical key used")
    # R replaced by a non-canonical encoding of the same point: y + p (when it fits)
    ry = int.from_bytes(sig[:32], "little")
    y, sign = ry & ((1 << 255) - 1), ry >> 255
    if y + _P25519 < 2**255:
        r2 = (y + _P25519) | (sign << 255)
        check(not ed25519.verify(pub, msg, r2.to_bytes(32, "little") + sig[32:]), "R + p")


def test_p256_rfc6979_vectors():
    q = p256.pubkey(P256_Q)
    import hashlib

    for msg, r, s in P256:
        d = hashlib.sha256(msg).digest()
        r, s = int(r, 16), int(s, 16)
        check(p256.verify(q, d, r, s), f"RFC 6979 {msg}")
        check(p256.verify(q, d, r, _N - s), "(r, n - s) is the same signature")
        check(not p256.verify(q, flip(d, 31), r, s), "altered digest")
        check(not p256.verify(q, d, r ^ 1, s), "altered r")
        check(not p256.verify(q, d, r, s ^ 4), "altered s")
        for rr, ss in ((0, s), (r, 0), (_N, s), (r, _N), (r + _N, s), (r, s + _N)):
            check(not p256.verify(q, d, rr, ss), "r or s out of [1, n-1]")
        check(not p256.verify(q, d[:31], r, s), "short digest")
    other = p256.pubkey(
        h("04"
          "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
          "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"))  # G
    d = hashlib.sha256(b"sample").digest()
    check(not p256.verify(other, d, int(P256[0][1], 16), int(P256[0][2], 16)), "another key")


def test_p256_refuses_bad_keys():
    bad = (
        P256_Q[:64],  # short
        b"\x02" + P256_Q[1:],  # not uncompressed
        b"\x04" + bytes(64),  # (0, 0) is not on the curve
        flip(P256_Q, 64),  # y off by one bit
        b"\x04" + (_P256P + 1).to_bytes(32, "big") + P256_Q[33:],  # x >= p
    )
    for b in bad:
        try:
            p256.pubkey(b)
        except ValueError:
            continue
        raise AssertionError(f"key accepted: {b}")


def der(r, s):
    def i(v):
        b = v.to_bytes(33, "big")
        k = 0
        while k < 32 and b[k] == 0 and b[k + 1] < 0x80:
            k += 1
        b = b[k:]
        return b"\x02" + bytes([len(b)]) + b

    body = i(r) + i(s)
    return b"\x30" + bytes([len(body)]) + body


def test_p256_der_strict():
    r, s = int(P256[0][1], 16), int(P256[0][2], 16)
    sig = der(r, s)
    check(p256.der_sig(sig) == (r, s), "DER parse")
    check(p256.der_sig(sig + bytes(72 - len(sig))) == (r, s), "imgtool --pad-sig")
    small = der(1, 0x7F)
    check(p256.der_sig(small) == (1, 0x7F), "one-byte integers")
    bad = (
        b"",
        sig[:-1],  # cut
        b"\x31" + sig[1:],  # not a SEQUENCE
        sig[:1] + bytes([sig[1] + 1]) + sig[2:],  # length past the end
        sig[:1] + bytes([sig[1] - 1]) + sig[2:],  # length short of the integers
        sig + b"\x00\x01",  # a non-zero byte after the SEQUENCE
        sig + bytes(73 - len(sig)),  # padded beyond 72
        b"\x30\x81" + bytes([len(sig) - 2]) + sig[2:],  # long-form length
        b"\x30\x08\x02\x02\x00\x01\x02\x02\x00\x7f",  # leading zero before a low byte
        b"\x30\x06\x02\x01\x81\x02\x01\x01",  # negative r
        b"\x30\x06\x02\x00\x02\x02\x01\x01",  # zero-length r
        b"\x30\x06\x03\x01\x01\x02\x01\x01",  # BIT STRING, not INTEGER
        b"\x30\x07\x02\x01\x01\x02\x01\x01\x00",  # a byte left inside the SEQUENCE
        b"\x30\x27\x02\x22" + b"\x01" * 34 + b"\x02\x01\x01",  # r of 34 bytes
    )
    for i, b in enumerate(bad):
        check(p256.der_sig(b) is None, f"malformed DER {i} accepted")
