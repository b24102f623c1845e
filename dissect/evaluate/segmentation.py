"""Labels checked against segmentation masks: NetDissect's IoU of a unit's thresholded map with a concept's mask.

Bau et al., "Network Dissection" (CVPR 2017), as CSAILVision/NetDissect-Lite computes it
(``feature_operation.py``), written from its definitions:

1. each unit's threshold t_u is the top 0.5% quantile of its activation over every position of
   every probe image (:class:`TopQuantile`: a running top-k of the values, which gives the quantile
   exactly; NetDissect-Lite estimates it with a streaming sketch);
2. on each image, the unit's map is upsampled bilinearly to the mask's size and the pixels where
   it exceeds t_u are its *activated* pixels (:func:`upsample`);
3. over the dataset (:class:`IoUTally`), per unit u and concept c of a mask kind k (objects,
   parts, materials: each its own index masks, 0 unlabelled):
   ``both[u, c]`` activated pixels labelled c, ``labels[c]`` pixels labelled c, and
   ``units_kind[u, k]`` activated pixels of the images on which some activated pixel carries a
   label of kind k; IoU[u, c] = both / (units_kind[u, kind(c)] + labels[c] − both).

Pure tensor code: masks and maps come in as tensors, nothing here reads a file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: NetDissect's top fraction of positions above each unit's threshold.
QUANTILE = 0.005


class TopQuantile:
    """Each of C units' (1 − ``q``) quantile over ``total`` values seen in batches, exactly (numpy's default
    linear interpolation), from a running top-k of the values: k = ⌊(total − 1) q⌋ + 2 values per unit."""

    def __init__(self, units: int, total: int, q: float = QUANTILE, device=None):
        if total < 1 or not 0 < q < 1:
            raise ValueError(f"need total >= 1 and 0 < q < 1, got {total}, {q}")
        self.total, self.q = int(total), float(q)
        self.k = min(self.total, int(math.floor((self.total - 1) * self.q)) + 2)
        self.top = torch.full((self.k, units), -math.inf, dtype=torch.float64, device=device)
        self.seen = 0

    def update(self, values: torch.Tensor) -> None:
        """``values`` [M, C]: more of each unit's values (every position of some images)."""
        v = values.to(self.top.device, torch.float64)
        self.seen += int(v.shape[0])
        self.top = torch.topk(torch.cat([self.top, v]), self.k, dim=0).values

    def thresholds(self) -> torch.Tensor:
        """(C,) float64: the quantile 1 − q of each unit's values (all ``total`` must have been seen)."""
        if self.seen != self.total:
            raise ValueError(f"saw {self.seen} values per unit, expected {self.total}")
        pos = (self.total - 1) * self.q                 # from the top: the value at rank pos (0 = the largest)
        lo = int(math.floor(pos))
        frac = pos - lo
        a = self.top[lo]
        b = self.top[min(lo + 1, self.k - 1)]
        return a + (b - a) * frac


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] maps at the masks' [H, W]: bilinear, pixel centres aligned (``align_corners=False``), what
    NetDissect-Lite's ``imresize(..., mode='F')`` does."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.to(torch.float32)
    return F.interpolate(maps.to(torch.float32), size=size, mode="bilinear", align_corners=False)


class IoUTally:
    """The running counts of NetDissect's IoU for C units and the concepts of some mask kinds.

    ``kinds``: the number of concepts of each mask kind (index 0 of each, "unlabelled", is never a concept);
    concept j of kind k is column ``offset[k] + j`` of ``both`` and ``labels``."""

    def __init__(self, units: int, kinds: list[int], device=None):
        self.sizes = [int(n) for n in kinds]
        self.offset = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        total = sum(self.sizes)
        self.both = torch.zeros((units, total), dtype=torch.float64, device=device)
        self.labels = torch.zeros(total, dtype=torch.float64, device=device)
        self.units_kind = torch.zeros((units, len(self.sizes)), dtype=torch.float64, device=device)
        self.units = torch.zeros(units, dtype=torch.float64, device=device)

    def update(self, maps: torch.Tensor, thresholds: torch.Tensor, masks: list[torch.Tensor | None]) -> None:
        """One batch: ``maps`` [B, C, h, w], ``thresholds`` (C,), ``masks``: per kind a [B, H, W] integer tensor
        (0 unlabelled), or None where this batch has no masks of that kind.

        Sparse: a bilinear map never exceeds its largest cell, so only the (image, unit) pairs whose map passes the
        unit's threshold somewhere are upsampled, and only their activated pixels are counted (0.5% of them)."""
        shape = next((m.shape[-2:] for m in masks if m is not None), None)
        if shape is None:
            return
        thr = thresholds.to(maps.device, torch.float32)
        maps = maps.to(torch.float32)
        b, c = maps.shape[:2]
        img, unit = (maps.amax(dim=(2, 3)) > thr[None, :]).nonzero(as_tuple=True)       # pairs that may activate
        pair, pixel = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        if len(img):
            act = upsample(maps[img, unit][:, None], tuple(shape))[:, 0] > thr[unit][:, None, None]
            pair, pixel = act.reshape(len(img), -1).nonzero(as_tuple=True)
        dev = self.both.device
        pair, pixel, img, unit = pair.to(dev), pixel.to(dev), img.to(dev), unit.to(dev)
        self.units += torch.bincount(unit[pair], minlength=c).to(torch.float64)
        per_pair = torch.bincount(pair, minlength=len(img)).to(torch.float64)           # activated pixels of a pair
        for k, mask in enumerate(masks):
            if mask is None:
                continue
            n, off = self.sizes[k], self.offset[k]
            lab = mask.to(dev, torch.long).reshape(b, -1)
            counts = torch.bincount(lab.flatten(), minlength=n).to(torch.float64)
            counts[0] = 0
            self.labels[off : off + n] += counts
            hit = lab[img[pair], pixel]                                                 # each activated pixel's label
            both = torch.bincount(unit[pair] * n + hit, minlength=c * n).reshape(c, n).to(torch.float64)
            both[:, 0] = 0
            self.both[:, off : off + n] += both
            # an image counts its activated pixels toward kind k when one of them carries a label of kind k
            labelled = torch.bincount(pair, weights=(hit > 0).to(torch.float64), minlength=len(img)) > 0
            self.units_kind[:, k] += torch.bincount(unit, weights=per_pair * labelled, minlength=c)

    def iou(self) -> torch.Tensor:
        """[C, concepts] float64: both / (units_kind + labels − both); 0 where nothing was counted."""
        kind_of = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(self.sizes)]).to(
            self.both.device)
        den = self.units_kind[:, kind_of] + self.labels[None, :] - self.both
        return torch.where(den > 0, self.both / den.clamp_min(1e-300), torch.zeros_like(den))
