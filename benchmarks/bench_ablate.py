"""What `evaluate ablate` costs: the network's tail run for every unit on every scoring image, against one forward
pass of the same images, the ratio from one run.

    python benchmarks/bench_ablate.py            # ResNet-50 layer4 (2,048 units), 4 images at 224 px
    python benchmarks/bench_ablate.py --smoke    # seconds

Random weights (the cost does not depend on them). Each image carries its unedited copy and, per unit, its baseline
and prediction copies (1 + 2U); ``--samples`` copies run per forward, so the prefix up to the layer runs once per
image and group of (samples - 1) / 2 units. The projection to 2,000 images is linear in the images.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from dissect.evaluate.ablate import AblateSettings, _Tail, _Unit
    from dissect.models import load_target

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="timm:resnet50")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", default="256,4097")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    model, layer, n = (("timm:test_resnet", "layer4", 2) if args.smoke else (args.model, args.layer, args.images))
    t = load_target(model, "none", None, None, "cpu", layers=[layer])
    t.module.eval()
    s = t.preprocess.input_size
    x = torch.randn(n, 3, s, s)
    with torch.inference_mode():
        width = {}
        h = t.module.get_submodule(layer).register_forward_hook(lambda m, i, o: width.update(c=o.shape[1]))
        t.module(x[:1])
        h.remove()
        start = time.perf_counter()
        t.module(x)
        forward = time.perf_counter() - start
    units = list(range(width["c"]))
    print(f"{model} {layer}: {len(units)} units, {n} images at {s} px, {torch.get_num_threads()} threads; "
          f"ratio: x one forward pass of the images")
    print(f"forward pass               {forward:8.2f} s   x1.00")
    for samples in (int(v) for v in args.samples.split(",")):
        d = torch.randn(n, len(units)).double()
        tail = _Tail(t, _Unit(layer, "nchw"), units, (d, d * 0.5), None, "kl", AblateSettings(samples=samples), "cpu")
        tail.row_of = {i: i for i in range(n)}
        start = time.perf_counter()
        tail(torch.arange(n), x)
        took = time.perf_counter() - start
        print(f"ablate, --samples {samples:<5}   {took:8.2f} s   x{took / forward:.0f}   "
              f"(2,000 images: {took / n * 2000 / 60:.0f} min)")


if __name__ == "__main__":
    main()
