# A test resource tree for the node's CoAP server (MicroPython), used by
# mp_test_coapserver.py on a simulated link and by coapnode.py on a real UDP socket:
#   GET  /hello            "hello world", text/plain, written in place
#   GET  /big              BIG_LEN bytes of big_byte(i), windowed writes (forces Block2)
#   GET  /store            what was last PUT/POSTed to /store (windowed)
#   PUT/POST /store        any body (Block1 up to the endpoint's limit), 2.04
#   GET  /counter          the counter as text, observable (key COUNTER)
#   GET  /obj/N/M          "N,M" for decimal segments (path_int), 4.04 otherwise
#   GET  /q?a=N&b=M        "a+b" (the query options, Request.query)
#   GET  /boom             the handler raises (the server answers 5.00)
#   DELETE /counter        ends the counter's observations with 4.04 notifications
from micropython import const

BIG_LEN = const(3000)
COUNTER = const(1)
_PIECE = const(50)  # /big is written in pieces of this size


def _query_int(req, key):
    # the integer of query option "key=N", 0 without one
    for i in range(req.nquery):
        q = bytes(req.query(i))
        if q.startswith(key + b"="):
            return int(q[len(key) + 1 :])
    return 0


def big_byte(i):
    return 33 + (i * 7 + i // 256) % 90


class Tree:
    def __init__(self, store=2048):
        self.counter = 0
        self.gone = False
        self.store = bytearray(store)
        self.stored = 0
        self.calls = 0
        self._piece = bytearray(_PIECE)
        self._num = bytearray(12)

    def _text_int(self, resp, v, at=0):
        # decimal digits of v into resp.buf from `at` (in place, no allocation)
        b = resp.buf
        t = self._num
        n = 0
        while True:
            t[n] = 48 + v % 10
            v //= 10
            n += 1
            if not v:
                break
        for i in range(n):
            b[at + i] = t[n - 1 - i]
        resp.n = at + n

    def handle(self, req, resp):
        self.calls += 1
        m = req.method
        if req.path_is(0, b"hello") and req.npath == 1:
            if m != 1:
                return 0x85
            resp.option_uint(12, 0)
            msg = b"hello world"
            for i in range(len(msg)):
                resp.buf[i] = msg[i]
            resp.n = len(msg)
            return 0x45
        if req.path_is(0, b"big"):
            resp.option_uint(12, 42)
            p = self._piece
            for s in range(0, BIG_LEN, _PIECE):
                if not resp.wants(s, _PIECE):
                    resp.skip(_PIECE)  # a piece outside the block: only count it
                    continue
                for i in range(_PIECE):
                    p[i] = big_byte(s + i)
                resp.write(p)
            return 0x45
        if req.path_is(0, b"store"):
            if m == 1:
                resp.option_uint(12, 42)
                resp.write(self.store, self.stored)
                if not self.stored:
                    resp.n = 0
                return 0x45
            if m == 2 or m == 3:
                n = req.pend - req.pstart
                if n > len(self.store):
                    return 0x8D
                d = req.data
                s = req.pstart
                st = self.store
                for i in range(n):
                    st[i] = d[s + i]
                self.stored = n
                return 0x44
            return 0x85
        if req.path_is(0, b"counter"):
            if m == 4:
                self.gone = True
                return 0x42
            if self.gone:
                return 0x84
            if m != 1:
                return 0x85
            resp.option_uint(12, 0)
            resp.observable = COUNTER
            self._text_int(resp, self.counter)
            return 0x45
        if req.path_is(0, b"obj") and req.npath == 3:
            a = req.path_int(1)
            b = req.path_int(2)
            if a < 0 or b < 0:
                return 0x84
            self._text_int(resp, a)
            n = resp.n
            resp.buf[n] = 44  # ','
            self._text_int(resp, b, n + 1)
            return 0x45
        if req.path_is(0, b"q"):
            self._text_int(resp, _query_int(req, b"a") + _query_int(req, b"b"))
            return 0x45
        if req.path_is(0, b"boom"):
            raise ValueError("handler bug")
        return 0x84
