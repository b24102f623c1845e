"""Where a concept's presence on each image comes from: annotations, an ImageFolder's classes, or CLIP.

Shared by ``evaluate simulate``, ``evaluate sanity`` and ``explain``. A presence is a
number in [0, 1] per (image, concept). Annotations give it directly (long-form
id, concept[, value]); CLIP estimates it from the image-text cosine through a
:class:`Calibration`, standardising each concept's cosines over all the probe's images
(so that an image's presence does not depend on which images are scored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import UsageError


def normalise(text: str) -> str:
    """Concept names match case-blind, with '_' as a space and runs of spaces as one."""
    return " ".join(str(text).replace("_", " ").casefold().split())


@dataclass(frozen=True)
class Calibration:
    """How an image-text cosine becomes a presence probability.

    * ``zscore`` (default): z = (cos − mean) / std over the probe's images, per concept;
      p = sigmoid(k (z − z0)). Standardising per label makes one calibration serve every
      CLIP model, whose cosine scales differ; k and z0 were fitted by maximum likelihood
      on the demo world's ground truth (``scripts/calibrate_presence.py``, README).
    * ``sigmoid``: p = sigmoid(a (cos + b)), Linear Explanations' form (their constants
      for ViT-L-14-336 openai: a = 58, b = −0.25).
    * ``raw``: the cosine itself.
    """

    kind: str = "zscore"
    a: float = 0.0
    b: float = 0.0

    def apply(self, cos):
        import torch

        cos = cos.to(torch.float64)
        if self.kind == "zscore":
            return self.apply_with(cos, cos.mean(dim=0, keepdim=True), cos.std(dim=0, keepdim=True).clamp_min(1e-12))
        return self.apply_with(cos)

    def apply_with(self, cos, mean=None, std=None):
        """``apply`` with each concept's cosine ``mean`` and ``std`` given (zscore), e.g. over more
        images than ``cos`` holds."""
        import torch

        cos = cos.to(torch.float64)
        if self.kind == "raw":
            return cos
        if self.kind == "sigmoid":
            return torch.sigmoid(self.a * (cos + self.b))
        return torch.sigmoid(self.a * ((cos - mean) / std - self.b))

    def describe(self) -> dict[str, Any]:
        formula = {"zscore": "sigmoid(k * ((cos - mean) / std - z0))", "sigmoid": "sigmoid(a * (cos + b))",
                   "raw": "cos"}[self.kind]
        params = {"zscore": {"k": self.a, "z0": self.b}, "sigmoid": {"a": self.a, "b": self.b}, "raw": {}}[self.kind]
        return {"kind": self.kind, "formula": formula, **params}


#: Fitted on the demo world (2,000 probe images, every world word and class name as
#: annotations, tiny CLIP): see README "Simulation scores". Maximum likelihood k, z0.
ZSCORE_K, ZSCORE_Z0 = 10.3, 0.93
DEFAULT_CALIBRATION = Calibration("zscore", ZSCORE_K, ZSCORE_Z0)


def parse_calibration(spec: str | None) -> Calibration:
    """``zscore`` | ``zscore:K,Z0`` | ``sigmoid:A,B`` | ``raw``."""
    if spec is None or spec == "zscore":
        return DEFAULT_CALIBRATION
    if spec == "raw":
        return Calibration("raw")
    kind, _, rest = spec.partition(":")
    if kind in ("zscore", "sigmoid") and rest:
        try:
            a, b = (float(x) for x in rest.split(","))
        except ValueError:
            a = b = math.nan
        if math.isfinite(a) and math.isfinite(b):
            return Calibration(kind, a, b)
    raise UsageError(f"unknown --calibration {spec!r}",
                     hint="use zscore (default), zscore:K,Z0, sigmoid:A,B (e.g. sigmoid:58,-0.25) or raw")


# ---------------------------------------------------------------------------
# Where presence comes from
# ---------------------------------------------------------------------------

class AnnotatedPresence:
    """Presence of concepts from per-image annotations (or an ImageFolder probe's classes)."""

    def __init__(self, name: str, ids: list[str], concepts: list[str], values: np.ndarray, describe: dict[str, Any]):
        self.name = name
        self.describe = describe
        self._by_concept: dict[str, tuple[list[str], list[float]]] = {}
        for i, c, v in zip(ids, concepts, values.tolist()):
            entry = self._by_concept.setdefault(normalise(c), ([], []))
            entry[0].append(i)
            entry[1].append(v)

    @classmethod
    def from_file(cls, path) -> "AnnotatedPresence":
        ann = A.read_annotations(path)
        return cls("annotations", ann.ids, ann.concepts, ann.values,
                   {"source": "annotations", "path": str(Path(path).resolve()), "fingerprint": ann.fingerprint,
                    "concepts": len({normalise(c) for c in ann.concepts}), "rows": len(ann.ids)})

    @classmethod
    def from_classes(cls, ids: list[str], activations) -> "AnnotatedPresence":
        classes = []
        for i in ids:
            parent = Path(i).parent
            if str(parent) in ("", "."):
                raise UsageError(f"image {i!r} of {activations} is not in a class folder",
                                 hint="--annotations classes needs an ImageFolder probe (PROBE/CLASS/IMAGE); "
                                      "give an annotations CSV instead")
            classes.append(parent.name)
        return cls("classes", list(ids), classes, np.ones(len(ids)),
                   {"source": "classes", "concepts": len(set(classes)), "rule": "the image's folder name"})

    @property
    def concepts(self) -> list[str]:
        """Every annotated concept (normalised), sorted."""
        return sorted(self._by_concept)

    def known(self, label: str) -> bool:
        return normalise(label) in self._by_concept

    def matrix(self, labels: list[str], rows: dict[str, int], n: int):
        """[n, len(labels)] float64 presence on the scored images (``rows``: id -> row)."""
        import torch

        out = torch.zeros((n, len(labels)), dtype=torch.float64)
        for j, lab in enumerate(labels):
            ids, vals = self._by_concept.get(normalise(lab), ((), ()))
            for i, v in zip(ids, vals):
                r = rows.get(i)
                if r is not None:
                    out[r, j] = max(float(out[r, j]), v)
        return out


class ClipPresence:
    """Presence of a label estimated with the CLIP model of images.h5 (calibrated cosines)."""

    name = "clip"

    def __init__(self, images: A.Embeddings, text_of: dict[str, np.ndarray], calibration: Calibration, device):
        import torch

        self.images = images
        self.text_of = text_of
        self.calibration = calibration
        self.device = device
        self.describe = {"source": "clip", "clip": images.clip_spec, "clip_fingerprint": images.clip_fingerprint,
                         "images": str(images.path), "calibration": calibration.describe()}
        self._I = torch.from_numpy(np.ascontiguousarray(images.embeddings)).to(device)
        self._row_of = {k: i for i, k in enumerate(images.keys)}

    def known(self, label: str) -> bool:
        return True

    def matrix(self, labels: list[str], rows: dict[str, int], n: int):
        """[n, len(labels)] presence on the images ``rows`` (id -> row); calibrated over all of images.h5's images."""
        import torch

        order = sorted(rows, key=rows.get)
        idx = torch.tensor([self._row_of[i] for i in order], dtype=torch.long, device=self.device)
        T = torch.from_numpy(np.stack([self.text_of[lab] for lab in labels])).to(self.device)
        cos = self._I.float() @ T.float().T
        return self.calibration.apply(cos).index_select(0, idx).cpu()


def _clip_texts(images: A.Embeddings, labels: list[str], text, device: str, cache, batch_size: int) -> dict[str, np.ndarray]:
    """Text embedding of each distinct label: from ``text`` (text.h5) where it holds it, else made with the
    CLIP model images.h5 records (cached like every concept set)."""
    from .concepts import ConceptSet

    out: dict[str, np.ndarray] = {}
    if text is not None:
        txt = A.read_text_embeddings(text)
        A.check_same_clip(images, txt)
        pos = {k: i for i, k in enumerate(txt.keys)}
        for lab in labels:
            if lab in pos:
                out[lab] = txt.embeddings[pos[lab]]
    missing = [lab for lab in dict.fromkeys(labels) if lab not in out]
    if missing:
        from .embed import text_for_images
        from .fingerprint import fingerprint_strings

        cs = ConceptSet(f"labels ({len(missing)})", missing, f"labels:{fingerprint_strings(missing)}")
        emb = text_for_images(images, cs, cache=cache, device=device, batch_size=batch_size)
        for k, v in zip(emb.keys, emb.embeddings):
            out[k] = v
    return out
