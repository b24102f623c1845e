"""Crafted artifacts: valid HDF5 and Parquet containers with wrong contents (issue 15).

A mutation is plain data, so that hypothesis can draw and shrink it and a named test can
spell it out:

    ("attr", KEY, VALUE)              set a file attribute (VALUE: str, int, float, list, ndarray)
    ("del-attr", KEY)                 remove a file attribute
    ("dataset", NAME, HOW)            replace dataset NAME ("embeddings", "ids", "layers/fc", ...) by
                                      HOW: group, drop, 1d, 3d, zero-width, zero-rows, ints, strings, nan,
                                      short, bytes
    ("layer-attr", LAYER, KEY, VALUE) set an attribute of one layer dataset
    ("layers", HOW)                   the layers group itself: dataset, empty
    ("meta", KEY, VALUE)              set a key of a Parquet file's dissect metadata (VALUE JSON-able)
    ("meta-raw", BYTES)               replace the whole dissect metadata
    ("drop-column", NAME)
    ("column-type", NAME, TYPE)       TYPE: string, int, float, bool, null, list-string, list-float, list-int
    ("value", NAME, ROW, VALUE)       set one cell (VALUE None, a number, a string...)
    ("rows", HOW)                     empty, duplicate, reverse, first
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

DATASET_HOWS = ["group", "drop", "1d", "3d", "zero-width", "zero-rows", "ints", "strings", "nan", "short", "bytes"]
COLUMN_TYPES = ["string", "int", "float", "bool", "null", "list-string", "list-float", "list-int"]


def apply(path: Path, mutation: tuple) -> None:
    """Apply one mutation to the artifact at ``path`` in place."""
    op = mutation[0]
    if op in ("attr", "del-attr", "dataset", "layer-attr", "layers"):
        with h5py.File(path, "a") as f:
            _apply_h5(f, mutation)
    else:
        _apply_parquet(path, mutation)


def _h5_value(value):
    if isinstance(value, list):
        return np.asarray(value) if value and all(isinstance(v, (int, float)) for v in value) else json.dumps(value)
    return value


def _apply_h5(f, mutation) -> None:
    op = mutation[0]
    if op == "attr":
        f.attrs[mutation[1]] = _h5_value(mutation[2])
    elif op == "del-attr":
        if mutation[1] in f.attrs:
            del f.attrs[mutation[1]]
    elif op == "layer-attr":
        if "layers" in f and isinstance(f["layers"], h5py.Group) and mutation[1] in f["layers"]:
            f["layers"][mutation[1]].attrs[mutation[2]] = _h5_value(mutation[3])
    elif op == "layers":
        if "layers" in f:
            del f["layers"]
        if mutation[1] == "dataset":
            f.create_dataset("layers", data=np.arange(3))
        else:
            f.create_group("layers")
    elif op == "dataset":
        name, how = mutation[1], mutation[2]
        if name not in f:
            return
        old = f[name]
        arr = old[()] if isinstance(old, h5py.Dataset) else np.zeros((2, 2), np.float32)
        del f[name]
        if how == "drop":
            return
        if how == "group":
            f.create_group(name)
            return
        n = arr.shape[0] if arr.ndim else 1
        if how == "1d":
            new = np.zeros(n, np.float32)
        elif how == "3d":
            new = np.zeros((n, 2, 2), np.float32)
        elif how == "zero-width":
            new = np.zeros((n, 0), np.float32)
        elif how == "zero-rows":
            new = arr[:0]
        elif how == "ints":
            new = np.arange(arr.size, dtype=np.int64).reshape(arr.shape) if arr.dtype.kind != "O" else np.arange(n)
        elif how == "strings":
            f.create_dataset(name, data=np.array([f"s{i}" for i in range(n)], dtype=object), dtype=h5py.string_dtype())
            return
        elif how == "nan":
            new = np.asarray(arr, dtype=np.float32) if arr.dtype.kind == "f" else np.zeros((n, 2), np.float32)
            new = new.copy()
            if new.size:
                new.flat[0] = np.nan
        elif how == "short":
            new = arr[:-1]
        elif how == "bytes":
            new = np.frombuffer(b"\xff\xfe" * max(1, n), dtype=np.uint8)
        else:
            raise ValueError(how)
        f.create_dataset(name, data=new)
    else:
        raise ValueError(op)


def _column_of(kind: str, n: int):
    import pyarrow as pa

    return {
        "string": lambda: pa.array(["x"] * n),
        "int": lambda: pa.array(list(range(n)), pa.int64()),
        "float": lambda: pa.array([0.5] * n),
        "bool": lambda: pa.array([True] * n),
        "null": lambda: pa.nulls(n),
        "list-string": lambda: pa.array([["a", "b"]] * n),
        "list-float": lambda: pa.array([[0.1, 0.2]] * n),
        "list-int": lambda: pa.array([[1, 2]] * n),
    }[kind]()


def _apply_parquet(path: Path, mutation) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"dissect", b"{}")
    op = mutation[0]
    if op == "meta":
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
        if isinstance(meta, dict):
            meta[mutation[1]] = mutation[2]
        raw = json.dumps(meta).encode()
    elif op == "meta-raw":
        raw = mutation[1]
    elif op == "drop-column":
        if mutation[1] in table.column_names:
            table = table.drop_columns([mutation[1]])
    elif op == "column-type":
        if mutation[1] in table.column_names:
            i = table.column_names.index(mutation[1])
            table = table.set_column(i, mutation[1], _column_of(mutation[2], len(table)))
    elif op == "value":
        name, row, value = mutation[1:]
        if name in table.column_names and len(table):
            values = table.column(name).to_pylist()
            values[row % len(values)] = value
            try:
                col = pa.array(values, table.schema.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                col = pa.array([None if v is None else str(v) for v in values])
            table = table.set_column(table.column_names.index(name), name, col)
    elif op == "rows":
        how = mutation[1]
        table = {"empty": lambda t: t.slice(0, 0), "duplicate": lambda t: pa.concat_tables([t, t]),
                 "reverse": lambda t: t.slice(0, 0) if not len(t) else t.take(list(range(len(t) - 1, -1, -1))),
                 "first": lambda t: t.slice(0, 1)}[how](table)
    else:
        raise ValueError(op)
    pq.write_table(table.replace_schema_metadata({b"dissect": raw} if raw is not None else None), path)
