# The feature spec: a plain, versioned dict (JSON object) naming the features a node
# computes per window. The node's configuration and a model's metadata carry the same
# object, and the model pipeline computes its training features by running this code on
# the MicroPython unix port, so training and serving cannot disagree.
#
# Version 1:
#
#   {"version": 1,
#    "rate": 12000,        sample rate in Hz, integer 1..1_000_000
#    "window": 1024,       samples per window, 16..4096
#    "hop": 512,           optional, 1..window (the sampler's step; default = window)
#    "fft": 1024,          FFT size, a power of two 64..2048; it analyses the LAST
#                          min(window, fft) samples of the window (zero-padded to fft)
#    "features": [ ... ]}  non-empty list, each name at most once, outputs in list order
#
# Feature entries are a name, or an object with "name" and parameters:
#   "mean" "rms" "std" "peak" "p2p" "crest" "skewness" "kurtosis" "zcr"   time domain
#   "centroid" "dominant"                                                 spectrum
#   {"name": "clipped", "limit": 32767}        samples with |x| >= limit (default 32767)
#   {"name": "bands", "edges": [0, 500, ...], "frac": 0}
#        integer Hz, strictly increasing, 0 <= edges <= rate/2, every band holds a bin;
#        outputs band_<lo>_<hi>; "frac" 0..16 fractional bits of the code^2 outputs
#   {"name": "envelope", "band": [2000, 5000], "shaft_hz": 29.95,
#    "factors": {"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 4.7135, "ftf": 0.39828},
#    "harmonics": 1, "frac": 0}
#        squared-envelope spectrum of the band; outputs env_<name> in the order
#        bpfo, bpfi, bsf, ftf, then other names sorted; names are [a-z0-9_]{1,16}
#   {"name": "spectrum", "range": [0, 6000]}   magnitude spectrum bins, outputs mag_<bin>
#
# What each output means, its fixed-point format and its error bound: firmware/FEATURES.md.
# Plan(spec) checks everything at configuration time and raises FeatureError naming the
# field; the Extractor (features.py) then never meets a bad value at run time.

from micropython import const

_VERSION = const(1)
_MIN_WINDOW = const(16)
_MAX_WINDOW = const(4096)
_MIN_FFT = const(64)
_MAX_FFT = const(2048)
_MAX_RATE = const(1000000)
_MAX_FRAC = const(16)
_MAX_HARMONICS = const(8)
_MAX_BANDS = const(64)
_MAX_FACTORS = const(8)

SIMPLE = ("mean", "rms", "std", "peak", "p2p", "crest", "skewness", "kurtosis", "zcr",
          "centroid", "dominant")
_DEFECTS = ("bpfo", "bpfi", "bsf", "ftf")


def zeros(typecode, n):
    """A zero-filled array of n items, without a temporary n-byte buffer (a 64 KB heap
    feels every transient copy while an extractor is built)."""
    from array import array

    a = array(typecode, range(n))  # sized from len(range)
    for i in range(n):
        a[i] = 0
    return a


class FeatureError(ValueError):
    """A feature spec (or the data handed to the extractor) is not valid; says which field."""


def default_spec():
    """The full default feature set at 12 kHz (CWRU drive-end bearing, 1797 rpm)."""
    return {
        "version": 1, "rate": 12000, "window": 1024, "fft": 1024,
        "features": ["mean", "rms", "std", "peak", "p2p", "crest", "skewness", "kurtosis",
                     "zcr", "centroid", "dominant",
                     {"name": "bands", "edges": [0, 500, 1000, 2000, 4000, 6000]},
                     {"name": "envelope", "band": [2000, 5000], "shaft_hz": 29.95,
                      "factors": {"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 4.7135,
                                  "ftf": 0.39828}}]}


def _int(d, key, lo, hi, where, default=None):
    v = d.get(key, default)
    if v is None:
        raise FeatureError("%s%s: missing" % (where, key))
    if type(v) is not int:
        raise FeatureError("%s%s: %r is not an integer" % (where, key, v))
    if not lo <= v <= hi:
        raise FeatureError("%s%s: %d is outside %d..%d" % (where, key, v, lo, hi))
    return v


def _num(v, where):
    if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
        raise FeatureError("%s: %r is not a finite number" % (where, v))
    return v


def _first_bin(f, n, rate):
    # smallest k with k * rate / n >= f   (f an integer number of Hz)
    return (f * n + rate - 1) // rate


class Plan:
    """A checked spec: sizes, the output list and each feature's parameters."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise FeatureError("spec: expected an object, got %s" % type(spec).__name__)
        v = spec.get("version")
        if v != _VERSION:
            raise FeatureError("version: %r is not supported (expected %d)" % (v, _VERSION))
        for k in spec:
            if k not in ("version", "rate", "window", "hop", "fft", "features"):
                raise FeatureError("%s: unknown field" % k)
        self.rate = rate = _int(spec, "rate", 1, _MAX_RATE, "")
        self.window = n = _int(spec, "window", _MIN_WINDOW, _MAX_WINDOW, "")
        self.hop = _int(spec, "hop", 1, n, "", n)
        nf = spec.get("fft")
        if type(nf) is not int or nf < _MIN_FFT or nf > _MAX_FFT or nf & (nf - 1):
            raise FeatureError("fft: %r is not a power of two in %d..%d" % (nf, _MIN_FFT, _MAX_FFT))
        self.fft = nf
        self.seg = min(n, nf)  # samples the FFT analyses: the last `seg` of the window
        feats = spec.get("features")
        if not isinstance(feats, list) or not feats:
            raise FeatureError("features: expected a non-empty list")
        self.names = []
        self.formats = []  # (fractional bits, unit) per output
        self.items = []  # (name, first output index, params)
        seen = set()
        for i, f in enumerate(feats):
            where = "features[%d]" % i
            if isinstance(f, str):
                name, params = f, {}
            elif isinstance(f, dict):
                name, params = f.get("name"), f
            else:
                raise FeatureError("%s: expected a name or an object" % where)
            if name in seen:
                raise FeatureError("%s: %r appears twice" % (where, name))
            seen.add(name)
            first = len(self.names)
            if name in SIMPLE:
                for k in params:
                    if k != "name":
                        raise FeatureError("%s.%s: unknown field" % (where, k))
                self._out(name, *_SIMPLE_FORMAT[SIMPLE.index(name)])
                p = None
            elif name == "clipped":
                p = self._clipped(params, where + ".")
            elif name == "bands":
                p = self._bands(params, where + ".")
            elif name == "envelope":
                p = self._envelope(params, where + ".")
            elif name == "spectrum":
                p = self._spectrum(params, where + ".")
            else:
                raise FeatureError("%s: unknown feature %r" % (where, name))
            self.items.append((name, first, p))

    def _out(self, name, frac, unit):
        self.names.append(name)
        self.formats.append((frac, unit))

    def _check_keys(self, params, allowed, where):
        for k in params:
            if k != "name" and k not in allowed:
                raise FeatureError("%s%s: unknown field" % (where, k))

    def _clipped(self, params, where):
        self._check_keys(params, ("limit",), where)
        lim = _int(params, "limit", 1, 32768, where, 32767)
        self._out("clipped", 0, "count")
        return lim

    def _frac(self, params, where):
        return _int(params, "frac", 0, _MAX_FRAC, where, 0)

    def _hz_list(self, v, where, count=None):
        if not isinstance(v, list) or len(v) < 2 or (count and len(v) != count):
            raise FeatureError("%s: expected a list of %s integer Hz values"
                               % (where, count or "2 or more"))
        for j, e in enumerate(v):
            if type(e) is not int:
                raise FeatureError("%s[%d]: %r is not an integer (Hz)" % (where, j, e))
            if j and e <= v[j - 1]:
                raise FeatureError("%s[%d]: %d Hz is not above %d Hz" % (where, j, e, v[j - 1]))
        if v[0] < 0:
            raise FeatureError("%s[0]: %d Hz is negative" % (where, v[0]))
        if 2 * v[-1] > self.rate:
            raise FeatureError("%s[%d]: %d Hz is beyond Nyquist (%s Hz)"
                               % (where, len(v) - 1, v[-1], self.rate / 2))
        return v

    def _bins(self, lo, hi, last):
        # bins k with lo <= k*rate/fft < hi (<= hi for the last band)
        n, rate = self.fft, self.rate
        k0 = _first_bin(lo, n, rate)
        k1 = (hi * n) // rate + 1 if last else _first_bin(hi, n, rate)
        return k0, min(k1, n // 2 + 1)

    def _bands(self, params, where):
        self._check_keys(params, ("edges", "frac"), where)
        edges = self._hz_list(params.get("edges"), where + "edges")
        if len(edges) - 1 > _MAX_BANDS:
            raise FeatureError("%sedges: more than %d bands" % (where, _MAX_BANDS))
        frac = self._frac(params, where)
        ranges = []
        for j in range(len(edges) - 1):
            k0, k1 = self._bins(edges[j], edges[j + 1], j == len(edges) - 2)
            if k1 <= k0:
                raise FeatureError("%sedges[%d]: band %d..%d Hz holds no FFT bin (bin width %s Hz)"
                                   % (where, j, edges[j], edges[j + 1], self.rate / self.fft))
            ranges.append((k0, k1))
            self._out("band_%d_%d" % (edges[j], edges[j + 1]), frac, "code^2")
        return (ranges, frac)

    def _envelope(self, params, where):
        self._check_keys(params, ("band", "shaft_hz", "factors", "harmonics", "frac"), where)
        band = self._hz_list(params.get("band"), where + "band", 2)
        k1 = _first_bin(band[0], self.fft, self.rate)
        k2 = (band[1] * self.fft) // self.rate
        if k1 < 1:
            k1 = 1  # the mean is removed: bin 0 carries no band signal
        if k2 - k1 + 1 < 4:
            raise FeatureError("%sband: %d..%d Hz holds fewer than 4 FFT bins"
                               % (where, band[0], band[1]))
        shaft = _num(params.get("shaft_hz"), where + "shaft_hz")
        if shaft <= 0:
            raise FeatureError("%sshaft_hz: %r is not above 0" % (where, shaft))
        facs = params.get("factors")
        if not isinstance(facs, dict) or not facs:
            raise FeatureError("%sfactors: expected a non-empty object of name: multiple"
                               % where)
        if len(facs) > _MAX_FACTORS:
            raise FeatureError("%sfactors: more than %d entries" % (where, _MAX_FACTORS))
        names = [d for d in _DEFECTS if d in facs]
        names += sorted(d for d in facs if d not in _DEFECTS)
        mults = []
        for d in names:
            ok = isinstance(d, str) and 0 < len(d) <= 16
            for c in d if ok else "":
                ok = ok and ("a" <= c <= "z" or "0" <= c <= "9" or c == "_")
            if not ok:
                raise FeatureError("%sfactors: %r is not a name of [a-z0-9_]{1,16}" % (where, d))
            f = _num(facs[d], where + "factors." + d)
            if f <= 0:
                raise FeatureError("%sfactors.%s: %r is not above 0" % (where, d, f))
            mults.append(f)
        harm = _int(params, "harmonics", 1, _MAX_HARMONICS, where, 1)
        frac = self._frac(params, where)
        for d in names:
            self._out("env_" + d, frac, "code^2")
        env = [k1, k2 - k1 + 1, names, mults, harm, frac, shaft]
        defect_bins(self, env, shaft, where + "shaft_hz")  # every defect fits the band
        return env

    def _spectrum(self, params, where):
        self._check_keys(params, ("range",), where)
        r = params.get("range", [0, self.rate // 2])
        r = self._hz_list(r, where + "range", 2)
        k0, k1 = self._bins(r[0], r[1], True)
        if k1 <= k0:
            raise FeatureError("%srange: %d..%d Hz holds no FFT bin" % (where, r[0], r[1]))
        for k in range(k0, k1):
            self._out("mag_%d" % k, 8, "code")
        return (k0, k1)


# (fractional bits, unit) of the simple features, in SIMPLE order
_SIMPLE_FORMAT = ((15, "code"), (15, "code"), (15, "code"), (0, "code"), (0, "code"),
                  (16, "1"), (16, "1"), (16, "1"), (0, "count"), (8, "Hz"), (8, "Hz"))


def defect_bins(plan, env, shaft_hz, where="shaft_hz"):
    """Envelope-spectrum bins of each defect's harmonics for a shaft speed: per defect, the
    list of centre bins c_h = round(h * factor * shaft_hz * fft / rate), h = 1..harmonics.
    The envelope feature sums bins c_h - 1, c_h, c_h + 1 (those >= 1). Raises FeatureError
    if a defect frequency does not fit the envelope band."""
    nk, names, mults, harm = env[1], env[2], env[3], env[4]
    if type(shaft_hz) not in (int, float) or not shaft_hz > 0 or shaft_hz > plan.rate:
        raise FeatureError("%s: %r is not a speed in (0, rate] Hz" % (where, shaft_hz))
    per = []
    for j in range(len(names)):
        cs = [int(h * mults[j] * shaft_hz * plan.fft / plan.rate + 0.5)
              for h in range(1, harm + 1)]
        if cs[-1] + 1 >= nk - 1:
            raise FeatureError("%s: %s harmonic %d at %.1f Hz (envelope bin %d) needs an "
                               "envelope band wider than %d bins"
                               % (where, names[j], harm, harm * mults[j] * shaft_hz,
                                  cs[-1], nk))
        per.append(cs)
    return per
