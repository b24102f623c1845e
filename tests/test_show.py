"""dissect show and dissect info on the demo run's artifacts."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq

from test_cli import assert_one_line_error, invoke


def test_show_filters_sorts_and_pipes(demo_run):
    out, _ = demo_run
    f = out / "labels-mixed-softwpmi.parquet"
    labels = pq.read_table(f).to_pandas()
    r = invoke("show", f, "--layer", "fc")
    assert "fc" in r.stdout and "10 neurons" in r.stdout and "layer4" not in r.stdout
    rows = [json.loads(x) for x in invoke("show", f, "--sort", "similarity", "--limit", 7, "--json").stdout.splitlines()]
    want = labels.sort_values("similarity", ascending=False, kind="stable").head(7)
    assert [(x["layer"], x["unit"]) for x in rows] == list(zip(want.layer, want.unit))
    csv = pd.read_csv(io.StringIO(invoke("show", f, "--grep", "STAR", "--csv").stdout))
    hits = labels[labels.label.str.contains("star") | labels.candidates.map(lambda c: any("star" in x for x in c))]
    assert len(csv) == len(hits) and all("star" in c for c in csv.candidates)
    assert_one_line_error(invoke("show", f, "--layer", "nope", ok=False), "no layer 'nope'", code=2)
    assert_one_line_error(invoke("show", out / "images.h5", ok=False), "images.h5")


def test_info_describes_every_artifact(demo_run):
    out, _ = demo_run
    d = json.loads(invoke("info", out / "activations.h5", "--json").stdout)
    assert d["format"] == "dissect/activations" and d["images"] == 2000 and set(d["layers"]) == {"layer3", "layer4", "fc"}
    assert d["made"]["tool_version"]
    d = json.loads(invoke("info", out / "images.h5", "--json").stdout)
    assert d["format"] == "dissect/image-embeddings" and d["images"] == 2000 and "dims" in d["embedding"]
    d = json.loads(invoke("info", out / "text-mixed.h5", "--json").stdout)
    assert d["format"] == "dissect/text-embeddings" and d["concepts"] >= 500
    d = json.loads(invoke("info", out / "labels-mixed-softwpmi.parquet", "--json").stdout)
    assert d["similarity"] == "softwpmi" and d["layers"]["fc"] == 10 and d["rows"] == sum(d["layers"].values())
    r = invoke("info", out / "probe.json", ok=False)
    assert_one_line_error(r, "probe.json")
    assert "dissect/image-embeddings" in invoke("info", out / "images.h5").stdout


def test_show_prints_escapes_and_markup_as_text_and_json_stays_valid(tmp_path):
    import json

    from dissect import artifacts as A

    rows = {"layer": ["l", "l"], "unit": [0, 1], "label": ["\x1b]0;pwned\x07\x1b[2J[bold]x[/bold]", "ok"],
            "similarity": [float("nan"), float("inf")], "candidates": [["a", "\u202eb"], ["c"]],
            "candidate_similarities": [[1.0, 2.0], [1.0]]}
    A.write_labels(tmp_path / "l.parquet", rows, {})
    r = invoke("show", tmp_path / "l.parquet")
    assert "\x1b" not in r.stdout and "\\x1b]0;pwned\\x07\\x1b[2J[bold]x[/bold]" in r.stdout.replace("\n", "")
    assert "\u202e" not in r.stdout and "\\u202e" in r.stdout
    lines = invoke("show", tmp_path / "l.parquet", "--json").stdout.splitlines()
    recs = [json.loads(line) for line in lines]  # strict JSON: a bare NaN would not parse in other tools
    assert "NaN" not in lines[0] and recs[0]["similarity"] is None and recs[1]["similarity"] is None
    assert recs[0]["label"].startswith("\x1b")  # JSON carries the value itself, escaped by the encoder
    csv_out = invoke("show", tmp_path / "l.parquet", "--csv").stdout
    assert csv_out.splitlines()[0] == "layer,unit,label,similarity,candidates"


def test_show_reads_composed_labels(demo_run, tmp_path):
    out, _ = demo_run
    invoke("compose", "-i", out / "images.h5", "-a", out / "activations.h5", "-t", out / "text-mixed.h5", "--layers", "fc",
           "--labels", out / "labels-mixed-softwpmi.parquet", "-o", tmp_path / "c.parquet")
    r = invoke("show", tmp_path / "c.parquet", "--layer", "fc")
    assert "gain" in r.stdout and "fc" in r.stdout


def test_grep_without_a_match_says_so_in_one_line(demo_run):
    """Issue #24: `show --grep dog` with no match printed an empty table and no line."""
    out, _ = demo_run
    r = invoke("show", out / "labels-mixed-softwpmi.parquet", "--grep", "no-such-word-anywhere")
    assert "contains 'no-such-word-anywhere'" in r.output and "neurons" not in r.output
