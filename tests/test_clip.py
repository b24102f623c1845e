"""CLIP loading and the prefix text encoder."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_CLIP_CFG
from dissect.clip import encode_texts, load_clip, prefix_text_encoder

WORDS = ["red", "a striped zebra", "hot air balloon over the sea at dusk", "x", "television", "supercalifragilistic"]


def _clip(tmp_path, text_cfg_extra):
    cfg = json.loads(json.dumps(TINY_CLIP_CFG))
    cfg["text_cfg"].update(text_cfg_extra)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    return load_clip(f"{path}", torch.device("cpu"))


def test_prefix_encoding_equals_full_context(tiny_clip):
    clip = load_clip(tiny_clip, torch.device("cpu"))
    assert prefix_text_encoder(clip) is not None
    fast = encode_texts(clip, WORDS, prefix=True)
    full = encode_texts(clip, WORDS, prefix=False)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


def test_prefix_encoding_equals_full_context_for_a_custom_text_tower(tmp_path):
    clip = _clip(tmp_path, {"hf_model_name": None, "proj_bias": True, "layers": 2})
    if prefix_text_encoder(clip) is None:
        pytest.skip("this open_clip builds no prefix-capable tower for the config")
    torch.testing.assert_close(encode_texts(clip, WORDS), encode_texts(clip, WORDS, prefix=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [{"pool_type": "last"}, {"no_causal_mask": True}])
def test_towers_where_truncation_is_not_exact_fall_back(tmp_path, extra):
    clip = _clip(tmp_path, extra)
    assert prefix_text_encoder(clip) is None
    torch.testing.assert_close(encode_texts(clip, WORDS), encode_texts(clip, WORDS, prefix=False))


# --- The paper's CLIP: OpenAI weights were trained with QuickGELU -------------------------------------------

def _embed_reference(model, tokenizer, images, texts):
    with torch.inference_mode():
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    return img, txt


@pytest.fixture(scope="module")
def vit_b16_openai(tmp_path_factory):
    """A local state dict standing in for the download of ViT-B-16's ``openai`` weights (random, seeded),
    with open_clip's own ``ViT-B-16-quickgelu`` embeddings of a few images and texts on those weights."""
    import open_clip

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-quickgelu").eval()
    path = tmp_path_factory.mktemp("vit_b16") / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    texts = ["a dog", "stop!/go", "!="]
    img, txt = _embed_reference(ref, open_clip.get_tokenizer("ViT-B-16"), images, texts)
    return path, images, texts, img, txt


def _ours(clip, images, texts):
    from dissect.clip import encode_images

    return encode_images(clip, images), encode_texts(clip, texts)


def test_openai_tag_builds_quickgelu_like_open_clips_quickgelu_config(vit_b16_openai, monkeypatch):
    import open_clip.factory

    path, images, texts, ref_img, ref_txt = vit_b16_openai
    # The download, stubbed by the local state dict (as open_clip's cache would hold it).
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(path))
    clip = load_clip("ViT-B-16:openai", torch.device("cpu"))
    img, txt = _ours(clip, images, texts)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=0)
    assert clip.attrs()["clip_activation"] == "quick_gelu"
    # What dissect built before (open_clip's plain ViT-B-16 config, nn.GELU) is measurably different:
    gelu = open_clip.create_model("ViT-B-16", pretrained=str(path)).eval()
    old_img, old_txt = _embed_reference(gelu, open_clip.get_tokenizer("ViT-B-16"), images, texts)
    assert (old_img - ref_img).abs().max() > 1e-4 and (old_txt - ref_txt).abs().max() > 1e-4


def test_quickgelu_changes_the_fingerprint_so_old_embeddings_are_not_reused():
    from dissect.clip import clip_fingerprint, parse_clip_spec
    from dissect.fingerprint import fingerprint

    # The formula of dissect 0.1 (names only) gave these; a GELU-built ViT-B-16:openai must not match now.
    assert clip_fingerprint(parse_clip_spec("ViT-B-16:openai")) != fingerprint(["builtin", "ViT-B-16", "openai"])
    assert clip_fingerprint(parse_clip_spec("RN50:openai")) != fingerprint(["builtin", "RN50", "openai"])
    # Tags trained with GELU, and the -quickgelu configs (always right), keep theirs.
    assert clip_fingerprint(parse_clip_spec("ViT-B-32:laion2b_s34b_b79k")) == fingerprint(
        ["builtin", "ViT-B-32", "laion2b_s34b_b79k"])
    assert clip_fingerprint(parse_clip_spec("ViT-B-16-quickgelu:openai")) == fingerprint(
        ["builtin", "ViT-B-16-quickgelu", "openai"])


def test_tag_at_file_takes_the_tags_activation_with_local_weights(vit_b16_openai, monkeypatch):
    import open_clip.factory

    path, images, texts, ref_img, ref_txt = vit_b16_openai

    def no_download(*a, **k):
        raise AssertionError("MODEL:TAG@FILE must not download")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    clip = load_clip(f"ViT-B-16:openai@{path}", torch.device("cpu"))
    img, txt = _ours(clip, images, texts)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=0)
    assert str(clip.spec) == f"ViT-B-16:openai@{path}" and clip.attrs()["clip_activation"] == "quick_gelu"
    assert clip.preprocess_cfg["interpolation"] == "bicubic"


def test_plain_architecture_with_a_state_dict_says_it_builds_gelu(vit_b16_openai, capsys):
    path = vit_b16_openai[0]
    clip = load_clip(f"ViT-B-16:{path}", torch.device("cpu"))
    assert clip.attrs()["clip_activation"] == "gelu"
    err = capsys.readouterr().err
    assert "nn.GELU" in err and "openai" in err and f"ViT-B-16:TAG@{path}" in err.replace("\n", "")


def test_openai_torchscript_checkpoint_is_loaded_with_quickgelu(tiny_clip, tmp_path):
    """OpenAI's own ``clip.load`` files are TorchScript archives of QuickGELU models."""
    import open_clip

    from dissect.clip import is_torchscript_archive

    torch.manual_seed(3)
    ref = open_clip.create_model("tiny-clip", force_quick_gelu=True).eval()  # tiny-clip: registered by the fixture
    scripted = tmp_path / "tiny.pt"
    torch.jit.script(ref).save(str(scripted))
    assert is_torchscript_archive(scripted) and not is_torchscript_archive(tiny_clip.split(":")[1])
    clip = load_clip(f"tiny-clip:{scripted}", torch.device("cpu"))
    assert clip.attrs()["clip_activation"] == "quick_gelu"
    images = torch.rand(2, 3, 32, 32)
    img, txt = _ours(clip, images, WORDS)
    r_img, r_txt = _embed_reference(ref, open_clip.get_tokenizer("tiny-clip"), images, WORDS)
    torch.testing.assert_close(img, r_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, r_txt, atol=1e-5, rtol=0)


def test_offline_download_failure_names_the_file_and_the_flag(monkeypatch):
    import open_clip.factory

    from dissect.errors import ModelError

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(ModelError) as e:
        load_clip("ViT-B-16:openai", torch.device("cpu"))
    msg = str(e.value)
    assert "huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_pytorch_model.bin" in msg
    assert "--clip ViT-B-16:openai@/path/to/open_clip_pytorch_model.bin" in msg


# --- Text lengths: BPE id 0 is "!" ------------------------------------------------------------------------


def test_exclamation_marks_keep_their_end_of_text_token(tiny_clip):
    """Texts with "!" (BPE id 0) in every position of a length bucket encode as open_clip's encode_text does."""
    clip = load_clip(tiny_clip, torch.device("cpu"))
    ctx = clip.context_length
    # "!" glued to more punctuation is BPE id 0 ("!=" -> "!", "=</w>"); each text fills the whole context
    # (start, ctx - 2 tokens, end) and has its 0 at another position.
    texts = [" ".join("!=" if j == i else "x" for j in range(ctx - 3)) for i in range(ctx - 3)]
    texts += ["stop!/go", "!=", "!", "!!", "go !", "red"]
    tokens = clip.tokenizer(texts)
    assert (tokens[: ctx - 3, -1] == clip.tokenizer.eot_token_id).all()  # the premise: full length ...
    assert ((tokens[: ctx - 3] == 0).sum(dim=1) == 1).all() and (tokens[ctx - 3] == 0).any()  # ... with one id 0
    torch.testing.assert_close(encode_texts(clip, texts, prefix=True), encode_texts(clip, texts, prefix=False),
                               atol=1e-5, rtol=0)


def test_a_text_of_exactly_the_context_length_is_not_reported_truncated(tiny_clip):
    from dissect.clip import truncated_texts

    clip = load_clip(tiny_clip, torch.device("cpu"))
    ctx = clip.context_length
    fits = " ".join(["x"] * (ctx - 2))        # start + ctx-2 tokens + end = ctx
    too_long = " ".join(["x"] * (ctx - 1))
    assert len(clip.tokenizer.encode(fits)) == ctx - 2
    assert truncated_texts(clip, [fits, too_long, "red"]) == [too_long]


def test_embed_text_warns_only_for_texts_longer_than_the_context(tiny_clip, capsys):
    from dissect.concepts import ConceptSet
    from dissect.embed import compute_text_embeddings

    clip = load_clip(tiny_clip, torch.device("cpu"))
    ctx = clip.context_length
    exact = ConceptSet("t", [" ".join(["x"] * (ctx - 2)), "red"], "t")
    compute_text_embeddings(clip, exact)
    assert "exceed" not in capsys.readouterr().err
    longer = ConceptSet("t", [" ".join(["x"] * (ctx - 1)), "red"], "t")
    compute_text_embeddings(clip, longer)
    assert "1 concept(s) exceed" in capsys.readouterr().err


def _pickle_bomb(path, marker):
    import os
    import pickle

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"state_dict": Bomb()}))
    return path


@pytest.mark.parametrize("model", ["tiny", "RN50"])
@pytest.mark.parametrize("checkpoint", ["npz-text", "pickle-bomb", "garbage-bin", "empty-safetensors"])
def test_a_checkpoint_that_is_not_weights_ends_in_one_line_naming_it(tiny_clip, tmp_path, model, checkpoint):
    """Issue #24: `--clip ViT-B-32:x.npz` and `--clip RN50:evil.pt` ended in internal errors (a pickle refused by
    torch.load's weights_only, numpy's object-array refusal). No code of the file runs."""
    from test_cli import assert_one_line_error, invoke

    marker = tmp_path / "ran"
    ckpt = {"npz-text": tmp_path / "x.npz", "pickle-bomb": tmp_path / "evil.pt", "garbage-bin": tmp_path / "w.bin",
            "empty-safetensors": tmp_path / "w.safetensors"}[checkpoint]
    if checkpoint == "pickle-bomb":
        _pickle_bomb(ckpt, marker)
    else:
        ckpt.write_bytes(b"hi\n" if checkpoint != "garbage-bin" else bytes(range(256)) * 4)
    name = tiny_clip.rpartition(":")[0] if model == "tiny" else model
    probe = tmp_path / "probe"
    from conftest import make_images

    make_images(probe, 2)
    r = invoke("embed-images", probe, "--clip", f"{name}:{ckpt}", "--device", "cpu", "-o", tmp_path / "e.h5", ok=False)
    assert_one_line_error(r, str(ckpt))
    assert "internal error" not in r.output and ".." not in r.stderr.replace("...", "")
    assert not marker.exists() and not (tmp_path / "e.h5").exists()
