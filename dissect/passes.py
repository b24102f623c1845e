"""The batch engine: one pass over a probe feeding several consumers, resumable chunk by chunk.

A pass decodes each probe image once (in DataLoader workers, in parallel with the
models) and gives every consumer its own preprocessing of it: ``embed-images`` feeds
CLIP, ``record`` the target network, ``run`` both from one decode. A consumer
(:class:`PassConsumer`) is called on each batch and can hand over, and take back, the
rows of a finished chunk, so that a :class:`Checkpoint` saves each chunk as it completes
and a rerun after a crash or preemption restores those chunks instead of encoding them
again. Which slice of the probe a process takes and where its chunks go is planned by
``shards.plan_pass``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from . import artifacts as A
from .errors import InputError, ModelError, UsageError
from .probe import Probe, Skipped
from .runtime import DEFAULT_PRECISION
from .settings import Settings

#: Images per checkpointed chunk of a pass.
DEFAULT_CHUNK_IMAGES = 2048


class PassConsumer(Protocol):
    """What ``image_pass`` feeds (``embed.ImageEmbedder``, ``record.ActivationRecorder``).

    ``transform``: the consumer's own preprocessing of a decoded PIL image.
    ``__call__(indices, batch)``: the batch's results for probe positions ``indices``.
    ``state(rows)`` / ``restore(rows, arrays, info)``: a finished chunk's results, as
    numpy arrays (and JSON-able ``info_state()``, e.g. layer shapes), out and back in.
    Arrays named ``@...`` are not per-row but state of the whole pass so far (record's top
    maps), checked by the consumer's ``restore``.
    """

    transform: Callable[[Any], Any]

    def __call__(self, idx, batch) -> None: ...

    def state(self, rows) -> dict[str, np.ndarray]: ...

    def restore(self, rows, state: dict[str, np.ndarray], info: dict[str, Any]) -> None: ...

    def info_state(self) -> dict[str, Any]: ...

    def state_names(self) -> list[str]: ...

    def write(self, out: Path, probe: Probe, skipped: list[Skipped], positions: range | None,
              extra_attrs: dict[str, Any]) -> Path: ...


@dataclass(frozen=True)
class PassOptions(Settings):
    """How an image pass runs, not what it computes: the settings embed-images, record and run share.

    Built once by the CLI (or by ``PassOptions.of`` from a library call's keyword
    arguments) and handed to every pass.
    """

    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None          # None: none for probes under 512 images, else up to 8
    precision: str = DEFAULT_PRECISION
    strict: bool = False                # stop at the first unreadable image instead of skipping it
    checkpoint_every: int | None = None  # None: DEFAULT_CHUNK_IMAGES; 0: never
    channels_last: bool | None = None   # None: on for conv nets on CUDA
    shard: str | None = None            # "I/N": only that slice of the probe

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be positive (0: never), got {self.checkpoint_every}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be at least 0, got {self.workers}")

    @property
    def chunk(self) -> int:
        """Images per checkpointed chunk (0: no checkpoints)."""
        return DEFAULT_CHUNK_IMAGES if self.checkpoint_every is None else self.checkpoint_every

    def workers_for(self, n_images: int) -> int:
        return default_workers(n_images) if self.workers is None else self.workers


def default_workers(n_images: int) -> int:
    """DataLoader workers: none for small probes (start-up costs more than it saves)."""
    if n_images < 512:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))



@contextlib.contextmanager
def forward_errors(model: str, batch):
    """A model failing on the probe's batches (wrong input size, out of memory) becomes a one-line error."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise ModelError(f"out of GPU memory running {model} on a batch of {batch.shape[0]}",
                         hint="lower --batch-size") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shape = "x".join(map(str, batch.shape[1:]))
        raise ModelError(
            f"{model} cannot run on the probe's {shape} inputs: {first[:300]}",
            hint="set --input-size (and --crop-pct) to what the model expects, or check --model-arg",
        ) from None


# ---------------------------------------------------------------------------
# Batched loading
# ---------------------------------------------------------------------------

class _ProbeDataset:
    """torch Dataset over probe ``positions``; failures come back as values, not worker tracebacks.

    Each image is decoded once and given to every transform (``dissect run`` feeds CLIP
    and the target model, each with its own preprocessing, from one decode).
    """

    def __init__(self, probe: Probe, transforms, positions=None):
        self.probe, self.transforms = probe, list(transforms)
        self.positions = list(range(len(probe))) if positions is None else [int(i) for i in positions]

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, j):
        i = self.positions[j]
        try:
            img = self.probe.load(i)
            return i, [t(img) for t in self.transforms], None
        except InputError as e:
            return i, None, e.message
        except Exception as e:  # a transform failing on an odd image
            return i, None, f"cannot preprocess image {self.probe.locations[i]}: {e}"


def _collate(items):
    import torch

    errors = [(i, err) for i, _, err in items if err is not None]
    ok = [(i, x) for i, x, err in items if err is None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    n = len(ok[0][1]) if ok else 0
    batches = [torch.stack([x[j] for _, x in ok]) for j in range(n)]
    return idx, batches, errors, max(i for i, _, _ in items)


def _batches(probe: Probe, transforms, batch_size: int, workers: int, pin_memory: bool, positions=None):
    """(indices, batches, errors, last position attempted) in probe order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _ProbeDataset(probe, transforms, positions),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def image_pass(probe: Probe, consumers: list, batch_size: int, workers: int, description: str, device=None,
               strict: bool = False, positions=None, checkpoint=None) -> list[Skipped]:
    """One pass over the probe feeding every consumer its own preprocessing of each image.

    A consumer has a ``transform`` and is called as ``consumer(indices, batch)``;
    images are decoded once in the DataLoader workers, in parallel with the consumers'
    forward passes. On CUDA the batches come in pinned memory. Images that cannot be
    read or preprocessed are skipped for every consumer and returned (``strict``:
    the first one raises InputError instead).

    ``positions`` (sorted probe positions: a shard's range, or the images a grown probe
    added) limits the pass to those images.
    With a ``checkpoint`` (``shards.Checkpoint``) every completed chunk of
    ``checkpoint.chunk`` images is saved as it finishes, through the consumers'
    ``state(rows)`` / ``restore(rows, state)``, and chunks saved by an earlier,
    interrupted run are restored instead of encoded again.
    """

    from .runtime import note, progress, warn

    positions = list(range(len(probe)) if positions is None else positions)
    pin = device is not None and getattr(device, "type", str(device)) == "cuda"
    skipped: list[Skipped] = []
    size = checkpoint.chunk if checkpoint is not None else max(1, len(positions))
    chunks = [positions[c : c + size] for c in range(0, len(positions), size)]
    todo = list(range(len(chunks)))
    if checkpoint is not None:
        done = []
        for c in (c for c in checkpoint.done() if c < len(chunks)):
            try:
                skipped += _restore_chunk(checkpoint, c, chunks[c], consumers, probe)
                done.append(c)
            except _DamagedChunk as e:  # checked like fresh results: a bad chunk is encoded again
                warn(f"checkpoint chunk {c} of {checkpoint.dir} is damaged ({e}); encoding its {len(chunks[c])} "
                     f"images again")
                checkpoint.discard(c)
        todo = [c for c in todo if c not in set(done)]
        if done:
            note(f"resuming: {sum(len(chunks[c]) for c in done)} of {len(positions)} images restored from {checkpoint.dir}")
    remaining = [i for c in todo for i in chunks[c]]
    with progress(description, len(positions), "images") as advance:
        advance(len(positions) - len(remaining))
        pending = list(todo)
        for idx, batches, errors, last in _batches(probe, [c.transform for c in consumers], batch_size, workers, pin,
                                                   remaining):
            if errors:
                if strict:
                    raise InputError(errors[0][1], hint="remove or replace the file, or leave out --strict to skip such images")
                skipped.extend(Skipped(i, probe.ids[i], err) for i, err in errors)
            if len(idx):
                for consumer, batch in zip(consumers, batches):
                    consumer(idx, batch)
            n = len(idx) + len(errors)
            advance(n)
            while checkpoint is not None and pending and chunks[pending[0]][-1] <= last:
                try:
                    _save_chunk(checkpoint, pending.pop(0), chunks, consumers, skipped, probe)
                except (OSError, UsageError) as e:  # a checkpoint is insurance, not the result: go on without it
                    warn(f"cannot save checkpoints in {checkpoint.dir} ({getattr(e, 'strerror', None) or e}); going on without them")
                    checkpoint = None
    if positions and len(skipped) == len(positions):
        raise InputError(
            f"none of the {len(positions)} probe images could be read (e.g. {skipped[0].reason})",
            hint="check the PROBE paths and file formats",
        )
    return sorted(skipped, key=lambda s: s.index)


def execute(probe: Probe, consumers: dict[str, PassConsumer], plan, options: PassOptions, description: str,
            device=None) -> dict[str, Path]:
    """Run the pass ``plan`` (``shards.plan_pass``) and write each consumer's artifact; the artifacts made.

    The images of ``plan.encode`` are encoded (chunks a checkpoint holds are restored
    instead); each consumer then writes the rows of ``plan.positions`` to its output,
    leaving out the images the pass skipped; ``plan.finish`` merges the ranks' files
    under torchrun.
    """
    skipped: list[Skipped] = []
    try:
        if plan.active:
            if plan.encode:
                skipped = image_pass(probe, list(consumers.values()), options.batch_size,
                                     options.workers_for(len(plan.encode)), description, device, strict=options.strict,
                                     positions=plan.encode, checkpoint=plan.checkpoint)
            for name, consumer in consumers.items():
                consumer.write(plan.outs[name], probe, skipped, plan.positions, plan.extra_attrs)
        return plan.finish(device)
    finally:  # a pass that failed keeps its chunks for the rerun, but not its lock (a library caller may retry at once)
        if plan.checkpoint is not None:
            if plan.checkpoint.dir.is_dir() and not plan.checkpoint.done():
                plan.checkpoint.remove()  # nothing finished: nothing to leave behind
            plan.checkpoint.lock.release()


class _Collect:
    """A consumer that keeps the preprocessed batches themselves (for forward-only baselines)."""

    def __init__(self, transform):
        self.transform, self.batches = transform, []

    def __call__(self, idx, batch):
        self.batches.append((idx, batch))

    def state(self, rows):
        return {}

    def restore(self, rows, state, info):
        pass

    def info_state(self):
        return {}

    def state_names(self):
        return []


def decoded_batches(probe: Probe, transforms: list, batch_size: int, workers: int = 0) -> list[tuple[Any, list]]:
    """[(indices, [one batch per transform]), ...] of the whole probe, decoded once (unreadable images skipped)."""
    consumers = [_Collect(t) for t in transforms]
    image_pass(probe, consumers, batch_size, workers, "decode")
    return [(idx, [c.batches[b][1] for c in consumers]) for b, (idx, _) in enumerate(consumers[0].batches)]


class _DamagedChunk(Exception):
    """A checkpoint chunk that cannot be trusted (unreadable, foreign, or not what the pass computes)."""


_CHUNK_NAME = re.compile(r"chunk-[0-9]{6}\.npz")


def _restore_chunk(checkpoint, c: int, positions: list[int], consumers, probe: Probe) -> list[Skipped]:
    """Check chunk ``c`` like fresh results (its ids, every array's rows, dtype and finiteness) and give each
    consumer its rows back; the images the chunk skipped. _DamagedChunk when anything is off."""
    arrays, skip, extra, ids = checkpoint.load(c)
    skipped_pos = {int(i) for i, _ in skip}
    if ids != [probe.ids[i] for i in positions]:
        raise _DamagedChunk("its images are not this probe's")
    if not skipped_pos <= set(positions):
        raise _DamagedChunk("it lists skipped images outside it")
    rows = np.asarray(positions, dtype=np.int64)
    for name, arr in arrays.items():
        if name.split(":", 1)[-1].startswith("@"):
            continue  # a consumer's whole-pass state (record's top maps): its restore checks it
        if arr.ndim != 2 or arr.shape[0] != len(rows) or arr.dtype.kind != "f":
            raise _DamagedChunk(f"array {name} is {arr.dtype} {arr.shape}, not {len(rows)} rows of floats")
        kept = np.array([i not in skipped_pos for i in positions], dtype=bool)
        if not np.isfinite(arr[kept]).all():
            raise _DamagedChunk(f"array {name} holds NaN or Inf")
    for k, consumer in enumerate(consumers):
        mine = {n[len(f"{k}:"):]: v for n, v in arrays.items() if n.startswith(f"{k}:")}
        if set(mine) != set(consumer.state_names()):
            raise _DamagedChunk(f"it holds {sorted(mine)}, not {sorted(consumer.state_names())}")
        try:
            consumer.restore(rows, mine, extra.get(str(k), {}))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise _DamagedChunk(f"its results do not fit ({str(e)[:120]})") from None
    return [Skipped(int(i), probe.ids[int(i)], str(r)) for i, r in skip]


def _save_chunk(checkpoint, c: int, chunks, consumers, skipped: list[Skipped], probe: Probe) -> None:
    rows = np.asarray(chunks[c], dtype=np.int64)
    members = set(chunks[c])
    arrays, extra = {}, {}
    for k, consumer in enumerate(consumers):
        arrays.update({f"{k}:{n}": v for n, v in consumer.state(rows).items()})
        extra[str(k)] = consumer.info_state()
    skip = [[s.index, s.reason] for s in skipped if s.index in members]
    checkpoint.save(c, arrays, skip, extra, [probe.ids[i] for i in chunks[c]])




# ---------------------------------------------------------------------------
# Resumable passes
# ---------------------------------------------------------------------------

#: Checkpoints of this process not yet removed (what an interrupted command leaves for its rerun).
_LIVE: list["Checkpoint"] = []


def live_checkpoints() -> list["Checkpoint"]:
    """The checkpoints this process has opened and not removed, whose folders still exist."""
    return [c for c in _LIVE if c.dir.is_dir()]


class Checkpoint:
    """Completed chunks of a pass, in ``OUT.partial/`` beside the output.

    ``key`` identifies what is computed (inputs fingerprint, layers, shard, chunk size):
    chunks written for another key are discarded, never mixed in.
    """

    def __init__(self, out: str | os.PathLike, key: str, chunk: int):
        self.dir = Path(str(out) + ".partial")
        self.key, self.chunk = key, chunk
        meta = self.dir / "meta.json"
        self.dir.mkdir(exist_ok=True)
        # One process per partial folder: a second pass into the same output is refused, naming the first.
        self.lock = A.ProcessLock(self.dir / "lock", f"{out} (its checkpoint {self.dir})")
        try:
            ok = json.loads(meta.read_text()).get("key") == key
        except (OSError, ValueError):
            ok = False
        if not ok:  # chunks of another computation: never mixed in
            for old in self.dir.iterdir():
                if old.name != "lock":
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        if not meta.exists():
            with A.atomic_path(meta) as tmp:
                tmp.write_text(json.dumps({"key": key, "chunk": chunk}))
        _LIVE.append(self)

    def done(self) -> list[int]:
        # Only names this class writes (chunk-NNNNNN.npz): anything else in the folder is not a chunk of ours.
        return sorted(int(p.name[6:12]) for p in self.dir.glob("chunk-*.npz") if _CHUNK_NAME.fullmatch(p.name))

    def save(self, c: int, arrays: dict[str, np.ndarray], skipped: list[list], info: dict[str, Any] | None,
             ids: list[str]) -> None:
        """Chunk ``c``: each consumer's arrays, the images it skipped, JSON info and the ids of its images."""
        path = self.dir / f"chunk-{c:06d}.npz"
        blob = lambda obj: np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)  # noqa: E731
        with A.atomic_path(path, nbytes=sum(a.nbytes for a in arrays.values())) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"a/{k}": v for k, v in arrays.items()}, _skipped=blob(skipped), _info=blob(info or {}),
                         _ids=blob(ids))

    def load(self, c: int) -> tuple[dict[str, np.ndarray], list[list], dict[str, Any], list[str]]:
        """(arrays, skipped, info, ids) of chunk ``c``; _DamagedChunk if it cannot be read (truncated, foreign)."""
        try:
            with np.load(self.dir / f"chunk-{c:06d}.npz", allow_pickle=False) as z:
                arrays = {k[2:]: z[k] for k in z.files if k.startswith("a/")}
                meta = [json.loads(bytes(z[k]).decode()) for k in ("_skipped", "_info", "_ids")]
        except Exception as e:  # BadZipFile, EOFError, a missing member, invalid JSON...
            raise _DamagedChunk(f"unreadable: {type(e).__name__}") from None
        skipped, info, ids = meta
        if not (isinstance(skipped, list) and isinstance(info, dict) and isinstance(ids, list)):
            raise _DamagedChunk("its metadata is not what a dissect chunk holds")
        return arrays, skipped, info, ids

    def discard(self, c: int) -> None:
        (self.dir / f"chunk-{c:06d}.npz").unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.lock.release()
        if self in _LIVE:
            _LIVE.remove(self)
