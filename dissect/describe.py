"""What an artifact holds and how it was made: the data behind ``dissect info`` and ``dissect show``.

Every file dissect reads or writes is known here (``kind_of``): its own HDF5 and Parquet
artifacts, directions.safetensors, the JSON summaries, run folders, and the files other
tools write (label CSVs of other methods, per-image annotations).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts as A
from .artifacts.external import ANNOTATIONS_KIND, csv_kind, is_annotations_parquet
from .errors import ArtifactError


def _loads(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


#: ``kind_of`` for the kinds that are not a dissect format name.
RUN_FOLDER, JSON_FILE, ANNOTATIONS = "run folder", "JSON", ANNOTATIONS_KIND


def kind_of(path: str | os.PathLike) -> str:
    """The kind of any file dissect knows: a format name (``dissect/labels`` ...), an external label kind
    (``clip-dissect-csv`` ...), ``ANNOTATIONS``, ``JSON_FILE`` or ``RUN_FOLDER``; one line for anything else."""
    p = Path(path)
    if p.is_dir():
        A.find_run(p)  # one line when it is no run folder
        return RUN_FOLDER
    if not p.exists():
        return A.sniff(p)  # its one-line error
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return A.DIRECTIONS_FORMAT
    if suffix == ".json":
        return JSON_FILE
    if suffix == ".csv":
        return csv_kind(p)
    if suffix in (".parquet", ".pq") and is_annotations_parquet(p):
        return ANNOTATIONS
    return A.sniff(p)


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A flat, ordered description of any file dissect knows (``kind_of``)."""
    path = Path(path)
    kind = kind_of(path)
    if kind in A.HDF5_FORMATS:
        return _describe_h5(path, kind, A.peek_attrs(path, kind))
    if kind in _DESCRIBERS:
        return _DESCRIBERS[kind](path)
    if kind in A.EXTERNAL_LABEL_KINDS:
        return _describe_label_csv(path, kind)
    return _describe_parquet(path)


#: A layer name for label files that do not name theirs (their layer comes from --layer when they are used).
UNNAMED_LAYER = "(unnamed: give --layer)"


def _describe_label_csv(path: Path, kind: str) -> dict[str, Any]:
    lf = A.read_label_file(path, layer=UNNAMED_LAYER)
    return {"format": f"{kind}: {A.EXTERNAL_LABEL_KINDS[kind]}", "rows": len(lf.units),
            "layers": {name: lf.layers.count(name) for name in dict.fromkeys(lf.layers)},
            "units": f"{min(lf.units)}..{max(lf.units)} (0-based)", "method": lf.method,
            "scored": sum(s is not None for s in lf.similarity)}


def _describe_annotations(path: Path) -> dict[str, Any]:
    ann = A.read_annotations(path)
    counts = annotation_counts(ann)
    values = ann.values
    return {"format": "annotations: per-image concepts (id, concept[, value])", "rows": len(ann.ids),
            "images": len(set(ann.ids)), "concepts": len(counts),
            "values": "1 (present)" if bool((values == 1).all()) else f"{values.min():.3g}..{values.max():.3g}",
            "most annotated": {c: n for c, n in list(counts.items())[:5]}, "fingerprint": ann.fingerprint}


def annotation_counts(ann) -> dict[str, int]:
    """Images per concept (value ≥ 0.5), most annotated first."""
    seen: dict[str, set] = {}
    for i, c, v in zip(ann.ids, ann.concepts, ann.values.tolist()):
        if v >= 0.5:
            seen.setdefault(c, set()).add(i)
    return dict(sorted(((c, len(s)) for c, s in seen.items()), key=lambda kv: (-kv[1], kv[0])))


def _describe_directions(path: Path) -> dict[str, Any]:
    raw, tensors = A.read_directions_header(path)
    meta = {k: _loads(v) for k, v in raw.items()}
    d: dict[str, Any] = {"format": meta.pop("format", "safetensors (no dissect header)"),
                         "version": meta.pop("version", ""), "tensors": tensors}
    prov = meta.pop("provenance", {})
    d.update({k: v for k, v in meta.items()})
    d["made"] = _provenance({"provenance": prov if isinstance(prov, str) else json.dumps(prov or {})})
    return d


def _describe_json(path: Path) -> dict[str, Any]:
    A.note_inputs(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path} as JSON: {e}") from None
    d: dict[str, Any] = {"format": "JSON"}
    table = path.with_suffix(".parquet")
    if table.exists():
        d["summary of"] = str(table)
    elif path.name == A.RUN_MANIFEST:
        d["of"] = f"the run folder {path.parent}"
    if isinstance(data, dict):
        d["keys"] = list(data)[:30]
    else:
        n = len(data) if isinstance(data, list) else None
        d["holds"] = f"a {type(data).__name__}" + (f" of {n} item{'' if n == 1 else 's'}" if n is not None else "")
    return d


def _describe_run(path: Path) -> dict[str, Any]:
    parts = A.find_run(path)
    return {"format": "run folder", **{part: (p.name if p is not None else None) for part, p in parts.items()},
            "info": f"dissect info {path}/FILE describes each"}


_DESCRIBERS = {ANNOTATIONS: _describe_annotations, A.DIRECTIONS_FORMAT: _describe_directions, JSON_FILE: _describe_json,
               RUN_FOLDER: _describe_run}


def _provenance(attrs) -> dict[str, Any]:
    prov = _loads(attrs.get("provenance", "{}")) or {}
    return {k: prov[k] for k in ("tool_version", "created", "command", "precision", "device", "n_skipped") if k in prov}


def _layer_line(ds: "A.DatasetHeader") -> str:
    shape = f"{ds.shape[1]} units" if ds.ndim == 2 else f"shape {ds.shape} (not [N, units])"
    line = f"{shape}, summary {ds.attrs.get('summary', '?')}"
    kind = ds.attrs.get("directions_kind")
    if kind:  # a direction entry: what made its units, over positions of which layer
        line += (f"{' over positions' if ds.attrs.get('summary') != 'identity' else ''}, {kind} "
                 f"{ds.attrs.get('directions_spec', '')} on {ds.attrs.get('directions_layer', '?')}")
        if str(ds.attrs.get("dtype", "float32")) != "float32":
            line += f", stored as {ds.attrs.get('dtype')}"
    return line


def _describe_h5(path: Path, kind: str, attrs: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {"format": kind, "version": int(attrs.get("version", 0)), "size": f"{path.stat().st_size / 1e6:.1f} MB"}
    header = A.read_header(path, kind)
    if kind == A.ACTIVATIONS_FORMAT:
        d["model"] = attrs.get("model", "")
        d["weights"] = attrs.get("weights", "")
        d["images"] = int(header.dataset("ids", path).shape[0])
        d["layers"] = {name: _layer_line(layer) for name, layer in header.layers.items()}
        maps = A.maps_in(path)
        if maps:
            d["maps"] = {name: f"top {k} images per unit" for name, k in maps.items()}
        d["preprocess"] = _loads(attrs.get("preprocess", ""))
        d["inputs_fingerprint"] = attrs.get("inputs_fingerprint", "")
    else:
        key = "ids" if kind == A.IMAGE_FORMAT else "concepts"
        emb = header.dataset("embeddings", path)
        d["clip"] = attrs.get("clip_spec") or f"{attrs.get('clip_model')}:{attrs.get('clip_pretrained')}"
        d["images" if kind == A.IMAGE_FORMAT else "concepts"] = int(header.dataset(key, path).shape[0])
        d["embedding"] = f"{emb.shape[1]} dims, {emb.dtype}" if emb.ndim == 2 else f"{emb.dtype} {emb.shape} (not [N, d])"
        if kind == A.TEXT_FORMAT:
            d["concept_set"] = attrs.get("concept_set", "")
            d["text_encoder"] = attrs.get("text_encoder", "")
        d["fingerprint"] = attrs.get("fingerprint", "")
    if "probe" in attrs:
        probe = _loads(attrs["probe"])
        d["probe"] = {"sources": [s.get("path", s.get("name")) for s in probe.get("sources", [])],
                      "images": probe.get("n_images"), "fingerprint": probe.get("fingerprint")}
    skipped = _loads(attrs.get("skipped", "[]")) or []  # its shape was checked when the file was opened
    if skipped:
        d["skipped"] = f"{len(skipped)} images (first: {skipped[0][0]}: {skipped[0][1]})"
    if "precision" in attrs:
        d["precision"] = attrs["precision"]
    if "shard" in attrs:
        d["shard"] = f"{attrs['shard']} (positions {attrs.get('shard_range')}); join with `dissect merge`"
    d["made"] = _provenance(attrs)
    return d


def _describe_parquet(path: Path) -> dict[str, Any]:
    meta = A.read_parquet_metadata(path)  # info describes what is there: only the layer column is needed
    table = A.read_table(path, columns=["layer"]) if "layer" in A.column_names(path) else None
    d: dict[str, Any] = {"format": meta["format"], "version": meta["version"], "rows": A.parquet_rows(path)}
    if table is not None:
        layers = table.column("layer").to_pylist()
        d["layers"] = {name: layers.count(name) for name in dict.fromkeys(layers)}
    for k in ("similarity", "params", "top", "clip", "model", "weights", "template", "depth"):
        if k in meta:
            d[k] = meta[k]
    if isinstance(meta.get("concepts"), dict):  # the reader checked its type; null is allowed
        c = meta["concepts"]
        d["concepts"] = f"{c.get('name', '')} ({c.get('n', '?')} concepts)"
    if "probe" in meta:
        d["probe"] = meta["probe"] if isinstance(meta["probe"], dict) else meta["probe"]
    if "summary" in meta:
        d["summary"] = meta["summary"]
    prov = meta.get("provenance")
    d["made"] = _provenance({"provenance": prov if isinstance(prov, str) else json.dumps(prov or {})})
    return d


# ---------------------------------------------------------------------------
# Rows: what `dissect show` lists of a file
# ---------------------------------------------------------------------------

@dataclass
class Rows:
    """A file's rows as ``dissect show`` lists them: ``columns`` of each row (dicts), what a row is (``noun``), the
    column ``--sort similarity`` orders by (``score``, None when there is none) and those ``--grep`` searches."""

    columns: list[str]
    rows: list[dict[str, Any]]
    noun: str
    score: str | None
    searched: tuple[str, ...]


#: The columns of dissect's per-unit tables that show lists (lists of candidates and such are kept whole).
_TABLE_COLUMNS = {
    A.SIMULATE_FORMAT: ["labels", "layer", "unit", "label", "correlation", "cosine", "auprc", "f1", "iou", "n_images",
                        "held_out", "reason"],
    A.SANITY_FORMAT: ["setting", "scorer", "kind", "missing_rate", "extra_rate", "missing_pass", "extra_pass"],
}


def rows_of(path: str | os.PathLike) -> Rows | None:
    """The rows ``dissect show`` lists of ``path``: labels of every kind, dissect's tables, annotations (images per
    concept). None for files that are described, not listed (HDF5 artifacts, directions, JSON)."""
    path = Path(path)
    kind = kind_of(path)
    if kind in (A.LABELS_FORMAT, A.COMPOSED_FORMAT):
        table = A.read_table(path, (A.LABELS_FORMAT, A.COMPOSED_FORMAT))
        cols = [c for c in ("layer", "unit", "label", "similarity", "candidates", "gain") if c in table.column_names]
        return Rows(cols, table.select(cols).to_pylist(), "neurons", "similarity", ("label", "candidates"))
    if kind == A.EXPLAIN_FORMAT:
        table = A.read_table(path, A.EXPLAIN_FORMAT)
        rows = [dict(r, concepts=list(r["concepts"] or [])) for r in table.to_pylist()]
        cols = ["layer", "unit", "explanation", "correlation", "single_concept", "single_correlation"]
        return Rows(cols, rows, "neurons", "correlation", ("explanation", "concepts"))
    if kind in A.EXTERNAL_LABEL_KINDS:
        lf = A.read_label_file(path, layer=UNNAMED_LAYER)
        rows = [{"layer": la, "unit": u, "label": t, "similarity": s}
                for la, u, t, s in zip(lf.layers, lf.units, lf.labels, lf.similarity)]
        return Rows(["layer", "unit", "label", "similarity"], rows, "neurons", "similarity", ("label",))
    if kind == ANNOTATIONS:
        counts = annotation_counts(A.read_annotations(path))
        return Rows(["concept", "images"], [{"concept": c, "images": n} for c, n in counts.items()], "concepts",
                    "images", ("concept",))
    if kind in A.PARQUET_FORMATS:
        table = A.read_table(path, kind)
        cols = [c for c in _TABLE_COLUMNS.get(kind, table.column_names) if c in table.column_names]
        score = next((c for c in ("similarity", "correlation", "score") if c in cols), None)
        return Rows(cols, table.select(cols).to_pylist(), "rows", score,
                    tuple(c for c in ("label", "concept", "scorer", "labels") if c in cols))
    return None
