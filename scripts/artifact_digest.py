"""Digest every artifact of a folder, to show that a change of code changed no result.

    python scripts/artifact_digest.py runs/demo > before.txt
    ... change the code, run the same commands into the same or another folder ...
    python scripts/artifact_digest.py runs/demo2 > after.txt
    diff before.txt after.txt

One line per array, table column and metadata field: a sha256 of its exact bytes (float
columns bit for bit), so that any difference in the last bit shows. What only says when
and how a file was made (``created``, ``command`` in the provenance) is left out, and the
folder's own path is written as ``<RUN>`` so that two folders can be compared.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

#: Provenance fields that differ between two runs of the same code on the same inputs.
VOLATILE = {"created", "command", "seconds", "timings"}


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _clean(value, root: str):
    """JSON-like ``value`` with volatile fields dropped and the run folder's path replaced."""
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return _clean(json.loads(value), root)
            except ValueError:
                pass
        return value.replace(root, "<RUN>")
    if isinstance(value, dict):
        return {k: _clean(v, root) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v, root) for v in value]
    return value


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def digest_hdf5(path: Path, root: str) -> list[str]:
    import h5py

    lines = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: _clean(_attr_value(v), root) for k, v in obj.attrs.items()}
            if attrs:
                lines.append(f"  {name or '/'} attrs {json.dumps(attrs, sort_keys=True, default=str)}")
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if isinstance(data, np.ndarray) and data.dtype.kind == "O":
                    blob = "\n".join(x.decode() if isinstance(x, bytes) else str(x) for x in data.ravel()).encode()
                else:
                    blob = np.ascontiguousarray(data).tobytes()
                lines.append(f"  {name} {obj.dtype} {obj.shape} {_h(blob)}")

        visit("", f)
        f.visititems(visit)
    return lines


def digest_parquet(path: Path, root: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    lines = []
    for key, raw in (table.schema.metadata or {}).items():
        meta = _clean(raw.decode("utf-8", "replace"), root)
        if isinstance(meta, dict):
            for k in sorted(meta):
                lines.append(f"  meta {key.decode()}.{k} {json.dumps(meta[k], sort_keys=True, default=str)}")
        else:
            lines.append(f"  meta {key.decode()} {meta}")
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.type in (pa.string(), pa.large_string()):  # paths in text columns name the run folder
            blob = "\0".join("\1" if v is None else v.replace(root, "<RUN>") for v in col.to_pylist()).encode()
        else:
            blob = b"".join(b.to_pybytes() if b is not None else b"-" for b in col.buffers())
        lines.append(f"  column {name} {col.type} {len(col)} {_h(blob)}")
    return lines


def digest_safetensors(path: Path, root: str) -> list[str]:
    from safetensors.numpy import load_file
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = {k: _clean(v, root) for k, v in (f.metadata() or {}).items()}
    lines = [f"  meta {json.dumps(meta, sort_keys=True, default=str)}"]
    for k, v in sorted(load_file(str(path)).items()):
        lines.append(f"  tensor {k} {v.dtype} {v.shape} {_h(np.ascontiguousarray(v).tobytes())}")
    return lines


def _json(path: Path):
    """A JSON file, or JSON lines as a list."""
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def digest(folder: Path) -> list[str]:
    root = str(folder.resolve())
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if path.suffix == ".h5":
            out += [f"{rel}"] + digest_hdf5(path, root)
        elif path.suffix == ".parquet":
            out += [f"{rel}"] + digest_parquet(path, root)
        elif path.suffix == ".safetensors":
            out += [f"{rel}"] + digest_safetensors(path, root)
        elif path.suffix == ".json":
            out += [f"{rel} {json.dumps(_clean(_json(path), root), sort_keys=True, default=str)}"]
        else:
            out.append(f"{rel} {_h(path.read_bytes())}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python scripts/artifact_digest.py FOLDER", file=sys.stderr)
        return 2
    print("\n".join(digest(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
