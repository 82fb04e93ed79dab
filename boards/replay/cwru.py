"""Turn CWRU bearing recordings (MATLAB .mat) into replay signal files.

The CWRU files carry no sample rate. Their own documentation gives it: the normal-baseline
files 97..100 were recorded at 48 kHz, the 12k drive-end fault files at 12 kHz. Those are
the defaults here (``--in-rate`` overrides). A 48 kHz file is decimated to the target rate
with an anti-aliasing FIR (zero phase) before it is cut, so that every replayed node runs
at the same rate and a model cannot learn the sample rate instead of the bearing.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiotkit.boards.errors import UsageError
from aiotkit.boards.replay.signalfile import Signal, SignalFileError, quantize

CWRU_48K = {97, 98, 99, 100}  # normal baseline recorded at 48 kHz (CWRU data center)
DEFAULT_RATE = 12_000
CHANNELS = ("DE", "FE", "BA")


class DataError(UsageError):
    """Input data cannot be converted; the message says why (one line)."""


def _scipy():
    try:
        import scipy.io
        import scipy.signal
    except ImportError as e:
        raise DataError("converting .mat files needs scipy: pip install 'aiotkit[data]'") from e
    return scipy


def file_number(path: Path) -> int | None:
    m = re.fullmatch(r"(\d+)", path.stem)
    return int(m.group(1)) if m else None


def load_mat(path: Path, channel: str = "DE", in_rate: int | None = None):
    """Read one channel of a CWRU .mat file: (samples in g as float64, sample rate in Hz)."""
    scipy = _scipy()
    if channel not in CHANNELS:
        raise DataError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:  # scipy raises several types for a file that is not MATLAB v5
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from e
    keys = sorted(k for k in mat if k.endswith(f"_{channel}_time"))
    if not keys:
        have = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise DataError(f"{path}: no {channel} channel (*_{channel}_time); it has {have}")
    x = mat[keys[0]].astype("float64").ravel()
    if in_rate is None:
        num = file_number(path)
        in_rate = 48_000 if num in CWRU_48K else DEFAULT_RATE
    return x, in_rate


def resample(x, in_rate: int, out_rate: int):
    """Decimate by an integer factor with a zero-phase FIR anti-aliasing filter."""
    if in_rate == out_rate:
        return x
    if in_rate % out_rate:
        raise DataError(f"cannot go from {in_rate} Hz to {out_rate} Hz: not an integer factor")
    scipy = _scipy()
    return scipy.signal.decimate(x, in_rate // out_rate, ftype="fir", zero_phase=True)


def convert(
    path: Path,
    *,
    rate: int = DEFAULT_RATE,
    start_s: float = 0.0,
    seconds: float | None = None,
    channel: str = "DE",
    in_rate: int | None = None,
) -> Signal:
    """One .mat recording → a quantised Signal at ``rate``, optionally a time excerpt."""
    x, src_rate = load_mat(path, channel, in_rate)
    y = resample(x, src_rate, rate)
    first = round(start_s * rate)
    if start_s < 0 or first >= len(y):
        raise DataError(f"{path}: start {start_s} s is outside the {len(y) / rate:.2f} s recording")
    last = len(y) if seconds is None else first + round(seconds * rate)
    if seconds is not None and (seconds <= 0 or last > len(y)):
        raise DataError(
            f"{path}: {seconds} s from {start_s} s does not fit the {len(y) / rate:.2f} s recording"
        )
    try:
        q = quantize(y[first:last])
    except SignalFileError as e:
        raise DataError(f"{path}: {e}") from e
    return Signal(rate=rate, scale_exp=q.scale_exp, codes=q.codes)
