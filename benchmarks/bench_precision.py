"""How often each --precision mode changes a label against fp32, and what it costs, on the demo world.

The demo world's probe (2,000 generated images), its tiny CLIP and its classifier: CLIP
embeddings are made once per CLIP precision, activations once per target precision, and
every (CLIP, target) pair is labelled with SoftWPMI against the mixed concept set (the
classes, the world's attribute words and 600 common words) for layer3, layer4 and fc
(298 units). Each mode's labels are compared with the fp32/fp32 labels of the same run.

    python benchmarks/bench_precision.py                 # CPU or GPU (--device cuda), 2,000 images
    python benchmarks/bench_precision.py --images 500
    python benchmarks/bench_precision.py --smoke         # seconds; what CI runs

The --precision modes map to these pairs: fp32 = fp32/fp32, paper = fp16/fp32 on CUDA
(fp32/fp32 on CPU), bf16 = bf16/bf16, fp16 = fp16/fp16, auto = bf16/bf16 on CUDA, and on
CUDA tf32 = tf32/tf32 (TensorFloat-32 matmuls and convolutions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (CLIP precision, target precision): the modes of --precision and the two halves of each.
PAIRS = [("fp32", "fp32"), ("fp16", "fp32"), ("bf16", "fp32"), ("fp32", "fp16"), ("fp32", "bf16"),
         ("fp16", "fp16"), ("bf16", "bf16")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.images = 120

    import pyarrow.parquet as pq
    import torch

    from dissect.demo import world
    from dissect.concepts import ConceptSet
    from dissect.demo import concept_sets, demo_specs
    from dissect.embed import embed_images, embed_text
    from dissect.label import label
    from dissect.models import PreprocessOverrides
    from dissect.record import record
    from dissect.runtime import resolve_device, set_quiet

    set_quiet(True)
    dev = resolve_device(args.device)
    specs = demo_specs()
    layers = specs.hidden_layers + [specs.final_layer]
    words = concept_sets(specs.class_names)["mixed"]
    over = PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    result: dict = {"device": card, "torch": torch.__version__, "images": args.images, "concepts": len(words),
                    "layers": layers, "modes": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world.write_probe(tmp / "probe", args.images, 1234)
        probe = [str(tmp / "probe")]
        clip_s, target_s = {}, {}
        pairs = PAIRS + ([("tf32", "tf32")] if dev.type == "cuda" else [])
        for prec in sorted({c for c, _ in pairs}):
            t = time.perf_counter()
            embed_images(probe, specs.clip, tmp / f"images-{prec}.h5", device=str(dev), batch_size=args.batch_size,
                         workers=0, precision=prec)
            embed_text(ConceptSet("demo:mixed", words, "demo:mixed"), specs.clip, tmp / f"text-{prec}.h5",
                       device=str(dev), precision=prec)
            clip_s[prec] = time.perf_counter() - t
        for prec in sorted({t for _, t in pairs}):
            t = time.perf_counter()
            record(probe, specs.model, layers, tmp / f"acts-{prec}.h5", weights=specs.weights,
                   model_args=specs.model_args, overrides=over, device=str(dev), batch_size=args.batch_size,
                   workers=0, precision=prec)
            target_s[prec] = time.perf_counter() - t

        def labels_of(cp: str, tp: str):
            out = tmp / f"labels-{cp}-{tp}.parquet"
            label(tmp / f"images-{cp}.h5", tmp / f"acts-{tp}.h5", out, text=tmp / f"text-{cp}.h5", sim="softwpmi",
                  layers=layers, device=str(dev))
            t = pq.read_table(out, columns=["layer", "unit", "label"]).to_pylist()
            return {(r["layer"], r["unit"]): r["label"] for r in t}

        base = labels_of("fp32", "fp32")
        units = len(base)
        print(f"{card}, {args.images} images, {len(words)} concepts, {units} units ({', '.join(layers)}); "
              f"labels changed against fp32/fp32")
        print(f"{'CLIP':>5} {'target':>6}  changed  ratio   " + "  ".join(f"{n:>7}" for n in layers))
        for cp, tp in pairs:
            lab = base if (cp, tp) == ("fp32", "fp32") else labels_of(cp, tp)
            diff = [k for k in base if lab[k] != base[k]]
            per = {n: sum(1 for k in diff if k[0] == n) for n in layers}
            ratio = (units - len(diff)) / units
            row = {"clip": cp, "target": tp, "changed": len(diff), "units": units, "agreement": ratio,
                   "per_layer": per, "examples": [f"{k[0]}:{k[1]} {base[k]} -> {lab[k]}" for k in diff[:5]]}
            result["modes"].append(row)
            print(f"{cp:>5} {tp:>6}  {len(diff):>7}  {ratio:.3f}   " + "  ".join(f"{per[n]:>7}" for n in layers))
        result["clip_seconds"], result["target_seconds"] = clip_s, target_s
        speed = {p: clip_s["fp32"] / clip_s[p] for p in clip_s}
        print("CLIP pass speed-up against fp32: " + ", ".join(f"{p} {v:.2f}x" for p, v in speed.items()))
        print("target pass speed-up against fp32: " + ", ".join(f"{p} {target_s['fp32'] / v:.2f}x"
                                                               for p, v in target_s.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
