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

from . import artifacts as A
from . import metrics as M
from .errors import MismatchError, UsageError
from .runtime import note, progress, resolve_device, warn

#: Metrics written per unit, in column order.
COLUMNS = ("correlation", "cosine", "auprc", "f1", "iou", "auc")
#: A unit "is explained" above this simulation correlation (the share Linear Explanations report).
EXPLAINED = 0.1


def normalise(text: str) -> str:
    """Concept names match case-blind, with '_' as a space and runs of spaces as one."""
    return " ".join(str(text).replace("_", " ").casefold().split())


# ---------------------------------------------------------------------------
# CLIP presence
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """How an image-text cosine becomes a presence probability.

    * ``zscore`` (default): z = (cos − mean) / std over the scored images, per label;
      p = sigmoid(k (z − z0)). Standardising per label makes one calibration serve every
      CLIP model, whose cosine scales differ; k and z0 were fitted by maximum likelihood
      on the demo world's ground truth (``scripts/calibrate_presence.py``, README).
    * ``sigmoid``: p = sigmoid(a (cos + b)), Linear Explanations' form (their constants
      for ViT-L-14-336 openai: a = 58, b = −0.25).
    * ``raw``: the cosine itself.
    """

    kind: str = "zscore"
    a: float = 0.0
    b: float = 0.0

    def apply(self, cos):
        import torch

        cos = cos.to(torch.float64)
        if self.kind == "raw":
            return cos
        if self.kind == "sigmoid":
            return torch.sigmoid(self.a * (cos + self.b))
        mean = cos.mean(dim=0, keepdim=True)
        std = cos.std(dim=0, keepdim=True).clamp_min(1e-12)
        return torch.sigmoid(self.a * ((cos - mean) / std - self.b))

    def describe(self) -> dict[str, Any]:
        formula = {"zscore": "sigmoid(k * ((cos - mean) / std - z0))", "sigmoid": "sigmoid(a * (cos + b))",
                   "raw": "cos"}[self.kind]
        params = {"zscore": {"k": self.a, "z0": self.b}, "sigmoid": {"a": self.a, "b": self.b}, "raw": {}}[self.kind]
        return {"kind": self.kind, "formula": formula, **params}


#: Fitted on the demo world (2,000 probe images, every world word and class name as
#: annotations, tiny CLIP): see README "Simulation scores". Maximum likelihood k, z0.
ZSCORE_K, ZSCORE_Z0 = 10.3, 0.93
DEFAULT_CALIBRATION = Calibration("zscore", ZSCORE_K, ZSCORE_Z0)


def parse_calibration(spec: str | None) -> Calibration:
    """``zscore`` | ``zscore:K,Z0`` | ``sigmoid:A,B`` | ``raw``."""
    if spec is None or spec == "zscore":
        return DEFAULT_CALIBRATION
    if spec == "raw":
        return Calibration("raw")
    kind, _, rest = spec.partition(":")
    if kind in ("zscore", "sigmoid") and rest:
        try:
            a, b = (float(x) for x in rest.split(","))
        except ValueError:
            a = b = math.nan
        if math.isfinite(a) and math.isfinite(b):
            return Calibration(kind, a, b)
    raise UsageError(f"unknown --calibration {spec!r}",
                     hint="use zscore (default), zscore:K,Z0, sigmoid:A,B (e.g. sigmoid:58,-0.25) or raw")


# ---------------------------------------------------------------------------
# Where presence comes from
# ---------------------------------------------------------------------------

class AnnotatedPresence:
    """Presence of concepts from per-image annotations (or an ImageFolder probe's classes)."""

    def __init__(self, name: str, ids: list[str], concepts: list[str], values: np.ndarray, describe: dict[str, Any]):
        self.name = name
        self.describe = describe
        self._by_concept: dict[str, tuple[list[str], list[float]]] = {}
        for i, c, v in zip(ids, concepts, values.tolist()):
            entry = self._by_concept.setdefault(normalise(c), ([], []))
            entry[0].append(i)
            entry[1].append(v)

    @classmethod
    def from_file(cls, path) -> "AnnotatedPresence":
        ann = A.read_annotations(path)
        return cls("annotations", ann.ids, ann.concepts, ann.values,
                   {"source": "annotations", "path": str(Path(path).resolve()), "fingerprint": ann.fingerprint,
                    "concepts": len({normalise(c) for c in ann.concepts}), "rows": len(ann.ids)})

    @classmethod
    def from_classes(cls, ids: list[str], activations) -> "AnnotatedPresence":
        classes = []
        for i in ids:
            parent = Path(i).parent
            if str(parent) in ("", "."):
                raise UsageError(f"image {i!r} of {activations} is not in a class folder",
                                 hint="--annotations classes needs an ImageFolder probe (PROBE/CLASS/IMAGE); "
                                      "give an annotations CSV instead")
            classes.append(parent.name)
        return cls("classes", list(ids), classes, np.ones(len(ids)),
                   {"source": "classes", "concepts": len(set(classes)), "rule": "the image's folder name"})

    def known(self, label: str) -> bool:
        return normalise(label) in self._by_concept

    def matrix(self, labels: list[str], rows: dict[str, int], n: int):
        """[n, len(labels)] float64 presence on the scored images (``rows``: id -> row)."""
        import torch

        out = torch.zeros((n, len(labels)), dtype=torch.float64)
        for j, lab in enumerate(labels):
            ids, vals = self._by_concept.get(normalise(lab), ((), ()))
            for i, v in zip(ids, vals):
                r = rows.get(i)
                if r is not None:
                    out[r, j] = max(float(out[r, j]), v)
        return out


class ClipPresence:
    """Presence of a label estimated with the CLIP model of images.h5 (calibrated cosines)."""

    name = "clip"

    def __init__(self, images: A.Embeddings, text_of: dict[str, np.ndarray], calibration: Calibration, device):
        import torch

        self.images = images
        self.text_of = text_of
        self.calibration = calibration
        self.device = device
        self.describe = {"source": "clip", "clip": images.clip_spec, "clip_fingerprint": images.clip_fingerprint,
                         "images": str(images.path), "calibration": calibration.describe()}
        self._I = torch.from_numpy(np.ascontiguousarray(images.embeddings)).to(device)
        self._row_of = {k: i for i, k in enumerate(images.keys)}

    def known(self, label: str) -> bool:
        return True

    def matrix(self, labels: list[str], rows: dict[str, int], n: int):
        import torch

        order = sorted(rows, key=rows.get)
        idx = torch.tensor([self._row_of[i] for i in order], dtype=torch.long, device=self.device)
        T = torch.from_numpy(np.stack([self.text_of[lab] for lab in labels])).to(self.device)
        cos = self._I.index_select(0, idx).float() @ T.float().T
        return self.calibration.apply(cos).cpu()


def _clip_texts(images: A.Embeddings, labels: list[str], text, device: str, cache, batch_size: int) -> dict[str, np.ndarray]:
    """Text embedding of each distinct label: from ``text`` (text.h5) where it holds it, else made with the
    CLIP model images.h5 records (cached like every concept set)."""
    from .concepts import ConceptSet

    out: dict[str, np.ndarray] = {}
    if text is not None:
        txt = A.read_text_embeddings(text)
        A.check_same_clip(images, txt)
        pos = {k: i for i, k in enumerate(txt.keys)}
        for lab in labels:
            if lab in pos:
                out[lab] = txt.embeddings[pos[lab]]
    missing = [lab for lab in dict.fromkeys(labels) if lab not in out]
    if missing:
        from .embed import text_for_images
        from .fingerprint import fingerprint_strings

        cs = ConceptSet(f"labels ({len(missing)})", missing, f"labels:{fingerprint_strings(missing)}")
        emb = text_for_images(images, cs, cache=cache, device=device, batch_size=batch_size)
        for k, v in zip(emb.keys, emb.embeddings):
            out[k] = v
    return out


# ---------------------------------------------------------------------------
# The scoring
# ---------------------------------------------------------------------------

@dataclass
class Simulation:
    units: dict[str, list]
    summary: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)


def _scored_ids(lf: A.LabelFile, ids: list[str]) -> tuple[np.ndarray, bool]:
    """Rows of ``ids`` to score ``lf`` on, and whether they are held out from its labelling."""
    split = lf.metadata.get("split") if lf.kind in (A.LABELS_FORMAT, A.COMPOSED_FORMAT) else None
    if isinstance(split, dict) and "holdout" in split:
        from . import split as S

        mask = S.held_out(ids, split["holdout"], split.get("seed", 0))
        return np.flatnonzero(mask), True
    if lf.kind in (A.LABELS_FORMAT, A.COMPOSED_FORMAT):
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


def simulate(label_paths: list[str | os.PathLike], activations: str | os.PathLike, images=None, text=None,
             annotations: str | None = None, layer: str | None = None, alpha: float = M.DEFAULT_ALPHA,
             calibration: Calibration = DEFAULT_CALIBRATION, device: str = "auto", max_memory: int | None = None,
             cache=None, batch_size: int = 256) -> Simulation:
    """Score every unit of every labels file (see the module docstring); one row per (file, layer, unit)."""
    import torch

    from .similarity import memory_budget

    if not label_paths:
        raise UsageError("give at least one labels file")
    if not 0 < alpha <= 1:
        raise UsageError(f"--alpha must be in (0, 1], got {alpha}")
    files = [A.read_label_file(p, layer) for p in label_paths]
    if layer is not None:
        for lf in files:
            keep = [i for i, name in enumerate(lf.layers) if name == layer]
            if not keep:
                raise UsageError(f"{lf.path} labels no layer {layer!r}", hint=f"its layers: {', '.join(dict.fromkeys(lf.layers))}")
            for attr in ("layers", "units", "labels", "similarity"):
                setattr(lf, attr, [getattr(lf, attr)[i] for i in keep])
    needed = sorted({name for lf in files for name in lf.layers})
    acts = A.read_activations(activations, needed, data=False)
    ids = list(acts.ids)

    dev = resolve_device(device)
    if annotations is not None:
        source = (AnnotatedPresence.from_classes(ids, activations) if annotations == "classes"
                  else AnnotatedPresence.from_file(annotations))
    else:
        if images is None:
            raise UsageError("give --annotations FILE (or 'classes'), or --images images.h5 to estimate presence with CLIP")
        from .label import align_ids

        img = A.read_image_embeddings(images)
        img_rows, _ = align_ids(img, acts)
        if img_rows is not None:
            img = A.Embeddings(img.embeddings[img_rows], [img.keys[i] for i in img_rows], img.clip_model,
                               img.clip_pretrained, img.attrs, img.path)
        keep = set(img.keys)
        ids_kept = [i for i in ids if i in keep]
        if len(ids_kept) != len(ids):
            ids = ids_kept
        labels = sorted({lab for lf in files for lab in lf.labels})
        source = ClipPresence(img, _clip_texts(img, labels, text, device, cache, batch_size), calibration, dev)
    act_row = {k: i for i, k in enumerate(acts.ids)}

    budget = memory_budget(max_memory)
    units_out: dict[str, list] = {c: [] for c in ("labels", "method", "layer", "unit", "label", *COLUMNS,
                                                  "similarity", "n_images", "held_out", "presence", "reason")}
    summary = []
    layer_cache: dict[str, np.ndarray] = {}
    for lf in files:
        rows_idx, is_held_out = _scored_ids(lf, ids)
        if rows_idx.size < 2:
            raise UsageError(f"{lf.path}: only {rows_idx.size} image(s) to score on", hint="use a larger probe or --holdout")
        scored = [ids[i] for i in rows_idx]
        row_of = {k: r for r, k in enumerate(scored)}
        act_rows = np.array([act_row[k] for k in scored])
        by_layer: dict[str, list[int]] = {}
        for i, name in enumerate(lf.layers):
            by_layer.setdefault(name, []).append(i)
        for name, entries in by_layer.items():
            if name not in layer_cache:
                layer_cache = {name: A.read_activation_layer(activations, name)}  # one layer in memory at a time
            q_all = layer_cache[name]
            units = [lf.units[i] for i in entries]
            _check_units(lf, name, units, q_all.shape[1], activations)
            n = len(scored)
            block = max(1, min(len(entries), budget // max(1, n * 8 * 12)))
            vals = {c: np.full(len(entries), np.nan) for c in COLUMNS}
            reasons: list[str | None] = [None] * len(entries)
            with progress(f"simulate {Path(lf.path).name} {name}", len(entries), "units") as advance:
                for s in range(0, len(entries), block):
                    blk = list(range(s, min(len(entries), s + block)))
                    labs = [lf.labels[entries[j]] for j in blk]
                    a = torch.from_numpy(q_all[np.ix_(act_rows, [units[j] for j in blk])]).to(dev)
                    pres = source.matrix(labs, row_of, n).to(dev)
                    scores = M.score_all(a, pres, alpha, COLUMNS)
                    constant = (a.max(dim=0).values == a.min(dim=0).values).cpu().numpy()
                    absent = (pres.max(dim=0).values < 0.5).cpu().numpy() if source.name != "clip" else np.zeros(len(blk), bool)
                    for t, j in enumerate(blk):
                        if source.name != "clip" and not source.known(labs[t]):
                            reasons[j] = f"no image is annotated with {labs[t]!r}"
                        elif absent[t]:
                            reasons[j] = f"{labs[t]!r} is never present on the {n} scored images"
                        elif constant[t]:
                            reasons[j] = f"the unit's activation is constant on the {n} scored images"
                        for c in COLUMNS:
                            vals[c][j] = math.nan if reasons[j] else float(scores[c][t])
                    advance(len(blk))
            units_out["labels"] += [str(lf.path)] * len(entries)
            units_out["method"] += [lf.method] * len(entries)
            units_out["layer"] += [name] * len(entries)
            units_out["unit"] += units
            units_out["label"] += [lf.labels[i] for i in entries]
            for c in COLUMNS:
                units_out[c] += vals[c].tolist()
            units_out["similarity"] += [lf.similarity[i] for i in entries]
            units_out["n_images"] += [n] * len(entries)
            units_out["held_out"] += [is_held_out] * len(entries)
            units_out["presence"] += [source.name] * len(entries)
            units_out["reason"] += reasons
            corr = vals["correlation"]
            ok = ~np.isnan(corr)
            row = {"labels": str(lf.path), "method": lf.method, "layer": name, "units": len(entries),
                   "scored_units": int(ok.sum()), "n_images": n, "held_out": is_held_out, "presence": source.name,
                   "mean_correlation": float(corr[ok].mean()) if ok.any() else None,
                   "share_correlation_above_0.1": float((corr[ok] > EXPLAINED).mean()) if ok.any() else None}
            for c in COLUMNS[1:]:
                v = vals[c][~np.isnan(vals[c])]
                row[f"mean_{c}"] = float(v.mean()) if v.size else None
            summary.append(row)
            if not ok.any():
                warn(f"{lf.path} layer {name}: no unit could be scored ({reasons[0]})")
    metadata = {
        "activations": {"path": str(Path(activations).resolve()), "fingerprint": acts.attrs.get("inputs_fingerprint", ""),
                        "model": acts.model},
        "presence": source.describe,
        "alpha": alpha,
        "metrics": {"correlation": "Pearson r (the simulation score)", "cosine": "cosine of the raw vectors",
                    "auprc": f"average precision of presence for the top-{alpha:g} active images",
                    "f1": f"F1, unit active on its top {alpha:g}, concept present where presence >= 0.5",
                    "iou": "IoU, same binarisation as f1", "auc": "ROC AUC, same targets as auprc"},
        "labels": [{"path": str(Path(lf.path).resolve()), "kind": lf.kind, "method": lf.method,
                    "split": lf.metadata.get("split"), "similarity": lf.metadata.get("similarity"),
                    "concepts": (lf.metadata.get("concepts") or {}).get("name") if isinstance(lf.metadata.get("concepts"), dict) else None}
                   for lf in files],
        "summary": summary,
        "provenance": json.loads(A.provenance(stage="evaluate simulate")),
    }
    return Simulation(units_out, summary, metadata)


def write_simulation(sim: Simulation, out: str | os.PathLike) -> tuple[Path, Path]:
    """simulate.parquet (one row per labels file, layer and unit) and simulate.json (the summary) beside it."""
    import pyarrow as pa

    out = Path(out)
    schema = pa.schema([("labels", pa.string()), ("method", pa.string()), ("layer", pa.string()), ("unit", pa.int32()),
                        ("label", pa.string()), *[(c, pa.float64()) for c in COLUMNS], ("similarity", pa.float64()),
                        ("n_images", pa.int64()), ("held_out", pa.bool_()), ("presence", pa.string()), ("reason", pa.string())])
    A.write_parquet(out, pa.Table.from_pydict(sim.units, schema=schema), A.SIMULATE_FORMAT, sim.metadata)
    summary_path = out.with_suffix(".json")
    with A.atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(sim.summary, indent=2, default=str) + "\n")
    return out, summary_path


def read_scores(path: str | os.PathLike) -> dict[tuple[str, int], float]:
    """(layer, unit) -> simulation correlation of a simulate.parquet (the first labels file's, per unit)."""
    table = A.read_table(path, A.SIMULATE_FORMAT, columns=["layer", "unit", "correlation"])
    out: dict[tuple[str, int], float] = {}
    for lay, u, c in zip(table.column("layer").to_pylist(), table.column("unit").to_pylist(),
                         table.column("correlation").to_pylist()):
        out.setdefault((lay, u), c)
    return out


__all__ = ["simulate", "write_simulation", "read_scores", "Calibration", "parse_calibration", "DEFAULT_CALIBRATION"]
