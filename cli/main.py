"""Entry point of the ``dissect`` console script."""

from __future__ import annotations

from . import demo, embed, label, record, run  # noqa: F401  (commands register themselves)
from .app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
