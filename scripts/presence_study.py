"""How well does each way of turning CLIP cosines into presence follow the truth, on two worlds that differ?

    dissect demo -o runs/demo            # makes both worlds: A in runs/demo, B in runs/demo/scenes
    python scripts/presence_study.py runs/demo [--json study.json] [--skip-downstream]

World A is the demo world (one object per image, every word on 10-50% of the images, the
demo's tiny CLIP); world B the scenes world (several objects per image, objects on 33% down
to 0.05% of the images, a CLIP trained separately with another image tower and SigLIP's loss).
For each world, each concept of its concept set (the world's words among common English
words) and each candidate calibration: the Pearson r of the presence it gives with the truth,
over the concepts that CLIP separates (cosine AUC >= 0.99: where CLIP cannot tell, no
calibration can), rare concepts (< 3% of the images) apart; and how much presence the
concepts that no image shows receive (the share of their (image, concept) cells above 0.5).

1. Candidates: dissect 0.2's zscore (k, z0 fitted on A); zscore and a robust-z sigmoid
   fitted by maximum likelihood on the *other* world (a calibration learned where labels
   exist, transferred); tail FDR (``fdr``); a local FDR; the mixture (``mixture``, the default).
2. The mixture's rule, one constant at a time: every value on every world. The defaults were
   chosen on A (values inside A's passing range, away from its edges) and confirmed on B; the
   null families (a t(4) and a normal, the crispest kept fit wins) were chosen after B, C and D,
   and confirmed on A.

Worlds C and D have no images: random embeddings (``two_worlds.topics_world``, the explain
benchmark's construction), 20,000 (C, 256 dimensions) or 50,000 (D, 512 dimensions) images of
3 topics each among 1,800, so every topic is on ~0.17% of the images and each concept's
cosines are near-Gaussian; texts no image shows besides.
3. Downstream, zscore against the default: the final-layer simulation score under CLIP
   presence against the same under annotations, and planted units recovered by ``explain``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dissect import artifacts as A  # noqa: E402
from dissect.demo import planted, two_worlds  # noqa: E402
from dissect.evaluate import mixture as MX  # noqa: E402
from dissect.evaluate.presence import Calibration, parse_calibration  # noqa: E402


def topics_world(name: str = "C") -> dict:
    """World C (``two_worlds.topics_world``): 20,000 images, 1,800 topics on ~0.17% of them each, 256 dimensions;
    scored on 300 of them and 200 texts that no image shows. World D: the explain benchmark's scale, 50,000 images,
    512 dimensions (positives further out), topics on ~0.17%; 150 topics and 100 absent texts."""
    n, dim, score = (20_000, 256, 300) if name == "C" else (50_000, 512, 150)
    images, texts, topics = two_worlds.topics_world(n=n, m=2_000, dim=dim, seed=0, absent=200)
    keep = np.r_[0:score, 1800:1800 + (200 if name == "C" else 100)]
    cos = images.astype(np.float64) @ texts[keep].astype(np.float64).T
    truth = np.stack([(topics == c).any(1) for c in keep], 1)
    return {"cos": cos, "truth": truth, "words": [f"topic{c}" for c in keep], "prev": truth.mean(0),
            "separated": np.array([two_worlds.auc(cos[:, m], truth[:, m]) >= two_worlds.SEPARATED_AUC
                                   for m in range(cos.shape[1])]), "absent": ~truth.any(0)}


def load_world(name: str, run: Path) -> dict:
    """Cosines [N, M] (float64), truth [N, M] and words of a finished demo's world."""
    if name in ("C", "D"):
        return topics_world(name)
    if name == "A":
        images, text = run / "images.h5", run / "text-mixed.h5"
        with open(run / "probe" / "attributes.csv", newline="") as f:
            truth_of = {r["filename"]: {v for k, v in r.items() if k != "filename"} for r in csv.DictReader(f)}
    else:
        images, text = run / "scenes" / "images.h5", run / "scenes" / "text.h5"
        truth_of = planted.scenes_truth(run / "scenes" / "probe")
    img, txt = A.read_image_embeddings(images), A.read_text_embeddings(text)
    cos = img.embeddings.astype(np.float64) @ txt.embeddings.astype(np.float64).T
    truth = two_worlds.truth_matrix(list(img.keys), list(txt.keys), truth_of)
    aucs = np.array([two_worlds.auc(cos[:, m], truth[:, m]) for m in range(cos.shape[1])])
    return {"cos": cos, "truth": truth, "words": list(txt.keys), "prev": truth.mean(0),
            "separated": np.nan_to_num(aucs) >= two_worlds.SEPARATED_AUC, "absent": ~truth.any(0)}


# ---------------------------------------------------------------------------
# Candidates that are not dissect calibrations (study only)
# ---------------------------------------------------------------------------

def sigmoid(x):
    return 1 / (1 + np.exp(-np.clip(x, -60, 60)))


def standardised(cos):
    return (cos - cos.mean(0)) / cos.std(0, ddof=1)


def robust_z(cos):
    return MX.robust_z(torch.from_numpy(cos)).T.numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 60) -> tuple[float, float]:
    """(k, t) maximising the likelihood of p = sigmoid(k (x - t)) (Newton's method)."""
    w = np.array([1.0, 0.0])
    X = np.stack([x, np.ones_like(x)], 1)
    for _ in range(iters):
        p = sigmoid(X @ w)
        g = X.T @ (y - p)
        H = -(X * (p * (1 - p))[:, None]).T @ X
        w = np.clip(w - np.linalg.solve(H - 1e-9 * np.eye(2), g), -1e3, 1e3)
    return float(w[0]), float(-w[1] / w[0])


def local_fdr(cos: np.ndarray, width: float = 0.25) -> np.ndarray:
    """1 - Efron's local false discovery rate pi0 f0(z) / f(z): f0 the null N(0, 1) on the robust z, f a smoothed
    histogram of z; made non-decreasing in z above the null's centre."""
    z = robust_z(cos)
    N, M = z.shape
    lo, hi = -8.0, max(8.0, float(z.max()) + 1)
    edges = np.arange(lo, hi + width, width)
    centers = (edges[:-1] + edges[1:]) / 2
    kernel = np.exp(-0.5 * (np.arange(-8, 9) * width / 0.3) ** 2)
    kernel /= kernel.sum()
    f0 = np.exp(-0.5 * centers ** 2) / math.sqrt(2 * math.pi)
    out = np.zeros_like(z)
    for m in range(M):
        counts = np.histogram(np.clip(z[:, m], lo, hi - 1e-9), edges)[0].astype(float)
        f = np.convolve(counts, kernel, mode="same") / (N * width)
        pi0 = min(1.0, float(np.interp(0.0, centers, f)) / f0[np.searchsorted(centers, 0.0)])
        p = 1 - np.clip(pi0 * f0 / np.maximum(f, 1e-300), 0, 1)
        p[centers < 0] = 0.0
        out[:, m] = np.interp(z[:, m], centers, np.maximum.accumulate(p))
    return out


def calibrated(cal: Calibration, cos: np.ndarray) -> np.ndarray:
    return cal.apply(torch.from_numpy(cos)).numpy()


def mixture_with(rule: MX.MixtureRule, cos: np.ndarray) -> np.ndarray:
    c = torch.from_numpy(cos)
    return MX.mixture_presence(c, MX.fit_mixture(c, rule), rule).numpy()


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

def score(presence: np.ndarray, w: dict) -> dict:
    """Share of separated concepts with r >= 0.9 and median r, all / rare / common; absent concepts' presence."""
    rows = []
    for m in np.flatnonzero(w["separated"]):
        p, y = presence[:, m], w["truth"][:, m].astype(float)
        r = float(np.corrcoef(p, y)[0, 1]) if p.std() > 0 else 0.0
        rows.append({"concept": w["words"][m], "prevalence": float(w["prev"][m]), "auc": 1.0, "r": r})
    out = two_worlds.summarise_presence(rows)
    absent = w["absent"]
    out["absent_cells_above_half"] = float((presence[:, absent] > 0.5).mean()) if absent.any() else None
    return out


def line(name: str, s: dict) -> str:
    a, r = s["all"], s["rare"]
    rare = f"rare {r['share_following']:.2f} (n={r['concepts']}) med {r['median_r']:.3f}" if r["concepts"] else "rare -"
    return (f"{name:46s} {a['share_following']:.2f} of {a['concepts']:2d}, median r {a['median_r']:.3f} | {rare} | "
            f"absent > 0.5: {s['absent_cells_above_half']:.4f}")


def candidates(worlds: dict) -> dict:
    fitted = {}
    for name, w in worlds.items():
        keep = w["separated"]
        y = w["truth"][:, keep].ravel().astype(float)
        fitted[("zscore", name)] = fit_logistic(standardised(w["cos"])[:, keep].ravel(), y)
        fitted[("robust", name)] = fit_logistic(robust_z(w["cos"])[:, keep].ravel(), y)
    results = {}
    for name, w in worlds.items():
        other = "B" if name == "A" else "A"
        kz, tz = fitted[("zscore", other)]
        kr, tr = fitted[("robust", other)]
        cands = {
            "zscore 10.3, 0.93 (dissect 0.2; fitted on A)": calibrated(parse_calibration("zscore"), w["cos"]),
            f"zscore fitted on {other} ({kz:.1f}, {tz:.2f})": sigmoid(kz * (standardised(w["cos"]) - tz)),
            f"robust z sigmoid fitted on {other} ({kr:.1f}, {tr:.2f})": sigmoid(kr * (robust_z(w["cos"]) - tr)),
            "fdr (tail FDR on the robust z)": calibrated(Calibration("fdr"), w["cos"]),
            "local FDR": local_fdr(w["cos"]),
            "mixture (default)": calibrated(Calibration("mixture"), w["cos"]),
        }
        results[name] = {}
        for cname, p in cands.items():
            results[name][cname] = score(p, w)
            print(f"  {name}  {line(cname, results[name][cname])}", flush=True)
    return results


SWEEP = {
    "min_crisp": (0.0, 0.25, 0.5, 0.75, 0.9),
    "min_separation": (0.0, 1.0, 2.0, 3.0),
    "nulls": (("t4", "normal"), ("t4",), ("normal",)),
    "starts": ((0.005, 0.1), (0.001, 0.02, 0.3), (0.01,), (0.1,)),
    "min_spread": (0.01, 0.1, 0.5),
    "bins": (128, 512, 2048),
}


def sweep(worlds: dict) -> list[dict]:
    rows = []
    for field, values in SWEEP.items():
        for v in values:
            rule = dataclasses.replace(MX.DEFAULT_RULE, **{field: v})
            row = {"constant": field, "value": list(v) if isinstance(v, tuple) else v,
                   "default": getattr(MX.DEFAULT_RULE, field) == v}
            for name, w in worlds.items():
                row[name] = score(mixture_with(rule, w["cos"]), w)
            rows.append(row)
            print(f"  {field}={v}{' (default)' if row['default'] else ''}: "
                  + " || ".join(f"{n} {row[n]['all']['share_following']:.2f} med {row[n]['all']['median_r']:.3f} "
                                f"absent {row[n]['absent_cells_above_half']:.4f}" for n in worlds), flush=True)
    return rows


def downstream(run: Path, scratch: Path) -> dict:
    from dissect.demo import demo_specs, scenes_specs

    out = {}
    for spec in ("zscore", "mixture"):
        cal = parse_calibration(spec)
        a, b = run, run / "scenes"
        out[spec] = {
            "A": {"simulation": two_worlds.simulation_gap(a / "labels-final-heldout.parquet", a / "activations.h5",
                                                          a / "images.h5", a / "text-mixed.h5", a / "annotations.csv",
                                                          demo_specs().final_layer, "cpu", cal),
                  "explain": two_worlds.explain_planted(a / "planted.h5", a / "images.h5", a / "text-mixed.h5",
                                                        a / "annotations.csv", planted.PLANTED, "cpu", scratch, cal)},
            "B": {"simulation": two_worlds.simulation_gap(b / "labels.parquet", b / "activations.h5", b / "images.h5",
                                                          b / "text.h5", b / "probe" / "annotations.csv",
                                                          scenes_specs().final_layer, "cpu", cal),
                  "explain": two_worlds.explain_planted(b / "planted.h5", b / "images.h5", b / "text.h5",
                                                        b / "probe" / "annotations.csv", planted.SCENES_PLANTED, "cpu",
                                                        scratch, cal)},
        }
        for name, d in out[spec].items():
            s, e = d["simulation"], d["explain"]
            print(f"  {spec:8s} {name}: simulation clip {s['clip']:.3f} vs annotations {s['annotations']:.3f} "
                  f"(gap {s['gap']:.3f}); explain recovered clip {e['clip']['recovered']}/{e['clip']['units']}, "
                  f"label {e['label']['recovered']}/{e['label']['units']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished `dissect demo -o RUN` folder (both worlds)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--skip-downstream", action="store_true", help="presence only (no simulate / explain)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    worlds = {name: load_world(name, args.run) for name in ("A", "B", "C", "D")}
    for name, w in worlds.items():
        print(f"world {name}: {w['cos'].shape[0]} images, {w['cos'].shape[1]} concepts, {int((~w['absent']).sum())} "
              f"present, {int(w['separated'].sum())} separated ({int((w['separated'] & (w['prev'] < 0.03)).sum())} rare)")
    print("1. candidates")
    results = {"candidates": candidates(worlds)}
    print("2. the mixture's rule, one constant at a time")
    results["sweep"] = sweep(worlds)
    if not args.skip_downstream:
        print("3. downstream")
        with tempfile.TemporaryDirectory() as scratch:
            results["downstream"] = downstream(args.run, Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
