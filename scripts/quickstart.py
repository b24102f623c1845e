"""Run the whole dissect pipeline offline on a tiny RANDOM-WEIGHT model and generated images.

This only shows the commands and artifacts working end to end: with random weights
the labels mean nothing. `dissect demo` (trained tiny models) shows the method
being right; the README shows real models.

    python scripts/quickstart.py [--out runs/quickstart]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    probe = out / "probe"
    rng = np.random.default_rng(0)
    for i in range(150):
        (probe / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        arr = (rng.random((48, 48, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(probe / f"c{i % 3}" / f"{i:04d}.png")
    cfg = out / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    open_clip.add_model_config(cfg)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), out / "tiny-clip.pt")

    print("quickstart: tiny random-weight CLIP and timm:test_resnet on 150 generated images; labels are meaningless", file=sys.stderr)
    # This interpreter's dissect, whether or not its venv is on PATH (`.venv/bin/python scripts/quickstart.py`).
    cmd = [
        sys.executable, "-m", "dissect.cli.main", "run", str(probe),
        "--clip", f"{cfg}:{out / 'tiny-clip.pt'}",
        "--model", "timm:test_resnet", "--weights", "none",
        "--layers", "layer1,layer4,fc",
        "--concepts", "3k",
        "-o", str(out / "run"),
    ]
    print("$ dissect " + " ".join(cmd[3:]), file=sys.stderr)
    done = subprocess.run(cmd)
    if done.returncode:
        sys.exit(done.returncode)  # dissect printed its one-line error
    import pyarrow.parquet as pq

    df = pq.read_table(out / "run" / "labels.parquet").to_pandas()
    print(df.groupby("layer").head(3)[["layer", "unit", "label", "similarity"]].to_string(index=False))


if __name__ == "__main__":
    main()
