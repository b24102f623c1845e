"""dissect evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from .app import command


@command("evaluate")
def evaluate(
    labels: Annotated[list[Path], typer.Argument(help="labels.parquet files (several: one row each, the paper's Table 3).", show_default=False)],
    truth: Annotated[str, typer.Option("--truth", help="True name of each unit: imagenet, cifar100, a .txt file (line k = unit k) or a unit,name .csv.", show_default=False)],
    layer: Annotated[Optional[str], typer.Option("--layer", help="The layer the truth describes [default: the only one, or the one with as many units as classes].")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP model for the clip_cos column [default: the one recorded with the labels; the paper used ViT-B-16:openai].")] = None,
    sentence_model: Annotated[str, typer.Option("--sentence-model", help="sentence-transformers model name or local folder for sentence_cos ('none' to skip).")] = "all-mpnet-base-v2",
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Top-K match against the first K candidates [default: all candidates].")] = None,
    cutoff: Annotated[Optional[float], typer.Option("--cutoff", help="Similarity above which a unit counts as interpretable (App. A.8: 0.16 for SoftWPMI).")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="metrics.parquet (one row per unit); the summary goes to metrics.json beside it.")] = None,
    device: O.Device = "auto",
):
    """Score labels against known concepts: accuracy, top-K, CLIP and sentence cosine (paper §4.2)."""
    from dissect import artifacts as A
    from dissect.evaluate import evaluate as run
    from dissect.evaluate import write_evaluation

    if out is not None:
        A.check_output_path(out, [*labels, truth])
        A.check_output_path(Path(out).with_suffix(".json"), [*labels, truth])
    ev = run([str(p) for p in labels], truth, layer=layer, clip=clip, sentence_model=sentence_model, top_k=top_k,
             cutoff=cutoff, device=device)
    _print_summary(ev)
    if out is not None:
        parquet, summary = write_evaluation(ev, out)
        from dissect.runtime import info

        info(f"wrote {parquet} and {summary}")


def _print_summary(ev) -> None:
    from rich.console import Console
    from rich.table import Table

    topk = next(k for k in ev.summary[0] if k.startswith("top") and k.endswith("_accuracy"))
    table = Table(title="Label quality (paper Table 3 layout)", title_justify="left")
    cols = ["labels", "similarity", "concepts", "layer", "units", "accuracy", topk.replace("_accuracy", ""), "CLIP cos"]
    has_sentence = ev.summary[0].get("sentence_cos") is not None
    if has_sentence:
        cols.append("sentence cos")
    if "interpretable" in ev.summary[0]:
        cols.append("interpretable")  # of the evaluated layer; every layer's share is in the JSON
    for c in cols:
        table.add_column(c, justify="right" if c not in ("labels", "similarity", "concepts", "layer") else "left")
    for row in ev.summary:
        cells = [Path(row["labels"]).stem, row["similarity_fn"], row["concept_set"], row["layer"], str(row["units"]),
                 f"{row['accuracy']:.1%}", f"{row[topk]:.1%}", f"{row['clip_cos']:.4f}"]
        if has_sentence:
            cells.append(f"{row['sentence_cos']:.4f}")
        if "interpretable" in row:
            cells.append(f"{row['interpretable'][row['layer']]:.0%}")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not truncate cells to 80 columns
        console = Console(width=200)
    console.print(table)
