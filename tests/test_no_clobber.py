"""No command ever overwrites one of its inputs: every command that writes is run with -o set to each of its inputs
(also through a symlink), and must refuse in one line, leaving the input byte for byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import make_images
from test_cli import assert_one_line_error, invoke

TIMM = ["--model", "timm:test_resnet", "--weights", "none", "--model-arg", "num_classes=3"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_clip):
    d = tmp_path_factory.mktemp("inputs")
    probe = make_images(d / "probe", 24, seed=5)
    listing = d / "probe.txt"
    listing.write_text("\n".join(str(p) for p in sorted(probe.rglob("*.png"))) + "\n")
    concepts = d / "concepts.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\ndog\n")
    truth = d / "truth.txt"
    truth.write_text("red\nblue\ngreen\n")
    invoke("embed-images", listing, "--clip", tiny_clip, "-o", d / "images.h5", "--device", "cpu")
    invoke("embed-text", concepts, "--clip", tiny_clip, "-o", d / "text.h5")
    invoke("record", listing, *TIMM, "--layers", "global_pool,fc", "-o", d / "acts.h5")
    common = ["-i", d / "images.h5", "-a", d / "acts.h5", "-t", d / "text.h5"]
    invoke("label", *common, "--param", "top_k=5", "-o", d / "labels.parquet")
    invoke("compose", *common, "--labels", d / "labels.parquet", "--layers", "fc", "--param", "top_k=5", "--top-k", 3,
           "-o", d / "composed.parquet")
    invoke("evaluate", d / "labels.parquet", "--truth", truth, "--layer", "fc", "--sentence-model", "none",
           "-o", d / "metrics.parquet")
    invoke("embed-images", listing, "--clip", tiny_clip, "--shard", "1/2", "-o", d / "s1.h5")
    invoke("embed-images", listing, "--clip", tiny_clip, "--shard", "2/2", "-o", d / "s2.h5")
    return d, tiny_clip


def _cases(d: Path, clip: str):
    """(name, command with OUT where -o goes, the inputs to aim it at)."""
    common = ["-i", d / "images.h5", "-a", d / "acts.h5", "-t", d / "text.h5"]
    labels, acts = d / "labels.parquet", d / "acts.h5"
    return [
        ("embed-images", ["embed-images", d / "probe.txt", "--clip", clip, "-o", "OUT"], [d / "probe.txt"]),
        ("embed-text", ["embed-text", d / "concepts.txt", "--clip", clip, "-o", "OUT"], [d / "concepts.txt"]),
        ("record", ["record", d / "probe.txt", *TIMM, "--layers", "fc", "-o", "OUT"], [d / "probe.txt"]),
        ("label", ["label", *common, "--param", "top_k=5", "-o", "OUT"], [d / "images.h5", acts, d / "text.h5"]),
        ("label --concepts", ["label", "-i", d / "images.h5", "-a", acts, "--concepts", d / "concepts.txt",
                              "--param", "top_k=5", "-o", "OUT"], [d / "concepts.txt"]),
        ("compose", ["compose", *common, "--labels", labels, "--param", "top_k=5", "-o", "OUT"],
         [d / "images.h5", acts, d / "text.h5", labels]),
        ("evaluate", ["evaluate", labels, "--truth", d / "truth.txt", "--layer", "fc", "--sentence-model", "none",
                      "-o", "OUT"], [labels, d / "truth.txt"]),
        ("stability", ["evaluate", "stability", *common, "--resamples", 2, "--param", "top_k=5", "-o", "OUT"],
         [d / "images.h5", acts, d / "text.h5"]),
        ("pvalues", ["evaluate", "pvalues", *common, "--permutations", 2, "--sim", "cos", "-o", "OUT"],
         [d / "images.h5", acts, d / "text.h5"]),
        ("predict-class", ["evaluate", "predict-class", "--labels", labels, "-a", acts, "--layer", "global_pool", *TIMM,
                           "--classes", d / "truth.txt", "--sentence-model", "none", "-o", "OUT"],
         [labels, acts, d / "truth.txt"]),
        ("weights", ["evaluate", "weights", "--labels", labels, "--layer", "global_pool", *TIMM, "--classes",
                     d / "truth.txt", "--sentence-model", "none", "-o", "OUT"], [labels, d / "truth.txt"]),
        ("merge", ["merge", d / "s1.h5", d / "s2.h5", "-o", "OUT"], [d / "s1.h5", d / "s2.h5"]),
        ("report", ["report", "--labels", labels, "--activations", acts, "--composed", d / "composed.parquet",
                    "--metrics", d / "metrics.parquet", "-o", "OUT"],
         [labels, acts, d / "composed.parquet", d / "metrics.parquet"]),
        ("report --single-file", ["report", "--labels", labels, "--activations", acts, "--composed",
                                  d / "composed.parquet", "--metrics", d / "metrics.parquet", "--single-file",
                                  "-o", "OUT"], [labels, acts, d / "composed.parquet", d / "metrics.parquet"]),
        ("run", ["run", d / "probe.txt", "--clip", clip, *TIMM, "--layers", "fc", "--concepts", d / "concepts.txt",
                 "-o", "OUT"], [d / "probe.txt", d / "concepts.txt"]),
    ]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_writing_command_refuses_an_output_that_is_one_of_its_inputs(inputs, tmp_path):
    d, clip = inputs
    checked = 0
    for name, cmd, targets in _cases(d, clip):
        for target in targets:
            link = tmp_path / f"link-{checked}{target.suffix}"
            link.symlink_to(target)
            for out in (target, link):
                before = _digest(target)
                r = invoke(*[out if a == "OUT" else a for a in cmd], ok=False)
                assert r.exit_code != 0, (name, out)
                assert_one_line_error(r)
                assert _digest(target) == before, (name, out)
                checked += 1
        assert not list(d.glob(".*.tmp")), name
    assert checked >= 60


def test_no_output_replaces_a_probe_image_or_lands_in_the_probe_folder(inputs, tmp_path):
    """Issue #24: `report --single-file -o PROBE/000010.png` replaced a probe image with HTML (exit 0), and a report
    folder inside the probe added index.html and thumbs/*.jpg that the next pass read as images. Every command that
    reads a probe refuses outputs in it, in one line, before it writes."""
    d, clip = inputs
    probe = d / "probe"
    image = sorted(probe.rglob("*.png"))[3]
    labels, acts = d / "labels.parquet", tmp_path / "acts-folder.h5"
    invoke("record", probe, *TIMM, "--layers", "global_pool,fc", "-o", acts)  # recorded on the folder itself
    before = {p: _digest(p) for p in probe.rglob("*") if p.is_file()}
    cases = [
        ["report", "--labels", labels, "--activations", acts, "--single-file", "-o", image],
        ["report", "--labels", labels, "--activations", acts, "--single-file", "-o", probe / "page.html"],
        ["report", "--labels", labels, "--activations", acts, "-o", probe / "report"],
        ["report", "--labels", labels, "--activations", acts, "-o", probe],
        ["embed-images", probe, "--clip", clip, "-o", probe / "images.h5"],
        ["record", probe, *TIMM, "--layers", "fc", "-o", probe / "acts.h5"],
        ["record", d / "probe.txt", *TIMM, "--layers", "fc", "-o", image],       # a listed image
        ["report", "--labels", labels, "--activations", d / "acts.h5", "--single-file", "-o", image],
    ]
    for cmd in cases:
        r = invoke(*cmd, ok=False)
        assert r.exit_code != 0, cmd
        assert_one_line_error(r)
    after = {p: _digest(p) for p in probe.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in probe.rglob("*") if p.is_dir() and p.name in ("report", "thumbs")]


def test_library_calls_between_commands_are_not_checked_against_an_old_commands_inputs(inputs, tmp_path):
    """The registry of inputs is a command's: a notebook that reads a labels file and later writes it again through
    the library is not refused because of what an earlier command (or call) read."""
    from dissect import artifacts as A

    d, _ = inputs
    copy = tmp_path / "labels.parquet"
    copy.write_bytes((d / "labels.parquet").read_bytes())
    invoke("show", copy, "--limit", 1)                     # a command read it
    rows = A.read_table(copy, A.LABELS_FORMAT)             # and so does the library, outside any command
    with A.atomic_path(copy) as tmp:                       # writing it again from the library is the caller's choice
        tmp.write_bytes(b"x")
    assert copy.read_bytes() == b"x" and rows.num_rows > 0
