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


def _copy_world(base: Path, d: Path) -> Path:
    """The crafted world's files copied into ``d`` (its probe linked): commands may damage the copies only."""
    for p in base.iterdir():
        if p.is_file():
            shutil.copy(p, d / p.name)
    (d / "probe").symlink_to(base / "probe")
    return d


def _run_crafted(base: Path, command: str, target: str, mutations: list[tuple]) -> None:
    from hypothesis import reject

    with tempfile.TemporaryDirectory() as d:
        d = _copy_world(base, Path(d))
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


# ---------------------------------------------------------------------------
# Commands and inputs added since the harness was written (issue #24): explain, evaluate simulate and sanity,
# decompose, compose's selection options, other methods' label CSVs, annotations, directions specs
# ---------------------------------------------------------------------------

#: Fewer cases by default: each runs a whole command on the crafted world (DISSECT_FUZZ_EXAMPLES scales them too).
NEW = settings(FUZZ, max_examples=max(6, EXAMPLES // 3))
_WORDS = ["red", "blue", "green", "square", "circle"]


@pytest.fixture(scope="module")
def annotated(crafted_base):
    """The crafted world's ids and an annotations file of them (each image: a colour and a shape)."""
    with h5py.File(crafted_base / "acts.h5") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
    rows = [(i, _WORDS[k % 3]) for k, i in enumerate(ids)] + [(i, _WORDS[3 + k % 2]) for k, i in enumerate(ids)]
    (crafted_base / "ann.csv").write_text("id,concept\n" + "".join(f"{i},{c}\n" for i, c in rows))
    return crafted_base, ids


def _annotation_text(ids: list[str]):
    """Annotation CSVs as users write them: right, with path or integer ids, bad values, missing columns, junk."""
    row = st.tuples(st.one_of(st.sampled_from(ids), st.sampled_from([f"probe/{ids[0]}", "0", "7", "", "x.png"])),
                    st.one_of(st.sampled_from(_WORDS), st.just(""), st.text(max_size=6)),
                    st.one_of(st.none(), st.sampled_from(["1", "0", "0.5", "2", "-1", "nan", "inf", "x", ""])))
    header = st.sampled_from(["id,concept", "id,concept,value", "image,concept", "id", "concept,id,value", ""])

    def render(h, rows):
        cols = h.split(",") if h else []
        out = [h]
        for i, c, v in rows:
            cells = {"id": i, "image": i, "concept": c, "value": v if v is not None else ""}
            out.append(",".join(f'"{cells.get(k, "")}"' for k in cols))
        return "\n".join(out) + "\n"

    right = st.just(None)  # the world's own annotations
    return st.one_of(right, right, st.builds(render, header, st.lists(row, max_size=40)), st.binary(max_size=30))


def _write_annotations(d: Path, base: Path, text) -> Path:
    p = d / "ann.csv"
    if text is None:
        shutil.copy(base / "ann.csv", p)
    elif isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
    return p


def _run_in_copy(base: Path, build) -> None:
    """Run the command ``build(d)`` gives ([args], output, reader) in a copy of the crafted world; inputs untouched."""
    with tempfile.TemporaryDirectory() as d:
        d = _copy_world(base, Path(d))
        args, out, reader = build(d)
        inputs = {p: p.read_bytes() for p in d.iterdir() if p.is_file() and p != out}
        r = invoke(*args, ok=False)
        check_outcome(r, out, reader)
        for p, content in inputs.items():
            assert p.read_bytes() == content, f"{p.name} was modified"


@NEW
@given(data=st.data(), command=st.sampled_from(["explain", "simulate", "sanity"]),
       holdout=st.sampled_from([0.2, 0.2, 0.5, 0.0001, 0.999, 0, 1, float("nan")]),
       alpha=st.sampled_from([0.005, 0.005, 0.1, 1, 0, -1, float("nan")]),
       calibration=st.sampled_from(["mixture", "mixture", "zscore", "raw", "fdr", "sigmoid:x", "nope"]),
       max_concepts=st.sampled_from([3, 1, 0, 50]), layer=st.sampled_from(["fc", "layer1", "nope", None]))
def test_fuzz_annotation_commands(annotated, data, command, holdout, alpha, calibration, max_concepts, layer):
    """explain, evaluate simulate and evaluate sanity on the annotations users write and the options they mistype."""
    base, ids = annotated
    text = data.draw(_annotation_text(ids))

    def build(d):
        ann = _write_annotations(d, base, text)
        acts = d / "acts.h5"
        if command == "explain":
            out = d / "expl.parquet"
            args = ["explain", "-a", acts, "--annotations", ann, "-o", out, "--holdout", holdout, "-K", max_concepts,
                    "--width", 4] + (["--layers", layer] if layer else [])
        elif command == "simulate":
            out = d / "sim.parquet"
            args = ["evaluate", "simulate", d / "labels.parquet", "-a", acts, "--annotations", ann, "-o", out,
                    "--alpha", alpha] + (["--layer", layer] if layer else [])
        else:
            out = d / "sanity.parquet"
            args = ["evaluate", "sanity", "--activations", acts, "--annotations", ann, "--no-synthetic", "-R", 2,
                    "--alpha", alpha, "-o", out] + (["--layers", layer] if layer else [])
        return args, out, A.read_parquet_metadata

    _run_in_copy(base, build)


@NEW
@given(data=st.data(), calibration=st.sampled_from(["mixture"] * 3 + ["zscore", "raw", "fdr", "sigmoid:2", "x"]),
       select=st.sampled_from(["simulate"] * 4 + ["similarity", "none", "x"]),
       margin=st.sampled_from([0.0, 0.05, 0.05, 0.05, -1.0, float("nan"), float("inf")]),
       holdout=st.sampled_from([0.2, 0.2, 0.2, 0.5, 0.0, 1.0, 0.99]), depth=st.sampled_from([2, 2, 2, 3, 1, 0]))
def test_fuzz_compose_selection(annotated, data, calibration, select, margin, holdout, depth):
    """compose's options added with --select simulate: the choice between one word and two."""
    base, _ = annotated

    def build(d):
        out = d / "out.parquet"
        args = ["compose", "-i", d / "images.h5", "-a", d / "acts.h5", "-t", d / "text.h5", "-p", "top_k=5",
                "--layers", "layer1", "--select", select, "--margin", margin, "--holdout", holdout,
                "--calibration", calibration, "--depth", depth, "-o", out]
        return args, out, A.read_parquet_metadata

    _run_in_copy(base, build)


@NEW
@given(k=st.sampled_from([1, 2, 3, 3, 0, 500]), method=st.sampled_from(["pca", "pca", "nmf", "nmf", "svd"]),
       layer=st.sampled_from(["layer1", "layer1", "fc", "nope", "layer1@x"]), max_iter=st.sampled_from([1, 5, 300]),
       out=st.sampled_from(["d.safetensors"] * 4 + ["d.npy", "acts.h5", "no/such/d.safetensors", "-"]))
def test_fuzz_decompose(annotated, k, method, layer, max_iter, out):
    base, _ = annotated

    def build(d):
        o = Path("-") if out == "-" else d / out
        args = ["decompose", d / "acts.h5", "--layer", layer, "--k", k, "--method", method, "--max-iter", max_iter,
                "-o", o]
        return args, (None if out == "-" else o), A.read_directions_metadata

    _run_in_copy(base, build)


_LABEL_HEADERS = ["layer,unit,description,similarity", "layer,unit,description", "unit,description",
                  "unit,category,label,score", "layer,unit,val correlation,weight0,concept0,bias", "layer,unit",
                  "id,concept", "a,b,c"]


@NEW
@given(header=st.sampled_from(_LABEL_HEADERS),
       rows=st.lists(st.tuples(st.sampled_from(["fc", "layer1", "nope", ""]),
                               st.sampled_from(["0", "1", "9", "10", "-1", "x", "1.5", ""]),
                               st.one_of(st.sampled_from(_WORDS + ["", "red, round", '"quoted"']), st.text(max_size=5)),
                               st.sampled_from(["0.3", "", "nan", "x", "1e309"])), max_size=12),
       command=st.sampled_from(["show", "info", "simulate"]))
def test_fuzz_label_csvs(annotated, header, rows, command):
    """Other methods' label CSVs (CLIP-Dissect, MILAN, NetDissect tallies, Linear Explanations) as users edit them."""
    import csv
    import io

    base, _ = annotated

    def build(d):
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = header.split(",")
        w.writerow(cols)
        for r in rows:
            w.writerow((list(r) + ["0.5", "red", "0.1"])[: len(cols)])
        path = d / "labels_fc.csv"
        path.write_text(buf.getvalue())
        if command == "simulate":
            out = d / "sim.parquet"
            return (["evaluate", "simulate", path, "-a", d / "acts.h5", "--annotations", d / "ann.csv", "-o", out],
                    out, A.read_parquet_metadata)
        return [command, path], None, None

    _run_in_copy(base, build)


def _directions_file(d: Path, kind: str) -> str:
    """A directions SPEC of ``kind`` for layer1 of timm:test_resnet (32 channels)."""
    import json as _json

    import torch
    from safetensors.torch import save_file

    c = 32  # timm:test_resnet's layer1 has 32 channels
    if kind.startswith("npy:"):
        shape, dtype = kind[4:].split("/")
        dtype, _, nan = dtype.partition("-")
        arr = np.ones(tuple(int(s) for s in shape.split("x")), dtype=dtype) if shape else np.float32(1)
        if nan:
            arr = arr * np.nan
        np.save(d / "dirs.npy", arr)
        return str(d / "dirs.npy")
    if kind.startswith("sae:"):
        cfg = _json.loads(kind[4:])
        folder = d / "sae"
        folder.mkdir()
        k = int(cfg.pop("_k", 8))
        save_file({"W_enc": torch.randn(c, k), "b_enc": torch.zeros(k), "b_dec": torch.zeros(c),
                   "threshold": torch.zeros(k), "W_dec": torch.randn(k, c)}, str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(_json.dumps(cfg))
        return str(folder)
    if kind.startswith("py:"):
        (d / "m.py").write_text("import torch\nimport sys\n" + kind[3:].replace(";", "\n") + "\n")
        return f"{d / 'm.py'}:f"
    return kind  # a spec string as typed


_DIRECTION_KINDS = [
    "npy:8x32/float32", "npy:8x32/float32", "npy:8x31/float32", "npy:32/float32", "npy:0x32/float32",
    "npy:8x32/int64", "npy:8x32/float32-nan", "npy:/float32",
    'sae:{"architecture": "standard"}', 'sae:{"architecture": "topk", "k": 3}', 'sae:{"architecture": "topk"}',
    'sae:{"architecture": "jumprelu"}', 'sae:{"architecture": "gated"}', 'sae:{"d_in": 5}', 'sae:{"_k": 0}',
    'sae:{"normalize_activations": "layer_norm"}', 'sae:{"activation_fn_kwargs": {"k": "x"}, "architecture": "topk"}',
    "py:def f():;    return torch.nn.Linear(32, 4)", "py:def f():;    return 3", "py:def f():;    sys.exit(0)",
    "py:sys.exit(3);def f():;    return None", "py:def f():;    raise KeyError('x')",
    "py:class M(torch.nn.Module):;    def forward(self, x):;        return x[..., :2].long();def f():;    return M()",
    "nope.npy", "x.py:f", "", ":", "#", "dirs.npy#nope",
]


@NEW
@given(kind=st.sampled_from(_DIRECTION_KINDS), name=st.sampled_from(["layer1"] * 3 + ["layer1@d"] * 3 + ["layer1@", "nope", "@x", ""]),
       summary=st.sampled_from([None, None, "max", "mean", "cls", "median"]), dtype=st.sampled_from([None, "float16", "int8"]))
def test_fuzz_directions_specs(annotated, kind, name, summary, dtype):
    """record --directions with every SPEC form, right and wrong, and the options that go with it."""
    base, _ = annotated

    def build(d):
        spec = _directions_file(d, kind)
        out = d / "dirs-acts.h5"
        args = ["record", d / "probe", *TIMM, "--layers", "fc", "--directions", f"{name}={spec}", "-o", out,
                "--workers", 0]
        args += (["--directions-summary", summary] if summary else []) + (["--directions-dtype", dtype] if dtype else [])
        return args, out, A.read_activations

    _run_in_copy(base, build)
