"""``dissect run``: the whole pipeline into one run folder, reusing what is already there.

    RUN/images.h5        CLIP image embeddings of the probe
    RUN/text.h5          CLIP text embeddings of the concept set
    RUN/activations.h5   target activations (layers are added, never recomputed)
    RUN/labels.parquet   the labels
    RUN/composed.parquet compositional labels (with ``compose``)
    RUN/run.json         what was asked, which artifacts were reused, timings

Each artifact is reused when its recorded fingerprint equals the fingerprint of
the inputs asked for now (model, weights, preprocessing, probe, concepts,
parameters, format version), and recomputed otherwise, with a message saying
which and why. Nothing stale is reused silently.

``run`` is the list of its steps: merge the shards of earlier ``--shard`` tasks, embed
the concept set, plan the activations, one image pass for whatever images.h5 and
activations.h5 lack (each image decoded once for both models, checkpointed, split by
rank under torchrun), label, compose, write the manifest. With ``--shard I/N`` it only
runs that slice's image pass into RUN/shards/.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts as A
from .clip import Clip, ClipSpec, clip_fingerprint, parse_clip_spec
from .concepts import ConceptSet, load_concepts
from .embed import ImageEmbedder, check_dtype, embed_text, image_embeddings_fingerprint, text_embeddings_fingerprint
from .errors import MismatchError, UsageError
from .fingerprint import fingerprint
from .label import LabelSettings, label
from .models import Target, TargetSpec
from .passes import PassOptions, execute
from .probe import Probe, open_probe
from .directions import DirectionsOptions, is_entry
from .record import ActivationRecorder, RecordPlan, activations_inputs_fingerprint, plan_record
from .runtime import note, resolve_device, resolve_precision
from .settings import Compute, Settings, no_other_fields
from .shards import init_process_group, distributed_world, merge, parse_shard, plan_pass

SHARDS = "shards"


@dataclass(frozen=True)
class RunSettings(Settings):
    """What a run records and makes beside the labels: the summary and channel layout of the recorded layers, the
    embeddings' dtype, texts per CLIP batch, the working-memory budget of labelling (bytes; None: the default),
    and the optional steps: compositional labels (``compose``, of each unit's ``compose_top_k`` best concepts
    joined by ``compose_template``) and linear explanations (``explain``, at most ``explain_max_concepts``)."""

    summary: str = "mean"
    layout: str = "auto"
    dtype: str = "float32"
    text_batch_size: int = 256
    max_memory: int | None = None
    compose: bool = False
    compose_top_k: int = 10
    compose_template: str = "{a} {b}"
    explain: bool = False
    explain_max_concepts: int = 5
    maps: int = 0

    def check(self) -> None:
        from .hooks import SUMMARIES

        if self.maps < 0:
            raise UsageError(f"--maps must be 0 (none) or more, got {self.maps}")
        if self.summary not in SUMMARIES:
            raise UsageError(f"unknown summary {self.summary!r}", hint=f"use one of {', '.join(SUMMARIES)}")
        check_dtype(self.dtype)
        if self.text_batch_size < 1:
            raise UsageError(f"the text batch size must be at least 1, got {self.text_batch_size}")
        if self.compose_top_k < 2:
            raise UsageError(f"--compose-top-k must be at least 2 to make pairs, got {self.compose_top_k}")
        if self.explain_max_concepts < 1:
            raise UsageError(f"--explain-max-concepts must be at least 1, got {self.explain_max_concepts}")


@dataclass
class _Run:
    """What one run works on: its folder, inputs, settings, and what each step did."""

    dir: Path
    probe: Probe
    concepts: ConceptSet
    clip_spec: ClipSpec
    options: PassOptions
    device: Any
    target: TargetSpec = None
    layers: list[str] = field(default_factory=list)
    settings: RunSettings = field(default_factory=RunSettings)
    label: LabelSettings = field(default_factory=LabelSettings)
    steps: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    world: tuple[int, int, int] | None = field(default_factory=distributed_world)
    directions: DirectionsOptions = field(default_factory=DirectionsOptions)
    _clip: Clip | None = None

    def __post_init__(self):
        self.clip_fp = clip_fingerprint(self.clip_spec)
        self.clip_precision = resolve_precision(self.options.precision, self.device, "clip")
        self.target_precision = resolve_precision(self.options.precision, self.device, "target")
        self.images, self.text = self.dir / "images.h5", self.dir / "text.h5"
        self.activations, self.labels = self.dir / "activations.h5", self.dir / "labels.parquet"

    @property
    def lead(self) -> bool:
        """Rank 0 (or the only process) writes the shared files."""
        return self.world is None or self.world[0] == 0

    def barrier(self) -> None:
        if self.world is not None:
            import torch.distributed as dist

            dist.barrier()

    def clip(self) -> Clip:
        """The CLIP model, loaded on first use."""
        if self._clip is None:
            from .clip import load_clip

            self._clip = load_clip(self.clip_spec, self.device)
        return self._clip

    @property
    def loaded_clip(self) -> Clip | None:
        """The CLIP model if this run has it in memory (None: not loaded)."""
        return self._clip

    def drop_clip(self) -> None:
        self._clip = None

    def compute(self, clip=None) -> Compute:
        """How the artifact stages of this run compute: its device and memory budget (``clip``: its CLIP model)."""
        return Compute(device=str(self.device), max_memory=self.settings.max_memory, clip=clip)


def _reusable(path: Path, kind: str, expected: str) -> tuple[bool, str]:
    attrs = A.peek_attrs(path, kind)
    if attrs is None:
        return False, "missing" if not path.exists() else "unreadable"
    if attrs.get("fingerprint") != expected:
        return False, "made from other inputs"
    return True, "up to date"


def run(probe: list[str], clip: str, model: str | TargetSpec, layers: list[str], concepts: str, out: str | os.PathLike,
        settings: RunSettings | None = None, label: LabelSettings | None = None, options: PassOptions | None = None,
        directions=None, **fields: Any) -> Path:
    """Run embed-images, embed-text, record and label into the folder ``out``; returns labels.parquet.

    Missing image embeddings and activations are made in one pass over the probe
    (each image decoded once for both models). ``model``: a spec, or a ``models.TargetSpec``
    with its weights, model arguments and preprocessing overrides. ``settings`` (:class:`RunSettings`),
    ``label`` (``label.LabelSettings``) and ``options`` (``passes.PassOptions``: how the image pass
    runs; ``options.shard`` "I/N" runs only that slice of it into RUN/shards/, which a later run
    without it merges) may also be given as their fields, as may the target's (``weights=``, ...).
    ``directions`` (``directions.DirectionsOptions`` or ``LAYER=SPEC`` items): direction
    sets recorded and labelled beside their layers, as ``LAYER@NAME``.
    """
    target = model if isinstance(model, TargetSpec) else \
        TargetSpec(model, **{k: fields.pop(k) for k in ("weights", "model_args", "overrides") if k in fields})
    settings = RunSettings.of(settings, **RunSettings.take(fields))
    label = LabelSettings.of(label, **LabelSettings.take(fields))
    opts = PassOptions.of(options, **PassOptions.take(fields))
    no_other_fields(fields, "run")
    ctx = _open_run(out, probe, concepts, clip, opts)
    # One run per folder (rank 0 holds it under torchrun, where the ranks keep in step by barriers; the tasks of a
    # job array, --shard, write files of their own and run side by side).
    lock = A.ProcessLock(ctx.dir / ".dissect-run.lock", f"run folder {ctx.dir}") if ctx.lead and not opts.shard else None
    try:
        ctx.directions, ctx.target, ctx.layers, ctx.settings, ctx.label = (DirectionsOptions.of(directions), target,
                                                                           list(layers), settings, label)
        return _run_steps(ctx)
    finally:
        if lock is not None:
            lock.release(remove=True)


def _run_steps(ctx: _Run) -> Path:
    opts, settings = ctx.options, ctx.settings
    resolved = ctx.label.resolved_params()  # validate before any expensive work
    check_dtype(settings.dtype)
    target = ctx.target.load(ctx.device, layers=ctx.layers)
    if opts.shard is not None:
        return _shard_pass(ctx, target)
    if ctx.lead:
        _merge_shards(ctx.dir)
    _embed_text(ctx)
    plan = _activations_plan(ctx, target)
    _image_pass(ctx, plan, keep_clip=settings.compose)
    ctx.layers = plan.layers  # with the direction entries (LAYER@NAME), and the layers they are on
    del target, plan  # free the network (and CLIP, unless compose embeds with it) before labelling
    labels_fp = _label(ctx, resolved)
    if settings.compose and ctx.lead:  # compose is not split across ranks: rank 0 runs it
        _compose(ctx, labels_fp)
    if settings.explain and ctx.lead:
        _explain(ctx, labels_fp)
    if ctx.lead:
        _write_manifest(ctx, resolved)
    return ctx.labels


def _open_run(out, probe, concepts, clip, opts: PassOptions) -> _Run:
    """Check the run folder and open the inputs; under torchrun, join the process group."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists and is not a folder", hint="give a run folder with -o")
    if not run_dir.parent.is_dir():
        raise UsageError(f"folder {run_dir.parent} does not exist", hint=f"create it first (mkdir -p {run_dir.parent})")
    dev = resolve_device(opts.device)
    shard = parse_shard(opts.shard)
    probe_set, concept_set, clip_spec = open_probe(probe), load_concepts(concepts), parse_clip_spec(clip)
    run_dir.mkdir(exist_ok=True)
    ctx = _Run(run_dir, probe_set, concept_set, clip_spec, opts, dev)
    if ctx.world is not None:
        if shard is not None:
            raise UsageError("--shard and torchrun both split the probe", hint="use one of them")
        init_process_group(dev)
    return ctx


def _merge_shards(run_dir: Path) -> None:
    """Join RUN/shards/ (written by run --shard) into images.h5 and activations.h5, then remove them."""
    folder = run_dir / SHARDS
    if not folder.is_dir():
        return
    for stem in ("images", "activations"):
        parts = sorted(folder.glob(f"{stem}.*-of-*.h5"))
        if not parts:
            continue
        merge([str(x) for x in parts], run_dir / f"{stem}.h5")
        note(f"merged {len(parts)} shards into {run_dir / f'{stem}.h5'}")
        for x in parts:
            x.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def _embed_text(ctx: _Run) -> None:
    """text.h5, reused when it holds the concept set's embeddings by this CLIP model and precision."""
    if ctx.lead:
        expected = text_embeddings_fingerprint(ctx.clip_fp, ctx.concepts.fingerprint, ctx.clip_precision)
        ok, why = _reusable(ctx.text, A.TEXT_FORMAT, expected)
        note(f"{'reusing' if ok else 'computing'} {ctx.text} ({why})")
        if not ok:
            embed_text(ctx.concepts, ctx.clip(), ctx.text, batch_size=ctx.settings.text_batch_size,
                       precision=ctx.clip_precision, dtype=ctx.settings.dtype, strict=ctx.options.strict)
        ctx.steps["text"] = {"path": ctx.text.name, "reused": ok}
    ctx.barrier()


def _with_maps(ctx: _Run, plan: RecordPlan, out: Path) -> RecordPlan:
    """``plan`` keeping each unit's top maps when the run asks for them (``--maps``)."""
    if not ctx.settings.maps:
        return plan
    from .maps import MapsOptions, with_maps

    return with_maps(plan, MapsOptions(ctx.settings.maps, ctx.settings.max_memory), out, len(ctx.probe))


def _activations_plan(ctx: _Run, target: Target) -> RecordPlan:
    """Which layers activations.h5 still needs; a file of other inputs, summary or layout is started over."""
    inputs_fp = activations_inputs_fingerprint(target, ctx.probe.fingerprint, ctx.target_precision)
    attrs = A.peek_attrs(ctx.activations, A.ACTIVATIONS_FORMAT)
    if attrs is not None and attrs.get("inputs_fingerprint") != inputs_fp:
        note(f"recomputing {ctx.activations} (made from another model, weights, preprocessing, probe or precision)")
        if ctx.lead:
            ctx.activations.unlink()
    ctx.barrier()
    summary, layout = ctx.settings.summary, ctx.settings.layout
    try:
        plan = plan_record(ctx.probe, target, ctx.layers, ctx.activations, summary, layout, ctx.device,
                           ctx.target_precision, directions=ctx.directions)
    except MismatchError:
        # Same inputs but layers recorded with another summary or layout: start this file over.
        note(f"recomputing {ctx.activations} (recorded with another --summary or --layout)")
        ctx.barrier()
        if ctx.lead:
            ctx.activations.unlink()
        ctx.barrier()
        plan = plan_record(ctx.probe, target, ctx.layers, ctx.activations, summary, layout, ctx.device,
                           ctx.target_precision, directions=ctx.directions)
    plan = _with_maps(ctx, plan, ctx.activations)
    ctx.steps["activations"] = {"path": ctx.activations.name, "reused_layers": plan.have}
    if plan.todo:
        note(f"recording {', '.join(plan.todo)} into {ctx.activations}"
             + (f" (reusing {', '.join(plan.have)})" if plan.have else ""))
    else:
        note(f"reusing {ctx.activations} (holds {', '.join(plan.layers)})")
    return plan


def _image_pass(ctx: _Run, plan: RecordPlan, outs: dict[str, Path] | None = None, shard: str | None = None,
                keep_clip: bool = False) -> None:
    """One pass over the probe for whatever images.h5 and activations.h5 lack (``outs``: other files, a shard's).

    Each image is decoded once and fed to CLIP and to the target model, each with its own
    preprocessing. Under torchrun the ranks split the pass and rank 0 merges; adding
    layers to an existing activations file is left to rank 0 alone.
    """
    images_fp = image_embeddings_fingerprint(ctx.clip_fp, ctx.probe.fingerprint, ctx.clip_precision)
    images_ok, why = (False, "a shard") if outs is not None else _reusable(ctx.images, A.IMAGE_FORMAT, images_fp)
    if outs is None:
        note(f"{'reusing' if images_ok else 'computing'} {ctx.images} ({why})")
        ctx.steps["images"] = {"path": ctx.images.name, "reused": images_ok}
        outs = {"images": ctx.images, "activations": ctx.activations}
    if images_ok and not keep_clip:
        ctx.drop_clip()  # it made the text embeddings; the pass does not need it
    opts, n = ctx.options, len(ctx.probe)
    summary, layout, dtype = ctx.settings.summary, ctx.settings.layout, ctx.settings.dtype
    consumers: dict[str, Any] = {}
    if not images_ok:
        consumers["images"] = ImageEmbedder(ctx.clip(), n, ctx.clip_precision, dtype, opts.batch_size)
    if plan.todo:
        consumers["activations"] = ActivationRecorder.for_plan(plan, plan.todo, n, summary, layout, ctx.device,
                                                               opts.channels_last, opts.batch_size)
    if consumers:
        key = [sorted(consumers), ctx.clip_precision, ctx.target_precision, plan.inputs_fp, plan.todo, summary, layout,
               ctx.probe.fingerprint, ctx.clip_fp] + ([f"maps {plan.maps.k}"] if plan.maps else [])
        pp = plan_pass({name: outs[name] for name in consumers}, n, shard, key, opts.chunk, ctx.device,
                       checkpoint_at=outs["images"].parent / "pass", split=not plan.exists)
        what = " + ".join((["embed images"] if "images" in consumers else [])
                          + ([f"record {len(plan.todo)} layer(s)"] if "activations" in consumers else []))
        recorder = consumers.get("activations")
        if recorder is not None:
            with recorder:
                execute(ctx.probe, consumers, pp, opts, (f"shard {shard}: " if shard else "") + what, ctx.device)
        else:
            execute(ctx.probe, consumers, pp, opts, what, ctx.device)
    if not keep_clip:
        ctx.drop_clip()
    ctx.barrier()


def _shard_pass(ctx: _Run, target: Target) -> Path:
    """``--shard I/N``: embed and record that slice into RUN/shards/; a later run without --shard merges them."""
    shard = parse_shard(ctx.options.shard)
    folder = ctx.dir / SHARDS
    folder.mkdir(exist_ok=True)
    tag = f"{shard.index}-of-{shard.count}"
    outs = {"images": folder / f"images.{tag}.h5", "activations": folder / f"activations.{tag}.h5"}
    plan = plan_record(ctx.probe, target, ctx.layers, outs["activations"], ctx.settings.summary, ctx.settings.layout,
                       ctx.device, ctx.target_precision, fresh=True, directions=ctx.directions)  # always written anew
    plan = _with_maps(ctx, plan, outs["activations"])
    _image_pass(ctx, plan, outs=outs, shard=str(shard))
    note(f"shard {shard} done in {folder}; when all {shard.count} are, run the same command without --shard to merge "
         f"and label")
    return folder


def _label(ctx: _Run, resolved: dict[str, Any]) -> str:
    """labels.parquet, reused when it was made from the same artifacts and settings; returns its run fingerprint."""
    images_fp = A.peek_attrs(ctx.images, A.IMAGE_FORMAT)["fingerprint"]
    text_fp = A.peek_attrs(ctx.text, A.TEXT_FORMAT)["fingerprint"]
    inputs_fp = A.peek_attrs(ctx.activations, A.ACTIVATIONS_FORMAT)["inputs_fingerprint"]
    layers, lab, settings = ctx.layers, ctx.label, ctx.settings
    entries = sorted(n for n in layers if is_entry(n))
    # Direction entries: what made their units (another SAE under the same name must be labelled again).
    units_fp = ([A.read_activations(ctx.activations, entries, data=False).layer_attrs[n].get("fingerprint") for n in entries]
                if entries else [])
    labels_fp = fingerprint([A.LABELS_FORMAT, A.FORMAT_VERSION, images_fp, text_fp, inputs_fp, sorted(layers),
                             settings.summary, settings.layout, lab.sim, resolved, lab.seed, lab.top]
                            + ([units_fp] if units_fp else [])
                            + ([["holdout", lab.holdout, lab.holdout_seed]] if lab.holdout is not None else []))
    reuse = _made_with(ctx.labels, labels_fp)
    if reuse:
        note(f"reusing {ctx.labels} (up to date)")
    else:
        label(ctx.images, ctx.activations, ctx.labels, text=ctx.text, layers=layers, settings=lab,
              compute=ctx.compute(), extra_metadata={"run_fingerprint": labels_fp})
    ctx.steps["labels"] = {"path": ctx.labels.name, "reused": reuse}
    return labels_fp


def _made_with(path: Path, run_fingerprint: str) -> bool:
    """Whether the Parquet output ``path`` records ``run_fingerprint`` (made by this run's inputs and settings). The
    run grows its folder: reading an output of its own to see whether it is up to date makes it no input."""
    A.grows(path)
    if not path.exists():
        return False
    try:
        return A.read_parquet_metadata(path).get("run_fingerprint") == run_fingerprint
    except Exception:
        return False


def _compose(ctx: _Run, labels_fp: str) -> None:
    """composed.parquet: compositional labels from the labels' candidates (dissect compose)."""
    from .compose import DEFAULT_SELECT, ComposeSettings
    from .compose import compose as compose_labels

    path = ctx.dir / "composed.parquet"
    top, top_k, template = ctx.label.top, ctx.settings.compose_top_k, ctx.settings.compose_template
    compose_fp = fingerprint([labels_fp, "compose", top_k, template, DEFAULT_SELECT])
    reuse = _made_with(path, compose_fp)
    if reuse:
        note(f"reusing {path} (up to date)")
    else:
        # The labels' candidates are reused when they hold enough (--top >= --compose-top-k).
        settings = ComposeSettings(sim=ctx.label.sim, params=ctx.label.params, top_k=top_k, template=template, top=top)
        # the run's CLIP model when in memory: not loaded again from a spec
        compose_labels(ctx.images, ctx.activations, path, text=ctx.text, labels=ctx.labels if top >= top_k else None,
                       layers=ctx.layers, settings=settings, compute=ctx.compute(clip=ctx.loaded_clip),
                       extra_metadata={"run_fingerprint": compose_fp})
    ctx.steps["composed"] = {"path": path.name, "reused": reuse}


def _explain(ctx: _Run, labels_fp: str) -> None:
    """explanations.parquet: linear explanations in CLIP mode over the run's concept set (dissect explain)."""
    from .explain import explain as explain_units

    path = ctx.dir / "explanations.parquet"
    max_concepts = ctx.settings.explain_max_concepts
    explain_fp = fingerprint([labels_fp, "explain", max_concepts])
    reuse = _made_with(path, explain_fp)
    if reuse:
        note(f"reusing {path} (up to date)")
    else:
        ex = explain_units(ctx.activations, None, images=ctx.images, text=ctx.text, layers=ctx.layers,
                           max_concepts=max_concepts, compute=ctx.compute())
        ex.metadata["run_fingerprint"] = explain_fp
        from .explain import write_explanations

        write_explanations(ex, path)
        note(f"wrote {path}")
    ctx.steps["explanations"] = {"path": path.name, "reused": reuse}


def _write_manifest(ctx: _Run, resolved: dict[str, Any]) -> None:
    manifest = {
        "probe": ctx.probe.describe(),
        "clip": str(ctx.clip_spec),
        "model": ctx.target.model,
        "weights": ctx.target.weights,
        "model_args": ctx.target.model_args or {},
        "layers": ctx.layers,
        "summary": ctx.settings.summary,
        "concepts": {"name": ctx.concepts.name, "source": ctx.concepts.source, "n": len(ctx.concepts.concepts)},
        "similarity": ctx.label.sim,
        "params": resolved,
        "precision": {"clip": ctx.clip_precision, "target": ctx.target_precision},
        "dtype": ctx.settings.dtype,
        "steps": ctx.steps,
        "seconds": round(time.perf_counter() - ctx.started, 2),
        "provenance": json.loads(A.provenance(stage="run")),
    }
    A.write_run_manifest(ctx.dir, manifest)
    note(f"done in {manifest['seconds']:.1f}s: {ctx.labels}")
