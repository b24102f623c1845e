"""Does the demo classifier use what its labels say? ``evaluate ablate`` on its layer4 units.

Single labels (SoftWPMI, labelled on 75% of the probe), compositions of them and linear explanations,
each against the same labels shuffled across the units: a label that says what the network uses
its unit for undoes more of the unit's mean-ablation damage than another unit's label does. On the
layer's neurons, and on the planted units made directions of the layer (their meaning is known).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The layer, and the share of the probe held out from labelling (what ablate scores on).
LAYER, HOLDOUT = "layer4", 0.25


def shuffled(path: Path, out: Path, seed: int = 0) -> Path:
    """``path`` (a labels, composed or explanations table) with its label columns moved to other units of the same
    layer (a random derangement; units and everything else kept, its split too)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    n = table.num_rows
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    while n > 1 and (perm == np.arange(n)).any():
        perm = rng.permutation(n)
    keep = {"layer", "unit"}
    cols = {name: (table.column(name) if name in keep else table.column(name).take(pa.array(perm)))
            for name in table.column_names}
    pq.write_table(pa.table(cols, schema=table.schema), out)
    return out


def planted_directions(out: Path, probe: Path, specs, device: str, batch_size: int) -> tuple[Path, str]:
    """The planted units made network units: for each, the direction of layer4 whose activation (layer4's summary ·
    direction) best fits it in least squares over the probe, recorded as the entry ``layer4@planted`` (its own
    activations file). Returns (the file, the entry)."""
    import numpy as np
    from safetensors.numpy import save_file

    from .. import artifacts as A
    from ..models import PreprocessOverrides
    from ..record import record
    from .planted import activations as planted_activations

    acts = A.read_activations(out / "activations.h5", [LAYER])
    x = acts.layers[LAYER].astype(np.float64)
    y = planted_activations(list(acts.ids), probe).astype(np.float64)
    w, *_ = np.linalg.lstsq(x - x.mean(0), y - y.mean(0), rcond=None)           # [C, units]
    directions = out / "planted-directions.safetensors"
    save_file({"directions": np.ascontiguousarray(w.T, dtype=np.float32)}, str(directions))
    path = out / "activations-planted-directions.h5"
    path.unlink(missing_ok=True)
    record([str(probe)], specs.model, [LAYER], path, weights=specs.weights, model_args=specs.model_args,
           overrides=PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation),
           device=device, batch_size=batch_size, workers=0, directions=[f"{LAYER}@planted={directions}"])
    return path, f"{LAYER}@planted"


def ablation_scores(out: Path, probe: Path, specs, device: str, batch_size: int) -> list[dict[str, Any]]:
    """Per method (label, composition, linear explanation), on layer4's units and on the planted units made
    directions of layer4 (:func:`planted_directions`): the mean ablation score of its labels and of the same labels
    shuffled across the units, and the share of units whose own label scores higher."""
    rows = _scores(out, probe, specs, device, batch_size, out / "activations.h5", LAYER, "layer4 neurons")
    path, entry = planted_directions(out, probe, specs, device, batch_size)
    return rows + _scores(out, probe, specs, device, batch_size, path, entry, "planted directions")


def _scores(out: Path, probe: Path, specs, device: str, batch_size: int, acts: Path, layer: str,
            units: str) -> list[dict[str, Any]]:
    import numpy as np

    from ..compose import compose
    from ..evaluate.ablate import ablate, write_ablation
    from ..explain import explain
    from ..label import label
    from ..models import PreprocessOverrides, TargetSpec

    images, text = out / "images.h5", out / "text-mixed.h5"
    stem = layer.replace("@", "-")
    labels = out / f"labels-{stem}-heldout.parquet"
    label(images, acts, labels, text=text, layers=[layer], holdout=HOLDOUT, holdout_seed=0, device=device)
    composed = out / f"composed-{stem}.parquet"
    compose(images, acts, composed, text=text, labels=labels, layers=[layer], device=device)
    explained = out / f"explanations-{stem}.parquet"
    explain(acts, explained, images=images, text=text, layers=[layer], holdout=HOLDOUT, device=device)
    files = {"single label": labels, "composition": composed, "linear explanation": explained}
    mixed = {k: shuffled(p, p.with_name(p.stem + "-shuffled.parquet")) for k, p in files.items()}
    target = TargetSpec(specs.model, specs.weights, specs.model_args,
                        PreprocessOverrides(specs.input_size, specs.crop_pct, specs.mean, specs.std, specs.interpolation))
    paths = [str(p) for p in files.values()] + [str(p) for p in mixed.values()]
    abl = ablate(paths, acts, [str(probe)], target, images=images, text=text, layer=layer, device=device,
                 batch_size=batch_size, workers=0)
    write_ablation(abl, out / f"ablate-{stem}.parquet")
    r = abl.rows
    rows = []
    for method, path in files.items():
        own = {u: s for f, u, s in zip(r["labels"], r["unit"], r["ablation"]) if f == str(path)}
        other = {u: s for f, u, s in zip(r["labels"], r["unit"], r["ablation"]) if f == str(mixed[method])}
        both = [u for u in own if np.isfinite(own[u]) and np.isfinite(other.get(u, np.nan))]
        rows.append({"units": units, "method": method, "n_units": len(both),
                     "mean": float(np.mean([own[u] for u in both])) if both else None,
                     "mean_shuffled": float(np.mean([other[u] for u in both])) if both else None,
                     "own_higher": float(np.mean([own[u] > other[u] for u in both])) if both else None})
    return rows
