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

The framework's other ten (Trustworthy-ML-Lab/Neuron_Eval ``metrics.py``), with the same
``active``/``present``:

* accuracy = (TP + TN)/N; balanced accuracy = (TP/|active| + TN/|inactive|)/2; inverse
  balanced accuracy = (TP/|present| + TN/|absent|)/2
* inverse AUC / AUPRC: the AUC / AUPRC above with the roles swapped (the activation ranks
  the present images)
* Spearman: the correlation of the ranks (a tie's ranks replaced by their mean)
* WPMI metric: mean over active images of log max(c, 1e-8), minus λ log mean(c)
* MAD: mean activation where present minus mean activation where absent
* correlation / Spearman on top-and-random inputs: the same on the sampled rows

``reference=True`` gives the reference code's values where dissect says NaN: its clamped
denominators make them 0 (a concept never present: WPMI +inf), and its correlation is
r (N-1)/N (it divides by N after normalising by the unbiased standard deviation).

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


def _mean(xs):
    return math.nan if not xs else sum(xs) / len(xs)


def _confusion(a, c, alpha):
    act, pres = active(a, alpha), [y >= 0.5 for y in c]
    tp = sum(1 for x, y in zip(act, pres) if x and y)
    tn = sum(1 for x, y in zip(act, pres) if not x and not y)
    return tp, tn, sum(act), sum(pres), len(a)


def _ratio_or(num, den, reference):
    return (0.0 if reference else math.nan) if den == 0 else num / den


def accuracy(a, c, alpha, reference=False):
    tp, tn, _, _, n = _confusion(a, c, alpha)
    return (tp + tn) / n


def balanced_accuracy(a, c, alpha, reference=False):
    tp, tn, na, _, n = _confusion(a, c, alpha)
    return (_ratio_or(tp, na, reference) + _ratio_or(tn, n - na, reference)) / 2


def inverse_balanced_accuracy(a, c, alpha, reference=False):
    tp, tn, _, npres, n = _confusion(a, c, alpha)
    return (_ratio_or(tp, npres, reference) + _ratio_or(tn, n - npres, reference)) / 2


def inverse_auc(a, c, reference=False):
    pos = [a[i] for i in range(len(a)) if c[i] >= 0.5]
    neg = [a[i] for i in range(len(a)) if c[i] < 0.5]
    if not pos or not neg:
        return 0.0 if reference else math.nan
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def inverse_auprc(a, c):
    target = [1.0 if y >= 0.5 else 0.0 for y in c]
    return auprc(target, a, None)   # the activation ranks the present images: the roles of AUPRC swapped


def midranks(x):
    """0-based ranks, a tie's ranks replaced by their mean."""
    return [sum(1 for y in x if y < v) + (sum(1 for y in x if y == v) - 1) / 2 for v in x]


def pearson(a, c, reference=False):
    r = correlation(a, c)
    if not reference:
        return r
    return (0.0 if math.isnan(r) else r) * (len(a) - 1) / len(a)


def spearman(a, c, reference=False):
    return pearson(midranks(a), midranks(c), reference)


def wpmi(a, c, alpha, lam=1.0, reference=False):
    act = active(a, alpha)
    logs = [math.log(max(y, 1e-8)) for x, y in zip(act, c) if x]
    mean_c = sum(c) / len(c)
    if mean_c == 0:
        return math.inf if reference else math.nan
    return (sum(logs) / len(logs) if logs else (0.0 if reference else math.nan)) - lam * math.log(mean_c)


def mad(a, c, reference=False):
    on = [x for x, y in zip(a, c) if y >= 0.5]
    off = [x for x, y in zip(a, c) if y < 0.5]
    empty = 0.0 if reference else math.nan
    return (sum(on) / len(on) if on else empty) - (sum(off) / len(off) if off else empty)


_FUNCTIONS = {"correlation": correlation, "cosine": cosine, "auprc": auprc, "f1": f1, "iou": iou, "auc": auc,
              "recall": recall, "precision": precision}
_BINARISED = {"auprc", "f1", "iou", "auc", "recall", "precision"}
#: The reference code's value where these are undefined (dissect: NaN).
_REFERENCE_ZERO = {"cosine": 0.0, "precision": 0.0, "auc": 0.0}
_NEW = {"accuracy": lambda a, c, al, ref: accuracy(a, c, al),
        "balanced-accuracy": lambda a, c, al, ref: balanced_accuracy(a, c, al, ref),
        "inverse-balanced-accuracy": lambda a, c, al, ref: inverse_balanced_accuracy(a, c, al, ref),
        "inverse-auc": lambda a, c, al, ref: inverse_auc(a, c, ref),
        "inverse-auprc": lambda a, c, al, ref: inverse_auprc(a, c),
        "spearman-correlation": lambda a, c, al, ref: spearman(a, c, ref),
        "wpmi": lambda a, c, al, ref: wpmi(a, c, al, 1.0, ref),
        "mad": lambda a, c, al, ref: mad(a, c, ref),
        "correlation": lambda a, c, al, ref: pearson(a, c, ref)}


def reference_metric(name, acts, presence, alpha=0.005, reference=False):
    """(U,) float64 list: ``name`` of unit u's activations against column u of ``presence``; ``reference``:
    the reference code's conventions for undefined values (tie-free inputs for the rank-based ones)."""
    U = np.asarray(acts.detach().cpu() if hasattr(acts, "detach") else acts).shape[1]
    out = []
    for u in range(U):
        a, c = _col(acts, u), _col(presence, u)
        if name in _NEW:
            v = _NEW[name](a, c, alpha, reference)
        else:
            fn = _FUNCTIONS[name]
            v = fn(a, c, alpha) if name in _BINARISED else fn(a, c)
            if reference and math.isnan(v) and name in _REFERENCE_ZERO:
                v = _REFERENCE_ZERO[name]
        out.append(v)
    return np.array(out, dtype=np.float64)
