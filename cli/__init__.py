"""dissect's command line: a thin Typer front-end over the dissect library.

Installed as ``dissect.cli`` (the top-level ``cli/`` folder of the repository is
mapped into the package), so it never clashes with other packages' ``cli``.
"""
