# The node's block-wise download (firmware/ota/fetch.py) under the real MicroPython,
# against a server stand-in that answers GETs with Block2 as the gateway's /fw does
# (gateway/ota/package.py): the file ends up byte for byte the image; a download cut by
# a dead link gives result 4 and, with the same URI, continues from the last stored block
# (not from 0); another ETag starts again; a larger image than the slot is result 2 before
# anything is stored; a server asking for smaller blocks is followed; 4.04 is result 7;
# a URI that is not coap:// is 9. The end-to-end path is tests/e2e/test_ota_update.py.
from coap.msg import CoapTimeout
from ota.fetch import Fetch, FetchError, path_of

HEAPSIZE = "96K"

_ETAG, _URI_PATH, _BLOCK2, _SIZE2 = 4, 11, 23, 28


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Answer:
    """A decoded response as coap/decode.py Message shows it."""

    def __init__(self, code, opts, payload):
        self.code = code
        self._opts = opts
        self.data = payload
        self.pstart = 0
        self.n = len(payload)

    def find(self, num, start=0):
        for i in range(start, len(self._opts)):
            if self._opts[i][0] == num:
                return i
        return -1

    def value(self, i):
        return self._opts[i][1]

    def uint(self, i):
        return self._opts[i][1]


class Writer:
    def __init__(self):
        self.opts = []

    def option(self, num, value=b""):
        self.opts.append((num, value))

    def option_uint(self, num, v):
        self.opts.append((num, v))


class Server:
    """The endpoint (coap/endpoint.py begin/exchange) with a server behind it."""

    def __init__(self, image, etag=b"\x01\x02\x03\x04\x05\x06\x07\x08", max_szx=6):
        self.image = image
        self.etag = etag
        self.max_szx = max_szx
        self.down = False
        self.served = 0  # payload bytes answered
        self.paths = []
        self.rtos = []  # the retransmission timeout given to each exchange (0: CoAP's)

    def begin(self, code):
        check(code == 1, "GET")
        self.w = Writer()
        return self.w

    retransmissions = 0

    def exchange(self, deadline_ms=-1, rto_ms=0):
        self.rtos.append(rto_ms)
        if self.down:
            raise CoapTimeout("no response")
        path = b"/".join(v for n, v in self.w.opts if n == _URI_PATH)
        self.paths.append(path)
        if path != b"fw/abc":
            return Answer(0x84, [], b"")
        b2 = [v for n, v in self.w.opts if n == _BLOCK2][0]
        num, szx = b2 >> 4, min(b2 & 7, self.max_szx)
        size = 16 << szx
        start = num * size
        if szx < b2 & 7:  # a smaller size: the block that holds the offset asked for
            start = (num << ((b2 & 7) + 4))
            num = start // size
            start = num * size
        part = self.image[start : start + size]
        more = start + size < len(self.image)
        opts = [(_ETAG, self.etag), (_BLOCK2, num << 4 | (8 if more else 0) | szx)]
        if num == 0:
            opts.append((_SIZE2, len(self.image)))
        self.served += len(part)
        return Answer(0x45, sorted(opts), part)


IMAGE = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(5000))
URI = "coap://gw:5683/fw/abc"


def run(f, limit=100):
    for _ in range(limit):
        if f.step():
            return
    raise AssertionError("not done")


def read(p):
    with open(p, "rb") as f:
        return f.read()


def test_a_download_is_the_image_byte_for_byte():
    srv = Server(IMAGE)
    f = Fetch(srv, URI, "img", 10000)
    run(f)
    f.done()
    check(read("img") == IMAGE, "bytes")
    check(srv.served == len(IMAGE) and len(srv.paths) == 5, (srv.served, len(srv.paths)))
    # the first block waits CoAP's own timeout; then one estimated from the round trips
    # (at least 2 ms), doubled after a timeout
    check(srv.rtos[0] == 0 and all(2 <= t <= 2000 for t in srv.rtos[1:]), srv.rtos)


def test_a_cut_download_continues_from_its_last_block_with_the_same_uri():
    srv = Server(IMAGE)
    f = Fetch(srv, URI, "img", 10000)
    f.step()
    f.step()
    srv.down = True
    f.step()
    f.step()
    try:
        f.step()
        raise AssertionError("a dead link must end the download")
    except FetchError as e:
        check(e.result == 4, e.result)
    srv.down = False
    g = Fetch(srv, URI, "img", 10000)  # the server writes the same URI again
    check(g.off == 2048, g.off)
    run(g)
    check(read("img") == IMAGE, "bytes")
    check(srv.served == len(IMAGE), "each block once: %d" % srv.served)


def test_a_changed_image_starts_again():
    srv = Server(IMAGE)
    f = Fetch(srv, URI, "img", 10000)
    f.step()
    new = bytes(reversed(IMAGE))
    srv.image = new
    srv.etag = b"\x09" * 8
    run(f)
    check(read("img") == new, "the new image, whole")


def test_another_uri_does_not_resume():
    srv = Server(IMAGE)
    f = Fetch(srv, URI, "img", 10000)
    f.step()
    g = Fetch(srv, "coap://other:5683/fw/abc", "img", 10000)
    check(g.off == 0, g.off)


def test_an_image_larger_than_the_slot_is_refused_before_it_is_stored():
    srv = Server(IMAGE)
    f = Fetch(srv, URI, "img", 4096)
    try:
        f.step()
        raise AssertionError("too large")
    except FetchError as e:
        check(e.result == 2, e.result)
    check(read("img") == b"", "nothing stored")


def test_smaller_blocks_asked_by_the_server_are_followed():
    srv = Server(IMAGE, max_szx=4)
    f = Fetch(srv, URI, "img", 10000)
    run(f, 400)
    check(read("img") == IMAGE and f.szx == 4, f.szx)


def test_no_such_package_is_invalid_uri_and_bad_uris_are_refused():
    srv = Server(IMAGE)
    f = Fetch(srv, "coap://gw/fw/nope", "img", 10000)
    try:
        f.step()
        raise AssertionError("4.04")
    except FetchError as e:
        check(e.result == 7, e.result)
    for uri, result in (("http://gw/fw", 9), ("coap://gw", 7), ("coap://gw/a//b", 7),
                        ("coap://gw/a?q=1", 7), ("fw/abc", 7)):
        try:
            path_of(uri)
            raise AssertionError(uri)
        except FetchError as e:
            check(e.result == result, (uri, e.result))
    check(path_of(URI) == [b"fw", b"abc"], "path")
