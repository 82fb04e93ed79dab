"""The replay signal file (``.i16``) that the unix-sim board's accelerometer reads.

A compact, chunk-readable form of a recording, so that a node with a 64 KB heap can replay
a long signal without loading it. All fields are little-endian; the format is one table:

======  ====  ============================================================
offset  size  field
======  ====  ============================================================
0       4     magic ``b"AI16"``
4       1     version (1)
5       1     channels (1)
6       2     u16 header size (16)
8       4     u32 sample rate in Hz
12      1     i8 scale exponent E: a sample's value in g is ``code * 2**E``
13      3     reserved, zero
16      2*n   int16 samples (interleaved when channels > 1)
======  ====  ============================================================

A power-of-two scale makes ``code * 2**E`` exact in float32 and float64, so a value the
node sends equals, bit for bit, the value a test computes from the same file.
The firmware reader is ``firmware/drivers/replay.py``; this module is the host side.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiotkit.boards.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MAGIC = b"AI16"
VERSION = 1
HEADER = struct.Struct("<4sBBHIb3s")
HEADER_SIZE = HEADER.size  # 16
MAX_RATE = 1_000_000


class SignalFileError(UsageError, ValueError):
    """A signal file (or the data meant for one) is not valid; the message says why."""


@dataclass(frozen=True)
class Signal:
    rate: int
    scale_exp: int
    codes: NDArray[np.int16]  # shape (n,) for one channel

    @property
    def values(self) -> NDArray[np.float64]:
        """Samples in g (float64, exact)."""
        import numpy as np

        return np.ldexp(self.codes.astype(np.float64), self.scale_exp)

    @property
    def seconds(self) -> float:
        return len(self.codes) / self.rate


def scale_exponent(peak: float) -> int:
    """Smallest E with ``peak / 2**E <= 32767`` (finest step that does not clip), but at
    least -128, the finest step the file format holds."""
    if not math.isfinite(peak):
        raise SignalFileError("signal contains a non-finite value")
    if peak == 0.0:
        return -15
    # log2 of the ratio first (peak / 32767 underflows to 0 for subnormal peaks), then
    # exact steps with ldexp, which neither rounds nor underflows here
    e = math.ceil(math.log2(peak) - math.log2(32767.0))
    while math.ldexp(peak, -e) > 32767.0:
        e += 1
    while math.ldexp(peak, 1 - e) <= 32767.0:
        e -= 1
    return max(e, -128)


def quantize(values, scale_exp: int | None = None) -> Signal:
    """Quantise float samples (g) to int16 codes with a power-of-two step."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise SignalFileError("signal is empty")
    if not np.all(np.isfinite(x)):
        raise SignalFileError("signal contains a non-finite value")
    e = scale_exponent(float(np.abs(x).max())) if scale_exp is None else scale_exp
    codes = np.rint(np.ldexp(x, -e))
    if codes.max() > 32767 or codes.min() < -32768:
        raise SignalFileError(f"scale exponent {e} clips the signal")
    return Signal(rate=0, scale_exp=e, codes=codes.astype("<i2"))


def encode(sig: Signal) -> bytes:
    import numpy as np

    if not (0 < sig.rate <= MAX_RATE):
        raise SignalFileError(f"sample rate {sig.rate} Hz is out of range 1..{MAX_RATE}")
    if not -128 <= sig.scale_exp <= 127:
        raise SignalFileError(f"scale exponent {sig.scale_exp} does not fit in an i8")
    head = HEADER.pack(MAGIC, VERSION, 1, HEADER_SIZE, sig.rate, sig.scale_exp, b"\0\0\0")
    return head + np.asarray(sig.codes, dtype="<i2").tobytes()


def decode(data: bytes, name: str = "signal") -> Signal:
    import numpy as np

    if len(data) < HEADER_SIZE:
        raise SignalFileError(f"{name}: {len(data)} bytes is shorter than the 16-byte header")
    magic, version, channels, hsize, rate, exp, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SignalFileError(f"{name}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise SignalFileError(f"{name}: unsupported version {version}")
    if channels != 1:
        raise SignalFileError(f"{name}: {channels} channels, only 1 is supported")
    if hsize != HEADER_SIZE:
        raise SignalFileError(f"{name}: header size {hsize}, expected {HEADER_SIZE}")
    if not (0 < rate <= MAX_RATE):
        raise SignalFileError(f"{name}: sample rate {rate} Hz is out of range")
    body = len(data) - HEADER_SIZE
    if body == 0 or body % 2:
        raise SignalFileError(f"{name}: sample data of {body} bytes is not whole int16 samples")
    codes = np.frombuffer(data, dtype="<i2", offset=HEADER_SIZE)
    return Signal(rate=rate, scale_exp=exp, codes=codes)


def read(path: str | os.PathLike[str]) -> Signal:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SignalFileError(f"{p}: cannot read: {e.strerror}") from e
    return decode(data, str(p))


def write(path: str | os.PathLike, sig: Signal) -> None:
    """Write atomically: a crash leaves either the old file or the new one."""
    p = Path(path)
    blob = encode(sig)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
