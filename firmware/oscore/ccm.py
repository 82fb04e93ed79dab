# AES-CCM-16-64-128 (COSE algorithm 10, RFC 9053 section 4.2; CCM is RFC 3610): L = 2
# (messages up to 64 KiB), an 8-byte tag, a 13-byte nonce, 128-bit key. Built on
# cryptolib.aes in ECB mode (its encrypt(inbuf, outbuf) writes without allocating),
# in place over the caller's buffer: seal() and open() allocate nothing.
from micropython import const
import micropython
import cryptolib

_TAG = const(8)  # M
_NONCE = const(13)  # 15 - L
_B0_AAD = const(0x59)  # flags: Adata, (M - 2) / 2 << 3, L - 1 (RFC 3610 section 2.2)
_B0 = const(0x19)
_CTR = const(0x01)  # flags of the counter blocks A_i: L - 1 (section 2.3)


@micropython.viper
def _xor(dst, d: int, src, s: int, n: int):
    # dst[d:d+n] ^= src[s:s+n]
    pd = ptr8(dst)
    ps = ptr8(src)
    i = 0
    while i < n:
        pd[d + i] ^= ps[s + i]
        i += 1


@micropython.viper
def _differs(a, ao: int, b, bo: int, n: int) -> int:
    # constant time: 0 if a[ao:ao+n] == b[bo:bo+n]
    pa = ptr8(a)
    pb = ptr8(b)
    r = 0
    i = 0
    while i < n:
        r |= pa[ao + i] ^ pb[bo + i]
        i += 1
    return r


@micropython.viper
def _wipe(buf, o: int, n: int):
    p = ptr8(buf)
    i = 0
    while i < n:
        p[o + i] = 0
        i += 1


class Ccm:
    """AES-CCM-16-64-128 with one key (16 bytes). seal()/open() work in place."""

    def __init__(self, key):
        if len(key) != 16:
            raise ValueError("AES-128 key")
        self._aes = cryptolib.aes(key, 1)
        self._x = bytearray(16)  # CBC-MAC state
        self._a = bytearray(16)  # counter block
        self._s = bytearray(16)  # key stream block

    def _start(self, nonce, aad, alen, n):
        # B_0 and the AAD blocks into the CBC-MAC (section 2.2); A_i prefix
        x = self._x
        a = self._a
        aes = self._aes
        x[0] = _B0_AAD if alen else _B0
        a[0] = _CTR
        for i in range(_NONCE):
            x[1 + i] = nonce[i]
            a[1 + i] = nonce[i]
        x[14] = n >> 8
        x[15] = n & 0xFF
        aes.encrypt(x, x)
        if alen:
            # l(a) in two bytes (0 < l(a) < 2^16 - 2^8), then a, zero padded
            x[0] ^= alen >> 8
            x[1] ^= alen & 0xFF
            self._mac(aad, 0, alen, 2)

    def _mac(self, src, s, n, p):
        # absorb src[s:s+n] into the CBC-MAC from block position p; pads the last block
        x = self._x
        aes = self._aes
        while n > 0:
            k = 16 - p
            if k > n:
                k = n
            _xor(x, p, src, s, k)
            s += k
            n -= k
            p += k
            if p == 16:
                aes.encrypt(x, x)
                p = 0
        if p:
            aes.encrypt(x, x)

    def _ctr(self, buf, off, n, mac_first):
        # CTR over buf[off:off+n] with A_1, A_2 ..; the CBC-MAC over the plaintext
        # (taken before encrypting when mac_first, after decrypting otherwise)
        x = self._x
        a = self._a
        s = self._s
        aes = self._aes
        i = 1
        while n > 0:
            k = 16 if n > 16 else n
            if mac_first:
                _xor(x, 0, buf, off, k)
                aes.encrypt(x, x)
            a[14] = i >> 8
            a[15] = i & 0xFF
            aes.encrypt(a, s)
            _xor(buf, off, s, 0, k)
            if not mac_first:
                _xor(x, 0, buf, off, k)
                aes.encrypt(x, x)
            off += k
            n -= k
            i += 1

    def _tag(self):
        # T xor first M bytes of S_0 = E(A_0), left in _x[0:8]
        a = self._a
        a[14] = a[15] = 0
        self._aes.encrypt(a, self._s)
        _xor(self._x, 0, self._s, 0, _TAG)

    def seal(self, nonce, aad, alen, buf, off, n):
        """Encrypt buf[off:off+n] in place and write the tag to buf[off+n:off+n+8];
        aad[:alen] is authenticated. Returns n + 8."""
        if n > 0xFFFF or off + n + _TAG > len(buf):
            raise ValueError("CCM buffer")
        self._start(nonce, aad, alen, n)
        self._ctr(buf, off, n, True)
        self._tag()
        e = off + n
        x = self._x
        for i in range(_TAG):
            buf[e + i] = x[i]
        return n + _TAG

    def open(self, nonce, aad, alen, buf, off, n):
        """Decrypt buf[off:off+n] (ciphertext and tag) in place; returns the plaintext
        length (n - 8), or -1 when the tag does not verify (the bytes are then wiped)."""
        n -= _TAG
        if n < 0 or off + n + _TAG > len(buf):
            return -1
        self._start(nonce, aad, alen, n)
        self._ctr(buf, off, n, False)
        self._tag()
        if _differs(self._x, 0, buf, off + n, _TAG):
            _wipe(buf, off, n)
            return -1
        return n
