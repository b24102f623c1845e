"""Scoring a layer against a concept list: ``score_layer`` streams over blocks of concepts (the N x M matrix is never
held whole), runs a similarity function's kernel (``similarity``) on each and keeps each neuron's top concepts;
``score_extra_texts`` scores extra texts (compositions) beside them. What ``dissect label`` and ``compose`` drive."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from .budget import DEFAULT_MAX_MEMORY, concepts_per_accumulator_block, concepts_per_block, rows_per_single_pass
from .similarity import (
    METHODS,
    PmiContext,
    ROW_TILE,
    TILE,
    _F32_SOFTMAX_MAX_A,
    log_softmax_denominator,
    membership_weights,
    pmi_scores,
    pmi_single_pass,
    population_correction,
    examples_needed,
    example_rows,
    rank_reorder_baseline,
    top_images,
    probabilities,
    resolve_params,
)

# ---------------------------------------------------------------------------
# Each layer's example images, selected once
# ---------------------------------------------------------------------------

@dataclass
class LayerPrep:
    """The work every block of concepts shares for one layer: each neuron's example images."""

    rows_read: int                      # image rows a block reads
    idx: torch.Tensor | None = None     # top images per neuron (into ``rows`` for PMI methods)
    rows: torch.Tensor | None = None    # PMI methods: the images some neuron uses (None: all)
    kw: dict[str, Any] = field(default_factory=dict)   # extra kernel arguments (rank reorder's baseline)


def prepare_examples(name: str, blocks, n_images: int, params: dict[str, Any]) -> LayerPrep:
    """SoftWPMI/WPMI's layer prep from the layer's activations given as blocks of units ([N, c] tensors, in
    order): each neuron's top images depend on its own column only, so this equals ``prepare_layer`` on the
    whole matrix while holding one block at a time."""
    if METHODS[name].examples != "top_k":
        raise ValueError(f"{name} reads whole activation columns; score its blocks of units one by one")
    idx = torch.cat([top_images(q, int(params["top_k"])) for q in blocks], dim=1)
    rows, idx = example_rows(idx, n_images)
    return LayerPrep(n_images if rows is None else rows.numel(), idx, rows)


def prepare_layer(name: str, q: torch.Tensor, params: dict[str, Any], unit_offset: int = 0) -> LayerPrep:
    """Select each neuron's example images once per layer (and rank reorder's seeded baseline)."""
    method = METHODS[name]
    N = q.shape[0]
    if method.examples == "top_k":
        idx = top_images(q, int(params["top_k"]))
        rows, idx = example_rows(idx, N)  # the images some neuron uses, selected once per layer
        return LayerPrep(N if rows is None else rows.numel(), idx, rows)
    if method.examples == "top_fraction":
        n = examples_needed(name, params, N)
        idx = top_images(q, n)
        t = torch.gather(q, 0, idx).to(torch.float64)
        baseline = rank_reorder_baseline(t, params["p"], int(params["n_perm"]), int(params["seed"]), unit_offset)
        return LayerPrep(n, idx, kw={"idx": idx, "baseline": baseline})
    return LayerPrep(N)


# ---------------------------------------------------------------------------
# Driver: stream over concept blocks, keep each neuron's top-K.
# ---------------------------------------------------------------------------

@dataclass
class LayerScores:
    """Each neuron's best concepts: ``indices`` [C, K] into the concept list, ``values`` [C, K] float64."""

    indices: torch.Tensor
    values: torch.Tensor


def plan_chunk(name: str, rows: int, neurons: int, max_memory: int = DEFAULT_MAX_MEMORY) -> int:
    """Concepts per block of ``name``'s kernel so that one block's working set fits ``max_memory`` bytes
    (``budget.concepts_per_block`` with the method's bytes per image row)."""
    method = METHODS[name]
    return concepts_per_block(max_memory, rows, neurons, method.bytes_per_row, method.pmi, TILE)


@dataclass(frozen=True)
class ScoreOptions:
    """How ``score_layer`` streams, not what it computes: concepts per block (``chunk``; None: as many as fit
    ``max_memory`` bytes of working set), SoftWPMI/WPMI's ``passes`` ("auto", "one", "two") and ``population``
    (how log p(t) is estimated: None over the neurons of ``q``, ``distributed_population`` when the layer's neurons
    are split across processes), ``unit_offset`` (``q`` holds units offset.. of the layer: rank reorder draws its
    seeded baseline accordingly) and ``prep`` (the layer's example images, already selected)."""

    chunk: int | None = None
    max_memory: int = DEFAULT_MAX_MEMORY
    passes: str = "auto"
    population: Callable | None = None
    unit_offset: int = 0
    prep: "LayerPrep | None" = None


def score_layer(name: str, q: torch.Tensor | None, image_emb: torch.Tensor, text_emb: torch.Tensor, params: dict[str, Any],
                top: int = 5, full: bool = False, progress: Callable[[int], None] | None = None,
                options: ScoreOptions | None = None, **fields: Any) -> LayerScores | torch.Tensor:
    """Score every neuron of one layer against every concept, block by block.

    ``q`` [N, C] activations, ``image_emb`` [N, d], ``text_emb`` [M, d]. Returns the top
    ``top`` concepts per neuron (or, with ``full=True``, the whole [C, M] float64 matrix,
    for tests and small problems). ``progress`` is called with the number of concepts done.
    ``options`` (:class:`ScoreOptions`, or its fields as keyword arguments) say how it streams.

    Memory: the N×M matrix is never formed. SoftWPMI and WPMI read only the images in
    some neuron's top_k; every method streams over blocks of ``chunk`` concepts, by
    default as many as fit ``max_memory`` bytes of working set (see ``plan_chunk``).

    ``passes`` (SoftWPMI, WPMI): "one" takes the products once (``pmi_single_pass``,
    which holds a [C, M] float64 accumulator), "two" streams over concept blocks and
    takes them twice (the softmax denominator first), "auto" takes one pass when its
    accumulator and a row block fit ``max_memory`` (``budget.rows_per_single_pass``). Both give the
    same float32 terms summed in float64, so the same scores to rounding. With ``prep``
    (``prepare_examples`` over blocks of units), ``q`` may be None for SoftWPMI and WPMI,
    which read nothing else of it.
    """
    opts = replace(options or ScoreOptions(), **fields)
    chunk, max_memory, passes, population, prep = opts.chunk, opts.max_memory, opts.passes, opts.population, opts.prep
    if passes not in ("auto", "one", "two"):
        raise ValueError(f"passes must be 'auto', 'one' or 'two', got {passes!r}")
    if name not in METHODS:
        resolve_params(name)  # raises the user-facing error
    method = METHODS[name]
    if q is None and (prep is None or not method.pmi):
        raise ValueError("q may be None only with the prep of a SoftWPMI or WPMI layer")
    M = text_emb.shape[0]
    image_emb, text_emb = image_emb.to(torch.float32).contiguous(), text_emb.to(torch.float32).contiguous()
    if q is not None:
        C = q.shape[1]
        q = q.to(image_emb.device, torch.float32)
    else:
        C = int(prep.idx.shape[1])
    if prep is None:
        prep = prepare_layer(name, q, params, opts.unit_offset)  # work shared by all concept blocks
    row_block = 0
    if method.pmi and passes != "two" and float(params["a"]) <= _F32_SOFTMAX_MAX_A:
        row_block = rows_per_single_pass(max_memory, prep.rows_read, C, M, ROW_TILE)
        if passes == "one" and not row_block:
            row_block = min(prep.rows_read, ROW_TILE)
    if row_block:
        # One product pass: all raw scores into a [C, M] accumulator, then the same top-K
        # merge over concept blocks, taken from the accumulator.
        score_all = _single_pass_scores(name, params, image_emb, text_emb, prep, row_block, progress)
        progress = None
        if full:
            return population_correction(score_all, float(params["lam"]), population)
        chunk = chunk or concepts_per_accumulator_block(max_memory, C, M, TILE)
        chunk = -(-chunk // TILE) * TILE
        blocks = _accumulator_blocks(score_all, float(params["lam"]), population, chunk)
    else:
        chunk = chunk or plan_chunk(name, prep.rows_read, C, max_memory)
        chunk = -(-chunk // TILE) * TILE  # blocks hold whole tiles (see ``cosines``)
        blocks = _kernel_blocks(name, params, q, image_emb, text_emb, prep, chunk, population, with_score=not full)
    if full:
        out = []
        for _, sim, _ in blocks:
            out.append(sim)
            if progress is not None:
                progress(sim.shape[1])
        return torch.cat(out, dim=1)
    return _merge_blocks(blocks, C, min(top, M), quantize=method.pmi, device=image_emb.device, progress=progress)


def _single_pass_scores(name, params, image_emb, text_emb, prep: LayerPrep, row_block: int, progress) -> torch.Tensor:
    """SoftWPMI/WPMI raw scores [C, M] in one product pass (``pmi_single_pass``), reporting progress in concepts."""
    M = text_emb.shape[0]
    done = [0.0, 0]

    def rows_done(frac: float) -> None:
        done[0] += frac * M
        step = min(M, round(done[0])) - done[1]
        if step > 0 and progress is not None:
            progress(step)
        done[1] += step

    score_all = pmi_single_pass(image_emb, text_emb, float(params["a"]), prep.idx, prep.rows,
                                membership_weights(name, params, image_emb.device), float(params["min_prob"]),
                                row_block, progress=rows_done)
    if done[1] < M and progress is not None:
        progress(M - done[1])
    return score_all


def _accumulator_blocks(score_all: torch.Tensor, lam: float, population, chunk: int):
    """(start, sim, raw score) for blocks of concepts, from the one-pass accumulator of raw scores."""
    for s in range(0, score_all.shape[1], chunk):
        score = score_all[:, s : s + chunk]
        yield s, population_correction(score, lam, population), score


def _kernel_blocks(name, params, q, image_emb, text_emb, prep: LayerPrep, chunk: int, population, with_score: bool):
    """(start, sim, tie-breaker or None) for blocks of concepts, each scored by the method's kernel."""
    method = METHODS[name]
    kw = dict(params, **prep.kw)
    if method.pmi:
        log_z = log_softmax_denominator(image_emb, text_emb, float(params["a"]), chunk, prep.rows)
        kw.update(context=PmiContext(prep.idx, log_z, prep.rows, population), return_score=with_score)
    for s in range(0, text_emb.shape[0], chunk):
        out = method.kernel(q, image_emb, text_emb[s : s + chunk], **kw)
        sim, tie = out if (method.pmi and with_score) else (out, None)
        yield s, sim, tie


def _merge_blocks(blocks, C: int, k: int, quantize: bool, device, progress=None) -> LayerScores:
    """Each neuron's running top ``k`` over blocks of (start, sim, tie-breaker or None) (``_topk_stable``)."""
    best_v = torch.full((C, 0), -math.inf, dtype=torch.float64, device=device)
    best_t = torch.zeros((C, 0), dtype=torch.float64, device=device)
    best_i = torch.zeros((C, 0), dtype=torch.long, device=device)
    for s, sim, tie in blocks:
        n = sim.shape[1]
        cand_v = torch.cat([best_v, sim], dim=1)
        cand_t = torch.cat([best_t, torch.zeros_like(sim) if tie is None else tie], dim=1)
        cand_i = torch.cat([best_i, torch.arange(s, s + n, device=device).expand(C, -1)], dim=1)
        del sim, tie
        order = _topk_stable(cand_v, cand_t, cand_i, k, quantize=quantize)
        best_v, best_t, best_i = (torch.gather(x, 1, order) for x in (cand_v, cand_t, cand_i))
        del cand_v, cand_t, cand_i
        if progress is not None:
            progress(n)
    return LayerScores(indices=best_i, values=best_v)


#: Similarities closer than this count as tied (far above float64 noise, far below real differences).
TIE_TOLERANCE = 1e-9


def _topk_stable(values: torch.Tensor, tiebreak: torch.Tensor, indices: torch.Tensor, k: int, quantize: bool = True) -> torch.Tensor:
    """Positions of the k best per row, ranked by (value, tiebreak, -index).

    With ``quantize`` (SoftWPMI, WPMI) values within TIE_TOLERANCE are tied; otherwise
    only equal values are. SoftWPMI and WPMI tie often in layers with few
    neurons: every concept that one neuron dominates scores λ·log C, whatever the concept.
    Such ties go to the concept with the higher raw score_k(m) (the neuron's own
    log-likelihood of the concept over its top images), then to the lower concept index,
    so the label never depends on the order of the concept list.
    """
    W = values.shape[1]
    if W > 2 * k + 64:
        # Only values whose tie bucket reaches the k-th best's can be in the top k: sort
        # those few instead of the whole row (the set is the same top-m for every row).
        v = torch.nan_to_num(values, nan=-math.inf)
        kth = torch.topk(v, k, dim=1).values[:, -1:]
        bucket = (lambda x: torch.round(x / TIE_TOLERANCE)) if quantize else (lambda x: x)
        m = int((bucket(v) >= bucket(kth)).sum(dim=1).max())
        if m < W // 2:
            sel = torch.topk(v, m, dim=1).indices
            sub = _topk_stable(torch.gather(values, 1, sel), torch.gather(tiebreak, 1, sel),
                               torch.gather(indices, 1, sel), k, quantize)
            return torch.gather(sel, 1, sub)
    # Stable sorts from the last key to the first.
    order = torch.argsort(indices, dim=1, stable=True)
    t = torch.nan_to_num(torch.gather(tiebreak, 1, order), nan=-math.inf)
    order = torch.gather(order, 1, torch.argsort(t, dim=1, descending=True, stable=True))
    v = torch.nan_to_num(torch.gather(values, 1, order), nan=-math.inf)
    bucket = torch.round(v / TIE_TOLERANCE) if quantize else v
    order = torch.gather(order, 1, torch.argsort(bucket, dim=1, descending=True, stable=True))
    return order[:, :k]


def score_extra_texts(
    name: str,
    q: torch.Tensor,
    image_emb: torch.Tensor,
    concept_emb: torch.Tensor,
    extra_emb: torch.Tensor,
    params: dict[str, Any],
    chunk: int | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    return_score: bool = False,
):
    """Yield (start, sim [C, n] float64) for blocks of ``extra_emb`` texts scored against the concept set ``concept_emb``.

    With ``return_score``: (start, sim, score), score being SoftWPMI/WPMI's raw score_k(t)
    (the neuron's log-likelihood of the text over its top images), None for the others.

    For SoftWPMI and WPMI, p(t | x) is the softmax over ``concept_emb`` (which should
    hold every text that competes, the scored ones included: e.g. the single concepts
    and all their compositions), and the λ·log p(t) term is estimated over all C
    neurons of the layer, exactly as in ``score_layer``. The other functions do not
    depend on the rest of the concept set. Memory as ``score_layer``: blocks of texts
    sized from ``max_memory``.
    """
    if name not in METHODS:
        resolve_params(name)
    method = METHODS[name]
    C = q.shape[1]
    q = q.to(image_emb.device, torch.float32)
    image_emb = image_emb.to(torch.float32).contiguous()
    extra_emb = extra_emb.to(torch.float32).contiguous()
    prep = prepare_layer(name, q, params)
    chunk = chunk or plan_chunk(name, prep.rows_read, C, max_memory)
    chunk = -(-chunk // TILE) * TILE
    if method.pmi:
        a = float(params["a"])
        log_z = log_softmax_denominator(image_emb, concept_emb.to(torch.float32).contiguous(), a, chunk, prep.rows)
        weights = membership_weights(name, params, q.device)
    kw = dict(params, **prep.kw)
    for s in range(0, extra_emb.shape[0], chunk):
        block = extra_emb[s : s + chunk]
        if method.pmi:
            p = probabilities(image_emb, block, a, log_z, prep.rows)
            score = pmi_scores(p, prep.idx, weights, float(params["min_prob"]))
            sim = population_correction(score, float(params["lam"]))
            yield (s, sim, score) if return_score else (s, sim)
        else:
            sim = method.kernel(q, image_emb, block, **kw)
            yield (s, sim, None) if return_score else (s, sim)
