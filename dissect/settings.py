"""Settings that travel together, as one object.

A stage's settings are one frozen dataclass, built once by the command line (or by
``Settings.of`` from a library call's keyword arguments) and handed down, instead of a
dozen parameters passed from function to function. ``Compute`` says how the artifact
stages run (device, memory budget, text batches, caches), whatever they compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from .errors import UsageError

S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Base of every settings object, checked whenever one is made (``check``); ``of`` builds one from another and
    keyword arguments."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def of(cls: type[S], value: S | None = None, **changes: Any) -> S:
        """``value`` (default: the defaults) with ``changes`` (field names) applied."""
        unknown = sorted(set(changes) - cls.names())
        if unknown:
            raise TypeError(f"unknown {cls.__name__} setting {unknown[0]!r} (known: {', '.join(sorted(cls.names()))})")
        return replace(value if value is not None else cls(), **changes)

    @classmethod
    def take(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Remove this class's fields from ``given`` (a function's ``**fields``) and return them."""
        return {k: given.pop(k) for k in list(given) if k in cls.names()}

    def check(self) -> None:
        """Raise a UsageError naming the first setting out of range (subclasses say which)."""


def no_other_fields(given: dict[str, Any], where: str) -> None:
    """A library call's keyword arguments left over after every settings object took its own: a TypeError."""
    if given:
        raise TypeError(f"{where}() got an unexpected keyword argument {sorted(given)[0]!r}")


@dataclass(frozen=True)
class Compute(Settings):
    """How an artifact stage runs, not what it computes: the device, the working-memory budget
    (``--max-memory``, bytes; None: ``budget.DEFAULT_MAX_MEMORY``), texts per CLIP batch when
    concepts are embedded on demand, the cache folder of those embeddings, and a CLIP model
    already loaded (the pipeline's), to embed with instead of loading it again."""

    device: str = "auto"
    max_memory: int | None = None
    batch_size: int = 256
    cache: Any = None
    clip: Any = field(default=None, compare=False, repr=False)

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def budget(self) -> int:
        """The working-memory budget in bytes."""
        from .budget import memory_budget

        return memory_budget(self.max_memory)
