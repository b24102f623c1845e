"""Stage 3: label every neuron with its most similar concept (labels.parquet).

Reads the artifacts of the earlier stages and never runs CLIP on images or the
target model again. With ``concepts`` instead of ``text``, the concept set is
embedded with the CLIP model recorded in images.h5 and cached, so a second
labelling with another similarity function loads no model at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .concepts import ConceptSet
from .errors import UsageError
from .inputs import open_inputs, skipped_ids
from .runtime import note, progress, resolve_device
from .budget import layer_exceeds, memory_budget, units_per_read
from .similarity import METHODS, check_probe_size, resolve_params, score_layer


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


def _score_in_blocks(sim, params, activations, name, C, order, I, T, k, chunk, budget, block):
    """Top-k concepts of every unit of a layer too wide for ``budget``, read ``block`` units at a time.

    SoftWPMI and WPMI need only each neuron's top images from the activations: those are
    selected block by block, then the whole layer is scored at once (its log p(t) term
    spans all neurons), the same result as reading the layer whole. The other methods
    read whole columns for every concept: each block is scored on its own.
    """
    import torch

    from .similarity import prepare_examples

    starts = list(range(0, C, block))
    note(f"{name}: {C} units read in {len(starts)} blocks of {block} (--max-memory)")

    def load(lo):
        q_np = A.read_activation_layer(activations, name, units=(lo, lo + block))
        return torch.from_numpy(q_np if order is None else q_np[order]).to(I.device)

    if METHODS[sim].pmi:
        with progress(f"{sim} {name}: top images", C, "units") as advance:
            def blocks():
                for lo in starts:
                    q = load(lo)
                    yield q
                    advance(q.shape[1])

            prep = prepare_examples(sim, blocks(), I.shape[0], params)
        with progress(f"{sim} {name}", T.shape[0], "concepts") as advance:
            res = score_layer(sim, None, I, T, params, top=k, chunk=chunk, progress=advance, max_memory=budget, prep=prep)
        return res.indices.cpu().numpy(), res.values.cpu().numpy()
    idx, val = [], []
    with progress(f"{sim} {name}", C, "units") as advance:
        for lo in starts:
            q = load(lo)
            res = score_layer(sim, q, I, T, params, top=k, chunk=chunk, max_memory=budget, unit_offset=lo)
            idx.append(res.indices.cpu().numpy())
            val.append(res.values.cpu().numpy())
            advance(q.shape[1])
    return np.concatenate(idx), np.concatenate(val)


def label(
    images: str | os.PathLike,
    activations: str | os.PathLike,
    out: str | os.PathLike | None,
    text: str | os.PathLike | None = None,
    concepts: str | ConceptSet | None = None,
    sim: str = "softwpmi",
    params: dict[str, Any] | None = None,
    layers: list[str] | None = None,
    top: int = 5,
    seed: int | None = None,
    device: str = "auto",
    chunk: int | None = None,
    max_memory: int | None = None,
    cache: str | os.PathLike | None = None,
    batch_size: int = 256,
    extra_metadata: dict[str, Any] | None = None,
    clip=None,
    holdout: float | None = None,
    holdout_seed: int = 0,
):
    """Label the neurons of ``layers`` (default: all in the file); returns a pyarrow Table.

    Writes ``out`` (Parquet; '-' for standard output) unless it is None; ``extra_metadata``
    is merged into the schema metadata. ``clip``: the CLIP model of images.h5, already
    loaded, to embed ``concepts`` with (otherwise loaded when they are not cached).
    ``holdout``: the share of the probe kept out of labelling (:mod:`dissect.split`, seeded by
    ``holdout_seed``), for ``dissect evaluate simulate`` to score the labels on; recorded in the metadata.
    """
    import torch

    if (text is None) == (concepts is None):
        raise UsageError("give exactly one of --text and --concepts")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if chunk is not None and chunk < 1:
        raise UsageError(f"--chunk must be at least 1, got {chunk}")
    params = resolve_params(sim, params)
    if seed is not None and "seed" in params:
        params["seed"] = int(seed)
    inputs = [images, activations, text, concepts if isinstance(concepts, (str, os.PathLike)) else None]
    if out is not None and str(out) != A.STDOUT:
        out = A.check_output_path(out, inputs)

    # Matrices are not loaded here: layer names are checked, then layers are read one at a time.
    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, device, cache, batch_size, clip)
    if text is not None:
        concept_meta = {"name": txt.attrs.get("concept_set", str(text)), "source": txt.attrs.get("concept_source", str(Path(text).resolve()))}
    else:
        name = concepts.name if isinstance(concepts, ConceptSet) else str(concepts)
        concept_meta = {"name": name, "source": txt.attrs.get("concept_source", name)}
    concept_meta["fingerprint"] = txt.keys_fingerprint
    concept_meta["n"] = len(txt.keys)

    split_meta = None
    keep = None
    if holdout is not None:
        from . import split

        out_mask = split.held_out(img.keys, holdout, holdout_seed)
        keep = np.flatnonzero(~out_mask)
        if keep.size == 0 or keep.size == len(img.keys):
            raise UsageError(f"--holdout {holdout} leaves {'no' if keep.size == 0 else 'every'} image of the "
                             f"{len(img.keys)} for labelling", hint="choose a fraction between 0.05 and 0.5")
        split_meta = split.record(holdout, holdout_seed, keep.size, len(img.keys) - keep.size)
        note(f"labelling on {keep.size} of {len(img.keys)} images; {len(img.keys) - keep.size} held out (seed {holdout_seed})")
        order = keep if order is None else order[keep]

    N = len(img.keys) if keep is None else int(keep.size)
    check_probe_size(sim, params, N)

    dev = resolve_device(device)
    I = torch.from_numpy(img.embeddings if keep is None else img.embeddings[keep]).to(dev)
    T = torch.from_numpy(txt.embeddings).to(dev)
    rows: dict[str, list] = {c: [] for c in A.LABEL_COLUMNS}
    k = min(top, len(txt.keys))
    from .shards import init_process_group, distributed_world
    from .similarity import distributed_population, plan_chunk

    world = distributed_world()
    if world is not None:
        init_process_group(dev)
    budget = memory_budget(max_memory)
    for name in acts.layers:
        C_all = A.activation_layer_shape(activations, name)[1]
        rows_n = N if order is None else len(order)
        block = units_per_read(budget, rows_n, C_all)
        # SoftWPMI/WPMI read wide layers in blocks at no extra cost; the others only when the layer's float32
        # matrix is over 4 x the budget (each of their blocks computes the image-concept cosines again).
        if world is None and block < C_all and (METHODS[sim].pmi or layer_exceeds(budget, rows_n, C_all)):
            # Too wide for the budget (an SAE's latents): read and score it in blocks of units.
            idx, val = _score_in_blocks(sim, params, activations, name, C_all, order, I, T, k, chunk, budget, block)
            _add_rows(rows, name, 0, C_all, idx, val, txt.keys)
            continue
        q_np = A.read_activation_layer(activations, name)
        q = torch.from_numpy(q_np if order is None else q_np[order]).to(dev)
        del q_np
        C = q.shape[1]
        lo, hi, kw = 0, C, {}
        if world is not None:
            rank, size, _ = world
            if C < size:  # too few neurons to split: rank 0 scores the layer alone
                if rank != 0:
                    continue
            else:
                # torchrun: each rank scores a slice of the neurons; the λ·log p(t) term is all-gathered.
                lo, hi = rank * C // size, (rank + 1) * C // size
                q = q[:, lo:hi]
                kw = {"passes": "two", "chunk": chunk or plan_chunk(sim, N, C, budget), "unit_offset": lo}
                if METHODS[sim].pmi:
                    kw["population"] = distributed_population(C)
        with progress(f"{sim} {name}", len(txt.keys), "concepts") as advance:
            res = score_layer(sim, q, I, T, params, top=k, chunk=kw.pop("chunk", chunk), progress=advance, max_memory=budget,
                              **kw)
        _add_rows(rows, name, lo, hi, res.indices.cpu().numpy(), res.values.cpu().numpy(), txt.keys)

    meta = {
        "similarity": sim,
        "params": params,
        "top": k,
        "concepts": concept_meta,
        "clip": img.clip_spec,
        "clip_fingerprint": img.clip_fingerprint,
        "model": acts.model,
        "weights": acts.attrs.get("weights", ""),
        "layers": {n: {kk: acts.layer_attrs[n].get(kk) for kk in LAYER_META if kk in acts.layer_attrs[n] or kk in LAYER_META[:4]}
                   for n in acts.layers},
        "inputs": {
            "images": {"path": str(Path(images).resolve()), "fingerprint": img.attrs.get("fingerprint", img.keys_fingerprint)},
            "activations": {"path": str(Path(activations).resolve()), "fingerprint": acts.attrs.get("inputs_fingerprint", "")},
            "text": {"path": str(Path(txt.path).resolve()) if txt.path else "", "fingerprint": txt.attrs.get("fingerprint", txt.keys_fingerprint)},
        },
        "probe": {"n_images": N, "ids_fingerprint": img.keys_fingerprint,
                  "skipped": sorted(skipped_ids(img.attrs) | skipped_ids(acts.attrs))},
        "provenance": A.provenance(stage="label"),
        **(extra_metadata or {}),
    }
    if split_meta is not None:
        meta["split"] = split_meta
    if world is not None:
        import torch.distributed as dist

        gathered = [None] * world[1]
        dist.all_gather_object(gathered, rows)
        if world[0] != 0:
            return None  # rank 0 writes the one output
        rows = {c: [] for c in A.LABEL_COLUMNS}
        for layer in acts.layers:  # layer by layer, each rank's slice of units in order
            for part in gathered:
                for i, lay in enumerate(part["layer"]):
                    if lay == layer:
                        for c in A.LABEL_COLUMNS:
                            rows[c].append(part[c][i])
    table = A.table_of(A.LABELS_FORMAT, rows)
    if out is not None:
        A.write_labels(out, rows, meta)
        if str(out) != A.STDOUT:
            note(f"wrote {out}: {table.num_rows} neurons labelled with {sim} over {len(txt.keys)} concepts")
    return table

