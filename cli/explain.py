"""dissect explain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from .app import command


@command("explain")
def explain(
    activations: O.Activations,
    out: O.Out,
    images: Annotated[Optional[Path], typer.Option("--images", "-i", help="images.h5 (CLIP mode: concept presence from its CLIP model).")] = None,
    text: O.Text = None,
    concepts: O.Concepts = None,
    score_images: Annotated[Optional[Path], typer.Option("--score-images", help="images.h5 of another CLIP model: score the explanations on the held-out images with its presence (an independent simulator, as Linear Explanations fit with one SigLIP and score with a larger one); `correlation_fit_presence` keeps the score under the fitting presence.")] = None,
    annotations: O.Annotations = None,
    class_names: O.ClassNames = None,
    superclasses: O.Superclasses = None,
    layers: O.LayersOptional = None,
    max_concepts: Annotated[int, typer.Option("--max-concepts", "-K", min=1, help="Most concepts per explanation.")] = 5,
    width: Annotated[int, typer.Option("--width", min=1, help="Candidate concepts per unit (those most correlated with it on the train images).")] = 20,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Smallest gain in validation correlation for another concept (Linear Explanations: 0.02).")] = 0.02,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of the images held out (by image id) to score the explanations on.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the id-hashed splits.")] = 0,
    calibration: O.Calibration = "mixture",
    unit_batch: Annotated[Optional[int], typer.Option("--unit-batch", min=1, help="Units fitted at once [default: from --max-memory]; never changes the result.")] = None,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 256,
):
    """Linear explanations: a weighted handful of concepts per unit, scored on held-out images -> explanations.parquet."""
    from dissect import explain as stage
    from dissect.evaluate.presence import parse_calibration

    settings = stage.ExplainSettings(max_concepts=max_concepts, width=width, tolerance=tolerance, holdout=holdout,
                                     seed=seed, calibration=parse_calibration(calibration), unit_batch=unit_batch,
                                     class_names=class_names, superclasses=superclasses)
    stage.explain(activations, out, images=images, text=text, concepts=concepts, annotations=annotations,
                  layers=O.split_list(layers) or None, settings=settings, compute=O.compute(device, max_memory, batch_size),
                  score_images=score_images)
