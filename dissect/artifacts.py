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
import shutil
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
SIMULATE_FORMAT = "dissect/simulate"
SANITY_FORMAT = "dissect/sanity"
EXPLAIN_FORMAT = "dissect/explanations"

HDF5_FORMATS = (IMAGE_FORMAT, TEXT_FORMAT, ACTIVATIONS_FORMAT)
PARQUET_FORMATS = (LABELS_FORMAT, COMPOSED_FORMAT, EVALUATION_FORMAT, PREDICT_FORMAT, STABILITY_FORMAT, PVALUES_FORMAT,
                   SIMULATE_FORMAT, SANITY_FORMAT, EXPLAIN_FORMAT)

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
    SIMULATE_FORMAT: "dissect evaluate simulate",
    SANITY_FORMAT: "dissect evaluate sanity",
    EXPLAIN_FORMAT: "dissect explain",
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Set when HDF5 failed to write a file: the library is then left in a state in which its exit handler can crash
#: the process, so the console script leaves with os._exit (cli/main.py) after its one-line message.
HDF5_WRITE_FAILED = False


def _hdf5_write_error(e: RuntimeError, final: Path) -> OSError | None:
    """The OSError behind an HDF5 RuntimeError such as 'file write failed: ... errno = 28, error message = ...'."""
    import re

    m = re.search(r"errno = (\d+), error message = '([^']*)'", str(e))
    if "write failed" not in str(e) and m is None:
        return None
    return OSError(int(m.group(1)) if m else None, m.group(2) if m else "HDF5 could not write the file", str(final))


def _strings_bytes(strings: list[str]) -> int:
    """About what HDF5 stores for variable-length UTF-8 strings (their bytes and a 16-byte reference each)."""
    return sum(len(x.encode("utf-8", "surrogatepass")) + 16 for x in strings)


class _QuietH5pyDealloc:
    """While HDF5 writes a file, a failing write (disk full) also makes h5py's object destructors print
    'Exception ignored in ... __dealloc__' tracebacks; the one-line error says it all, so they are dropped."""

    def __enter__(self):
        self.previous, self.previous_except = sys.unraisablehook, sys.excepthook
        sys.unraisablehook, sys.excepthook = self, self.excepthook  # Cython prints through both
        return self

    def __call__(self, unraisable):
        if "h5py" not in repr(getattr(unraisable, "object", "")):
            self.previous(unraisable)

    def excepthook(self, kind, value, tb):
        import traceback

        frames = traceback.extract_tb(tb) if tb is not None else []
        if not (issubclass(kind, RuntimeError) and frames and "h5py" in frames[-1].filename):
            self.previous_except(kind, value, tb)

    def __exit__(self, *exc):
        if exc[0] is None:
            sys.unraisablehook, sys.excepthook = self.previous, self.previous_except
        # after a failure the file's objects die later, with the exception's frames: their noise stays dropped


def check_room(final: str | os.PathLike, nbytes: int) -> None:
    """Refuse, before writing, a file of about ``nbytes`` that the disk or the shell's file-size limit cannot hold."""
    from .runtime import human_bytes

    final = Path(final)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and nbytes > limit:
            raise UsageError(f"{final} needs about {human_bytes(nbytes)} but this shell limits files to "
                             f"{human_bytes(limit)} (ulimit -f)", hint="raise the limit (ulimit -f unlimited) and run again")
    except (ImportError, ValueError, OSError):
        pass
    try:
        free = shutil.disk_usage(final.parent if str(final.parent) else ".").free
    except OSError:
        return
    if nbytes > free:
        raise UsageError(f"{final} needs about {human_bytes(nbytes)} but its disk has {human_bytes(free)} free",
                         hint="free some space, or write elsewhere with -o")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, nbytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    A crash, Ctrl-C or error leaves no file under the final name and removes the
    temporary one, so an artifact is only ever visible once complete. The file gets the
    permissions the umask gives (as any program's new files), not mkstemp's 0600.
    ``nbytes``: the size about to be written, checked against free space and ``ulimit -f`` first.
    """
    final = Path(final)
    if nbytes is not None:
        check_room(final, nbytes)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _QuietH5pyDealloc():
            yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, RuntimeError):  # h5py's words for a failed write (disk full, ulimit -f)
            os_error = _hdf5_write_error(e, final)
            if os_error is not None:
                global HDF5_WRITE_FAILED
                HDF5_WRITE_FAILED = True
                raise os_error from None
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
    if not isinstance(fmt, str) or fmt != expected:
        f.close()
        found = (f"format {fmt!r}" if isinstance(fmt, str) else "no 'format' attribute" if fmt is None
                 else f"a 'format' attribute that is not a string ({type(fmt).__name__})")
        hint = f"use the file written by `{_MAKER[expected]}`"
        if isinstance(fmt, str) and fmt in _MAKER:
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
    try:
        _check_json_attrs(p, attrs)
    except ArtifactError:
        f.close()
        raise
    return f, attrs


def _is_pair_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, list) and len(x) >= 2 and isinstance(x[0], str) for x in v)


def _is_probe(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("sources", []), list) \
        and all(isinstance(x, dict) for x in v.get("sources", [])) \
        and (v.get("n_images") is None or (isinstance(v["n_images"], int) and not isinstance(v["n_images"], bool)))


def _is_range(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) \
        and v[0] <= v[1]


#: Attributes that hold JSON, with what they must decode to (written by ``_attr``; checked when a file is opened,
#: so that every reader can rely on them).
_JSON_ATTRS = {
    "probe": (_is_probe, "a JSON object with a list of 'sources' and an integer 'n_images'"),
    "skipped": (_is_pair_list, "a JSON list of [id, reason] pairs"),
    "provenance": (lambda v: isinstance(v, dict), "a JSON object"),
    "model_args": (lambda v: isinstance(v, dict), "a JSON object"),
    "shard_range": (_is_range, "a JSON [start, stop] pair of image positions"),
    "merged_from": (lambda v: isinstance(v, list), "a JSON list"),
}


def _check_json_attrs(p: Path, attrs: dict[str, Any]) -> None:
    for key, (ok, what) in _JSON_ATTRS.items():
        if key not in attrs or (key in ("model_args", "provenance") and isinstance(attrs[key], str) and not attrs[key]):
            continue
        value = attrs[key]
        try:
            decoded = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            decoded = None
        if not ok(decoded):
            raise ArtifactError(f"{p}: attribute {key!r} is not {what}",
                                hint="the file was damaged or edited: write it again with the command that made it")
    for key in ("shard", "probe_n_images", "clip_model", "clip_pretrained", "clip_fingerprint", "clip_spec", "model",
                "fingerprint", "inputs_fingerprint", "weights", "concept_set", "concept_source"):
        v = attrs.get(key)
        want = (int, str) if key in ("shard", "probe_n_images") else (str,)
        if key in attrs and (isinstance(v, bool) or not isinstance(v, want)):
            raise ArtifactError(f"{p}: attribute {key!r} is a {type(attrs[key]).__name__}, not a string",
                                hint="the file was damaged or edited: write it again with the command that made it")


def h5_dataset(f, name: str, path, rows: int | None = None):
    """The HDF5 dataset ``name`` of an open artifact; a one-line error when it is missing or not a dataset."""
    h5py = _h5py()
    if name not in f:
        raise ArtifactError(f"{path} has no dataset {name!r}")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise ArtifactError(f"{path}: {name!r} is a {type(ds).__name__.lower()}, not a dataset",
                            hint="the file was damaged or edited: write it again with the command that made it")
    if rows is not None and (ds.ndim < 1 or ds.shape[0] != rows):
        raise ArtifactError(f"{path}: dataset {name!r} has shape {ds.shape} but there are {rows} ids")
    return ds


def h5_layers(f, path):
    """The ``layers`` group of an open activations file, each member checked to be a dataset."""
    h5py = _h5py()
    if "layers" in f and not isinstance(f["layers"], h5py.Group):
        raise ArtifactError(f"{path}: 'layers' is a dataset, not a group of layers",
                            hint="the file was damaged or edited: record the layers again")
    if "layers" not in f or not len(f["layers"]):
        raise ArtifactError(f"{path} holds no layers", hint="record some with `dissect record --layers ...`")
    group = f["layers"]
    for name in group:
        if not isinstance(group[name], h5py.Dataset):
            raise ArtifactError(f"{path}: layer {name!r} is a group, not a dataset",
                                hint="the file was damaged or edited: record the layer again")
    return group


def _read_strings(f, name: str, path) -> list[str]:
    ds = h5_dataset(f, name, path)
    if ds.ndim != 1 or ds.dtype.kind not in ("O", "S", "U"):
        raise ArtifactError(f"{path}: dataset {name!r} must be a 1-D array of UTF-8 strings, got {ds.dtype} {ds.shape}")
    try:
        return [str(s) for s in ds.asstr()[:]]
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: dataset {name!r} is not valid UTF-8 text: {e}") from e


def _read_matrix(f, name: str, path, rows: int | None = None, units: tuple[int, int] | None = None,
                 row_range: tuple[int, int] | None = None) -> np.ndarray:
    ds = h5_dataset(f, name, path)
    if ds.ndim != 2 or ds.dtype.kind != "f":
        raise ArtifactError(f"{path}: dataset {name!r} must be a 2-D float array, got {ds.dtype} {ds.shape}")
    if rows is not None and ds.shape[0] != rows:
        raise ArtifactError(f"{path}: dataset {name!r} has {ds.shape[0]} rows but there are {rows} ids")
    if ds.shape[1] == 0:
        if str(path).endswith(":layers"):
            raise ArtifactError(f"layer {name!r} of {str(path)[:-len(':layers')]} has no units (0 columns)",
                                hint="record the layer again; `dissect layers MODEL` lists the layers with units")
        raise ArtifactError(f"{path}: dataset {name!r} has width 0", hint="the file was damaged: write it again")
    r0, r1 = (0, ds.shape[0]) if row_range is None else (max(0, int(row_range[0])), min(int(ds.shape[0]), int(row_range[1])))
    lo, hi = (0, ds.shape[1]) if units is None else (max(0, int(units[0])), min(int(ds.shape[1]), int(units[1])))
    arr = np.asarray(ds[r0:r1, lo:hi], dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[1]) + lo
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
    with atomic_path(path, nbytes=embeddings.nbytes + _strings_bytes(keys) + 8 * len(sizes or [])) as tmp:
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
            ds = f.get("sizes")
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "iu":
                return None  # an optional hint for reuse: anything else is ignored
            return np.asarray(ds[:], dtype=np.int64)
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
        if kind == ACTIVATIONS_FORMAT and isinstance(f.get("layers"), _h5py().Group):
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
    dtypes: dict[str, str] | None = None,
) -> Path:
    """Write activations.h5 atomically; layers of ``keep_from`` (an older file) are copied over.

    A layer is an [N, C] array, or a source too large for memory with ``shape`` and
    ``block(lo, hi)`` (rows lo..hi), copied in row blocks. ``dtypes``: layers stored as
    ``float16`` (readers always get float32). Wide layers are stored in chunks of
    ``LAYER_CHUNK`` so that reading a block of units does not read the whole matrix.
    """
    h5py = _h5py()
    dtypes = dtypes or {}
    item = {n: 2 if dtypes.get(n) == "float16" else 4 for n in layers}
    nbytes = sum(int(np.prod(a.shape)) * item[n] for n, a in layers.items()) + _strings_bytes(ids) + 8 * len(sizes or [])
    if keep_from is not None:
        with h5py.File(keep_from, "r") as old:
            nbytes += sum(old["layers"][n].size * old["layers"][n].dtype.itemsize for n in old["layers"] if n not in layers)
    with atomic_path(path, nbytes=nbytes) as tmp:
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
                dtype = np.float16 if dtypes.get(name) == "float16" else np.float32
                n, c = (int(x) for x in arr.shape)
                if n * c * 4 <= WIDE_LAYER_BYTES and not hasattr(arr, "block"):
                    ds = group.create_dataset(name, data=np.ascontiguousarray(arr, dtype=dtype))
                else:
                    chunks = (max(1, min(n, LAYER_CHUNK[0])), max(1, min(c, LAYER_CHUNK[1])))
                    ds = group.create_dataset(name, shape=(n, c), dtype=dtype, chunks=chunks)
                    step = chunks[0] * max(1, COPY_BLOCK_BYTES // max(1, chunks[0] * c * 4))
                    for lo in range(0, n, step):
                        hi = min(n, lo + step)
                        ds[lo:hi] = (arr.block(lo, hi) if hasattr(arr, "block") else arr[lo:hi]).astype(dtype)
                for k, v in layer_attrs.get(name, {}).items():
                    ds.attrs[k] = _attr(v)
    return Path(path)


#: Layers larger than this (as float32) are stored in chunks of LAYER_CHUNK (rows, units).
WIDE_LAYER_BYTES = 64 << 20
LAYER_CHUNK = (512, 256)
#: Rows of a large layer are copied in blocks of about this many bytes (a multiple of the chunk rows).
COPY_BLOCK_BYTES = 64 << 20


def read_activations(path: str | os.PathLike, layers: list[str] | None = None, data: bool = True) -> Activations:
    """Read ids and ``layers`` (default: all). With ``data=False`` the matrices are not
    loaded (``layers`` maps each name to None): check names first, load one at a time."""
    f, attrs = _open(path, ACTIVATIONS_FORMAT)
    with f:
        ids = _read_strings(f, "ids", path)
        available = _layer_names(h5_layers(f, path))
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
            if ds.shape[1] == 0:
                raise ArtifactError(f"layer {name!r} of {path} has no units (0 columns)",
                                    hint="record the layer again; `dissect layers MODEL` lists the layers with units")
            matrices[name] = _read_matrix(f["layers"], name, f"{path}:layers", rows=len(ids)) if data else None
            lattrs[name] = _read_attrs(ds)
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{path}: dataset 'ids' holds duplicates")
    return Activations(ids, matrices, lattrs, attrs, Path(path))


def read_activation_layer(path: str | os.PathLike, name: str, units: tuple[int, int] | None = None,
                          rows: tuple[int, int] | None = None) -> np.ndarray:
    """One layer's [N, C] float32 matrix (``units`` (lo, hi): only those columns; ``rows`` (lo, hi): only those
    images), without reading the ids again.

    For use after ``read_activations(path, data=False)`` has checked the file and its names.
    """
    f, _ = _open(path, ACTIVATIONS_FORMAT)
    with f:
        return _read_matrix(f["layers"], name, f"{path}:layers", rows=f["ids"].shape[0], units=units, row_range=rows)


def activation_layer_shape(path: str | os.PathLike, name: str) -> tuple[int, int]:
    """(N, C) of one layer, read from the file's header."""
    f, _ = _open(path, ACTIVATIONS_FORMAT)
    with f:
        ds = h5_dataset(f["layers"], name, f"{path}:layers")
        return tuple(int(x) for x in ds.shape)


def _layer_names(group) -> list[str]:
    """Layer datasets under ``layers``, in the order they were written (``h5_layers`` checked them)."""
    return list(group)


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
                    "candidates", "candidate_similarities", "selected_by", "heldout_auprc",
                    "single_heldout_auprc"]


def composed_schema():
    import pyarrow as pa

    return pa.schema([
        ("layer", pa.string()), ("unit", pa.int32()), ("label", pa.string()), ("parts", pa.list_(pa.string())),
        ("similarity", pa.float64()), ("single_label", pa.string()), ("single_similarity", pa.float64()),
        ("gain", pa.float64()), ("candidates", pa.list_(pa.string())), ("candidate_similarities", pa.list_(pa.float64())),
        ("selected_by", pa.string()), ("heldout_auprc", pa.float64()), ("single_heldout_auprc", pa.float64()),
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
        from .runtime import stdout_stream

        stream = stdout_stream().buffer
        buf = io.BytesIO()
        pq.write_table(table, buf)
        stream.write(buf.getvalue())
        stream.flush()
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
    maker = _MAKER[expected[0]] if len(expected) == 1 else \
        "dissect label` or `dissect compose" if expected == (LABELS_FORMAT, COMPOSED_FORMAT) else "dissect"
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
        found = f"is a {fmt!r} file" if isinstance(fmt, str) else "has no valid 'format' in its metadata"
        hint = f"give a file written by `{maker}`"
        if isinstance(fmt, str) and fmt in _MAKER:
            hint += f" (this one was written by `{_MAKER[fmt]}`)"
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

# ---------------------------------------------------------------------------
# The columns each Parquet kind must hold, with their types (checked when a table is read)
# ---------------------------------------------------------------------------

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


#: kind -> {column: family}; "float" also takes integers, "list<float>" lists of integers.
_REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    LABELS_FORMAT: {"layer": "string", "unit": "int", "label": "string", "similarity": "float",
                    "candidates": "list<string>", "candidate_similarities": "list<float>"},
    COMPOSED_FORMAT: {"layer": "string", "unit": "int", "label": "string", "parts": "list<string>", "similarity": "float",
                      "candidates": "list<string>", "candidate_similarities": "list<float>", "gain": "float"},
    EVALUATION_FORMAT: {"layer": "string", "unit": "int", "label": "string", "truth": "string", "exact": "bool"},
    PREDICT_FORMAT: {}, STABILITY_FORMAT: {"layer": "string", "unit": "int"}, PVALUES_FORMAT: {"layer": "string", "unit": "int"},
    SIMULATE_FORMAT: {"labels": "string", "layer": "string", "unit": "int", "label": "string", "correlation": "float"},
    SANITY_FORMAT: {"setting": "string", "scorer": "string"},
    EXPLAIN_FORMAT: {"layer": "string", "unit": "int", "concepts": "list<string>", "weights": "list<float>",
                     "bias": "float", "correlation": "float"},
}


def _check_columns(p: Path, table, kind: str, columns: list[str] | None):
    """The table with its required columns checked (present, of the right type; layer and unit never null,
    units not negative) and cast to their written types; a one-line error naming the file and column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    maker = _MAKER.get(kind, "dissect")
    for name in columns or []:
        if name not in table.column_names:
            raise ArtifactError(f"{p} has no column {name!r}", hint=f"give a file written by `{maker}`")
    for name, family in _REQUIRED_COLUMNS.get(kind, {}).items():
        if columns is not None and name not in columns:
            continue
        if name not in table.column_names:
            raise ArtifactError(f"{p} has no column {name!r} (a {kind} file has {', '.join(_REQUIRED_COLUMNS[kind])})",
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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"cannot read {path}: {first}") from None
    return _check_columns(Path(path), table, meta["format"], columns)


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
        try:
            with _h5py().File(p, "r") as f:
                fmt = _read_attrs(f).get("format")
        except OSError as e:
            raise ArtifactError(f"cannot open {p}: {e}") from None
        if isinstance(fmt, str) and fmt in HDF5_FORMATS:
            _open(p, fmt)  # the precise reason: a newer version, damaged attributes
        found = (f"format {fmt!r}" if isinstance(fmt, str) else "no 'format' attribute" if fmt is None
                 else "a 'format' attribute that is not a string")
        raise ArtifactError(f"{p} is an HDF5 file but not a dissect artifact ({found})",
                            hint="give an images.h5, text.h5 or activations.h5 written by dissect")
    return read_parquet_metadata(p)["format"]


def check_same_clip(images: Embeddings, text: Embeddings) -> None:
    """Refuse image and text embeddings made by different CLIP models."""
    if images.embeddings.shape[1] != text.embeddings.shape[1] and images.clip_fingerprint == text.clip_fingerprint:
        raise MismatchError(f"{images.path} and {text.path} record the same CLIP model but hold embeddings of "
                            f"different widths ({images.embeddings.shape[1]} and {text.embeddings.shape[1]})",
                            hint="one of them was edited or damaged: embed it again")
    if "clip_fingerprint" in images.attrs and "clip_fingerprint" in text.attrs:
        same = images.clip_fingerprint == text.clip_fingerprint
    else:  # written by another program: the model names are all there is to compare
        same = (images.clip_model, images.clip_pretrained) == (text.clip_model, text.clip_pretrained)
    if not same or images.embeddings.shape[1] != text.embeddings.shape[1]:
        raise MismatchError(
            f"images and text come from different CLIP models: {images.path} was made with "
            f"{images.clip_spec} (d={images.embeddings.shape[1]}), {text.path} with {text.clip_spec} "
            f"(d={text.embeddings.shape[1]})",
            hint=f"re-embed the concepts with `dissect embed-text CONCEPTS --clip {images.clip_spec}`",
        )


# ---------------------------------------------------------------------------
# Labels made by other programs, and per-image concept annotations
# ---------------------------------------------------------------------------

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
            raise ArtifactError(f"{p}: column 'label' has empty (null) values", hint=f"give a file written by `{_MAKER[meta['format']]}`")
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


# ---------------------------------------------------------------------------
# Directions (directions.safetensors, from `dissect decompose`)
# ---------------------------------------------------------------------------

DIRECTIONS_FORMAT = "dissect/directions"


def write_directions(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """A safetensors file of named float32 matrices, ``directions`` [K, C] among them (what ``--directions``
    reads); ``metadata`` (format, version, how it was made) goes in the header as JSON strings."""
    from safetensors.numpy import save_file

    head = {"format": DIRECTIONS_FORMAT, "version": str(FORMAT_VERSION)}
    head.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()})
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    with atomic_path(path, nbytes=sum(a.nbytes for a in arrays.values())) as tmp:
        save_file(arrays, str(tmp), metadata=head)
    return Path(path)


def read_directions_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file ({} when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ArtifactError(f"cannot read {path}: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
