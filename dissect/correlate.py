"""What two layers share, from their activations on the same images: pure tensor and array kernels.

* :class:`CrossMoments` streams blocks of images of two layers X [N, m] and Y [N, n] into float64
  sums (each block's products in float32, its sums added in float64, the values shifted by the
  first block's means so that large means cancel before the products): the Pearson correlation of
  every unit of X with every unit of Y, and, with ``gram``, linear CKA (Kornblith et al. 2019)
  ``‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F)`` of the centred layers.
* :func:`best_matches`: each unit's most correlated unit of the other layer, both ways.
* :func:`assignment`: the one-to-one matching of highest total correlation (the Hungarian
  problem; shortest augmenting paths with potentials, vectorised over columns).

Nothing here reads a file (:mod:`dissect.compare` does).
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Columns of the Gram products computed at once (only the blocks on and above the diagonal are).
GRAM_BLOCK = 512


def add_gram(acc: torch.Tensor, x: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """``acc`` [m, m] += xᵀx of x [B, m], on and above the diagonal blocks only (about half a general product);
    :func:`symmetric` fills the rest once the sums are done."""
    m = x.shape[1]
    for i in range(0, m, block):
        xi = x[:, i : i + block]
        for j in range(i, m, block):
            acc[i : i + block, j : j + block] += xi.T @ x[:, j : j + block]


def symmetric(acc: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """The whole matrix of which :func:`add_gram` summed the blocks on and above the diagonal."""
    out = acc.clone()
    m = acc.shape[0]
    for i in range(0, m, block):
        for j in range(i + block, m, block):
            out[j : j + block, i : i + block] = acc[i : i + block, j : j + block].T
    return out


class CrossMoments:
    """Running sums of two layers over the same images, for their correlation and (``gram``) their CKA.

    One float32 product per block gives the cross sums and both layers' sums at once: each block is shifted into
    a buffer with a column of ones beside it, [x − a, 1]ᵀ [y − b, 1] (the buffers kept between blocks: a fresh
    tensor per block costs as much as the product on a small machine)."""

    def __init__(self, m: int, n: int, gram: bool = True, device=None):
        f64 = dict(dtype=torch.float64, device=device)
        self.m, self.n, self.count = int(m), int(n), 0
        self.shift_x: torch.Tensor | None = None
        self.shift_y: torch.Tensor | None = None
        self.p = torch.zeros((m + 1, n + 1), **f64)          # [Σ(x−a)(y−b)ᵀ, Σ(x−a); Σ(y−b)ᵀ, count]
        self.gx = torch.zeros((m, m), **f64) if gram else None    # Σ(x−a)(x−a)ᵀ, blocks on and above the diagonal
        self.gy = torch.zeros((n, n), **f64) if gram else None
        self.sxx = None if gram else torch.zeros(m, **f64)         # Σ(x−a)², without the Gram matrices
        self.syy = None if gram else torch.zeros(n, **f64)
        self._bx: torch.Tensor | None = None
        self._by: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None

    @property
    def sxy(self) -> torch.Tensor:
        return self.p[: self.m, : self.n]

    @property
    def sx(self) -> torch.Tensor:
        return self.p[: self.m, self.n]

    @property
    def sy(self) -> torch.Tensor:
        return self.p[self.m, : self.n]

    def _buffers(self, rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bx is None or self._bx.shape[0] < rows:
            self._bx = torch.empty((rows, self.m + 1), dtype=torch.float32, device=device)
            self._by = torch.empty((rows, self.n + 1), dtype=torch.float32, device=device)
            self._bx[:, self.m] = 1
            self._by[:, self.n] = 1
        return self._bx[:rows], self._by[:rows]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One block: ``x`` [B, m] and ``y`` [B, n], row i of both the same image."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.m or y.shape[1] != self.n:
            raise ValueError(f"blocks {tuple(x.shape)} and {tuple(y.shape)} for {self.m} x {self.n} units")
        if x.shape[0] == 0:
            return
        dev = self.p.device
        x, y = x.to(dev, torch.float32), y.to(dev, torch.float32)
        if self.shift_x is None:
            self.shift_x, self.shift_y = x.mean(dim=0), y.mean(dim=0)
        bx, by = self._buffers(int(x.shape[0]), dev)
        torch.sub(x, self.shift_x, out=bx[:, : self.m])
        torch.sub(y, self.shift_y, out=by[:, : self.n])
        self.count += int(x.shape[0])
        self.p += bx.T @ by
        xs, ys = bx[:, : self.m], by[:, : self.n]
        if self.gx is not None:               # the sums of squares are then the Gram matrices' diagonals
            add_gram(self.gx, xs)
            add_gram(self.gy, ys)
        else:                                 # squared into a scratch buffer kept between blocks
            self.sxx += torch.mul(xs, xs, out=self._scratch(xs)).sum(dim=0)
            self.syy += torch.mul(ys, ys, out=self._scratch(ys)).sum(dim=0)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        rows, cols = like.shape
        if self._sq is None or self._sq.numel() < rows * cols:
            self._sq = torch.empty(rows * max(self.m, self.n), dtype=torch.float32, device=like.device)
        return self._sq[: rows * cols].view(rows, cols)

    def _centred(self):
        n = self.count
        if n < 2:
            raise ValueError(f"need at least 2 images, got {n}")
        cxy = self.sxy - torch.outer(self.sx, self.sy) / n
        sxx, syy = (self.gx.diagonal(), self.gy.diagonal()) if self.gx is not None else (self.sxx, self.syy)
        vx = (sxx - self.sx ** 2 / n).clamp_min(0)
        vy = (syy - self.sy ** 2 / n).clamp_min(0)
        return cxy, vx, vy

    def correlation(self) -> torch.Tensor:
        """[m, n] float64 Pearson r; NaN where either unit is constant over the images."""
        cxy, vx, vy = self._centred()
        den = torch.sqrt(torch.outer(vx, vy))
        r = cxy / den
        r[den <= 0] = math.nan
        return r.clamp(-1.0, 1.0)

    def cka(self) -> float:
        """Linear CKA of the two layers (NaN without ``gram``, or where a layer is constant)."""
        if self.gx is None:
            return math.nan
        cxy, _, _ = self._centred()
        n = self.count
        cxx = symmetric(self.gx) - torch.outer(self.sx, self.sx) / n
        cyy = symmetric(self.gy) - torch.outer(self.sy, self.sy) / n
        den = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        return float((cxy ** 2).sum() / den) if den > 0 else math.nan


def best_matches(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's most correlated column and each column's most correlated row of ``r`` [m, n] (NaN ignored;
    -1 and NaN where a row or column is all NaN; ties to the lower index): ``(best_col, best_col_r, best_row,
    best_row_r)``."""
    filled = np.where(np.isnan(r), -np.inf, r)

    def along(a: np.ndarray, axis: int):
        idx = np.argmax(a, axis=axis)
        val = np.take_along_axis(a, np.expand_dims(idx, axis), axis).squeeze(axis)
        none = ~np.isfinite(val)
        return np.where(none, -1, idx).astype(np.int64), np.where(none, np.nan, val)

    if r.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.astype(float), e, e.astype(float)
    col, col_r = along(filled, 1)
    row, row_r = along(filled, 0)
    return col, col_r, row, row_r


def assignment(score: np.ndarray) -> np.ndarray:
    """The one-to-one matching of rows to columns of ``score`` [m, n] with the highest total score (NaN counts
    as 0): for each row, its column, or -1 where rows outnumber columns and the row is left out. A row or column
    that is NaN throughout (a constant unit: no correlation at all) is matched to nothing."""
    s = np.asarray(score, dtype=np.float64)
    rows, cols = ~np.isnan(s).all(axis=1), ~np.isnan(s).all(axis=0)
    if not (rows.all() and cols.all()):
        out = np.full(s.shape[0], -1, dtype=np.int64)
        sub = _assign(s[np.ix_(rows, cols)])
        kept_cols = np.flatnonzero(cols)
        out[np.flatnonzero(rows)] = np.where(sub >= 0, kept_cols[np.clip(sub, 0, None)], -1)
        return out
    return _assign(s)


def _assign(score: np.ndarray) -> np.ndarray:
    s = np.nan_to_num(score, nan=0.0)
    m, n = s.shape
    if m == 0 or n == 0:
        return np.full(m, -1, dtype=np.int64)
    if m > n:
        cols = _min_cost_rows(-s.T)                       # each column its row
        out = np.full(m, -1, dtype=np.int64)
        out[cols] = np.arange(n)
        return out
    return _min_cost_rows(-s)


def _min_cost_rows(cost: np.ndarray) -> np.ndarray:
    """Each row's column in the minimum-cost assignment of ``cost`` [m, n], m <= n: rows added one at a time, each
    by a shortest augmenting path over reduced costs (Kuhn–Munkres with potentials, O(m² n))."""
    m, n = cost.shape
    u, v = np.zeros(m + 1), np.zeros(n + 1)
    owner = np.zeros(n + 1, dtype=np.int64)       # owner[j]: the row (1-based) holding column j; column 0 a sentinel
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, m + 1):
        owner[0], j0 = i, 0
        dist = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            closer = free & (reduced < dist[1:])
            dist[1:][closer] = reduced[closer]
            way[1:][closer] = j0
            cand = np.where(free, dist[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            dist[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:                                   # flip the path back to the new row
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    out = np.full(m, -1, dtype=np.int64)
    held = np.nonzero(owner[1:])[0]
    out[owner[1:][held] - 1] = held
    return out
