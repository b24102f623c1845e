"""Property-based fuzzing of embed-text, label and record with random combinations of bad input, and of
every command that reads artifacts (label, compose, evaluate, report, show, info, merge) with crafted ones.

Whatever the input, each command either exits 0 with a valid artifact, or exits
non-zero with one error line last on stderr, no traceback (without --debug), no
"internal error" (an exception we did not anticipate) and no file under the output
name or left-over temporary file.

The default runs a few dozen cases per command (CI budget); set
DISSECT_FUZZ_EXAMPLES=500 for a longer hunt (README: how many ran clean).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dissect import artifacts as A

from conftest import make_images
from test_cli import TIMM, invoke
from test_reliability import make_broken

EXAMPLES = int(os.environ.get("DISSECT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("DISSECT_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_outcome(result, out: Path | None, reader) -> None:
    """The property every command must satisfy."""
    event(f"exit code {result.exit_code}")  # --hypothesis-show-statistics shows how often each outcome came up
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in result.stderr, result.stderr
    if result.exit_code == 0:
        if out is not None:
            reader(out)  # a valid artifact
        return
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), result.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, result.stderr
    if out is not None and out.parent.is_dir():
        assert not list(out.parent.glob(f".{out.name}.*")), "temporary file left behind"


def output_path(folder: Path, kind: str, inputs: list[Path]) -> Path:
    if kind == "missing-folder":
        return folder / "no" / "such" / "out"
    if kind == "an-input" and inputs:
        return inputs[0]
    if kind == "a-folder":
        (folder / "dir").mkdir(exist_ok=True)
        return folder / "dir"
    return folder / "out"


# ---------------------------------------------------------------------------
# embed-text
# ---------------------------------------------------------------------------

LINES = st.one_of(
    st.sampled_from(["dog", "cat", "red", "hot dog", "café", "狗", "🐶", "x" * 3, "dog"]),
    st.sampled_from(["", " ", "\t", "   \t  "]),                                # blank
    st.builds(lambda w, n: " ".join([w] * n), st.sampled_from(["word", "a"]), st.integers(60, 120)),  # too long
    st.text(min_size=1, max_size=12),                                          # arbitrary unicode
)
RAW = st.one_of(st.just(b""), st.just(b"\xff\xfe\x00bad"), st.binary(max_size=40))


@FUZZ
@given(lines=st.lists(LINES, max_size=8), eol=st.sampled_from(["\n", "\r\n", "\r"]), raw=st.one_of(st.none(), RAW),
       batch=st.sampled_from([1, 3, 256, 256, 256, 0, -1]), strict=st.booleans(),
       dtype=st.sampled_from(["float32", "float32", "float16", "int8"]), precision=st.sampled_from(["auto", "auto", "fp32", "bf16", "fp8"]),
       out_kind=st.sampled_from(["ok"] * 4 + ["missing-folder", "an-input", "a-folder"]))
def test_fuzz_embed_text(tiny_clip, lines, eol, raw, batch, strict, dtype, precision, out_kind):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "concepts.txt"
        data = eol.join(lines).encode("utf-8", "surrogatepass") if raw is None else raw
        src.write_bytes(data)
        out = output_path(d, out_kind, [src])
        args = ["embed-text", src, "--clip", tiny_clip, "-o", out, "--batch-size", batch, "--dtype", dtype,
                "--precision", precision] + (["--strict"] if strict else [])
        r = invoke(*args, ok=False)
        check_outcome(r, out, A.read_text_embeddings)
        if out_kind == "an-input":
            assert src.read_bytes() == data  # the input is never overwritten


# ---------------------------------------------------------------------------
# label
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_clip):
    d = tmp_path_factory.mktemp("fuzz-base")
    probe = make_images(d / "probe", 24, seed=3)
    (d / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\n")
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", d / "images.h5")
    invoke("embed-text", d / "c.txt", "--clip", tiny_clip, "-o", d / "text.h5")
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", d / "acts.h5")
    return d


def corrupt(path: Path, how: str, rng: np.random.Generator) -> None:
    """Damage an HDF5 artifact in place in one of the ways users meet."""
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif how == "zero-bytes":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("id,value\n1,2\n")
    else:
        with h5py.File(path, "a") as f:
            key = "embeddings" if "embeddings" in f else "layers/fc"
            if how == "format":
                f.attrs["format"] = "dissect/something-else"
            elif how == "version":
                f.attrs["version"] = 99
            elif how == "nan":
                arr = f[key][:]
                arr.flat[int(rng.integers(0, arr.size))] = np.nan
                f[key][...] = arr
            elif how == "drop-row":
                arr = f[key][:]
                del f[key]
                f[key] = arr[:-1]
            elif how == "int-dtype":
                arr = f[key][:]
                del f[key]
                f[key] = (arr * 100).astype(np.int32)
            elif how == "rename-id":
                ids_key = "ids" if "ids" in f else "concepts"
                ids = [s.decode() if isinstance(s, bytes) else s for s in f[ids_key][:]]
                ids[0] = ids[0] + "-renamed"
                del f[ids_key]
                f.create_dataset(ids_key, data=ids, dtype=h5py.string_dtype("utf-8"))
            elif how == "other-clip":
                f.attrs["clip_model"] = "ViT-L-14"
                f.attrs["clip_fingerprint"] = "f" * 16
            elif how == "unnormalised" and "embeddings" in f:
                f["embeddings"][...] = f["embeddings"][:] * 3
            elif how == "no-layers" and "layers" in f:
                del f["layers"]


CORRUPTIONS = ["none", "truncate", "zero-bytes", "text", "format", "version", "nan", "drop-row", "int-dtype", "rename-id",
               "other-clip", "unnormalised", "no-layers"]


@FUZZ
@given(target=st.sampled_from(["images.h5", "text.h5", "acts.h5"]), how=st.sampled_from(["none"] * 10 + CORRUPTIONS),
       seed=st.integers(0, 2**16), sim=st.sampled_from(["softwpmi", "wpmi", "rank-reorder", "cos", "cos-cubed", "softpmi"]),
       param=st.sampled_from(["top_k=10"] * 8 + [None, "top_k=1", "top_k=24", "top_k=25", "top_k=0", "top_k=-2", "alpha=1",
                                                  "a=nan", "a=-1", "lam=0", "top_fraction=2", "top_k=x", "nonsense"]),
       top=st.sampled_from([5, 5, 5, 1, 0, 100]), layers=st.sampled_from([None] * 4 + ["fc", "layer1,fc", "nope", ",", "fc,fc"]),
       out_kind=st.sampled_from(["ok"] * 6 + ["missing-folder", "an-input", "a-folder", "stdout"]))
def test_fuzz_label(base, target, how, seed, sim, param, top, layers, out_kind):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name in ("images.h5", "text.h5", "acts.h5"):
            shutil.copy(base / name, d / name)
        corrupt(d / target, how, np.random.default_rng(seed))
        inputs = [d / "images.h5", d / "acts.h5", d / "text.h5"]
        out = Path("-") if out_kind == "stdout" else output_path(d, out_kind, inputs)
        before = {p: p.read_bytes() for p in inputs}
        args = ["label", "-i", inputs[0], "-a", inputs[1], "-t", inputs[2], "-o", out, "--sim", sim, "--top", top]
        args += (["--param", param] if param else []) + (["--layers", layers] if layers else [])
        r = invoke(*args, ok=False)
        check_outcome(r, None if out_kind == "stdout" else out, A.read_labels_metadata)
        for p, content in before.items():
            assert p.read_bytes() == content, f"{p.name} was modified"


# ---------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------

@FUZZ
@given(n_good=st.integers(0, 5), broken=st.lists(st.sampled_from(["zero-byte", "truncated", "not-an-image", "symlink-loop"]), max_size=3),
       layers=st.sampled_from(["layer1", "fc", "layer1,fc", "nope", "", "conv1,layer4", "layer1,,fc"]),
       batch=st.sampled_from([1, 2, 64, 64, 0]), strict=st.booleans(), summary=st.sampled_from(["mean", "mean", "max", "cls", "median"]),
       size=st.sampled_from([None, None, 32, 1, 0]), out_kind=st.sampled_from(["ok"] * 4 + ["missing-folder", "a-folder"]))
def test_fuzz_record(n_good, broken, layers, batch, strict, summary, size, out_kind):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        probe = d / "probe"
        probe.mkdir()
        if n_good:
            make_images(probe, n_good, seed=n_good)
        for j, kind in enumerate(broken):
            make_broken(probe / f"broken{j}.png", kind)
        out = output_path(d, out_kind, [])
        args = ["record", probe, *TIMM, "--layers", layers, "-o", out, "--batch-size", batch, "--summary", summary,
                "--workers", 0] + (["--strict"] if strict else []) + (["--input-size", size] if size is not None else [])
        r = invoke(*args, ok=False)
        check_outcome(r, out, A.read_activations)
        if r.exit_code == 0:
            acts = A.read_activations(out)
            assert len(acts.ids) == n_good and not strict or not broken


# ---------------------------------------------------------------------------
# Crafted artifacts (issue 15): valid HDF5 and Parquet containers with wrong contents,
# for every command that reads artifacts
# ---------------------------------------------------------------------------

import json  # noqa: E402

import crafted  # noqa: E402
from test_crafted import base as crafted_base  # noqa: E402,F401  (the module fixture, shared)
from test_crafted import commands as crafted_commands  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
_ATTR_KEYS = ["format", "version", "probe", "skipped", "provenance", "clip_model", "clip_pretrained", "clip_fingerprint",
              "clip_spec", "model", "weights", "shard", "shard_range", "probe_n_images", "fingerprint", "inputs_fingerprint",
              "model_args", "preprocess", "ids_fingerprint", "precision", "concept_set"]
_ATTR_VALUES = st.one_of(
    st.text(max_size=20).filter(lambda s: "\x00" not in s), st.integers(-5, 10**6), st.floats(allow_nan=True),
    st.lists(st.integers(0, 40), min_size=1, max_size=3), _JSON.map(json.dumps),
    st.sampled_from(["dissect/activations", "dissect/image-embeddings", "dissect/text-embeddings", "1/2", "2/2", "9/2",
                     "[0, 15]", "[15, 30]", "[0, 99]", "[]", "[[\"a\", \"b\"]]", '{"sources": [], "n_images": 30}']),
)
_DATASETS = {"images.h5": ["embeddings", "ids", "sizes"], "text.h5": ["embeddings", "concepts"],
             "acts.h5": ["ids", "sizes", "layers/layer1", "layers/fc"], "shard1.h5": ["embeddings", "ids"],
             "shard2.h5": ["embeddings", "ids"]}
_COLUMNS = {"labels.parquet": list(A.LABEL_COLUMNS), "composed.parquet": list(A.COMPOSED_COLUMNS)}
_META_KEYS = ["format", "version", "clip", "clip_fingerprint", "concepts", "params", "probe", "provenance", "similarity",
              "model", "weights", "layers", "top", "summary", "template", "depth", "anything"]


def _h5_mutation(name: str):
    ops = [
        st.tuples(st.just("attr"), st.sampled_from(_ATTR_KEYS), _ATTR_VALUES),
        st.tuples(st.just("del-attr"), st.sampled_from(_ATTR_KEYS)),
        st.tuples(st.just("dataset"), st.sampled_from(_DATASETS[name]), st.sampled_from(crafted.DATASET_HOWS)),
    ]
    if name == "acts.h5":
        ops += [st.tuples(st.just("layer-attr"), st.sampled_from(["layer1", "fc"]),
                          st.sampled_from(["summary", "layout", "raw_shape", "module_type", "fingerprint", "n_units"]),
                          _ATTR_VALUES),
                st.tuples(st.just("layers"), st.sampled_from(["dataset", "empty"]))]
    return st.one_of(*ops)


def _parquet_mutation(name: str):
    cols = st.sampled_from(_COLUMNS[name] + ["nonexistent"])
    return st.one_of(
        st.tuples(st.just("meta"), st.sampled_from(_META_KEYS), _JSON),
        st.tuples(st.just("meta-raw"), st.one_of(st.none(), st.binary(max_size=20), _JSON.map(lambda v: json.dumps(v).encode()))),
        st.tuples(st.just("drop-column"), cols),
        st.tuples(st.just("column-type"), cols, st.sampled_from(crafted.COLUMN_TYPES)),
        st.tuples(st.just("value"), cols, st.integers(-3, 3),
                  st.one_of(st.none(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=5),
                            st.just(2**40), st.lists(st.text(max_size=3), max_size=2))),
        st.tuples(st.just("rows"), st.sampled_from(["empty", "duplicate", "reverse", "first"])),
    )


def _crafted(targets: list[str]):
    """(file, [1-3 mutations of it]) for one of ``targets``."""
    return st.one_of(*[st.tuples(st.just(t), st.lists(_h5_mutation(t) if t.endswith(".h5") else _parquet_mutation(t),
                                                      min_size=1, max_size=3)) for t in targets])


_OUTPUTS = {"label": ("out.parquet", A.read_labels_metadata), "compose": ("out.parquet", A.read_parquet_metadata),
            "compose-labels": ("out.parquet", A.read_parquet_metadata), "merge": ("merged.h5", A.sniff)}


def _run_crafted(base: Path, command: str, target: str, mutations: list[tuple]) -> None:
    from hypothesis import reject

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for p in base.iterdir():
            if p.is_file():
                shutil.copy(p, d / p.name)
        (d / "probe").symlink_to(base / "probe")
        try:
            for m in mutations:
                crafted.apply(d / target, m)
        except (ValueError, TypeError, OverflowError, UnicodeError):
            reject()  # a value h5py or pyarrow cannot store: not a file anyone could hand us
        event(f"{target}: {', '.join(sorted({m[0] for m in mutations}))}")
        before = (d / target).read_bytes()
        args = crafted_commands(d, target)[command]
        name, reader = _OUTPUTS.get(command, (None, None))
        r = invoke(*args, ok=False)
        check_outcome(r, d / name if name else None, reader)
        assert (d / target).read_bytes() == before, f"{target} was modified"


_TARGETS = {"label": ["images.h5", "text.h5", "acts.h5"], "compose": ["images.h5", "text.h5", "acts.h5"],
            "evaluate": ["labels.parquet"], "compose-labels": ["labels.parquet"],
            "report": ["acts.h5", "labels.parquet", "composed.parquet"], "show": ["labels.parquet", "composed.parquet"],
            "info": ["images.h5", "text.h5", "acts.h5", "shard1.h5", "labels.parquet", "composed.parquet"],
            "merge": ["shard1.h5", "shard2.h5"]}


def _crafted_test(command: str):
    @FUZZ
    @given(case=_crafted(_TARGETS[command]))
    def test(crafted_base, case):
        _run_crafted(crafted_base, command, *case)

    test.__name__ = f"test_fuzz_crafted_{command.replace('-', '_')}"
    test.__doc__ = f"`dissect {command}` on crafted artifacts: a valid result or one line, never 'internal error'."
    return test


test_fuzz_crafted_label = _crafted_test("label")
test_fuzz_crafted_compose = _crafted_test("compose")
test_fuzz_crafted_compose_labels = _crafted_test("compose-labels")
test_fuzz_crafted_evaluate = _crafted_test("evaluate")
test_fuzz_crafted_report = _crafted_test("report")
test_fuzz_crafted_show = _crafted_test("show")
test_fuzz_crafted_info = _crafted_test("info")
test_fuzz_crafted_merge = _crafted_test("merge")
