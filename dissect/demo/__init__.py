"""``dissect demo``: the whole method on a small world where every answer is known.

A tiny CLIP and a small timm classifier were trained here on the procedural
images of :mod:`dissect.demo.world` (``scripts/train_demo.py``; weights ship in
``dissect/demo/assets``). The demo generates a fresh probe set, runs the same
library functions as the commands (embed-images, embed-text, record, label) and
scores the labels against ground truth:

* final layer: neuron k is class k's logit, so its true concept is class k's name;
* hidden layers: a unit's "truth" is the world word (colour, shape, texture or
  size) whose images activate it most, relative to the rest; the demo reports
  how often the label names that word;
* two worlds (:mod:`dissect.demo.two_worlds`): CLIP presence, simulation scores and
  linear explanations measured on this world and on a second one built unlike it
  (:mod:`dissect.demo.scenes`, its own CLIP and classifier in ``assets/scenes``).

The models load through the same public specs as real models (``--clip
config.json:checkpoint``, ``--model timm:NAME --weights FILE``); see
:func:`demo_specs`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import two_worlds, world
from .specs import (COMMON_WORDS, N_COMMON_WORDS, N_SCENES_COMMON_WORDS, DemoSpecs, assets_dir, concept_sets,  # noqa: F401
                    demo_specs, scenes_concepts, scenes_specs, world_words)

from .world import SELECTIVE_EFFECT, unit_truth  # noqa: F401  (re-exported)
from .world import read_attributes as _attributes

SIMILARITIES = ("softwpmi", "wpmi", "rank-reorder", "cos", "cos-cubed")
@dataclass
class DemoResult:
    out: Path
    specs: DemoSpecs
    n_images: int
    accuracy: dict[str, dict[str, float]]            # concept set -> similarity -> final-layer accuracy
    final_labels: dict[str, list[dict[str, Any]]]    # concept set -> rows (softwpmi)
    hidden: list[dict[str, Any]]                     # hidden-layer rows (softwpmi, mixed set)
    hidden_agreement: dict[str, dict[str, float]]    # layer -> share of units labelled with their preferred world word
    seconds: float
    concept_counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    planted: list[dict[str, Any]] = field(default_factory=list)   # method x mode -> recovered, mean held-out r
    composition: list[dict[str, Any]] = field(default_factory=list)  # similarity -> recovery on the composition world
    worlds: dict[str, dict[str, Any]] = field(default_factory=dict)  # "A", "B" -> two_worlds measurements
    segmentation: list[dict[str, Any]] = field(default_factory=list)  # layer x mask kind -> labels vs. best-IoU concept
    checkpoints: dict[str, Any] = field(default_factory=dict)  # the classifier retrained without circles, compared
    ablation: list[dict[str, Any]] = field(default_factory=list)  # method -> mean ablation score, own vs shuffled labels


def _layer_rows(labels, layer: str) -> list[dict[str, Any]]:
    """A labels file's rows of ``layer``, by unit."""
    from .. import artifacts as A

    return sorted((r for r in A.read_table(labels, A.LABELS_FORMAT).to_pylist() if r["layer"] == layer),
                  key=lambda r: r["unit"])


def _probe(out: Path, n_images: int, seed: int) -> Path:
    """The generated probe images (made again only when their number, seed or world changed)."""
    from ..runtime import note

    probe, masks = out / "probe", out / "masks"
    stamp = out / "probe.json"
    want = {"n": n_images, "seed": seed, "world": world.__name__, "masks": str(masks.name)}
    if not stamp.exists() or json.loads(stamp.read_text()) != want or not masks.is_dir():
        note(f"generating {n_images} probe images (seed {seed}) in {probe}, their masks in {masks}")
        import shutil

        for folder in (probe, masks):
            if folder.exists():
                shutil.rmtree(folder)
        world.write_probe(probe, n_images, seed, masks=masks)
        stamp.write_text(json.dumps(want))
    return probe


def _embed(out: Path, probe: Path, specs: DemoSpecs, dev, batch_size: int, workers) -> dict[str, list[str]]:
    """images.h5 and a text.h5 per concept set with the tiny CLIP; returns the concept sets."""
    from ..clip import load_clip
    from ..concepts import ConceptSet
    from ..embed import embed_images, embed_text

    clip = load_clip(specs.clip, dev)
    embed_images([str(probe)], clip, out / "images.h5", batch_size=batch_size, workers=workers)
    sets = concept_sets(specs.class_names)
    for name, words in sets.items():
        (out / f"concepts-{name}.txt").write_text("\n".join(words) + "\n")
        source = f"demo:{name}" + (f" (class names, world words, {N_COMMON_WORDS} words of {COMMON_WORDS})" if name == "mixed" else "")
        embed_text(ConceptSet(f"demo:{name}", words, source), clip, out / f"text-{name}.h5", batch_size=256)
    return sets


def _record(out: Path, probe: Path, specs: DemoSpecs, dev, batch_size: int, workers) -> Path:
    """activations.h5 of the classifier's hidden and final layers, always recorded afresh (the weights ship with
    the package)."""
    from ..models import PreprocessOverrides
    from ..record import record

    acts_path = out / "activations.h5"
    if acts_path.exists():
        acts_path.unlink()
    record([str(probe)], specs.model, specs.hidden_layers + [specs.final_layer], acts_path, weights=specs.weights,
           model_args=specs.model_args,
           overrides=PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation),
           device=str(dev), batch_size=batch_size, workers=workers)
    return acts_path


def _label_sets(out: Path, acts_path: Path, specs: DemoSpecs, sets, dev):
    """Every similarity function on the final layer for every concept set (and SoftWPMI on the hidden layers of the
    mixed set): their top-1 accuracy against the classes, and SoftWPMI's final-layer rows."""
    from ..label import label

    accuracy: dict[str, dict[str, float]] = {}
    final_rows: dict[str, list[dict[str, Any]]] = {}
    for set_name in sets:
        accuracy[set_name] = {}
        for sim in SIMILARITIES:
            path = out / f"labels-{set_name}-{sim}.parquet"
            label(out / "images.h5", acts_path, path, text=out / f"text-{set_name}.h5", sim=sim,
                  layers=[specs.final_layer] + (specs.hidden_layers if (sim == "softwpmi" and set_name == "mixed") else []),
                  device=str(dev))
            fin = _layer_rows(path, specs.final_layer)
            truth = [specs.class_names[r["unit"]] for r in fin]
            accuracy[set_name][sim] = float(np.mean([r["label"] == t for r, t in zip(fin, truth)]))
            if sim == "softwpmi":
                final_rows[set_name] = [
                    {"unit": int(r["unit"]), "label": r["label"], "similarity": float(r["similarity"]),
                     "candidates": list(r["candidates"]), "truth": tr}
                    for r, tr in zip(fin, truth)
                ]
    return accuracy, final_rows


def _hidden_agreement(out: Path, probe: Path, acts, specs: DemoSpecs):
    """Each hidden unit's label against the world word it prefers most, and the agreement per layer."""
    attr_ids, attrs = _attributes(probe)
    hidden, agreement = [], {}
    for layer in specs.hidden_layers:
        best = unit_truth(acts.layers[layer], acts.ids, attr_ids, attrs)
        hits = []
        for r in _layer_rows(out / "labels-mixed-softwpmi.parquet", layer):
            word, effect = best[r["unit"]]
            hits.append(r["label"] == word)
            hidden.append({"layer": layer, "unit": int(r["unit"]), "label": r["label"], "similarity": float(r["similarity"]),
                           "preferred": word, "effect": effect, "candidates": list(r["candidates"])})
        effects = np.array([b[1] for b in best])
        hits = np.array(hits)
        selective = effects >= SELECTIVE_EFFECT
        agreement[layer] = {
            "all": float(hits.mean()),
            "selective": float(hits[selective].mean()) if selective.any() else float("nan"),
            "n_selective": int(selective.sum()),
            "n_units": int(len(hits)),
        }
    return hidden, agreement


def run_demo(out: str | Path = "runs/demo", n_images: int = 2000, seed: int = 1234, device: str = "auto",
             batch_size: int = 128, workers: int | None = 0) -> DemoResult:
    """Generate the probe, run the pipeline through the library stages, score the labels."""
    from .. import artifacts as A
    from ..runtime import resolve_device

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = demo_specs()
    dev = resolve_device(device)

    def timed(key, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[key] = time.perf_counter() - t
        return result

    probe = timed("probe", _probe, out, n_images, seed)
    sets = timed("clip", _embed, out, probe, specs, dev, batch_size, workers)
    acts_path = timed("record", _record, out, probe, specs, dev, batch_size, workers)
    accuracy, final_rows = timed("label", _label_sets, out, acts_path, specs, sets, dev)
    acts = A.read_activations(acts_path, specs.hidden_layers)
    hidden, agreement = _hidden_agreement(out, probe, acts, specs)
    planted_rows = timed("planted", planted_recovery, out, probe, acts.ids, str(dev))
    composition_rows = timed("composition", composition_recovery, out, probe, acts.ids, str(dev))
    segmentation = timed("segment", segmentation_agreement, out, probe, specs, str(dev), batch_size, workers)
    from .checkpoints import compare_checkpoints

    checkpoints = timed("compare", compare_checkpoints, out, probe, specs, str(dev), batch_size, workers)
    from .ablations import ablation_scores

    ablation = timed("ablate", ablation_scores, out, probe, specs, str(dev), batch_size)
    worlds = timed("worlds", two_worlds.compare, out, probe, specs.final_layer, planted_rows, str(dev), batch_size,
                   workers)

    counts = {k: len(v) for k, v in sets.items()}
    result = DemoResult(out, specs, n_images, accuracy, final_rows, hidden, agreement, time.perf_counter() - t0, counts, timings,
                        planted_rows, composition_rows, worlds, segmentation, checkpoints, ablation)
    summary = {
        "n_images": n_images, "concept_counts": counts, "common_words": COMMON_WORDS, "seed": seed, "accuracy": accuracy, "hidden_agreement": agreement,
        "seconds": round(result.seconds, 1), "timings": {k: round(v, 1) for k, v in timings.items()},
        "clip": specs.clip, "model": specs.model, "weights": specs.weights, "planted": planted_rows,
        "composition": composition_rows, "worlds": worlds, "segmentation": segmentation,
        "checkpoints": checkpoints, "ablation": ablation,
    }
    A.write_json(out / "demo.json", summary)
    # The folder is a run folder too: `dissect report OUT` and `dissect show OUT` open its headline labels.
    A.write_run_manifest(out, {"made_by": "dissect demo", "clip": specs.clip, "model": specs.model,
                               "weights": specs.weights, "n_images": n_images},
                         {"labels": "labels-mixed-softwpmi.parquet", "activations": "activations.h5"})
    return result


def segmentation_agreement(out: Path, probe: Path, specs: DemoSpecs, device: str, batch_size: int,
                           workers: int | None = 0) -> list[dict[str, Any]]:
    """``dissect evaluate segment`` on the hidden layers against the masks the world drew (shape on the object,
    texture on the background), written to segment.parquet: per layer and mask kind, how many units carry a label
    of that kind, on how many the label names the unit's best-IoU mask concept, and their mean IoU."""
    from ..evaluate.segment import segment, write_segmentation
    from ..models import PreprocessOverrides, TargetSpec

    target = TargetSpec(specs.model, specs.weights, specs.model_args,
                        PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation))
    seg = segment([str(probe)], target, specs.hidden_layers, out / "masks", labels=out / "labels-mixed-softwpmi.parquet",
                  device=device, batch_size=batch_size, workers=workers)
    write_segmentation(seg, out / "segment.parquet")
    r = seg.rows
    rows = []
    for layer in specs.hidden_layers:
        for kind in ("shape", "texture"):
            words = set(world.ATTRIBUTES[kind])
            sel = [i for i, (lay, lab) in enumerate(zip(r["layer"], r["label"])) if lay == layer and lab in words]
            rows.append({"layer": layer, "kind": kind, "units": len(sel),
                         "agree": int(sum(bool(r["label_agrees"][i]) for i in sel)),
                         "mean_iou": float(np.mean([r["iou"][i] for i in sel])) if sel else float("nan"),
                         "morans_i": float(np.nanmean([r["morans_i"][i] for i in sel])) if sel else float("nan")})
    return rows


def planted_recovery(out: Path, probe: Path, ids: list[str], device: str) -> list[dict[str, Any]]:
    """Planted units (:mod:`dissect.demo.planted`): how many each method recovers, and its mean held-out r.

    CLIP mode uses the mixed concept set and the tiny CLIP; label mode the world's ground truth
    as annotations. Single labels: `dissect label` (CLIP; held out 20%) or the best single
    annotated concept (label mode); compose: pairs of the labels' candidates; linear: `dissect
    explain`. A unit counts as recovered when all of its words are named, with at most two others (and, for a
    linear explanation of a unit of several words, its held-out correlation beats the best single concept's by
    ``planted.MARGIN``).
    """
    from .. import artifacts as A
    from ..compose import compose
    from ..explain import explain
    from ..label import label
    from ..evaluate.simulate import simulate
    from . import planted

    acts = planted.write(out / "planted.h5", list(ids), probe)
    ann = planted.write_annotations(out / "annotations.csv", probe)
    text = out / "text-mixed.h5"
    rows: list[dict[str, Any]] = []
    n = len(planted.PLANTED)

    def add(method, mode, concept_lists, corrs, held_out=True, singles=None):
        singles = singles or [None] * n
        hits = sum(planted.recovered(r, c, correlation=x, single=s)
                   for r, c, x, s in zip(planted.PLANTED, concept_lists, corrs, singles))
        corr = np.array([np.nan if c is None else c for c in corrs], dtype=np.float64)
        rows.append({"method": method, "mode": mode, "recovered": int(hits), "units": n,
                     "mean_correlation": float(np.nanmean(corr)) if np.isfinite(corr).any() else None,
                     "held_out": held_out})

    labels = out / "labels-planted.parquet"
    label(out / "images.h5", acts, labels, text=text, holdout=0.2, holdout_seed=0, device=device)
    lab = _layer_rows(labels, planted.LAYER)
    sim = simulate([str(labels)], acts, images=out / "images.h5", text=text, device=device, metrics=("correlation",))
    add("single label (SoftWPMI)", "clip", [[r["label"]] for r in lab], sim.units["correlation"])
    composed = out / "composed-planted.parquet"
    compose(out / "images.h5", acts, composed, text=text, labels=labels, device=device)
    comp = sorted(A.read_table(composed, A.COMPOSED_FORMAT).to_pylist(), key=lambda r: r["unit"])
    csim = simulate([str(composed)], acts, images=out / "images.h5", text=text, device=device, metrics=("correlation",))
    add("compose (pairs)", "clip", [list(r["parts"]) for r in comp], csim.units["correlation"], held_out=False)
    ex_clip = explain(acts, out / "explanations-planted-clip.parquet", images=out / "images.h5", text=text, device=device)
    add("linear explanation", "clip", ex_clip.rows["concepts"], ex_clip.rows["correlation"],
        singles=ex_clip.rows["single_correlation"])
    ex_label = explain(acts, out / "explanations-planted-label.parquet", annotations=str(ann), device=device)
    add("single label (best concept)", "label", [[c] for c in ex_label.rows["single_concept"]],
        ex_label.rows["single_correlation"])
    add("linear explanation", "label", ex_label.rows["concepts"], ex_label.rows["correlation"],
        singles=ex_label.rows["single_correlation"])
    return rows


def composition_recovery(out: Path, probe: Path, ids: list[str], device: str) -> list[dict[str, Any]]:
    """The planted-composition world (:func:`planted.composition_units`: 100 two-word units, 18 one-word units):
    for every similarity function, how often the single label names one of a two-word unit's words and names a
    one-word unit right, how often compose (its default selection) names a two-word unit with both words and
    keeps a one-word unit at its word; and the same for linear explanations (CLIP mode, all similarity
    functions alike: both words among its concepts, at most two others; one-word: its word first)."""
    from .. import artifacts as A
    from ..compose import DEFAULT_SELECT, compose
    from ..explain import explain
    from ..label import label
    from . import planted

    acts = planted.write_composition(out / "composition.h5", list(ids), probe)
    units = planted.composition_units()
    text = out / "text-mixed.h5"
    two = [i for i, u in enumerate(units) if len(u) == 2]
    one = [i for i, u in enumerate(units) if len(u) == 1]
    rows = []
    for sim in SIMILARITIES:
        labels = out / f"labels-composition-{sim}.parquet"
        label(out / "images.h5", acts, labels, text=text, sim=sim, top=10, device=device)
        lab = _layer_rows(labels, planted.COMPOSITION_LAYER)
        composed = out / f"composed-composition-{sim}.parquet"
        compose(out / "images.h5", acts, composed, text=text, labels=labels, sim=sim, device=device)
        comp = sorted(A.read_table(composed, A.COMPOSED_FORMAT).to_pylist(), key=lambda r: r["unit"])
        rec = planted.composition_recovery(units, [list(r["parts"]) for r in comp])
        canon = planted.canonical
        rows.append({
            "method": sim, "select": DEFAULT_SELECT,
            "single_two": float(np.mean([canon(lab[i]["label"]) in set(map(canon, units[i])) for i in two])),
            "single_one": float(np.mean([canon(lab[i]["label"]) == canon(units[i][0]) for i in one])),
            "compose_two": rec["two_words"], "compose_one": rec["one_word"],
            "both_in_candidates": float(np.mean([set(map(canon, units[i])) <= set(map(canon, lab[i]["candidates"]))
                                                 for i in two])),
        })
    ex = explain(acts, out / "explanations-composition.parquet", images=out / "images.h5", text=text, device=device)
    concepts = ex.rows["concepts"]
    rows.append({
        "method": "linear explanation", "select": "",
        "single_two": float("nan"), "single_one": float("nan"),
        "compose_two": float(np.mean([planted.recovered({w: 1.0 for w in units[i]}, concepts[i]) for i in two])),
        "compose_one": float(np.mean([bool(concepts[i]) and planted.canonical(concepts[i][0]) == planted.canonical(units[i][0])
                                      for i in one])),
        "both_in_candidates": float("nan"),
    })
    return rows
