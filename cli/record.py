"""dissect record / layers."""

from __future__ import annotations

from typing import Annotated

import typer

from . import options as O
from . import output
from .app import command


@command("record")
def record(
    probe: O.Probe,
    model: O.Model,
    layers: O.Layers,
    out: O.Out,
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    summary: O.Summary = "mean",
    layout: O.Layout = "auto",
    input_size: O.InputSize = None,
    crop_pct: O.CropPct = None,
    mean: O.Mean = None,
    std: O.Std = None,
    interpolation: O.Interpolation = None,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 64,
    workers: O.Workers = None,
    strict: O.Strict = False,
    shard: O.Shard = None,
    checkpoint_every: O.CheckpointEvery = None,
    precision: O.Precision = "fp32",
    channels_last: O.ChannelsLast = None,
    directions: O.Directions = None,
    directions_summary: O.DirectionsSummary = "auto",
    directions_dtype: O.DirectionsDtype = "float32",
    maps: Annotated[int, typer.Option("--maps", min=0, help="Keep each unit's K top images with its spatial map on each (conv positions, ViT patch tokens, SAE latents at every position), float16 in activations.h5; 0: none.")] = 0,
    max_memory: Annotated[str, typer.Option("--max-memory", help="Memory budget of the kept maps, e.g. 512MB, 4GB.")] = O.DEFAULT_MAX_MEMORY,
):
    """Record each neuron's activation on every probe image -> activations.h5 (adds missing layers to an existing file).

    With --directions, also the units of each direction set (SAE latents, probe or PCA directions), encoded at every
    position of its layer's output, as the entry LAYER@NAME. With --maps K, also where each unit fires on its K
    top images."""
    from dissect import record as stage

    stage.record(
        probe,
        model,
        O.split_list(layers),
        out,
        weights=weights,
        model_args=O.model_args(model_arg),
        summary=summary,
        layout=layout,
        overrides=O.overrides(input_size, crop_pct, mean, std, interpolation),
        options=O.pass_options(device, batch_size, workers, precision, strict, checkpoint_every, channels_last, shard),
        directions=O.directions(directions, directions_summary, directions_dtype),
        maps=maps,
        max_memory=O.parse_size(max_memory),
    )


@command("layers")
def layers(
    model: Annotated[str, typer.Argument(help="timm:NAME, torchvision:NAME or path/to/file.py:function.", show_default=False)],
    weights: Annotated[str, typer.Option("--weights", help="Weights to load ('none' needs no download).")] = "none",
    model_arg: O.ModelArg = None,
    input_size: O.InputSize = None,
    layout: O.Layout = "auto",
    all_modules: Annotated[bool, typer.Option("--all", help="Also list modules whose output is not a 2-4-D tensor.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
    device: O.Device = "cpu",
    directions: O.Directions = None,
):
    """List a model's layer names with output shapes and neuron counts (one dummy forward pass).

    With --directions LAYER=SPEC, each direction set is listed after its layer as LAYER@NAME with its unit count."""

    from dissect.record import list_layers

    target, infos = list_layers(model, weights, O.model_args(model_arg), O.overrides(input_size, None, None, None, None),
                                device, layout, directions=O.directions(directions))
    from dissect.directions import is_entry

    shown = [i for i in infos if all_modules or i.layout != "-" or is_entry(i.name)]
    if json_out:
        for i in shown:
            output.echo_json({"layer": i.name, "type": i.module_type, "shape": list(i.raw_shape),
                              "layout": i.layout or None, "layout_source": i.layout_source or None,
                              "neurons": i.n_units if i.layout and i.calls == 1 and i.rows == 1 else None,
                              "calls": i.calls, "rows_per_image": i.rows})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{model} (input {_input_shape(target)})", title_justify="left")
    for col in ("layer", "type", "output shape", "layout", "neurons"):
        table.add_column(col, justify="right" if col == "neurons" else "left", overflow="fold")
    undecided = reused = folded = 0
    for i in shown:
        if i.calls > 1:
            reused += 1
            units = f"- (runs {i.calls}x)"
        elif i.rows != 1:
            folded += 1
            units = "- (folded)"
        elif not i.layout:
            undecided += 1
            units = "?"
        else:
            units = str(i.n_units or "-")
        table.add_row(escape(i.name), i.module_type, "x".join(map(str, i.raw_shape)), i.layout or "?", units)
    import sys

    # Piped (grep, less): as wide as the longest names, never cut; on a terminal, folded to fit.
    cells = [[i.name, i.module_type, "x".join(map(str, i.raw_shape)), i.layout or "?", "- (runs 99x)"] for i in shown]
    widest = sum(max(len(c[k]) for c in cells + [["layer", "type", "output shape", "layout", "neurons"]])
                 for k in range(5)) + 17
    console = output.console(width=widest, soft_wrap=not sys.stdout.isatty())
    console.print(table)
    if undecided:
        console.print(f"?: {undecided} layer(s) whose channel axis cannot be decided from the module; record them with "
                      f"--layout LAYER=nchw|nhwc (or nlc|ncl)")
    if reused:
        console.print(f"runs Nx: {reused} module(s) called several times in one forward pass (shared activations); "
                      f"record their parent block instead")
    if folded:
        console.print(f"folded: {folded} module(s) whose batch axis holds windows or heads, not images; record the "
                      f"block around them")


@command("merge")
def merge(
    shards: Annotated[list[str], typer.Argument(help="Shard files written with --shard 1/N ... N/N (any order).", show_default=False)],
    out: O.Out,
):
    """Join the shards of an embed-images or record pass into the artifact one process would have written."""
    from dissect.runtime import note
    from dissect.shards import merge as merge_shards

    path = merge_shards(shards, out)
    note(f"wrote {path} from {len(shards)} shards")


def _input_shape(target) -> str:
    from dissect.record import example_input

    return "x".join(map(str, example_input(target).shape[1:]))
