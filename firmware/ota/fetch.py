# Pull a package into a file: CoAP GET of a Package URI's path from the node's LwM2M
# server (the endpoint the node registered through, so under its OSCORE context), block
# by block with Block2 (RFC 7959 section 2.4), resumable.
#
# One step() is one block exchange: the session calls it between its other work, so the
# node keeps answering its server while it downloads. Every block is written at its
# offset in the file before the next is asked for; the URI and the representation's
# ETag are kept beside the file (DEST.dl, two lines), so a download cut by a dropped link
# or a reboot continues from the last stored block when the same URI is written again,
# and one whose ETag changed (another image at the same URI) starts again from 0.
#
# The URI's host is not used for routing: the node fetches only from its own server, over
# the registration's security context (a Package URI cannot point it at another host).
# Errors carry the LwM2M 1.1 /5/0/5 Update Result (Core section E.6): 2 not enough flash
# (larger than the limit), 4 connection lost, 7 invalid URI (malformed, or the server
# does not have it), 9 unsupported protocol (not coap://).
from micropython import const
import binascii
import os
import time
from coap.msg import CoapError

_GET = const(1)
_CONTENT = const(0x45)  # 2.05
_NOT_FOUND = const(0x84)  # 4.04
_ETAG = const(4)  # RFC 7252 section 5.10
_URI_PATH = const(11)
_BLOCK2 = const(23)  # RFC 7959
_SIZE2 = const(28)
_ETAG_MAX = const(8)
_SEGS_MAX = const(8)
_TRIES = const(3)  # failed exchanges in a row before the download counts as cut
# The retransmission timeout of a block exchange, from the measured round trips (RFC 6298
# estimator, as CoCoA uses for CoAP: RTO = SRTT + 4 RTTVAR; samples only from exchanges
# without a retransmission, Karn's rule; after one, the timeout stays doubled until a
# clean sample). Stop-and-wait pays one RTO per lost datagram: CoAP's fixed 2-3 s made a
# 5 % loss cost 99.8 % of the goodput (aiot bench ota).
_RTO_MIN_US = const(2000)
_RTO_MAX_US = const(2000000)

NO_FLASH = const(2)  # /5/0/5 Update Result codes (Core E.6.1)
CONNECTION_LOST = const(4)
INVALID_URI = const(7)
UNSUPPORTED_PROTOCOL = const(9)


class FetchError(Exception):
    """The download cannot go on: ``result`` is the /5/0/5 code, ``reason`` why."""

    def __init__(self, result, reason):
        super().__init__(reason)
        self.result = result
        self.reason = reason


def path_of(uri):
    """The Uri-Path segments (bytes) of coap://HOST[:PORT]/seg/... ; FetchError."""
    if not isinstance(uri, str) or "://" not in uri:
        raise FetchError(INVALID_URI, "not a URI")
    if not uri.startswith("coap://"):
        raise FetchError(UNSUPPORTED_PROTOCOL, "only coap:// is supported")
    rest = uri[7:]
    i = rest.find("/")
    if i <= 0 or "?" in rest or "#" in rest:
        raise FetchError(INVALID_URI, "coap://HOST/PATH without query or fragment")
    segs = [s.encode() for s in rest[i + 1 :].split("/")]
    if not 0 < len(segs) <= _SEGS_MAX or b"" in segs or len(uri) > 255:
        raise FetchError(INVALID_URI, "path of 1..%d segments" % _SEGS_MAX)
    return segs


class Fetch:
    """Download ``uri`` into the file ``dest`` (at most ``limit`` bytes) through the
    Endpoint ``ep`` in blocks of 16 << szx bytes; step() until it returns True."""

    def __init__(self, ep, uri, dest, limit, szx=6):
        self.ep = ep
        self.uri = uri
        self.path = path_of(uri)
        self.dest = dest
        self.limit = limit
        self.szx = szx
        self.etag = None
        self.size = -1  # Size2 of the representation, when the server said
        self.fails = 0
        self.srtt = 0  # us; 0: no sample yet (CoAP's own timeout)
        self.rttvar = 0
        self.rto = 0
        self.off = self._resume()

    def _resume(self):
        # the stored block count, if the same URI was being fetched: the file's length
        # rounded down to whole blocks (a cut write leaves part of one)
        try:
            with open(self.dest + ".dl") as f:
                uri = f.readline().rstrip("\n")
                etag = f.readline().rstrip("\n")
            n = os.stat(self.dest)[6]
        except OSError:
            return self._restart()
        if uri != self.uri or not etag:
            return self._restart()
        try:
            self.etag = binascii.unhexlify(etag)
        except ValueError:
            return self._restart()
        bs = 16 << self.szx
        return n - n % bs

    def _restart(self):
        self.etag = None
        with open(self.dest, "wb"):
            pass
        self._mark(b"")
        return 0

    def _mark(self, etag):
        # DEST.dl: the URI, then the ETag (hex; empty until the first block came)
        with open(self.dest + ".dl", "w") as f:
            f.write(self.uri)
            f.write("\n")
            f.write(binascii.hexlify(etag).decode())
            f.write("\n")

    def done(self):
        """The download ended (complete or given up): its mark goes, the file stays."""
        try:
            os.remove(self.dest + ".dl")
        except OSError:
            pass

    def _sample(self, rtt):
        # RFC 6298 section 2 in microseconds (integers: nothing allocated on small ints)
        if not self.srtt:
            self.srtt = rtt
            self.rttvar = rtt >> 1
        else:
            d = self.srtt - rtt
            self.rttvar += ((d if d > 0 else -d) - self.rttvar) >> 2
            self.srtt += (rtt - self.srtt) >> 3
        rto = self.srtt + (self.rttvar << 2)
        self.rto = _RTO_MIN_US if rto < _RTO_MIN_US else _RTO_MAX_US if rto > _RTO_MAX_US else rto

    def step(self, deadline_ms=-1):
        """Fetch the next block; True once the last one is stored. FetchError when the
        download cannot go on."""
        ep = self.ep
        w = ep.begin(_GET)
        for s in self.path:
            w.option(_URI_PATH, s)
        w.option_uint(_BLOCK2, ((self.off >> (self.szx + 4)) << 4) | self.szx)
        t0 = time.ticks_us()
        n0 = ep.retransmissions
        try:
            r = ep.exchange(deadline_ms, (self.rto + 999) // 1000)
        except (CoapError, OSError) as e:  # CoapTimeout, CoapReset: the link
            if self.rto:
                self.rto = min(self.rto << 1, _RTO_MAX_US)
            self.fails += 1
            if self.fails >= _TRIES:
                raise FetchError(CONNECTION_LOST, "no answer: %s" % (str(e) or "timeout"))
            return False
        self.fails = 0
        if ep.retransmissions == n0:
            self._sample(time.ticks_diff(time.ticks_us(), t0))
        elif self.rto:
            self.rto = min(self.rto << 1, _RTO_MAX_US)
        if r.code == _NOT_FOUND:
            raise FetchError(INVALID_URI, "the server has no such package")
        if r.code != _CONTENT:
            raise FetchError(INVALID_URI, "GET answered %d.%02d" % (r.code >> 5, r.code & 31))
        i = r.find(_ETAG)
        etag = r.value(i) if i >= 0 else b""
        if not 0 < len(etag) <= _ETAG_MAX:
            raise FetchError(INVALID_URI, "the package has no ETag")
        if self.etag is None:
            self.etag = etag
            self._mark(etag)
        elif etag != self.etag:  # another representation: start again
            self.off = self._restart()
            return False
        i = r.find(_SIZE2)
        if i >= 0:
            self.size = r.uint(i)
            if self.size > self.limit:
                raise FetchError(NO_FLASH, "%d bytes do not fit the slot" % self.size)
        i = r.find(_BLOCK2)
        more = False
        if i >= 0:
            v = r.uint(i)
            szx = v & 7
            if szx == 7 or szx > self.szx:
                raise FetchError(INVALID_URI, "block size not asked for")
            more = bool(v & 8)
            if (v >> 4) << (szx + 4) != self.off:
                if szx < self.szx:  # the server wants smaller blocks: ask again
                    self.szx = szx
                    return False
                raise FetchError(INVALID_URI, "answered another block")
            self.szx = szx
        elif self.off:
            raise FetchError(INVALID_URI, "answer without Block2")
        n = r.n - r.pstart
        if more and n != 16 << self.szx:
            raise FetchError(INVALID_URI, "a block of %d bytes" % n)
        end = self.off + n
        if end > self.limit:
            raise FetchError(NO_FLASH, "more than %d bytes" % self.limit)
        try:
            with open(self.dest, "r+b") as f:
                f.seek(self.off)
                f.write(memoryview(r.data)[r.pstart : r.n])
        except OSError as e:
            raise FetchError(NO_FLASH, "write: %s" % e)
        self.off = end
        return not more
