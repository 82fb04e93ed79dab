"""Model cards: card.json (machine-readable) and README.md (the same, for people),
written beside model.tflite. Files are replaced atomically (temp file + os.replace)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CARD_FORMAT = "aiotkit-model-card"
CARD_VERSION = 1


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def dumps(card: dict) -> str:
    return json.dumps(card, indent=1, sort_keys=False) + "\n"


def write(model_dir: Path, blob: bytes, card: dict) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    card["model"]["sha256"] = hashlib.sha256(blob).hexdigest()
    card["model"]["bytes"] = len(blob)
    _atomic_write(model_dir / card["model"]["file"], blob)
    _atomic_write(model_dir / "card.json", dumps(card).encode())
    _atomic_write(model_dir / "README.md", readme(card).encode())


def write_card(model_dir: Path, card: dict) -> None:
    """Rewrite card.json and README.md only (the model file stays as it is)."""
    model_dir = Path(model_dir)
    _atomic_write(model_dir / "card.json", dumps(card).encode())
    _atomic_write(model_dir / "README.md", readme(card).encode())


DISTRIBUTION_DEF = (
    "Each model input's values on the training windows, in physical units (x = out * "
    "2^(p*E - frac): g, g^2, Hz, 1, count; what a node sends in object 33001), as a "
    "histogram of equal-frequency bins (models/psi.py): `edges` are the training minimum, "
    "the inner cut points and the maximum, `counts` the windows per bin; a live value "
    "below the first or above the last edge counts in the end bin. `by_label`: the same "
    "bins counted per class. The gateway's drift monitor compares a node's recent windows "
    "with these counts by the population stability index (gateway/analytics/drift.py).")


def training_distribution(rows, exps, inputs, labels=None, label_names=None) -> dict:
    """The card's ``training_distribution``: per model input (``inputs``, the card's
    input map), the histogram of its physical values over the training rows (int32
    feature rows, each with its scale exponent), and per class when ``labels`` (an index
    into ``label_names`` per row) is given."""
    from aiotkit.models import psi

    feats = []
    for d in inputs:
        xs = [psi.physical(int(r[d["index"]]), d["frac"], d["unit_power"], int(e))
              for r, e in zip(rows, exps)]
        h = psi.histogram(xs)
        f = {"name": d["name"], "index": d["index"], "unit": d["unit"],
             "unit_power": d["unit_power"], "frac": d["frac"], **h}
        if labels is not None and label_names is not None:
            by: dict[str, list[int]] = {}
            for x, y in zip(xs, labels):
                c = by.setdefault(label_names[int(y)], [0] * len(h["counts"]))
                c[psi.bin_index(h["edges"], x)] += 1
            f["by_label"] = by
        feats.append(f)
    return {"definition": DISTRIBUTION_DEF, "windows": len(rows), "bins": psi.BINS,
            "features": feats}


def _distribution_table(card: dict) -> list[str]:
    dist = card.get("training_distribution")
    if not dist:
        return []
    out = ["## Training distribution", "",
           (f"Per input, over the {dist['windows']} training windows (physical units; "
            "card.json `training_distribution` holds the histograms the gateway's drift "
            "monitor compares live data with):"), "",
           "| input | unit | min | median bin | max | bins |", "|---|---|---|---|---|---|"]
    for f in dist["features"]:
        e, c = f["edges"], f["counts"]
        half, acc, mid = sum(c) / 2, 0, 0
        for i, n in enumerate(c):
            acc += n
            if acc >= half:
                mid = i
                break
        unit = {0: f["unit"], 1: "g", 2: "g^2"}[f["unit_power"]]
        out.append(f"| {f['name']} | {unit} | {e[0]:.6g} | {e[mid]:.6g} .. "
                   f"{e[mid + 1]:.6g} | {e[-1]:.6g} | {len(c)} |")
    return out + [""]


def _feature_table(card: dict) -> list[str]:
    lines = ["| # | output (index) | unit | multiplier | shift | zero point | step (physical) |",
             "|---|---|---|---|---|---|---|"]
    units = {0: "", 1: " g", 2: " g^2"}
    for j, d in enumerate(card["input"]["features"]):
        u = d["unit"] if d["unit_power"] == 0 else units[d["unit_power"]].strip()
        lines.append(f"| {j} | {d['name']} ({d['index']}) | {u} | {d['multiplier']} | "
                     f"{d['shift']} | {d['zero_point']} | {d['scale']:.6g} |")
    return lines


def readme(card: dict) -> str:
    m = card["metrics"]
    out = [f"# {card['name']} {card['version']}", "", card["summary"], "",
           (f"- file: `{card['model']['file']}`, {card['model']['bytes']} bytes, sha256 "
           f"`{card['model']['sha256']}`"),
           f"- graph: {card['model']['graph']}",
           (f"- features: firmware/dsp/features.py with the spec in card.json (`feature_spec`), "
           f"{card['rate']} Hz, windows of {card['window']} samples"),
           f"- training: {card['training']['summary']}",
           "", "## Input", "", card["input"]["definition"], ""]
    out += _feature_table(card)
    out += ["", "## Output", "", card["output"]["meaning"], ""]
    if card["kind"] == "classifier":
        t = m["test"]
        labels = card["output"]["labels"]
        out += ["## Metrics (int8 model, tflite-micro)", "",
                (f"Time-split test set ({t['windows']} windows, the last 30 % of each "
                f"recording): macro F1 **{t['macro_f1']}**, accuracy {t['accuracy']}."), "",
                "| class | precision | recall | F1 | windows |", "|---|---|---|---|---|"]
        for name in labels:
            p = t["per_class"][name]
            out.append(f"| {name} | {p['precision']} | {p['recall']} | {p['f1']} | "
                       f"{p['support']} |")
        out += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for name, row in zip(labels, t["confusion"]["matrix"]):
            out.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        s = m["speed_shift"]
        out += ["", (f"Held-out speed shift {s['file']} (inner race, 3 hp, 1721 rpm; never "
                f"used in training): {s['fraction_inner_race']:.1%} of {s['windows']} windows "
                f"classified as inner race ({s['predicted']}).")]
    else:
        t = m["test"]
        out += ["## Metrics (int8 model, tflite-micro)", "",
                f"Threshold {card['output']['threshold']}: {card['output']['threshold_rule']}",
                "", "| test windows | windows | flagged | rate | score min / median / max |",
                "|---|---|---|---|---|"]
        for name, p in t["per_class"].items():
            out.append(f"| {name} | {p['windows']} | {p['flagged']} | {p['rate']} | "
                       f"{p['score_min']} / {p['score_median']} / {p['score_max']} |")
        s = m["speed_shift"]
        out += ["", (f"False positive rate (normal test windows): {t['false_positive_rate']}; "
                f"detection rate (fault test windows): {t['detection_rate']}."),
                (f"Held-out {s['file']}: {s['flagged']} of {s['windows']} windows flagged "
                f"(rate {s['rate']}).")]
    out += [""] + _distribution_table(card)
    out += ["## Limits", ""] + [f"- {x}" for x in card["limits"]]
    out += ["", ("Reproduce: `aiot model train --data DIR --out DIR`; check: "
            f"`aiot model evaluate models/{card['name']} --data DIR`."), ""]
    return "\n".join(out)
