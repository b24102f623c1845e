"""`dissect evaluate simulate` and `evaluate sanity` on the demo world, whose ground truth is known,
and on label files in the formats other methods publish."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from dissect import artifacts as A
from dissect.demo import demo_specs, world
from dissect.evaluate import sanity as S
from dissect.evaluate.simulate import DEFAULT_CALIBRATION, Calibration, parse_calibration

from test_cli import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def world_run(demo_run, tmp_path_factory):
    out, _ = demo_run
    tmp = tmp_path_factory.mktemp("simulate")
    with open(out / "probe" / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ann = tmp / "annotations.csv"
    with open(ann, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "concept"])
        for r in rows:
            for a in world.ATTRIBUTES:
                w.writerow([r["filename"], r[a]])
    return out, tmp, ann, {r["filename"]: r for r in rows}


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _table(path):
    return pq.read_table(path).to_pylist()


def test_final_layer_correlation_is_the_direct_pearson_and_a_wrong_label_scores_lower(world_run):
    out, tmp, ann, truth = world_run
    classes = demo_specs().class_names
    right = _csv(tmp / "right.csv", ["layer", "unit", "description", "similarity"],
                 [["fc", k, c, 1.0] for k, c in enumerate(classes)])
    wrong = _csv(tmp / "wrong.csv", ["layer", "unit", "description", "similarity"],
                 [["fc", k, classes[(k + 1) % len(classes)], 1.0] for k in range(len(classes))])
    res = tmp / "sim.parquet"
    invoke("evaluate", "simulate", right, wrong, "--activations", out / "activations.h5", "--annotations", ann, "-o", res)
    rows = _table(res)
    with h5py.File(out / "activations.h5", "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
    fc = A.read_activation_layer(out / "activations.h5", "fc").astype(np.float64)
    got = {(r["labels"].endswith("right.csv"), r["unit"]): r for r in rows}
    for k, c in enumerate(classes):
        y = np.array([truth[i]["shape"] == c for i in ids], dtype=np.float64)
        direct = np.corrcoef(fc[:, k], y)[0, 1]
        assert got[(True, k)]["correlation"] == pytest.approx(direct, abs=1e-9)
        assert got[(True, k)]["correlation"] > got[(False, k)]["correlation"], c
        assert got[(True, k)]["n_images"] == len(ids) and got[(True, k)]["presence"] == "annotations"
    meta = A.read_parquet_metadata(res, A.SIMULATE_FORMAT)
    assert meta["presence"]["source"] == "annotations" and meta["alpha"] == 0.005
    summary = json.loads(res.with_suffix(".json").read_text())
    assert {s["method"] for s in summary} == {"CLIP-Dissect (CSV)"}


def test_holdout_labels_are_scored_on_the_held_out_images_only(world_run):
    out, tmp, ann, _ = world_run
    from dissect.split import held_out

    labels = tmp / "held.parquet"
    r = invoke("label", "--images", out / "images.h5", "--activations", out / "activations.h5", "--text", out / "text-mixed.h5", "--layers", "fc",
               "--holdout", "0.3", "--seed", "5", "-o", labels)
    meta = A.read_labels_metadata(labels)
    assert meta["split"]["holdout"] == 0.3 and meta["split"]["seed"] == 5
    ids = A.read_activations(out / "activations.h5", data=False).ids
    mask = held_out(ids, 0.3, 5)
    assert meta["split"]["n_held_out"] == int(mask.sum()) and meta["probe"]["n_images"] == int((~mask).sum())
    res = tmp / "held-sim.parquet"
    r = invoke("evaluate", "simulate", labels, "--activations", out / "activations.h5", "--annotations", ann, "-o", res)
    assert "optimistic" not in r.stderr
    rows = _table(res)
    assert {row["n_images"] for row in rows} == {int(mask.sum())} and all(row["held_out"] for row in rows)
    # the same labels made on every image: scored on all, with a warning
    r = invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "--activations", out / "activations.h5",
               "--annotations", ann, "--layer", "fc")
    assert "optimistic" in r.stderr


def test_the_split_depends_on_the_id_and_seed_only():
    from dissect.split import held_out

    ids = [f"img{i}.png" for i in range(2000)]
    a = held_out(ids, 0.25, 1)
    b = held_out(list(reversed(ids)), 0.25, 1)[::-1]
    assert (a == b).all() and abs(a.mean() - 0.25) < 0.04
    assert (held_out(ids[:100], 0.25, 1) == a[:100]).all()
    assert not (held_out(ids, 0.25, 2) == a).all()


def test_a_label_never_annotated_gets_nan_with_a_reason(world_run):
    out, tmp, ann, _ = world_run
    f = _csv(tmp / "odd.csv", ["layer", "unit", "description"], [["fc", 0, "circle"], ["fc", 1, "zeppelin"]])
    res = tmp / "odd.parquet"
    invoke("evaluate", "simulate", f, "--activations", out / "activations.h5", "--annotations", ann, "-o", res)
    rows = {r["unit"]: r for r in _table(res)}
    assert rows[0]["reason"] is None and rows[0]["correlation"] > 0.5
    assert np.isnan(rows[1]["correlation"]) and "zeppelin" in rows[1]["reason"]


def test_published_label_formats_are_read(world_run, tmp_path):
    out, _, ann, _ = world_run
    milan = _csv(tmp_path / "milan.csv", ["layer", "unit", "description"],
                 [["layer4", 0, "Red objects"], ["layer4", 1, "Stripes"], ["fc", 2, "triangle"]])
    lf = A.read_label_file(milan)
    assert lf.kind == "milan-csv" and lf.labels[0] == "Red objects" and lf.similarity == [None] * 3
    tally = _csv(tmp_path / "tally.csv", ["unit", "category", "label", "score", "color-label"],
                 [[1, "color", "red-c", 0.12, "red-c"], [2, "scene", "greenhouse-indoor-s", 0.07, "x"],
                  [3, "texture", "striped", 0.05, "x"]])
    with pytest.raises(Exception, match="--layer"):
        A.read_label_file(tally)
    lf = A.read_label_file(tally, layer="layer4")
    assert lf.kind == "netdissect-tally" and lf.units == [0, 1, 2] and lf.labels == ["red", "greenhouse indoor", "striped"]
    assert lf.similarity == [0.12, 0.07, 0.05] and lf.layers == ["layer4"] * 3
    res = tmp_path / "s.parquet"
    invoke("evaluate", "simulate", tally, milan, "--layer", "layer4", "--activations", out / "activations.h5",
           "--annotations", ann, "-o", res)
    rows = _table(res)
    assert {r["method"] for r in rows} == {"NetDissect", "MILAN"}
    red = next(r for r in rows if r["method"] == "NetDissect" and r["unit"] == 0)
    assert red["label"] == "red" and red["reason"] is None
    assert next(r for r in rows if r["label"] == "Red objects")["reason"] is not None  # free text: not annotated


def test_units_that_do_not_fit_the_activations_are_refused_in_one_line(world_run, tmp_path):
    out, _, ann, _ = world_run
    f = _csv(tmp_path / "far.csv", ["layer", "unit", "description", "similarity"], [["fc", 10, "circle", 0.3]])
    assert_one_line_error(invoke("evaluate", "simulate", f, "--activations", out / "activations.h5", "--annotations", ann,
                                 ok=False), "unit 10", "10 units", "1-based")
    g = _csv(tmp_path / "bad.csv", ["neuron", "text"], [[0, "x"]])
    assert_one_line_error(invoke("evaluate", "simulate", g, "--activations", out / "activations.h5", "--annotations", ann,
                                 ok=False), "bad.csv", "not a label CSV")
    assert_one_line_error(invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "--activations",
                                 out / "activations.h5", ok=False), "--annotations")
    assert_one_line_error(invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "--activations",
                                 out / "activations.h5", "--annotations", tmp_path / "none.csv", ok=False), "does not exist")


def test_clip_presence_records_its_calibration(world_run, tmp_path):
    out, _, _, _ = world_run
    res = tmp_path / "clip.parquet"
    invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "--layer", "fc", "--activations",
           out / "activations.h5", "--images", out / "images.h5", "--text", out / "text-mixed.h5", "-o", res)
    meta = A.read_parquet_metadata(res, A.SIMULATE_FORMAT)
    assert meta["presence"]["source"] == "clip"
    assert meta["presence"]["calibration"] == DEFAULT_CALIBRATION.describe()
    rows = _table(res)
    assert all(r["presence"] == "clip" for r in rows) and np.mean([r["correlation"] for r in rows]) > 0.5


def test_calibrations_are_the_documented_formulas():
    import torch

    cos = torch.tensor([[0.1, 0.3], [0.2, 0.1], [0.4, 0.2], [0.3, 0.3]], dtype=torch.float64)
    z = (cos - cos.mean(0)) / cos.std(0)
    zscore = parse_calibration("zscore")
    k, z0 = zscore.a, zscore.b
    assert torch.allclose(zscore.apply(cos), 1 / (1 + torch.exp(-k * (z - z0))))
    le = parse_calibration("sigmoid:58,-0.25")
    assert le == Calibration("sigmoid", 58.0, -0.25)
    assert torch.allclose(le.apply(cos), 1 / (1 + torch.exp(-58 * (cos - 0.25))))
    assert torch.equal(parse_calibration("raw").apply(cos), cos)
    with pytest.raises(Exception, match="calibration"):
        parse_calibration("sigmoid:x")


def test_sanity_command_reports_every_scorer(world_run, tmp_path):
    out, _, ann, _ = world_run
    res = tmp_path / "sanity.parquet"
    r = invoke("evaluate", "sanity", "--activations", out / "activations.h5", "--annotations", ann, "--layers", "fc",
               "-R", "3", "--n-inputs", "20000", "-o", res)
    rows = _table(res)
    settings = {row["setting"] for row in rows}
    assert len(settings) == 2 and len(rows) == 2 * 23
    fc = {row["scorer"]: row for row in rows if "fc" in row["setting"] and row["kind"] == "metric"}
    assert {row["kind"] for row in rows if row["scorer"] == "wpmi"} == {"metric", "similarity"}  # told apart
    assert fc["correlation"]["missing_pass"] and fc["correlation"]["extra_pass"]
    assert not fc["recall"]["extra_pass"]
    assert "Sanity tests" in r.output
    # fc is the model's output: each binarised metric's α was chosen on a validation share of its units
    meta = json.loads(pq.read_metadata(res).metadata[b"dissect"])
    assert meta["real"]["layers"]["fc"]["final_layer"] and len(meta["real"]["layers"]["fc"]["validation_units"]) >= 1
    assert fc["f1"]["alpha"] in S.ALPHA_GRID and fc["f1"]["alpha_choice"].startswith("validation AUPRC")
    assert fc["wpmi"]["lam"] in S.LAMBDA_GRID and fc["correlation"]["alpha"] is None
    synthetic = {row["scorer"]: row for row in rows if row["setting"].startswith("synthetic") and row["kind"] == "metric"}
    assert synthetic["f1"]["alpha_choice"] == "binary activations"
    # a fixed α stays available
    fixed = tmp_path / "fixed.parquet"
    invoke("evaluate", "sanity", "--activations", out / "activations.h5", "--annotations", ann, "--layers", "fc",
           "-R", "2", "--no-synthetic", "--alpha", "0.01", "-o", fixed)
    assert {row["alpha"] for row in _table(fixed) if row["scorer"] == "f1"} == {0.01}


def test_the_report_shows_each_cards_simulation_score(world_run, tmp_path):
    out, tmp, ann, _ = world_run
    res = tmp_path / "sim.parquet"
    invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "--layer", "fc", "--activations",
           out / "activations.h5", "--annotations", ann, "-o", res)
    corr = {r["unit"]: r["correlation"] for r in _table(res)}
    page = tmp_path / "r.html"
    invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "--layers", "fc",
           "--simulate", res, "--single-file", "-o", page, "-n", 2)
    text = page.read_text()
    data = json.loads(text.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    shown = {n["unit"]: n["simr"] for n in data["neurons"]}
    assert shown == pytest.approx(corr) and "simulation r" in text


@pytest.mark.parametrize("ids", ["paths", "integers"])
def test_annotation_ids_that_match_no_image_are_refused_by_every_command(world_run, tmp_path, ids):
    """Issue #24: ids written as probe paths ('probe/000000.png' where the artifacts store '000000.png') or as
    integers made explain write empty explanations ("10 units explained") and simulate blame the label. Every
    command that reads annotations refuses them in one line naming the counts and an example of each side."""
    out, _, ann, _ = world_run
    with open(ann, newline="") as f:
        rows = list(csv.DictReader(f))
    order = {name: k for k, name in enumerate(sorted({r["id"] for r in rows}))}
    wrong = [[f"probe/{r['id']}" if ids == "paths" else order[r["id"]], r["concept"]] for r in rows]
    bad = _csv(tmp_path / "bad.csv", ["id", "concept"], wrong)
    acts = out / "activations.h5"
    commands = [
        ["evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", acts, "--annotations", bad,
         "-o", tmp_path / "sim.parquet"],
        ["explain", "-a", acts, "--annotations", bad, "--layers", "fc", "-o", tmp_path / "expl.parquet"],
        ["evaluate", "sanity", "--activations", acts, "--annotations", bad, "--layers", "fc", "--no-synthetic",
         "-o", tmp_path / "sanity.parquet"],
    ]
    for cmd in commands:
        r = invoke(*cmd, ok=False)
        assert r.exit_code != 0, cmd[:2]
        assert_one_line_error(r)
        assert "0 of 2000 matched" in r.output and repr(wrong[0][0] if ids == "paths" else str(wrong[0][0])) in r.output
        if ids == "paths":
            assert "look like paths" in r.output
    assert not list(tmp_path.glob("*.parquet"))


def test_annotations_of_some_other_images_are_used_with_a_warning(world_run, tmp_path):
    out, _, ann, _ = world_run
    with open(ann, newline="") as f:
        rows = [[r["id"], r["concept"]] for r in csv.DictReader(f)]
    extra = _csv(tmp_path / "extra.csv", ["id", "concept"], rows + [["elsewhere.png", "red"]])
    r = invoke("evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", out / "activations.h5",
               "--annotations", extra, "-o", tmp_path / "sim.parquet")
    assert "1 of the 2001 images annotated" in r.output and "'elsewhere.png'" in r.output


def test_an_output_named_json_is_refused_before_its_summary_overwrites_it(world_run, tmp_path):
    """Issue #24: `-o NAME.json` wrote the table and then its JSON summary to the same file ("wrote sim.json and
    sim.json")."""
    out, _, ann, _ = world_run
    acts = out / "activations.h5"
    commands = [
        ["evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", acts, "--annotations", ann],
        ["evaluate", "sanity", "-R", 2, "--n-inputs", 2000],
        ["evaluate", out / "labels-mixed-softwpmi.parquet", "--truth", out / "concepts-classes.txt",
         "--sentence-model", "none"],
    ]
    for cmd in commands:
        r = invoke(*cmd, "-o", tmp_path / "result.json", ok=False)
        assert r.exit_code != 0, cmd[:2]
        assert_one_line_error(r)
        assert ".parquet" in r.output
        assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize("alpha", ["0", "nan", "1.5", "often"])
def test_sanity_refuses_an_alpha_outside_zero_one(tmp_path, alpha):
    """Issue #24: `evaluate sanity --alpha 0` ended in an internal error."""
    r = invoke("evaluate", "sanity", "--alpha", alpha, "-R", 2, "--n-inputs", 2000, "-o", tmp_path / "s.parquet",
               ok=False)
    assert_one_line_error(r, "--alpha")
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("row", [0, 2])
def test_an_unquoted_comma_in_a_label_csv_is_named_by_its_line(tmp_path, row):
    """Issue #24: an unquoted comma after the first row cut the label short and dropped the similarity; in the first
    row it ended in an internal error."""
    lines = ["layer,unit,description,similarity", "fc,0,circle,0.3", "fc,1,square,0.2", "fc,2,star,0.1"]
    lines[row + 1] = lines[row + 1].replace(",0.", ", red,0.").replace("circle, red", "red, circle")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    from dissect.errors import InputError

    with pytest.raises(InputError, match=f"line {row + 2}: 5 fields where the header has 4"):
        A.read_label_file(path)


def test_sanity_on_one_image_is_refused_instead_of_a_verdict_table(world_run, tmp_path):
    """Issue #24: `evaluate sanity` on a one-image activations file printed a full verdict table. A unit can be
    tested only against a concept that is present on some images and absent on others."""
    from test_directions import model_args

    out, _, ann, _ = world_run
    probe = tmp_path / "one"
    probe.mkdir()
    (probe / "000000.png").write_bytes((out / "probe" / "000000.png").read_bytes())
    acts = tmp_path / "one.h5"
    invoke("record", probe, *model_args(), "--layers", "fc", "-o", acts)
    r = invoke("evaluate", "sanity", "--activations", acts, "--annotations", ann, "--no-synthetic", "-R", 2,
               "-o", tmp_path / "s.parquet", ok=False)
    assert_one_line_error(r, "1 image")
    assert not (tmp_path / "s.parquet").exists()


def test_a_crafted_clip_spec_in_images_h5_ends_in_one_line_and_runs_nothing(world_run, tmp_path):
    """Issue #24: an images.h5 whose clip_spec names a pickle (`RN50:evil.pt`) ended `evaluate simulate` in an
    internal error. The checkpoint is refused by name and none of its code runs."""
    from test_clip import _pickle_bomb

    out, _, ann, _ = world_run
    marker = tmp_path / "ran"
    evil = _pickle_bomb(tmp_path / "evil.pt", marker)
    crafted = tmp_path / "images.h5"
    crafted.write_bytes((out / "images.h5").read_bytes())
    with h5py.File(crafted, "a") as f:
        f.attrs["clip_spec"] = f"RN50:{evil}"
    r = invoke("evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", out / "activations.h5",
               "--images", crafted, "-o", tmp_path / "sim.parquet", ok=False)
    assert_one_line_error(r, str(evil))
    assert not marker.exists() and not (tmp_path / "sim.parquet").exists()


@pytest.mark.parametrize("split,fragment", [({"holdout": 0.2, "seed": "x"}, "seed 'x'"),
                                            ({"holdout": 1.5, "seed": 0}, "1.5"),
                                            ({"holdout": "most", "seed": 0}, "'most'")])
def test_a_stored_split_that_is_not_a_split_is_blamed_on_the_file(world_run, tmp_path, split, fragment):
    """Issue #24: a labels file whose metadata split.seed is a string ended in an internal error, and a bad stored
    split.holdout was reported as a --holdout option the user never gave."""
    out, _, ann, _ = world_run
    src = out / "labels-final-heldout.parquet"
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[b"dissect"])
    meta["split"] = {**meta["split"], **split}
    crafted = tmp_path / "labels.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"dissect": json.dumps(meta).encode()}),
                   crafted)
    r = invoke("evaluate", "simulate", crafted, "-a", out / "activations.h5", "--annotations", ann,
               "-o", tmp_path / "sim.parquet", ok=False)
    assert_one_line_error(r, str(crafted), fragment)
    assert "--holdout must" not in r.output and not (tmp_path / "sim.parquet").exists()


def test_explain_says_which_part_of_the_split_is_too_small(world_run, tmp_path):
    """Issue #24: explain hinted "or larger --holdout" when the held-out part was the one too large."""
    out, _, ann, _ = world_run
    acts = out / "activations.h5"
    r = invoke("explain", "-a", acts, "--annotations", ann, "--layers", "fc", "--holdout", "0.999",
               "-o", tmp_path / "e.parquet", ok=False)
    assert_one_line_error(r, "smaller --holdout")
    r = invoke("explain", "-a", acts, "--annotations", ann, "--layers", "fc", "--holdout", "0.0001",
               "-o", tmp_path / "e.parquet", ok=False)
    assert_one_line_error(r, "larger --holdout")


def test_a_label_present_on_every_image_is_named_as_the_reason_no_unit_is_scored(world_run, tmp_path):
    """Issue #24: a layer with no scorable unit warned "no unit could be scored (None)" when the label was present
    on every scored image (a constant presence column, an undefined correlation)."""
    out, _, ann, _ = world_run
    with open(ann, newline="") as f:
        rows = [[r["id"], r["concept"]] for r in csv.DictReader(f)]
    ids = sorted({i for i, _ in rows})
    everywhere = _csv(tmp_path / "ann.csv", ["id", "concept"], rows + [[i, "thing"] for i in ids])
    labels = _csv(tmp_path / "labels.csv", ["layer", "unit", "description", "similarity"],
                  [["fc", k, "thing", 1.0] for k in range(3)])
    r = invoke("evaluate", "simulate", labels, "-a", out / "activations.h5", "--annotations", everywhere,
               "-o", tmp_path / "sim.parquet")
    assert "(None)" not in r.output
    assert "no unit could be scored ('thing' is present on all" in " ".join(r.stderr.split()), r.stderr
    assert {row["reason"] for row in _table(tmp_path / "sim.parquet")} == {"'thing' is present on all 2000 scored images"}


def test_outputs_that_cannot_go_to_standard_output_say_what_they_are(world_run, tmp_path, monkeypatch):
    """Issue #24: Parquet and safetensors outputs sent to `-o -` were refused as "this artifact is HDF5", and
    `report -o -` wrote a folder named '-'."""
    out, _, ann, _ = world_run
    monkeypatch.chdir(tmp_path)
    acts = out / "activations.h5"
    cases = [
        (["evaluate", "simulate", out / "labels-final-heldout.parquet", "-a", acts, "--annotations", ann], "Parquet"),
        (["evaluate", "sanity", "-R", 2, "--n-inputs", 1000], "Parquet"),
        (["decompose", acts, "--layer", "layer4", "--k", 2], "safetensors"),
        (["report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", acts], "folder"),
        (["report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", acts, "--single-file"], "HTML"),
        (["embed-text", out / "concepts-mixed.txt", "--clip", "ViT-B-32"], "HDF5"),
    ]
    for cmd, kind in cases:
        r = invoke(*cmd, "-o", "-", ok=False)
        assert_one_line_error(r, kind, "standard output")
        assert "HDF5" not in r.stderr or kind == "HDF5", r.stderr
    assert not list(tmp_path.iterdir())


def test_sanity_reports_the_mean_over_cases_and_the_minimum_by_name(tmp_path):
    """Issue #25: the framework reports each test's rate as the mean over the five frequencies; dissect printed the
    minimum alone. Both are written and printed, named; the verdict stays on the minimum (every case must pass)."""
    res = tmp_path / "s.parquet"
    r = invoke("evaluate", "sanity", "-R", 4, "--n-inputs", 5000, "-o", res)
    rows = _table(res)
    assert rows
    for row in rows:
        for t in ("missing", "extra"):
            rates = np.array(row[f"{t}_rates"], dtype=float)
            assert len(rates) == len(row["cases"]) == 5
            assert row[f"{t}_rate_mean"] == pytest.approx(np.nanmean(rates))
            assert row[f"{t}_rate_min"] == pytest.approx(np.nanmin(rates)) == pytest.approx(row[f"{t}_rate"])
            assert row[f"{t}_pass"] == (row[f"{t}_rate_min"] >= 0.9)
    header = " ".join(r.output.split())
    assert "missing labels (mean / min)" in header and "extra labels (mean / min)" in header


def test_simulate_writes_every_metric_of_the_framework_and_its_draws_do_not_depend_on_the_block(world_run, tmp_path):
    """Issue #25: the framework's 18 metrics per unit, each the metric of the unit's activation and its label's
    presence (checked against the float64 reference on the same vectors); the sampled ones draw per unit, so the
    memory budget (units scored together) changes nothing."""
    from dissect.evaluate import metrics as M
    from dissect.evaluate.simulate import simulate

    from reference_metrics import reference_metric

    out, tmp, ann, truth = world_run
    classes = demo_specs().class_names
    right = _csv(tmp_path / "right.csv", ["layer", "unit", "description", "similarity"],
                 [["fc", k, c, 1.0] for k, c in enumerate(classes)])
    big = simulate([str(right)], out / "activations.h5", annotations=str(ann))
    small = simulate([str(right)], out / "activations.h5", annotations=str(ann), max_memory=1 << 16)
    assert big.metrics == M.METRICS and all(m in big.units for m in M.METRICS)
    for m in M.METRICS:
        np.testing.assert_allclose(np.array(big.units[m]), np.array(small.units[m]), rtol=1e-12, atol=1e-13, err_msg=m)
    with h5py.File(out / "activations.h5", "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
    fc = A.read_activation_layer(out / "activations.h5", "fc").astype(np.float64)
    pres = np.stack([[truth[i]["shape"] == c for i in ids] for c in classes], axis=1).astype(np.float64)
    for m in ("f1", "balanced-accuracy", "inverse-auc", "spearman-correlation", "wpmi", "mad"):
        want = reference_metric(m, fc[:, : len(classes)], pres, 0.005)
        np.testing.assert_allclose(np.array(big.units[m]), want, rtol=1e-9, atol=1e-12, err_msg=m)
    # a chosen subset, and the reference conventions
    few = simulate([str(right)], out / "activations.h5", annotations=str(ann), metrics=("correlation", "mad"),
                   conventions="neuron-eval")
    assert few.metrics == ("correlation", "mad") and "f1" not in few.units
    n = len(ids)
    np.testing.assert_allclose(np.array(few.units["correlation"]), np.array(big.units["correlation"]) * (n - 1) / n)


def test_every_published_label_format_is_read_aligned_and_scored_as_dissects_own_labels(world_run, tmp_path):
    """Issue #29: the same layer4 labels written in each published layout (Describe-and-Dissect, INVERT as CoSy ships
    it, CoSy's evaluation, FALCON, NetDissect-Lite's 1-based tally) score exactly as the CLIP-Dissect CSV of them: the
    units are aligned (0- and 1-based told apart), each format's quirks read (blank labels, WordNet synset names, FALCON's
    Python-list cells and groups of several features)."""
    out, _, ann, _ = world_run
    rows = [r for r in _table(out / "labels-mixed-softwpmi.parquet") if r["layer"] == "layer4"][:12]
    lab = {r["unit"]: r["label"] for r in rows}
    units = sorted(lab)
    ref = _csv(tmp_path / "cd.csv", ["layer", "unit", "description", "similarity"],
               [["layer4", u, lab[u], 0.1] for u in units[1:]])
    files = {
        "Describe-and-Dissect": _csv(tmp_path / "dnd_layer4.csv", ["Neuron ID", "Label 1", "Label 2", "Label 3"],
                                     [[u, lab[u] if u != units[0] else " ", "objects", " "] for u in reversed(units)]),
        "INVERT": _csv(tmp_path / "resnet18-layer4.csv", ["neuron", "concept", "concept_id", "metric"],
                       [[u, lab[u].replace(" ", "_") + ".n.01", f"n0{u}", 0.9] for u in units[1:]]),
        "CoSy": _csv(tmp_path / "evaluation_INVERT_resnet18-layer4.csv", ["neuron", "concept", "AUC", "U1", "p", "MAD"],
                     [[u, lab[u], 0.8, 10, 0.01, 1.2] for u in units[1:]]),
        "FALCON": _csv(tmp_path / "falcon_layer4.csv", ["group", "Unnamed: 0", "concept_set_words",
                                                        "concept_set_noun_phrases"],
                       [[u, u, str([("word", 0.2)]), str([(lab[u], 0.05), ("other", 0.01)])] for u in units[1:]]
                       + [["3,7", "3,7", "[('grass', 0.1)]", "[('green grass', 0.02)]"]]),
        "NetDissect": _csv(tmp_path / "tally_layer4.csv", ["unit", "category", "label", "score"],
                           [[u + 1, "object", lab[u].replace(" ", "_"), 0.1] for u in units[1:]]),
    }
    kinds = {"Describe-and-Dissect": "describe-and-dissect-csv", "INVERT": "invert-csv", "CoSy": "cosy-evaluation-csv",
             "FALCON": "falcon-csv", "NetDissect": "netdissect-tally"}
    known = ["layer3", "layer4"]
    for method, f in files.items():
        lf = A.read_label_file(f, known_layers=known)
        assert lf.kind == kinds[method] and lf.layers == ["layer4"] * len(units[1:]), method
        assert sorted(zip(lf.units, lf.labels)) == [(u, lab[u]) for u in units[1:]], method
    res = tmp_path / "s.parquet"
    r = invoke("evaluate", "simulate", ref, *files.values(), "--activations", out / "activations.h5",
               "--annotations", ann, "-o", res)
    assert "1 unit(s) without a label left out" in r.stderr and "group(s) of several features" in r.stderr
    got = {}
    for row in _table(res):
        got.setdefault(row["method"], {})[row["unit"]] = (row["label"], row["correlation"])
    assert set(got) == {"CLIP-Dissect (CSV)", *files}
    for method in files:
        assert got[method] == got["CLIP-Dissect (CSV)"], method
    assert sum(not np.isnan(c) for _, c in got["INVERT"].values()) >= 5      # annotated concepts: really scored


def test_label_files_with_units_past_the_layer_say_1_based_and_older_invert_files_are_named(world_run, tmp_path):
    out, _, ann, _ = world_run
    n = A.activation_layer_shape(out / "activations.h5", "layer4")[1]
    one_based = _csv(tmp_path / "dnd_layer4.csv", ["Neuron ID", "Label 1", "Label 2", "Label 3"],
                     [[u + 1, "red", "", ""] for u in range(n)])
    assert_one_line_error(invoke("evaluate", "simulate", one_based, "--activations", out / "activations.h5",
                                 "--annotations", ann, ok=False), f"unit {n}", "1-based")
    old = _csv(tmp_path / "resnet18-layer4.csv", ["neuron", "formula", "length", "metric", "concept_fraction"],
               [[0, "n02098413", 1, 0.93, 0.001]])
    assert_one_line_error(invoke("evaluate", "simulate", old, "--activations", out / "activations.h5",
                                 "--annotations", ann, ok=False), "WordNet ids", "neuron,concept,concept_id,metric")


def test_invert_formulas_read_as_words_and_conjunctions_as_parts(tmp_path):
    f = _csv(tmp_path / "m-layer4.csv", ["neuron", "concept", "concept_id", "metric"],
             [[0, "box.n.01 & ~mailbox.n.01", "", 0.9], [1, "red & round_shape.n.02", "", 0.8],
              [2, "~c & (a | pencil_box.n.01)", "", 0.7]])
    lf = A.read_label_file(f, known_layers=["layer4"])
    assert lf.labels == ["box and not mailbox", "red and round shape", "not c and (a or pencil box)"]
    assert lf.parts is None
    lf = A.read_label_file(f, known_layers=["layer4"], composed="and")
    assert lf.parts == [["box and not mailbox"], ["red", "round shape"], ["not c and (a or pencil box)"]]


def test_published_label_files_feed_report_and_compare(world_run, tmp_path):
    """The same formats read by `report` (cards of the file's units, its method named) and `compare` (labels of each
    side from a file another method publishes, the layer from the file name)."""
    import json as _json

    out, _, _, _ = world_run
    rows = [r for r in _table(out / "labels-mixed-softwpmi.parquet") if r["layer"] == "layer4"][:6]
    dnd = _csv(tmp_path / "dnd_layer4.csv", ["Neuron ID", "Label 1", "Label 2", "Label 3"],
               [[r["unit"], r["label"], "", ""] for r in rows])
    inv = _csv(tmp_path / "model-layer4.csv", ["neuron", "concept", "concept_id", "metric"],
               [[r["unit"], r["label"], "", 0.9] for r in rows])
    invoke("report", "--labels", dnd, "-a", out / "activations.h5", "-o", tmp_path / "site", "--single-file")
    text = (tmp_path / "site").read_text()
    start = text.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    data = _json.loads(text[start : text.index("</script>", start)].replace("<\\/", "</"))
    assert [(n["layer"], n["unit"], n["label"]) for n in data["neurons"]] == [("layer4", r["unit"], r["label"]) for r in rows]
    acts = out / "activations.h5"
    invoke("compare", acts, acts, "--layers", "layer4", "--labels-a", dnd, "--labels-b", inv, "--no-cka",
           "-o", tmp_path / "c.parquet")
    got = {r["unit_a"]: r for r in _table(tmp_path / "c.parquet")}
    for r in rows:
        assert got[r["unit"]]["label_a"] == got[r["unit"]]["label_b"] == r["label"] and got[r["unit"]]["labels_agree"]


def test_label_files_keep_each_units_own_score_when_blank_labels_are_left_out_and_find_dnd_layers_in_folders(tmp_path):
    f = _csv(tmp_path / "falcon-layer4.csv", ["group", "concept_set_words", "concept_set_noun_phrases"],
             [[0, "[]", "[]"], [1, "[('dog', 0.9)]", "[('dog', 0.9)]"], [2, "[('cat', 0.5)]", "[('cat', 0.5)]"]])
    lf = A.read_label_file(f, known_layers=["layer4"])
    assert list(zip(lf.units, lf.labels, lf.similarity)) == [(1, "dog", 0.9), (2, "cat", 0.5)]
    bad = _csv(tmp_path / "falcon2-layer4.csv", ["group", "concept_set_noun_phrases"], [[0, "['dog']"]])
    with pytest.raises(Exception, match="not a list of \\(phrase, score\\)"):
        A.read_label_file(bad, known_layers=["layer4"])
    d = tmp_path / "resnet50_imagenet_broden_layer4_results_x" / "all_result_concepts"
    d.mkdir(parents=True)
    dnd = _csv(d / "final_results.csv", ["Neuron ID", "Label 1", "Label 2", "Label 3"], [[3, "red", "", ""]])
    assert A.read_label_file(dnd, known_layers=["layer3", "layer4"]).layers == ["layer4"]
