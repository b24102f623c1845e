"""Content fingerprints: every cached artifact is keyed by what produced it.

A fingerprint is the SHA-256 of a canonical JSON rendering of the inputs that change
a result (model, weights, preprocessing, probe ids, concepts, parameters, format
version). Two artifacts with equal fingerprints were made from equal inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

_FILE_SAMPLE = 4 << 20  # bytes hashed at each end of a large file


def fingerprint(obj: Any) -> str:
    """Stable hex digest of a JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def fingerprint_strings(items: Iterable[str]) -> str:
    """Digest of an ordered sequence of strings (ids, concepts); order matters."""
    return fingerprint_blobs(s.encode("utf-8") for s in items)


def fingerprint_blobs(items: Iterable[bytes]) -> str:
    """Digest of an ordered sequence of byte strings (tensor contents, source code), each length-prefixed."""
    h = hashlib.sha256()
    for b in items:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


def fingerprint_file(path: str | os.PathLike) -> str:
    """Digest of a file's size and content; files over 8 MiB hash their first and last 4 MiB.

    Checkpoints can be gigabytes; sampling both ends plus the exact size catches
    re-trained or truncated weights without reading the whole file on every run.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as f:
        if size <= 2 * _FILE_SAMPLE:
            h.update(f.read())
        else:
            h.update(f.read(_FILE_SAMPLE))
            f.seek(size - _FILE_SAMPLE)
            h.update(f.read())
    return h.hexdigest()[:32]
