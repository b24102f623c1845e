"""dissect embed-images / embed-text."""

from __future__ import annotations

from . import options as O
from .app import command


@command("embed-images")
def embed_images(
    probe: O.Probe,
    clip: O.Clip,
    out: O.Out,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 64,
    workers: O.Workers = None,
    precision: O.Precision = "fp32",
    dtype: O.Dtype = "float32",
    strict: O.Strict = False,
    shard: O.Shard = None,
    checkpoint_every: O.CheckpointEvery = None,
):
    """Embed probe images with CLIP's image encoder -> images.h5 (unreadable images are skipped and listed)."""
    from dissect import embed as stage

    stage.embed_images(probe, clip, out, dtype=dtype, options=O.pass_options(device, batch_size, workers, precision, strict, checkpoint_every,
                                                              shard=shard))


@command("embed-text")
def embed_text(
    concepts: O.ConceptsArg,
    clip: O.Clip,
    out: O.Out,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 256,
    precision: O.Precision = "fp32",
    dtype: O.Dtype = "float32",
    strict: O.Strict = False,
):
    """Embed a concept set (a .txt file or a shipped set name) with CLIP's text encoder -> text.h5."""
    from dissect import embed as stage

    stage.embed_text(concepts, clip, out, device=device, batch_size=batch_size, precision=precision, dtype=dtype, strict=strict)
