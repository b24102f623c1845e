"""Where a concept's presence on each image comes from: annotations, an ImageFolder's classes, or CLIP.

A presence is a number in [0, 1] per (image, concept). Annotations give it directly
(long-form id, concept[, value]); CLIP estimates it from the image-text cosine through a
:class:`Calibration`. :class:`CalibratedCosines` is the one place in dissect where CLIP
cosines become presence: ``evaluate simulate``, ``explain`` in CLIP mode, ``compose
--select simulate`` and ``evaluate sanity`` all read it from there, so that an
explanation is scored under the presence it was fitted with, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import artifacts as A
from ..concepts import normalise
from ..errors import UsageError

# ---------------------------------------------------------------------------
# Calibrations: how a cosine becomes a probability
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationKind:
    """One way of turning cosines into presence: its formula (as recorded), the names of its two constants, whether
    it needs each concept's cosine statistics over the probe, and the function itself (cos, a, b, mean, std)."""

    formula: str
    constants: tuple[str, ...]
    needs_stats: bool
    fn: Callable


def _zscore(cos, a, b, mean, std):
    import torch

    return torch.sigmoid(a * ((cos - mean) / std - b))


def _sigmoid(cos, a, b, mean, std):
    import torch

    return torch.sigmoid(a * (cos + b))


#: Every calibration, by the name ``--calibration`` takes.
CALIBRATIONS: dict[str, CalibrationKind] = {
    "zscore": CalibrationKind("sigmoid(k * ((cos - mean) / std - z0))", ("k", "z0"), True, _zscore),
    "sigmoid": CalibrationKind("sigmoid(a * (cos + b))", ("a", "b"), False, _sigmoid),
    "raw": CalibrationKind("cos", (), False, lambda cos, a, b, mean, std: cos),
}


@dataclass(frozen=True)
class Calibration:
    """How an image-text cosine becomes a presence probability (``CALIBRATIONS``).

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

    @property
    def needs_stats(self) -> bool:
        """Whether ``apply`` needs each concept's cosine mean and standard deviation over the probe."""
        return CALIBRATIONS[self.kind].needs_stats

    def apply(self, cos, mean=None, std=None):
        """Presence (float64) from cosines [N, k]; ``mean``, ``std`` [k]: each concept's statistics (``needs_stats``;
        by default over the N images of ``cos``)."""
        import torch

        cos = cos.to(torch.float64)
        if self.needs_stats and mean is None:
            mean, std = cos.mean(dim=0, keepdim=True), cos.std(dim=0, keepdim=True).clamp_min(1e-12)
        return CALIBRATIONS[self.kind].fn(cos, self.a, self.b, mean, std)

    def describe(self) -> dict[str, Any]:
        kind = CALIBRATIONS[self.kind]
        return {"kind": self.kind, "formula": kind.formula, **dict(zip(kind.constants, (self.a, self.b)))}


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
    if kind in CALIBRATIONS and len(CALIBRATIONS[kind].constants) == 2 and rest:
        try:
            a, b = (float(x) for x in rest.split(","))
        except ValueError:
            a = b = math.nan
        if math.isfinite(a) and math.isfinite(b):
            return Calibration(kind, a, b)
    raise UsageError(f"unknown --calibration {spec!r}",
                     hint="use zscore (default), zscore:K,Z0, sigmoid:A,B (e.g. sigmoid:58,-0.25) or raw")


# ---------------------------------------------------------------------------
# CLIP presence: the one place where cosines become presence
# ---------------------------------------------------------------------------

#: Texts per block of the statistics pass (a fixed tiling keeps every text's statistics independent of batching).
TEXT_BLOCK = 512


class CalibratedCosines:
    """The presence of each of M texts on each of N images, estimated with CLIP: ``calibration`` of the cosine of
    image and text embeddings (``similarity.cosines``, tile by tile, so that a value never depends on which other
    texts or images are asked for with it), each text's statistics taken over all N images, in fixed blocks of
    ``TEXT_BLOCK`` texts."""

    def __init__(self, images, texts, calibration: Calibration):
        """``images`` [N, d], ``texts`` [M, d] (tensors, L2-normalised, on the device to compute on)."""
        self.I = images.float()
        self.T = texts.float()
        self.calibration = calibration
        self._stats: tuple[Any, Any] | None = None

    def __len__(self) -> int:
        return int(self.T.shape[0])

    def stats(self):
        """Each text's cosine mean and standard deviation over all N images ([M] float64 each)."""
        import torch

        from ..similarity import cosines

        if self._stats is None:
            means, stds = [], []
            for s in range(0, self.T.shape[0], TEXT_BLOCK):
                cos = cosines(self.I, self.T[s:s + TEXT_BLOCK]).to(torch.float64)
                means.append(cos.mean(dim=0))
                stds.append(cos.std(dim=0))
            self._stats = torch.cat(means), torch.cat(stds).clamp_min(1e-12)
        return self._stats

    def columns(self, idx):
        """[N, len(idx)] float64 presence of the texts ``idx`` on every image, on the CPU."""
        import torch

        from ..similarity import cosines

        idx = torch.as_tensor(idx, dtype=torch.long, device=self.T.device)
        cos = cosines(self.I, self.T.index_select(0, idx)).to(torch.float64)
        if not self.calibration.needs_stats:
            return self.calibration.apply(cos).cpu()
        mean, std = self.stats()
        return self.calibration.apply(cos, mean[idx], std[idx]).cpu()


# ---------------------------------------------------------------------------
# Where presence comes from: the sources simulate and sanity read labels' presence from
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
    def open(cls, annotations: str, ids: list[str], activations, classes: "ClassNames | None" = None) -> "AnnotatedPresence":
        """``--annotations``: a file, or ``classes`` (the class folder of each of ``ids``, from ``activations``;
        ``classes``: their names and superclasses)."""
        return cls.from_classes(ids, activations, classes) if annotations == "classes" else cls.from_file(annotations)

    @classmethod
    def from_file(cls, path) -> "AnnotatedPresence":
        ann = A.read_annotations(path)
        return cls("annotations", ann.ids, ann.concepts, ann.values,
                   {"source": "annotations", "path": str(Path(path).resolve()), "fingerprint": ann.fingerprint,
                    "concepts": len({normalise(c) for c in ann.concepts}), "rows": len(ann.ids)})

    @classmethod
    def from_classes(cls, ids: list[str], activations, names: "ClassNames | None" = None) -> "AnnotatedPresence":
        """Each image's class: its folder (an ImageFolder probe; class k is the k-th folder in sorted order, as
        torchvision numbers them), named by ``names`` when given, and every superclass holding it."""
        folders = []
        for i in ids:
            parent = Path(i).parent
            if str(parent) in ("", "."):
                raise UsageError(f"image {i!r} of {activations} is not in a class folder",
                                 hint="--annotations classes needs an ImageFolder probe (PROBE/CLASS/IMAGE); "
                                      "give an annotations CSV instead")
            folders.append(parent.name)
        index = {f: k for k, f in enumerate(sorted(set(folders)))}
        rows_ids, rows_concepts = list(ids), [names.name_of(index[f], f) if names else f for f in folders]
        describe = {"source": "classes", "concepts": len(set(rows_concepts)), "rule": "the image's folder name"}
        if names is not None:
            describe.update(names.describe())
            for i, f in zip(ids, folders):
                for sup in names.superclasses_of(index[f]):
                    rows_ids.append(i)
                    rows_concepts.append(sup)
            describe["concepts"] = len(set(rows_concepts))
        return cls("classes", rows_ids, rows_concepts, np.ones(len(rows_ids)), describe)

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


@dataclass(frozen=True)
class ClassNames:
    """The names of an ImageFolder probe's classes (``names[k]`` for its k-th folder; None: the folder names) and
    the superclasses each belongs to (Linear Explanations' label mode: class names plus their superclasses)."""

    names: tuple[str, ...] | None = None
    source: str = ""
    superclasses: Any = None           # concepts.Superclasses

    def name_of(self, k: int, folder: str) -> str:
        if self.names is None:
            return folder
        if k >= len(self.names):
            raise UsageError(f"the probe has more class folders than {self.source} names ({len(self.names)})",
                             hint="give class names in the folders' sorted order, one per class")
        return self.names[k]

    def superclasses_of(self, k: int) -> list[str]:
        if self.superclasses is None:
            return []
        return [s for s, members in self.superclasses.members.items() if k in members]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class_names": self.source or "folder names"}
        if self.superclasses is not None:
            out.update(self.superclasses.describe())
        return out

    @classmethod
    def open(cls, class_names: str | None, superclasses: str | None) -> "ClassNames | None":
        """``--class-names`` (a shipped list or a file, line k naming class k) and ``--superclasses``."""
        if class_names is None and superclasses is None:
            return None
        from ..concepts import load_superclasses, load_truth

        names = None
        if class_names is not None:
            truth = load_truth(class_names)
            names = tuple(truth.names.get(k, str(k)) for k in range(max(truth.names) + 1))
        return cls(names, str(class_names or ""), load_superclasses(superclasses) if superclasses else None)


class ClipPresence:
    """Presence of labels estimated with the CLIP model of images.h5 (:class:`CalibratedCosines` over the labels'
    texts), read as :class:`AnnotatedPresence` is."""

    name = "clip"

    def __init__(self, images: A.Embeddings, text_of: dict[str, np.ndarray], calibration: Calibration, device):
        import torch

        self.describe = {"source": "clip", "clip": images.clip_spec, "clip_fingerprint": images.clip_fingerprint,
                         "images": str(images.path), "calibration": calibration.describe()}
        self.device = device
        texts = sorted(text_of)
        self._col = {t: j for j, t in enumerate(texts)}
        T = torch.from_numpy(np.stack([text_of[t] for t in texts])) if texts else torch.zeros((0, 1))
        self._presence = CalibratedCosines(torch.from_numpy(np.ascontiguousarray(images.embeddings)).to(device),
                                           T.to(device), calibration)
        self._row_of = {k: i for i, k in enumerate(images.keys)}

    def known(self, label: str) -> bool:
        return True

    def matrix(self, labels: list[str], rows: dict[str, int], n: int):
        """[n, len(labels)] presence on the images ``rows`` (id -> row); calibrated over all of images.h5's images."""
        import torch

        order = sorted(rows, key=rows.get)
        idx = torch.tensor([self._row_of[i] for i in order], dtype=torch.long)
        return self._presence.columns([self._col[lab] for lab in labels]).index_select(0, idx)


def clip_texts(images: A.Embeddings, labels: list[str], text, device: str, cache, batch_size: int) -> dict[str, np.ndarray]:
    """Text embedding of each distinct label: from ``text`` (text.h5) where it holds it, else made with the
    CLIP model images.h5 records (cached like every concept set)."""
    from ..concepts import ConceptSet

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
        from ..embed import text_for_images
        from ..fingerprint import fingerprint_strings

        cs = ConceptSet(f"labels ({len(missing)})", missing, f"labels:{fingerprint_strings(missing)}")
        emb = text_for_images(images, cs, cache=cache, device=device, batch_size=batch_size)
        for k, v in zip(emb.keys, emb.embeddings):
            out[k] = v
    return out
