"""Shared fixtures: a tiny open_clip model with random weights, generated probe images.

Nothing here downloads anything: the CLIP model is an open_clip config of our own
with seeded random weights, target models are timm ``test_*`` models and
torchvision models with ``weights=None``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caches and downloads go to a temporary folder, never to the user's home."""
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("DISSECT_DATA", str(tmp_path_factory.getbasetemp() / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one thread is fastest, and it avoids OpenMP threads spin-waiting
    for a CPU when the machine is busy (which made such tests 10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """``config.json:checkpoint.pt`` spec of a tiny random-weight CLIP."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("tiny_clip")
    cfg = d / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    torch.manual_seed(0)
    open_clip.add_model_config(cfg)
    model = open_clip.create_model("tiny-clip")
    ckpt = d / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return f"{cfg}:{ckpt}"


def make_images(folder: Path, n: int, seed: int = 0, size: int = 40) -> Path:
    """n coloured-rectangle PNG/JPEG images in nested folders, deterministic in ``seed``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"class{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (size, size + 8 * (i % 2)), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        x0, y0 = rng.integers(0, size // 2, 2)
        draw.rectangle([int(x0), int(y0), int(x0) + size // 2, int(y0) + size // 2], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        ext = "jpg" if i % 5 == 0 else "png"
        if i % 7 == 3:
            img = img.convert("L")  # greyscale input must be handled
        img.save(sub / f"img{i:03d}.{ext}")
    return folder


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("probe"), 36)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`dissect demo` once per test session: the demo world's run folder and the CLI result."""
    from typer.testing import CliRunner

    from dissect.cli.main import app

    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, result


def vit_block0_tokens(probe_dir: Path):
    """timm test_vit (random weights) on the probe's images: the [N, L, C] tokens its blocks.0 gives, as a forward
    hook of our own sees them (what recorded direction entries are checked against)."""
    import torch

    from dissect.models import load_target
    from dissect.probe import open_probe

    target = load_target("timm:test_vit", "none")
    probe = open_probe([str(probe_dir)])
    seen = []
    h = target.module.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.inference_mode():
        target.module(torch.stack([target.transform(probe.load(i)) for i in range(len(probe))]))
    h.remove()
    return seen[0]
