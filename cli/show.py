"""dissect show / info: terminal views of labels and artifacts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import output
from .app import command


@command("show")
def show(
    labels: Annotated[Path, typer.Argument(help="labels.parquet (or composed.parquet, explanations.parquet), or a run folder (its labels).", show_default=False)],
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
    from dissect.runtime import printable

    if sort not in ("similarity", "unit"):
        raise UsageError(f"--sort {sort!r}: use similarity or unit")
    if json_out and csv_out:
        raise UsageError("give at most one of --json and --csv")
    if labels.is_dir():  # a run folder (`dissect run`, `dissect demo`): its labels
        labels = A.find_run(labels)["labels"]
    table = A.read_table(labels, (A.LABELS_FORMAT, A.COMPOSED_FORMAT, A.EXPLAIN_FORMAT))  # one line for anything else
    rows = table.to_pylist()
    explained = "explanation" in table.column_names
    if explained:  # a linear explanation: its text is the label, its held-out correlation the score
        rows = [dict(r, label=r["explanation"], similarity=r["correlation"], candidates=[""] + list(r["concepts"] or []))
                for r in rows]
    if layer is not None:
        present = list(dict.fromkeys(r["layer"] for r in rows))
        if layer not in present:
            raise UsageError(f"{labels} has no layer {layer!r}", hint=f"it holds: {', '.join(map(str, present))}")
        rows = [r for r in rows if r["layer"] == layer]
    if grep:
        g = grep.lower()
        before = len(rows)
        rows = [r for r in rows if g in str(r["label"]).lower() or any(g in str(c).lower() for c in r["candidates"] or [])]
        if not rows:
            from dissect.runtime import note

            note(f"no label or candidate of the {before} units in {labels} contains {grep!r}")
            if not (json_out or csv_out):
                return
    if sort == "similarity":
        rows.sort(key=lambda r: -_number(r["similarity"]))
    if limit is not None:
        rows = rows[:limit]
    cols = [c for c in ("layer", "unit", "label", "similarity", "candidates", "gain") if c in table.column_names]
    if explained:
        cols = ["layer", "unit", "explanation", "correlation", "single_concept", "single_correlation"]
    if json_out:
        for r in rows:  # valid JSON: NaN and infinities are null
            rec = {c: _finite(r[c]) for c in cols}
            sys.stdout.write(json.dumps(rec, allow_nan=False) + "\n")
        return
    if csv_out:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow(["|".join(map(str, r[c] or [])) if c == "candidates" else "" if _finite(r[c]) is None else r[c]
                        for c in cols])
        return
    from rich.markup import escape
    from rich.table import Table

    view = Table(title=escape(printable(f"{Path(labels).name}: {len(rows)} neurons")), title_justify="left")
    for c in cols:
        view.add_column(c, justify="right" if c in ("unit", "similarity", "gain", "correlation", "single_correlation") else "left")
    for r in rows:  # labels may hold anything: escapes and markup are shown, not executed
        if explained:
            cells = [r["layer"], r["unit"], r["explanation"], _fmt(r["correlation"], ".3f"), r["single_concept"] or "",
                     _fmt(r["single_correlation"], ".3f")]
            view.add_row(*(escape(printable(str(x))) for x in cells))
            continue
        cells = [r["layer"], r["unit"], r["label"], _fmt(r["similarity"], ".4f"), ", ".join(map(str, (r["candidates"] or [])[1:]))]
        if "gain" in r:
            cells.append(_fmt(r["gain"], "+.3f"))
        view.add_row(*(escape(printable(str(x))) for x in cells))
    output.show(view)


def _number(x) -> float:
    """Sort key: NaN and missing values last."""
    import math

    return x if isinstance(x, (int, float)) and not math.isnan(x) else -math.inf


def _finite(x):
    """A JSON-safe value: NaN and infinities (and lists of them) become None."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _fmt(x, spec: str) -> str:
    return "null" if x is None else format(x, spec)


@command("info")
def info(artifact: Annotated[Path, typer.Argument(help="images.h5, text.h5, activations.h5, labels.parquet, ...", show_default=False)],
         json_out: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False):
    """What an artifact holds and how it was made (format, model, probe, counts, fingerprints)."""
    from dissect.describe import describe

    d = describe(artifact)
    if json_out:
        output.echo_json(d, indent=2)
        return
    from rich.table import Table

    table = Table(title=f"{artifact}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in d.items():
        table.add_row(k, v if isinstance(v, str) else json.dumps(v, default=str))
    output.show(table)
