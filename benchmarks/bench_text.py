"""Benchmark `embed-text`: prefix encoding by length bucket vs. open_clip's full-context encode_text.

Both sides encode the same sample of concepts in one run with the same model
(random weights are fine for timing) and the embeddings are compared.

    python benchmarks/bench_text.py                    # ViT-B-32, 1,000 of the 20k concepts
    python benchmarks/bench_text.py --sample 20000     # all of them (full context takes long on a CPU)
    python benchmarks/bench_text.py --smoke            # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--concepts", default="20k")
    ap.add_argument("--sample", type=int, default=1000, help="concepts drawn at random from the set (both sides)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from dissect.clip import load_clip
    from dissect.concepts import ConceptSet, load_concepts
    from dissect.embed import compute_text_embeddings
    from dissect.runtime import set_quiet

    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    concepts = load_concepts(args.concepts).concepts
    random.Random(0).shuffle(concepts)
    concepts = concepts[: (64 if args.smoke else args.sample)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
            path = Path(tmp) / "smoke.json"
            path.write_text(json.dumps(cfg))
            spec = str(path)
        else:
            spec = args.model  # random weights
        torch.manual_seed(0)
        clip = load_clip(spec, torch.device("cpu"))
        tokens = clip.tokenizer(concepts)
        lengths = (tokens != 0).sum(dim=1).float()
        print(f"{clip.spec}: {len(concepts)} concepts, tokens per concept mean {lengths.mean():.2f}, max {int(lengths.max())}, "
              f"context {tokens.shape[1]}, threads {torch.get_num_threads()}", flush=True)

        t0 = time.perf_counter()
        with torch.inference_mode():
            full = []
            for s in range(0, len(concepts), args.batch_size):
                full.append(torch.nn.functional.normalize(clip.model.encode_text(tokens[s : s + args.batch_size]).float(), dim=-1))
            full = torch.cat(full).numpy()
        t_full = time.perf_counter() - t0

        t0 = time.perf_counter()
        ours = compute_text_embeddings(clip, ConceptSet("bench", concepts, "bench"), batch_size=args.batch_size)
        t_ours = time.perf_counter() - t0

    diff = float(np.abs(ours - full).max())
    print(f"full context (model.encode_text): {t_full:8.2f} s   {len(concepts) / t_full:9.1f} concepts/s")
    print(f"dissect (length buckets, prefix): {t_ours:8.2f} s   {len(concepts) / t_ours:9.1f} concepts/s")
    print(f"speed-up {t_full / t_ours:.1f}x, max |difference| {diff:.2e} (target: >= 8x, <= 1e-5)")


if __name__ == "__main__":
    main()
