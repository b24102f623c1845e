"""dissect show / info: terminal views of labels and artifacts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import command


@command("show")
def show(
    labels: Annotated[Path, typer.Argument(help="labels.parquet (or composed.parquet).", show_default=False)],
    layer: Annotated[Optional[str], typer.Option("--layer", "-l", help="Only this layer.")] = None,
    grep: Annotated[Optional[str], typer.Option("--grep", "-g", help="Only labels (or candidates) containing this text (case-insensitive).")] = None,
    sort: Annotated[str, typer.Option("--sort", help="Order: similarity (highest first) or unit.")] = "unit",
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="At most this many rows.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines on standard output, for pipes.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV on standard output, for pipes.")] = False,
):
    """Print labels as a table (or --json / --csv for pipes)."""
    from dissect import artifacts as A
    from dissect.errors import UsageError

    if sort not in ("similarity", "unit"):
        raise UsageError(f"--sort {sort!r}: use similarity or unit")
    if json_out and csv_out:
        raise UsageError("give at most one of --json and --csv")
    df = A.read_table(labels, A.LABELS_FORMAT).to_pandas()  # a clear error for anything that is not a labels file
    if layer is not None:
        if layer not in set(df.layer):
            raise UsageError(f"{labels} has no layer {layer!r}", hint=f"it holds: {', '.join(dict.fromkeys(df.layer))}")
        df = df[df.layer == layer]
    if grep:
        g = grep.lower()
        hit = df.label.str.lower().str.contains(g, regex=False) | df.candidates.map(lambda c: any(g in x.lower() for x in c))
        df = df[hit]
    if sort == "similarity":
        df = df.sort_values("similarity", ascending=False, kind="stable")
    if limit is not None:
        df = df.head(limit)
    cols = [c for c in ("layer", "unit", "label", "similarity", "candidates", "gain") if c in df.columns]
    if json_out:
        for rec in df[cols].to_dict(orient="records"):
            rec["candidates"] = list(rec["candidates"])
            sys.stdout.write(json.dumps(rec) + "\n")
        return
    if csv_out:
        out = df[cols].copy()
        out["candidates"] = out["candidates"].map(lambda c: "|".join(c))
        out.to_csv(sys.stdout, index=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{Path(labels).name}: {len(df)} neurons", title_justify="left")
    for c in cols:
        table.add_column(c, justify="right" if c in ("unit", "similarity", "gain") else "left")
    for rec in df[cols].itertuples(index=False):
        row = dict(zip(cols, rec))
        cells = [str(row["layer"]), str(row["unit"]), str(row["label"]), f"{row['similarity']:.4f}",
                 ", ".join(list(row["candidates"])[1:])]
        if "gain" in row:
            cells.append(f"{row['gain']:+.3f}")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not wrap at 80 columns
        console = Console(width=200)
    console.print(table)


@command("info")
def info(artifact: Annotated[Path, typer.Argument(help="images.h5, text.h5, activations.h5, labels.parquet, ...", show_default=False)],
         json_out: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False):
    """What an artifact holds and how it was made (format, model, probe, counts, fingerprints)."""
    from dissect.describe import describe

    d = describe(artifact)
    if json_out:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{artifact}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in d.items():
        table.add_row(k, v if isinstance(v, str) else json.dumps(v, default=str))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not wrap at 80 columns
        console = Console(width=200)
    console.print(table)
