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
from .label import label
from .models import PreprocessOverrides, Target, load_target
from .passes import PassOptions, execute
from .probe import Probe, open_probe
from .directions import DirectionsOptions
from .record import ActivationRecorder, RecordPlan, activations_inputs_fingerprint, plan_record
from .runtime import note, resolve_device, resolve_precision
from .shards import init_process_group, distributed_world, merge, parse_shard, plan_pass
from .similarity import resolve_params

SHARDS = "shards"


@dataclass
class _Run:
    """What one run works on: its folder, inputs, settings, and what each step did."""

    dir: Path
    probe: Probe
    concepts: ConceptSet
    clip_spec: ClipSpec
    options: PassOptions
    device: Any
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


def _reusable(path: Path, kind: str, expected: str) -> tuple[bool, str]:
    attrs = A.peek_attrs(path, kind)
    if attrs is None:
        return False, "missing" if not path.exists() else "unreadable"
    if attrs.get("fingerprint") != expected:
        return False, "made from other inputs"
    return True, "up to date"


def run(
    probe: list[str],
    clip: str,
    model: str,
    layers: list[str],
    concepts: str,
    out: str | os.PathLike,
    sim: str = "softwpmi",
    params: dict[str, Any] | None = None,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    summary: str = "mean",
    layout: str = "auto",
    overrides: PreprocessOverrides | None = None,
    top: int = 5,
    seed: int | None = None,
    text_batch_size: int = 256,
    chunk: int | None = None,
    max_memory: int | None = None,
    dtype: str = "float32",
    compose: bool = False,
    compose_top_k: int = 10,
    compose_template: str = "{a} {b}",
    explain: bool = False,
    explain_max_concepts: int = 5,
    options: PassOptions | None = None,
    directions=None,
    **settings: Any,
) -> Path:
    """Run embed-images, embed-text, record and label into the folder ``out``; returns labels.parquet.

    Missing image embeddings and activations are made in one pass over the probe
    (each image decoded once for both models). ``options`` (``passes.PassOptions``, or its
    fields as keyword arguments) say how the image pass runs; ``options.shard`` "I/N"
    runs only that slice of it into RUN/shards/ (a later run without it merges them).
    ``directions`` (``directions.DirectionsOptions`` or ``LAYER=SPEC`` items): direction
    sets recorded and labelled beside their layers, as ``LAYER@NAME``.
    """
    opts = PassOptions.of(options, **settings)
    directions = DirectionsOptions.of(directions)
    ctx = _open_run(out, probe, concepts, clip, opts)
    # One run per folder (rank 0 holds it under torchrun, where the ranks keep in step by barriers; the tasks of a
    # job array, --shard, write files of their own and run side by side).
    lock = A.ProcessLock(ctx.dir / ".dissect-run.lock", f"run folder {ctx.dir}") if ctx.lead and not opts.shard else None
    try:
        ctx.directions = directions
        return _run_steps(ctx, model, layers, sim, params, weights, model_args, summary, layout, overrides, top, seed,
                          text_batch_size, chunk, max_memory, dtype, compose, compose_top_k, compose_template,
                          explain, explain_max_concepts)
    finally:
        if lock is not None:
            lock.release(remove=True)


def _run_steps(ctx: _Run, model, layers, sim, params, weights, model_args, summary, layout, overrides, top, seed,
               text_batch_size, chunk, max_memory, dtype, compose, compose_top_k, compose_template,
               explain=False, explain_max_concepts=5) -> Path:
    opts = ctx.options
    resolved = resolve_params(sim, params)  # validate before any expensive work
    check_dtype(dtype)
    target = load_target(model, weights, model_args, overrides, ctx.device, layers=layers)
    if opts.shard is not None:
        return _shard_pass(ctx, target, layers, summary, layout, dtype)
    if ctx.lead:
        _merge_shards(ctx.dir)
    _embed_text(ctx, text_batch_size, dtype)
    plan = _activations_plan(ctx, target, layers, summary, layout)
    _image_pass(ctx, plan, summary, layout, dtype, keep_clip=compose)
    layers = plan.layers  # with the direction entries (LAYER@NAME), and the layers they are on
    del target, plan  # free the network (and CLIP, unless compose embeds with it) before labelling
    labels_fp = _label(ctx, layers, summary, layout, sim, params, resolved, top, seed, chunk, max_memory)
    if compose and ctx.lead:  # compose is not split across ranks: rank 0 runs it
        _compose(ctx, labels_fp, layers, sim, params, top, compose_top_k, compose_template, max_memory)
    if explain and ctx.lead:
        _explain(ctx, labels_fp, layers, explain_max_concepts, max_memory)
    if ctx.lead:
        _write_manifest(ctx, model, weights, model_args, layers, summary, sim, resolved, dtype)
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


def _embed_text(ctx: _Run, batch_size: int, dtype: str) -> None:
    """text.h5, reused when it holds the concept set's embeddings by this CLIP model and precision."""
    if ctx.lead:
        expected = text_embeddings_fingerprint(ctx.clip_fp, ctx.concepts.fingerprint, ctx.clip_precision)
        ok, why = _reusable(ctx.text, A.TEXT_FORMAT, expected)
        note(f"{'reusing' if ok else 'computing'} {ctx.text} ({why})")
        if not ok:
            embed_text(ctx.concepts, ctx.clip(), ctx.text, batch_size=batch_size, precision=ctx.clip_precision,
                       dtype=dtype, strict=ctx.options.strict)
        ctx.steps["text"] = {"path": ctx.text.name, "reused": ok}
    ctx.barrier()


def _activations_plan(ctx: _Run, target: Target, layers: list[str], summary: str, layout: str) -> RecordPlan:
    """Which layers activations.h5 still needs; a file of other inputs, summary or layout is started over."""
    inputs_fp = activations_inputs_fingerprint(target, ctx.probe.fingerprint, ctx.target_precision)
    attrs = A.peek_attrs(ctx.activations, A.ACTIVATIONS_FORMAT)
    if attrs is not None and attrs.get("inputs_fingerprint") != inputs_fp:
        note(f"recomputing {ctx.activations} (made from another model, weights, preprocessing, probe or precision)")
        if ctx.lead:
            ctx.activations.unlink()
    ctx.barrier()
    try:
        plan = plan_record(ctx.probe, target, layers, ctx.activations, summary, layout, ctx.device, ctx.target_precision,
                           directions=ctx.directions)
    except MismatchError:
        # Same inputs but layers recorded with another summary or layout: start this file over.
        note(f"recomputing {ctx.activations} (recorded with another --summary or --layout)")
        ctx.barrier()
        if ctx.lead:
            ctx.activations.unlink()
        ctx.barrier()
        plan = plan_record(ctx.probe, target, layers, ctx.activations, summary, layout, ctx.device, ctx.target_precision,
                           directions=ctx.directions)
    ctx.steps["activations"] = {"path": ctx.activations.name, "reused_layers": plan.have}
    if plan.todo:
        note(f"recording {', '.join(plan.todo)} into {ctx.activations}"
             + (f" (reusing {', '.join(plan.have)})" if plan.have else ""))
    else:
        note(f"reusing {ctx.activations} (holds {', '.join(plan.layers)})")
    return plan


def _image_pass(ctx: _Run, plan: RecordPlan, summary: str, layout: str, dtype: str, outs: dict[str, Path] | None = None,
                shard: str | None = None, keep_clip: bool = False) -> None:
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
    consumers: dict[str, Any] = {}
    if not images_ok:
        consumers["images"] = ImageEmbedder(ctx.clip(), n, ctx.clip_precision, dtype, opts.batch_size)
    if plan.todo:
        consumers["activations"] = ActivationRecorder.for_plan(plan, plan.todo, n, summary, layout, ctx.device,
                                                               opts.channels_last, opts.batch_size)
    if consumers:
        key = [sorted(consumers), ctx.clip_precision, ctx.target_precision, plan.inputs_fp, plan.todo, summary, layout,
               ctx.probe.fingerprint, ctx.clip_fp]
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


def _shard_pass(ctx: _Run, target: Target, layers: list[str], summary: str, layout: str, dtype: str) -> Path:
    """``--shard I/N``: embed and record that slice into RUN/shards/; a later run without --shard merges them."""
    shard = parse_shard(ctx.options.shard)
    folder = ctx.dir / SHARDS
    folder.mkdir(exist_ok=True)
    tag = f"{shard.index}-of-{shard.count}"
    outs = {"images": folder / f"images.{tag}.h5", "activations": folder / f"activations.{tag}.h5"}
    plan = plan_record(ctx.probe, target, layers, outs["activations"], summary, layout, ctx.device, ctx.target_precision,
                       fresh=True, directions=ctx.directions)  # a shard is always written anew
    _image_pass(ctx, plan, summary, layout, dtype, outs=outs, shard=str(shard))
    note(f"shard {shard} done in {folder}; when all {shard.count} are, run the same command without --shard to merge "
         f"and label")
    return folder


def _label(ctx: _Run, layers, summary, layout, sim, params, resolved, top, seed, chunk, max_memory) -> str:
    """labels.parquet, reused when it was made from the same artifacts and settings; returns its run fingerprint."""
    images_fp = A.peek_attrs(ctx.images, A.IMAGE_FORMAT)["fingerprint"]
    text_fp = A.peek_attrs(ctx.text, A.TEXT_FORMAT)["fingerprint"]
    inputs_fp = A.peek_attrs(ctx.activations, A.ACTIVATIONS_FORMAT)["inputs_fingerprint"]
    entries = sorted(n for n in layers if "@" in n)
    # Direction entries: what made their units (another SAE under the same name must be labelled again).
    units_fp = ([A.read_activations(ctx.activations, entries, data=False).layer_attrs[n].get("fingerprint") for n in entries]
                if entries else [])
    labels_fp = fingerprint([A.LABELS_FORMAT, A.FORMAT_VERSION, images_fp, text_fp, inputs_fp, sorted(layers), summary,
                             layout, sim, resolved, seed, top] + ([units_fp] if units_fp else []))
    reuse = _made_with(ctx.labels, labels_fp)
    if reuse:
        note(f"reusing {ctx.labels} (up to date)")
    else:
        label(ctx.images, ctx.activations, ctx.labels, text=ctx.text, sim=sim, params=params, layers=layers, top=top,
              seed=seed, device=str(ctx.device), chunk=chunk, max_memory=max_memory,
              extra_metadata={"run_fingerprint": labels_fp})
    ctx.steps["labels"] = {"path": ctx.labels.name, "reused": reuse}
    return labels_fp


def _made_with(path: Path, run_fingerprint: str) -> bool:
    """Whether the Parquet output ``path`` records ``run_fingerprint`` (made by this run's inputs and settings)."""
    if not path.exists():
        return False
    try:
        return A.read_parquet_metadata(path).get("run_fingerprint") == run_fingerprint
    except Exception:
        return False


def _compose(ctx: _Run, labels_fp, layers, sim, params, top, top_k, template, max_memory) -> None:
    """composed.parquet: compositional labels from the labels' candidates (dissect compose)."""
    from .compose import compose as compose_labels

    path = ctx.dir / "composed.parquet"
    from .compose import DEFAULT_SELECT

    compose_fp = fingerprint([labels_fp, "compose", top_k, template, DEFAULT_SELECT])
    reuse = _made_with(path, compose_fp)
    if reuse:
        note(f"reusing {path} (up to date)")
    else:
        # The labels' candidates are reused when they hold enough (--top >= --compose-top-k).
        compose_labels(ctx.images, ctx.activations, path, text=ctx.text, labels=ctx.labels if top >= top_k else None,
                       sim=sim, params=params, layers=layers, top_k=top_k, template=template, top=top,
                       device=str(ctx.device), max_memory=max_memory, extra_metadata={"run_fingerprint": compose_fp},
                       clip=ctx.loaded_clip)  # the run's model when in memory: not loaded again from a spec
    ctx.steps["composed"] = {"path": path.name, "reused": reuse}


def _explain(ctx: _Run, labels_fp, layers, max_concepts, max_memory) -> None:
    """explanations.parquet: linear explanations in CLIP mode over the run's concept set (dissect explain)."""
    from .explain import explain as explain_units

    path = ctx.dir / "explanations.parquet"
    explain_fp = fingerprint([labels_fp, "explain", max_concepts])
    reuse = _made_with(path, explain_fp)
    if reuse:
        note(f"reusing {path} (up to date)")
    else:
        ex = explain_units(ctx.activations, None, images=ctx.images, text=ctx.text, layers=layers,
                           max_concepts=max_concepts, device=str(ctx.device), max_memory=max_memory)
        ex.metadata["run_fingerprint"] = explain_fp
        from .explain import write_explanations

        write_explanations(ex, path)
        note(f"wrote {path}")
    ctx.steps["explanations"] = {"path": path.name, "reused": reuse}


def _write_manifest(ctx: _Run, model, weights, model_args, layers, summary, sim, resolved, dtype) -> None:
    manifest = {
        "probe": ctx.probe.describe(),
        "clip": str(ctx.clip_spec),
        "model": model,
        "weights": weights,
        "model_args": model_args or {},
        "layers": layers,
        "summary": summary,
        "concepts": {"name": ctx.concepts.name, "source": ctx.concepts.source, "n": len(ctx.concepts.concepts)},
        "similarity": sim,
        "params": resolved,
        "precision": {"clip": ctx.clip_precision, "target": ctx.target_precision},
        "dtype": dtype,
        "steps": ctx.steps,
        "seconds": round(time.perf_counter() - ctx.started, 2),
        "provenance": json.loads(A.provenance(stage="run")),
    }
    A.write_json(ctx.dir / "run.json", manifest)
    note(f"done in {manifest['seconds']:.1f}s: {ctx.labels}")
