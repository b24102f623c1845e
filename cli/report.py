"""dissect report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from .app import command


@command("report")
def report(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A `dissect run` folder (labels, activations and extras are found there).")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Report folder (index.html + thumbs/), or the .html file with --single-file [default: RUN/report].")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet, or a label CSV another method publishes (CLIP-Dissect, MILAN, NetDissect, Describe-and-Dissect, INVERT, CoSy, FALCON; without RUN).")] = None,
    activations: Annotated[Optional[Path], typer.Option("--activations", "-a", help="activations.h5 the labels came from (without RUN).")] = None,
    probe: Annotated[Optional[list[str]], typer.Option("--probe", help="The probe images [default: the folders recorded in the activations].")] = None,
    composed: Annotated[Optional[Path], typer.Option("--composed", help="composed.parquet, shown on the cards.")] = None,
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="metrics.parquet from `dissect evaluate` (truth and ✓/✗ on the cards).")] = None,
    simulate: Annotated[Optional[Path], typer.Option("--simulate", help="simulate.parquet from `dissect evaluate simulate` (each card's simulation correlation).")] = None,
    explanations: Annotated[Optional[Path], typer.Option("--explanations", help="explanations.parquet from `dissect explain` (each card's weighted concepts).")] = None,
    layers: O.LayersOptional = None,
    top_images: Annotated[int, typer.Option("--top-images", "-n", min=1, help="Most activating images per neuron.")] = 10,
    percentiles: Annotated[bool, typer.Option("--percentiles", help="Also 5 images sampled from each neuron's top 0.1%, 1% and 5% (paper App. A.7).")] = False,
    single_file: Annotated[bool, typer.Option("--single-file", help="One self-contained HTML file (thumbnails inlined).")] = False,
    cutoff: Annotated[Optional[float], typer.Option("--cutoff", help="Interpretability cutoff shown in the layer summaries (0.16 for SoftWPMI).")] = None,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="compare.parquet from `dissect compare`: a page of what changed (detectors lost and gained first, then matched units side by side) instead of the labels' cards [default -o: a folder beside it].")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The target model: recompute conv layers' activation maps and overlay them on the images.")] = None,
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    device: O.Device = "auto",
):
    """An HTML report: one card per neuron with its label, alternatives and most activating images."""
    from dissect.errors import UsageError
    from dissect.artifacts import find_run
    from dissect.report import ReportExtras, ReportSettings, build_report

    if compare is not None:
        from dissect.report_compare import build_compare_report

        if run_dir is not None or labels is not None or activations is not None:
            raise UsageError("--compare makes a page of its own: give it without a run folder, --labels or --activations",
                             hint="dissect report --compare compare.parquet -o compare-report")
        out = out or compare.with_name(compare.stem + ("-report.html" if single_file else "-report"))
        settings = ReportSettings(top_images=top_images, single_file=single_file)
        build_compare_report(compare, out, probe=probe, settings=settings)
        return
    if run_dir is not None:
        found = find_run(run_dir)
        labels = labels or found["labels"]
        activations = activations or found["activations"]
        composed = composed or found["composed"]
        metrics = metrics or found["metrics"]
        simulate = simulate or found["simulate"]
        explanations = explanations or found["explanations"]
        out = out or (run_dir / ("report.html" if single_file else "report"))
    if labels is None or activations is None or out is None:
        raise UsageError("give a run folder, or --labels, --activations and -o", hint="e.g. dissect report runs/x")
    extras = ReportExtras(composed=composed, metrics=metrics, simulate=simulate, explanations=explanations)
    settings = ReportSettings(top_images=top_images, layers=tuple(O.split_list(layers)) or None, percentiles=percentiles,
                              single_file=single_file, cutoff=cutoff)
    build_report(labels, activations, out, probe=probe, extras=extras, settings=settings,
                 maps=O.target(model, weights, model_arg) if model is not None else None, device=device)
