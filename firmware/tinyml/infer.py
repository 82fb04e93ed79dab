# On-node decisions: window features -> int8 model inputs -> classifier and anomaly
# autoencoder -> decision (label, confidence, anomaly score, flag). See TFLITE.md,
# "On the node".
#
# A model made by `aiot model train` carries the metadata entry "aiot.model" (JSON):
# kind ("classifier" or "anomaly"), the feature spec it was trained on, labels or the
# anomaly threshold, and per model input j the map from extractor output `index` to
# int8 (models/inputq.py has the definition and the numpy twin of _quantize):
#   n = shift - p*E;  r = (out*multiplier + 2^(n-1)) >> n  (n > 0), out*multiplier << -n
#   (n <= 0);  q = clamp(r + zero_point, -128, 127)
# with p the unit power of that output (0, 1 code, 2 code^2) and E the sensor's scale
# exponent. out*multiplier reaches 2^46, so the viper kernel multiplies in 16-bit halves
# and decides saturation first, from per-input thresholds computed at load (the only
# place long ints are used); every intermediate stays inside signed 32 bits and nothing
# is allocated per window.
import json
import time
import micropython
from array import array
from micropython import const

from tinyml.flatbuf import TFLiteError

_P = const(8)  # ints per input in the quantization table
_MAX_INPUTS = const(64)
_I32_MAX = 0x7FFFFFFF  # not const(): a long int on 32-bit ports, used at load only


class ModelError(ValueError):
    """The model cannot serve this node: wrong kind, spec, shapes or metadata."""


@micropython.viper
def _quantize(f: ptr16, tab: ptr32, k: int, dst: ptr8):
    # dst[j] = int8 model input j from the int32 feature outputs f (read as 16-bit halves:
    # a ptr32 load of a negative int is not portable). tab per input, all non-negative:
    # index, multiplier, n + 64, zero_point + 2^30, lo_hi + 32768, lo_lo,
    # hi_hi + 32768, hi_lo, where lo/hi are the first and last feature values (split in
    # signed high and unsigned low halves) whose input is not saturated; n + 64 = 0 marks
    # an input that is the constant q = zero_point field - 128 for every int32 output.
    half = 1
    half <<= 29  # not a constant: 2^29 folds to a long int on 32-bit ports
    for j in range(k):
        b = j * 8
        i = int(tab[b])
        lo = int(f[2 * i])
        hi = int(f[2 * i + 1])
        if hi & 0x8000:
            hi -= 0x10000
        a_hi = int(tab[b + 4]) - 32768
        a_lo = int(tab[b + 5])
        b_hi = int(tab[b + 6]) - 32768
        b_lo = int(tab[b + 7])
        if int(tab[b + 2]) == 0:
            q = int(tab[b + 3]) - 128  # the same q for every int32 output (saturated)
        elif hi < a_hi or (hi == a_hi and lo < a_lo):
            q = -128
        elif hi > b_hi or (hi == b_hi and lo > b_lo):
            q = 127
        else:
            m = int(tab[b + 1])
            n = int(tab[b + 2]) - 64
            zp = int(tab[b + 3]) - half - half
            p_hi = hi * m  # |.| < 2^30
            p_lo = lo * m  # < 2^31
            if n > 0:
                if n > 16:
                    s = n - 17
                    if s > 29:
                        s = 29  # n > 46: v + 2^(n-1) lies in [0, 2^n): r = 0 below
                    p_hi += 1 << s
                else:
                    p_lo += 1 << (n - 1)
            p_hi += p_lo >> 16
            p_lo &= 0xFFFF
            # now v (+ rounding) = p_hi * 2^16 + p_lo, 0 <= p_lo < 2^16
            if n > 46:
                r = 0
            elif n >= 16:
                s = n - 16
                if s > 30:
                    s = 30
                r = p_hi >> s
            elif n > 0:
                r = (p_hi << (16 - n)) + (p_lo >> n)
            else:
                s = 0 - n
                if s > 30:
                    s = 30
                r = ((p_hi << 16) + p_lo) << s
            q = r + zp
            if q < -128:
                q = -128
            if q > 127:
                q = 127
        dst[j] = q & 0xFF


@micropython.viper
def _sqerr(a: ptr8, b: ptr8, n: int) -> int:
    # sum of (a[j] - b[j])^2 over int8 codes (<= 64 * 255^2 < 2^30)
    s = 0
    for j in range(n):
        d = (int(a[j]) ^ 128) - (int(b[j]) ^ 128)
        s += d * d
    return s


@micropython.viper
def _copy(dst: ptr8, src: ptr8, n: int):
    for j in range(n):
        dst[j] = src[j]


@micropython.viper
def _argmax(p: ptr8, n: int) -> int:
    # index of the first largest int8 code (argmax, ties to the lowest index)
    best = 0
    bv = -1
    for j in range(n):
        v = int(p[j]) ^ 128
        if v > bv:
            bv = v
            best = j
    return best


def _thresholds(mult, n, zp):
    # the first and last int32 out whose q is neither -128 nor 127 (long ints: load only)
    r_lo = -127 - zp  # q > -128  <=>  r >= r_lo
    r_hi = 126 - zp  # q < 127   <=>  r <= r_hi
    if n > 0:
        h = 1 << (n - 1)
        t_lo = r_lo * (1 << n) - h  # v >= t_lo
        t_hi = (r_hi + 1) * (1 << n) - h - 1  # v <= t_hi
    else:
        s = 1 << -n
        t_lo = -((-r_lo) // s)  # ceil
        t_hi = r_hi // s
    lo = -((-t_lo) // mult)
    hi = t_hi // mult
    return lo, hi


def _split(v):
    # int32 -> (signed high half + 32768, low half): both non-negative table entries
    return (v >> 16) + 32768, v & 0xFFFF


def table(inputs, units, scale_e, what="model"):
    """The quantization table of _quantize for metadata ``inputs`` (list of dicts: index,
    multiplier, shift, zero_point, unit_power), the extractor's output ``units`` and the
    sensor's scale exponent."""
    k = len(inputs)
    tab = array("i", bytes(4 * _P * k))
    powers = {"1": 0, "count": 0, "Hz": 0, "code": 1, "code^2": 2}
    for j, d in enumerate(inputs):
        try:
            i = d["index"]
            mult = d["multiplier"]
            shift = d["shift"]
            zp = d["zero_point"]
            p = d["unit_power"]
        except (KeyError, TypeError):
            raise ModelError("%s: metadata input %d is incomplete" % (what, j))
        for v in (i, mult, shift, zp, p):
            if type(v) is not int:
                raise ModelError("%s: metadata input %d has a value that is not an integer"
                                 % (what, j))
        if not 0 <= i < len(units):
            raise ModelError("%s: input %d reads feature output %d; the node's spec has %d"
                             % (what, j, i, len(units)))
        if powers.get(units[i]) != p:
            raise ModelError("%s: input %d expects unit power %d, output %d is in %s"
                             % (what, j, p, i, units[i]))
        if not 0 < mult < 1 << 15 or not -(1 << 30) <= zp < 1 << 30:
            raise ModelError("%s: input %d multiplier or zero point out of range" % (what, j))
        n = shift - p * scale_e
        if not -64 < n < 1 << 20:
            raise ModelError("%s: input %d shift %d out of range" % (what, j, shift))
        lo, hi = _thresholds(mult, n, zp)
        if lo > _I32_MAX or hi < -_I32_MAX - 1:
            # every int32 output saturates to one end: a constant (n + 64 = 0 marks it)
            row = (i, 0, 0, 0 if lo > _I32_MAX else 255, 0, 0, 0, 0)
        else:
            lo = max(lo, -_I32_MAX - 1)
            hi = min(hi, _I32_MAX)
            n = min(n, 100)  # > 46 rounds everything in range to 0 anyway
            row = (i, mult, n + 64, zp + (1 << 30)) + _split(lo) + _split(hi)
        for c, v in enumerate(row):
            tab[_P * j + c] = v
    return tab


def _meta(ip, what):
    ref = ip.metadata.get("aiot.model")
    if ref is None:
        raise ModelError("%s has no 'aiot.model' metadata (made by aiot model train?)" % what)
    try:
        m = json.loads(ip.src.read(ref[0], ref[1], "metadata"))
    except ValueError:
        raise ModelError("%s: 'aiot.model' metadata is not JSON" % what)
    if not isinstance(m, dict):
        raise ModelError("%s: 'aiot.model' metadata is not an object" % what)
    return m


def _same_spec(a, b):
    # the model's feature spec against the node's: everything but the hop must agree
    if not isinstance(a, dict):
        return "feature_spec"
    for key in ("version", "rate", "window", "fft", "features"):
        if a.get(key) != b.get(key):
            return key
    return None


def _sha8(path):
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(512)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf if n == len(buf) else buf[:n])
    return h.digest()[:8]


class Model:
    """One model of kind ``kind`` (None: the kind its metadata gives) loaded from ``path`` for a node whose extractor has
    ``formats`` ((frac, unit) per output) under the feature spec ``spec`` and whose sensor
    has scale exponent ``scale_e``; raises ModelError or TFLiteError with the reason."""

    def __init__(self, path, kind, spec, formats, scale_e, stream=False, arena_limit=0):
        from tinyml.interpreter import Interpreter

        what = "'%s' %s" % ("model" if kind in ("classifier", None) else kind, path)
        try:
            ip = Interpreter(path, arena_limit, stream)
        except OSError:
            raise ModelError("%s: cannot read the file" % what)
        except TFLiteError as e:
            raise ModelError("%s: %s" % (what, e))
        self.ip = ip
        m = _meta(ip, what)
        ip.model = ip.metadata = None  # the parse tree: only loading needed it
        if kind is None and m.get("kind") in ("classifier", "anomaly"):
            kind = m["kind"]  # either kind (a model installed through ota/models.py)
        if m.get("kind") != kind:
            raise ModelError("%s is a %s model, not %s" % (what, m.get("kind"), kind))
        bad = _same_spec(m.get("feature_spec"), spec)
        if bad:
            raise ModelError("%s was trained on another feature spec ('%s' differs from the"
                             " node's)" % (what, bad))
        inputs = m.get("inputs")
        if len(ip.inputs) != 1 or len(ip.outputs) != 1:
            raise ModelError("%s: needs 1 input and 1 output tensor" % what)
        x = ip.inputs[0]
        y = ip.outputs[0]
        if not isinstance(inputs, list) or not 0 < len(inputs) <= _MAX_INPUTS:
            raise ModelError("%s: metadata 'inputs' must list 1..%d inputs" % (what, _MAX_INPUTS))
        k = len(inputs)
        if x.type != 9 or x.count != k:
            raise ModelError("%s: input tensor holds %d values, the metadata maps %d features"
                             % (what, x.count, k))
        tab = table(inputs, [u for _, u in formats], scale_e, what)
        self.k = k
        self.tab = tab
        self.x = ip.input(0)
        self.xq = bytearray(k)
        self.y = ip.output(0)
        self.ny = y.count
        self.id = _sha8(path)
        if kind == "classifier":
            labels = m.get("labels")
            if not isinstance(labels, list) or len(labels) != y.count or y.type != 9:
                raise ModelError("%s: %d labels for an output of %d int8 values"
                                 % (what, len(labels) if isinstance(labels, list) else 0,
                                    y.count))
            self.labels = tuple(str(x).encode() for x in labels)
            self.threshold = 0
        else:
            t = m.get("threshold")
            if type(t) is not int or t < 0 or y.count != k or y.type != 9:
                raise ModelError("%s: needs an integer 'threshold' and an int8 output shaped"
                                 " like its input" % what)
            self.labels = ()
            self.threshold = t

    def run(self, feat):
        """Quantize the feature outputs ``feat`` (array 'i') into ``xq`` and the input
        tensor, and invoke (the arena may reuse the input's bytes for a later tensor, so
        ``xq`` keeps the input for the anomaly score)."""
        _quantize(feat, self.tab, self.k, self.xq)
        _copy(self.x, self.xq, self.k)
        self.ip.invoke()


class Decider:
    """Classifier and/or anomaly model on the node's features; decide(feat) fills the
    decision attributes (label -1 / score -1 when that model is absent).

    A candidate (``cand``: a Model of either kind, installed through Object 9,
    ota/models.py) runs beside them on the same features, after the active models
    decide: its label (classifier) or score and flag (anomaly) go to the c_*
    attributes, and the counts c_windows (windows it ran), c_agree (windows its decision
    was the active model's of its kind: the same label, or the same anomalous flag) and
    c_anomalies (windows it flagged) run from its install or the node's boot: the
    gateway takes differences (gateway/ota/models.py). Nothing here allocates. The
    candidate's state are class defaults until one is set: a node without one keeps the
    instance it had."""

    cand = None
    c_slot = -1  # the candidate's Object 9 instance
    c_label = -1
    c_score = -1
    c_anom = False
    c_windows = 0
    c_agree = 0
    c_anomalies = 0

    def __init__(self, classifier, anomaly):
        self.clf = classifier
        self.ae = anomaly
        self.label = -1
        self.conf = 0  # the classifier's int8 probability code + 128: confidence conf/256
        self.score = -1
        self.anomalous = False
        self.us = 0
        self.anomalies = 0  # anomalous windows since the last report

    def candidate(self, model, slot=-1):
        """Run ``model`` (a Model, or None: none) as the candidate from now on."""
        self.cand = model
        self.c_slot = slot
        self.c_label = -1
        self.c_score = -1
        self.c_anom = False
        self.c_windows = 0
        self.c_agree = 0
        self.c_anomalies = 0

    def active(self, model):
        """``model`` decides for its kind from now on (a promoted candidate)."""
        if model.labels:  # a classifier
            self.clf = model
        else:
            self.ae = model

    def decide(self, feat):
        t0 = time.ticks_us()
        c = self.clf
        if c is not None:
            c.run(feat)
            i = _argmax(c.y, c.ny)
            self.label = i
            self.conf = (c.y[i] ^ 128)
        a = self.ae
        if a is not None:
            a.run(feat)
            s = _sqerr(a.y, a.xq, a.k)
            self.score = s
            self.anomalous = s > a.threshold
            if s > a.threshold:
                self.anomalies += 1
        self.us = time.ticks_diff(time.ticks_us(), t0)
        m = self.cand
        if m is not None:
            self._shadow(m, feat)

    def _shadow(self, m, feat):
        # the candidate on the same features; counts against the active decision
        m.run(feat)
        self.c_windows += 1
        if m.labels:  # a classifier
            i = _argmax(m.y, m.ny)
            self.c_label = i
            same = i == self.label
        else:
            s = _sqerr(m.y, m.xq, m.k)
            self.c_score = s
            flag = s > m.threshold
            self.c_anom = flag
            same = flag == self.anomalous
            if flag:
                self.c_anomalies += 1
        if same:
            self.c_agree += 1


def load(cfg, spec, formats, scale_m, scale_e):
    """The node's Decider from config keys 'model' / 'anomaly' (paths), or None."""
    c = cfg.get("model")
    a = cfg.get("anomaly")
    if c is None and a is None:
        return None
    if spec is None:
        raise ModelError("'model'/'anomaly' need the feature extractor ('features' is false)")
    if scale_m != 1:
        # the metadata maps assume g = code * 2^E (models/inputq.py for_sensor otherwise)
        raise ModelError("'model'/'anomaly' need a sensor scale that is a power of two")
    import gc

    stream = cfg.get("model_stream", False)
    lim = cfg.get("model_arena", 0)
    gc.collect()  # loading parses the flatbuffer and the metadata JSON: room for both
    clf = Model(c, "classifier", spec, formats, scale_e, stream, lim) if c is not None else None
    gc.collect()
    ae = Model(a, "anomaly", spec, formats, scale_e, stream, lim) if a is not None else None
    gc.collect()
    return Decider(clf, ae)
