"""The on-disk artifacts: the single source of truth for their schemas.

Every stage reads and writes through this module. The schemas are a public
contract (docs/artifacts.md): other programs may write these files and have
``dissect label`` read them, so readers check everything they rely on and
name what is wrong.

    images.h5       embeddings f[N, d] (L2-normalised), ids str[N]
                    attrs: format="dissect/image-embeddings", version, clip_model, clip_pretrained
    text.h5         embeddings f[M, d] (L2-normalised), concepts str[M]
                    attrs: format="dissect/text-embeddings", version, clip_model, clip_pretrained
    activations.h5  ids str[N], layers/<name> f32[N, C] (attr summary)
                    attrs: format="dissect/activations", version, model
    labels.parquet  layer, unit, label, similarity, candidates, candidate_similarities
                    schema metadata b"dissect": JSON {format, version, provenance, ...}
    composed.parquet, metrics.parquet, predict.parquet, stability.parquet, pvalues.parquet:
                    Parquet tables with the same metadata (``PARQUET_FORMATS``)

Parquet outputs are written through ``write_parquet`` (atomically, or to standard
output) and read through ``read_parquet_metadata`` / ``read_table``, which check the
``format`` and ``version``; ``sniff`` names the kind of any artifact. docs/artifacts.md
documents every file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import __version__
from .errors import ArtifactError, InputError, MismatchError, UsageError
from .fingerprint import fingerprint, fingerprint_strings

FORMAT_VERSION = 1
IMAGE_FORMAT = "dissect/image-embeddings"
TEXT_FORMAT = "dissect/text-embeddings"
ACTIVATIONS_FORMAT = "dissect/activations"
LABELS_FORMAT = "dissect/labels"
COMPOSED_FORMAT = "dissect/composed-labels"
EVALUATION_FORMAT = "dissect/evaluation"
PREDICT_FORMAT = "dissect/predict-class"
STABILITY_FORMAT = "dissect/stability"
PVALUES_FORMAT = "dissect/pvalues"

HDF5_FORMATS = (IMAGE_FORMAT, TEXT_FORMAT, ACTIVATIONS_FORMAT)
PARQUET_FORMATS = (LABELS_FORMAT, COMPOSED_FORMAT, EVALUATION_FORMAT, PREDICT_FORMAT, STABILITY_FORMAT, PVALUES_FORMAT)

_MAKER = {
    IMAGE_FORMAT: "dissect embed-images",
    TEXT_FORMAT: "dissect embed-text",
    ACTIVATIONS_FORMAT: "dissect record",
    LABELS_FORMAT: "dissect label",
    COMPOSED_FORMAT: "dissect compose",
    EVALUATION_FORMAT: "dissect evaluate",
    PREDICT_FORMAT: "dissect evaluate predict-class",
    STABILITY_FORMAT: "dissect evaluate stability",
    PVALUES_FORMAT: "dissect evaluate pvalues",
}

STDOUT = "-"


# ---------------------------------------------------------------------------
# Writing safely
# ---------------------------------------------------------------------------

def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work is done."""
    if str(out) == STDOUT:
        raise UsageError("this artifact is HDF5 and cannot be written to standard output", hint="give a file path with -o")
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {parent} does not exist", hint=f"create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder {parent} is not writable", hint="choose another -o path")
    if p.is_dir():
        raise UsageError(f"output {p} is a folder", hint="give a file path with -o")
    for i in inputs:
        if i is not None and str(i) != STDOUT and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise UsageError(f"output {p} would overwrite the input {i}", hint="choose another -o path")
    return p


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    A crash, Ctrl-C or error leaves no file under the final name and removes the
    temporary one, so an artifact is only ever visible once complete.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


class ProcessLock:
    """An exclusive lock on ``path`` held by this process (``flock``; released by the OS if the process dies).

    A second dissect that asks for the same lock is refused at once, in one line naming the
    process that holds it. Where ``fcntl`` is missing (Windows) no lock is taken.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what, self._f = Path(path), what, None
        try:
            import fcntl
        except ImportError:
            return
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UsageError(f"{what} is in use by another dissect ({holder})",
                             hint="wait for it to finish, or write to another -o") from None
        f.seek(0)
        f.truncate()
        import datetime

        f.write(f"pid {os.getpid()}, since {datetime.datetime.now().isoformat(timespec='seconds')}: "
                f"{' '.join(sys.argv)[:200]}")
        f.flush()
        self._f = f

    def release(self, remove: bool = False) -> None:
        """Let go of the lock (``remove``: delete the lock file first, while still holding it)."""
        if self._f is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._f.close()  # closing releases the flock
        self._f = None

    def __enter__(self) -> "ProcessLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release(remove=True)


def provenance(**extra: Any) -> str:
    """JSON provenance blob stored in every artifact."""
    import datetime

    info = {
        "tool": "dissect",
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv else "",
    }
    info.update(extra)
    return json.dumps(info, sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# HDF5 helpers
# ---------------------------------------------------------------------------

def _h5py():
    import h5py

    return h5py


def _str_dtype():
    return _h5py().string_dtype("utf-8")


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None:
        return ""
    return value


def _read_attrs(obj) -> dict[str, Any]:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _open(path: str | os.PathLike, expected: str):
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint=f"create it with `{_MAKER[expected]}`")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a {expected} file")
    h5py = _h5py()
    if not h5py.is_hdf5(p):
        raise ArtifactError(f"{p} is not an HDF5 file", hint=f"expected a {expected} artifact written by `{_MAKER[expected]}`")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ArtifactError(f"cannot open {p}: {e}") from e
    attrs = _read_attrs(f)
    fmt = attrs.get("format")
    if fmt != expected:
        f.close()
        found = f"format {fmt!r}" if fmt is not None else "no 'format' attribute"
        hint = f"use the file written by `{_MAKER[expected]}`"
        if fmt in _MAKER:
            hint += f" (this one was written by `{_MAKER[fmt]}`)"
        raise ArtifactError(f"{p} has {found}, expected {expected!r}", hint=hint)
    version = attrs.get("version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        f.close()
        raise ArtifactError(f"{p} has no valid integer 'version' attribute") from None
    if version > FORMAT_VERSION:
        f.close()
        raise ArtifactError(
            f"{p} is format version {version}, newer than this dissect understands ({FORMAT_VERSION})",
            hint="upgrade dissect (pip install -U clip-dissect)",
        )
    return f, attrs


def _read_strings(f, name: str, path) -> list[str]:
    if name not in f:
        raise ArtifactError(f"{path} has no dataset {name!r}")
    ds = f[name]
    if ds.ndim != 1 or ds.dtype.kind not in ("O", "S", "U"):
        raise ArtifactError(f"{path}: dataset {name!r} must be a 1-D array of UTF-8 strings, got {ds.dtype} {ds.shape}")
    try:
        return [str(s) for s in ds.asstr()[:]]
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: dataset {name!r} is not valid UTF-8 text: {e}") from e


def _read_matrix(f, name: str, path, rows: int | None = None) -> np.ndarray:
    if name not in f:
        raise ArtifactError(f"{path} has no dataset {name!r}")
    ds = f[name]
    if ds.ndim != 2 or ds.dtype.kind != "f":
        raise ArtifactError(f"{path}: dataset {name!r} must be a 2-D float array, got {ds.dtype} {ds.shape}")
    if rows is not None and ds.shape[0] != rows:
        raise ArtifactError(f"{path}: dataset {name!r} has {ds.shape[0]} rows but there are {rows} ids")
    arr = np.asarray(ds[:], dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[1])
        listed = f"{bad[:10].tolist()}{'...' if len(bad) > 10 else ''}"
        if str(path).endswith(":layers"):
            raise ArtifactError(
                f"layer {name!r} of {str(path)[:-len(':layers')]} holds NaN or Inf activations ({len(bad)} units: {listed})",
                hint="check the model's weights and re-record the layer (--precision fp32 if it ran in fp16)",
            )
        raise ArtifactError(f"{path}: dataset {name!r} holds NaN or Inf values (columns {listed})", hint="recompute it")
    return arr


def _check_normalised(arr: np.ndarray, path, name: str) -> None:
    if arr.size == 0:
        return
    norms = np.linalg.norm(arr, axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        raise ArtifactError(
            f"{path}: {name} are not L2-normalised (norms from {norms.min():.3g} to {norms.max():.3g})",
            hint="divide each row by its L2 norm before writing",
        )


# ---------------------------------------------------------------------------
# Embeddings (images.h5, text.h5)
# ---------------------------------------------------------------------------

#: How embeddings can be stored (``--dtype``).
EMBEDDING_DTYPES = ("float32", "float16")


@dataclass
class Embeddings:
    """Image or text embeddings with the CLIP model that made them."""

    embeddings: np.ndarray          # [N, d] float32, L2-normalised
    keys: list[str]                 # image ids or concepts
    clip_model: str
    clip_pretrained: str
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def clip_fingerprint(self) -> str:
        """Identity of the CLIP model; falls back to its names for files written by other programs."""
        return self.attrs.get("clip_fingerprint") or fingerprint([self.clip_model, self.clip_pretrained])

    @property
    def keys_fingerprint(self) -> str:
        return fingerprint_strings(self.keys)

    @property
    def clip_spec(self) -> str:
        """The spec that reloads this CLIP model (``dissect embed-text --clip``)."""
        return self.attrs.get("clip_spec") or (
            f"{self.clip_model}:{self.clip_pretrained}" if self.clip_pretrained else self.clip_model
        )


def write_embeddings(
    path: str | os.PathLike,
    kind: str,
    embeddings: np.ndarray,
    keys: list[str],
    clip_model: str,
    clip_pretrained: str,
    attrs: dict[str, Any],
    dtype: str = "float32",
    sizes: list[int] | None = None,
) -> Path:
    """Write images.h5 (``kind`` = IMAGE_FORMAT) or text.h5 (TEXT_FORMAT) atomically.

    ``sizes`` (images): each image file's size in bytes, so that a later run over a grown
    probe can tell which images are unchanged (``read_sizes``).

    ``dtype`` "float16" halves the file (readers get float32, re-normalised).
    """
    if dtype not in EMBEDDING_DTYPES:
        raise UsageError(f"unknown embedding dtype {dtype!r}", hint=f"use one of: {', '.join(EMBEDDING_DTYPES)}")
    key_name = "ids" if kind == IMAGE_FORMAT else "concepts"
    embeddings = np.ascontiguousarray(embeddings, dtype=dtype)
    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("embeddings", data=embeddings)
            f.create_dataset(key_name, data=np.array(keys, dtype=object), dtype=_str_dtype())
            if sizes is not None and len(sizes) == len(keys):
                f.create_dataset("sizes", data=np.asarray(sizes, dtype=np.int64))
            f.attrs["format"] = kind
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["clip_model"] = clip_model
            f.attrs["clip_pretrained"] = clip_pretrained or ""
            f.attrs[f"{key_name}_fingerprint"] = fingerprint_strings(keys)
            for k, v in attrs.items():
                f.attrs[k] = _attr(v)
    return Path(path)


def read_embeddings(path: str | os.PathLike, kind: str) -> Embeddings:
    key_name = "ids" if kind == IMAGE_FORMAT else "concepts"
    f, attrs = _open(path, kind)
    with f:
        keys = _read_strings(f, key_name, path)
        emb = _read_matrix(f, "embeddings", path, rows=len(keys))
        if f["embeddings"].dtype.itemsize < 4:  # stored rounded (--dtype float16): unit rows again
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    for a in ("clip_model", "clip_pretrained"):
        if a not in attrs:
            raise ArtifactError(f"{path} has no {a!r} attribute", hint="record which CLIP model made the embeddings")
    if len(set(keys)) != len(keys):
        raise ArtifactError(f"{path}: dataset {key_name!r} holds duplicates")
    _check_normalised(emb, path, "embeddings")
    return Embeddings(emb, keys, str(attrs["clip_model"]), str(attrs["clip_pretrained"]), attrs, Path(path))


def read_image_embeddings(path) -> Embeddings:
    return read_embeddings(path, IMAGE_FORMAT)


def read_text_embeddings(path) -> Embeddings:
    return read_embeddings(path, TEXT_FORMAT)


def read_sizes(path: str | os.PathLike) -> np.ndarray | None:
    """The optional per-image file sizes of images.h5 / activations.h5 (None when absent)."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["sizes"][:], dtype=np.int64) if "sizes" in f else None
    except OSError:
        return None


def peek_attrs(path: str | os.PathLike, kind: str) -> dict[str, Any] | None:
    """Attributes of an existing artifact of ``kind``, or None when absent or unreadable.

    Used to decide whether a cached artifact can be reused without loading it.
    """
    try:
        f, attrs = _open(path, kind)
    except (InputError, ArtifactError):
        return None
    with f:
        if kind == ACTIVATIONS_FORMAT and "layers" in f:
            attrs["_layers"] = list(f["layers"].keys())
    return attrs


# ---------------------------------------------------------------------------
# Activations (activations.h5)
# ---------------------------------------------------------------------------

@dataclass
class Activations:
    ids: list[str]
    layers: dict[str, np.ndarray]                  # name -> [N, C] float32
    layer_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]
    path: Path | None = None

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", ""))


def write_activations(
    path: str | os.PathLike,
    ids: list[str],
    layers: dict[str, np.ndarray],
    layer_attrs: dict[str, dict[str, Any]],
    attrs: dict[str, Any],
    keep_from: str | os.PathLike | None = None,
    sizes: list[int] | None = None,
) -> Path:
    """Write activations.h5 atomically; layers of ``keep_from`` (an older file) are copied over."""
    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_str_dtype())
            if sizes is not None and len(sizes) == len(ids):
                f.create_dataset("sizes", data=np.asarray(sizes, dtype=np.int64))
            f.attrs["format"] = ACTIVATIONS_FORMAT
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["ids_fingerprint"] = fingerprint_strings(ids)
            for k, v in attrs.items():
                f.attrs[k] = _attr(v)
            group = f.create_group("layers", track_order=True)  # layers keep the order they were asked for
            if keep_from is not None:
                with h5py.File(keep_from, "r") as old:
                    for name in old["layers"]:
                        if name not in layers:
                            old.copy(old["layers"][name], group, name=name)
            for name, arr in layers.items():
                ds = group.create_dataset(name, data=np.ascontiguousarray(arr, dtype=np.float32))
                for k, v in layer_attrs.get(name, {}).items():
                    ds.attrs[k] = _attr(v)
    return Path(path)


def read_activations(path: str | os.PathLike, layers: list[str] | None = None, data: bool = True) -> Activations:
    """Read ids and ``layers`` (default: all). With ``data=False`` the matrices are not
    loaded (``layers`` maps each name to None): check names first, load one at a time."""
    f, attrs = _open(path, ACTIVATIONS_FORMAT)
    with f:
        ids = _read_strings(f, "ids", path)
        if "layers" not in f or not len(f["layers"]):
            raise ArtifactError(f"{path} holds no layers", hint="record some with `dissect record --layers ...`")
        available = _layer_names(f["layers"])
        wanted = layers or available
        missing = [n for n in wanted if n not in available]
        if missing:
            raise UsageError(
                f"{path} has no layer {missing[0]!r}",
                hint=f"it holds: {', '.join(available)}; add layers with `dissect record ... -o {path}`",
            )
        matrices, lattrs = {}, {}
        for name in wanted:
            ds = f["layers"][name]
            if ds.ndim != 2 or ds.shape[0] != len(ids) or ds.dtype.kind != "f":
                raise ArtifactError(f"{path}: layer {name} must be a float [{len(ids)}, C] array, got {ds.dtype} {ds.shape}")
            matrices[name] = _read_matrix(f["layers"], name, f"{path}:layers", rows=len(ids)) if data else None
            lattrs[name] = _read_attrs(ds)
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{path}: dataset 'ids' holds duplicates")
    return Activations(ids, matrices, lattrs, attrs, Path(path))


def read_activation_layer(path: str | os.PathLike, name: str) -> np.ndarray:
    """One layer's [N, C] float32 matrix, without reading the ids again.

    For use after ``read_activations(path, data=False)`` has checked the file and its names.
    """
    f, _ = _open(path, ACTIVATIONS_FORMAT)
    with f:
        return _read_matrix(f["layers"], name, f"{path}:layers", rows=f["ids"].shape[0])


def _layer_names(group) -> list[str]:
    """Layer datasets under ``layers``, in the order they were written."""
    return [n for n in group if hasattr(group[n], "dtype")]


# ---------------------------------------------------------------------------
# Labels (labels.parquet)
# ---------------------------------------------------------------------------

LABEL_COLUMNS = ("layer", "unit", "label", "similarity", "candidates", "candidate_similarities")


def labels_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("layer", pa.string()),
            ("unit", pa.int32()),
            ("label", pa.string()),
            ("similarity", pa.float64()),
            ("candidates", pa.list_(pa.string())),
            ("candidate_similarities", pa.list_(pa.float64())),
        ]
    )


COMPOSED_COLUMNS = ["layer", "unit", "label", "parts", "similarity", "single_label", "single_similarity", "gain",
                    "candidates", "candidate_similarities"]


def composed_schema():
    import pyarrow as pa

    return pa.schema([
        ("layer", pa.string()), ("unit", pa.int32()), ("label", pa.string()), ("parts", pa.list_(pa.string())),
        ("similarity", pa.float64()), ("single_label", pa.string()), ("single_similarity", pa.float64()),
        ("gain", pa.float64()), ("candidates", pa.list_(pa.string())), ("candidate_similarities", pa.list_(pa.float64())),
    ])


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
        buf = io.BytesIO()
        pq.write_table(table, buf)
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
        return STDOUT
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return str(out)


def write_labels(out: str | os.PathLike, rows: dict[str, list], metadata: dict[str, Any]) -> str:
    """Write labels.parquet atomically, or to standard output when ``out`` is '-'."""
    import pyarrow as pa

    table = pa.Table.from_pydict({c: rows[c] for c in LABEL_COLUMNS}, schema=labels_schema())
    return write_parquet(out, table, LABELS_FORMAT, metadata)


def _expected(kinds: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return PARQUET_FORMATS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)


def read_parquet_metadata(path: str | os.PathLike, kinds: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``dissect`` metadata of a Parquet artifact, checked: it exists, is Parquet, is one of ``kinds`` (default:
    any dissect Parquet artifact) and of a version this dissect reads."""
    import pyarrow.parquet as pq

    expected = _expected(kinds)
    p = Path(path)
    maker = _MAKER.get(expected[0], "dissect")
    if not p.exists():
        raise InputError(f"{p} does not exist", hint=f"create it with `{maker}`")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a {expected[0]} file")
    try:
        schema = pq.read_schema(p)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
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
        found = f"a {fmt!r} file" if isinstance(fmt, str) else "no valid 'format' in its metadata"
        hint = f"give a file written by `{maker}`"
        if isinstance(fmt, str) and fmt in _MAKER:
            hint += f" (this one was written by `{_MAKER[fmt]}`)"
        raise ArtifactError(f"{p} is {found}, expected {' or '.join(map(repr, expected))}", hint=hint)
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f"{p} has no valid integer 'version' in its metadata", hint=f"give a file written by `{maker}`")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{p} is format version {version}, newer than this dissect understands ({FORMAT_VERSION})",
                            hint="upgrade dissect (pip install -U clip-dissect)")
    return meta


def read_table(path: str | os.PathLike, kinds: str | tuple[str, ...] | None = None, columns: list[str] | None = None):
    """A Parquet artifact of ``kinds`` as a pyarrow Table, after ``read_parquet_metadata``'s checks."""
    import pyarrow.parquet as pq

    read_parquet_metadata(path, kinds)
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"cannot read {path}: {first}") from None


def read_labels_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a labels.parquet (``read_parquet_metadata`` for ``LABELS_FORMAT``)."""
    return read_parquet_metadata(path, LABELS_FORMAT)


def sniff(path: str | os.PathLike) -> str:
    """The kind (``format``) of the dissect artifact at ``path``; a one-line error naming what is wrong otherwise."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give the path of an artifact")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an artifact")
    if _h5py().is_hdf5(p):
        for kind in HDF5_FORMATS:
            if peek_attrs(p, kind) is not None:
                return kind
        _open(p, IMAGE_FORMAT)  # raises the precise reason (unknown format, newer version)
        raise ArtifactError(f"{p} is not a dissect artifact")
    return read_parquet_metadata(p)["format"]


def check_same_clip(images: Embeddings, text: Embeddings) -> None:
    """Refuse image and text embeddings made by different CLIP models."""
    if images.clip_fingerprint != text.clip_fingerprint or images.embeddings.shape[1] != text.embeddings.shape[1]:
        raise MismatchError(
            f"images and text come from different CLIP models: {images.path} was made with "
            f"{images.clip_spec} (d={images.embeddings.shape[1]}), {text.path} with {text.clip_spec} "
            f"(d={text.embeddings.shape[1]})",
            hint=f"re-embed the concepts with `dissect embed-text CONCEPTS --clip {images.clip_spec}`",
        )
