"""The same measurements on two worlds that differ: what ``dissect demo`` prints beside each other.

World A is the demo world (:mod:`dissect.demo.world`: one object per image, every word on 10-50%
of the images, the demo's tiny CLIP); world B the scenes world (:mod:`dissect.demo.scenes`:
several objects per image, objects on 30% down to 0.1% of the images, a CLIP trained
separately with another image tower and SigLIP's loss, a multi-label classifier). On each:

* how well CLIP presence (``evaluate.presence``, the estimate simulate, explain and compose
  share) follows the truth, per concept that CLIP separates;
* the mean simulation score of the final layer's labels under CLIP presence and under the
  truth as annotations (a calibration that holds keeps them close);
* how many planted units (known weighted sums of world words) linear explanations recover.

:func:`topics_world` makes a third world, C, of embeddings alone (no images, no CLIP): very rare
concepts over a large probe, each concept's cosines near-Gaussian (``scripts/presence_study.py``
and the tests score presence on it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Concepts CLIP separates: the AUC of their cosine against the truth is at least this.
SEPARATED_AUC = 0.99
#: Concepts on fewer than this share of the images count as rare.
RARE = 0.03
#: A concept's presence "follows the truth" when it correlates with it at least this much.
FOLLOWS = 0.9


def topics_world(n: int = 20_000, m: int = 2_000, dim: int = 256, seed: int = 0, absent: int = 0):
    """World C, embeddings without images (the construction of ``benchmarks/bench_explain.py``): m random unit text
    embeddings; each of n images is Gaussian noise plus 0.4 x the embeddings of 3 random topics among the first
    m - ``absent`` texts, L2-normalised. Every topic is on about 3 / (m - absent) of the images (0.15% by default)
    and the bulk of each concept's cosines is near-Gaussian. Returns (images [n, dim], texts [m, dim], float32;
    topics [n, 3])."""
    rng = np.random.default_rng(seed)
    texts = rng.standard_normal((m, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    topics = rng.integers(0, m - absent, size=(n, 3))
    images = (rng.standard_normal((n, dim)) / np.sqrt(dim)).astype(np.float32)
    for j in range(3):
        images += 0.4 * texts[topics[:, j]]
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return images, texts, topics


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the binary ``truth`` (ties count one half; NaN without both classes)."""
    truth = truth.astype(bool)
    n1, n0 = int(truth.sum()), int((~truth).sum())
    if not n1 or not n0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # mid-ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[truth].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def truth_matrix(ids: list[str], words: list[str], truth_of: dict[str, set[str]]) -> np.ndarray:
    """[N, M] bool: word m is true of image i."""
    return np.array([[w in truth_of.get(i, ()) for w in words] for i in ids], dtype=bool)


def presence_quality(images, text, truth_of: dict[str, set[str]], calibration=None) -> list[dict[str, Any]]:
    """Per concept of ``text`` that is true of some image: its prevalence, the AUC of its CLIP cosine against the
    truth, and the Pearson r of its CLIP presence (as simulate, explain and compose compute it) with the truth."""
    import torch

    from .. import artifacts as A
    from ..evaluate.presence import DEFAULT_CALIBRATION, CalibratedCosines

    img, txt = A.read_image_embeddings(images), A.read_text_embeddings(text)
    truth = truth_matrix(list(img.keys), list(txt.keys), truth_of)
    cal = calibration or DEFAULT_CALIBRATION
    I, T = torch.from_numpy(img.embeddings), torch.from_numpy(txt.embeddings)
    cols = [m for m in range(len(txt.keys)) if truth[:, m].any()]
    presence = CalibratedCosines(I, T, cal).columns(cols).numpy()
    cos = (I.double() @ T.double()[cols].T).numpy()
    rows = []
    for j, m in enumerate(cols):
        y, p = truth[:, m], presence[:, j]
        r = float(np.corrcoef(p, y.astype(float))[0, 1]) if p.std() > 0 and not y.all() else float("nan")
        rows.append({"concept": txt.keys[m], "prevalence": float(y.mean()), "auc": auc(cos[:, j], y), "r": r})
    return rows


def summarise_presence(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the concepts CLIP separates (AUC >= SEPARATED_AUC): how many, the share whose presence follows the truth
    (r >= FOLLOWS) and the median r; rare ones (< RARE of the images) and common ones apart."""
    def part(sel):
        r = np.array([np.nan_to_num(x["r"], nan=0.0) for x in sel])
        return {"concepts": len(sel), "share_following": float((r >= FOLLOWS).mean()) if len(r) else None,
                "median_r": float(np.median(r)) if len(r) else None,
                "lowest": sorted(((x["concept"], round(x["r"], 3)) for x in sel), key=lambda t: t[1])[:3]}

    sep = [x for x in rows if x["auc"] >= SEPARATED_AUC]
    return {"all": part(sep), "rare": part([x for x in sep if x["prevalence"] < RARE]),
            "common": part([x for x in sep if x["prevalence"] >= RARE]), "not_separated": len(rows) - len(sep)}


def simulation_gap(labels, activations, images, text, annotations, layer: str, device: str,
                   calibration=None) -> dict[str, float]:
    """The mean simulation correlation of ``layer``'s labels under CLIP presence (``calibration``; default: the
    default) and under the truth."""
    from ..evaluate.simulate import simulate

    means = {}
    clip = {"images": images, "text": text, **({"calibration": calibration} if calibration else {})}
    for source, kw in (("clip", clip), ("annotations", {"annotations": str(annotations)})):
        sim = simulate([str(labels)], activations, layer=layer, device=device, metrics=("correlation",), **kw)
        means[source] = sim.summary[0]["mean_correlation"]
    return {**means, "gap": abs(means["clip"] - means["annotations"])}


def explain_planted(acts, images, text, annotations, recipes, device: str, out: Path,
                    calibration=None) -> dict[str, Any]:
    """Planted units recovered by linear explanations in CLIP mode and in label mode (``planted.recovered``: every
    word named, at most two others, a multi-word explanation beating its best single concept by ``MARGIN``)."""
    from ..explain import explain
    from .planted import recovered

    res = {}
    clip = {"images": images, "text": text, **({"calibration": calibration} if calibration else {})}
    for mode, kw in (("clip", clip), ("label", {"annotations": str(annotations)})):
        ex = explain(acts, out / f"explanations-{mode}.parquet", device=device, **kw)
        hits = [recovered(r, c, correlation=x, single=s) for r, c, x, s in
                zip(recipes, ex.rows["concepts"], ex.rows["correlation"], ex.rows["single_correlation"])]
        corr = np.array([np.nan if c is None else c for c in ex.rows["correlation"]], dtype=np.float64)
        res[mode] = {"recovered": int(sum(hits)), "units": len(recipes),
                     "mean_correlation": float(np.nanmean(corr)) if np.isfinite(corr).any() else None}
    return res


def world_a(out: Path, probe: Path, final_layer: str, planted_rows: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """The three measurements on the demo world, from what ``run_demo`` already made in ``out`` (the final layer
    labelled again with a held-out fifth, which its simulation scores are taken on, as on world B)."""
    from ..label import label
    from .planted import attributes

    labels = out / "labels-final-heldout.parquet"
    label(out / "images.h5", out / "activations.h5", labels, text=out / "text-mixed.h5", layers=[final_layer],
          holdout=0.2, device=device)
    truth_of = {i: {v for k, v in r.items() if k != "filename"} for i, r in attributes(probe).items()}
    quality = presence_quality(out / "images.h5", out / "text-mixed.h5", truth_of)
    explained = {r["mode"]: {k: r[k] for k in ("recovered", "units", "mean_correlation")}
                 for r in planted_rows if r["method"] == "linear explanation"}
    return {
        "world": "A (demo)", "presence": summarise_presence(quality), "presence_by_concept": quality,
        "simulation": simulation_gap(labels, out / "activations.h5", out / "images.h5",
                                     out / "text-mixed.h5", out / "annotations.csv", final_layer, device),
        "explain": explained,
    }


def run_scenes(out: Path, n_images: int = 4000, seed: int = 3, device: str = "cpu", batch_size: int = 128,
               workers: int | None = 0) -> dict[str, Any]:
    """World B end to end into ``out``: probe, CLIP and classifier passes, final-layer labels, and the three
    measurements of this module."""
    from .. import artifacts as A
    from ..clip import load_clip
    from ..concepts import ConceptSet
    from ..embed import embed_images, embed_text
    from ..label import label
    from ..models import PreprocessOverrides
    from ..record import record
    from ..runtime import note
    from .planted import SCENES_PLANTED, scenes_truth, write_scenes
    from .scenes import write_probe
    from .specs import scenes_concepts, scenes_specs

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    probe, stamp = out / "probe", out / "probe.json"
    want = {"n": n_images, "seed": seed, "world": "dissect.demo.scenes"}
    if not stamp.exists() or json.loads(stamp.read_text()) != want:
        note(f"generating {n_images} scenes-world probe images (seed {seed}) in {probe}")
        if probe.exists():
            import shutil

            shutil.rmtree(probe)
        write_probe(probe, n_images, seed)
        stamp.write_text(json.dumps(want))
    specs = scenes_specs()
    clip = load_clip(specs.clip, device)
    embed_images([str(probe)], clip, out / "images.h5", batch_size=batch_size, workers=workers)
    words = scenes_concepts()
    embed_text(ConceptSet("demo:scenes", words, "demo:scenes (world words and common words)"), clip, out / "text.h5")
    del clip
    acts = out / "activations.h5"
    acts.unlink(missing_ok=True)
    record([str(probe)], specs.model, [specs.final_layer], acts, weights=specs.weights, model_args=specs.model_args,
           overrides=PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation),
           device=device, batch_size=batch_size, workers=workers)
    labels = out / "labels.parquet"
    table = label(out / "images.h5", acts, labels, text=out / "text.h5", holdout=0.2, device=device).to_pylist()
    accuracy = float(np.mean([r["label"] == specs.class_names[r["unit"]] for r in table]))
    quality = presence_quality(out / "images.h5", out / "text.h5", scenes_truth(probe))
    planted_acts = write_scenes(out / "planted.h5", list(A.read_activations(acts, data=False).ids), probe)
    return {
        "world": "B (scenes)", "n_images": n_images, "concepts": len(words), "final_layer_accuracy": accuracy,
        "presence": summarise_presence(quality), "presence_by_concept": quality,
        "simulation": simulation_gap(labels, acts, out / "images.h5", out / "text.h5", probe / "annotations.csv",
                                     specs.final_layer, device),
        "explain": explain_planted(planted_acts, out / "images.h5", out / "text.h5", probe / "annotations.csv",
                                   SCENES_PLANTED, device, out),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def compare(out: Path, probe: Path, final_layer: str, planted_rows: list[dict[str, Any]], device: str,
            batch_size: int = 128, workers: int | None = 0) -> dict[str, dict[str, Any]]:
    """Both worlds: A from ``run_demo``'s folder ``out``, B made in ``out / "scenes"``."""
    from ..evaluate.presence import DEFAULT_CALIBRATION

    worlds = {"A": world_a(out, probe, final_layer, planted_rows, device),
              "B": run_scenes(out / "scenes", device=device, batch_size=batch_size, workers=workers)}
    for w in worlds.values():
        w["calibration"] = DEFAULT_CALIBRATION.kind
    return worlds
