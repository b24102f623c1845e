"""Scaling out and surviving preemption: shards of a probe, their merge, and resumable passes.

    --shard I/N     process the I-th of N contiguous slices of the probe (1-based) into a
                    shard artifact; `dissect merge` joins the N shards into the artifact a
                    single process would have written (same ids, same order).
    resume          a pass writes each completed chunk of images into OUT.partial/; run
                    again after a crash, SIGKILL or preemption, it loads those chunks and
                    encodes only the rest. The final file appears under its name only
                    when complete; the partial folder is removed then.
    torchrun        under torch.distributed (WORLD_SIZE > 1) rank r takes shard r+1 of
                    WORLD_SIZE on its own device, and rank 0 merges (``distributed``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import ArtifactError, MismatchError, UsageError
from .passes import DEFAULT_CHUNK_IMAGES, Checkpoint

@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: probe positions [start, stop)."""

    index: int
    count: int

    def range(self, n_images: int) -> tuple[int, int]:
        return (self.index - 1) * n_images // self.count, self.index * n_images // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str | None) -> Shard | None:
    """'2/8' -> Shard(2, 8); None -> None."""
    if value is None:
        return None
    i, sep, n = str(value).partition("/")
    try:
        shard = Shard(int(i), int(n))
    except ValueError:
        raise UsageError(f"--shard {value!r} is not I/N", hint="e.g. --shard 1/4 for the first of four shards") from None
    if not sep or shard.count < 1 or not 1 <= shard.index <= shard.count:
        raise UsageError(f"--shard {value}: I must be between 1 and N", hint="e.g. --shard 1/4 ... --shard 4/4")
    return shard


def shard_attrs(shard: Shard, n_images: int) -> dict[str, Any]:
    start, stop = shard.range(n_images)
    return {"shard": str(shard), "shard_range": json.dumps([start, stop]), "probe_n_images": n_images}


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------

def _shard_info(path, attrs) -> tuple[Shard, tuple[int, int], int]:
    if "shard" not in attrs:
        raise UsageError(f"{path} is not a shard (no 'shard' attribute)", hint="give the files written with --shard I/N")
    try:
        shard = parse_shard(str(attrs["shard"]))
    except UsageError:
        raise ArtifactError(f"{path}: attribute 'shard' is {str(attrs['shard'])[:60]!r}, not I/N",
                            hint="the file was damaged or edited: run its shard again") from None
    n = attrs.get("probe_n_images")
    if "shard_range" not in attrs or not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ArtifactError(f"{path}: shard {shard} lacks a valid 'shard_range' or 'probe_n_images' attribute",
                            hint="the file was damaged or edited: run its shard again")
    start, stop = json.loads(attrs["shard_range"])  # a [start, stop] pair: checked when the file was opened
    if (start, stop) != shard.range(n):
        raise ArtifactError(f"{path}: shard {shard} of {n} images should hold positions {list(shard.range(n))}, "
                            f"its attributes say [{start}, {stop}]", hint="the file was damaged or edited: run its shard again")
    return shard, (int(start), int(stop)), n


def merge(shards: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join the shard artifacts of one pass into ``out`` (images.h5 or activations.h5)."""
    if not shards:
        raise UsageError("no SHARDS given", hint="pass the files written with --shard 1/N ... --shard N/N")
    out = A.check_output_path(out, list(shards))
    kinds = {p: A.sniff(p) for p in shards}
    for p, kind in kinds.items():
        if kind not in (A.IMAGE_FORMAT, A.ACTIVATIONS_FORMAT):
            raise UsageError(f"{p} is a {kind} file: merge joins shards of embed-images and record",
                             hint="give the files written with --shard I/N")
    kind = kinds[shards[0]]
    infos = []
    for p in shards:
        if kinds[p] != kind:
            raise MismatchError(f"{p} is a {kinds[p]} file but {shards[0]} is a {kind} file", hint="merge one kind at a time")
        attrs = A.peek_attrs(p, kind)
        infos.append((p, attrs, *_shard_info(p, attrs)))
    first = infos[0][1]
    key = "fingerprint" if kind == A.IMAGE_FORMAT else "inputs_fingerprint"
    for p, attrs, shard, rng, n in infos:
        if attrs.get(key) != first.get(key):
            raise MismatchError(f"{p} was made from other inputs than {shards[0]} (model, weights, probe or precision)",
                                hint="merge shards of the same command")
        if shard.count != infos[0][2].count or n != infos[0][4]:
            raise MismatchError(f"{p} is shard {shard} of a {n}-image probe; {shards[0]} is {infos[0][2]} of {infos[0][4]}",
                                hint="merge shards of the same command")
    by_index: dict[int, Any] = {}
    for info in infos:
        if info[2].index in by_index:
            raise UsageError(f"shard {info[2]} is given twice ({by_index[info[2].index][0]} and {info[0]})",
                             hint="pass each shard once")
        by_index[info[2].index] = info
    count = infos[0][2].count
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise UsageError(f"shard {missing[0]}/{count} is missing ({len(missing)} of {count} missing)",
                         hint=f"run the command with --shard {missing[0]}/{count} and merge again")
    ordered = [by_index[i] for i in range(1, count + 1)]
    attrs = {k: v for k, v in first.items() if k not in ("shard", "shard_range", "probe_n_images", "format", "version", "_layers")}
    skipped = []
    for _, a, *_ in ordered:
        skipped += json.loads(a.get("skipped") or "[]")
    attrs["skipped"] = json.dumps(skipped)
    attrs["merged_from"] = json.dumps([str(Path(o[0]).name) for o in ordered])
    if kind == A.IMAGE_FORMAT:
        parts = [A.read_image_embeddings(o[0]) for o in ordered]
        ids = [k for e in parts for k in e.keys]
        emb = np.concatenate([e.embeddings for e in parts])
        stored = A.read_header(ordered[0][0], kind).dataset("embeddings", ordered[0][0]).dtype
        dtype = "float16" if stored.itemsize < 4 else "float32"
        A.write_embeddings(out, kind, emb, ids, parts[0].clip_model, parts[0].clip_pretrained, attrs, dtype=dtype)
    else:
        # Layers are copied block by block from the shard files, never held whole (an SAE's latents can be
        # larger than memory).
        parts = [A.read_activations(o[0], data=False) for o in ordered]
        layers = list(parts[0].layers)
        for o, part in zip(ordered, parts):
            if list(part.layers) != layers:
                raise MismatchError(f"{o[0]} holds layers {', '.join(part.layers)}, {ordered[0][0]} {', '.join(layers)}",
                                    hint="record the same --layers in every shard")
            for name in layers:  # a direction entry made from another set in some shard
                if part.layer_attrs[name].get("fingerprint") != parts[0].layer_attrs[name].get("fingerprint"):
                    raise MismatchError(f"{o[0]} holds {name} made otherwise than in {ordered[0][0]}",
                                        hint="record every shard with the same --layers, --summary and --directions")
        ids = [k for p in parts for k in p.ids]
        data = {name: _ConcatRows([(o[0], len(p.ids)) for o, p in zip(ordered, parts)], name) for name in layers}
        dtypes = {n: "float16" for n, la in parts[0].layer_attrs.items() if la.get("dtype") == "float16"}
        A.write_activations(out, ids, data, parts[0].layer_attrs, attrs, dtypes=dtypes,
                            maps=_merged_maps([o[0] for o in ordered], [len(p.ids) for p in parts]) or None)
    return Path(out)


def _merged_maps(files: list, sizes: list[int]) -> dict[str, dict[str, Any]]:
    """The top maps of every shard (``record --maps``) as one pass's: each shard's rows moved past the shards
    before it, the K best kept (ties to the lower row, as one pass keeps them)."""
    from .maps import TopMaps

    held = [A.maps_in(f) for f in files]
    if any(h != held[0] for h in held):
        raise MismatchError(f"the shards hold maps of different layers or K ({files[0]}: {held[0] or 'none'})",
                            hint="record every shard with the same --maps")
    out: dict[str, dict[str, Any]] = {}
    for name in held[0]:
        total, offset, attrs = None, 0, {}
        for f, n in zip(files, sizes):
            m = A.read_maps(f, name)
            attrs = attrs or m.attrs
            rows = np.where(m.rows >= 0, m.rows + offset, -1)
            top = TopMaps.from_arrays({"values": m.values.astype(np.float16), "rows": rows, "scores": m.scores})
            if total is None:
                total = top
            else:
                total.merge(top)
            offset += n
        arrays = total.arrays()
        arrays["attrs"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}
        out[name] = arrays
    return out


class _ConcatRows:
    """Layer ``name`` of several activation files, one after the other, read a block of rows at a time
    (a source for ``artifacts.write_activations``)."""

    def __init__(self, files: list[tuple[Any, int]], name: str):
        self.files, self.name = files, name
        widths = {A.activation_layer_shape(f, name)[1] for f, _ in files}
        if len(widths) != 1:
            raise MismatchError(f"layer {name} has {sorted(widths)} units in different shards",
                                hint="merge shards of the same command")
        self.shape = (sum(n for _, n in files), widths.pop())

    def block(self, lo: int, hi: int) -> np.ndarray:
        out, start = [], 0
        for f, n in self.files:
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                out.append(A.read_activation_layer(f, self.name, rows=(a - start, b - start)))
            start += n
        return np.concatenate(out) if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------
# One plan for a pass: this process's slice, its output file, its checkpoint
# ---------------------------------------------------------------------------

def distributed_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun / SLURM with torch.distributed's variables, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def shutdown_distributed(success: bool = True) -> None:
    """Leave torch.distributed cleanly: wait for the other ranks (on success), then destroy the group.

    A rank that exits with the gloo/nccl group still alive can abort at interpreter shutdown
    ("terminate called without an active exception") while rank 0 still works.
    """
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if success:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def init_process_group(device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if getattr(device, "type", "cpu") == "cuda" else "gloo")


@dataclass
class PassPlan:
    """One pass of this process: what it encodes, where each output goes, how it is checkpointed and merged."""

    outs: dict[str, Path]           # the file each consumer writes in this process (a shard file under torchrun)
    finals: dict[str, Path]         # the artifacts the user asked for
    positions: range | None         # the probe rows this process's outputs hold (None: all)
    encode: list[int]               # the probe positions to encode now (rows reused from an older file left out)
    shard: Shard | None
    checkpoint: Checkpoint | None
    extra_attrs: dict[str, Any]
    world: tuple[int, int, int] | None
    split: bool = True              # under torchrun: the ranks share the pass (False: rank 0 runs it alone)

    @property
    def active(self) -> bool:
        """Whether this process runs the pass (every process does, except ranks > 0 of an unsplit pass)."""
        return self.world is None or self.split or self.world[0] == 0

    def finish(self, device=None) -> dict[str, Path]:
        """Drop the checkpoint; under torchrun, rank 0 merges every rank's shard into each final file."""
        if self.checkpoint is not None and self.active:
            self.checkpoint.remove()
        if self.world is None:
            return dict(self.outs)
        import torch.distributed as dist

        rank, world, _ = self.world
        init_process_group(device)
        dist.barrier()
        if rank == 0 and self.split:
            for final in self.finals.values():
                parts = [shard_file(final, Shard(i, world)) for i in range(1, world + 1)]
                try:
                    merge(parts, final)
                finally:
                    for part in parts:
                        Path(part).unlink(missing_ok=True)
        dist.barrier()
        return dict(self.finals)


def shard_file(final: str | os.PathLike, shard: Shard) -> Path:
    final = Path(final)
    return final.with_name(f".{final.stem}.shard-{shard.index}-of-{shard.count}{final.suffix}")


def plan_pass(outs: dict[str, str | os.PathLike], n_images: int, shard: str | Shard | None, key: list[Any],
              checkpoint_every: int = DEFAULT_CHUNK_IMAGES, device=None, encode: list[int] | None = None,
              checkpoint_at: str | os.PathLike | None = None, split: bool = True) -> PassPlan:
    """This process's slice of the probe (``--shard`` or its torchrun rank), its outputs and its checkpoint.

    ``outs`` names each consumer's artifact. ``encode``: the probe positions that need
    encoding (default: all; fewer when an older file's rows are reused). The checkpoint
    (every ``checkpoint_every`` images; 0: none) lives in ``checkpoint_at`` (default: beside
    the single output) + ``.partial``, keyed by ``key`` (what is computed) and the slice.
    ``split`` False: under torchrun rank 0 runs the whole pass and the other ranks wait.
    """
    from .fingerprint import fingerprint

    shard = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    world = distributed_world()
    finals = {name: Path(path) for name, path in outs.items()}
    targets = dict(finals)
    if world is not None:
        if shard is not None:
            raise UsageError("--shard and torchrun both split the probe", hint="use one of them")
        init_process_group(device)
        if split:
            rank, size, _ = world
            shard = Shard(rank + 1, size)
            targets = {name: shard_file(path, shard) for name, path in finals.items()}
    positions = range(*shard.range(n_images)) if shard is not None else None
    if positions is not None and len(positions) == 0:
        raise UsageError(f"shard {shard} of a {n_images}-image probe is empty", hint="use fewer shards than images")
    active = world is None or split or world[0] == 0
    todo = (list(range(n_images)) if encode is None else sorted(encode)) if active else []
    if positions is not None:
        todo = [i for i in todo if positions.start <= i < positions.stop]
    if checkpoint_at is None:
        if len(targets) != 1:
            raise ValueError("a pass with several outputs needs checkpoint_at")
        base = next(iter(targets.values()))
    else:
        base = Path(checkpoint_at)
        if shard is not None:
            base = base.with_name(f"{base.name}-{shard.index}-of-{shard.count}")
    ckpt = None
    if checkpoint_every and todo:
        if checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be positive, got {checkpoint_every}")
        ckpt = Checkpoint(base, fingerprint(key + [sorted(outs), str(shard), n_images, todo if encode is not None else None,
                                                   checkpoint_every]), checkpoint_every)
    extra = shard_attrs(shard, n_images) if shard is not None else {}
    return PassPlan(targets, finals, positions, todo, shard, ckpt, extra, world, split)
