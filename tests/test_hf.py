"""Hugging Face transformers models as targets (issue #29): `--model hf:FOLDER` on models built from configs with
random weights and saved with save_pretrained (nothing downloaded)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dissect import artifacts as A

from conftest import make_images
from test_cli import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A ViTForImageClassification (32 px, 8 px patches: CLS + 4x4 tokens) with its image processor, saved."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    d = tmp_path_factory.mktemp("hfvit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25],
                      resample=3).save_pretrained(d)
    return d


def _first_block(model) -> str:
    """The first encoder block's name: vit.encoder.layer.0 in transformers 4, vit.layers.0 in 5."""
    names = dict(model.named_modules())
    return next(n for n in ("vit.layers.0", "vit.encoder.layer.0") if n in names)


def _recorded_as_our_hook(target, model, block: str, x):
    """dissect's loader and recorder on ``x`` against a plain hook on the transformers model (mean over tokens, to
    1e-6); returns the hook's [N, L, C] tokens."""
    from dissect.hooks import Recorder

    seen = {}
    h = model.get_submodule(block).register_forward_hook(lambda m, i, o: seen.update(x=(o[0] if isinstance(o, tuple) else o)))
    with torch.inference_mode():
        model(pixel_values=x)
    h.remove()
    with Recorder(target.module, [block], summary="mean") as rec, torch.inference_mode():
        got = rec.run(x)[block]
    np.testing.assert_allclose(got.numpy(), seen["x"].mean(dim=1).numpy(), atol=1e-6)
    return seen["x"]


def test_a_saved_vit_records_as_a_forward_hook_of_our_own_on_the_same_model(vit_folder, tmp_path):
    """Issue #29 acceptance: `record --model hf:FOLDER --layers BLOCK` equals a hook of our own on the model
    transformers loads from the folder, fed the images as its image processor prepares them, to 1e-6 (mean over
    tokens); the processor's size, mean, std and resampling are dissect's preprocessing; maps sit on the 4x4 grid."""
    from PIL import Image
    from transformers import AutoImageProcessor, ViTForImageClassification

    from dissect.probe import open_probe

    probe = make_images(tmp_path / "probe", 8, seed=3)
    model = ViTForImageClassification.from_pretrained(vit_folder).eval()
    block = _first_block(model)
    r = invoke("layers", f"hf:{vit_folder}")
    assert block in r.stdout and "nlc" in r.stdout
    out = tmp_path / "a.h5"
    invoke("record", probe, "--model", f"hf:{vit_folder}", "--layers", f"{block},classifier", "--maps", "2", "-o", out)
    acts = A.read_activations(out)
    pre = A.read_activations(out, data=False).attrs
    assert '"interpolation": "bicubic"' in pre["preprocess"] and "0.4" in pre["preprocess"]
    proc = AutoImageProcessor.from_pretrained(vit_folder)
    p = open_probe([str(probe)])
    seen = {}
    mod = model.get_submodule(block)
    h = mod.register_forward_hook(lambda m, i, o: seen.update(x=(o[0] if isinstance(o, tuple) else o)))
    for k, image_id in enumerate(acts.ids):
        img = Image.open(p.locations[p.ids.index(image_id)]).convert("RGB")
        pixels = proc(images=img, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = model(pixel_values=pixels).logits
        np.testing.assert_allclose(acts.layers[block][k], seen["x"][0].mean(dim=0).numpy(), atol=2e-2)
        np.testing.assert_allclose(acts.layers["classifier"][k], logits[0].numpy(), atol=2e-2)
    h.remove()
    maps = A.read_maps(out, block)
    assert maps.values.shape[2:] == (4, 4) and maps.attrs["grid_prefix"] == 1


def test_the_recorded_block_equals_our_hook_on_the_same_tensors_to_1e_6(vit_folder):
    """The same check without the image codecs between: dissect's loader and recorder against a plain hook on the
    transformers model, on one batch of tensors."""
    from transformers import ViTForImageClassification

    from dissect.models import load_target

    t = load_target(f"hf:{vit_folder}", None, None, None, "cpu")
    model = ViTForImageClassification.from_pretrained(vit_folder).eval()
    block = _first_block(model)
    x = torch.randn(4, 3, 32, 32)
    _recorded_as_our_hook(t, model, block, x)
    assert t.preprocess.input_size == 32 and t.module.dissect_token_grid == (1, 4, 4)


def test_labels_run_end_to_end_on_an_hf_model(vit_folder, tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 10, seed=4)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    model = transformers.ViTForImageClassification.from_pretrained(vit_folder)
    invoke("run", probe, "--clip", tiny_clip, "--model", f"hf:{vit_folder}", "--layers", _first_block(model),
           "--concepts", concepts, "--param", "top_k=3", "-o", tmp_path / "run", "--device", "cpu")
    rows = A.read_table(tmp_path / "run" / "labels.parquet", A.LABELS_FORMAT).to_pylist()
    assert len(rows) == 32 and all(r["label"] in ("red", "blue", "square") for r in rows)


def test_hf_models_without_transformers_or_offline_end_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    r = invoke("layers", f"hf:{tmp_path}", ok=False)
    assert_one_line_error(r, "needs the transformers package", "clip-dissect[hf]")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("layers", "hf:nobody/no-such-model", ok=False)
    assert_one_line_error(r, "cannot load the config of hf:nobody/no-such-model", "--model hf:DIR")


FAMILIES = {   # config class, model class, its config fields, the grid of its first encoder block (prefix, rows, cols)
    "deit": ("DeiTConfig", "DeiTForImageClassification", {"num_labels": 3}, (2, 4, 4)),          # CLS + distillation
    "dinov2": ("Dinov2Config", "Dinov2Model", {"mlp_ratio": 2}, (1, 4, 4)),
    "dinov2-registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel",
                         {"mlp_ratio": 2, "num_register_tokens": 4}, (5, 4, 4)),                   # CLS + 4 registers
    "beit": ("BeitConfig", "BeitForImageClassification", {"intermediate_size": 64, "num_labels": 3}, (1, 4, 4)),
    "clip-vision": ("CLIPVisionConfig", "CLIPVisionModel", {"intermediate_size": 64}, (1, 4, 4)),
    "siglip-vision": ("SiglipVisionConfig", "SiglipVisionModel", {"intermediate_size": 64}, (0, 4, 4)),   # no CLS
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_families_load_with_their_token_grid_and_record_a_block(family, tmp_path):
    """Conformance: each family built from a config with random weights and saved loads as hf:FOLDER, names its grid
    and prefix tokens, and its first encoder block records as a hook of our own on the same tensors (1e-6)."""
    from dissect.maps import token_grid
    from dissect.models import load_target

    cfg_cls, model_cls, fields, grid = FAMILIES[family]
    cfg = getattr(transformers, cfg_cls)(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.save_pretrained(tmp_path / family)
    t = load_target(f"hf:{tmp_path / family}", None, None, None, "cpu")
    assert t.module.dissect_token_grid == grid
    block = next(n for n, _ in model.named_modules() if n.rstrip("0123456789").endswith(("layer.", "layers."))
                 and n[-1] == "0")
    x = torch.randn(2, 3, 32, 32)
    tokens = _recorded_as_our_hook(t, model, block, x)
    assert token_grid(t.module, tokens.shape[1], block).tokens == tokens.shape[1]


HIERARCHICAL = {   # config class, model class, config fields, the block recorded, its (prefix, rows, cols) or None (conv)
    "swin": ("SwinConfig", "SwinForImageClassification",
             {"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4}, "swin.encoder.layers.1.blocks.0",
             (0, 4, 4)),                        # 32 px / 4 px patches = 8x8 in stage 0, merged 2x2: 4x4 in stage 1
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification",
                 {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]}, "convnext.encoder.stages.1", None),
}


@pytest.mark.parametrize("family", sorted(HIERARCHICAL))
def test_hierarchical_transformers_families_record_their_stages_with_maps_on_each_stages_grid(family, tmp_path):
    """Conformance for Swin (tokens without CLS, a grid halved per stage) and ConvNeXt (channels-first conv stages):
    a later stage's block records as our own hook to 1e-6 and its maps sit on that stage's grid."""
    from dissect.maps import token_grid
    from dissect.models import load_target

    cfg_cls, model_cls, fields, block, grid = HIERARCHICAL[family]
    cfg = getattr(transformers, cfg_cls)(image_size=32, patch_size=4, num_labels=3, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.save_pretrained(tmp_path / family)
    t = load_target(f"hf:{tmp_path / family}", None, None, None, "cpu")
    x = torch.randn(2, 3, 32, 32)
    if grid is None:
        assert t.module.dissect_token_grid is None
        from dissect.hooks import Recorder

        seen = {}
        h = model.get_submodule(block).register_forward_hook(lambda m, i, o: seen.update(x=o))
        with torch.inference_mode():
            model(pixel_values=x)
        h.remove()
        with Recorder(t.module, [block], summary="mean") as rec, torch.inference_mode():
            got = rec.run(x)[block]
        np.testing.assert_allclose(got.numpy(), seen["x"].mean(dim=(2, 3)).numpy(), atol=1e-6)
    else:
        tokens = _recorded_as_our_hook(t, model, block, x)
        g = token_grid(t.module, tokens.shape[1], block)
        assert (g.prefix, g.h, g.w) == grid
    probe = make_images(tmp_path / "probe", 4, seed=1)
    invoke("record", probe, "--model", f"hf:{tmp_path / family}", "--layers", block, "--maps", "2",
           "-o", tmp_path / "a.h5")
    assert A.read_maps(tmp_path / "a.h5", block).values.shape[2:] == (4, 4)


def test_a_missing_hf_folder_is_named_in_one_line(tmp_path):
    r = invoke("layers", f"hf:{tmp_path / 'nowhere'}", ok=False)
    assert_one_line_error(r, "does not exist")


@pytest.mark.parametrize("site", ["block", "stage"])
def test_a_block_returning_a_tuple_is_recorded_and_ablated_through_its_hidden_states(site, tmp_path):
    """Swin's blocks return (hidden_states, None): dissect records the first element, and ablate's edit moves a
    unit in it (the tuple kept) exactly as a loop of one forward per image and unit with a hook of our own."""
    from dissect.evaluate.ablate import AblateSettings, _Tail, _Unit
    from dissect.models import load_target

    cfg_cls, model_cls, fields, block, _ = HIERARCHICAL["swin"]
    if site == "stage":              # a stage returns (hidden, hidden before merging, sizes): copies of the input
        block = "swin.encoder.layers.0"
    torch.manual_seed(2)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(image_size=32, patch_size=4, num_labels=3,
                                                                            **fields)).eval()
    model.save_pretrained(tmp_path / "swin")
    t = load_target(f"hf:{tmp_path / 'swin'}", None, None, None, "cpu", layers=[block])
    n, units = 3, [0, 5]
    x = torch.randn(n, 3, 32, 32)
    base, pred = torch.randn(n, 2).double(), torch.randn(n, 2).double()
    tail = _Tail(t, _Unit(block, "nlc"), units, (base, pred), None, "kl", AblateSettings(samples=16), "cpu")
    tail.row_of = {i: i for i in range(n)}
    tail(torch.arange(n), x)
    want = np.zeros((2, len(units)))
    for i in range(n):
        with torch.inference_mode():
            ref = model(pixel_values=x[i : i + 1]).logits.double()
        for k, u in enumerate(units):
            for kind, d in enumerate((base, pred)):
                def shift(m, inp, out, u=u, v=float(d[i, k])):
                    hidden = out[0].clone()
                    hidden[..., u] += v
                    return type(out)((hidden, *out[1:]))

                h = model.get_submodule(block).register_forward_hook(shift)
                with torch.inference_mode():
                    y = model(pixel_values=x[i : i + 1]).logits.double()
                h.remove()
                p, q = torch.log_softmax(ref / 1.1, -1), torch.log_softmax(y / 1.1, -1)
                want[kind, k] += float((p.exp() * (p - q)).sum())
    assert (want > 0).all()
    np.testing.assert_allclose(tail.damage.numpy(), want, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("edge", [224, 384])
def test_a_convnext_processors_crop_pct_becomes_the_preprocessing(edge, tmp_path):
    """ConvNeXt's image processor: below 384 px it resizes the shortest edge to size / crop_pct and crops the centre,
    from 384 on it squashes the image to size x size; dissect's preprocessing gives its pixels (to 2e-2, the codecs
    between)."""
    from PIL import Image
    from transformers import ConvNextImageProcessor

    from dissect.models import load_target

    cfg_cls, model_cls, fields, _, _ = HIERARCHICAL["convnext"]
    getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(num_labels=3, **fields)).save_pretrained(tmp_path)
    proc = ConvNextImageProcessor(size={"shortest_edge": edge}, crop_pct=0.875)
    proc.save_pretrained(tmp_path)
    t = load_target(f"hf:{tmp_path}", None, None, None, "cpu")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 450, 3), dtype=np.uint8).astype(np.uint8))
    img = img.resize((450, 300), Image.BILINEAR).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(3))
    want = proc(images=img, return_tensors="pt")["pixel_values"][0]
    got = t.transform(img)
    assert got.shape == want.shape == (3, edge, edge)
    assert float((got - want).abs().mean()) < 2e-2


@pytest.mark.parametrize("processor", ["DeiTImageProcessor", "BitImageProcessor", "CLIPImageProcessor", "PoolFormerImageProcessor",
                                       "BeitImageProcessor", "SiglipImageProcessor", "ViTImageProcessor"])
def test_each_families_image_processor_becomes_the_preprocessing(processor, vit_folder, tmp_path):
    """The processors of DeiT (squash to 256, crop 224), DINOv2 (BiT: shortest edge 256, crop 224), CLIP, PoolFormer
    (size / crop_pct, then its crop), BEiT, SigLIP and ViT, with their defaults: dissect's preprocessing gives their
    pixels on a non-square image (mean |Δ| under 1% of the pixel range: resampling code differs between them)."""
    import shutil

    from PIL import Image, ImageFilter

    from dissect.models import load_target

    folder = tmp_path / "m"
    shutil.copytree(vit_folder, folder)
    (folder / "preprocessor_config.json").unlink()
    proc = getattr(transformers, processor)()
    proc.save_pretrained(folder)
    t = load_target(f"hf:{folder}", None, None, None, "cpu")
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    want = proc(images=img, return_tensors="pt")["pixel_values"][0]
    got = t.transform(img)
    assert got.shape == want.shape
    std = torch.tensor(proc.image_std, dtype=torch.float32)[:, None, None]
    assert float(((got - want) * std).abs().mean()) < 1e-2          # in pixel units (0..1), whatever the std
