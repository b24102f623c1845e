"""Recording layer outputs with forward hooks, and reducing them to one value per neuron.

Layers are named by their dotted ``named_modules()`` name. Every name is checked
before any hook is attached; hooks are always removed (``with`` block), and the
forward pass is cut short once the last requested layer has run.

Layouts are declared, not guessed from names. With ``layout="auto"`` the rule is
by rank alone and is recorded with the data:
    2-D output  (N, C)        "nc"    identity
    3-D output  (N, L, C)     "nlc"   tokens (transformer blocks)
    4-D output  (N, C, H, W)  "nchw"  conv feature maps
Models whose 4-D outputs are channels-last (e.g. timm Swin stages) need
``layout="nhwc"``; 3-D conv1d outputs need ``layout="ncl"``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ModelError, UsageError

LAYOUTS = ("auto", "nc", "nlc", "ncl", "nchw", "nhwc")
SUMMARIES = ("mean", "max", "cls")


def module_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_layers(model: torch.nn.Module, names: list[str], spec: str = "MODEL") -> list[str]:
    """Check every requested layer name exists; fail with the closest matches."""
    if not names:
        raise UsageError("no layers given", hint=f"pick some with --layers; list them with `dissect layers {spec}`")
    available = dict(model.named_modules())
    seen = []
    for name in names:
        if name not in available or not name:
            close = difflib.get_close_matches(name, [n for n in available if n], n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(close)}? " if close else "") + f"list the layers with `dissect layers {spec}`"
            raise UsageError(f"{spec} has no layer {name!r}", hint=hint)
        if name not in seen:
            seen.append(name)
    return seen


def resolve_layout(layout: str, ndim: int, layer: str) -> str:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}", hint=f"use one of {', '.join(LAYOUTS)}")
    expected = {"nc": 2, "nlc": 3, "ncl": 3, "nchw": 4, "nhwc": 4}
    if layout == "auto":
        auto = {2: "nc", 3: "nlc", 4: "nchw"}.get(ndim)
        if auto is None:
            raise ModelError(f"layer {layer} outputs a {ndim}-D tensor", hint="record a layer with a 2-, 3- or 4-D output")
        return auto
    if expected[layout] != ndim:
        raise UsageError(f"layout {layout} needs a {expected[layout]}-D output but layer {layer} gives {ndim}-D")
    return layout


def summarize(x: torch.Tensor, layout: str, summary: str) -> torch.Tensor:
    """(N, ...) layer output -> (N, C): one number per neuron and image."""
    if layout == "nc":
        return x
    if summary == "cls" and layout != "nlc":
        raise UsageError(f"--summary cls needs token outputs (N, L, C); this layer's layout is {layout}")
    if layout == "nlc":
        if summary == "cls":
            return x[:, 0]
        return x.mean(dim=1) if summary == "mean" else x.amax(dim=1)
    if layout == "ncl":
        return x.mean(dim=2) if summary == "mean" else x.amax(dim=2)
    dims = (2, 3) if layout == "nchw" else (1, 2)
    return x.mean(dim=dims) if summary == "mean" else x.amax(dim=dims)


class _Stop(Exception):
    """Raised inside the last needed hook to end the forward pass early."""


@dataclass
class LayerInfo:
    name: str
    module_type: str
    raw_shape: tuple[int, ...]      # per-image output shape, e.g. (C, H, W)
    layout: str
    n_units: int


class Recorder:
    """Forward hooks on named layers; use as a context manager (hooks removed on exit).

    >>> with Recorder(model, ["layer1", "layer4"], summary="mean") as rec:
    ...     out = rec.run(batch)   # {"layer1": [B, C1], "layer4": [B, C4]}
    """

    def __init__(self, model: torch.nn.Module, layers: list[str], summary: str = "mean", layout: str = "auto",
                 stop_early: bool = True, keep_raw: bool = False):
        if summary not in SUMMARIES:
            raise UsageError(f"unknown summary {summary!r}", hint=f"use one of {', '.join(SUMMARIES)}")
        if layout not in LAYOUTS:
            raise UsageError(f"unknown layout {layout!r}", hint=f"use one of {', '.join(LAYOUTS)}")
        self.model, self.layers, self.summary, self.layout = model, list(layers), summary, layout
        self.stop_early, self.keep_raw = stop_early, keep_raw
        self.info: dict[str, LayerInfo] = {}
        self._handles: list[Any] = []
        self._out: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Recorder":
        modules = dict(self.model.named_modules())
        try:
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(self._hook(name, modules[name])))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str, module: torch.nn.Module):
        def hook(_mod, _inp, output):
            if name in self._out:
                return  # a module called twice in one pass: keep its first call
            if not isinstance(output, torch.Tensor):
                kind = type(output).__name__
                if isinstance(output, (tuple, list)):
                    kind += f" of {len(output)} ({', '.join(type(o).__name__ for o in output[:4])})"
                raise ModelError(
                    f"layer {name} returns a {kind}, not a tensor",
                    hint="record one of its submodules instead (see `dissect layers`)",
                )
            layout = resolve_layout(self.layout, output.ndim, name)
            x = output.detach()
            if self.keep_raw:
                self._out[name] = x
            else:
                self._out[name] = summarize(x.float(), layout, self.summary)
            if name not in self.info:
                n_units = x.shape[{"nc": 1, "nlc": 2, "ncl": 1, "nchw": 1, "nhwc": 3}[layout]]
                self.info[name] = LayerInfo(name, type(module).__name__, tuple(x.shape[1:]), layout, int(n_units))
            if self.stop_early and len(self._out) == len(self.layers):
                raise _Stop

        return hook

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``batch``; returns each layer's (N, C) summary (or raw output with keep_raw)."""
        self._out = {}
        try:
            with torch.inference_mode():
                self.model(batch)
        except _Stop:
            pass
        missing = [n for n in self.layers if n not in self._out]
        if missing:
            raise ModelError(
                f"layer {missing[0]} never ran in the forward pass",
                hint="pick a layer the model's forward() calls (see `dissect layers`)",
            )
        out, self._out = self._out, {}
        return out


def list_modules(model: torch.nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Every named module that ran on ``example``, in execution order, with its output shape (auto layout)."""
    infos: list[LayerInfo] = []
    seen: set[str] = set()
    handles = []

    def make(name, mod):
        def hook(_m, _i, out):
            if name in seen:
                return
            seen.add(name)
            if isinstance(out, torch.Tensor) and out.ndim in (2, 3, 4):
                lay = resolve_layout("auto", out.ndim, name)
                n = out.shape[{"nc": 1, "nlc": 2, "ncl": 1, "nchw": 1, "nhwc": 3}[lay]]
                infos.append(LayerInfo(name, type(mod).__name__, tuple(out.shape[1:]), lay, int(n)))
            else:
                shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
                infos.append(LayerInfo(name, type(mod).__name__, shape, "-", 0))

        return hook

    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make(name, mod)))
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return infos
