"""dissect label."""

from __future__ import annotations

from . import options as O
from .app import command


@command("label")
def label(
    images: O.Images,
    activations: O.Activations,
    out: O.Out,
    text: O.Text = None,
    concepts: O.Concepts = None,
    sim: O.Sim = "softwpmi",
    param: O.Param = None,
    layers: O.LayersOptional = None,
    top: O.Top = 5,
    seed: O.Seed = None,
    chunk: O.Chunk = None,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 256,
    holdout: O.Holdout = None,
):
    """Label every neuron with its most similar concept -> labels.parquet (never reruns CLIP on images or the model)."""
    from dissect import label as stage

    stage.label(images, activations, out, text=text, concepts=concepts, layers=O.split_list(layers) or None,
                settings=stage.LabelSettings(sim=sim, params=O.parse_params(param), top=top, seed=seed, chunk=chunk,
                                             holdout=holdout, holdout_seed=seed or 0),
                compute=O.compute(device, max_memory, batch_size))
