"""What kind of dissect artifact a file is, whatever its container."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .hdf5 import is_hdf5, sniff_hdf5
from .tables import read_parquet_metadata


def sniff(path: str | os.PathLike) -> str:
    """The kind (``format``) of the dissect artifact at ``path``; a one-line error naming what is wrong otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give the path of an artifact")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an artifact")
    if is_hdf5(p):
        return sniff_hdf5(p)
    return read_parquet_metadata(p)["format"]
