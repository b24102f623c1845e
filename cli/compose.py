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
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=2, help="Single concepts per neuron that are combined (K: K(K-1)/2 pairs) [default: 10; 100 with --procedure paper].")] = None,
    template: Annotated[str, typer.Option("--template", help='How two parts are joined, e.g. "{a} and {b}".')] = "{a} {b}",
    ordered: Annotated[bool, typer.Option("--ordered", help="Ordered pairs (a b and b a) instead of unordered ones.")] = False,
    depth: Annotated[int, typer.Option("--depth", min=2, max=3, help="Parts per label: 2, or 3 by beam search from the best pairs.")] = 2,
    beam: Annotated[int, typer.Option("--beam", min=1, help="Pairs per neuron extended at --depth 3.")] = 5,
    top: O.Top = 5,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    select: Annotated[str, typer.Option("--select", help="One word or two: simulate (a composition must predict the unit's top images better than its best single concept, on the images it was chosen on and on held-out ones), veto (dissect 0.2: a composition must not lower the raw score), argmax (the paper's).")] = "simulate",
    procedure: Annotated[str, typer.Option("--procedure", help="pairs (the candidates' pairs scored in one extended concept set) or paper (the official notebook: ordered pairs of the top 100, each unit scored in a concept set of its own texts; slow).")] = "pairs",
    holdout: Annotated[float, typer.Option("--holdout", help="--select simulate: share of the probe held out (by image id) for the choice.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="--select simulate: seed of the held-out split.")] = 0,
    margin: Annotated[float, typer.Option("--margin", help="--select simulate: how much a composition's AUPRC must beat the single concept's.")] = 0.1,
    calibration: O.Calibration = "mixture",
):
    """Compositional labels ("striped animal"): pairs of each neuron's best concepts, scored like single ones (paper App. A.4),
    kept where they predict the unit better than one word (--select)."""
    from dissect import compose as stage
    from dissect.evaluate.presence import parse_calibration

    settings = stage.ComposeSettings(sim=sim, params=O.parse_params(param), top_k=top_k, template=template, ordered=ordered,
                                     depth=depth, beam=beam, top=top, select=select, procedure=procedure, holdout=holdout,
                                     holdout_seed=seed, margin=margin, calibration=parse_calibration(calibration))
    stage.compose(images, activations, out, text=text, concepts=concepts, labels=labels,
                  layers=O.split_list(layers) or None, settings=settings, compute=O.compute(device, max_memory))
