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
    labels: Annotated[Path, typer.Argument(help="labels.parquet (or composed.parquet, explanations.parquet, another method's label CSV), a run folder (its labels), or any file dissect reads or writes (its rows or description).", show_default=False)],
    layer: Annotated[Optional[str], typer.Option("--layer", "-l", help="Only this layer.")] = None,
    grep: Annotated[Optional[str], typer.Option("--grep", "-g", help="Only labels (or candidates) containing this text (case-insensitive).")] = None,
    sort: Annotated[str, typer.Option("--sort", help="Order: similarity (highest score first) or unit (as stored).")] = "unit",
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="At most this many rows.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines on standard output, for pipes.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV on standard output, for pipes.")] = False,
    maps: Annotated[Optional[tuple[str, int]], typer.Option("--maps", help="LAYER UNIT: where the unit fires on its top images (activations.h5 recorded with --maps, or a run folder), as heat grids.", show_default=False)] = None,
):
    """Print labels as a table (or --json / --csv for pipes); any other file dissect knows as its rows or description."""
    from dissect import artifacts as A
    from dissect.describe import rows_of
    from dissect.errors import UsageError

    if maps is not None:
        acts = A.find_run(labels)["activations"] if labels.is_dir() else labels
        if acts is None:
            raise UsageError(f"{labels} holds no activations.h5", hint="give the activations file recorded with --maps")
        _print_maps(acts, maps[0], int(maps[1]), limit, json_out)
        return
    if sort not in ("similarity", "unit"):
        raise UsageError(f"--sort {sort!r}: use similarity or unit")
    if json_out and csv_out:
        raise UsageError("give at most one of --json and --csv")
    path = A.find_run(labels)["labels"] if labels.is_dir() else labels  # a run folder: its labels
    view = rows_of(path)
    if view is None:  # an artifact that is described, not listed
        _print_description(path, json_out)
        return
    rows = _filtered(view, path, layer, grep, sort)
    if rows is None:
        if not (json_out or csv_out):
            return
        rows = []
    if limit is not None:
        rows = rows[:limit]
    if json_out:
        for r in rows:  # valid JSON: NaN and infinities are null
            sys.stdout.write(json.dumps({c: _finite(r[c]) for c in view.columns}, allow_nan=False) + "\n")
    elif csv_out:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(view.columns)
        for r in rows:
            w.writerow(["|".join(map(str, r[c])) if isinstance(r[c], list) else "" if _finite(r[c]) is None else r[c]
                        for c in view.columns])
    else:
        _print_rows(view, rows, Path(path).name)


def _print_maps(path, name: str, unit: int, limit: int | None, json_out: bool) -> None:
    from dissect import artifacts as A
    from dissect.errors import UsageError
    from dissect.maps import heat_rows

    stored = A.maps_in(path)
    if name not in stored:
        raise UsageError(f"{path} holds no maps of {name!r}" + (f" (it has maps of {', '.join(stored)})" if stored else ""),
                         hint="record them with `dissect record --maps K`")
    m = A.read_maps(path, name)
    if not 0 <= unit < m.values.shape[0]:
        raise UsageError(f"{name} has units 0..{m.values.shape[0] - 1}, not {unit}")
    ids = A.read_activations(path, data=False).ids
    keep = [j for j in range(m.rows.shape[1]) if m.rows[unit, j] >= 0][: limit or 4]
    if json_out:
        for j in keep:
            sys.stdout.write(json.dumps({"layer": name, "unit": unit, "rank": j, "id": ids[m.rows[unit, j]],
                                         "score": float(m.scores[unit, j]), "map": m.values[unit, j].tolist()}) + "\n")
        return
    top = float(m.values[unit, keep].max()) if keep else 0.0
    h, w = m.values.shape[2:]
    output.show(f"{name} unit {unit}: where it fires on its top {len(keep)} images ({h}x{w}; █ = {top:.3g})")
    for j in keep:
        output.show(f"#{j + 1} {ids[m.rows[unit, j]]}  summary {m.scores[unit, j]:.3g}")
        for line in heat_rows(m.values[unit, j], top):
            output.show("  │" + line + "│")


def _filtered(view, path, layer, grep, sort):
    """The rows to show (None: --grep matched nothing, which a note says)."""
    from dissect.errors import UsageError

    rows = view.rows
    if layer is not None:
        if "layer" not in view.columns:
            raise UsageError(f"{path} has no layers", hint="leave out --layer")
        present = list(dict.fromkeys(r["layer"] for r in rows))
        if layer not in present:
            raise UsageError(f"{path} has no layer {layer!r}", hint=f"it holds: {', '.join(map(str, present))}")
        rows = [r for r in rows if r["layer"] == layer]
    if grep:
        g = grep.lower()
        before = len(rows)
        rows = [r for r in rows if any(g in str(v).lower() for c in view.searched
                                       for v in (r.get(c) if isinstance(r.get(c), list) else [r.get(c)]))]
        if not rows:
            from dissect.runtime import note

            noun = "units" if view.noun == "neurons" else view.noun
            note(f"no {' or '.join(view.searched)} of the {before} {noun} in {path} contains {grep!r}")
            return None
    if sort == "similarity":
        if view.score is None:
            raise UsageError(f"--sort similarity: {path} has no score to sort by", hint="leave out --sort")
        rows = sorted(rows, key=lambda r: -_number(r[view.score]))
    return rows


def _print_rows(view, rows, name: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dissect.runtime import printable

    table = Table(title=escape(printable(f"{name}: {len(rows)} {view.noun}")), title_justify="left")
    for c in view.columns:
        numeric = any(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows[:50])
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:  # labels may hold anything: escapes and markup are shown, not executed
        table.add_row(*(escape(printable(_cell(c, r[c]))) for c in view.columns))
    output.show(table)


def _cell(column: str, x) -> str:
    if isinstance(x, list):  # candidates: the label is the first, the alternatives follow
        return ", ".join(map(str, x[1:] if column == "candidates" else x))
    if isinstance(x, float):
        return _fmt(_finite(x), "+.3f" if column == "gain" else ".4f" if column == "similarity" else ".3f")
    return "null" if x is None else str(x)


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
def info(artifact: Annotated[Path, typer.Argument(help="Any file dissect reads or writes (images.h5, activations.h5, labels.parquet, directions.safetensors, a label or annotations CSV, ...) or a run folder.", show_default=False)],
         json_out: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False):
    """What an artifact holds and how it was made (format, model, probe, counts, fingerprints)."""
    _print_description(artifact, json_out)


def _print_description(path: Path, json_out: bool) -> None:
    from dissect.describe import describe

    d = describe(path)
    if json_out:
        output.echo_json(d, indent=2)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{path}"), title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in d.items():
        table.add_row(escape(k), escape(v if isinstance(v, str) else json.dumps(v, default=str)))
    output.show(table)
