"""Benchmark `dissect evaluate simulate` against the `dissect label` pass it scores, in one run.

Both are whole commands on the same synthetic artifacts (N images, C units, M concepts,
d = 512), each in its own subprocess, so wall time and peak memory (ru_maxrss of the
child) are measured per side; the ratio is what counts (this machine is noisy).

    python benchmarks/bench_simulate.py                   # N=50,000, C=2,048, M=20,000
    python benchmarks/bench_simulate.py --smoke           # seconds

Simulate is run twice: with annotations (one concept per unit, the label's) and with
CLIP presence (the images' cosines with every unit's label).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

from _timing import timed


def make(d: Path, n: int, c: int, m: int, dim: int = 512, seed: int = 0) -> dict[str, Path]:
    from dissect import artifacts as A

    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, dim), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    topics = rng.integers(0, m, size=n)
    I = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim) + 0.5 * T[topics]
    I /= np.linalg.norm(I, axis=1, keepdims=True)
    ids = [f"img{i:06d}.jpg" for i in range(n)]
    concepts = [f"concept{j}" for j in range(m)]
    planted = rng.choice(m, size=c, replace=False)
    q = rng.standard_normal((n, c), dtype=np.float32) * 0.3
    for u, t in enumerate(planted):
        q[topics == t, u] += 3.0
    attrs = {"probe": json.dumps({"sources": [], "n_images": n}), "fingerprint": "bench"}
    A.write_embeddings(d / "images.h5", A.IMAGE_FORMAT, I, ids, "ViT-B-16", "bench", dict(attrs))
    A.write_embeddings(d / "text.h5", A.TEXT_FORMAT, T, concepts, "ViT-B-16", "bench", {"fingerprint": "bench-text"})
    A.write_activations(d / "activations.h5", ids, {"layer4": q}, {"layer4": {"summary": "mean", "layout": "nc"}},
                        {"model": "bench", "probe": attrs["probe"]})
    with open(d / "annotations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "concept"])
        for i, t in enumerate(topics):
            w.writerow([ids[i], concepts[t]])
    return {k: d / v for k, v in {"images": "images.h5", "text": "text.h5", "acts": "activations.h5",
                                  "ann": "annotations.csv", "labels": "labels.parquet"}.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--units", type=int, default=2048)
    ap.add_argument("--concepts", type=int, default=20_000)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    n, c, m = (3000, 64, 500) if a.smoke else (a.images, a.units, a.concepts)
    with tempfile.TemporaryDirectory() as tmp:
        p = make(Path(tmp), n, c, m)
        print(f"N={n} images, C={c} units, M={m} concepts")
        label_s, label_gb = timed(["label", "-i", str(p["images"]), "-a", str(p["acts"]), "-t", str(p["text"]),
                                   "-o", str(p["labels"]), "--device", "cpu"])
        print(f"label (softwpmi)              {label_s:7.1f} s   peak {label_gb:.2f} GB")
        ann_s, ann_gb = timed(["evaluate", "simulate", str(p["labels"]), "-a", str(p["acts"]), "--annotations", str(p["ann"]),
                          "-o", str(Path(tmp) / "s1.parquet"), "--device", "cpu"])
        print(f"simulate (annotations)        {ann_s:7.1f} s   peak {ann_gb:.2f} GB   ratio to label {ann_s / label_s:.3f}")
        clip_s, clip_gb = timed(["evaluate", "simulate", str(p["labels"]), "-a", str(p["acts"]), "--images", str(p["images"]),
                           "-t", str(p["text"]), "-o", str(Path(tmp) / "s2.parquet"), "--device", "cpu"])
        print(f"simulate (CLIP presence)      {clip_s:7.1f} s   peak {clip_gb:.2f} GB   ratio to label {clip_s / label_s:.3f}")
        import pyarrow.parquet as pq

        r = pq.read_table(Path(tmp) / "s1.parquet").column("correlation").to_numpy()
        print(f"mean correlation (annotations) {np.nanmean(r):.3f}")


if __name__ == "__main__":
    main()
