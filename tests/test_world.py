"""Tests of the procedural demo world and of the shipped demo checkpoints."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dissect.demo import world

DEMO = Path(world.__file__).resolve().parent / "assets"
CLIP_DIR = DEMO / "tiny_clip"
CLF_DIR = DEMO / "classifier"


def _arrays(items):
    return [np.asarray(im) for im, _ in items]


# --------------------------------------------------------------------------
# world
# --------------------------------------------------------------------------


def test_vocabularies():
    assert world.CLASS_ATTRIBUTE in world.ATTRIBUTES
    words = [w for vocab in world.ATTRIBUTES.values() for w in vocab]
    assert len(words) == len(set(words)), "vocabulary words must be unique across attributes"
    assert len(world.ATTRIBUTES[world.CLASS_ATTRIBUTE]) >= 5


def test_generate_is_deterministic():
    a = world.generate(8, seed=123)
    b = world.generate(8, seed=123)
    assert [x for _, x in a] == [x for _, x in b]
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == np.uint8 and x.shape == (64, 64, 3)
        np.testing.assert_array_equal(x, y)
    c = world.generate(8, seed=124)
    assert any(not np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(c)))
    # item i depends only on (seed, i): a shorter run is a prefix of a longer one
    for x, y in zip(_arrays(world.generate(3, seed=123)), _arrays(a)):
        np.testing.assert_array_equal(x, y)


def test_render_and_sample_attributes():
    rng = np.random.default_rng(0)
    seen = {name: set() for name in world.ATTRIBUTES}
    for _ in range(300):
        attrs = world.sample_attributes(rng)
        assert set(attrs) == set(world.ATTRIBUTES)
        for name, value in attrs.items():
            assert value in world.ATTRIBUTES[name]
            seen[name].add(value)
    assert all(seen[n] == set(v) for n, v in world.ATTRIBUTES.items())
    img = world.render(attrs, np.random.default_rng(1), size=32)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    again = world.render(attrs, np.random.default_rng(1), size=32)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(again))
    with pytest.raises(ValueError):
        world.render(dict(attrs, shape="dodecahedron"), rng)


def test_captions_mention_only_true_attributes():
    rng = np.random.default_rng(0)
    word_attr = {w: n for n, vocab in world.ATTRIBUTES.items() for w in vocab}
    mentioned = {n: 0 for n in world.ATTRIBUTES}
    bare = 0
    for _ in range(500):
        attrs = world.sample_attributes(rng)
        text = world.caption(attrs, rng)
        assert isinstance(text, str) and text.strip() == text and text
        tokens = re.findall(r"[a-z]+", text)
        hits = [t for t in tokens if t in word_attr]
        assert hits, f"caption {text!r} mentions no attribute"
        for t in hits:
            assert attrs[word_attr[t]] == t, (text, attrs)
            mentioned[word_attr[t]] += 1
        bare += text in word_attr
    assert all(v > 50 for v in mentioned.values()), mentioned
    assert bare > 50  # bare-word captions ("star", "red", ...) are common
    a = world.sample_attributes(np.random.default_rng(5))
    assert world.caption(a, np.random.default_rng(7)) == world.caption(a, np.random.default_rng(7))


def test_write_probe(tmp_path):
    out = world.write_probe(tmp_path / "probe", n=5, seed=9, size=48)
    assert out == tmp_path / "probe"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(5)]
    with open(out / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == ["filename", *world.ATTRIBUTES]
    expected = world.generate(5, seed=9, size=48)
    for row, (img, attrs) in zip(rows, expected):
        assert {k: row[k] for k in world.ATTRIBUTES} == attrs
        on_disk = np.asarray(Image.open(out / row["filename"]).convert("RGB"))
        np.testing.assert_array_equal(on_disk, np.asarray(img))


# --------------------------------------------------------------------------
# shipped checkpoints
# --------------------------------------------------------------------------


def test_checkpoint_sizes():
    clip_file = CLIP_DIR / "open_clip_model.safetensors"
    clf_file = CLF_DIR / "model.safetensors"
    assert clip_file.is_file() and clf_file.is_file()
    assert clip_file.stat().st_size + clf_file.stat().st_size <= 15 * 1024 * 1024
    cfg = json.loads((CLIP_DIR / "open_clip_config.json").read_text())
    assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg["model_cfg"])
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == 49408


def test_tiny_clip_loads_and_knows_the_class_words():
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    torch.set_num_threads(1)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{CLIP_DIR}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{CLIP_DIR}")
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    model.eval()
    words = list(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])
    items = world.generate(40, seed=777)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im, _ in items]), normalize=True)
        txt = model.encode_text(tokenizer(words), normalize=True)
    pred = (img @ txt.T).argmax(1).tolist()
    acc = np.mean([words[p] == a[world.CLASS_ATTRIBUTE] for p, (_, a) in zip(pred, items)])
    assert acc >= 0.7, acc  # chance is 1/len(words)


def test_classifier_loads_and_predicts():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    cfg = json.loads((CLF_DIR / "config.json").read_text())
    assert cfg["class_names"] == list(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])
    assert cfg["num_classes"] == len(cfg["class_names"])
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"])
    sd = load_file(str(CLF_DIR / "model.safetensors"))
    assert set(sd) == set(model.state_dict())
    model.load_state_dict(sd)
    model.eval()
    names = [n for n, _ in model.named_modules()]
    assert "layer4" in names and "fc" in names
    size = cfg["input_size"][1]
    items = world.generate(40, seed=778, size=size)
    x = torch.from_numpy(np.stack([np.asarray(im) for im, _ in items])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    acc = np.mean([cfg["class_names"][p] == a[world.CLASS_ATTRIBUTE] for p, (_, a) in zip(pred, items)])
    assert acc >= 0.8, acc  # chance is 1/num_classes
