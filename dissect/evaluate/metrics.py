"""How well an explanation predicts a unit: the metrics of the unified evaluation framework.

Oikarinen, Yan & Weng, "Evaluating Neuron Explanations: A Unified Framework with Sanity
Checks" (ICML 2025) write every evaluation as a similarity between two vectors over the
scored images: the unit's activation ``a`` and the presence ``c`` of its explanation.
Only five of the eighteen metrics in use pass their two sanity tests: correlation,
cosine, AUPRC, F1 and IoU. They are here, with AUC, recall and precision for the
sanity report (the last three fail a test: see :mod:`dissect.sanity`).

Every kernel takes ``acts`` [N, U] (U units on N images) and ``presence`` [N, U] (the
presence in [0, 1] of unit u's explanation on the same images) and scores column u of
one against column u of the other, all units at once: ``(U,)`` float64. Pure tensor
code; nothing here reads a file.

Conventions follow the framework, where the unit is the ground truth and the
explanation the prediction:

* a unit is *active* on the top-α fraction of the images: ``a >= v_k`` with ``v_k``
  its k-th largest activation, ``k = ceil(α N)`` (ties at the cutoff count as active);
* a concept is *present* where ``c >= 0.5``;
* recall = |active ∧ present| / |active|, precision = |active ∧ present| / |present|;
* AUPRC is the average precision of ranking the images by ``c`` to retrieve the
  active ones (a step function; tied presence values form one threshold);
* AUC is the probability that an active image has higher presence than an inactive
  one (ties count one half).

Undefined values are NaN, never 0: correlation of a constant vector, cosine of a zero
vector, precision of an explanation that is never present, AUC with no inactive image.
"""

from __future__ import annotations

import math

import torch

#: The framework's default top fraction for hidden layers (its ResNet layer4 settings).
DEFAULT_ALPHA = 0.005
#: Metrics that pass both sanity tests (the framework's result, and ours: dissect.sanity).
RELIABLE = ("correlation", "cosine", "auprc", "f1", "iou")
#: Every metric this module computes, in table order.
METRICS = ("correlation", "cosine", "auprc", "f1", "iou", "auc", "recall", "precision")
#: Metrics that look at the unit binarised at its top-α fraction.
BINARISED = ("auprc", "f1", "iou", "auc", "recall", "precision")


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _check(acts: torch.Tensor, presence: torch.Tensor) -> None:
    if acts.ndim != 2 or acts.shape != presence.shape:
        raise ValueError(f"acts and presence must both be [N, U], got {tuple(acts.shape)} and {tuple(presence.shape)}")


def _cosine64(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Column-wise cosine of two float64 [N, U] tensors; NaN where either column is all zeros."""
    den = a.norm(dim=0) * c.norm(dim=0)
    out = (a * c).sum(dim=0) / den
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


def _correlation64(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Column-wise Pearson r of two float64 [N, U] tensors (the cosine of the centred columns)."""
    return _cosine64(a - a.mean(dim=0, keepdim=True), c - c.mean(dim=0, keepdim=True))


def correlation(acts: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each unit with its explanation's presence: the simulation score."""
    _check(acts, presence)
    return _correlation64(_f64(acts), _f64(presence))


def cosine(acts: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Cosine of the raw (uncentred) activation and presence vectors."""
    _check(acts, presence)
    return _cosine64(_f64(acts), _f64(presence))


def active(acts: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """[N, U] bool: the images on which each unit is in its top-α fraction (ties at the cutoff included).

    ``alpha`` None: the activations are already binary (active where ≥ 0.5), as the
    framework's synthetic sanity setting passes them (its ``alpha=False``)."""
    if alpha is None:
        return acts >= 0.5
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    n = acts.shape[0]
    k = min(n, max(1, math.ceil(alpha * n)))
    cutoff = torch.topk(acts, k, dim=0).values[-1:]
    return acts >= cutoff


def present(presence: torch.Tensor) -> torch.Tensor:
    return presence >= 0.5


def _counts(act: torch.Tensor, pres: torch.Tensor):
    a, p = _f64(act), _f64(pres)
    tp = (a * p).sum(dim=0)
    return tp, a.sum(dim=0), p.sum(dim=0)


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    out = num / den.clamp_min(1e-300)
    return torch.where(den > 0, out, torch.full_like(out, math.nan))


def recall(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """Share of the unit's active images on which the explanation is present."""
    tp, n_act, _ = _counts(active(acts, alpha), present(presence))
    return _div(tp, n_act)


def precision(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """Share of the images with the explanation present on which the unit is active."""
    tp, _, n_pres = _counts(active(acts, alpha), present(presence))
    return _div(tp, n_pres)


def f1(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """2 TP / (2 TP + FP + FN) = 2 TP / (|active| + |present|)."""
    tp, n_act, n_pres = _counts(active(acts, alpha), present(presence))
    return _div(2 * tp, n_act + n_pres)


def iou(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """|active ∧ present| / |active ∨ present|."""
    tp, n_act, n_pres = _counts(active(acts, alpha), present(presence))
    return _div(tp, n_act + n_pres - tp)


def _sorted_groups(scores: torch.Tensor):
    """Sort each column descending (working on the transpose: rows sort much faster); per sorted
    position the index of the first and of the last position holding the same value (tie groups).
    All three are [U, N]."""
    rows = scores.T.contiguous()
    n = rows.shape[1]
    vals, order = torch.sort(rows, dim=1, descending=True, stable=True)
    pos = torch.arange(n, device=scores.device).expand_as(vals)
    new = torch.ones_like(vals, dtype=torch.bool)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]
    last = torch.ones_like(vals, dtype=torch.bool)
    last[:, :-1] = new[:, 1:]
    first_idx = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), dim=1).values
    end = torch.where(last, pos, torch.full_like(pos, n))
    last_idx = torch.flip(torch.cummin(torch.flip(end, dims=[1]), dim=1).values, dims=[1])
    return order, first_idx, last_idx


def auprc(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """Average precision of the presence as a ranking of the unit's active images.

    AP = Σ over thresholds (R_t - R_{t-1}) P_t, thresholds at the distinct presence
    values: each active image contributes the precision at the end of its tie group.
    """
    _check(acts, presence)
    return _ranked(_f64(active(acts, alpha)), _sorted_groups(_f64(presence)))[0]


def auc(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """ROC AUC of the presence for the unit's active images (Mann-Whitney U, ties one half)."""
    _check(acts, presence)
    return _ranked(_f64(active(acts, alpha)), _sorted_groups(_f64(presence)))[1]


def _ranked(target: torch.Tensor, groups) -> tuple[torch.Tensor, torch.Tensor]:
    """(AUPRC, AUC) of the binary ``target`` [N, U] ranked by the presence whose sort is ``groups``."""
    order, first_idx, last_idx = groups
    n = target.shape[0]
    t = torch.gather(target.T.contiguous(), 1, order)                  # [U, N], in presence order
    n_pos = t.sum(dim=1)
    tp_at = torch.cumsum(t, dim=1)
    prec_end = torch.gather(tp_at, 1, last_idx) / (last_idx + 1).to(torch.float64)
    ap = _div((t * prec_end).sum(dim=1), n_pos)
    # descending position p has ascending rank n - p (1-based); a tie group shares its mean
    rank = n - (first_idx + last_idx).to(torch.float64) / 2
    u = (t * rank).sum(dim=1) - n_pos * (n_pos + 1) / 2
    return ap, _div(u, n_pos * (n - n_pos))


def _ranked_sparse(acts, act, presence, distinct, index, alpha):
    """(AUPRC, AUC) from the active images alone, or None when too many images are active.

    With k = ⌈αN⌉ active images per unit, AUPRC and AUC need, for each active image's
    presence v, how many images have presence ≥ v, > v, and how many active ones ≥ v:
    binary searches in each label's sorted presence instead of ranking every image of every
    unit. Same definitions as ``_ranked`` (tie groups, ties one half)."""
    if alpha is None:
        return None
    n = acts.shape[0]
    n_act = act.sum(dim=0)
    k_max = int(n_act.max()) if n_act.numel() else 0
    if k_max == 0 or k_max > max(64, 4 * math.ceil(alpha * n)) or k_max * 4 > n:
        return None  # many ties at the cutoff (e.g. a ReLU unit that is mostly 0): the full ranking
    top = torch.topk(acts, k_max, dim=0).indices                        # [k, U]: every active image is in it
    valid = torch.gather(act, 0, top).T                                 # [U, k]
    v = torch.gather(_f64(presence), 0, top).T.contiguous()            # [U, k] presence of those images
    if distinct is not None:
        rows = torch.sort(_f64(distinct).T.contiguous(), dim=1).values.index_select(0, index).contiguous()
    else:
        rows = torch.sort(_f64(presence).T.contiguous(), dim=1).values  # [U, N] ascending
    lt = torch.searchsorted(rows, v, side="left").to(torch.float64)    # images with presence < v
    le = torch.searchsorted(rows, v, side="right").to(torch.float64)   # images with presence <= v
    ge = n - lt
    vv = torch.where(valid, v, torch.full_like(v, -math.inf))
    pos_sorted = torch.sort(vv, dim=1).values.contiguous()
    tp_ge = k_max - torch.searchsorted(pos_sorted, v, side="left").to(torch.float64)  # active images >= v
    w = valid.to(torch.float64)
    n_pos = n_act.to(torch.float64)
    ap = _div((w * tp_ge / ge).sum(dim=1), n_pos)
    midrank = lt + (le - lt + 1) / 2
    u = (w * midrank).sum(dim=1) - n_pos * (n_pos + 1) / 2
    return ap, _div(u, n_pos * (n - n_pos))


_FUNCTIONS = {"correlation": correlation, "cosine": cosine, "auprc": auprc, "f1": f1, "iou": iou, "auc": auc,
              "recall": recall, "precision": precision}


def metric(name: str, acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA) -> torch.Tensor:
    """One metric by name (``METRICS``); ``alpha`` is used by the binarised ones."""
    fn = _FUNCTIONS[name]
    return fn(acts, presence, alpha) if name in BINARISED else fn(acts, presence)


def score_all(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA,
              names: tuple[str, ...] = METRICS, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every metric of ``names`` for all units, each ``(U,)`` float64; the binarisation and the
    sort by presence are computed once for all of them.

    ``index`` (U,): ``presence`` [N, L] holds each distinct explanation once and unit u's is
    column ``index[u]`` (units sharing a label share its sort)."""
    groups = None
    distinct = None
    if index is not None:
        if presence.ndim != 2 or index.ndim != 1 or index.shape[0] != acts.shape[1]:
            raise ValueError("index must give one presence column per unit")
        distinct = presence
        presence = presence.index_select(1, index)
    _check(acts, presence)
    out: dict[str, torch.Tensor] = {}
    if "correlation" in names or "cosine" in names:
        a, c = _f64(acts), _f64(presence)   # converted once for both
        if "cosine" in names:
            out["cosine"] = _cosine64(a, c)
        if "correlation" in names:
            out["correlation"] = _correlation64(a, c)
        del a, c
    if any(m in BINARISED for m in names):
        act = active(acts, alpha)
        tp, n_act, n_pres = _counts(act, present(presence))
        counted = {"recall": lambda: _div(tp, n_act), "precision": lambda: _div(tp, n_pres),
                   "f1": lambda: _div(2 * tp, n_act + n_pres), "iou": lambda: _div(tp, n_act + n_pres - tp)}
        for m in names:
            if m in counted:
                out[m] = counted[m]()
        if "auprc" in names or "auc" in names:
            sparse = _ranked_sparse(acts, act, presence, distinct, index, alpha) if groups is None else None
            ap, roc = sparse if sparse is not None else \
                _ranked(_f64(act), groups if groups is not None else _sorted_groups(_f64(presence)))
            if "auprc" in names:
                out["auprc"] = ap
            if "auc" in names:
                out["auc"] = roc
    return {m: out[m] for m in names}
