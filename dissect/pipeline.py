"""``dissect run``: the whole pipeline into one run folder, reusing what is already there.

    RUN/images.h5        CLIP image embeddings of the probe
    RUN/text.h5          CLIP text embeddings of the concept set
    RUN/activations.h5   target activations (layers are added, never recomputed)
    RUN/labels.parquet   the labels
    RUN/run.json         what was asked, which artifacts were reused, timings

Each artifact is reused when its recorded fingerprint equals the fingerprint of
the inputs asked for now (model, weights, preprocessing, probe, concepts,
parameters, format version), and recomputed otherwise, with a message saying
which and why. Nothing stale is reused silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from . import artifacts as A
from .clip import clip_fingerprint, parse_clip_spec
from .concepts import load_concepts
from .embed import ImageEmbedder, check_dtype, embed_text, image_embeddings_fingerprint, text_embeddings_fingerprint
from .errors import MismatchError, UsageError
from .fingerprint import fingerprint
from .label import label
from .models import PreprocessOverrides, load_target
from .passes import default_workers, image_pass
from .probe import open_probe
from .record import ActivationRecorder, activations_inputs_fingerprint, plan_record
from .runtime import DEFAULT_PRECISION, info, resolve_device, resolve_precision
from .shards import Shard, _init_process_group, distributed_world, merge, parse_shard, shard_attrs, shard_file
from .similarity import resolve_params


def _reusable(path: Path, kind: str, expected: str) -> tuple[bool, str]:
    attrs = A.peek_attrs(path, kind)
    if attrs is None:
        return False, "missing" if not path.exists() else "unreadable"
    if attrs.get("fingerprint") != expected:
        return False, "made from other inputs"
    return True, "up to date"


SHARDS = "shards"


def _run_shard(shard, probe_set, get_clip, clip_fp, model, weights, model_args, overrides, layers, summary, layout, run_dir,
               dev, precisions, batch_size, workers, strict, channels_last, dtype) -> None:
    """One task of a job array: embed and record slice ``shard`` into RUN/shards/; a later run without --shard merges."""
    folder = run_dir / SHARDS
    folder.mkdir(exist_ok=True)
    tag = f"{shard.index}-of-{shard.count}"
    images_out, acts_out = folder / f"images.{tag}.h5", folder / f"activations.{tag}.h5"
    target = load_target(model, weights, model_args, overrides, dev)
    plan = plan_record(probe_set, target, layers, acts_out, summary, layout, dev, precisions[1])
    positions = range(*shard.range(len(probe_set)))
    extra = shard_attrs(shard, len(probe_set))
    embedder = ImageEmbedder(get_clip(), len(probe_set), precisions[0])
    workers = default_workers(len(positions)) if workers is None else workers
    with ActivationRecorder(target, plan.layers, len(probe_set), summary, layout, dev, precisions[1], channels_last,
                            infos=plan.infos) as rec:
        skipped = image_pass(probe_set, [embedder, rec], batch_size, workers, f"shard {shard}: embed images + record",
                             dev, strict=strict, positions=positions)
        embedder.write(images_out, probe_set, batch_size, dtype, skipped, positions=positions, extra_attrs=extra)
        rec.write(acts_out, probe_set, plan.inputs_fp, batch_size, keep=False, skipped=skipped, positions=positions,
                  extra_attrs=extra)
    info(f"shard {shard} done in {folder}; when all {shard.count} are, run the same command without --shard to merge and label")
    return None


def _merge_shard_sets(run_dir: Path) -> None:
    """Join RUN/shards/ (written by run --shard) into images.h5 and activations.h5, then remove them."""
    folder = run_dir / SHARDS
    if not folder.is_dir():
        return
    for stem in ("images", "activations"):
        parts = sorted(folder.glob(f"{stem}.*-of-*.h5"))
        if not parts:
            continue
        merge([str(x) for x in parts], run_dir / f"{stem}.h5")
        info(f"merged {len(parts)} shards into {run_dir / f'{stem}.h5'}")
        for x in parts:
            x.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


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
    device: str = "auto",
    batch_size: int = 64,
    text_batch_size: int = 256,
    workers: int | None = None,
    chunk: int | None = None,
    max_memory: int | None = None,
    precision: str = DEFAULT_PRECISION,
    dtype: str = "float32",
    channels_last: bool | None = None,
    strict: bool = False,
    checkpoint_every: int | None = None,
    shard: str | None = None,
    compose: bool = False,
    compose_top_k: int = 10,
    compose_template: str = "{a} {b}",
) -> Path:
    """Run embed-images, embed-text, record and label into the folder ``out``.

    Missing image embeddings and activations are made in one pass over the probe
    (each image decoded once for both models).
    """
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists and is not a folder", hint="give a run folder with -o")
    if not run_dir.parent.is_dir():
        raise UsageError(f"folder {run_dir.parent} does not exist", hint=f"create it first (mkdir -p {run_dir.parent})")
    run_dir.mkdir(exist_ok=True)
    dev = resolve_device(device)
    resolved = resolve_params(sim, params)  # validate before any expensive work
    check_dtype(dtype)
    probe_set = open_probe(probe)
    concept_set = load_concepts(concepts)
    clip_spec = parse_clip_spec(clip)
    clip_fp = clip_fingerprint(clip_spec)
    steps: dict[str, Any] = {}
    t0 = time.perf_counter()
    loaded_clip = None

    def get_clip():
        nonlocal loaded_clip
        if loaded_clip is None:
            from .clip import load_clip

            loaded_clip = load_clip(clip_spec, dev)
        return loaded_clip

    def ensure(path: Path, kind: str, expected: str, compute) -> bool:
        """Reuse ``path`` when its fingerprint is ``expected``; otherwise compute it."""
        ok, why = _reusable(path, kind, expected)
        info(f"{'reusing' if ok else 'computing'} {path} ({why})")
        if not ok:
            compute()
        steps[path.stem] = {"path": path.name, "reused": ok}
        return ok

    images_path, text_path = run_dir / "images.h5", run_dir / "text.h5"
    clip_precision = resolve_precision(precision, dev, "clip")
    target_precision = resolve_precision(precision, dev, "target")
    # Under torchrun every rank runs this function: rank 0 writes the shared files, the
    # image pass is split by rank, label splits neurons; barriers keep the ranks in step.

    world = distributed_world()
    lead = world is None or world[0] == 0

    def barrier():
        if world is not None:
            import torch.distributed as dist

            dist.barrier()

    if world is not None:
        _init_process_group(dev)
    if shard is not None:
        if world is not None:
            raise UsageError("--shard and torchrun both split the probe", hint="use one of them")
        return _run_shard(parse_shard(shard), probe_set, get_clip, clip_fp, model, weights, model_args, overrides, layers,
                          summary, layout, run_dir, dev, (clip_precision, target_precision), batch_size, workers, strict, channels_last, dtype)
    if lead:
        _merge_shard_sets(run_dir)
        ensure(text_path, A.TEXT_FORMAT, text_embeddings_fingerprint(clip_fp, concept_set.fingerprint, clip_precision),
               lambda: embed_text(concept_set, get_clip(), text_path, batch_size=text_batch_size, precision=clip_precision,
                                  dtype=dtype, strict=strict))
    barrier()
    images_ok, why = _reusable(images_path, A.IMAGE_FORMAT, image_embeddings_fingerprint(clip_fp, probe_set.fingerprint, clip_precision))
    steps[images_path.stem] = {"path": images_path.name, "reused": images_ok}

    acts_path = run_dir / "activations.h5"
    target = load_target(model, weights, model_args, overrides, dev)
    inputs_fp = activations_inputs_fingerprint(target, probe_set.fingerprint, target_precision)
    attrs = A.peek_attrs(acts_path, A.ACTIVATIONS_FORMAT)
    if attrs is not None and attrs.get("inputs_fingerprint") != inputs_fp:
        info(f"recomputing {acts_path} (made from another model, weights, preprocessing, probe or precision)")
        if lead:
            acts_path.unlink()
    barrier()
    try:
        plan = plan_record(probe_set, target, layers, acts_path, summary, layout, dev, target_precision)
    except MismatchError:
        # Same inputs but layers recorded with another summary: start this file over.
        info(f"recomputing {acts_path} (recorded with another --summary or --layout)")
        barrier()
        if lead:
            acts_path.unlink()
        barrier()
        plan = plan_record(probe_set, target, layers, acts_path, summary, layout, dev, target_precision)
    steps["activations"] = {"path": acts_path.name, "reused_layers": plan.have}
    info(f"{'reusing' if images_ok else 'computing'} {images_path} ({why})")
    if plan.todo:
        info(f"recording {', '.join(plan.todo)} into {acts_path}" + (f" (reusing {', '.join(plan.have)})" if plan.have else ""))
    else:
        info(f"reusing {acts_path} (holds {', '.join(plan.layers)})")

    # One pass over the probe for whatever is missing: each image is decoded once and
    # fed to CLIP and to the target model, each with its own preprocessing.
    workers = default_workers(len(probe_set)) if workers is None else workers
    if images_ok:
        loaded_clip = None  # made the text embeddings; not needed for the pass
    consumers: list[Any] = []
    embedder = ImageEmbedder(get_clip(), len(probe_set), clip_precision) if not images_ok else None
    if embedder is not None:
        consumers.append(embedder)
    with contextlib.ExitStack() as stack:
        rec = None
        if plan.todo:
            rec = stack.enter_context(ActivationRecorder(target, plan.todo, len(probe_set), summary, layout, dev, target_precision,
                                                         channels_last, infos=plan.infos))
            consumers.append(rec)
        skipped: list = []
        ckpt = None
        # torchrun: each rank encodes its slice into shard files that rank 0 merges. Adding
        # layers to an existing activations file is left to rank 0 alone.
        split = world is not None and consumers and not plan.exists
        shard = Shard(world[0] + 1, world[1]) if split else None
        positions = range(*shard.range(len(probe_set))) if shard else None
        img_out = shard_file(images_path, shard) if shard else images_path
        acts_out = shard_file(acts_path, shard) if shard else acts_path
        extra = shard_attrs(shard, len(probe_set)) if shard else None
        if world is not None and not split and not lead:
            consumers = []  # rank 0 does this pass
        if consumers:
            what = " + ".join((["embed images"] if embedder else []) + ([f"record {len(plan.todo)} layer(s)"] if rec else []))
            if checkpoint_every != 0:
                from .passes import DEFAULT_CHUNK_IMAGES, Checkpoint

                key = fingerprint([bool(embedder), clip_precision, target_precision, plan.inputs_fp if rec else None, plan.todo if rec else None,
                                   summary, layout, probe_set.fingerprint, str(clip_fp), str(shard)])
                ckpt = Checkpoint(run_dir / ("pass" if shard is None else f"pass-{shard.index}"), key,
                                  checkpoint_every or DEFAULT_CHUNK_IMAGES)
            skipped = image_pass(probe_set, consumers, batch_size, workers, what, dev, strict=strict, checkpoint=ckpt,
                                 positions=positions)
            if embedder is not None:
                embedder.write(img_out, probe_set, batch_size, dtype, skipped, positions=positions, extra_attrs=extra)
            if rec is not None:
                rec.write(acts_out, probe_set, plan.inputs_fp, batch_size, keep=plan.exists, skipped=skipped,
                          positions=positions, extra_attrs=extra)
        if ckpt is not None:
            ckpt.remove()
        barrier()
        if split and lead:
            for final, made in ((images_path, embedder is not None), (acts_path, rec is not None)):
                if made:
                    parts = [shard_file(final, Shard(i, world[1])) for i in range(1, world[1] + 1)]
                    merge(parts, final)
                    for part in parts:
                        part.unlink(missing_ok=True)
        barrier()
    loaded_clip = embedder = rec = consumers = None  # free both models before labelling
    del target

    labels_path = run_dir / "labels.parquet"
    images_fp = A.peek_attrs(images_path, A.IMAGE_FORMAT)["fingerprint"]
    text_fp = A.peek_attrs(text_path, A.TEXT_FORMAT)["fingerprint"]
    labels_fp = fingerprint([A.LABELS_FORMAT, A.FORMAT_VERSION, images_fp, text_fp, inputs_fp, sorted(layers), summary,
                             layout, sim, resolved, seed, top])
    reuse_labels = False
    if labels_path.exists():
        try:
            reuse_labels = A.read_labels_metadata(labels_path).get("run_fingerprint") == labels_fp
        except Exception:
            reuse_labels = False
    if reuse_labels:
        info(f"reusing {labels_path} (up to date)")
    else:
        label(images_path, acts_path, labels_path, text=text_path, sim=sim, params=params, layers=layers, top=top,
              seed=seed, device=str(dev), chunk=chunk, max_memory=max_memory, extra_metadata={"run_fingerprint": labels_fp})
    steps["labels"] = {"path": labels_path.name, "reused": reuse_labels}

    if compose and lead:  # compose is not split across ranks: rank 0 runs it
        # Optional: compositional labels from the labels' candidates (dissect compose).
        from .compose import compose as compose_labels

        composed_path = run_dir / "composed.parquet"
        compose_fp = fingerprint([labels_fp, "compose", compose_top_k, compose_template])
        reuse = False
        if composed_path.exists():
            try:
                import pyarrow.parquet as pq

                meta = json.loads(pq.read_schema(composed_path).metadata[b"dissect"])
                reuse = meta.get("run_fingerprint") == compose_fp
            except Exception:
                reuse = False
        if reuse:
            info(f"reusing {composed_path} (up to date)")
        else:
            # The labels' candidates are reused when they hold enough (--top >= --compose-top-k).
            compose_labels(images_path, acts_path, composed_path, text=text_path,
                           labels=labels_path if top >= compose_top_k else None, sim=sim, params=params,
                           layers=layers, top_k=compose_top_k, template=compose_template, top=top, device=str(dev),
                           max_memory=max_memory, extra_metadata={"run_fingerprint": compose_fp})
        steps["composed"] = {"path": composed_path.name, "reused": reuse}

    manifest = {
        "probe": probe_set.describe(),
        "clip": str(clip_spec),
        "model": model,
        "weights": weights,
        "model_args": model_args or {},
        "layers": layers,
        "summary": summary,
        "concepts": {"name": concept_set.name, "source": concept_set.source, "n": len(concept_set.concepts)},
        "similarity": sim,
        "params": resolved,
        "precision": {"clip": clip_precision, "target": target_precision},
        "dtype": dtype,
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "provenance": json.loads(A.provenance(stage="run")),
    }
    if lead:
        with A.atomic_path(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        info(f"done in {manifest['seconds']:.1f}s: {labels_path}")
    return labels_path

