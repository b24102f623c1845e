"""Concept sets: the texts neurons are labelled with.

A concept set is a .txt file (one concept per line) or the name of a set shipped
in ``concept_sets/`` (``20k``, ``10k``, ``3k``, ``imagenet``, ``cifar100``).
Lines are stripped; blank lines and repeated concepts are dropped (first
occurrence kept). Labels are stored as the concept strings themselves, never as
positions in the file, so dropped lines can never shift a label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import InputError
from .fingerprint import fingerprint_strings


@dataclass
class ConceptSet:
    name: str                 # shipped name or file path as given
    concepts: list[str]
    source: str               # "shipped:<name>" or an absolute path
    dropped_blank: int = 0
    dropped_duplicates: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return fingerprint_strings(self.concepts)


def shipped_sets() -> list[str]:
    """Names of the concept sets shipped with dissect."""
    root = resources.files("dissect.concept_sets")
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".txt"))


def parse_concepts(text: str) -> tuple[list[str], int, list[str]]:
    """Concepts from file text: strip lines, drop blanks and repeats (first kept)."""
    seen: set[str] = set()
    concepts, dups, blank = [], [], 0
    for line in text.splitlines():
        c = line.strip()
        if not c:
            blank += 1
        elif c in seen:
            dups.append(c)
        else:
            seen.add(c)
            concepts.append(c)
    return concepts, blank, dups


def load_concepts(name_or_path: str | os.PathLike) -> ConceptSet:
    """Load a shipped concept set by name, or a .txt file (UTF-8, one concept per line)."""
    spec = str(name_or_path)
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})", hint="save it as UTF-8") from None
        source = str(path.resolve())
    elif path.suffix == "" and spec in shipped_sets():
        text = resources.files("dissect.concept_sets").joinpath(f"{spec}.txt").read_text("utf-8")
        source = f"shipped:{spec}"
    elif path.exists():
        raise InputError(f"{path} is not a file", hint="give a .txt file with one concept per line")
    else:
        raise InputError(
            f"concept set {spec!r} is neither a file nor a shipped set",
            hint=f"shipped sets: {', '.join(shipped_sets())}",
        )
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"{spec} holds a NUL character on line {line}; is it a binary file?",
                         hint="give a UTF-8 text file with one concept per line")
    concepts, blank, dups = parse_concepts(text)
    if not concepts:
        raise InputError(f"concept set {spec} is empty", hint="put one concept per line")
    return ConceptSet(spec, concepts, source, blank, dups)
