#!/usr/bin/env python
"""Generate the concept sets shipped with dissect.

Run from anywhere with::

    python concept_sets/generate.py            # writes next to this script
    python concept_sets/generate.py --out DIR  # writes into DIR

Files written (one concept per line, UTF-8, LF line endings, a single
trailing newline, no blank lines, no comments):

* ``20k.txt``, ``10k.txt``, ``3k.txt`` -- the most frequent English words
  according to ``wordfreq`` (``top_n_list('en', ..., wordlist='best')``),
  filtered as described in :func:`common_words`.  The 10k and 3k lists are
  prefixes of the 20k list (most frequent first).
* ``imagenet.txt`` -- the 1000 ImageNet-1k class names in class-index order,
  from ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES`` (the OpenAI CLIP
  prompt-engineering names).  Not deduplicated: line ``k`` is class ``k``.
* ``imagenet-wordnet.txt`` -- the same classes as WordNet synonym strings
  ("tench, Tinca tinca"), from timm's synset files: the ground truth and the
  Table 3 concept set of the official CLIP-Dissect evaluation (equal to its
  ``data/imagenet_labels.txt``).
* ``cifar100.txt`` -- the 100 CIFAR-100 fine labels in class-index order
  (alphabetical order of the original names, as in torchvision), with
  underscores replaced by spaces.

See ``SOURCES.md`` for the provenance, versions and counts.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Iterable, List, Sequence

#: Sizes of the word-frequency concept sets; each smaller set is a prefix of
#: the largest one.
WORD_SET_SIZES = (20000, 10000, 3000)

#: How many entries of the raw wordfreq ranking are scanned.  Filtering drops
#: a few percent of entries, so this is comfortably more than needed.
WORDFREQ_SCAN = 50000

#: Purely alphabetic lowercase ASCII, at least two letters.
_WORD_RE = re.compile(r"[a-z]{2,}")

#: Web/markup artefacts that wordfreq ranks among common "words" (its corpora
#: include web text).  They are URL or HTML fragments, not visual concepts.
#: Only tokens that the data ranks within the first ~20k entries are listed; real
#: words and abbreviations (e.g. "net", "amp", "gif", "pdf", "url") are kept.
JUNK_TOKENS = frozenset({"http", "https", "www", "com", "org", "html", "php"})

#: CIFAR-100 fine label names in class-index order (the original names from
#: the dataset's ``meta`` file, which are sorted alphabetically; torchvision's
#: ``CIFAR100.classes`` yields exactly this list, but only after downloading
#: the dataset).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver",
    "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly",
    "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach",
    "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew",
    "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe",
    "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


def common_words(n: int, scan: int = WORDFREQ_SCAN) -> List[str]:
    """Return the ``n`` most frequent English words from ``wordfreq``.

    Walks ``wordfreq.top_n_list('en', scan, wordlist='best')`` in frequency
    order and keeps an entry only if, after lowercasing, it

    * consists solely of ASCII letters ``a-z`` and has length >= 2
      (drops numbers, contractions such as "don't", accented words and
      single letters such as "a", "i", "s"),
    * is not in :data:`JUNK_TOKENS`,
    * has not been kept already (first occurrence wins).

    Stops as soon as ``n`` words are collected.
    """
    import wordfreq

    kept: List[str] = []
    seen = set()
    for raw in wordfreq.top_n_list("en", scan, wordlist="best"):
        word = raw.lower()
        if not _WORD_RE.fullmatch(word) or word in JUNK_TOKENS or word in seen:
            continue
        seen.add(word)
        kept.append(word)
        if len(kept) == n:
            return kept
    raise RuntimeError(f"only {len(kept)} words after scanning {scan} entries; raise --scan")


def imagenet_classes() -> List[str]:
    """Return the 1000 ImageNet class names from open_clip, in index order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = [str(c).strip() for c in IMAGENET_CLASSNAMES]
    if len(names) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet classes, got {len(names)}")
    return names


#: The official CLIP-Dissect code's ``data/imagenet_labels.txt`` disambiguates the two
#: classes whose WordNet lemma is "crane" (a bird and a machine); every other line is
#: the synset's lemma string as WordNet (and timm) give it.
WORDNET_OVERRIDES = {134: "crane, bird", 517: "crane, machine"}
#: sha256 of the official list's bytes (no trailing newline), for the check below.
OFFICIAL_IMAGENET_LABELS_SHA256 = "8b243a5b56f530010b42d64d8ef33c2660224447aded823f4d9de2cb1902a70e"


def imagenet_wordnet_classes() -> List[str]:
    """The 1000 ImageNet classes as WordNet synonym strings ("tench, Tinca tinca"), in class-index order.

    From timm's ``imagenet_synsets.txt`` (class order) and ``imagenet_synset_to_lemma.txt``,
    with the two "crane" classes disambiguated as in the official CLIP-Dissect repository's
    ``data/imagenet_labels.txt`` (which the result equals byte for byte, checked here).
    """
    import hashlib
    from importlib import resources

    info = resources.files("timm.data") / "_info"
    synsets = [s.strip() for s in (info / "imagenet_synsets.txt").read_text().splitlines() if s.strip()]
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    names = [WORDNET_OVERRIDES.get(k, lemmas[s].strip()) for k, s in enumerate(synsets)]
    if len(names) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet synsets, got {len(names)}")
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    if digest != OFFICIAL_IMAGENET_LABELS_SHA256:
        raise RuntimeError(f"the WordNet class list differs from the official imagenet_labels.txt (sha256 {digest})")
    return names


def cifar100_classes() -> List[str]:
    """Return the 100 CIFAR-100 fine labels with underscores as spaces."""
    names = list(CIFAR100_CLASSES)
    if len(names) != 100 or len(set(names)) != 100:
        raise RuntimeError("CIFAR-100 list must hold 100 distinct names")
    if names != sorted(names):
        raise RuntimeError("CIFAR-100 names must be in alphabetical (class-index) order")
    return [name.replace("_", " ") for name in names]


def duplicates(names: Sequence[str]) -> dict:
    """Map each repeated name to the list of indices where it occurs."""
    counts = Counter(names)
    return {
        name: [i for i, other in enumerate(names) if other == name]
        for name, c in counts.items()
        if c > 1
    }


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write one item per line (UTF-8, LF, single trailing newline)."""
    lines = list(lines)
    for line in lines:
        if not line or line != line.strip() or "\n" in line or "\r" in line:
            raise ValueError(f"bad concept {line!r} for {path.name}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script)",
    )
    parser.add_argument(
        "--scan",
        type=int,
        default=WORDFREQ_SCAN,
        help="number of raw wordfreq entries to scan (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    print(f"wordfreq {version('wordfreq')}, open_clip_torch {version('open_clip_torch')}")

    words = common_words(max(WORD_SET_SIZES), scan=args.scan)
    for size in sorted(WORD_SET_SIZES, reverse=True):
        name = f"{size // 1000}k.txt"
        print(f"{name}: {write_lines(out / name, words[:size])} lines")

    imagenet = imagenet_classes()
    print(f"imagenet.txt: {write_lines(out / 'imagenet.txt', imagenet)} lines")
    for name, idx in duplicates(imagenet).items():
        print(f"  duplicate ImageNet name {name!r} at indices {idx}")

    wordnet = imagenet_wordnet_classes()
    print(f"imagenet-wordnet.txt: {write_lines(out / 'imagenet-wordnet.txt', wordnet)} lines")
    for name, idx in duplicates(wordnet).items():
        print(f"  duplicate WordNet name {name!r} at indices {idx}")

    cifar = cifar100_classes()
    print(f"cifar100.txt: {write_lines(out / 'cifar100.txt', cifar)} lines")


if __name__ == "__main__":
    main()
