"""dissect compose on the demo world: a red-and-star neuron, a star neuron, and background neurons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dissect import artifacts as A
from dissect.demo import world
from dissect.demo import demo_specs, world_words

from test_cli import assert_one_line_error, invoke
from test_external_artifacts import write_activations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted(demo_run, tmp_path_factory):
    """Unit 0 fires on red stars, unit 1 on stars; 30 background units each on one random world word."""
    out, _ = demo_run
    d = tmp_path_factory.mktemp("compose")
    img = A.read_image_embeddings(out / "images.h5")
    rows = {r["filename"]: r for r in csv.DictReader(open(out / "probe" / "attributes.csv"))}
    attr = lambda a: np.array([rows[i.split("/")[-1]][a] for i in img.keys])  # noqa: E731
    rng = np.random.default_rng(0)
    N = len(img.keys)
    q = np.zeros((N, 32), dtype=np.float32)
    q[:, 0] = ((attr("color") == "red") & (attr("shape") == "star")) + 0.05 * rng.standard_normal(N)
    q[:, 1] = (attr("shape") == "star") + 0.05 * rng.standard_normal(N)
    words = [(a, w) for a, ws in world.ATTRIBUTES.items() for w in ws]
    for u in range(2, 32):
        a, w = words[rng.integers(len(words))]
        q[:, u] = (attr(a) == w) + 0.3 * rng.standard_normal(N)
    write_activations(d / "acts.h5", img.keys, {"planted": q})
    (d / "words.txt").write_text("\n".join(world_words()) + "\n")
    invoke("embed-text", d / "words.txt", "--clip", demo_specs().clip, "-o", d / "words.h5")
    return out, d


@pytest.mark.parametrize("sim,param", [("softwpmi", ["--param", "top_k=20"]), ("wpmi", ["--param", "top_k=20"]), ("cos", [])])
def test_planted_pair_is_found_and_a_single_concept_neuron_gains_nothing(planted, tmp_path, sim, param):
    out, d = planted
    invoke("compose", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "--sim", sim, *param,
           "--top-k", 8, "-o", tmp_path / "c.parquet")
    c = pq.read_table(tmp_path / "c.parquet").to_pandas()
    # --select simulate (the default): gain = held-out AUPRC of the best composition minus the single concept's
    assert set(c.parts[0]) == {"red", "star"} and c.gain[0] > 0.1 and c.selected_by[0] == "simulate"
    assert c.label[1] == "star" and list(c.parts[1]) == ["star"] and c.gain[1] <= 0.1
    assert (c.parts[2:].map(len) == 1).mean() >= 0.9  # background neurons tuned to one word keep it


@pytest.mark.parametrize("sim,param", [("softwpmi", ["--param", "top_k=20"]), ("wpmi", ["--param", "top_k=20"]), ("cos", [])])
def test_the_veto_rule_of_dissect_0_2_is_kept_as_an_option(planted, tmp_path, sim, param):
    out, d = planted
    invoke("compose", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "--sim", sim, *param,
           "--top-k", 8, "--select", "veto", "-o", tmp_path / "c.parquet")
    c = pq.read_table(tmp_path / "c.parquet").to_pandas()
    assert set(c.parts[0]) == {"red", "star"} and c.gain[0] > 0.05 and c.selected_by[0] == "veto"
    assert c.label[1] == "star" and list(c.parts[1]) == ["star"] and c.gain[1] == 0.0
    if sim != "softwpmi":
        assert np.median(c.gain) < 0.05  # background neurons tuned to one word mostly keep it


def test_under_softwpmi_a_composition_must_explain_the_neurons_images_as_well_as_its_single_label(planted, tmp_path):
    """--select veto: without that rule PMI's rarity bonus alone makes 'star <anything>' beat 'star' for the star neuron."""
    from dissect.compose import compose

    out, d = planted
    t = compose(out / "images.h5", d / "acts.h5", None, text=d / "words.h5", sim="softwpmi", params={"top_k": 20}, top_k=8,
                top=40, select="veto")
    c = t.to_pandas()
    star = c[c.unit == 1].iloc[0]
    # Compositions of 'star' that scored above 'star' by PMI alone were dropped from its candidates.
    assert star.label == "star" and all(len(x.split()) == 1 or x.startswith("star") for x in star.candidates)
    assert len(star.candidates) < 8 + 28


def test_schema_templates_depth_three_and_metadata(planted, tmp_path):
    out, d = planted
    invoke("compose", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "--sim", "wpmi", "--param", "top_k=20",
           "--top-k", 5, "--template", "{a} and {b}", "--depth", 3, "--beam", 2, "--top", 4, "--select", "argmax",
           "-o", tmp_path / "c.parquet")
    t = pq.read_table(tmp_path / "c.parquet")
    assert t.column_names == ["layer", "unit", "label", "parts", "similarity", "single_label", "single_similarity", "gain",
                              "candidates", "candidate_similarities", "selected_by", "heldout_auprc",
                              "single_heldout_auprc"]
    c = t.to_pandas()
    assert all(len(x) == 4 for x in c.candidates) and all(np.all(np.diff(list(v)) <= 1e-12) for v in c.candidate_similarities)
    for label, parts in zip(c.label, c.parts):
        assert label == " and ".join(parts) if len(parts) == 2 else len(parts) in (1, 3)
    np.testing.assert_allclose(c.gain, c.similarity - c.single_similarity)
    assert set(c.selected_by) == {"argmax"} and c.heldout_auprc.isna().all()
    meta = json.loads(t.schema.metadata[b"dissect"])
    assert meta["format"] == "dissect/composed-labels" and meta["template"] == "{a} and {b}" and meta["depth"] == 3
    assert meta["select"] == "argmax" and meta["procedure"] == "pairs"


def test_a_second_compose_with_another_sim_embeds_no_text(planted, tmp_path):
    out, d = planted
    invoke("label", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "--param", "top_k=20", "--top", 8,
           "-o", tmp_path / "labels.parquet")
    common = ["compose", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "--labels", tmp_path / "labels.parquet",
              "--top-k", 8, "--param", "top_k=20"]
    r = invoke(*common, "-o", tmp_path / "a.parquet")
    r = invoke(*common, "--sim", "wpmi", "-o", tmp_path / "b.parquet")
    assert "embedded 0 new" in r.stderr, r.stderr
    meta = json.loads(pq.read_schema(tmp_path / "b.parquet").metadata[b"dissect"])
    assert meta["embedded_now"] == 0 and meta["composed_texts"] > 0


def test_compose_user_errors(planted, tmp_path):
    out, d = planted
    base = ["compose", "-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5", "-o", tmp_path / "c.parquet"]
    assert_one_line_error(invoke(*base, "--template", "{a}", ok=False), "--template", code=2)
    assert_one_line_error(invoke(*base, "--top-k", 1, ok=False), "top-k", code=2)
    assert_one_line_error(invoke(*base, "--depth", 4, ok=False), "depth", code=2)
    assert not (tmp_path / "c.parquet").exists()


def test_run_with_compose_writes_and_then_reuses_composed_labels(tmp_path, tiny_clip, probe_dir):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\ntriangle\n")
    args = ["run", probe_dir, "--clip", tiny_clip, "--model", "timm:test_resnet", "--weights", "none", "--layers", "fc",
            "--concepts", concepts, "-o", tmp_path / "run", "--param", "top_k=10", "--compose", "--compose-top-k", 3]
    invoke(*args)
    c = pq.read_table(tmp_path / "run" / "composed.parquet").to_pandas()
    assert len(c) == 1000 and all(1 <= len(p) <= 2 for p in c.parts)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["steps"]["composed"]["reused"] is False
    r = invoke(*args)
    assert "reusing" in r.stderr and json.loads((tmp_path / "run" / "run.json").read_text())["steps"]["composed"]["reused"]


def test_run_with_compose_loads_clip_once(tmp_path, tiny_clip, probe_dir, monkeypatch):
    """compose embeds the compositions with the run's own CLIP model, not a second copy loaded from images.h5's spec."""
    import dissect.clip
    from dissect.pipeline import run

    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))  # no cached compositions
    loads = []
    real = dissect.clip.load_clip
    monkeypatch.setattr(dissect.clip, "load_clip", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\ndog\ncat\ntree\n")
    run([str(probe_dir)], tiny_clip, "timm:test_resnet", ["fc"], str(concepts), tmp_path / "run", weights="none",
        params={"top_k": 5}, compose=True, compose_top_k=3, top=3, device="cpu", workers=0)
    assert (tmp_path / "run" / "composed.parquet").exists()
    assert len(loads) == 1, loads


def test_the_papers_procedure_refuses_labels_that_keep_fewer_candidates_than_it_takes(planted, tmp_path):
    """Issue #25: `compose --labels L --procedure paper` took the 5 candidates `label` stores by default instead of
    the notebook's 100 (20 pairs instead of 9,900), with no warning."""
    out, d = planted
    labels = tmp_path / "labels.parquet"
    common = ["-i", out / "images.h5", "-a", d / "acts.h5", "-t", d / "words.h5"]
    invoke("label", *common, "-o", labels)  # the default: 5 candidates per unit
    base = ["compose", *common, "--labels", labels, "-o", tmp_path / "c.parquet"]
    takes = min(100, len((d / "words.txt").read_text().split("\n")) - 1)  # the notebook's 100, or every concept
    assert_one_line_error(invoke(*base, "--procedure", "paper", ok=False), "keeps 5", f"dissect label --top {takes}")
    assert_one_line_error(invoke(*base, "--top-k", 8, ok=False), "--top-k 8", "dissect label --top 8")
    assert not (tmp_path / "c.parquet").exists()
    invoke(*base)  # the pairs procedure takes what the labels keep, as documented
    assert (tmp_path / "c.parquet").exists()
