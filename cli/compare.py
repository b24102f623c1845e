"""dissect compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from . import output
from .app import command


@command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="A: activations.h5 or a run folder (its labels and simulate.parquet come with it).", show_default=False)],
    b: Annotated[Path, typer.Argument(help="B: activations.h5 or a run folder, over the same probe images.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="compare.parquet (a row per unit of A, then B's unmatched); the summary goes to compare.json beside it.", show_default=False)],
    layers: O.LayersOptional = None,
    pair: Annotated[Optional[list[str]], typer.Option("--pair", help="Pair two layers LAYER_A=LAYER_B (repeatable): a layer and a direction entry (layer4=layer4@sae), two layers of one model, two models' penultimate layers [default: the layers both hold, by name].")] = None,
    labels_a: Annotated[Optional[Path], typer.Option("--labels-a", help="A's labels (labels.parquet, composed, explanations or another method's file) [default: a run folder's].")] = None,
    labels_b: Annotated[Optional[Path], typer.Option("--labels-b", help="B's labels [default: a run folder's].")] = None,
    simulate_a: Annotated[Optional[Path], typer.Option("--simulate-a", help="A's simulate.parquet: its correlation per unit as score_a [default: a run folder's].")] = None,
    simulate_b: Annotated[Optional[Path], typer.Option("--simulate-b", help="B's simulate.parquet (score_b).")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP model for the cosine of two matched units' labels (label_cos) [default: the one both labels files were made with].")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="A one-to-one match counts as matched above this correlation.")] = 0.5,
    min_shared: Annotated[float, typer.Option("--min-shared", help="Share of the smaller probe the two files must share (by image id).")] = 0.9,
    cka: Annotated[bool, typer.Option("--cka/--no-cka", help="Linear CKA of each layer pair (costs two Gram products beside the correlations').")] = True,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    show: Annotated[int, typer.Option("--show", min=0, help="Concepts with fewer units in B, and with more, to print per layer pair (all of them are in compare.json).")] = 10,
):
    """What changed between two checkpoints, seeds or models, or a layer and its directions: unit correlations, one-to-one matching, CKA, and the detectors gained and lost -> compare.parquet."""
    from dissect import artifacts as A
    from dissect import compare as stage

    settings = stage.CompareSettings(min_shared=min_shared, threshold=threshold, cka=cka, max_memory=O.parse_size(max_memory),
                                     device=device)
    one = O.split_list(layers) if layers and len(O.split_list(layers)) == 1 else [None]
    side_a = stage.open_side("A", a, labels_a, simulate_a, layer=one[0])
    side_b = stage.open_side("B", b, labels_b, simulate_b, layer=one[0])
    inputs = [a, b] + [p for s in (side_a, side_b) for p in (s.activations, s.labels, s.simulate)]
    A.check_output_path(out, inputs, "a Parquet table and a JSON summary beside it")
    A.check_output_path(A.summary_path_of(out), inputs, "a Parquet table and a JSON summary beside it")
    cmp = stage.compare(side_a, side_b, settings, layers=O.split_list(layers) or None, pairs=pair, clip=clip)
    path, summary = stage.write_comparison(cmp, out)
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    output.show(output.table(
        f"A vs B over {cmp.metadata['shared_images']} shared images: one-to-one matches with r > {threshold:g}",
        ("layer A", "layer B", ("units A / B", "right"), ("CKA", "right"), ("matched", "right"), ("mean r", "right"),
         ("mean best r", "right"), ("labels agree", "right")),
        [[s["layer_a"], s["layer_b"], f"{s['units_a']} / {s['units_b']}", num(s["cka"]),
          f"{s['matched']} ({pct(s['matched_share'])})", num(s["mean_r"]), num(s["mean_best_r"]), pct(s["labels_agree"])]
         for s in cmp.summary]))
    for s in cmp.summary:
        changed = ([c for c in s["concepts"] if c["change"] < 0][:show]
                   + [c for c in s["concepts"] if c["change"] > 0][:show])
        if changed:
            output.show(output.table(f"{s['layer_a']} -> {s['layer_b']}: detectors lost and gained (units carrying each concept)",
                                     ("concept", ("A", "right"), ("B", "right"), ("change", "right"), "status"),
                                     [[c["concept"], c["units_a"], c["units_b"], f"{c['change']:+d}", c["status"]]
                                      for c in changed]))
    output.wrote(path, summary)
