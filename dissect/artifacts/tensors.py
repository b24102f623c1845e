"""safetensors files dissect writes: directions.safetensors (``dissect decompose``), the matrices ``--directions``
reads, with how they were made in the header."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, first_line
from .files import atomic_path, note_inputs
from .formats import DIRECTIONS_FORMAT, FORMAT_VERSION


def write_directions(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """A safetensors file of named float32 matrices, ``directions`` [K, C] among them (what ``--directions``
    reads); ``metadata`` (format, version, how it was made) goes in the header as JSON strings."""
    from safetensors.numpy import save_file

    head = {"format": DIRECTIONS_FORMAT, "version": str(FORMAT_VERSION)}
    head.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()})
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    with atomic_path(path, nbytes=sum(a.nbytes for a in arrays.values())) as tmp:
        save_file(arrays, str(tmp), metadata=head)
    return Path(path)


def read_directions_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The header of a safetensors file, in one read: its metadata ({} when it has none) and each tensor's shape."""
    from safetensors import safe_open

    note_inputs(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {}), {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise ArtifactError(f"cannot read {path}: {first_line(e)}") from None


def read_directions_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file ({} when it has none)."""
    return read_directions_header(path)[0]

