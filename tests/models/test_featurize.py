"""Training features are the node's features: the batch driver (one MicroPython process,
windows through files) gives the same int32 rows as calling Extractor.compute window by
window in a fresh MicroPython process, on windows of the shipped CWRU excerpts."""

from __future__ import annotations

import os
import subprocess

import numpy as np
from aiotkit.boards.replay import signalfile
from aiotkit.models import dataset, featurize
from plugins.services import REPO

ONE = r"""
import sys
from dsp import features
from array import array
spec = features.default_spec()
ex = features.Extractor(spec)
win = features.zeros("h", ex.window)
f = open(sys.argv[1], "rb")
f.readinto(win)
f.close()
out = array("i", bytes(4 * len(ex.names)))
ex.compute(win, out)
print(" ".join(str(v) for v in out))
"""


def _excerpt_windows(n_per_file=2):
    out = []
    for p in sorted((REPO / "boards" / "replay").glob("*.i16")):
        codes = signalfile.read(p).codes
        out.append(featurize.cut(codes, 1024, 5000)[:n_per_file])
    return np.concatenate(out)


def test_batch_equals_direct_call(default_spec, tmp_path):
    w = _excerpt_windows()
    rows, names, _ = featurize.extract(w, default_spec)
    assert rows.shape == (len(w), len(names)) and rows.dtype == np.int32
    env = dict(os.environ, MICROPYPATH=str(featurize._firmware_dir()))
    (tmp_path / "one.py").write_text(ONE)
    for i in (0, len(w) // 2, len(w) - 1):
        (tmp_path / "win.i16").write_bytes(w[i].astype("<i2").tobytes())
        proc = subprocess.run([featurize.micropython(), "-X", "heapsize=256K",
                               str(tmp_path / "one.py"), str(tmp_path / "win.i16")],
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        direct = [int(v) for v in proc.stdout.split()]
        assert rows[i].tolist() == direct


def test_batches_split_transparently(default_spec, monkeypatch):
    w = _excerpt_windows(3)
    whole, _, _ = featurize.extract(w, default_spec)
    monkeypatch.setattr(featurize, "BATCH", 5)
    parts, _, _ = featurize.extract(w, default_spec)
    assert np.array_equal(whole, parts)


def test_windows_never_cross_the_time_split():
    n = 10_000
    sp = dataset.split_point(n)
    codes = np.arange(n)  # each sample is its own index
    for part, hop in (("train", dataset.TRAIN_HOP), ("test", dataset.TEST_HOP)):
        lo, hi = (0, sp) if part == "train" else (sp, n)
        w = featurize.cut(codes, 1024, hop, lo, hi)
        assert len(w)
        firsts = w[:, 0]
        assert firsts.min() >= lo and firsts.max() + 1024 <= hi
