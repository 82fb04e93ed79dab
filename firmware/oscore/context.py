# The OSCORE security context (RFC 8613 section 3) of the node and its one peer: keys
# derived at construction (section 3.2), the AEAD nonce (section 5.2), the AAD (section
# 5.4), the OSCORE option value (section 6.1), the sender sequence number in flash
# (oscore/seq.py, Appendix B.1.1) and the replay window of received requests with its
# recovery after a reboot through the Echo option (section 7.4, Appendix B.1.2,
# RFC 9175). Everything after construction works in preallocated buffers.
from micropython import const
from oscore import kdf
from oscore.ccm import Ccm
from oscore.seq import SeqStore

_NONCE = const(13)
_ID_MAX = const(7)  # nonce length - 6 (section 5.2)
_CTX_MAX = const(32)  # ID Context bytes accepted here
_WIN = const(64)  # replay window: the last 64 sequence numbers (a multiple of 8)
_ECHO = const(8)  # bytes of the Echo value (RFC 9175 section 2.2)
# Enc_structure ["Encrypt0", h'', external_aad] (RFC 9052 section 5.3) up to the
# external_aad byte string header; aad_array starts with [1, [10], ...] (section 5.4)
_ENC0 = b"\x83\x68Encrypt0\x40"
_AAD_ARRAY = b"\x85\x01\x81\x0a"
_AAD_MAX = const(48)


class OscoreError(Exception):
    """A context that cannot be set up or used (bad parameters, exhausted numbers)."""


def piv_len(v):
    """Bytes of a Partial IV v (section 6.1: no leading zeros, 0 is one byte 0x00)."""
    n = 1
    while v > 0xFF:
        v >>= 8
        n += 1
    return n


class Context:
    """Security context of the node (sender_id) with its peer (recipient_id).

    secret (Master Secret), salt (Master Salt, b"" by default), id_context (None or
    bytes: sent in requests as kid context when kid_context), seq_path: the file that
    keeps the sender sequence bound (written every `step` messages, see oscore/seq.py).
    The replay window starts empty for a new context (no sequence file yet) and
    unknown after a reboot: the first request is then answered with Echo.
    """

    def __init__(self, secret, sender_id, recipient_id, seq_path, salt=b"",
                 id_context=None, step=256, kid_context=True):
        if len(sender_id) > _ID_MAX or len(recipient_id) > _ID_MAX:
            raise OscoreError("ID longer than 7 bytes")
        if id_context is not None and len(id_context) > _CTX_MAX:
            raise OscoreError("ID Context too long")
        if sender_id == recipient_id:
            raise OscoreError("sender and recipient ID equal")
        sk, rk, iv = kdf.derive(secret, salt, sender_id, recipient_id, id_context)
        self.sid = bytes(sender_id)
        self.rid = bytes(recipient_id)
        self.idctx = None if id_context is None else bytes(id_context)
        self._snd = Ccm(sk)
        self._rcv = Ccm(rk)
        del sk, rk
        self._iv = bytes(iv)
        self.nonce = bytearray(_NONCE)
        self.aad = bytearray(_AAD_MAX)
        self.aad[0:11] = _ENC0
        self.aad[12:16] = _AAD_ARRAY
        self.seq = SeqStore(seq_path, step)
        self.ctx_in_req = bool(kid_context) and self.idctx is not None
        # the OSCORE option value: flags, Partial IV, kid context, kid (section 6.1)
        c = 1 + len(self.idctx) if self.ctx_in_req else 0
        self.opt = bytearray(1 + 5 + c + len(self.sid))
        self._bits = bytearray(_WIN >> 3)
        self._hi = -1
        self.window_ok = self.seq.fresh  # Appendix B.1.2: unknown after a reboot
        self.echo = bytearray(_ECHO)
        self._echo_set = False

    # -- nonce and AAD --

    def _nonce(self, ident, piv):
        # section 5.2: (len(ID_PIV) | ID_PIV padded to 7 | PIV padded to 5) xor Common IV
        n = self.nonce
        iv = self._iv
        for i in range(_NONCE):
            n[i] = iv[i]
        k = len(ident)
        n[0] ^= k
        b = 1 + _ID_MAX - k
        for i in range(k):
            n[b + i] ^= ident[i]
        for i in range(5):
            n[12 - i] ^= piv & 0xFF
            piv >>= 8

    def _aad(self, kid, piv):
        # section 5.4: external_aad = bstr(CBOR [1, [10], request_kid, request_piv, h''])
        a = self.aad
        p = 16
        k = len(kid)
        a[p] = 0x40 | k
        p += 1
        for i in range(k):
            a[p + i] = kid[i]
        p += k
        k = piv_len(piv)
        a[p] = 0x40 | k
        for i in range(k):
            a[p + k - i] = piv & 0xFF
            piv >>= 8
        p += k + 1
        a[p] = 0x40  # Class I options: none
        p += 1
        a[11] = 0x40 | (p - 12)
        return p

    def seal(self, buf, off, n, nonce_own, nonce_piv, aad_own, aad_piv):
        """Encrypt buf[off:off+n] in place with the Sender Key, tag after it; returns
        n + 8. The nonce is built from (own Sender ID if nonce_own, else the peer's,
        nonce_piv), the AAD from (request_kid own or peer's, request_piv aad_piv)."""
        self._nonce(self.sid if nonce_own else self.rid, nonce_piv)
        k = self._aad(self.sid if aad_own else self.rid, aad_piv)
        return self._snd.seal(self.nonce, self.aad, k, buf, off, n)

    def open(self, buf, off, n, nonce_own, nonce_piv, aad_own, aad_piv):
        """Decrypt buf[off:off+n] (with the tag) in place with the Recipient Key;
        returns the plaintext length or -1 (forged, wrong key, truncated)."""
        self._nonce(self.sid if nonce_own else self.rid, nonce_piv)
        k = self._aad(self.sid if aad_own else self.rid, aad_piv)
        return self._rcv.open(self.nonce, self.aad, k, buf, off, n)

    # -- the OSCORE option value (section 6.1) --

    def option(self, piv, request):
        """Fill self.opt with the option value: a request's (Partial IV piv, kid
        context, kid), or a response's (Partial IV piv, or nothing when piv < 0).
        Returns its length."""
        o = self.opt
        if piv < 0:
            return 0
        k = piv_len(piv)
        o[0] = k | (0x08 if request else 0) | (0x10 if request and self.ctx_in_req else 0)
        v = piv
        for i in range(k):
            o[k - i] = v & 0xFF
            v >>= 8
        p = 1 + k
        if request:
            if self.ctx_in_req:
                c = self.idctx
                o[p] = len(c)
                p += 1
                for i in range(len(c)):
                    o[p + i] = c[i]
                p += len(c)
            s = self.sid
            for i in range(len(s)):
                o[p + i] = s[i]
            p += len(s)
        return p

    # -- sequence numbers and the replay window --

    def next_seq(self):
        """A sender sequence number never used before (persisted ahead, seq.py)."""
        return self.seq.take()

    def fresh(self, s):
        """True if request sequence number s may be accepted (window_ok required)."""
        hi = self._hi
        if s > hi:
            return True
        if hi - s >= _WIN:
            return False
        b = s & (_WIN - 1)
        return not (self._bits[b >> 3] >> (b & 7)) & 1

    def accept(self, s):
        """Mark s as received (after the request verified)."""
        hi = self._hi
        bits = self._bits
        if s > hi:
            k = s - hi
            if k > _WIN or hi < 0:
                k = _WIN
            for j in range(hi + 1, hi + 1 + k):
                b = j & (_WIN - 1)
                bits[b >> 3] &= ~(1 << (b & 7))
            self._hi = s
        b = s & (_WIN - 1)
        bits[b >> 3] |= 1 << (b & 7)

    def recover(self, s):
        """Appendix B.1.2: a request carrying our Echo value verified: the window
        starts at s (s and everything before it are taken)."""
        for i in range(len(self._bits)):
            self._bits[i] = 0xFF
        self._hi = s
        self.window_ok = True

    def echo_value(self):
        """The Echo value of this boot (random, chosen on first use)."""
        if not self._echo_set:
            import os

            self.echo[:] = os.urandom(_ECHO)
            self._echo_set = True
        return self.echo
