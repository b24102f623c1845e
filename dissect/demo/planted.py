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


#: A multi-word explanation counts only where its held-out correlation beats the best single concept's by this much.
MARGIN = 0.1


def recovered(recipe: dict[str, float], concepts: list[str], max_extra: int = 2, correlation: float | None = None,
              single: float | None = None) -> bool:
    """All of the unit's words are among ``concepts``, with at most ``max_extra`` others; for a unit of several
    words with its held-out ``correlation`` and the best ``single`` concept's given, the first beats the second by
    at least ``MARGIN``."""
    got = [canonical(c) for c in concepts]
    want = {canonical(w) for w in recipe}
    named = want <= set(got) and len(set(got) - want) <= max_extra
    if not named or len(recipe) < 2 or correlation is None or single is None:
        return named
    return correlation - single >= MARGIN


# ---------------------------------------------------------------------------
# A planted-composition world: units that respond to two words at once, and units of one word
# ---------------------------------------------------------------------------

#: The composition layer's name in activations.h5.
COMPOSITION_LAYER = "composed"
#: How much a two-word unit responds to each of its words alone (a class logit's partial response).
PART_RESPONSE = 0.35


def composition_units() -> list[tuple[str, ...]]:
    """The units of the composition world: every colour + shape pair (80, the demo world's "red star"
    classes), 20 texture + shape pairs (striped, dotted, checkered with each shape but two), and one unit per
    colour and per shape (18 single-word units)."""
    from .world import ATTRIBUTES

    colours, shapes, textures = ATTRIBUTES["color"], ATTRIBUTES["shape"], ATTRIBUTES["texture"]
    pairs = [(c, s) for c in colours for s in shapes]
    pairs += [(t, s) for t in textures[1:] for s in shapes][:20]
    return pairs + [(c,) for c in colours] + [(s,) for s in shapes]


def composition_activations(ids: list[str], probe: Path, seed: int = 0) -> np.ndarray:
    """[N, units] float32: a two-word unit is 1 on images with both words, PART_RESPONSE on images with one
    of them, 0 otherwise; a one-word unit is 1 on images with its word; plus Gaussian noise (σ = NOISE)."""
    rows = attributes(probe)
    units = composition_units()
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, NOISE, size=(len(ids), len(units)))
    for u, words in enumerate(units):
        present = [np.array([has(rows[i], w) for i in ids], dtype=np.float64) for w in words]
        if len(words) == 1:
            q[:, u] += present[0]
        else:
            both = present[0] * present[1]
            q[:, u] += both + PART_RESPONSE * (present[0] + present[1] - 2 * both)
    return q.astype(np.float32)


def write_composition(out: Path, ids: list[str], probe: Path, seed: int = 0) -> Path:
    """activations.h5 of the composition world's layer (ids in the order given)."""
    from .. import artifacts as A

    q = composition_activations(ids, probe, seed)
    probe_attr = json.dumps({"sources": [{"type": "folder", "path": str(Path(probe).resolve()), "n_images": len(ids)}],
                             "n_images": len(ids)})
    return A.write_activations(out, ids, {COMPOSITION_LAYER: q},
                               {COMPOSITION_LAYER: {"summary": "planted", "layout": "nc"}},
                               {"model": "planted-composition", "probe": probe_attr,
                                "planted": json.dumps(composition_units())})


def composition_recovery(units: list[tuple[str, ...]], parts: list[list[str]]) -> dict[str, float]:
    """Shares of two-word units named with exactly their two words, and of one-word units kept at their word."""
    two = [sorted(map(canonical, p)) == sorted(map(canonical, u)) for u, p in zip(units, parts) if len(u) == 2]
    one = [[canonical(x) for x in p] == [canonical(u[0])] for u, p in zip(units, parts) if len(u) == 1]
    return {"two_words": float(np.mean(two)) if two else float("nan"),
            "one_word": float(np.mean(one)) if one else float("nan"), "n_two": len(two), "n_one": len(one)}


# ---------------------------------------------------------------------------
# Planted units on the scenes world (several objects per image, common to very rare words)
# ---------------------------------------------------------------------------

#: unit -> {scenes-world word: weight}: single words, pairs and triples, common (house 30%) to rare (kite 0.7%).
SCENES_PLANTED: tuple[dict[str, float], ...] = (
    {"car": 1.0},
    {"night": 1.0},
    {"house": 0.8, "grass": 0.6},
    {"fish": 0.9, "blue": 0.6},
    {"tree": 0.7, "snow": 0.7},
    {"boat": 0.7, "rain": 1.0},
    {"flower": 0.8, "pink": 0.5, "sand": 0.4},
    {"sun": 0.9, "sky": 0.5},
    {"key": 1.0},
    {"kite": 0.8, "cloud": 0.6},
)


def scenes_truth(probe: Path) -> dict[str, set[str]]:
    """Each image of a scenes-world probe (``scenes.write_probe``) -> the words true of it."""
    from .. import artifacts as A

    ann = A.read_annotations(Path(probe) / "annotations.csv")
    out: dict[str, set[str]] = {}
    for i, c in zip(ann.ids, ann.concepts):
        out.setdefault(i, set()).add(c)
    return out


def write_scenes(out: Path, ids: list[str], probe: Path, seed: int = 0) -> Path:
    """activations.h5 of the scenes world's planted layer: Σ w_i [word i on the image] + noise (σ = NOISE)."""
    from .. import artifacts as A

    truth = scenes_truth(probe)
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, NOISE, size=(len(ids), len(SCENES_PLANTED)))
    for u, recipe in enumerate(SCENES_PLANTED):
        for word, w in recipe.items():
            q[:, u] += w * np.array([word in truth.get(i, ()) for i in ids], dtype=np.float64)
    probe_attr = json.dumps({"sources": [{"type": "folder", "path": str(Path(probe).resolve()), "n_images": len(ids)}],
                             "n_images": len(ids)})
    return A.write_activations(out, ids, {LAYER: q.astype(np.float32)}, {LAYER: {"summary": "planted", "layout": "nc"}},
                               {"model": "planted-scenes", "probe": probe_attr, "planted": json.dumps(list(SCENES_PLANTED))})
