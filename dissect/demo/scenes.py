"""A second known world, unlike the demo world: scenes of several objects, concepts from common to very rare.

The demo world (:mod:`dissect.demo.world`) shows one object per image and every word of it
is on 10-50% of the images. Here every image is a scene: a background, one to four objects
of twenty kinds, each object in one of ten colours, and two rare effects. The objects'
prevalences run from a third of the images down to 0.1% (a geometric ladder), which is what a
20,000-word concept set looks like on ImageNet: nearly every concept is rare. A CLIP and a
multi-label classifier trained separately on this world (``scripts/train_scenes.py``, shipped
in ``assets/scenes/``) let dissect be measured where its demo-world calibrations were not
chosen.

Every image's ground truth is known: ``truth(attrs)`` lists the words true of it. The
generator is seeded and deterministic and needs only numpy and Pillow.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The objects, most common first, and the chance that each of an image's object slots holds it (a geometric
#: ladder, 25% down to 0.12%; with up to four objects per image, house is on a third of the images, anchor on 0.1%).
OBJECTS: tuple[str, ...] = ("house", "tree", "car", "fish", "flower", "boat", "cup", "sun", "bird", "key",
                            "cloud", "leaf", "bell", "kite", "lamp", "hat", "umbrella", "mushroom", "ladder", "anchor")
PREVALENCE: dict[str, float] = {o: 0.25 * (0.0012 / 0.25) ** (k / (len(OBJECTS) - 1)) for k, o in enumerate(OBJECTS)}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 40), "blue": (40, 80, 220), "yellow": (240, 220, 40), "green": (40, 160, 60),
    "orange": (245, 140, 20), "purple": (140, 50, 180), "brown": (120, 72, 35), "pink": (240, 130, 190),
    "gray": (128, 128, 128), "black": (15, 15, 15),
}
#: Backgrounds (one per image) and the share of images of each.
BACKGROUNDS: dict[str, float] = {"grass": 0.30, "sky": 0.25, "sand": 0.20, "night": 0.15, "snow": 0.10}
_BACKGROUND_RGB = {"grass": (95, 150, 70), "sky": (150, 195, 235), "sand": (215, 195, 145), "night": (25, 30, 60),
                   "snow": (238, 240, 245)}
#: Effects over the whole scene, and the share of images with each.
EFFECTS: dict[str, float] = {"rain": 0.02, "frame": 0.005}
#: Every word of the world, by kind.
WORDS: dict[str, tuple[str, ...]] = {"object": OBJECTS, "color": tuple(COLORS), "background": tuple(BACKGROUNDS),
                                     "effect": tuple(EFFECTS)}
MAX_OBJECTS = 4
_SUPERSAMPLE = 4


#: The prevalences of the models' training images: every object and effect common, as a web-scale CLIP sees
#: concepts that are rare in a probe set (the probe keeps PREVALENCE and EFFECTS).
BALANCED = {"objects": {o: 0.12 for o in OBJECTS}, "effects": {"rain": 0.15, "frame": 0.10}}


def sample(rng: np.random.Generator, balanced: bool = False) -> dict:
    """One scene: a background, 1-4 objects (each present with its prevalence; at least one), each in a colour,
    and the effects (``balanced``: the training prevalences, ``BALANCED``)."""
    prevalence = BALANCED["objects"] if balanced else PREVALENCE
    effects_p = BALANCED["effects"] if balanced else EFFECTS
    present = [o for o in OBJECTS if rng.random() < prevalence[o]]
    if not present:
        # no object drawn: take one in proportion to the prevalences, so that each keeps its share
        weights = np.array([prevalence[o] for o in OBJECTS])
        present = [OBJECTS[int(rng.choice(len(OBJECTS), p=weights / weights.sum()))]]
    if len(present) > MAX_OBJECTS:
        present = [present[i] for i in sorted(rng.choice(len(present), MAX_OBJECTS, replace=False))]
    backgrounds = list(BACKGROUNDS)
    background = backgrounds[int(rng.choice(len(backgrounds), p=np.array(list(BACKGROUNDS.values()))))]
    colors = list(COLORS)
    objects = [(o, colors[int(rng.integers(len(colors)))]) for o in present]
    effects = [e for e, p in effects_p.items() if rng.random() < p]
    return {"background": background, "objects": objects, "effects": effects}


def truth(scene: dict) -> list[str]:
    """The world's words true of a scene: its objects, their colours, its background and effects (sorted)."""
    words = {scene["background"], *scene["effects"]}
    for obj, color in scene["objects"]:
        words |= {obj, color}
    return sorted(words)


def caption(scene: dict, rng: np.random.Generator) -> str:
    """A caption naming some or all of the scene; whatever it names is true of the scene."""
    objs = list(scene["objects"])
    rng.shuffle(objs)
    kind = int(rng.integers(8))
    if kind == 0:
        return objs[0][0]
    if kind == 1:
        return str(rng.choice(truth(scene)))
    if kind == 2:
        return f"{objs[0][1]} {objs[0][0]}"
    named = objs[: int(rng.integers(1, len(objs) + 1))]
    parts = [f"a {c} {o}" if rng.random() < 0.6 else f"a {o}" for o, c in named]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if kind >= 5 or rng.random() < 0.4:
        text += {"grass": " on grass", "sky": " in the sky", "sand": " on sand", "night": " at night",
                 "snow": " in the snow"}[scene["background"]]
    for e in scene["effects"]:
        if rng.random() < 0.7:
            text += {"rain": " in the rain", "frame": " in a frame"}[e]
    return str(rng.choice(["{}", "a picture of {}", "a drawing of {}", "{}"])).format(text)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def _ellipse(d, cx, cy, rx, ry, fill=255):
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _poly(d, pts, cx, cy, r, fill=255):
    d.polygon([(cx + x * r, cy + y * r) for x, y in pts], fill=fill)


def _line(d, pts, cx, cy, r, width, fill=255):
    d.line([(cx + x * r, cy + y * r) for x, y in pts], fill=fill, width=max(1, int(width * r)))


def _draw(d, obj: str, cx: float, cy: float, r: float) -> None:
    """Draw object ``obj`` of radius ``r`` at (cx, cy) on the mask ``d``."""
    if obj == "house":
        _poly(d, [(-0.7, -0.1), (0.7, -0.1), (0.7, 0.9), (-0.7, 0.9)], cx, cy, r)
        _poly(d, [(-0.9, -0.1), (0.0, -0.9), (0.9, -0.1)], cx, cy, r)
        _poly(d, [(-0.15, 0.4), (0.15, 0.4), (0.15, 0.9), (-0.15, 0.9)], cx, cy, r, fill=0)
    elif obj == "tree":
        _poly(d, [(-0.15, 0.2), (0.15, 0.2), (0.15, 1.0), (-0.15, 1.0)], cx, cy, r)
        _ellipse(d, cx, cy - 0.25 * r, 0.65 * r, 0.65 * r)
    elif obj == "car":
        _poly(d, [(-0.95, -0.05), (0.95, -0.05), (0.95, 0.45), (-0.95, 0.45)], cx, cy, r)
        _poly(d, [(-0.5, -0.05), (-0.3, -0.45), (0.35, -0.45), (0.55, -0.05)], cx, cy, r)
        for x in (-0.55, 0.55):
            _ellipse(d, cx + x * r, cy + 0.5 * r, 0.22 * r, 0.22 * r)
    elif obj == "fish":
        _ellipse(d, cx - 0.15 * r, cy, 0.65 * r, 0.4 * r)
        _poly(d, [(0.35, 0.0), (0.95, -0.45), (0.95, 0.45)], cx, cy, r)
    elif obj == "flower":
        for k in range(6):
            a = k * math.pi / 3
            _ellipse(d, cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a), 0.3 * r, 0.3 * r)
        _ellipse(d, cx, cy, 0.25 * r, 0.25 * r, fill=0)
    elif obj == "boat":
        _poly(d, [(-0.95, 0.3), (0.95, 0.3), (0.6, 0.8), (-0.6, 0.8)], cx, cy, r)
        _poly(d, [(0.0, -0.95), (0.0, 0.25), (0.7, 0.25)], cx, cy, r)
    elif obj == "cup":
        _poly(d, [(-0.6, -0.6), (0.45, -0.6), (0.3, 0.8), (-0.45, 0.8)], cx, cy, r)
        d.ellipse([cx + 0.3 * r, cy - 0.35 * r, cx + 0.95 * r, cy + 0.35 * r], outline=255, width=max(1, int(0.15 * r)))
    elif obj == "sun":
        _ellipse(d, cx, cy, 0.5 * r, 0.5 * r)
        for k in range(8):
            a = k * math.pi / 4
            _line(d, [(0.65 * math.cos(a), 0.65 * math.sin(a)), (0.98 * math.cos(a), 0.98 * math.sin(a))], cx, cy, r, 0.14)
    elif obj == "bird":
        _line(d, [(-0.9, -0.4), (0.0, 0.3), (0.9, -0.4)], cx, cy, r, 0.22)
    elif obj == "key":
        d.ellipse([cx - 0.95 * r, cy - 0.4 * r, cx - 0.2 * r, cy + 0.35 * r], outline=255, width=max(1, int(0.2 * r)))
        _poly(d, [(-0.25, -0.1), (0.95, -0.1), (0.95, 0.1), (-0.25, 0.1)], cx, cy, r)
        for x in (0.55, 0.8):
            _poly(d, [(x, 0.05), (x + 0.12, 0.05), (x + 0.12, 0.4), (x, 0.4)], cx, cy, r)
    elif obj == "cloud":
        for x, y, s in ((-0.45, 0.15, 0.4), (0.0, -0.15, 0.5), (0.45, 0.15, 0.4), (0.0, 0.25, 0.4)):
            _ellipse(d, cx + x * r, cy + y * r, s * r, s * r)
    elif obj == "leaf":
        _poly(d, [(0.0, -0.95), (0.55, -0.2), (0.35, 0.5), (0.0, 0.8), (-0.35, 0.5), (-0.55, -0.2)], cx, cy, r)
        _line(d, [(0.0, -0.7), (0.0, 0.95)], cx, cy, r, 0.1, fill=0)
    elif obj == "bell":
        _poly(d, [(-0.2, -0.8), (0.2, -0.8), (0.45, -0.3), (0.55, 0.45), (0.85, 0.65), (-0.85, 0.65), (-0.55, 0.45),
                  (-0.45, -0.3)], cx, cy, r)
        _ellipse(d, cx, cy + 0.8 * r, 0.18 * r, 0.18 * r)
    elif obj == "kite":
        _poly(d, [(0.0, -0.95), (0.5, -0.2), (0.0, 0.45), (-0.5, -0.2)], cx, cy, r)
        _line(d, [(0.0, 0.45), (0.2, 0.7), (-0.1, 0.85), (0.15, 1.0)], cx, cy, r, 0.08)
    elif obj == "lamp":
        _poly(d, [(-0.3, -0.9), (0.3, -0.9), (0.6, -0.2), (-0.6, -0.2)], cx, cy, r)
        _poly(d, [(-0.08, -0.2), (0.08, -0.2), (0.08, 0.75), (-0.08, 0.75)], cx, cy, r)
        _poly(d, [(-0.45, 0.75), (0.45, 0.75), (0.45, 0.95), (-0.45, 0.95)], cx, cy, r)
    elif obj == "hat":
        _poly(d, [(-0.95, 0.35), (0.95, 0.35), (0.95, 0.55), (-0.95, 0.55)], cx, cy, r)
        _poly(d, [(-0.5, -0.6), (0.5, -0.6), (0.55, 0.35), (-0.55, 0.35)], cx, cy, r)
    elif obj == "umbrella":
        d.pieslice([cx - 0.95 * r, cy - 0.8 * r, cx + 0.95 * r, cy + 0.8 * r], 180, 360, fill=255)
        _line(d, [(0.0, 0.0), (0.0, 0.8), (-0.25, 0.95)], cx, cy, r, 0.1)
    elif obj == "mushroom":
        d.pieslice([cx - 0.9 * r, cy - 0.75 * r, cx + 0.9 * r, cy + 0.55 * r], 180, 360, fill=255)
        _poly(d, [(-0.25, -0.1), (0.25, -0.1), (0.3, 0.9), (-0.3, 0.9)], cx, cy, r)
    elif obj == "ladder":
        for x in (-0.45, 0.45):
            _poly(d, [(x - 0.08, -0.95), (x + 0.08, -0.95), (x + 0.08, 0.95), (x - 0.08, 0.95)], cx, cy, r)
        for y in (-0.6, -0.15, 0.3, 0.75):
            _poly(d, [(-0.45, y - 0.06), (0.45, y - 0.06), (0.45, y + 0.06), (-0.45, y + 0.06)], cx, cy, r)
    elif obj == "anchor":
        _poly(d, [(-0.08, -0.7), (0.08, -0.7), (0.08, 0.8), (-0.08, 0.8)], cx, cy, r)
        _poly(d, [(-0.45, -0.45), (0.45, -0.45), (0.45, -0.32), (-0.45, -0.32)], cx, cy, r)
        d.arc([cx - 0.75 * r, cy - 0.1 * r, cx + 0.75 * r, cy + 0.9 * r], 0, 180, fill=255, width=max(1, int(0.16 * r)))
        d.ellipse([cx - 0.2 * r, cy - 1.0 * r, cx + 0.2 * r, cy - 0.62 * r], outline=255, width=max(1, int(0.1 * r)))
    else:
        raise ValueError(f"unknown object {obj!r}")


def _background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(_BACKGROUND_RGB[name], dtype=np.float64) + rng.uniform(-12, 12, size=3)
    yy = np.linspace(-1, 1, size)[:, None, None]
    return np.broadcast_to(base, (size, size, 3)) + float(rng.uniform(8, 20)) * yy  # a gentle vertical gradient


def render(scene: dict, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of ``scene``: its objects in the cells of a 2x2 grid (positions, sizes jittered)."""
    img = _background(scene["background"], size, rng).copy()
    big = size * _SUPERSAMPLE
    cells = rng.permutation(4)[: len(scene["objects"])]
    for (obj, color), cell in zip(scene["objects"], cells):
        mask_img = Image.new("L", (big, big), 0)
        r = float(rng.uniform(0.17, 0.23)) * big
        cx = (0.25 + 0.5 * (cell % 2) + rng.uniform(-0.05, 0.05)) * big
        cy = (0.25 + 0.5 * (cell // 2) + rng.uniform(-0.05, 0.05)) * big
        _draw(ImageDraw.Draw(mask_img), obj, cx, cy, r)
        mask = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX), dtype=np.float64)[..., None] / 255.0
        fg = np.array(COLORS[color], dtype=np.float64) + rng.uniform(-15, 15, size=3)
        img = img * (1 - mask) + fg * mask
    if "rain" in scene["effects"]:
        yy, xx = np.mgrid[0:size, 0:size]
        streak = ((xx + 2 * yy + int(rng.integers(6))) % 6 <= 1) & (rng.random((size, size)) < 0.75)
        img = np.where(streak[..., None], 0.25 * img + 0.75 * np.array([195.0, 210.0, 245.0]), img)
    if "frame" in scene["effects"]:
        w = max(2, size // 16)
        tone = np.array([90.0, 55.0, 25.0]) + rng.uniform(-10, 10, size=3)
        img[:w], img[-w:], img[:, :w], img[:, -w:] = tone, tone, tone, tone
    img = img + rng.normal(0.0, 4.0, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------

def _item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))


def generate(n: int, seed: int, size: int = 64, balanced: bool = False) -> list[tuple[Image.Image, dict]]:
    """``n`` (image, scene) pairs; item ``i`` depends only on ``(seed, i, size, balanced)``."""
    out = []
    for i in range(int(n)):
        rng = _item_rng(seed, i)
        scene = sample(rng, balanced)
        out.append((render(scene, rng, size), scene))
    return out


def write_probe(folder, n: int, seed: int, size: int = 64) -> Path:
    """``n`` images ``000000.png ...`` in ``folder``, and ``annotations.csv`` (long form: id, concept) with every
    word true of each image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, scene) in enumerate(generate(n, seed, size)):
        name = f"{i:06d}.png"
        img.save(folder / name, format="PNG")
        rows += [(name, w) for w in truth(scene)]
    with open(folder / "annotations.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "concept"])
        writer.writerows(rows)
    return folder
