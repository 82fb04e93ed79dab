# CoAP server side of the Endpoint (coap/endpoint.py; RFC 7252 section 5, RFC 7959,
# RFC 7641): requests the endpoint receives are parsed into a Request, given to the
# application's handler (handler.handle(req, resp) -> response code), and answered from
# one preallocated buffer, block-wise where the representation is larger than a block
# (Block2) and reassembled from blocks where the request payload came in blocks
# (Block1). Observe registrations go to Observers (coap/observe.py). Created by
# Endpoint.serve_resources(); nothing here is loaded by a node that serves no resources.
#
# The payload area resp.buf is a memoryview of the response buffer after _HEAD bytes
# kept for the header, token and options: a handler writes the representation there in
# place (or through resp.write), the server then writes the header in front and moves
# the block it sends next to it. Steady state allocates nothing.
from micropython import const
from array import array
from coap.msg import MessageWriter, move

_CON = const(0)  # RFC 7252 section 3
_NON = const(1)
_ACK = const(2)
_GET = const(1)
_FETCH = const(5)  # RFC 8132

# Option numbers: RFC 7252 section 12.2, RFC 7641 section 2, RFC 7959 section 2.1/4
_URI_HOST = const(3)
_OBSERVE = const(6)
_URI_PORT = const(7)
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_URI_QUERY = const(15)
_ACCEPT = const(17)
_BLOCK2 = const(23)
_BLOCK1 = const(27)
_SIZE2 = const(28)
_PROXY_URI = const(35)
_PROXY_SCHEME = const(39)
_SIZE1 = const(60)

_CONTINUE = const(0x5F)  # 2.31, RFC 7959 section 2.9.1
_BAD_REQUEST = const(0x80)
_BAD_OPTION = const(0x82)
_INCOMPLETE = const(0x88)  # 4.08, RFC 7959 section 2.9.2
_TOO_LARGE = const(0x8D)  # 4.13, RFC 7959 section 2.9.3
_INTERNAL_ERROR = const(0xA0)
_PROXY_NS = const(0xA5)  # 5.05

_HEAD = const(112)  # header, token, options in front of the payload area (bounded below)
_MAX_SEGS = const(12)  # Uri-Path / Uri-Query options a request may carry
_XBYTES = const(48)  # option values a handler may add to a response
_XN = const(8)  # options a handler may add to a response
_SZX_MAX = const(6)  # 1024-byte blocks (RFC 7959 section 2.2; 7 is reserved)


class Request:
    """What a handler reads. Fields: method (1 GET, 2 POST, 3 PUT, 4 DELETE, 5 FETCH..),
    con, mid, peer, npath, nquery, format / accept (Content-Format / Accept, -1 absent),
    observe (-1 absent, 0 register, 1 deregister; GET or FETCH), notify (True when
    rendering a notification, okey then its observation's key), size1 (-1 absent), payload in data[pstart:pend] (the reassembled
    body after Block1), msg (the coap/decode.py Message, for other options)."""

    def __init__(self):
        self._seg = bytearray(_MAX_SEGS)  # option indices in msg
        self._qry = bytearray(_MAX_SEGS)
        self.msg = None
        self.peer = None
        self.notify = False
        self.okey = -1
        self.data = b""
        self.pstart = self.pend = 0

    def _load(self, m, peer):
        # One pass over the options; returns 0 or the error code to answer with.
        self.msg = m
        self.peer = peer
        self.method = m.code
        self.con = m.type == _CON
        self.mid = m.mid
        self.npath = self.nquery = 0
        self.format = self.accept = self.observe = -1
        self.block1 = self.block2 = self.size1 = -1
        self.notify = False
        self.data = m.data
        self.pstart = m.pstart
        self.pend = m.n
        onum = m.onum
        for i in range(m.nopt):
            num = onum[i]
            if num == _URI_PATH:
                if self.npath >= _MAX_SEGS:
                    return _BAD_OPTION
                self._seg[self.npath] = i
                self.npath += 1
            elif num == _URI_QUERY:
                if self.nquery >= _MAX_SEGS:
                    return _BAD_OPTION
                self._qry[self.nquery] = i
                self.nquery += 1
            elif num == _CONTENT_FORMAT:
                self.format = m.uint(i)
            elif num == _ACCEPT:
                self.accept = m.uint(i)
            elif num == _OBSERVE:
                self.observe = m.uint(i)
            elif num == _BLOCK2 or num == _BLOCK1 or num == _SIZE1:
                if m.olen[i] > 3 and num != _SIZE1:
                    return _BAD_OPTION  # section 2.2: at most 3 bytes
                v = m.uint(i)
                if num == _SIZE1:
                    self.size1 = v
                elif v & 7 == 7:
                    return _BAD_OPTION  # SZX 7 is reserved (section 2.2)
                elif num == _BLOCK2:
                    self.block2 = v
                else:
                    self.block1 = v
            elif num == _PROXY_URI or num == _PROXY_SCHEME:
                return _PROXY_NS
            elif num & 1 and num != _URI_HOST and num != _URI_PORT:
                return _BAD_OPTION  # unrecognised critical option (section 5.4.1)
        return 0

    def _eq(self, i, s):
        m = self.msg
        n = m.olen[i]
        if n != len(s):
            return False
        d = m.data
        o = m.ostart[i]
        for k in range(n):
            if d[o + k] != s[k]:
                return False
        return True

    def path_is(self, i, s):
        """True if Uri-Path segment i equals the bytes s (no allocation)."""
        return i < self.npath and self._eq(self._seg[i], s)

    def path_int(self, i):
        """Uri-Path segment i as a decimal integer (0..999999999), or -1."""
        if i >= self.npath:
            return -1
        m = self.msg
        j = self._seg[i]
        n = m.olen[j]
        if not 0 < n < 10:
            return -1
        d = m.data
        o = m.ostart[j]
        v = 0
        for k in range(n):
            c = d[o + k] - 48
            if not 0 <= c <= 9:
                return -1
            v = v * 10 + c
        return v

    def query(self, i):
        return self.msg.value(self._qry[i])

    def payload(self):
        """The payload as a memoryview (allocates the view)."""
        return memoryview(self.data)[self.pstart : self.pend]


class Response:
    """What a handler writes. Representation bytes go into buf (a memoryview of the
    payload area, len(buf) bytes) in one of two ways:

    - in place: write the whole representation from buf[0], set n (its length);
    - windowed: call write(data) (or skip(n) where wants() is False) for consecutive
      pieces of the representation; only the block being served, [offset, offset +
      size), is kept, so a representation of any length works; its length is counted.

    offset/size: where the requested block starts in the representation and how long
    blocks are. option()/option_uint(): response options, in ascending order (Observe,
    Block and Size options are the server's). observable: set to a key >= 0 on a GET to
    accept an Observe registration; Endpoint.changed(key) then notifies."""

    def __init__(self, buf):
        self.buf = buf
        self._xb = bytearray(_XBYTES)
        self._xnum = array("H", range(_XN))
        self._xoff = bytearray(_XN)
        self._xlen = bytearray(_XN)
        self._reset(0, 16)

    def _reset(self, offset, size):
        self.offset = offset
        self.size = size
        self.n = 0
        self.vpos = 0
        self.observable = -1
        self._xn = 0
        self._xp = 0

    def _xroom(self, num, n):
        i = self._xn
        if i >= _XN or self._xp + n > _XBYTES:
            raise ValueError("too many response options")
        if i and num < self._xnum[i - 1]:
            raise ValueError("response options out of order")
        self._xnum[i] = num
        self._xoff[i] = self._xp
        self._xlen[i] = n
        self._xn = i + 1
        p = self._xp
        self._xp = p + n
        return p

    def option(self, num, value):
        """Add a response option with an opaque/string value."""
        if isinstance(value, str):
            value = memoryview(value)
        n = len(value)
        p = self._xroom(num, n)
        move(self._xb, p, value, 0, n)

    def option_uint(self, num, v):
        """Add a response option with a uint value (e.g. Content-Format)."""
        n = 0
        x = v
        while x:
            n += 1
            x >>= 8
        p = self._xroom(num, n)
        b = self._xb
        for i in range(n):
            b[p + n - 1 - i] = v & 0xFF
            v >>= 8

    def wants(self, start, n):
        """True if representation bytes [start, start + n) overlap what is kept."""
        return start < self.offset + self.size and start + n > self.offset

    def skip(self, n):
        """Count n representation bytes without writing them (they are not wanted)."""
        self.vpos += n

    def write(self, data, n=-1):
        """Append data[:n] to the representation (windowed, see the class)."""
        if n < 0:
            n = len(data)
        v = self.vpos
        off = self.offset
        a = v if v > off else off
        b = v + n
        e = off + self.size
        if b > e:
            b = e
        if a < b:
            move(self.buf, a - off, data, a - v, b - a)
        self.vpos = v + n


class Server:
    """The server side of endpoint ``ep`` (see Endpoint.serve_resources)."""

    # a body taken block by block instead of reassembled (handler.sink(req): an object
    # whose block(off, data, start, n, more) returns 0 or an error code); a class
    # default: a server only gets its own while a pushed body arrives
    _sink = None

    def __init__(self, ep, handler, max_block=1024, body=1024, block1=1024, observers=8):
        self.ep = ep
        self.handler = handler
        szx = 0
        while szx < _SZX_MAX and (32 << szx) <= max_block:
            szx += 1
        self.szx = szx
        cap = body if body > (16 << szx) else (16 << szx)
        self.tx = bytearray(_HEAD + cap)
        mv = memoryview(self.tx)
        self.w = MessageWriter(mv[:_HEAD])
        self.req = Request()
        self.resp = Response(mv[_HEAD:])
        self._b1 = bytearray(block1) if block1 else b""
        self._b1next = -1  # next Block1 offset expected, -1 when none under way
        self._b1peer = None
        self._b1key = 0
        self._last_mid = -1  # what tx holds: the answer to (peer, mid), n bytes
        self._last_peer = None
        self._last_n = 0
        self.gen = 0  # messages built in tx (a retransmission checks tx is unchanged)
        self.obs = None
        if observers:
            from coap.observe import Observers

            self.obs = Observers(self, observers)
        self.errors = 0  # handler exceptions, for diagnostics

    # -- requests --

    def request(self, m, peer):
        """Answer the request m (a decoded, new CON/NON request) from peer."""
        req = self.req
        ep = self.ep
        con = m.type == _CON
        mtype = _ACK if con else _NON
        mid = m.mid if con else ep._next_mid()
        self._opts(-1, -1, -1, -1, -1)
        code = req._load(m, peer)
        if not code and req.block1 >= 0:
            code = self._block1(req)
        if code:
            self.resp._reset(0, 16)
            n = self._emit(mtype, code, mid, m.data, 4, m.tkl, 0, 0)
        else:
            n = self._render(req, mtype, mid, m.data, 4, m.tkl, -1)
        self._last_mid = m.mid
        self._last_peer = peer
        self._last_n = n
        ep._send_to(self.tx, n, peer)
        ep._remember(m.mid, peer, self.tx, n)

    def _opts(self, obs, b2, b1, size2, size1):
        self._obs = obs
        self._b2 = b2
        self._b1v = b1
        self._size2 = size2
        self._size1 = size1

    def _block1(self, req):
        # Block1 reassembly (RFC 7959 section 2.5); 0 once the body is complete
        v = req.block1
        szx = v & 7
        more = v & 8
        num = v >> 4
        off = num << (szx + 4)
        n = req.pend - req.pstart
        buf = self._b1
        cap = len(buf)
        key = self._key(req)
        if more and n != 16 << szx:
            self._b1next = -1
            return _BAD_REQUEST  # a non-final block must be exactly one block long
        if num == 0:
            sink = getattr(self.handler, "sink", None)
            self._sink = sink(req) if sink is not None else None
        if self._sink is not None:
            return self._to_sink(req, v, key, off, n)
        if num == 0:
            self._b1next = 0
            self._b1peer = req.peer
            self._b1key = key
            if req.size1 > cap:
                self._b1next = -1
                self._size1 = cap
                return _TOO_LARGE
        elif self._b1next != off or self._b1peer != req.peer or self._b1key != key:
            self._b1next = -1  # the transfer is broken: the client starts again
            return _INCOMPLETE
        if off + n > cap:
            self._b1next = -1
            self._size1 = cap
            return _TOO_LARGE
        move(buf, off, req.data, req.pstart, n)
        own = self.szx
        if more:
            self._b1next = off + n
            self._b1v = (num << 4) | 8 | (szx if szx < own else own)
            return _CONTINUE
        self._b1next = -1
        self._b1v = v
        req.data = buf
        req.pstart = 0
        req.pend = off + n
        return 0

    def _to_sink(self, req, v, key, off, n):
        # Block1 into the handler's sink (a pushed Package, lwm2m/tree.py sink()): each
        # block in order, from the peer that began; the final request is then handled
        # with an empty body
        if off and (self._b1next != off or self._b1peer != req.peer or self._b1key != key):
            self._b1next = -1
            self._sink = None
            return _INCOMPLETE
        if not off:
            self._b1peer = req.peer
            self._b1key = key
        more = v & 8
        code = self._sink.block(off, req.data, req.pstart, n, more)
        if code:
            self._b1next = -1
            self._sink = None
            return code
        if more:
            own = self.szx
            self._b1next = off + n
            self._b1v = (v & ~7) | (v & 7 if v & 7 < own else own)
            return _CONTINUE
        self._b1next = -1
        self._sink = None
        self._b1v = v
        req.pend = req.pstart  # the body went to the sink
        return 0

    def _key(self, req):
        # A checksum of method, Uri-Path and Uri-Query: blocks of one body share it
        m = req.msg
        d = m.data
        h = req.method
        for i in range(m.nopt):
            num = m.onum[i]
            if num == _URI_PATH or num == _URI_QUERY:
                h = (h * 31 + num) & 0xFFFFFF
                o = m.ostart[i]
                for k in range(o, o + m.olen[i]):
                    h = (h * 31 + d[k]) & 0xFFFFFF
        return h

    def _render(self, req, mtype, mid, tok, toff, tkl, oi):
        # Call the handler for req and build the answer (block-wise if needed) in tx;
        # oi >= 0: a notification to observer oi. Returns the message length.
        resp = self.resp
        szx = self.szx
        off = 0
        b2 = req.block2
        if b2 >= 0:
            rs = b2 & 7
            if rs < szx:
                szx = rs
            off = (b2 >> 4) << (rs + 4)
        bs = 16 << szx
        resp._reset(off, bs)
        try:
            code = self.handler.handle(req, resp)
        except Exception:  # a handler bug must not take the node down
            self.errors += 1
            resp._reset(0, 16)
            code = _INTERNAL_ERROR
        if resp.vpos:
            base = off
            total = resp.vpos
        else:
            base = 0
            total = resp.n
        ok = code >> 5 == 2
        obs = self.obs
        if (obs is not None and oi < 0 and req.observe >= 0
                and (req.method == _GET or req.method == _FETCH)):
            if req.observe == 1:
                obs.cancel(req.peer, tok, toff, tkl)
            elif ok and resp.observable >= 0 and off == 0:
                self._obs = obs.add(req, resp.observable)
        elif oi >= 0:
            self._obs = obs.next_seq() if ok else -1
        if ok and (b2 >= 0 or total > bs):
            if off >= total and off:
                resp._reset(0, 16)
                self._opts(-1, -1, -1, -1, -1)
                return self._emit(mtype, _BAD_OPTION, mid, tok, toff, tkl, 0, 0)
            k = total - off
            more = k > bs
            if more:
                k = bs
            self._b2 = ((off >> (szx + 4)) << 4) | (8 if more else 0) | szx
            if off == 0:
                self._size2 = total
        else:
            k = total if total <= bs else bs
        if k and (base > off or off + k > base + len(resp.buf)):
            resp._reset(0, 16)  # the handler wrote something else than it was asked
            self.errors += 1
            self._opts(-1, -1, -1, -1, -1)
            return self._emit(mtype, _INTERNAL_ERROR, mid, tok, toff, tkl, 0, 0)
        return self._emit(mtype, code, mid, tok, toff, tkl, off - base, k)

    def _emit(self, mtype, code, mid, tok, toff, tkl, src, k):
        # Header, token, the handler's options merged with the server's, then the
        # payload: k bytes moved from payload-area offset src. Returns the length.
        w = self.w
        self.gen = (self.gen + 1) & 0xFFFFFF
        w.begin(mtype, code, mid, tok, tkl, toff)
        xi = self._xput(0, _OBSERVE)
        if self._obs >= 0:
            w.option_uint(_OBSERVE, self._obs)
        xi = self._xput(xi, _BLOCK2)
        if self._b2 >= 0:
            w.option_uint(_BLOCK2, self._b2)
        xi = self._xput(xi, _BLOCK1)
        if self._b1v >= 0:
            w.option_uint(_BLOCK1, self._b1v)
        xi = self._xput(xi, _SIZE2)
        if self._size2 >= 0:
            w.option_uint(_SIZE2, self._size2)
        xi = self._xput(xi, _SIZE1)
        if self._size1 >= 0:
            w.option_uint(_SIZE1, self._size1)
        self._xput(xi, 0x10000)
        p = w.pos
        if k:
            self.tx[p] = 0xFF
            p += 1
            move(self.tx, p, self.tx, _HEAD + src, k)
            p += k
        return p

    def _xput(self, i, below):
        # write the handler's options numbered below `below`, from index i on
        resp = self.resp
        w = self.w
        while i < resp._xn and resp._xnum[i] < below:
            o = resp._xoff[i]
            n = resp._xlen[i]
            w._opt_head(resp._xnum[i], n)
            move(w.buf, w.pos, resp._xb, o, n)
            w.pos += n
            i += 1
        return i

    def notify(self, m, peer, oi, mtype, mid, tok, toff, tkl):
        """Render the notification for observer oi from its stored request m."""
        req = self.req
        self._opts(-1, -1, -1, -1, -1)
        if req._load(m, peer):
            return 0
        req.notify = True
        req.okey = self.obs.key[oi]
        n = self._render(req, mtype, mid, tok, toff, tkl, oi)
        self._last_mid = -1  # not an answer to a request
        return n
