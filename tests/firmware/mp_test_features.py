# The feature extractor (firmware/dsp/features.py) under MicroPython: a bad spec is refused at
# configuration time with a FeatureError naming the field; steady-state compute() of the
# full default feature set allocates 0 bytes; every FFT size and window shape runs.
# The values themselves are checked against numpy in tests/features/.
# The 64K-heap budget with precompiled modules is measured by tests/features/test_memory.py.
from array import array
import gc

from dsp import features
from dsp.features import Extractor, FeatureError

HEAPSIZE = "512K"  # compiling the viper kernels from source takes more than they use


def _spec(**kw):
    s = {"version": 1, "rate": 12000, "window": 1024, "fft": 1024, "features": ["rms"]}
    for k, v in kw.items():
        if v is None:
            s.pop(k)
        else:
            s[k] = v
    return s


def _refused(spec, word):
    try:
        Extractor(spec)
    except FeatureError as e:
        if word not in str(e):
            raise AssertionError("%r does not name %r" % (str(e), word))
        return
    raise AssertionError("accepted %r" % (spec,))


def _env(**kw):
    e = {"name": "envelope", "band": [2000, 5000], "shaft_hz": 29.95,
         "factors": {"bpfo": 3.5848, "bpfi": 5.4152}}
    e.update(kw)
    return e


def test_bad_specs_name_the_field():
    _refused([1], "spec")
    _refused(_spec(version=2), "version")
    _refused(_spec(version=None), "version")
    _refused(_spec(rate=0), "rate")
    _refused(_spec(rate=-12000), "rate")
    _refused(_spec(rate=12000.5), "rate")
    _refused(_spec(rate=None), "rate")
    _refused(_spec(window=8), "window")
    _refused(_spec(window=5000), "window")
    _refused(_spec(hop=0), "hop")
    _refused(_spec(hop=1025), "hop")
    _refused(_spec(fft=1000), "fft")
    _refused(_spec(fft=32), "fft")
    _refused(_spec(fft=4096), "fft")
    _refused(_spec(fft="1024"), "fft")
    _refused(_spec(features=[]), "features")
    _refused(_spec(features="rms"), "features")
    _refused(_spec(features=["rms", "wavelet"]), "features[1]")
    _refused(_spec(features=["rms", "rms"]), "features[1]")
    _refused(_spec(features=[{"name": "rms", "x": 1}]), "features[0].x")
    _refused(_spec(extra=1), "extra")
    bands = lambda e: _spec(features=[{"name": "bands", "edges": e}])
    _refused(bands([0, 500, 400]), "edges[2]")
    _refused(bands([0, 500, 500]), "edges[2]")
    _refused(bands([0, 7000]), "Nyquist")
    _refused(bands([-5, 100]), "edges[0]")
    _refused(bands([0, 100.5]), "edges[1]")
    _refused(bands([0]), "edges")
    _refused(bands([1000, 1005]), "no FFT bin")
    _refused(_spec(features=[{"name": "bands", "edges": [0, 100], "frac": 17}]), "frac")
    env = lambda **kw: _spec(features=[_env(**kw)])
    _refused(env(band=[5000, 2000]), "band[1]")
    _refused(env(band=[2000, 6500]), "Nyquist")
    _refused(env(band=[2000, 2010]), "band")
    _refused(env(band=[2000]), "band")
    _refused(env(shaft_hz=0), "shaft_hz")
    _refused(env(shaft_hz="fast"), "shaft_hz")
    _refused(env(factors={}), "factors")
    _refused(env(factors={"bpfo": -1}), "factors.bpfo")
    _refused(env(factors={"BPFO": 3.5}), "factors")
    _refused(env(harmonics=0), "harmonics")
    _refused(env(band=[2000, 2150]), "shaft_hz")  # BPFI (162 Hz) needs a wider band
    _refused(_spec(features=[{"name": "spectrum", "range": [100, 90]}]), "range[1]")
    _refused(_spec(features=[{"name": "clipped", "limit": 0}]), "limit")


def test_names_and_formats():
    ex = Extractor(features.default_spec())
    want = ["mean", "rms", "std", "peak", "p2p", "crest", "skewness", "kurtosis", "zcr",
            "centroid", "dominant", "band_0_500", "band_500_1000", "band_1000_2000",
            "band_2000_4000", "band_4000_6000", "env_bpfo", "env_bpfi", "env_bsf", "env_ftf"]
    if ex.names != want:
        raise AssertionError(ex.names)
    fmts = dict(zip(ex.names, ex.formats))
    for n, f in (("mean", (15, "code")), ("rms", (15, "code")), ("peak", (0, "code")),
                 ("kurtosis", (16, "1")), ("zcr", (0, "count")), ("centroid", (8, "Hz")),
                 ("band_0_500", (0, "code^2")), ("env_bpfi", (0, "code^2"))):
        if fmts[n] != f:
            raise AssertionError("%s: %r" % (n, fmts[n]))
    ex = Extractor(_spec(features=[{"name": "spectrum", "range": [0, 100]}, "clipped"]))
    if ex.names != ["mag_0", "mag_1", "mag_2", "mag_3", "mag_4", "mag_5", "mag_6", "mag_7",
                    "mag_8", "clipped"]:
        raise AssertionError(ex.names)


def test_wrong_window_or_output_length_is_refused():
    ex = Extractor(_spec())
    out = array("i", [0])
    for bad in (array("h", bytes(2046)), array("h", bytes(2050))):
        try:
            ex.compute(bad, out)
        except FeatureError as e:
            if "window" not in str(e):
                raise
        else:
            raise AssertionError("took %d samples" % len(bad))
    try:
        ex.compute(array("h", bytes(2048)), array("i"))
    except FeatureError as e:
        if "out" not in str(e):
            raise
    else:
        raise AssertionError("wrote past out")


def _signals(n):
    # deterministic windows of many shapes: noise, tone, square, impulse, silent, rails
    s = 12345
    for kind in range(8):
        w = features.zeros("h", n)
        for i in range(n):
            s = (s * 1103515245 + 12345) & 0x7FFFFFFF
            r = (s >> 8) & 0xFFFF
            if kind == 0:
                v = r - 32768
            elif kind == 1:
                v = ((i * 37) % 200 - 100) * 300
            elif kind == 2:
                v = 32767 if (i // 7) % 2 else -32768
            elif kind == 3:
                v = 32767 if i == n // 3 else 0
            elif kind == 4:
                v = 0
            elif kind == 5:
                v = -32768
            elif kind == 6:
                v = (r & 63) - 32 + 20000
            else:
                v = (r & 3) - 1
            w[i] = v
        yield w


def _allocated(ex, wins, out, rounds):
    # bytes allocated by `rounds` passes over wins, gc off (locals only: no dict growth)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(rounds):
        for w in wins:
            ex.compute(w, out)
    after = gc.mem_alloc()
    gc.enable()
    return after - before


def test_steady_state_allocates_nothing():
    spec = features.default_spec()
    spec["features"].append("clipped")
    spec["features"].append({"name": "spectrum", "range": [0, 500]})
    ex = Extractor(spec)
    out = array("i", bytes(4 * len(ex.names)))
    wins = list(_signals(1024))
    for w in wins:  # first pass: warm up
        ex.compute(w, out)
    n = _allocated(ex, wins, out, 16)  # 128 windows
    if n:
        raise AssertionError("compute allocated %d bytes over 128 windows" % n)


def test_every_fft_size_and_window_shape_runs_without_allocating():
    env = _env(band=[1000, 3000], shaft_hz=10.0)
    for nf in (64, 128, 256, 512, 1024, 2048):
        for n in (nf, nf // 2 + 7, min(4096, 2 * nf)):
            if n < 16:
                continue
            feats = ["mean", "rms", "std", "skewness", "kurtosis", "zcr", "centroid",
                     "dominant", {"name": "bands", "edges": [0, 3000, 6000]},
                     {"name": "spectrum", "range": [0, 200]}]
            if nf >= 512:
                feats.append(env)
            ex = Extractor(_spec(window=n, fft=nf, features=feats))
            out = array("i", bytes(4 * len(ex.names)))
            wins = list(_signals(n))
            for w in wins:
                ex.compute(w, out)
            got = _allocated(ex, wins, out, 1)
            ex = wins = None
            gc.collect()
            if got:
                raise AssertionError("fft %d window %d allocated %d" % (nf, n, got))


def test_silent_window_gives_zeros():
    ex = Extractor(features.default_spec())
    out = array("i", [7] * len(ex.names))
    ex.compute(array("h", bytes(2048)), out)
    if list(out) != [0] * len(ex.names):
        raise AssertionError(list(out))


def test_measured_shaft_speed_moves_the_defect_bins():
    spec = _spec(features=[_env(factors={"bpfo": 3.5848})])
    ex = Extractor(spec)
    out = array("i", [0])
    w = array("h", bytes(2048))
    for i in range(1024):  # a 3 kHz carrier in bursts every 80 samples (150 Hz)
        w[i] = (20000 if (i % 4) < 2 else -20000) if (i % 80) < 8 else 0
    ex.compute(w, out)
    at_config = out[0]  # BPFO at 29.95 Hz shaft: 107 Hz, off the 150 Hz line
    ex.set_shaft_hz(150 / 3.5848)  # a measured speed that puts BPFO on it
    ex.compute(w, out)
    if not out[0] > at_config:
        raise AssertionError("%d <= %d" % (out[0], at_config))
    for bad in (0, -3, 1e9):
        try:
            ex.set_shaft_hz(bad)
        except FeatureError:
            continue
        raise AssertionError("took shaft_hz %r" % bad)
    try:
        Extractor(_spec()).set_shaft_hz(30)
    except FeatureError:
        return
    raise AssertionError("set_shaft_hz without an envelope feature")
