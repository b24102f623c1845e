"""Benchmark SAE latents as units at the issue's scale: K = 16,384 latents of a 768-channel token layer,
10,000 images, 20,000 concepts, recorded and labelled under the default --max-memory, against recording
and labelling the layer's 768 neurons in the same run.

    python benchmarks/bench_directions.py            # K=16,384, C=768, N=10,000, M=20,000
    python benchmarks/bench_directions.py --smoke    # seconds

The target is a ViT-B-shaped stack (timm ``vit_base_patch16_224``, random weights, 64 px inputs:
17 tokens of 768 channels, recorded at ``blocks.3`` so the forward pass stops there); the SAE is a
random one in the SAELens layout (topk, k = 64). Image and concept embeddings are synthetic
(512-d, as ViT-B-16's), written with the probe's ids. Each command runs in a child process: wall
time and its own peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import timed


def make_probe(folder: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i:06d}.png")


def make_sae(folder: Path, c: int, k: int, top: int, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir()
    W = torch.randn(c, k, generator=g) / c**0.5
    save_file({"W_enc": W, "b_enc": torch.zeros(k), "b_dec": torch.zeros(c), "W_dec": W.T.contiguous()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "topk", "k": top, "d_in": c, "d_sae": k,
                                                 "apply_b_dec_to_input": True}))


def make_embeddings(d: Path, ids: list[str], m: int, dim: int = 512, seed: int = 0) -> None:
    from dissect import artifacts as A

    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, dim), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    I = rng.standard_normal((len(ids), dim), dtype=np.float32) / np.sqrt(dim) + 0.4 * T[rng.integers(0, m, len(ids))]
    I /= np.linalg.norm(I, axis=1, keepdims=True)
    attrs = {"probe": json.dumps({"sources": [], "n_images": len(ids)}), "fingerprint": "bench"}
    A.write_embeddings(d / "images.h5", A.IMAGE_FORMAT, I, ids, "ViT-B-16", "bench", attrs)
    A.write_embeddings(d / "text.h5", A.TEXT_FORMAT, T, [f"concept{j}" for j in range(m)], "ViT-B-16", "bench",
                       {"fingerprint": "bench-text"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--latents", type=int, default=16_384)
    ap.add_argument("--concepts", type=int, default=20_000)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    n, k, m = (200, 512, 500) if a.smoke else (a.images, a.latents, a.concepts)
    from dissect import artifacts as A

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        make_probe(d / "probe", n)
        make_sae(d / "sae", 768, k, 64)
        print(f"N={n} images, K={k} latents of 768 channels, M={m} concepts (inputs made in {time.perf_counter() - t:.0f} s)")
        model = ["--model", "timm:vit_base_patch16_224", "--weights", "none", "--model-arg", "img_size=64",
                 "--input-size", "64", "--layers", "blocks.3", "--device", "cpu"]
        rec_s, rec_gb = timed(["record", str(d / "probe"), *model, "-o", str(d / "neurons.h5")])
        print(f"baseline: record the 768 neurons {rec_s:.1f} s, peak {rec_gb:.2f} GB")
        sae_s, sae_gb = timed(["record", str(d / "probe"), *model, "--directions", f"blocks.3={d / 'sae'}",
                               "-o", str(d / "latents.h5")])
        size = (d / "latents.h5").stat().st_size / 1e9
        print(f"record neurons + {k} latents: {sae_s:.1f} s (ratio {sae_s / rec_s:.2f}), peak {sae_gb:.2f} GB; "
              f"file {size:.2f} GB")
        ids = A.read_activations(d / "latents.h5", data=False).ids
        make_embeddings(d, ids, m)
        label = ["label", "-i", str(d / "images.h5"), "-a", str(d / "latents.h5"), "-t", str(d / "text.h5"), "--device", "cpu"]
        lab_s, lab_gb = timed([*label, "--layers", "blocks.3", "-o", str(d / "neurons.parquet")])
        print(f"baseline: label the 768 neurons {lab_s:.1f} s, peak {lab_gb:.2f} GB")
        lat_s, lat_gb = timed([*label, "--layers", "blocks.3@sae", "-o", str(d / "latents.parquet")])
        print(f"label {k} latents (default --max-memory 256MB): {lat_s:.1f} s (ratio {lat_s / lab_s:.2f}, "
              f"{lat_s / lab_s / (k / 768):.2f} per unit), peak {lat_gb:.2f} GB")


if __name__ == "__main__":
    main()
