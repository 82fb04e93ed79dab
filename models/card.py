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
    out += ["", "## Limits", ""] + [f"- {x}" for x in card["limits"]]
    out += ["", ("Reproduce: `aiot model train --data DIR --out DIR`; check: "
            f"`aiot model evaluate models/{card['name']} --data DIR`."), ""]
    return "\n".join(out)
