"""Checks on the concept sets shipped in ``concept_sets/``."""

from pathlib import Path

import pytest

CONCEPT_DIR = Path(__file__).parents[1] / "concept_sets"

EXPECTED_COUNTS = {
    "20k.txt": 20000,
    "10k.txt": 10000,
    "3k.txt": 3000,
    "imagenet.txt": 1000,
    "cifar100.txt": 100,
}
UNIQUE_FILES = ["20k.txt", "10k.txt", "3k.txt", "cifar100.txt"]


def read_raw(name: str) -> str:
    return (CONCEPT_DIR / name).read_bytes().decode("utf-8")


def read_lines(name: str) -> list:
    return read_raw(name).split("\n")[:-1]


@pytest.mark.parametrize("name,count", sorted(EXPECTED_COUNTS.items()))
def test_count(name, count):
    assert len(read_lines(name)) == count


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_format(name):
    raw = read_raw(name)
    assert "\r" not in raw
    assert raw.endswith("\n") and not raw.endswith("\n\n")
    for i, line in enumerate(read_lines(name)):
        assert line, f"{name}: blank line {i}"
        assert line == line.strip(), f"{name}: whitespace around line {i}: {line!r}"


@pytest.mark.parametrize("name", UNIQUE_FILES)
def test_no_duplicates(name):
    lines = read_lines(name)
    assert len(set(lines)) == len(lines)


def test_word_sets_are_prefixes_of_20k():
    words = read_lines("20k.txt")
    assert read_lines("10k.txt") == words[:10000]
    assert read_lines("3k.txt") == words[:3000]


def test_word_sets_are_lowercase_alpha():
    for word in read_lines("20k.txt"):
        assert len(word) >= 2 and word.isascii() and word.isalpha() and word.islower(), word


def test_imagenet_order():
    lines = read_lines("imagenet.txt")
    assert lines[0] == "tench"
    assert lines[999] == "toilet paper"


def test_cifar100_order():
    lines = read_lines("cifar100.txt")
    assert lines[0] == "apple"
    assert lines[1] == "aquarium fish"
    assert lines[99] == "worm"
    assert all("_" not in line for line in lines)
    assert [line.replace(" ", "_") for line in lines] == sorted(
        line.replace(" ", "_") for line in lines
    )
