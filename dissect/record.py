"""Stage 2: record each neuron's summarised activation on every probe image (activations.h5)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import MismatchError, UsageError
from .fingerprint import fingerprint
from .hooks import LayerInfo, Recorder, list_modules, resolve_layers
from .models import PreprocessOverrides, Target, load_target
from .probe import Probe, iterate_batches, open_probe
from .runtime import check_batch_size, info, progress, resolve_device


def activations_inputs_fingerprint(target: Target, probe_fp: str) -> str:
    """What every layer of an activations file shares: model, weights, preprocessing, probe."""
    pre = target.preprocess.as_dict() if target.preprocess else repr(target.transform)
    return fingerprint([A.ACTIVATIONS_FORMAT, A.FORMAT_VERSION, target.fingerprint, pre, probe_fp])


def layer_fingerprint(inputs_fp: str, layer: str, summary: str, layout: str) -> str:
    return fingerprint([inputs_fp, layer, summary, layout])


def existing_layers(path: str | os.PathLike, inputs_fp: str, summary: str, layout: str) -> tuple[list[str], bool]:
    """Layers of an existing activations file that can be reused, and whether the file exists.

    Raises MismatchError when the file holds activations of other inputs.
    """
    attrs = A.peek_attrs(path, A.ACTIVATIONS_FORMAT)
    if attrs is None:
        if Path(path).exists():
            A.read_activations(path)  # raises the precise reason
        return [], False
    if attrs.get("inputs_fingerprint") != inputs_fp:
        raise MismatchError(
            f"{path} holds activations of another model, weights, preprocessing or probe ({attrs.get('model')})",
            hint="write to another -o file, or delete it to start over",
        )
    import h5py

    reusable = []
    with h5py.File(path, "r") as f:
        for name in attrs.get("_layers", []):
            la = f["layers"][name].attrs
            if la.get("summary_requested", la.get("summary")) == summary and (layout == "auto" or la.get("layout_requested", "auto") == layout):
                reusable.append(name)
            else:
                raise MismatchError(
                    f"{path} already holds layer {name} recorded with summary {la.get('summary')}",
                    hint="write other summaries to another -o file",
                )
    return reusable, True


def record(
    probe: list[str] | Probe,
    model: str | Target,
    layers: list[str],
    out: str | os.PathLike,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    summary: str = "mean",
    layout: str = "auto",
    overrides: PreprocessOverrides | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
) -> Path:
    """Record ``layers`` of the target model on every probe image into ``out``.

    Into an existing file made from the same model, preprocessing and probe, only the
    layers it lacks are recorded (one forward pass for all of them, stopped after the
    last one needed).
    """
    from .embed import default_workers

    check_batch_size(batch_size)
    out = A.check_output_path(out)
    if not isinstance(probe, Probe):
        probe = open_probe(probe)
    dev = resolve_device(device)
    target = model if isinstance(model, Target) else load_target(model, weights, model_args, overrides, dev)
    target.module.to(dev)
    layers = resolve_layers(target.module, layers, target.spec)
    inputs_fp = activations_inputs_fingerprint(target, probe.fingerprint)
    have, exists = existing_layers(out, inputs_fp, summary, layout)
    todo = [n for n in layers if n not in have]
    if not todo:
        info(f"{out} already holds {', '.join(layers)}; nothing to record")
        return Path(out)
    if have:
        info(f"{out} already holds {', '.join(have)}; recording {', '.join(todo)}")
    workers = default_workers(len(probe)) if workers is None else workers
    data: dict[str, np.ndarray] = {}
    with Recorder(target.module, todo, summary=summary, layout=layout) as rec:
        with progress(f"record {len(todo)} layer(s)", len(probe), "images") as advance:
            for idx, batch in iterate_batches(probe, target.transform, batch_size, workers):
                outputs = rec.run(batch.to(dev))
                for name, val in outputs.items():
                    if name not in data:
                        data[name] = np.zeros((len(probe), val.shape[1]), dtype=np.float32)
                    data[name][idx.numpy()] = val.float().cpu().numpy()
                advance(len(idx))
        infos: dict[str, LayerInfo] = rec.info
    data = {name: data[name] for name in todo}  # the order asked for, not execution order
    for name, arr in data.items():
        if not np.isfinite(arr).all():
            units = np.unique(np.nonzero(~np.isfinite(arr))[1])[:10].tolist()
            raise UsageError(f"layer {name} produced NaN or Inf activations (units {units})", hint="check the weights")
    layer_attrs = {
        name: {
            "summary": summary if infos[name].layout != "nc" else "identity",
            "layout": infos[name].layout,
            "layout_requested": layout,
            "raw_shape": list(infos[name].raw_shape),
            "module_type": infos[name].module_type,
            "fingerprint": layer_fingerprint(inputs_fp, name, summary, layout),
        }
        for name in data
    }
    # A file's layers all share one summary request; "identity" marks 2-D layers.
    for name in layer_attrs:
        layer_attrs[name]["summary_requested"] = summary
    attrs = target.attrs()
    attrs.update(
        inputs_fingerprint=inputs_fp,
        probe=probe.describe(),
        probe_fingerprint=probe.fingerprint,
        provenance=A.provenance(stage="record", batch_size=batch_size, device=str(dev)),
    )
    A.write_activations(out, probe.ids, data, layer_attrs, attrs, keep_from=out if exists else None)
    info(f"wrote {out}: {', '.join(f'{n} ({data[n].shape[1]} units)' for n in data)} over {len(probe)} images")
    return Path(out)


def list_layers(
    model: str,
    weights: str | None = "none",
    model_args: dict[str, Any] | None = None,
    overrides: PreprocessOverrides | None = None,
    device: str = "cpu",
) -> tuple[Target, list[LayerInfo]]:
    """Every named module of ``model`` with its output shape, from one dummy forward pass."""
    import torch

    dev = resolve_device(device)
    target = load_target(model, weights, model_args, overrides, dev)
    size = target.preprocess.input_size if target.preprocess else 224
    example = torch.zeros(1, 3, size, size, device=dev)
    return target, list_modules(target.module, example)
