"""`dissect explain` on planted units of the demo world, whose true explanations are known."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from dissect import artifacts as A
from dissect.demo import planted
from dissect.explain import explain

from test_cli import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def planted_run(demo_run, tmp_path_factory):
    out, _ = demo_run
    d = tmp_path_factory.mktemp("planted")
    ids = A.read_activations(out / "activations.h5", data=False).ids
    acts = planted.write(d / "planted.h5", ids, out / "probe")
    ann = planted.write_annotations(d / "annotations.csv", out / "probe")
    return out, d, acts, ann


def _rows(path):
    return pq.read_table(path).to_pylist()


def test_label_mode_recovers_every_planted_unit_and_beats_the_best_single_concept(planted_run):
    out, d, acts, ann = planted_run
    res = d / "label.parquet"
    invoke("explain", "-a", acts, "--annotations", ann, "-o", res)
    rows = _rows(res)
    assert len(rows) == len(planted.PLANTED)
    for row, recipe in zip(rows, planted.PLANTED):
        assert planted.recovered(recipe, row["concepts"]), (recipe, row["explanation"])
        assert row["weights"] == sorted(row["weights"], reverse=True) and min(row["weights"]) >= 0
        if len(recipe) > 1:
            assert row["correlation"] >= row["single_correlation"] + 0.1, (recipe, row)
        # the weights come back close to the planted ones (activation units: presence 1 adds w)
        for c, w in zip(row["concepts"], row["weights"]):
            if c in recipe:
                assert w == pytest.approx(recipe[c], abs=0.12)
    meta = A.read_parquet_metadata(res, A.EXPLAIN_FORMAT)
    assert meta["mode"] == "label" and meta["split"]["holdout"] == 0.2 and meta["params"]["max_concepts"] == 5
    assert rows[0]["n_held_out"] == meta["split"]["n_held_out"]


def test_clip_mode_recovers_at_least_80_percent(planted_run):
    out, d, acts, _ = planted_run
    res = d / "clip.parquet"
    invoke("explain", "-a", acts, "-i", out / "images.h5", "-t", out / "text-mixed.h5", "-o", res)
    rows = _rows(res)
    hits = [planted.recovered(recipe, row["concepts"]) for row, recipe in zip(rows, planted.PLANTED)]
    assert sum(hits) >= 0.8 * len(hits), [r["explanation"] for r in rows]
    assert A.read_parquet_metadata(res, A.EXPLAIN_FORMAT)["presence"]["source"] == "clip"


def test_results_do_not_depend_on_the_batch_of_units_or_their_order(planted_run):
    out, d, acts, _ = planted_run
    common = dict(images=out / "images.h5", text=out / "text-mixed.h5", device="cpu")
    ref = explain(acts, **common)
    n = len(planted.PLANTED)
    other = explain(acts, unit_batch=3, **common)      # blocks of 3 of 10 units: a short last block too
    assert other.rows == ref.rows or _same(other.rows, ref.rows)
    backwards = explain(acts, units=list(reversed(range(n))), unit_batch=4, **common)
    by_unit = {u: i for i, u in enumerate(backwards.rows["unit"])}
    for i, u in enumerate(ref.rows["unit"]):
        j = by_unit[u]
        for c in ("concepts", "weights", "bias", "correlation", "correlation_train", "single_concept", "single_correlation"):
            assert _eq(backwards.rows[c][j], ref.rows[c][i]), (c, u)


def _eq(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _same(a, b):
    return all(all(_eq(x, y) for x, y in zip(a[k], b[k])) for k in a)


def test_simulate_scores_an_explanation_as_explain_did(planted_run):
    _, d, acts, ann = planted_run
    res = d / "label-again.parquet"
    invoke("explain", "-a", acts, "--annotations", ann, "-o", res)
    sim = d / "sim.parquet"
    r = invoke("evaluate", "simulate", res, "-a", acts, "--annotations", ann, "-o", sim)
    assert "optimistic" not in r.stderr
    ours = {x["unit"]: x["correlation"] for x in _rows(res)}
    for x in _rows(sim):
        assert x["held_out"] and x["correlation"] == pytest.approx(ours[x["unit"]], abs=1e-9)


def test_show_and_report_take_explanations(planted_run, tmp_path):
    out, d, acts, ann = planted_run
    res = d / "label.parquet"
    if not res.exists():
        invoke("explain", "-a", acts, "--annotations", ann, "-o", res)
    r = invoke("show", res)
    assert "0.70 yellow" in r.stdout or "yellow" in r.stdout
    j = invoke("show", res, "--json")
    assert '"explanation"' in j.stdout
    labels = d / "planted-labels.parquet"
    invoke("label", "-i", out / "images.h5", "-a", acts, "-t", out / "text-mixed.h5", "-o", labels)
    page = tmp_path / "r.html"
    invoke("report", "--labels", labels, "-a", acts, "--explanations", res, "--single-file", "-o", page, "-n", 2)
    assert "linear: " in page.read_text()


def test_bad_requests_end_in_one_line(planted_run, tmp_path):
    out, d, acts, ann = planted_run
    assert_one_line_error(invoke("explain", "-a", acts, "-o", tmp_path / "x.parquet", ok=False), "--annotations")
    assert_one_line_error(invoke("explain", "-a", acts, "--annotations", ann, "-i", out / "images.h5", "-t",
                                 out / "text-mixed.h5", "-o", tmp_path / "x.parquet", ok=False), "not both")
    assert_one_line_error(invoke("explain", "-a", acts, "--annotations", ann, "-o", ann, ok=False), "input")
    assert not (tmp_path / "x.parquet").exists()


def test_linear_explanations_are_exact_least_squares():
    """The closed-form fit of the chosen concepts equals numpy's least squares on the train images."""
    import torch

    from dissect.explain import ConceptColumns, fit_units, make_split, preselect

    rng = np.random.default_rng(0)
    n, m = 600, 8
    C = (rng.random((n, m)) < 0.3).astype(np.float64)
    a = 0.9 * C[:, 1] + 0.4 * C[:, 5] + 0.05 * rng.normal(size=n) + 2.0
    ids = [f"i{k}" for k in range(n)]
    cols = torch.from_numpy(C)
    vocab = ConceptColumns([f"c{k}" for k in range(m)], lambda idx: cols[:, torch.as_tensor(idx)], {})
    split = make_split(ids, 0.2, 0.2, 0)
    A_ = torch.from_numpy(a[:, None])
    cand, _ = preselect(A_, vocab, split, 6)
    (idx, w, bias, r_held, r_fit, r_single), = fit_units(A_, vocab, split, cand, 3, 0.02)
    assert sorted(idx) == [1, 5]
    X = np.column_stack([C[split.train][:, idx], np.ones(split.train.size)])
    sol = np.linalg.lstsq(X, a[split.train], rcond=None)[0]
    np.testing.assert_allclose(w, sol[:-1], rtol=1e-6)
    assert bias == pytest.approx(sol[-1], rel=1e-6)
    pred = C[split.held][:, idx] @ np.array(w) + bias
    assert r_held == pytest.approx(np.corrcoef(pred, a[split.held])[0, 1], abs=1e-9)


def test_the_demo_reports_planted_recovery_for_every_method(demo_run):
    out, result = demo_run
    import json

    rows = json.loads((out / "demo.json").read_text())["planted"]
    got = {(r["method"], r["mode"]): r for r in rows}
    assert got[("linear explanation", "label")]["recovered"] == len(planted.PLANTED)
    assert got[("linear explanation", "clip")]["recovered"] >= 0.8 * len(planted.PLANTED)
    single = got[("single label (best concept)", "label")]
    assert got[("linear explanation", "label")]["mean_correlation"] > single["mean_correlation"] + 0.1
    assert ("compose (pairs)", "clip") in got and "Planted units" in result.output


def test_run_explain_adds_the_step_and_reuses_it(tmp_path, tiny_clip, probe_dir):
    from test_passes import TIMM

    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\ncircle\ngreen\nstar\n")
    args = ["run", probe_dir, "--clip", tiny_clip, *TIMM, "--layers", "fc", "--concepts", concepts, "-o",
            tmp_path / "run", "--param", "top_k=5", "--workers", 0, "--explain", "--explain-max-concepts", 2]
    invoke(*args)
    rows = _rows(tmp_path / "run" / "explanations.parquet")
    assert rows and all(len(r["concepts"]) <= 2 for r in rows)
    r = invoke(*args)
    assert "reusing" in r.stderr and "explanations.parquet" in r.stderr


def test_simulate_of_one_layer_of_a_two_layer_explanations_file_keeps_each_units_concepts(demo_run, tmp_path):
    out, _ = demo_run
    ann = planted.write_annotations(tmp_path / "annotations.csv", out / "probe")
    res = tmp_path / "two-layers.parquet"
    invoke("explain", "-a", out / "activations.h5", "--annotations", ann, "--layers", "layer4,fc", "-o", res)
    sim = tmp_path / "fc.parquet"
    invoke("evaluate", "simulate", res, "--layer", "fc", "-a", out / "activations.h5", "--annotations", ann, "-o", sim)
    ours = {(x["layer"], x["unit"]): x for x in _rows(res)}
    got = _rows(sim)
    assert {x["layer"] for x in got} == {"fc"} and len(got) == 10
    for x in got:
        assert x["correlation"] == pytest.approx(ours[("fc", x["unit"])]["correlation"], abs=1e-9)
