"""Loading the target network to dissect, with the preprocessing it expects.

--model SPEC
    timm:NAME                 any timm model (``timm:resnet50.a1_in1k``)
    torchvision:NAME          any torchvision classification model (``torchvision:resnet50``)
    path/to/file.py:FUNCTION  FUNCTION(**model_args) returns a module, or (module, transform)
--weights
    timm:        pretrained (default) | none | a local checkpoint file
    torchvision: DEFAULT (default) | IMAGENET1K_V2 | ... | none | a local checkpoint file
    file.py:     none (default: the function builds its own) | a local checkpoint file

Preprocessing is resolved from the model's own config (timm's data config,
torchvision's weights transforms) and can be overridden; the resolved values
are recorded in every activations artifact.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import DissectError, ModelError, UsageError
from .fingerprint import fingerprint, fingerprint_file

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass
class Preprocess:
    """Resize the shorter side to ``resize_size`` (with ``squash``: both sides, the aspect ratio not kept, as
    transformers' image processors with a height and width do), centre-crop ``input_size``, normalise."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    squash: bool = False

    def resize(self, interpolation=None):
        """The resize step alone (``interpolation``: a torchvision InterpolationMode, default the preprocessing's)."""
        from torchvision import transforms as T

        mode = interpolation or getattr(T.InterpolationMode, self.interpolation.upper())
        size = (self.resize_size, self.resize_size) if self.squash else self.resize_size
        return T.Resize(size, interpolation=mode, antialias=True)

    def transform(self):
        from torchvision import transforms as T

        return T.Compose([self.resize(), T.CenterCrop(self.input_size), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not self.squash:
            del d["squash"]          # files recorded before squash existed record the same preprocessing
        return d


@dataclass
class PreprocessOverrides:
    input_size: int | None = None
    crop_pct: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def validate(self) -> "PreprocessOverrides":
        if self.input_size is not None and self.input_size < 1:
            raise UsageError(f"--input-size must be positive, got {self.input_size}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise UsageError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != 3:
                raise UsageError(f"--{name} takes three comma-separated numbers (R,G,B), got {len(v)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UsageError("--std values must be positive")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"unknown interpolation {self.interpolation!r}", hint=f"use one of {', '.join(INTERPOLATIONS)}")
        return self


def apply_overrides(base: Preprocess, o: PreprocessOverrides) -> Preprocess:
    crop_pct = base.input_size / base.resize_size
    input_size = o.input_size or base.input_size
    if o.crop_pct is not None:
        crop_pct = o.crop_pct
    return Preprocess(
        input_size=input_size,
        resize_size=int(math.floor(input_size / crop_pct + 1e-6)),
        mean=tuple(o.mean) if o.mean else base.mean,
        std=tuple(o.std) if o.std else base.std,
        interpolation=o.interpolation or base.interpolation,
        squash=base.squash,
    )


@dataclass
class Target:
    """A loaded target network ready for recording."""

    module: Any
    spec: str
    weights: str
    preprocess: Preprocess | None         # None when a custom transform is used
    transform: Any
    model_args: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def preprocess_record(self) -> dict[str, Any]:
        """The preprocessing as recorded and compared: the resolved values, or the custom transform's repr."""
        return self.preprocess.as_dict() if self.preprocess else {"custom_transform": repr(self.transform)}

    def attrs(self) -> dict[str, Any]:
        return {
            "model": self.spec,
            "weights": self.weights,
            "model_args": self.model_args,
            "preprocess": self.preprocess_record(),
            "model_fingerprint": self.fingerprint,
        }


def _load_state_dict(path: str) -> dict[str, Any]:
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelError(f"{path} holds no state_dict", hint="save the weights with torch.save(model.state_dict(), path)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_into(module, path: str) -> None:
    """Load a checkpoint strictly, naming missing, unexpected and mis-shaped keys."""
    sd = _load_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
        if shapes:
            parts.append(f"shape mismatches {shapes[:3]}{' ...' if len(shapes) > 3 else ''}")
        raise ModelError(
            f"weights {path} do not fit the model: " + "; ".join(parts),
            hint="check --model and --model-arg (e.g. num_classes) match the checkpoint",
        )
    module.load_state_dict(sd, strict=True)


def _is_file_weights(weights: str | None) -> bool:
    return bool(weights) and (Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or "/" in weights)


def _timm(name: str, weights: str | None, args: dict[str, Any]):
    import timm

    if not timm.is_model(name.split(".")[0]) and not timm.list_models(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ModelError(f"unknown timm model {name!r}", hint=f"did you mean {', '.join(close)}?" if close else "see timm.list_models()")
    weights = weights or "pretrained"
    pretrained = weights.lower() not in ("none", "random")
    file_weights = pretrained and _is_file_weights(weights)
    if pretrained and not file_weights and weights.lower() != "pretrained":
        name = f"{name.split('.')[0]}.{weights}"  # --weights TAG picks timm's pretrained tag
    if pretrained and not file_weights:
        from .runtime import hub_offline

        hub_offline()  # offline: the hub's cache only, failing at once when the weights are not in it
    try:
        module = timm.create_model(name, pretrained=pretrained and not file_weights, **args)
    except TypeError as e:
        raise ModelError(f"timm:{name} does not accept these --model-arg values: {e}") from None
    except RuntimeError as e:
        msg = str(e)
        if "pretrained" in msg.lower() or "download" in msg.lower() or "hub" in msg.lower():
            raise ModelError(f"cannot download timm weights for {name}", hint=_timm_download_hint(name)) from None
        raise ModelError(f"cannot create timm:{name}: {msg.splitlines()[0]}") from None
    except Exception as e:  # huggingface_hub / urllib errors when offline
        raise ModelError(f"cannot download timm weights for {name}: {type(e).__name__}",
                         hint=_timm_download_hint(name)) from None
    if file_weights:
        load_state_dict_into(module, weights)
    cfg = timm.data.resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    pre = Preprocess(
        input_size=size,
        resize_size=int(math.floor(size / cfg.get("crop_pct", 0.875) + 1e-6)),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"),
    )
    return module, pre, weights


def _timm_download_hint(name: str) -> str:
    """Which file to fetch for timm's pretrained ``name`` and which flag takes it."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name) or get_pretrained_cfg(name.split(".")[0])
    except Exception:
        cfg = None
    where = "its weights"
    if cfg is not None and getattr(cfg, "hf_hub_id", None):
        where = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{cfg.hf_hub_filename or 'model.safetensors'}"
    elif cfg is not None and getattr(cfg, "url", None):
        where = cfg.url
    return (f"fetch {where} where there is internet and pass --weights /path/to/{Path(where).name if '/' in where else name}"
            f" (or --weights none for random weights)")


def _torchvision(name: str, weights: str | None, args: dict[str, Any]):
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(name)
    except ValueError:
        import difflib

        close = difflib.get_close_matches(name, tvm.list_models(), n=3)
        raise ModelError(f"unknown torchvision model {name!r}", hint=f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()") from None
    weights = weights or "DEFAULT"
    enum = tvm.get_model_weights(name)
    file_weights = _is_file_weights(weights)
    w = None
    if weights.lower() not in ("none", "random") and not file_weights:
        try:
            w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ModelError(
                f"unknown weights {weights!r} for torchvision:{name}",
                hint=f"known: DEFAULT, {', '.join(m.name for m in enum)}, none, or a checkpoint file",
            ) from None
    try:
        module = builder(weights=w, **args)
    except TypeError as e:
        raise ModelError(f"torchvision:{name} does not accept these --model-arg values: {e}") from None
    except Exception as e:
        if w is None:
            raise ModelError(f"cannot create torchvision:{name}: {str(e).splitlines()[0]}") from None
        raise ModelError(
            f"cannot download torchvision weights {w} for {name}: {type(e).__name__}",
            hint=f"fetch {w.url} where there is internet and pass --weights /path/to/{Path(w.url).name}",
        ) from None
    if file_weights:
        load_state_dict_into(module, weights)
    # The weights' own transforms (the architecture's default when no weights are loaded).
    t = (w or enum.DEFAULT).transforms()
    pre = Preprocess(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=t.interpolation.value,
    )
    return module, pre, weights if w is None else f"{enum.__name__}.{w.name}"


def _python_file(spec: str, weights: str | None, args: dict[str, Any]):
    from .runtime import user_function

    path, _, func = spec.rpartition(":")
    fn = user_function(path, func, "model", ModelError)
    try:
        result = fn(**args)
    except DissectError:
        raise
    except Exception as e:
        raise ModelError(f"{path}:{func}() failed: {type(e).__name__}: {e}") from None
    transform = None
    if isinstance(result, tuple):
        result, transform = result[0], (result[1] if len(result) > 1 else None)
    import torch

    if not isinstance(result, torch.nn.Module):
        raise ModelError(f"{path}:{func}() returned {type(result).__name__}, not a torch.nn.Module")
    if weights and weights.lower() not in ("none", "random"):
        load_state_dict_into(result, weights)
    return result, transform, weights or "none"


def downloads_weights(spec: str, weights: str | None) -> bool:
    """Whether loading ``spec`` with ``weights`` fetches pretrained weights (timm's hub, torchvision's URLs)."""
    w = (weights or "").strip()
    if w.lower() in ("none", "random") or (w and _is_file_weights(w)):
        return False
    if spec.startswith("hf:"):
        return not Path(os.path.expanduser(spec[3:])).exists()
    return spec.startswith(("timm:", "torchvision:"))


@dataclass(frozen=True)
class TargetSpec:
    """Which target network, as the command line names it: ``model`` (``timm:NAME``, ``torchvision:NAME``,
    ``file.py:function``), its ``weights``, constructor ``model_args`` and preprocessing ``overrides``."""

    model: str
    weights: str | None = None
    model_args: dict[str, Any] | None = None
    overrides: PreprocessOverrides | None = None

    def load(self, device=None, layers: list[str] | None = None) -> "Target":
        """The network, built and loaded (``load_target``)."""
        return load_target(self.model, self.weights, self.model_args, self.overrides, device, layers=layers)


def load_target(
    spec: str,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    overrides: PreprocessOverrides | None = None,
    device=None,
    layers: list[str] | None = None,
) -> Target:
    """Build the target network in eval mode with its resolved preprocessing.

    ``layers``: names to check before any weights are downloaded (on the architecture
    alone), so that a misspelt layer is said at once, not after the download.
    """
    args = dict(model_args or {})
    overrides = (overrides or PreprocessOverrides()).validate()
    import torch

    if layers and downloads_weights(spec, weights):
        from .hooks import resolve_layers

        resolve_layers(load_target(spec, "none", args, overrides).module, list(layers), spec)

    # Random initialisation (--weights none, or a python file building its own model) is
    # seeded, so that equal fingerprints always mean equal weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if spec.startswith("timm:"):
            module, pre, w = _timm(spec[5:], weights, args)
            transform = None
        elif spec.startswith("torchvision:"):
            module, pre, w = _torchvision(spec[len("torchvision:"):], weights, args)
            transform = None
        elif spec.startswith("hf:"):
            from . import hf

            module, fields, w = hf.load(spec, weights, args)
            pre, transform = Preprocess(**fields), None
        elif ".py:" in spec:
            module, transform, w = _python_file(spec, weights, args)
            pre = None
            if transform is None:
                if not (overrides.input_size and overrides.mean and overrides.std):
                    raise UsageError(
                        f"{spec} returned no transform",
                        hint="return (model, transform) or give --input-size, --mean and --std",
                    )
                pre = Preprocess(overrides.input_size, overrides.input_size, tuple(overrides.mean), tuple(overrides.std))
        else:
            raise UsageError(
                f"cannot parse --model {spec!r}",
                hint="use timm:NAME, torchvision:NAME, hf:ORG/REPO, hf:FOLDER or path/to/file.py:function (see `dissect layers --help`)",
            )
    if pre is not None:
        pre = apply_overrides(pre, overrides)
        transform = pre.transform()
    elif overrides.any():
        raise UsageError("preprocessing overrides do not apply to a custom transform", hint="drop --input-size/--mean/--std/--crop-pct")
    module.eval()
    if device is not None:
        module.to(device)
    weights_id = fingerprint_file(w) if Path(str(w)).is_file() else w
    code_id = fingerprint_file(spec.rpartition(":")[0]) if ".py:" in spec else ""
    fp = fingerprint([spec, weights_id, args, code_id])
    return Target(module, spec, str(w), pre, transform, args, fp)
