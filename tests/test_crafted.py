"""Crafted artifacts end in one line naming the file and what is wrong, never "internal error" (issue 15).

Each case is a valid HDF5 or Parquet container with wrong contents (tests/crafted.py
spells out the mutations). The commands that need what was damaged must refuse it with
one line containing the file's name and the fragment given; every other command that
reads the file may succeed (``info`` describes what is there) but must never end in
"internal error" or a traceback. The same harness, with mutations drawn at random, is in
test_fuzz.py.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dissect import artifacts as A

import crafted
from conftest import make_images
from test_cli import TIMM, assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HDF5 = ("images.h5", "text.h5", "acts.h5", "shard1.h5")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_clip):
    """Every artifact the commands read, made by the commands, over a 30-image probe."""
    d = tmp_path_factory.mktemp("crafted-base")
    probe = make_images(d / "probe", 30, seed=3, size=24)
    (d / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\n")
    (d / "truth.txt").write_text("\n".join(["red", "blue"] * 8) + "\n")
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", d / "images.h5")
    invoke("embed-text", d / "c.txt", "--clip", tiny_clip, "-o", d / "text.h5")
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", d / "acts.h5")
    common = ["-i", d / "images.h5", "-a", d / "acts.h5", "-t", d / "text.h5", "-p", "top_k=5", "--layers", "layer1"]
    invoke("label", *common, "-o", d / "labels.parquet")
    invoke("compose", *common, "-o", d / "composed.parquet")
    for s in (1, 2):
        invoke("embed-images", probe, "--clip", tiny_clip, "-o", d / f"shard{s}.h5", "--shard", f"{s}/2")
    return d


def commands(d: Path, target: str) -> dict[str, list]:
    """The commands that read ``target`` (a file name in ``d``), by name."""
    common = ["-i", d / "images.h5", "-a", d / "acts.h5", "-t", d / "text.h5", "-p", "top_k=5"]
    cmds = {"info": ["info", d / target]}
    if target in ("images.h5", "text.h5", "acts.h5"):
        cmds["label"] = ["label", *common, "-o", d / "out.parquet"]
        cmds["compose"] = ["compose", *common, "--layers", "layer1", "-o", d / "out.parquet"]
    if target in ("acts.h5", "labels.parquet", "composed.parquet"):
        cmds["report"] = ["report", "--labels", d / "labels.parquet", "-a", d / "acts.h5", "--composed",
                          d / "composed.parquet", "--probe", d / "probe", "-o", d / "rep", "-n", "1"]
    if target in ("labels.parquet", "composed.parquet"):
        cmds["show"] = ["show", d / target, "--json"]
    if target == "labels.parquet":
        cmds["evaluate"] = ["evaluate", d / target, "--truth", d / "truth.txt", "--layer", "layer1",
                            "--sentence-model", "none"]
        cmds["compose-labels"] = ["compose", *common, "--labels", d / target, "--layers", "layer1", "-o", d / "out.parquet"]
    if target.startswith("shard"):
        cmds["merge"] = ["merge", d / "shard1.h5", d / "shard2.h5", "-o", d / "merged.h5"]
    return cmds


def assert_never_internal(r) -> None:
    assert "internal error" not in r.stderr, r.stderr
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        lines = r.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, r.stderr


# (case, file, mutations, commands that must refuse it, a fragment of their one line)
CASES = [
    # HDF5 datasets replaced by groups, or by the wrong shapes and types
    ("images-embeddings-group", "images.h5", [("dataset", "embeddings", "group")], "info label compose", "'embeddings' is a group"),
    ("images-ids-group", "images.h5", [("dataset", "ids", "group")], "info label", "'ids' is a group"),
    ("text-concepts-group", "text.h5", [("dataset", "concepts", "group")], "info label", "'concepts' is a group"),
    ("text-embeddings-group", "text.h5", [("dataset", "embeddings", "group")], "info label", "'embeddings' is a group"),
    ("acts-layer-group", "acts.h5", [("dataset", "layers/fc", "group")], "info label report", "layer 'fc' is a group"),
    ("acts-ids-group", "acts.h5", [("dataset", "ids", "group")], "info label report", "'ids' is a group"),
    ("acts-layers-a-dataset", "acts.h5", [("layers", "dataset")], "info label report", "'layers' is a dataset"),
    ("acts-layers-empty", "acts.h5", [("layers", "empty")], "label report", "holds no layers"),
    ("acts-layer-1d", "acts.h5", [("dataset", "layers/layer1", "1d")], "label report", "must be a float"),
    ("acts-layer-3d", "acts.h5", [("dataset", "layers/layer1", "3d")], "label report", "must be a float"),
    ("acts-layer-0-units", "acts.h5", [("dataset", "layers/layer1", "zero-width")], "label compose report", "has no units"),
    ("acts-layer-nan", "acts.h5", [("dataset", "layers/layer1", "nan")], "label report", "NaN or Inf"),
    ("images-0-wide", "images.h5", [("dataset", "embeddings", "zero-width")], "label", "width 0"),
    ("text-0-wide", "text.h5", [("dataset", "embeddings", "zero-width")], "label", "width 0"),
    ("images-ids-ints", "images.h5", [("dataset", "ids", "ints")], "label", "1-D array of UTF-8 strings"),
    ("images-ids-short", "images.h5", [("dataset", "ids", "short")], "label", "rows but there are"),
    ("text-embeddings-bytes", "text.h5", [("dataset", "embeddings", "bytes")], "label", "2-D float array"),
    # attributes: format and version of the wrong type, junk JSON
    ("images-format-array", "images.h5", [("attr", "format", [1, 2])], "info label", "'format' attribute that is not a string"),
    ("acts-format-int", "acts.h5", [("attr", "format", 3)], "info label report", "'format' attribute that is not a string"),
    ("images-version-2", "images.h5", [("attr", "version", 2)], "info label", "format version 2, newer"),
    ("text-version-2", "text.h5", [("attr", "version", 2)], "info label", "format version 2, newer"),
    ("acts-version-2", "acts.h5", [("attr", "version", 2)], "info label report", "format version 2, newer"),
    ("images-version-array", "images.h5", [("attr", "version", [1, 1])], "info label", "no valid integer 'version'"),
    ("images-probe-junk", "images.h5", [("attr", "probe", "not json{")], "info label", "attribute 'probe'"),
    ("images-probe-a-list", "images.h5", [("attr", "probe", "[1, 2]")], "info label", "attribute 'probe'"),
    ("acts-probe-wrong-types", "acts.h5", [("attr", "probe", '{"n_images": "x", "sources": 3}')], "info label report",
     "attribute 'probe'"),
    ("images-skipped-junk", "images.h5", [("attr", "skipped", "garbage")], "info label", "attribute 'skipped'"),
    ("images-skipped-a-dict", "images.h5", [("attr", "skipped", '{"a": 1}')], "info label", "attribute 'skipped'"),
    ("images-skipped-short-pairs", "images.h5", [("attr", "skipped", "[[1]]")], "info label", "attribute 'skipped'"),
    ("acts-skipped-numbers", "acts.h5", [("attr", "skipped", "[1, 2, 3]")], "info label report", "attribute 'skipped'"),
    ("images-provenance-junk", "images.h5", [("attr", "provenance", "{{")], "info label", "attribute 'provenance'"),
    ("images-clip-fingerprint-array", "images.h5", [("attr", "clip_fingerprint", [1.5])], "info label",
     "attribute 'clip_fingerprint'"),
    # Parquet metadata: invalid, list-valued, fields of the wrong type
    ("labels-meta-invalid", "labels.parquet", [("meta-raw", b"{not json")], "info show evaluate report",
     "invalid dissect metadata"),
    ("labels-meta-a-list", "labels.parquet", [("meta-raw", b"[1, 2]")], "info show evaluate report", "invalid dissect metadata"),
    ("labels-meta-missing", "labels.parquet", [("meta-raw", None)], "info show evaluate report", "no dissect metadata"),
    ("labels-meta-format-a-list", "labels.parquet", [("meta", "format", ["dissect/labels"])], "info show evaluate",
     "no valid 'format'"),
    ("labels-meta-version-2", "labels.parquet", [("meta", "version", 2)], "info show evaluate report",
     "format version 2, newer"),
    ("labels-meta-concepts-a-string", "labels.parquet", [("meta", "concepts", "x")], "info show evaluate report",
     "metadata field 'concepts'"),
    ("labels-meta-clip-a-number", "labels.parquet", [("meta", "clip", 5)], "info show evaluate report",
     "metadata field 'clip'"),
    # Parquet columns: missing, of the wrong type, impossible values
    ("labels-no-label", "labels.parquet", [("drop-column", "label")], "show evaluate report", "no column 'label'"),
    ("labels-no-similarity", "labels.parquet", [("drop-column", "similarity")], "show evaluate report",
     "no column 'similarity'"),
    ("labels-no-unit", "labels.parquet", [("drop-column", "unit")], "show evaluate report compose-labels", "no column 'unit'"),
    ("labels-no-layer", "labels.parquet", [("drop-column", "layer")], "show evaluate report", "no column 'layer'"),
    ("labels-no-candidates", "labels.parquet", [("drop-column", "candidates")], "show evaluate report compose-labels",
     "no column 'candidates'"),
    ("labels-similarity-strings", "labels.parquet", [("column-type", "similarity", "string")], "show evaluate report",
     "column 'similarity' holds string"),
    ("labels-unit-floats", "labels.parquet", [("column-type", "unit", "float")], "show evaluate report compose-labels",
     "column 'unit' holds double"),
    ("labels-unit-strings", "labels.parquet", [("column-type", "unit", "string")], "show evaluate report compose-labels",
     "column 'unit' holds string"),
    ("labels-unit-nulls", "labels.parquet", [("column-type", "unit", "null")], "show evaluate report compose-labels",
     "column 'unit'"),
    ("labels-unit-99999", "labels.parquet", [("value", "unit", -1, 99999)], "report", "labels unit 99999"),
    ("labels-unit-negative", "labels.parquet", [("value", "unit", 0, -1)], "show evaluate report compose-labels",
     "negative unit"),
    ("labels-a-unit-twice", "labels.parquet", [("rows", "duplicate")], "show evaluate report compose-labels",
     "more than once"),
    ("labels-layer-ints", "labels.parquet", [("column-type", "layer", "int")], "info show evaluate report",
     "column 'layer' holds int64"),
    ("labels-label-ints", "labels.parquet", [("column-type", "label", "int")], "show evaluate report",
     "column 'label' holds int64"),
    ("labels-candidates-strings", "labels.parquet", [("column-type", "candidates", "string")],
     "show evaluate report compose-labels", "column 'candidates' holds string"),
    ("labels-null-label", "labels.parquet", [("value", "label", 0, None)], "evaluate", "have no label"),
    ("labels-no-rows", "labels.parquet", [("rows", "empty")], "evaluate", "holds no labels"),
    ("composed-no-parts", "composed.parquet", [("drop-column", "parts")], "show", "no column 'parts'"),
    ("composed-parts-strings", "composed.parquet", [("column-type", "parts", "string")], "show",
     "column 'parts' holds string"),
    ("composed-meta-a-list", "composed.parquet", [("meta-raw", b"[]")], "info show report", "invalid dissect metadata"),
    # shard attributes
    ("shard-attr-junk", "shard1.h5", [("attr", "shard", "banana")], "merge", "attribute 'shard' is 'banana', not I/N"),
    ("shard-attr-array", "shard1.h5", [("attr", "shard", [1, 2])], "info merge", "attribute 'shard'"),
    ("shard-attr-out-of-range", "shard1.h5", [("attr", "shard", "7/2")], "merge", "attribute 'shard' is '7/2'"),
    ("shard-range-junk", "shard1.h5", [("attr", "shard_range", "nope")], "info merge", "attribute 'shard_range'"),
    ("shard-range-wrong", "shard1.h5", [("attr", "shard_range", "[0, 29]")], "merge", "should hold positions [0, 15]"),
    ("shard-images-missing", "shard1.h5", [("del-attr", "probe_n_images")], "merge", "lacks a valid"),
]


@pytest.mark.parametrize("case,target,mutations,refusing,fragment", CASES, ids=[c[0] for c in CASES])
def test_crafted_artifact_ends_in_one_line_naming_the_file(base, tmp_path, case, target, mutations, refusing, fragment):
    for p in base.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy)(p, tmp_path / p.name)
    for m in mutations:
        crafted.apply(tmp_path / target, m)
    cmds = commands(tmp_path, target)
    assert set(refusing.split()) <= set(cmds), f"{case}: no such command for {target}"
    for name, args in cmds.items():
        r = invoke(*args, ok=False)
        assert_never_internal(r)
        if name in refusing.split():
            assert_one_line_error(r, target, fragment)
            assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "merged.h5").exists()


def test_the_named_cases_cover_every_command_and_both_containers():
    touched = {c for case in CASES for c in case[3].split()}
    assert touched >= {"info", "label", "compose", "report", "show", "evaluate", "merge", "compose-labels"}
    assert {c[1] for c in CASES} >= {"images.h5", "text.h5", "acts.h5", "labels.parquet", "composed.parquet", "shard1.h5"}
    assert len(CASES) >= 25


# ---------------------------------------------------------------------------
# Messages that said something untrue
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["images.h5", "text.h5", "acts.h5", "labels.parquet"])
def test_info_on_a_newer_version_says_the_version_not_a_format_mismatch(base, tmp_path, target):
    shutil.copy(base / target, tmp_path / target)
    crafted.apply(tmp_path / target, ("meta", "version", 2) if target.endswith("parquet") else ("attr", "version", 2))
    r = invoke("info", tmp_path / target, ok=False)
    assert_one_line_error(r, target, "format version 2, newer than this dissect understands", "pip install -U")
    assert "expected" not in r.stderr


def test_zero_width_embeddings_are_not_blamed_on_different_clip_models(base, tmp_path):
    for name in ("images.h5", "acts.h5", "text.h5"):
        shutil.copy(base / name, tmp_path / name)
    crafted.apply(tmp_path / "text.h5", ("dataset", "embeddings", "zero-width"))
    r = invoke("label", "-i", tmp_path / "images.h5", "-a", tmp_path / "acts.h5", "-t", tmp_path / "text.h5",
               "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "text.h5", "width 0")
    assert "different CLIP" not in r.stderr


def test_an_input_size_that_cannot_fit_in_memory_is_refused_before_any_work(base, tmp_path):
    start = time.time()
    r = invoke("record", base / "probe", *TIMM, "--layers", "fc", "-o", tmp_path / "a.h5", "--input-size", 20000, ok=False)
    assert_one_line_error(r, "--input-size 20000", "of input alone", "smaller --input-size")
    assert "could not be read" not in r.stderr
    assert time.time() - start < 60 and not (tmp_path / "a.h5").exists()
    r = invoke("record", base / "probe", *TIMM, "--layers", "fc", "-o", tmp_path / "a.h5", "--input-size", 3000,
               "--batch-size", 4096, ok=False)
    assert_one_line_error(r, "a batch of 4096 images", "--batch-size")


def _dissect(*args) -> list[str]:
    return [sys.executable, "-m", "dissect.cli.main", *map(str, args)]


@pytest.mark.slow  # 13 s; test_reliability's Ctrl-C/SIGTERM tests cover interruption in the default run
def test_sigterm_after_finished_chunks_says_they_are_kept_and_the_rerun_resumes(tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 300, size=48)
    out = tmp_path / "i.h5"
    cmd = _dissect("embed-images", probe, "--clip", tiny_clip, "-o", out, "--batch-size", 1, "--workers", 0,
                   "--device", "cpu", "--checkpoint-every", 10)
    env = dict(os.environ, DISSECT_QUIET="1", OMP_NUM_THREADS="1")
    partial = Path(str(out) + ".partial")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("chunk-*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the pass ended before it could be stopped; make it longer"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: stopped by signal 15") and "are kept in" in line and str(partial) in line, line
    assert "no partial output" not in line and "resume" in line
    again = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, DISSECT_QUIET=""), timeout=300)
    assert again.returncode == 0 and "resuming:" in again.stderr, again.stderr[-2000:]


# ---------------------------------------------------------------------------
# The file system: the umask, ulimit -f, a closed standard output
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_artifacts_follow_the_umask(base, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        invoke("label", "-i", base / "images.h5", "-a", base / "acts.h5", "-t", base / "text.h5", "-p", "top_k=5",
               "-o", tmp_path / "l.parquet")
        invoke("embed-text", base / "c.txt", "--clip", A.read_text_embeddings(base / "text.h5").clip_spec,
               "-o", tmp_path / "t.h5")
    finally:
        os.umask(old)
    for name in ("l.parquet", "t.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def _limited(kib: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))
    return preexec


@pytest.mark.parametrize("command,kib,fragment", [
    ("embed-images", 2, "this shell limits files to"),      # refused before writing (about 5 KB estimated)
    ("embed-images", 8, "File too large"),                  # past the estimate, inside HDF5 (the file is 12 KB)
    ("record", 40, "this shell limits files to"),
    ("label", 4, "File too large"),                         # Parquet is not estimated: pyarrow's own OSError
])
def test_a_file_size_limit_ends_in_one_line_without_a_crash(base, tmp_path, command, kib, fragment):
    clip = A.read_image_embeddings(base / "images.h5").clip_spec
    args = {"embed-images": ["embed-images", base / "probe", "--clip", clip, "--checkpoint-every", 0],
            "record": ["record", base / "probe", *TIMM, "--layers", "layer1,fc"],
            "label": ["label", "-i", base / "images.h5", "-a", base / "acts.h5", "-t", base / "text.h5", "-p", "top_k=5"]}
    out = tmp_path / ("o.parquet" if command == "label" else "o.h5")
    r = subprocess.run(_dissect("-q", *args[command], "-o", out), capture_output=True, text=True, timeout=300,
                       preexec_fn=_limited(kib), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 1 if fragment == "File too large" else r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()  # warnings (a checkpoint that could not be saved), then one error
    assert all(ln.startswith("warning:") for ln in lines[:-1]), r.stderr
    assert lines[-1].startswith("error:") and fragment in lines[-1] and "ulimit -f" in lines[-1], r.stderr
    assert "Traceback" not in r.stderr and r.returncode > 0
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


@pytest.mark.parametrize("command", ["label", "show", "info"])
def test_a_closed_standard_output_ends_in_one_line(base, tmp_path, command):
    args = {"label": ["label", "-i", base / "images.h5", "-a", base / "acts.h5", "-t", base / "text.h5", "-p", "top_k=5",
                      "-o", "-"],
            "show": ["show", base / "labels.parquet", "--json"], "info": ["info", base / "labels.parquet"]}[command]
    line = " ".join(f"'{a}'" for a in _dissect("-q", *args)) + " >&-"
    r = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "standard output is closed" in r.stderr, r.stderr
    assert "internal error" not in r.stderr


def test_evaluate_offline_leaves_the_sentence_model_out_at_once_instead_of_retrying(base, tmp_path, monkeypatch):
    """No internet: the hub is probed once and put offline, so a missing sentence model is a note, not a minute."""
    import socket

    pytest.importorskip("sentence_transformers")
    import huggingface_hub.constants

    from dissect import runtime

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(runtime, "_hub_checked", {})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the model is not there

    def unreachable(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    start = time.time()
    r = invoke("evaluate", base / "labels.parquet", "--truth", base / "truth.txt", "--layer", "layer1",
               "--sentence-model", "all-mpnet-base-v2")
    assert time.time() - start < 15, "the hub was retried"
    assert "sentence cos left out" in r.stderr and "--sentence-model PATH" in r.stderr
    assert "Retry" not in r.output
