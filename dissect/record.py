"""Stage 2: record each neuron's summarised activation on every probe image (activations.h5)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .directions import DirectionsOptions, UnitEntry, is_entry
from .errors import MismatchError, UsageError
from .fingerprint import fingerprint
from .maps import MAP_PARTS, MapsOptions, MapsRequest, grown_maps, with_maps
from .hooks import LayerInfo, Recorder, check_recordable, list_modules, parse_layout, probe_layers, resolve_layers
from .models import PreprocessOverrides, Target, load_target
from .passes import PassOptions, execute, forward_errors
from .probe import Probe, Skipped, image_sizes, kept_rows, open_probe, probe_files, report_skipped, skipped_attr, unchanged_rows
from .runtime import callable_module, note, resolve_device, resolve_precision


def activations_inputs_fingerprint(target: Target, probe_fp: str, precision: str = "fp32") -> str:
    """What every layer of an activations file shares: model, weights, preprocessing, probe, precision."""
    pre = target.preprocess_record()
    extra = [] if precision == "fp32" else [precision]  # fp32 keeps the fingerprints of earlier files
    return fingerprint([A.ACTIVATIONS_FORMAT, A.FORMAT_VERSION, target.fingerprint, pre, probe_fp] + extra)


def layer_fingerprint(inputs_fp: str, layer: str, summary: str, layout: str) -> str:
    return fingerprint([inputs_fp, layer, summary, layout])


def existing_layers(path: str | os.PathLike, inputs_fp: str, summary: str, layout: str,
                    infos: dict[str, LayerInfo] | None = None,
                    units: "dict[str, UnitEntry] | None" = None, differs=None) -> tuple[list[str], bool]:
    """Layers of an existing activations file that can be reused, and whether the file exists.

    Raises MismatchError when the file holds activations of other inputs (naming what differs when ``differs``,
    a function of the file's attributes, says), or a layer whose
    recorded layout is not the one ``infos`` (this version's decision) gives it: files of
    dissect 0.1 took channels-last outputs (Swin, ConvNeXt blocks) as channels first.
    """
    attrs = A.peek_attrs(path, A.ACTIVATIONS_FORMAT)
    if attrs is None:
        if Path(path).exists():
            A.read_activations(path)  # raises the precise reason
        return [], False
    if attrs.get("inputs_fingerprint") != inputs_fp:
        what = "; ".join(differs(attrs)) if differs is not None else ""
        raise MismatchError(
            f"{path} holds activations made with other inputs: "
            + (what or f"another model, weights, preprocessing or probe ({attrs.get('model')})"),
            hint="write to another -o file, or delete it to start over",
        )
    reusable = []
    for name, layer in A.read_header(path, A.ACTIVATIONS_FORMAT, need_layers=False).layers.items():
        la = layer.attrs
        _check_layout(path, name, la, layer.shape[1], (infos or {}).get(name))
        if name in (units or {}):
            _check_unit_entry(path, name, la, units[name])
        if la.get("summary_requested", la.get("summary")) == summary and (layout == "auto" or la.get("layout_requested", "auto") == layout):
            reusable.append(name)
        else:
            raise MismatchError(
                f"{path} already holds layer {name} recorded with summary {la.get('summary')}",
                hint="write other summaries to another -o file",
            )
    return reusable, True


def _check_unit_entry(path, name: str, la, want: "UnitEntry") -> None:
    """Refuse a stored direction entry made from another set, summary or dtype than the one asked for."""
    if la.get("directions_fingerprint") != want.set.fingerprint:
        raise MismatchError(
            f"{path} already holds {name} made from other directions ({la.get('directions_spec', 'neurons')})",
            hint=f"name this set apart (--directions {want.layer}@OTHER={want.set.spec}) or write another -o file")
    for key, value in (("directions_summary", want.summary), ("dtype", want.dtype)):
        if la.get(key, "float32" if key == "dtype" else None) != value:
            raise MismatchError(f"{path} already holds {name} recorded with {key.replace('directions_', '')} "
                                f"{la.get(key)}, not {value}",
                                hint=f"name this one apart ({want.layer}@OTHER=SPEC) or write another -o file")


def _check_layout(path, name: str, la, units: int, now: LayerInfo | None) -> None:
    """Refuse a stored layer whose layout is not the one this version decides for it."""
    if now is not None and la.get("layout") != now.layout:
        raise MismatchError(
            f"{path} holds layer {name} recorded as {la.get('layout')} ({units} units), but its output is "
            f"{now.layout} ({now.n_units} units, decided by {now.layout_source}); it was recorded by an older "
            f"dissect that took channels-last outputs as channels first",
            hint="write to another -o file, or delete it to record again",
        )


def use_channels_last(module, device, channels_last: bool | None) -> bool:
    """channels-last memory format: asked for, or by default for conv nets on CUDA (tensor cores like NHWC)."""
    import torch

    if channels_last is not None:
        return channels_last
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


class ActivationRecorder:
    """A consumer of ``passes.image_pass``: each layer's summarised activations into [N, C] arrays.

    Use as a context manager (the forward hooks live inside it).
    """

    def __init__(self, target: Target, layers: list[str], n_images: int, summary: str = "mean", layout: str = "auto",
                 device=None, precision: str = "fp32", channels_last: bool | None = None, batch_size: int = 64,
                 plan: "RecordPlan | None" = None):
        import torch

        # ``layers``: the layers and direction entries (``LAYER@NAME``, described in the plan's ``units``) to record;
        # the plan (``plan_record``) also says their layouts, the inputs' fingerprint, the file to add to, and where
        # layers too large for memory are spilled.
        infos = plan.infos if plan is not None else None
        self.units = {n: u for n, u in (plan.units if plan is not None else {}).items() if n in layers}
        self.target, self.layers, self.n_images = target, list(layers), n_images
        self.spill_dir = plan.spill_dir if plan is not None else None
        self._spills: list[A.RowSpill] = []
        # what write() records and adds to
        self.inputs_fp, self.keep = (plan.inputs_fp, plan.exists) if plan is not None else ("", False)
        self.batch_size = batch_size
        self.summary, self.layout, self.precision = summary, str(parse_layout(layout)), precision
        self.device = device if device is not None else torch.device("cpu")
        self.transform = target.transform
        target.module.to(self.device)
        self.channels_last = use_channels_last(target.module, self.device, channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        if self.channels_last:
            target.module.to(memory_format=torch.channels_last)
        # The layouts decided by plan_record, or decided on one image of the first batch.
        neurons = [n for n in self.layers if n not in self.units]
        hooked = list(dict.fromkeys(neurons + [u.layer for u in self.units.values()]))
        given = {n: infos[n] for n in hooked} if infos and all(n in infos for n in hooked) else None
        self.maps = plan.maps if plan is not None else None
        self.recorder = Recorder(target.module, neurons, summary=summary, layout=given or layout,
                                 units={n: (u.layer, u.set, u.summary) for n, u in self.units.items()}, maps=self.maps)
        for u in self.units.values():
            u.set.module.to(self.device)
        self.data: dict[str, Any] = {}   # name -> [N, C] array, or an A.RowSpill for layers too large for memory

    def __enter__(self) -> "ActivationRecorder":
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.recorder.__exit__(*exc)
        for spill in self._spills:
            spill.close()
        self._spills.clear()

    def _store(self, name: str, width: int):
        """The [N, width] float32 rows of ``name``: in memory, or spilled to a temporary HDF5 file beside the
        output when larger than SPILL_BYTES (an SAE's latents: 49,152 x 50,000 images is 9.8 GB)."""
        if self.n_images * width * 4 > SPILL_BYTES:
            spill = A.RowSpill(self.n_images, width, self.spill_dir)
            self._spills.append(spill)
            return spill
        return np.zeros((self.n_images, width), dtype=np.float32)

    def __call__(self, idx, batch) -> None:
        from .runtime import autocast

        x = batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with forward_errors(self.target.spec, x), autocast(self.device, self.precision):
            outputs = self.recorder.run(x, rows=idx if self.maps is not None else None)
        rows = idx.numpy()
        for name, val in outputs.items():
            arr = val.float().cpu().numpy()
            if name in self.units:
                _check_latents(name, arr, self.units[name].dtype)
            if name not in self.data:
                self.data[name] = self._store(name, arr.shape[1])
            self.data[name][rows] = arr

    def state(self, rows) -> dict[str, np.ndarray]:
        """The rows' activations of every layer, for a checkpoint (``passes.image_pass``), and the top maps so far
        (``@maps|NAME|PART``: a resumed pass merges them, an image held twice counting once)."""
        out = {name: arr[rows] for name, arr in self.data.items()}
        for name, top in self.recorder.top.items():
            out.update({f"@maps|{name}|{part}": a for part, a in top.arrays().items()})
        return out

    def state_names(self) -> list[str]:
        mapped = [f"@maps|{n}|{part}" for n in (self.maps.grids if self.maps else {}) for part in MAP_PARTS]
        return list(self.layers) + mapped

    def info_state(self) -> dict[str, Any]:
        return {n: {"module_type": i.module_type, "raw_shape": list(i.raw_shape), "layout": i.layout, "n_units": i.n_units,
                    "layout_source": i.layout_source} for n, i in self.recorder.layer_info.items()}

    def restore(self, rows, state: dict[str, np.ndarray], info_state: dict[str, Any] | None = None) -> None:
        self._restore_maps({k: v for k, v in state.items() if k.startswith("@maps|")})
        state = {k: v for k, v in state.items() if not k.startswith("@maps|")}
        for name, arr in state.items():
            width = (info_state or {}).get(name, {}).get("n_units", arr.shape[1])
            if arr.shape[1] != width:
                raise ValueError(f"layer {name} has {arr.shape[1]} columns, its layout says {width} units")
            if name not in self.data:
                self.data[name] = self._store(name, arr.shape[1])
            self.data[name][rows] = arr
        for name, i in (info_state or {}).items():
            self.recorder.layer_info.setdefault(name, LayerInfo(name, i["module_type"], tuple(i["raw_shape"]), i["layout"],
                                                          int(i["n_units"]), layout_source=i.get("layout_source", "")))

    def _restore_maps(self, arrays: dict[str, np.ndarray]) -> None:
        """Merge a checkpoint's top maps into the pass's (ValueError when they do not fit: a damaged chunk)."""
        from .maps import TopMaps

        names = {k.split("|")[1] for k in arrays}
        for name in names:
            if self.maps is None or name not in self.maps.grids:
                raise ValueError(f"maps of {name}, which this pass does not keep")
            parts = {p: arrays.get(f"@maps|{name}|{p}") for p in MAP_PARTS}
            if any(v is None for v in parts.values()) or not np.isfinite(parts["values"]).all():
                raise ValueError(f"the maps of {name} are incomplete or not finite")
            top = TopMaps.from_arrays(parts, device=self.device)
            if top.k != self.maps.k:
                raise ValueError(f"maps of {name} keep {top.k}, not {self.maps.k}")
            if name in self.recorder.top:
                self.recorder.top[name].merge(top)
            else:
                self.recorder.top[name] = top

    def maps_for(self, rows: list[int]) -> dict[str, dict[str, Any]]:
        """The top maps to write, their probe positions turned into rows of the file (``rows``: the file's
        positions in order)."""
        row_of = np.full(self.n_images, -1, dtype=np.int64)
        row_of[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows))
        out = {}
        for name, top in self.recorder.top.items():
            a = top.arrays()
            pos = a["rows"]
            a["rows"] = np.where(pos >= 0, row_of[np.clip(pos, 0, None)], -1)
            grid = self.maps.grids.get(name)
            a["attrs"] = {"k": self.maps.k, "grid_prefix": grid.prefix if grid else 0,
                          "summary": self.units[name].summary if name in self.units else self.summary}
            out[name] = a
        return out

    @classmethod
    def for_plan(cls, plan: "RecordPlan", layers: list[str], n_images: int, summary: str, layout: str, device,
                 channels_last: bool | None, batch_size: int) -> "ActivationRecorder":
        """The recorder of ``layers`` of a ``plan_record`` plan (its layouts, fingerprint and file to add to)."""
        check_input_memory(plan.target, batch_size, device)
        return cls(plan.target, layers, n_images, summary, layout, device, plan.precision, channels_last, batch_size, plan)

    def write(self, out, probe: Probe, skipped: list[Skipped] = (), positions: range | None = None,
              extra_attrs: dict[str, Any] | None = None) -> Path:
        """Check the activations and write (or add) the layers to ``out``; ``skipped`` images are listed in the file."""
        infos: dict[str, LayerInfo] = self.recorder.layer_info
        inputs_fp, keep, batch_size = self.inputs_fp, self.keep, self.batch_size
        rows = kept_rows(positions if positions is not None else len(probe), list(skipped))
        ids = [probe.ids[i] for i in rows]
        if keep:
            old = A.read_activations(out, data=False)
            if old.ids != ids:
                raise MismatchError(
                    f"{out} was recorded on other readable images of this probe ({len(old.ids)} then, {len(ids)} now)",
                    hint="write to a new -o file, or delete it to record all layers again",
                )
        # The order asked for, not execution order; spilled layers are copied over in row blocks.
        data = {name: (self.data[name].view(rows) if isinstance(self.data[name], A.RowSpill) else self.data[name][rows])
                for name in self.layers}
        for name, arr in data.items():
            # A spilled layer's non-finite units were noted as its batches were written.
            bad = (arr.nonfinite_units() if isinstance(arr, A.RowSpillView)
                   else np.unique(np.nonzero(~np.isfinite(arr))[1]).tolist())
            if bad:
                units = bad[:10]
                hint = "check the weights" if self.precision == "fp32" else f"check the weights, or try --precision fp32 (it ran in {self.precision})"
                raise UsageError(f"layer {name} produced NaN or Inf activations (units {units})", hint=hint)
        layer_attrs = {
            name: {
                "summary": self.summary if infos[name].layout != "nc" else "identity",
                "layout": infos[name].layout,
                "layout_requested": self.layout,
                "layout_source": infos[name].layout_source,
                "raw_shape": list(infos[name].raw_shape),
                "module_type": infos[name].module_type,
                "model_output": bool(infos[name].model_output),
                "fingerprint": layer_fingerprint(inputs_fp, name, self.summary, self.layout),
                # A file's layers all share one summary request; "identity" marks 2-D layers.
                "summary_requested": self.summary,
            }
            for name in data if name not in self.units
        }
        for name, u in self.units.items():
            li = infos[u.layer]
            layer_attrs[name] = {
                "summary": u.summary if li.layout != "nc" else "identity",
                "layout": li.layout, "layout_requested": self.layout, "layout_source": li.layout_source,
                "raw_shape": list(li.raw_shape), "module_type": f"{u.set.kind} on {u.layer} ({li.module_type})",
                "fingerprint": layer_fingerprint(inputs_fp, name, u.summary, self.layout) + u.set.fingerprint[:16],
                "summary_requested": self.summary, "directions_layer": u.layer, "directions_summary": u.summary,
                "dtype": u.dtype,
                **u.set.attrs(),
            }
        dtypes = {name: u.dtype for name, u in self.units.items()}
        attrs = self.target.attrs()
        attrs.update(
            inputs_fingerprint=inputs_fp,
            probe=probe.describe(),
            probe_fingerprint=probe.fingerprint,
            precision=self.precision,
            skipped=skipped_attr(list(skipped)),
            provenance=A.provenance(stage="record", batch_size=batch_size, device=str(self.device), precision=self.precision,
                                    channels_last=self.channels_last, n_skipped=len(skipped)),
            **(extra_attrs or {}),
        )
        A.grows(out)  # the sink replaces the version it reused (a fused pass opens no command of its own)
        A.write_activations(out, ids, data, layer_attrs, attrs, keep_from=out if keep else None, sizes=image_sizes(probe, rows),
                            dtypes=dtypes, maps=self.maps_for(list(rows)) if self.maps is not None else None)
        report_skipped(list(skipped), len(positions) if positions is not None else len(probe), out)
        note(f"wrote {out}: {', '.join(f'{n} ({data[n].shape[1]} units)' for n in data)} over {len(ids)} images")
        return Path(out)


@dataclass
class RecordPlan:
    """What ``record`` will do: the layers asked for, those still to record, and the file's state."""

    target: Target
    layers: list[str]
    todo: list[str]
    have: list[str]
    exists: bool
    inputs_fp: str
    precision: str
    infos: dict[str, LayerInfo] = field(default_factory=dict)   # each layer's shape, layout and unit count
    units: dict[str, UnitEntry] = field(default_factory=dict)   # direction entries (LAYER@NAME) among the layers
    spill_dir: Path | None = None                               # where layers too large for memory are spilled
    maps: "MapsRequest | None" = None                           # record --maps: whose top maps to keep


def example_input(target: Target, device=None):
    """One input of the size the target's preprocessing makes (zeros; only shapes matter)."""
    import torch

    if target.preprocess is not None:
        size = target.preprocess.input_size
        return torch.zeros(1, 3, size, size, device=device)
    from PIL import Image

    return target.transform(Image.new("RGB", (256, 256), (128, 128, 128))).unsqueeze(0).to(device)


#: A forward pass holds at least this many times its input in activations (a ResNet's stem alone makes ~5x).
FORWARD_MEMORY_FACTOR = 8


def check_input_memory(target: Target, batch_size: int, device=None) -> None:
    """Refuse, before any work, an input size whose batches cannot fit in memory (``--input-size 20000``)."""
    from .runtime import available_memory, human_bytes

    if target.preprocess is None:
        return
    size = target.preprocess.input_size
    per_image = 3 * size * size * 4
    need = FORWARD_MEMORY_FACTOR * per_image * batch_size
    free = available_memory(device)
    if free is None or need <= free:
        return
    fits = free // (FORWARD_MEMORY_FACTOR * per_image)
    where = "GPU memory" if getattr(device, "type", str(device)) == "cuda" else "memory"
    raise UsageError(
        f"--input-size {size}: {'one image' if batch_size == 1 else f'a batch of {batch_size} images'} is {human_bytes(per_image * batch_size)} of input alone "
        f"and the forward pass needs several times that, but {human_bytes(free)} of {where} is free",
        hint=(f"use --batch-size {fits} or less" if fits >= 1 else "use a smaller --input-size")
        + f" (the model's own input size is in `dissect layers {target.spec}`)")


def layer_infos(target: Target, layers: list[str], layout: str = "auto", device=None) -> dict[str, LayerInfo]:
    """Shapes, layouts and unit counts of ``layers`` from one forward pass; one-line errors for layers that
    cannot be recorded (undecidable layout, a module that runs several times)."""
    check_input_memory(target, 1, device)
    x = example_input(target, device)
    with forward_errors(target.spec, x):
        infos = probe_layers(target.module, x, layout)
    return check_recordable(infos, layers, target.spec)


def plan_units(target: Target, layers: list[str], directions, summary: str, layout: str, device
               ) -> tuple[list[str], dict[str, LayerInfo], dict[str, UnitEntry]]:
    """The layers to record (a direction set's layer is recorded with it), their LayerInfo, and each direction
    entry (``LAYER@NAME``) loaded and checked against its layer's width."""
    from .directions import load

    opts = DirectionsOptions.of(directions)
    requests = opts.requests()
    layers = resolve_layers(target.module, list(layers) + [r.layer for r in requests if r.layer not in layers], target.spec)
    infos = layer_infos(target, layers, layout, device)
    units = {}
    for r in requests:
        ds = load(r.spec, channels=infos[r.layer].n_units)
        units[r.entry] = UnitEntry(r.layer, ds, ds.summary_for(opts.summary, summary), opts.dtype)
        if units[r.entry].summary == "cls" and infos[r.layer].layout != "nlc":
            raise UsageError(f"--directions-summary cls needs token outputs, but {r.layer} is {infos[r.layer].layout}",
                             hint="use --directions-summary max or mean")
    return layers, infos, units


def plan_record(probe: Probe, target: Target, layers: list[str], out, summary: str, layout: str, device, precision: str,
                fresh: bool = False, directions=None) -> RecordPlan:
    """What recording ``layers`` (and ``directions``, a ``directions.DirectionsOptions``) into ``out`` takes: their
    layouts, the layers ``out`` already holds and may keep (none with ``fresh``: the file is written anew), the
    fingerprint of the inputs."""
    layers, infos, units = plan_units(target, layers, directions, summary, layout, device)
    precision = resolve_precision(precision, device, "target")
    inputs_fp = activations_inputs_fingerprint(target, probe.fingerprint, precision)
    have, exists = ([], False) if fresh else existing_layers(
        out, inputs_fp, summary, str(parse_layout(layout)), infos, units,
        differs=lambda attrs: what_differs(attrs, target, precision, probe))
    names = layers + list(units)
    todo = [n for n in names if n not in have]
    return RecordPlan(target, names, todo, have, exists, inputs_fp, precision, infos, units, Path(out).parent)


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
    options: PassOptions | None = None,
    directions: "DirectionsOptions | list[str] | None" = None,
    **settings: Any,
) -> Path:
    """Record ``layers`` of the target model on every probe image into ``out``.

    ``directions`` (``directions.DirectionsOptions`` or ``LAYER=SPEC`` items): sets of
    directions or SAE latents, each recorded as its own entry ``LAYER@NAME`` beside its
    layer (see :mod:`dissect.directions`).

    Into an existing file made from the same model, preprocessing, probe and precision,
    only the layers it lacks are recorded (one forward pass for all of them, stopped
    after the last one needed); over a probe that has changed since, only the new or
    changed images. ``options`` (``passes.PassOptions``, or its fields as keyword
    arguments) say how the pass runs; ``precision``: see ``runtime.resolve_precision``.
    """
    from .shards import distributed_world, plan_pass

    maps_opts = MapsOptions.of(None, **MapsOptions.take(settings))
    opts = PassOptions.of(options, **settings)
    A.grows(out)  # an activations file grows: its previous version is read for reuse, then replaced
    out = A.check_output_path(out, probe_files(probe))
    if not isinstance(probe, Probe):
        probe = open_probe(probe)
    A.refuse_clobber(out)  # now that the probe's folders and lists are known
    dev = resolve_device(opts.device)
    target = model if isinstance(model, Target) else load_target(model, weights, model_args, overrides, dev, layers=layers)
    sharded = opts.shard is not None or distributed_world() is not None
    directions = DirectionsOptions.of(directions)
    grown = None if sharded else _grown_probe(out, probe, target, layers, summary, layout, dev, opts.precision,
                                              bool(directions.items), maps_opts)
    if grown is not None:
        plan, reused = grown.plan, grown.reused
        note(f"{out}: the probe changed; " + (f"{grown.anew}, so its maps need every image: recording all {len(probe)}"
                                              if grown.anew else f"reusing {len(reused)} unchanged images, recording "
                                              f"{len(probe) - len(reused)} new or changed")
             + f" for {', '.join(plan.layers)}")
    else:
        plan, reused = plan_record(probe, target, layers, out, summary, layout, dev, opts.precision,
                                   directions=directions), {}
        if maps_opts.maps:
            plan = with_maps(plan, maps_opts, out, len(probe))
        if not plan.todo:
            note(f"{out} already holds {', '.join(plan.layers)}" + (" with their maps" if maps_opts.maps else "")
                 + "; nothing to record")
            return Path(out)
        if plan.have:
            note(f"{out} already holds {', '.join(plan.have)}; recording {', '.join(plan.todo)}")
        if sharded and plan.exists:
            raise UsageError(f"{out} exists: sharded passes write new files", hint="write to a new -o file")
    pp = plan_pass({"activations": out}, len(probe), opts.shard, [plan.inputs_fp, plan.todo, summary, layout]
                   + ([f"maps {plan.maps.k}"] if plan.maps else []),
                   opts.chunk, dev, encode=[i for i in range(len(probe)) if i not in reused] if reused else None)
    with ActivationRecorder.for_plan(plan, plan.todo, len(probe), summary, layout, dev, opts.channels_last,
                                     opts.batch_size) as rec:
        if grown is not None:
            grown.restore_into(rec)
        made = execute(probe, {"activations": rec}, pp, opts, f"record {len(plan.todo)} layer(s)", dev)
    return made["activations"]


@dataclass
class _Grown:
    plan: RecordPlan
    reused: dict[int, int]          # probe position -> row of the old file
    old: A.Activations
    maps: dict[str, np.ndarray] = field(default_factory=dict)   # the old top maps, "@maps|NAME|PART", rows as positions
    anew: str = ""                                              # why every image is recorded again (reused is empty)

    def restore_into(self, rec: ActivationRecorder) -> None:
        """Put the old file's rows of the unchanged images (and its layers' shapes, and its top maps) into ``rec``."""
        rec._restore_maps(self.maps)
        pos = np.fromiter(self.reused, dtype=np.int64)
        old_rows = np.fromiter(self.reused.values(), dtype=np.int64)
        rec.restore(pos, {name: self.old.layers[name][old_rows] for name in self.plan.layers},
                    {n: {"module_type": a.get("module_type", ""), "raw_shape": list(a.get("raw_shape", [])),
                         "layout": a.get("layout", "nc"), "n_units": int(self.old.layers[n].shape[1]),
                         "layout_source": a.get("layout_source", "")}
                     for n, a in self.old.layer_attrs.items()})


def _grown_probe(out, probe: Probe, target: Target, layers, summary, layout, dev, precision,
                 directions: bool = False, maps: MapsOptions | None = None) -> _Grown | None:
    """An existing file of the same model and precision over a probe that has since changed (images added or removed).

    Its layers are kept and recorded for the new images only. Asking for layers it does
    not hold at the same time is refused (record those after, in a second call). Files
    with direction entries are not grown (they are recorded anew into another file);
    nor are top maps that the new images alone cannot complete (``maps.grown_maps``).
    """
    attrs = A.peek_attrs(out, A.ACTIVATIONS_FORMAT)
    if attrs is None or attrs.get("shard") or directions or any(is_entry(n) for n in attrs.get("_layers", [])):
        return None
    precision = resolve_precision(precision, dev, "target")
    if attrs.get("inputs_fingerprint") == activations_inputs_fingerprint(target, probe.fingerprint, precision):
        return None  # same probe: the usual path (add layers or nothing to do)
    same_model = (attrs.get("model_fingerprint") == target.fingerprint and attrs.get("precision", "fp32") == precision
                  and _json(attrs.get("preprocess")) == _json(target.preprocess_record()))
    if not same_model:
        return None  # existing_layers refuses it with the usual message
    old_layers = list(attrs.get("_layers", []))
    asked = resolve_layers(target.module, layers, target.spec)
    extra = [n for n in asked if n not in old_layers]
    if extra:
        raise MismatchError(
            f"{out} was recorded on a probe that has changed since, and does not hold {', '.join(extra)}",
            hint=f"run record once with --layers {','.join(old_layers)} to update it for the new images, then add the new layers",
        )
    old = A.read_activations(out)
    infos = layer_infos(target, old_layers, layout, dev)
    for name in old_layers:
        la = old.layer_attrs[name]
        _check_layout(out, name, la, old.layers[name].shape[1], infos[name])
        if la.get("summary_requested", la.get("summary")) != summary or (layout != "auto" and la.get("layout_requested", "auto") != layout):
            return None
    reused = unchanged_rows(probe, old.ids, A.read_sizes(out))
    if not reused:
        return None
    inputs_fp = activations_inputs_fingerprint(target, probe.fingerprint, precision)
    plan = RecordPlan(target, old_layers, old_layers, [], False, inputs_fp, precision, infos)
    return grown_maps(out, _Grown(plan, reused, old), maps or MapsOptions(), len(probe))


def what_differs(attrs: dict[str, Any], target: Target, precision: str, probe: Probe) -> list[str]:
    """What an activations file's attributes record that this model, preprocessing, precision and probe do not:
    one phrase per difference (stored -> asked)."""
    import json

    out = []
    for key, label, want in (("model", "model", target.spec), ("weights", "weights", target.weights)):
        if str(attrs.get(key, "")) != str(want):
            out.append(f"{label} {attrs.get(key, '')!s} -> {want}")
    if _json(attrs.get("model_args", "{}")) != _json(target.model_args or {}):
        out.append(f"--model-arg {_json(attrs.get('model_args', '{}'))} -> {_json(target.model_args or {})}")
    if not out and attrs.get("model_fingerprint") != target.fingerprint:
        out.append(f"the contents of the weights {target.weights} (changed since the file was recorded)")
    stored, asked = _loads_dict(attrs.get("preprocess")), target.preprocess_record()
    changed = [k for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k)]
    if changed:
        out.append("preprocessing " + ", ".join(f"{k} {json.dumps(stored.get(k))} -> {json.dumps(asked.get(k))}"
                                                for k in changed))
    if attrs.get("precision", "fp32") != precision:
        out.append(f"--precision {attrs.get('precision', 'fp32')} -> {precision}")
    if attrs.get("probe_fingerprint") not in (None, probe.fingerprint):
        n_old = _loads_dict(attrs.get("probe")).get("n_images", "?")
        out.append(f"the probe ({n_old} images recorded, {len(probe)} now)")
    return out


def _loads_dict(value) -> dict[str, Any]:
    import json

    try:
        value = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json(value) -> str:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True, default=str)


def list_layers(
    model: str,
    weights: str | None = "none",
    model_args: dict[str, Any] | None = None,
    overrides: PreprocessOverrides | None = None,
    device: str = "cpu",
    layout: str = "auto",
    directions=None,
) -> tuple[Target, list[LayerInfo]]:
    """Every named module of ``model`` with its output shape, from one dummy forward pass; each set of
    ``directions`` follows its layer as ``LAYER@NAME`` with its unit count."""
    dev = resolve_device(device)
    target = load_target(model, weights, model_args, overrides, dev)
    example = example_input(target, dev)
    with forward_errors(target.spec, example):
        infos = list_modules(target.module, example, layout)
    directions = DirectionsOptions.of(directions)
    if not directions.items:
        return target, infos
    _, checked, units = plan_units(target, [], directions, "mean", layout, dev)
    out = []
    for i in infos:
        out.append(i)
        for entry, u in units.items():
            if u.layer == i.name:
                li = checked[u.layer]
                out.append(LayerInfo(entry, f"{u.set.kind} ({u.summary})", li.raw_shape, li.layout, u.set.k, 1,
                                     f"{u.set.kind} {u.set.spec}"))
    return target, out


#: Layers whose [N, C] float32 rows exceed this many bytes are spilled to disk while recording.
SPILL_BYTES = 256 << 20
#: float16 holds magnitudes up to this.
FLOAT16_MAX = 65504.0


def _check_latents(name: str, arr: np.ndarray, dtype: str) -> None:
    """A direction entry's batch: finite, and within float16's range when stored as float16."""
    if not np.isfinite(arr).all():
        units = np.unique(np.nonzero(~np.isfinite(arr))[1])[:10].tolist()
        raise UsageError(f"{name} produced NaN or Inf (units {units})", hint="check the directions' weights")
    if dtype == "float16" and arr.size and float(np.abs(arr).max()) > FLOAT16_MAX:
        raise UsageError(f"{name} reaches {float(np.abs(arr).max()):.4g}, beyond float16's range",
                         hint="record it with --directions-dtype float32")




# `dissect.record(...)` runs the stage even once this module is bound to that name (runtime.callable_module).
callable_module(__name__, "record")
