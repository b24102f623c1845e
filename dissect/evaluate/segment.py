"""``dissect evaluate segment``: every unit's NetDissect IoU with segmentation masks, and how localised it fires.

Two passes over the probe with the target model (:mod:`dissect.evaluate.segmentation`):

1. each unit's threshold, the top 0.5% quantile of its map over every position of every image;
2. per image, the unit's map upsampled to the model's view of the mask (resized and centre-cropped
   as the image was, nearest-neighbour) and thresholded, tallied against each mask kind's concepts.

One row per unit: its best concept (highest IoU over every kind), that IoU, the threshold, the
mean Moran's I of its maps on its top images (how localised it fires; needs no masks), and with
``labels`` whether its label names the best concept (exactly, and the CLIP cosine of the two
texts with ``images``' CLIP).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as A
from ..artifacts.masks import open_masks, read_mask
from ..errors import UsageError
from ..passes import PassOptions
from ..runtime import note, resolve_device
from ..settings import Settings, no_other_fields
from .segmentation import QUANTILE, IoUTally, TopQuantile

#: Columns of segment.parquet (and their types), in order.
COLUMNS = ("layer", "unit", "concept", "kind", "iou", "threshold", "morans_i", "label", "label_agrees", "label_cos")


@dataclass(frozen=True)
class SegmentSettings(Settings):
    """``quantile``: the top fraction of each unit's positions above its threshold (NetDissect's 0.005);
    ``top_images``: the images per unit whose maps give its Moran's I; ``layout``: as for ``record``."""

    quantile: float = QUANTILE
    top_images: int = 10
    layout: str = "auto"

    def check(self) -> None:
        if not 0 < self.quantile < 1:
            raise UsageError(f"--quantile must be in (0, 1), got {self.quantile}")
        if self.top_images < 1:
            raise UsageError(f"--top-images must be at least 1, got {self.top_images}")


@dataclass
class Segmentation:
    rows: dict[str, list]
    metadata: dict[str, Any] = field(default_factory=dict)


def _mask_view(pre):
    """The model's view of a mask: the image's resize and centre crop, nearest-neighbour (indices stay indices)."""
    from torchvision import transforms as T

    return T.Compose([pre.resize(T.InterpolationMode.NEAREST), T.CenterCrop(pre.input_size)])


class _Pass:
    """A consumer of ``passes.image_pass``: each layer's maps, for the quantiles (``tally`` None) or the counts."""

    def __init__(self, target, layers, infos, grids, device, total: int, settings: SegmentSettings):
        from ..hooks import Recorder

        self.transform = target.transform
        self.layers, self.infos, self.grids, self.device = layers, infos, grids, device
        self.total, self.q, self.k = total, settings.quantile, settings.top_images
        self.recorder = Recorder(target.module, layers, layout={n: infos[n] for n in layers}, keep_raw=True)
        self.quantiles: dict[str, TopQuantile] = {}
        self.tallies: dict[str, IoUTally] = {}
        self.top: dict[str, Any] = {}
        self.masks = None        # (kinds, probe, view): set for the counting pass
        self.thresholds: dict[str, Any] = {}

    def maps(self, batch) -> dict[str, Any]:
        from ..maps import position_maps

        raw = self.recorder.run(batch.to(self.device))
        return {n: position_maps(raw[n].float(), self.infos[n].layout, self.grids.get(n)) for n in self.layers}

    def __call__(self, idx, batch) -> None:
        import torch

        from ..maps import TopMaps

        maps = self.maps(batch)
        if self.masks is None:
            for n, m in maps.items():
                if n not in self.quantiles:
                    self.quantiles[n] = TopQuantile(m.shape[1], self.total * m.shape[2] * m.shape[3], self.q, self.device)
                self.quantiles[n].update(m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]))
            return
        kinds, probe, view = self.masks
        masks = [torch.stack([torch.from_numpy(_view_mask(kind, probe.ids[int(i)], view)) for i in idx]) for kind in kinds]
        for n, m in maps.items():
            if n not in self.tallies:
                self.tallies[n] = IoUTally(m.shape[1], [len(k.classes) for k in kinds], self.device)
                self.top[n] = TopMaps(self.k, m.shape[1], m.shape[2], m.shape[3], self.device)
            self.tallies[n].update(m, self.thresholds[n], masks)
            self.top[n].update(m.mean(dim=(2, 3)), m, torch.as_tensor(idx, dtype=torch.long))


def _view_mask(kind, image_id: str, view) -> np.ndarray:
    from PIL import Image

    arr = read_mask(kind, image_id)
    if arr is None:
        return np.zeros((view.transforms[1].size[0], view.transforms[1].size[1]), dtype=np.int64)
    img = Image.fromarray(arr.astype(np.int32))
    return np.asarray(view(img), dtype=np.int64)


def segment(probe, model, layers: list[str], masks, labels=None, images=None, text=None,
            settings: SegmentSettings | None = None, options: PassOptions | None = None, **fields: Any) -> Segmentation:
    """Every unit of ``layers`` of ``model`` (a ``models.TargetSpec`` or a loaded ``Target``) against the masks of
    ``masks`` (``artifacts.masks``) over ``probe``; see the module docstring. ``settings`` and ``options`` may also
    be given as their fields."""
    from ..hooks import resolve_layers
    from ..maps import token_grid
    from ..passes import image_pass
    from ..probe import open_probe
    from ..record import layer_infos

    st = SegmentSettings.of(settings, **SegmentSettings.take(fields))
    opts = PassOptions.of(options, **PassOptions.take(fields))
    no_other_fields(fields, "segment")
    kinds = open_masks(masks)
    probe = probe if hasattr(probe, "ids") else open_probe([str(p) for p in probe])
    dev = resolve_device(opts.device)
    target = model if hasattr(model, "module") else model.load(dev, layers=layers)
    if target.preprocess is None:
        raise UsageError(f"{target.spec} brings its own transform, so the masks cannot be aligned with its view of the "
                         "images", hint="give --input-size, --mean and --std, and return the model alone")
    layers = resolve_layers(target.module, list(layers), target.spec)
    infos = layer_infos(target, layers, st.layout, dev)
    flat = [n for n in layers if infos[n].layout == "nc"]
    if flat:
        raise UsageError(f"layer {flat[0]} has no positions (a 2-D output), so no map to segment",
                         hint="give convolutional or token layers")
    grids = {n: token_grid(target.module, infos[n].raw_shape[0], n) for n in layers if infos[n].layout == "nlc"}
    target.module.to(dev).eval()
    work = _Pass(target, layers, infos, grids, dev, len(probe), st)
    with work.recorder:
        skipped = image_pass(probe, [work], opts.batch_size, opts.workers_for(len(probe)), "segment: thresholds", dev)
        work.thresholds = {n: q.thresholds() for n, q in work.quantiles.items()}
        work.masks = (kinds, probe, _mask_view(target.preprocess))
        image_pass(probe, [work], opts.batch_size, opts.workers_for(len(probe)), "segment: IoU", dev)
    rows = _rows(work, layers, kinds)
    _agreement(rows, labels, images, text, opts.device)
    meta = {"model": target.spec, "masks": str(Path(masks).resolve()), "kinds": {k.name or ".": len(k.classes) - 1 for k in kinds},
            "quantile": st.quantile, "top_images": st.top_images, "n_images": len(probe) - len(skipped),
            "provenance": json.loads(A.provenance(stage="evaluate segment"))}
    return Segmentation(rows, meta)


def _rows(work: _Pass, layers: list[str], kinds) -> dict[str, list]:
    from ..maps import morans_i

    names, kind_of = [], []
    for k in kinds:
        names += list(k.classes)
        kind_of += [k.name] * len(k.classes)
    zero = _zero_columns(kinds)
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for n in layers:
        iou = work.tallies[n].iou().cpu().numpy()
        iou[:, sorted(zero)] = -1.0
        best = iou.argmax(axis=1)
        top = work.top[n]
        mi = morans_i(top.maps.float()).cpu().numpy()                    # [K, C]
        mi[top.rows.cpu().numpy() < 0] = np.nan
        for u in range(iou.shape[0]):
            rows["layer"].append(n)
            rows["unit"].append(u)
            rows["concept"].append(names[best[u]])
            rows["kind"].append(kind_of[best[u]])
            rows["iou"].append(float(max(iou[u, best[u]], 0.0)))
            rows["threshold"].append(float(work.thresholds[n][u]))
            col = mi[:, u]
            rows["morans_i"].append(float(np.nanmean(col)) if np.isfinite(col).any() else math.nan)
    return rows


def _zero_columns(kinds) -> set[int]:
    out, offset = set(), 0
    for k in kinds:
        out.add(offset)
        offset += len(k.classes)
    return out


def _agreement(rows: dict[str, list], labels, images, text, device) -> None:
    """With ``labels``: each unit's label, whether it names its best concept, and (with ``images``) their CLIP cosine."""
    n = len(rows["unit"])
    rows["label"], rows["label_agrees"], rows["label_cos"] = [None] * n, [None] * n, [math.nan] * n
    if labels is None:
        return
    from ..concepts import normalise

    lf = A.read_label_file(labels)
    label_of = {(lay, u): lab for lay, u, lab in zip(lf.layers, lf.units, lf.labels)}
    for i, key in enumerate(zip(rows["layer"], rows["unit"])):
        lab = label_of.get(key)
        rows["label"][i] = lab
        rows["label_agrees"][i] = None if lab is None else normalise(lab) == normalise(rows["concept"][i])
    if images is None:
        return
    from .presence import clip_texts

    img = A.read_image_embeddings(images)
    texts = sorted({t for t in rows["label"] if t} | set(rows["concept"]))
    emb = clip_texts(img, texts, text, device, None, 256)
    for i, (lab, con) in enumerate(zip(rows["label"], rows["concept"])):
        if lab:
            a, b = emb[lab].astype(np.float64), emb[con].astype(np.float64)
            rows["label_cos"][i] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    note(f"labels agree with the best mask concept on {sum(1 for x in rows['label_agrees'] if x)} of "
         f"{sum(1 for x in rows['label_agrees'] if x is not None)} units")


def write_segmentation(seg: Segmentation, out: str | os.PathLike) -> tuple[Path, Path | None]:
    summary = []
    for lay in dict.fromkeys(seg.rows["layer"]):
        sel = [i for i, x in enumerate(seg.rows["layer"]) if x == lay]
        agree = [seg.rows["label_agrees"][i] for i in sel if seg.rows["label_agrees"][i] is not None]
        summary.append({"layer": lay, "units": len(sel), "mean_iou": float(np.mean([seg.rows["iou"][i] for i in sel])),
                        "units_iou_above_0.04": int(sum(seg.rows["iou"][i] > 0.04 for i in sel)),
                        "label_agreement": (sum(agree) / len(agree)) if agree else None})
    seg.metadata["summary"] = summary
    written, path = A.write_table(out, A.SEGMENT_FORMAT, seg.rows, seg.metadata, summary=summary)
    return Path(written), path
