"""dissect run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import options as O
from .app import command


@command("run")
def run(
    probe: O.Probe,
    clip: O.Clip,
    model: O.Model,
    layers: O.Layers,
    concepts: Annotated[str, typer.Option("--concepts", "-c", help="Concept set: a .txt file, a shipped set (20k, 10k, 3k, imagenet, imagenet-wordnet, cifar100) or the paper's own lists (paper-20k, paper-10k, paper-3k; downloaded on first use).")] = "20k",
    out: Annotated[str, typer.Option("-o", "--out", help="Run folder (created; artifacts already there are reused when their inputs match).")] = "runs/dissect",
    sim: O.Sim = "softwpmi",
    param: O.Param = None,
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    summary: O.Summary = "mean",
    layout: O.Layout = "auto",
    input_size: O.InputSize = None,
    crop_pct: O.CropPct = None,
    mean: O.Mean = None,
    std: O.Std = None,
    interpolation: O.Interpolation = None,
    top: O.Top = 5,
    seed: O.Seed = None,
    chunk: O.Chunk = None,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 64,
    workers: O.Workers = None,
    strict: O.Strict = False,
    checkpoint_every: O.CheckpointEvery = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Job arrays: embed and record only shard I of N into RUN/shards/; a run without --shard then merges and labels.")] = None,
    compose: Annotated[bool, typer.Option("--compose", help="Also compose labels from pairs of each neuron's best concepts (composed.parquet).")] = False,
    compose_top_k: Annotated[int, typer.Option("--compose-top-k", min=2, help="Candidates per neuron combined by --compose.")] = 10,
    compose_template: Annotated[str, typer.Option("--compose-template", help='Template joining two parts, e.g. "{a} and {b}".')] = "{a} {b}",
    explain: Annotated[bool, typer.Option("--explain", help="Also fit linear explanations, scored on held-out images (explanations.parquet; `dissect explain` in CLIP mode).")] = False,
    explain_max_concepts: Annotated[int, typer.Option("--explain-max-concepts", min=1, help="Most concepts per linear explanation.")] = 5,
    precision: O.Precision = "fp32",
    dtype: O.Dtype = "float32",
    channels_last: O.ChannelsLast = None,
    directions: O.Directions = None,
    directions_summary: O.DirectionsSummary = "auto",
    directions_dtype: O.DirectionsDtype = "float32",
    maps: Annotated[int, typer.Option("--maps", min=0, help="Also keep each unit's K top images with its spatial map (record --maps); 0: none.")] = 0,
):
    """The whole pipeline into one run folder: embed-images, embed-text, record, label (with --directions, also
    of SAE latents or other directions of a layer, as LAYER@NAME)."""
    from dissect.label import LabelSettings
    from dissect.pipeline import RunSettings
    from dissect.pipeline import run as run_pipeline

    run_pipeline(
        probe,
        clip,
        O.target(model, weights, model_arg, input_size, crop_pct, mean, std, interpolation),
        O.split_list(layers),
        concepts,
        out,
        settings=RunSettings(summary=summary, layout=layout, dtype=dtype, max_memory=O.parse_size(max_memory),
                             compose=compose, compose_top_k=compose_top_k, compose_template=compose_template,
                             explain=explain, explain_max_concepts=explain_max_concepts, maps=maps),
        label=LabelSettings(sim=sim, params=O.parse_params(param), top=top, seed=seed, chunk=chunk),
        options=O.pass_options(device, batch_size, workers, precision, strict, checkpoint_every, channels_last, shard),
        directions=O.directions(directions, directions_summary, directions_dtype),
    )
