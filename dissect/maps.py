"""Where units fire: a unit's spatial map on an image, kept on its top images, and how localised it is.

Pure tensor kernels (nothing here reads a file or runs a model):

* :class:`Grid` and :func:`token_grid`: where a transformer layer's tokens sit on the image
  (the patch grid, and the prefix tokens such as CLS and registers set apart), taken from the
  model (timm's ``patch_embed.grid_size`` and ``num_prefix_tokens``, torchvision's
  ``image_size // patch_size`` and its class token);
* :func:`position_maps`: a layer output as [B, C, h, w] maps, whatever its layout;
* :class:`TopMaps`: each unit's K most activating images (by the layer's summary) with its map
  on each, kept as a running top-K over the batches of a pass, never the whole [N, C, h, w];
* :func:`morans_i`: Moran's I of each map on its grid (rook adjacency: the 4 neighbours of a
  cell), the localisation score VISAEBench uses: 1 for one smooth blob, about 0 for noise,
  -1 for a checkerboard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError
from .settings import Settings


@dataclass(frozen=True)
class Grid:
    """A token layer's patch grid: ``prefix`` tokens first (CLS, registers, distillation), then ``h`` x ``w``
    patches in row-major order."""

    prefix: int
    h: int
    w: int

    @property
    def tokens(self) -> int:
        return self.prefix + self.h * self.w


#: The arrays of one layer's top maps (``TopMaps.arrays``), in a checkpoint and in activations.h5.
MAP_PARTS = ("values", "rows", "scores")


@dataclass(frozen=True)
class MapsRequest:
    """What ``record --maps K`` keeps: each unit's ``k`` top images with its map, for the layers and entries of
    ``grids`` (each with its token grid, None for conv and 1-D outputs)."""

    k: int
    grids: dict[str, Grid | None]


@dataclass(frozen=True)
class MapsOptions(Settings):
    """``record --maps K``: keep each unit's ``maps`` top images with its spatial map on each (0: none), within
    ``max_memory`` bytes (None: ``budget.DEFAULT_MAX_MEMORY``)."""

    maps: int = 0
    max_memory: int | None = None

    def check(self) -> None:
        if self.maps < 0:
            raise UsageError(f"--maps must be 0 (none) or more, got {self.maps}")


def plan_maps(plan, opts: MapsOptions, n_images: int) -> "MapsRequest | None":
    """Whose maps ``plan`` (a ``record.RecordPlan``) keeps: every layer and entry it records that has positions (a 2-D output has none:
    said once), with the token grid of token layers, K at most the ``n_images``; refused in one line over the
    memory budget."""
    from dataclasses import replace

    from .budget import memory_budget
    from .runtime import note

    if opts.maps == 0:
        return None
    opts = replace(opts, maps=max(1, min(opts.maps, int(n_images))))
    grids, flat, need = {}, [], 0
    for name in plan.todo:
        layer = plan.units[name].layer if name in plan.units else name
        info = plan.infos[layer]
        if info.layout == "nc":
            flat.append(name)
            continue
        grid = token_grid(plan.target.module, info.raw_shape[0], layer) if info.layout == "nlc" else None
        h, w = map_size(info.layout, info.raw_shape, grid)
        units = plan.units[name].set.k if name in plan.units else info.n_units
        need += 2 * maps_bytes(opts.maps, units, h, w)   # the maps and an update's copy
        grids[name] = grid
    if flat:
        note(f"no maps of {', '.join(flat)}: a 2-D output has no positions")
    budget = memory_budget(opts.max_memory)
    if need > budget:
        raise UsageError(f"--maps {opts.maps} needs {need / 2**20:.0f} MB for {', '.join(grids)}, over the memory budget "
                         f"of {budget / 2**20:.0f} MB", hint="keep fewer maps (--maps), record fewer layers at a time, "
                         "or raise --max-memory")
    return MapsRequest(opts.maps, grids) if grids else None


def with_maps(plan, opts: MapsOptions, out, n_images: int):
    """``plan`` (a ``record.RecordPlan``) keeping top maps: the layers ``out`` holds without maps (or with fewer
    than K per unit) are recorded again, with them."""
    from dataclasses import replace

    from . import artifacts as A
    from .runtime import note

    stored = A.maps_in(out) if plan.exists else {}
    want = min(opts.maps, int(n_images))
    again = [n for n in plan.have if stored.get(n, 0) < want and _has_positions(plan, n)]
    if again:
        note(f"{out}: recording {', '.join(again)} again, with --maps {opts.maps}")
    plan = replace(plan, todo=[n for n in plan.layers if n in plan.todo or n in again],
                   have=[n for n in plan.have if n not in again])
    return replace(plan, maps=plan_maps(plan, opts, n_images))


def _has_positions(plan, name: str) -> bool:
    layer = plan.units[name].layer if name in plan.units else name
    return plan.infos[layer].layout != "nc"


def grown_maps(out, grown, opts: MapsOptions, n_images: int):
    """``grown`` (``record``'s plan over a grown probe) keeping the old file's top maps (those asked for with ``--maps``, or else those it holds); recording
    every image anew where the new images cannot complete them: a layer with positions without maps or with
    another K, or a stored top image that was removed or changed (the next best of the unchanged images was not
    kept)."""
    from dataclasses import replace

    import numpy as np

    from . import artifacts as A

    stored = A.maps_in(out)
    k = opts.maps or max(stored.values(), default=0)
    if not k:
        return grown
    plan = replace(grown.plan, maps=plan_maps(grown.plan, replace(opts, maps=k), n_images))
    position = np.full(len(grown.old.ids), -1, dtype=np.int64)          # old row -> probe position (-1: gone)
    position[np.fromiter(grown.reused.values(), dtype=np.int64)] = np.fromiter(grown.reused, dtype=np.int64)
    kept: dict[str, np.ndarray] = {}
    for name in plan.maps.grids if plan.maps else ():
        if stored.get(name) != plan.maps.k:
            why = f"{out} holds no maps of {name}" if name not in stored else f"{out} keeps {stored[name]} maps of {name}"
            return replace(grown, plan=plan, reused={}, anew=why)
        m = A.read_maps(out, name)
        pos = np.where(m.rows >= 0, position[np.clip(m.rows, 0, None)], -1)
        if (pos[m.rows >= 0] < 0).any():
            return replace(grown, plan=plan, reused={}, anew=f"a top image of {name} was removed or changed")
        kept.update({f"@maps|{name}|values": m.values, f"@maps|{name}|rows": pos,
                     f"@maps|{name}|scores": m.scores})
    return replace(grown, plan=plan, maps=kept)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _merged(grid: Grid, n_tokens: int) -> Grid:
    """The grid of a later stage of a model that merges 2x2 patches per stage (Swin): the first grid halved until it
    holds ``n_tokens`` (unchanged where no halving does)."""
    h, w = grid.h, grid.w
    while h * w > n_tokens and h > 1 and w > 1:
        h, w = (h + 1) // 2, (w + 1) // 2          # Swin pads an odd side before merging
        if grid.prefix + h * w == n_tokens:
            return Grid(grid.prefix, h, w)
    return grid


def token_grid(model: torch.nn.Module, n_tokens: int, layer: str = "LAYER") -> Grid:
    """The grid of a layer with ``n_tokens`` tokens in ``model``; a UsageError (one line) where the model does not
    say it (a grid guessed from a square count would put the maps of a model with registers off by some cells)."""
    grid = None
    pe = getattr(model, "patch_embed", None)
    said = getattr(model, "dissect_token_grid", None)                                   # hf: models, or any that says it
    if said is not None:
        grid = Grid(int(said[0]), int(said[1]), int(said[2]))
    elif pe is not None and getattr(pe, "grid_size", None) is not None:                # timm ViT, DeiT, DINOv2, EVA
        h, w = _pair(pe.grid_size)
        grid = Grid(int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0)),
                    h, w)
    elif hasattr(model, "conv_proj") and hasattr(model, "image_size") and hasattr(model, "patch_size"):  # torchvision
        h, w = _pair(model.image_size)
        p = int(model.patch_size)
        grid = Grid(1 if getattr(model, "class_token", None) is not None else 0, h // p, w // p)
    if grid is not None and grid.tokens != n_tokens and getattr(model, "dissect_token_merges", False):
        grid = _merged(grid, n_tokens)
    if grid is None:
        raise UsageError(f"cannot tell where the {n_tokens} tokens of layer {layer} sit on the image: the model names "
                         "no patch grid (timm's patch_embed.grid_size, torchvision's image_size and patch_size, a transformers "
                         "config's, or a dissect_token_grid = (prefix, rows, columns) attribute)",
                         hint="record maps of convolutional layers, or of a ViT from timm or torchvision")
    if grid.tokens != n_tokens:
        raise UsageError(f"layer {layer} has {n_tokens} tokens, but the model's grid is {grid.prefix} prefix + "
                         f"{grid.h}x{grid.w} patches = {grid.tokens}",
                         hint="record maps of a layer before any token pooling or merging, at the model's input size")
    return grid


def position_maps(x: torch.Tensor, layout: str, grid: Grid | None = None) -> torch.Tensor | None:
    """[B, C, h, w] maps of a layer output ``x`` in ``layout``: conv outputs as they are, tokens on ``grid``
    (prefix tokens dropped), 1-D sequences as 1 x L; None for 2-D outputs (no positions: no map)."""
    if layout == "nc":
        return None
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    if layout == "ncl":
        return x.unsqueeze(2)
    if layout == "nlc":
        if grid is None:
            raise ValueError("token outputs need their grid")
        b, n, c = x.shape
        return x[:, grid.prefix :].reshape(b, grid.h, grid.w, c).permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout {layout!r}")


class TopMaps:
    """Each of C units' K highest-scoring images so far, with its map on each: ``scores`` [K, C] (descending),
    ``rows`` [K, C] (the images' rows; -1 while fewer than K were seen) and ``maps`` [K, C, h, w] float16.

    Ties keep the lower row (earlier batches first, a stable sort), so the result does not depend on the
    batch size. Working memory of an update: (K + B) x C x h x w float16 values."""

    def __init__(self, k: int, units: int, h: int, w: int, device=None):
        if k < 1:
            raise ValueError(f"K must be at least 1, got {k}")
        self.k = int(k)
        self.scores = torch.full((self.k, units), -math.inf, dtype=torch.float32, device=device)
        self.rows = torch.full((self.k, units), -1, dtype=torch.long, device=device)
        self.maps = torch.zeros((self.k, units, h, w), dtype=torch.float16, device=device)

    def update(self, scores: torch.Tensor, maps: torch.Tensor, rows: torch.Tensor) -> None:
        """Add a batch: ``scores`` [B, C] (each unit's summary on each image), ``maps`` [B, C, h, w], ``rows`` [B]."""
        dev = self.scores.device
        r = rows.to(dev, torch.long).unsqueeze(1).expand(-1, self.scores.shape[1])
        self._keep(torch.cat([self.scores, scores.to(dev, torch.float32)]), torch.cat([self.rows, r]),
                   torch.cat([self.maps, maps.to(dev, torch.float16)]))

    def merge(self, other: "TopMaps") -> None:
        """Fold in another pass's top maps of the same units (a shard's, or a checkpoint's)."""
        dev = self.scores.device
        self._keep(torch.cat([self.scores, other.scores.to(dev)]), torch.cat([self.rows, other.rows.to(dev)]),
                   torch.cat([self.maps, other.maps.to(dev)]))

    def arrays(self) -> dict[str, "np.ndarray"]:
        """The state as numpy arrays, unit-major (``values`` [C, K, h, w] float16, ``rows`` [C, K] int64,
        ``scores`` [C, K] float32): what a checkpoint and activations.h5 hold."""
        return {"values": self.maps.transpose(0, 1).contiguous().cpu().numpy(),
                "rows": self.rows.T.contiguous().cpu().numpy(), "scores": self.scores.T.contiguous().cpu().numpy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, "np.ndarray"], device=None) -> "TopMaps":
        values = torch.from_numpy(np.ascontiguousarray(arrays["values"]))
        rows = torch.from_numpy(np.ascontiguousarray(arrays["rows"])).to(torch.long)
        scores = torch.from_numpy(np.ascontiguousarray(arrays["scores"])).to(torch.float32)
        c, k, h, w = values.shape
        if rows.shape != (c, k) or scores.shape != (c, k):
            raise ValueError(f"maps of {c} units x {k}: rows {tuple(rows.shape)}, scores {tuple(scores.shape)}")
        out = cls(k, c, h, w, device)
        out.maps = values.to(device, torch.float16).transpose(0, 1).contiguous()
        out.rows, out.scores = rows.T.contiguous().to(device), scores.T.contiguous().to(device)
        return out

    def _keep(self, s: torch.Tensor, r: torch.Tensor, m: torch.Tensor) -> None:
        """The K best of the candidates ``s``, ``r`` [K', C], ``m`` [K', C, h, w]: score descending, then row
        ascending (two stable sorts), so the order the candidates came in does not matter. An image offered twice
        (a checkpoint saved mid-batch holds images that a resumed pass encodes again) counts once."""
        by_row = torch.argsort(r, dim=0, stable=True)
        rs = torch.gather(r, 0, by_row)
        dup = torch.zeros_like(rs, dtype=torch.bool)
        dup[1:] = (rs[1:] == rs[:-1]) & (rs[1:] >= 0)
        if bool(dup.any()):
            gone = torch.zeros_like(dup).scatter_(0, by_row, dup)
            s = torch.where(gone, torch.full_like(s, -math.inf), s)
            r = torch.where(gone, torch.full_like(r, -1), r)
            by_row = torch.argsort(r, dim=0, stable=True)
        by_score = torch.sort(torch.gather(s, 0, by_row), dim=0, descending=True, stable=True).indices[: self.k]
        order = torch.gather(by_row, 0, by_score)
        self.scores = torch.gather(s, 0, order)
        self.rows = torch.gather(r, 0, order)
        self.maps = torch.gather(m, 0, order[:, :, None, None].expand(-1, -1, m.shape[2], m.shape[3]))


def map_size(layout: str, raw_shape, grid: Grid | None = None) -> tuple[int, int]:
    """(h, w) of the maps of a layer output of per-image shape ``raw_shape`` in ``layout`` (tokens: their ``grid``;
    a 1-D sequence: 1 x L)."""
    if layout == "nlc":
        if grid is None:
            raise ValueError("token outputs need their grid")
        return grid.h, grid.w
    if layout == "ncl":
        return 1, int(raw_shape[1])
    if layout == "nchw":
        return int(raw_shape[1]), int(raw_shape[2])
    if layout == "nhwc":
        return int(raw_shape[0]), int(raw_shape[1])
    raise ValueError(f"a {layout!r} output has no map")


def maps_bytes(k: int, units: int, h: int, w: int) -> int:
    """What :class:`TopMaps` of these sizes holds, and about what an update needs again beside it."""
    return int(k) * int(units) * int(h) * int(w) * 2


def grid_positions(z: torch.Tensor, layout: str, grid: Grid | None, hw: tuple[int, int]) -> torch.Tensor:
    """[n, K, h, w] maps from per-position values ``z`` [n, P, K] in the order of ``directions.positions_last``:
    rows of an ``hw`` conv output or 1 x L sequence (:func:`map_size`), or tokens (``grid``: prefix dropped)."""
    n, _, k = z.shape
    if layout == "nlc":
        z = z[:, grid.prefix :]
    return z.reshape(n, hw[0], hw[1], k).permute(0, 3, 1, 2)


#: Shades of a terminal heat grid, from nothing to the unit's strongest response.
SHADES = " ░▒▓█"


def heat_rows(m: "np.ndarray | torch.Tensor", top: float) -> list[str]:
    """A map [h, w] as text rows, each cell two characters shaded by its value over ``top`` (values at or below 0
    blank), for terminals (``dissect show --maps``)."""
    a = np.asarray(m, dtype=np.float64)
    scale = top if top > 0 else 1.0
    idx = np.clip(np.ceil(a / scale * (len(SHADES) - 1)), 0, len(SHADES) - 1).astype(int)
    return ["".join(SHADES[i] * 2 for i in row) for row in idx]


def morans_i(maps: torch.Tensor) -> torch.Tensor:
    """Moran's I of each [h, w] map of ``maps`` [..., h, w] (float64), rook adjacency with unit weights:

    I = (n / W) · Σ_{i~j} z_i z_j / Σ_i z_i²,  z = x − mean(x),  the sum over ordered neighbour pairs, W their
    number. NaN for a constant map or a grid of one cell."""
    x = maps.to(torch.float64)
    h, w = x.shape[-2], x.shape[-1]
    z = x - x.mean(dim=(-2, -1), keepdim=True)
    pairs = (z[..., :, :-1] * z[..., :, 1:]).sum(dim=(-2, -1)) + (z[..., :-1, :] * z[..., 1:, :]).sum(dim=(-2, -1))
    n_pairs = h * (w - 1) + (h - 1) * w
    den = (z * z).sum(dim=(-2, -1))
    out = (h * w / max(1, 2 * n_pairs)) * 2 * pairs / den.clamp_min(1e-300)
    return torch.where((den > 0) & (n_pairs > 0), out, torch.full_like(out, math.nan))
