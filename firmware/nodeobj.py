# The node's own LwM2M objects over node.Node's state (README "For firmware
# developers"): 3313/0 IPSO accelerometer (5702 the window's last sample, 5701 units),
# 33000/0 the window (and the flash log's counters, 12 and 13), 33001/0 its features,
# 33002/0 the decision. Values are fixed point (code * 2**e), the same numbers the
# node's Send reports carry; nothing here allocates. The unix-sim board has no
# temperature sensor, so there is no 3303.
from micropython import const
from lwobj import Obj, T_INT, T_FLOAT, T_STR, T_BOOL, T_OPQ, R

_SMALL = const(0x3FFFFFFF)


def _scaled(v, x, m, e):
    # x * m * 2**e with x * m kept a small int (as node._scaled does)
    while x > _SMALL // m or x < -(_SMALL // m):
        x = (x + 1) >> 1
        e += 1
    v.scaled(x * m, e)


class Accel(Obj):
    oid = 3313
    res = (5701 << 8 | T_STR | R, 5702 << 8 | T_FLOAT | R)

    def __init__(self, node):
        self.node = node

    def get(self, iid, rid, ri, v):
        nd = self.node
        if rid == 5701:
            v.str(b"g")
        else:
            s = nd.sensor
            _scaled(v, nd.win[nd.n - 1], s.scale_m, s.scale_e)


class Window(Obj):
    oid = 33000
    res = tuple(i << 8 | (T_FLOAT if i in (4, 5) else T_INT) | R for i in range(14))

    def __init__(self, node):
        self.node = node

    def get(self, iid, rid, ri, v):
        nd = self.node
        sm = nd.sampler
        s = nd.sensor
        if rid == 0:
            v.int(nd.seq)
        elif rid == 1:
            v.int(sm.offset)
        elif rid == 2:
            v.int(nd.n)
        elif rid == 3:
            v.int(s.rate)
        elif rid < 6:
            _scaled(v, nd._mm[rid - 4], s.scale_m, s.scale_e)
        elif rid == 6:
            v.int(nd.flags)
        elif rid == 7:
            v.int(sm.overruns)
        elif rid == 8:
            v.int(sm.dropped)
        elif rid == 9:
            v.int(sm.saturated)
        elif rid == 10:
            v.int(sm.errors)
        elif rid == 11:
            v.int(nd.windows)
        elif rid == 12:  # reports lost: overwritten in the full log, or with no log
            lg = nd.flog
            v.int(nd.lost + (lg.dropped if lg is not None else 0))
        else:  # reports waiting in the log
            v.int(nd.flog.count if nd.flog is not None else 0)


class Features(Obj):
    oid = 33001

    def __init__(self, node):
        self.node = node
        self.res = tuple(i << 8 | T_FLOAT | R for i in range(len(node._fscale) >> 1))

    def get(self, iid, rid, ri, v):
        nd = self.node
        sc = nd._fscale
        _scaled(v, nd.feat[rid], sc[2 * rid], sc[2 * rid + 1])


_DTYPES = (T_INT, T_INT, T_STR, T_FLOAT, T_INT, T_BOOL, T_INT, T_OPQ, T_OPQ, T_OPQ,
           T_INT, T_INT, T_INT)


class Decision(Obj):
    oid = 33002

    def __init__(self, node):
        self.node = node
        d = node.decider
        c = d.clf is not None
        a = d.ae is not None
        self.res = tuple(i << 8 | _DTYPES[i] | R for i in range(13)
                         if not (not c and i in (1, 2, 3, 7) or not a and i in (4, 5, 6, 8, 12)))

    def get(self, iid, rid, ri, v):
        nd = self.node
        d = nd.decider
        if rid == 0:
            v.int(nd.seq)
        elif rid == 1:
            v.int(d.label)
        elif rid == 2:
            v.str(d.clf.labels[d.label] if d.label >= 0 else b"")
        elif rid == 3:
            v.scaled(d.conf, -8)
        elif rid == 4:
            v.int(d.score)
        elif rid == 5:
            v.bool(d.anomalous)
        elif rid == 6:
            v.int(d.ae.threshold)
        elif rid == 7:
            v.opaque(d.clf.id)
        elif rid == 8:
            v.opaque(d.ae.id)
        elif rid == 9:
            from node import _copy

            _copy(nd._fb, nd.feat, len(nd._fb))  # int32 little-endian per output
            v.opaque(nd._fb)
        elif rid == 10:
            v.int(nd.sensor.scale_e)
        elif rid == 11:
            v.int(d.us)
        else:
            v.int(d.anomalies)


def objects(node):
    """The node's objects (3313, 33000, and 33001 / 33002 when it has them)."""
    out = [Accel(node), Window(node)]
    if node.ex is not None:
        out.append(Features(node))
    if node.decider is not None:
        out.append(Decision(node))
    return out
