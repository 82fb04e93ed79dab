"""The replay signal format and the CWRU converter, against numpy/scipy and the real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.signal
from aiotkit.boards import paths
from aiotkit.boards.replay import signalfile
from aiotkit.boards.replay.signalfile import Signal, SignalFileError
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
CWRU = REPO.parent / "shared" / "data" / "cwru"
EXCERPTS = {"normal-97": 97, "inner-105": 105, "outer-130": 130, "ball-118": 118}


def aiot(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "aiotkit.tools.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120, check=False,
    )


@settings(max_examples=60, deadline=None)
@given(
    codes=st.lists(st.integers(-32768, 32767), min_size=1, max_size=300),
    rate=st.integers(1, signalfile.MAX_RATE),
    exp=st.integers(-128, 127),
)
def test_encode_decode_round_trip(codes, rate, exp):
    sig = Signal(rate=rate, scale_exp=exp, codes=np.array(codes, dtype="<i2"))
    back = signalfile.decode(signalfile.encode(sig))
    assert (back.rate, back.scale_exp) == (rate, exp)
    assert back.codes.tolist() == codes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_refused_with_a_clear_error(blob):
    try:
        sig = signalfile.decode(blob)
    except SignalFileError:
        return
    # the only way through is a well-formed header
    assert blob[:4] == b"AI16" and len(sig.codes) * 2 == len(blob) - 16


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:10], "shorter than the 16-byte header"),
        (lambda b: b"XI16" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "unsupported version"),
        (lambda b: b[:5] + b"\x02" + b[6:], "channels"),
        (lambda b: b[:8] + b"\0\0\0\0" + b[12:], "sample rate"),
        (lambda b: b + b"\x01", "not whole int16 samples"),
        (lambda b: b[:16], "not whole int16 samples"),
    ],
)
def test_each_header_fault_is_named(mangle, message):
    good = signalfile.encode(Signal(rate=12000, scale_exp=-14, codes=np.arange(8, dtype="<i2")))
    with pytest.raises(SignalFileError, match=message):
        signalfile.decode(mangle(good))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=200),
)
def test_quantize_is_exact_minimal_and_within_half_a_step(values):
    x = np.array(values)
    q = signalfile.quantize(x)
    step = 2.0 ** q.scale_exp
    back = np.ldexp(q.codes.astype(np.float64), q.scale_exp)
    assert np.all(np.abs(back - x) <= step / 2 + 1e-15)
    peak = np.abs(x).max()
    if peak > 0:
        assert peak / step <= 32767  # no clipping
        if q.scale_exp > -128:  # the finest step the format holds
            assert peak / (step / 2) > 32767  # and no finer step would do


def _fake_cwru(tmp_path: Path, name: str, n: int, rate_note: int) -> np.ndarray:
    rng = np.random.default_rng(rate_note)
    t = np.arange(n) / rate_note
    x = 0.3 * np.sin(2 * np.pi * 160 * t) + 0.05 * rng.standard_normal(n)
    num = Path(name).stem
    scipy.io.savemat(tmp_path / name, {f"X{int(num):03d}_DE_time": x[:, None], f"X{num}RPM": 1796})
    return x


def test_convert_12k_file_matches_numpy(tmp_path):
    x = _fake_cwru(tmp_path, "105.mat", 6000, 12000)
    r = aiot("data", "convert", str(tmp_path / "105.mat"), "-o", str(tmp_path / "a.i16"))
    assert r.returncode == 0, r.stderr
    sig = signalfile.read(tmp_path / "a.i16")
    assert sig.rate == 12000 and len(sig.codes) == 6000
    assert np.max(np.abs(sig.values - x)) <= 2.0**sig.scale_exp / 2


def test_convert_48k_baseline_is_decimated_with_fir(tmp_path):
    x = _fake_cwru(tmp_path, "97.mat", 48000, 48000)
    r = aiot("data", "convert", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
             "--seconds", "0.5")
    assert r.returncode == 0, r.stderr
    sig = signalfile.read(tmp_path / "out" / "97.i16")
    expect = scipy.signal.decimate(x, 4, ftype="fir", zero_phase=True)[:6000]
    assert sig.rate == 12000 and len(sig.codes) == 6000
    assert np.max(np.abs(sig.values - expect)) <= 2.0**sig.scale_exp / 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope.mat"], "no such file"),
        (["--data", "."], "no .mat files"),
        ([], "give either one FILE.mat or --data DIR"),
        (["x.mat", "--seconds", "-1"], "must be 0 or more"),
    ],
)
def test_convert_user_mistakes_are_one_line_errors(tmp_path, args, message):
    r = aiot("data", "convert", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.i16"))


def test_convert_garbage_mat_leaves_existing_output_intact(tmp_path):
    (tmp_path / "105.mat").write_bytes(b"MATLAB? no" * 50)
    out = tmp_path / "keep.i16"
    out.write_bytes(b"precious")
    r = aiot("data", "convert", str(tmp_path / "105.mat"), "-o", str(out))
    assert r.returncode == 2 and "not a readable MATLAB file" in r.stderr
    assert out.read_bytes() == b"precious"


def test_shipped_excerpts_are_valid_and_two_seconds_at_12k():
    files = {p.stem: p for p in paths.replay_files()}
    assert set(files) == set(EXCERPTS)
    for p in files.values():
        sig = signalfile.read(p)
        assert sig.rate == 12000 and len(sig.codes) == 24000
        assert np.abs(sig.codes).max() > 16384  # the step is the finest that does not clip


@pytest.mark.skipif(not CWRU.is_dir(), reason="full CWRU recordings (../shared) not present")
@pytest.mark.parametrize("stem", sorted(EXCERPTS))
def test_shipped_excerpts_match_the_full_recordings(stem):
    num = EXCERPTS[stem]
    mat = scipy.io.loadmat(CWRU / f"{num}.mat")
    x = mat[f"X{num:03d}_DE_time"].ravel()
    if num == 97:
        x = scipy.signal.decimate(x, 4, ftype="fir", zero_phase=True)
    sig = signalfile.read(paths.replay_dir() / f"{stem}.i16")
    assert np.max(np.abs(sig.values - x[: len(sig.codes)])) <= 2.0**sig.scale_exp / 2


@pytest.mark.parametrize("peak", [5e-324, 1e-310, 2.0**-20, 1.0, 32767.0, 32767.5, 65534.0])
def test_scale_exponent_is_the_finest_that_does_not_clip_even_for_subnormal_peaks(peak):
    import math

    e = signalfile.scale_exponent(peak)
    assert math.ldexp(peak, -e) <= 32767
    assert e == -128 or 32767 < math.ldexp(peak, 1 - e)
    assert e > -128 or peak < 2.0**-113  # 32767 * 2**-128
