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
