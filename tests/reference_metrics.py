"""A slow float64 reference of the evaluation metrics (dissect.evaluate.metrics), from their definitions.

Plain Python over one unit at a time: for a unit with activations ``a`` (length N)
and its explanation's presence ``c``:

* correlation = Σ (a-ā)(c-c̄) / sqrt(Σ (a-ā)² Σ (c-c̄)²); NaN when either is constant
* cosine      = Σ a c / sqrt(Σ a² Σ c²); NaN when either is all zeros
* active      = a ≥ (the ⌈αN⌉-th largest a);  present = c ≥ 0.5
* recall = TP/|active|, precision = TP/|present|, F1 = 2TP/(|active|+|present|),
  IoU = TP/(|active|+|present|-TP); NaN when the denominator is 0
* AUPRC: for every distinct presence value v (thresholds, high to low) the images with
  c ≥ v are retrieved; AP = Σ_v (R_v - R_prev) · P_v
* AUC: over every (active, inactive) pair, 1 if the active image has the higher
  presence, 1/2 if equal, 0 otherwise; averaged. NaN without both kinds.

No scikit-learn: these loops are the definitions.
"""

from __future__ import annotations

import math

import numpy as np


def _col(x, u):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return [float(v) for v in np.asarray(x, dtype=np.float64)[:, u]]


def correlation(a, c):
    n = len(a)
    ma, mc = sum(a) / n, sum(c) / n
    sab = sum((x - ma) * (y - mc) for x, y in zip(a, c))
    saa = sum((x - ma) ** 2 for x in a)
    scc = sum((y - mc) ** 2 for y in c)
    return math.nan if saa == 0 or scc == 0 else sab / math.sqrt(saa * scc)


def cosine(a, c):
    saa, scc = sum(x * x for x in a), sum(y * y for y in c)
    return math.nan if saa == 0 or scc == 0 else sum(x * y for x, y in zip(a, c)) / math.sqrt(saa * scc)


def active(a, alpha):
    if alpha is None:
        return [x >= 0.5 for x in a]
    k = max(1, math.ceil(alpha * len(a)))
    cutoff = sorted(a, reverse=True)[min(k, len(a)) - 1]
    return [x >= cutoff for x in a]


def _counts(a, c, alpha):
    act, pres = active(a, alpha), [y >= 0.5 for y in c]
    tp = sum(1 for x, y in zip(act, pres) if x and y)
    return tp, sum(act), sum(pres)


def _ratio(num, den):
    return math.nan if den == 0 else num / den


def recall(a, c, alpha):
    tp, na, _ = _counts(a, c, alpha)
    return _ratio(tp, na)


def precision(a, c, alpha):
    tp, _, npres = _counts(a, c, alpha)
    return _ratio(tp, npres)


def f1(a, c, alpha):
    tp, na, npres = _counts(a, c, alpha)
    return _ratio(2 * tp, na + npres)


def iou(a, c, alpha):
    tp, na, npres = _counts(a, c, alpha)
    return _ratio(tp, na + npres - tp)


def auprc(a, c, alpha):
    target = active(a, alpha)
    n_pos = sum(target)
    if n_pos == 0:
        return math.nan
    ap, prev_recall = 0.0, 0.0
    for v in sorted(set(c), reverse=True):
        retrieved = [i for i in range(len(c)) if c[i] >= v]
        tp = sum(1 for i in retrieved if target[i])
        rec, prec = tp / n_pos, tp / len(retrieved)
        ap += (rec - prev_recall) * prec
        prev_recall = rec
    return ap


def auc(a, c, alpha):
    target = active(a, alpha)
    pos = [c[i] for i in range(len(c)) if target[i]]
    neg = [c[i] for i in range(len(c)) if not target[i]]
    if not pos or not neg:
        return math.nan
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


_FUNCTIONS = {"correlation": correlation, "cosine": cosine, "auprc": auprc, "f1": f1, "iou": iou, "auc": auc,
              "recall": recall, "precision": precision}
_BINARISED = {"auprc", "f1", "iou", "auc", "recall", "precision"}


def reference_metric(name, acts, presence, alpha=0.005):
    """(U,) float64 list: ``name`` of unit u's activations against column u of ``presence``."""
    U = np.asarray(acts.detach().cpu() if hasattr(acts, "detach") else acts).shape[1]
    fn = _FUNCTIONS[name]
    out = []
    for u in range(U):
        a, c = _col(acts, u), _col(presence, u)
        out.append(fn(a, c, alpha) if name in _BINARISED else fn(a, c))
    return np.array(out, dtype=np.float64)
