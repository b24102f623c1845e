"""Benchmark `label`'s similarity computation against the paper's full-matrix approach.

Each side runs in its own subprocess on the same inputs, so wall time and peak
memory (VmHWM) are measured per side in one run, and the labels are compared.

    python benchmarks/bench_label.py                      # N=50,000 M=20,000 C=512, both sides
    python benchmarks/bench_label.py --neurons 2048 --sides ours
    python benchmarks/bench_label.py --images 200000 --neurons 2048 --sides ours
    python benchmarks/bench_label.py --smoke              # seconds; what CI runs

The baseline is written here the way the reference code works: P = I·Tᵀ for all
N×M pairs, softmax over the whole matrix, then per-neuron gathers of the top rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(path: Path, n: int, m: int, c: int, d: int, seed: int) -> None:
    """L2-normalised CLIP-like embeddings with planted neurons, saved as .npy files."""
    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, d), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    # Images: a shared "CLIP direction" (real cosines sit around 0.2) plus a few concepts each.
    base = rng.standard_normal(d, dtype=np.float32)
    I = 0.6 * base / np.linalg.norm(base) + rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    topics = rng.integers(0, m, size=(n, 2))
    for j in range(2):
        I += 0.5 * T[topics[:, j]]
    I /= np.linalg.norm(I, axis=1, keepdims=True)
    # Neurons: each planted on one concept (activation rises with that concept's cosine), with noise.
    planted = rng.choice(m, size=c, replace=False)
    q = np.empty((n, c), dtype=np.float32)
    for s in range(0, c, 256):
        cols = planted[s : s + 256]
        q[:, s : s + len(cols)] = I @ T[cols].T * 10 + rng.standard_normal((n, len(cols)), dtype=np.float32) * 0.5
    np.save(path / "I.npy", I.astype(np.float32))
    np.save(path / "T.npy", T)
    np.save(path / "q.npy", q)
    np.save(path / "planted.npy", planted)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_ours(path: Path, sim: str, chunk: int, top_k: int | None, max_memory_mb: int = 256) -> dict:
    import torch

    from dissect.similarity import resolve_params
    from dissect.scoring import score_layer

    I = torch.from_numpy(np.load(path / "I.npy"))
    T = torch.from_numpy(np.load(path / "T.npy"))
    q = torch.from_numpy(np.load(path / "q.npy"))
    params = resolve_params(sim, {"top_k": top_k} if top_k else {})
    t0 = time.perf_counter()
    res = score_layer(sim, q, I, T, params, top=1, chunk=chunk or None, max_memory=max_memory_mb << 20)
    return {"labels": res.indices[:, 0].tolist(), "seconds": time.perf_counter() - t0}


def run_baseline(path: Path, sim: str, top_k: int | None) -> dict:
    """The reference code's approach: whole N×M matrix, softmax, per-neuron gathers."""
    import torch

    I = torch.from_numpy(np.load(path / "I.npy"))
    T = torch.from_numpy(np.load(path / "T.npy"))
    q = torch.from_numpy(np.load(path / "q.npy"))
    t0 = time.perf_counter()
    with torch.no_grad():
        clip_feats = I @ T.T
        if sim == "softwpmi":
            k, a, lam, p_start, p_end = top_k or 100, 10, 1, 0.998, 0.97
        else:
            k, a, lam = top_k or 28, 2, 0.6
        clip_feats = torch.nn.functional.softmax(a * clip_feats, dim=1)
        inds = torch.topk(q, dim=0, k=k)[1]
        w = (p_start - torch.arange(k) / k * (p_start - p_end)).unsqueeze(1) if sim == "softwpmi" else None
        rows = []
        for j in range(q.shape[1]):
            cur = clip_feats.gather(0, inds[:, j : j + 1].expand(-1, clip_feats.shape[1]))
            if w is not None:
                cur = 1 + w * (cur - 1)
            rows.append(torch.sum(torch.log(cur + 1e-7), dim=0, keepdim=True))
        scores = torch.cat(rows, dim=0)
        log_pt = torch.logsumexp(scores, dim=0, keepdim=True) - torch.log(torch.tensor(float(scores.shape[0])))
        sims = scores - lam * log_pt
        labels = sims.argmax(dim=1)
    return {"labels": labels.tolist(), "seconds": time.perf_counter() - t0}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    path = Path(args.data)
    out = (run_ours(path, args.sim, args.chunk, args.top_k, args.max_memory) if args.side == "ours"
           else run_baseline(path, args.sim, args.top_k))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--concepts", type=int, default=20_000)
    ap.add_argument("--neurons", type=int, default=512)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--sim", default="softwpmi", choices=["softwpmi", "wpmi"])
    ap.add_argument("--sides", default="ours,baseline")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk", type=int, default=0, help="concepts per block (0: planned from --max-memory)")
    ap.add_argument("--max-memory", type=int, default=256, help="working-set budget in MiB")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)
    if args.smoke:
        args.images, args.concepts, args.neurons, args.dim, args.top_k = 600, 300, 24, 32, 20

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        t0 = time.perf_counter()
        make_inputs(path, args.images, args.concepts, args.neurons, args.dim, args.seed)
        planted = np.load(path / "planted.npy")
        print(f"inputs: N={args.images} M={args.concepts} C={args.neurons} d={args.dim} sim={args.sim} "
              f"threads={args.threads} ({time.perf_counter() - t0:.1f}s to generate)", flush=True)
        results = {}
        for side in args.sides.split(","):
            cmd = [sys.executable, __file__, "--side", side, "--data", tmp, "--sim", args.sim, "--threads", str(args.threads),
                   "--chunk", str(args.chunk), "--max-memory", str(args.max_memory)] + (["--top-k", str(args.top_k)] if args.top_k else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{side}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results[side] = res
            hits = float(np.mean(np.array(res["labels"]) == planted))
            print(f"{side:9s} {res['seconds']:8.2f} s   peak {res['peak_rss_mb'] / 1024:6.2f} GB   planted concept recovered {hits:.1%}", flush=True)
        flops = 2 * args.images * args.concepts * args.dim
        k = args.top_k or (100 if args.sim == "softwpmi" else 28)
        print(f"arithmetic floor: P = {flops:.2e} FLOP, {args.neurons * k * args.concepts:.2e} logarithms")
        if "ours" in results and "baseline" in results:
            same = results["ours"]["labels"] == results["baseline"]["labels"]
            print(f"speed-up {results['baseline']['seconds'] / results['ours']['seconds']:.2f}x, "
                  f"memory ratio {results['ours']['peak_rss_mb'] / results['baseline']['peak_rss_mb']:.3f}, "
                  f"labels identical: {same}")
            if not same:
                diff = sum(a != b for a, b in zip(results["ours"]["labels"], results["baseline"]["labels"]))
                print(f"  {diff} of {args.neurons} labels differ")


if __name__ == "__main__":
    main()
