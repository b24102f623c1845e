"""Stage 5: how good are the labels? The paper's final-layer protocol (§4.2, App. A.8).

For each unit of a layer whose true concept is known (a classifier's final layer:
unit k is class k), the label is compared with the true name:

    exact        normalise(label) == normalise(truth)
    top-K        normalise(truth) is among the unit's first K candidates
    clip_cos     cosine of the two texts in a CLIP text-embedding space
    sentence_cos cosine in a sentence-transformers space (all-mpnet-base-v2 in the paper)

normalise() (``concepts.normalise``) matches case-blind, turns '_' into spaces and collapses whitespace.
A unit is "interpretable" when its similarity exceeds a cutoff τ (App. A.8: 0.16
for SoftWPMI). Several labels files give the paper's Table 3 layout: one row per
file, one column per metric.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as A
from ..concepts import CLASS_LISTS, Truth, load_truth, normalise  # noqa: F401  (re-exported)
from ..errors import ArtifactError, UsageError, first_line
from ..runtime import note, resolve_device, warn
from .results import Evaluation, write_units

#: The sentence-embedding model of the paper's "mpnet cos".
DEFAULT_SENTENCE_MODEL = "all-mpnet-base-v2"
EVAL_EXTRA = "pip install 'clip-dissect[eval]'"


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------

# Truth, CLASS_LISTS and load_truth live with the concept sets (concepts.py): the class lists are shipped there.


# ---------------------------------------------------------------------------
# Text spaces
# ---------------------------------------------------------------------------

class ClipTextSpace:
    """Cosines of texts in a CLIP text-embedding space."""

    def __init__(self, spec: str, device: str = "auto"):
        from ..clip import load_clip

        self.spec = spec
        self.clip = load_clip(spec, resolve_device(device))

    def embed(self, texts: list[str]) -> np.ndarray:
        from ..clip import encode_texts

        out = [encode_texts(self.clip, texts[s : s + 256]).numpy() for s in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


class SentenceSpace:
    """Cosines in a sentence-transformers space (optional extra)."""

    def __init__(self, model: str, device: str = "auto"):
        self.spec = model
        dev = resolve_device(device)
        from ..runtime import hub_offline

        if not Path(model).exists():
            hub_offline()  # offline: the hub's cache only, failing at once instead of after a minute of retries
        from sentence_transformers import SentenceTransformer  # ImportError: caller reports

        self.model = SentenceTransformer(model, device=str(dev))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)


def open_sentence_space(model: str | None, device: str = "auto") -> SentenceSpace | None:
    """The sentence space, or None with a one-line notice saying how to get it."""
    if model is None or model.lower() == "none":
        return None
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        note(f"sentence cos left out: sentence-transformers is not installed ({EVAL_EXTRA})")
        return None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one status line per command, not a weights-loading bar
    except Exception:
        pass
    try:
        return SentenceSpace(model, device)
    except Exception as e:  # offline, unknown name, broken folder: all mean "not available"
        first = first_line(e, limit=160)
        note(f"sentence cos left out: cannot load sentence model {model!r} ({first}); download it where there is "
             f"internet or pass a local copy with --sentence-model PATH")
        return None


def cosines_of_pairs(space, a: list[str], b: list[str]) -> np.ndarray:
    """cos(a[i], b[i]) in ``space``; each distinct text is embedded once."""
    texts = sorted(set(a) | set(b))
    emb = space.embed(texts)
    pos = {t: i for i, t in enumerate(texts)}
    ia = np.array([pos[t] for t in a], dtype=np.int64)
    ib = np.array([pos[t] for t in b], dtype=np.int64)
    return np.einsum("ij,ij->i", emb[ia].astype(np.float64), emb[ib].astype(np.float64))


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


UNIT_COLUMNS = ["labels", "similarity_fn", "concept_set", "layer", "unit", "label", "truth", "exact", "top_k",
                "clip_cos", "sentence_cos", "similarity", "interpretable"]


def _pick_layer(table, layer: str | None, truth: Truth, path) -> str:
    layers = list(dict.fromkeys(table["layer"]))
    if not layers:
        raise ArtifactError(f"{path} holds no labels (0 rows)", hint="label some units with `dissect label`")
    if layer is not None:
        if layer not in layers:
            raise UsageError(f"{path} has no layer {layer!r}", hint=f"it holds: {', '.join(layers)}")
        return layer
    if len(layers) == 1:
        return layers[0]
    sizes = {name: sum(1 for x in table["layer"] if x == name) for name in layers}
    fits = [name for name in layers if sizes[name] == len(truth.names)]
    if len(fits) == 1:
        return fits[0]
    raise UsageError(f"{path} holds several layers ({', '.join(layers)})", hint="choose the one the truth describes with --layer")


def evaluate(
    labels: list[str | os.PathLike],
    truth: str | Truth,
    layer: str | None = None,
    clip: str | None = None,
    sentence_model: str | None = DEFAULT_SENTENCE_MODEL,
    top_k: int | None = None,
    cutoff: float | None = None,
    device: str = "auto",
) -> Evaluation:
    """Score each labels file's units against the truth (see the module docstring)."""
    if not labels:
        raise UsageError("no LABELS file given", hint="pass one or more labels.parquet files")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    truth = truth if isinstance(truth, Truth) else load_truth(truth)
    files = []
    for path in labels:
        meta = A.read_labels_metadata(path)
        table = A.read_table(path, A.LABELS_FORMAT).to_pydict()
        files.append((Path(path), meta, table, _pick_layer(table, layer, truth, path)))

    clip_spec = clip or files[0][1].get("clip")
    if not clip_spec:
        raise UsageError(f"{files[0][0]} does not record its CLIP model", hint="pass --clip MODEL:PRETRAINED")
    clip_space = ClipTextSpace(clip_spec, device)
    sentence = open_sentence_space(sentence_model, device)

    units: dict[str, list] = {c: [] for c in UNIT_COLUMNS}
    summary = []
    for path, meta, table, name in files:
        rows = [i for i, x in enumerate(table["layer"]) if x == name]
        kept = [i for i in rows if int(table["unit"][i]) in truth.names]
        if not kept:
            raise UsageError(f"no unit of layer {name} in {path} has a true name in {truth.source}",
                             hint="check --layer and --truth")
        if len(kept) < len(rows):
            warn(f"{path}: {len(rows) - len(kept)} unit(s) of {name} have no true name and are left out")
        lab = [table["label"][i] for i in kept]
        unlabelled = [int(table["unit"][i]) for i, x in zip(kept, lab) if x is None]
        if unlabelled:
            raise ArtifactError(f"{path}: {len(unlabelled)} unit(s) of {name} have no label (null; unit {unlabelled[0]})",
                                hint="give labels written by `dissect label`")
        tru = [truth.names[int(table["unit"][i])] for i in kept]
        exact = [normalise(a) == normalise(b) for a, b in zip(lab, tru)]
        cands = [[c for c in (table["candidates"][i] or []) if c is not None] for i in kept]
        k = top_k or max(1, max(len(c) for c in cands))
        topk = [normalise(t) in {normalise(c) for c in cand[:k]} for cand, t in zip(cands, tru)]
        ccos = cosines_of_pairs(clip_space, lab, tru)
        scos = cosines_of_pairs(sentence, lab, tru) if sentence is not None else np.full(len(kept), np.nan)
        sims = [float("nan") if table["similarity"][i] is None else float(table["similarity"][i]) for i in kept]
        concept_set = (meta.get("concepts") or {}).get("name", "")
        units["labels"] += [str(path)] * len(kept)
        units["similarity_fn"] += [meta.get("similarity", "")] * len(kept)
        units["concept_set"] += [concept_set] * len(kept)
        units["layer"] += [name] * len(kept)
        units["unit"] += [int(table["unit"][i]) for i in kept]
        units["label"] += lab
        units["truth"] += tru
        units["exact"] += exact
        units["top_k"] += topk
        units["clip_cos"] += ccos.tolist()
        units["sentence_cos"] += scos.tolist()
        units["similarity"] += sims
        units["interpretable"] += [None if cutoff is None else s > cutoff for s in sims]
        row: dict[str, Any] = {
            "labels": str(path),
            "similarity_fn": meta.get("similarity", ""),
            "concept_set": concept_set,
            "probe_images": (meta.get("probe") or {}).get("n_images"),
            "layer": name,
            "units": len(kept),
            "accuracy": float(np.mean(exact)),
            f"top{k}_accuracy": float(np.mean(topk)),
            "clip_cos": float(np.mean(ccos)),
            "sentence_cos": None if sentence is None else float(np.mean(scos)),
        }
        if cutoff is not None:
            per_layer = {}
            for lname in dict.fromkeys(table["layer"]):
                s = np.array([table["similarity"][i] for i, x in enumerate(table["layer"]) if x == lname], dtype=np.float64)
                per_layer[lname] = float(np.mean(s > cutoff))
            row["interpretable"] = per_layer
        summary.append(row)
    meta_out = {"truth": truth.source, "clip": clip_space.spec, "sentence_model": None if sentence is None else sentence.spec,
                "top_k": top_k, "cutoff": cutoff}
    for row in summary:
        row["settings"] = meta_out
    if sentence is None:
        units.pop("sentence_cos")
    if cutoff is None:
        units.pop("interpretable")
    return Evaluation(units, summary)


def write_evaluation(ev: Evaluation, out: str | os.PathLike) -> tuple[Path, Path]:
    """metrics.parquet (one row per unit and labels file) and metrics.json (the summary) beside it."""
    return write_units(ev, out, A.EVALUATION_FORMAT, "evaluate")


# ---------------------------------------------------------------------------
# Hidden layers (App. A.6) and weights (§5): the final linear layer against the labels
# ---------------------------------------------------------------------------

def final_linear(module) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(W [classes, features], bias or None, module name) of a classifier's final linear layer.

    timm models name it through ``get_classifier()``; otherwise the last ``nn.Linear``
    in module order (torchvision: ``fc``, ``classifier.6``, ``heads.head``).
    """
    import torch

    head = None
    if hasattr(module, "get_classifier"):
        head = module.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        from ..errors import ModelError

        raise ModelError("the model has no final linear layer", hint="predict-class and weights need a classifier")
    name = next((n for n, m in module.named_modules() if m is head), "classifier")
    W = head.weight.detach().float().cpu().numpy()
    b = head.bias.detach().float().cpu().numpy() if head.bias is not None else None
    return W, b, name


def _student_t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    import math

    if df <= 0 or not math.isfinite(t):
        return 0.0 if math.isinf(t) else float("nan")
    return _betainc_regularized(df / 2.0, 0.5, df / (df + t * t))


def _betainc_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b) by Lentz's continued fraction (Numerical Recipes §6.4), to about 1e-14."""
    import math

    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc_regularized(b, a, 1.0 - x)
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(ln_front) * h / a


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (t test with n − 2 degrees of freedom)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = x.size
    if n < 3 or x.std() == 0 or y.std() == 0:
        return float("nan"), float("nan")
    r = float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * np.sqrt((n - 2) / (1 - r * r))
    return r, _student_t_two_sided_p(float(t), n - 2)


def _layer_labels(labels_path, layer: str) -> list[str]:
    table = A.read_table(labels_path, A.LABELS_FORMAT, columns=["layer", "unit", "label"]).to_pydict()
    rows = sorted((int(u), lab) for u, lab, lay in zip(table["unit"], table["label"], table["layer"]) if lay == layer)
    if not rows:
        layers = sorted(set(table["layer"]))
        raise UsageError(f"{labels_path} has no layer {layer!r}", hint=f"it holds: {', '.join(layers)}")
    if [u for u, _ in rows] != list(range(len(rows))):
        raise UsageError(f"{labels_path}: layer {layer} does not label units 0..{len(rows) - 1}", hint="label the whole layer")
    return [lab for _, lab in rows]


def _class_names(classes: str | Truth, n: int) -> list[str]:
    truth = classes if isinstance(classes, Truth) else load_truth(classes)
    names = [truth.names.get(k) for k in range(n)]
    if any(x is None for x in names) or len(truth.names) != n:
        raise UsageError(f"the classifier has {n} classes but {truth.source} names {len(truth.names)}",
                         hint="give the class names in the order of the model's outputs")
    return names


#: How label-to-class similarity is mixed from the two text spaces: weight of each space, and what it is.
MIXES: dict[str, tuple[dict[str, float], str]] = {
    "official": ({"clip": 3.0, "sentence": 1.0}, "3*CLIP + mpnet, as the official appendix_a6 notebook"),
    "paper": ({"clip": 0.5, "sentence": 0.5}, "(CLIP + mpnet)/2, as the paper's App. A.6 text"),
    "sentence": ({"sentence": 1.0}, "mpnet cos, as the paper's Sec. 5"),
    "clip": ({"clip": 1.0}, "CLIP cos"),
}


def _mix_spaces(mix: str) -> dict[str, float]:
    """The weight of each text space in ``mix``."""
    if mix not in MIXES:
        raise UsageError(f"unknown similarity mix {mix!r}", hint=f"use one of {', '.join(MIXES)}")
    return MIXES[mix][0]


def _open_spaces(mix: str, clip: str | None, sentence_model: str | None, device: str):
    """The CLIP and sentence spaces ``mix`` needs (CLIP also when the sentence model is missing)."""
    need = _mix_spaces(mix)
    sentence = open_sentence_space(sentence_model, device) if "sentence" in need else None
    clip_space = ClipTextSpace(clip, device) if "clip" in need or sentence is None else None
    return clip_space, sentence


def _concept_similarity(labels: list[str], classes: list[str], clip_space, sentence, mix: str
                        ) -> tuple[np.ndarray, list[str], str]:
    """S[c, j]: the similarity of class name c and the label of unit j, mixed from the CLIP and sentence spaces as
    ``mix`` says (``MIXES``); without a sentence model, CLIP cos alone, said in one line."""
    weights, what = _mix_spaces(mix), MIXES[mix][1]
    if "sentence" in weights and sentence is None:
        note(f"label-class similarity: CLIP cos only, not {what} (no sentence model; {EVAL_EXTRA})")
        weights, what = MIXES["clip"]

    def sim(space):
        e_cls = space.embed(classes).astype(np.float64)
        uniq = sorted(set(labels))
        e_lab = space.embed(uniq).astype(np.float64)
        pos = {t: i for i, t in enumerate(uniq)}
        return e_cls @ e_lab[[pos[t] for t in labels]].T

    spaces = {"clip": clip_space, "sentence": sentence}
    S = sum(w * sim(spaces[name]) for name, w in weights.items())
    return S, list(weights), what


def _head(model: str, weights: str | None, model_args: dict[str, Any] | None, n_units: int, layer: str = "the labelled layer"):
    from ..errors import MismatchError
    from ..models import load_target

    target = load_target(model, weights, model_args)
    W, b, name = final_linear(target.module)
    if W.shape[1] != n_units:
        raise MismatchError(f"{model}'s final layer {name} takes {W.shape[1]} features but layer {layer} has {n_units} units",
                            hint="label the layer that feeds the final linear layer (e.g. ResNet layer4 with --summary mean)")
    return W, b, name


def weight_analysis(labels, layer: str, model: str, classes: str, weights: str | None = None,
                    model_args: dict[str, Any] | None = None, clip: str | None = None,
                    sentence_model: str | None = DEFAULT_SENTENCE_MODEL, top_weights: int = 50_000,
                    device: str = "auto", mix: str = "sentence") -> dict[str, Any]:
    """§5: do large final-layer weights W[c, j] connect units whose label resembles class c?

    Pearson r (and p) between W[c, j] and S[c, j] = cos(class name c, label of unit j)
    over all weights and over the ``top_weights`` largest; and, for k = 1..5, the mean
    S over each class's k largest weights (Fig. 5b). S is the mpnet (sentence) cosine,
    as in the paper (``mix``: see ``MIXES``); CLIP cos when no sentence model is available.
    """
    unit_labels = _layer_labels(labels, layer)
    W, _, head = _head(model, weights, model_args, len(unit_labels), layer)
    names = _class_names(classes, W.shape[0])
    meta = A.read_labels_metadata(labels)
    clip_space, sentence = _open_spaces(mix, clip or meta.get("clip"), sentence_model, device)
    S, spaces, what = _concept_similarity(unit_labels, names, clip_space, sentence, mix)
    r_all, p_all = pearson(W, S)
    k = min(top_weights, W.size)
    top = np.argsort(-W, axis=None, kind="stable")[:k]
    r_top, p_top = pearson(W.ravel()[top], S.ravel()[top])
    order = np.argsort(-W, axis=1, kind="stable")
    top_k_mean = {str(kk): float(np.mean(np.take_along_axis(S, order[:, :kk], axis=1))) for kk in range(1, min(5, W.shape[1]) + 1)}
    return {"labels": str(labels), "layer": layer, "model": model, "final_layer": head, "classes": W.shape[0],
            "units": W.shape[1], "similarity_spaces": spaces, "pearson_all": {"r": r_all, "p": p_all, "n": int(W.size)},
            "pearson_top": {"r": r_top, "p": p_top, "n": int(k)}, "mean_similarity_of_top_k_weights": top_k_mean,
            "similarity": what, "clip": None if clip_space is None else clip_space.spec,
            "sentence_model": None if sentence is None else sentence.spec}


def write_weights(result: dict[str, Any], out: str | os.PathLike) -> Path:
    """weights.json: ``weight_analysis``'s result with how it was made."""
    import json

    return A.write_json(out, dict(result, provenance=json.loads(A.provenance(stage="evaluate weights"))))


def predict_class(labels, activations, layer: str, model: str, classes: str, weights: str | None = None,
                  model_args: dict[str, Any] | None = None, clip: str | None = None,
                  sentence_model: str | None = DEFAULT_SENTENCE_MODEL, device: str = "auto",
                  mix: str = "official") -> Evaluation:
    """App. A.6: does the label of the unit that contributes most to each prediction name the predicted class?

    For each probe image: predicted class c = argmax_c (W q(x) + b)_c, from the recorded
    activations q of the layer feeding the final linear layer; the top unit
    j = argmax_j W[c, j] q_j(x); its label mapped to the nearest class name by ``mix``
    (``MIXES``): by default 3*CLIP cos + mpnet cos, the official notebook's weighting behind
    the published figure (the paper's text says their average: ``mix="paper"``); CLIP cos
    alone without a sentence model. Reports how often that class is the
    predicted one and, when the probe is an ImageFolder whose class folders match the
    classes (sorted folder names = class order), the true one.
    """
    unit_labels = _layer_labels(labels, layer)
    W, b, head = _head(model, weights, model_args, len(unit_labels), layer)
    names = _class_names(classes, W.shape[0])
    acts = A.read_activations(activations, [layer], data=False)
    q = A.read_activation_layer(activations, layer).astype(np.float64)
    logits = q @ W.T.astype(np.float64) + (0 if b is None else b.astype(np.float64))
    pred = logits.argmax(axis=1)
    contrib = q * W[pred].astype(np.float64)                      # W[c, j] q_j(x) for the predicted c
    top_unit = contrib.argmax(axis=1)
    meta = A.read_labels_metadata(labels)
    clip_space, sentence = _open_spaces(mix, clip or meta.get("clip"), sentence_model, device)
    S, spaces, what = _concept_similarity(unit_labels, names, clip_space, sentence, mix)
    label_class = S.argmax(axis=0)                                # nearest class name of each unit's label
    mapped = label_class[top_unit]
    folders = [i.split("/")[-2] if "/" in i else None for i in acts.ids]
    classes_by_folder = sorted({f for f in folders if f is not None})
    true = None
    if None not in folders and len(classes_by_folder) == W.shape[0]:
        pos = {f: k for k, f in enumerate(classes_by_folder)}
        true = np.array([pos[f] for f in folders])
    units = {"id": list(acts.ids), "predicted": [names[c] for c in pred], "top_unit": top_unit.tolist(),
             "top_unit_label": [unit_labels[j] for j in top_unit], "label_class": [names[c] for c in mapped],
             "hit_predicted": (mapped == pred).tolist()}
    if true is not None:
        units["true"] = [names[c] for c in true]
        units["hit_true"] = (mapped == true).tolist()
    summary = [{"labels": str(labels), "layer": layer, "model": model, "final_layer": head, "images": len(pred),
                "agreement_with_predicted": float(np.mean(mapped == pred)),
                "agreement_with_true": None if true is None else float(np.mean(mapped == true)),
                "model_accuracy": None if true is None else float(np.mean(pred == true)),
                "similarity_spaces": spaces, "similarity": what}]
    return Evaluation(units, summary)
