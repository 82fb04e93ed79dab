# Notification attributes, Discover and observations of the node's object tree
# (OMA-TS-LightweightM2M_Core-V1_1 section 5.1.2 attributes, 6.3.4 Discover, 6.3.7
# Write-Attributes, 6.4 Information Reporting).
#
# Attributes are kept per path (object, instance, resource, resource instance; at most
# _NATTR paths); an observation uses the attributes of its own path, else of the nearest
# parent that sets them, else the Server object's default pmin/pmax (/1/0/2, /1/0/3).
# gt/lt/st belong to numeric resources only. Write-Attributes answers 4.00 for an
# unknown attribute, a bad value, gt/lt/st above resource level or on a non-numeric
# resource, and combinations the spec forbids: pmin > pmax, epmin > epmax, lt >= gt,
# lt + 2 * st >= gt.
#
# Observation slots (the key coap/observe.py keeps per observer; observers of one path share
# it): the window loop calls changed() after every window, the session calls poll()
# while idle. A slot is due when it changed (any change for an object or instance; a
# resource value that differs from the last notified one, or with gt/lt/st only when
# it crosses gt or lt or moved by st since the last notification) and pmin has passed,
# or when pmax has passed. epmin/epmax bound how often the value is evaluated. Integer
# and string values are compared without allocating; gt/lt/st compare floats (a few
# small float objects per evaluation of a resource that has them).
from micropython import const
from array import array
import time
from lwm2m.objects import T_FLOAT, T_INT, T_TIME, MULTI, K_INT, K_SCALED, K_BOOL, K_STR, K_OPQ

_TYPE = const(0x07)  # the type bits of a resource's flags (lwm2m/objects.py)
_NATTR = const(8)  # paths with attributes
_CHANGED = const(0x44)
_BAD_REQUEST = const(0x80)
_NOT_FOUND = const(0x84)
_CONTENT = const(0x45)
_CONTENT_FORMAT = const(12)
_CF_LINK = const(40)
_SERVICE_UNAVAILABLE = const(0xA3)  # 5.03: no room for another attribute path

# attribute indices
_PMIN = const(0)
_PMAX = const(1)
_GT = const(2)
_LT = const(3)
_ST = const(4)
_EPMIN = const(5)
_EPMAX = const(6)
NAMES = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax")

# slot layout (Watch.si: _SI ints per slot, Watch.so: _SO objects per slot)
_SI = const(12)
_IPMIN = const(4)
_IPMAX = const(5)
_IEPMIN = const(6)
_IEPMAX = const(7)
_ILAST = const(8)
_IEVAL = const(9)
_IVI = const(10)
_IVE = const(11)
_SO = const(6)
_COMP = const(5)  # the depth byte of a composite observation's slot (paths in Watch.cp)
_OGT = const(0)
_OLT = const(1)
_OST = const(2)
_OVS = const(3)
_OVF = const(4)
_OPF = const(5)


class Watch:
    def __init__(self, tree, ep, n):
        self.tree = tree
        self.ep = ep
        self.clock = ep.clock
        self.n = n
        self.attrs = []  # [oid, iid, rid, ri, [7 values or None]]
        # per slot s, at s * _SI: path (4 ids), pmin, pmax, epmin, epmax in ms (-1
        # unset), ticks of the last notification and evaluation, last notified value
        # (int or code, exponent)
        self.si = array("i", [-1] * (_SI * n))
        # per slot s, at s * _SO: gt, lt, st, the last notified string / float, and for
        # gt/lt/st the last notified and last evaluated value as floats
        self.so = [None] * (_SO * n)
        self.sb = bytearray(2 * n)  # per slot: depth of the path, flags (1 due, 2 epmin)
        self.notified = 0  # notifications triggered (diagnostics, tests)
        self.cp = None  # per slot: the paths of a composite observation (made by the first)

    def live(self, s):
        return s in self.ep.server.obs.key

    # -- observations --

    def add(self, n):
        """A Read with Observe 0 of the tree's path (depth n): its slot, or -1."""
        p = self.tree.p
        si = self.si
        s = self._claim(lambda s, b: self.sb[2 * s] == n and si[b] == p[0]
                        and si[b + 1] == p[1] and si[b + 2] == p[2] and si[b + 3] == p[3])
        if s >= 0 and not self.live(s):  # live: another observer of the same path
            self._start(s, n, p)
        return s

    def add_composite(self, paths):
        """An Observe-Composite (FETCH with Observe 0) of paths ([o, i, r, ri] each, -1
        absent): its slot, or -1. It is due when an object it names changed (as an
        observation of an object is), with the smallest pmin and pmax of its paths."""
        if self.cp is None:
            self.cp = [None] * self.n
        cp = self.cp
        s = self._claim(lambda s, b: self.sb[2 * s] == _COMP and cp[s] == paths)
        if s >= 0 and not self.live(s):
            cp[s] = paths
            self._start(s, _COMP, (-2, -2, -2, -2))  # no single path: never matched as one
        return s

    def _claim(self, same):
        # the slot same(s, s * _SI) names (live: observed already, shared as it is),
        # else the first slot that is not live; -1 when none is free
        free = -1
        for s in range(self.n):
            if same(s, s * _SI):
                if self.live(s):
                    return s
                free = s
                break
            if free < 0 and not self.live(s):
                free = s
        return free

    def _start(self, s, depth, ids):
        # slot s now observes ids (depth 1..4, or _COMP): attributes, times, values
        si = self.si
        b = s * _SI
        for i in range(4):
            si[b + i] = ids[i]
        self.sb[2 * s] = depth
        self._resolve(s)
        now = self.clock.ticks_ms()
        si[b + _ILAST] = now
        si[b + _IEVAL] = now
        self.sb[2 * s + 1] = 0
        self._snapshot(s, True)
        self.ep.woken = True  # the idle loop recomputes its deadline (poll())

    def paths(self, s):
        """The paths of composite observation s, or None."""
        if self.cp is None or not 0 <= s < self.n or self.sb[2 * s] != _COMP:
            return None
        return self.cp[s]

    def _value(self, s):
        # the slot's single value into tree.v; False for an object/instance/multi path
        # or a composite observation
        b = s * _SI
        si = self.si
        if not 3 <= self.sb[2 * s] <= 4:
            return False
        o = self.tree.obj(si[b])
        if o is None or not o.has(si[b + 1]):
            return False
        f = o.flags(si[b + 2])
        if f < 0 or self.sb[2 * s] == 3 and f & MULTI:
            return False
        ri = si[b + 3]
        o.get(si[b + 1], si[b + 2], ri if ri >= 0 else 0, self.tree.v)
        return True

    def _float(self, v):
        k = v.kind
        if k == K_SCALED:
            return v.i * 2.0 ** v.e
        return v.i if k == K_INT or k == K_BOOL else None

    def _snapshot(self, s, notified):
        if not self._value(s):
            return
        v = self.tree.v
        so = self.so
        o = s * _SO
        if notified:
            b = s * _SI
            self.si[b + _IVI] = v.i
            self.si[b + _IVE] = v.e if v.kind == K_SCALED else 0
            so[o + _OVS] = v.s if v.kind == K_STR or v.kind == K_OPQ else None
        if so[o + _OGT] is not None or so[o + _OLT] is not None or so[o + _OST] is not None:
            f = self._float(v)
            so[o + _OPF] = f
            if notified:
                so[o + _OVF] = f

    def _eval(self, s, now):
        # has the slot's value changed enough to notify (once pmin allows)?
        b = s * _SI
        si = self.si
        sb = self.sb
        ep = si[b + _IEPMIN]
        if ep > 0 and time.ticks_diff(now, si[b + _IEVAL]) < ep:
            sb[2 * s + 1] |= 2
            return
        si[b + _IEVAL] = now
        sb[2 * s + 1] &= 1
        if not self._value(s):
            sb[2 * s + 1] |= 1
            return
        v = self.tree.v
        so = self.so
        o = s * _SO
        gt = so[o + _OGT]
        lt = so[o + _OLT]
        st = so[o + _OST]
        if gt is None and lt is None and st is None:
            k = v.kind
            if k == K_STR or k == K_OPQ:
                ch = v.s is not so[o + _OVS] and v.s != so[o + _OVS]
            else:
                ch = v.i != si[b + _IVI] or k == K_SCALED and v.e != si[b + _IVE]
            if ch:
                sb[2 * s + 1] |= 1
            return
        f = self._float(v)
        if f is None:
            return
        pf = so[o + _OPF]
        so[o + _OPF] = f
        vf = so[o + _OVF]
        if (st is not None and vf is not None and abs(f - vf) >= st
                or gt is not None and pf is not None and (pf > gt) != (f > gt)
                or lt is not None and pf is not None and (pf < lt) != (f < lt)):
            sb[2 * s + 1] |= 1

    def changed(self, oid=-1):
        """Values of object oid changed (-1: every object of the node's data, >= 3313)."""
        now = -1
        si = self.si
        for s in range(self.n):
            o = si[s * _SI]
            if self.sb[2 * s] == _COMP:
                o = -2
                for q in self.cp[s]:
                    if q[0] == oid or oid < 0 and q[0] >= 3313:
                        o = q[0]
            if (o == oid or oid < 0 and o >= 3313) and self.live(s):
                if now < 0:
                    now = self.clock.ticks_ms()
                self._eval(s, now)

    def poll(self):
        """Trigger the notifications that are due; ms until the next deadline, or -1."""
        now = self.clock.ticks_ms()
        nxt = -1
        si = self.si
        sb = self.sb
        for s in range(self.n):
            if not sb[2 * s] or not self.live(s):
                continue
            b = s * _SI
            emin = si[b + _IEPMIN]
            emax = si[b + _IEPMAX]
            if sb[2 * s + 1] & 2 and time.ticks_diff(now, si[b + _IEVAL]) >= emin:
                self._eval(s, now)
            elif emax > 0 and time.ticks_diff(now, si[b + _IEVAL]) >= emax:
                self._eval(s, now)
            since = time.ticks_diff(now, si[b + _ILAST])
            pmin = si[b + _IPMIN] if si[b + _IPMIN] > 0 else 0
            pmax = si[b + _IPMAX]
            if sb[2 * s + 1] & 1 and since >= pmin or 0 < pmax <= since:
                self.notify(s, now)
                since = 0
            d = pmin - since if sb[2 * s + 1] & 1 else -1
            if pmax > 0 and (d < 0 or pmax - since < d):
                d = pmax - since
            if emax > 0:
                e = emax - time.ticks_diff(now, si[b + _IEVAL])
                if d < 0 or e < d:
                    d = e
            if sb[2 * s + 1] & 2:
                e = emin - time.ticks_diff(now, si[b + _IEVAL])
                if d < 0 or e < d:
                    d = e
            if d >= 0 and (nxt < 0 or d < nxt):
                nxt = d
        return nxt if nxt < 0 or nxt > 0 else 1

    def notify(self, s, now):
        self.ep.changed(s)
        self.notified += 1
        self.si[s * _SI + _ILAST] = now
        self.sb[2 * s + 1] = 0
        self._snapshot(s, True)

    def gone(self, oid, iid):
        """Instance oid/iid was deleted: its observers get 4.04 (ending them), its
        attributes go."""
        si = self.si
        for s in range(self.n):
            if si[s * _SI] == oid and si[s * _SI + 1] == iid and self.live(s):
                self.ep.changed(s)
        self.attrs = [a for a in self.attrs if a[0] != oid or a[1] != iid]

    # -- attributes --

    def _entry(self, p, create=False):
        for a in self.attrs:
            if a[0] == p[0] and a[1] == p[1] and a[2] == p[2] and a[3] == p[3]:
                return a
        if not create or len(self.attrs) >= _NATTR:
            return None
        a = [p[0], p[1], p[2], p[3], [None] * 7]
        self.attrs.append(a)
        return a

    def effective(self, p, depth, j):
        """Attribute j of path p (depth ids) or of its nearest parent that sets it."""
        for d in range(depth, 0, -1):
            for a in self.attrs:
                if a[4][j] is None:
                    continue
                k = 0
                while k < 4 and (a[k] == p[k] if k < d else a[k] < 0):
                    k += 1
                if k == 4:
                    return a[4][j]
            if j in (_GT, _LT, _ST) and d <= 3:
                break  # gt/lt/st only from the resource (instance) itself
        return None

    def _resolve(self, s):
        b = s * _SI
        d = self.sb[2 * s]
        srv = self.tree.obj(1)
        # a composite observation: the smallest of each attribute over its paths
        ps = self.cp[s] if d == _COMP else (self.si[b : b + 4],)
        for i, j in enumerate((_PMIN, _PMAX, _EPMIN, _EPMAX)):
            x = None
            for p in ps:
                y = self.effective(p, 4 - p.count(-1) if d == _COMP else d, j)
                if y is not None and (x is None or y < x):
                    x = y
            if x is None and srv is not None and j <= _PMAX:
                x = srv.pmin if j == _PMIN else srv.pmax
            self.si[b + _IPMIN + i] = x * 1000 if x else -1
        if d == _COMP:
            return
        o = s * _SO
        p = ps[0]
        for j in (_GT, _LT, _ST):
            self.so[o + j - _GT] = self.effective(p, d, j) if d >= 3 else None

    def refresh(self):
        self.ep.woken = True
        for s in range(self.n):
            if self.sb[2 * s] and self.live(s):
                self._resolve(s)
                self._snapshot(s, False)

    def write_attributes(self, req, o, n):
        p = self.tree.p
        numeric = n >= 3 and o.flags(p[2]) & _TYPE in (T_INT, T_FLOAT, T_TIME)
        new = {}
        for i in range(req.nquery):
            try:
                q = str(bytes(req.query(i)), "utf-8")
            except UnicodeError:
                return _BAD_REQUEST
            k, eq, val = q.partition("=")
            if k not in NAMES:
                return _BAD_REQUEST
            j = NAMES.index(k)
            if j in (_GT, _LT, _ST) and not numeric:
                return _BAD_REQUEST
            if not eq:
                new[j] = None  # "pmin" without a value: remove it
                continue
            try:
                x = float(val) if j in (_GT, _LT, _ST) else int(val)
            except ValueError:
                return _BAD_REQUEST
            if x < 0 and j not in (_GT, _LT):
                return _BAD_REQUEST
            new[j] = x
        a = self._entry(p, True)
        if a is None:
            return _SERVICE_UNAVAILABLE
        old = a[4][:]
        for j, x in new.items():
            a[4][j] = x
        v = a[4]
        if (v[_PMIN] is not None and v[_PMAX] is not None and v[_PMIN] > v[_PMAX]
                or v[_EPMIN] is not None and v[_EPMAX] is not None and v[_EPMIN] > v[_EPMAX]
                or v[_LT] is not None and v[_GT] is not None
                and (v[_LT] >= v[_GT] or v[_ST] is not None and v[_LT] + 2 * v[_ST] >= v[_GT])):
            a[4] = old
            self._trim()
            return _BAD_REQUEST
        self._trim()
        self.refresh()
        return _CHANGED

    def _trim(self):
        self.attrs = [a for a in self.attrs if a[4] != [None] * 7]

    # -- Discover --

    def discover(self, req, resp, o, n):
        p = self.tree.p
        if n == 4:
            return _BAD_REQUEST  # Discover is for objects, instances and resources
        resp.option_uint(_CONTENT_FORMAT, _CF_LINK)
        self._first = True
        if n == 1:
            self._link(resp, (o.oid, -1, -1, -1), 1, o, False)
        for a in range(o.ninst()):
            i = o.inst(a)
            if n >= 2 and i != p[1]:
                continue
            if n <= 2:
                self._link(resp, (o.oid, i, -1, -1), 2, o, False)
            for r in o.res:
                r >>= 8
                if n == 3 and r != p[2]:
                    continue
                self._link(resp, (o.oid, i, r, -1), 3, o, n == 3)
                if n == 3 and o.flags(r) & MULTI:
                    for k in range(o.count(i, r)):
                        self._link(resp, (o.oid, i, r, k), 4, o, False)
        return _CONTENT

    def _link(self, resp, q, d, o, inherit):
        s = "" if self._first else ","
        self._first = False
        s += "</%d" % q[0]
        for k in range(1, d):
            s += "/%d" % q[k]
        s += ">"
        if d == 3 and o.flags(q[2]) & MULTI:
            s += ";dim=%d" % o.count(q[1], q[2])
        for j in range(7):
            x = self.effective(q, d, j) if inherit else self._own(q, j)
            if x is not None:
                s += ";%s=%s" % (NAMES[j], ("%g" % x) if isinstance(x, float) else x)
        resp.write(s.encode())

    def _own(self, q, j):
        a = self._entry(q)
        return None if a is None else a[4][j]
