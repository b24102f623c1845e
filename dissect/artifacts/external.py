"""Files other tools write: the label files other methods publish (CLIP-Dissect, MILAN, NetDissect-Lite), read
beside dissect's own labels, and per-image concept annotations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, UsageError
from ..fingerprint import fingerprint_strings
from .formats import COMPOSED_FORMAT, EXPLAIN_FORMAT, LABELS_FORMAT, MAKER
from .tables import read_parquet_metadata, read_table


#: Label files other methods publish (the official CLIP-Dissect repository's data/ folder).
EXTERNAL_LABEL_KINDS = {
    "clip-dissect-csv": "CLIP-Dissect CSV (layer,unit,description,similarity)",
    "milan-csv": "MILAN CSV (layer,unit,description)",
    "netdissect-tally": "NetDissect-Lite tally CSV (unit,category,label,score,...; one layer, units 1-based)",
}


@dataclass
class LabelFile:
    """Labels of one file, whatever wrote it: one entry per labelled unit."""

    path: str
    kind: str                    # LABELS_FORMAT, COMPOSED_FORMAT or a key of EXTERNAL_LABEL_KINDS
    layers: list[str]
    units: list[int]
    labels: list[str]
    similarity: list[float | None]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: linear explanations: each unit's concepts and weights (its prediction is Σ w_i c_i);
    #: compositions read as AND (``read_label_file(composed="and")``): their parts, weights None
    parts: list[list[str]] | None = None
    part_weights: list[list[float]] | None = None

    def select_layer(self, layer: str) -> None:
        """Keep the entries of ``layer`` only (every per-unit field, parts and weights too)."""
        keep = [i for i, name in enumerate(self.layers) if name == layer]
        if not keep:
            raise UsageError(f"{self.path} labels no layer {layer!r}", hint=f"its layers: {', '.join(dict.fromkeys(self.layers))}")
        for attr in ("layers", "units", "labels", "similarity", "parts", "part_weights"):
            values = getattr(self, attr)
            if values is not None:
                setattr(self, attr, [values[i] for i in keep])

    @property
    def method(self) -> str:
        if self.kind == EXPLAIN_FORMAT:
            return f"dissect explain ({self.metadata.get('mode', '?')} mode)"
        if self.kind in (LABELS_FORMAT, COMPOSED_FORMAT):
            sim = self.metadata.get("similarity") or "?"
            return f"dissect {sim}" if self.kind == LABELS_FORMAT else f"dissect compose ({sim})"
        return {"clip-dissect-csv": "CLIP-Dissect (CSV)", "milan-csv": "MILAN", "netdissect-tally": "NetDissect"}[self.kind]


def _netdissect_label(raw: str) -> str:
    """A tally label as words: the category suffix (-s scene, -c colour) dropped, '_' and '-' as spaces."""
    text = raw.strip()
    for suffix in ("-s", "-c"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def read_label_file(path: str | os.PathLike, layer: str | None = None, composed: str = "phrase") -> LabelFile:
    """Labels from a dissect labels.parquet, composed.parquet or explanations.parquet, or from a
    CLIP-Dissect, MILAN or NetDissect-Lite CSV (told apart by their header). ``layer`` names the
    layer of a NetDissect tally (its file holds one layer and no layer column); its 1-based units
    become 0-based. Every layer is returned: ``LabelFile.select_layer`` keeps one. ``composed``
    ``and``: a composed label is read as its parts (present where all of them are), not as one phrase."""
    import csv

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give a labels.parquet, composed.parquet or a label CSV")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a labels file")
    if p.suffix.lower() != ".csv":
        meta = read_parquet_metadata(p, (LABELS_FORMAT, COMPOSED_FORMAT, EXPLAIN_FORMAT))
        if meta["format"] == EXPLAIN_FORMAT:
            table = read_table(p, EXPLAIN_FORMAT, columns=["layer", "unit", "concepts", "weights", "correlation"])
            parts = [list(c or []) for c in table.column("concepts").to_pylist()]
            weights = [list(w or []) for w in table.column("weights").to_pylist()]
            bad = next((i for i, (c, w) in enumerate(zip(parts, weights)) if len(c) != len(w) or None in c or None in w), None)
            if bad is not None:
                raise ArtifactError(f"{p} row {bad}: its concepts and weights do not pair up",
                                    hint="give a file written by `dissect explain`")
            texts = [" + ".join(f"{w:.2f} {c}" for c, w in zip(cs, ws)) for cs, ws in zip(parts, weights)]
            return LabelFile(str(p), EXPLAIN_FORMAT, table.column("layer").to_pylist(), table.column("unit").to_pylist(),
                             texts, table.column("correlation").to_pylist(), meta, parts, weights)
        and_parts = composed == "and" and meta["format"] == COMPOSED_FORMAT
        table = read_table(p, (LABELS_FORMAT, COMPOSED_FORMAT),
                           columns=["layer", "unit", "label", "similarity"] + (["parts"] if and_parts else []))
        labels = table.column("label").to_pylist()
        if any(v is None for v in labels):
            raise ArtifactError(f"{p}: column 'label' has empty (null) values", hint=f"give a file written by `{MAKER[meta['format']]}`")
        parts = None
        if and_parts:
            parts = [list(c or []) for c in table.column("parts").to_pylist()]
            bad = next((i for i, c in enumerate(parts) if not c or None in c), None)
            if bad is not None:
                raise ArtifactError(f"{p} row {bad}: its parts are empty", hint="give a file written by `dissect compose`")
        return LabelFile(str(p), meta["format"], table.column("layer").to_pylist(), table.column("unit").to_pylist(), labels,
                         table.column("similarity").to_pylist(), meta, parts)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {p} as CSV: {e}") from None
    if not rows:
        raise InputError(f"{p} holds no labels", hint="give a CSV with a header row and one row per unit")
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    cols = set(header)
    if {"layer", "unit", "description"} <= cols:
        kind = "clip-dissect-csv" if "similarity" in cols else "milan-csv"
        layers = [r["layer"] for r in rows]
        texts = [r["description"] for r in rows]
        raw_units = [r["unit"] for r in rows]
        sims = [r.get("similarity") for r in rows] if kind == "clip-dissect-csv" else [None] * len(rows)
        offset = 0
    elif {"unit", "category", "label", "score"} <= cols:
        kind = "netdissect-tally"
        if layer is None:
            raise UsageError(f"{p} is a NetDissect tally: it holds one layer and does not name it",
                             hint="pass --layer NAME (the layer it describes, as named in activations.h5)")
        layers = [layer] * len(rows)
        texts = [_netdissect_label(r["label"]) for r in rows]
        raw_units = [r["unit"] for r in rows]
        sims = [r.get("score") for r in rows]
        offset = 1
    else:
        raise InputError(f"{p} is not a label CSV dissect knows (header: {', '.join(header)[:120]})",
                         hint="known: " + "; ".join(EXTERNAL_LABEL_KINDS.values()))
    units = []
    for i, raw in enumerate(raw_units):
        try:
            u = int(str(raw).strip())
        except ValueError:
            raise InputError(f"{p} row {i + 2}: unit {raw!r} is not a whole number") from None
        if u - offset < 0:
            raise InputError(f"{p} row {i + 2}: unit {u} is out of range" + (" (NetDissect units start at 1)" if offset else ""))
        units.append(u - offset)
    similarity = []
    for s_ in sims:
        try:
            similarity.append(None if s_ in (None, "") else float(s_))
        except ValueError:
            similarity.append(None)
    seen: set = set()
    for key in zip(layers, units):
        if key in seen:
            raise InputError(f"{p} labels unit {key[1] + offset} of layer {key[0]} more than once")
        seen.add(key)
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise InputError(f"{p} row {empty[0] + 2} has an empty label")
    return LabelFile(str(p), kind, layers, units, texts, similarity, {"format": kind, "source": str(p.resolve())})


@dataclass
class Annotations:
    """Per-image concept presence in long form: image ``ids``, ``concepts`` and ``values`` in [0, 1]."""

    path: str
    ids: list[str]
    concepts: list[str]
    values: np.ndarray
    fingerprint: str = ""


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Annotations from a CSV or Parquet in long form: columns ``id`` and ``concept``, optional
    ``value`` in [0, 1] (absent: 1). Ids are image ids as stored in dissect's artifacts."""
    import csv

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give a CSV or Parquet with columns id, concept[, value]")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an annotations file")
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise InputError(f"{p} is not a Parquet file dissect can read: {first}") from None
        names = table.column_names
        cols = {n: table.column(n).to_pylist() for n in ("id", "concept", "value") if n in names}
    else:
        try:
            with open(p, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"cannot read {p} as CSV: {e}") from None
        names = list(rows[0].keys()) if rows else []
        cols = {n: [r.get(n) for r in rows] for n in ("id", "concept", "value") if n in names}
    for need in ("id", "concept"):
        if need not in cols:
            raise InputError(f"{p} has no column {need!r} (columns: {', '.join(map(str, names))[:120]})",
                             hint="annotations are long form: one row per (id, concept), optional value in [0, 1]")
    ids, concepts = cols["id"], cols["concept"]
    if not ids:
        raise InputError(f"{p} holds no annotations")
    for i, (a, b) in enumerate(zip(ids, concepts)):
        if a in (None, "") or b in (None, ""):
            raise InputError(f"{p} row {i + 1} has an empty id or concept")
    raw = cols.get("value")
    if raw is None:
        values = np.ones(len(ids), dtype=np.float64)
    else:
        try:
            values = np.array([1.0 if v in (None, "") else float(v) for v in raw], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{p}: column 'value' holds something that is not a number") from None
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{p} row {i + 1}: value {values[i]} is not in [0, 1]")
    return Annotations(str(p), [str(a) for a in ids], [str(b) for b in concepts], values,
                       fingerprint_strings([f"{a}\t{b}\t{v!r}" for a, b, v in zip(ids, concepts, values.tolist())]))

