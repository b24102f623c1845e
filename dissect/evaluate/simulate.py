"""``dissect evaluate simulate``: how well each unit's label predicts its activation on held-out images.

A label is scored the way the field now scores explanations (Linear Explanations,
Oikarinen & Weng 2024; the unified framework of Oikarinen, Yan & Weng 2025): the
presence of the label on each scored image is compared with the unit's activation
there. The Pearson correlation is the *simulation score*; cosine, AUPRC, F1 and IoU
(the other metrics that pass the framework's sanity tests) and AUC come with it
(:mod:`dissect.metrics`).

Presence comes from, in order of preference:

* annotations: a long-form CSV/Parquet (``id``, ``concept``, optional ``value``), or
  ``classes``: the class folder of each image of an ImageFolder probe;
* CLIP: the cosine of each image with the label's text, calibrated to a probability
  (:class:`Calibration`), with the CLIP model of images.h5.

Labels are scored on the images they were not made on when ``dissect label
--holdout`` recorded a split; otherwise on all images, with a warning.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as A
from . import metrics as M
from ..errors import MismatchError, UsageError
from ..runtime import progress, resolve_device, warn
from ..settings import Compute, Settings, no_other_fields
from .presence import DEFAULT_CALIBRATION, AnnotatedPresence, Calibration, ClipPresence, clip_texts, parse_calibration

#: Metrics written per unit by default, in column order: all of the framework's (the simulation score first).
COLUMNS = M.METRICS
#: A unit "is explained" above this simulation correlation (the share Linear Explanations report).
EXPLAINED = 0.1


# ---------------------------------------------------------------------------
# The scoring
# ---------------------------------------------------------------------------

@dataclass
class Simulation:
    units: dict[str, list]
    summary: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = COLUMNS


def _scored_ids(lf: A.LabelFile, ids: list[str]) -> tuple[np.ndarray, bool]:
    """Rows of ``ids`` to score ``lf`` on, and whether they are held out from its labelling."""
    ours = (A.LABELS_FORMAT, A.COMPOSED_FORMAT, A.EXPLAIN_FORMAT)
    split = lf.metadata.get("split") if lf.kind in ours else None
    if isinstance(split, dict) and "holdout" in split:
        from .. import split as S

        mask = S.held_out(ids, *S.stored(split, str(lf.path)))
        return np.flatnonzero(mask), True
    if lf.kind in ours:
        warn(f"{lf.path} was labelled on all images: scoring it on the same images is optimistic "
             "(label with --holdout FRACTION for a held-out score)")
    else:
        warn(f"{lf.path} ({A.EXTERNAL_LABEL_KINDS[lf.kind].split(' (')[0]}) records no split: scored on all images")
    return np.arange(len(ids)), False


def _check_units(lf: A.LabelFile, layer: str, units: list[int], n_units: int, activations) -> None:
    top = max(units)
    if top >= n_units:
        hint = ("its units look 1-based (a NetDissect tally: pass it as such)" if top == n_units and min(units) >= 1
                else "give labels of the same model and layer as the activations")
        raise MismatchError(f"{lf.path} labels unit {top} of layer {layer!r}, but {activations} records "
                            f"{n_units} units (0..{n_units - 1})", hint=hint)


def _weighted_presence(source, lf: A.LabelFile, rows_of_units: list[int], distinct: list[str], row_of, n):
    """A linear explanation's presence: Σ w_i c_i / Σ w_i of its concepts (in [0, 1], so the binarised
    metrics read it like a single concept's); and, per distinct text, what no image is annotated with
    (None when every concept is)."""
    import torch

    by_text = {}
    for i in rows_of_units:
        by_text.setdefault(lf.labels[i], (lf.parts[i], lf.part_weights[i] if lf.part_weights is not None else None))
    out = torch.zeros((n, len(distinct)), dtype=torch.float64)
    unknown: dict[str, Any] = {}
    for j, text in enumerate(distinct):
        concepts, weights = by_text[text]
        missing = [c for c in concepts if not source.known(c)]
        unknown[text] = repr(missing[0]) if missing else None
        if weights is None:  # a composition read as AND: present where every part is (the product)
            out[:, j] = source.matrix(list(concepts), row_of, n).to(torch.float64).prod(dim=1)
            continue
        if not concepts or sum(weights) <= 0:
            unknown[text] = "any concept (an empty explanation)"
            continue
        cols = source.matrix(list(concepts), row_of, n).to(torch.float64)
        w = torch.tensor(weights, dtype=torch.float64)
        out[:, j] = cols @ w / w.sum()
    return out, unknown


#: How a composed label predicts its unit in ``simulate``.
COMPOSED_READINGS = ("phrase", "and")


@dataclass(frozen=True)
class SimulateSettings(Settings):
    """How ``simulate`` scores: a unit counts as active on its top ``alpha`` of the scored images (the binarised
    metrics), CLIP presence is calibrated with ``calibration``, and a composed label predicts as its phrase or
    as the AND of its parts (``composed``: ``COMPOSED_READINGS``). With ``annotations="classes"``, ``class_names``
    names the probe's class folders and ``superclasses`` makes each class's superclasses present too."""

    alpha: float = M.DEFAULT_ALPHA
    calibration: Calibration = DEFAULT_CALIBRATION
    composed: str = "phrase"
    class_names: str | None = None
    superclasses: str | None = None
    metrics: tuple[str, ...] = COLUMNS
    conventions: str = "dissect"
    seed: int = 0

    def check(self) -> None:
        if not 0 < self.alpha <= 1:
            raise UsageError(f"--alpha must be in (0, 1], got {self.alpha}")
        if self.composed not in COMPOSED_READINGS:
            raise UsageError(f"unknown --composed {self.composed!r}", hint=f"use one of {', '.join(COMPOSED_READINGS)}")
        if self.conventions not in M.CONVENTIONS:
            raise UsageError(f"unknown --conventions {self.conventions!r}", hint=f"use one of {', '.join(M.CONVENTIONS)}")
        unknown = [m for m in self.metrics if m not in M.METRICS]
        if unknown:
            raise UsageError(f"unknown metric {unknown[0]!r}", hint=f"use 'all' or some of {', '.join(M.METRICS)}")
        if "correlation" not in self.metrics:
            raise UsageError("--metrics must include correlation (the simulation score every summary reads)")


def parse_metrics(spec: str | None) -> tuple[str, ...]:
    """``all`` (or None) or a comma-separated list of metric names, in :data:`COLUMNS` order, correlation first."""
    if spec is None or spec.strip().lower() == "all":
        return COLUMNS
    asked = [m.strip().lower().replace("_", "-") for m in spec.split(",") if m.strip()]
    return tuple(m for m in COLUMNS if m in asked or m == "correlation") + tuple(m for m in asked if m not in COLUMNS)


def _presence_source(files, acts, activations, images, text, annotations, settings: SimulateSettings, compute: Compute):
    """(where presence comes from, the ids of the images that can be scored)."""
    ids = list(acts.ids)
    if annotations is not None:
        from .presence import ClassNames

        classes = ClassNames.open(settings.class_names, settings.superclasses) if annotations == "classes" else None
        return AnnotatedPresence.open(annotations, ids, activations, classes), ids
    if images is None:
        raise UsageError("give --annotations FILE (or 'classes'), or --images images.h5 to estimate presence with CLIP")
    from ..inputs import aligned_images

    img, _ = aligned_images(A.read_image_embeddings(images), acts)
    keep = set(img.keys)
    ids = [i for i in ids if i in keep]  # images one of the passes skipped are left out (with a warning)
    labels = sorted({lab for lf in files for lab in lf.labels if lf.parts is None}
                    | {c for lf in files if lf.parts is not None for cs in lf.parts for c in cs})
    texts = clip_texts(img, labels, text, compute.device, compute.cache, compute.batch_size)
    return ClipPresence(img, texts, settings.calibration, resolve_device(compute.device)), ids


def predictions(source, lf: A.LabelFile, entries: list[int], blk: list[int], scored: dict[str, int], device):
    """What the labels of a block of units (``blk``: positions into ``entries``) predict on the ``scored`` images:
    ``(presence [n, distinct labels], index (each unit's column), the units' labels, {label: the concept no image
    is annotated with, or None})`` (a concept's presence; an explanation's weighted presence)."""
    import torch

    n = len(scored)
    labs = [lf.labels[entries[j]] for j in blk]
    distinct = list(dict.fromkeys(labs))
    col = {lab: j for j, lab in enumerate(distinct)}
    index = torch.tensor([col[lab] for lab in labs], dtype=torch.long, device=device)
    if lf.parts is None:
        pres_u = source.matrix(distinct, scored, n).to(device)
        unknown = {lab: None if source.known(lab) else repr(lab) for lab in distinct}
    else:
        pres_u, unknown = _weighted_presence(source, lf, [entries[j] for j in blk], distinct, scored, n)
        pres_u = pres_u.to(device)
    return pres_u, index, labs, unknown


def _score_block(source, lf: A.LabelFile, entries: list[int], blk: list[int], a, scored: dict[str, int],
                 settings: SimulateSettings):
    """The metrics of a block of units (``blk``: positions into ``entries``) with activations ``a`` [n, len(blk)] on
    the scored images; returns ({metric: values}, reasons) with NaN and the reason where a unit cannot be scored."""
    n = len(scored)
    pres_u, index, labs, unknown = predictions(source, lf, entries, blk, scored, a.device)
    units = [lf.units[entries[j]] for j in blk]
    options = M.Options(settings.conventions, column_seeds=tuple(_unit_seed(settings.seed, u) for u in units))
    scores = M.score_all(a, pres_u, settings.alpha, settings.metrics, index=index, options=options)
    pres = pres_u.index_select(1, index)
    constant = (a.max(dim=0).values == a.min(dim=0).values).cpu().numpy()
    absent = (pres.max(dim=0).values < 0.5).cpu().numpy() if source.name != "clip" else np.zeros(len(blk), bool)
    flat = (pres.max(dim=0).values == pres.min(dim=0).values).cpu().numpy()   # no correlation with a constant
    vals = {c: [] for c in settings.metrics}
    reasons: list[str | None] = []
    for t in range(len(blk)):
        reason = None
        if source.name != "clip" and unknown[labs[t]]:
            reason = f"no image is annotated with {unknown[labs[t]]}"
        elif absent[t]:
            reason = f"{labs[t]!r} is never present on the {n} scored images"
        elif flat[t]:
            reason = (f"{labs[t]!r} is present on all {n} scored images" if source.name != "clip"
                      else f"the presence of {labs[t]!r} is the same on all {n} scored images")
        elif constant[t]:
            reason = f"the unit's activation is constant on the {n} scored images"
        reasons.append(reason)
        for c in settings.metrics:
            vals[c].append(math.nan if reason else float(scores[c][t]))
    return vals, reasons


def _unit_seed(seed: int, unit: int) -> int:
    """The seed of one unit's random draws (the sampled metrics): the same whichever units are scored with it."""
    return (int(seed) * 1_000_003 + int(unit)) % (2**63 - 1)


def _summary_row(lf: A.LabelFile, name: str, n_units: int, n: int, is_held_out: bool, source, vals) -> dict[str, Any]:
    corr = vals["correlation"]
    ok = ~np.isnan(corr)
    row = {"labels": str(lf.path), "method": lf.method, "layer": name, "units": n_units,
           "scored_units": int(ok.sum()), "n_images": n, "held_out": is_held_out, "presence": source.name,
           "mean_correlation": float(corr[ok].mean()) if ok.any() else None,
           "share_correlation_above_0.1": float((corr[ok] > EXPLAINED).mean()) if ok.any() else None}
    for c in [c for c in vals if c != "correlation"]:
        v = vals[c][~np.isnan(vals[c])]
        row[f"mean_{c}"] = float(v.mean()) if v.size else None
    return row


def _metadata(activations, acts, source, settings: SimulateSettings, files, summary) -> dict[str, Any]:
    alpha = settings.alpha
    return {
        "activations": {"path": str(Path(activations).resolve()), "fingerprint": acts.attrs.get("inputs_fingerprint", ""),
                        "model": acts.model},
        "presence": source.describe,
        "alpha": alpha,
        "composed": settings.composed,
        "conventions": settings.conventions,
        "seed": settings.seed,
        "metrics": {m: M.describe(m, alpha) for m in settings.metrics},
        "labels": [{"path": str(Path(lf.path).resolve()), "kind": lf.kind, "method": lf.method,
                    "split": lf.metadata.get("split"), "similarity": lf.metadata.get("similarity"),
                    "concepts": (lf.metadata.get("concepts") or {}).get("name") if isinstance(lf.metadata.get("concepts"), dict) else None}
                   for lf in files],
        "summary": summary,
        "provenance": json.loads(A.provenance(stage="evaluate simulate")),
    }


class _Layers:
    """One activation layer in memory at a time, its scored rows selected once per labels file."""

    def __init__(self, activations):
        self.activations, self.name, self.q = activations, None, None

    def rows(self, name: str, act_rows: np.ndarray) -> np.ndarray:
        if name != self.name:
            self.name, self.q = name, A.read_activation_layer(self.activations, name)
        all_rows = act_rows.size == self.q.shape[0] and bool((act_rows == np.arange(self.q.shape[0])).all())
        return self.q if all_rows else self.q[act_rows]

    @property
    def width(self) -> int:
        return int(self.q.shape[1])


def simulate(label_paths: list[str | os.PathLike | A.LabelFile], activations: str | os.PathLike, images=None, text=None,
             annotations: str | None = None, layer: str | None = None, settings: SimulateSettings | None = None,
             compute: Compute | None = None, **fields: Any) -> Simulation:
    """Score every unit of every labels file (see the module docstring); one row per (file, layer, unit). A file
    may also be given as a ``LabelFile`` already read (``explain`` scores its explanations so).

    ``settings.composed``: how a composed label predicts (``phrase``: CLIP's presence of the composed
    text; ``and``: the product of its parts' presences, what ``compose --select simulate`` uses).
    ``settings`` (:class:`SimulateSettings`) and ``compute`` may also be given as their fields."""
    import torch

    from ..budget import units_per_simulation_block

    settings = SimulateSettings.of(settings, **SimulateSettings.take(fields))
    compute = Compute.of(compute, **Compute.take(fields))
    no_other_fields(fields, "simulate")
    if not label_paths:
        raise UsageError("give at least one labels file")
    known = list(A.read_activations(activations, data=False).layers)  # for files that name their layer in the file name
    files = [p if isinstance(p, A.LabelFile) else A.read_label_file(p, layer, composed=settings.composed, known_layers=known)
             for p in label_paths]
    if layer is not None:
        for lf in files:
            lf.select_layer(layer)
    acts = A.read_activations(activations, sorted({name for lf in files for name in lf.layers}), data=False)
    source, ids = _presence_source(files, acts, activations, images, text, annotations, settings, compute)
    dev = resolve_device(compute.device)
    act_row = {k: i for i, k in enumerate(acts.ids)}
    columns = settings.metrics
    units_out: dict[str, list] = {c: [] for c in A.KINDS[A.SIMULATE_FORMAT].names(columns)}
    summary = []
    layers = _Layers(activations)
    for lf in files:
        rows_idx, is_held_out = _scored_ids(lf, ids)
        if rows_idx.size < 2:
            raise UsageError(f"{lf.path}: only {rows_idx.size} image(s) to score on", hint="use a larger probe or --holdout")
        scored_ids = [ids[i] for i in rows_idx]
        scored = {k: r for r, k in enumerate(scored_ids)}
        act_rows = np.array([act_row[k] for k in scored_ids])
        by_layer: dict[str, list[int]] = {}
        for i, name in enumerate(lf.layers):
            by_layer.setdefault(name, []).append(i)
        for name, entries in by_layer.items():
            q_scored = layers.rows(name, act_rows)   # the scored images' rows, selected once
            units = [lf.units[i] for i in entries]
            _check_units(lf, name, units, layers.width, activations)
            n = len(scored_ids)
            block = units_per_simulation_block(compute.budget, n, len(entries))
            vals: dict[str, list] = {c: [] for c in columns}
            reasons: list[str | None] = []
            with progress(f"simulate {Path(lf.path).name} {name}", len(entries), "units") as advance:
                for s in range(0, len(entries), block):
                    blk = list(range(s, min(len(entries), s + block)))
                    a = torch.from_numpy(q_scored[:, [units[j] for j in blk]]).to(dev)
                    v, r = _score_block(source, lf, entries, blk, a, scored, settings)
                    for c in columns:
                        vals[c] += v[c]
                    reasons += r
                    advance(len(blk))
            vals_np = {c: np.array(v, dtype=np.float64) for c, v in vals.items()}
            _add_rows(units_out, lf, name, entries, units, vals_np, reasons, n, is_held_out, source.name)
            summary.append(_summary_row(lf, name, len(entries), n, is_held_out, source, vals_np))
            if not (~np.isnan(vals_np["correlation"])).any():
                why = next((r for r in reasons if r), "their correlations are undefined")
                warn(f"{lf.path} layer {name}: no unit could be scored ({why})")
    return Simulation(units_out, summary, _metadata(activations, acts, source, settings, files, summary), columns)


def _add_rows(units_out, lf: A.LabelFile, name, entries, units, vals, reasons, n, is_held_out, presence) -> None:
    units_out["labels"] += [str(lf.path)] * len(entries)
    units_out["method"] += [lf.method] * len(entries)
    units_out["layer"] += [name] * len(entries)
    units_out["unit"] += units
    units_out["label"] += [lf.labels[i] for i in entries]
    for c in vals:
        units_out[c] += vals[c].tolist()
    units_out["similarity"] += [lf.similarity[i] for i in entries]
    units_out["n_images"] += [n] * len(entries)
    units_out["held_out"] += [is_held_out] * len(entries)
    units_out["presence"] += [presence] * len(entries)
    units_out["reason"] += reasons


def write_simulation(sim: Simulation, out: str | os.PathLike) -> tuple[Path, Path]:
    """simulate.parquet (one row per labels file, layer and unit) and simulate.json (the summary) beside it."""
    _, summary = A.write_table(out, A.SIMULATE_FORMAT, sim.units, sim.metadata, summary=sim.summary, metrics=sim.metrics)
    return Path(out), summary


def read_scores(path: str | os.PathLike) -> dict[tuple[str, int], float]:
    """(layer, unit) -> simulation correlation of a simulate.parquet (the first labels file's, per unit)."""
    table = A.read_table(path, A.SIMULATE_FORMAT, columns=["layer", "unit", "correlation"])
    out: dict[tuple[str, int], float] = {}
    for lay, u, c in zip(table.column("layer").to_pylist(), table.column("unit").to_pylist(),
                         table.column("correlation").to_pylist()):
        out.setdefault((lay, u), c)
    return out


__all__ = ["simulate", "write_simulation", "read_scores", "Calibration", "parse_calibration", "DEFAULT_CALIBRATION"]
