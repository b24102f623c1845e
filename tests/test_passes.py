"""The image passes: decode once for CLIP and the target, --precision, --dtype float16, channels-last."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from dissect import artifacts as A
from dissect.probe import Probe, open_probe

from test_cli import TIMM, assert_one_line_error, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def count_decodes(monkeypatch):
    """Counts Probe.load calls (image decodes) in this process (workers=0 keeps them here)."""
    calls = []
    original = Probe.load

    def load(self, i):
        calls.append(i)
        return original(self, i)

    monkeypatch.setattr(Probe, "load", load)
    return calls


def test_run_decodes_each_image_once_and_matches_separate_passes(tmp_path, tiny_clip, probe_dir, count_decodes):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\ncircle\n")
    common = ["--workers", 0, "--batch-size", 7, "--precision", "fp32"]
    invoke("run", probe_dir, "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", concepts,
           "-o", tmp_path / "run", "--param", "top_k=10", *common)
    n = len(open_probe([str(probe_dir)]))
    assert sorted(count_decodes) == list(range(n))  # one decode per image for both models

    count_decodes.clear()
    invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / "images.h5", *common)
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "acts.h5", *common)
    assert len(count_decodes) == 2 * n  # separate passes decode twice

    run_img = A.read_image_embeddings(tmp_path / "run" / "images.h5")
    sep_img = A.read_image_embeddings(tmp_path / "images.h5")
    assert run_img.keys == sep_img.keys
    np.testing.assert_array_equal(run_img.embeddings, sep_img.embeddings)
    for layer in ("layer1", "fc"):
        np.testing.assert_array_equal(A.read_activation_layer(tmp_path / "run" / "activations.h5", layer),
                                      A.read_activation_layer(tmp_path / "acts.h5", layer))


def test_run_with_only_activations_missing_decodes_for_the_target_alone(tmp_path, tiny_clip, probe_dir, count_decodes):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\ncircle\n")
    args = ["run", probe_dir, "--clip", tiny_clip, *TIMM, "--concepts", concepts, "-o", tmp_path / "run",
            "--param", "top_k=10", "--workers", 0]
    invoke(*args, "--layers", "layer1")
    count_decodes.clear()
    r = invoke(*args, "--layers", "layer1,layer2")  # images reused, one layer added
    assert len(count_decodes) == len(open_probe([str(probe_dir)]))
    assert "reusing" in r.stderr and "recording layer2" in r.stderr
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["steps"]["images"]["reused"] and manifest["steps"]["activations"]["reused_layers"] == ["layer1"]


def test_bf16_forward_passes_are_close_to_fp32_and_recorded(tmp_path, tiny_clip, probe_dir):
    for p in ("fp32", "bf16"):
        invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / f"img-{p}.h5", "--precision", p)
        invoke("record", probe_dir, *TIMM, "--layers", "layer2", "-o", tmp_path / f"acts-{p}.h5", "--precision", p)
    e32 = A.read_image_embeddings(tmp_path / "img-fp32.h5")
    e16 = A.read_image_embeddings(tmp_path / "img-bf16.h5")
    assert e16.attrs["precision"] == "bf16" and e32.attrs["precision"] == "fp32"
    assert json.loads(e16.attrs["provenance"])["precision"] == "bf16"
    cos = (e32.embeddings * e16.embeddings).sum(axis=1)
    assert cos.min() > 0.99 and not np.array_equal(e32.embeddings, e16.embeddings)  # really ran in bf16
    a32 = A.read_activation_layer(tmp_path / "acts-fp32.h5", "layer2")
    a16 = A.read_activation_layer(tmp_path / "acts-bf16.h5", "layer2")
    assert np.abs(a32 - a16).max() <= 0.05 * np.abs(a32).max() and not np.array_equal(a32, a16)
    with h5py.File(tmp_path / "acts-bf16.h5") as f:
        assert f.attrs["precision"] == "bf16"
    # Another precision is another input: record refuses to mix them in one file.
    r = invoke("record", probe_dir, *TIMM, "--layers", "layer3", "-o", tmp_path / "acts-bf16.h5", "--precision", "fp32", ok=False)
    assert_one_line_error(r, "--precision bf16 -> fp32")


def test_recording_into_a_file_of_other_inputs_names_what_differs(tmp_path, probe_dir):
    """Issue #24: `record` into a file made with other flags said "another model, weights, preprocessing or probe"
    without saying which."""
    out = tmp_path / "acts.h5"
    invoke("record", probe_dir, *TIMM, "--layers", "layer2", "-o", out)
    cases = [(["--input-size", "48"], "preprocessing input_size"), (["--interpolation", "bicubic"], "interpolation"),
             (["--model-arg", "drop_rate=0.1"], "--model-arg"), (["--mean", "0.4,0.4,0.4"], "preprocessing mean")]
    for extra, fragment in cases:
        r = invoke("record", probe_dir, *TIMM, *extra, "--layers", "layer3", "-o", out, ok=False)
        assert_one_line_error(r, "other inputs", fragment)
        assert r.stderr.count(" -> ") == 1 + (extra[0] == "--input-size"), r.stderr  # only what differs


def test_unknown_precision_and_dtype_are_usage_errors(tmp_path, tiny_clip, probe_dir):
    r = invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / "i.h5", "--precision", "fp8", ok=False)
    assert_one_line_error(r, "unknown precision", code=2)
    r = invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / "i.h5", "--dtype", "int8", ok=False)
    assert_one_line_error(r, "--dtype", code=2)
    assert not (tmp_path / "i.h5").exists()


def test_float16_embeddings_halve_the_file_and_label_the_same(tmp_path, tiny_clip, probe_dir):
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\ngreen\nsquare\ncircle\ntriangle\n")
    invoke("record", probe_dir, *TIMM, "--layers", "fc", "-o", tmp_path / "acts.h5")
    for dt in ("float32", "float16"):
        invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", tmp_path / f"img-{dt}.h5", "--dtype", dt)
        invoke("embed-text", concepts, "--clip", tiny_clip, "-o", tmp_path / f"txt-{dt}.h5", "--dtype", dt)
        invoke("label", "-i", tmp_path / f"img-{dt}.h5", "-a", tmp_path / "acts.h5", "-t", tmp_path / f"txt-{dt}.h5",
               "--param", "top_k=10", "-o", tmp_path / f"labels-{dt}.parquet")
    with h5py.File(tmp_path / "img-float16.h5") as f:
        assert f["embeddings"].dtype == np.float16
    e32 = A.read_image_embeddings(tmp_path / "img-float32.h5").embeddings
    e16 = A.read_image_embeddings(tmp_path / "img-float16.h5").embeddings
    assert e16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e16, axis=1), 1.0, atol=1e-6)  # re-normalised on reading
    np.testing.assert_allclose(e16, e32, atol=2e-3)
    import pyarrow.parquet as pq

    l32 = pq.read_table(tmp_path / "labels-float32.parquet").to_pandas()
    l16 = pq.read_table(tmp_path / "labels-float16.parquet").to_pandas()
    np.testing.assert_allclose(l16.similarity, l32.similarity, rtol=0.05, atol=0.05)


def test_channels_last_gives_the_same_activations(tmp_path, probe_dir):
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,layer3", "-o", tmp_path / "a.h5", "--no-channels-last")
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,layer3", "-o", tmp_path / "b.h5", "--channels-last")
    with h5py.File(tmp_path / "b.h5") as f:
        assert json.loads(f.attrs["provenance"])["channels_last"] is True
    for layer in ("layer1", "layer3"):
        np.testing.assert_allclose(A.read_activation_layer(tmp_path / "b.h5", layer),
                                   A.read_activation_layer(tmp_path / "a.h5", layer), rtol=1e-4, atol=1e-5)


def test_default_precision_is_fp32_on_gpus_too(monkeypatch):
    """bf16 changed 8 of 298 demo-world labels; the default must leave labels as fp32 gives them, on any device."""
    import inspect

    import torch

    from dissect import embed, pipeline, record
    from dissect.runtime import DEFAULT_PRECISION, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert DEFAULT_PRECISION == "fp32"
    from dissect.passes import PassOptions

    # The image passes (embed_images, record, run) take their precision from PassOptions; embed_text has its own.
    assert PassOptions().precision == "fp32" and PassOptions.of(None, device="cpu").precision == "fp32"
    assert inspect.signature(embed.embed_text).parameters["precision"].default == "fp32"
    for fn in (embed.embed_images, record.record, pipeline.run):
        assert "options" in inspect.signature(fn).parameters, fn
    for role in ("clip", "target"):
        assert resolve_precision(None, cuda, role) == "fp32" and resolve_precision("fp32", cuda, role) == "fp32"
        assert resolve_precision("auto", cuda, role) == "bf16" and resolve_precision("auto", cpu, role) == "fp32"
        assert resolve_precision("tf32", cuda, role) == "tf32" and resolve_precision("tf32", cpu, role) == "fp32"
    # The official code's setting: CLIP in fp16 on GPUs (clip.load), the target network in fp32.
    assert resolve_precision("paper", cuda, "clip") == "fp16" and resolve_precision("paper", cuda, "target") == "fp32"
    assert resolve_precision("paper", cpu, "clip") == "fp32"
    for cmd in ("record", "embed-images", "embed-text", "run"):
        r = invoke(cmd, "--help")
        assert "default: fp32" in " ".join(r.stdout.split()), cmd


def test_fp32_turns_tf32_off_and_tf32_on_then_restores_them():
    import torch

    from dissect.runtime import autocast

    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # noqa: E731
    before = flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # torch's cuDNN default
    try:
        with autocast(torch.device("cuda"), "fp32"):
            assert flags() == (False, False)
        assert flags() == (True, True)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with autocast(torch.device("cuda"), "tf32"):
            assert flags() == (True, True)
        assert flags() == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
