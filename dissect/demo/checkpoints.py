"""Two checkpoints of the demo classifier, compared: the shipped one and one retrained without circles.

``assets/classifier-without-circle`` was trained as the shipped classifier (same config, seeds and
pool) on the pool without its circle images (``scripts/train_demo.py --without circle``): nothing asked
its layers to detect circles. The demo records it on the same probe, labels it with the same concept
set, and runs ``dissect compare``: per shape, how many units of the final layers' feeding layer carry
it (by label, and by the world's ground truth: units that clearly prefer the shape's images).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .world import ATTRIBUTES
from .specs import DemoSpecs, assets_dir

#: The shape the second checkpoint never saw.
WITHOUT = "circle"


def without_specs(specs: DemoSpecs) -> DemoSpecs:
    """The demo specs with the weights of the classifier retrained without ``WITHOUT``."""
    return replace(specs, weights=str(assets_dir() / f"classifier-without-{WITHOUT}" / "model.safetensors"))


def compare_checkpoints(out: Path, probe: Path, specs: DemoSpecs, device: str, batch_size: int,
                        workers: int | None = 0) -> dict[str, Any]:
    """Record, label (the mixed set) and compare the retrained classifier with the shipped one (``out`` holds the
    shipped one's activations.h5 and labels-mixed-softwpmi.parquet); per shape of the layer feeding the final
    one, its units by label and by ground truth in both, and each layer pair's CKA and matched share."""
    from .. import artifacts as A
    from ..compare import CompareSettings, compare, open_side, write_comparison
    from ..label import label
    from ..models import PreprocessOverrides
    from ..record import record
    from .world import SELECTIVE_EFFECT, read_attributes, unit_truth

    other = without_specs(specs)
    acts_b = out / f"activations-without-{WITHOUT}.h5"
    acts_b.unlink(missing_ok=True)
    layers = specs.hidden_layers + [specs.final_layer]
    record([str(probe)], other.model, layers, acts_b, weights=other.weights, model_args=other.model_args,
           overrides=PreprocessOverrides(other.input_size, other.crop_pct, other.mean, other.std, other.interpolation),
           device=device, batch_size=batch_size, workers=workers)
    labels_b = out / f"labels-without-{WITHOUT}.parquet"
    label(out / "images.h5", acts_b, labels_b, text=out / "text-mixed.h5", device=device)
    cmp = compare(open_side("A", out / "activations.h5", out / "labels-mixed-softwpmi.parquet"),
                  open_side("B", acts_b, labels_b), CompareSettings(device=device))
    write_comparison(cmp, out / f"compare-without-{WITHOUT}.parquet")
    feeding = specs.hidden_layers[-1]
    pair = next(s for s in cmp.summary if s["layer_a"] == feeding)
    by_label = {c["concept"]: (c["units_a"], c["units_b"]) for c in pair["concepts"]}
    attr_ids, attrs = read_attributes(probe)
    truth = {}
    for side, path in (("a", out / "activations.h5"), ("b", acts_b)):
        acts = A.read_activations(path, [feeding])
        best = unit_truth(acts.layers[feeding], acts.ids, attr_ids, attrs)
        truth[side] = [w for w, e in best if e >= SELECTIVE_EFFECT]
    shapes = [{"shape": s, "labels_a": by_label.get(s, (0, 0))[0], "labels_b": by_label.get(s, (0, 0))[1],
               "truth_a": truth["a"].count(s), "truth_b": truth["b"].count(s)} for s in ATTRIBUTES["shape"]]
    final = {c["concept"]: (c["units_a"], c["units_b"])
             for c in next(s for s in cmp.summary if s["layer_a"] == specs.final_layer)["concepts"]}
    return {"without": WITHOUT, "layer": feeding, "shapes": shapes, "final": {WITHOUT: final.get(WITHOUT, (0, 0))},
            "pairs": [{k: s[k] for k in ("layer_a", "layer_b", "cka", "matched", "matched_share", "mean_r",
                                         "labels_agree")} for s in cmp.summary],
            "others_kept": sum(not (r["truth_a"] > 0 and r["truth_b"] == 0) for r in shapes if r["shape"] != WITHOUT)}
