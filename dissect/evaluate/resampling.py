"""Beyond the paper: how stable each label is when the probe is resampled, and how significant (permutation
p-values). Both relabel the layer many times from the recorded artifacts; nothing is re-encoded."""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass
from typing import Any

from .. import artifacts as A
from ..errors import UsageError
from ..label import LabelSettings
from ..runtime import progress, resolve_device
from ..settings import Compute, no_other_fields
from .results import Evaluation


def _settings(settings, compute, fields) -> tuple[LabelSettings, Compute]:
    """The labelling settings and compute of a call (objects, or their fields as keyword arguments)."""
    out = LabelSettings.of(settings, **LabelSettings.take(fields)), Compute.of(compute, **Compute.take(fields))
    no_other_fields(fields, "relabel")
    return out


@dataclass
class _Relabel:
    """What stability and pvalues relabel from: the similarity function and its parameters, the aligned inputs
    on the device (images ``I``, concepts ``T``), the activations' row order and the memory budget."""

    sim: str
    params: dict[str, Any]
    activations: Any
    acts: A.Activations
    order: np.ndarray | None
    txt: A.Embeddings
    I: Any
    T: Any
    device: Any
    budget: int

    @classmethod
    def open(cls, images, activations, text, concepts, layers, settings: LabelSettings, compute: Compute) -> "_Relabel":
        import torch

        from ..inputs import open_inputs
        from ..similarity import check_probe_size

        params = settings.resolved_params()
        img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, compute.device, compute.cache,
                                            compute.batch_size)
        dev = resolve_device(compute.device)
        I = torch.from_numpy(img.embeddings).to(dev)
        check_probe_size(settings.sim, params, I.shape[0])
        return cls(settings.sim, params, activations, acts, order, txt, I, torch.from_numpy(txt.embeddings).to(dev),
                   dev, compute.budget)

    def layer(self, name: str) -> np.ndarray:
        q = A.read_activation_layer(self.activations, name)
        return q if self.order is None else q[self.order]

    def best(self, q, I=None):
        """Each unit's best concept and its similarity, for activations ``q`` on images ``I`` (default: all)."""
        from ..scoring import score_layer

        res = score_layer(self.sim, q, self.I if I is None else I, self.T, self.params, top=1, max_memory=self.budget)
        return res.indices[:, 0].cpu().numpy(), res.values[:, 0].cpu().numpy()


def label_stability(images, activations, text=None, concepts=None, layers=None, resamples: int = 20, seed: int = 0,
                    settings: LabelSettings | None = None, compute: Compute | None = None, **fields) -> Evaluation:
    """How often each unit keeps its label when the probe set is resampled (bootstrap).

    The layer is relabelled on ``resamples`` bootstrap resamples of the probe images
    (N draws with replacement; the recorded activations and image embeddings are
    reused, nothing is re-encoded). Per unit: ``stability`` = share of resamples
    whose label equals the label on the whole probe. Per layer: the mean stability
    and the share of units with stability >= 0.9 ("stable"). Cost: ``resamples``
    times `label` on the layer.
    """
    import torch

    if resamples < 1:
        raise UsageError(f"--resamples must be at least 1, got {resamples}")
    rl = _Relabel.open(images, activations, text, concepts, layers, *_settings(settings, compute, fields))
    N = rl.I.shape[0]
    rng = np.random.default_rng(seed)
    units: dict[str, list] = {c: [] for c in ("layer", "unit", "label", "similarity", "stability", "modal_label")}
    summary = []
    for name in rl.acts.layers:
        q = torch.from_numpy(rl.layer(name)).to(rl.device)
        full, values = rl.best(q)
        draws = np.empty((resamples, q.shape[1]), dtype=np.int64)
        with progress(f"stability {name}", resamples, "resamples") as advance:
            for b in range(resamples):
                idx = torch.from_numpy(rng.integers(0, N, N)).to(rl.device)
                draws[b], _ = rl.best(q[idx], rl.I[idx])
                advance(1)
        stability = (draws == full[None, :]).mean(axis=0)
        modal = [int(np.bincount(draws[:, k]).argmax()) for k in range(q.shape[1])]
        units["layer"] += [name] * q.shape[1]
        units["unit"] += list(range(q.shape[1]))
        units["label"] += [rl.txt.keys[i] for i in full]
        units["similarity"] += values.tolist()
        units["stability"] += stability.tolist()
        units["modal_label"] += [rl.txt.keys[i] for i in modal]
        summary.append({"layer": name, "units": int(q.shape[1]), "mean_stability": float(stability.mean()),
                        "stable_share": float((stability >= 0.9).mean()), "resamples": resamples, "seed": seed,
                        "similarity_fn": rl.sim, "params": rl.params})
    return Evaluation(units, summary)


def permutation_pvalues(images, activations, text=None, concepts=None, layers=None, permutations: int = 100,
                        seed: int = 0, settings: LabelSettings | None = None, compute: Compute | None = None,
                        **fields) -> Evaluation:
    """An empirical p-value per unit: how often shuffled activations score as well as the real ones.

    For each of ``permutations`` draws, every unit's activations are shuffled over the
    probe images (each unit by its own permutation, same probe, same concepts) and the
    layer is labelled again; ``p_value`` = (1 + #{draws whose best similarity >= the
    observed best}) / (1 + permutations), so the smallest possible value is
    1 / (1 + permutations). For cos, cos-cubed and rank reorder a unit's score depends
    only on its own activations, so this is the exact permutation test; for SoftWPMI
    and WPMI the λ correction compares a unit with the rest of its layer, which the
    null shuffles too (an approximation when units are strongly related). Cost:
    ``permutations`` times `label` on the layer.
    """
    import torch

    if permutations < 1:
        raise UsageError(f"--permutations must be at least 1, got {permutations}")
    rl = _Relabel.open(images, activations, text, concepts, layers, *_settings(settings, compute, fields))
    N = rl.I.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    units: dict[str, list] = {c: [] for c in ("layer", "unit", "label", "similarity", "p_value")}
    summary = []
    for name in rl.acts.layers:
        q = torch.from_numpy(rl.layer(name))
        full, observed = rl.best(q.to(rl.device))
        C = q.shape[1]
        at_least = np.zeros(C, dtype=np.int64)
        with progress(f"permutations {name}", permutations, "draws") as advance:
            for _ in range(permutations):
                perm = torch.argsort(torch.rand(N, C, generator=gen), dim=0)  # one permutation per unit
                _, best = rl.best(torch.gather(q, 0, perm).to(rl.device))
                at_least += best >= observed
                advance(1)
        p = (1 + at_least) / (1 + permutations)
        units["layer"] += [name] * C
        units["unit"] += list(range(C))
        units["label"] += [rl.txt.keys[i] for i in full]
        units["similarity"] += observed.tolist()
        units["p_value"] += p.tolist()
        summary.append({"layer": name, "units": C, "permutations": permutations, "seed": seed,
                        "share_p_below_0.01": float((p < 0.01).mean()), "share_p_below_0.05": float((p < 0.05).mean()),
                        "similarity_fn": rl.sim, "params": rl.params})
    return Evaluation(units, summary)

