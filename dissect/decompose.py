"""Stage 2b: directions of a layer from its recorded activations (PCA or NMF components).

``dissect decompose activations.h5 --layer L --method pca|nmf --k K -o directions.safetensors``
works on the per-image summaries activations.h5 already holds (no model, no images)
and writes K directions in the layer's C-channel space, for ``record --directions
L=directions.safetensors``. Training sparse autoencoders is left to SAE libraries
(SAELens, saev, ViT-Prisma): ``--directions`` reads their checkpoints.

* ``pca``: the K leading principal axes of the centred activations (float64
  eigendecomposition of the C x C covariance). Each axis is signed so that its longer
  tail of projections is positive: the images a unit's label describes are its
  high end. ``directions`` = the axes; the file also holds ``mean`` and
  ``explained_variance``.
* ``nmf``: X ≈ W H with W [N, K], H [K, C] non-negative (multiplicative updates on
  the Frobenius loss, seeded). A unit is a part of the dictionary H, and its value on
  an image is that part's least-squares coefficient, so ``directions`` =
  (H Hᵀ)⁻¹ H (the encoder) and ``components`` = H (the dictionary). Needs
  non-negative activations (a layer after a ReLU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts as A
from .directions import entry_name
from .errors import UsageError
from .runtime import note, progress

METHODS = ("pca", "nmf")


@dataclass
class Decomposition:
    directions: np.ndarray          # [K, C]: what --directions applies (latent = activation . direction)
    extra: dict[str, np.ndarray]    # method-specific: mean and explained_variance (pca), components (nmf)
    info: dict                      # figures for the file's metadata


#: An axis varies when its variance exceeds this fraction of the largest (float64 round-off sits far below).
VARYING = 1e-9


def _enough_images(x: np.ndarray, method: str) -> None:
    if x.shape[0] < 2:
        raise UsageError(f"{method} needs at least 2 images, and the layer was recorded over {x.shape[0]}",
                         hint="record the layer over a probe of many images (hundreds)")


def pca(x: np.ndarray, k: int) -> Decomposition:
    """The k leading principal axes of ``x`` [N, C] (rows: images), signed so their longer tail is positive."""
    x = np.asarray(x, dtype=np.float64)
    _enough_images(x, "pca")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    varying = int((vals > VARYING * max(float(vals.max()), 0.0)).sum()) if vals.max() > 0 else 0
    if k > varying:
        raise UsageError(f"--k {k}: the activations vary along only {varying} axis{'' if varying == 1 else 'es'} "
                         f"over {x.shape[0]} images, so further principal axes are arbitrary",
                         hint=f"give --k <= {varying}, or record more (and more varied) images" if varying
                         else "record more (and more varied) images")
    axes = vecs[:, order].T                       # [k, C]
    proj = xc @ axes.T
    flip = proj.max(axis=0) < -proj.min(axis=0)   # the longer tail goes positive
    axes[flip] *= -1
    total = float(vals.clip(min=0).sum()) or 1.0
    ev = vals[order].clip(min=0)
    return Decomposition(axes, {"mean": mean, "explained_variance": ev},
                         {"explained_variance_ratio": float(ev.sum() / total)})


def nmf(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-5, advance=None) -> Decomposition:
    """X ≈ W H (non-negative, Frobenius loss, Lee-Seung multiplicative updates in float64, seeded)."""
    x = np.asarray(x, dtype=np.float64)
    _enough_images(x, "nmf")
    if x.size and x.min() < -1e-6 * max(1.0, float(np.abs(x).max())):
        raise UsageError(f"nmf needs non-negative activations, but the layer reaches {x.min():.4g}",
                         hint="use --method pca, or decompose a layer after a ReLU")
    x = x.clip(min=0)
    if not x.any():
        raise UsageError("nmf: the layer is zero on every image, so it has no parts", hint="decompose a layer that fires")
    n, c = x.shape
    rng = np.random.default_rng(seed)
    scale = np.sqrt(max(x.mean(), 1e-12) / k)
    w = rng.uniform(0.1, 1.0, (n, k)) * scale
    h = rng.uniform(0.1, 1.0, (k, c)) * scale
    eps = 1e-12
    norm_x = float(np.linalg.norm(x)) or 1.0
    err0 = prev = float(np.linalg.norm(x - w @ h)) / norm_x
    it = 0
    for it in range(1, max_iter + 1):
        h *= (w.T @ x) / (w.T @ w @ h + eps)
        w *= (x @ h.T) / (w @ (h @ h.T) + eps)
        if advance is not None:
            advance(1)
        if it % 10 == 0 or it == max_iter:
            err = float(np.linalg.norm(x - w @ h)) / norm_x
            if prev - err < tol * max(prev, eps):
                prev = err
                break
            prev = err
    # Scale each part so its dictionary row has unit norm (the coefficients carry the magnitude).
    norms = np.linalg.norm(h, axis=1).clip(min=eps)
    h = h / norms[:, None]
    encoder = np.linalg.pinv(h @ h.T) @ h
    return Decomposition(encoder, {"components": h}, {"relative_error": prev, "initial_relative_error": err0,
                                                       "iterations": it})


def decompose(activations: str | os.PathLike, layer: str, method: str, k: int, out: str | os.PathLike,
              seed: int = 0, max_iter: int = 300) -> Path:
    """K directions of ``layer`` from the summaries ``activations`` holds, written to ``out`` (safetensors)."""
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    out = A.check_output_path(out, [activations], "a safetensors file")
    if Path(out).suffix != ".safetensors":
        raise UsageError(f"-o {out}: directions are written as safetensors", hint="name the file DIRECTIONS.safetensors")
    acts = A.read_activations(activations, [layer], data=False)
    la = acts.layer_attrs[layer]
    if la.get("directions_kind"):
        raise UsageError(f"{layer} is already a set of directions ({la.get('directions_kind')})",
                         hint=f"decompose the layer itself ({la.get('directions_layer', layer.partition('@')[0])})")
    x = A.read_activation_layer(activations, layer)
    n, c = x.shape
    if not 1 <= k <= min(n, c):
        raise UsageError(f"--k {k}: {layer} has {c} channels over {n} images", hint=f"give 1 <= --k <= {min(n, c)}")
    if method == "pca":
        with progress(f"pca {layer}", 1, "steps") as advance:
            d = pca(x, k)
            advance(1)
    else:
        with progress(f"nmf {layer}", max_iter, "iterations") as advance:
            d = nmf(x, k, seed, max_iter, advance=advance)
    meta = {"method": method, "k": k, "layer": layer, "channels": c, "images": n, "seed": seed if method == "nmf" else None,
            "source": {"path": str(Path(activations).resolve()), "model": acts.model,
                       "inputs_fingerprint": acts.attrs.get("inputs_fingerprint", ""),
                       "summary": la.get("summary"), "layer_fingerprint": la.get("fingerprint")},
            "figures": d.info, "provenance": A.provenance(stage="decompose")}
    A.write_directions(out, {"directions": d.directions, **d.extra}, meta)
    figures = ", ".join(f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}" for key, v in d.info.items())
    note(f"wrote {out}: {k} {method} directions of {layer} ({c} channels, {n} images; {figures}); use them with "
         f"`dissect record ... --directions {entry_name(layer, method)}={out}`")
    return Path(out)
