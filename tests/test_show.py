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
    # an artifact with no rows to list is described, as info describes it
    assert "dissect/image-embeddings" in invoke("show", out / "images.h5").stdout


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
    assert json.loads(invoke("info", out / "probe.json", "--json").stdout)["format"] == "JSON"
    (out.parent / "notes.txt").write_text("not an artifact\n")
    assert_one_line_error(invoke("info", out.parent / "notes.txt", ok=False), "notes.txt")
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


def test_show_and_info_open_every_file_dissect_reads_or_writes(demo_run, tmp_path):
    """Issue #24: show and info refused files dissect itself reads or writes: other methods' label CSVs,
    simulate.parquet, sanity.parquet, directions.safetensors, annotation CSVs."""
    import csv as csvlib

    out, _ = demo_run
    acts = out / "activations.h5"
    clip_dissect = tmp_path / "clip_dissect.csv"
    clip_dissect.write_text("layer,unit,description,similarity\nfc,0,circle,0.31\nfc,1,square,0.2\n")
    milan = tmp_path / "milan_fc.csv"
    milan.write_text("layer,unit,description\nfc,0,a round shape\nfc,1,\"red, square things\"\n")
    invoke("evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", acts, "--annotations",
           out / "annotations.csv", "-o", tmp_path / "sim.parquet")
    invoke("evaluate", "sanity", "-R", 2, "--n-inputs", 1000, "-o", tmp_path / "sanity.parquet")
    invoke("decompose", acts, "--layer", "layer4", "--k", 3, "-o", tmp_path / "dirs.safetensors")
    with open(out / "annotations.csv", newline="") as f:
        ann_rows = list(csvlib.DictReader(f))
    expected = {
        clip_dissect: ("clip-dissect-csv", 2), milan: ("milan-csv", 2), out / "annotations.csv": ("annotations", None),
        tmp_path / "sim.parquet": ("dissect/simulate", 10), tmp_path / "sanity.parquet": ("dissect/sanity", 23),
        tmp_path / "dirs.safetensors": ("dissect/directions", None), tmp_path / "sim.json": ("JSON", None),
    }
    for path, (fmt, rows) in expected.items():
        d = json.loads(invoke("info", path, "--json").stdout)
        assert d["format"].startswith(fmt), (path, d["format"])
        if rows is not None:
            assert d["rows"] == rows, (path, d)
        r = invoke("show", path)
        assert "Traceback" not in r.output and r.stdout.strip(), path
    assert json.loads(invoke("info", tmp_path / "dirs.safetensors", "--json").stdout)["tensors"]["directions"] == [3, 96]
    shown = [json.loads(x) for x in invoke("show", milan, "--json").stdout.splitlines()]
    assert [(s["unit"], s["label"]) for s in shown] == [(0, "a round shape"), (1, "red, square things")]
    sim = [json.loads(x) for x in invoke("show", tmp_path / "sim.parquet", "--json", "--sort", "similarity").stdout.splitlines()]
    assert len(sim) == 10 and [s["correlation"] for s in sim] == sorted((s["correlation"] for s in sim), reverse=True)
    counts = {json.loads(x)["concept"]: json.loads(x)["images"]
              for x in invoke("show", out / "annotations.csv", "--json").stdout.splitlines()}
    assert counts["circle"] == len({r["id"] for r in ann_rows if r["concept"] == "circle"})
    assert "missing_rate" in invoke("show", tmp_path / "sanity.parquet", "--csv").stdout.splitlines()[0]
