"""Train, quantize and export the bearing models from the CWRU recordings.

    train(data_dir, out_dir)  ->  out_dir/bearing-fault/{model.tflite, card.json, README.md}
                                  out_dir/bearing-anomaly/{...}

1. features: firmware/dsp/features.py under MicroPython (featurize.py), default spec;
2. time split (dataset.py): first 70 % of each recording trains, the last 30 % tests,
   108.mat is held out entirely;
3. per-feature int8 input map fitted on the training windows (inputq.py);
4. float MLP in numpy (nn.py), fixed seeds: the same data gives the same weights;
5. int8 post-training quantization on the training windows (quant.py), export (export.py);
6. every metric from the exported .tflite run by tflite-micro (evaluate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiotkit.models import dataset
from aiotkit.models.errors import ModelError

VERSION = "1.0.0"

# "mean" is the accelerometer's DC offset (bias, gravity, mounting), not the bearing's
EXCLUDE = ("mean",)

CLASSIFIER = {"name": "bearing-fault", "hidden": [32, 16], "epochs": 150, "batch": 64,
              "lr": 2e-3, "l2": 1e-4, "seed": 1, "margin": 0.1}
ANOMALY = {"name": "bearing-anomaly", "hidden": [8, 3, 8], "epochs": 300, "batch": 32,
           "lr": 2e-3, "l2": 1e-4, "seed": 2, "margin": 0.25, "threshold_factor": 1.5}

_INPUT_DEF = (
    "Input tensor `features`: int8 [1, {n}], scale 1/128, zero point 0. Input j is "
    "extractor output `index` (firmware/dsp/features.py, `Extractor.names` order) mapped to "
    "int8 with integers only: p = unit power (0 for 1/count/Hz, 1 for code, 2 for code^2), "
    "E = the sensor's scale exponent (g = code * 2^E), n = shift - p*E, v = out * multiplier, "
    "r = (v + 2^(n-1)) >> n if n > 0 else v << -n, q = clamp(r + zero_point, -128, 127). "
    "That is q = clamp(round(x / step) + zero_point) with x the output in physical units "
    "(g, g^2, Hz, 1, count) and step = 2^(shift - frac) / multiplier. For a sensor whose "
    "scale is not a power of two (g = code * scale_m * 2^E), compute multiplier/shift for "
    "that sensor from `scale` (models/inputq.py for_sensor)."
)

_LIMITS_COMMON = [
    ("Trained and tested on one test rig (CWRU drive-end bearing, 6205-2RS JEM, 0 hp, "
    "about 1797 rpm; 108.mat adds 3 hp / 1721 rpm): amplitude features (rms, peak, band and "
    "envelope energies in g, g^2) are specific to this machine and sensor mounting."),
    ("The normal class comes from one recording (97.mat, 5 s after decimation to 12 kHz, "
    "recorded with a different quantisation step): the test set holds few normal windows."),
    ("Test windows overlap within the test part (hop 512) but never cross the time split; "
    "training windows (hop 256) come only from the first 70 % of each recording."),
]


def _say(progress, msg):
    if progress:
        progress(msg)


def _features(data_dir, spec, limit, progress):
    def feat_progress(part):
        return (lambda done, total: _say(progress, f"features ({part}): {done}/{total} windows"))

    recs = dataset.load(Path(data_dir),
                        progress=lambda i, n, what: _say(progress, f"[{i}/{n}] {what}"))
    tr = dataset.windows(recs, spec, "train", limit=limit, progress=feat_progress("train"))
    te = dataset.windows(recs, spec, "test", limit=limit, progress=feat_progress("test"))
    sh = dataset.windows(recs, spec, "shift", limit=limit, progress=feat_progress("108"))
    return recs, tr, te, sh


def _base_card(kind, cfg, spec, names, inputs, recs, tr, te, sh, limit):
    return {
        "format": "aiotkit-model-card",
        "card_version": 1,
        "name": cfg["name"],
        "version": VERSION,
        "kind": kind,
        "summary": "",
        "model": {"file": "model.tflite", "sha256": "", "bytes": 0, "graph": ""},
        "feature_spec": spec,
        "rate": spec["rate"],
        "window": spec["window"],
        "feature_names": names,
        "input": {
            "tensor": {"name": "features", "shape": [1, len(inputs)], "dtype": "int8",
                       "scale": 1.0 / 128, "zero_point": 0},
            "definition": _INPUT_DEF.format(n=len(inputs)),
            "features": inputs,
        },
        "output": {},
        "training": {
            "data": {f"{r.number}.mat": {"label": r.label, "role": r.role,
                                         "sha256": r.sha256, "scale_exp": r.scale_exp,
                                         "samples_12k": len(r.codes)} for r in recs},
            "split": {"train_fraction": dataset.TRAIN_FRACTION, "train_hop": dataset.TRAIN_HOP,
                      "test_hop": dataset.TEST_HOP, "held_out": f"{dataset.SHIFT_FILE}.mat",
                      "windows_per_recording_limit": limit},
            "windows": {"train": len(tr), "test": len(te), "speed_shift": len(sh)},
            "config": dict(cfg),
            "summary": "",
        },
        "metrics": {},
        "limits": list(_LIMITS_COMMON),
    }


def train_classifier(spec, recs, tr, te, sh, *, cfg=CLASSIFIER, limit=None, progress=None):
    """Returns (tflite bytes, card)."""
    import numpy as np
    from aiotkit.models import card as cardmod
    from aiotkit.models import evaluate, export, inputq, nn, quant

    names = tr.names
    select = [n for n in names if n not in EXCLUDE]
    inputs = inputq.fit(tr.rows, tr.scale_exp, names, tr.formats, select, margin=cfg["margin"])
    x = inputq.quantize(tr.rows, tr.scale_exp, inputs).astype(np.float64) / 128
    y = tr.labels
    k = len(dataset.LABELS)
    counts = np.bincount(y, minlength=k)
    if (counts == 0).any():
        raise ModelError("the training set lacks a class: "
                         + ", ".join(dataset.LABELS[c] for c in range(k) if not counts[c]))
    weight = len(y) / (k * counts)  # the single normal recording is the smallest class
    model = nn.MLP([len(select), *cfg["hidden"], k], cfg["seed"])
    step = max(1, cfg["epochs"] // 10)
    hist = model.fit(x, nn.softmax_xent(y, k, weight), epochs=cfg["epochs"], batch=cfg["batch"],
                     lr=cfg["lr"], l2=cfg["l2"], seed=cfg["seed"],
                     progress=lambda e, n, loss: e % step == 0 and _say(
                         progress, f"{cfg['name']}: epoch {e}/{n}, loss {loss:.4f}"))
    qm = quant.quantize(model, x, softmax=True)
    meta = {"kind": "classifier", "labels": list(dataset.LABELS), "feature_spec": spec,
            "inputs": _node_inputs(inputs)}
    blob = export.to_tflite(qm, description=f"aiotkit {cfg['name']} {VERSION}", meta=meta)
    card = _base_card("classifier", cfg, spec, names, inputs, recs, tr, te, sh, limit)
    sizes = " -> ".join(str(s) for s in [len(select), *cfg["hidden"], k])
    card["summary"] = ("Bearing fault classifier (normal / inner race / outer race / ball) "
                       "for the CWRU drive-end bearing, from the node's default features.")
    card["model"]["graph"] = (f"FULLY_CONNECTED {sizes} (RELU between), SOFTMAX; int8, "
                              "weights per-channel")
    card["output"] = {
        "tensor": {"name": "probabilities", "shape": [1, k], "dtype": "int8",
                   "scale": 1.0 / 256, "zero_point": -128},
        "labels": list(dataset.LABELS),
        "meaning": ("Class probabilities, real p = (q + 128) / 256, in the order of `labels`. "
                    "Decision: the label of the largest q (the first one on ties); "
                    "confidence (q + 128) / 256."),
    }
    card["training"]["summary"] = (
        f"{len(tr)} windows (hop {dataset.TRAIN_HOP}) from the first "
        f"{dataset.TRAIN_FRACTION:.0%} of 97, 105, 209, 130, 234, 118, 222; class-weighted "
        f"softmax cross-entropy, Adam, {cfg['epochs']} epochs, seed {cfg['seed']}; final "
        f"training loss {hist[-1]:.4f}; int8 calibration on the training windows")
    card["limits"].append("Ball faults are the weakest class in this dataset (Smith & Randall "
                          "2015); the two ball recordings separate here mostly by amplitude.")
    _say(progress, f"{cfg['name']}: evaluating the int8 model with tflite-micro")
    card["training_distribution"] = cardmod.training_distribution(
        tr.rows, tr.scale_exp, inputs, tr.labels, dataset.LABELS)
    card["metrics"] = evaluate.classifier_metrics(blob, card, te, sh)
    return blob, card


def _node_inputs(inputs):
    keys = ("name", "index", "unit_power", "multiplier", "shift", "zero_point")
    return [{k: d[k] for k in keys} for d in inputs]


def train_anomaly(spec, recs, tr, te, sh, *, cfg=ANOMALY, limit=None, progress=None):
    """Autoencoder on normal training windows only. Returns (tflite bytes, card)."""
    import math

    import numpy as np
    from aiotkit.models import card as cardmod
    from aiotkit.models import evaluate, export, inputq, nn, quant

    names = tr.names
    select = [n for n in names if n not in EXCLUDE]
    normal = tr.subset(tr.labels == dataset.LABELS.index("normal"))
    if not len(normal):
        raise ModelError("no normal training windows (97.mat)")
    inputs = inputq.fit(normal.rows, normal.scale_exp, names, tr.formats, select,
                        margin=cfg["margin"])
    x = inputq.quantize(normal.rows, normal.scale_exp, inputs).astype(np.float64) / 128
    model = nn.MLP([len(select), *cfg["hidden"], len(select)], cfg["seed"])
    step = max(1, cfg["epochs"] // 10)
    hist = model.fit(x, nn.mse(x), epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"],
                     l2=cfg["l2"], seed=cfg["seed"],
                     progress=lambda e, n, loss: e % step == 0 and _say(
                         progress, f"{cfg['name']}: epoch {e}/{n}, loss {loss:.4f}"))
    qm = quant.quantize(model, x, softmax=False, out_like_input=True)
    card = _base_card("anomaly", cfg, spec, names, inputs, recs, tr, te, sh, limit)
    # threshold from the normal training windows only, through the int8 model itself
    blob0 = export.to_tflite(qm, description="calibration")
    train_scores = evaluate.anomaly_scores(blob0, inputs, normal.rows, normal.scale_exp)
    thr = math.ceil(cfg["threshold_factor"] * int(train_scores.max()))
    meta = {"kind": "anomaly", "feature_spec": spec, "inputs": _node_inputs(inputs),
            "threshold": thr, "score": "sum_j (out_j - in_j)^2"}
    blob = export.to_tflite(qm, description=f"aiotkit {cfg['name']} {VERSION}", meta=meta)
    sizes = " -> ".join(str(s) for s in [len(select), *cfg["hidden"], len(select)])
    card["summary"] = ("Bearing anomaly detector: an int8 fully connected autoencoder trained "
                       "on normal windows only (97.mat); its reconstruction error is the "
                       "anomaly score.")
    card["model"]["graph"] = f"FULLY_CONNECTED {sizes} (RELU between, last linear); int8"
    card["output"] = {
        "tensor": {"name": "reconstruction", "shape": [1, len(select)], "dtype": "int8",
                   "scale": 1.0 / 128, "zero_point": 0},
        "meaning": ("Reconstruction of the int8 input, in the input's quantization (scale "
                    "1/128, zero point 0). Anomaly score (an integer): "
                    "sum over j of (out_j - in_j)^2 in int8 codes; anomalous when the score "
                    "is above `threshold`."),
        "score": "sum_j (out_j - in_j)^2",
        "threshold": thr,
        "threshold_rule": (f"{cfg['threshold_factor']} x the largest score of the int8 model "
                           f"on the normal training windows ({int(train_scores.max())}), "
                           "rounded up; chosen without looking at any test or fault window."),
    }
    card["training"]["summary"] = (
        f"{len(normal)} normal windows (hop {dataset.TRAIN_HOP}) from the first "
        f"{dataset.TRAIN_FRACTION:.0%} of 97.mat; input map fitted on them (0.5-99.5 "
        f"percentile range widened by {cfg['margin']:.0%} each side, so unseen values "
        f"saturate); mean squared error, Adam, {cfg['epochs']} epochs, seed {cfg['seed']}; "
        f"final training loss {hist[-1]:.4f}")
    card["limits"].append(
        "With one normal recording the autoencoder learns little structure beyond the normal "
        "operating point: the score is in effect a distance from it. A new machine needs its "
        "own normal data (and threshold).")
    _say(progress, f"{cfg['name']}: evaluating the int8 model with tflite-micro")
    card["training_distribution"] = cardmod.training_distribution(
        normal.rows, normal.scale_exp, inputs)
    card["metrics"] = evaluate.anomaly_metrics(blob, card, te, sh)
    return blob, card


def train(data_dir, out_dir, *, limit=None, epochs=None, progress=None) -> list[dict]:
    """Train both models into out_dir; returns their cards. `limit` (windows per recording)
    and `epochs` shorten a run (tests); the shipped models use neither."""
    from aiotkit.models import card as cardmod
    from aiotkit.models import featurize

    spec = featurize.default_spec()
    recs, tr, te, sh = _features(data_dir, spec, limit, progress)
    cards = []
    for fn, cfg in ((train_classifier, CLASSIFIER), (train_anomaly, ANOMALY)):
        c: dict[str, Any] = dict(cfg)
        if epochs is not None:
            c["epochs"] = epochs
        blob, card = fn(spec, recs, tr, te, sh, cfg=c, limit=limit, progress=progress)
        cardmod.write(Path(out_dir) / c["name"], blob, card)
        _say(progress, f"wrote {Path(out_dir) / c['name']}")
        cards.append(card)
    return cards


def refresh_distribution(data_dir, model_dirs, *, progress=None) -> None:
    """Recompute the ``training_distribution`` of existing model cards from the training
    windows they were trained on (the card's own feature spec and input map) and rewrite
    card.json and README.md only: model.tflite is not touched."""
    import json

    from aiotkit.models import card as cardmod

    recs = dataset.load(Path(data_dir),
                        progress=lambda i, n, what: _say(progress, f"[{i}/{n}] {what}"))
    for d in model_dirs:
        card = json.loads((Path(d) / "card.json").read_text())
        limit = card["training"]["split"].get("windows_per_recording_limit")
        tr = dataset.windows(recs, card["feature_spec"], "train", limit=limit)
        inputs = card["input"]["features"]
        if card["kind"] == "classifier":
            dist = cardmod.training_distribution(tr.rows, tr.scale_exp, inputs, tr.labels,
                                                 dataset.LABELS)
        else:
            normal = tr.subset(tr.labels == dataset.LABELS.index("normal"))
            dist = cardmod.training_distribution(normal.rows, normal.scale_exp, inputs)
        card["training_distribution"] = dist
        cardmod.write_card(Path(d), card)
        _say(progress, f"wrote {Path(d) / 'card.json'}")
