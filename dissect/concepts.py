"""Concept sets: the texts neurons are labelled with.

A concept set is a .txt file (one concept per line), the name of a set shipped in
``concept_sets/`` (``20k``, ``10k``, ``3k``: wordfreq's most common English words;
``imagenet``, ``imagenet-wordnet``, ``cifar100``: class names), or the name of one of
the paper's own lists (``paper-20k``, ``paper-10k``, ``paper-3k``), which are not
shipped (their source is LDC-derived, for research use) but downloaded on first use
from the official repository at a pinned commit and cached.
Lines are stripped; blank lines and repeated concepts are dropped (first
occurrence kept). Labels are stored as the concept strings themselves, never as
positions in the file, so dropped lines can never shift a label.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import InputError
from .fingerprint import fingerprint_strings
from .runtime import cache_dir, note, warn


def normalise(text: str) -> str:
    """How concept names are matched wherever two are compared (labels with annotations, with true class names):
    case-blind, '_' as a space, runs of whitespace as one ('Great_White  shark ' -> 'great white shark')."""
    return " ".join(str(text).replace("_", " ").casefold().split())


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


@dataclass(frozen=True)
class RemoteSet:
    """A concept list downloaded on first use, pinned to a commit (and, where known, a sha256)."""

    name: str
    url: str
    sha256: str | None      # None: no checksum could be pinned (see README); the download's is recorded
    about: str
    flag: str = "--concepts"  # the option that takes a local copy instead


#: The official CLIP-Dissect repository at the commit whose notebooks use data/20k.txt, 10k.txt and 3k.txt.
PAPER_REPO_COMMIT = "bf89a3afc1bce557fcc9a7651357cf20eed9b337"
_PAPER_DATA = f"https://raw.githubusercontent.com/Trustworthy-ML-Lab/CLIP-dissect/{PAPER_REPO_COMMIT}/data"
REMOTE_SETS: dict[str, RemoteSet] = {
    "paper-20k": RemoteSet("paper-20k", f"{_PAPER_DATA}/20k.txt", None,
                           "the official code's data/20k.txt, the paper's 20,000 most common English words"),
    "paper-10k": RemoteSet("paper-10k", f"{_PAPER_DATA}/10k.txt", None, "the official code's data/10k.txt (Table 1)"),
    "paper-3k": RemoteSet("paper-3k", f"{_PAPER_DATA}/3k.txt", None, "the official code's data/3k.txt (Table 1)"),
}


#: Linear Explanations' repository at its current main: the superclass hierarchies of their label mode.
LE_REPO_COMMIT = "73bf429816faaedd860e793d113877f981198982"
_LE_DATA = f"https://raw.githubusercontent.com/Trustworthy-ML-Lab/Linear-Explanations/{LE_REPO_COMMIT}/data/concept_sets"
SUPERCLASS_SETS: dict[str, RemoteSet] = {
    "imagenet": RemoteSet("superclasses-imagenet", f"{_LE_DATA}/imagenet_superclass_to_ids.json", None,
                          "Linear Explanations' 400 WordNet superclasses of the ImageNet classes", "--superclasses"),
    "cifar100": RemoteSet("superclasses-cifar100", f"{_LE_DATA}/cifar100_superclass_to_ids.json", None,
                          "Linear Explanations' 19 superclasses of the CIFAR-100 classes", "--superclasses"),
}


@dataclass(frozen=True)
class Superclasses:
    """A class hierarchy: each superclass name with the (0-based) indices of the classes it holds."""

    name: str
    members: dict[str, tuple[int, ...]]
    source: str
    sha256: str

    def describe(self) -> dict:
        return {"superclasses": self.name, "n": len(self.members), "source": self.source, "sha256": self.sha256}


def load_superclasses(spec: str) -> Superclasses:
    """``imagenet`` | ``cifar100`` (Linear Explanations' files, downloaded on first use at a pinned commit and
    cached) | a JSON file of your own: ``{"superclass": [class index, ...], ...}``."""
    import json

    if spec in SUPERCLASS_SETS:
        text, digest = fetch_remote_set(SUPERCLASS_SETS[spec])
        source = SUPERCLASS_SETS[spec].url
    else:
        p = Path(spec)
        if not p.is_file():
            raise InputError(f"superclass file {spec} does not exist",
                             hint="give imagenet, cifar100 or a JSON file {superclass: [class index, ...]}")
        data = p.read_bytes()
        text, digest, source = data.decode("utf-8-sig", "replace"), hashlib.sha256(data).hexdigest(), str(p.resolve())
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise InputError(f"{spec}: not JSON ({e})") from None
    ok = isinstance(raw, dict) and raw and all(
        isinstance(k, str) and k.strip() and isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool)
                                                                                and i >= 0 for i in v)
        for k, v in raw.items())
    if not ok:
        raise InputError(f"{spec} is not a superclass file",
                         hint='it must map each superclass name to a list of class indices: {"fish": [0, 1, 389]}')
    members = {k.replace("_", " ").strip(): tuple(v) for k, v in raw.items()}
    return Superclasses(spec, members, source, digest)


def fetch_remote_set(rs: RemoteSet, timeout: float = 30.0) -> tuple[str, str]:
    """The text of ``rs`` and its sha256: from the cache, else downloaded, checked and cached atomically."""
    folder = cache_dir() / "concept_sets"
    path = folder / f"{rs.name}-{hashlib.sha256(rs.url.encode()).hexdigest()[:12]}.txt"
    if path.is_file():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if rs.sha256 is None or digest == rs.sha256:
            return data.decode("utf-8-sig"), digest
        path.unlink()  # a damaged or foreign cache entry: fetch again
    hint = (f"download {rs.url} where there is internet and give the file in place of {rs.name} "
            f"(e.g. {rs.flag} /path/to/{Path(rs.url).name})")
    if os.environ.get("DISSECT_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise InputError(f"{rs.name} is not cached and this machine is set offline (DISSECT_OFFLINE/HF_HUB_OFFLINE)",
                         hint=hint)
    import urllib.error
    import urllib.request

    note(f"downloading {rs.name} ({rs.about}) from {rs.url}")
    try:
        with urllib.request.urlopen(rs.url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise InputError(f"cannot download {rs.name} from {rs.url} ({reason})", hint=hint) from None
    digest = hashlib.sha256(data).hexdigest()
    if rs.sha256 is not None and digest != rs.sha256:
        raise InputError(f"{rs.url} does not have the pinned sha256 of {rs.name} (got {digest[:16]}..., "
                         f"expected {rs.sha256[:16]}...)",
                         hint="the file changed upstream or in transit; check it and pass it with --concepts FILE")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{rs.url} is not UTF-8 text", hint=hint) from None
    if rs.sha256 is None:
        warn(f"{rs.name}: this dissect version pins no checksum for it; the download has sha256 {digest} "
             f"(recorded with every embedding made from it)")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return text, digest


def shipped_sets() -> list[str]:
    """Names of the concept sets shipped with dissect."""
    root = resources.files("dissect.concept_sets")
    return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".txt"))


#: The shipped word lists without profanity: ``20k-clean`` is ``20k`` minus every word of
#: ``concept_sets/filters/profanity-en.txt`` (LDNOOBW's English list, CC BY 4.0).
CLEAN_SETS = ("20k-clean", "10k-clean", "3k-clean")


def profanity() -> frozenset[str]:
    """The words and phrases of the shipped profanity list, lower-cased."""
    text = resources.files("dissect.concept_sets").joinpath("filters/profanity-en.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def without_profanity(concepts: list[str]) -> list[str]:
    """``concepts`` less those on the profanity list (compared lower-cased)."""
    bad = profanity()
    return [c for c in concepts if c.lower() not in bad]


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
    elif spec in CLEAN_SETS:
        base = load_concepts(spec[: -len("-clean")])
        kept = without_profanity(base.concepts)
        text = "\n".join(kept) + "\n"
        source = f"shipped:{spec} ({base.name} without {len(base.concepts) - len(kept)} words of filters/profanity-en.txt)"
    elif spec in REMOTE_SETS:
        rs = REMOTE_SETS[spec]
        text, digest = fetch_remote_set(rs)
        source = f"{rs.url}#sha256={digest}"
    elif path.exists():
        raise InputError(f"{path} is not a file", hint="give a .txt file with one concept per line")
    else:
        raise InputError(
            f"concept set {spec!r} is neither a file nor a shipped set",
            hint=f"shipped sets: {', '.join(shipped_sets() + list(CLEAN_SETS))}; downloaded on first use: "
                 f"{', '.join(REMOTE_SETS)}",
        )
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InputError(f"{spec} holds a NUL character on line {line}; is it a binary file?",
                         hint="give a UTF-8 text file with one concept per line")
    concepts, blank, dups = parse_concepts(text)
    if not concepts:
        raise InputError(f"concept set {spec} is empty", hint="put one concept per line")
    return ConceptSet(spec, concepts, source, blank, dups)


# ---------------------------------------------------------------------------
# Class lists: the true concept of each unit of a classifier, the names of an ImageFolder's classes
# ---------------------------------------------------------------------------

@dataclass
class Truth:
    """The true concept of each unit: ``names[unit]``."""

    names: dict[int, str]
    source: str


#: Shipped class lists that --truth and --classes take by name (line k = class k).
CLASS_LISTS = ("imagenet", "imagenet-wordnet", "cifar100")


def load_truth(spec: str | os.PathLike) -> Truth:
    """A shipped class list (``imagenet``: open_clip's cleaned names; ``imagenet-wordnet``: the WordNet
    synonym strings the official evaluation uses, "tench, Tinca tinca"; ``cifar100``), a .txt file
    (line k for unit k, repeats allowed) or a .csv/.tsv table with columns ``unit`` and ``name``."""
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"truth file {path} is not UTF-8 text", hint="save it as UTF-8") from None
        if path.suffix.lower() in (".csv", ".tsv"):
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
            if not rows or not {"unit", "name"} <= set(rows[0]):
                raise InputError(f"truth table {path} needs columns 'unit' and 'name'", hint="e.g. unit,name / 0,tench")
            try:
                names = {int(r["unit"]): r["name"].strip() for r in rows}
            except (TypeError, ValueError):
                raise InputError(f"truth table {path}: every 'unit' must be an integer") from None
        else:
            lines = text.splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            names = {k: ln.strip() for k, ln in enumerate(lines) if ln.strip()}
        source = str(path.resolve())
    else:
        if spec not in CLASS_LISTS or spec not in shipped_sets():
            raise InputError(
                f"truth {spec!r} is neither a file nor a known class list",
                hint=f"use {', '.join(CLASS_LISTS)}, a .txt file (line k = unit k) or a unit,name .csv",
            )
        lines = resources.files("dissect.concept_sets").joinpath(f"{spec}.txt").read_text("utf-8").splitlines()
        names = {k: ln.strip() for k, ln in enumerate(lines) if ln.strip()}
        source = f"shipped:{spec}"
    if not names:
        raise InputError(f"truth {spec} names no classes", hint="put one class name per line")
    return Truth(names, source)
