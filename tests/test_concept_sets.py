"""Checks on the concept sets shipped in ``concept_sets/``."""

from pathlib import Path

import pytest

CONCEPT_DIR = Path(__file__).parents[1] / "concept_sets"

EXPECTED_COUNTS = {
    "20k.txt": 20000,
    "10k.txt": 10000,
    "3k.txt": 3000,
    "imagenet.txt": 1000,
    "imagenet-wordnet.txt": 1000,
    "cifar100.txt": 100,
}
UNIQUE_FILES = ["20k.txt", "10k.txt", "3k.txt", "cifar100.txt", "imagenet-wordnet.txt"]


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


# --- The official evaluation's ImageNet names (WordNet synonym strings) -----------------------------------------

#: sha256 of the official CLIP-Dissect repository's data/imagenet_labels.txt (1000 lines, no trailing newline).
OFFICIAL_IMAGENET_LABELS_SHA256 = "8b243a5b56f530010b42d64d8ef33c2660224447aded823f4d9de2cb1902a70e"


def test_imagenet_wordnet_is_the_official_list_plus_a_final_newline():
    """docs/FIDELITY.md's statement, exactly: the official file's bytes, then the final newline every shipped list
    ends with (issue #25: it said "byte for byte")."""
    import hashlib

    raw = (CONCEPT_DIR / "imagenet-wordnet.txt").read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    assert hashlib.sha256(raw[:-1]).hexdigest() == OFFICIAL_IMAGENET_LABELS_SHA256
    lines = read_lines("imagenet-wordnet.txt")
    assert lines[0] == "tench, Tinca tinca" and lines[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert lines[134] == "crane, bird" and lines[517] == "crane, machine"  # the official disambiguation


def test_imagenet_wordnet_is_timms_synset_lemmas_in_class_order():
    """Independently of the file: timm's synset list and lemma table give the same strings."""
    from importlib import resources

    info = resources.files("timm.data") / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemma = dict(ln.split("\t", 1) for ln in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    lines = read_lines("imagenet-wordnet.txt")
    differ = [k for k, s in enumerate(synsets) if lemma[s] != lines[k]]
    assert differ == [134, 517]


def test_truth_and_concepts_take_imagenet_wordnet():
    from dissect.concepts import load_concepts
    from dissect.evaluate import load_truth

    truth = load_truth("imagenet-wordnet")
    assert truth.names[0] == "tench, Tinca tinca" and len(truth.names) == 1000 and truth.source == "shipped:imagenet-wordnet"
    assert len(load_concepts("imagenet-wordnet").concepts) == 1000


# --- The paper's own concept lists: downloaded on first use, pinned, cached ----------------------------------------


def test_paper_lists_are_pinned_to_a_commit_of_the_official_repository():
    import re

    from dissect.concepts import REMOTE_SETS

    assert set(REMOTE_SETS) == {"paper-20k", "paper-10k", "paper-3k"}
    for name, rs in REMOTE_SETS.items():
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/Trustworthy-ML-Lab/CLIP-dissect/[0-9a-f]{40}/data/"
                            r"(20k|10k|3k)\.txt", rs.url), rs.url
        assert name.endswith(rs.url.rsplit("/", 1)[1][:-4])
    assert not any(f.name.startswith("paper-") for f in CONCEPT_DIR.iterdir())  # downloaded, never shipped


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A loopback HTTP server holding one concept list, registered as paper-20k with its sha256."""
    import hashlib
    import http.server
    import threading
    from functools import partial

    from dissect import concepts

    (tmp_path / "www").mkdir()
    body = "the\nof\nand\nstop!/go\ndog\n".encode()
    (tmp_path / "www" / "20k.txt").write_bytes(body)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = partial(Quiet, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/20k.txt"
    rs = concepts.RemoteSet("paper-20k", url, hashlib.sha256(body).hexdigest(), "a test list")
    monkeypatch.setitem(concepts.REMOTE_SETS, "paper-20k", rs)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DISSECT_OFFLINE", raising=False)
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    yield server, rs, tmp_path
    server.shutdown()


def test_paper_list_is_downloaded_once_checked_and_cached(served):
    from dissect.concepts import load_concepts

    server, rs, tmp_path = served
    first = load_concepts("paper-20k")
    assert first.concepts == ["the", "of", "and", "stop!/go", "dog"]
    assert first.source == f"{rs.url}#sha256={rs.sha256}"
    server.shutdown()  # the network is gone: the cached copy serves
    again = load_concepts("paper-20k")
    assert again.concepts == first.concepts and again.fingerprint == first.fingerprint


def test_a_download_that_does_not_match_its_pinned_sha256_is_refused_and_not_cached(served, monkeypatch):
    from dissect import concepts
    from dissect.errors import InputError
    server, rs, tmp_path = served
    monkeypatch.setitem(concepts.REMOTE_SETS, "paper-20k", concepts.RemoteSet(rs.name, rs.url, "0" * 64, rs.about))
    with pytest.raises(InputError, match="pinned sha256"):
        concepts.load_concepts("paper-20k")
    assert not (tmp_path / "cache" / "concept_sets").exists() or not list((tmp_path / "cache" / "concept_sets").iterdir())


def test_offline_the_paper_list_fails_in_one_line_naming_the_url_and_the_flag(tmp_path, monkeypatch):
    """Through the real command, with the download refused at once (as on a machine without network)."""
    import socket

    from typer.testing import CliRunner

    from dissect import concepts
    from dissect.cli.main import app

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def offline(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    r = CliRunner().invoke(app, ["embed-text", "paper-3k", "--clip", "RN50", "-o", str(tmp_path / "t.h5")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: cannot download paper-3k") and concepts.REMOTE_SETS["paper-3k"].url in err
    assert "--concepts /path/to/3k.txt" in err
    assert not (tmp_path / "t.h5").exists()


# --- Profanity: left out of the demo, and shipped lists without it ----------------------------------------------


def test_clean_sets_are_the_shipped_lists_without_the_profanity_list():
    from dissect.concepts import CLEAN_SETS, load_concepts, profanity

    bad = profanity()
    assert "shit" in bad and len(bad) == 362
    for name in CLEAN_SETS:
        full, clean = load_concepts(name[: -len("-clean")]), load_concepts(name)
        assert clean.concepts == [c for c in full.concepts if c.lower() not in bad]
        assert 0 < len(full.concepts) - len(clean.concepts) < 100
        assert "without" in clean.source and clean.fingerprint != full.fingerprint  # the choice is recorded


def test_the_demo_shows_no_profanity(demo_run):
    import json

    import pyarrow.parquet as pq

    from dissect.concepts import profanity

    out, result = demo_run
    bad = profanity()
    words = (out / "concepts-mixed.txt").read_text().split("\n")
    assert not [w for w in words if w.lower() in bad]
    for f in out.glob("labels-*.parquet"):
        rows = pq.read_table(f).to_pylist()
        assert not {c for r in rows for c in r["candidates"] if c.lower() in bad}, f
    assert json.loads((out / "demo.json").read_text())["common_words"] == "3k-clean"
