"""The missing-labels and extra-labels sanity tests of an evaluation metric.

Oikarinen, Yan & Weng (ICML 2025, Sec. 4): a metric that scores an explanation
against a unit must score it *lower* when the concept labels are made worse.

* missing labels: every positive image of a concept is dropped with probability 1/2;
* extra labels: negatives are turned positive with probability n⁺ / (N − n⁺), so that
  the expected number of positives doubles.

For each perturbation the score of the right explanation is compared with the
original one, normalised by the metric's range (its bounds where it has them, else
the spread of the values seen, as the framework does); a repetition *decreases* when
the normalised difference is below −ε (ε = 0.001). The decrease rate is the share of
repetitions that decrease; a metric passes a test when its decrease rate is at least
:data:`PASS_RATE` in every setting.

Two settings: the framework's synthetic one (:func:`synthetic`: unit = concept,
binary, with activation frequencies 0.499 … 0.0001), and a user's own activations
with annotated concepts (:func:`run`, given the pairs unit ↔ concept). Both the
framework's eighteen metrics (:mod:`dissect.evaluate.metrics`) and dissect's similarity
functions (run on the presence matrix through :func:`dissect.similarity.from_presence`)
go through the same tests.

In the synthetic setting the metrics see the framework's binary activations. The
similarity functions see the concept indicator plus a small continuous noise
(:data:`SYNTHETIC_NOISE`): on binary activations every unit's top inputs are ties broken
by index, the same first inputs for all units, so SoftWPMI's and WPMI's λ log p(t) term
cancels their score exactly (identically 0) and rank reorder sees no order. With the
noise there are no ties: a unit's active inputs still rank above all of its inactive
ones, in a random order of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import metrics as M

EPSILON = 1e-3
#: A metric passes a test when at least this share of the repetitions decreases, in every setting.
PASS_RATE = 0.9
#: The framework's synthetic activation frequencies γ.
FREQUENCIES = (0.499, 0.1, 0.01, 0.001, 0.0001)
#: Known ranges (min, max) of the framework metrics; None: the spread of the values seen.
RANGES = {**{m: (0.0, 1.0) for m in ("auprc", "f1", "iou", "auc", "recall", "precision", "accuracy",
                                      "balanced-accuracy", "inverse-balanced-accuracy", "inverse-auc", "inverse-auprc")},
          **{m: (-1.0, 1.0) for m in ("correlation", "cosine", "spearman-correlation", "correlation-top-and-random",
                                      "spearman-correlation-top-and-random")}}
#: The synthetic activations of the similarity functions: indicator + uniform noise in [0, SYNTHETIC_NOISE).
SYNTHETIC_NOISE = 1e-3
TESTS = ("missing", "extra")
#: The framework's grid of top fractions α for a final layer's binarised metrics, and of the WPMI metric's λ.
ALPHA_GRID = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
LAMBDA_GRID = tuple(i / 100 for i in range(101))
#: The share of a final layer's units that chooses α (the framework's validation split); the rest are tested.
VALIDATION_SHARE = 0.05


def missing_labels(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each positive kept with probability 1/2."""
    keep = torch.rand(c.shape, generator=g, device=c.device) > 0.5
    return c * keep


def extra_labels(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random positives added so that the expected number of positives doubles."""
    pos = c.sum(dim=0, keepdim=True)
    rate = pos / (c.shape[0] - pos).clamp_min(1)
    extra = torch.rand(c.shape, generator=g, device=c.device) < rate
    return torch.clamp(c + extra.to(c.dtype), max=1)


@dataclass
class Scorer:
    """A metric (``kind`` 'metric') or a similarity function ('similarity') under test. A metric's ``params``:
    ``lam``, the WPMI metric's λ; ``conventions`` (:data:`dissect.evaluate.metrics.CONVENTIONS`)."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    alpha: float | None = M.DEFAULT_ALPHA

    def options(self, generator: torch.Generator | None = None) -> M.Options:
        return M.Options(self.params.get("conventions", "dissect"), float(self.params.get("lam", M.WPMI_LAMBDA)),
                         generator)

    def matched(self, acts: torch.Tensor, presence: torch.Tensor, concept_of_unit: torch.Tensor,
                options: M.Options | None = None, full: bool = False):
        """(U,) score of each unit against its own concept, and the full [U, M] matrix of every unit against every
        concept where it is needed (``full``: a metric without known bounds; a similarity always), else None."""
        if self.kind == "metric":
            o = options or self.options()
            if full and RANGES.get(self.name) is None:
                sim = M.pairwise(self.name, acts, presence, self.alpha, o)
                return sim[torch.arange(sim.shape[0], device=sim.device), concept_of_unit], sim
            return M.metric(self.name, acts, presence[:, concept_of_unit], self.alpha, o), None
        from ..similarity import from_presence

        sim = from_presence(self.name, acts, presence, self.params)
        return sim[torch.arange(sim.shape[0], device=sim.device), concept_of_unit], sim


@dataclass
class SanityResult:
    scorer: str
    kind: str
    settings: list[str]                       # one label per unit/setting
    rates: dict[str, list[float]]             # test -> decrease rate per setting
    mean_diff: dict[str, list[float]]         # test -> mean normalised difference per setting
    repetitions: int

    def passes(self, test: str) -> bool:
        rates = [r for r in self.rates[test] if r == r]
        return bool(rates) and min(rates) >= PASS_RATE

    def row(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "kind": self.kind, "repetitions": self.repetitions,
                "missing_pass": self.passes("missing"), "extra_pass": self.passes("extra"),
                "missing_rate": min(self.rates["missing"]), "extra_rate": min(self.rates["extra"]),
                "settings": self.settings, "missing_rates": self.rates["missing"], "extra_rates": self.rates["extra"],
                "missing_mean_diff": self.mean_diff["missing"], "extra_mean_diff": self.mean_diff["extra"]}


def run(scorer: Scorer, acts: torch.Tensor, presence: torch.Tensor, concept_of_unit: torch.Tensor,
        repetitions: int = 100, seed: int = 0, settings: list[str] | None = None, progress=None) -> SanityResult:
    """Both tests for ``scorer`` on units ``acts`` [N, U] whose right concepts are the columns
    ``concept_of_unit`` (U,) of the binary ``presence`` [N, M]. Deterministic in ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    options = scorer.options(torch.Generator(device="cpu").manual_seed(int(seed) + 1))  # the sampled metrics' draws
    presence = (presence >= 0.5).to(torch.float32)
    bounds = RANGES.get(scorer.name) if scorer.kind == "metric" else None
    base, sim0 = scorer.matched(acts, presence, concept_of_unit, options, full=bounds is None)
    diffs: dict[str, list[torch.Tensor]] = {t: [] for t in TESTS}
    span = None if bounds is None else bounds[1] - bounds[0]
    for _ in range(int(repetitions)):
        perturbed = {"missing": missing_labels(presence.cpu(), g).to(presence.device),
                     "extra": extra_labels(presence.cpu(), g).to(presence.device)}
        scores, seen = {}, []
        for t in TESTS:
            scores[t], sim = scorer.matched(acts, perturbed[t], concept_of_unit, options, full=span is None)
            if span is None and sim is not None:
                seen.append(sim.flatten())
        if span is None and seen:  # the first repetition fixes the spread: base, missing, extra (the framework's run_test)
            values = torch.cat([sim0.flatten(), *seen])
            values = values[torch.isfinite(values)]
            lo, hi = (float(values.min()), float(values.max())) if values.numel() else (0.0, 1.0)
            span = (hi - lo) or 1.0
        for t in TESTS:
            diffs[t].append((scores[t] - base) / (span or 1.0))
        if progress is not None:
            progress(1)
    rates, mean_diff = {}, {}
    for t in TESTS:
        d = torch.stack(diffs[t]).to(torch.float64)          # [R, U]
        rates[t] = ((d < -EPSILON).to(torch.float64).mean(dim=0)).tolist()
        mean_diff[t] = torch.nanmean(d, dim=0).tolist()
    labels = settings or [str(i) for i in range(acts.shape[1])]
    return SanityResult(scorer.name, scorer.kind, labels, rates, mean_diff, int(repetitions))


@dataclass
class AlphaChoice:
    """The α (and for the WPMI metric λ) that ranked each validation unit's own concept best among all concepts."""

    alpha: float
    lam: float | None
    auprc: float
    units: int


def validation_split(n_units: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, test) unit positions: a seeded random :data:`VALIDATION_SHARE` (at least one) and the rest."""
    perm = torch.randperm(n_units, generator=torch.Generator().manual_seed(int(seed)))
    n_val = max(1, int(VALIDATION_SHARE * n_units))
    return perm[:n_val].sort().values, perm[n_val:].sort().values


def retrieval_auprc(sim: torch.Tensor, concept_of_unit: torch.Tensor) -> float:
    """AUPRC of all the [U, M] scores as a ranking of the U right (unit, concept) pairs (the framework's validation
    score; NaN scores rank last)."""
    target = torch.zeros(sim.shape, dtype=torch.float64)
    target[torch.arange(sim.shape[0]), concept_of_unit.cpu()] = 1
    scores = torch.nan_to_num(sim.detach().cpu().to(torch.float64), nan=-math.inf)
    return float(M.auprc(target.reshape(-1, 1), scores.reshape(-1, 1), alpha=None)[0])


def best_alpha(scorer: Scorer, acts: torch.Tensor, presence: torch.Tensor, concept_of_unit: torch.Tensor) -> AlphaChoice:
    """The framework's choice for a final layer: the α of :data:`ALPHA_GRID` (with λ of :data:`LAMBDA_GRID` for the
    WPMI metric) whose scores of the validation units ``acts`` [N, V] against every concept of ``presence`` [N, M]
    retrieve each unit's own concept best (:func:`retrieval_auprc`).

    Where several tie (a few validation units often rank their concept first at every α), the reference keeps the
    first, the smallest α; dissect keeps the one nearest the fixed default (α 0.005 on a log scale, then λ 1): a
    validation set that cannot tell them apart is no reason to leave the default (``conventions="neuron-eval"``:
    the first)."""
    presence = (presence >= 0.5).to(torch.float32)
    o = scorer.options()
    tried: list[tuple[float, float | None, float]] = []
    for alpha in ALPHA_GRID:
        if scorer.name == "wpmi":
            loglik = M.pairwise("wpmi", acts, presence, alpha, M.Options(o.conventions, lam=0.0))
            prior = torch.log(presence.to(torch.float64).mean(dim=0))
            tried += [(alpha, lam, retrieval_auprc(loglik - lam * prior, concept_of_unit)) for lam in LAMBDA_GRID]
        else:
            tried.append((alpha, None, retrieval_auprc(M.pairwise(scorer.name, acts, presence, alpha, o), concept_of_unit)))
    top = max(ap for _, _, ap in tried if ap == ap) if any(ap == ap for _, _, ap in tried) else math.nan
    best = [t for t in tried if t[2] >= top - 1e-12] or tried[:1]
    if not o.reference:
        best.sort(key=lambda t: (abs(math.log(t[0] / M.DEFAULT_ALPHA)), abs((t[1] if t[1] is not None else 1) - 1)))
    alpha, lam, ap = best[0]
    return AlphaChoice(alpha, lam, ap, int(acts.shape[1]))


def synthetic_setting(n_inputs: int = 100_000, frequencies=FREQUENCIES, device="cpu", noise: float = 0.0,
                      seed: int = 0):
    """The framework's synthetic units: unit i = concept i, active on the first γ_i·N inputs; ``noise`` > 0 adds
    uniform noise in [0, noise) to the activations (float64, drawn from ``seed``), which breaks their ties."""
    nums = [max(1, int(f * n_inputs)) for f in frequencies]
    c = torch.zeros(n_inputs, len(frequencies))
    for i, n in enumerate(nums):
        c[:n, i] = 1
    acts = c.clone()
    if noise > 0:
        g = torch.Generator().manual_seed(int(seed) + 2)
        acts = acts.to(torch.float64) + noise * torch.rand(acts.shape, generator=g, dtype=torch.float64)
    return acts.to(device), c.to(device), torch.arange(len(frequencies), device=device)


def synthetic(scorer: Scorer, n_inputs: int = 100_000, repetitions: int = 100, seed: int = 0,
              frequencies=FREQUENCIES, device="cpu", progress=None, noise: float | None = None) -> SanityResult:
    """Both tests on the framework's synthetic setting.

    As in the framework, the metrics are given the binary activation itself (the binarised ones
    with ``alpha`` None: the share of active inputs is then exact; the reference passes
    ``alpha=False``). The similarity functions get the indicator plus ``noise`` (default
    :data:`SYNTHETIC_NOISE`; 0 gives them the binary activations too).
    """
    if noise is None:
        noise = 0.0 if scorer.kind == "metric" else SYNTHETIC_NOISE
    acts, presence, right = synthetic_setting(n_inputs, frequencies, device, noise, seed)
    if scorer.kind == "metric":
        scorer = Scorer(scorer.name, "metric", scorer.params, alpha=None)
    return run(scorer, acts, presence, right, repetitions, seed, [f"{f:g}" for f in frequencies], progress)


def scorers(similarity_params: dict[str, dict[str, Any]] | None = None, alpha: float = M.DEFAULT_ALPHA,
            conventions: str = "dissect") -> list[Scorer]:
    """Every framework metric and every dissect similarity function, in report order."""
    from ..similarity import SIMILARITIES

    out = [Scorer(m, "metric", {"conventions": conventions}, alpha=alpha) for m in M.METRICS]
    out += [Scorer(s, "similarity", dict((similarity_params or {}).get(s, {}))) for s in SIMILARITIES]
    return out
