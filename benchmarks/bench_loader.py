"""Benchmark the image passes: decoding overlapped with the model, and `run`'s decode-once pass.

1. `record`'s images/s (JPEG decode + resize + crop in DataLoader workers, model
   forward with hooks) as a fraction of the model's forward-only throughput on
   tensors decoded in advance, both measured in this run on the same images.
2. (--clip) `run`'s single pass, where each image is decoded once and fed to CLIP
   and to the target with their own preprocessing, against `embed-images` then
   `record` (two passes, two decodes per image).

    python benchmarks/bench_loader.py [--images 512] [--model timm:resnet18] [--workers 2]
    python benchmarks/bench_loader.py --clip ViT-B-32 --size 500     # also decode-once vs two passes
    python benchmarks/bench_loader.py --smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=320, help="side of the generated JPEGs")
    ap.add_argument("--model", default="timm:resnet18")
    ap.add_argument("--layers", default="layer4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clip", default=None, help="also time run's decode-once pass with this CLIP (random weights: ViT-B-32)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.size, args.model, args.layers, args.batch_size, args.workers = 32, 64, "timm:test_resnet", "layer2", 16, 0
        from dissect.demo import demo_specs

        args.clip = demo_specs().clip

    import numpy as np
    import torch
    from PIL import Image

    from dissect.hooks import Recorder
    from dissect.models import load_target
    from dissect.passes import decoded_batches
    from dissect.probe import open_probe
    from dissect.record import record
    from dissect.runtime import set_quiet

    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "probe"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            arr = (rng.random((args.size, args.size, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)
        probe = open_probe([str(folder)])
        target = load_target(args.model, "none")
        layers = args.layers.split(",")

        # Forward only: every batch decoded and preprocessed before the clock starts.
        batches = [b[0] for _, b in decoded_batches(probe, [target.transform], args.batch_size, 0)]
        with Recorder(target.module, layers) as rec:
            rec.run(batches[0])  # warm-up
            t0 = time.perf_counter()
            for b in batches:
                rec.run(b)
            t_forward = time.perf_counter() - t0

        t0 = time.perf_counter()
        record(probe, target, layers, Path(tmp) / "a.h5", device="cpu", batch_size=args.batch_size, workers=args.workers)
        t_record = time.perf_counter() - t0

        if args.clip:
            from dissect.clip import load_clip
            from dissect.embed import ImageEmbedder, embed_images
            from dissect.passes import image_pass
            from dissect.record import ActivationRecorder

            clip = load_clip(args.clip, torch.device("cpu"))
            t0 = time.perf_counter()
            embed_images(probe, clip, Path(tmp) / "i2.h5", device="cpu", batch_size=args.batch_size, workers=args.workers)
            record(probe, target, layers, Path(tmp) / "a2.h5", device="cpu", batch_size=args.batch_size, workers=args.workers)
            t_two = time.perf_counter() - t0
            t0 = time.perf_counter()
            emb = ImageEmbedder(clip, len(probe))
            with ActivationRecorder(target, layers, len(probe), device=torch.device("cpu")) as rec:
                image_pass(probe, [emb, rec], args.batch_size, args.workers, "run", torch.device("cpu"))
            t_one = time.perf_counter() - t0

    fwd, rec_ips = args.images / t_forward, args.images / t_record
    print(f"{args.model} {layers} on {args.images} JPEGs {args.size}px, batch {args.batch_size}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads")
    print(f"forward only (pre-decoded): {fwd:8.1f} images/s")
    print(f"dissect record (end to end): {rec_ips:8.1f} images/s")
    print(f"ratio {rec_ips / fwd:.2f} of forward-only throughput (target with enough workers: >= 0.85)")
    if args.clip:
        print(f"embed-images + record (two passes): {t_two:7.2f} s   {args.images / t_two:7.1f} images/s")
        print(f"run (one pass, decoded once):       {t_one:7.2f} s   {args.images / t_one:7.1f} images/s")
        print(f"decode-once speed-up {t_two / t_one:.2f}x with {args.clip} + {args.model}")


if __name__ == "__main__":
    main()
