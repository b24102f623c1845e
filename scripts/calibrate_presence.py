"""Measure the CLIP presence calibration of `dissect evaluate simulate` on the demo world.

    python scripts/calibrate_presence.py [DEMO_RUN]   # default: runs a fresh demo into a temp folder

The demo world knows every image's colour, shape, texture and size. For each of its 24
words, the CLIP cosine of every probe image with the word is standardised over the
images (z) and p = sigmoid(k (z - z0)) is fitted to the ground truth by maximum
likelihood (Newton's method on two parameters). Printed: k, z0, the mean log-likelihood
and Brier score of the fit, of the same form on raw cosines, and of the fit applied
per attribute (how much one (k, z0) loses against a fit per word group).
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """(k, c) maximising Σ y log σ(k x + c) + (1-y) log(1 - σ(k x + c))."""
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ w)))
        g = X.T @ (y - p)
        H = -(X * (p * (1 - p))[:, None]).T @ X
        w = w - np.linalg.solve(H - 1e-9 * np.eye(2), g)
        w = np.clip(w, -1e3, 1e3)
    return float(w[0]), float(w[1])


def scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), float(np.mean((p - y) ** 2))


def main(run: Path | None) -> None:
    from dissect import artifacts as A
    from dissect.demo import run_demo, world

    if run is None:
        run = Path(tempfile.mkdtemp()) / "demo"
        run_demo(run)
    img = A.read_image_embeddings(run / "images.h5")
    txt = A.read_text_embeddings(run / "text-mixed.h5")
    with open(run / "probe" / "attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = {r["filename"]: r for r in rows}
    pos = {k: i for i, k in enumerate(txt.keys)}
    xs, ys, groups = [], [], []
    raw = []
    for attr, words in world.ATTRIBUTES.items():
        for w in words:
            cos = img.embeddings.astype(np.float64) @ txt.embeddings[pos[w]].astype(np.float64)
            z = (cos - cos.mean()) / cos.std(ddof=1)
            y = np.array([truth[k][attr] == w for k in img.keys], dtype=float)
            xs.append(z); ys.append(y); raw.append(cos); groups += [attr] * len(y)
    x, y, r = np.concatenate(xs), np.concatenate(ys), np.concatenate(raw)
    k, c = fit_logistic(x, y)
    print(f"images {len(img.keys)}, words {len(xs)}, positives {y.mean():.3f}")
    print(f"zscore fit: k = {k:.3f}, z0 = {-c / k:.3f}  (p = sigmoid(k (z - z0)))")
    print("  log-likelihood %.4f, Brier %.4f" % scores(1 / (1 + np.exp(-(k * x + c))), y))
    a, b = fit_logistic(r, y)
    print(f"raw-cosine fit: a = {a:.2f}, b = {b / a:.4f}  (p = sigmoid(a (cos + b)))")
    print("  log-likelihood %.4f, Brier %.4f" % scores(1 / (1 + np.exp(-(a * r + b))), y))
    g = np.array(groups)
    for attr in world.ATTRIBUTES:
        m = g == attr
        ka, ca = fit_logistic(x[m], y[m])
        own = scores(1 / (1 + np.exp(-(ka * x[m] + ca))), y[m])
        shared = scores(1 / (1 + np.exp(-(k * x[m] + c))), y[m])
        print(f"  {attr:8s} own fit k={ka:.2f} z0={-ca / ka:.2f}: LL {own[0]:.4f}; shared fit LL {shared[0]:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
