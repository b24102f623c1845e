"""The scenes world (dissect.demo.scenes): the second known world, its generator and its shipped models."""

from __future__ import annotations

import csv

import numpy as np
from dissect.demo import scenes, scenes_concepts, scenes_specs


def test_generation_is_deterministic_per_item():
    a = scenes.generate(6, seed=5)
    b = scenes.generate(6, seed=5)
    assert [s for _, s in a] == [s for _, s in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _), (y, _) in zip(a, b))
    assert [s for _, s in scenes.generate(3, seed=6)] != [s for _, s in a[:3]]


def test_scenes_hold_one_to_four_objects_and_their_truth():
    rng = np.random.default_rng(0)
    words = {w for kind in scenes.WORDS.values() for w in kind}
    for _ in range(300):
        s = scenes.sample(rng)
        assert 1 <= len(s["objects"]) <= scenes.MAX_OBJECTS
        t = scenes.truth(s)
        assert set(t) <= words and s["background"] in t
        assert all(o in t and c in t for o, c in s["objects"])


def test_captions_name_only_what_is_true():
    rng = np.random.default_rng(1)
    names = set(scenes.OBJECTS) | set(scenes.COLORS)
    for _ in range(200):
        s = scenes.sample(rng)
        named = {w.strip(",") for w in scenes.caption(s, rng).split()} & names
        assert named <= set(scenes.truth(s))


def test_prevalences_run_from_common_to_very_rare():
    """The world's point: on 6,000 scenes the objects run from about a third of the images down to about 0.1%."""
    rng = np.random.default_rng(2)
    counts = {o: 0 for o in scenes.OBJECTS}
    n = 6000
    for _ in range(n):
        for o, _ in scenes.sample(rng)["objects"]:
            counts[o] += 1
    share = {o: c / n for o, c in counts.items()}
    assert 0.28 < share["house"] < 0.38 and share["anchor"] < 0.004
    assert sum(v < 0.03 for v in share.values()) >= 8        # most objects are rare, as on ImageNet with 20k words


def test_write_probe_writes_every_true_word_as_annotations(tmp_path):
    folder = scenes.write_probe(tmp_path / "p", 5, seed=3)
    with open(folder / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = {(f"{i:06d}.png", w) for i, (_, s) in enumerate(scenes.generate(5, 3)) for w in scenes.truth(s)}
    assert {(r["id"], r["concept"]) for r in rows} == want
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]


def test_the_shipped_models_load_through_the_public_specs():
    import torch

    from dissect.clip import load_clip
    from dissect.models import load_target

    specs = scenes_specs()
    clip = load_clip(specs.clip, "cpu")
    with torch.no_grad():
        emb = clip.model.encode_text(clip.tokenizer(["house"]))
    assert emb.shape == (1, 128)
    assert specs.final_layer == "classifier" and len(specs.class_names) == len(scenes.OBJECTS)
    concepts = scenes_concepts()
    assert concepts[: len(scenes.OBJECTS)] == list(scenes.OBJECTS) and 300 <= len(concepts) <= 320
    model = load_target(specs.model, specs.weights, specs.model_args)
    with torch.no_grad():
        out = model.module(torch.zeros(1, 3, specs.input_size, specs.input_size))
    assert out.shape == (1, len(scenes.OBJECTS))
