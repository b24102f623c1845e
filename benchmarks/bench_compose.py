"""Benchmark `compose`: a 512-neuron layer, K = 10 candidates (45 unordered pairs per neuron), on the CPU.

Inputs: the demo's tiny CLIP (shipped), the shipped 3k concept set embedded with it,
random probe-image embeddings and activations with each neuron planted on a random
concept (so candidate sets overlap the way real layers' do only by chance: the worst
case for deduplication). Prints the number of unique composed texts, the time to
embed them, the time to score them (every neuron against every composed text, as
the λ term needs), and the process's peak memory. Nothing is compared against a
baseline: the paper gives no implementation of App. A.4 to compare with.

    python benchmarks/bench_compose.py                 # C=512, K=10, N=10,000
    python benchmarks/bench_compose.py --smoke         # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_label import peak_rss_mb  # beside this script: how every benchmark reads its peak memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--concepts", default="3k")
    ap.add_argument("--sim", default="softwpmi")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.neurons, args.top_k, args.images = 24, 4, 300

    import torch

    from dissect import artifacts as A
    from dissect.clip import encode_texts, load_clip
    from dissect.compose import _render, _score_owned, embed_composed
    from dissect.settings import Compute
    from dissect.concepts import load_concepts
    from dissect.demo import demo_specs
    from dissect.runtime import set_quiet
    from dissect.similarity import resolve_params
    from dissect.scoring import score_layer

    set_quiet(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clip = load_clip(demo_specs().clip, torch.device("cpu"))
    concepts = load_concepts(args.concepts).concepts
    if args.smoke:
        concepts = concepts[:200]
    T = torch.cat([encode_texts(clip, concepts[s : s + 512]) for s in range(0, len(concepts), 512)])
    d = T.shape[1]
    planted = rng.choice(len(concepts), args.neurons, replace=False)
    base = torch.nn.functional.normalize(torch.randn(args.images, d), dim=1)
    mix = T[rng.integers(0, len(concepts), args.images)]
    I = torch.nn.functional.normalize(base + 2 * mix, dim=1)
    q = (I @ T[planted].T) * 10 + 0.5 * torch.randn(args.images, args.neurons)
    params = resolve_params(args.sim, {"top_k": min(100, args.images // 4)} if args.sim in ("softwpmi", "wpmi") else {})

    with tempfile.TemporaryDirectory() as tmp:
        img_path = Path(tmp) / "images.h5"
        attrs = clip.attrs()
        attrs["fingerprint"] = "bench"
        A.write_embeddings(img_path, A.IMAGE_FORMAT, I.numpy(), [f"{i}" for i in range(args.images)], clip.name,
                           clip.pretrained, attrs)
        img = A.read_image_embeddings(img_path)

        t0 = time.perf_counter()
        single = score_layer(args.sim, q, I, T, params, top=args.top_k)
        t_single = time.perf_counter() - t0
        cand = single.indices.numpy()
        options = [list(itertools.combinations(row.tolist(), 2)) for row in cand]
        texts_of = [[_render([concepts[i] for i in p], "{a} {b}") for p in opts] for opts in options]
        unique = list(dict.fromkeys(t for ts in texts_of for t in ts))

        t0 = time.perf_counter()
        E, embedded = embed_composed(unique, img, Compute(device="cpu", cache=Path(tmp) / "cache"))
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, again = embed_composed(unique, img, Compute(device="cpu", cache=Path(tmp) / "cache"))
        t_cached = time.perf_counter() - t0

        pos = {t: i for i, t in enumerate(unique)}
        owned = np.array([[pos[t] for t in ts] for ts in texts_of])
        t0 = time.perf_counter()
        extended = torch.cat([T, torch.from_numpy(E)])
        sims, _ = _score_owned(args.sim, q, I, extended, torch.from_numpy(E), owned, params, 256 << 20)
        t_score = time.perf_counter() - t0

    pairs = sum(len(o) for o in options)
    print(f"C={args.neurons} neurons, K={args.top_k} ({pairs // args.neurons} pairs each, {pairs} in all), "
          f"N={args.images} images, M={len(concepts)} concepts, sim={args.sim}, {torch.get_num_threads()} threads")
    print(f"single-concept candidates: {t_single:7.2f} s")
    print(f"unique composed texts:     {len(unique)} ({pairs / len(unique):.2f} pairs per text)")
    print(f"embed them:                {t_embed:7.2f} s ({embedded} embedded; a rerun: {t_cached:.2f} s, {again} embedded)")
    print(f"score them (all neurons):  {t_score:7.2f} s ({args.neurons} x {len(unique)} similarities)")
    print(f"peak memory:               {peak_rss_mb() / 1024:7.2f} GB")
    print(f"finite: {bool(np.isfinite(sims).all())}; ratio of embed time to scoring {t_embed / max(t_score, 1e-9):.2f}")


if __name__ == "__main__":
    main()
