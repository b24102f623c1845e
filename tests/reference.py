"""A slow, obviously-correct float64 reference of the five similarity functions.

Written from the formulas (METHOD.md restated in ``dissect/similarity.py``'s
docstrings), independently of ``dissect.similarity``: plain numpy float64 and
explicit Python loops wherever that makes the formula easier to check by eye.
The only torch use is ``torch.randperm`` for the rank-reorder baseline, because
its permutations are part of the documented definition (seeded torch.Generator).

    q  [N, C]  activations (neuron k's value on image i)
    I  [N, d]  L2-normalised image embeddings
    T  [M, d]  L2-normalised text embeddings
    P  [N, M]  P[i, m] = I_i . T_m, computed in float64

``reference_similarity(name, q, I, T, params)`` returns sim [C, M] float64, where
``params`` is the dict of ``dissect.similarity.resolve_params(name)``.

It is meant for small problems (a few hundred images, tens of concepts).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["reference_similarity", "concept_matrix", "top_images_stable", "reference_top"]


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def concept_matrix(I, T) -> np.ndarray:
    """P[i, m] = sum_d I[i, d] * T[m, d], in float64."""
    I, T = _f64(I), _f64(T)
    return I @ T.T


def logsumexp(values) -> float:
    """log(sum(exp(v))) of a 1-D sequence, shifted by its maximum for stability."""
    values = np.asarray(values, dtype=np.float64)
    top = float(np.max(values))
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.sum(np.exp(values - top))))


def concept_probabilities(P: np.ndarray, a: float) -> np.ndarray:
    """p[i, m] = p(t_m | x_i) = exp(a P[i, m]) / sum_m' exp(a P[i, m']), row by row."""
    N, M = P.shape
    p = np.empty((N, M), dtype=np.float64)
    for i in range(N):
        log_z = logsumexp(a * P[i, :])
        for m in range(M):
            p[i, m] = math.exp(a * P[i, m] - log_z)
    return p


def top_images_stable(q_column: np.ndarray, n: int) -> list[int]:
    """Indices of the n largest values, largest first; equal values: lower index first."""
    order = sorted(range(len(q_column)), key=lambda i: (-float(q_column[i]), i))
    return order[:n]


def population_correction(scores: np.ndarray, lam: float) -> np.ndarray:
    """sim[k, m] = score[k, m] - lam * (logsumexp_j score[j, m] - log C)."""
    C, M = scores.shape
    sim = np.empty_like(scores)
    for m in range(M):
        log_pt = logsumexp(scores[:, m]) - math.log(C)
        for k in range(C):
            sim[k, m] = scores[k, m] - lam * log_pt
    return sim


# ---------------------------------------------------------------------------
# The five functions
# ---------------------------------------------------------------------------

def softwpmi(q, P, *, a, lam, top_k, p_start, p_end, min_prob):
    N, C = q.shape
    M = P.shape[1]
    p = concept_probabilities(P, a)
    w = [p_start - (r / top_k) * (p_start - p_end) for r in range(top_k)]
    scores = np.zeros((C, M), dtype=np.float64)
    for k in range(C):
        top = top_images_stable(q[:, k], top_k)
        for m in range(M):
            total = 0.0
            for r, i in enumerate(top):
                total += math.log(1.0 + w[r] * (p[i, m] - 1.0) + min_prob)
            scores[k, m] = total
    return population_correction(scores, lam)


def wpmi(q, P, *, a, lam, top_k, min_prob):
    N, C = q.shape
    M = P.shape[1]
    p = concept_probabilities(P, a)
    scores = np.zeros((C, M), dtype=np.float64)
    for k in range(C):
        top = top_images_stable(q[:, k], top_k)
        for m in range(M):
            scores[k, m] = sum(math.log(p[i, m] + min_prob) for i in top)
    return population_correction(scores, lam)


def cos(q, P):
    C, M = q.shape[1], P.shape[1]
    sim = np.empty((C, M), dtype=np.float64)
    for k in range(C):
        u = q[:, k]
        for m in range(M):
            v = P[:, m]
            sim[k, m] = float(np.dot(u, v)) / (math.sqrt(float(np.dot(u, u))) * math.sqrt(float(np.dot(v, v))))
    return sim


def _centre_cube_normalise(x: np.ndarray, min_norm: float) -> np.ndarray:
    x = x - np.mean(x)
    x = x * x * x
    return x / max(math.sqrt(float(np.dot(x, x))), min_norm)


def cos_cubed(q, P, *, min_norm):
    C, M = q.shape[1], P.shape[1]
    sim = np.empty((C, M), dtype=np.float64)
    for k in range(C):
        u = _centre_cube_normalise(q[:, k], min_norm)
        for m in range(M):
            v = _centre_cube_normalise(P[:, m], min_norm)
            sim[k, m] = float(np.dot(u, v))
    return sim


def ascending_ranks(c: np.ndarray) -> list[int]:
    """rho_j = #{l : c_l < c_j} + #{l < j : c_l == c_j}: 0-based ascending rank, stable for ties."""
    n = len(c)
    return [sum(1 for l in range(n) if c[l] < c[j]) + sum(1 for l in range(j) if c[l] == c[j]) for j in range(n)]


def rank_reorder(q, P, *, p, top_fraction, scale_p, n_perm, seed):
    import torch  # only for the documented seeded permutations

    N, C = q.shape
    M = P.shape[1]
    n = max(2, math.floor(N * top_fraction))
    g = torch.Generator().manual_seed(int(seed))
    sim = np.empty((C, M), dtype=np.float64)
    tops, values = [], []
    baseline = []
    for k in range(C):  # all of the baselines first, neuron after neuron, from one generator
        top = top_images_stable(q[:, k], n)
        t = [float(q[i, k]) for i in top]          # descending
        s = list(reversed(t))                      # ascending
        diffs = []
        for _ in range(n_perm):
            perm = torch.randperm(n, generator=g).tolist()
            for r in range(n):
                diffs.append(abs(s[r] - s[perm[r]]) ** p)
        # dissect's documented convention: the baseline is floored at 1e-30 so that a neuron
        # whose top activations are all equal scores 0 rather than 0/0.
        baseline.append(max(sum(diffs) / len(diffs), 1e-30))
        tops.append(top)
        values.append((t, s))
    for k in range(C):
        top, (t, s) = tops[k], values[k]
        for m in range(M):
            c = np.array([P[i, m] for i in top])
            rho = ascending_ranks(c)
            err = sum(abs(t[j] - s[rho[j]]) ** p for j in range(n)) / n
            mean_c = float(sum(c)) / n
            err = err / baseline[k] / max(mean_c, 1e-6) ** scale_p
            sim[k, m] = -err
    return sim


_FUNCTIONS = {
    "softwpmi": softwpmi,
    "wpmi": wpmi,
    "cos": cos,
    "cos-cubed": cos_cubed,
    "rank-reorder": rank_reorder,
}


def reference_similarity(name: str, q, I, T, params: dict) -> np.ndarray:
    """sim [C, M] float64 of similarity ``name`` between the columns of q and the concepts."""
    q = _f64(q)
    P = concept_matrix(I, T)
    assert q.ndim == 2 and P.shape[0] == q.shape[0], (q.shape, P.shape)
    fn = _FUNCTIONS[name]
    return fn(q, P, **params)


def reference_top(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices [C, k] of each row's k largest values, largest first; ties: lower concept index."""
    out = []
    for row in sim:
        order = sorted(range(len(row)), key=lambda m: (-float(row[m]), m))
        out.append(order[:k])
    return np.array(out, dtype=np.int64)
