"""dissect decompose."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import command


@command("decompose")
def decompose(
    activations: Annotated[Path, typer.Argument(help="activations.h5 from `dissect record`.", show_default=False)],
    layer: Annotated[str, typer.Option("--layer", "-l", help="The layer to decompose (its recorded summaries).", show_default=False)],
    out: Annotated[str, typer.Option("-o", "--out", help="Output .safetensors file of [K, C] directions.", show_default=False)],
    method: Annotated[str, typer.Option("--method", help="pca (principal axes) or nmf (non-negative parts; layers after a ReLU).")] = "pca",
    k: Annotated[int, typer.Option("--k", min=1, help="Directions to compute.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of NMF's initialisation.")] = 0,
    max_iter: Annotated[int, typer.Option("--max-iter", min=1, help="Most NMF iterations.")] = 300,
):
    """Directions of a layer from its recorded activations (PCA or NMF) -> directions.safetensors, for
    `dissect record --directions LAYER=directions.safetensors`. SAE training is left to SAE libraries."""
    from dissect.decompose import decompose as run

    run(activations, layer, method, k, out, seed=seed, max_iter=max_iter)
