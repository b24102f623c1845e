"""``dissect evaluate sanity``: the framework's sanity tests, on its synthetic setting and on one's own units.

(a) Synthetic: :func:`dissect.sanity.synthetic` for every metric and similarity function.
(b) Real: the units of activations.h5 with per-image annotations. Each unit is paired with
    its concept (its label's, from ``--labels``, or else the annotated concept of highest
    IoU, as the framework does for hidden layers); the annotations are perturbed and each
    scorer must score the pair lower. A unit decreases in a repetition when its normalised
    change is below −ε; the rate reported is the share of (unit, repetition) pairs that
    decrease, and a scorer passes when it reaches :data:`dissect.sanity.PASS_RATE`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as A
from . import metrics as M
from . import sanity as S
from ..errors import UsageError
from ..runtime import note, progress
from ..settings import Settings, no_other_fields


@dataclass
class SanityReport:
    rows: list[dict[str, Any]]
    metadata: dict[str, Any]
    pass_rate: float = S.PASS_RATE


#: ``--alpha`` words: ``best`` chooses α per metric on a validation share of the units (the framework's procedure
#: for a final layer), ``auto`` does so on layers recorded as the model's output and keeps the fixed default elsewhere.
ALPHA_WORDS = ("auto", "best")


def parse_alpha(value: "str | float") -> "str | float":
    """``auto``, ``best`` or a top fraction in (0, 1]."""
    if isinstance(value, str) and value.strip().lower() in ALPHA_WORDS:
        return value.strip().lower()
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--alpha must be a number in (0, 1], 'auto' or 'best', got {value!r}") from None
    if not 0 < alpha <= 1:  # also refuses NaN
        raise UsageError(f"--alpha must be in (0, 1], got {alpha:g}", hint="the top fraction of images on which a "
                         "unit counts as active; the framework's default is 0.005 (or give 'best' or 'auto')")
    return alpha


@dataclass(frozen=True)
class SanitySettings(Settings):
    """What the sanity tests run: ``repetitions`` draws of each perturbation, the synthetic setting's ``n_inputs``
    (run when ``synthetic``), the ``seed`` of the draws, the binarised metrics' ``alpha`` (:func:`parse_alpha`) on
    real units, and the metrics' ``conventions`` (:data:`dissect.evaluate.metrics.CONVENTIONS`)."""

    repetitions: int = 100
    n_inputs: int = 100_000
    seed: int = 0
    alpha: "str | float" = "auto"
    conventions: str = "dissect"
    synthetic: bool = True

    def check(self) -> None:
        parse_alpha(self.alpha)
        if self.conventions not in M.CONVENTIONS:
            raise UsageError(f"unknown --conventions {self.conventions!r}", hint=f"use one of {', '.join(M.CONVENTIONS)}")
        if self.repetitions < 1 or self.n_inputs < 100:
            raise UsageError("--repetitions must be at least 1 and --n-inputs at least 100")


def _presence_matrix(source, ids: list[str]):
    """[N, M] float32 presence of every annotated concept on the images ``ids``, and the concept names."""
    import torch

    concepts = source.concepts
    row = {k: i for i, k in enumerate(ids)}
    return source.matrix(concepts, row, len(ids)).to(torch.float32), concepts


def _row(setting: str, res: S.SanityResult, aggregate: str, scorer: S.Scorer, choice: str | None) -> dict[str, Any]:
    """One setting's row: the rate the verdict is taken on (``aggregate``: min over the synthetic frequencies, mean
    over real units), and both the mean over cases (the framework's figure) and the minimum, named."""
    mean = {t: float(np.nanmean(res.rates[t])) for t in S.TESTS}
    low = {t: float(np.nanmin(res.rates[t])) for t in S.TESTS}
    rates = low if aggregate == "min" else mean
    binarised = scorer.kind == "metric" and scorer.name in M.BINARISED
    lam = scorer.params.get("lam", M.WPMI_LAMBDA) if scorer.kind == "metric" and scorer.name == "wpmi" else None
    return {"setting": setting, "scorer": res.scorer, "kind": res.kind, "repetitions": res.repetitions,
            "alpha": scorer.alpha if binarised else None, "lam": lam, "alpha_choice": choice if binarised else None,
            "conventions": scorer.params.get("conventions") if scorer.kind == "metric" else None,
            "missing_rate": rates["missing"], "extra_rate": rates["extra"],
            "missing_pass": rates["missing"] >= S.PASS_RATE, "extra_pass": rates["extra"] >= S.PASS_RATE,
            "missing_rate_mean": mean["missing"], "extra_rate_mean": mean["extra"],
            "missing_rate_min": low["missing"], "extra_rate_min": low["extra"],
            "cases": res.settings, "missing_rates": res.rates["missing"], "extra_rates": res.rates["extra"],
            "missing_mean_diff": res.mean_diff["missing"], "extra_mean_diff": res.mean_diff["extra"]}


def _synthetic_rows(scorers: list[S.Scorer], st: SanitySettings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    setting = f"synthetic ({st.n_inputs} inputs)"
    rows = []
    with progress("sanity, synthetic", len(scorers) * st.repetitions, "draws") as advance:
        for sc in scorers:
            res = S.synthetic(sc, n_inputs=st.n_inputs, repetitions=st.repetitions, seed=st.seed, progress=advance)
            rows.append(_row(setting, res, "min", S.Scorer(sc.name, sc.kind, sc.params, None), "binary activations"))
    return rows, {"n_inputs": st.n_inputs, "frequencies": list(S.FREQUENCIES), "similarity_noise": S.SYNTHETIC_NOISE}


def _pairs(name: str, q, pres, lf, col_of: dict[str, int], present, alpha: float) -> list[tuple[int, int]]:
    """(unit, concept column) of the layer's testable units: by their labels, or the annotated concept of highest IoU."""
    import torch

    from ..concepts import normalise

    if lf is not None:
        pairs = [(u, col_of.get(normalise(lab))) for lay, u, lab in zip(lf.layers, lf.units, lf.labels) if lay == name]
        pairs = [(u, c) for u, c in pairs if c is not None and u < q.shape[1]]
    else:
        act = M.active(q, alpha).to(torch.float32)
        pr = (pres >= 0.5).to(torch.float32)
        tp = act.T @ pr
        iou = tp / (act.sum(0)[:, None] + pr.sum(0)[None, :] - tp).clamp_min(1)
        pairs = [(u, int(c)) for u, c in enumerate(iou.argmax(dim=1).tolist())]
    return [(u, c) for u, c in pairs if bool(present[c])]


def _layer_rows(name: str, q, pres, pairs, scorers: list[S.Scorer], st: SanitySettings, final: bool, label: str):
    """Every scorer's row on one layer's paired units; on a final layer (``final``) each binarised metric's α is
    chosen on a validation share of the units and the tests run on the others (the framework's procedure)."""
    import torch

    units = torch.tensor([u for u, _ in pairs])
    right = torch.tensor([c for _, c in pairs])
    chosen: dict[str, S.AlphaChoice] = {}
    tested = torch.arange(len(pairs))
    if final:
        val, tested = S.validation_split(len(pairs), st.seed)
        for sc in scorers:
            if sc.kind == "metric" and sc.name in M.BINARISED:
                chosen[sc.name] = S.best_alpha(sc, q[:, units[val]], pres, right[val])
    qa, right_t = q[:, units[tested]], right[tested]
    setting = f"{label} {name} ({len(tested)} units)"
    rows = []
    with progress(f"sanity, {name}", len(scorers) * st.repetitions, "draws") as advance:
        for sc in scorers:
            c = chosen.get(sc.name) if sc.kind == "metric" else None
            if c is not None:
                sc = S.Scorer(sc.name, sc.kind, {**sc.params, **({"lam": c.lam} if c.lam is not None else {})}, c.alpha)
            res = S.run(sc, qa, pres, right_t, st.repetitions, st.seed, [str(pairs[i][0]) for i in tested.tolist()],
                        advance)
            how = (f"validation AUPRC {c.auprc:.3f} on {c.units} units" if c is not None else "fixed")
            rows.append(_row(setting, res, "mean", sc, how))
    kept = set(tested.tolist())
    meta = {"units": len(tested), "final_layer": final,
            "validation_units": [pairs[i][0] for i in range(len(pairs)) if i not in kept],
            "alphas": {k: {"alpha": v.alpha, "lam": v.lam, "validation_auprc": v.auprc} for k, v in chosen.items()}}
    return rows, meta


def run_report(activations=None, annotations: str | None = None, labels=None, layers: list[str] | None = None,
               settings: SanitySettings | None = None, **fields: Any) -> SanityReport:
    """The synthetic setting (``settings.synthetic``) and, with ``activations`` and ``annotations``, the units of
    every layer (``layers``: all) paired with their concept (``labels``, else the annotated concept of highest IoU).
    ``settings`` (:class:`SanitySettings`) may also be given as its fields."""
    st = SanitySettings.of(settings, **SanitySettings.take(fields))
    no_other_fields(fields, "run_report")
    alpha = parse_alpha(st.alpha)
    if (activations is None) != (annotations is None):
        raise UsageError("give --activations and --annotations together (or neither, for the synthetic setting only)")
    if not st.synthetic and activations is None:
        raise UsageError("nothing to test: --no-synthetic without --activations and --annotations")
    fixed = alpha if isinstance(alpha, float) else M.DEFAULT_ALPHA
    scorers = S.scorers(alpha=fixed, conventions=st.conventions)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"epsilon": S.EPSILON, "pass_rate": S.PASS_RATE, "repetitions": st.repetitions,
                            "seed": st.seed, "alpha": alpha, "conventions": st.conventions}
    if st.synthetic:
        rows, meta["synthetic"] = _synthetic_rows(scorers, st)
    if activations is not None:
        meta["real"] = _real(activations, annotations, labels, layers, scorers, st, alpha, rows)
    meta["provenance"] = json.loads(A.provenance(stage="evaluate sanity"))
    return SanityReport(rows, meta)


def _real(activations, annotations, labels, layers, scorers, st: SanitySettings, alpha, rows: list) -> dict[str, Any]:
    import torch

    from .presence import AnnotatedPresence

    acts = A.read_activations(activations, layers, data=False)
    ids = list(acts.ids)
    source = AnnotatedPresence.open(annotations, ids, activations)
    if len(ids) < 2:
        raise UsageError(f"{activations} holds {len(ids)} image; the sanity tests move labels between images",
                         hint="record the units over a probe of many images (hundreds)")
    pres, concepts = _presence_matrix(source, ids)
    on = pres >= 0.5
    if not bool(on.any()):
        raise UsageError(f"no annotated concept is present on the images of {activations}",
                         hint="annotation ids must be the image ids stored in activations.h5 (see `dissect info`)")
    # Testable: a concept present on some images and absent on others (missing labels need the one, extra the other).
    present = on.any(dim=0) & ~on.all(dim=0)
    col_of = {c: j for j, c in enumerate(concepts)}
    lf = A.read_label_file(labels) if labels is not None else None
    meta: dict[str, Any] = {"activations": str(Path(activations).resolve()), "annotations": source.describe,
                            "pairing": "labels" if lf is not None else "highest IoU", "layers": {}}
    fixed = alpha if isinstance(alpha, float) else M.DEFAULT_ALPHA
    for name in acts.layers:
        q = torch.from_numpy(A.read_activation_layer(activations, name)).to(torch.float32)
        pairs = _pairs(name, q, pres, lf, col_of, present, fixed)
        if not pairs:
            note(f"layer {name}: no unit is paired with an annotated concept; skipped")
            continue
        final = alpha == "best" or (alpha == "auto" and bool(acts.layer_attrs.get(name, {}).get("model_output")))
        if final and len(pairs) < 2:
            note(f"layer {name}: one paired unit, none left to choose α on; α = {fixed:g}")
            final = False
        layer_rows, meta["layers"][name] = _layer_rows(name, q, pres, pairs, scorers, st, final, Path(activations).name)
        meta["layers"][name]["concepts"] = len(concepts)
        rows += layer_rows
    if not meta["layers"]:
        raise UsageError(f"no unit of {activations} is paired with a concept present on some of its {len(ids)} "
                         "images and absent on others, so none can be tested",
                         hint="record over more (and more varied) images, or check --labels and --annotations")
    return meta


def write_report(rep: SanityReport, out: str | os.PathLike) -> tuple[Path, Path]:
    """sanity.parquet (one row per setting and scorer) and sanity.json (the rates and verdicts) beside it."""
    columns = {name: [r[name] for r in rep.rows] for name in A.KINDS[A.SANITY_FORMAT].names()}
    summary = [{k: r[k] for k in ("setting", "scorer", "kind", "missing_rate", "extra_rate", "missing_pass", "extra_pass")}
               for r in rep.rows]
    _, summary_path = A.write_table(out, A.SANITY_FORMAT, columns, rep.metadata, summary=summary)
    return Path(out), summary_path
