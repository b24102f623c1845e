"""How well an explanation predicts a unit: the metrics of the unified evaluation framework.

Oikarinen, Yan & Weng, "Evaluating Neuron Explanations: A Unified Framework with Sanity
Checks" (ICML 2025) write every evaluation as a similarity between two vectors over the
scored images: the unit's activation ``a`` and the presence ``c`` of its explanation.
All eighteen of its metrics are here (:data:`METRICS`, named after the functions of its
code, Trustworthy-ML-Lab/Neuron_Eval ``metrics.py``). Five pass its two sanity tests:
correlation, cosine, AUPRC, F1 and IoU (:data:`RELIABLE`; see :mod:`dissect.evaluate.sanity`).

Every kernel takes ``acts`` [N, U] (U units on N images) and ``presence`` [N, U] (the
presence in [0, 1] of unit u's explanation on the same images) and scores column u of
one against column u of the other, all units at once: ``(U,)`` float64. Pure tensor
code; nothing here reads a file.

Conventions follow the framework, where the unit is the ground truth and the
explanation the prediction:

* a unit is *active* on the top-α fraction of the images: ``a >= v_k`` with ``v_k``
  its k-th largest activation, ``k = ceil(α N)`` (ties at the cutoff count as active);
* a concept is *present* where ``c >= 0.5``;
* recall = |active ∧ present| / |active|, precision = |active ∧ present| / |present|,
  accuracy = (TP + TN) / N, balanced accuracy = (TP/|active| + TN/|inactive|) / 2,
  inverse balanced accuracy = (TP/|present| + TN/|absent|) / 2;
* AUPRC is the average precision of ranking the images by ``c`` to retrieve the
  active ones (a step function; tied presence values form one threshold); AUC is the
  probability that an active image has higher presence than an inactive one (ties one
  half); the *inverse* ones swap the roles: the activation ranks the present images;
* Spearman correlation is the Pearson correlation of the ranks; the *top-and-random*
  correlations are taken on 25 of the unit's top 0.2% inputs and 25 inputs at random;
* the WPMI *metric* is mean over active images of log max(c, 1e-8), minus λ log mean(c)
  (not CLIP-Dissect's WPMI similarity function, :mod:`dissect.similarity`);
* MAD is the mean activation where the concept is present minus where it is absent.

Where the framework's code and dissect differ, on purpose (docs/FIDELITY.md):
``conventions="dissect"`` (the default) gives NaN for an undefined value (a correlation
with a constant, a precision with nothing present, an AUC without inactive images, a
WPMI of a concept never present) and mid-ranks for ties, and the correlation is Pearson's
r; ``conventions="neuron-eval"`` reproduces the reference code: its clamped denominators
(0 where dissect says NaN, +inf for the WPMI of an absent concept), its tie-breaking noise
(:func:`ranks`), its correlation r (N-1)/N, and, on binary activations, every active input
in the top-and-random sample (what its ``*_binary`` functions do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The framework's default top fraction for hidden layers (its ResNet layer4 settings).
DEFAULT_ALPHA = 0.005
#: Metrics that pass both sanity tests (the framework's result, and ours: dissect.sanity).
RELIABLE = ("correlation", "cosine", "auprc", "f1", "iou")
#: Every metric of the framework, in table order: the reliable five first.
METRICS = ("correlation", "cosine", "auprc", "f1", "iou", "auc", "recall", "precision",
           "accuracy", "balanced-accuracy", "inverse-balanced-accuracy", "inverse-auc", "inverse-auprc",
           "spearman-correlation", "correlation-top-and-random", "spearman-correlation-top-and-random",
           "wpmi", "mad")
#: Metrics that look at the unit binarised at its top-α fraction (the framework tunes α for these).
BINARISED = ("auprc", "f1", "iou", "auc", "recall", "precision", "accuracy", "balanced-accuracy",
             "inverse-balanced-accuracy", "wpmi")
#: Metrics that draw a random sample of inputs (seeded by the generator they are given).
SAMPLED = ("correlation-top-and-random", "spearman-correlation-top-and-random")
#: How undefined values and ties are treated: dissect's, or the reference code's (see the module docstring).
CONVENTIONS = ("dissect", "neuron-eval")
#: The framework's top-and-random sample: k of the unit's top α inputs and k inputs at random.
TOP_AND_RANDOM_K = 25
TOP_AND_RANDOM_ALPHA = 0.002
#: The floor under a presence before its log in the WPMI metric, and the metric's default λ.
WPMI_FLOOR = 1e-8
WPMI_LAMBDA = 1.0


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


def _div(num: torch.Tensor, den: torch.Tensor, fill: float = math.nan) -> torch.Tensor:
    """num / den, ``fill`` where den is 0 (NaN: undefined; 0: the reference code's clamped denominators)."""
    out = num / den.clamp_min(1e-300)
    return torch.where(den > 0, out, torch.full_like(out, fill))


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


@dataclass
class Options:
    """What a metric needs beside its vectors: the ``conventions`` (:data:`CONVENTIONS`), the WPMI metric's
    λ, and the generator of the sampled metrics and of random tie-breaking (a fixed seed when None)."""

    conventions: str = "dissect"
    lam: float = WPMI_LAMBDA
    generator: torch.Generator | None = None
    #: One seed per column (unit): its draws then depend on it alone, not on which units are scored together.
    column_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.conventions not in CONVENTIONS:
            raise ValueError(f"conventions must be one of {CONVENTIONS}, got {self.conventions!r}")

    @property
    def reference(self) -> bool:
        return self.conventions == "neuron-eval"

    @property
    def fill(self) -> float:
        """What an undefined ratio is: NaN, or 0 where the reference clamps its denominator."""
        return 0.0 if self.reference else math.nan

    def rng(self, column: int | None = None) -> torch.Generator:
        """The generator of a draw for ``column`` (its own when ``column_seeds`` are given), else the shared one."""
        if column is not None and self.column_seeds is not None:
            return torch.Generator().manual_seed(int(self.column_seeds[column]))
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(0)
        return self.generator

    def uniform(self, shape: tuple[int, int]) -> torch.Tensor:
        """float32 U(0, 1) noise of an [N, U] shape, column by column from ``column_seeds`` where given."""
        if self.column_seeds is None:
            return torch.rand(shape, generator=self.rng(), dtype=torch.float32)
        return torch.stack([torch.rand(shape[0], generator=self.rng(u), dtype=torch.float32) for u in range(shape[1])], 1)


#: The reference's tie-breaking noise: ``1e-7 * U(0, 1)`` added to the float32 values before ranking.
REFERENCE_TIE_NOISE = 1e-7


def ranks(x: torch.Tensor, noise: "Options | torch.Generator | None" = None) -> torch.Tensor:
    """[N, U] float64 0-based ascending ranks of each column of ``x``: tied values share their mean rank, or, with
    ``noise`` (the Options or the generator it is drawn from), the reference code's tie-breaking: ``1e-7 * U(0, 1)``
    added to the float32 values, then a (stable) sort. Its docstring means a random order of the ties; in float32
    the noise is below the spacing of values near 1 (1.2e-7), so ties there stay partly ordered by position, as
    its results are."""
    n = x.shape[0]
    if noise is not None:
        if isinstance(noise, torch.Generator):
            noise = Options(generator=noise)
        noise = noise.uniform(tuple(x.shape)).to(x.device)
        order = torch.argsort(x.to(torch.float32) + REFERENCE_TIE_NOISE * noise, dim=0, stable=True)
        pos = torch.arange(n, dtype=torch.float64, device=x.device).unsqueeze(1).expand(x.shape).contiguous()
        return torch.empty(x.shape, dtype=torch.float64, device=x.device).scatter_(0, order, pos)
    order, first, last = _sorted_groups(_f64(x))               # descending, [U, N]
    mid = (n - 1) - (first + last).to(torch.float64) / 2       # the group's mean ascending rank
    return torch.empty_like(mid).scatter_(1, order, mid).T


def _pearson(a: torch.Tensor, c: torch.Tensor, o: Options) -> torch.Tensor:
    """Column-wise correlation of two float64 [N, U]; the reference's is r (N-1)/N and 0 for a constant."""
    if not o.reference:
        return _correlation64(a, c)
    r = _correlation64(a, c)
    n = a.shape[0]
    return torch.nan_to_num(r, nan=0.0) * ((n - 1) / n)


def _accuracies(name: str, acts: torch.Tensor, presence: torch.Tensor, alpha: float | None, o: Options) -> torch.Tensor:
    act, pres = active(acts, alpha), present(presence)
    tp, n_act, n_pres = _counts(act, pres)
    n = float(acts.shape[0])
    tn = n - n_act - n_pres + tp
    if name == "accuracy":
        return (tp + tn) / n
    if name == "balanced-accuracy":
        return (_div(tp, n_act, o.fill) + _div(tn, n - n_act, o.fill)) / 2
    return (_div(tp, n_pres, o.fill) + _div(tn, n - n_pres, o.fill)) / 2


def _auc_from_ranks(target: torch.Tensor, r: torch.Tensor, o: Options) -> torch.Tensor:
    """Mann-Whitney AUC of the binary ``target`` [N, U] under the 0-based ranks ``r`` [N, U]."""
    t = _f64(target)
    n_pos = t.sum(dim=0)
    u = (t * r).sum(dim=0) - n_pos * (n_pos - 1) / 2
    return _div(u, n_pos * (r.shape[0] - n_pos), o.fill)


def _auc(acts, presence, alpha, o: Options) -> torch.Tensor:
    if not o.reference:
        return auc(acts, presence, alpha)
    return _auc_from_ranks(active(acts, alpha), ranks(presence, o), o)


def _inverse_ranked(acts, presence) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse AUPRC, inverse AUC): the activation as a ranking of the images where the concept is present."""
    return _ranked(_f64(present(presence)), _sorted_groups(_f64(acts)))


def _inverse_auc(acts, presence, o: Options) -> torch.Tensor:
    if o.reference:
        return _auc_from_ranks(present(presence), ranks(acts, o), o)
    return _inverse_ranked(acts, presence)[1]


def _spearman(acts, presence, o: Options) -> torch.Tensor:
    noise = o if o.reference else None
    return _pearson(ranks(acts, noise), ranks(presence, noise), o)


def _top_and_random_ids(a: torch.Tensor, alpha: float | None, o: Options, g: torch.Generator) -> torch.Tensor:
    """The framework's sample for one unit (``a`` [N]), drawn from ``g``: up to k of its top inputs (the top 0.2%,
    or its active inputs when ``alpha`` is None: all of them under the reference conventions) and k at random."""
    k, n = TOP_AND_RANDOM_K, a.shape[0]
    if alpha is None:
        top = torch.nonzero(a >= 0.5).flatten()
        if not o.reference:
            top = top[torch.randperm(top.numel(), generator=g)[:k].to(a.device)]
    else:
        n_top = min(n, math.ceil(TOP_AND_RANDOM_ALPHA * n))
        top = torch.topk(a, n_top).indices
        top = top[torch.randperm(n_top, generator=g)[:k].to(a.device)]
    return torch.cat([top, torch.randperm(n, generator=g)[:k].to(a.device)])


def _top_and_random(acts, presence, alpha, o: Options, spearman: bool) -> torch.Tensor:
    a, c = _f64(acts), _f64(presence)
    out = torch.empty(a.shape[1], dtype=torch.float64, device=a.device)
    for u in range(a.shape[1]):
        g = o.rng(u)
        ids = _top_and_random_ids(a[:, u], alpha, o, g)
        x, y = a[ids, u : u + 1], c[ids, u : u + 1]
        one = Options(o.conventions, o.lam, g)        # the sample's tie noise continues the unit's draws
        out[u] = (_spearman(x, y, one) if spearman else _pearson(x, y, one))[0]
    return out


def _wpmi(acts, presence, alpha, o: Options) -> torch.Tensor:
    act, c = _f64(active(acts, alpha)), _f64(presence)
    n_act = act.sum(dim=0)
    loglik = _div((act * torch.log(c.clamp_min(WPMI_FLOOR))).sum(dim=0), n_act, o.fill)
    mean = c.mean(dim=0)
    out = loglik - o.lam * torch.log(mean)           # log 0 = -inf for a concept never present
    return out if o.reference else torch.where(mean > 0, out, torch.full_like(out, math.nan))


def _mad(acts, presence, o: Options) -> torch.Tensor:
    a, p = _f64(acts), _f64(present(presence))
    n_p = p.sum(dim=0)
    return _div((a * p).sum(dim=0), n_p, o.fill) - _div((a * (1 - p)).sum(dim=0), a.shape[0] - n_p, o.fill)


def _binarised(fn):
    return lambda a, c, alpha, o: fn(a, c, alpha)


_FUNCTIONS = {
    "correlation": lambda a, c, alpha, o: _pearson(_f64(a), _f64(c), o),
    "cosine": lambda a, c, alpha, o: torch.nan_to_num(cosine(a, c), nan=0.0) if o.reference else cosine(a, c),
    "auprc": _binarised(auprc), "f1": _binarised(f1), "iou": _binarised(iou), "recall": _binarised(recall),
    "precision": lambda a, c, alpha, o: torch.nan_to_num(precision(a, c, alpha), nan=0.0) if o.reference
    else precision(a, c, alpha),
    "auc": _auc,
    "accuracy": lambda a, c, alpha, o: _accuracies("accuracy", a, c, alpha, o),
    "balanced-accuracy": lambda a, c, alpha, o: _accuracies("balanced-accuracy", a, c, alpha, o),
    "inverse-balanced-accuracy": lambda a, c, alpha, o: _accuracies("inverse-balanced-accuracy", a, c, alpha, o),
    "inverse-auc": lambda a, c, alpha, o: _inverse_auc(a, c, o),
    "inverse-auprc": lambda a, c, alpha, o: _inverse_ranked(a, c)[0],
    "spearman-correlation": lambda a, c, alpha, o: _spearman(a, c, o),
    "correlation-top-and-random": lambda a, c, alpha, o: _top_and_random(a, c, alpha, o, spearman=False),
    "spearman-correlation-top-and-random": lambda a, c, alpha, o: _top_and_random(a, c, alpha, o, spearman=True),
    "wpmi": _wpmi,
    "mad": lambda a, c, alpha, o: _mad(a, c, o),
}


_DESCRIPTIONS = {
    "correlation": "Pearson r of activation and presence (the simulation score)",
    "cosine": "cosine of the raw activation and presence vectors",
    "auprc": "average precision of presence as a ranking of the unit's top-{a} images",
    "f1": "F1 of the unit's top-{a} images and the images with presence >= 0.5",
    "iou": "IoU, same binarisation as f1", "recall": "share of the top-{a} images with the concept present",
    "precision": "share of the images with the concept present that are in the top {a}",
    "auc": "ROC AUC of presence for the top-{a} images",
    "accuracy": "(TP + TN) / N, same binarisation as f1",
    "balanced-accuracy": "(TP/active + TN/inactive) / 2, same binarisation as f1",
    "inverse-balanced-accuracy": "(TP/present + TN/absent) / 2, same binarisation as f1",
    "inverse-auc": "ROC AUC of the activation for the images with presence >= 0.5",
    "inverse-auprc": "average precision of the activation for the images with presence >= 0.5",
    "spearman-correlation": "Spearman rank correlation of activation and presence",
    "correlation-top-and-random": "Pearson r on 25 of the unit's top 0.2% images and 25 at random",
    "spearman-correlation-top-and-random": "Spearman r on 25 of the unit's top 0.2% images and 25 at random",
    "wpmi": "mean log presence on the top-{a} images minus λ log mean presence (λ = {lam})",
    "mad": "mean activation where present minus where absent",
}


def describe(name: str, alpha: float | None = DEFAULT_ALPHA, lam: float = WPMI_LAMBDA) -> str:
    """One line saying what metric ``name`` measures, with its α and λ."""
    return _DESCRIPTIONS[name].format(a=f"{alpha:g}" if alpha is not None else "(active)", lam=f"{lam:g}")


def metric(name: str, acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA,
           options: Options | None = None) -> torch.Tensor:
    """One metric by name (``METRICS``) of each unit against its explanation, ``(U,)`` float64. ``alpha``: the top
    fraction of the binarised metrics (None: the activations are binary already); the top-and-random metrics take
    the framework's own top fraction (0.002), or the active inputs when ``alpha`` is None."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    _check(acts, presence)
    return _FUNCTIONS[name](acts, presence, alpha, options or Options())


def pairwise(name: str, acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA,
             options: Options | None = None) -> torch.Tensor:
    """[U, M] float64: ``name`` of every unit of ``acts`` [N, U] against every concept of ``presence`` [N, M]
    (what the framework computes to pick α and to measure a metric's spread)."""
    if acts.ndim != 2 or presence.ndim != 2 or acts.shape[0] != presence.shape[0]:
        raise ValueError(f"acts [N, U] and presence [N, M] must share N, got {tuple(acts.shape)} and {tuple(presence.shape)}")
    o = options or Options()
    u_count = acts.shape[1]
    out = torch.empty((u_count, presence.shape[1]), dtype=torch.float64, device=acts.device)
    for m in range(presence.shape[1]):
        out[:, m] = metric(name, acts, presence[:, m : m + 1].expand(-1, u_count), alpha, o)
    return out


def score_all(acts: torch.Tensor, presence: torch.Tensor, alpha: float | None = DEFAULT_ALPHA,
              names: tuple[str, ...] = METRICS, index: torch.Tensor | None = None,
              options: Options | None = None) -> dict[str, torch.Tensor]:
    """Every metric of ``names`` for all units, each ``(U,)`` float64; the binarisation and the
    sort by presence are computed once for the ones that share them.

    ``index`` (U,): ``presence`` [N, L] holds each distinct explanation once and unit u's is
    column ``index[u]`` (units sharing a label share its sort)."""
    o = options or Options()
    distinct = None
    if index is not None:
        if presence.ndim != 2 or index.ndim != 1 or index.shape[0] != acts.shape[1]:
            raise ValueError("index must give one presence column per unit")
        distinct = presence
        presence = presence.index_select(1, index)
    _check(acts, presence)
    out: dict[str, torch.Tensor] = {}
    shared = () if o.reference else ("correlation", "cosine", "recall", "precision", "f1", "iou", "auprc", "auc")
    if "correlation" in names and "correlation" in shared or "cosine" in names and "cosine" in shared:
        a, c = _f64(acts), _f64(presence)   # converted once for both
        if "cosine" in names:
            out["cosine"] = _cosine64(a, c)
        if "correlation" in names:
            out["correlation"] = _correlation64(a, c)
        del a, c
    if any(m in shared[2:] for m in names):
        act = active(acts, alpha)
        tp, n_act, n_pres = _counts(act, present(presence))
        counted = {"recall": lambda: _div(tp, n_act), "precision": lambda: _div(tp, n_pres),
                   "f1": lambda: _div(2 * tp, n_act + n_pres), "iou": lambda: _div(tp, n_act + n_pres - tp)}
        for m in names:
            if m in counted:
                out[m] = counted[m]()
        if "auprc" in names or "auc" in names:
            sparse = _ranked_sparse(acts, act, presence, distinct, index, alpha)
            ap, roc = sparse if sparse is not None else _ranked(_f64(act), _sorted_groups(_f64(presence)))
            if "auprc" in names:
                out["auprc"] = ap
            if "auc" in names:
                out["auc"] = roc
    if not o.reference and ("inverse-auc" in names or "inverse-auprc" in names):
        # the activation's sort serves both inverse metrics (the reference breaks AUC's ties with noise instead)
        out["inverse-auprc"], out["inverse-auc"] = _inverse_ranked(acts, presence)
    for m in names:
        if m not in out:
            out[m] = metric(m, acts, presence, alpha, o)
    return {m: out[m] for m in names}
