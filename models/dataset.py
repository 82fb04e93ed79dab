"""The CWRU bearing recordings as training and test windows, split by time.

Every recording is read with ``boards/replay/cwru.py`` exactly as ``aiot data convert`` makes a
replay file: the 48 kHz normal baseline (97) is decimated to 12 kHz with a zero-phase
anti-aliasing FIR, and each recording is quantised to int16 codes with its own
power-of-two step (value in g = code * 2**E). Those codes are what a simulated node reads,
so the features below are what a node computes.

Split by time, never by shuffling windows: the first ``TRAIN_FRACTION`` of each
recording's samples give the training windows (hop ``TRAIN_HOP``, overlapping), the rest
the test windows (hop ``TEST_HOP``); no window crosses the split. 108.mat (the same
inner-race fault as 105 at 3 hp and 1721 rpm) is never used for training: all its
windows are the speed-shift test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotkit.models.errors import ModelError

LABELS = ("normal", "inner_race", "outer_race", "ball")

# file number -> (label, role). role: "train" (split by time) or "shift" (held out).
RECORDINGS = {
    97: ("normal", "train"),
    105: ("inner_race", "train"),
    209: ("inner_race", "train"),
    130: ("outer_race", "train"),
    234: ("outer_race", "train"),
    118: ("ball", "train"),
    222: ("ball", "train"),
    108: ("inner_race", "shift"),
}
SHIFT_FILE = 108

TRAIN_FRACTION = 0.7
TRAIN_HOP = 256
TEST_HOP = 512
RATE = 12_000


@dataclass
class Recording:
    number: int
    label: str
    role: str
    scale_exp: int  # value in g = code * 2**scale_exp
    codes: Any  # int16 numpy array at RATE
    sha256: str


@dataclass
class Windows:
    """Feature rows of a set of windows (int32, as the node computes them)."""

    rows: Any  # int32 (n, outputs)
    labels: Any  # int (n,), index into LABELS
    files: Any  # int (n,), file number
    scale_exp: Any  # int (n,), the recording's code step exponent
    starts: Any = field(default=None)  # first sample of each window
    names: list = field(default_factory=list)  # output names (Extractor.names)
    formats: list = field(default_factory=list)  # (fractional bits, unit) per output

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, mask) -> Windows:
        return Windows(self.rows[mask], self.labels[mask], self.files[mask],
                       self.scale_exp[mask], self.starts[mask], self.names, self.formats)


def load(data_dir: Path, numbers=None, *, progress=None) -> list[Recording]:
    """Read the recordings (default: all of RECORDINGS) from a folder of CWRU .mat files."""
    from aiotkit.boards.replay import cwru

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ModelError(f"--data {data_dir}: not a folder")
    numbers = sorted(RECORDINGS) if numbers is None else list(numbers)
    missing = [f"{n}.mat" for n in numbers if not (data_dir / f"{n}.mat").is_file()]
    if missing:
        raise ModelError(f"--data {data_dir}: missing {', '.join(missing)} "
                         "(the CWRU files listed in models/README.md)")
    out = []
    for i, n in enumerate(numbers, 1):
        path = data_dir / f"{n}.mat"
        label, role = RECORDINGS[n]
        _check_variable(path, n)
        try:
            sig = cwru.convert(path, rate=RATE)
        except cwru.DataError as e:
            raise ModelError(str(e)) from e
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out.append(Recording(n, label, role, sig.scale_exp, sig.codes, digest))
        if progress:
            progress(i, len(numbers), f"read {path.name}")
    return out


def _check_variable(path: Path, number: int) -> None:
    """A CWRU file carries its own number in its variable names (X097_DE_time): a file
    renamed to another number is refused instead of training on the wrong label."""
    import scipy.io

    try:
        names = [v[0] for v in scipy.io.whosmat(str(path))]
    except Exception as e:  # scipy raises several types for a file that is not MATLAB v5
        raise ModelError(f"{path}: not a readable MATLAB file ({e})") from e
    want = f"X{number:03d}_DE_time"
    if want not in names:
        have = ", ".join(n for n in names if n.endswith("_DE_time")) or "none"
        raise ModelError(f"{path}: no {want} variable (drive-end variables: {have}); "
                         f"is it CWRU's {number}.mat?")


def split_point(n_samples: int) -> int:
    return int(n_samples * TRAIN_FRACTION)


def windows(recs: list[Recording], spec: dict, part: str, *, hop: int | None = None,
            limit: int | None = None, progress=None) -> Windows:
    """Feature rows of one part: "train" (first 70 % of the train recordings), "test"
    (the last 30 %) or "shift" (all of the held-out recording). `limit` keeps at most that
    many windows per recording (evenly spaced), for quick runs."""
    import numpy as np
    from aiotkit.models import featurize

    n = spec["window"]
    cuts, labels, files, exps, starts = [], [], [], [], []
    for r in recs:
        if (part == "shift") != (r.role == "shift"):
            continue
        sp = split_point(len(r.codes))
        if part == "train":
            lo, hi, h = 0, sp, hop or TRAIN_HOP
        elif part == "test":
            lo, hi, h = sp, len(r.codes), hop or TEST_HOP
        elif part == "shift":
            lo, hi, h = 0, len(r.codes), hop or TEST_HOP
        else:
            raise ValueError(part)
        first = np.arange(lo, hi - n + 1, h)
        if limit is not None and len(first) > limit:
            first = first[np.linspace(0, len(first) - 1, limit).round().astype(int)]
        w = _take(r.codes, first, n)
        cuts.append(w)
        labels += [LABELS.index(r.label)] * len(w)
        files += [r.number] * len(w)
        exps += [r.scale_exp] * len(w)
        starts.append(first)
    if not cuts:
        raise ModelError(f"no recordings for the {part} set")
    allw = np.concatenate(cuts)
    rows, names, formats = featurize.extract(allw, spec, progress=progress)
    return Windows(rows, np.array(labels), np.array(files), np.array(exps),
                   np.concatenate(starts), names, formats)


def _take(codes, firsts, n):
    import numpy as np

    idx = np.asarray(firsts)[:, None] + np.arange(n)[None, :]
    return np.asarray(codes, dtype=np.int16)[idx]
