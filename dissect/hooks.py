"""Recording layer outputs with forward hooks, and reducing them to one value per neuron.

Layers are named by their dotted ``named_modules()`` name. Every name is checked
before any hook is attached; hooks are always removed (``with`` block), and the
forward pass is cut short once the last requested layer has run.

Layouts are declared or derived, never guessed from the rank alone. One forward pass
of a single example (``probe_layers``) decides every module's layout from what is
known, in this order:

1. ``--layout``: for every layer (``nhwc``) or per layer (``layers.0=nhwc``);
2. a 2-D output is ``nc``;
3. what the module declares: timm's ``output_fmt`` (when its rank matches the output);
4. the module's type: convolutions, batch/instance/group norms and 2-D pooling give
   channels first (``nchw``, ``ncl``); ``Linear`` gives channels last (``nlc``, ``nhwc``);
   ``LayerNorm`` gives the axis its ``normalized_shape`` matches;
5. the very tensor another module returned (containers, in-place activations, Identity);
6. a permutation module (``dims``) applied to the layout of its input;
7. the layout of its input, when the output keeps the input's non-channel axes
   (activations, residual blocks, DenseNet's concatenations);
8. the channel count of the last parameterised module that ran inside it (or of its own
   parameters), or of timm's ``feature_info``, when it matches exactly one axis.

Where none of these decides, the layer is refused with a message asking for
``--layout NAME=nchw|nhwc``. A module that runs more than once in a forward pass (a ReLU
shared by a ResNet block's three convolutions) is refused too: its calls differ and a
hook would see only one of them.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from .directions import encode_summary
from .maps import MapsRequest, TopMaps, grid_positions, map_size, position_maps
from .errors import ModelError, UsageError

LAYOUTS = ("auto", "nc", "nlc", "ncl", "nchw", "nhwc")
SUMMARIES = ("mean", "max", "cls")
#: Rank of each layout and the axis its channels (neurons) are on.
NDIM = {"nc": 2, "nlc": 3, "ncl": 3, "nchw": 4, "nhwc": 4}
CHANNEL_AXIS = {"nc": 1, "nlc": 2, "ncl": 1, "nchw": 1, "nhwc": 3}
_BY_RANK = {3: ("ncl", "nlc"), 4: ("nchw", "nhwc")}


@dataclass
class LayoutRequest:
    """``--layout``: a layout for every layer and/or layouts of named layers (``auto,layers.0=nhwc``)."""

    default: str = "auto"
    per_layer: dict[str, str] = field(default_factory=dict)

    def for_layer(self, name: str) -> str:
        return self.per_layer.get(name, self.default)

    def __str__(self) -> str:
        parts = [] if self.default == "auto" and self.per_layer else [self.default]
        return ",".join(parts + [f"{k}={v}" for k, v in sorted(self.per_layer.items())])


def parse_layout(spec: "str | LayoutRequest | None") -> LayoutRequest:
    """``auto``, ``nhwc`` or ``LAYER=LAYOUT[,LAYER=LAYOUT...]`` (a bare layout sets the default)."""
    if isinstance(spec, LayoutRequest):
        return spec
    req = LayoutRequest()
    for item in (spec or "auto").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.rpartition("=")
        value = value.strip().lower()
        if value not in LAYOUTS:
            raise UsageError(f"unknown layout {value!r} in --layout {spec!r}",
                             hint=f"use one of {', '.join(LAYOUTS)}, for all layers or as LAYER=LAYOUT")
        if eq:
            if not name.strip():
                raise UsageError(f"--layout {item!r} names no layer", hint="use LAYER=LAYOUT, e.g. layers.0=nhwc")
            req.per_layer[name.strip()] = value
        else:
            req.default = value
    return req


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


@dataclass
class LayerInfo:
    name: str
    module_type: str
    raw_shape: tuple[int, ...]      # per-image output shape, e.g. (C, H, W)
    layout: str                     # "" when it cannot be decided, "-" for non-tensor outputs
    n_units: int
    calls: int = 1                  # how often the module ran in one forward pass
    layout_source: str = ""         # what decided the layout
    rows: int = 1                   # batch rows per image (Swin's window attention folds windows into the batch)
    model_output: bool = False      # its output is what the model returns (a classifier's logits: a final layer)


def _channels_of(mod: torch.nn.Module) -> int | None:
    """The output channel count a parameterised module declares (or its first parameter's first axis)."""
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        v = getattr(mod, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    shape = getattr(mod, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    if isinstance(getattr(mod, "embedding_dim", None), int):      # nn.Embedding: [positions, channels]
        return int(mod.embedding_dim)
    for p in mod.parameters(recurse=False):
        return int(p.shape[0]) if p.ndim else None
    return None


def _axis_matching(shape: torch.Size, channels: int | None) -> str | None:
    """The layout whose channel axis alone has ``channels`` entries."""
    if channels is None or len(shape) not in _BY_RANK:
        return None
    hits = [lay for lay in _BY_RANK[len(shape)] if shape[CHANNEL_AXIS[lay]] == channels]
    return hits[0] if len(hits) == 1 else None


_CHANNELS_FIRST = (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm,
                   torch.nn.modules.instancenorm._InstanceNorm, torch.nn.GroupNorm,
                   torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd,
                   torch.nn.modules.pooling._AdaptiveAvgPoolNd, torch.nn.modules.pooling._AdaptiveMaxPoolNd,
                   torch.nn.modules.pooling._LPPoolNd, torch.nn.Upsample, torch.nn.PixelShuffle,
                   torch.nn.PixelUnshuffle)


def _by_module(mod: torch.nn.Module, out: torch.Tensor) -> str | None:
    """Layout from what the module declares or what its type computes."""
    nd = out.ndim
    fmt = getattr(mod, "output_fmt", None)
    if fmt is not None:
        fmt = str(getattr(fmt, "value", fmt)).lower()
        if NDIM.get(fmt) == nd:
            return fmt
    if isinstance(mod, _CHANNELS_FIRST):
        return "ncl" if nd == 3 else "nchw" if nd == 4 else None
    if isinstance(mod, torch.nn.Linear):
        return ("nlc" if nd == 3 else "nhwc") if out.shape[-1] == mod.out_features else None
    if isinstance(mod, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))):
        shape = tuple(getattr(mod, "normalized_shape", ()) or ())
        if len(shape) != 1:
            return None
        lay = _axis_matching(out.shape, shape[0])
        if lay is None and out.shape[-1] == shape[0] and type(mod).forward is torch.nn.LayerNorm.forward:
            lay = _BY_RANK[nd][1]  # torch's own LayerNorm normalises the last axis
        return lay
    return None


def _kind(out: Any) -> str:
    """What a module returned, for a message: 'tuple of 2 (Tensor, Tensor)', '5-D tensor'."""
    if isinstance(out, torch.Tensor):
        return f"{out.ndim}-D tensor"
    kind = type(out).__name__
    if isinstance(out, (tuple, list)):
        kind += f" of {len(out)} ({', '.join(type(o).__name__ for o in out[:4])})"
    return kind


def _permuted(layout: str, dims) -> str | None:
    try:
        out = "".join(layout[int(d)] for d in dims)
    except (IndexError, TypeError, ValueError):
        return None
    return out if out in NDIM else None


def _keeps_input_axes(layout: str, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` has ``x``'s rank and, under ``layout``, the same non-channel axes."""
    if x.ndim != out.ndim:
        return False
    c = CHANNEL_AXIS[layout]
    return all(x.shape[i] == out.shape[i] for i in range(1, out.ndim) if i != c)


def _has_params(mod: torch.nn.Module, recurse: bool = False) -> bool:
    return any(True for _ in mod.parameters(recurse=recurse))


def main_output(out: Any) -> Any:
    """What a layer's units are read from: a tensor output itself, or the first element of a tuple whose first
    element is a tensor (transformers' blocks return ``(hidden_states, attentions or None, ...)``); anything else
    as it is (refused by the caller)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def with_main_output(out: Any, new: torch.Tensor) -> Any:
    """``out`` with its main output (see ``main_output``) replaced by ``new``: what a forward hook returns to edit it."""
    if main_output(out) is out:
        return new
    if hasattr(out, "_replace"):                                   # a namedtuple
        return out._replace(**{out._fields[0]: new})
    return type(out)([new, *out[1:]])


def _first_tensor(inputs) -> torch.Tensor | None:
    return next((t for t in inputs if isinstance(t, torch.Tensor)), None)


class _Probe:
    """Hooks on every module for one forward pass: call counts and layouts (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, request: LayoutRequest, batch: int):
        self.model, self.request, self.batch = model, request, batch
        self.infos: dict[str, LayerInfo] = {}
        self.calls: Counter[str] = Counter()
        self._known: dict[int, tuple[torch.Tensor, str, str]] = {}  # id(tensor) -> (tensor, layout, module)
        self.done: list[tuple[str, torch.nn.Module]] = []           # modules in the order they finished
        self.first_out: dict[str, torch.Tensor] = {}
        # id(tensor) -> [(tensor, a module that took it as input and kept its shape, that module's output), ...]
        self.consumed: dict[int, list[tuple[torch.Tensor, str, torch.Tensor]]] = {}
        self.feature_chs = {}
        for f in getattr(model, "feature_info", None) or []:
            if isinstance(f, dict) and "module" in f and "num_chs" in f:
                self.feature_chs[f["module"]] = int(f["num_chs"])

    def known(self, t: torch.Tensor | None) -> tuple[str, str] | None:
        """(layout, module that returned it) of a tensor some module returned, or None."""
        entry = self._known.get(id(t)) if t is not None else None
        return (entry[1], entry[2]) if entry is not None and entry[0] is t else None

    def learn(self, t: torch.Tensor, layout: str, module: str) -> None:
        self._known.setdefault(id(t), (t, layout, module))

    def layout(self, name: str, mod: torch.nn.Module, x: torch.Tensor | None, out: torch.Tensor) -> tuple[str, str]:
        nd = out.ndim
        asked = self.request.for_layer(name)
        if asked != "auto" and (name in self.request.per_layer or NDIM[asked] == nd):
            if NDIM[asked] != nd:
                raise UsageError(f"--layout {name}={asked} needs a {NDIM[asked]}-D output but layer {name} gives "
                                 f"{nd}-D {tuple(out.shape[1:])}")
            return asked, "--layout"
        if nd == 2:
            return "nc", "2-D output"
        lay = _by_module(mod, out)
        if lay:
            return lay, type(mod).__name__
        same = self.known(out)
        if same:
            return same[0], f"the output of {same[1]}"
        x_layout = (self.known(x) or ("", ""))[0]
        dims = getattr(mod, "dims", None)
        if x_layout and dims is not None and "permute" in type(mod).__name__.lower():
            lay = _permuted(x_layout, dims)
            if lay:
                return lay, f"{type(mod).__name__}{tuple(dims)} of {x_layout}"
        if x_layout and NDIM[x_layout] == nd and _keeps_input_axes(x_layout, x, out):
            return x_layout, "its input"
        prefix = name + "."
        for done_name, done_mod in reversed(self.done):
            if done_name.startswith(prefix) and _has_params(done_mod):
                lay = _axis_matching(out.shape, _channels_of(done_mod))
                if lay:
                    return lay, f"the channels of {done_name}"
                break
        if _has_params(mod):
            lay = _axis_matching(out.shape, _channels_of(mod))
            if lay:
                return lay, "its own parameters"
        lay = _axis_matching(out.shape, self.feature_chs.get(name))
        return (lay, "timm feature_info") if lay else ("", "")

    def hook(self, name: str, mod: torch.nn.Module):
        def fn(_m, inputs, out):
            main = main_output(out)
            if main is not out and main.ndim > 0 and main.shape[0] == self.batch:     # a tuple's hidden states, batch first
                out = main
            self.calls[name] += 1
            if name in self.infos:
                self.infos[name].calls = self.calls[name]
            x = _first_tensor(inputs)
            if isinstance(out, torch.Tensor) and out.ndim in (2, 3, 4):
                lay, src = self.layout(name, mod, x, out)
                if lay:
                    self._known[id(out)] = (out, lay, name)
                if name not in self.infos:
                    self.first_out[name] = out
                    n = int(out.shape[CHANNEL_AXIS[lay]]) if lay else 0
                    rows = out.shape[0] / self.batch
                    self.infos[name] = LayerInfo(name, type(mod).__name__, tuple(out.shape[1:]), lay, n, 1, src,
                                                 int(rows) if rows == int(rows) else 0)
            elif name not in self.infos:
                shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
                self.infos[name] = LayerInfo(name, type(mod).__name__, shape, "-", 0, 1, _kind(out))
            if x is not None and isinstance(out, torch.Tensor) and x.shape == out.shape:
                self.consumed.setdefault(id(x), []).append((x, name, out))
            self.done.append((name, mod))

        return fn

    def settle(self) -> None:
        """After the pass: undecided outputs that a later module returned as its own, or took as input and kept
        the shape of (a block after a dropout), or outputs of parameter-free modules (activations, dropout,
        Identity) shaped like the output of the block they sit in."""
        modules = dict(self.model.named_modules())
        changed = True
        while changed:  # a chain of undecided modules (dropout -> Identity -> Identity -> block) settles link by link
            changed = False
            for name, i in self.infos.items():
                if not i.layout and name in self.first_out:
                    changed |= self._settle_one(name, i, modules[name])

    def _settle_one(self, name: str, i: LayerInfo, mod: torch.nn.Module) -> bool:
        out = self.first_out[name]
        same = self.known(out)
        users = [(u, self.known(y)) for x, u, y in self.consumed.get(id(out), []) if x is out and self.known(y)]
        lay = src = ""
        if same:
            lay, src = same[0], f"the output of {same[1]}"
        elif users:
            lay, src = users[0][1][0], f"the input of {users[0][0]}, which keeps its shape"
        elif not _has_params(mod, recurse=True):
            parent = name
            while "." in parent and not lay:
                parent = parent.rpartition(".")[0]
                p = self.infos.get(parent)
                if p is not None and p.layout and p.raw_shape == i.raw_shape and p.calls == 1:
                    lay, src = p.layout, f"the shape of {parent}, around it"
        if not lay:
            return False
        i.layout, i.layout_source, i.n_units = lay, src, int(out.shape[CHANNEL_AXIS[lay]])
        self.learn(out, lay, name)
        return True


def probe_layers(model: torch.nn.Module, example: torch.Tensor, layout: "str | LayoutRequest | None" = None
                 ) -> dict[str, LayerInfo]:
    """Every named module that ran on ``example`` (one image suffices), in execution order of completion,
    with its output shape, layout (see the module docstring), neuron count and number of calls."""
    probe = _Probe(model, parse_layout(layout), int(example.shape[0]))
    handles = []
    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(probe.hook(name, mod)))
        with torch.inference_mode():
            result = model(example)
    finally:
        for h in handles:
            h.remove()
    probe.settle()
    for name, out in probe.first_out.items():
        if out is result and probe.infos[name].calls == 1:
            probe.infos[name].model_output = True
    return probe.infos


def check_recordable(infos: dict[str, LayerInfo], layers: list[str], spec: str = "MODEL") -> dict[str, LayerInfo]:
    """The LayerInfo of each requested layer; one-line errors for layers that cannot be recorded faithfully."""
    out = {}
    for name in layers:
        i = infos.get(name)
        if i is None:
            raise ModelError(f"layer {name} never ran in the forward pass",
                             hint=f"pick a layer the model's forward() calls (see `dissect layers {spec}`)")
        if i.calls > 1:
            parent = name.rpartition(".")[0]
            instead = f"record {parent} (its output follows the last call) or" if parent else "record"
            raise UsageError(f"layer {name} ({i.module_type}) runs {i.calls} times in one forward pass, and its calls "
                             f"differ: a hook would see only one of them",
                             hint=f"{instead} a module that runs once (see `dissect layers {spec}`)")
        if i.rows != 1:
            raise UsageError(f"layer {name} ({i.module_type}) does not keep one batch row per image "
                             f"({'%d rows each' % i.rows if i.rows else 'rows of several images mixed'}: windows or "
                             f"heads folded into the batch axis)",
                             hint=f"record the block around it (see `dissect layers {spec}`)")
        if i.layout == "-":
            raise ModelError(f"layer {name} returns a {i.layout_source}, not a 2-, 3- or 4-D tensor",
                             hint=f"record one of its submodules instead (see `dissect layers {spec}`)")
        if not i.layout:
            first, last = _BY_RANK[len(i.raw_shape) + 1]
            raise UsageError(f"cannot tell which axis of layer {name}'s {'x'.join(map(str, i.raw_shape))} output "
                             f"({i.module_type}) holds its channels",
                             hint=f"say it with --layout {name}={first} (channels first) or --layout {name}={last} "
                                  f"(channels last)")
        out[name] = i
    return out


class _Stop(Exception):
    """Raised inside the last needed hook to end the forward pass early."""


class Recorder:
    """Forward hooks on named layers; use as a context manager (hooks removed on exit).

    >>> with Recorder(model, ["layer1", "layer4"], summary="mean") as rec:
    ...     out = rec.run(batch)   # {"layer1": [B, C1], "layer4": [B, C4]}

    ``layout`` is a request (``auto``, ``nhwc``, ``LAYER=LAYOUT,...``), resolved by
    ``probe_layers`` on one image of the first batch, or the ``LayerInfo`` of every layer
    from an earlier ``probe_layers`` (then no extra pass is made).
    """

    def __init__(self, model: torch.nn.Module, layers: list[str], summary: str = "mean",
                 layout: "str | LayoutRequest | dict[str, LayerInfo]" = "auto", keep_raw: bool = False,
                 units: "dict[str, tuple[str, Any, str]] | None" = None, maps: "MapsRequest | None" = None):
        if summary not in SUMMARIES:
            raise UsageError(f"unknown summary {summary!r}", hint=f"use one of {', '.join(SUMMARIES)}")
        self.model, self.summary = model, summary
        # ``units``: entry -> (layer, directions.DirectionSet, summary): a set of directions applied to every
        # position of the layer's output before its summary, returned under the entry's name.
        self.units = dict(units or {})
        self.outputs = list(layers)  # the layers whose neurons are returned
        self.layers = list(dict.fromkeys(list(layers) + [lay for lay, _, _ in self.units.values()]))
        self._by_layer: dict[str, list[str]] = {}
        for entry, (lay, _, _) in self.units.items():
            self._by_layer.setdefault(lay, []).append(entry)
        self.keep_raw = keep_raw
        if isinstance(layout, dict):
            self.request, self.layer_info = LayoutRequest(), dict(layout)
        else:
            self.request, self.layer_info = parse_layout(layout), {}
        self._handles: list[Any] = []
        self._out: dict[str, torch.Tensor] = {}
        self._ran: set[str] = set()
        self._probing = False
        # ``maps``: the layers and entries whose units' top maps are kept (``record --maps``), in ``top``.
        self.maps = maps
        self.top: dict[str, TopMaps] = {}
        self._rows: torch.Tensor | None = None

    def __enter__(self) -> "Recorder":
        modules = dict(self.model.named_modules())
        try:
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
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

    def _hook(self, name: str):
        def hook(_mod, _inp, output):
            if self._probing:
                return
            if name in self._ran:
                raise ModelError(f"layer {name} ran twice in one forward pass",
                                 hint="record a module that runs once (see `dissect layers`)")
            self._ran.add(name)
            info = self.layer_info[name]
            output = main_output(output)
            if not isinstance(output, torch.Tensor) or tuple(output.shape[1:]) != info.raw_shape:
                got = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ModelError(f"layer {name} gave {got} on this batch but {info.raw_shape} when its layout was "
                                 f"decided", hint="use inputs of one size (--input-size)")
            x = output.detach()
            if name in self.outputs:
                self._out[name] = x if self.keep_raw else summarize(x.float(), info.layout, self.summary)
                if self._mapped(name):
                    pm = position_maps(x.float(), info.layout, self.maps.grids[name])
                    self._top(name, pm.shape[1:]).update(self._out[name], pm, self._rows)
            if self._by_layer.get(name):
                for entry in self._by_layer[name]:
                    _, dset, summ = self.units[entry]
                    sink = self._entry_sink(entry, info) if self._mapped(entry) else None
                    self._out[entry] = encode_summary(dset, x, info.layout, summ, sink)
            if len(self._ran) == len(self.layers):
                raise _Stop

        return hook

    def _mapped(self, name: str) -> bool:
        return self.maps is not None and name in self.maps.grids and self._rows is not None

    def _top(self, name: str, shape) -> TopMaps:
        if name not in self.top:
            c, h, w = (int(v) for v in shape)
            self.top[name] = TopMaps(self.maps.k, c, h, w, device=self._rows.device)
        return self.top[name]

    def _entry_sink(self, entry: str, info: LayerInfo):
        """Where a direction entry's per-position units go: its top maps, block by block."""
        grid = self.maps.grids[entry]
        hw = map_size(info.layout, info.raw_shape, grid)
        rows = self._rows

        def sink(lo: int, hi: int, z: torch.Tensor, summary: torch.Tensor) -> None:
            pm = grid_positions(z, info.layout, grid, hw)
            self._top(entry, pm.shape[1:]).update(summary, pm, rows[lo:hi])

        return sink

    def resolve(self, example: torch.Tensor) -> dict[str, LayerInfo]:
        """Decide every layer's layout from one forward pass of ``example`` (if not given)."""
        if not all(n in self.layer_info for n in self.layers):
            self._probing = True  # our own hooks stay quiet during the probe pass
            try:
                infos = probe_layers(self.model, example[:1], self.request)
            finally:
                self._probing = False
            self.layer_info.update(check_recordable(infos, [n for n in self.layers if n not in self.layer_info]))
        return self.layer_info

    def run(self, batch: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Forward ``batch``; returns each layer's (N, C) summary (or raw output with keep_raw) and each unit
        set's (N, K) summary under its entry name. ``rows``: the batch's image rows, which the top maps keep."""
        self.resolve(batch)
        self._rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=batch.device)
        self._out, self._ran = {}, set()
        try:
            with torch.inference_mode():
                self.model(batch)
        except _Stop:
            pass
        missing = [n for n in self.layers if n not in self._ran]
        if missing:
            raise ModelError(
                f"layer {missing[0]} never ran in the forward pass",
                hint="pick a layer the model's forward() calls (see `dissect layers`)",
            )
        out, self._out = self._out, {}
        return out


def list_modules(model: torch.nn.Module, example: torch.Tensor, layout: "str | LayoutRequest | None" = None
                 ) -> list[LayerInfo]:
    """Every named module that ran on ``example``, with its output shape, layout and neuron count."""
    return list(probe_layers(model, example, layout).values())
