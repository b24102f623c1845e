"""End-to-end GPU benchmark: ResNet-50 five layers + ViT-B-16 CLIP, 10,000 JPEGs at 224 px, 20k concepts.

The prepared script for a GPU machine (issue 4). Weights are random (no download
needed; speed does not depend on them): torchvision:resnet50 --weights none and
open_clip ViT-B-16 without a pretrained tag. Prints each stage's time and
images/s, the card's name, and writes the same as JSON (to $OUT/bench_gpu.json
when $OUT is set).

    python benchmarks/bench_gpu.py                       # the full run (GPU)
    python benchmarks/bench_gpu.py --images 2000         # shorter
    python benchmarks/bench_gpu.py --smoke               # tiny models on CPU, what CI runs

Stages, as `dissect run` does them:
  embed-text      the 20k concept set through the text tower (length-bucketed prefixes)
  image pass      each image decoded once, fed to CLIP and to ResNet-50 (5 layers hooked)
  label           SoftWPMI for the five layers, on the GPU
and, for the ratios, CLIP and ResNet-50 forward-only on pre-decoded tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _write_images(args) -> None:
    folder, start, stop, size = args
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(start, stop):
        # Smooth colour fields with a few shapes: JPEG sizes and decode cost like photos, not noise.
        c = rng.random((3, 3))
        img = np.stack([c[k, 0] + c[k, 1] * np.sin(6 * xx * c[k, 2] + i) * np.cos(5 * yy) for k in range(3)], -1)
        for _ in range(3):
            cx, cy, r = rng.random(3) * [size, size, size / 4]
            img[(xx * size - cx) ** 2 + (yy * size - cy) ** 2 < r * r] = rng.random(3)
        arr = (np.clip(img, 0, 1) * 255).astype("uint8")
        Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=90)


def make_probe(folder: Path, n: int, size: int, jobs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, n // max(1, jobs * 4))
    parts = [(folder, s, min(n, s + step), size) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        list(ex.map(_write_images, parts))


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--layers", default="conv1,layer1,layer2,layer3,layer4")
    ap.add_argument("--concepts", default="20k")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--precision", default="fp32", help="fp32 (dissect's default), tf32, paper, auto, bf16 or fp16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-memory", type=int, default=2048, help="label's working-set budget in MiB (one product pass per layer)")
    ap.add_argument("--forward-images", type=int, default=1024, help="images for the forward-only baselines")
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes on CPU, for CI")
    args = ap.parse_args()
    if args.smoke:
        from dissect.demo import demo_specs

        args.images, args.size, args.clip, args.model = 48, 64, demo_specs().clip, "timm:test_resnet"
        args.layers, args.batch_size, args.workers, args.device, args.forward_images = "layer1,layer2", 16, 0, "cpu", 32
        concepts_tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        concepts_tmp.write("\n".join(["red", "green", "blue", "circle", "square", "dog", "tree", "car"] * 1) + "\n")
        concepts_tmp.close()
        args.concepts = concepts_tmp.name

    import torch

    from dissect.clip import encode_images, load_clip
    from dissect.concepts import load_concepts
    from dissect.embed import ImageEmbedder, embed_text
    from dissect.label import label
    from dissect.models import load_target
    from dissect.passes import decoded_batches, default_workers, image_pass
    from dissect.probe import open_probe
    from dissect.record import ActivationRecorder
    from dissect.runtime import resolve_device, resolve_precision, set_quiet

    set_quiet(True)
    dev = resolve_device(args.device)
    precision = resolve_precision(args.precision, dev, "clip")
    target_precision = resolve_precision(args.precision, dev, "target")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    layers = args.layers.split(",")
    result: dict = {"device": card, "torch": torch.__version__,
                    "precision": {"mode": args.precision, "clip": precision, "target": target_precision},
                    "images": args.images,
                    "image_size": args.size, "clip": args.clip, "model": args.model, "layers": layers,
                    "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = max(1, (os.cpu_count() or 2))
        t, _ = timed(lambda: make_probe(tmp / "probe", args.images, args.size, jobs), sync)
        print(f"generated {args.images} JPEGs at {args.size}px in {t:.1f}s", flush=True)
        probe = open_probe([str(tmp / "probe")])
        workers = default_workers(len(probe)) if args.workers is None else args.workers
        result["workers"] = workers

        t, clip = timed(lambda: load_clip(args.clip, dev), sync)
        target = load_target(args.model, "none", device=dev)
        concepts = load_concepts(args.concepts)
        result["concepts"] = len(concepts.concepts)

        t, _ = timed(lambda: embed_text(concepts, clip, tmp / "text.h5", precision=precision), sync)
        result["embed_text_s"] = t
        print(f"embed-text: {len(concepts.concepts)} concepts in {t:.2f}s ({len(concepts.concepts) / t:.0f}/s)", flush=True)

        # Forward-only baselines on pre-decoded tensors (pinned, like the real pass).
        sub = open_probe([str(tmp / "probe")])
        n_fwd = min(args.forward_images, len(sub))
        sub.ids, sub.loaders, sub.locations = sub.ids[:n_fwd], sub.loaders[:n_fwd], sub.locations[:n_fwd]
        pairs = [b for _, b in decoded_batches(sub, [clip.preprocess, target.transform], args.batch_size, workers)]
        if dev.type == "cuda":
            pairs = [[x.pin_memory() for x in b] for b in pairs]
        encode_images(clip, pairs[0][0], precision)  # warm-up
        t_clip, _ = timed(lambda: [encode_images(clip, b[0], precision) for b in pairs], sync)
        rec_fwd = ActivationRecorder(target, layers, n_fwd, device=dev, precision=target_precision)
        with rec_fwd:
            import torch as _t

            idx0 = _t.arange(pairs[0][1].shape[0])
            rec_fwd(idx0, pairs[0][1])  # warm-up (cudnn autotuning)
            t_target, _ = timed(lambda: [rec_fwd(_t.arange(b[1].shape[0]), b[1]) for b in pairs], sync)
        result["clip_forward_only_ips"] = n_fwd / t_clip
        result["target_forward_only_ips"] = n_fwd / t_target
        both = 1 / (1 / result["clip_forward_only_ips"] + 1 / result["target_forward_only_ips"])
        result["both_forward_only_ips"] = both
        print(f"forward only: CLIP {n_fwd / t_clip:.0f} images/s, target {n_fwd / t_target:.0f} images/s, "
              f"both {both:.0f} images/s", flush=True)

        # run's image pass: decode once, CLIP + target.
        def one_pass():
            emb = ImageEmbedder(clip, len(probe), precision, batch_size=args.batch_size)
            with ActivationRecorder(target, layers, len(probe), device=dev, precision=target_precision,
                                    batch_size=args.batch_size) as rec:
                skipped = image_pass(probe, [emb, rec], args.batch_size, workers, "pass", dev)
                emb.write(tmp / "images.h5", probe, skipped)
                rec.write(tmp / "acts.h5", probe, skipped)

        t, _ = timed(one_pass, sync)
        result["image_pass_s"] = t
        result["image_pass_ips"] = args.images / t
        result["image_pass_fraction_of_forward_only"] = (args.images / t) / both
        print(f"image pass (decode once, CLIP + {len(layers)} layers): {t:.2f}s, {args.images / t:.0f} images/s, "
              f"ratio {(args.images / t) / both:.2f} of forward-only", flush=True)

        t, _ = timed(lambda: label(tmp / "images.h5", tmp / "acts.h5", tmp / "labels.parquet", text=tmp / "text.h5",
                                   sim="softwpmi", params={"top_k": min(100, args.images)}, device=str(dev),
                                   max_memory=args.max_memory << 20), sync)
        result["label_s"] = t
        print(f"label softwpmi, {len(layers)} layers x {len(concepts.concepts)} concepts: {t:.2f}s", flush=True)
        result["end_to_end_s"] = result["embed_text_s"] + result["image_pass_s"] + result["label_s"]
        print(f"end to end (text + image pass + label): {result['end_to_end_s']:.1f}s on {card}")
        print(f"ratio {result['image_pass_fraction_of_forward_only']:.2f} (image pass / forward-only)")

    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(json.dumps(result, indent=2))
    if args.smoke:
        os.unlink(args.concepts)


if __name__ == "__main__":
    main()
