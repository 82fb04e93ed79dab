"""Metrics written into model cards and recomputed by ``aiot model evaluate``.

Pure functions over integer arrays; floats are rounded to 6 decimals so a card's numbers
compare exactly with a recomputation.
"""

from __future__ import annotations


def _r(x: float) -> float:
    return round(float(x), 6)


def classification(y_true, y_pred, labels) -> dict:
    """Confusion matrix (rows: true label, columns: predicted), per-class precision,
    recall and F1, macro F1 and accuracy."""
    import numpy as np

    k = len(labels)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    per = {}
    f1s = []
    for c, name in enumerate(labels):
        tp = cm[c, c]
        pp, ap = cm[:, c].sum(), cm[c, :].sum()
        prec = tp / pp if pp else 0.0
        rec = tp / ap if ap else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        per[name] = {"precision": _r(prec), "recall": _r(rec), "f1": _r(f1), "support": int(ap)}
    return {
        "windows": int(cm.sum()),
        "accuracy": _r(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": _r(sum(f1s) / k),
        "per_class": per,
        "confusion": {"rows": "true label", "columns": "predicted label",
                      "labels": list(labels), "matrix": cm.tolist()},
    }


def fraction(y_pred, label_index: int, labels) -> dict:
    """How a set of windows of one known class was classified."""
    import numpy as np

    y = np.asarray(y_pred)
    counts = {name: int((y == c).sum()) for c, name in enumerate(labels)}
    return {"windows": len(y), "predicted": counts,
            "fraction_" + labels[label_index]: _r((y == label_index).mean() if len(y) else 0.0)}


def anomaly(scores, flagged_label, files, threshold: int, labels) -> dict:
    """Per true label (and per file): windows, flagged (score > threshold), the rate."""
    import numpy as np

    s = np.asarray(scores)
    lab = np.asarray(flagged_label)
    out = {}
    for c, name in enumerate(labels):
        m = lab == c
        if not m.any():
            continue
        out[name] = {"windows": int(m.sum()), "flagged": int((s[m] > threshold).sum()),
                     "rate": _r((s[m] > threshold).mean()),
                     "score_min": int(s[m].min()), "score_median": _r(np.median(s[m])),
                     "score_max": int(s[m].max())}
    return out
