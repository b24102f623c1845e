"""What `record --maps K` costs beside `record`: wall time and peak memory, the ratio from one run.

    python benchmarks/bench_maps.py            # 1,000 images; ResNet-18 layer3+layer4 and a ViT-Tiny's last block
    python benchmarks/bench_maps.py --smoke    # seconds

Random weights (the cost does not depend on them), 112 px random images for the ResNet, 224 px for the ViT (a
14x14 patch grid, as the issue's budget assumes), K = 32. Each command runs in a child process (_timing.timed);
the two of a pair run back to back, alternating which goes first, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _timing import timed


def make_probe(folder: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:06d}.png")


CASES = {
    "resnet18 layer3,layer4 (256x7x7, 512x4x4)": (["--model", "timm:resnet18", "--weights", "none", "--input-size",
                                                   "112", "--layers", "layer3,layer4"], 112),
    "vit_tiny blocks.11 (192 channels, 14x14 tokens)": (["--model", "timm:vit_tiny_patch16_224", "--weights", "none",
                                                          "--layers", "blocks.11"], 224),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--maps", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n, repeat = (12, 1) if args.smoke else (args.images, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, (flags, size) in CASES.items():
            probe = d / f"probe{size}"
            if not probe.exists():
                make_probe(probe, n, size)
            base = ["record", str(probe), *flags, "--device", "cpu", "--workers", "0", "--checkpoint-every", "0"]
            best: dict[str, tuple[float, float]] = {}
            for r in range(repeat):
                order = ("plain", "maps") if r % 2 == 0 else ("maps", "plain")
                for which in order:
                    out = d / f"{which}.h5"
                    out.unlink(missing_ok=True)
                    extra = ["--maps", str(args.maps)] if which == "maps" else []
                    t, gb = timed([*base, *extra, "-o", str(out)])
                    if which not in best or t < best[which][0]:
                        best[which] = (t, gb)
            (tp, mp), (tm, mm) = best["plain"], best["maps"]
            print(f"{name}, {n} images, K={args.maps}: record {tp:.1f} s {mp:.2f} GB; --maps {tm:.1f} s {mm:.2f} GB; "
                  f"ratio to record: time x{tm / tp:.2f}, peak x{mm / mp:.2f}")


if __name__ == "__main__":
    main()
