"""Run folders: the artifacts of one study side by side, found by name or through run.json.

``dissect run`` writes labels.parquet, activations.h5 and the rest under their standard
names (``RUN_FILES``) and a run.json describing the run. A folder whose files have other
names (the demo's labels-mixed-softwpmi.parquet ...) says which file plays which part in
run.json's ``artifacts`` object, so that ``dissect report RUN`` and ``dissect show RUN``
open it like a run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, InputError
from .files import write_json

#: The manifest of a run folder.
RUN_MANIFEST = "run.json"

#: Each part of a run and the file that holds it unless run.json's ``artifacts`` names another.
RUN_FILES = {"labels": "labels.parquet", "activations": "activations.h5", "composed": "composed.parquet",
             "metrics": "metrics.parquet", "simulate": "simulate.parquet", "explanations": "explanations.parquet"}

#: The parts without which a folder is no run.
RUN_REQUIRED = ("labels", "activations")


def _named(folder: Path) -> dict[str, str]:
    """run.json's ``artifacts``: part -> file name inside the folder (checked: plain names of known parts)."""
    manifest = folder / RUN_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {manifest}: {e}") from None
    named = data.get("artifacts", {}) if isinstance(data, dict) else None
    if not isinstance(named, dict):
        raise ArtifactError(f"{manifest}: 'artifacts' is {type(named).__name__}, not an object of part: file name")
    for part, name in named.items():
        if part not in RUN_FILES:
            raise ArtifactError(f"{manifest}: unknown part {part!r} in 'artifacts'", hint=f"parts: {', '.join(RUN_FILES)}")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{manifest}: artifacts.{part} is {name!r}, not a file name inside the folder")
    return named


def find_run(folder: str | os.PathLike) -> dict[str, Path | None]:
    """The artifacts of a run folder by part (labels, activations, and the optional extras, None when absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="give a run folder (`dissect run -o RUN`)")
    named = _named(folder)
    found = {part: folder / named.get(part, default) for part, default in RUN_FILES.items()}
    missing = [found[p].name for p in RUN_REQUIRED if not found[p].is_file()]
    if missing:
        raise InputError(f"{folder} holds no {' and '.join(missing)}",
                         hint="give a `dissect run` folder (or one whose run.json names its artifacts), "
                              "or --labels and --activations")
    return {part: (p if p.is_file() else None) for part, p in found.items()}


def write_run_manifest(folder: str | os.PathLike, description: dict[str, Any], artifacts: dict[str, str] | None = None) -> Path:
    """run.json: ``description`` (how the folder was made) and, for non-standard names, which file is which part."""
    data = dict(description)
    if artifacts:
        unknown = set(artifacts) - set(RUN_FILES)
        if unknown:
            raise ValueError(f"unknown run parts {sorted(unknown)}")
        data["artifacts"] = dict(artifacts)
    return write_json(Path(folder) / RUN_MANIFEST, data)
