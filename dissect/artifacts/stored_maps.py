"""Reading the ``maps`` group of activations.h5 (``record --maps``; ``hdf5.write_activations`` writes it).

``maps/NAME`` holds ``values`` [C, K, h, w] float16, ``rows`` [C, K] int32 (rows of the file's ids, -1:
none) and ``scores`` [C, K] float32, with attrs ``k``, ``grid_prefix``, ``summary`` (docs/artifacts.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .formats import ACTIVATIONS_FORMAT
from .hdf5 import open_h5


@dataclass
class UnitMaps:
    """The stored top maps of one layer or entry: ``values`` [U, K, h, w] float32 (of the units asked for),
    ``rows`` [U, K] (rows of the file's ids; -1: none), ``scores`` [U, K] and the group's ``attrs``."""

    values: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    attrs: dict[str, Any]


def maps_in(path: str | os.PathLike) -> dict[str, int]:
    """The layers and entries of an activations file that hold maps, each with its K (none: {})."""
    f, _ = open_h5(path, ACTIVATIONS_FORMAT)
    with f:
        if "maps" not in f:
            return {}
        return {name: int(f["maps"][name]["rows"].shape[1]) for name in f["maps"]}


def read_maps(path: str | os.PathLike, name: str, units: list[int] | None = None) -> UnitMaps:
    """The top maps of layer or entry ``name`` (``units``: only these units, in this order)."""
    f, _ = open_h5(path, ACTIVATIONS_FORMAT)
    with f:
        if "maps" not in f or name not in f["maps"]:
            have = sorted(f["maps"]) if "maps" in f else []
            raise ArtifactError(f"{path} holds no maps of {name!r}" + (f" (it has maps of {', '.join(have)})" if have
                                                                           else " (recorded without --maps)"),
                                hint="record the layer with `dissect record --maps K`")
        g = f["maps"][name]
        sel = slice(None) if units is None else sorted(set(int(u) for u in units))
        values, rows, scores = g["values"][sel], g["rows"][sel], g["scores"][sel]
        if units is not None:
            order = [sel.index(int(u)) for u in units]
            values, rows, scores = values[order], rows[order], scores[order]
        return UnitMaps(values.astype(np.float32), rows.astype(np.int64), scores.astype(np.float32),
                        {k: g.attrs[k] for k in g.attrs})


