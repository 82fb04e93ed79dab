"""Metrics of a shipped model, recomputed from the recordings with tflite-micro.

``evaluate(model_dir, data_dir)`` reads the model card, checks the .tflite against the
card's sha256, recomputes the features of the time-split test windows and of the held-out
speed-shift recording (108.mat) under MicroPython with the card's feature spec, quantizes
them with the card's input map, runs the .tflite in the tflite-micro interpreter, and
returns the card's metrics recomputed, with the list of differences.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aiotkit.models.errors import ModelError


def read_card(model_dir: Path) -> tuple[dict, bytes]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a folder")
    cp = model_dir / "card.json"
    try:
        card = json.loads(cp.read_text())
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: no card.json (not a model folder)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{cp}: not valid JSON ({e})") from None
    if not isinstance(card, dict) or card.get("format") != "aiotkit-model-card":
        raise ModelError(f"{cp}: not an aiotkit model card")
    try:
        mfile = model_dir / card["model"]["file"]
        want = card["model"]["sha256"]
    except (KeyError, TypeError):
        raise ModelError(f"{cp}: model.file / model.sha256 missing") from None
    try:
        blob = mfile.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: {mfile.name} named by the card is missing") from None
    got = hashlib.sha256(blob).hexdigest()
    if got != want:
        raise ModelError(f"{mfile}: sha256 {got[:16]}... does not match the card's {want[:16]}...")
    return card, blob


def classifier_metrics(blob: bytes, card: dict, test, shift) -> dict:
    from aiotkit.models import dataset, inputq, metrics, tflm

    labels = card["output"]["labels"]
    inputs = card["input"]["features"]
    out = {}
    pred = tflm.run(blob, inputq.quantize(test.rows, test.scale_exp, inputs)).argmax(axis=1)
    out["test"] = metrics.classification(test.labels, pred, labels)
    ps = tflm.run(blob, inputq.quantize(shift.rows, shift.scale_exp, inputs)).argmax(axis=1)
    out["speed_shift"] = {"file": f"{dataset.SHIFT_FILE}.mat",
                          **metrics.fraction(ps, labels.index("inner_race"), labels)}
    return out


def anomaly_scores(blob: bytes, inputs, rows, exps):
    """score = sum over inputs of (reconstruction code - input code)^2 (an integer)."""
    import numpy as np
    from aiotkit.models import inputq, tflm

    q = inputq.quantize(rows, exps, inputs)
    r = tflm.run(blob, q)
    d = r.astype(np.int64) - q.astype(np.int64)
    return (d * d).sum(axis=1)


def anomaly_metrics(blob: bytes, card: dict, test, shift) -> dict:
    import numpy as np
    from aiotkit.models import dataset, metrics

    inputs = card["input"]["features"]
    thr = card["output"]["threshold"]
    st = anomaly_scores(blob, inputs, test.rows, test.scale_exp)
    ss = anomaly_scores(blob, inputs, shift.rows, shift.scale_exp)
    per = metrics.anomaly(st, test.labels, test.files, thr, dataset.LABELS)
    faults = test.labels != 0
    return {
        "test": {
            "per_class": per,
            "false_positive_rate": per["normal"]["rate"],
            "detection_rate": round(float((st[faults] > thr).mean()), 6),
        },
        "speed_shift": {"file": f"{dataset.SHIFT_FILE}.mat",
                        **metrics.anomaly(ss, np.full(len(ss), 1), shift.files, thr,
                                          dataset.LABELS)["inner_race"]},
    }


def compute(blob: bytes, card: dict, test, shift) -> dict:
    if card["kind"] == "classifier":
        return classifier_metrics(blob, card, test, shift)
    if card["kind"] == "anomaly":
        return anomaly_metrics(blob, card, test, shift)
    raise ModelError(f"card kind {card.get('kind')!r} is not classifier or anomaly")


def diff(want, got, path="metrics") -> list[str]:
    """Where two metric trees differ, as 'path: card X, now Y' lines."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got), key=str):
            if k not in got:
                out.append(f"{path}.{k}: in the card, not recomputed")
            elif k not in want:
                out.append(f"{path}.{k}: recomputed, not in the card")
            else:
                out += diff(want[k], got[k], f"{path}.{k}")
        return out
    if want != got:
        return [f"{path}: card {json.dumps(want)}, now {json.dumps(got)}"]
    return []


def evaluate(model_dir: Path, data_dir: Path, *, progress=None) -> tuple[dict, dict, list[str]]:
    """(card, recomputed metrics, differences); progress(msg) is told what happens."""
    from aiotkit.models import dataset

    card, blob = read_card(model_dir)
    spec = card["feature_spec"]
    split = card["training"]["split"]
    if (split["train_fraction"], split["test_hop"]) != (dataset.TRAIN_FRACTION,
                                                         dataset.TEST_HOP):
        raise ModelError("the card's split differs from this version's "
                         f"(train_fraction {dataset.TRAIN_FRACTION}, test_hop {dataset.TEST_HOP})")
    say = progress or (lambda msg: None)
    recs = dataset.load(Path(data_dir), progress=lambda i, n, what: say(f"[{i}/{n}] {what}"))
    trained_on = card["training"]["data"]
    for r in recs:
        want = trained_on.get(f"{r.number}.mat", {}).get("sha256")
        if want != r.sha256:
            raise ModelError(f"{r.number}.mat in {data_dir} is not the file the card was made "
                             f"with (sha256 {r.sha256[:16]}..., card {str(want)[:16]}...)")
    limit = split.get("windows_per_recording_limit")  # a quick run's card: the same subset
    test = dataset.windows(recs, spec, "test", limit=limit,
                           progress=lambda d, n: say(f"features (test): {d}/{n} windows"))
    shift = dataset.windows(recs, spec, "shift", limit=limit,
                            progress=lambda d, n: say(f"features (108): {d}/{n} windows"))
    say("running the model in tflite-micro")
    got = compute(blob, card, test, shift)
    return card, got, diff(card["metrics"], got)
