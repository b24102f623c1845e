"""Probe sets: the unlabelled images every neuron is shown.

A PROBE argument is one of
    a folder      every image below it (recursive), sorted by relative path
    a .txt file   one image path per line (relative to the list's folder; # comments)
    torchvision:NAME[:SPLIT]   a torchvision dataset, e.g. torchvision:cifar100 (train split)
Several PROBE arguments are concatenated in the order given.

Each image has a stable id: its relative path (folder), its line as written (list),
or ``NAME:SPLIT/INDEX`` (dataset). With several probes, folder and list ids are
prefixed by the probe's name so they stay unique.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .artifacts import files as A
from .errors import InputError, UsageError
from .fingerprint import fingerprint

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

TORCHVISION_PREFIX = "torchvision:"


def data_root() -> Path:
    """Where torchvision datasets are downloaded ($DISSECT_DATA, default ~/.cache/dissect/data)."""
    from .runtime import user_cache

    env = os.environ.get("DISSECT_DATA")
    return Path(env) if env else user_cache() / "data"


@dataclass
class Probe:
    """An ordered list of images with stable ids."""

    ids: list[str]
    loaders: list[Callable[[], Any]]          # each returns a PIL image
    locations: list[str]                      # human-readable source of each image (path)
    sources: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[Any] = field(default_factory=list)  # each image file's size in bytes (fingerprint, growth check)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """Changes when an image is added, removed, renamed or rewritten (size)."""
        return fingerprint([self.ids, self.sizes])

    def describe(self) -> dict[str, Any]:
        return {"sources": self.sources, "n_images": len(self), "fingerprint": self.fingerprint}

    def load(self, i: int):
        """Image ``i`` as RGB PIL image; raises InputError naming the file.

        Greyscale, palette, CMYK, RGBA (alpha dropped) and 16-bit images are converted
        to 8-bit RGB. Images over PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS,
        89.5 million pixels) are refused rather than decoded.
        """
        import warnings

        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = self.loaders[i]()
                img = to_rgb(img)
                img.load()
            return img
        except Image.DecompressionBombWarning as e:
            raise InputError(f"cannot read image {self.locations[i]}: {e}", hint="remove or shrink the file") from None
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, RecursionError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise InputError(f"cannot read image {self.locations[i]}: {reason}", hint="remove or replace the file") from None


def to_rgb(img):
    """8-bit RGB from any PIL mode; 16- and 32-bit integer images are scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np
        from PIL import Image

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        import numpy as np
        from PIL import Image

        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = (0.0, 1.0) if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 1 else (0.0, 255.0)
        arr = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _open_image(path: str) -> Callable[[], Any]:
    def load():
        from PIL import Image

        im = Image.open(path)
        try:
            im.load()  # decodes and, for a file PIL opened itself, closes it
        except BaseException:
            im.close()
            raise
        return im

    return load


def _walk_folder(root: Path) -> list[str]:
    rels = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                rels.append(Path(dirpath, fn).relative_to(root).as_posix())
    return sorted(rels)


def _folder(spec: str, prefix: str) -> tuple[list, list, list, list, dict]:
    root = Path(spec)
    rels = _walk_folder(root)
    if not rels:
        raise InputError(
            f"probe folder {root} holds no images",
            hint=f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}",
        )
    paths = [str(root / r) for r in rels]
    A.note_probe_folder(root)
    stats = [_size(p) for p in paths]
    return [prefix + r for r in rels], [_open_image(p) for p in paths], paths, stats, {
        "type": "folder",
        "path": str(root.resolve()),
        "n_images": len(rels),
    }


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _list_file(spec: str, prefix: str) -> tuple[list, list, list, list, dict]:
    lst = Path(spec)
    try:
        lines = lst.read_text("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"probe list {lst} is not UTF-8 text") from None
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if any("\x00" in e for e in entries):
        raise InputError(f"probe list {lst} holds a NUL character; is it a binary file?", hint="put one image path per line")
    if not entries:
        raise InputError(f"probe list {lst} names no images", hint="put one image path per line")
    seen: set[str] = set()
    for e in entries:
        if e in seen:
            raise InputError(f"probe list {lst} names {e} twice", hint="each image may appear once")
        seen.add(e)
    paths = [str(Path(e) if Path(e).is_absolute() else lst.parent / e) for e in entries]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(
            f"probe list {lst} names {len(missing)} missing file(s), e.g. {missing[0]}",
            hint="paths are relative to the list's folder",
        )
    A.note_inputs(lst, *paths)
    stats = [_size(p) for p in paths]
    return [prefix + e for e in entries], [_open_image(p) for p in paths], paths, stats, {
        "type": "list",
        "path": str(lst.resolve()),
        "n_images": len(entries),
    }


_TV_DATASETS = {
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "mnist": ("MNIST", "train"),
    "fashionmnist": ("FashionMNIST", "train"),
    "stl10": ("STL10", "test"),
}


def _torchvision(spec: str) -> tuple[list, list, list, list, dict]:
    parts = spec[len(TORCHVISION_PREFIX):].split(":")
    name = parts[0].lower()
    if name not in _TV_DATASETS:
        raise UsageError(
            f"unknown torchvision dataset {parts[0]!r}",
            hint=f"supported: {', '.join(_TV_DATASETS)}; for ImageNet pass the folder of its validation images",
        )
    cls_name, split = _TV_DATASETS[name]
    if len(parts) > 1 and parts[1]:
        split = parts[1]
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r} for {name}", hint="use train or test")
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = data_root()
    kwargs = {"split": split} if cls_name == "STL10" else {"train": split == "train"}
    try:
        ds = cls(root=str(root), download=False, **kwargs)
    except RuntimeError:
        try:
            root.mkdir(parents=True, exist_ok=True)
            ds = cls(root=str(root), download=True, **kwargs)
        except Exception as e:  # network errors come in many types
            raise InputError(
                f"cannot download {cls_name} ({split}) into {root}: {e}",
                hint=f"download it where there is internet and copy it to {root}, or set DISSECT_DATA to its folder",
            ) from None
    n = len(ds)
    ids = [f"{name}:{split}/{i:06d}" for i in range(n)]

    def loader(i):
        return lambda: ds[i][0]

    return ids, [loader(i) for i in range(n)], ids, [], {
        "type": "torchvision",
        "name": name,
        "split": split,
        "n_images": n,
    }


def probe_files(specs) -> list[str]:
    """The files among PROBE arguments (.txt lists), which an output must never overwrite."""
    if isinstance(specs, Probe):
        return [src["path"] for src in specs.sources if src.get("type") == "list"]
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    return [str(s) for s in specs if os.path.isfile(str(s))]


def open_probe(specs: list[str] | str) -> Probe:
    """Resolve PROBE arguments into one ordered probe set."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [str(specs)]
    specs = [str(s) for s in specs]
    if not specs:
        raise UsageError("no PROBE given", hint="pass a folder of images, a .txt list of paths, or torchvision:cifar100")
    many = len(specs) > 1
    ids, loaders, locations, stats, sources = [], [], [], [], []
    for spec in specs:
        prefix = f"{Path(spec).name}/" if many else ""
        if spec.startswith(TORCHVISION_PREFIX):
            part = _torchvision(spec)
        elif os.path.isdir(spec):
            part = _folder(spec, prefix)
        elif os.path.isfile(spec):
            if Path(spec).suffix.lower() in IMAGE_EXTENSIONS:
                raise UsageError(f"{spec} is an image, not a probe set", hint="pass its folder, or a .txt list of paths")
            part = _list_file(spec, prefix)
        else:
            raise InputError(f"probe {spec} does not exist", hint="pass a folder of images, a .txt list, or torchvision:NAME")
        ids += part[0]
        loaders += part[1]
        locations += part[2]
        stats += part[3]
        sources.append(part[4])
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"image id {dup!r} occurs twice across the probes", hint="give the probe folders distinct names")
    return Probe(ids, loaders, locations, sources, stats)


# ---------------------------------------------------------------------------
# Images left out of a pass
# ---------------------------------------------------------------------------

@dataclass
class Skipped:
    """A probe image left out of a pass: its position, id and why."""

    index: int
    id: str
    reason: str


def image_sizes(probe: Probe, rows) -> list[int] | None:
    """The file sizes of ``rows`` (for the artifact's optional ``sizes``), or None when unknown."""
    if len(probe.sizes) != len(probe):
        return None
    return [int(probe.sizes[i]) for i in rows]


def unchanged_rows(probe: Probe, old_ids: list[str], old_sizes) -> dict[int, int]:
    """{probe position: row in an older artifact} for images whose id and file size are unchanged."""
    if old_sizes is None or len(probe.sizes) != len(probe):
        return {}
    old = {(k, int(sz)): r for r, (k, sz) in enumerate(zip(old_ids, old_sizes)) if int(sz) >= 0}
    out = {}
    for i, (k, sz) in enumerate(zip(probe.ids, probe.sizes)):
        r = old.get((k, int(sz)))
        if r is not None:
            out[i] = r
    return out


def kept_rows(positions, skipped: list[Skipped]):
    """Probe positions a pass kept, in probe order (``positions``: an int count or a range)."""
    import numpy as np

    positions = range(positions) if isinstance(positions, int) else positions
    drop = {s.index for s in skipped}
    return np.array([i for i in positions if i not in drop], dtype=np.int64)


def report_skipped(skipped: list[Skipped], n_images: int, out) -> None:
    """The one-line summary of skipped images."""
    from .runtime import warn

    if skipped:
        warn(
            f"skipped {len(skipped)} of {n_images} images that could not be read (first: {skipped[0].reason}); "
            f"their ids and reasons are recorded in {out}. --strict stops at the first instead"
        )


def skipped_attr(skipped: list[Skipped]) -> str:
    """The ``skipped`` attribute of an artifact: JSON [[id, reason], ...] in probe order."""
    import json

    return json.dumps([[s.id, s.reason] for s in sorted(skipped, key=lambda s: s.index)])
