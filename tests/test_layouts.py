"""Layer layouts on the real architectures our users run (random weights, small inputs where the model allows).

dissect decides where each layer's channels are from what the module says (type, declared
format, the tensor it returns, its input, its parameters); the tests here check it against
an oracle that uses none of that: the geometry of the output of a square image (spatial axes
come as an equal pair, tokens as a known count) and the counts modules declare.
"""

from __future__ import annotations

import json

import h5py
import pytest
from typer.testing import CliRunner

from dissect.cli.main import app

from conftest import make_images

runner = CliRunner()


def invoke(*args):
    args = [str(a) for a in args]
    if "--quiet" in args:  # a global option: before the command
        args = ["--quiet"] + [a for a in args if a != "--quiet"]
    return runner.invoke(app, args)


def one_line_error(result, *fragments):
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, result.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("two"), 2, size=48)


# spec, --model-arg values, input size, token counts of its 3-D outputs (the oracle's token axis)
ARCHS = [
    ("timm:resnet50", [], 64, set()),
    ("timm:vit_base_patch16_224", ["img_size=64"], 64, {16, 17}),
    ("timm:swin_tiny_patch4_window7_224", [], 224, {56 * 56, 28 * 28, 14 * 14, 7 * 7}),
    ("timm:convnext_tiny", [], 64, set()),
    ("timm:efficientnet_b0", [], 80, set()),
    ("timm:regnety_002", [], 80, set()),
    ("torchvision:resnet50", [], 64, set()),
    ("torchvision:vit_b_16", ["image_size=64"], 64, {17}),
    ("torchvision:swin_t", [], 224, {49}),
    ("torchvision:convnext_tiny", [], 64, set()),
    ("torchvision:densenet121", [], 64, set()),
    ("torchvision:mobilenet_v3_small", [], 96, set()),
]


def oracle_channels(shape: tuple[int, ...], tokens: set[int]) -> int | None:
    """The channel count of a per-image output shape, from geometry alone (None when it cannot tell)."""
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 2:  # (L, C) or (C, L): the token axis has one of the model's token counts
        first, last = shape[0] in tokens, shape[1] in tokens
        return shape[1] if first and not last else shape[0] if last and not first else None
    if len(shape) == 3:  # a square image keeps square maps: the spatial axes are the equal pair
        a, b, c = shape
        if b == c and a != b:
            return a
        if a == b and b != c:
            return c
    return None


def declared_channels(module) -> int | None:
    """The output channel count a convolution, linear or normalisation layer declares."""
    import torch

    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)):
        return module.num_features
    if isinstance(module, torch.nn.GroupNorm):
        return module.num_channels
    if isinstance(module, torch.nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


@pytest.mark.parametrize("spec,args,size,tokens", ARCHS, ids=[a[0] for a in ARCHS])
def test_every_listed_layer_has_its_true_channel_count_and_record_writes_it(spec, args, size, tokens, two_images,
                                                                            tmp_path, one_torch_thread):
    from dissect.cli.options import model_args
    from dissect.models import PreprocessOverrides, load_target

    margs = [x for a in args for x in ("--model-arg", a)]
    r = invoke("layers", spec, "--weights", "none", *margs, "--input-size", size, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    modules = dict(load_target(spec, "none", model_args(args), PreprocessOverrides(input_size=size)).module
                   .named_modules())
    recordable, checked = [], 0
    for row in rows:
        name, shape = row["layer"], tuple(row["shape"])
        if row["calls"] > 1 or row["rows_per_image"] != 1:
            assert row["neurons"] is None
            continue
        if row["layout"] is None:  # undecided: only attention internals (heads x tokens x tokens, per-head q/k)
            assert row["type"] in ("Softmax", "Dropout", "Identity") and len(shape) == 3, row
            continue
        truths = {t for t in (oracle_channels(shape, tokens), declared_channels(modules[name])) if t is not None}
        assert truths, f"{spec} {name} {shape}: the oracle cannot tell; pick another input size"
        assert truths == {row["neurons"]}, (spec, row, truths)
        checked += 1
        recordable.append((name, row["neurons"]))
    assert checked >= 0.6 * len(rows), f"only {checked} of {len(rows)} layers could be checked"
    names = [n for n, _ in recordable]
    r = invoke("record", two_images, "--model", spec, "--weights", "none", *margs, "--input-size", size,
               "--layers", ",".join(names), "-o", tmp_path / "a.h5", "--device", "cpu", "--batch-size", 2, "--quiet")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "a.h5", "r") as f:
        written = {n: f["layers"][n].shape[1] for n in f["layers"]}
        layouts = {n: f["layers"][n].attrs["layout"] for n in f["layers"]}
    assert written == dict(recordable)
    assert layouts == {row["layer"]: row["layout"] for row in rows if row["layer"] in written}


def test_swin_stage_output_is_channels_last(two_images, tmp_path):
    """timm Swin stages output (N, H, W, C): 96 channels, not its 56 rows."""
    r = invoke("record", two_images, "--model", "timm:swin_tiny_patch4_window7_224", "--weights", "none",
               "--layers", "layers.0,patch_embed", "-o", tmp_path / "a.h5", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["layers/layers.0"].shape == (2, 96) and f["layers/layers.0"].attrs["layout"] == "nhwc"
        assert f["layers/patch_embed"].attrs["layout"] == "nhwc"
        assert f["layers/layers.0"].attrs["layout_source"]


def test_convnext_block_linear_acts_on_the_last_axis(two_images, tmp_path):
    """torchvision ConvNeXt's block MLP is a Linear on a permuted (N, H, W, C) map: 384 units, not 56."""
    r = invoke("layers", "torchvision:convnext_tiny", "--json")
    rows = {json.loads(x)["layer"]: json.loads(x) for x in r.stdout.splitlines()}
    assert rows["features.1.0.block.3"]["neurons"] == 384 and rows["features.1.0.block.3"]["layout"] == "nhwc"
    assert rows["features.1.0"]["neurons"] == 96 and rows["features.1.0"]["layout"] == "nchw"
    r = invoke("record", two_images, "--model", "torchvision:convnext_tiny", "--weights", "none", "--input-size", 64,
               "--layers", "features.1.0.block.3", "-o", tmp_path / "a.h5", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["layers/features.1.0.block.3"].shape == (2, 384)


def test_a_module_called_several_times_is_refused_naming_its_block(two_images, tmp_path):
    """torchvision's BasicBlock calls one ReLU module twice: a hook would see one call of the two."""
    r = invoke("record", two_images, "--model", "torchvision:resnet18", "--weights", "none", "--input-size", 64,
               "--layers", "layer1.0.relu", "-o", tmp_path / "a.h5", "--device", "cpu")
    one_line_error(r, "layer1.0.relu", "runs 2 times", "Record layer1.0")
    assert not (tmp_path / "a.h5").exists()
    r = invoke("layers", "torchvision:resnet18")
    assert "runs 2x" in r.stdout


def test_windows_folded_into_the_batch_are_refused(two_images, tmp_path):
    r = invoke("record", two_images, "--model", "timm:swin_tiny_patch4_window7_224", "--weights", "none",
               "--layers", "layers.0.blocks.0.attn", "-o", tmp_path / "a.h5", "--device", "cpu")
    one_line_error(r, "layers.0.blocks.0.attn", "64 rows each", "block around it")


MODEL_PY = '''
import torch
from torchvision import transforms as T


class M(torch.nn.Module):
    """A conv whose output is permuted inline, then passed through a parameter-free tap: nothing says its layout."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.tap = torch.nn.ReLU()
        self.fc = torch.nn.Linear(5, 2)

    def forward(self, x):
        y = self.tap(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(y.mean((1, 2)))


def build():
    return M(), T.Compose([T.Resize((8, 8)), T.ToTensor()])
'''


def test_an_undecidable_layout_is_refused_and_layout_flag_decides(two_images, tmp_path):
    src = tmp_path / "m.py"
    src.write_text(MODEL_PY)
    r = invoke("record", two_images, "--model", f"{src}:build", "--layers", "tap", "-o", tmp_path / "a.h5")
    one_line_error(r, "cannot tell", "tap", "--layout tap=nchw", "--layout tap=nhwc")
    assert not (tmp_path / "a.h5").exists()
    r = invoke("record", two_images, "--model", f"{src}:build", "--layers", "tap,conv", "--layout", "tap=nhwc",
               "-o", tmp_path / "a.h5", "--quiet")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["layers/tap"].shape == (2, 5) and f["layers/tap"].attrs["layout_source"] == "--layout"
        assert f["layers/conv"].shape == (2, 5) and f["layers/conv"].attrs["layout"] == "nchw"
    r = invoke("layers", f"{src}:build", "--json")
    tap = [json.loads(x) for x in r.stdout.splitlines() if json.loads(x)["layer"] == "tap"][0]
    assert tap["layout"] is None and tap["neurons"] is None


def test_a_layer_recorded_with_another_layout_is_not_reused(two_images, tmp_path):
    """A file whose layer was taken as channels first (as dissect 0.1 did for Swin stages) is refused, not reused."""
    out = tmp_path / "a.h5"
    base = ["record", two_images, "--model", "timm:swin_tiny_patch4_window7_224", "--weights", "none", "-o", out,
            "--device", "cpu", "--quiet"]
    r = invoke(*base, "--layers", "layers.0", "--layout", "layers.0=nchw")
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as f:
        assert f["layers/layers.0"].shape == (2, 56)
    r = invoke(*base, "--layers", "layers.0,layers.1")
    one_line_error(r, "layers.0", "recorded as nchw (56 units)", "nhwc (96 units")
