"""Stage 1: CLIP embeddings of the probe images (images.h5) and of a concept set (text.h5)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .clip import Clip, encode_images, encode_tokens, load_clip, reload_clip, token_lengths, truncated_texts
from .concepts import ConceptSet, load_concepts
from .fingerprint import fingerprint
from .errors import InputError, UsageError
from .passes import PassOptions, execute, forward_errors
from .probe import Probe, Skipped, image_sizes, kept_rows, open_probe, probe_files, report_skipped, skipped_attr
from .runtime import DEFAULT_PRECISION, cache_dir, check_batch_size, note, progress, resolve_device, resolve_precision, warn


def image_embeddings_fingerprint(clip_fp: str, probe_fp: str, precision: str = "fp32") -> str:
    extra = [] if precision == "fp32" else [precision]  # fp32 keeps the fingerprints of earlier files
    return fingerprint([A.IMAGE_FORMAT, A.FORMAT_VERSION, clip_fp, probe_fp] + extra)


def text_embeddings_fingerprint(clip_fp: str, concepts_fp: str, precision: str = "fp32") -> str:
    extra = [] if precision == "fp32" else [precision]
    return fingerprint([A.TEXT_FORMAT, A.FORMAT_VERSION, clip_fp, concepts_fp] + extra)


#: How far a restored embedding's norm may be from 1 (float32 normalisation is off by ~1e-7).
UNIT_NORM_TOLERANCE = 1e-3


class ImageEmbedder:
    """A consumer of ``passes.image_pass``: CLIP image embeddings of each batch into an [N, d] array."""

    def __init__(self, clip: Clip, n_images: int, precision: str = "fp32", dtype: str = "float32", batch_size: int = 64):
        self.clip, self.precision, self.dtype, self.batch_size = clip, precision, check_dtype(dtype), batch_size
        self.transform = clip.preprocess
        self.embeddings = np.zeros((n_images, _embed_dim(clip)), dtype=np.float32)

    def __call__(self, idx, batch) -> None:
        with forward_errors(f"CLIP {self.clip.spec}", batch):
            self.embeddings[idx.numpy()] = encode_images(self.clip, batch, self.precision).numpy()

    def state(self, rows) -> dict[str, np.ndarray]:
        """The rows' results, for a checkpoint (``passes.image_pass``)."""
        return {"embeddings": self.embeddings[rows]}

    def restore(self, rows, state: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> None:
        emb = state["embeddings"]
        norms = np.linalg.norm(emb.astype(np.float64), axis=-1) if emb.ndim == 2 else np.zeros(0)
        off = np.abs(norms - 1) > UNIT_NORM_TOLERANCE
        off &= norms != 0  # the rows of images the pass skipped stay zero
        if off.any():
            raise ValueError(f"embeddings of norm {norms[off].min():.4g} to {norms[off].max():.4g}, not the unit "
                             "vectors CLIP gives")
        self.embeddings[rows] = emb

    def info_state(self) -> dict[str, Any]:
        return {}  # every row has the same width, known from the model

    def state_names(self) -> list[str]:
        return ["embeddings"]

    def write(self, out, probe: Probe, skipped: list[Skipped] = (), positions: range | None = None,
              extra_attrs: dict[str, Any] | None = None) -> Path:
        """Write the embeddings of the images the pass kept (of ``positions``); ``skipped`` ones are listed in the file."""
        keep = kept_rows(positions if positions is not None else len(probe), list(skipped))
        attrs = self.clip.attrs()
        attrs.update(
            fingerprint=image_embeddings_fingerprint(self.clip.fingerprint, probe.fingerprint, self.precision),
            probe=probe.describe(),
            precision=self.precision,
            skipped=skipped_attr(list(skipped)),
            provenance=A.provenance(stage="embed-images", batch_size=self.batch_size, precision=self.precision,
                                    dtype=self.dtype, n_skipped=len(skipped)),
            **(extra_attrs or {}),
        )
        A.grows(out)  # the sink replaces the version it reused (a fused pass opens no command of its own)
        A.write_embeddings(out, A.IMAGE_FORMAT, self.embeddings[keep], [probe.ids[i] for i in keep], self.clip.name,
                           self.clip.pretrained, attrs, dtype=self.dtype, sizes=image_sizes(probe, keep))
        report_skipped(list(skipped), len(positions) if positions is not None else len(probe), out)
        note(f"wrote {out}: {len(keep)} image embeddings (d={self.embeddings.shape[1]}, {self.dtype})")
        return Path(out)


def embed_images(
    probe: list[str] | Probe,
    clip: str | Clip,
    out: str | os.PathLike,
    dtype: str = "float32",
    options: PassOptions | None = None,
    **settings: Any,
) -> Path:
    """Embed every probe image with CLIP's image encoder into ``out`` (images.h5).

    ``dtype`` is how the embeddings are stored. ``options`` (``passes.PassOptions``; its
    fields may also be given as keyword arguments: ``device``, ``batch_size``, ``workers``,
    ``precision`` (default fp32), ``strict``, ``checkpoint_every``, ``shard``) say how the pass
    runs. Images that cannot be read are skipped and listed in the file (``strict``: the
    first one is an error). ``shard`` "I/N" encodes only the I-th of N slices (``dissect
    merge`` joins them); under torchrun each rank takes its slice and rank 0 writes ``out``.
    Every ``checkpoint_every`` images (default 2,048; 0: never) the work done is saved beside
    ``out``, and a rerun after an interruption continues from there. A probe that grew (or
    lost images) since ``out`` was written re-encodes only its new or changed images.
    """
    from .shards import distributed_world, plan_pass

    opts = PassOptions.of(options, **settings)
    check_dtype(dtype)
    A.grows(out)  # an embeddings file grows: its previous version is read for reuse, then replaced
    out = A.check_output_path(out, probe_files(probe))
    if not isinstance(probe, Probe):
        probe = open_probe(probe)
    A.refuse_clobber(out)  # now that the probe's folders and lists are known
    if not isinstance(clip, Clip):
        clip = load_clip(clip, resolve_device(opts.device))
    precision = resolve_precision(opts.precision, clip.device, "clip")
    embedder = ImageEmbedder(clip, len(probe), precision, dtype, opts.batch_size)
    reused = {} if opts.shard is not None or distributed_world() else _reuse_rows(out, clip, precision, probe)
    if reused:
        old = A.read_image_embeddings(out)
        embedder.restore(np.fromiter(reused, dtype=np.int64),
                         {"embeddings": old.embeddings[np.fromiter(reused.values(), dtype=np.int64)]})
        note(f"{out}: reusing {len(reused)} unchanged image embeddings; embedding {len(probe) - len(reused)} new or changed")
    plan = plan_pass({"images": out}, len(probe), opts.shard,
                     [image_embeddings_fingerprint(clip.fingerprint, probe.fingerprint, precision)], opts.chunk,
                     clip.device, encode=[i for i in range(len(probe)) if i not in reused] if reused else None)
    return execute(probe, {"images": embedder}, plan, opts, "embed images", clip.device)["images"]


def _reuse_rows(out, clip: Clip, precision: str, probe: Probe) -> dict[int, int]:
    """Rows of an existing images.h5 made with the same CLIP model and precision, for unchanged images."""
    from .probe import unchanged_rows

    attrs = A.peek_attrs(out, A.IMAGE_FORMAT)
    if attrs is None or attrs.get("clip_fingerprint") != clip.fingerprint or attrs.get("precision", "fp32") != precision:
        return {}
    if attrs.get("shard"):
        return {}
    try:
        ids = A.read_image_embeddings(out).keys
    except Exception:
        return {}
    return unchanged_rows(probe, ids, A.read_sizes(out))


def check_dtype(dtype: str) -> str:
    if dtype not in A.EMBEDDING_DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", hint=f"use one of: {', '.join(A.EMBEDDING_DTYPES)}")
    return dtype


def _embed_dim(clip: Clip) -> int:
    dim = getattr(clip.model, "embed_dim", None) or getattr(getattr(clip.model, "text_projection", None), "shape", [None, None])[-1]
    if dim is None:
        import torch

        with torch.inference_mode():
            dim = clip.model.encode_text(clip.tokenizer(["a"]).to(clip.device)).shape[-1]
    return int(dim)


def compute_text_embeddings(clip: Clip, concepts: ConceptSet, batch_size: int = 256, precision: str = "fp32",
                            strict: bool = False) -> np.ndarray:
    """[M, d] L2-normalised embeddings of the concepts, as written (no prompt template).

    Concepts are batched by token length, and each batch runs the text tower only up to
    its longest sequence where that is exact (``Clip.prefix_encoder``).
    """
    check_batch_size(batch_size)
    texts = concepts.concepts
    tokens = clip.tokenizer(texts)
    lengths = token_lengths(clip, tokens)
    too_long = truncated_texts(clip, texts)  # open_clip truncates silently
    if too_long and strict:
        raise InputError(
            f"{len(too_long)} concept(s) exceed CLIP's {clip.context_length}-token context, e.g. {too_long[0][:60]!r}",
            hint="shorten them, or leave out --strict to embed them truncated",
        )
    if too_long:
        warn(
            f"{len(too_long)} concept(s) exceed CLIP's {clip.context_length}-token context and were truncated, "
            f"e.g. {too_long[0][:60]!r}"
        )
    order = np.argsort(lengths.numpy(), kind="stable")
    out = np.zeros((len(texts), _embed_dim(clip)), dtype=np.float32)
    with progress("embed text", len(texts), "concepts") as advance:
        for s in range(0, len(texts), batch_size):
            sel = order[s : s + batch_size]
            out[sel] = encode_tokens(clip, tokens[sel], precision=precision).numpy()
            advance(len(sel))
    return out


def text_encoder_note(clip: Clip) -> str:
    return "prefix" if clip.prefix_encoder is not None else "full-context (open_clip encode_text)"


def _report_concepts(concepts: ConceptSet) -> None:
    if concepts.dropped_duplicates:
        warn(
            f"{concepts.name}: dropped {len(concepts.dropped_duplicates)} repeated concept(s), "
            f"e.g. {concepts.dropped_duplicates[0]!r}"
        )


def _text_attrs(clip: Clip, concepts: ConceptSet, batch_size: int, precision: str = "fp32", dtype: str = "float32") -> dict[str, Any]:
    attrs = clip.attrs()
    attrs.update(
        fingerprint=text_embeddings_fingerprint(clip.fingerprint, concepts.fingerprint, precision),
        precision=precision,
        text_encoder=text_encoder_note(clip),
        concept_set=concepts.name,
        concept_source=concepts.source,
        concept_fingerprint=concepts.fingerprint,
        provenance=A.provenance(stage="embed-text", batch_size=batch_size, precision=precision, dtype=dtype,
                                dropped_blank_lines=concepts.dropped_blank,
                                dropped_duplicates=len(concepts.dropped_duplicates)),
    )
    return attrs


def embed_text(
    concepts: str | ConceptSet,
    clip: str | Clip,
    out: str | os.PathLike,
    device: str = "auto",
    batch_size: int = 256,
    precision: str = DEFAULT_PRECISION,
    dtype: str = "float32",
    strict: bool = False,
) -> Path:
    """Embed a concept set with CLIP's text encoder into ``out`` (text.h5).

    Concepts longer than the text encoder's context are embedded truncated, with a
    warning (``strict``: refused).
    """
    check_dtype(dtype)
    A.grows(out)  # its previous version is read for reuse, then replaced
    out = A.check_output_path(out, [concepts if isinstance(concepts, str) else None])
    if not isinstance(concepts, ConceptSet):
        concepts = load_concepts(concepts)
    _report_concepts(concepts)
    if not isinstance(clip, Clip):
        clip = load_clip(clip, resolve_device(device))
    precision = resolve_precision(precision, clip.device, "clip")
    emb = _reuse_text(out, clip, precision, concepts)
    todo = [i for i, c in enumerate(concepts.concepts) if emb is None or c not in emb]
    if emb is not None and len(todo) < len(concepts.concepts):
        note(f"{out}: reusing {len(concepts.concepts) - len(todo)} concept embeddings; embedding {len(todo)} new")
    new = compute_text_embeddings(clip, ConceptSet(concepts.name, [concepts.concepts[i] for i in todo], concepts.source),
                                  batch_size, precision, strict) if todo else None
    vectors = np.zeros((len(concepts.concepts), _embed_dim(clip)), dtype=np.float32)
    if new is not None:
        vectors[todo] = new
    for i, c in enumerate(concepts.concepts):
        if emb is not None and c in emb:
            vectors[i] = emb[c]
    emb = vectors
    attrs = _text_attrs(clip, concepts, batch_size, precision, dtype)
    A.write_embeddings(out, A.TEXT_FORMAT, emb, concepts.concepts, clip.name, clip.pretrained, attrs, dtype=dtype)
    note(f"wrote {out}: {len(concepts.concepts)} concept embeddings")
    return Path(out)


def _reuse_text(out, clip: Clip, precision: str, concepts: ConceptSet) -> dict[str, np.ndarray] | None:
    """Embeddings already in ``out`` (same CLIP model and precision) by concept, or None."""
    attrs = A.peek_attrs(out, A.TEXT_FORMAT)
    if attrs is None or attrs.get("clip_fingerprint") != clip.fingerprint or attrs.get("precision", "fp32") != precision:
        return None
    try:
        old = A.read_text_embeddings(out)
    except Exception:
        return None
    wanted = set(concepts.concepts)
    return {c: old.embeddings[i] for i, c in enumerate(old.keys) if c in wanted}


def text_for_images(
    images: A.Embeddings,
    concepts: str | ConceptSet,
    cache: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 256,
    clip: Clip | None = None,
) -> A.Embeddings:
    """Text embeddings of ``concepts`` made with the CLIP model recorded in ``images``.

    Cached under ``cache`` (default :func:`cache_dir`) by the fingerprint of the CLIP
    model and the concept list's contents: a second call with the same concepts
    loads no model at all. ``clip``: that model, already loaded (checked against
    ``images``); otherwise it is loaded from the spec ``images`` records.
    """
    if not isinstance(concepts, ConceptSet):
        concepts = load_concepts(concepts)
    fp = text_embeddings_fingerprint(images.clip_fingerprint, concepts.fingerprint)
    folder = Path(cache) if cache else cache_dir() / "text"
    path = folder / f"{fp}.h5"
    cached = A.peek_attrs(path, A.TEXT_FORMAT)
    if cached is not None and cached.get("fingerprint") == fp:
        text = A.read_text_embeddings(path)
        note(f"using cached text embeddings {path}")
        return text
    _report_concepts(concepts)
    clip = reload_clip(images.clip_spec, images.clip_fingerprint, str(images.path), resolve_device(device), clip)
    emb = compute_text_embeddings(clip, concepts, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    attrs = _text_attrs(clip, concepts, batch_size)
    A.grows(path)  # its previous version may have been read for reuse
    A.write_embeddings(path, A.TEXT_FORMAT, emb, concepts.concepts, clip.name, clip.pretrained, attrs)
    return A.read_text_embeddings(path)
