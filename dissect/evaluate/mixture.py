"""A concept's presence on each image from its cosines over the probe alone, without labels.

Pure tensor kernels. Every function takes the cosines of k concepts over the N probe images as
``cos`` [N, k] and treats each column on its own: internally the columns become contiguous rows,
so that a concept's result does not depend on which other concepts are computed with it.

* :func:`robust_z`          (cos − median) / (1.4826 · MAD) per concept: statistics that the
                            concept's own positives (fewer than half the images) cannot drag.
* :func:`tail_presence`     1 − the Benjamini–Hochberg q-value of each image under the null
                            Student-t(4) on the robust z: how surely an image lies above the
                            images without the concept.
* :func:`fit_mixture`       per concept, a two-group model of the robust z: the images without
                            the concept as a null (a Student-t(4) or a normal: ``NULLS``, the
                            crispest of the kept fits wins) and those with it as a normal above
                            it, fitted by EM from two starts; the fit is kept only where the
                            groups are distinct (:class:`MixtureRule`).
* :func:`mixture_presence`  the posterior of the upper group where the fit was kept, the tail
                            presence elsewhere.

Why this shape, and how its constants were chosen on one world and confirmed on another, is in
``docs/guide/simulate.md`` ("How CLIP presence is estimated") and ``scripts/presence_study.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: The families that may model a concept's negative images, as Student-t degrees of freedom (inf: a normal).
#: A heavy tail keeps the images that merely resemble a concept in its null (world B's CLIP); a normal one lets a
#: concept on 0.1% of 50,000 images stand out of a near-Gaussian bulk (the explain benchmark's world), where a t(4)
#: tail alone predicts as many images that far up. Each concept gets the family that fits its cosines better.
NULLS: dict[str, float] = {"t4": 4.0, "normal": math.inf}
#: Degrees of freedom of the null under which ``--calibration fdr`` takes its p-values.
TAIL_DF = 4.0
#: MAD -> standard deviation of a normal.
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class MixtureRule:
    """How the mixture is fitted and when its fit is kept (recorded in every artifact that uses it).

    ``starts``: EM starts, as the share of the top images taken for the upper group (one for rare
    concepts, one for common ones); ``min_crisp``: the share of the upper group's mass that must be
    unambiguous, 1 − 2 Σ min(r, 1 − r) / Σ r (r: each image's posterior); ``min_separation``: the
    upper group's centre at least this many null scales above the null's; ``min_spread``: the
    floor of the upper group's spread, in robust-z units (a group of one or two images has no
    spread of its own); ``max_share``: the upper group holds at most this share of the images, give or take
    two standard errors of a share (1 / sqrt(N)): the images without the concept are the majority, as
    the robust statistics assume (a fit whose "upper group" is most of the images has put the null
    on a lower tail); the likelihood gain over the best null alone must exceed BIC's 1.5 ln N (three
    more parameters). ``nulls``: the families that may model the images without the concept
    (``NULLS``); each is fitted, and the crispest kept fit wins (:func:`fit_mixture`). The EM runs on ``bins`` equal-width bins of each concept's robust z (each bin
    weighted by its images, at their mean), so that its cost does not grow with the probe; it stops
    where the log-likelihood changes by at most ``tolerance`` (relative) or after ``iterations``.
    """

    starts: tuple[float, ...] = (0.005, 0.1)
    min_crisp: float = 0.5
    min_separation: float = 2.0
    min_spread: float = 0.1
    max_share: float = 0.5
    nulls: tuple[str, ...] = ("t4", "normal")
    bins: int = 512
    iterations: int = 200
    tolerance: float = 1e-8

    def __post_init__(self):
        unknown = [n for n in self.nulls if n not in NULLS]
        if unknown or not self.nulls:
            raise ValueError(f"unknown null families {unknown}: use some of {', '.join(NULLS)}")

    def describe(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT_RULE = MixtureRule()


def _rows(cos: torch.Tensor) -> torch.Tensor:
    """[N, k] -> [k, N] contiguous float64."""
    return cos.to(torch.float64).T.contiguous()


def _median(x: torch.Tensor) -> torch.Tensor:
    """Median of each row (the mean of the two middle values when N is even, as numpy's), by selection: the lower
    middle value is torch's median; the upper one is the same value when at least N/2 + 1 values are at most it,
    else the smallest value above it."""
    n = x.shape[1]
    lower = x.median(dim=1).values
    if n % 2:
        return lower
    at_most = (x <= lower[:, None]).sum(1)
    above = torch.where(x > lower[:, None], x, torch.full_like(x, math.inf)).min(dim=1).values
    upper = torch.where(at_most >= n // 2 + 1, lower, above)
    return (lower + upper) / 2


def robust_centre_scale(cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each concept's median and 1.4826 · MAD over the N images ([k] float64 each; the scale floored at 1e-12)."""
    x = _rows(cos)
    med = _median(x)
    return med, (MAD_TO_SD * _median((x - med[:, None]).abs())).clamp_min(1e-12)


def robust_z(cos: torch.Tensor, centre=None, scale=None) -> torch.Tensor:
    """[k, N] robust z of ``cos`` [N, k]: (cos − median) / (1.4826 MAD) per concept."""
    if centre is None:
        centre, scale = robust_centre_scale(cos)
    return (_rows(cos) - centre[:, None]) / scale[:, None]


def t4_upper(z: torch.Tensor) -> torch.Tensor:
    """P(T >= z) for T ~ Student-t with 4 degrees of freedom, in closed form and without cancellation in the tail:
    for z >= 0 it is (1 − s)² (2 + s) / 4 with s = z / sqrt(4 + z²), 1 − s = 4 / (r (r + z)), r = sqrt(4 + z²)."""
    a = z.abs()
    r = torch.sqrt(4 + a * a)
    one_minus_s = 4 / (r * (r + a))
    upper = one_minus_s ** 2 * (3 - one_minus_s) / 4
    return torch.where(z >= 0, upper, 1 - upper)


def normal_upper(z: torch.Tensor) -> torch.Tensor:
    """P(Z >= z) for a standard normal (erfc: no cancellation in the tail)."""
    return 0.5 * torch.special.erfc(z / math.sqrt(2))


def _upper(z: torch.Tensor, df) -> torch.Tensor:
    """Upper tail of each row of ``z`` [k, N] under Student-t(``df``): df a number or [k] per row, 4 or inf."""
    df = torch.as_tensor(df, dtype=z.dtype, device=z.device).reshape(-1, 1)
    if not bool(((df == 4) | torch.isinf(df)).all()):
        raise ValueError("tail probabilities are implemented for Student-t(4) and the normal")
    return torch.where(torch.isinf(df), normal_upper(z), t4_upper(z))


def _bh(z: torch.Tensor, df=TAIL_DF) -> torch.Tensor:
    """1 − Benjamini–Hochberg q-value of each entry of the rows of ``z`` [k, N] under Student-t(``df``) (one-sided,
    upper; ``df`` a number or one per row, 4 or inf)."""
    n = z.shape[1]
    zs, order = z.sort(dim=1, descending=True, stable=True)
    p = _upper(zs, df)
    rank = torch.arange(1, n + 1, dtype=z.dtype, device=z.device)
    q = (p * (n / rank)).clamp(max=1.0)
    q = q.flip(1).cummin(dim=1).values.flip(1)
    return torch.empty_like(q).scatter_(1, order, 1.0 - q)


def tail_presence(cos: torch.Tensor, centre=None, scale=None) -> torch.Tensor:
    """[N, k] float64: 1 − q, q the Benjamini–Hochberg q-value of each image's robust z under Student-t(4)."""
    return _bh(robust_z(cos, centre, scale)).T


def _t_logpdf(z, mu, s, df: float):
    if math.isinf(df):
        return _n_logpdf(z, mu, s)
    c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = (z - mu[:, None]) / s[:, None]
    return c - torch.log(s)[:, None] - (df + 1) / 2 * torch.log1p(u * u / df)


def _n_logpdf(z, mu, s):
    u = (z - mu[:, None]) / s[:, None]
    return -0.5 * u * u - torch.log(s)[:, None] - 0.5 * math.log(2 * math.pi)


def histogram(z: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``z`` [k, N] as ``bins`` equal-width bins from its minimum to its maximum: the mean of the values
    in each bin (its centre where it is empty) and their number, [k, bins] each. Bin b holds the values with
    floor((z − min) / width) = b (the maximum in the last bin)."""
    k = z.shape[0]
    lo, hi = z.min(dim=1).values, z.max(dim=1).values
    width = ((hi - lo) / bins).clamp_min(1e-12)
    idx = ((z - lo[:, None]) / width[:, None]).floor().clamp(0, bins - 1).long()
    counts = z.new_zeros(k, bins).scatter_add_(1, idx, torch.ones_like(z))
    sums = z.new_zeros(k, bins).scatter_add_(1, idx, z)
    centres = lo[:, None] + (torch.arange(bins, dtype=z.dtype, device=z.device) + 0.5) * width[:, None]
    return torch.where(counts > 0, sums / counts.clamp_min(1), centres), counts


def _null_step(x, w, mu, s, df):
    """One ECM step of a Student-t location and scale for values ``x`` [k, B] with weights ``w`` (df inf: a
    normal's weighted mean and standard deviation)."""
    u = torch.ones_like(x) if math.isinf(df) else (df + 1) / (df + ((x - mu[:, None]) / s[:, None]) ** 2)
    wu = w * u
    mu = (wu * x).sum(1) / wu.sum(1).clamp_min(1e-300)
    s = ((wu * (x - mu[:, None]) ** 2).sum(1) / w.sum(1).clamp_min(1e-300)).sqrt().clamp_min(1e-12)
    return mu, s


def _null_only(x, w, df: float, rule: MixtureRule):
    """Log-likelihood of each row under a Student-t(``df``) null alone, fitted from (0, 1); a row stops once neither
    parameter moves by ``rule.tolerance``."""
    k = x.shape[0]
    mu, s = x.new_zeros(k), x.new_ones(k)
    active = torch.arange(k, device=x.device)
    for _ in range(rule.iterations):
        new_mu, new_s = _null_step(x[active], w[active], mu[active], s[active], df)
        done = ((new_mu - mu[active]).abs() < rule.tolerance) & ((new_s - s[active]).abs() < rule.tolerance)
        mu[active], s[active] = new_mu, new_s
        active = active[~done]
        if active.numel() == 0:
            break
    return (w * _t_logpdf(x, mu, s, df)).sum(1)


def _posterior(x, fit: dict[str, torch.Tensor], df: float, w=None):
    """The posterior of the upper group at each value of ``x`` [k, B] (zero below the null's centre) and each
    row's log-likelihood [k] (values weighted by ``w``)."""
    l0 = torch.log1p(-fit["pi"])[:, None] + _t_logpdf(x, fit["mu0"], fit["s0"], df)
    l1 = torch.log(fit["pi"])[:, None] + _n_logpdf(x, fit["mu1"], fit["s1"])
    ll = torch.logaddexp(l0, l1)
    r = torch.exp(l1 - ll)
    r = torch.where(x < fit["mu0"][:, None], torch.zeros_like(r), r)
    return r, (ll if w is None else w * ll).sum(1)


def _m_step(x, w, r, fit, df: float, rule: MixtureRule):
    n = w.sum(1)
    w1 = (w * r).sum(1)
    pi = (w1 / n).clamp(1e-9, 1 - 1e-9)
    mu1 = (w * r * x).sum(1) / w1.clamp_min(1e-300)
    s1 = ((w * r * (x - mu1[:, None]) ** 2).sum(1) / w1.clamp_min(1e-300)).sqrt().clamp_min(rule.min_spread)
    mu0, s0 = _null_step(x, w * (1 - r), fit["mu0"], fit["s0"], df)
    return {"pi": pi, "mu1": mu1, "s1": s1, "mu0": mu0, "s0": s0}


def _start(x, w, start: float):
    """The upper group's first responsibilities: the top ``start`` share of the images (a bin the boundary cuts
    contributes the share of its images above it)."""
    n = w.sum(1, keepdim=True)
    top = (start * n).round().clamp_min(1)
    above = n - w.cumsum(dim=1)                     # images in the bins above each bin
    return ((top - above) / w.clamp_min(1e-300)).clamp(0, 1) * (w > 0)


def _em(x, w, start: float, df: float, rule: MixtureRule):
    """EM over the weighted values from the top ``start`` share as the upper group, the rest a Student-t(``df``)
    null; a row stops once its
    likelihood settles (relative change at most ``rule.tolerance``), and only the rows still moving are computed."""
    k = x.shape[0]
    r = _start(x, w, start)
    w0 = w * (1 - r)
    mu0 = (w0 * x).sum(1) / w0.sum(1)
    fit = {"mu0": mu0, "s0": ((w0 * (x - mu0[:, None]) ** 2).sum(1) / w0.sum(1)).sqrt().clamp_min(1e-12)}
    fit = _m_step(x, w, r, fit, df, rule)
    r, ll = _posterior(x, fit, df, w)
    active = torch.arange(k, device=x.device)
    for _ in range(rule.iterations):
        xa, wa = x[active], w[active]
        new = _m_step(xa, wa, r[active], {key: v[active] for key, v in fit.items()}, df, rule)
        new_r, new_ll = _posterior(xa, new, df, wa)
        for key in fit:
            fit[key][active] = new[key]
        r[active] = new_r
        settled = (new_ll - ll[active]).abs() <= rule.tolerance * new_ll.abs()
        ll[active] = new_ll
        active = active[~settled]
        if active.numel() == 0:
            break
    return fit, r, ll


def fit_mixture(cos: torch.Tensor, rule: MixtureRule = DEFAULT_RULE) -> dict[str, torch.Tensor]:
    """Per concept ([k] float64 each): the robust centre and scale, the kept fit's parameters in robust-z units
    (``pi``, ``mu0``, ``s0``, ``mu1``, ``s1``) and its null's degrees of freedom (``df``, inf for a normal), whether a
    fit was kept (``kept``, 1.0/0.0), its crispness and its log-likelihood gain over the best null alone.

    Every family of ``rule.nulls`` and every start is fitted; a fit is kept when it passes ``rule`` (its gain over
    the best null alone, of any family, included), and of the kept fits the crispest wins (then the larger gain):
    a heavy-tailed null fitted where a normal one belongs leaves rare far-out positives half in its tail, a normal
    null fitted where a heavy one belongs makes the upper group swallow that tail, and either shows as mass the
    fit cannot place. Where none is kept, ``df`` is the family whose null alone fits best (for the tail presence).
    The EM runs on ``rule.bins`` bins of each concept's robust z (each bin its images' mean and number), so that its
    cost does not grow with the probe."""
    centre, scale = robust_centre_scale(cos)
    x, w = histogram(robust_z(cos, centre, scale), rule.bins)
    k, n = x.shape[0], cos.shape[0]
    null_ll, null_df = x.new_full((k,), -math.inf), x.new_full((k,), NULLS[rule.nulls[0]])
    for name in rule.nulls:
        ll = _null_only(x, w, NULLS[name], rule)
        null_df = torch.where(ll > null_ll, x.new_tensor(NULLS[name]), null_df)
        null_ll = torch.maximum(ll, null_ll)
    best = {"pi": x.new_full((k,), 0.5), "mu0": x.new_zeros(k), "s0": x.new_ones(k), "mu1": x.new_zeros(k),
            "s1": x.new_ones(k), "df": null_df, "kept": x.new_zeros(k), "crisp": x.new_zeros(k),
            "gain": x.new_zeros(k)}
    best_crisp = x.new_full((k,), -math.inf)
    for name in rule.nulls:
        for start in rule.starts:
            fit, r, ll = _em(x, w, start, NULLS[name], rule)
            crisp = 1 - 2 * (w * torch.minimum(r, 1 - r)).sum(1) / (w * r).sum(1).clamp_min(1e-300)
            separation = (fit["mu1"] - fit["mu0"]) / fit["s0"]
            gain = ll - null_ll
            ok = ((gain > 1.5 * math.log(n)) & (crisp >= rule.min_crisp) & (separation >= rule.min_separation)
                  & (fit["pi"] <= rule.max_share + 1 / math.sqrt(n)))
            better = ok & ((crisp > best_crisp) | ((crisp == best_crisp) & (gain > best["gain"])))
            fit.update(df=x.new_full((k,), NULLS[name]), crisp=crisp, gain=gain, kept=torch.ones_like(ll))
            for key in fit:
                best[key] = torch.where(better, fit[key], best[key])
            best_crisp = torch.where(better, crisp, best_crisp)
    return {"centre": centre, "scale": scale, **best}


def mixture_presence(cos: torch.Tensor, fit: dict[str, torch.Tensor], rule: MixtureRule = DEFAULT_RULE) -> torch.Tensor:
    """[N, k] float64 presence: the upper group's posterior where ``fit`` (:func:`fit_mixture` of these concepts,
    perhaps over these very cosines) was kept, the tail presence under the concept's null family elsewhere."""
    z = robust_z(cos, fit["centre"], fit["scale"])
    out = torch.empty_like(z)
    kept = fit["kept"].bool()
    if not bool(kept.all()):  # the tail's q-values sort each column: only where no fit was kept
        out[~kept] = _bh(z[~kept], fit["df"][~kept])
    for df in fit["df"][kept].unique().tolist():
        rows = kept & (fit["df"] == df)
        part = {key: v[rows] for key, v in fit.items()}
        out[rows] = _posterior(z[rows], part, df)[0]
    return out.T


__all__ = ["MixtureRule", "DEFAULT_RULE", "NULLS", "TAIL_DF", "t4_upper", "normal_upper", "robust_centre_scale", "robust_z", "tail_presence",
           "fit_mixture", "mixture_presence"]
