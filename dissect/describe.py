"""What an artifact holds and how it was made: the data behind ``dissect info``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import artifacts as A


def _loads(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A flat, ordered description of images.h5, text.h5, activations.h5 or a labels/composed/metrics Parquet."""
    path = Path(path)
    kind = A.sniff(path)
    if kind in A.HDF5_FORMATS:
        return _describe_h5(path, kind, A.peek_attrs(path, kind))
    return _describe_parquet(path)


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
    d: dict[str, Any] = {"format": meta["format"], "version": meta["version"]}
    if table is not None:
        layers = table.column("layer").to_pylist()
        d["rows"] = len(layers)
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
