"""Planted units on the demo world: activations that are known weighted sums of its attributes.

Each planted unit's activation on an image is Σ_i w_i · [the image has attribute word i]
plus Gaussian noise (σ = :data:`NOISE`), so the right explanation of every unit is known:
single words, pairs, triples, and a class name (a shape) with an attribute. Used by
``dissect demo`` and the tests to measure how well single labels, compositions and
linear explanations recover them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

#: unit -> {world word: weight}
PLANTED: tuple[dict[str, float], ...] = (
    {"red": 1.0},
    {"star": 1.0},
    {"striped": 1.0},
    {"large": 1.0},
    {"star": 0.7, "striped": 0.6},
    {"blue": 0.8, "large": 0.5},
    {"circle": 0.6, "dotted": 0.6},
    {"green": 0.6, "heart": 0.6, "small": 0.4},
    {"yellow": 0.7, "square": 0.5, "checkered": 0.5},
    {"moon": 0.8, "purple": 0.5},
)
NOISE = 0.15
LAYER = "planted"


def attributes(probe: Path) -> dict[str, dict[str, str]]:
    with open(Path(probe) / "attributes.csv", newline="") as f:
        return {r["filename"]: r for r in csv.DictReader(f)}


def has(row: dict[str, str], word: str) -> bool:
    return word in (row["color"], row["shape"], row["texture"], row["size"])


def activations(ids: list[str], probe: Path, seed: int = 0) -> np.ndarray:
    """[N, len(PLANTED)] float32 planted activations on the probe images ``ids``."""
    rows = attributes(probe)
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, NOISE, size=(len(ids), len(PLANTED)))
    for u, recipe in enumerate(PLANTED):
        for word, w in recipe.items():
            q[:, u] += w * np.array([has(rows[i], word) for i in ids], dtype=np.float64)
    return q.astype(np.float32)


def write(out: Path, ids: list[str], probe: Path, seed: int = 0) -> Path:
    """activations.h5 of the planted layer (ids in the order given)."""
    from .. import artifacts as A

    q = activations(ids, probe, seed)
    probe_attr = json.dumps({"sources": [{"type": "folder", "path": str(Path(probe).resolve()), "n_images": len(ids)}],
                             "n_images": len(ids)})
    return A.write_activations(out, ids, {LAYER: q}, {LAYER: {"summary": "planted", "layout": "nc"}},
                               {"model": "planted", "probe": probe_attr, "planted": json.dumps(list(PLANTED))})


def write_annotations(out: Path, probe: Path) -> Path:
    """The world's ground truth as long-form annotations (id, concept)."""
    from .world import ATTRIBUTES

    rows = attributes(probe)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "concept"])
        for i, r in rows.items():
            for a in ATTRIBUTES:
                w.writerow([i, r[a]])
    return out


#: Words that name the same thing (a texture noun and its adjective count as one).
SAME = {"stripes": "striped", "stripe": "striped", "dots": "dotted", "dot": "dotted", "checkers": "checkered",
        "checker": "checkered", "circles": "circle", "stars": "star", "squares": "square", "hearts": "heart",
        "moons": "moon"}


def canonical(word: str) -> str:
    w = " ".join(str(word).lower().split())
    return SAME.get(w, w)


def recovered(recipe: dict[str, float], concepts: list[str], max_extra: int = 2) -> bool:
    """All of the unit's words are among ``concepts``, with at most ``max_extra`` others."""
    got = [canonical(c) for c in concepts]
    want = {canonical(w) for w in recipe}
    return want <= set(got) and len(set(got) - want) <= max_extra
