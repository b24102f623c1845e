"""Segmentation masks, in the layout ADE20K and Broden use: the reader and writer of the mask folder.

A mask folder DIR holds, per image of a probe, one index PNG at the image's relative path with
the suffix ``.png`` (``cats/001.jpg`` -> ``DIR/cats/001.png``): pixel value i is concept i, 0
is unlabelled; ``DIR/classes.txt`` names the concepts, line i for index i (line 0 for the
unlabelled index). Several kinds of masks per image (objects, parts, materials) are
subfolders of DIR, each with its own ``classes.txt`` (``DIR/objects/classes.txt``,
``DIR/objects/cats/001.png``, ...). 8-bit (``L``, ``P``) and 16-bit (``I;16``) PNGs are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

CLASSES = "classes.txt"


@dataclass(frozen=True)
class MaskKind:
    """One kind of masks: its name (the subfolder, or "" for masks directly in DIR), folder and concept names
    (``classes[i]`` for index i; ``classes[0]`` is the unlabelled index)."""

    name: str
    folder: Path
    classes: tuple[str, ...]


def _classes(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", hint="save it as UTF-8, one concept name per line") from None
    names = tuple(line.strip() for line in lines)
    while names and not names[-1]:
        names = names[:-1]
    if len(names) < 2:
        raise InputError(f"{path} names {len(names)} index", hint="line 0 names the unlabelled index, line i concept i")
    return names


def open_masks(folder: str | os.PathLike) -> list[MaskKind]:
    """The kinds of masks of ``folder``: itself when it holds classes.txt, else each subfolder that does."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"mask folder {folder} does not exist", hint="give --masks the folder of index PNGs")
    if (folder / CLASSES).is_file():
        return [MaskKind("", folder, _classes(folder / CLASSES))]
    kinds = [MaskKind(sub.name, sub, _classes(sub / CLASSES)) for sub in sorted(folder.iterdir())
             if sub.is_dir() and (sub / CLASSES).is_file()]
    if not kinds:
        raise InputError(f"{folder} holds no {CLASSES}, nor do its subfolders",
                         hint="put the concept names in DIR/classes.txt (line 0: unlabelled), or one per mask kind "
                              "in DIR/KIND/classes.txt")
    return kinds


def read_mask(kind: MaskKind, image_relpath: str) -> np.ndarray | None:
    """The [H, W] int64 index mask of one image (None when this kind has no mask for it); an index beyond
    classes.txt is refused in one line."""
    from PIL import Image

    path = kind.folder / Path(image_relpath).with_suffix(".png")
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L")).astype(np.int64)
    except OSError as e:
        raise InputError(f"cannot read mask {path}: {e}", hint="masks are index PNGs (8- or 16-bit)") from None
    if arr.ndim != 2:
        raise InputError(f"mask {path} has {arr.ndim} dimensions", hint="masks are single-channel index PNGs")
    top = int(arr.max()) if arr.size else 0
    if top >= len(kind.classes):
        raise InputError(f"mask {path} uses index {top}, but {kind.folder / CLASSES} names {len(kind.classes)} "
                         f"(0..{len(kind.classes) - 1})", hint="add the missing names to classes.txt")
    return arr


def write_mask_kind(folder: str | os.PathLike, classes: list[str], masks: dict[str, np.ndarray]) -> Path:
    """Write one kind of masks: ``classes.txt`` (``classes[0]`` the unlabelled index) and an index PNG per image
    (``masks``: image relative path -> [H, W] integer array)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLASSES).write_text("\n".join(classes) + "\n", encoding="utf-8")
    for rel, arr in masks.items():
        path = folder / Path(rel).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        a = np.asarray(arr)
        img = Image.fromarray(a.astype(np.uint8) if int(a.max(initial=0)) < 256 else a.astype(np.uint16))
        img.save(path, format="PNG")
    return folder
