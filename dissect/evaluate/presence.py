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
    """One way of turning cosines into presence: its formula (as recorded), the names of its constants, what it
    measures on each concept's cosines over the probe (``fit``: cos [N, k] float64 -> {name: [k] tensor}; None:
    nothing) and the function itself (cos [N, k], a, b, fitted) -> presence [N, k]."""

    formula: str
    constants: tuple[str, ...]
    fit: Callable | None
    fn: Callable
    rule: Callable | None = None       # () -> the rule it applies, recorded with it (None: no rule)


def _moments(cos):
    return {"mean": cos.mean(dim=0), "std": cos.std(dim=0).clamp_min(1e-12)}


def _zscore(cos, a, b, fitted):
    import torch

    return torch.sigmoid(a * ((cos - fitted["mean"]) / fitted["std"] - b))


def _sigmoid(cos, a, b, fitted):
    import torch

    return torch.sigmoid(a * (cos + b))


def _robust(cos):
    from . import mixture

    centre, scale = mixture.robust_centre_scale(cos)
    return {"centre": centre, "scale": scale}


def _tail(cos, a, b, fitted):
    from . import mixture

    return mixture.tail_presence(cos, fitted["centre"], fitted["scale"])


def _fit_mixture(cos):
    from . import mixture

    return mixture.fit_mixture(cos)


def _mixture(cos, a, b, fitted):
    from . import mixture

    return mixture.mixture_presence(cos, fitted)


def _mixture_rule() -> dict[str, Any]:
    from . import mixture

    return mixture.DEFAULT_RULE.describe()


#: Every calibration, by the name ``--calibration`` takes.
CALIBRATIONS: dict[str, CalibrationKind] = {
    "mixture": CalibrationKind(
        "per concept, z = (cos - median) / (1.4826 MAD); where a null (Student-t(4) or normal, the crispest kept "
        "fit) plus a normal upper group fits z with the groups distinct, the upper group's posterior; elsewhere "
        "1 - the Benjamini-Hochberg q-value of z under the null that fits best alone", (), _fit_mixture, _mixture,
        _mixture_rule),
    "fdr": CalibrationKind("1 - the Benjamini-Hochberg q-value of (cos - median) / (1.4826 MAD) under Student-t(4), "
                           "per concept", (), _robust, _tail),
    "zscore": CalibrationKind("sigmoid(k * ((cos - mean) / std - z0))", ("k", "z0"), _moments, _zscore),
    "sigmoid": CalibrationKind("sigmoid(a * (cos + b))", ("a", "b"), None, _sigmoid),
    "raw": CalibrationKind("cos", (), None, lambda cos, a, b, fitted: cos),
}


@dataclass(frozen=True)
class Calibration:
    """How an image-text cosine becomes a presence probability (``CALIBRATIONS``).

    * ``mixture`` (default): each concept on its own, from its cosines over the probe's images
      (no labels, no constant fitted to a world): a two-group model of its robust z, the images
      without the concept a Student-t(4) or a normal (both fitted, the crispest kept fit wins) and
      those with it a normal above them; where
      the two groups are distinct, an image's presence is its posterior of the upper group, and
      elsewhere how surely it lies above the null (1 − its Benjamini–Hochberg q-value).
      :mod:`.mixture` has the rule; ``docs/guide/simulate.md`` how it was measured on four worlds.
    * ``fdr``: that tail presence alone, for every concept.
    * ``zscore``: z = (cos − mean) / std over the probe's images, per concept; p = sigmoid(k (z − z0)),
      dissect 0.2's default (k = 10.3, z0 = 0.93, fitted on the demo world); a fixed threshold in
      standard deviations ignores how rare a concept is.
    * ``sigmoid``: p = sigmoid(a (cos + b)), Linear Explanations' form (their constants
      for ViT-L-14-336 openai: a = 58, b = −0.25).
    * ``raw``: the cosine itself.
    """

    kind: str = "mixture"
    a: float = 0.0
    b: float = 0.0

    @property
    def needs_stats(self) -> bool:
        """Whether ``apply`` measures each concept's cosines over the probe (so a concept's presence on an image
        depends on the other images)."""
        return CALIBRATIONS[self.kind].fit is not None

    def measure(self, cos) -> dict[str, Any]:
        """What the calibration measures on each concept's cosines ``cos`` [N, k] (float64), {name: [k]}."""
        fit = CALIBRATIONS[self.kind].fit
        return fit(cos) if fit is not None else {}

    def apply(self, cos, fitted: dict[str, Any] | None = None):
        """Presence (float64) from cosines [N, k]; ``fitted``: ``measure`` of these concepts (by default over the N
        images of ``cos``)."""
        import torch

        cos = cos.to(torch.float64)
        if fitted is None:
            fitted = self.measure(cos)
        return CALIBRATIONS[self.kind].fn(cos, self.a, self.b, fitted)

    def describe(self) -> dict[str, Any]:
        kind = CALIBRATIONS[self.kind]
        out = {"kind": self.kind, "formula": kind.formula, **dict(zip(kind.constants, (self.a, self.b)))}
        if kind.rule is not None:
            out["rule"] = kind.rule()
        return out


#: dissect 0.2's default, fitted on the demo world (2,000 probe images, every world word and class name as
#: annotations, tiny CLIP): maximum likelihood k, z0. Kept as ``--calibration zscore``.
ZSCORE_K, ZSCORE_Z0 = 10.3, 0.93
DEFAULT_CALIBRATION = Calibration("mixture")
CALIBRATION_HINT = "use mixture (default), fdr, zscore (dissect 0.2: zscore:10.3,0.93), zscore:K,Z0, sigmoid:A,B " \
                   "(e.g. sigmoid:58,-0.25) or raw"


def parse_calibration(spec: str | None) -> Calibration:
    """``mixture`` | ``fdr`` | ``zscore`` | ``zscore:K,Z0`` | ``sigmoid:A,B`` | ``raw``."""
    if spec is None:
        return DEFAULT_CALIBRATION
    if spec == "zscore":
        return Calibration("zscore", ZSCORE_K, ZSCORE_Z0)
    if spec in CALIBRATIONS and not CALIBRATIONS[spec].constants:
        return Calibration(spec)
    kind, _, rest = spec.partition(":")
    if kind in CALIBRATIONS and len(CALIBRATIONS[kind].constants) == 2 and rest:
        try:
            a, b = (float(x) for x in rest.split(","))
        except ValueError:
            a = b = math.nan
        if math.isfinite(a) and math.isfinite(b):
            return Calibration(kind, a, b)
    raise UsageError(f"unknown --calibration {spec!r}", hint=CALIBRATION_HINT)


# ---------------------------------------------------------------------------
# CLIP presence: the one place where cosines become presence
# ---------------------------------------------------------------------------

#: Texts per block of the statistics pass, at most (each text's statistics are computed on its own column, so the
#: blocking never changes a value); fewer on large probes, so that a block's float64 cosines stay near 64 MB.
TEXT_BLOCK = 512
#: Cosines per block of the statistics pass (N images x texts), at most: the pass holds a few float64 and int64
#: copies of a block (sorting, histograms), about 0.5 GB at this size.
BLOCK_CELLS = 8_000_000


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
        self._stats: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.T.shape[0])

    def stats(self) -> dict[str, Any]:
        """What the calibration measures on each text's cosines over all N images ({name: [M] float64}), in fixed
        blocks of up to ``TEXT_BLOCK`` texts and ``BLOCK_CELLS`` cosines (a progress bar when that takes a while)."""
        import torch

        from ..runtime import progress
        from ..similarity import cosines

        if self._stats is None:
            M = self.T.shape[0]
            parts: list[dict[str, Any]] = []
            slow = self.calibration.kind == "mixture" and M * self.I.shape[0] > 4_000_000
            with progress("calibrate presence", M if slow else 0, "concepts") as advance:
                block = max(1, min(TEXT_BLOCK, BLOCK_CELLS // max(1, self.I.shape[0])))
                for s in range(0, M, block):
                    cos = cosines(self.I, self.T[s:s + block]).to(torch.float64)
                    parts.append(self.calibration.measure(cos))
                    advance(cos.shape[1])
            self._stats = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return self._stats

    def columns(self, idx):
        """[N, len(idx)] float64 presence of the texts ``idx`` on every image, on the CPU."""
        import torch

        from ..similarity import cosines

        idx = torch.as_tensor(idx, dtype=torch.long, device=self.T.device)
        stats = self.stats() if self.calibration.needs_stats else {}
        block = max(1, BLOCK_CELLS // max(1, self.I.shape[0]))  # the calibration's temporaries stay bounded
        parts = []
        for s in range(0, len(idx), block):
            part = idx[s:s + block]
            cos = cosines(self.I, self.T.index_select(0, part)).to(torch.float64)
            parts.append(self.calibration.apply(cos, {k: v[part] for k, v in stats.items()}).cpu())
        return torch.cat(parts, dim=1) if parts else torch.zeros((self.I.shape[0], 0), dtype=torch.float64)


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
        if annotations == "classes":
            return cls.from_classes(ids, activations, classes)
        source = cls.from_file(annotations)
        source.check_ids(ids, annotations, activations)
        return source

    def check_ids(self, ids: list[str], annotations, activations) -> None:
        """Refuse annotations whose image ids match none of ``ids`` (the images of ``activations``), naming how many
        matched and an example of each side; warn when only some do."""
        from ..runtime import warn

        annotated = list(dict.fromkeys(i for rows, _ in self._by_concept.values() for i in rows))
        known = set(ids)
        missing = [i for i in annotated if i not in known]
        if len(missing) < len(annotated):
            if missing:
                warn(f"{len(missing)} of the {len(annotated)} images annotated in {annotations} are not images of "
                     f"{activations} (e.g. {missing[0]!r}); their annotations are left out")
            return
        example = ids[0] if ids else "(none)"
        names = {Path(i).name for i in ids}
        hint = ("the annotation ids look like paths: write them as stored in the artifacts, relative to the probe "
                f"(e.g. {example!r})" if any(Path(m).name in names for m in missing[:1000])
                else "annotation ids must be the image ids stored in the artifacts (see `dissect info`)")
        raise UsageError(f"none of the {len(annotated)} image ids in {annotations} is an image of {activations} "
                         f"(0 of {len(ids)} matched; e.g. {missing[0]!r} there, {example!r} here)", hint=hint)

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
