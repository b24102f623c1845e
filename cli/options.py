"""Options shared by the commands, declared once so they mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Out = Annotated[str, typer.Option("-o", "--out", help="Output file ('-' writes Parquet to standard output).", show_default=False)]
Clip = Annotated[
    str,
    typer.Option(
        "--clip",
        help="CLIP model: MODEL:PRETRAINED (ViT-B-16:openai), MODEL:TAG@checkpoint (a tag with local weights), "
        "MODEL:checkpoint.pt, hf-hub:ORG/REPO, "
        "local-dir:FOLDER, or config.json:checkpoint.",
        show_default=False,
    ),
]
Model = Annotated[
    str,
    typer.Option("--model", "-m", help="Target network: timm:NAME, torchvision:NAME or path/to/file.py:function.", show_default=False),
]
Weights = Annotated[
    Optional[str],
    typer.Option(
        "--weights",
        help="Target weights: the library's pretrained tag (timm: pretrained; torchvision: DEFAULT, IMAGENET1K_V2, ...), "
        "'none' for random, or a local checkpoint file. [default: pretrained / DEFAULT]",
        show_default=False,
    ),
]
ModelArg = Annotated[
    Optional[list[str]],
    typer.Option("--model-arg", help="KEY=VALUE passed to the model constructor (repeatable), e.g. num_classes=10."),
]
Layers = Annotated[
    str, typer.Option("--layers", "-l", help="Comma-separated layer names, as listed by `dissect layers` (layer4,fc).", show_default=False)
]
LayersOptional = Annotated[
    Optional[str], typer.Option("--layers", "-l", help="Comma-separated layer names (default: all in the file).")
]
Device = Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:INDEX.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images or texts per forward pass.")]
Workers = Annotated[
    Optional[int], typer.Option("--workers", min=0, help="Image-loading processes [default: 0 for small probes, else up to 8].")
]
Summary = Annotated[str, typer.Option("--summary", help="Per-neuron reduction of spatial/token outputs: mean, max or cls.")]
Layout = Annotated[
    str,
    typer.Option("--layout", help="Where each layer's channels are: auto (decided from the module, refused where it "
                                  "cannot be), or nc, nlc, ncl, nchw, nhwc for every layer, or LAYER=LAYOUT,... per layer."),
]
InputSize = Annotated[Optional[int], typer.Option("--input-size", min=1, help="Override the crop size in pixels.")]
CropPct = Annotated[Optional[float], typer.Option("--crop-pct", help="Override crop fraction (resize = input-size / crop-pct).")]
Mean = Annotated[Optional[str], typer.Option("--mean", help="Override normalisation mean, R,G,B.")]
Std = Annotated[Optional[str], typer.Option("--std", help="Override normalisation std, R,G,B.")]
Interpolation = Annotated[Optional[str], typer.Option("--interpolation", help="Override resize interpolation (bilinear, bicubic, ...).")]
Directions = Annotated[
    Optional[list[str]],
    typer.Option("--directions", help="Units that are directions of a layer, recorded as the entry LAYER@NAME: LAYER=SPEC "
                 "or LAYER@NAME=SPEC (repeatable). SPEC: a [K, C] matrix (.npy, .pt, .safetensors, FILE#key), an SAE as its library "
                 "saved it (a SAELens folder, a saev sae.pt, a dictionary_learning trainer folder or ae.pt, an Overcomplete "
                 "torch.save(model) file, a ViT-Prisma folder), or file.py:function returning a module."),
]
DirectionsSummary = Annotated[
    str, typer.Option("--directions-summary", help="Reduction of the directions' units over positions: auto (max for SAEs, "
                      "else --summary), mean, max or cls. Applied after encoding every position.")]
DirectionsDtype = Annotated[str, typer.Option("--directions-dtype", help="How direction entries are stored: float32, or float16 (half the file).")]


def directions(items, summary="auto", dtype="float32"):
    """The ``--directions`` options as one object."""
    from dissect.directions import DirectionsOptions

    return DirectionsOptions(tuple(items or ()), summary, dtype)


Sim = Annotated[str, typer.Option("--sim", "-s", help="Similarity: softwpmi, wpmi, rank-reorder, cos or cos-cubed.")]
Param = Annotated[
    Optional[list[str]], typer.Option("--param", "-p", help="Similarity hyperparameter NAME=VALUE (repeatable), e.g. top_k=50.")
]
Top = Annotated[int, typer.Option("--top", "-k", min=1, help="Alternative concepts kept per neuron (candidates column).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for randomised similarities (rank-reorder) and of the --holdout split [default: 0].")]
Holdout = Annotated[Optional[float], typer.Option("--holdout", help="Label on part of the probe only: hold out this share of the images (a deterministic split by image id, seeded by --seed) for `dissect evaluate simulate` to score the labels on.")]
Concepts = Annotated[
    Optional[str],
    typer.Option("--concepts", "-c", help="Concept set: a .txt file, a shipped set (20k, 10k, 3k, imagenet, imagenet-wordnet, cifar100) or the paper's own lists (paper-20k, paper-10k, paper-3k; downloaded on first use)."),
]
Text = Annotated[Optional[Path], typer.Option("--text", "-t", help="Text embeddings from `dissect embed-text`.")]
Images = Annotated[Path, typer.Option("--images", "-i", help="Image embeddings from `dissect embed-images`.", show_default=False)]
Activations = Annotated[Path, typer.Option("--activations", "-a", help="Activations from `dissect record`.", show_default=False)]
Chunk = Annotated[Optional[int], typer.Option("--chunk", min=1, help="Concepts scored per block [default: as many as fit --max-memory].")]
MaxMemory = Annotated[str, typer.Option("--max-memory", help="Working-memory budget of the similarity computation, e.g. 512MB, 4GB.")]
#: The default --max-memory (``budget.DEFAULT_MAX_MEMORY``).
DEFAULT_MAX_MEMORY = "256MB"
Precision = Annotated[
    str, typer.Option("--precision", help="Forward-pass precision: fp32 (default; true fp32, TF32 off), tf32 (TF32 "
                                          "matmuls and convolutions on GPUs), paper (the official code's: CLIP in fp16 on "
                                          "GPUs, the network in fp32), auto (bf16 on GPUs that support it: fastest, changes "
                                          "some labels), bf16 or fp16. Agreement of each with fp32: docs/PERFORMANCE.md.")
]
Dtype = Annotated[str, typer.Option("--dtype", help="How embeddings are stored: float32, or float16 (half the file).")]
ChannelsLast = Annotated[
    Optional[bool],
    typer.Option("--channels-last/--no-channels-last", help="Run the target in channels-last memory format [default: on for conv nets on CUDA].", show_default=False),
]
Strict = Annotated[
    bool, typer.Option("--strict", help="Stop at the first unreadable image (or over-long concept) instead of skipping it.")
]
Shard = Annotated[
    Optional[str], typer.Option("--shard", help="Encode only shard I of N of the probe (e.g. 2/8) into a shard file; join them with `dissect merge`.")
]
CheckpointEvery = Annotated[
    Optional[int],
    typer.Option("--checkpoint-every", min=0, help="Save progress every N images beside the output, so a rerun after a crash continues (0: never) [default: 2048]."),
]
Probe = Annotated[
    list[str],
    typer.Argument(help="Probe images: folders, .txt lists of paths, or torchvision:NAME[:SPLIT]; several are concatenated.", show_default=False),
]


def split_list(value: str | None) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_key_values(items: list[str] | None, flag: str, example: str, json_values: bool = False) -> dict:
    """KEY=VALUE strings of a repeatable option -> dict (values parsed as JSON when ``json_values`` and they can be)."""
    import json

    from dissect.errors import UsageError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE", hint=f"e.g. {flag} {example}")
        value = value.strip()
        if json_values:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key.strip()] = value
    return out


def parse_params(items: list[str] | None) -> dict[str, str]:
    """--param NAME=VALUE (validated and typed by ``similarity.resolve_params``)."""
    return parse_key_values(items, "--param", "top_k=50")


def model_args(items: list[str] | None) -> dict:
    """--model-arg KEY=VALUE for the model constructor, values parsed as JSON when they can be (numbers, true, lists)."""
    return parse_key_values(items, "--model-arg", "num_classes=10", json_values=True)


def parse_triple(name: str, value: str | None) -> tuple[float, ...] | None:
    from dissect.errors import UsageError

    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise UsageError(f"--{name} {value!r} is not three comma-separated numbers") from None


def overrides(input_size, crop_pct, mean, std, interpolation):
    from dissect.models import PreprocessOverrides

    return PreprocessOverrides(input_size, crop_pct, parse_triple("mean", mean), parse_triple("std", std), interpolation)

ConceptsArg = Annotated[
    str, typer.Argument(help="A .txt file (one concept per line), a shipped set (20k, 10k, 3k, imagenet, imagenet-wordnet, cifar100) or the paper's own lists (paper-20k, paper-10k, paper-3k; downloaded on first use).", show_default=False)
]


def parse_size(value: str) -> int:
    """'512MB', '4GB', '1.5G', '2000000' -> bytes (powers of 1024)."""
    from dissect.errors import UsageError

    v = value.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(v[-1:], 1)
    try:
        n = float(v[:-1] if v[-1:] in units else v) * mult
    except ValueError:
        raise UsageError(f"--max-memory {value!r} is not a size", hint="e.g. 512MB or 4GB") from None
    if n < (64 << 20):
        raise UsageError(f"--max-memory {value} is too small", hint="give at least 64MB")
    return int(n)


def pass_options(device="auto", batch_size=64, workers=None, precision="fp32", strict=False, checkpoint_every=None,
                 channels_last=None, shard=None):
    """The settings of an image pass, built once from the command's options (``passes.PassOptions``)."""
    from dissect.passes import PassOptions

    return PassOptions.of(device=device, batch_size=batch_size, workers=workers, precision=precision, strict=strict,
                          checkpoint_every=checkpoint_every, channels_last=channels_last, shard=shard)

def target(model: str, weights=None, model_arg=None, input_size=None, crop_pct=None, mean=None, std=None,
           interpolation=None):
    """The target network as the command names it (``models.TargetSpec``)."""
    from dissect.models import TargetSpec

    return TargetSpec(model, weights, model_args(model_arg), overrides(input_size, crop_pct, mean, std, interpolation))


def compute(device="auto", max_memory=DEFAULT_MAX_MEMORY, batch_size=256):
    """How an artifact stage runs, built once from the command's options (``settings.Compute``)."""
    from dissect.settings import Compute

    return Compute(device=device, max_memory=parse_size(max_memory), batch_size=batch_size)


ClassNames = Annotated[Optional[str], typer.Option("--class-names", help="With --annotations classes: the names of the probe's class folders (in sorted order): imagenet, imagenet-wordnet, cifar100 or a .txt file (line k = class k) [default: the folder names].")]
Superclasses = Annotated[Optional[str], typer.Option("--superclasses", help="With --annotations classes: each class's superclasses are present too, Linear Explanations' label mode: imagenet or cifar100 (their files, downloaded on first use and cached) or a JSON file {superclass: [class index, ...]}.")]
Annotations = Annotated[Optional[str], typer.Option("--annotations", help="Per-image concepts: a CSV or Parquet with columns id, concept[, value in 0..1], or 'classes' (an ImageFolder probe's class folders).")]
Calibration = Annotated[str, typer.Option("--calibration", help="CLIP cosine to presence: mixture (default: per concept, from its cosines alone), fdr (its tail part alone), zscore (dissect 0.2's), zscore:K,Z0, sigmoid:A,B (Linear Explanations' form) or raw.")]
