"""What an evaluation returns: a per-unit table and a summary, written as a Parquet artifact with its JSON beside it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artifacts as A


@dataclass
class Evaluation:
    """Per-unit rows (``units``, column -> list) and one summary per labels file or layer (``summary``)."""

    units: dict[str, list]
    summary: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def write_units(ev: Evaluation, out: str | os.PathLike, kind: str, stage: str) -> tuple[Path, Path]:
    """The per-unit (or per-image) table of an evaluation as a Parquet artifact of ``kind``, and its summary
    as JSON beside it (OUT with the suffix .json)."""
    _, summary = A.write_table(out, kind, ev.units, {"summary": ev.summary, "provenance": json.loads(A.provenance(stage=stage))},
                               summary=ev.summary)
    return Path(out), summary
