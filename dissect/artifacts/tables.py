"""The Parquet kinds, with every schema: labels, composed labels, explanations, simulation and sanity scores, and
the evaluations' tables.

Each kind's columns are declared once (``KINDS``): writers build their table from it
(``write_table``), readers check the columns a kind guarantees (``read_table``). The schema
metadata key ``dissect`` holds a JSON object with ``format``, ``version`` and how the file
was made; ``read_parquet_metadata`` checks it. Tables that come with a summary get it as
JSON beside them (OUT with the suffix .json).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, UsageError, first_line
from .files import atomic_path, note_inputs, write_json
from .formats import (COMPOSED_FORMAT, EVALUATION_FORMAT, EXPLAIN_FORMAT, FORMAT_VERSION, LABELS_FORMAT, MAKER,
                      PARQUET_FORMATS, PREDICT_FORMAT, PVALUES_FORMAT, SANITY_FORMAT, SEGMENT_FORMAT, COMPARE_FORMAT, ABLATE_FORMAT, SIMULATE_FORMAT, STABILITY_FORMAT,
                      STDOUT)

# ---------------------------------------------------------------------------
# The kinds and their columns
# ---------------------------------------------------------------------------

#: Where a kind's per-metric columns go among its columns (each a float64; ``TableKind.schema(metrics=...)``).
METRICS = "*metrics"


@dataclass(frozen=True)
class TableKind:
    """The columns of one Parquet kind: ``columns`` as written, in order ((name, type); none: the types follow
    the rows), and the ``required`` ones every reader may rely on (with their families, ``FAMILIES``)."""

    columns: tuple[tuple[str, str], ...]
    required: dict[str, str]

    def names(self, metrics: tuple[str, ...] = ()) -> list[str]:
        out: list[str] = []
        for name, _ in self.columns:
            out += list(metrics) if name == METRICS else [name]
        return out

    def schema(self, metrics: tuple[str, ...] = ()):
        """The pyarrow schema of the written table (``metrics``: the names of the metric columns)."""
        import pyarrow as pa

        types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
                 "bool": pa.bool_(), "list<string>": pa.list_(pa.string()), "list<float64>": pa.list_(pa.float64())}
        fields_ = []
        for name, kind in self.columns:
            fields_ += [(m, pa.float64()) for m in metrics] if name == METRICS else [(name, types[kind])]
        return pa.schema(fields_)


def _written(columns: list[tuple[str, str]], required: list[str]) -> TableKind:
    """A kind written with a fixed schema: its ``required`` columns' families follow from their written types
    (a metric column's: a number)."""
    family = {"string": "string", "int32": "int", "int64": "int", "float64": "float", "bool": "bool",
              "list<string>": "list<string>", "list<float64>": "list<float>"}
    types = dict(columns)
    return TableKind(tuple(columns), {name: family[types.get(name, "float64")] for name in required})


LABEL_COLUMNS = ("layer", "unit", "label", "similarity", "candidates", "candidate_similarities")
_LABELS = [("layer", "string"), ("unit", "int32"), ("label", "string"), ("similarity", "float64"),
           ("candidates", "list<string>"), ("candidate_similarities", "list<float64>")]
_COMPOSED = [("layer", "string"), ("unit", "int32"), ("label", "string"), ("parts", "list<string>"),
             ("similarity", "float64"), ("single_label", "string"), ("single_similarity", "float64"), ("gain", "float64"),
             ("candidates", "list<string>"), ("candidate_similarities", "list<float64>"), ("selected_by", "string"),
             ("heldout_auprc", "float64"), ("single_heldout_auprc", "float64")]
_EXPLAIN = [("layer", "string"), ("unit", "int32"), ("concepts", "list<string>"), ("weights", "list<float64>"),
            ("bias", "float64"), ("explanation", "string"), ("n_concepts", "int32"), ("correlation", "float64"),
            ("correlation_train", "float64"), ("correlation_fit_presence", "float64"), ("single_concept", "string"),
            ("single_correlation", "float64"),
            ("n_train", "int64"), ("n_val", "int64"), ("n_held_out", "int64")]
_SIMULATE = [("labels", "string"), ("method", "string"), ("layer", "string"), ("unit", "int32"), ("label", "string"),
             (METRICS, "float64"), ("similarity", "float64"), ("n_images", "int64"), ("held_out", "bool"),
             ("presence", "string"), ("reason", "string")]
_SANITY = [("setting", "string"), ("scorer", "string"), ("kind", "string"), ("repetitions", "int32"),
           ("alpha", "float64"), ("lam", "float64"), ("alpha_choice", "string"), ("conventions", "string"),
           ("missing_rate", "float64"), ("extra_rate", "float64"), ("missing_pass", "bool"), ("extra_pass", "bool"),
           ("missing_rate_mean", "float64"), ("extra_rate_mean", "float64"), ("missing_rate_min", "float64"),
           ("extra_rate_min", "float64"), ("cases", "list<string>"), ("missing_rates", "list<float64>"), ("extra_rates", "list<float64>"),
           ("missing_mean_diff", "list<float64>"), ("extra_mean_diff", "list<float64>")]

_SEGMENT = [("layer", "string"), ("unit", "int32"), ("concept", "string"), ("kind", "string"), ("iou", "float64"),
            ("threshold", "float64"), ("morans_i", "float64"), ("label", "string"), ("label_agrees", "bool"),
            ("label_cos", "float64")]

_COMPARE = [("layer_a", "string"), ("unit_a", "int32"), ("layer_b", "string"), ("unit_b", "int32"), ("r", "float64"),
            ("matched", "bool"), ("best_b", "int32"), ("best_r", "float64"), ("best_a", "int32"), ("best_a_r", "float64"),
            ("label_a", "string"), ("label_b", "string"), ("labels_agree", "bool"), ("label_cos", "float64"),
            ("score_a", "float64"), ("score_b", "float64")]

_ABLATE = [("labels", "string"), ("method", "string"), ("layer", "string"), ("unit", "int32"), ("label", "string"),
           ("ablation", "float64"), ("correlation", "float64"), ("damage_base", "float64"), ("damage_pred", "float64"),
           ("n_images", "int64"), ("held_out", "bool"), ("loss", "string"), ("reason", "string"),
           ("published_ablation", "float64")]

#: Every Parquet kind. Composed labels guarantee fewer columns than they write (files of dissect 0.2 lack the
#: held-out ones); the evaluations' tables take their types from their rows.
KINDS: dict[str, TableKind] = {
    LABELS_FORMAT: _written(_LABELS, list(LABEL_COLUMNS)),
    COMPOSED_FORMAT: _written(_COMPOSED, ["layer", "unit", "label", "parts", "similarity", "candidates",
                                          "candidate_similarities", "gain"]),
    EXPLAIN_FORMAT: _written(_EXPLAIN, ["layer", "unit", "concepts", "weights", "bias", "correlation"]),
    SIMULATE_FORMAT: _written(_SIMULATE, ["labels", "layer", "unit", "label", "correlation"]),  # the simulation score
    SANITY_FORMAT: _written(_SANITY, ["setting", "scorer"]),
    SEGMENT_FORMAT: _written(_SEGMENT, ["layer", "unit", "concept", "iou"]),
    COMPARE_FORMAT: _written(_COMPARE, ["layer_a", "unit_a", "layer_b", "unit_b", "r"]),
    ABLATE_FORMAT: _written(_ABLATE, ["labels", "layer", "unit", "label", "ablation"]),
    EVALUATION_FORMAT: TableKind((), {"layer": "string", "unit": "int", "label": "string", "truth": "string",
                                      "exact": "bool"}),
    PREDICT_FORMAT: TableKind((), {}),
    STABILITY_FORMAT: TableKind((), {"layer": "string", "unit": "int"}),
    PVALUES_FORMAT: TableKind((), {"layer": "string", "unit": "int"}),
}

COMPOSED_COLUMNS = KINDS[COMPOSED_FORMAT].names()


def labels_schema():
    return KINDS[LABELS_FORMAT].schema()


def composed_schema():
    return KINDS[COMPOSED_FORMAT].schema()


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def write_parquet(out: str | os.PathLike, table, kind: str, metadata: dict[str, Any]) -> str:
    """Write a Parquet artifact of ``kind`` atomically, or to standard output when ``out`` is '-'.

    The schema metadata key ``dissect`` holds ``metadata`` with ``format`` and ``version``.
    """
    import pyarrow.parquet as pq

    if kind not in PARQUET_FORMATS:
        raise ValueError(f"{kind!r} is not a Parquet artifact kind")
    meta = dict(metadata, format=kind, version=FORMAT_VERSION)
    table = table.replace_schema_metadata({b"dissect": json.dumps(meta, sort_keys=True, default=str).encode()})
    if str(out) == STDOUT:
        from ..runtime import stdout_stream

        stream = stdout_stream().buffer
        buf = io.BytesIO()
        pq.write_table(table, buf)
        stream.write(buf.getvalue())
        stream.flush()
        return STDOUT
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return str(out)


def _expected(kinds: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return PARQUET_FORMATS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)



def table_of(kind: str, rows: dict[str, list], metrics: tuple[str, ...] = ()):
    """A pyarrow Table of ``kind`` from its columns (``rows``: name -> values; ``metrics``: the metric columns)."""
    import pyarrow as pa

    spec = KINDS[kind]
    if not spec.columns:
        return pa.Table.from_pydict(rows)
    schema = spec.schema(metrics)
    return pa.Table.from_pydict({f.name: rows[f.name] for f in schema}, schema=schema)


def write_table(out: str | os.PathLike, kind: str, rows: dict[str, list], metadata: dict[str, Any],
                summary: Any = None, metrics: tuple[str, ...] = ()) -> tuple[str, Path | None]:
    """A Parquet artifact of ``kind`` from its columns (``write_parquet``), and ``summary`` (when given) as JSON beside
    it, OUT with the suffix .json. Returns both paths (the second None without a summary)."""
    written = write_parquet(out, table_of(kind, rows, metrics), kind, metadata)
    if summary is None:
        return written, None
    return written, write_json(summary_path_of(out), summary)


def summary_path_of(out: str | os.PathLike) -> Path:
    """Where the JSON summary of the table ``out`` goes: OUT with the suffix .json (refused when that is OUT)."""
    path = Path(out).with_suffix(".json")
    if str(out) != STDOUT and path == Path(out):
        raise UsageError(f"-o {out}: the table and its JSON summary would both be written to {out}",
                         hint=f"give the table a .parquet name (e.g. -o {path.with_suffix('.parquet')}); "
                              "the summary goes beside it as .json")
    return path


def write_labels(out: str | os.PathLike, rows: dict[str, list], metadata: dict[str, Any]) -> str:
    """Write labels.parquet atomically, or to standard output when ``out`` is '-'."""
    return write_parquet(out, table_of(LABELS_FORMAT, rows), LABELS_FORMAT, metadata)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def parquet_rows(path: str | os.PathLike) -> int:
    """The number of rows of a Parquet file (its footer; no column is read)."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def read_parquet_metadata(path: str | os.PathLike, kinds: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``dissect`` metadata of a Parquet artifact, checked: it exists, is Parquet, is one of ``kinds`` (default:
    any dissect Parquet artifact) and of a version this dissect reads."""
    import pyarrow.parquet as pq

    expected = _expected(kinds)
    p = Path(path)
    maker = MAKER[expected[0]] if len(expected) == 1 else \
        "dissect label` or `dissect compose" if expected == (LABELS_FORMAT, COMPOSED_FORMAT) else "dissect"
    if not p.exists():
        raise InputError(f"{p} does not exist", hint=f"create it with `{maker}`")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a {expected[0]} file")
    note_inputs(p)
    try:
        schema = pq.read_schema(p)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        first = first_line(e)
        raise ArtifactError(f"{p} is not a Parquet file ({first})", hint=f"give a file written by `{maker}`") from None
    raw = (schema.metadata or {}).get(b"dissect")
    if raw is None:
        raise ArtifactError(f"{p} has no dissect metadata", hint=f"give a file written by `{maker}`")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{p} has invalid dissect metadata (not a JSON object)", hint=f"give a file written by `{maker}`")
    fmt = meta.get("format")
    if fmt not in expected:
        found = f"is a {fmt!r} file" if isinstance(fmt, str) else "has no valid 'format' in its metadata"
        hint = f"give a file written by `{maker}`"
        if isinstance(fmt, str) and fmt in MAKER:
            hint += f" (this one was written by `{MAKER[fmt]}`)"
        wanted = "a dissect Parquet artifact" if kinds is None else " or ".join(map(repr, expected))
        raise ArtifactError(f"{p} {found}, expected {wanted}", hint=hint)
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f"{p} has no valid integer 'version' in its metadata", hint=f"give a file written by `{maker}`")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{p} is format version {version}, newer than this dissect understands ({FORMAT_VERSION})",
                            hint="upgrade dissect (pip install -U clip-dissect)")
    for key, types in _META_TYPES.items():
        if meta.get(key) is not None and (not isinstance(meta[key], types) or isinstance(meta[key], bool) and bool not in types):
            want = " or ".join(_TYPE_WORDS[t] for t in types)
            raise ArtifactError(f"{p}: metadata field {key!r} is {_TYPE_WORDS.get(type(meta[key]), type(meta[key]).__name__)}, "
                                f"not {want}", hint=f"the file was damaged or edited: write it again with `{maker}`")
    return meta


#: The metadata fields readers rely on, with the JSON types they may have (null is always allowed).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "clip": (str,), "clip_fingerprint": (str,), "model": (str,), "weights": (str,), "similarity": (str,),
    "concepts": (dict,), "params": (dict,), "probe": (dict, str), "provenance": (str, dict), "inputs": (dict,),
    "layers": (dict, list), "top": (int,), "template": (str,), "depth": (int,), "summary": (dict, list, str),
}


_TYPE_WORDS = {str: "a string", dict: "a JSON object", list: "a list", int: "an integer", float: "a number", bool: "a boolean"}


_FAMILIES = {"string": "text", "int": "an integer", "float": "a number", "list<string>": "a list of text",
             "list<float>": "a list of numbers", "bool": "a boolean"}


def _family(t) -> str:
    import pyarrow as pa

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _family(t.value_type)
        return f"list<{inner}>" if inner in ("string", "float", "int") else "list"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def _check_columns(p: Path, table, kind: str, columns: list[str] | None):
    """The table with its required columns checked (present, of the right type; layer and unit never null,
    units not negative) and cast to their written types; a one-line error naming the file and column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    maker = MAKER.get(kind, "dissect")
    for name in columns or []:
        if name not in table.column_names:
            raise ArtifactError(f"{p} has no column {name!r}", hint=f"give a file written by `{maker}`")
    for name, family in (KINDS[kind].required if kind in KINDS else {}).items():
        if columns is not None and name not in columns:
            continue
        if name not in table.column_names:
            raise ArtifactError(f"{p} has no column {name!r} (a {kind} file has {', '.join(KINDS[kind].required)})",
                                hint=f"give a file written by `{maker}`")
        col = table.column(name)
        got = _family(col.type)
        fits = got == family or got == "null" and name not in ("layer", "unit") \
            or (family, got) in (("float", "int"), ("list<float>", "list<int>")) \
            or family.startswith("list") and got == "list" and col.null_count == len(col)
        if not fits:
            raise ArtifactError(f"{p}: column {name!r} holds {col.type}, not {_FAMILIES[family]}",
                                hint=f"give a file written by `{maker}`")
        if name in ("layer", "unit") and col.null_count:
            raise ArtifactError(f"{p}: column {name!r} has {col.null_count} empty (null) values",
                                hint=f"give a file written by `{maker}`")
        if name == "unit" and len(col) and pc.min(col).as_py() < 0:
            raise ArtifactError(f"{p}: column 'unit' holds a negative unit ({pc.min(col).as_py()})",
                                hint=f"give a file written by `{maker}`")
        if name == "unit" and len(col) and pc.max(col).as_py() > np.iinfo(np.int32).max:
            raise ArtifactError(f"{p}: column 'unit' holds unit {pc.max(col).as_py()}, beyond any layer",
                                hint=f"give a file written by `{maker}`")
        target = {"string": pa.string(), "int": pa.int32(), "float": pa.float64(), "list<string>": pa.list_(pa.string()),
                  "list<float>": pa.list_(pa.float64()), "bool": pa.bool_()}[family]
        if col.type != target:
            table = table.set_column(table.column_names.index(name), name, col.cast(target))
    if kind in (LABELS_FORMAT, COMPOSED_FORMAT, EXPLAIN_FORMAT) and {"layer", "unit"} <= set(table.column_names):
        seen: set = set()
        for key in zip(table.column("layer").to_pylist(), table.column("unit").to_pylist()):
            if key in seen:
                raise ArtifactError(f"{p} labels unit {key[1]} of layer {key[0]} more than once",
                                    hint=f"give a file written by `{maker}`")
            seen.add(key)
    return table


def read_table(path: str | os.PathLike, kinds: str | tuple[str, ...] | None = None, columns: list[str] | None = None):
    """A Parquet artifact of ``kinds`` as a pyarrow Table, after ``read_parquet_metadata``'s checks."""
    import pyarrow.parquet as pq

    meta = read_parquet_metadata(path, kinds)
    try:
        table = pq.read_table(path, columns=columns and [c for c in columns if c in pq.read_schema(path).names])
    except Exception as e:
        first = first_line(e)
        raise ArtifactError(f"cannot read {path}: {first}") from None
    return _check_columns(Path(path), table, meta["format"], columns)


def column_names(path: str | os.PathLike) -> list[str]:
    """The columns of a Parquet artifact (after ``read_parquet_metadata`` has checked it)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def read_labels_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a labels.parquet (``read_parquet_metadata`` for ``LABELS_FORMAT``)."""
    return read_parquet_metadata(path, LABELS_FORMAT)
