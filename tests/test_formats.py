"""One owner of the file formats: every artifact dissect writes is read back through artifacts.sniff and
artifacts.read_parquet_metadata, and readers refuse a Parquet file of the wrong format or a newer version."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dissect import artifacts as A
from dissect.demo import demo_specs

from test_cli import assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO_MODEL = ["--model", demo_specs().model, "--weights", demo_specs().weights, "--model-arg", "num_classes=10"]


@pytest.fixture(scope="module")
def every_kind(demo_run, tmp_path_factory):
    """One file of every kind dissect writes, made by its command (the demo world's run folder plus the rest)."""
    out, _ = demo_run
    d = tmp_path_factory.mktemp("kinds")
    truth = d / "classes.txt"
    truth.write_text("\n".join(demo_specs().class_names) + "\n")
    labels = out / "labels-mixed-softwpmi.parquet"
    common = ["-i", out / "images.h5", "-a", out / "activations.h5", "-t", out / "text-mixed.h5", "--layers", "fc"]
    invoke("compose", *common, "--labels", labels, "-o", d / "composed.parquet")
    invoke("evaluate", labels, "--truth", truth, "--layer", "fc", "--sentence-model", "none", "-o", d / "metrics.parquet")
    invoke("evaluate", "stability", *common, "--resamples", 2, "-o", d / "stability.parquet")
    invoke("evaluate", "pvalues", *common, "--sim", "cos", "--permutations", 2, "-o", d / "pvalues.parquet")
    invoke("evaluate", "predict-class", "--labels", labels, "-a", out / "activations.h5", "--layer", "layer4", *DEMO_MODEL,
           "--classes", truth, "--sentence-model", "none", "-o", d / "predict.parquet")
    invoke("evaluate", "simulate", labels, "-a", out / "activations.h5", "--images", out / "images.h5", "-t",
           out / "text-mixed.h5", "--layer", "fc", "-o", d / "simulate.parquet")
    invoke("evaluate", "sanity", "-R", 2, "--n-inputs", 2000, "-o", d / "sanity.parquet")
    invoke("explain", "-a", out / "activations.h5", "-i", out / "images.h5", "-t", out / "text-mixed.h5", "--layers", "fc",
           "-o", d / "explanations.parquet")
    from dissect.demo import world

    small = world.write_probe(d / "probe", 40, 1234, masks=d / "masks")
    invoke("evaluate", "segment", small, "--masks", d / "masks", *demo_specs().command_line().split(), "--layers",
           "layer4", "-o", d / "segment.parquet")
    return {
        A.IMAGE_FORMAT: out / "images.h5", A.TEXT_FORMAT: out / "text-mixed.h5", A.ACTIVATIONS_FORMAT: out / "activations.h5",
        A.LABELS_FORMAT: labels, A.COMPOSED_FORMAT: d / "composed.parquet", A.EVALUATION_FORMAT: d / "metrics.parquet",
        A.STABILITY_FORMAT: d / "stability.parquet", A.PVALUES_FORMAT: d / "pvalues.parquet",
        A.PREDICT_FORMAT: d / "predict.parquet", A.SIMULATE_FORMAT: d / "simulate.parquet",
        A.SANITY_FORMAT: d / "sanity.parquet", A.EXPLAIN_FORMAT: d / "explanations.parquet",
        A.SEGMENT_FORMAT: d / "segment.parquet", A.COMPARE_FORMAT: out / "compare-without-circle.parquet",
        A.ABLATE_FORMAT: out / "ablate-layer4.parquet",
    }


def test_every_kind_is_read_back_through_the_one_reader(every_kind):
    assert set(every_kind) == set(A.HDF5_FORMATS) | set(A.PARQUET_FORMATS)
    for kind, path in every_kind.items():
        assert A.sniff(path) == kind, path
        if kind in A.PARQUET_FORMATS:
            meta = A.read_parquet_metadata(path, kind)
            assert meta["format"] == kind and meta["version"] == A.FORMAT_VERSION and "provenance" in meta
            assert A.read_table(path, kind).num_rows > 0
            r = invoke("info", path)
            assert kind in r.stdout
        if path.with_suffix(".json").exists() and kind != A.LABELS_FORMAT:  # the summary beside an evaluation
            assert isinstance(json.loads(path.with_suffix(".json").read_text()), list)


def _rewrite(src, dst, **meta_changes):
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[b"dissect"])
    meta.update(meta_changes)
    pq.write_table(table.replace_schema_metadata({b"dissect": json.dumps(meta).encode()}), dst)
    return dst


@pytest.mark.parametrize("change,fragment", [({"version": 99}, "newer than this dissect"),
                                             ({"format": "dissect/composed-labels"}, "expected 'dissect/labels'"),
                                             ({"version": "one"}, "no valid integer 'version'")])
def test_show_info_report_and_evaluate_refuse_a_labels_file_of_another_format_or_version(demo_run, tmp_path, change,
                                                                                         fragment):
    out, _ = demo_run
    bad = _rewrite(out / "labels-mixed-softwpmi.parquet", tmp_path / "bad.parquet", **change)
    truth = tmp_path / "t.txt"
    truth.write_text("\n".join(demo_specs().class_names) + "\n")
    for args in (["show", bad], ["report", "--labels", bad, "--activations", out / "activations.h5", "-o", tmp_path / "r"],
                 ["evaluate", bad, "--truth", truth, "--layer", "fc", "--sentence-model", "none"]):
        # show takes composed labels too: this "composed" file is then refused for lacking their columns
        said = "has no column 'parts'" if args[0] == "show" and "format" in change else fragment
        assert_one_line_error(invoke(*args, ok=False), "bad.parquet", said)
    r = invoke("info", bad, ok=False)
    if "version" in change:  # info reads every kind, but only versions it understands
        assert_one_line_error(r, "bad.parquet", fragment)
    else:
        assert r.exit_code == 0 and "dissect/composed-labels" in r.stdout


def test_a_missing_parquet_file_is_said_not_to_exist(tmp_path):
    r = invoke("show", tmp_path / "nope.parquet", ok=False)
    assert_one_line_error(r, "nope.parquet does not exist")


def test_merge_refuses_a_parquet_file_in_one_line(every_kind, tmp_path):
    r = invoke("merge", every_kind[A.LABELS_FORMAT], every_kind[A.LABELS_FORMAT], "-o", tmp_path / "m.h5", ok=False)
    assert_one_line_error(r, "merge joins shards")


def test_write_parquet_refuses_unknown_kinds_and_writes_format_and_version(tmp_path):
    with pytest.raises(ValueError):
        A.write_parquet(tmp_path / "x.parquet", pa.table({"a": [1]}), "dissect/nope", {})
    A.write_parquet(tmp_path / "x.parquet", pa.table({"a": [1]}), A.STABILITY_FORMAT, {"k": 1})
    meta = A.read_parquet_metadata(tmp_path / "x.parquet", A.STABILITY_FORMAT)
    assert meta == {"format": A.STABILITY_FORMAT, "version": A.FORMAT_VERSION, "k": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
