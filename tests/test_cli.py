"""Every command through the real CLI on tiny real models and generated images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dissect.cli.main import app

from conftest import make_images

runner = CliRunner()

TIMM = ["--model", "timm:test_resnet", "--weights", "none"]


def invoke(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exit_code == 130:  # Ctrl-C while a command ran in-process: the CLI made it exit 130; stop the tests
        raise KeyboardInterrupt(f"interrupted while running dissect {' '.join(map(str, args))[:200]}")
    if ok:
        assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, *fragments, code=None):
    assert result.exit_code != 0
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # one line, and the last word
    err = errors[0]
    for f in fragments:
        assert f in err, err


def no_stray_files(folder: Path, allowed: set[str]):
    names = {p.name for p in folder.iterdir()}
    assert names <= allowed, names - allowed


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_clip, probe_dir):
    """images.h5, text.h5 and activations.h5 made once through the CLI."""
    d = tmp_path_factory.mktemp("artifacts")
    concepts = d / "concepts.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\ndog\ncat\ntree\n")
    invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", d / "images.h5", "--device", "cpu", "--batch-size", 8)
    invoke("embed-text", concepts, "--clip", tiny_clip, "-o", d / "text.h5")
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,fc", "-o", d / "activations.h5", "--batch-size", 7)
    return d


# ---------------------------------------------------------------------------
# Shapes, ids, order, provenance
# ---------------------------------------------------------------------------

def test_embed_images_writes_normalised_embeddings_in_sorted_id_order(artifacts, probe_dir):
    with h5py.File(artifacts / "images.h5") as f:
        ids = [s.decode() for s in f["ids"][:]]
        emb = f["embeddings"][:]
        assert f.attrs["format"] == "dissect/image-embeddings"
        assert f.attrs["version"] == 1
        assert f.attrs["clip_model"].endswith("tiny-clip.json")
        assert json.loads(f.attrs["clip_preprocess"])["size"] in (32, [32, 32])
        assert "tool_version" in json.loads(f.attrs["provenance"])
    expected = sorted(p.relative_to(probe_dir).as_posix() for p in probe_dir.rglob("*") if p.is_file())
    assert ids == expected
    assert emb.shape == (36, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_embed_images_is_independent_of_batch_size(artifacts, tmp_path, tiny_clip, probe_dir):
    invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / "b.h5", "--batch-size", 5)
    with h5py.File(artifacts / "images.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_allclose(a["embeddings"][:], b["embeddings"][:], atol=1e-5)


def test_embed_text_records_concepts_and_drops_blanks_and_repeats(tmp_path, tiny_clip):
    c = tmp_path / "c.txt"
    c.write_bytes(b"red\r\n\r\n  blue \r\nred\r\n")
    r = invoke("embed-text", c, "--clip", tiny_clip, "-o", tmp_path / "t.h5")
    assert "repeated" in r.stderr
    with h5py.File(tmp_path / "t.h5") as f:
        assert [s.decode() for s in f["concepts"][:]] == ["red", "blue"]
        assert f["embeddings"].shape == (2, 32)
        assert f.attrs["format"] == "dissect/text-embeddings"


def test_embed_text_accepts_shipped_concept_set(tmp_path, tiny_clip):
    invoke("embed-text", "cifar100", "--clip", tiny_clip, "-o", tmp_path / "t.h5")
    with h5py.File(tmp_path / "t.h5") as f:
        assert f["embeddings"].shape == (100, 32)
        assert f["concepts"][0].decode() == "apple"


def test_record_summarises_conv_maps_by_spatial_mean(artifacts, probe_dir):
    with h5py.File(artifacts / "activations.h5") as f:
        assert f.attrs["format"] == "dissect/activations"
        assert f.attrs["model"] == "timm:test_resnet"
        l1, fc = f["layers/layer1"], f["layers/fc"]
        assert l1.shape == (36, 32) and l1.dtype == np.float32
        assert l1.attrs["summary"] == "mean" and l1.attrs["layout"] == "nchw"
        assert fc.shape == (36, 1000) and fc.attrs["layout"] == "nc"
        assert json.loads(l1.attrs["raw_shape"])[0] == 32
        pre = json.loads(f.attrs["preprocess"])
        assert pre["input_size"] == 160 and len(pre["mean"]) == 3  # test_resnet's own data config
        ids = [s.decode() for s in f["ids"][:]]
    with h5py.File(artifacts / "images.h5") as f:
        assert ids == [s.decode() for s in f["ids"][:]]


def test_record_matches_a_direct_forward_pass(artifacts, probe_dir):
    """The hook summary equals mean-pooling the layer output computed without dissect."""
    import timm
    import torch
    from PIL import Image

    from dissect.models import load_target

    target = load_target("timm:test_resnet", "none")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    model.load_state_dict(target.module.state_dict())
    model.eval()
    with h5py.File(artifacts / "activations.h5") as f:
        ids = [s.decode() for s in f["ids"][:]]
        stored_fc = f["layers/fc"][:]
    x = torch.stack([target.transform(Image.open(probe_dir / i).convert("RGB")) for i in ids[:4]])
    with torch.no_grad():
        logits = model(x)
    # --weights none is a seeded initialisation, so load_target rebuilt the recorded weights.
    np.testing.assert_allclose(stored_fc[:4], logits.numpy(), rtol=1e-4, atol=1e-4)


def test_record_token_outputs_with_cls_and_mean(tmp_path, probe_dir):
    out = tmp_path / "vit.h5"
    invoke("record", probe_dir, "--model", "timm:test_vit", "--weights", "none", "--layers", "blocks.0", "-o", out)
    invoke("record", probe_dir, "--model", "timm:test_vit", "--weights", "none", "--layers", "blocks.0", "--summary", "cls", "-o", tmp_path / "cls.h5")
    with h5py.File(out) as f, h5py.File(tmp_path / "cls.h5") as g:
        assert f["layers/blocks.0"].attrs["layout"] == "nlc"
        assert f["layers/blocks.0"].shape[0] == 36
        assert g["layers/blocks.0"].attrs["summary"] == "cls"
        assert not np.allclose(f["layers/blocks.0"][:], g["layers/blocks.0"][:])


def test_record_torchvision_model_with_preprocessing_override(tmp_path, probe_dir):
    out = tmp_path / "tv.h5"
    invoke("record", probe_dir, "--model", "torchvision:resnet18", "--weights", "none", "--layers", "layer4",
           "--input-size", 64, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "-o", out)
    with h5py.File(out) as f:
        assert f["layers/layer4"].shape == (36, 512)
        pre = json.loads(f.attrs["preprocess"])
        assert pre["input_size"] == 64 and pre["mean"] == [0.5, 0.5, 0.5] and pre["resize_size"] == 73  # 64 / (224/256)
        assert json.loads(f["layers/layer4"].attrs["raw_shape"]) == [512, 2, 2]


def test_record_model_from_python_file_with_local_weights(tmp_path, probe_dir):
    import torch

    src = tmp_path / "mymodel.py"
    src.write_text(
        "import torch\nfrom torchvision import transforms as T\n"
        "def build(width=4):\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 2))\n"
        "    return m, T.Compose([T.Resize((16, 16)), T.ToTensor()])\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodel", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m, _ = mod.build(width=6)
    torch.nn.init.constant_(m[4].bias, 3.0)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w.pt")
    invoke("record", probe_dir, "--model", f"{src}:build", "--model-arg", "width=6", "--weights", tmp_path / "w.pt",
           "--layers", "0,4", "-o", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["layers/0"].shape == (36, 6)
        assert f["layers/4"].shape == (36, 2)
    # A checkpoint of the wrong shape names the offending keys.
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--weights", tmp_path / "w.pt", "--layers", "4",
               "-o", tmp_path / "b.h5", ok=False)
    assert_one_line_error(r, "0.weight", "num_classes")
    assert not (tmp_path / "b.h5").exists()


def test_layers_lists_names_shapes_and_neurons():
    r = invoke("layers", "timm:test_resnet", "--json")
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    by_name = {row["layer"]: row for row in rows}
    assert by_name["fc"]["neurons"] == 1000 and by_name["fc"]["layout"] == "nc"
    assert by_name["layer1"]["layout"] == "nchw" and by_name["layer1"]["neurons"] == by_name["layer1"]["shape"][0]
    table = invoke("layers", "torchvision:resnet18")
    assert "layer4" in table.stdout and "512" in table.stdout


# ---------------------------------------------------------------------------
# Labelling and reuse
# ---------------------------------------------------------------------------

def read_labels(path):
    t = pq.read_table(path)
    return t, json.loads(t.schema.metadata[b"dissect"])


@pytest.mark.parametrize("sim", ["softwpmi", "wpmi", "rank-reorder", "cos", "cos-cubed"])
def test_label_writes_the_documented_schema(artifacts, tmp_path, sim):
    out = tmp_path / "labels.parquet"
    params = ["--param", "top_k=10"] if sim in ("softwpmi", "wpmi") else []
    invoke("label", "--images", artifacts / "images.h5", "--text", artifacts / "text.h5", "--activations",
           artifacts / "activations.h5", "--sim", sim, *params, "--top", 3, "-o", out)
    t, meta = read_labels(out)
    assert t.schema.names == ["layer", "unit", "label", "similarity", "candidates", "candidate_similarities"]
    assert str(t.schema.field("unit").type) == "int32"
    import pyarrow as pa

    assert pa.types.is_list(t.schema.field("candidates").type)
    assert t.schema.field("candidates").type.value_type == pa.string()
    assert t.schema.field("candidate_similarities").type.value_type == pa.float64()
    df = t.to_pandas()
    assert len(df) == 32 + 1000
    assert list(df[df.layer == "layer1"].unit) == list(range(32))
    assert all(len(c) == 3 for c in df.candidates)
    assert (df.label == df.candidates.map(lambda c: c[0])).all()
    assert np.allclose(df.similarity, df.candidate_similarities.map(lambda c: c[0]))
    assert all(np.all(np.diff(c) <= 0) for c in df.candidate_similarities)
    assert meta["similarity"] == sim and meta["format"] == "dissect/labels"
    assert meta["concepts"]["n"] == 8 and meta["model"] == "timm:test_resnet"
    assert meta["inputs"]["images"]["fingerprint"]


def test_label_to_stdout_pipes_into_duckdb(artifacts):
    duckdb = pytest.importorskip("duckdb")
    r = runner.invoke(app, ["label", "--images", str(artifacts / "images.h5"), "--text", str(artifacts / "text.h5"),
                            "--activations", str(artifacts / "activations.h5"), "--param", "top_k=10", "--layers", "layer1", "-o", "-"])
    assert r.exit_code == 0, r.output
    labels = pq.read_table(io.BytesIO(r.stdout_bytes))
    assert labels.num_rows == 32
    n = duckdb.sql("select count(*) from labels where layer = 'layer1'").fetchall()[0][0]
    assert n == 32


def test_label_reuses_cached_text_embeddings(artifacts, tmp_path, tiny_clip, monkeypatch):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    args = ["label", "--images", artifacts / "images.h5", "--concepts", concepts, "--activations", artifacts / "activations.h5"]
    invoke(*args, "--param", "top_k=10", "-o", tmp_path / "a.parquet")

    def no_model(*a, **k):
        raise AssertionError("a CLIP model was loaded although the text embeddings are cached")

    monkeypatch.setattr("dissect.embed.load_clip", no_model)
    r = invoke(*args, "--sim", "cos", "-o", tmp_path / "b.parquet")
    assert "cached" in r.stderr
    # Changing the concept list's contents is a cache miss (and would need the model).
    concepts.write_text("red\nblue\ncircle\n")
    r = invoke(*args, "-o", tmp_path / "c.parquet", ok=False)
    assert r.exit_code != 0


def test_blank_lines_do_not_shift_labels(artifacts, tmp_path):
    clean = tmp_path / "clean.txt"
    clean.write_text("red\nblue\ngreen\nsquare\n")
    messy = tmp_path / "messy.txt"
    messy.write_text("\n\nred\n\nblue\nred\n  green\n\n\nsquare\n\n")
    base = ["label", "--images", artifacts / "images.h5", "--activations", artifacts / "activations.h5", "--param", "top_k=10"]
    invoke(*base, "--concepts", clean, "-o", tmp_path / "clean.parquet")
    invoke(*base, "--concepts", messy, "-o", tmp_path / "messy.parquet")
    a, b = pq.read_table(tmp_path / "clean.parquet").to_pandas(), pq.read_table(tmp_path / "messy.parquet").to_pandas()
    assert list(a.label) == list(b.label)
    np.testing.assert_allclose(a.similarity, b.similarity)


def test_record_into_existing_file_adds_only_missing_layers(artifacts, tmp_path, probe_dir, monkeypatch):
    import shutil

    out = tmp_path / "acts.h5"
    shutil.copy(artifacts / "activations.h5", out)
    with h5py.File(out) as f:
        before = f["layers/layer1"][:]
    seen = []
    from dissect import hooks

    original = hooks.Recorder.__init__

    def spy(self, model, layers, *a, **k):
        seen.append(list(layers))
        original(self, model, layers, *a, **k)

    monkeypatch.setattr(hooks.Recorder, "__init__", spy)
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,layer2", "-o", out)
    assert seen == [["layer2"]]
    with h5py.File(out) as f:
        assert set(f["layers"]) == {"layer1", "layer2", "fc"}
        np.testing.assert_array_equal(f["layers/layer1"][:], before)
    r = invoke("record", probe_dir, *TIMM, "--layers", "layer2", "-o", out)
    assert "nothing to record" in r.stderr
    assert seen == [["layer2"]]


def test_record_refuses_to_mix_models_in_one_file(artifacts, tmp_path, probe_dir):
    import shutil

    out = tmp_path / "acts.h5"
    shutil.copy(artifacts / "activations.h5", out)
    r = invoke("record", probe_dir, "--model", "timm:test_vit", "--weights", "none", "--layers", "blocks.0", "-o", out, ok=False)
    assert_one_line_error(r, "other inputs: model timm:test_resnet -> timm:test_vit")


def test_run_reuses_everything_on_second_call(tmp_path, tiny_clip, probe_dir, monkeypatch):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\ncircle\n")
    args = ["run", probe_dir, "--clip", tiny_clip, *TIMM, "--layers", "layer1", "--concepts", concepts, "-o", tmp_path / "run", "--param", "top_k=10"]
    invoke(*args)
    first = pq.read_table(tmp_path / "run" / "labels.parquet").to_pandas()
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["steps"]["images"]["reused"] is False

    from dissect import hooks

    def fail(*a, **k):
        raise AssertionError("model work on a second identical run")

    monkeypatch.setattr("dissect.clip.load_clip", fail)
    monkeypatch.setattr(hooks.Recorder, "run", fail)
    r = invoke(*args)
    assert r.stderr.count("reusing") == 4  # text, images, activations, labels
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["steps"]["images"]["reused"] and manifest["steps"]["text"]["reused"] and manifest["steps"]["labels"]["reused"]
    second = pq.read_table(tmp_path / "run" / "labels.parquet").to_pandas()
    assert list(first.label) == list(second.label)
    monkeypatch.undo()

    # Another similarity: only the labels are recomputed.
    monkeypatch.setattr(hooks.Recorder, "run", fail)
    r = invoke(*args[:-2], "--sim", "cos")
    assert "reusing" in r.stderr and "images.h5 (up to date)" in r.stderr
    _, meta = read_labels(tmp_path / "run" / "labels.parquet")
    assert meta["similarity"] == "cos"


def test_run_recomputes_stale_artifacts(tmp_path, tiny_clip, probe_dir):
    probe = make_images(tmp_path / "probe", 12, seed=3)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\n")
    args = ["run", probe, "--clip", tiny_clip, *TIMM, "--layers", "layer1", "--concepts", concepts, "--param", "top_k=5", "-o", tmp_path / "run"]
    invoke(*args)
    make_images(tmp_path / "extra", 1, seed=9)
    next((tmp_path / "extra" / "class0").iterdir()).rename(probe / "new.jpg")
    concepts.write_text("red\nblue\ngreen\n")
    r = invoke(*args)
    assert "computing" in r.stderr and "images.h5 (made from other inputs)" in r.stderr
    assert "text.h5 (made from other inputs)" in r.stderr
    with h5py.File(tmp_path / "run" / "images.h5") as f:
        assert f["embeddings"].shape[0] == 13


# ---------------------------------------------------------------------------
# User errors: one line, non-zero exit, no traceback, no half-written output
# ---------------------------------------------------------------------------

def test_missing_probe_folder(tmp_path, tiny_clip):
    r = invoke("embed-images", tmp_path / "nope", "--clip", tiny_clip, "-o", tmp_path / "i.h5", ok=False)
    assert_one_line_error(r, "does not exist")
    no_stray_files(tmp_path, set())


def test_unknown_clip_model_suggests_names(tmp_path, probe_dir):
    r = invoke("embed-images", probe_dir, "--clip", "ViT-B-61:openai", "-o", tmp_path / "i.h5", ok=False)
    assert_one_line_error(r, "unknown CLIP model", "ViT-B-16")


def test_unknown_target_model(tmp_path, probe_dir):
    r = invoke("record", probe_dir, "--model", "timm:resnet_doesnotexist", "--layers", "fc", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "unknown timm model")
    r = invoke("record", probe_dir, "--model", "keras:resnet", "--layers", "fc", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "timm:NAME", code=2)


def test_unknown_layer_names_closest_matches(tmp_path, probe_dir):
    r = invoke("record", probe_dir, *TIMM, "--layers", "layer1,layr4", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "layr4", "layer4", "dissect layers", code=2)
    no_stray_files(tmp_path, set())


def test_a_tuple_is_recorded_through_its_first_tensor_and_other_outputs_are_refused(tmp_path, probe_dir):
    """transformers' convention: a block returns (hidden_states, ...); a dict (or a tuple not led by a batch of
    tensors) has no units to record."""
    src = tmp_path / "tuplemodel.py"
    src.write_text(
        "import torch\nfrom torchvision import transforms as T\n"
        "class Pair(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x, x + 10\n"
        "class Named(torch.nn.Module):\n"
        "    def forward(self, x):\n        return {'a': x}\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.pair = Pair(); self.named = Named(); self.fc = torch.nn.Linear(3, 2)\n"
        "    def forward(self, x):\n        a, b = self.pair(x.mean((2, 3)))\n        return self.fc(a + b + self.named(a)['a'])\n"
        "def build():\n    return M(), T.Compose([T.Resize((8, 8)), T.ToTensor()])\n"
    )
    from dissect import artifacts as A

    invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "pair", "-o", tmp_path / "a.h5")
    pair = A.read_activations(tmp_path / "a.h5").layers["pair"]
    assert pair.shape[1] == 3 and 0 <= pair.min() and pair.max() <= 1      # the mean pixel (the first tensor), not + 10
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "named", "-o", tmp_path / "b.h5", ok=False)
    assert_one_line_error(r, "returns a dict")
    assert not (tmp_path / "b.h5").exists()


def test_broken_image_names_the_file_under_strict(tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 4)
    (probe / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5", "--strict", ok=False)
    assert_one_line_error(r, "broken.png")
    assert not (tmp_path / "i.h5").exists()
    assert not list(tmp_path.glob(".i.h5*"))


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_concept_list(tmp_path, tiny_clip, content):
    c = tmp_path / "c.txt"
    c.write_bytes(content)
    r = invoke("embed-text", c, "--clip", tiny_clip, "-o", tmp_path / "t.h5", ok=False)
    assert_one_line_error(r, "empty")
    assert not (tmp_path / "t.h5").exists()


def test_unknown_concept_set_lists_shipped_ones(tmp_path, tiny_clip):
    r = invoke("embed-text", "30k", "--clip", tiny_clip, "-o", tmp_path / "t.h5", ok=False)
    assert_one_line_error(r, "20k", "imagenet")


def test_mismatched_clip_models_are_refused(artifacts, tmp_path, probe_dir):
    import json as _json

    import open_clip
    import torch

    from conftest import TINY_CLIP_CFG

    cfg = dict(TINY_CLIP_CFG, embed_dim=32)
    (tmp_path / "other.json").write_text(_json.dumps(cfg))
    torch.manual_seed(1)
    open_clip.add_model_config(tmp_path / "other.json")
    torch.save(open_clip.create_model("other").state_dict(), tmp_path / "other.pt")
    invoke("embed-text", "cifar100", "--clip", f"{tmp_path / 'other.json'}:{tmp_path / 'other.pt'}", "-o", tmp_path / "t.h5")
    r = invoke("label", "--images", artifacts / "images.h5", "--text", tmp_path / "t.h5", "--activations",
               artifacts / "activations.h5", "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "different CLIP models", "other.pt", "tiny-clip.pt")
    assert not (tmp_path / "l.parquet").exists()


def test_mismatched_probe_ids_are_refused(artifacts, tmp_path, tiny_clip):
    other = make_images(tmp_path / "other", 30, seed=5)
    invoke("record", other, *TIMM, "--layers", "layer1", "-o", tmp_path / "a.h5")
    r = invoke("label", "--images", artifacts / "images.h5", "--text", artifacts / "text.h5", "--activations",
               tmp_path / "a.h5", "--param", "top_k=5", "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "different probe sets", "images.h5", "a.h5")
    assert not (tmp_path / "l.parquet").exists()


def test_wrong_artifact_kind_is_named(artifacts, tmp_path):
    r = invoke("label", "--images", artifacts / "text.h5", "--text", artifacts / "text.h5", "--activations",
               artifacts / "activations.h5", "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "dissect/text-embeddings", "embed-images")
    (tmp_path / "junk.h5").write_text("not hdf5")
    r = invoke("label", "--images", tmp_path / "junk.h5", "--text", artifacts / "text.h5", "--activations",
               artifacts / "activations.h5", "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "not an HDF5 file")


def test_too_few_images_for_top_k(artifacts, tmp_path):
    r = invoke("label", "--images", artifacts / "images.h5", "--text", artifacts / "text.h5", "--activations",
               artifacts / "activations.h5", "-o", tmp_path / "l.parquet", ok=False)
    assert_one_line_error(r, "36 images", "top 100", "top_k", code=2)


def test_bad_similarity_and_parameters(artifacts, tmp_path):
    base = ["label", "--images", artifacts / "images.h5", "--text", artifacts / "text.h5", "--activations", artifacts / "activations.h5", "-o", tmp_path / "l.parquet"]
    assert_one_line_error(invoke(*base, "--sim", "softmax", ok=False), "softwpmi", code=2)
    assert_one_line_error(invoke(*base, "--param", "alpha=3", ok=False), "alpha", code=2)
    assert_one_line_error(invoke(*base, "--param", "top_k=0", ok=False), "top_k", code=2)
    assert_one_line_error(invoke(*base, "--layers", "layer9", ok=False), "layer9", code=2)
    assert invoke(*base, "--batch-size", "-1", ok=False).exit_code == 2
    assert not (tmp_path / "l.parquet").exists()


def test_output_folder_must_exist_and_inputs_are_not_overwritten(artifacts, tmp_path, tiny_clip, probe_dir):
    r = invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / "no" / "i.h5", ok=False)
    assert_one_line_error(r, "does not exist", "mkdir", code=2)
    c = tmp_path / "c.txt"
    c.write_text("red\n")
    r = invoke("embed-text", c, "--clip", tiny_clip, "-o", c, ok=False)
    assert_one_line_error(r, "overwrite", code=2)
    assert c.read_text() == "red\n"


def test_debug_flag_shows_the_traceback(tmp_path, tiny_clip):
    r = runner.invoke(app, ["--debug", "embed-images", str(tmp_path / "nope"), "--clip", tiny_clip, "-o", str(tmp_path / "i.h5")])
    assert r.exit_code != 0
    assert r.exception is not None and type(r.exception).__name__ == "InputError"


def test_console_script_runs_from_any_directory(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "dissect"
    out = subprocess.run([str(exe), "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("dissect ")
    out = subprocess.run([str(exe), "embed-text", "nope.txt", "--clip", "x", "-o", "t.h5"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.startswith("error:")


def test_layers_keep_the_order_they_were_asked_for(tmp_path, probe_dir):
    out = tmp_path / "a.h5"
    invoke("record", probe_dir, *TIMM, "--layers", "fc,layer1", "-o", out)
    invoke("record", probe_dir, *TIMM, "--layers", "layer3", "-o", out)
    with h5py.File(out) as f:
        assert list(f["layers"]) == ["fc", "layer1", "layer3"]


def test_forward_pass_stops_after_the_last_requested_layer(probe_dir):
    import torch

    from dissect.hooks import Recorder
    from dissect.models import load_target

    from dissect.hooks import probe_layers

    target = load_target("timm:test_resnet", "none")
    x = torch.zeros(2, 3, 64, 64)
    # Layouts are decided once, by a one-image pass over the whole model (record and run do it while planning,
    # so that a module the forward pass calls again later is seen); the recording passes then stop early.
    infos = probe_layers(target.module, x[:1])
    calls = []
    handle = target.module.layer4.register_forward_hook(lambda *a: calls.append("layer4"))
    with Recorder(target.module, ["layer2", "layer1"], layout=infos) as rec:
        out = rec.run(x)
        rec.run(x)
    assert set(out) == {"layer1", "layer2"} and calls == []
    with Recorder(target.module, ["layer4"], layout=infos) as rec:
        rec.run(x)
    assert calls == ["layer4"]
    handle.remove()
    assert not target.module.layer1._forward_hooks  # our hooks are gone


def test_hooks_are_removed_when_a_layer_name_is_wrong():
    from dissect.errors import UsageError
    from dissect.hooks import resolve_layers
    from dissect.models import load_target

    target = load_target("timm:test_resnet", "none")
    with pytest.raises(UsageError, match="layer4"):
        resolve_layers(target.module, ["layer1", "layer9"], "timm:test_resnet")
    assert all(not m._forward_hooks for m in target.module.modules())


def test_wheel_installs_cli_inside_the_package(tmp_path):
    """`pip install .` ships dissect.cli and the concept sets, and no top-level `cli` module."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dissect/cli/main.py" in names and "dissect/concept_sets/20k.txt" in names
    assert "dissect/demo/assets/tiny_clip/open_clip_model.safetensors" in names and "dissect/demo/world.py" in names
    assert not any(n.startswith(("cli/", "concept_sets/", "tests/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dissect = dissect.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_every_package_of_the_library_is_declared_for_the_wheel():
    """pyproject.toml lists dissect's packages by hand (cli/ and concept_sets/ install inside it): a new package
    folder that is not listed would be missing from `pip install .` while every editable-install test passes."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("dissect",) + p.parent.relative_to(root / "dissect").parts)
             for p in (root / "dissect").rglob("__init__.py")}
    assert found <= declared, sorted(found - declared)


def test_probe_list_file_and_several_probes_are_concatenated(tmp_path, tiny_clip, probe_dir):
    second = make_images(tmp_path / "second", 4, seed=7)
    lst = tmp_path / "list.txt"
    files = sorted(p.relative_to(tmp_path) for p in second.rglob("*.*"))
    lst.write_text("# my probe\n" + "\n".join(str(f) for f in files[::-1]) + "\n")
    invoke("embed-images", lst, "--clip", tiny_clip, "-o", tmp_path / "l.h5")
    with h5py.File(tmp_path / "l.h5") as f:
        assert [s.decode() for s in f["ids"][:]] == [str(x) for x in files[::-1]]  # list order kept
    invoke("embed-images", probe_dir, second, "--clip", tiny_clip, "-o", tmp_path / "both.h5")
    with h5py.File(tmp_path / "both.h5") as f:
        ids = [s.decode() for s in f["ids"][:]]
    assert len(ids) == 40 and ids[0].startswith(probe_dir.name + "/") and ids[-1].startswith("second/")


def test_clip_from_a_local_open_clip_folder(tmp_path, tiny_clip, probe_dir):
    import shutil

    from conftest import TINY_CLIP_CFG

    cfg_path, ckpt = tiny_clip.split(".json:")
    folder = tmp_path / "myclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    shutil.copy(ckpt, folder / "open_clip_pytorch_model.bin")
    invoke("embed-images", probe_dir, "--clip", f"local-dir:{folder}", "-o", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["embeddings"].shape == (36, 32)
        assert json.loads(f.attrs["clip_preprocess"])["mean"] == [0.5, 0.5, 0.5]


def test_offline_pretrained_weights_say_what_to_fetch(tmp_path, probe_dir, monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*a, **k):  # fail at once, as on a machine without a network (no DNS or connect timeouts)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    # huggingface_hub reads HF_HUB_OFFLINE when first imported (an earlier test may have done
    # that); online it retries failed connections with back-off for about 45 s per file.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    r = invoke("record", probe_dir, "--model", "timm:resnet18", "--layers", "fc", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "cannot download", "--weights")
    r = invoke("embed-images", probe_dir, "--clip", "RN50:openai", "-o", tmp_path / "i.h5", ok=False)
    assert_one_line_error(r, "RN50", "huggingface.co/timm/resnet50_clip.openai", "--clip RN50:openai@/path/to/")


def test_package_stage_functions_stay_callable_once_their_module_is_imported(artifacts, tmp_path):
    """`dissect.label` names both the stage function and its module: the second call (after Python bound the name
    to the imported module) and a call after `from dissect.label import ...` run the stage too."""
    import dissect
    from dissect.label import LabelSettings

    first = dissect.label(artifacts / "images.h5", artifacts / "activations.h5", None, text=artifacts / "text.h5", sim="cos")
    again = dissect.label(artifacts / "images.h5", artifacts / "activations.h5", None, text=artifacts / "text.h5",
                          settings=LabelSettings(sim="cos"))
    assert first.to_pylist() == again.to_pylist() and first.num_rows > 0
    assert callable(dissect.record) and callable(dissect.run)


def test_run_labels_again_when_the_library_asks_for_another_holdout(tmp_path, tiny_clip, probe_dir):
    """pipeline.run takes the label settings' fields; a holdout is part of what makes labels.parquet, so another
    holdout is labelled again, never reused."""
    from dissect import artifacts as A
    from dissect.pipeline import run

    kw = dict(weights="none", device="cpu", workers=0, params={"top_k": 5}, top=3)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\n")
    out = tmp_path / "run"
    run([str(probe_dir)], tiny_clip, "timm:test_resnet", ["fc"], str(concepts), out, holdout=0.25, **kw)
    first = A.read_labels_metadata(out / "labels.parquet")["split"]
    run([str(probe_dir)], tiny_clip, "timm:test_resnet", ["fc"], str(concepts), out, holdout=0.5, **kw)
    second = A.read_labels_metadata(out / "labels.parquet")["split"]
    assert first["holdout"] == 0.25 and second["holdout"] == 0.5


@pytest.mark.parametrize("body", [
    "import sys\nsys.exit(0)\n",                                                     # at import, "success"
    "import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\np.parse_args()\n",
    "import sys, torch\ndef build():\n    sys.exit(3)\n",                            # in the function
])
def test_a_users_module_that_exits_is_one_line_never_exit_zero(tmp_path, probe_dir, body):
    """Issue #24: a --model or --directions module that calls sys.exit exited 0 with nothing written, and one that
    ran argparse at import printed `usage: dissect ... unrecognized arguments` as if dissect's command line were
    wrong."""
    src = tmp_path / "m.py"
    src.write_text(body + ("def build():\n    return None\n" if "def build" not in body else ""))
    for cmd in (["record", probe_dir, "--model", f"{src}:build", "--layers", "0", "-o", tmp_path / "a.h5"],
                ["record", probe_dir, "--model", "timm:test_resnet", "--weights", "none", "--model-arg",
                 "num_classes=3", "--layers", "fc", "--directions", f"fc={src}:build", "-o", tmp_path / "b.h5"]):
        r = invoke(*cmd, ok=False)
        assert r.exit_code not in (0, None), cmd
        assert_one_line_error(r)
        assert "exited" in r.output and "usage: dissect" not in r.output
    assert not list(tmp_path.glob("*.h5"))


def test_evaluate_help_names_every_subcommand_and_a_suggestion_reads_well():
    """Issue #24: `dissect evaluate --help` did not mention simulate or sanity; "Did you mean 'label'?. See"."""
    r = invoke("evaluate", "--help")
    for sub in ("simulate", "sanity", "stability", "pvalues", "predict-class"):
        assert sub in r.output, sub
    r = invoke("lable", ok=False)
    assert r.exit_code == 2 and "Did you mean 'label'? See" in r.output and "?." not in r.output


def test_an_interrupt_inside_an_in_process_command_stops_the_test_run(tmp_path, probe_dir):
    """Issue #24: Ctrl-C did not stop `make test`: the in-process CLI turned the interrupt into exit 130 and pytest
    carried on with errors. The helper every test calls raises it again."""
    src = tmp_path / "m.py"
    src.write_text("def build():\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "0", "-o", tmp_path / "a.h5", ok=False)


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_texts_keep_their_brackets():
    """Issue #24: Typer's rich help read "[default: 2048]" in our help texts as a markup tag and dropped it, leaving
    "Image-loading processes ." Every bracketed phrase of every help text is shown as written."""
    import re

    from typer.main import get_command

    shown = 0
    for path, cmd in _commands(get_command(app)):
        if getattr(cmd, "hidden", False):
            continue
        r = invoke(*path, "--help")
        page = re.sub(r"[\s│╭╮╰╯─]+", " ", r.output)
        for text in [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]:
            for phrase in re.findall(r"\[[a-z][^\[\]]*\]", " ".join(text.replace("\\[", "[").split())):
                assert phrase in page, (path, phrase)
                shown += 1
        assert not re.search(r"\w \.(\s|$)", page), (path, re.search(r".{30}\w \.(\s|$)", page))
    assert shown >= 20


@pytest.mark.parametrize("message,joined", [("cannot read x", "cannot read x. Do y"), ("cannot read x.", "cannot read x. Do y"),
                                            ("is it x?", "is it x? Do y"), ("cut short...", "cut short.... Do y")])
def test_an_error_and_its_hint_are_joined_by_one_stop(message, joined):
    """Issue #24: a message ending in its own stop got a second ("...trusted source.. Check")."""
    from dissect.errors import UsageError

    assert str(UsageError(message, hint="do y")) == joined
