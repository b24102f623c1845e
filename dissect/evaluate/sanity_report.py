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


@dataclass
class SanityReport:
    rows: list[dict[str, Any]]
    metadata: dict[str, Any]
    pass_rate: float = S.PASS_RATE


def _presence_matrix(source, ids: list[str]):
    """[N, M] float32 presence of every annotated concept on the images ``ids``, and the concept names."""
    import torch

    concepts = source.concepts
    row = {k: i for i, k in enumerate(ids)}
    return source.matrix(concepts, row, len(ids)).to(torch.float32), concepts


def _row(setting: str, res: S.SanityResult, aggregate: str) -> dict[str, Any]:
    """One setting's row: the rate the verdict is taken on (``aggregate``: min over the synthetic frequencies, mean
    over real units), and both the mean over cases (the framework's figure) and the minimum, named."""
    mean = {t: float(np.nanmean(res.rates[t])) for t in S.TESTS}
    low = {t: float(np.nanmin(res.rates[t])) for t in S.TESTS}
    rates = low if aggregate == "min" else mean
    return {"setting": setting, "scorer": res.scorer, "kind": res.kind, "repetitions": res.repetitions,
            "missing_rate": rates["missing"], "extra_rate": rates["extra"],
            "missing_pass": rates["missing"] >= S.PASS_RATE, "extra_pass": rates["extra"] >= S.PASS_RATE,
            "missing_rate_mean": mean["missing"], "extra_rate_mean": mean["extra"],
            "missing_rate_min": low["missing"], "extra_rate_min": low["extra"],
            "cases": res.settings, "missing_rates": res.rates["missing"], "extra_rates": res.rates["extra"],
            "missing_mean_diff": res.mean_diff["missing"], "extra_mean_diff": res.mean_diff["extra"]}


def run_report(activations=None, annotations: str | None = None, labels=None, layers: list[str] | None = None,
               repetitions: int = 100, n_inputs: int = 100_000, seed: int = 0, alpha: float = M.DEFAULT_ALPHA,
               synthetic: bool = True) -> SanityReport:
    import torch

    from ..concepts import normalise
    from .presence import AnnotatedPresence

    if not 0 < alpha <= 1:  # also refuses NaN
        raise UsageError(f"--alpha must be in (0, 1], got {alpha}", hint="the top fraction of images on which a "
                         "unit counts as active; the framework's default is 0.005")
    if (activations is None) != (annotations is None):
        raise UsageError("give --activations and --annotations together (or neither, for the synthetic setting only)")
    if not synthetic and activations is None:
        raise UsageError("nothing to test: --no-synthetic without --activations and --annotations")
    scorers = S.scorers(alpha=alpha)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"epsilon": S.EPSILON, "pass_rate": S.PASS_RATE, "repetitions": repetitions, "seed": seed,
                            "alpha": alpha}
    if synthetic:
        setting = f"synthetic ({n_inputs} inputs)"
        with progress("sanity, synthetic", len(scorers) * repetitions, "draws") as advance:
            for sc in scorers:
                res = S.synthetic(sc, n_inputs=n_inputs, repetitions=repetitions, seed=seed, progress=advance)
                rows.append(_row(setting, res, "min"))
        meta["synthetic"] = {"n_inputs": n_inputs, "frequencies": list(S.FREQUENCIES)}
    if activations is not None:
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
        meta["real"] = {"activations": str(Path(activations).resolve()), "annotations": source.describe,
                        "pairing": "labels" if lf is not None else "highest IoU", "layers": {}}
        for name in acts.layers:
            q = torch.from_numpy(A.read_activation_layer(activations, name)).to(torch.float32)
            if lf is not None:
                pairs = [(u, col_of.get(normalise(lab))) for lay, u, lab in zip(lf.layers, lf.units, lf.labels) if lay == name]
                pairs = [(u, c) for u, c in pairs if c is not None and u < q.shape[1]]
            else:
                act = M.active(q, alpha).to(torch.float32)
                pr = (pres >= 0.5).to(torch.float32)
                tp = act.T @ pr
                iou = tp / (act.sum(0)[:, None] + pr.sum(0)[None, :] - tp).clamp_min(1)
                pairs = [(u, int(c)) for u, c in enumerate(iou.argmax(dim=1).tolist())]
            pairs = [(u, c) for u, c in pairs if bool(present[c])]
            if not pairs:
                note(f"layer {name}: no unit is paired with an annotated concept; skipped")
                continue
            units = torch.tensor([u for u, _ in pairs])
            right = torch.tensor([c for _, c in pairs])
            qa = q[:, units]
            # units vs every concept for the similarity functions; vs their own concept for the metrics
            setting = f"{Path(activations).name} {name} ({len(pairs)} units)"
            with progress(f"sanity, {name}", len(scorers) * repetitions, "draws") as advance:
                for sc in scorers:
                    res = S.run(sc, qa, pres, right, repetitions, seed, [str(u) for u, _ in pairs], advance)
                    rows.append(_row(setting, res, "mean"))
            meta["real"]["layers"][name] = {"units": len(pairs), "concepts": len(concepts)}
        if not meta["real"]["layers"]:
            raise UsageError(f"no unit of {activations} is paired with a concept present on some of its {len(ids)} "
                             "images and absent on others, so none can be tested",
                             hint="record over more (and more varied) images, or check --labels and --annotations")
    meta["provenance"] = json.loads(A.provenance(stage="evaluate sanity"))
    return SanityReport(rows, meta)


def write_report(rep: SanityReport, out: str | os.PathLike) -> tuple[Path, Path]:
    """sanity.parquet (one row per setting and scorer) and sanity.json (the rates and verdicts) beside it."""
    columns = {name: [r[name] for r in rep.rows] for name in A.KINDS[A.SANITY_FORMAT].names()}
    summary = [{k: r[k] for k in ("setting", "scorer", "kind", "missing_rate", "extra_rate", "missing_pass", "extra_pass")}
               for r in rep.rows]
    _, summary_path = A.write_table(out, A.SANITY_FORMAT, columns, rep.metadata, summary=summary)
    return Path(out), summary_path
