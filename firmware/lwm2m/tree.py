# The node's LwM2M Device Management and Service Enablement interface
# (OMA-TS-LightweightM2M_Core-V1_1 section 6.3 / Transport section 6.4): the handler
# Endpoint.serve_resources() (coap/endpoint.py) calls for every request from the server.
#
#   GET    /o[/i[/r[/ri]]]          Read: SenML-CBOR (112, the default), text/plain (0)
#                                   or opaque (42) for one value; 4.06 otherwise
#   GET    ... Accept 40            Discover (lwm2m/attrs.py)
#   GET    ... Observe 0/1          Observe / Cancel (attrs.py Watch honours the attributes)
#   PUT    /o/i[/r[/ri]]            Write (replace): SenML-CBOR, or text/opaque for one value
#   PUT    ...?pmin=..&gt=..       Write-Attributes (lwm2m/attrs.py)
#   POST   /o/i                     Write (partial update), SenML-CBOR
#   POST   /o/i/r                   Execute (4.05 on a resource that is not executable)
#   POST   /o                       Create (objects that allow it: 16 Portfolio), 2.01
#   DELETE /o/i                     Delete (same objects), 2.02
#   FETCH  /  (SenML-CBOR paths)    Read-Composite (Core section 6.3.8); paths that do
#                                   not exist are left out; at most 8 paths (4.00)
#   FETCH  /  ... Observe 0/1       Observe-Composite / Cancel (section 6.4.3, attrs.py)
#   iPATCH /  (SenML-CBOR records)  Write-Composite: resources and resource instances of
#                                   any objects, all checked before any is written
#
# Errors: unknown path 4.04, operation the resource does not allow 4.05, payload that
# does not decode or has the wrong type 4.00, Content-Format not offered 4.15, Security
# (0) and OSCORE (21) 4.01 (Core section 7.1.1: a LwM2M Server may not access them).
from micropython import const
from array import array
from cbor.encode import Writer
from lwm2m.objects import (Val, T_INT, T_FLOAT, T_STR, T_BOOL, T_OPQ, T_TIME, R, W, E, MULTI,
                           K_INT, K_BOOL, K_STR, K_OPQ)

_GET = const(1)
_POST = const(2)
_PUT = const(3)
_DELETE = const(4)
_FETCH = const(5)
_IPATCH = const(7)

_CREATED = const(0x41)
_DELETED = const(0x42)
_CHANGED = const(0x44)
_CONTENT = const(0x45)
_BAD_REQUEST = const(0x80)
_UNAUTHORIZED = const(0x81)
_NOT_FOUND = const(0x84)
_NOT_ALLOWED = const(0x85)
_NOT_ACCEPTABLE = const(0x86)
_UNSUPPORTED_CF = const(0x8F)

_LOCATION_PATH = const(8)
_CONTENT_FORMAT = const(12)
_CF_TEXT = const(0)
_CF_LINK = const(40)
_CF_OPAQUE = const(42)
_CF_SENML_CBOR = const(112)

_TYPE = const(0x07)  # the type bits of a resource's flags (lwm2m/objects.py)
_SCRATCH = const(320)  # one SenML record / link; the longest string value is 255 bytes
_BAD = object()  # _value(), _parse_text(): the payload value has the wrong type
_PATHS_MAX = const(8)  # paths in a Read-/Observe-Composite request (more: 4.00)

# SenML labels, RFC 8428 section 6 (CBOR): bn -2, n 0, v 2, vs 3, vb 4, vd 8
_BN = const(-2)
_N = const(0)


def _digits(buf, p, v):
    # decimal digits of v >= 0 into buf at p; returns the position after them
    if v >= 10:
        p = _digits(buf, p, v // 10)
    buf[p] = 48 + v % 10
    return p + 1


def path_str(buf, p, oid, iid, rid, ri):
    # "/oid/iid/rid/ri" (the ids >= 0) into buf at p; returns the end
    buf[p] = 47
    p = _digits(buf, p + 1, oid)
    if iid >= 0:
        buf[p] = 47
        p = _digits(buf, p + 1, iid)
        if rid >= 0:
            buf[p] = 47
            p = _digits(buf, p + 1, rid)
            if ri >= 0:
                buf[p] = 47
                p = _digits(buf, p + 1, ri)
    return p


class Tree:
    """The object tree served to the LwM2M server: objs (Obj instances, ascending
    oid); events receives update(flags), reboot() and attributes_changed()."""

    def __init__(self, objs, events):
        self.objs = objs
        self.events = events
        self.v = Val()
        self.p = array("i", (-1, -1, -1, -1))
        self.sb = bytearray(_SCRATCH)
        self.cw = Writer(self.sb)
        self.watch = None  # attrs.py Watch once the endpoint serves (attach())
        self.errors = 0

    def attach(self, ep, observers):
        from lwm2m.attrs import Watch

        self.watch = Watch(self, ep, observers)

    def obj(self, oid):
        for o in self.objs:
            if o.oid == oid:
                return o
        return None

    def links(self):
        """The registration payload (Core section 6.2.1): </>;rt="oma.lwm2m";ct=112,
        then every object instance (an object without instances as </o>); not 0 or 21
        (Core section 6.2.1: Security and OSCORE are not listed)."""
        out = ['</>;rt="oma.lwm2m";ct=112']
        for o in self.objs:
            if o.oid == 0 or o.oid == 21:
                continue
            n = o.ninst()
            if not n:
                out.append("</%d>" % o.oid)
            for k in range(n):
                out.append("</%d/%d>" % (o.oid, o.inst(k)))
        return ",".join(out).encode()

    # -- the request handler --

    def sink(self, req):
        """coap/server.py Block1: the object that takes a body block by block as it
        arrives instead of reassembled, or None: a Package (/5/0/0, opaque) pushed to
        Firmware Update."""
        if (req.method == _PUT and req.npath == 3 and req.format == _CF_OPAQUE
                and req.path_int(0) == 5 and req.path_int(1) == 0 and req.path_int(2) == 0):
            return self.obj(5)
        return None

    def handle(self, req, resp):
        n = req.npath
        p = self.p
        if n == 0 and req.method == _FETCH:
            return self.composite(req, resp)
        if n == 0 and req.method == _IPATCH:
            return self.write_composite(req)
        if n > 4 or n == 0:
            return _NOT_FOUND
        for i in range(4):
            x = req.path_int(i) if i < n else -1
            if i < n and not 0 <= x <= 65535:
                return _NOT_FOUND
            p[i] = x
        o = self.obj(p[0])
        if o is None:
            return _NOT_FOUND
        if p[0] == 0 or p[0] == 21:
            return _UNAUTHORIZED  # Security, OSCORE: not for a LwM2M server
        code = self._check(o, n)
        if code:
            return code
        m = req.method
        if m == _GET:
            if req.accept == _CF_LINK:
                return self.watch.discover(req, resp, o, n)
            return self.read(req, resp, o, n)
        if m == _PUT:
            if req.nquery and req.pend == req.pstart:
                return self.watch.write_attributes(req, o, n)
            if n == 1:
                return _NOT_ALLOWED
            return self.write(req, o, n, True)
        if m == _POST:
            if n == 1:
                return self.create(req, resp, o)
            if n == 2:
                return self.write(req, o, n, False)
            if n == 3:
                if not o.flags(p[2]) & E:
                    return _NOT_ALLOWED
                return o.run(p[1], p[2], req.payload() if req.pend > req.pstart else None)
            return _NOT_ALLOWED
        if m == _DELETE:
            if n != 2 or not o.creatable:
                return _NOT_ALLOWED
            code = o.delete(p[1])
            self.watch.gone(p[0], p[1])
            return code
        return _NOT_ALLOWED

    def _check(self, o, n):
        # 4.04 for a path that does not exist, else 0
        p = self.p
        if n >= 2 and not o.has(p[1]):
            return _NOT_FOUND
        if n >= 3:
            f = o.flags(p[2])
            if f < 0:
                return _NOT_FOUND
            if n == 4 and (not f & MULTI or p[3] >= o.count(p[1], p[2])):
                return _NOT_FOUND
        return 0

    # -- Read --

    def read(self, req, resp, o, n):
        p = self.p
        iid = p[1]
        rid = p[2]
        ri = p[3]
        if n >= 3 and not o.flags(rid) & R:
            return _NOT_ALLOWED
        cf = req.accept
        if cf < 0 or cf == _CF_SENML_CBOR:
            resp.option_uint(_CONTENT_FORMAT, _CF_SENML_CBOR)
            w = self.cw
            w.pos = 0
            w.put_array(self.walk(None, o, iid, rid, ri))
            resp.write(self.sb, w.pos)
            self.walk(resp, o, iid, rid, ri)
        elif cf == _CF_TEXT or cf == _CF_OPAQUE:
            f = o.flags(rid) if n >= 3 else 0
            if n < 3 or f & MULTI and n == 3:
                return _NOT_ACCEPTABLE  # one value only (Core section 7.3)
            if cf == _CF_OPAQUE and f & _TYPE != T_OPQ:
                return _NOT_ACCEPTABLE
            v = self.v
            o.get(iid, rid, ri if ri >= 0 else 0, v)
            resp.option_uint(_CONTENT_FORMAT, cf)
            self._text(resp, v, cf)
        else:
            return _NOT_ACCEPTABLE
        if req.observe == 0 and not req.notify and self.watch is not None:
            s = self.watch.add(n)
            if s >= 0:
                resp.observable = s
        return _CONTENT

    def composite(self, req, resp):
        """Read-Composite: the SenML-CBOR records of every path of the request's list
        (records {0: "/o/i/r"} or with bn) that exists and may be read. With Observe 0,
        Observe-Composite (Core section 6.4.3): the list is kept with the observation
        (lwm2m/attrs.py Watch.add_composite) and each notification reads it again."""
        if req.notify:
            paths = self.watch.paths(req.okey)
            if paths is None:
                return _NOT_FOUND
        else:
            if req.format != _CF_SENML_CBOR:
                return _UNSUPPORTED_CF if req.format >= 0 else _BAD_REQUEST
            if req.accept >= 0 and req.accept != _CF_SENML_CBOR:
                return _NOT_ACCEPTABLE
            paths = self._paths(req)
            if paths is None:
                return _BAD_REQUEST
        resp.option_uint(_CONTENT_FORMAT, _CF_SENML_CBOR)
        k = 0
        for rnd in range(2):
            if rnd:
                w = self.cw
                w.pos = 0
                w.put_array(k)
                resp.write(self.sb, w.pos)
            for q in paths:
                o = self.obj(q[0])
                if o is None or q[0] == 0 or q[0] == 21:
                    continue
                for i in range(4):
                    self.p[i] = q[i]
                d = 4 - q.count(-1)
                if self._check(o, d) or d >= 3 and not o.flags(q[2]) & R:
                    continue
                c = self.walk(resp if rnd else None, o, q[1], q[2], q[3])
                if not rnd:
                    k += c
        if req.observe == 0 and not req.notify and self.watch is not None:
            s = self.watch.add_composite(paths)
            if s >= 0:
                resp.observable = s
        return _CONTENT

    def _paths(self, req):
        # the request's SenML list of paths: [[o, i, r, ri] (-1: absent)], None if it is
        # not one or names more than _PATHS_MAX paths
        try:
            pack = _loads(req.payload())
            if not isinstance(pack, list) or len(pack) > _PATHS_MAX:
                return None
            paths = []
            bn = ""
            for rec in pack:
                bn = rec.get(_BN, bn)
                q = _parse_path(bn + rec.get(_N, ""))
                if q is None:
                    return None
                paths.append(q + [-1] * (4 - len(q)))
        except (ValueError, TypeError, AttributeError):
            return None
        return paths

    def walk(self, resp, o, iid, rid, ri):
        """The SenML records of a read of o's path (ids < 0: all): counted (resp None)
        or written to resp one record at a time (windowed, Block2)."""
        k = 0
        for a in range(o.ninst()):
            i = o.inst(a)
            if iid >= 0 and i != iid:
                continue
            for r in o.res:
                f = r & 0xFF
                r >>= 8
                if rid >= 0 and r != rid or not f & R:
                    continue
                if f & MULTI:
                    for j in range(o.count(i, r)):
                        if ri < 0 or j == ri:
                            k += 1
                            if resp is not None:
                                self._record(resp, o, i, r, j)
                else:
                    k += 1
                    if resp is not None:
                        self._record(resp, o, i, r, -1)
        return k

    def _record(self, resp, o, i, r, j):
        v = self.v
        o.get(i, r, j, v)
        w = self.cw
        sb = self.sb
        w.pos = 0
        w.put_map(2)
        w.put_int(_N)
        e = path_str(sb, 64, o.oid, i, r, j)  # the name, staged after the head's room
        w._head(3, e - 64, e - 64)
        p = w.pos
        for x in range(64, e):
            sb[p] = sb[x]
            p += 1
        w.pos = p
        v.senml(w)
        resp.write(sb, w.pos)

    def _text(self, resp, v, cf):
        # text/plain (Core section 7.3): decimal numbers, 0/1 booleans, base64 opaque
        k = v.kind
        b = resp.buf
        if k == K_INT or k == K_BOOL:
            x = v.i
            p = 0
            if x < 0:
                b[0] = 45
                p = 1
                x = -x
            resp.n = _digits(b, p, x)
            return
        if k == K_OPQ and cf == _CF_TEXT:
            import binascii

            s = binascii.b2a_base64(v.s)[:-1]
        elif k == K_OPQ or k == K_STR:
            s = v.s
        else:  # K_SCALED
            s = ("%.9g" % (v.i * 2.0 ** v.e)).encode()
        if isinstance(s, str):
            s = s.encode()
        resp.write(s)

    # -- Write, Create --

    def write(self, req, o, n, replace):
        p = self.p
        cf = req.format
        if n >= 3 and not o.flags(p[2]) & W:
            return _NOT_ALLOWED
        if cf == _CF_TEXT or cf == _CF_OPAQUE:
            if n < 3 or n == 3 and o.flags(p[2]) & MULTI:
                return _BAD_REQUEST  # text carries one value
            t = o.flags(p[2]) & _TYPE
            x = _parse_text(bytes(req.payload()), t, cf)
            if x is _BAD:
                return _BAD_REQUEST
            return o.put(p[1], p[2], p[3], x)
        if cf != _CF_SENML_CBOR:
            return _BAD_REQUEST if cf < 0 else _UNSUPPORTED_CF
        recs = self._records(req, o)
        if isinstance(recs, int):
            return recs
        if replace:  # a replaced multi-instance resource loses the instances not written
            for _, iid, rid, ri, x in recs:
                if ri >= 0 and o.count(iid, rid):
                    o.put(iid, rid, -1, None)
        return _apply(recs)

    def write_composite(self, req):
        """Write-Composite (iPATCH / with Content-Format 112): SenML-CBOR records of
        resources or resource instances of any objects but Security, each written as by
        a partial update; nothing is written unless every record checks."""
        if req.format != _CF_SENML_CBOR:
            return _UNSUPPORTED_CF if req.format >= 0 else _BAD_REQUEST
        p = self.p
        for i in range(4):
            p[i] = -1
        recs = self._records(req, None)
        if isinstance(recs, int):
            return recs
        return _apply(recs)

    def _records(self, req, o, new=-1):
        # SenML-CBOR records under the request path: [(obj, iid, rid, ri, value)], all
        # checked before any is applied; an int is the error code. o None: records of
        # any objects (Write-Composite)
        p = self.p
        try:
            pack = _loads(req.payload())
        except ValueError:
            return _BAD_REQUEST
        if not isinstance(pack, list) or not pack:
            return _BAD_REQUEST
        out = []
        bn = ""
        for rec in pack:
            if not isinstance(rec, dict):
                return _BAD_REQUEST
            bn = rec.get(_BN, bn)
            name = rec.get(_N, "")
            if not isinstance(bn, str) or not isinstance(name, str):
                return _BAD_REQUEST
            q = _parse_path(bn + name)
            if q is None or len(q) < 3 or o is not None and q[0] != o.oid:
                return _BAD_REQUEST
            ob = o if o is not None else self.obj(q[0])
            if ob is None:
                return _NOT_FOUND
            if q[0] == 0 or q[0] == 21:
                return _UNAUTHORIZED
            iid = q[1]
            for i in range(1, 4):
                if p[i] >= 0 and (i >= len(q) or q[i] != p[i]):
                    return _BAD_REQUEST  # outside the path written (Core section 6.3.3)
            if new >= 0 and iid != new or new < 0 and not ob.has(iid):
                return _BAD_REQUEST if new >= 0 else _NOT_FOUND
            f = ob.flags(q[2])
            if f < 0:
                return _NOT_FOUND
            if not f & W:
                return _NOT_ALLOWED
            ri = q[3] if len(q) > 3 else -1
            if (ri >= 0) != bool(f & MULTI):
                return _BAD_REQUEST
            x = _value(rec, f & _TYPE)
            if x is _BAD:
                return _BAD_REQUEST
            out.append((ob, iid, q[2], ri, x))
        return out

    def create(self, req, resp, o):
        if not o.creatable:
            return _NOT_ALLOWED
        iid = -1
        if req.pend > req.pstart:
            if req.format != _CF_SENML_CBOR:
                return _UNSUPPORTED_CF if req.format >= 0 else _BAD_REQUEST
            try:
                pack = _loads(req.payload())
                q = _parse_path(pack[0].get(_BN, "") + pack[0].get(_N, ""))
                iid = q[1]
            except (ValueError, TypeError, AttributeError, IndexError, KeyError):
                return _BAD_REQUEST
            if o.has(iid):
                return _BAD_REQUEST  # Core section 6.3.5: the instance exists
            self.p[1] = -1
            recs = self._records(req, o, iid)
            if isinstance(recs, int):
                return recs
        iid = o.create(iid)
        if iid < 0 or iid > 65535:
            return _BAD_REQUEST
        if req.pend > req.pstart:
            for _, i, rid, ri, x in recs:
                o.put(i, rid, ri, x)
        resp.option(_LOCATION_PATH, str(o.oid))
        resp.option(_LOCATION_PATH, str(iid))
        return _CREATED


def _apply(recs):
    # write checked records in order; the first refusal's code, else 2.04
    for o, iid, rid, ri, x in recs:
        code = o.put(iid, rid, ri, x)
        if code >> 5 != 2:
            return code
    return _CHANGED


def _loads(b):
    # the SenML-CBOR decoder, loaded by the first request that has a payload to decode
    from cbor.decode import loads

    return loads(b)


def _parse_path(s):
    # "/o/i/r/ri" -> list of ints, None if it is not one
    if not s.startswith("/"):
        return None
    out = []
    for seg in s[1:].split("/"):
        if not seg.isdigit() or len(seg) > 5:
            return None
        out.append(int(seg))
    return out if 0 < len(out) <= 4 else None


def _value(rec, t):
    # the record's value for a resource of type t, or _BAD
    if t == T_INT or t == T_TIME:
        x = rec.get(2)
        return x if type(x) is int else _BAD
    if t == T_FLOAT:
        x = rec.get(2)
        return float(x) if type(x) in (int, float) else _BAD
    if t == T_STR:
        x = rec.get(3)
        return x if type(x) is str else _BAD
    if t == T_BOOL:
        x = rec.get(4)
        return x if type(x) is bool else _BAD
    if t == T_OPQ:
        x = rec.get(8)
        return x if type(x) is bytes else _BAD
    return _BAD


def _parse_text(b, t, cf):
    # text/plain (or opaque, 42) payload for a resource of type t, or _BAD
    if t == T_OPQ:
        if cf == _CF_OPAQUE:
            return b
        import binascii

        try:
            return binascii.a2b_base64(b)
        except ValueError:
            return _BAD
    if cf != _CF_TEXT:
        return _BAD
    try:
        s = str(b, "utf-8")
        if t == T_STR:
            return s
        if t == T_BOOL:
            return _BAD if s not in ("0", "1") else s == "1"
        if t == T_INT or t == T_TIME:
            return int(s)
        if t == T_FLOAT:
            return float(s)
    except (ValueError, UnicodeError):
        pass
    return _BAD
