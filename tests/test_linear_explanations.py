"""Linear Explanations as their code defines them: their published files read and scored, their label mode's
superclasses, offline (files the tests write in each layout; nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dissect import artifacts as A
from test_cli import assert_one_line_error as one_line_error
from test_cli import invoke

N = 600
CONCEPTS = ["toiletry", "wolfhound", "gymnasium, indoor", "bottle", "sign", "tube"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Activations of one layer named ``layer4`` with three known units, and their concepts as annotations."""
    d = tmp_path_factory.mktemp("le")
    rng = np.random.default_rng(0)
    ids = [f"img{i:04d}.png" for i in range(N)]
    present = rng.random((N, len(CONCEPTS))) < 0.2
    q = rng.normal(0, 0.1, (N, 3))
    q[:, 0] += 0.8 * present[:, 0] + 0.4 * present[:, 2]
    q[:, 1] += 1.0 * present[:, 3]
    q[:, 2] += 0.6 * present[:, 4] + 0.6 * present[:, 5]
    A.write_activations(d / "acts.h5", ids, {"layer4": q.astype(np.float32)}, {"layer4": {"summary": "mean"}},
                        {"model": "test"})
    rows = ["id,concept"] + [f'{i},"{c}"' for n, i in enumerate(ids) for k, c in enumerate(CONCEPTS) if present[n, k]]
    (d / "annotations.csv").write_text("\n".join(rows) + "\n")
    return d


def _pairs(items: list[tuple[float, str]], n: int = 10) -> list[str]:
    out = []
    for k in range(n):
        w, c = items[k] if k < len(items) else (0, "0")
        out += [str(w), f'"{c}"' if "," in c else c]
    return out


def write_le_result(path: Path, with_layer: bool) -> Path:
    """A result file as `explain_neurons.py` writes it: [layer,]unit,val correlation,weight0,concept0,...,bias and
    the simulator's columns; ten weight/concept pairs, empty slots 0,0."""
    head = (["layer"] if with_layer else []) + ["unit", "val correlation"]
    head += [f"{kind}{k}" for k in range(10) for kind in ("weight", "concept")] + ["bias", "sim correlation",
                                                                                    "sim ablation(optim)", "sim ablation(norm)"]
    units = [[(0.73, "toiletry"), (0.36, "gymnasium, indoor")], [(0.8, "bottle")], [(0.5, "sign"), (0.45, "tube")]]
    lines = [",".join(head)]
    for u, items in enumerate(units):
        lines.append(",".join((["layer4"] if with_layer else []) + [str(u), "0.31"] + _pairs(items)
                              + ["0.3", "0.22", "0.02", "0.016"]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("with_layer", [True, False], ids=["LE_label layout", "LE_siglip layout (no layer column)"])
def test_their_result_files_are_read_as_weighted_explanations_and_scored(world, tmp_path, with_layer):
    path = write_le_result(tmp_path / "resnet50_imagenet_layer4.csv", with_layer)
    lf = A.read_label_file(path, known_layers=["layer3", "layer4"])
    assert lf.kind == "linear-explanations-csv" and lf.layers == ["layer4"] * 3 and lf.units == [0, 1, 2]
    assert lf.parts == [["toiletry", "gymnasium, indoor"], ["bottle"], ["sign", "tube"]]
    assert lf.part_weights == [[0.73, 0.36], [0.8], [0.5, 0.45]] and lf.similarity == [0.31] * 3
    from dissect.evaluate.simulate import simulate

    sim = simulate([str(path)], world / "acts.h5", annotations=str(world / "annotations.csv"), device="cpu")
    r = sim.units["correlation"]
    assert min(r) > 0.9, r  # the planted units are these weighted sums
    assert sim.units["method"][0] == "Linear Explanations (CSV)"


def test_their_baseline_files_take_the_layer_from_the_file_name(world, tmp_path):
    path = tmp_path / "resnet50_imagenet_layer4.csv"
    path.write_text("unit,description,sim correlation,sim ablation(norm),sim ablation(optim)\n"
                    "0,toiletry,0.17,0.016,0.008\n1,bottle,0.19,0.015,0.005\n2,sign,0.1,0.1,0.1\n")
    lf = A.read_label_file(path, known_layers=["layer4"])
    assert lf.kind == "baseline-csv" and lf.layers == ["layer4"] * 3 and lf.labels == ["toiletry", "bottle", "sign"]
    out = tmp_path / "sim.parquet"
    invoke("evaluate", "simulate", path, "-a", world / "acts.h5", "--annotations", world / "annotations.csv", "-o", out)
    r = A.read_table(out, A.SIMULATE_FORMAT).column("correlation").to_pylist()
    assert r[1] > 0.9 and r[0] > 0.5


def test_a_file_that_names_no_layer_and_whose_name_matches_none_asks_for_layer(world, tmp_path):
    path = tmp_path / "somewhere.csv"
    path.write_text("unit,description\n0,toiletry\n")
    r = invoke("evaluate", "simulate", path, "-a", world / "acts.h5", "--annotations", world / "annotations.csv",
               ok=False)
    one_line_error(r, "does not name its layer", "--layer")
    invoke("evaluate", "simulate", path, "--layer", "layer4", "-a", world / "acts.h5", "--annotations",
           world / "annotations.csv")


# ---------------------------------------------------------------------------
# Label mode with superclasses
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classes_world(tmp_path_factory):
    """An ImageFolder-style activations file: classes a, b, c (0, 1, 2 in sorted order); unit 0 fires on b and c."""
    d = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(1)
    folders = ["a", "b", "c"]
    ids = [f"{folders[i % 3]}/{i:04d}.png" for i in range(300)]
    cls = np.array([i % 3 for i in range(300)])
    q = rng.normal(0, 0.05, (300, 2))
    q[:, 0] += (cls >= 1)
    q[:, 1] += (cls == 0)
    A.write_activations(d / "acts.h5", ids, {"fc": q.astype(np.float32)}, {"fc": {"summary": "mean"}}, {"model": "t"})
    (d / "supers.json").write_text(json.dumps({"consonant": [1, 2], "first_letter": [0]}))
    (d / "names.txt").write_text("apple\nbanana\ncherry\n")
    return d


def test_label_mode_offers_superclasses_and_class_names(classes_world, tmp_path):
    d = classes_world
    out = tmp_path / "ex.parquet"
    invoke("explain", "-a", d / "acts.h5", "--annotations", "classes", "--class-names", d / "names.txt",
           "--superclasses", d / "supers.json", "-o", out)
    rows = A.read_table(out, A.EXPLAIN_FORMAT).to_pylist()
    assert rows[0]["concepts"][0] == "consonant"       # one superclass explains what two classes would
    assert rows[1]["concepts"][0] in ("first letter", "apple")
    meta = A.read_parquet_metadata(out)
    assert meta["presence"]["superclasses"].endswith("supers.json") and meta["presence"]["n"] == 2
    assert meta["presence"]["class_names"].endswith("names.txt")


def test_superclass_presence_is_the_union_of_its_classes(classes_world):
    from dissect.evaluate.presence import AnnotatedPresence, ClassNames

    acts = A.read_activations(classes_world / "acts.h5", data=False)
    src = AnnotatedPresence.open("classes", list(acts.ids), "acts.h5",
                                 ClassNames.open(None, str(classes_world / "supers.json")))
    rows = {k: i for i, k in enumerate(acts.ids)}
    m = src.matrix(["consonant", "first letter", "a", "b"], rows, len(rows)).numpy()
    folder = np.array([k.split("/")[0] for k in acts.ids])
    assert (m[:, 0] == np.isin(folder, ["b", "c"])).all() and (m[:, 1] == (folder == "a")).all()
    assert (m[:, 2] == (folder == "a")).all()


def test_bad_or_unreachable_superclasses_end_in_one_line(classes_world, tmp_path, monkeypatch):
    d = classes_world
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": ["not an index"]}))
    r = invoke("explain", "-a", d / "acts.h5", "--annotations", "classes", "--superclasses", bad, "-o",
               tmp_path / "o.parquet", ok=False)
    one_line_error(r, "not a superclass file")
    monkeypatch.setenv("DISSECT_OFFLINE", "1")
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    r = invoke("explain", "-a", d / "acts.h5", "--annotations", "classes", "--superclasses", "imagenet", "-o",
               tmp_path / "o.parquet", ok=False)
    one_line_error(r, "superclasses-imagenet", "--superclasses", "imagenet_superclass_to_ids.json")
    assert not (tmp_path / "o.parquet").exists()


# ---------------------------------------------------------------------------
# An independent simulator: explanations fitted with one CLIP, scored with another
# ---------------------------------------------------------------------------

def test_explain_scores_with_a_second_clip_and_says_which(demo_run, tmp_path):
    """--score-images: the held-out correlation is evaluate simulate's under the other CLIP's presence, the fitting
    presence's score is kept beside it, and the metadata names the CLIP that scored."""
    from dissect.demo import scenes_specs
    from dissect.evaluate.simulate import simulate

    demo = demo_run[0]
    other = tmp_path / "images-other.h5"
    invoke("embed-images", demo / "probe", "--clip", scenes_specs().clip, "-o", other, "--device", "cpu")
    out = tmp_path / "ex.parquet"
    invoke("explain", "-a", demo / "planted.h5", "-i", demo / "images.h5", "-t", demo / "text-mixed.h5",
           "--score-images", other, "-o", out)
    meta = A.read_parquet_metadata(out)
    assert meta["scored_with"]["clip"] == scenes_specs().clip
    rows = A.read_table(out, A.EXPLAIN_FORMAT).to_pylist()
    assert any(abs(r["correlation"] - r["correlation_fit_presence"]) > 1e-3 for r in rows)
    sim = simulate([str(out)], demo / "planted.h5", images=other, device="cpu")
    assert [r["correlation"] for r in rows] == pytest.approx(sim.units["correlation"], abs=1e-12)
    plain = A.read_table(demo / "explanations-planted-clip.parquet", A.EXPLAIN_FORMAT).to_pylist()
    assert [r["correlation_fit_presence"] for r in rows] == pytest.approx([r["correlation"] for r in plain], abs=1e-12)
