"""A tiny, fully known "demo world" of procedurally generated images.

Every image shows one object on a (possibly textured) grey background.  The
object is described by a handful of attributes, each taken from a small
vocabulary (see :data:`ATTRIBUTES`), so everything about every image is known.
The generator is seeded and deterministic (same seed -> identical bytes) and
needs only numpy and Pillow.

This world is used to train a tiny CLIP model and a small classifier (see
``scripts/train_demo.py``) that ship with the package, so that the whole
CLIP-Dissect pipeline can be demonstrated offline with known ground truth: the
classifier predicts :data:`CLASS_ATTRIBUTE` and its output neuron ``k`` should
be labelled with ``ATTRIBUTES[CLASS_ATTRIBUTE][k]``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ATTRIBUTES",
    "CLASS_ATTRIBUTE",
    "sample_attributes",
    "read_attributes",
    "unit_truth",
    "SELECTIVE_EFFECT",
    "render",
    "caption",
    "generate",
    "write_probe",
]

#: attribute name -> vocabulary (order matters: it defines class indices).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "orange", "purple", "white", "black"),
    "shape": (
        "circle",
        "square",
        "triangle",
        "star",
        "heart",
        "cross",
        "ring",
        "moon",
        "diamond",
        "arrow",
    ),
    "texture": ("plain", "striped", "dotted", "checkered"),
    "size": ("small", "large"),
}

#: The attribute the demo classifier predicts; its vocabulary are the class names.
CLASS_ATTRIBUTE: str = "shape"

# Base RGB of each colour word (jittered per image).
_COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 225, 35),
    "orange": (250, 135, 15),
    "purple": (140, 45, 185),
    "white": (248, 248, 248),
    "black": (12, 12, 12),
}

# Object radius (fraction of image size) for each size word.
_SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (0.17, 0.21),
    "large": (0.32, 0.38),
}

_SUPERSAMPLE = 4  # render at 4x and downsample (box filter) for anti-aliasing


# --------------------------------------------------------------------------
# attributes and captions
# --------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one value of every attribute uniformly at random."""
    return {name: vocab[int(rng.integers(len(vocab)))] for name, vocab in ATTRIBUTES.items()}


def _texture_phrase(texture: str, rng: np.random.Generator) -> str:
    if texture == "plain":
        return str(rng.choice(["on a plain background", "on a plain grey background"]))
    return str(rng.choice([f"on a {texture} background", f"on a {texture} pattern"]))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: dict[str, str], rng: np.random.Generator) -> str:
    """A varied natural-language caption mentioning some or all attributes.

    Roughly a third of the captions are bare words or short phrases ("star",
    "red", "striped", "red star"); the rest are sentences such as
    "a small red star on a striped background" or "a photo of a blue circle".
    Whatever attribute is mentioned is always correct for ``attrs``.
    """
    c, s, t, z = attrs["color"], attrs["shape"], attrs["texture"], attrs["size"]
    kind = int(rng.integers(12))
    if kind == 0:
        return s
    if kind == 1:
        return str(rng.choice([c, t, z, s]))
    if kind == 2:
        return f"{c} {s}"
    if kind == 3:
        return str(rng.choice([f"{z} {s}", f"{z} {c} {s}", f"{c} {t}", f"{t} {s}"]))
    if kind == 4:
        return f"{_article(c)} {c} {s}"
    if kind == 5:
        return f"{_article(z)} {z} {c} {s}"
    if kind == 6:
        return f"{_article(c)} {c} {s} {_texture_phrase(t, rng)}"
    if kind == 7:
        return f"{_article(z)} {z} {c} {s} {_texture_phrase(t, rng)}"
    if kind == 8:
        obj = str(rng.choice([s, f"{c} {s}", f"{z} {s}", f"{z} {c} {s}"]))
        tmpl = str(rng.choice(["a photo of {}", "an image of {}", "a picture of {}",
                               "a drawing of {}", "{} shape"]))
        return tmpl.format(f"{_article(obj)} {obj}")
    if kind == 9:
        return f"{_article(s)} {s} {_texture_phrase(t, rng)}"
    if kind == 10:
        return str(rng.choice([f"a {t} background", f"{t} background", f"something {c}",
                               f"a {c} object", f"a {z} object", f"the {s} is {c}"]))
    return f"a {s} that is {c} and {z}, {_texture_phrase(t, rng)}"


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------


def _polygon(kind: str) -> np.ndarray:
    """Unit-radius outline (N x 2, y pointing down) of a polygonal shape."""
    if kind == "square":
        a = 0.78
        return np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
    if kind == "triangle":
        ang = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(ang), np.sin(ang)], 1)
        return pts + np.array([0.0, 0.15])
    if kind == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1) + np.array([0.0, 0.08])
    if kind == "cross":
        a, b = 0.95, 0.30
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                         [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    if kind == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    if kind == "arrow":
        return np.array([[0.0, -1.0], [0.75, -0.1], [0.28, -0.1], [0.28, 0.95],
                         [-0.28, 0.95], [-0.28, -0.1], [-0.75, -0.1]])
    if kind == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1) / 16.5
        return pts + np.array([0.0, 0.05])
    raise ValueError(kind)


def _shape_mask(shape: str, big: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    """Binary mask ('L', big x big) of the shape centred at (cx, cy), radius r."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = 0.55 * r
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "moon":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.5 * r * math.cos(rot), cy + 0.5 * r * math.sin(rot) - 0.25 * r
        ro = 0.85 * r
        draw.ellipse([ox - ro, oy - ro, ox + ro, oy + ro], fill=0)
    else:
        pts = _polygon(shape) * r
        c, s = math.cos(rot), math.sin(rot)
        pts = pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return mask


def _background(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float (size, size, 3) background in 0..255: grey tones (never an object colour)."""
    base = float(rng.uniform(105, 165))
    tint = rng.uniform(-8, 8, size=3)
    bg = np.full((size, size, 3), base) + tint
    if texture == "plain":
        return bg
    contrast = float(rng.uniform(45, 65)) * (1 if rng.random() < 0.5 else -1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    period = float(rng.uniform(0.13, 0.19)) * size
    phase = float(rng.uniform(0, period))
    if texture == "striped":
        orient = int(rng.integers(4))
        coord = [yy, xx, (xx + yy) / math.sqrt(2), (xx - yy) / math.sqrt(2)][orient]
        pat = ((coord + phase) % period) < period / 2
        pat = pat.astype(np.float64)
    elif texture == "checkered":
        cell = period / 2 + 1.0
        pat = ((np.floor((xx + phase) / cell) + np.floor((yy + phase) / cell)) % 2).astype(np.float64)
    elif texture == "dotted":
        dx = (xx + phase) % period - period / 2
        dy = (yy + phase) % period - period / 2
        rad = period * 0.26
        pat = np.clip(rad + 0.5 - np.sqrt(dx * dx + dy * dy), 0, 1)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return bg + contrast * pat[..., None]


def render(attrs: dict[str, str], rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Render one RGB image of ``attrs`` (position, rotation, colours jittered by ``rng``)."""
    return render_with_coverage(attrs, rng, size)[0]


def render_with_coverage(attrs: dict[str, str], rng: np.random.Generator, size: int = 64):
    """The image of :func:`render` and the object's coverage of each pixel ([size, size] in [0, 1]), which the
    image blends its colour with the background by (the same draws of ``rng``: the same image)."""
    for name, vocab in ATTRIBUTES.items():
        if attrs.get(name) not in vocab:
            raise ValueError(f"attribute {name!r} must be one of {vocab}, got {attrs.get(name)!r}")
    big = size * _SUPERSAMPLE
    lo, hi = _SIZE_RADIUS[attrs["size"]]
    r_frac = float(rng.uniform(lo, hi))
    r = r_frac * big
    margin = r_frac + 0.04
    cx = float(rng.uniform(margin, 1 - margin)) * big
    cy = float(rng.uniform(margin, 1 - margin)) * big
    rot = float(np.deg2rad(rng.uniform(-20, 20)))
    if attrs["shape"] == "moon":
        rot = float(rng.uniform(0, 2 * math.pi))
    mask = _shape_mask(attrs["shape"], big, cx, cy, r, rot)
    mask = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255.0

    bg = _background(attrs["texture"], size, rng)
    fg = np.array(_COLOR_RGB[attrs["color"]], dtype=np.float64) + rng.uniform(-18, 18, size=3)
    img = bg * (1 - mask[..., None]) + fg * mask[..., None]
    img = img + rng.normal(0.0, 4.0, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB"), mask


#: The demo's mask kinds: the shape on the object's pixels, the texture on the background's.
MASK_KINDS = ("shape", "texture")


def masks_of(attrs: dict[str, str], coverage: np.ndarray) -> dict[str, np.ndarray]:
    """Index masks of one image (0 unlabelled): ``shape`` where the object covers at least half a pixel, its
    shape's index + 1 there; ``texture`` the background texture's index + 1 elsewhere."""
    on = coverage >= 0.5
    return {"shape": np.where(on, ATTRIBUTES["shape"].index(attrs["shape"]) + 1, 0),
            "texture": np.where(on, 0, ATTRIBUTES["texture"].index(attrs["texture"]) + 1)}


# --------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------


def _item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def generate(n: int, seed: int, size: int = 64) -> list[tuple[Image.Image, dict[str, str]]]:
    """``n`` (image, attributes) pairs; deterministic for ``(n, seed, size)``.

    Item ``i`` depends only on ``(seed, i, size)``, so ``generate(n, s)`` is a
    prefix of ``generate(m, s)`` for ``m > n``.
    """
    out = []
    for i in range(int(n)):
        rng = _item_rng(seed, i)
        attrs = sample_attributes(rng)
        out.append((render(attrs, rng, size), attrs))
    return out


def write_probe(folder, n: int, seed: int, size: int = 64, masks=None) -> Path:
    """Write ``n`` images ``000000.png ...`` plus ``attributes.csv`` into ``folder``, and with ``masks`` (a
    folder) their segmentation masks there (:data:`MASK_KINDS`, one subfolder each: ``dissect.artifacts.masks``).

    ``attributes.csv`` has a ``filename`` column followed by one column per
    attribute (in :data:`ATTRIBUTES` order).  Returns the folder as a Path.
    """
    from ..artifacts.masks import write_mask_kind

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    kinds: dict[str, dict[str, np.ndarray]] = {k: {} for k in MASK_KINDS}
    for i in range(int(n)):
        rng = _item_rng(seed, i)
        attrs = sample_attributes(rng)
        img, coverage = render_with_coverage(attrs, rng, size)
        name = f"{i:06d}.png"
        img.save(folder / name, format="PNG")
        rows.append([name] + [attrs[a] for a in ATTRIBUTES])
        if masks is not None:
            for kind, arr in masks_of(attrs, coverage).items():
                kinds[kind][name] = arr
    if masks is not None:
        for kind in MASK_KINDS:
            write_mask_kind(Path(masks) / kind, ["unlabelled", *ATTRIBUTES[kind]], kinds[kind])
    with open(folder / "attributes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", *ATTRIBUTES])
        writer.writerows(rows)
    return folder


# ---------------------------------------------------------------------------
# What each unit of a network prefers, by the world's ground truth
# ---------------------------------------------------------------------------

#: A hidden unit "clearly prefers" a world word when that word's images raise its
#: standardised activation by at least this much on average.
SELECTIVE_EFFECT = 2.0


def read_attributes(probe: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The ids of a probe ``write_probe`` made and each attribute's word per id (its attributes.csv)."""
    with open(Path(probe) / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["filename"] for r in rows]
    return ids, {a: [r[a] for r in rows] for a in ATTRIBUTES}


def unit_truth(acts: np.ndarray, ids: list[str], attr_ids: list[str], attrs: dict[str, list[str]]) -> list[tuple[str, float]]:
    """For each unit, the world word whose images it prefers most (standardised mean difference)."""
    pos = {k: i for i, k in enumerate(attr_ids)}
    order = np.array([pos[i] for i in ids])
    z = (acts - acts.mean(0)) / (acts.std(0) + 1e-8)
    best: list[tuple[str, float]] = [("", -np.inf)] * acts.shape[1]
    for attr, values in attrs.items():
        vals = np.array(values)[order]
        for word in ATTRIBUTES[attr]:
            mask = vals == word
            if mask.sum() == 0:
                continue
            effect = z[mask].mean(0)
            for u in range(acts.shape[1]):
                if effect[u] > best[u][1]:
                    best[u] = (word, float(effect[u]))
    return best
