"""``dissect explain``: linear explanations, a sparse non-negative weighted sum of concepts per unit.

Linear Explanations (Oikarinen & Weng, ICML 2024) explain a unit by the concepts whose
presence, weighted and summed, predicts its activation:

    a(x) ≈ b + Σ_i w_i c_i(x),   w_i ≥ 0,   at most K concepts.

Fitted here, for all units of a layer at once:

1. the images are split by id (:mod:`dissect.split`): the *held-out* part (``holdout``)
   scores the explanation; the rest is split again (``val_fraction``) into a *train*
   part, on which weights are fitted, and a *validation* part, on which concepts are
   chosen;
2. *preselection*: each unit's ``width`` candidate concepts are those whose presence
   correlates most with its activation on the train part (concepts never present there
   are left out);
3. *greedy forward selection with refitting*: starting from nothing, each step refits the
   least-squares weights of the chosen concepts plus each remaining candidate (closed
   form, from per-unit Gram matrices of the candidates), rejects fits with a negative
   weight, and adds the candidate with the best validation correlation, as long as it
   improves the correlation by at least ``tolerance`` (the first concept is always
   taken); at most K concepts. The reference code searches the 10 best remaining
   concepts of an elastic-net ranking with tolerance 0.02 and refits by Adam; the
   preselection by correlation and the closed-form refit are ours (README, FIDELITY).

Everything after preselection is computed per unit in float64, from matrices of the
same shape for every unit, so a unit's explanation does not depend on which units are
fitted with it or in which order. Preselection scores are rounded to 1e-6 before the
ranking (ties: the lower concept index) for the same reason.
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
from .errors import UsageError
from .runtime import note, progress, resolve_device
from .settings import Compute, Settings, no_other_fields

DEFAULT_MAX_CONCEPTS = 5
DEFAULT_WIDTH = 20
DEFAULT_TOLERANCE = 0.02
DEFAULT_HOLDOUT = 0.2
DEFAULT_VAL_FRACTION = 0.2
#: Concept blocks of the preselection pass (a fixed tiling keeps every score independent of batching).
CONCEPT_BLOCK = 512


@dataclass
class Split:
    """Row indices of the train, validation and held-out images."""

    train: np.ndarray
    val: np.ndarray
    held: np.ndarray
    record: dict[str, Any]


def make_split(ids: list[str], holdout: float, val_fraction: float, seed: int) -> Split:
    from . import split as S

    held = S.held_out(ids, holdout, seed)
    # the validation part: a second hash (seed + 1) over the images that are not held out
    val = S.held_out(ids, val_fraction, seed + 1) & ~held
    train = ~held & ~val
    if train.sum() < 4 or val.sum() < 2 or held.sum() < 2:
        raise UsageError(f"{len(ids)} images are too few to split into train ({int(train.sum())}), validation "
                         f"({int(val.sum())}) and held-out ({int(held.sum())}) parts",
                         hint="use a larger probe, or a " + ("larger --holdout" if held.sum() < 2 else "smaller --holdout"))
    rec = S.record(holdout, seed, int((~held).sum()), int(held.sum()))
    rec.update({"val_fraction": float(val_fraction), "val_seed": int(seed) + 1, "n_train": int(train.sum()),
                "n_val": int(val.sum())})
    return Split(np.flatnonzero(train), np.flatnonzero(val), np.flatnonzero(held), rec)


class ConceptColumns:
    """Presence of every concept of the explanation's vocabulary, column blocks on demand ([N, k] float64)."""

    def __init__(self, names: list[str], columns, describe: dict[str, Any]):
        self.names = names
        self._columns = columns
        self.describe = describe

    def __call__(self, idx):
        return self._columns(idx)

    @classmethod
    def from_annotations(cls, source, ids: list[str]) -> "ConceptColumns":
        import torch

        names = source.concepts
        pres = source.matrix(names, {k: i for i, k in enumerate(ids)}, len(ids)).to(torch.float64)
        return cls(names, lambda idx: pres[:, torch.as_tensor(idx, dtype=torch.long)], source.describe)

    @classmethod
    def from_clip(cls, images: A.Embeddings, text: A.Embeddings, calibration, device) -> "ConceptColumns":
        """Every concept of ``text`` with its presence estimated with CLIP (``presence.CalibratedCosines``)."""
        import torch

        from .evaluate.presence import CalibratedCosines

        presence = CalibratedCosines(torch.from_numpy(np.ascontiguousarray(images.embeddings)).to(device),
                                     torch.from_numpy(np.ascontiguousarray(text.embeddings)).to(device), calibration)
        return cls(list(text.keys), presence.columns, {"source": "clip", "clip": images.clip_spec,
                                                       "clip_fingerprint": images.clip_fingerprint,
                                                       "concepts": text.attrs.get("concept_set", str(text.path)),
                                                       "n_concepts": len(text.keys), "calibration": calibration.describe()})


def preselect(a, concepts: ConceptColumns, split: Split, width: int, progress_cb=None):
    """[U, width] candidate concept indices per unit (best first) and [U, width] their train correlations.

    ``a`` [N, U] (float32 is enough: the ranking is rounded to 1e-6). Concepts never present (≥ 0.5) on the train images, or constant
    there, are never candidates; a unit with fewer eligible concepts gets -1 entries.
    """
    import torch

    train = torch.as_tensor(split.train)
    # the train rows of every unit, standardised, as float32: [n_train, U] is the largest array here
    az_t = torch.empty((train.numel(), a.shape[1]), dtype=torch.float32)
    for s in range(0, a.shape[1], 256):
        blk = a[:, s:s + 256].index_select(0, train).to(torch.float64)
        std = blk.std(dim=0, keepdim=True)
        az_t[:, s:s + 256] = ((blk - blk.mean(dim=0, keepdim=True)) / std.clamp_min(1e-12) * (std > 0)).float()
    n = az_t.shape[0]
    M = len(concepts.names)
    U = a.shape[1]
    best_val = torch.full((U, 0), -math.inf, dtype=torch.float64)
    best_idx = torch.zeros((U, 0), dtype=torch.long)
    for s in range(0, M, CONCEPT_BLOCK):
        idx = torch.arange(s, min(M, s + CONCEPT_BLOCK))
        c = concepts(idx)
        ct = c[train]
        eligible = (ct.max(dim=0).values >= 0.5) & (ct.std(dim=0) > 1e-5)
        cz = ((ct - ct.mean(dim=0, keepdim=True)) / ct.std(dim=0, keepdim=True).clamp_min(1e-12)).float()
        corr = (az_t.T @ cz).to(torch.float64) / max(1, n - 1)         # [U, block]
        corr = torch.round(corr * 1e6) / 1e6
        corr[:, ~eligible] = -math.inf
        vals = torch.cat([best_val, corr], dim=1)
        cols = torch.cat([best_idx, idx.unsqueeze(0).expand(U, -1)], dim=1)
        # stable: among equal scores the lower concept index (earlier column) wins
        order = torch.sort(-vals, dim=1, stable=True).indices[:, :width]
        best_val = torch.gather(vals, 1, order)
        best_idx = torch.gather(cols, 1, order)
        if progress_cb is not None:
            progress_cb(len(idx))
    best_idx = torch.where(torch.isfinite(best_val), best_idx, torch.full_like(best_idx, -1))
    return best_idx, best_val


def _moments(X, y, rows):
    """Gram [B, W+1, W+1] and Xᵀy [B, W+1] over ``rows`` (X [B, N, W+1], y [B, N]), plus Σy, Σy², n.

    Unit by unit, with the same shapes for every unit: a unit's moments are bit for bit the
    same whichever units share its batch (a batched product or a reduction across a
    [N, B] block may sum in another order when B changes)."""
    import torch

    B, _, m = X.shape
    G = torch.empty((B, m, m), dtype=torch.float64)
    b = torch.empty((B, m), dtype=torch.float64)
    sy = torch.empty(B, dtype=torch.float64)
    syy = torch.empty(B, dtype=torch.float64)
    for u in range(B):
        Xr = X[u].index_select(0, rows).contiguous()
        yr = y[u].index_select(0, rows).contiguous()
        G[u] = Xr.T @ Xr
        b[u] = Xr.T @ yr
        sy[u] = yr.sum()
        syy[u] = (yr * yr).sum()
    return G, b, sy, syy, int(rows.numel())


def _correlation(w, G, b, sy, syy, n, cols):
    """Pearson r of y with X[:, cols] w, from the moments of X and y (w [..., k], cols [..., k])."""
    import torch

    Gs = _sub(G, cols)
    bs = torch.gather(b.unsqueeze(1).expand(-1, cols.shape[1], -1) if cols.ndim == 3 else b, -1, cols)
    ones = G[..., -1]                                                  # Xᵀ1: the intercept column's row
    sp = (w * torch.gather(ones.unsqueeze(1).expand(-1, cols.shape[1], -1) if cols.ndim == 3 else ones, -1, cols)).sum(-1)
    spp = (w.unsqueeze(-2) @ Gs @ w.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    spy = (w * bs).sum(-1)
    if cols.ndim == 3:
        sy, syy = sy.unsqueeze(1), syy.unsqueeze(1)
    num = n * spy - sp * sy
    den = (n * spp - sp * sp).clamp_min(0) * (n * syy - sy * sy).clamp_min(0)
    r = num / den.sqrt().clamp_min(1e-300)
    return torch.where(den > 0, r, torch.full_like(r, math.nan))


def _sub(G, cols):
    """G[b, cols[b, ...], cols[b, ...]] for G [B, m, m] and cols [B, k] or [B, W, k]."""
    import torch

    if cols.ndim == 2:
        B, k = cols.shape
        bi = torch.arange(B).view(B, 1, 1)
        return G[bi, cols.unsqueeze(-1), cols.unsqueeze(-2)]
    B, W, k = cols.shape
    bi = torch.arange(B).view(B, 1, 1, 1)
    return G[bi, cols.unsqueeze(-1), cols.unsqueeze(-2)]


def fit_units(a, concepts: ConceptColumns, split: Split, cand, max_concepts: int, tolerance: float):
    """Greedy selection for the units of ``a`` [N, B] (float64) with candidates ``cand`` [B, W] (-1: none).

    Returns per unit: chosen concept indices (best weight first), raw weights, bias,
    held-out, train (fit part) and single-concept held-out correlations.
    """
    import torch

    B, W = cand.shape
    N = a.shape[0]
    fit_rows = torch.as_tensor(np.sort(np.concatenate([split.train, split.val])))
    train, val, held = (torch.as_tensor(r) for r in (split.train, split.val, split.held))
    # standardise each unit on the fit part (the tolerance is then scale-free), one contiguous column at a time
    cols_a = [a[:, b].to(torch.float64).contiguous() for b in range(B)]
    mean = torch.stack([c.index_select(0, fit_rows).mean() for c in cols_a])
    std = torch.stack([c.index_select(0, fit_rows).std() for c in cols_a]).clamp_min(1e-12)
    y = torch.stack([(c - mean[b]) / std[b] for b, c in enumerate(cols_a)])  # [B, N]
    valid = cand >= 0
    safe = torch.where(valid, cand, torch.zeros_like(cand))
    uniq, inv = torch.unique(safe, return_inverse=True)
    cols = concepts(uniq)                                              # [N, u] float64
    X = torch.empty((B, N, W + 1), dtype=torch.float64)
    for b in range(B):
        X[b, :, :W] = cols[:, inv[b]]
    X[:, :, W] = 1.0
    Gt, bt, syt, syyt, nt = _moments(X, y, train)
    Gv, bv, syv, syyv, nv = _moments(X, y, val)
    Gh, bh, syh, syyh, nh = _moments(X, y, held)
    Gf, bf, syf, syyf, nf = _moments(X, y, fit_rows)
    del X

    chosen = torch.full((B, max_concepts), -1, dtype=torch.long)      # positions into the W candidates
    best = torch.full((B,), -math.inf, dtype=torch.float64)
    weights = torch.zeros((B, max_concepts + 1), dtype=torch.float64)
    active = valid.any(dim=1)
    intercept = torch.full((B, 1), W, dtype=torch.long)
    for step in range(max_concepts):
        if not bool(active.any()):
            break
        prev = chosen[:, :step].clamp_min(0)                            # [B, s] (inactive units: placeholders)
        trial = torch.arange(W).view(1, W, 1).expand(B, W, 1)
        sets = torch.cat([prev.unsqueeze(1).expand(B, W, step), trial, intercept.unsqueeze(1).expand(B, W, 1)], dim=2)
        G = _sub(Gt, sets)                                              # [B, W, s+2, s+2]
        rhs = torch.gather(bt.unsqueeze(1).expand(B, W, W + 1), 2, sets)
        k = step + 2
        ridge = 1e-9 * torch.diagonal(G, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        G = G + ridge[..., None, None] * torch.eye(k, dtype=torch.float64)
        w = torch.linalg.solve(G, rhs.unsqueeze(-1)).squeeze(-1)       # [B, W, s+2]
        r = _correlation(w, Gv, bv, syv, syyv, nv, sets)               # [B, W]
        ok = valid & (w[..., :-1] >= -1e-12).all(dim=-1) & torch.isfinite(r)
        if step:
            ok &= ~(torch.arange(W).view(1, W, 1) == prev.unsqueeze(1)).any(dim=-1)
        r = torch.where(ok, r, torch.full_like(r, -math.inf))
        top = torch.max(r, dim=1)                                       # ties: the first (best preselected)
        gain_ok = torch.isfinite(top.values) & ((top.values - best >= tolerance) if step else torch.ones(B, dtype=torch.bool))
        take = active & gain_ok
        if not bool(take.any()):
            break
        rows = torch.nonzero(take).flatten()
        chosen[rows, step] = top.indices[rows]
        best[rows] = top.values[rows]
        wsel = w[rows, top.indices[rows]]                               # [n, s+2]
        weights[rows] = 0
        weights[rows, : step + 1] = wsel[:, :-1]
        weights[rows, max_concepts] = wsel[:, -1]
        active = take

    n_chosen = (chosen >= 0).sum(dim=1)
    out = []
    for b in range(B):
        m = int(n_chosen[b])
        if m == 0:
            out.append(([], [], math.nan, math.nan, math.nan, math.nan))
            continue
        pos = chosen[b, :m]
        wb = weights[b, :m]
        sets = torch.cat([pos, torch.tensor([W])]).unsqueeze(0)
        wfull = torch.cat([wb, weights[b, max_concepts:]]).unsqueeze(0)
        r_held = float(_correlation(wfull, Gh[b:b + 1], bh[b:b + 1], syh[b:b + 1], syyh[b:b + 1], nh, sets)[0])
        r_fit = float(_correlation(wfull, Gf[b:b + 1], bf[b:b + 1], syf[b:b + 1], syyf[b:b + 1], nf, sets)[0])
        first = torch.tensor([[0, W]])
        r_single = float(_correlation(torch.ones((1, 2), dtype=torch.float64), Gh[b:b + 1], bh[b:b + 1], syh[b:b + 1],
                                      syyh[b:b + 1], nh, first)[0]) if bool(valid[b, 0]) else math.nan
        raw_w = (wb * std[b]).tolist()
        bias = float(weights[b, max_concepts] * std[b] + mean[b])
        idx = [int(cand[b, int(p)]) for p in pos]
        order = sorted(range(m), key=lambda i: (-raw_w[i], idx[i]))
        out.append(([idx[i] for i in order], [raw_w[i] for i in order], bias, r_held, r_fit, r_single))
    return out


def explanation_text(concepts: list[str], weights: list[float]) -> str:
    """'0.62 stripes + 0.31 zebra + 0.12 grass' (weights in the unit's activation units)."""
    return " + ".join(f"{w:.2f} {c}" for c, w in zip(concepts, weights)) if concepts else ""


@dataclass
class Explanations:
    rows: dict[str, list]
    metadata: dict[str, Any] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)


COLUMNS = ("layer", "unit", "concepts", "weights", "bias", "explanation", "n_concepts", "correlation",
           "correlation_train", "correlation_fit_presence", "single_concept", "single_correlation", "n_train", "n_val",
           "n_held_out")


@dataclass(frozen=True)
class ExplainSettings(Settings):
    """What ``explain`` computes: at most ``max_concepts`` concepts per unit, chosen among its ``width`` best
    candidates, each adding at least ``tolerance`` of validation correlation; the held-out share and the
    validation share of the rest (split by image id with ``seed``); CLIP mode's ``calibration``; and the units
    fitted at once (``unit_batch``; None: as many as the memory budget allows) and which ``units`` (None: all).
    Label mode on an ImageFolder probe (``annotations="classes"``): ``class_names`` names its classes and
    ``superclasses`` adds each class's superclasses to the vocabulary (Linear Explanations' label mode)."""

    max_concepts: int = DEFAULT_MAX_CONCEPTS
    width: int = DEFAULT_WIDTH
    tolerance: float = DEFAULT_TOLERANCE
    holdout: float = DEFAULT_HOLDOUT
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    calibration: Any = None
    unit_batch: int | None = None
    units: tuple[int, ...] | None = None
    class_names: str | None = None
    superclasses: str | None = None

    def check(self) -> None:
        if self.max_concepts < 1:
            raise UsageError(f"--max-concepts must be at least 1, got {self.max_concepts}")
        if self.width < 1:
            raise UsageError(f"--width must be at least 1, got {self.width}")
        if not 0 <= self.tolerance < 1:
            raise UsageError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"the validation fraction must be in (0, 1), got {self.val_fraction}")


def _vocabulary(activations, images, text, concepts, annotations, layers, settings: ExplainSettings, compute: Compute):
    """(the activations without matrices, the image ids, their row order or None, the concepts with their presence
    as ``ConceptColumns``, the mode): label mode from annotations, CLIP mode from images.h5 and a concept set."""
    from .evaluate.presence import DEFAULT_CALIBRATION, AnnotatedPresence

    acts = A.read_activations(activations, layers, data=False)
    dev = resolve_device(compute.device)  # checked in both modes (a --device the machine lacks is refused)
    if annotations is not None:
        if images is not None or text is not None or concepts is not None:
            raise UsageError("give either --annotations (label mode) or --images with --text/--concepts (CLIP mode), not both")
        from .evaluate.presence import ClassNames

        classes = ClassNames.open(settings.class_names, settings.superclasses) if annotations == "classes" else None
        source = AnnotatedPresence.open(annotations, list(acts.ids), activations, classes)
        return acts, list(acts.ids), None, ConceptColumns.from_annotations(source, list(acts.ids)), "label"
    if images is None or (text is None) == (concepts is None):
        raise UsageError("give --annotations FILE (label mode), or --images images.h5 with one of --text, --concepts (CLIP mode)")
    from .inputs import open_inputs

    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, compute.device, compute.cache,
                                        compute.batch_size)
    vocab = ConceptColumns.from_clip(img, txt, settings.calibration or DEFAULT_CALIBRATION, dev)
    return acts, list(img.keys), order, vocab, "clip"


def _explain_layer(name: str, a, vocab: ConceptColumns, split: Split, settings: ExplainSettings, width: int, batch: int):
    """Candidates and fitted explanations of the units of ``a`` [N, U] (``fit_units``' tuples), with progress."""
    with progress(f"explain {name}: candidates", len(vocab.names), "concepts") as advance:
        cand, _ = preselect(a, vocab, split, width, advance)
    results = []
    with progress(f"explain {name}: fit", a.shape[1], "units") as advance:
        for s in range(0, a.shape[1], batch):
            results += fit_units(a[:, s:s + batch], vocab, split, cand[s:s + batch], settings.max_concepts, settings.tolerance)
            advance(min(batch, a.shape[1] - s))
    return cand, results


def _add_layer_rows(rows: dict[str, list], name: str, wanted: list[int], cand, results, vocab, split: Split) -> dict[str, Any]:
    """Add one layer's rows; returns its summary."""
    for u, (idx, w, bias, r_held, r_fit, r_single) in zip(wanted, results):
        names = [vocab.names[i] for i in idx]
        rows["layer"].append(name)
        rows["unit"].append(u)
        rows["concepts"].append(names)
        rows["weights"].append(w)
        rows["bias"].append(bias)
        rows["explanation"].append(explanation_text(names, w))
        rows["n_concepts"].append(len(names))
        rows["correlation"].append(r_held)
        rows["correlation_train"].append(r_fit)
        rows["correlation_fit_presence"].append(r_held)
    rows["single_concept"] += [vocab.names[i] if i >= 0 else None for i in cand[:, 0].tolist()]
    rows["single_correlation"] += [r[5] for r in results]
    rows["n_train"] += [int(split.train.size)] * len(wanted)
    rows["n_val"] += [int(split.val.size)] * len(wanted)
    rows["n_held_out"] += [int(split.held.size)] * len(wanted)
    held = np.array([r[3] for r in results], dtype=np.float64)
    single = np.array([r[5] for r in results], dtype=np.float64)
    ok = ~np.isnan(held)
    return {"layer": name, "units": len(wanted), "explained_units": int(ok.sum()),
            "mean_correlation": float(held[ok].mean()) if ok.any() else None,
            "mean_single_correlation": float(np.nanmean(single)) if np.isfinite(single).any() else None,
            "mean_concepts": float(np.mean([len(r[0]) for r in results])) if results else 0.0}


def _metadata(settings: ExplainSettings, mode, vocab, split: Split, width: int, acts, paths: dict[str, Any],
              summary) -> dict[str, Any]:
    meta = {
        "mode": mode, "presence": vocab.describe, "split": split.record,
        "params": {"max_concepts": settings.max_concepts, "width": width, "tolerance": settings.tolerance,
                   "seed": settings.seed,
                   "selection": "greedy forward, closed-form least-squares refit, non-negative weights, "
                                "validation correlation; candidates by train correlation"},
        "activations": {"path": str(Path(paths["activations"]).resolve()),
                        "fingerprint": acts.attrs.get("inputs_fingerprint", ""), "model": acts.model,
                        "weights": acts.attrs.get("weights", "")},
        "layers": {n: {k: acts.layer_attrs[n].get(k) for k in ("summary", "layout", "fingerprint")} for n in acts.layers},
        "summary": summary,
        "scored_with": vocab.describe,   # the presence the held-out correlation is computed with (explain --score-images)
        "provenance": json.loads(A.provenance(stage="explain")),
    }
    if paths["images"] is not None:
        meta["inputs"] = {"images": str(Path(paths["images"]).resolve()),
                          "text": str(Path(paths["text"]).resolve()) if paths["text"] else None,
                          "concepts": str(paths["concepts"]) if paths["concepts"] is not None else None}
    annotations = paths["annotations"]
    if annotations is not None:
        meta["inputs"] = {"annotations": annotations if annotations == "classes" else str(Path(annotations).resolve())}
    return meta


def _score_independently(result: Explanations, activations, score_images, settings: ExplainSettings,
                         compute: Compute) -> None:
    """Replace each held-out correlation by the explanation's simulation score under ``score_images``' CLIP presence
    (``evaluate simulate`` on the same held-out images), and say so in the metadata and summary."""
    from .evaluate.simulate import SimulateSettings, simulate

    rows = result.rows
    lf = A.LabelFile("explain (in memory)", A.EXPLAIN_FORMAT, list(rows["layer"]), list(rows["unit"]),
                     list(rows["explanation"]), list(rows["correlation"]), result.metadata,
                     [list(c) for c in rows["concepts"]], [list(w) for w in rows["weights"]])
    keep = [i for i, c in enumerate(rows["concepts"]) if c]
    for attr in ("layers", "units", "labels", "similarity", "parts", "part_weights"):
        setattr(lf, attr, [getattr(lf, attr)[i] for i in keep])
    sim = simulate([lf], activations, images=score_images,
                   settings=SimulateSettings(calibration=settings.calibration or SimulateSettings().calibration,
                                             metrics=("correlation",)),
                   compute=compute)
    scored = {(lay, u): r for lay, u, r in zip(sim.units["layer"], sim.units["unit"], sim.units["correlation"])}
    rows["correlation"] = [scored.get((lay, u), math.nan) for lay, u in zip(rows["layer"], rows["unit"])]
    for row in result.summary:
        held = np.array([r for lay, r in zip(rows["layer"], rows["correlation"]) if lay == row["layer"]], dtype=float)
        row["mean_fit_presence_correlation"] = row["mean_correlation"]
        row["mean_correlation"] = float(np.nanmean(held)) if np.isfinite(held).any() else None
    result.metadata["scored_with"] = sim.metadata["presence"]
    result.metadata["summary"] = result.summary
    note(f"scored with the presence of {Path(score_images).name} ({sim.metadata['presence'].get('clip')}): "
         + ", ".join(f"{r['layer']} {r['mean_correlation'] or float('nan'):.3f}" for r in result.summary))


def explain(activations, out=None, images=None, text=None, concepts=None, annotations: str | None = None,
            layers: list[str] | None = None, settings: ExplainSettings | None = None, compute: Compute | None = None,
            score_images=None, **fields: Any) -> Explanations:
    """Linear explanations of every unit of ``layers`` (default: all); writes ``out`` when given.

    Label mode with ``annotations``; CLIP mode with ``images`` and one of ``text``, ``concepts``.
    ``score_images``: images.h5 of another CLIP model, an independent simulator: the held-out ``correlation`` is
    then the explanation's simulation score under that model's presence (``evaluate simulate``), and
    ``correlation_fit_presence`` the one under the presence it was fitted with, as Linear Explanations fit with
    one SigLIP and score with a larger one. ``settings`` (:class:`ExplainSettings`) and ``compute`` may also be
    given as their fields."""
    import torch

    from .budget import units_per_fit_batch

    settings = ExplainSettings.of(settings, **ExplainSettings.take(fields))
    compute = Compute.of(compute, **Compute.take(fields))
    no_other_fields(fields, "explain")
    inputs = [activations, images, text, concepts if isinstance(concepts, (str, os.PathLike)) else None,
              annotations if annotations not in (None, "classes") else None]
    if out is not None and str(out) != A.STDOUT:
        out = A.check_output_path(out, inputs)
    acts, ids, order, vocab, mode = _vocabulary(activations, images, text, concepts, annotations, layers, settings, compute)
    if len(vocab.names) == 0:
        raise UsageError("the explanation vocabulary is empty (no annotated concepts)")
    split = make_split(ids, settings.holdout, settings.val_fraction, settings.seed)
    W = min(settings.width, len(vocab.names))
    batch = settings.unit_batch or units_per_fit_batch(compute.budget, len(ids), W)
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    summary = []
    for name in acts.layers:
        q = A.read_activation_layer(activations, name)
        if order is not None:
            q = q[order]
        units = settings.units
        wanted = list(range(q.shape[1])) if units is None else [u for u in units if u < q.shape[1]]
        # float32 (each unit batch goes to float64); no copy of the layer when every unit is explained
        a = torch.from_numpy(q if units is None else np.ascontiguousarray(q[:, wanted]))
        del q
        cand, results = _explain_layer(name, a, vocab, split, settings, W, batch)
        summary.append(_add_layer_rows(rows, name, wanted, cand, results, vocab, split))
        note(f"{name}: mean held-out correlation {summary[-1]['mean_correlation'] or float('nan'):.3f} "
             f"(best single concept {summary[-1]['mean_single_correlation'] or float('nan'):.3f}), "
             f"{summary[-1]['mean_concepts']:.1f} concepts per unit")
    paths = {"activations": activations, "images": images, "text": text, "concepts": concepts, "annotations": annotations}
    result = Explanations(rows, _metadata(settings, mode, vocab, split, W, acts, paths, summary), summary)
    if score_images is not None:
        _score_independently(result, activations, score_images, settings, compute)
    if out is not None:
        write_explanations(result, out)
        if str(out) != A.STDOUT:
            note(f"wrote {out}: {len(rows['unit'])} units explained")
    return result


def write_explanations(ex: Explanations, out) -> str:
    return A.write_table(out, A.EXPLAIN_FORMAT, ex.rows, ex.metadata)[0]
