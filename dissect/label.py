"""Stage 3: label every neuron with its most similar concept (labels.parquet).

Reads the artifacts of the earlier stages and never runs CLIP on images or the
target model again. With ``concepts`` instead of ``text``, the concept set is
embedded with the CLIP model recorded in images.h5 and cached, so a second
labelling with another similarity function loads no model at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .budget import layer_exceeds, units_per_concept_tile, units_per_read
from .concepts import ConceptSet
from .errors import UsageError
from .inputs import open_inputs, skipped_ids
from .runtime import callable_module, note, progress, resolve_device
from .settings import Compute, Settings, no_other_fields
from .similarity import METHODS, check_probe_size, resolve_params
from .scoring import score_layer

#: The default similarity function (the paper's).
DEFAULT_SIMILARITY = "softwpmi"


@dataclass(frozen=True)
class LabelSettings(Settings):
    """What a labelling computes: the similarity function and its parameters (``params``: overrides of the
    paper's), candidates kept per unit (``top``), rank reorder's seed, concepts per block (``chunk``; None:
    as many as the memory budget allows), and the share of the probe held out of labelling (``holdout``,
    split by image id with ``holdout_seed``) for ``evaluate simulate`` to score the labels on."""

    sim: str = DEFAULT_SIMILARITY
    params: dict[str, Any] | None = None
    top: int = 5
    seed: int | None = None
    chunk: int | None = None
    holdout: float | None = None
    holdout_seed: int = 0

    def check(self) -> None:
        if self.top < 1:
            raise UsageError(f"--top must be at least 1, got {self.top}")
        if self.chunk is not None and self.chunk < 1:
            raise UsageError(f"--chunk must be at least 1, got {self.chunk}")

    def resolved_params(self) -> dict[str, Any]:
        """The similarity function's parameters, the paper's defaults with the overrides and the seed applied."""
        params = resolve_params(self.sim, self.params)
        if self.seed is not None and "seed" in params:
            params["seed"] = int(self.seed)
        return params


@dataclass
class _Scoring:
    """What every layer of one labelling shares: the settings, the image and text embeddings on the device, the
    activations' row order (None: as stored) and the memory budget."""

    settings: LabelSettings
    params: dict[str, Any]
    activations: Any
    I: Any
    T: Any
    keys: list[str]
    order: np.ndarray | None
    budget: int

    @property
    def k(self) -> int:
        return min(self.settings.top, len(self.keys))

    def read(self, name: str, units: tuple[int, int] | None = None):
        """Layer ``name`` (or a block of its ``units``) as a float32 tensor on the device, rows in image order."""
        import torch

        q_np = A.read_activation_layer(self.activations, name, units=units)
        return torch.from_numpy(q_np if self.order is None else q_np[self.order]).to(self.I.device)


#: What a labels file records of each layer (direction entries add what made their units).
LAYER_META = ("summary", "layout", "raw_shape", "fingerprint", "directions_kind", "directions_spec",
              "directions_fingerprint", "directions_layer")


def _add_rows(rows: dict[str, list], name: str, lo: int, hi: int, idx, val, keys) -> None:
    rows["layer"] += [name] * (hi - lo)
    rows["unit"] += list(range(lo, hi))
    rows["label"] += [keys[i] for i in idx[:, 0]]
    rows["similarity"] += val[:, 0].tolist()
    rows["candidates"] += [[keys[i] for i in r] for r in idx]
    rows["candidate_similarities"] += [r.tolist() for r in val]


def _score_in_blocks(sc: _Scoring, name: str, C: int, block: int):
    """Top-k concepts of every unit of a layer too wide for the budget, read ``block`` units at a time.

    SoftWPMI and WPMI need only each neuron's top images from the activations: those are
    selected block by block, then the whole layer is scored at once (its log p(t) term
    spans all neurons), the same result as reading the layer whole. The other methods
    read whole columns for every concept: each block is scored on its own.
    """
    from .scoring import prepare_examples

    sim, chunk = sc.settings.sim, sc.settings.chunk
    starts = list(range(0, C, block))
    note(f"{name}: {C} units read in {len(starts)} blocks of {block} (--max-memory)")
    if METHODS[sim].pmi:
        with progress(f"{sim} {name}: top images", C, "units") as advance:
            def blocks():
                for lo in starts:
                    q = sc.read(name, (lo, lo + block))
                    yield q
                    advance(q.shape[1])

            prep = prepare_examples(sim, blocks(), sc.I.shape[0], sc.params)
        return _score_pmi_prepared(sc, name, C, prep)
    idx, val = [], []
    with progress(f"{sim} {name}", C, "units") as advance:
        for lo in starts:
            q = sc.read(name, (lo, lo + block))
            res = score_layer(sim, q, sc.I, sc.T, sc.params, top=sc.k, chunk=chunk, max_memory=sc.budget, unit_offset=lo)
            idx.append(res.indices.cpu().numpy())
            val.append(res.values.cpu().numpy())
            advance(q.shape[1])
    return np.concatenate(idx), np.concatenate(val)


def _score_pmi_prepared(sc: _Scoring, name: str, C: int, prep):
    """SoftWPMI/WPMI of a wide layer from its example images: at once when one block of concepts over all its
    units fits the budget, else in blocks of units (``budget.units_per_concept_tile``) in two passes, the first
    estimating log p(t) over every unit (``similarity.BlockPopulation``)."""
    from .similarity import TILE, BlockPopulation
    from .scoring import LayerPrep, plan_chunk

    sim, chunk = sc.settings.sim, sc.settings.chunk
    held = prep.idx.element_size() * prep.idx.numel()
    if held > sc.budget // 2:  # the method's own input, held whatever the budget: say so rather than exceed it quietly
        note(f"{name}: the top {prep.idx.shape[0]} images of its {C} units take {held / 2**20:.0f} MB beside --max-memory")
    width = units_per_concept_tile(sc.budget, prep.rows_read, C, METHODS[sim].bytes_per_row, True, TILE)
    if width >= C:
        with progress(f"{sim} {name}", sc.T.shape[0], "concepts") as advance:
            res = score_layer(sim, None, sc.I, sc.T, sc.params, top=sc.k, chunk=chunk, progress=advance,
                              max_memory=sc.budget, prep=prep)
        return res.indices.cpu().numpy(), res.values.cpu().numpy()
    starts = list(range(0, C, width))
    chunk = chunk or plan_chunk(sim, prep.rows_read, width, sc.budget)  # one chunking for every block and pass
    note(f"{name}: {C} units scored in {len(starts)} blocks of {width}, in two passes (--max-memory)")
    population = BlockPopulation(C)
    idx, val = [], []
    for stage, pop, keep in (("log p(t)", population.collect, False), ("scores", population.apply, True)):
        with progress(f"{sim} {name}: {stage}", C, "units") as advance:
            for lo in starts:
                part = LayerPrep(prep.rows_read, prep.idx[:, lo : lo + width], prep.rows)
                res = score_layer(sim, None, sc.I, sc.T, sc.params, top=sc.k, chunk=chunk, max_memory=sc.budget,
                                  prep=part, passes="two", population=pop())
                if keep:
                    idx.append(res.indices.cpu().numpy())
                    val.append(res.values.cpu().numpy())
                advance(part.idx.shape[1])
    return np.concatenate(idx), np.concatenate(val)


def _label_layer(sc: _Scoring, name: str, rows: dict[str, list], world) -> None:
    """Add the rows of layer ``name``: whole, in blocks of units when too wide for the budget, or (torchrun) this
    rank's slice of its units."""
    from .similarity import distributed_population
    from .scoring import plan_chunk

    sim, chunk = sc.settings.sim, sc.settings.chunk
    C_all = A.activation_layer_shape(sc.activations, name)[1]
    rows_n = sc.I.shape[0]
    block = units_per_read(sc.budget, rows_n, C_all)
    # SoftWPMI/WPMI read wide layers in blocks at no extra cost; the others only when the layer's float32
    # matrix is over 4 x the budget (each of their blocks computes the image-concept cosines again).
    if world is None and block < C_all and (METHODS[sim].pmi or layer_exceeds(sc.budget, rows_n, C_all)):
        # Too wide for the budget (an SAE's latents): read and score it in blocks of units.
        idx, val = _score_in_blocks(sc, name, C_all, block)
        _add_rows(rows, name, 0, C_all, idx, val, sc.keys)
        return
    q = sc.read(name)
    C = q.shape[1]
    lo, hi, kw = 0, C, {}
    if world is not None:
        rank, size, _ = world
        if C < size:  # too few neurons to split: rank 0 scores the layer alone
            if rank != 0:
                return
        else:
            # torchrun: each rank scores a slice of the neurons; the λ·log p(t) term is all-gathered.
            lo, hi = rank * C // size, (rank + 1) * C // size
            q = q[:, lo:hi]
            kw = {"passes": "two", "chunk": chunk or plan_chunk(sim, rows_n, C, sc.budget), "unit_offset": lo}
            if METHODS[sim].pmi:
                kw["population"] = distributed_population(C)
    with progress(f"{sim} {name}", len(sc.keys), "concepts") as advance:
        res = score_layer(sim, q, sc.I, sc.T, sc.params, top=sc.k, chunk=kw.pop("chunk", chunk), progress=advance,
                          max_memory=sc.budget, **kw)
    _add_rows(rows, name, lo, hi, res.indices.cpu().numpy(), res.values.cpu().numpy(), sc.keys)


def _holdout(img: A.Embeddings, order, settings: LabelSettings):
    """(rows of images.h5 to label on or None for all, the activations' row order for them, the split's record)."""
    if settings.holdout is None:
        return None, order, None
    from . import split

    out_mask = split.held_out(img.keys, settings.holdout, settings.holdout_seed)
    keep = np.flatnonzero(~out_mask)
    if keep.size == 0 or keep.size == len(img.keys):
        raise UsageError(f"--holdout {settings.holdout} leaves {'no' if keep.size == 0 else 'every'} image of the "
                         f"{len(img.keys)} for labelling", hint="choose a fraction between 0.05 and 0.5")
    record = split.record(settings.holdout, settings.holdout_seed, keep.size, len(img.keys) - keep.size)
    note(f"labelling on {keep.size} of {len(img.keys)} images; {len(img.keys) - keep.size} held out "
         f"(seed {settings.holdout_seed})")
    return keep, (keep if order is None else order[keep]), record


def _concept_meta(txt: A.Embeddings, text, concepts) -> dict[str, Any]:
    """Which concept set the labels come from, as the metadata records it."""
    if text is not None:
        meta = {"name": txt.attrs.get("concept_set", str(text)),
                "source": txt.attrs.get("concept_source", str(Path(text).resolve()))}
    else:
        name = concepts.name if isinstance(concepts, ConceptSet) else str(concepts)
        meta = {"name": name, "source": txt.attrs.get("concept_source", name)}
    meta["fingerprint"] = txt.keys_fingerprint
    meta["n"] = len(txt.keys)
    return meta


def _metadata(settings: LabelSettings, sc: _Scoring, img, acts, txt, paths: dict[str, Any]) -> dict[str, Any]:
    """The labels file's metadata: how the labels were made and from which inputs."""
    return {
        "similarity": settings.sim,
        "params": sc.params,
        "top": sc.k,
        "concepts": _concept_meta(txt, paths["text"], paths["concepts"]),
        "clip": img.clip_spec,
        "clip_fingerprint": img.clip_fingerprint,
        "model": acts.model,
        "weights": acts.attrs.get("weights", ""),
        "layers": {n: {kk: acts.layer_attrs[n].get(kk) for kk in LAYER_META if kk in acts.layer_attrs[n] or kk in LAYER_META[:4]}
                   for n in acts.layers},
        "inputs": {
            "images": {"path": str(Path(paths["images"]).resolve()), "fingerprint": img.attrs.get("fingerprint", img.keys_fingerprint)},
            "activations": {"path": str(Path(paths["activations"]).resolve()), "fingerprint": acts.attrs.get("inputs_fingerprint", "")},
            "text": {"path": str(Path(txt.path).resolve()) if txt.path else "", "fingerprint": txt.attrs.get("fingerprint", txt.keys_fingerprint)},
        },
        "probe": {"n_images": int(sc.I.shape[0]), "ids_fingerprint": img.keys_fingerprint,
                  "skipped": sorted(skipped_ids(img.attrs) | skipped_ids(acts.attrs))},
        "provenance": A.provenance(stage="label"),
    }


def _gather_ranks(rows: dict[str, list], layers, world) -> dict[str, list] | None:
    """torchrun: every rank's rows on rank 0, layer by layer, each rank's slice of units in order (None elsewhere)."""
    import torch.distributed as dist

    gathered = [None] * world[1]
    dist.all_gather_object(gathered, rows)
    if world[0] != 0:
        return None  # rank 0 writes the one output
    out: dict[str, list] = {c: [] for c in A.LABEL_COLUMNS}
    for layer in layers:
        for part in gathered:
            for i, lay in enumerate(part["layer"]):
                if lay == layer:
                    for c in A.LABEL_COLUMNS:
                        out[c].append(part[c][i])
    return out


def label(images: str | os.PathLike, activations: str | os.PathLike, out: str | os.PathLike | None,
          text: str | os.PathLike | None = None, concepts: str | ConceptSet | None = None, layers: list[str] | None = None,
          settings: LabelSettings | None = None, compute: Compute | None = None,
          extra_metadata: dict[str, Any] | None = None, **fields: Any):
    """Label the neurons of ``layers`` (default: all in the file) with one of ``text`` (text.h5) or ``concepts`` (a
    concept set, embedded with the CLIP model images.h5 records, or ``compute.clip``); returns a pyarrow Table.

    Writes ``out`` (Parquet; '-' for standard output) unless it is None; ``extra_metadata``
    is merged into the schema metadata. ``settings`` (:class:`LabelSettings`) and ``compute``
    (:class:`settings.Compute`) may also be given as their fields (``sim="wpmi", top=10, device="cpu"``).
    """
    import torch

    settings = LabelSettings.of(settings, **LabelSettings.take(fields))
    compute = Compute.of(compute, **Compute.take(fields))
    no_other_fields(fields, "label")
    if (text is None) == (concepts is None):
        raise UsageError("give exactly one of --text and --concepts")
    params = settings.resolved_params()
    inputs = [images, activations, text, concepts if isinstance(concepts, (str, os.PathLike)) else None]
    if out is not None and str(out) != A.STDOUT:
        out = A.check_output_path(out, inputs)

    # Matrices are not loaded here: layer names are checked, then layers are read one at a time.
    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, compute.device, compute.cache,
                                        compute.batch_size, compute.clip)
    keep, order, split_meta = _holdout(img, order, settings)
    N = len(img.keys) if keep is None else int(keep.size)
    check_probe_size(settings.sim, params, N)
    dev = resolve_device(compute.device)
    sc = _Scoring(settings, params, activations, torch.from_numpy(img.embeddings if keep is None else img.embeddings[keep]).to(dev),
                  torch.from_numpy(txt.embeddings).to(dev), list(txt.keys), order, compute.budget)
    from .shards import distributed_world, init_process_group

    world = distributed_world()
    if world is not None:
        init_process_group(dev)
    rows: dict[str, list] = {c: [] for c in A.LABEL_COLUMNS}
    for name in acts.layers:
        _label_layer(sc, name, rows, world)
    meta = _metadata(settings, sc, img, acts, txt, {"images": images, "activations": activations, "text": text,
                                                    "concepts": concepts})
    meta.update(extra_metadata or {})
    if split_meta is not None:
        meta["split"] = split_meta
    if world is not None:
        rows = _gather_ranks(rows, acts.layers, world)
        if rows is None:
            return None
    table = A.table_of(A.LABELS_FORMAT, rows)
    if out is not None:
        A.write_labels(out, rows, meta)
        if str(out) != A.STDOUT:
            note(f"wrote {out}: {table.num_rows} neurons labelled with {settings.sim} over {len(txt.keys)} concepts")
    return table


# `dissect.label(...)` runs the stage even once this module is bound to that name (runtime.callable_module).
callable_module(__name__, "label")
