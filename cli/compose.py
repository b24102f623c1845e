"""dissect compose."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from .app import command


@command("compose")
def compose(
    images: O.Images,
    activations: O.Activations,
    out: O.Out,
    text: O.Text = None,
    concepts: O.Concepts = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet whose candidates are combined (then --sim only scores); default: candidates from --sim.")] = None,
    sim: O.Sim = "softwpmi",
    param: O.Param = None,
    layers: O.LayersOptional = None,
    top_k: Annotated[int, typer.Option("--top-k", min=2, help="Single concepts per neuron that are combined (K: K(K-1)/2 pairs).")] = 10,
    template: Annotated[str, typer.Option("--template", help='How two parts are joined, e.g. "{a} and {b}".')] = "{a} {b}",
    ordered: Annotated[bool, typer.Option("--ordered", help="Ordered pairs (a b and b a) instead of unordered ones.")] = False,
    depth: Annotated[int, typer.Option("--depth", min=2, max=3, help="Parts per label: 2, or 3 by beam search from the best pairs.")] = 2,
    beam: Annotated[int, typer.Option("--beam", min=1, help="Pairs per neuron extended at --depth 3.")] = 5,
    top: O.Top = 5,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
):
    """Compositional labels ("striped animal"): pairs of each neuron's best concepts, scored like single ones (paper App. A.4)."""
    from dissect import compose as stage

    stage.compose(images, activations, out, text=text, concepts=concepts, labels=labels, sim=sim, params=O.parse_params(param),
        layers=O.split_list(layers) or None, top_k=top_k, template=template, ordered=ordered, depth=depth, beam=beam,
        top=top, device=device, max_memory=O.parse_size(max_memory))
