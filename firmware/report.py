# The node's report objects over node.Node's state (README "For firmware developers";
# DDF: gateway/objects/3313.xml, 33000.xml, 33001.xml, 33002.xml): 3313/0 IPSO
# accelerometer, 33000/0 the window, 33001/0 its features, 33002/0 the decision (and,
# while the node runs a candidate model beside the active one, the candidate's).
#
# Each object's resource table (`res`: rid << 8 | type | operations, lwm2m/objects.py)
# and its get() are the only description of it: the LwM2M object tree reads them (Read,
# Observe, Discover, Read-Composite), and Report.write() writes the resources flagged S
# from the same get() into the node's Send report (SenML-CBOR). Values are fixed point
# (code * 2**e, written as float32 with integer arithmetic); nothing here allocates.
# tests/firmware/test_report_ddf.py checks the tables against the gateway's DDF files.
# The unix-sim board has no temperature sensor, so there is no 3303.
from micropython import const
import micropython
from lwm2m.objects import Obj, Val, T_INT, T_FLOAT, T_STR, T_BOOL, T_OPQ, R, S

_SMALL = const(0x3FFFFFFF)  # |value| below 2**30: put_scaled's range, a small int everywhere
_BN = const(-2)  # SenML labels, RFC 8428 section 6: bn -2, n 0
_N = const(0)
# 33002 resources that need the classifier (1 label index, 2 label, 3 confidence, 7 its
# id) and the anomaly model (4 score, 5 anomalous, 6 threshold, 8 its id, 12 anomalous
# windows): bit rid
_NEEDS_CLF = const(1 << 1 | 1 << 2 | 1 << 3 | 1 << 7)
_NEEDS_AE = const(1 << 4 | 1 << 5 | 1 << 6 | 1 << 8 | 1 << 12)
# the candidate's (tinyml/infer.py Decider.cand, installed through Object 9): 13 slot,
# 14 id, 18 windows, 19 agreements, and 15 label (a classifier) or 16 score,
# 17 anomalous, 20 anomalous windows (an anomaly model)
_NEEDS_CAND = const(1 << 13 | 1 << 14 | 1 << 18 | 1 << 19)
_NEEDS_CAND_CLF = const(1 << 15)
_NEEDS_CAND_AE = const(1 << 16 | 1 << 17 | 1 << 20)


@micropython.viper
def _copy(dst: ptr8, src: ptr8, n: int):
    for i in range(n):
        dst[i] = src[i]


def _scaled(v, x, m, e):
    # x * m * 2**e as a scaled value, x an int32, m a small positive int (< 2**15): shift
    # x (rounding) until x * m stays a small int; float32 keeps 24 bits anyway
    while x > _SMALL // m or x < -(_SMALL // m):
        x = (x + 1) >> 1
        e += 1
    v.scaled(x * m, e)


class Accel(Obj):
    oid = 3313
    bn = b"/3313/0/"
    # 5701 sensor units ("g"), 5702 X value: the window's last sample, g
    res = (5701 << 8 | T_STR | R, 5702 << 8 | T_FLOAT | R | S)

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
    bn = b"/33000/0/"
    # 0 sequence, 1 offset, 2 length, 3 rate, 4 min g, 5 max g, 6 flags, 7 overruns,
    # 8 dropped, 9 saturated, 10 bus errors, 11 windows since the last report; the flash
    # log's 12 reports lost and 13 reports logged, and 14 Send refused (the server has no
    # Send: reports by Observe/Notify only) are not in the reports
    res = (0 << 8 | T_INT | R | S, 1 << 8 | T_INT | R | S, 2 << 8 | T_INT | R | S,
           3 << 8 | T_INT | R | S, 4 << 8 | T_FLOAT | R | S, 5 << 8 | T_FLOAT | R | S,
           6 << 8 | T_INT | R | S, 7 << 8 | T_INT | R | S, 8 << 8 | T_INT | R | S,
           9 << 8 | T_INT | R | S, 10 << 8 | T_INT | R | S, 11 << 8 | T_INT | R | S,
           12 << 8 | T_INT | R, 13 << 8 | T_INT | R, 14 << 8 | T_BOOL | R)

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
            _scaled(v, nd.mm[rid - 4], s.scale_m, s.scale_e)
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
        elif rid == 13:  # reports waiting in the log
            v.int(nd.flog.count if nd.flog is not None else 0)
        else:
            c = nd.client  # Send off: the server refused send_refusals Sends in a row
            v.bool(c is not None and 0 < nd.cfg["send_refusals"] <= c.refused)


class Features(Obj):
    """Feature output i of the node's spec as resource i: g for code units, g^2 for
    power, Hz, counts, ratios (node.Node.fscale)."""

    oid = 33001
    bn = b"/33001/0/"

    def __init__(self, node):
        self.node = node
        # at most 32 (node.py _MAX_FEATURES; DDF 33001.xml defines resources 0..31)
        self.res = tuple(i << 8 | T_FLOAT | R | S for i in range(len(node.fscale) >> 1))

    def get(self, iid, rid, ri, v):
        nd = self.node
        sc = nd.fscale
        _scaled(v, nd.feat[rid], sc[2 * rid], sc[2 * rid + 1])


class Decision(Obj):
    """The decision of node.Node.decider (tinyml/infer.py) on the latest window: the
    resources of the models the node has (_NEEDS_CLF, _NEEDS_AE)."""

    oid = 33002
    bn = b"/33002/0/"
    # 0 window sequence, 1 label index, 2 label, 3 confidence, 4 anomaly score,
    # 5 anomalous, 6 threshold, 7 classifier id, 8 anomaly model id, 9 raw feature
    # outputs (int32 little-endian), 10 sensor scale exponent, 11 inference time (us),
    # 12 anomalous windows since the last report; the candidate model's (only while the
    # node has one): 13 its Object 9 slot, 14 its id, 15 label index, 16 anomaly score,
    # 17 anomalous, and from its install or the node's boot 18 windows it ran,
    # 19 windows it agreed with the active model, 20 windows it flagged
    RES = (0 << 8 | T_INT | R | S, 1 << 8 | T_INT | R | S, 2 << 8 | T_STR | R | S,
           3 << 8 | T_FLOAT | R | S, 4 << 8 | T_INT | R | S, 5 << 8 | T_BOOL | R | S,
           6 << 8 | T_INT | R | S, 7 << 8 | T_OPQ | R | S, 8 << 8 | T_OPQ | R | S,
           9 << 8 | T_OPQ | R | S, 10 << 8 | T_INT | R | S, 11 << 8 | T_INT | R | S,
           12 << 8 | T_INT | R | S, 13 << 8 | T_INT | R | S, 14 << 8 | T_OPQ | R | S,
           15 << 8 | T_INT | R | S, 16 << 8 | T_INT | R | S, 17 << 8 | T_BOOL | R | S,
           18 << 8 | T_INT | R | S, 19 << 8 | T_INT | R | S, 20 << 8 | T_INT | R | S)

    def __init__(self, node):
        self.node = node
        self.tables()
        self._fb = bytearray(4 * len(node.feat))  # the raw outputs, for the shadow check

    def tables(self):
        """The resource table for the models the node has now."""
        d = self.node.decider
        skip = (0 if d.clf is not None else _NEEDS_CLF) | (0 if d.ae is not None else _NEEDS_AE)
        m = d.cand
        if m is None:
            skip |= _NEEDS_CAND | _NEEDS_CAND_CLF | _NEEDS_CAND_AE
        else:
            skip |= _NEEDS_CAND_AE if m.labels else _NEEDS_CAND_CLF
        self.res = tuple(r for r in self.RES if not skip >> (r >> 8) & 1)

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
            v.scaled(d.conf, -8)  # the int8 probability (q + 128) / 256
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
            _copy(self._fb, nd.feat, len(self._fb))  # int32 little-endian per output
            v.opaque(self._fb)
        elif rid == 10:
            v.int(nd.sensor.scale_e)
        elif rid == 11:
            v.int(d.us)
        elif rid == 12:
            v.int(d.anomalies)
        elif rid == 13:
            v.int(d.c_slot)
        elif rid == 14:
            v.opaque(d.cand.id)
        elif rid == 15:
            v.int(d.c_label)
        elif rid == 16:
            v.int(d.c_score)
        elif rid == 17:
            v.bool(d.c_anom)
        elif rid == 18:
            v.int(d.c_windows)
        elif rid == 19:
            v.int(d.c_agree)
        else:
            v.int(d.c_anomalies)


class Report:
    """The node's report objects (objs: 3313, 33000, and 33001 / 33002 when the node has
    features / a model), served by the object tree and written by write()."""

    def __init__(self, node):
        objs = [Accel(node), Window(node)]
        if node.ex is not None:
            objs.append(Features(node))
        if node.decider is not None:
            objs.append(Decision(node))
        self.objs = objs
        self.v = Val()
        self.count()

    def count(self):
        """Recount the records of a report (after a table changed: Decision.tables())."""
        n = 0
        for o in self.objs:
            for r in o.res:
                if r & S:
                    n += 1
        self.n = n  # records in a report

    def models_changed(self):
        """The node's decider changed its models (a candidate set, dropped or promoted):
        the decision's resources and the report's records follow."""
        for o in self.objs:
            if o.oid == 33002:
                o.tables()
        self.count()

    def write(self, w):
        """The Send report into cbor Writer w: a SenML-CBOR pack (RFC 8428 section 6) of
        one record per S resource, in table order, the object's base name (bn) in its
        first record; the same values a Read of them gives."""
        v = self.v
        w.put_array(self.n)
        for o in self.objs:
            first = True
            for r in o.res:
                if not r & S:
                    continue
                rid = r >> 8
                o.get(0, rid, -1, v)
                if first:
                    w.put_map(3)
                    w.put_int(_BN)
                    w.put_text(o.bn)
                    first = False
                else:
                    w.put_map(2)
                w.put_int(_N)
                w.put_decimal(rid)
                v.senml(w)
