"""``dissect evaluate ablate``: does the network use what a unit's label says? Linear Explanations' ablation score.

For every unit of every labels, composed or explanations file (ours or another method's), the
network runs on the scoring images with the unit moved to its validation mean (the baseline, which
removes what it carries) and to what its label predicts (mapped to its scale), and the score is the
share of the baseline's damage to the loss that the prediction undoes (:mod:`.ablation`).

Images: the held-out ones of a file labelled with ``--holdout`` (else all, with a warning, as
``simulate`` does), split by id hash into a validation part (``validation``: the mapping's mean,
standard deviation and correlation) and the scoring part. The network's prefix runs once per batch
of images; at the unit's module the batch is widened so that each copy carries another edit (the
unedited output, then each unit's baseline and prediction), and only the rest of the network runs
on the copies. Where the module's output is not the only way forward (a convolution inside a
residual block), the whole input is repeated instead (said once).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as A
from ..errors import UsageError
from ..passes import PassOptions
from ..runtime import note, resolve_device
from ..settings import Compute, Settings, no_other_fields
from .ablation import TEMPERATURE, correlations, edit, losses, map_norm, score

LOSSES = ("auto", "ce", "kl")
COLUMNS = ("labels", "method", "layer", "unit", "label", "ablation", "correlation", "damage_base", "damage_pred",
           "n_images", "held_out", "loss", "reason", "published_ablation")
#: Added to --seed for the validation split: never the seed of a labels file's holdout (the same id hash).
VALIDATION_SEED_OFFSET = 1_000_003
#: The ablation columns of Linear Explanations' published result files, the one their paper reports first.
PUBLISHED = ("sim ablation(optim)", "sim ablation(norm)")


@dataclass(frozen=True)
class AblateSettings(Settings):
    """``temperature``: the logits' calibration temperature; ``validation``: the share of the scoring images (by id
    hash, ``seed``) whose statistics map predictions to each unit's scale; ``loss``: ``ce`` (the true class: an
    ImageFolder probe's folder, in sorted order, as torchvision numbers them), ``kl`` (the change of the output
    distribution) or ``auto`` (ce where the probe's class folders are as many as the outputs); ``samples``: copies
    per forward pass of the network's tail."""

    temperature: float = TEMPERATURE
    validation: float = 0.2
    seed: int = 0
    loss: str = "auto"
    samples: int = 256

    def check(self) -> None:
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be above 0, got {self.temperature}")
        if not 0 < self.validation < 1:
            raise UsageError(f"--validation must be in (0, 1), got {self.validation}")
        if self.loss not in LOSSES:
            raise UsageError(f"--loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.samples < 3:
            raise UsageError(f"--samples must be at least 3, got {self.samples}")


@dataclass
class Ablation:
    rows: dict[str, list]
    summary: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)


def _classes(ids: list[str], n_outputs: int, loss: str) -> tuple[str, dict[str, int] | None]:
    """(the loss, each id's class for ce): the class folders of an ImageFolder probe in sorted order."""
    folders = [str(Path(i).parent) for i in ids]
    flat = any(f in ("", ".") for f in folders)
    names = sorted(set(folders))
    fits = not flat and len(names) == n_outputs
    if loss == "kl" or (loss == "auto" and not fits):
        return "kl", None
    if flat or len(names) != n_outputs:
        raise UsageError(f"--loss ce needs an ImageFolder probe with one class folder per output of the model "
                         f"({n_outputs}, in sorted order as torchvision numbers them); this one has "
                         f"{'images outside class folders' if flat else f'{len(names)} folders'}",
                         hint="use --loss kl (the change of the output distribution), which needs no classes")
    index = {f: k for k, f in enumerate(names)}
    return "ce", {i: index[f] for i, f in zip(ids, folders)}


@dataclass
class _Unit:
    """What moves a layer's or entry's units in the network: the module, its layout and (directions) the decoder."""

    module: str
    layout: str
    decoder: Any = None


def _unit_site(name: str, attrs: dict[str, Any], with_decoder: bool = False) -> _Unit:
    """Where the units of layer or entry ``name`` move (``with_decoder``: an entry's decoder loaded too)."""
    from ..directions import decoder

    layout = str(attrs.get("layout", "nc"))
    if "directions_layer" in attrs:
        dec = decoder(str(attrs.get("directions_kind", "")), str(attrs.get("directions_spec", "")),
                      attrs.get("directions_fingerprint")) if with_decoder else None
        return _Unit(str(attrs["directions_layer"]), layout, dec)
    return _Unit(name, layout)


@dataclass
class _Switch:
    enabled: bool = True


class _Tail:
    """A consumer of ``passes.image_pass``: for each batch of scoring images, the damage each unit's baseline and
    prediction do to the loss (the prefix run once, the output widened at the unit's module)."""

    def __init__(self, target, site: _Unit, units: list[int], deltas, classes: list[int] | None, loss: str,
                 settings: AblateSettings, dev):
        """``deltas``: (baseline, prediction) [scoring rows, units], each unit's move on each image; ``classes``: each
        scoring row's class (ce), or None (kl); ``row_of`` (set after): probe position -> scoring row."""
        import torch

        self.transform, self.model, self.site = target.transform, target.module, site
        self.units, self.deltas, self.classes, self.loss = units, deltas, classes, loss   # deltas: (base, pred) [n, U]
        self.settings, self.dev = settings, dev
        self.damage = torch.zeros((2, len(units)), dtype=torch.float64)
        self.expand, self.plan, self.row_of = True, None, {}
        self.n, self.calls = 0, 0
        self.hooked = _Switch()

    def _hook(self, module, inputs, out):
        import torch

        from ..hooks import main_output, with_main_output

        if not self.hooked.enabled:
            return None
        self.calls += 1
        whole, out = out, main_output(out)
        if not isinstance(out, torch.Tensor):
            raise UsageError(f"module {self.site.module} returns {type(out).__name__}, not a tensor, so its units "
                             "cannot be moved", hint="ablate a layer whose output is one tensor")
        rows, chans, deltas, copies = self.plan
        if self.expand:             # a new tensor of the copies: edited in place
            if whole is not out and any(isinstance(o, torch.Tensor) for o in whole[1:]):
                # copies of one tensor of several (a Swin stage's hidden states before and after merging): the
                # first forward's check falls back to copies of the input
                raise ValueError(f"{self.site.module} returns several tensors")
            return with_main_output(whole, edit(out.repeat_interleave(copies, dim=0), self.site.layout, rows, chans,
                                                deltas, self.site.decoder, inplace=True))
        return with_main_output(whole, edit(out, self.site.layout, rows, chans, deltas, self.site.decoder))

    def _forward(self, x, copies: int):
        self.calls = 0
        y = self.model(x if self.expand else x.repeat_interleave(copies, dim=0))
        if self.calls != 1:
            raise UsageError(f"module {self.site.module} ran {self.calls} times in one forward pass, so its units "
                             "cannot be moved once per image", hint="ablate a module that runs once per image")
        return y

    def _run(self, x, copies: int):
        import torch

        if self.n == 0 and self.expand:
            # the first forward decides: widening the batch at the module must leave the unedited copy what a plain
            # forward gives (a skip connection around the module breaks it, by an error or by broadcasting)
            try:
                y = self._forward(x, copies)
                ok = self._check(y, x, copies)
            except (RuntimeError, AssertionError, ValueError) as e:
                if "out of memory" in str(e):
                    raise
                ok = False
            if not ok:
                self.expand = False
                note(f"{self.site.module}: its output is not the only path to the model's output; running the whole "
                     "network on each copy")
        if self.n > 0 or not self.expand:
            y = self._forward(x, copies)
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0] * copies:
            raise UsageError("the model's output is not one [N, classes] tensor, so no loss can be measured",
                             hint="ablate through a classifier (its logits), or wrap the model as file.py:function")
        return y

    def _check(self, y, x, copies: int) -> bool:
        import torch

        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0] * copies:
            return False
        self.hooked.enabled = False
        try:
            plain = self.model(x)
        finally:
            self.hooked.enabled = True
        return bool(torch.allclose(y.view(x.shape[0], copies, -1)[:, 0].float(), plain.float(), rtol=1e-4, atol=1e-5))

    def __call__(self, idx, batch) -> None:
        import torch

        rows = [self.row_of[int(i)] for i in idx]
        x_all = batch.to(self.dev)
        # as many units per forward as fit (the prefix runs once per image and group), then as many images
        group = max(1, min(len(self.units), (self.settings.samples - 1) // 2))
        per = max(1, self.settings.samples // (1 + 2 * group))
        handle = self.model.get_submodule(self.site.module).register_forward_hook(self._hook)
        try:
            with torch.inference_mode():
                for b0 in range(0, len(rows), per):
                    x, r = x_all[b0 : b0 + per], rows[b0 : b0 + per]
                    for g0 in range(0, len(self.units), group):
                        self._group(x, r, g0, min(len(self.units), g0 + group))
                        self.n += 1
        finally:
            handle.remove()

    def _group(self, x, r: list[int], g0: int, g1: int) -> None:
        import torch

        b, g = len(r), g1 - g0
        copies = 1 + 2 * g
        img = torch.arange(b).repeat_interleave(2 * g)
        slot = torch.arange(2 * g).repeat(b)
        rows = img * copies + 1 + slot
        units = torch.tensor(self.units[g0:g1]).repeat_interleave(2).repeat(b)
        base, pred = self.deltas
        d = torch.stack([base[r, g0:g1], pred[r, g0:g1]], dim=2).reshape(-1)    # per image: unit 0 base, pred, ...
        self.plan = (rows.to(self.dev), units.to(self.dev), d.to(self.dev), copies)
        y = self._run(x, copies)
        ref = y.view(b, copies, -1)[:, :1].expand(b, copies, y.shape[1]).reshape(-1, y.shape[1])
        targets = None if self.classes is None else torch.tensor(
            [self.classes[i] for i in r], device=y.device).repeat_interleave(copies)
        lo = losses(y, ref, targets, self.settings.temperature).view(b, copies).cpu()
        change = (lo[:, 1:] - lo[:, :1]).abs().view(b, g, 2).sum(dim=0)         # [g, (base, pred)]
        self.damage[:, g0:g1] += change.T


def ablate(label_paths: list, activations, probe, model, images=None, text=None, annotations: str | None = None,
           layer: str | None = None, settings: AblateSettings | None = None, options: PassOptions | None = None,
           **fields: Any) -> Ablation:
    """The ablation score of every unit of every labels file (see the module docstring); ``model``: a
    ``models.TargetSpec`` or a loaded ``Target``; ``fields``: the settings' and the presence's (``SimulateSettings``:
    calibration, composed, class_names, superclasses) fields."""
    from ..probe import open_probe
    from .simulate import SimulateSettings, _presence_source

    st = AblateSettings.of(settings, **AblateSettings.take(fields))
    presence = SimulateSettings.of(None, **SimulateSettings.take(fields))
    opts = PassOptions.of(options, **PassOptions.take(fields))
    no_other_fields(fields, "ablate")
    if not label_paths:
        raise UsageError("give at least one labels file")
    known = list(A.read_activations(activations, data=False).layers)
    files = [A.read_label_file(p, layer, composed=presence.composed, known_layers=known) for p in label_paths]
    if layer is not None:
        for lf in files:
            lf.select_layer(layer)
    acts = A.read_activations(activations, sorted({n for lf in files for n in lf.layers}), data=False)
    source, ids = _presence_source(files, acts, activations, images, text, annotations, presence,
                                   Compute(device=opts.device))
    probe = probe if hasattr(probe, "ids") else open_probe([str(p) for p in probe])
    pos = {k: i for i, k in enumerate(probe.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise UsageError(f"image {missing[0]!r} of {activations} is not in the probe",
                         hint="give the PROBE the activations were recorded on")
    dev = resolve_device(opts.device)
    target = model if hasattr(model, "module") else model.load(dev)
    target.module.to(dev).eval()
    _check_target(target, acts, activations, files)
    n_out = _output_width(target, dev)
    loss, classes = _classes(ids, n_out, st.loss)
    run = _Run(acts, activations, probe, pos, target, classes, loss, st, opts, dev)
    work = [(lf, name) for lf in files for name in dict.fromkeys(lf.layers)]
    splits = [run.split(lf, ids) for lf, _ in work]
    groups: dict[tuple, list[int]] = {}
    for i, (_, name) in enumerate(work):    # one pass per layer and set of scoring images, whatever the files
        scored_ids, val, _ = splits[i]
        groups.setdefault((name, tuple(k for k, v in zip(scored_ids, val) if not v)), []).append(i)
    done: dict[int, tuple[dict[str, list], dict[str, Any]]] = {}
    for (name, _), members in groups.items():   # group by group: one layer read, one group's moves in memory
        q = A.read_activation_layer(activations, name)
        jobs = [run.prepare(work[i][0], name, [j for j, n in enumerate(work[i][0].layers) if n == name], source,
                            splits[i], q) for i in members]
        run.run(jobs)
        for i, job in zip(members, jobs):
            part: dict[str, list] = {c: [] for c in COLUMNS}
            done[i] = (part, run.finish(job, part))
    rows = {c: [x for i in range(len(work)) for x in done[i][0][c]] for c in COLUMNS}
    summary = [done[i][1] for i in range(len(work))]
    meta = {"activations": str(Path(activations).resolve()), "model": target.spec, "loss": loss,
            "temperature": st.temperature, "validation": st.validation, "seed": st.seed, "mapping": "norm",
            "presence": source.name, "summary": summary,
            "provenance": __import__("json").loads(A.provenance(stage="evaluate ablate"))}
    return Ablation(rows, summary, meta)


def _check_target(target, acts, activations, files) -> None:
    """The model the activations were recorded from (its weights' fingerprint), with every module the labels' units
    live on: refused in one line before any pass."""
    from ..errors import MismatchError
    from ..hooks import resolve_layers

    made = acts.attrs.get("model_fingerprint")
    if made and target.fingerprint and made != target.fingerprint:
        raise MismatchError(f"{target.spec} with these weights is not the model that recorded {activations}",
                            hint="pass the --model, --weights and --model-arg used for `dissect record`")
    sites = {_unit_site(n, acts.layer_attrs[n]).module for lf in files for n in lf.layers}
    resolve_layers(target.module, sorted(sites), target.spec)


def _output_width(target, dev) -> int:
    import torch

    from ..record import example_input

    with torch.inference_mode():
        y = target.module(example_input(target, dev))
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        raise UsageError("the model's output is not one [N, classes] tensor, so no loss can be measured",
                         hint="ablate through a classifier (its logits), or wrap the model as file.py:function")
    return int(y.shape[1])


@dataclass
class _Run:
    acts: Any
    activations: Any
    probe: Any
    pos: dict[str, int]
    target: Any
    classes: dict[str, int] | None
    loss: str
    settings: AblateSettings
    options: PassOptions
    dev: Any

    def split(self, lf, ids: list[str]) -> tuple[list[str], Any, bool]:
        """(the images ``lf`` is scored on, which of them are validation images, whether they were held out)."""
        from .. import split as S
        from .simulate import _scored_ids

        idx, held = _scored_ids(lf, ids)
        scored_ids = [ids[i] for i in idx]
        # seeded apart from the labels' own holdout: the same hash would put every held-out image in validation
        val = S.held_out(scored_ids, self.settings.validation, VALIDATION_SEED_OFFSET + self.settings.seed)
        if val.sum() < 3 or (~val).sum() < 2:
            raise UsageError(f"{lf.path}: {len(scored_ids)} images to score on are too few to split into validation "
                             f"and scoring parts", hint="use a larger probe or another --validation share")
        return scored_ids, val, held

    def prepare(self, lf, name: str, entries: list[int], source, split, q) -> "_Job":
        """The units ``entries`` of ``lf`` on layer ``name`` (``q``, as recorded), scored on ``split`` (``split``'s
        result): each unit's moves to its mean and to its label's mapped prediction, and why a unit cannot be scored
        (everything but the pass)."""
        import torch

        from .simulate import _check_units, predictions

        scored_ids, val, held = split
        units = [lf.units[i] for i in entries]
        _check_units(lf, name, units, q.shape[1], self.activations)
        row_of_id = {k: i for i, k in enumerate(self.acts.ids)}
        actual = torch.from_numpy(q[[row_of_id[k] for k in scored_ids]][:, units]).double()
        pres_u, index, labs, unknown = predictions(source, lf, entries, list(range(len(entries))),
                                                   {k: r for r, k in enumerate(scored_ids)}, "cpu")
        pred = pres_u.index_select(1, index).double()
        v, t = torch.from_numpy(val), torch.from_numpy(~val)
        mapped = map_norm(pred[t], actual[v], pred[v])
        reasons = [_reason(source, unknown.get(lab), actual[:, j], pred[:, j], mapped[:, j], v) for j, lab in enumerate(labs)]
        live = [j for j, r in enumerate(reasons) if r is None]
        return _Job(lf, name, units, labs, reasons, live,
                    ((actual[v].mean(dim=0)[None, :] - actual[t])[:, live], (mapped - actual[t])[:, live]),
                    [k for k, keep in zip(scored_ids, ~val) if keep], held,
                    [float(x) for x in correlations(actual[v], pred[v])])

    def run(self, jobs: list["_Job"]) -> None:
        """One pass over the scoring images for every job of one layer with the same images (labels files of several
        methods on one layer share it): each job's damage and the images the pass skipped."""
        import torch

        from ..passes import image_pass

        first = jobs[0]
        site = _unit_site(first.name, self.acts.layer_attrs[first.name], with_decoder=True)
        classes = None if self.classes is None else [self.classes[k] for k in first.test_ids]
        units = [u for job in jobs for u in (job.units[j] for j in job.live)]
        deltas = tuple(torch.cat([job.deltas[i] for job in jobs], dim=1) for i in (0, 1))
        tail = _Tail(self.target, site, units, deltas, classes, self.loss, self.settings, self.dev)
        tail.row_of = {self.pos[k]: r for r, k in enumerate(first.test_ids)}
        skipped = []
        if units:
            what = ", ".join(dict.fromkeys(Path(job.lf.path).name for job in jobs))
            skipped = image_pass(self.probe, [tail], self.options.batch_size,
                                 self.options.workers_for(len(first.test_ids)),
                                 f"ablate {what} {first.name} ({len(units)} units)", self.dev,
                                 positions=sorted(tail.row_of))
        at = 0
        for job in jobs:          # a job with no unit to move had no images skipped on its behalf
            job.damage = tail.damage[:, at : at + len(job.live)]
            job.n_images = len(first.test_ids) - (len(skipped) if job.live else 0)
            at += len(job.live)

    def finish(self, job: "_Job", rows: dict[str, list]) -> dict[str, Any]:
        """The job's rows (added to ``rows``) and its summary."""
        scores = {j: score(float(job.damage[1, k]), float(job.damage[0, k])) for k, j in enumerate(job.live)}
        published, column = _published(job.lf)
        for j, u in enumerate(job.units):
            s = scores.get(j, math.nan)
            damage = job.damage[:, job.live.index(j)] if j in job.live else None
            why = job.reasons[j] or (None if s == s else "moving the unit to its mean changes no loss"
                                     if damage is not None and float(damage[0]) == 0 else "its loss changes are not finite")
            _add(rows, job.lf, job.name, u, job.labs[j], s, job.corr[j], damage, job.n_images, job.held, self.loss, why)
            rows["published_ablation"].append(published.get(int(u), math.nan))
        vals = np.array([scores.get(j, math.nan) for j in range(len(job.units))], dtype=np.float64)
        theirs = np.array([published.get(int(u), math.nan) for u in job.units], dtype=np.float64)
        return {"labels": str(job.lf.path), "method": job.lf.method, "layer": job.name, "units": len(job.units),
                "scored_units": int(np.isfinite(vals).sum()), "n_images": job.n_images,
                "held_out": job.held, "mean_ablation": float(np.nanmean(vals)) if np.isfinite(vals).any() else None,
                "published_column": column,
                "mean_published_ablation": float(np.nanmean(theirs)) if np.isfinite(theirs).any() else None}


@dataclass
class _Job:
    """One labels file's units on one layer, prepared for the pass (``_Run.prepare``), then scored by it."""

    lf: Any
    name: str
    units: list[int]
    labs: list[str]
    reasons: list[str | None]
    live: list[int]                 # the units that can be scored (indices into units)
    deltas: tuple                   # (to the mean, to the mapped prediction) [scoring images, live units]
    test_ids: list[str]
    held: bool
    corr: list[float]
    damage: Any = None
    n_images: int = 0


def _published(lf) -> tuple[dict[int, float], str | None]:
    """The ablation scores a Linear Explanations result file publishes per unit (0-based, as they number them), and
    the column read: their optim mode's where present (the paper's), else their norm mode's."""
    import csv

    if Path(lf.path).suffix.lower() != ".csv":
        return {}, None
    with open(lf.path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        column = next((c for c in PUBLISHED if c in (reader.fieldnames or [])), None)
        if column is None or "unit" not in (reader.fieldnames or []):
            return {}, None
        out = {}
        for row in reader:
            try:
                out[int(row["unit"])] = float(row[column])
            except (TypeError, ValueError):
                continue          # their "-" for a unit not scored
    return out, column


def _reason(source, unknown, act, pred, mapped, val) -> str | None:
    """Why a unit cannot be scored (None: it can). ``val``: the validation rows of ``act`` and ``pred``."""
    import torch

    if unknown and (source.name != "clip" or "explanation" in str(unknown)):
        return f"no image is annotated with {unknown}" if source.name != "clip" else f"its label names {unknown}"
    if bool((act == act[0]).all()):
        return "the unit's activation is constant on the scored images"
    if bool((act[val] == act[val][0]).all()):
        return "the unit's activation is constant on the validation images (nothing to map its label to)"
    if bool((pred == pred[0]).all()) or bool((pred[val] == pred[val][0]).all()):
        return "its label predicts the same activation on every image"
    if not bool(torch.isfinite(mapped).all()):
        return "its label's prediction cannot be mapped to the unit's scale"
    return None


def _add(rows, lf, name, unit, label, s, corr, damage, n, held, loss, reason) -> None:
    rows["labels"].append(str(lf.path))
    rows["method"].append(lf.method)
    rows["layer"].append(name)
    rows["unit"].append(int(unit))
    rows["label"].append(label)
    rows["ablation"].append(s)
    rows["correlation"].append(corr if corr == corr else math.nan)
    rows["damage_base"].append(math.nan if damage is None else float(damage[0]))
    rows["damage_pred"].append(math.nan if damage is None else float(damage[1]))
    rows["n_images"].append(int(n))
    rows["held_out"].append(bool(held))
    rows["loss"].append(loss)
    rows["reason"].append(reason)


def write_ablation(abl: Ablation, out: str | os.PathLike) -> tuple[str, Path | None]:
    return A.write_table(out, A.ABLATE_FORMAT, abl.rows, abl.metadata, summary=abl.summary)
