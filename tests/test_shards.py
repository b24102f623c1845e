"""Scaling out and resuming (issue 8): --shard + merge, torchrun with gloo on the CPU, SIGKILL and rerun.

Tolerance: shards and ranks batch the images differently, and a GEMM over a batch of
another size may round differently in the last bit, so embeddings and activations are
compared to 1e-5 (absolute; they are O(1)) instead of bit for bit. Ids must be equal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dissect import artifacts as A

from conftest import make_images
from test_cli import TIMM, assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATOL = 1e-5


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("shard-probe"), 23, seed=5)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_clip, probe):
    d = tmp_path_factory.mktemp("single")
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", d / "images.h5", "--batch-size", 5)
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", d / "acts.h5", "--batch-size", 5)
    return d


def assert_same_images(a: Path, b: Path):
    ea, eb = A.read_image_embeddings(a), A.read_image_embeddings(b)
    assert ea.keys == eb.keys
    np.testing.assert_allclose(ea.embeddings, eb.embeddings, atol=ATOL)


def assert_same_activations(a: Path, b: Path):
    xa, xb = A.read_activations(a), A.read_activations(b)
    assert xa.ids == xb.ids and list(xa.layers) == list(xb.layers)
    for name in xa.layers:
        np.testing.assert_allclose(xa.layers[name], xb.layers[name], atol=ATOL)


def test_shards_merge_into_the_single_process_artifact(tmp_path, tiny_clip, probe, single):
    for i in (3, 1, 2):  # any order
        invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / f"i{i}.h5", "--shard", f"{i}/3", "--batch-size", 4)
        invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / f"a{i}.h5", "--shard", f"{i}/3", "--batch-size", 4)
    assert len(A.read_image_embeddings(tmp_path / "i1.h5").keys) == 7  # positions 0..6 of 23
    invoke("merge", tmp_path / "i2.h5", tmp_path / "i3.h5", tmp_path / "i1.h5", "-o", tmp_path / "images.h5")
    invoke("merge", tmp_path / "a1.h5", tmp_path / "a2.h5", tmp_path / "a3.h5", "-o", tmp_path / "acts.h5")
    assert_same_images(tmp_path / "images.h5", single / "images.h5")
    assert_same_activations(tmp_path / "acts.h5", single / "acts.h5")
    # The merged file is a normal artifact: label reads it.
    (tmp_path / "c.txt").write_text("red\nblue\nsquare\n")
    invoke("label", "-i", tmp_path / "images.h5", "-a", tmp_path / "acts.h5", "--concepts", tmp_path / "c.txt",
           "--param", "top_k=5", "-o", tmp_path / "l.parquet")


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path, tiny_clip, probe, single):
    for i in (1, 2):
        invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / f"i{i}.h5", "--shard", f"{i}/3")
    r = invoke("merge", tmp_path / "i1.h5", tmp_path / "i2.h5", "-o", tmp_path / "m.h5", ok=False)
    assert_one_line_error(r, "shard 3/3 is missing", "--shard 3/3")
    r = invoke("merge", tmp_path / "i1.h5", tmp_path / "i1.h5", "-o", tmp_path / "m.h5", ok=False)
    assert_one_line_error(r, "given twice")
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i3.h5", "--shard", "3/3", "--precision", "bf16")
    r = invoke("merge", tmp_path / "i1.h5", tmp_path / "i2.h5", tmp_path / "i3.h5", "-o", tmp_path / "m.h5", ok=False)
    assert_one_line_error(r, "other inputs")
    r = invoke("merge", single / "images.h5", "-o", tmp_path / "m.h5", ok=False)
    assert_one_line_error(r, "is not a shard")
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("bad", ["3/2", "0/2", "1/0", "x/2", "2"])
def test_bad_shard_arguments(tmp_path, tiny_clip, probe, bad):
    r = invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5", "--shard", bad, ok=False)
    assert_one_line_error(r, "--shard", code=2)


def _dissect_cmd() -> list[str]:
    return [sys.executable, "-m", "dissect.cli.main"]


def torchrun_dissect(*args) -> None:
    """`torchrun --standalone --nproc-per-node 2 dissect ARGS` (gloo on the CPU); it must succeed."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    env = dict(os.environ, OMP_NUM_THREADS="1", DISSECT_QUIET="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", *_dissect_cmd(),
                           *[str(a) for a in args]], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # 16 s: two real processes; the default suite keeps the in-process shard and merge tests
def test_torchrun_two_processes_write_the_single_process_artifact(tmp_path, tiny_clip, probe, single):
    torchrun_dissect("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "images.h5", "--batch-size", 4)
    torchrun_dissect("record", probe, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "acts.h5", "--batch-size", 4)
    assert_same_images(tmp_path / "images.h5", single / "images.h5")
    assert_same_activations(tmp_path / "acts.h5", single / "acts.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.h5", "images.h5"]  # shard files merged and removed


def _kill_after_chunks(args: list[str], env: dict, partial: Path, chunks: int) -> int:
    """Start the command, SIGKILL it once ``partial`` holds ``chunks`` checkpointed chunks; how many it holds then."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("chunk-*.npz"))) < chunks and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the pass ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(partial.glob("chunk-*.npz")))


@pytest.mark.slow  # 13 s a command; the resume path is covered in the default run by test_reliability
@pytest.mark.parametrize("command", ["embed-images", "record"])
def test_sigkill_then_rerun_continues_from_the_last_chunk(tmp_path, tiny_clip, command):
    probe = make_images(tmp_path / "probe", 120, seed=2, size=48)
    out = tmp_path / "out.h5"
    what = ["--clip", tiny_clip] if command == "embed-images" else [*TIMM, "--layers", "layer1,fc"]
    args = [*_dissect_cmd(), command, str(probe), *what, "-o", str(out), "--batch-size", "2", "--checkpoint-every", "10",
            "--workers", "0", "--device", "cpu"]
    env = dict(os.environ, DISSECT_QUIET="1", OMP_NUM_THREADS="1")
    partial = Path(str(out) + ".partial")
    done = _kill_after_chunks(args, env, partial, 3)
    assert not out.exists()
    assert 3 <= done < 12
    again = subprocess.run([a if a != "1" else a for a in args], capture_output=True, text=True,
                           env=dict(env, DISSECT_QUIET=""), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {done * 10} of 120 images restored" in again.stderr.replace("\n", " ")
    assert not partial.exists()
    ref = tmp_path / "ref.h5"
    subprocess.run(args[:args.index("-o")] + ["-o", str(ref), "--batch-size", "2", "--checkpoint-every", "0",
                                               "--workers", "0", "--device", "cpu"], check=True, env=env, timeout=300)
    (assert_same_images if command == "embed-images" else assert_same_activations)(out, ref)


@pytest.mark.slow  # 15 s; test_crafted and test_reliability keep checkpoint/resume in the default suite
def test_run_shard_task_checkpoints_and_resumes_like_every_pass(tmp_path, tiny_clip):
    """A job-array task (run --shard) killed mid-pass continues from its last chunk, as embed-images and record do."""
    probe = make_images(tmp_path / "probe", 120, seed=2, size=48)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    run_dir = tmp_path / "run"
    args = [*_dissect_cmd(), "run", str(probe), "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts",
            str(concepts), "-o", str(run_dir), "--shard", "2/2", "--batch-size", "2", "--checkpoint-every", "10",
            "--workers", "0", "--device", "cpu"]
    env = dict(os.environ, DISSECT_QUIET="1", OMP_NUM_THREADS="1")
    partial = run_dir / "shards" / "pass-2-of-2.partial"
    done = _kill_after_chunks(args, env, partial, 2)
    assert 2 <= done < 6 and not (run_dir / "shards" / "images.2-of-2.h5").exists()
    again = subprocess.run(args, capture_output=True, text=True, env=dict(env, DISSECT_QUIET=""), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {done * 10} of 60 images restored" in again.stderr.replace("\n", " ")
    assert not partial.exists()
    ref = tmp_path / "ref"
    subprocess.run(args[:args.index("-o")] + ["-o", str(ref), "--shard", "2/2", "--batch-size", "2",
                                               "--checkpoint-every", "0", "--workers", "0", "--device", "cpu"],
                   check=True, env=env, timeout=300)
    assert_same_images(run_dir / "shards" / "images.2-of-2.h5", ref / "shards" / "images.2-of-2.h5")
    assert_same_activations(run_dir / "shards" / "activations.2-of-2.h5", ref / "shards" / "activations.2-of-2.h5")


# ---------------------------------------------------------------------------
# Incremental growth: new images, new concepts
# ---------------------------------------------------------------------------

def test_a_grown_probe_encodes_only_the_new_images(tmp_path, tiny_clip):
    from PIL import Image

    probe = make_images(tmp_path / "probe", 20, seed=8)
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5")
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "a.h5")
    make_images(tmp_path / "more", 5, seed=9)
    for f in (tmp_path / "more").rglob("*.png"):
        f.rename(probe / "class0" / f"new-{f.name}")
    changed = sorted((probe / "class1").glob("*.png"))[0]
    Image.new("RGB", (30, 30), (1, 2, 3)).save(changed)  # rewritten: another size, encoded again
    r = invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5")
    n_new = len(list((probe / "class0").glob("new-*")))
    assert f"reusing 19 unchanged image embeddings; embedding {n_new + 1} new or changed" in r.stderr
    r = invoke("record", probe, *TIMM, "--layers", "fc", "-o", tmp_path / "a.h5")
    assert f"reusing 19 unchanged images, recording {n_new + 1} new or changed" in r.stderr
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "fresh-i.h5")
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "fresh-a.h5")
    assert_same_images(tmp_path / "i.h5", tmp_path / "fresh-i.h5")
    assert_same_activations(tmp_path / "a.h5", tmp_path / "fresh-a.h5")
    # Asking for a layer the old file lacks, while the probe changed, is refused with what to do.
    make_images(tmp_path / "more2", 1, seed=10)
    next((tmp_path / "more2").rglob("img*")).rename(probe / "class2" / "newer.jpg")
    r = invoke("record", probe, *TIMM, "--layers", "layer2", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "does not hold layer2", "--layers layer1,fc")


def test_new_concepts_embed_only_the_new_ones(tmp_path, tiny_clip, monkeypatch):
    (tmp_path / "c.txt").write_text("red\nblue\ngreen\n")
    invoke("embed-text", tmp_path / "c.txt", "--clip", tiny_clip, "-o", tmp_path / "t.h5")
    (tmp_path / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\n")
    import dissect.clip as dclip

    seen = []
    real = dclip.encode_tokens
    monkeypatch.setattr("dissect.embed.encode_tokens", lambda clip, tokens, *a, **k: seen.append(len(tokens)) or real(clip, tokens, *a, **k))
    r = invoke("embed-text", tmp_path / "c.txt", "--clip", tiny_clip, "-o", tmp_path / "t.h5")
    assert "reusing 3 concept embeddings; embedding 2 new" in r.stderr and sum(seen) == 2
    monkeypatch.undo()
    invoke("embed-text", tmp_path / "c.txt", "--clip", tiny_clip, "-o", tmp_path / "fresh.h5")
    a, b = A.read_text_embeddings(tmp_path / "t.h5"), A.read_text_embeddings(tmp_path / "fresh.h5")
    assert a.keys == b.keys
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=ATOL)


@pytest.mark.parametrize("sim,param", [("softwpmi", "top_k=5"), ("wpmi", "top_k=5"), ("rank-reorder", "top_fraction=0.2")])
def test_torchrun_label_splits_neurons_and_gives_the_single_process_labels(tmp_path, single, sim, param):
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\ntriangle\ndog\ncat\n")
    args = ["label", "-i", str(single / "images.h5"), "-a", str(single / "acts.h5"), "--concepts", str(tmp_path / "c.txt"),
            "--sim", sim, "--param", param]
    invoke(*args, "-o", tmp_path / "one.parquet")
    torchrun_dissect(*args, "-o", tmp_path / "two.parquet")
    a = pq.read_table(tmp_path / "one.parquet").to_pandas()
    b = pq.read_table(tmp_path / "two.parquet").to_pandas()
    assert list(a.layer) == list(b.layer) and list(a.unit) == list(b.unit)
    assert list(a.label) == list(b.label)
    np.testing.assert_allclose(b.similarity, a.similarity, rtol=1e-9, atol=1e-12)
    assert [list(x) for x in a.candidates] == [list(x) for x in b.candidates]


def test_torchrun_run_gives_the_single_process_run(tmp_path, tiny_clip, probe):
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\n")
    args = ["run", str(probe), "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", str(tmp_path / "c.txt"),
            "--param", "top_k=5", "--batch-size", "4"]
    invoke(*args, "-o", tmp_path / "one")
    torchrun_dissect(*args, "-o", tmp_path / "two")
    assert_same_images(tmp_path / "two" / "images.h5", tmp_path / "one" / "images.h5")
    assert_same_activations(tmp_path / "two" / "activations.h5", tmp_path / "one" / "activations.h5")
    a = pq.read_table(tmp_path / "one" / "labels.parquet").to_pandas()
    b = pq.read_table(tmp_path / "two" / "labels.parquet").to_pandas()
    assert list(a.label) == list(b.label) and list(a.unit) == list(b.unit)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["activations.h5", "images.h5", "labels.parquet",
                                                                     "run.json", "text.h5"]


def test_run_shards_of_a_job_array_then_one_run_merges_and_labels(tmp_path, tiny_clip, probe):
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("red\nblue\ngreen\nsquare\ncircle\n")
    args = ["run", probe, "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", tmp_path / "c.txt",
            "--param", "top_k=5", "--batch-size", 4]
    invoke(*args, "-o", tmp_path / "one")
    for i in (2, 1):
        r = invoke(*args, "-o", tmp_path / "arr", "--shard", f"{i}/2")
        assert "run the same command without --shard" in r.stderr
    assert not (tmp_path / "arr" / "labels.parquet").exists()
    r = invoke(*args, "-o", tmp_path / "arr")
    assert "merged 2 shards" in r.stderr and "reusing" in r.stderr
    assert not (tmp_path / "arr" / "shards").exists()
    assert_same_images(tmp_path / "arr" / "images.h5", tmp_path / "one" / "images.h5")
    assert_same_activations(tmp_path / "arr" / "activations.h5", tmp_path / "one" / "activations.h5")
    a = pq.read_table(tmp_path / "one" / "labels.parquet").to_pandas()
    b = pq.read_table(tmp_path / "arr" / "labels.parquet").to_pandas()
    assert list(a.label) == list(b.label)
    # An incomplete set is refused with the missing shard named.
    invoke(*args, "-o", tmp_path / "arr2", "--shard", "1/3")
    r = invoke(*args, "-o", tmp_path / "arr2", ok=False)
    assert_one_line_error(r, "shard 2/3 is missing")
