"""The HDF5 kinds: image and text embeddings (images.h5, text.h5) and activations (activations.h5).

Every HDF5 file dissect reads or writes goes through here: ``open_h5`` checks its ``format``,
``version`` and JSON attributes, the readers check every dataset they rely on, and the writers
write atomically (:mod:`.files`).

    images.h5       embeddings f[N, d] (L2-normalised), ids str[N], optional sizes i64[N]
    text.h5         embeddings f[M, d] (L2-normalised), concepts str[M]
                    attrs: format, version, clip_model, clip_pretrained, clip_fingerprint, clip_spec, ...
    activations.h5  ids str[N], layers/<name> f32|f16[N, C] (attrs: summary, layout, fingerprint, ...)
                    attrs: format, version, model, weights, inputs_fingerprint, probe, ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, MismatchError, UsageError
from ..fingerprint import fingerprint, fingerprint_strings
from .files import atomic_path, note_inputs
from .formats import ACTIVATIONS_FORMAT, FORMAT_VERSION, HDF5_FORMATS, IMAGE_FORMAT, MAKER, TEXT_FORMAT


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


def read_attrs(obj) -> dict[str, Any]:
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def open_h5(path: str | os.PathLike, expected: str):
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint=f"create it with `{MAKER[expected]}`")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a {expected} file")
    h5py = _h5py()
    if not h5py.is_hdf5(p):
        raise ArtifactError(f"{p} is not an HDF5 file", hint=f"expected a {expected} artifact written by `{MAKER[expected]}`")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ArtifactError(f"cannot open {p}: {e}") from e
    note_inputs(p)
    attrs = read_attrs(f)
    fmt = attrs.get("format")
    if not isinstance(fmt, str) or fmt != expected:
        f.close()
        found = (f"format {fmt!r}" if isinstance(fmt, str) else "no 'format' attribute" if fmt is None
                 else f"a 'format' attribute that is not a string ({type(fmt).__name__})")
        hint = f"use the file written by `{MAKER[expected]}`"
        if isinstance(fmt, str) and fmt in MAKER:
            hint += f" (this one was written by `{MAKER[fmt]}`)"
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


def _strings_bytes(strings: list[str]) -> int:
    """About what HDF5 stores for variable-length UTF-8 strings (their bytes and a 16-byte reference each)."""
    return sum(len(x.encode("utf-8", "surrogatepass")) + 16 for x in strings)


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
    f, attrs = open_h5(path, kind)
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
        f, attrs = open_h5(path, kind)
    except (InputError, ArtifactError):
        return None
    with f:
        if kind == ACTIVATIONS_FORMAT and isinstance(f.get("layers"), _h5py().Group):
            attrs["_layers"] = list(f["layers"].keys())
    return attrs


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
    maps: "dict[str, dict[str, Any]] | None" = None,
) -> Path:
    """Write activations.h5 atomically; layers of ``keep_from`` (an older file) are copied over, with their maps.

    ``maps``: per layer or entry, its units' top maps (``record --maps``): ``values`` [C, K, h, w] float16,
    ``rows`` [C, K] (rows of ``ids``, -1 where fewer than K images were seen), ``scores`` [C, K] float32, and
    ``attrs`` (the grid).

    A layer is an [N, C] array, or a source too large for memory with ``shape`` and
    ``block(lo, hi)`` (rows lo..hi), copied in row blocks. ``dtypes``: layers stored as
    ``float16`` (readers always get float32). Wide layers are stored in chunks of
    ``LAYER_CHUNK`` so that reading a block of units does not read the whole matrix.
    """
    h5py = _h5py()
    dtypes = dtypes or {}
    item = {n: 2 if dtypes.get(n) == "float16" else 4 for n in layers}
    nbytes = sum(int(np.prod(a.shape)) * item[n] for n, a in layers.items()) + _strings_bytes(ids) + 8 * len(sizes or [])
    nbytes += sum(m["values"].nbytes + m["rows"].nbytes + m["scores"].nbytes for m in (maps or {}).values())
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
            _write_maps(f, maps or {}, keep_from, set(layers))
    return Path(path)


def _write_maps(f, maps: dict[str, dict[str, Any]], keep_from, rewritten: set[str]) -> None:
    """The ``maps`` group: one subgroup per mapped layer or entry (``values``, ``rows``, ``scores``)."""
    h5py = _h5py()
    old_maps = []
    if keep_from is not None:
        with h5py.File(keep_from, "r") as old:
            old_maps = [n for n in old.get("maps", {}) if n not in rewritten and n not in maps]
    if not maps and not old_maps:
        return
    group = f.create_group("maps", track_order=True)
    if old_maps:
        with h5py.File(keep_from, "r") as old:
            for name in old_maps:
                old.copy(old["maps"][name], group, name=name)
    for name, m in maps.items():
        g = group.create_group(name)
        c, k = m["rows"].shape
        g.create_dataset("values", data=np.asarray(m["values"], dtype=np.float16), chunks=(1, k) + m["values"].shape[2:])
        g.create_dataset("rows", data=np.asarray(m["rows"], dtype=np.int32))
        g.create_dataset("scores", data=np.asarray(m["scores"], dtype=np.float32))
        for key, v in m.get("attrs", {}).items():
            g.attrs[key] = _attr(v)


#: Layers larger than this (as float32) are stored in chunks of LAYER_CHUNK (rows, units).
WIDE_LAYER_BYTES = 64 << 20


LAYER_CHUNK = (512, 256)


#: Rows of a large layer are copied in blocks of about this many bytes (a multiple of the chunk rows).
COPY_BLOCK_BYTES = 64 << 20


def read_activations(path: str | os.PathLike, layers: list[str] | None = None, data: bool = True) -> Activations:
    """Read ids and ``layers`` (default: all). With ``data=False`` the matrices are not
    loaded (``layers`` maps each name to None): check names first, load one at a time."""
    f, attrs = open_h5(path, ACTIVATIONS_FORMAT)
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
            lattrs[name] = read_attrs(ds)
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{path}: dataset 'ids' holds duplicates")
    return Activations(ids, matrices, lattrs, attrs, Path(path))


def read_activation_layer(path: str | os.PathLike, name: str, units: tuple[int, int] | None = None,
                          rows: tuple[int, int] | None = None) -> np.ndarray:
    """One layer's [N, C] float32 matrix (``units`` (lo, hi): only those columns; ``rows`` (lo, hi): only those
    images), without reading the ids again.

    For use after ``read_activations(path, data=False)`` has checked the file and its names.
    """
    f, _ = open_h5(path, ACTIVATIONS_FORMAT)
    with f:
        return _read_matrix(f["layers"], name, f"{path}:layers", rows=f["ids"].shape[0], units=units, row_range=rows)


def read_activation_rows(path: str | os.PathLike, name: str, rows: np.ndarray,
                         units: tuple[int, int] | None = None) -> np.ndarray:
    """The [len(rows), C] float32 rows ``rows`` (in that order; any order, no repeats) of one layer: the span they
    cover read at once where they are dense in it, else only those rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if hi - lo <= 2 * rows.size:
        return read_activation_layer(path, name, units=units, rows=(lo, hi))[rows - lo]
    order = np.argsort(rows)
    f, _ = open_h5(path, ACTIVATIONS_FORMAT)
    with f:
        ds = h5_dataset(f["layers"], name, f"{path}:layers")
        c0, c1 = (0, ds.shape[1]) if units is None else units
        arr = np.asarray(ds[rows[order], c0:c1], dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ArtifactError(f"layer {name!r} of {path} holds NaN or Inf activations",
                            hint="check the model's weights and re-record the layer")
    out = np.empty_like(arr)
    out[order] = arr
    return out


def activation_layer_shape(path: str | os.PathLike, name: str) -> tuple[int, int]:
    """(N, C) of one layer, read from the file's header."""
    f, _ = open_h5(path, ACTIVATIONS_FORMAT)
    with f:
        ds = h5_dataset(f["layers"], name, f"{path}:layers")
        return tuple(int(x) for x in ds.shape)


def _layer_names(group) -> list[str]:
    """Layer datasets under ``layers``, in the order they were written (``h5_layers`` checked them)."""
    return list(group)



def sniff_hdf5(p: Path) -> str:
    """The kind of the HDF5 artifact ``p``; a one-line error naming what is wrong otherwise."""
    for kind in HDF5_FORMATS:
        if peek_attrs(p, kind) is not None:
            return kind
    try:
        with _h5py().File(p, "r") as f:
            fmt = read_attrs(f).get("format")
    except OSError as e:
        raise ArtifactError(f"cannot open {p}: {e}") from None
    if isinstance(fmt, str) and fmt in HDF5_FORMATS:
        open_h5(p, fmt)  # the precise reason: a newer version, damaged attributes
    found = (f"format {fmt!r}" if isinstance(fmt, str) else "no 'format' attribute" if fmt is None
             else "a 'format' attribute that is not a string")
    raise ArtifactError(f"{p} is an HDF5 file but not a dissect artifact ({found})",
                        hint="give an images.h5, text.h5 or activations.h5 written by dissect")


def is_hdf5(p: Path) -> bool:
    return bool(_h5py().is_hdf5(p))


@dataclass
class DatasetHeader:
    """One dataset of an artifact, without its data."""

    shape: tuple[int, ...]
    dtype: Any
    attrs: dict[str, Any]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class Header:
    """What an HDF5 artifact holds, without its data: its attributes, its top-level datasets and (activations) its
    layers in the order they were written."""

    attrs: dict[str, Any]
    datasets: dict[str, DatasetHeader]
    layers: dict[str, DatasetHeader]
    groups: tuple[str, ...] = ()

    def dataset(self, name: str, path) -> DatasetHeader:
        """The top-level dataset ``name``; a one-line error when it is missing or a group (as ``h5_dataset``)."""
        if name in self.groups:
            raise ArtifactError(f"{path}: {name!r} is a group, not a dataset",
                                hint="the file was damaged or edited: write it again with the command that made it")
        if name not in self.datasets:
            raise ArtifactError(f"{path} has no dataset {name!r}")
        return self.datasets[name]


def read_header(path: str | os.PathLike, kind: str, need_layers: bool = True) -> Header:
    """The header of the ``kind`` artifact at ``path`` (checked as ``open_h5`` does); for activations, every member
    of ``layers`` checked to be a dataset, and (``need_layers``) at least one there."""
    h5py = _h5py()
    f, attrs = open_h5(path, kind)
    with f:
        members = list(f)
        datasets = {name: DatasetHeader(tuple(obj.shape), obj.dtype, read_attrs(obj))
                    for name, obj in f.items() if isinstance(obj, h5py.Dataset)}
        layers = {}
        group = f.get("layers")
        if kind == ACTIVATIONS_FORMAT and (need_layers or isinstance(group, h5py.Group) and len(group)):
            group = h5_layers(f, path)
            layers = {name: DatasetHeader(tuple(group[name].shape), group[name].dtype, read_attrs(group[name]))
                      for name in group}
    return Header(attrs, datasets, layers, tuple(n for n in members if n not in datasets))


class RowSpill:
    """[N, C] float32 rows in a temporary HDF5 file (removed on close), written a batch at a time."""

    def __init__(self, n: int, width: int, folder: Path | None):
        import tempfile

        fd, name = tempfile.mkstemp(prefix=".dissect-spill-", suffix=".h5", dir=str(folder) if folder else None)
        os.close(fd)
        self.path = Path(name)
        rows = max(1, min(n, 256))
        # The chunk cache holds one band of chunk rows, so batches that fill a band part by part never re-read it.
        self.file = _h5py().File(self.path, "w", rdcc_nbytes=max(1 << 20, 2 * rows * width * 4), rdcc_nslots=100003)
        self.ds = self.file.create_dataset("rows", shape=(n, width), dtype=np.float32,
                                           chunks=(rows, max(1, min(width, 1024))))
        self.shape = (n, width)
        self.nonfinite: dict[int, set[int]] = {}   # row -> its non-finite units (a row written again is replaced)

    def __setitem__(self, rows, arr) -> None:
        rows = np.asarray(rows)
        bad_r, bad_c = np.nonzero(~np.isfinite(arr))
        for r in rows.tolist():
            self.nonfinite.pop(r, None)
        for r, c in zip(rows[bad_r].tolist(), bad_c.tolist()):
            self.nonfinite.setdefault(r, set()).add(c)
        if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
            self.ds[int(rows[0]) : int(rows[-1]) + 1] = arr
        else:
            for r, v in zip(rows.tolist(), arr):
                self.ds[r] = v

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
            return self.ds[int(rows[0]) : int(rows[-1]) + 1]
        return np.stack([self.ds[r] for r in rows.tolist()]) if rows.size else np.zeros((0, self.shape[1]), np.float32)

    def view(self, rows) -> "RowSpillView":
        return RowSpillView(self, np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.path.unlink(missing_ok=True)


class RowSpillView:
    """The kept rows of a spill, read in blocks (``write_activations`` copies such a source block by block)."""

    def __init__(self, spill: RowSpill, rows: np.ndarray):
        self.spill, self.rows = spill, rows
        self.shape = (len(rows), spill.shape[1])

    def block(self, lo: int, hi: int) -> np.ndarray:
        return self.spill[self.rows[lo:hi]]

    def nonfinite_units(self) -> list[int]:
        """The units with a NaN or Inf value on one of the kept rows, sorted."""
        bad = self.spill.nonfinite
        return sorted(set().union(*(bad[r] for r in self.rows.tolist() if r in bad))) if bad else []
