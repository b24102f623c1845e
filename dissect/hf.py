"""Hugging Face transformers vision models as targets: ``--model hf:ORG/REPO`` or ``--model hf:/path/to/folder``.

A ``save_pretrained`` folder (or a hub repository, from the local cache when offline) is loaded with
transformers' own classes: ``...ForImageClassification`` where the config names one (its logits are
the model's output), the vision tower of a CLIP or SigLIP checkpoint, else the base model (its pooled
output, or the first token of its last hidden state). Its layers keep transformers' own
``named_modules()`` names (``vit.encoder.layer.0``); its image processor becomes dissect's
preprocessing; its patch grid and prefix tokens (CLS, registers) come from the config.

transformers is an extra: ``pip install 'clip-dissect[hf]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError, UsageError, first_line

PREFIX = "hf:"
#: Model types whose layers are all convolutional (N, C, H, W): no token grid to name.
CONV_TYPES = ("convnext", "convnextv2", "resnet", "regnet", "bit", "efficientnet", "mobilenet_v1", "mobilenet_v2",
              "mobilevit", "mobilevitv2", "van", "poolformer", "levit", "dinat", "nat")
#: Model types whose token grid shrinks stage by stage (2x2 patch merging) and has no CLS token.
MERGING_TYPES = ("swin", "swinv2", "donut-swin", "maskformer-swin")
#: PIL's resampling codes, as image processors store them, by the name dissect uses.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("--model hf:... needs the transformers package",
                         hint="pip install 'clip-dissect[hf]' (or pip install transformers)") from None
    return transformers


class HFModel(torch.nn.Module):
    """A transformers model seen as dissect sees every target: ``forward(pixels) -> tensor``, its submodules under
    their own names (the model's children are this module's children), its token grid in ``dissect_token_grid``."""

    def __init__(self, model, grid: tuple[int, int, int] | None, merges: bool = False):
        super().__init__()
        object.__setattr__(self, "hf", model)           # not a child: its children are ours
        for name, child in model.named_children():
            self.add_module(name, child)
        self.dissect_token_grid = grid
        self.dissect_token_merges = merges               # Swin: each stage halves the grid (2x2 patch merging)

    def train(self, mode: bool = True):
        self.hf.train(mode)
        return super().train(mode)

    def forward(self, x):
        out = self.hf(pixel_values=x)
        for key in ("logits", "image_embeds", "pooler_output"):
            value = getattr(out, key, None)
            if isinstance(value, torch.Tensor):
                return value
        return out.last_hidden_state[:, 0]


def _local(spec: str) -> Path | None:
    p = Path(os.path.expanduser(spec))
    return p if p.exists() else None


def _vision(config):
    """The config of the vision model: a CLIP or SigLIP checkpoint's vision_config, else the config itself."""
    return getattr(config, "vision_config", None) or config


def _grid(config) -> tuple[int, int, int] | None:
    """(prefix tokens, rows, columns) of a ViT-like config (CLS, distillation and register tokens first)."""
    vc = _vision(config)
    size, patch = getattr(vc, "image_size", None), getattr(vc, "patch_size", None)
    if not size or not patch:
        return None
    size = size if isinstance(size, (list, tuple)) else (size, size)
    patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    model_type = str(getattr(vc, "model_type", ""))
    if model_type in CONV_TYPES:
        return None
    prefix = 0 if ("siglip" in model_type or model_type in MERGING_TYPES) else 1   # Swin: no CLS; its first stage's grid
    prefix += 1 if model_type == "deit" else 0                      # DeiT's distillation token
    prefix += int(getattr(vc, "num_register_tokens", 0) or 0)
    return prefix, int(size[0]) // int(patch[0]), int(size[1]) // int(patch[1])


def _preprocess(source: str, config) -> dict[str, Any]:
    """The fields of dissect's ``models.Preprocess`` from the model's image processor (resize, centre crop, mean,
    std, resampling)."""
    tf = _transformers()
    try:
        proc = tf.AutoImageProcessor.from_pretrained(source)
    except Exception:          # no processor saved: the config's size, mean and std 0.5 (ViT's)
        proc = None
    vc = _vision(config)
    size = int(getattr(vc, "image_size", 224) if not isinstance(getattr(vc, "image_size", 224), (list, tuple))
               else vc.image_size[0])
    if proc is None:
        return dict(input_size=size, resize_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    interpolation="bilinear", squash=True)
    s = {k: v for k, v in dict(getattr(proc, "size", None) or {}).items() if v is not None}
    crop = {k: v for k, v in dict(getattr(proc, "crop_size", None) or {}).items() if v is not None}
    squash = "shortest_edge" not in s                      # a height and width: both sides resized
    resize = int(s.get("shortest_edge") or s.get("height") or size)
    input_size = int(crop.get("height") or resize) if getattr(proc, "do_center_crop", False) else resize
    crop_pct = getattr(proc, "crop_pct", None)
    if crop_pct and "shortest_edge" in s and getattr(proc, "do_center_crop", False) and crop.get("height"):
        resize = int(resize / float(crop_pct))             # PoolFormer's: size / crop_pct, then its centre crop
    elif crop_pct and "shortest_edge" in s:                # ConvNeXt's: below 384 px, the shortest edge to
        if resize < 384:                                   # size / crop_pct, then a centre crop; from 384 on, squashed
            resize, input_size = int(resize / float(crop_pct)), resize
        else:
            squash, input_size = True, resize
    mean = tuple(float(v) for v in (getattr(proc, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (getattr(proc, "image_std", None) or (0.5, 0.5, 0.5)))
    resample = getattr(proc, "resample", 2)
    interp = _RESAMPLE.get(int(resample), "bilinear") if isinstance(resample, int) or hasattr(resample, "__int__") else "bilinear"
    return dict(input_size=input_size, resize_size=resize, mean=mean, std=std, interpolation=interp, squash=squash)


def load(spec: str, weights: str | None, args: dict[str, Any]) -> tuple[HFModel, dict[str, Any], str]:
    """(the model, its preprocessing as ``models.Preprocess`` fields, what identifies its weights) of ``hf:ORG/REPO`` or ``hf:FOLDER``; ``weights``: a
    hub revision (a branch, tag or commit) or ``none`` (the config's architecture with random weights)."""
    tf = _transformers()
    source = spec[len(PREFIX):]
    folder = _local(source)
    if folder is None and (source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1)):
        raise UsageError(f"--model {spec}: folder {source} does not exist",
                         hint="give a save_pretrained folder, or a hub id ORG/REPO")
    random = (weights or "").lower() in ("none", "random")
    revision = None if random or not weights or folder is not None else weights
    if folder is None:
        from .runtime import hub_offline

        hub_offline()
    try:
        config = tf.AutoConfig.from_pretrained(str(folder or source), revision=revision)
    except OSError as e:
        raise ModelError(f"cannot load the config of {spec}: {first_line(e, 'not found', 160)}",
                         hint=f"where there is internet run `hf download {source} --local-dir DIR` and pass "
                              "--model hf:DIR (a save_pretrained folder)") from None
    cls = _model_class(tf, config)
    try:
        if random:
            model = cls(config.vision_config if hasattr(config, "vision_config") and "Vision" in cls.__name__ else config)
        else:
            model = cls.from_pretrained(str(folder or source), revision=revision, **args)
    except OSError as e:
        raise ModelError(f"cannot load the weights of {spec}: {first_line(e, 'not found', 160)}",
                         hint=f"fetch the repository where there is internet (`hf download {source} --local-dir DIR`) "
                              "and pass --model hf:DIR") from None
    pre = _preprocess(str(folder or source), config)
    ident = "random" if random else (_weights_file(folder) if folder is not None else f"{source}@{revision or 'main'}")
    return HFModel(model.eval(), _grid(config), str(getattr(_vision(config), "model_type", "")) in MERGING_TYPES), \
        pre, ident


def _model_class(tf, config):
    archs = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForImageClassification")]
    if archs and hasattr(tf, archs[0]):
        return getattr(tf, archs[0])
    model_type = str(getattr(config, "model_type", ""))
    if model_type in ("clip", "siglip", "siglip2"):
        return getattr(tf, {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}[model_type])
    return tf.AutoModel


def _weights_file(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return str(files[0]) if files else str(folder)
