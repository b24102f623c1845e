"""Benchmark `dissect explain` at the issue's scale: ResNet-50 layer4 size (2,048 units), 50,000 images,
the 20k concept set, K = 5, in CLIP mode, on synthetic artifacts, as a whole command.

    python benchmarks/bench_explain.py                  # N=50,000, C=2,048, M=20,000
    python benchmarks/bench_explain.py --smoke          # seconds

Units are planted: each is a weighted sum of the true presence (which images show the topic)
of one to three random concepts plus noise, so the run also reports how many planted units
got all of their concepts back under each calibration's CLIP presence. Images show only the
first M / 32 concepts, each on about 96 / M of the images (0.5% at the default scale); the
other concepts are absent, as most of a 20k set is from any probe. Wall time and peak resident memory (ru_maxrss of the command's process).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import timed

def make(d: Path, n: int, c: int, m: int, dim: int = 512, seed: int = 0):
    from dissect import artifacts as A

    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, dim), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    topics = rng.integers(0, max(1, m // 32), size=(n, 3))  # images show 1 in 32 concepts; the rest are absent
    I = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    for j in range(3):
        I += 0.4 * T[topics[:, j]]
    I /= np.linalg.norm(I, axis=1, keepdims=True)
    ids = [f"img{i:06d}.jpg" for i in range(n)]
    recipes = []
    q = rng.normal(0, 0.1, size=(n, c)).astype(np.float32)
    # planted on concepts that some images show (the topics), weights 0.5..1
    pool = np.unique(topics)
    for u in range(c):
        k = int(rng.integers(1, 4))
        cs = rng.choice(pool, size=k, replace=False)
        ws = rng.uniform(0.5, 1.0, size=k)
        p = np.stack([(topics == j).any(axis=1) for j in cs], axis=1).astype(np.float32)  # the truth, no calibration
        q[:, u] += (p * ws).sum(axis=1).astype(np.float32)
        recipes.append([f"concept{j}" for j in cs])
    attrs = {"probe": json.dumps({"sources": [], "n_images": n}), "fingerprint": "bench"}
    A.write_embeddings(d / "images.h5", A.IMAGE_FORMAT, I, ids, "ViT-B-16", "bench", dict(attrs))
    A.write_embeddings(d / "text.h5", A.TEXT_FORMAT, T, [f"concept{j}" for j in range(m)], "ViT-B-16", "bench",
                       {"fingerprint": "bench-text"})
    A.write_activations(d / "activations.h5", ids, {"layer4": q}, {"layer4": {"summary": "mean", "layout": "nc"}},
                        {"model": "bench", "probe": attrs["probe"]})
    return recipes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--units", type=int, default=2048)
    ap.add_argument("--concepts", type=int, default=20_000)
    ap.add_argument("--max-memory", default="256MB")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--calibrations", default="zscore,mixture",
                    help="explain once per calibration (units are planted on the truth)")
    a = ap.parse_args()
    n, c, m = (3000, 32, 1000) if a.smoke else (a.images, a.units, a.concepts)
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        recipes = make(d, n, c, m)
        print(f"N={n} images, C={c} units, M={m} concepts (artifacts made in {time.perf_counter() - t:.0f} s)")
        label_s, label_gb = timed(["label", "-i", str(d / "images.h5"), "-a", str(d / "activations.h5"), "-t",
                                    str(d / "text.h5"), "--device", "cpu", "-o", str(d / "labels.parquet")])
        print(f"baseline: label (SoftWPMI) on the same artifacts {label_s:.1f} s, peak {label_gb:.2f} GB")
        for calibration in a.calibrations.split(","):
            out = d / f"explanations-{calibration}.parquet"
            dt, gb = timed(["explain", "-a", str(d / "activations.h5"), "-i", str(d / "images.h5"), "-t",
                            str(d / "text.h5"), "-K", "5", "--max-memory", a.max_memory, "--device", "cpu",
                            "--calibration", calibration, "-o", str(out)])
            rows = pq.read_table(out).to_pylist()
            hit = sum(set(rec) <= set(row["concepts"]) for rec, row in zip(recipes, rows))
            corr = np.nanmean([row["correlation"] for row in rows])
            single = np.nanmean([row["single_correlation"] for row in rows])
            print(f"explain --calibration {calibration}: {dt:.1f} s (ratio to label {dt / label_s:.2f}), peak {gb:.2f} GB "
                  f"(--max-memory {a.max_memory}); planted concepts all found for {hit}/{len(rows)} units; mean "
                  f"held-out r {corr:.3f} (best single concept {single:.3f}); "
                  f"{np.mean([row['n_concepts'] for row in rows]):.2f} concepts per unit", flush=True)


if __name__ == "__main__":
    main()
