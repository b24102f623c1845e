"""Bad input never crashes a run or corrupts an artifact (issue 5).

Every case is a named test: bad images (generated here, never committed), concept
lists, models and layers, artifacts, arguments, and failures while a command runs.
Each ends either in a valid artifact or in one line on stderr, a non-zero exit code
and no file under the output name.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dissect import artifacts as A

from conftest import make_images
from test_cli import TIMM, assert_one_line_error, invoke
import test_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------
# A corpus of broken images, generated
# ---------------------------------------------------------------------------

def _good_png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def make_broken(path: Path, kind: str) -> Path:
    """Write one broken image of ``kind`` at ``path`` (its suffix is kept as given)."""
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        _good_png(path.with_suffix(".tmp.png"), 1)
        data = path.with_suffix(".tmp.png").read_bytes()
        path.with_suffix(".tmp.png").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not-an-image":
        path.write_text("this is a text file with an image's name\n")
    elif kind == "symlink-loop":
        os.symlink(path.name, path)  # points at itself
    elif kind == "bomb":
        Image.new("RGB", (400, 400), (10, 20, 30)).save(path)  # over the limit the test sets
    elif kind == "unreadable":
        _good_png(path, 2)
        path.chmod(0)
    else:
        raise ValueError(kind)
    return path


BROKEN_KINDS = ["zero-byte", "truncated", "not-an-image", "symlink-loop", "bomb", "unreadable"]


@pytest.fixture()
def unreadable_for_root(monkeypatch):
    """chmod 000 does not stop root: make opening such files fail as it would for anyone else."""
    import builtins

    real_open = builtins.open

    def guarded(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and os.path.exists(file) and not os.path.islink(file) \
                and (os.stat(file).st_mode & 0o777) == 0:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)


@pytest.fixture()
def small_bomb_limit(monkeypatch):
    # 400 x 400 = 160,000 pixels is then a "bomb"; preprocessed images (at most 224 x 224) stay under it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)


def skipped_of(path: Path) -> list[list[str]]:
    with h5py.File(path) as f:
        return json.loads(f.attrs["skipped"])


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_image_is_skipped_counted_and_recorded(tmp_path, tiny_clip, kind, unreadable_for_root, small_bomb_limit):
    probe = make_images(tmp_path / "probe", 6)
    make_broken(probe / "class1" / "broken.png", kind)
    r = invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5", "--workers", 0)
    assert "skipped 1 of 7 images" in r.stderr and "Traceback" not in r.output
    emb = A.read_image_embeddings(tmp_path / "i.h5")
    assert len(emb.keys) == 6 and "class1/broken.png" not in emb.keys
    [[sid, reason]] = skipped_of(tmp_path / "i.h5")
    assert sid == "class1/broken.png" and "broken.png" in reason
    assert json.loads(emb.attrs["provenance"])["n_skipped"] == 1


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_strict_stops_at_the_first_broken_image_with_its_path(tmp_path, tiny_clip, kind, unreadable_for_root, small_bomb_limit):
    probe = make_images(tmp_path / "probe", 4)
    make_broken(probe / "class0" / "zz-broken.png", kind)
    r = invoke("record", probe, *TIMM, "--layers", "layer1", "-o", tmp_path / "a.h5", "--strict", "--workers", 0, ok=False)
    assert_one_line_error(r, "zz-broken.png", code=1)
    assert not (tmp_path / "a.h5").exists() and not list(tmp_path.glob(".a.h5*"))


def test_symlink_loop_folder_in_the_probe_is_not_followed(tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 3)
    os.symlink("..", probe / "class0" / "up")  # a directory loop
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5")
    assert len(A.read_image_embeddings(tmp_path / "i.h5").keys) == 3


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "P", "P-transparent", "I;16", "1"])
def test_every_image_mode_is_read_as_8_bit_rgb(tmp_path, mode):
    from dissect.probe import open_probe

    (tmp_path / "p").mkdir()
    rgb = Image.new("RGB", (8, 8), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # 16-bit white
    elif mode == "P-transparent":
        img = rgb.convert("P")
        img.info["transparency"] = 0
    else:
        img = rgb.convert(mode)
    img.save(tmp_path / "p" / ("x.jpg" if mode == "CMYK" else "x.png"))
    got = open_probe([str(tmp_path / "p")]).load(0)
    assert got.mode == "RGB" and got.size == (8, 8)
    px = np.asarray(got)
    if mode == "I;16":
        assert (px == 255).all()  # scaled from 16 bits, not clipped to 255 from 65535 by accident of modes
    elif mode in ("CMYK", "RGBA", "P", "P-transparent"):
        assert np.abs(px[0, 0].astype(int) - [200, 100, 50]).max() <= 12


def test_skipped_images_stay_aligned_between_clip_and_target(tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 8)
    make_broken(probe / "class2" / "bad.png", "truncated")
    invoke("embed-images", probe, "--clip", tiny_clip, "-o", tmp_path / "i.h5")
    invoke("record", probe, *TIMM, "--layers", "layer1", "-o", tmp_path / "a.h5")
    assert A.read_image_embeddings(tmp_path / "i.h5").keys == A.read_activations(tmp_path / "a.h5").ids
    assert skipped_of(tmp_path / "i.h5") == skipped_of(tmp_path / "a.h5")
    # The file becomes readable before record runs again: label leaves it out of both, saying so.
    (probe / "class2" / "bad.png").unlink()
    _good_png(probe / "class2" / "bad.png")
    invoke("record", probe, *TIMM, "--layers", "layer1", "-o", tmp_path / "a2.h5")
    r = invoke("label", "-i", tmp_path / "i.h5", "-a", tmp_path / "a2.h5", "--concepts", _concepts(tmp_path),
               "--param", "top_k=5", "-o", tmp_path / "l.parquet")
    assert "leaving out 1 image" in r.stderr
    meta = A.read_labels_metadata(tmp_path / "l.parquet")
    assert meta["probe"]["n_images"] == 8 and meta["probe"]["skipped"] == ["class2/bad.png"]


def test_thousand_images_with_fifty_broken_label_like_the_good_ones_alone(tmp_path, tiny_clip):
    """Acceptance: 1,000 images, 50 broken ones skipped exactly, labels equal to a run over the 950 good ones."""
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(950):
        arr = np.zeros((20, 20, 3), dtype=np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        arr[rng.integers(0, 10):][:, rng.integers(0, 10):] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(arr).save(good / f"img{i:04d}.png")
    mixed = tmp_path / "mixed"
    shutil.copytree(good, mixed)
    kinds = ["zero-byte", "truncated", "not-an-image", "symlink-loop"]
    broken = {f"img{950 + j:04d}.png" for j in range(50)}
    for j, name in enumerate(sorted(broken)):
        make_broken(mixed / name, kinds[j % len(kinds)])
    concepts = _concepts(tmp_path)
    common = ["--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", concepts, "--param", "top_k=20",
              "--workers", 2]
    r = invoke("run", mixed, *common, "-o", tmp_path / "run-mixed")
    assert "skipped 50 of 1000 images" in r.stderr
    for f in ("images.h5", "activations.h5"):
        assert {sid for sid, _ in skipped_of(tmp_path / "run-mixed" / f)} == broken
    invoke("run", good, *common, "-o", tmp_path / "run-good")
    a = pq.read_table(tmp_path / "run-mixed" / "labels.parquet").to_pandas()
    b = pq.read_table(tmp_path / "run-good" / "labels.parquet").to_pandas()
    assert list(a.label) == list(b.label)
    np.testing.assert_array_equal(a.similarity.to_numpy(), b.similarity.to_numpy())
    assert list(a.candidates.map(list)) == list(b.candidates.map(list))


def test_a_probe_with_no_readable_image_is_an_error(tmp_path, tiny_clip):
    (tmp_path / "p").mkdir()
    make_broken(tmp_path / "p" / "a.png", "zero-byte")
    make_broken(tmp_path / "p" / "b.png", "not-an-image")
    r = invoke("embed-images", tmp_path / "p", "--clip", tiny_clip, "-o", tmp_path / "i.h5", ok=False)
    assert_one_line_error(r, "none of the 2 probe images")
    assert not (tmp_path / "i.h5").exists()


# ---------------------------------------------------------------------------
# Concept lists
# ---------------------------------------------------------------------------

def _concepts(tmp_path: Path) -> Path:
    p = tmp_path / "concepts.txt"
    p.write_text("red\nblue\ngreen\nsquare\ncircle\ntriangle\n")
    return p


def _embed_text(tmp_path, tiny_clip, content: bytes, *extra, ok=True):
    src = tmp_path / "c.txt"
    src.write_bytes(content)
    return invoke("embed-text", src, "--clip", tiny_clip, "-o", tmp_path / "t.h5", *extra, ok=ok)


@pytest.mark.parametrize("content", [b"", b"\n \n\t\n\r\n"], ids=["empty", "only-blank-lines"])
def test_concept_list_without_concepts_is_refused(tmp_path, tiny_clip, content):
    assert_one_line_error(_embed_text(tmp_path, tiny_clip, content, ok=False), "is empty", code=1)
    assert not (tmp_path / "t.h5").exists()


def test_duplicate_concepts_are_dropped_with_a_warning(tmp_path, tiny_clip):
    r = _embed_text(tmp_path, tiny_clip, b"dog\ncat\ndog\n  cat \nbird\n")
    assert "dropped 2 repeated concept(s)" in r.stderr
    assert A.read_text_embeddings(tmp_path / "t.h5").keys == ["dog", "cat", "bird"]


def test_surrounding_whitespace_and_windows_line_endings_are_stripped(tmp_path, tiny_clip):
    _embed_text(tmp_path, tiny_clip, b"\xef\xbb\xbf  dog \r\n\tcat\t\r\nhot dog\r\n")
    assert A.read_text_embeddings(tmp_path / "t.h5").keys == ["dog", "cat", "hot dog"]


def test_concept_list_with_a_nul_character_is_refused(tmp_path, tiny_clip):
    """Found by the fuzz harness: HDF5 strings cannot hold NUL, and such a list is not text."""
    assert_one_line_error(_embed_text(tmp_path, tiny_clip, b"dog\ncat\x00s\n", ok=False), "NUL character on line 2", code=1)
    assert not (tmp_path / "t.h5").exists()


def test_non_utf8_concept_list_is_refused(tmp_path, tiny_clip):
    assert_one_line_error(_embed_text(tmp_path, tiny_clip, b"caf\xe9\ndog\n", ok=False), "not UTF-8", code=1)


def test_concept_longer_than_the_context_is_truncated_with_a_warning_or_refused_under_strict(tmp_path, tiny_clip):
    long = " ".join(["word"] * 200)
    r = _embed_text(tmp_path, tiny_clip, f"dog\n{long}\n".encode())
    assert "exceed CLIP's" in r.stderr and "truncated" in r.stderr
    assert len(A.read_text_embeddings(tmp_path / "t.h5").keys) == 2
    (tmp_path / "t.h5").unlink()
    assert_one_line_error(_embed_text(tmp_path, tiny_clip, f"dog\n{long}\n".encode(), "--strict", ok=False), "exceed CLIP's")
    assert not (tmp_path / "t.h5").exists()


# ---------------------------------------------------------------------------
# Models and layers
# ---------------------------------------------------------------------------

NORM = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]  # python-file models bring no preprocessing


def test_unknown_model_name(tmp_path, probe_dir):
    r = invoke("record", probe_dir, "--model", "timm:resnet_does_not_exist", "--weights", "none", "--layers", "fc",
               "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "resnet_does_not_exist")


def test_checkpoint_with_wrong_keys_or_shapes_names_them(tmp_path, probe_dir):
    import torch

    sd = {"conv1.weight": torch.zeros(3, 3, 3, 3), "not_a_key.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "bad.pt")
    r = invoke("record", probe_dir, "--model", "timm:test_resnet", "--weights", tmp_path / "bad.pt", "--layers", "fc",
               "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "not_a_key.weight")


def test_layer_that_never_runs(tmp_path, probe_dir):
    src = tmp_path / "net.py"
    src.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
        "        self.unused = torch.nn.Conv2d(4, 4, 3)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean((2, 3))\n"
        "def build():\n"
        "    return Net()\n"
    )
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "conv,unused", "-o", tmp_path / "a.h5", *NORM,
               "--input-size", 32, ok=False)
    assert_one_line_error(r, "unused never ran")
    assert not (tmp_path / "a.h5").exists()


def test_layer_whose_output_is_not_a_tensor(tmp_path, probe_dir):
    src = tmp_path / "net.py"
    src.write_text(
        "import torch\n"
        "class Pair(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return {'a': x}\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.pair = Pair()\n"
        "    def forward(self, x):\n"
        "        return self.pair(x)['a']\n"
        "def build():\n"
        "    return Net()\n"
    )
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "pair", "-o", tmp_path / "a.h5", *NORM,
               "--input-size", 32, ok=False)
    assert_one_line_error(r, "returns a dict")


def test_probe_image_size_the_model_cannot_take(tmp_path, probe_dir):
    src = tmp_path / "net.py"
    src.write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))\n"
    )
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "1", "-o", tmp_path / "a.h5", *NORM,
               "--input-size", 48, ok=False)
    assert_one_line_error(r, "cannot run on the probe's 3x48x48 inputs", "--input-size")
    assert not (tmp_path / "a.h5").exists()
    invoke("record", probe_dir, "--model", f"{src}:build", "--layers", "1", "-o", tmp_path / "a.h5", *NORM, "--input-size", 32)


# ---------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_clip, probe_dir):
    d = tmp_path_factory.mktemp("made")
    invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", d / "images.h5")
    invoke("embed-text", _concepts(d), "--clip", tiny_clip, "-o", d / "text.h5")
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,fc", "-o", d / "acts.h5")
    return d


def _label(d, out, images=None, acts=None, text=None, *extra, ok=False):
    return invoke("label", "-i", images or d / "images.h5", "-a", acts or d / "acts.h5", "-t", text or d / "text.h5",
                  "--param", "top_k=10", "-o", out, *extra, ok=ok)


@pytest.mark.parametrize("junk", [b"", b"hello, not HDF5\n", b"PAR1" + b"\0" * 20])
def test_input_that_is_not_hdf5(tmp_path, made, junk):
    (tmp_path / "x.h5").write_bytes(junk)
    r = _label(made, tmp_path / "l.parquet", images=tmp_path / "x.h5")
    assert_one_line_error(r, "x.h5")
    assert not (tmp_path / "l.parquet").exists()


def test_labels_input_that_is_not_parquet(tmp_path, made):
    from dissect.errors import ArtifactError, InputError

    (tmp_path / "l.parquet").write_text("not parquet")
    with pytest.raises((ArtifactError, InputError)):
        A.read_labels_metadata(tmp_path / "l.parquet")


@pytest.mark.parametrize("attr,value,words", [("format", "dissect/labels", "dissect/labels"),
                                              ("version", 99, "version 99")])
def test_wrong_format_or_newer_version(tmp_path, made, attr, value, words):
    shutil.copy(made / "images.h5", tmp_path / "i.h5")
    with h5py.File(tmp_path / "i.h5", "a") as f:
        f.attrs[attr] = value
    assert_one_line_error(_label(made, tmp_path / "l.parquet", images=tmp_path / "i.h5"), words)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_dataset_with_the_wrong_shape_or_dtype(tmp_path, made, bad):
    shutil.copy(made / "images.h5", tmp_path / "i.h5")
    with h5py.File(tmp_path / "i.h5", "a") as f:
        emb = f["embeddings"][:]
        del f["embeddings"]
        f["embeddings"] = emb[:-1] if bad == "shape" else emb.astype(np.int32)
    assert_one_line_error(_label(made, tmp_path / "l.parquet", images=tmp_path / "i.h5"), "embeddings")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_activations_name_the_layer_and_units(tmp_path, made, value):
    shutil.copy(made / "acts.h5", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        ds = f["layers/layer1"]
        arr = ds[:]
        arr[3, [2, 5]] = value
        ds[...] = arr
    r = _label(made, tmp_path / "l.parquet", acts=tmp_path / "a.h5")
    assert_one_line_error(r, "layer1", "2 units: [2, 5]")
    assert not (tmp_path / "l.parquet").exists()


def test_ids_that_do_not_match_between_images_and_activations(tmp_path, made, probe_dir):
    other = make_images(tmp_path / "other", 5, seed=9)
    invoke("record", other, *TIMM, "--layers", "fc", "-o", tmp_path / "a.h5")
    assert_one_line_error(_label(made, tmp_path / "l.parquet", acts=tmp_path / "a.h5"), "different probe sets")


def test_text_and_images_from_different_clip_models(tmp_path, made):
    shutil.copy(made / "text.h5", tmp_path / "t.h5")
    with h5py.File(tmp_path / "t.h5", "a") as f:
        f.attrs["clip_fingerprint"] = "0" * 16
        f.attrs["clip_model"] = "ViT-L-14"
    assert_one_line_error(_label(made, tmp_path / "l.parquet", text=tmp_path / "t.h5"), "CLIP")


def test_fewer_probe_images_than_the_similarity_top_k(tmp_path, made):
    r = invoke("label", "-i", made / "images.h5", "-a", made / "acts.h5", "-t", made / "text.h5", "-o", tmp_path / "l.parquet",
               ok=False)
    assert_one_line_error(r, "top 100", "top_k=")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

def test_unknown_similarity_or_parameter(tmp_path, made):
    assert_one_line_error(_label(made, tmp_path / "l.parquet", None, None, None, "--sim", "softpmi"), "softpmi", code=2)
    assert_one_line_error(_label(made, tmp_path / "l.parquet", None, None, None, "--param", "alpha=3"), "alpha", code=2)


@pytest.mark.parametrize("args", [["--batch-size", "-1"], ["--batch-size", "0"], ["--workers", "-2"]])
def test_out_of_range_batch_size_or_workers(tmp_path, probe_dir, args):
    r = invoke("record", probe_dir, *TIMM, "--layers", "fc", "-o", tmp_path / "a.h5", *args, ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("args", [["--param", "top_k=0"], ["--top", "0"], ["--param", "top_k=-3"], ["--max-memory", "1KB"]])
def test_out_of_range_label_values(tmp_path, made, args):
    r = _label(made, tmp_path / "l.parquet", None, None, None, *args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "l.parquet").exists()


def test_output_in_a_folder_that_does_not_exist(tmp_path, made):
    assert_one_line_error(_label(made, tmp_path / "nope" / "l.parquet"), "does not exist", code=2)


def test_output_in_a_folder_that_is_not_writable(tmp_path, made, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro and mode & os.W_OK else real(p, mode, **k))
    assert_one_line_error(_label(made, ro / "l.parquet"), "not writable", code=2)


def test_output_that_would_overwrite_an_input(tmp_path, made, probe_dir):
    shutil.copy(made / "images.h5", tmp_path / "i.h5")
    assert_one_line_error(_label(made, tmp_path / "i.h5", images=tmp_path / "i.h5"), "overwrite the input", code=2)
    assert A.read_image_embeddings(tmp_path / "i.h5")  # untouched
    lst = tmp_path / "probe.txt"
    lst.write_text("\n".join(str(p) for p in sorted(probe_dir.rglob("*.png"))[:3]) + "\n")
    before = lst.read_text()
    r = invoke("record", lst, *TIMM, "--layers", "fc", "-o", lst, ok=False)
    assert_one_line_error(r, "overwrite the input", code=2)
    assert lst.read_text() == before


# ---------------------------------------------------------------------------
# Failure during a run
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_permission_lost_while_writing(tmp_path, made, probe_dir, monkeypatch, err):
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, name, *a, **k):
        calls.append(name)
        if name == "layers/fc" or (name == "fc"):
            raise OSError(err, os.strerror(err), str(tmp_path / "a.h5"))
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    r = invoke("record", probe_dir, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, os.strerror(err), "run the same command again", code=1)
    assert not (tmp_path / "a.h5").exists() and not list(tmp_path.glob(".a.h5*")), list(tmp_path.iterdir())
    monkeypatch.undo()
    invoke("record", probe_dir, *TIMM, "--layers", "layer1,fc", "-o", tmp_path / "a.h5")  # a rerun works
    assert set(A.read_activations(tmp_path / "a.h5").layers) == {"layer1", "fc"}


@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_leave_nothing_half_written(tmp_path, tiny_clip, sig, code):
    probe = make_images(tmp_path / "probe", 400, size=64)
    out = tmp_path / "i.h5"
    env = dict(os.environ, DISSECT_QUIET="")
    cmd = [sys.executable, "-m", "dissect.cli.main", "embed-images", str(probe), "--clip", tiny_clip, "-o", str(out),
           "--batch-size", "1", "--workers", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Wait until the pass is under way (the progress bar shows), then stop it.
    deadline = time.time() + 60
    seen = ""
    while time.time() < deadline and "embed images" not in seen:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (proc.returncode, seen + err)
    assert "Traceback" not in err
    assert [ln for ln in err.strip().splitlines() if ln.startswith("error:")][-1].startswith("error:")
    assert not out.exists() and not list(tmp_path.glob(".i.h5*"))
    subprocess.run(cmd[:-6] + ["--batch-size", "64", "--device", "cpu"], check=True, capture_output=True, env=env)
    assert len(A.read_image_embeddings(out).keys) == 400  # a rerun works


def test_offline_a_wrong_layer_is_said_before_any_download_and_the_hub_fails_fast(tmp_path, probe_dir, monkeypatch):
    """No internet, HF_HUB_OFFLINE unset: the layer is checked on the architecture first; the hub is not retried."""
    import socket

    import huggingface_hub.constants

    from dissect import runtime

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(runtime, "_hub_checked", {})
    tried = []

    def unreachable(*a, **k):
        tried.append(a[0] if a else k)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    r = invoke("record", probe_dir, "--model", "timm:resnet18", "--layers", "layer9", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "timm:resnet18 has no layer 'layer9'", "layer4")
    assert not tried  # the layer name was refused before any connection
    r = invoke("record", probe_dir, "--model", "timm:resnet18", "--layers", "layer4", "-o", tmp_path / "a.h5", ok=False)
    assert_one_line_error(r, "cannot download timm weights", "huggingface.co/timm/resnet18", "--weights")
    assert "Retry" not in r.output and huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert len([t for t in tried if t == ("huggingface.co", 443)]) == 1  # checked once, then offline mode
    assert not (tmp_path / "a.h5").exists()


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first_and_loses_nothing(tmp_path, tiny_clip, probe_dir):
    """While another dissect holds a run folder (or an output's checkpoint), a run is refused at once, naming it."""
    from dissect import artifacts as A

    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    run_dir = tmp_path / "run"
    args = ["run", probe_dir, "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", concepts, "-o", run_dir,
            "--param", "top_k=10", "--device", "cpu"]
    invoke(*args)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    other = subprocess.Popen([sys.executable, "-c", "import sys, time; from dissect import artifacts as A; "
                              f"held = A.ProcessLock({str(run_dir / '.dissect-run.lock')!r}, 'x'); print('held', flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        r = invoke(*args, "--concepts", tmp_path / "c.txt", ok=False)
        assert_one_line_error(r, f"run folder {run_dir} is in use by another dissect (pid {other.pid}", "Wait for it")
        after = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != ".dissect-run.lock"}
        assert after == before  # nothing of the run touched
    finally:
        other.kill()
        other.wait()
    invoke(*args)  # the holder is gone: the folder is free again
    assert not (run_dir / ".dissect-run.lock").exists()
    holder = A.ProcessLock(tmp_path / "x.lock", "x")  # in this process: released and removed on exit
    with holder:
        pass
    assert not (tmp_path / "x.lock").exists()


def test_a_second_pass_into_the_same_output_is_refused_while_the_first_runs(tmp_path, tiny_clip, probe_dir):
    out = tmp_path / "images.h5"
    partial = Path(str(out) + ".partial")
    partial.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; from dissect import artifacts as A; "
                              f"held = A.ProcessLock({str(partial / 'lock')!r}, 'x'); print('held', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        r = invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", out, "--device", "cpu", ok=False)
        assert_one_line_error(r, f"{out} (its checkpoint", f"pid {other.pid}")
        assert not out.exists() and partial.is_dir()  # the other process's partial work is left alone
    finally:
        other.kill()
        other.wait()
    invoke("embed-images", probe_dir, "--clip", tiny_clip, "-o", out, "--device", "cpu")
    assert out.exists() and not partial.exists()


# ---------------------------------------------------------------------------
# A damaged checkpoint is checked like fresh results and recomputed (issue 15)
# ---------------------------------------------------------------------------

def _damage_chunk(path: Path, damage: str) -> None:
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return
    if damage == "not-a-chunk":
        path.write_text("not a zip at all\n")
        return
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    key = next(k for k in members if k.startswith("a/"))
    if damage == "nan":
        members[key] = members[key].copy()
        members[key][1, 0] = np.nan
    elif damage == "inf":
        members[key] = members[key].copy()
        members[key][0, -1] = -np.inf
    elif damage == "foreign-ids":
        ids = json.loads(bytes(members["_ids"]).decode())
        members["_ids"] = np.frombuffer(json.dumps(ids[::-1]).encode(), dtype=np.uint8)
    elif damage == "short":
        members[key] = members[key][:-1]
    elif damage == "ints":
        members[key] = members[key].astype(np.int64)
    elif damage == "missing-array":
        del members[key]
    elif damage == "bad-json":
        members["_skipped"] = np.frombuffer(b"{not json", dtype=np.uint8)
    elif damage == "unnormalised":  # finite, but not the unit vectors CLIP's encoder gives
        members[key] = members[key] * 3.0
    elif damage == "pickled":
        members[key] = np.array([object()] * len(members[key]), dtype=object)
    else:
        raise ValueError(damage)
    with open(path, "wb") as f:
        np.savez(f, **members)


DAMAGES = ["truncated", "not-a-chunk", "nan", "inf", "foreign-ids", "short", "ints", "missing-array", "bad-json",
           "pickled"]


@pytest.mark.parametrize("command,damage", [(c, d) for c in ("embed-images", "record") for d in DAMAGES]
                         + [("embed-images", "unnormalised")])
def test_a_damaged_checkpoint_chunk_is_encoded_again_with_a_warning(tmp_path, tiny_clip, monkeypatch, command, damage):
    """A chunk left by a crash, a full disk or a hand edit is checked like fresh results; a bad one is recomputed."""
    from dissect import passes

    probe = make_images(tmp_path / "probe", 12, seed=4)
    what = ["--clip", tiny_clip] if command == "embed-images" else [*TIMM, "--layers", "layer1,fc"]
    common = [command, probe, *what, "--batch-size", 2, "--workers", 0, "--device", "cpu"]
    ref = tmp_path / "ref.h5"
    invoke(*common, "-o", ref, "--checkpoint-every", 0)
    out = tmp_path / "out.h5"
    partial = Path(str(out) + ".partial")
    with monkeypatch.context() as m:  # a run whose checkpoint survives, as a crash after the last chunk leaves it
        m.setattr(passes.Checkpoint, "remove", lambda self: None)
        invoke(*common, "-o", out, "--checkpoint-every", 4)
    chunks = sorted(partial.glob("chunk-*.npz"))
    assert len(chunks) == 3
    out.unlink()
    _damage_chunk(chunks[1], damage)
    r = invoke(*common, "-o", out, "--checkpoint-every", 4)
    assert "Traceback" not in r.output
    assert "checkpoint chunk 1" in r.stderr and "damaged" in r.stderr and "encoding its 4 images again" in r.stderr
    assert "resuming: 8 of 12 images restored" in r.stderr.replace("\n", " ")
    assert not partial.exists()
    (test_shards.assert_same_images if command == "embed-images" else test_shards.assert_same_activations)(out, ref)


def test_a_foreign_file_in_the_checkpoint_folder_is_left_out(tmp_path, tiny_clip, monkeypatch):
    """Issue #24: a file chunk-abc.npz in OUT.partial/ ended every rerun in an internal error."""
    from dissect import passes

    probe = make_images(tmp_path / "probe", 6, seed=5)
    out = tmp_path / "out.h5"
    common = ["embed-images", probe, "--clip", tiny_clip, "--batch-size", 2, "--workers", 0, "--device", "cpu",
              "-o", out, "--checkpoint-every", 2]
    partial = Path(str(out) + ".partial")
    for name in ("chunk-abc.npz", "chunk-1.npz", "chunk-000001.npz.tmp"):
        out.unlink(missing_ok=True)
        with monkeypatch.context() as m:  # a checkpoint that survives, with this run's key
            m.setattr(passes.Checkpoint, "remove", lambda self: None)
            invoke(*common)
        (partial / name).write_bytes(b"left by something else")
        out.unlink()
        r = invoke(*common)
        assert "Traceback" not in r.output and out.exists(), (name, r.output)
        assert "resuming: 6 of 6 images restored" in r.stderr.replace("\n", " "), (name, r.stderr)
        assert not partial.exists()
