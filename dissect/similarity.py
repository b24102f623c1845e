"""Similarity functions between neuron activation patterns and concepts.

Pure tensor kernels: tensors in, scores out. No files, no printing, no global
device state. Every function here works on whatever device its inputs live on.

Notation (METHOD.md, paper §3):
    I      [N, d]  L2-normalised CLIP image embeddings of the probe images
    T      [M, d]  L2-normalised CLIP text embeddings of the concepts
    P      [N, M]  P[i, m] = I_i · T_m, the concept-activation matrix
    q      [N, C]  q[i, k] = summary of neuron k's activation on image i

``scoring.score_layer`` is the driver used by ``dissect label``: it streams
over blocks of concepts (P is never held whole) and returns each neuron's
top-K concepts. The per-function kernels here take one block of concepts and
are what the float64 reference tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import UsageError

# Paper hyperparameters (METHOD.md; reference code defaults). Each method's row of ``METHODS`` (below) says
# what else score_layer needs to know about it.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "softwpmi": {"a": 10.0, "lam": 1.0, "top_k": 100, "p_start": 0.998, "p_end": 0.97, "min_prob": 1e-7},
    "wpmi": {"a": 2.0, "lam": 0.6, "top_k": 28, "min_prob": 1e-7},
    "rank-reorder": {"p": 3.0, "top_fraction": 0.05, "scale_p": 0.5, "n_perm": 5, "seed": 0},
    "cos": {},
    "cos-cubed": {"min_norm": 1e-3},
}

SIMILARITIES = tuple(DEFAULT_PARAMS)

_INT_PARAMS = {"top_k", "n_perm", "seed"}


def resolve_params(name: str, overrides: dict[str, str | float | int] | None = None) -> dict[str, Any]:
    """Default hyperparameters of ``name`` updated with ``overrides`` (validated)."""
    if name not in DEFAULT_PARAMS:
        raise UsageError(
            f"unknown similarity function {name!r}",
            hint=f"choose one of: {', '.join(SIMILARITIES)}",
        )
    params = dict(DEFAULT_PARAMS[name])
    for key, raw in (overrides or {}).items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise UsageError(f"{name} has no parameter {key!r}", hint=f"its parameters are: {known}")
        try:
            value: Any = int(raw) if key in _INT_PARAMS else float(raw)
        except (TypeError, ValueError):
            raise UsageError(f"parameter {key}={raw!r} is not a number") from None
        if key == "top_k" and value < 1:
            raise UsageError(f"{key} must be at least 1, got {value}")
        if key == "top_fraction" and not 0.0 < value <= 1.0:
            raise UsageError(f"top_fraction must be in (0, 1], got {value}")
        if key == "n_perm" and value < 1:
            raise UsageError(f"n_perm must be at least 1, got {value}")
        if not math.isfinite(value):
            raise UsageError(f"parameter {key} must be finite, got {value}")
        params[key] = value
    _check_ranges(name, params)
    return params


def _check_ranges(name: str, params: dict[str, Any]) -> None:
    """Reject values that would make scores NaN or meaningless."""
    rules = {
        "a": (lambda v: v > 0, "must be positive"),
        "lam": (lambda v: v >= 0, "must be non-negative"),
        "min_prob": (lambda v: v >= 0, "must be non-negative"),
        "min_norm": (lambda v: v > 0, "must be positive"),
        "p": (lambda v: v > 0, "must be positive"),
        "scale_p": (lambda v: v >= 0, "must be non-negative"),
        "seed": (lambda v: v >= 0, "must be non-negative"),
    }
    for key, (ok, what) in rules.items():
        if key in params and not ok(params[key]):
            raise UsageError(f"{name} parameter {key} {what}, got {params[key]}")
    if "p_start" in params and not 0 < params["p_end"] <= params["p_start"] <= 1:
        raise UsageError(
            f"softwpmi needs 0 < p_end <= p_start <= 1, got p_start={params['p_start']}, p_end={params['p_end']}",
            hint="they are the probabilities that the top images belong to the neuron's example set",
        )


def examples_needed(name: str, params: dict[str, Any], n_images: int) -> int:
    """How many top-activating images per neuron the function uses (0 = all)."""
    examples = METHODS[name].examples
    if examples == "top_k":
        return int(params["top_k"])
    if examples == "top_fraction":
        return max(2, int(n_images * params["top_fraction"]))
    return 0


def check_probe_size(name: str, params: dict[str, Any], n_images: int) -> None:
    """Refuse a probe smaller than the number of top images the function uses per neuron."""
    need = examples_needed(name, params, n_images)
    if need > n_images:
        raise UsageError(
            f"the probe has {n_images} images but {name} uses each neuron's top {need}",
            hint=f"use a larger probe, or --param top_k={n_images} (fewer examples per neuron than the paper)",
        )


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def top_images(q: torch.Tensor, k: int, block: int = 256) -> torch.Tensor:
    """Indices [k, C] of each neuron's k most activating images, most activating first.

    A stable sort makes ties resolve to the lower image index, so results do not
    depend on the device or the order of other neurons. Neurons are sorted ``block``
    at a time, so the sort's working memory is N·block, not N·C.
    """
    N, C = q.shape
    out = torch.empty((k, C), dtype=torch.long, device=q.device)
    for s in range(0, C, block):
        qb = q[:, s : s + block]
        if k < N:
            # topk is much cheaper than a full sort but orders ties arbitrarily: use it for
            # the columns whose top k+1 values are all distinct, a stable sort for the rest.
            vals, idx = torch.topk(qb, k + 1, dim=0)
            tied = (vals[1:] == vals[:-1]).any(dim=0)
            out[:, s : s + qb.shape[1]] = idx[:k]
            if tied.any():
                cols = tied.nonzero().flatten()
                out[:, s + cols] = torch.sort(qb[:, cols], dim=0, descending=True, stable=True).indices[:k]
        else:
            out[:, s : s + qb.shape[1]] = torch.sort(qb, dim=0, descending=True, stable=True).indices[:k]
    return out


def softwpmi_weights(k: int, p_start: float, p_end: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """w_r = p_start - (r / k) (p_start - p_end), r = 0..k-1 (reference code)."""
    r = torch.arange(k, dtype=dtype, device=device)
    return p_start - r / k * (p_start - p_end)


#: Concepts per matrix product. Every I·Tᵀ is taken in tiles of exactly ROW_TILE images
#: by TILE concepts (the last ones zero-padded), so a cosine is bit-identical whatever
#: block, --chunk, row block or position in the concept list it is computed in.
TILE = 256
#: Images per matrix product (see TILE). GEMM libraries switch kernels for few rows.
ROW_TILE = 1024


def pad_concepts(T: torch.Tensor) -> torch.Tensor:
    """``T`` as float32 with zero rows appended up to a multiple of TILE (no copy when there is nothing to do)."""
    T = T.to(torch.float32)
    return torch.cat([T, T.new_zeros(-T.shape[0] % TILE, T.shape[1])]) if T.shape[0] % TILE else T


def cosines(I: torch.Tensor, T: torch.Tensor, row_tile: int | None = ROW_TILE, n_concepts: int | None = None) -> torch.Tensor:
    """P = I · Tᵀ in float32 (the embeddings' own precision), computed tile by tile.

    GEMM libraries round differently for different matrix shapes (a product over 7 rows
    is not bit-identical to the same rows inside a product over 1,024); fixing the shape
    of every product makes the result independent of how rows and concepts are blocked.
    ``row_tile=None`` takes all rows in each product (rank reorder: a few rows per
    neuron, always the same ones, where padding to ROW_TILE would multiply the work).
    ``n_concepts``: ``T`` is already ``pad_concepts``-padded and holds this many real rows.
    """
    I = I.to(torch.float32)
    N, M = I.shape[0], T.shape[0] if n_concepts is None else n_concepts
    out = torch.empty((N, M), dtype=torch.float32, device=I.device)
    T = pad_concepts(T)
    rt = row_tile or max(1, N)
    for r in range(0, N, rt):
        i = I[r : r + rt]
        nr = i.shape[0]
        if nr < rt:
            i = torch.cat([i, i.new_zeros(rt - nr, i.shape[1])])
        for s in range(0, M, TILE):
            n = min(TILE, M - s)
            if nr == rt and n == TILE:  # a whole tile: the product writes straight into ``out``
                torch.mm(i, T[s : s + TILE].T, out=out[r : r + nr, s : s + n])
            else:
                out[r : r + nr, s : s + n] = (i @ T[s : s + TILE].T)[:nr, :n]
    return out


#: Up to this temperature the softmax is taken in float32 with a fixed shift (see below).
_F32_SOFTMAX_MAX_A = 40.0
#: Image rows per product when the rows are gathered or the float64 sums are taken.
_ROW_BLOCK = 16384


def _row_blocks(I: torch.Tensor, rows: torch.Tensor | None):
    """(start, image-embedding block) over ``rows`` of ``I`` (all rows when None), _ROW_BLOCK at a time."""
    n = I.shape[0] if rows is None else rows.numel()
    for r in range(0, n, _ROW_BLOCK):
        yield r, (I[r : r + _ROW_BLOCK] if rows is None else I[rows[r : r + _ROW_BLOCK]])


def log_softmax_denominator(I: torch.Tensor, T: torch.Tensor, a: float, chunk: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """log_z[i] = logsumexp_m(a · P[i, m]) for the ``rows`` of ``I`` (all when None), streamed over blocks of T.

    Since |P| ≤ 1, exp(a·P − a) lies in [e^(−2a), 1]: for a ≤ 40 it is computed in
    float32 without overflow or underflow, with a shift that does not depend on the
    block, so every term is bit-identical wherever its concept sits; the terms are
    summed in float64. Larger ``a`` falls back to float64 throughout. Rows are taken
    _ROW_BLOCK at a time, so neither the selected rows nor the float64 sums are held whole.
    """
    total = torch.zeros(I.shape[0] if rows is None else rows.numel(), dtype=torch.float64, device=I.device)
    buf64 = None
    for s in range(0, T.shape[0], chunk):
        for r, I_blk in _row_blocks(I, rows):
            P = cosines(I_blk, T[s : s + chunk])
            if a <= _F32_SOFTMAX_MAX_A:
                # Into a reused float64 buffer, then summed: a float64 sum of float32 input
                # converts on the fly and is several times slower (same sums).
                if buf64 is None or buf64.numel() < P.numel():
                    buf64 = torch.empty(P.numel(), dtype=torch.float64, device=I.device)
                total[r : r + P.shape[0]] += buf64[: P.numel()].view(P.shape).copy_(P.mul_(a).sub_(a).exp_()).sum(dim=1)
            else:
                total[r : r + P.shape[0]] += torch.exp(P.to(torch.float64).mul_(a).sub_(a)).sum(dim=1)
    return total.log_().add_(a)


def probabilities(I: torch.Tensor, T: torch.Tensor, a: float, log_z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """p(t_m | x_i) = exp(a · P[i, m] − log_z[i]) for the ``rows`` of ``I`` and a block of concepts, float32.

    Computed as exp(a·P − a) · exp(a − log_z): each factor is exact to float32
    rounding (relative error ~1e-7) and the first is the same term the denominator summed.
    ``log_z`` holds one value per selected row.
    """
    scale = torch.exp(a - log_z).to(torch.float32)
    if rows is None and a <= _F32_SOFTMAX_MAX_A:  # all rows: in place, no gather, no copy
        return cosines(I, T).mul_(a).sub_(a).exp_().mul_(scale[:, None])
    out = torch.empty((log_z.shape[0], T.shape[0]), dtype=torch.float32, device=I.device)
    for r, I_blk in _row_blocks(I, rows):
        P = cosines(I_blk, T)
        n = P.shape[0]
        if a <= _F32_SOFTMAX_MAX_A:
            out[r : r + n] = P.mul_(a).sub_(a).exp_().mul_(scale[r : r + n, None])
        else:
            out[r : r + n] = torch.exp(P.to(torch.float64).mul_(a).sub_(log_z[r : r + n, None]))
    return out


def pmi_terms(weights: torch.Tensor | None, K: int, min_prob: float, device=None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """How each neuron's log terms are taken: (factor [K] float32, shift [K] float32 or None, constant).

    log(1 + w_r (p - 1) + ε) = log(s_r) + log1p(c_r p),  s_r = 1 - w_r + ε,  c_r = w_r / s_r
    (WPMI: w_r = 1). The log(s_r) sum to the same constant Σ_r log s_r for every neuron
    and concept, so only the small, non-negative log1p terms are computed and summed:
    no cancellation near −900 (METHOD.md's numerical note) and one multiply and one
    log1p per term. When some s_r is 0 (ε = 0 and w_r = 1) the direct form
    log(w_r p + s_r) is used instead: the factor is then w_r, the shift s_r and the constant 0.
    """
    w = torch.ones(K, dtype=torch.float64, device=device) if weights is None else weights.to(torch.float64)
    s = 1 - w + min_prob
    if bool((s > 0).all()):
        return (w / s).to(torch.float32), None, float(torch.log(s).sum())
    return w.to(torch.float32), s.to(torch.float32), 0.0


def _apply_terms(g: torch.Tensor, factor: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """In place: g ← log1p(factor·g) (shift None) or log(factor·g + shift); factor broadcasts against g."""
    g.mul_(factor)
    return g.log1p_() if shift is None else g.add_(shift).log_()


def pmi_scores(
    p: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None, min_prob: float, block_elems: int = 1 << 22
) -> torch.Tensor:
    """score[k, m] = Σ_r log(1 + w_r (p(t_m|x_{idx[r,k]}) - 1) + min_prob), float64.

    ``p`` [U, Mc] holds p(t_m | x) (float32) for the rows that ``idx`` [K, C] points into.
    With ``weights`` None the membership is hard (WPMI): Σ_r log(p + min_prob).
    The terms are float32 (see ``pmi_terms``), their sums float64. Neurons are processed
    in blocks whose gathered [K, b, Mc] working set holds at most ``block_elems`` numbers,
    in buffers reused in place (no per-block allocations).
    """
    K, C = idx.shape
    Mc = p.shape[1]
    factor, shift, const = pmi_terms(weights, K, min_prob, p.device)
    factor = factor.view(K, 1, 1)
    shift = None if shift is None else shift.view(K, 1, 1)
    b = max(1, min(C, block_elems // max(1, K * Mc)))
    buf = torch.empty((K * b, Mc), dtype=p.dtype, device=p.device)
    buf64 = torch.empty((K * b, Mc), dtype=torch.float64, device=p.device)
    out = torch.empty((C, Mc), dtype=torch.float64, device=p.device)
    for s in range(0, C, b):
        block = idx[:, s : s + b]                                        # [K, bb]
        bb = block.shape[1]
        g = torch.index_select(p, 0, block.reshape(-1), out=buf[: K * bb]).view(K, bb, Mc)
        _apply_terms(g, factor, shift)
        # A float64 sum of float32 input converts on the fly, slowly; copying into a
        # reused float64 buffer first is several times faster and gives the same sums.
        g64 = buf64[: K * bb].view(K, bb, Mc).copy_(g)
        torch.sum(g64, dim=0, out=out[s : s + bb])
    return out.add_(const)


def pmi_single_pass(
    I: torch.Tensor,
    T: torch.Tensor,
    a: float,
    idx: torch.Tensor,
    rows: torch.Tensor | None,
    weights: torch.Tensor | None,
    min_prob: float,
    row_block: int,
    progress: Callable[[float], None] | None = None,
    pair_elems: int = 1 << 22,
) -> torch.Tensor:
    """score[k, m] for all concepts at once, with one product pass over the example rows.

    The two-pass path needs log_z (every concept) before any probability is known, so it
    takes the products twice. Here the rows are walked in blocks of ``row_block``: a
    block's products against *all* concepts give its log_z and then, from the same
    exponentials, its probabilities, whose log terms are added into a [C, M] float64
    accumulator for the neurons that use those rows. Same float32 terms as
    ``pmi_scores``, each neuron's terms added in image order (so the result does not
    depend on ``row_block``); memory C·M·8 + row_block·M·4 bytes plus buffers.
    ``progress`` gets the fraction of rows done since the last call.
    """
    K, C = idx.shape
    M = T.shape[0]
    U = I.shape[0] if rows is None else rows.numel()
    factor, shift_r, const = pmi_terms(weights, K, min_prob, I.device)
    # Every (rank r, neuron k) pair, ordered by the image row it reads.
    flat = idx.reshape(-1)                                               # pair r*C + k
    order = torch.sort(flat, stable=True).indices
    pair_row = flat[order]
    pair_unit = order % C
    pair_factor = factor[order // C]
    pair_shift = None if shift_r is None else shift_r[order // C]
    bounds = torch.searchsorted(pair_row, torch.arange(0, U + row_block, row_block, device=I.device)).tolist()

    T_pad = pad_concepts(T)  # once, not per row block
    acc = torch.zeros((C, M), dtype=torch.float64, device=I.device)
    sub = max(1, min(M, 4096))
    buf64 = torch.empty((min(row_block, U), sub), dtype=torch.float64, device=I.device)
    n_pairs = max(1, pair_elems // max(1, M))
    gbuf = torch.empty((n_pairs, M), dtype=torch.float32, device=I.device)
    g64 = torch.empty((n_pairs, M), dtype=torch.float64, device=I.device)
    for bi, r0 in enumerate(range(0, U, row_block)):
        I_blk = I[r0 : r0 + row_block] if rows is None else I[rows[r0 : r0 + row_block]]
        R = I_blk.shape[0]
        E = cosines(I_blk, T_pad, n_concepts=M).mul_(a).sub_(a).exp_()  # exp(a·P − a), [R, M]
        z = torch.zeros(R, dtype=torch.float64, device=I.device)
        for c0 in range(0, M, sub):
            part = E[:, c0 : c0 + sub]
            z += buf64[:R, : part.shape[1]].copy_(part).sum(dim=1)
        log_z = z.log_().add_(a)
        E.mul_(torch.exp(a - log_z).to(torch.float32)[:, None])         # p(t_m | x) for the block's rows
        lo, hi = bounds[bi], bounds[bi + 1]
        for p0 in range(lo, hi, n_pairs):
            p1 = min(hi, p0 + n_pairs)
            g = torch.index_select(E, 0, pair_row[p0:p1] - r0, out=gbuf[: p1 - p0])
            _apply_terms(g, pair_factor[p0:p1, None], None if pair_shift is None else pair_shift[p0:p1, None])
            acc.index_add_(0, pair_unit[p0:p1], g64[: p1 - p0].copy_(g))
        del E
        if progress is not None:
            progress(R / U)
    return acc.add_(const)


def example_rows(idx: torch.Tensor, n_images: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The image rows ``idx`` [K, C] uses and ``idx`` renumbered into them.

    Returns (None, idx) when more than 3/4 of the images are used: reading all rows then
    costs little more than selecting them.
    """
    # torch.unique(idx, return_inverse=True), without its sort's copies of idx (an SAE's [K, 250,000] indices).
    used = torch.zeros(n_images, dtype=torch.bool, device=idx.device)
    used[idx.reshape(-1)] = True
    rows = used.nonzero().flatten()
    if rows.numel() > 0.75 * n_images:
        return None, idx
    renumber = torch.cumsum(used, 0) - 1
    return rows, renumber[idx]


def population_correction(scores: torch.Tensor, lam: float, population: Callable | None = None) -> torch.Tensor:
    """sim[k, m] = score[k, m] - λ (logsumexp_j score[j, m] - log C) over the layer's C neurons.

    ``population`` replaces the local estimate of log p(t_m) = logsumexp_j score[j, m] − log C,
    e.g. with one that combines the neurons held by other processes (``distributed_population``).
    """
    if population is not None:
        return scores - lam * population(scores)
    C = scores.shape[0]
    log_pt = torch.logsumexp(scores, dim=0, keepdim=True) - math.log(C)
    return scores - lam * log_pt


def distributed_population(total_neurons: int):
    """log p(t_m) over a layer whose neurons are split across torch.distributed ranks.

    Each rank's logsumexp over its own neurons is all-gathered and combined with another
    logsumexp: the same value as on one process, up to float64 rounding of the order.
    Every rank must call it for the same concept blocks in the same order.
    """
    import torch.distributed as dist

    def log_pt(scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0]:
            local = torch.logsumexp(scores, dim=0, keepdim=True)
        else:
            local = torch.full((1, scores.shape[1]), -math.inf, dtype=scores.dtype, device=scores.device)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.logsumexp(torch.cat(parts), dim=0, keepdim=True) - math.log(total_neurons)

    return log_pt


class BlockPopulation:
    """log p(t_m) of a layer whose neurons are scored in blocks (a layer too wide for the memory budget).

    A first pass over every block of neurons ``collect``s, for each block of concepts, the
    logsumexp of the raw scores over the block's neurons; later passes ``apply`` the
    combined value: the same estimate as over the whole layer at once, to float64 rounding
    of the order (as ``distributed_population`` combines ranks). Every pass must visit the
    same blocks of concepts in the same order (the same ``chunk``, two passes).
    """

    def __init__(self, total_neurons: int):
        self.total = total_neurons
        self.parts: list[torch.Tensor] = []

    def collect(self):
        step = [0]

        def log_pt(scores: torch.Tensor) -> torch.Tensor:
            local = torch.logsumexp(scores, dim=0, keepdim=True)
            i, step[0] = step[0], step[0] + 1
            if i < len(self.parts):
                self.parts[i] = torch.logaddexp(self.parts[i], local)
            else:
                self.parts.append(local)
            return torch.zeros_like(local)  # this pass's similarities are not used

        return log_pt

    def apply(self):
        step = [0]

        def log_pt(scores: torch.Tensor) -> torch.Tensor:
            i, step[0] = step[0], step[0] + 1
            return self.parts[i].to(scores.device) - math.log(self.total)

        return log_pt


# ---------------------------------------------------------------------------
# Kernels over one block of concepts. Each returns sim [C, Mc] in float64.
# ---------------------------------------------------------------------------

@dataclass
class PmiContext:
    """What SoftWPMI/WPMI's blocks of one layer share (``score_layer`` prepares it once per layer): the images some
    neuron uses (``rows``; None: all), each neuron's top images numbered into them (``idx``), the softmax denominator
    of each of those rows over *every* concept (``log_z``), and how log p(t) is estimated from a block's scores
    (``population``; None: over the neurons of ``q``)."""

    idx: torch.Tensor
    log_z: torch.Tensor
    rows: torch.Tensor | None = None
    population: Callable | None = None


def softwpmi(q, I, T, *, a, lam, top_k, p_start, p_end, min_prob, context: PmiContext | None = None, return_score=False):
    """SoftWPMI (paper §3.2, default similarity).

        p(t_m | x_i) = softmax_m(a · P[i, :])
        w_r          = p_start - (r / top_k)(p_start - p_end),  r = 0..top_k-1 over the
                       neuron's images sorted by activation, highest first
        score_k(m)   = Σ_r log(1 + w_r (p(t_m | x_r) - 1) + min_prob)
        sim_k(m)     = score_k(m) - λ (logsumexp_j score_j(m) - log C)

    ``q`` [N, C], ``I`` [N, d], ``T`` [Mc, d]: the whole concept set, or a block of it when
    ``context`` (the layer's top images and softmax denominator over every concept) is given.
    With ``return_score`` the raw score_k(m) comes back too (the tie-breaker of ``score_layer``).
    """
    w = softwpmi_weights(top_k, p_start, p_end, device=I.device)
    return _pmi(q, I, T, a, lam, top_k, w, min_prob, context, return_score)


def wpmi(q, I, T, *, a, lam, top_k, min_prob, context: PmiContext | None = None, return_score=False):
    """WPMI (paper App. A.1): hard membership of the top_k images.

        score_k(m) = Σ_{i ∈ top_k(k)} log(p(t_m | x_i) + min_prob),  p = softmax_m(a · P[i, :])
        sim_k(m)   = score_k(m) - λ (logsumexp_j score_j(m) - log C)
    """
    return _pmi(q, I, T, a, lam, top_k, None, min_prob, context, return_score)


def _pmi(q, I, T, a, lam, top_k, weights, min_prob, context: PmiContext | None, return_score):
    """The body SoftWPMI (soft ``weights``) and WPMI (``weights`` None) share; without ``context`` it is derived
    here from ``q``, with ``T`` as the whole concept set."""
    if context is None:
        rows, idx = example_rows(top_images(q, top_k), I.shape[0])
        context = PmiContext(idx, log_softmax_denominator(I, T, a, 4096, rows), rows)
    score = pmi_scores(probabilities(I, T, a, context.log_z, context.rows), context.idx, weights, min_prob)
    sim = population_correction(score, lam, context.population)
    return (sim, score) if return_score else sim


def cos(q, I, T):
    """cos: sim_k(m) = q_k · P[:, m] / (‖q_k‖ ‖P[:, m]‖), over all N images (no centring)."""
    return _cos_of(q, cosines(I, T))


def _cos_of(q, P):
    P = P.to(torch.float64)
    qn = q.to(torch.float64)
    qn = qn / qn.norm(dim=0, keepdim=True).clamp_min(1e-12)
    P = P / P.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return qn.T @ P


def _centre_cube(x: torch.Tensor, min_norm: float) -> torch.Tensor:
    x = x - x.mean(dim=0, keepdim=True)
    x = x**3
    return x / x.norm(dim=0, keepdim=True).clamp_min(min_norm)


def cos_cubed(q, I, T, *, min_norm):
    """cos-cubed: centre q_k and P[:, m] over images, cube elementwise, then cosine.

        u = (q_k - mean q_k)^3 / max(‖·‖, min_norm),  v = (P[:, m] - mean P[:, m])^3 / max(‖·‖, min_norm)
        sim_k(m) = u · v
    """
    return _cos_cubed_of(q, cosines(I, T), min_norm)


def _cos_cubed_of(q, P, min_norm):
    return _centre_cube(q.to(torch.float64), min_norm).T @ _centre_cube(P.to(torch.float64), min_norm)


def rank_reorder_baseline(sorted_vals: torch.Tensor, p: float, n_perm: int, seed: int, unit_offset: int = 0) -> torch.Tensor:
    """Per-neuron random-permutation baseline, deterministic in ``seed``.

    ``sorted_vals`` [n, C] holds each neuron's top-n activations, highest first.
    baseline_k = mean over r and j of |s_r - s_{π_j(r)}|^p, with s the ascending values
    and π_1..π_{n_perm} permutations drawn, neuron after neuron in unit order, from one
    torch.Generator seeded with ``seed`` (so the result does not depend on chunking),
    floored at 1e-30 so that a neuron with constant top activations scores 0, not NaN.
    ``unit_offset``: the columns are units offset.. of a larger layer (its other units'
    draws are skipped, so a slice gets the same baseline as in the whole layer).
    """
    n, C = sorted_vals.shape
    g = torch.Generator().manual_seed(int(seed))
    for _ in range(unit_offset * n_perm):
        torch.randperm(n, generator=g)
    asc = torch.flip(sorted_vals, dims=[0]).to(torch.float64)
    perms = torch.stack([torch.stack([torch.randperm(n, generator=g) for _ in range(n_perm)]) for _ in range(C)])
    perms = perms.to(asc.device)                                    # [C, n_perm, n]
    out = torch.empty(C, dtype=torch.float64, device=asc.device)
    for k in range(C):
        diff = asc[:, k].unsqueeze(0) - asc[:, k][perms[k]]         # [n_perm, n]
        out[k] = diff.abs().pow(p).mean()
    # Zero only when the top activations are all equal (or n is tiny and every draw was the
    # identity). The baseline scales a neuron's scores, never reorders them; a floor keeps
    # the scores finite instead of 0/0.
    return out.clamp_min(1e-30)


def rank_reorder(q, I, T, *, p, top_fraction, scale_p, n_perm, seed, idx=None, baseline=None, presence=None):
    """Rank reorder (paper App. A.1), negated so that higher is better.

    For neuron k with top-n images (n = ⌊N · top_fraction⌋) t_0 ≥ … ≥ t_{n-1} and ascending
    values s = flip(t): for concept m let c_j = P[i_j, m] over those images and ρ_j the
    ascending rank of c_j among them (stable). Then
        err_k(m) = mean_j |t_j - s_{ρ_j}|^p / baseline_k / max(mean_j c_j, 1e-6)^scale_p
        sim_k(m) = -err_k(m)
    The reference code divides by mean(c)^0.5 and yields NaN when that mean is negative;
    we clamp the mean at 1e-6 instead (real CLIP cosines are positive).
    ``presence`` [N, Mc] replaces the cosines P = I·Tᵀ (``I``, ``T`` are then unused).
    """
    N, C = q.shape
    n = max(2, int(N * top_fraction))
    if idx is None:
        idx = top_images(q, n)
    t = torch.gather(q, 0, idx).to(torch.float64)                   # [n, C] descending
    if baseline is None:
        baseline = rank_reorder_baseline(t, p, n_perm, seed)
    s = torch.flip(t, dims=[0])
    Mc = T.shape[0] if presence is None else presence.shape[1]
    out = torch.empty((C, Mc), dtype=torch.float64, device=q.device)
    for k in range(C):
        if presence is None:
            c = cosines(I[idx[:, k]], T, row_tile=None).to(torch.float64)  # [n, Mc]
        else:
            c = presence[idx[:, k]].to(torch.float64)
        ranks = torch.argsort(torch.argsort(c, dim=0, stable=True), dim=0, stable=True)
        reorg = s[:, k][ranks]                                      # [n, Mc]
        err = (t[:, k : k + 1] - reorg).abs().pow(p).mean(dim=0)
        out[k] = -(err / baseline[k] / c.mean(dim=0).clamp_min(1e-6).pow(scale_p))
    return out


def from_presence(name: str, q: torch.Tensor, presence: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """sim [C, M] of similarity ``name`` with a concept-presence matrix in place of CLIP's.

    ``presence`` [N, M] in [0, 1] holds each concept's presence on each image (ground-truth
    annotations, or the sanity tests' perturbed ones). Each function runs its own kernel on
    it (``Method.on_presence``): SoftWPMI and WPMI take it as p(t_m | x_i) (what the softmax
    over CLIP cosines estimates), cos, cos-cubed and rank reorder as the image-concept matrix P.
    """
    params = resolve_params(name, {k: v for k, v in params.items()} if params else None)  # refuses unknown names
    q = q.to(torch.float32) if q.dtype not in (torch.float32, torch.float64) else q
    return METHODS[name].on_presence(q, presence, params)


def _pmi_of(q, presence, params, soft: bool):
    k = min(int(params["top_k"]), q.shape[0])
    w = softwpmi_weights(k, params["p_start"], params["p_end"], device=q.device) if soft else None
    score = pmi_scores(presence.to(torch.float32).contiguous(), top_images(q, k), w, params["min_prob"])
    return population_correction(score, params["lam"])


def _rank_reorder_of(q, presence, params):
    rr = {k: params[k] for k in ("p", "top_fraction", "scale_p", "n_perm", "seed")}
    return rank_reorder(q, None, None, presence=presence, **rr)


@dataclass(frozen=True)
class Method:
    """What the drivers need to know about a similarity function, said once.

    ``examples``: the images it reads per neuron: "top_k" (each neuron's top ``top_k``:
    SoftWPMI, WPMI), "top_fraction" (rank reorder) or "all". ``pmi``: a softmax over the
    concept set with the λ·log p(t) population correction, whose raw score breaks ties
    (SoftWPMI, WPMI). ``soft``: soft membership weights of the top images (SoftWPMI).
    ``bytes_per_row``: working memory per image row and concept of a block (``plan_chunk``).
    ``on_presence``: the function run on a presence matrix in place of CLIP's (``from_presence``).
    """

    kernel: Callable[..., torch.Tensor]
    on_presence: Callable[..., torch.Tensor]
    examples: str = "all"
    pmi: bool = False
    soft: bool = False
    bytes_per_row: int = 24     # cos, cos-cubed and rank reorder keep a float64 copy of the products


METHODS: dict[str, Method] = {
    "softwpmi": Method(softwpmi, lambda q, p, prm: _pmi_of(q, p, prm, soft=True), examples="top_k", pmi=True, soft=True,
                       bytes_per_row=4),
    "wpmi": Method(wpmi, lambda q, p, prm: _pmi_of(q, p, prm, soft=False), examples="top_k", pmi=True, bytes_per_row=4),
    "rank-reorder": Method(rank_reorder, _rank_reorder_of, examples="top_fraction"),
    "cos": Method(cos, lambda q, p, prm: _cos_of(q, p)),
    "cos-cubed": Method(cos_cubed, lambda q, p, prm: _cos_cubed_of(q, p, prm["min_norm"])),
}
KERNELS: dict[str, Callable[..., torch.Tensor]] = {name: m.kernel for name, m in METHODS.items()}


def membership_weights(name: str, params: dict[str, Any], device=None) -> torch.Tensor | None:
    """SoftWPMI's weights of each neuron's top images (None: hard membership, or no top images)."""
    if not METHODS[name].soft:
        return None
    return softwpmi_weights(int(params["top_k"]), params["p_start"], params["p_end"], device=device)
