"""What commands print, set up once: the console, tables, JSON, the error line and the "wrote ..." note.

Tables go to standard output (they are the command's answer); progress, notes and errors go
to standard error. Piped or captured, the console is wide enough that cells and paths are
not cut at 80 columns.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

#: The width of a console that is not a terminal (a pipe, a file, a test).
PIPED_WIDTH = 200


def console(width: int | None = None, soft_wrap: bool = False):
    """The console a command prints its answer on (``width``: a width of its own when piped)."""
    from rich.console import Console

    out = Console(soft_wrap=soft_wrap)
    if out.is_terminal:
        return out
    return Console(width=width or PIPED_WIDTH, soft_wrap=soft_wrap)


def table(title: str, columns: Iterable[str | tuple[str, str]], rows: Iterable[Iterable[Any]] = (), **options):
    """A rich Table with ``columns`` (a name, or (name, justify)) and ``rows`` (cells as given: str() of each)."""
    from rich.table import Table

    out = Table(title=title, title_justify="left", **options)
    for col in columns:
        name, justify = (col, "left") if isinstance(col, str) else col
        out.add_column(name, justify=justify)
    for row in rows:
        out.add_row(*(str(c) for c in row))
    return out


def show(*renderables) -> None:
    """Print tables or lines on the answer console."""
    out = console()
    for r in renderables:
        out.print(r)


def echo_json(data: Any, indent: int | None = None) -> None:
    """``data`` as JSON on standard output (one line unless ``indent``)."""
    import typer

    typer.echo(json.dumps(data, indent=indent, default=str))


def error(message: str) -> None:
    """The one-line error of a failed command, on standard error (control characters and markup shown, not run)."""
    from rich.console import Console
    from rich.markup import escape

    from dissect.runtime import printable

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(printable(message))}")


def wrote(*paths) -> None:
    """The note that says which files a command wrote."""
    from dissect.runtime import note

    note("wrote " + " and ".join(str(p) for p in paths))
