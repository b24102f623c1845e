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
