"""Beyond the paper: how stable each label is when the probe is resampled, and how significant (permutation
p-values). Both relabel the layer many times from the recorded artifacts; nothing is re-encoded."""

from __future__ import annotations

import numpy as np

from .. import artifacts as A
from ..errors import UsageError
from ..runtime import progress, resolve_device
from .results import Evaluation


def _layer_activations(activations, name, order):
    q = A.read_activation_layer(activations, name)
    return q if order is None else q[order]


def _best_labels(sim, q, I, T, params, max_memory):
    from ..similarity import score_layer

    res = score_layer(sim, q, I, T, params, top=1, max_memory=max_memory)
    return res.indices[:, 0].cpu().numpy(), res.values[:, 0].cpu().numpy()


def _relabel_inputs(images, activations, text, concepts, sim, params, layers, device, max_memory):
    """What stability and pvalues relabel from: parameters, aligned inputs on the device, the memory budget."""
    import torch

    from ..inputs import open_inputs
    from ..budget import memory_budget
    from ..similarity import check_probe_size, resolve_params

    params = resolve_params(sim, params)
    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, device)
    dev = resolve_device(device)
    I = torch.from_numpy(img.embeddings).to(dev)
    T = torch.from_numpy(txt.embeddings).to(dev)
    check_probe_size(sim, params, I.shape[0])
    return params, acts, order, txt, I, T, dev, memory_budget(max_memory)


def label_stability(images, activations, text=None, concepts=None, sim: str = "softwpmi", params=None,
                    layers=None, resamples: int = 20, seed: int = 0, device: str = "auto",
                    max_memory: int | None = None) -> Evaluation:
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
    params, acts, order, txt, I, T, dev, budget = _relabel_inputs(images, activations, text, concepts, sim, params, layers,
                                                                 device, max_memory)
    N = I.shape[0]
    rng = np.random.default_rng(seed)
    units: dict[str, list] = {c: [] for c in ("layer", "unit", "label", "similarity", "stability", "modal_label")}
    summary = []
    for name in acts.layers:
        q = torch.from_numpy(_layer_activations(activations, name, order)).to(dev)
        full, values = _best_labels(sim, q, I, T, params, budget)
        draws = np.empty((resamples, q.shape[1]), dtype=np.int64)
        with progress(f"stability {name}", resamples, "resamples") as advance:
            for b in range(resamples):
                idx = torch.from_numpy(rng.integers(0, N, N)).to(dev)
                draws[b], _ = _best_labels(sim, q[idx], I[idx], T, params, budget)
                advance(1)
        stability = (draws == full[None, :]).mean(axis=0)
        modal = [int(np.bincount(draws[:, k]).argmax()) for k in range(q.shape[1])]
        units["layer"] += [name] * q.shape[1]
        units["unit"] += list(range(q.shape[1]))
        units["label"] += [txt.keys[i] for i in full]
        units["similarity"] += values.tolist()
        units["stability"] += stability.tolist()
        units["modal_label"] += [txt.keys[i] for i in modal]
        summary.append({"layer": name, "units": int(q.shape[1]), "mean_stability": float(stability.mean()),
                        "stable_share": float((stability >= 0.9).mean()), "resamples": resamples, "seed": seed,
                        "similarity_fn": sim, "params": params})
    return Evaluation(units, summary)


def permutation_pvalues(images, activations, text=None, concepts=None, sim: str = "softwpmi", params=None,
                        layers=None, permutations: int = 100, seed: int = 0, device: str = "auto",
                        max_memory: int | None = None) -> Evaluation:
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
    params, acts, order, txt, I, T, dev, budget = _relabel_inputs(images, activations, text, concepts, sim, params, layers,
                                                                 device, max_memory)
    N = I.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    units: dict[str, list] = {c: [] for c in ("layer", "unit", "label", "similarity", "p_value")}
    summary = []
    for name in acts.layers:
        q = torch.from_numpy(_layer_activations(activations, name, order))
        full, observed = _best_labels(sim, q.to(dev), I, T, params, budget)
        C = q.shape[1]
        at_least = np.zeros(C, dtype=np.int64)
        with progress(f"permutations {name}", permutations, "draws") as advance:
            for _ in range(permutations):
                perm = torch.argsort(torch.rand(N, C, generator=gen), dim=0)  # one permutation per unit
                _, best = _best_labels(sim, torch.gather(q, 0, perm).to(dev), I, T, params, budget)
                at_least += best >= observed
                advance(1)
        p = (1 + at_least) / (1 + permutations)
        units["layer"] += [name] * C
        units["unit"] += list(range(C))
        units["label"] += [txt.keys[i] for i in full]
        units["similarity"] += observed.tolist()
        units["p_value"] += p.tolist()
        summary.append({"layer": name, "units": C, "permutations": permutations, "seed": seed,
                        "share_p_below_0.01": float((p < 0.01).mean()), "share_p_below_0.05": float((p < 0.05).mean()),
                        "similarity_fn": sim, "params": params})
    return Evaluation(units, summary)

