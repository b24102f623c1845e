"""A deterministic split of the probe set into the images labels are made on and the held-out rest.

An image is held out when the first 8 bytes of sha256(f"{seed}:{id}"), read as a
fraction of 2^64, fall below the held-out fraction. The split depends only on the
image id, the seed and the fraction: not on the order of the images, on which other
images the probe holds, or on the machine. ``dissect label --holdout`` records it in
the labels' metadata; ``dissect evaluate simulate`` scores only the held-out images.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .errors import ArtifactError, UsageError

SCHEME = "sha256(seed:id) < fraction"


def check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0 < f < 1:
        raise UsageError(f"--holdout must be between 0 and 1 (the share of images held out), got {fraction}")
    return f


def held_out(ids: list[str], fraction: float, seed: int = 0) -> np.ndarray:
    """[len(ids)] bool: True for the images held out."""
    fraction = check_fraction(fraction)
    out = np.empty(len(ids), dtype=bool)
    for i, key in enumerate(ids):
        h = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2.0**64 < fraction
    return out


def record(fraction: float, seed: int, n_labelled: int, n_held_out: int) -> dict[str, Any]:
    """The split as the labels' metadata records it."""
    return {"holdout": float(fraction), "seed": int(seed), "scheme": SCHEME, "n_labelled": int(n_labelled),
            "n_held_out": int(n_held_out)}


def stored(rec: dict[str, Any], where: str) -> tuple[float, int]:
    """(fraction, seed) of a split recorded in ``where``'s metadata, checked: the file is blamed, not an option."""
    fraction, seed = rec.get("holdout"), rec.get("seed", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ArtifactError(f"{where} records a held-out split of {fraction!r}, not a share between 0 and 1",
                            hint="relabel with `dissect label --holdout FRACTION`, or restore the file's metadata")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArtifactError(f"{where} records a split seed {seed!r}, not a whole number",
                            hint="relabel with `dissect label --holdout FRACTION --seed N`, or restore the file's metadata")
    return float(fraction), seed
