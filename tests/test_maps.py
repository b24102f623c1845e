"""Where units fire (dissect.maps): token grids of real architectures, the running top-K of maps against a brute
force, and Moran's I against a float64 reference written from its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect import maps as Mp
from dissect.errors import UsageError


def _morans_i_reference(grid) -> float:
    """I = (n / W) Σ_i Σ_j w_ij z_i z_j / Σ_i z_i², w_ij = 1 for cells sharing an edge (rook), W = Σ w_ij."""
    g = np.asarray(grid, dtype=np.float64)
    h, w = g.shape
    cells = [(i, j) for i in range(h) for j in range(w)]
    mean = sum(g[c] for c in cells) / len(cells)
    z = {c: g[c] - mean for c in cells}
    num, total_w = 0.0, 0
    for a in cells:
        for b in cells:
            if abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1:
                num += z[a] * z[b]
                total_w += 1
    den = sum(v * v for v in z.values())
    if den == 0 or total_w == 0:
        return math.nan
    return len(cells) / total_w * num / den


def test_morans_i_equals_its_definition_and_a_checkerboard_gives_minus_one():
    rng = np.random.default_rng(0)
    grids = [rng.normal(size=(5, 7)), rng.random((3, 3)), rng.normal(size=(1, 6)), np.arange(16.0).reshape(4, 4)]
    for g in grids:
        got = float(Mp.morans_i(torch.from_numpy(g)))
        assert got == pytest.approx(_morans_i_reference(g), abs=1e-12)
    board = np.indices((6, 6)).sum(axis=0) % 2
    assert float(Mp.morans_i(torch.from_numpy(board))) == pytest.approx(-1.0, abs=1e-12)
    blob = np.zeros((8, 8))
    blob[2:5, 2:5] = 1
    assert float(Mp.morans_i(torch.from_numpy(blob))) > 0.5               # one compact blob: localised
    assert math.isnan(float(Mp.morans_i(torch.ones(4, 4))))               # constant: undefined
    batch = torch.from_numpy(np.stack(grids[:2] and [grids[0], grids[0] * 2 + 1]))
    np.testing.assert_allclose(Mp.morans_i(batch).numpy(), [_morans_i_reference(grids[0])] * 2, atol=1e-12)


def _brute_top(scores: np.ndarray, k: int):
    """Per unit, the k best rows: score descending, then row ascending."""
    out = []
    for c in range(scores.shape[1]):
        order = sorted(range(scores.shape[0]), key=lambda i: (-scores[i, c], i))[:k]
        out.append(order)
    return np.array(out).T


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_running_top_maps_equal_a_sort_of_every_image_whatever_the_batches(batch):
    g = torch.Generator().manual_seed(1)
    n, c, k = 50, 4, 5
    scores = torch.randint(0, 6, (n, c), generator=g).float()             # many ties
    maps = torch.rand(n, c, 3, 2, generator=g)
    top = Mp.TopMaps(k, c, 3, 2)
    for s in range(0, n, batch):
        top.update(scores[s : s + batch], maps[s : s + batch], torch.arange(s, min(n, s + batch)))
    want = _brute_top(scores.numpy(), k)
    np.testing.assert_array_equal(top.rows.numpy(), want)
    for j in range(k):
        for u in range(c):
            assert torch.equal(top.maps[j, u], maps[want[j, u], u].half())
            assert top.scores[j, u] == scores[want[j, u], u]


def test_top_maps_of_two_shards_merge_into_those_of_one_pass():
    g = torch.Generator().manual_seed(2)
    n, c, k = 40, 3, 6
    scores = torch.randint(0, 4, (n, c), generator=g).float()
    maps = torch.rand(n, c, 2, 2, generator=g)
    whole, a, b = Mp.TopMaps(k, c, 2, 2), Mp.TopMaps(k, c, 2, 2), Mp.TopMaps(k, c, 2, 2)
    whole.update(scores, maps, torch.arange(n))
    a.update(scores[25:], maps[25:], torch.arange(25, n))                 # the later shard first
    b.update(scores[:25], maps[:25], torch.arange(25))
    a.merge(b)
    assert torch.equal(a.rows, whole.rows) and torch.equal(a.maps, whole.maps)
    few = Mp.TopMaps(k, c, 2, 2)
    few.update(scores[:3], maps[:3], torch.arange(3))                     # fewer images than K: empty slots last
    assert (few.rows[3:] == -1).all() and (few.rows[:3] >= 0).all()


def _one_hot_tokens(grid: Mp.Grid, channels: int):
    """Unit k fires only at patch token k (its token index: prefix + k)."""
    x = torch.zeros(1, grid.tokens, channels)
    x[0, : grid.prefix] = 5.0                                              # loud prefix tokens, to be skipped
    for k in range(channels):
        x[0, grid.prefix + k, k] = 1.0
    return x


def _check_cells(grid: Mp.Grid, channels: int):
    m = Mp.position_maps(_one_hot_tokens(grid, channels), "nlc", grid)
    assert m.shape == (1, channels, grid.h, grid.w)
    for k in range(channels):
        cell = int(m[0, k].flatten().argmax())
        assert (cell // grid.w, cell % grid.w) == divmod(k, grid.w) and float(m[0, k].max()) == 1.0


def test_a_timm_vits_tokens_map_to_their_patch_cells_with_cls_and_registers_skipped():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, reg_tokens=4, num_classes=0)
    n_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    grid = Mp.token_grid(model, n_tokens, "blocks.11")
    assert grid == Mp.Grid(5, 4, 4)                                        # CLS + 4 registers, 64/16 = 4
    _check_cells(grid, 16)
    with torch.inference_mode():                                          # the real output has that many tokens
        assert model.forward_features(torch.rand(1, 3, 64, 64)).shape[1] == grid.tokens


def test_a_torchvision_vits_tokens_map_to_their_patch_cells():
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=48, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    grid = Mp.token_grid(model, 10, "encoder.layers.encoder_layer_0")
    assert grid == Mp.Grid(1, 3, 3)
    _check_cells(grid, 9)


def test_a_grid_the_model_does_not_name_is_refused_in_one_line():
    with pytest.raises(UsageError, match="cannot tell where the 50 tokens") as e:
        Mp.token_grid(torch.nn.Linear(3, 3), 50, "blocks.0")
    assert "\n" not in str(e.value)
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0)
    with pytest.raises(UsageError, match="17 = 17|has 12 tokens"):
        Mp.token_grid(model, 12, "blocks.0")                              # pooled or merged tokens


def test_layouts_become_maps_and_two_dimensional_outputs_have_none():
    x = torch.rand(2, 3, 4, 5)
    assert torch.equal(Mp.position_maps(x, "nchw"), x)
    assert torch.equal(Mp.position_maps(x.permute(0, 2, 3, 1), "nhwc"), x)
    assert Mp.position_maps(torch.rand(2, 7), "nc") is None
    assert Mp.position_maps(torch.rand(2, 3, 9), "ncl").shape == (2, 3, 1, 9)


# ---------------------------------------------------------------------------
# NetDissect's IoU (dissect.evaluate.segmentation) against float64 loops
# ---------------------------------------------------------------------------

from dissect.evaluate import segmentation as Sg  # noqa: E402


@pytest.mark.parametrize("total,batches", [(1000, [1000]), (997, [400, 1, 596]), (3, [3]), (250, [50] * 5)])
def test_the_running_quantile_is_numpys_exact_quantile(total, batches):
    rng = np.random.default_rng(total)
    vals = rng.normal(size=(total, 3))
    vals[:, 2] = np.round(vals[:, 2])                                     # ties
    tq = Sg.TopQuantile(3, total)
    s = 0
    for b in batches:
        tq.update(torch.from_numpy(vals[s : s + b]))
        s += b
    np.testing.assert_allclose(tq.thresholds().numpy(), np.quantile(vals, 1 - Sg.QUANTILE, axis=0), rtol=0, atol=1e-12)
    assert tq.k <= total


def _bilinear_reference(m, H, W):
    """align_corners=False: output pixel i samples the input at (i + 0.5) h / H - 0.5, clamped to the edge."""
    h, w = m.shape
    out = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            y = min(max((i + 0.5) * h / H - 0.5, 0.0), h - 1)
            x = min(max((j + 0.5) * w / W - 0.5, 0.0), w - 1)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * m[y0, x0] + (1 - fy) * fx * m[y0, x1]
                         + fy * (1 - fx) * m[y1, x0] + fy * fx * m[y1, x1])
    return out


@pytest.mark.parametrize("h,w", [(2, 3), (4, 6), (3, 2)])
def test_iou_tally_equals_netdissects_counts_on_hand_made_masks(h, w):
    """Maps smaller than the masks, at their size (no upsampling) and of another aspect; values tied with a
    threshold (not above it: not activated), and a unit whose map never reaches its threshold."""
    rng = np.random.default_rng(3 + h)
    B, C, H, W = 4, 4, 4, 6
    maps = rng.random((B, C, h, w))
    thr = np.array([0.5, 0.7, 0.3, 2.0])
    maps[0, 0, 0, 0] = maps[1, 2, -1, -1] = 0.5
    maps[2, 1] = 0.7                                                      # a flat map at its threshold
    objects = rng.integers(0, 4, size=(B, H, W))                          # kind 0: 3 concepts + unlabelled
    parts = rng.integers(0, 3, size=(B, H, W))                            # kind 1: 2 concepts + unlabelled
    parts[1] = 0                                                          # an image without parts
    tally = Sg.IoUTally(C, [4, 3])
    tally.update(torch.from_numpy(maps[:2]), torch.from_numpy(thr), [torch.from_numpy(objects[:2]), torch.from_numpy(parts[:2])])
    tally.update(torch.from_numpy(maps[2:]), torch.from_numpy(thr), [torch.from_numpy(objects[2:]), None])  # no parts here
    both = np.zeros((C, 7))
    labels = np.zeros(7)
    units_kind = np.zeros((C, 2))
    for b in range(B):
        kinds = [(0, objects[b], 0), (1, parts[b], 4)] if b < 2 else [(0, objects[b], 0)]
        for k, mask, off in kinds:
            for y in range(H):
                for x in range(W):
                    if mask[y, x] > 0:
                        labels[off + mask[y, x]] += 1
        for u in range(C):
            act = _bilinear_reference(maps[b, u], H, W) > thr[u]
            for k, mask, off in kinds:
                hits = [(y, x) for y in range(H) for x in range(W) if act[y, x] and mask[y, x] > 0]
                for y, x in hits:
                    both[u, off + mask[y, x]] += 1
                if hits:
                    units_kind[u, k] += act.sum()
    np.testing.assert_allclose(tally.both.numpy(), both, atol=1e-9)
    np.testing.assert_allclose(tally.labels.numpy(), labels, atol=1e-9)
    np.testing.assert_allclose(tally.units_kind.numpy(), units_kind, atol=1e-9)
    kind_of = [0] * 4 + [1] * 3
    want = np.zeros_like(both)
    for u in range(C):
        for j in range(7):
            den = units_kind[u, kind_of[j]] + labels[j] - both[u, j]
            want[u, j] = both[u, j] / den if den > 0 else 0.0
    np.testing.assert_allclose(tally.iou().numpy(), want, atol=1e-12)
    assert (tally.iou()[:, [0, 4]] == 0).all()                            # unlabelled is never a concept


# ---------------------------------------------------------------------------
# Mask folders (dissect.artifacts.masks) and the demo world's masks
# ---------------------------------------------------------------------------

from dissect.artifacts import masks as Mk  # noqa: E402
from dissect.demo import world  # noqa: E402
from dissect.errors import InputError  # noqa: E402


def test_the_demo_world_writes_masks_of_what_it_drew_and_the_same_images(tmp_path):
    plain = world.write_probe(tmp_path / "plain", 12, seed=5)
    probe = world.write_probe(tmp_path / "probe", 12, seed=5, masks=tmp_path / "masks")
    for i in range(12):
        name = f"{i:06d}.png"
        assert (plain / name).read_bytes() == (probe / name).read_bytes()      # masks change no image
    kinds = {k.name: k for k in Mk.open_masks(tmp_path / "masks")}
    assert set(kinds) == {"shape", "texture"} and kinds["shape"].classes[0] == "unlabelled"
    rows = {r.split(",")[0]: r.strip().split(",") for r in (probe / "attributes.csv").read_text().splitlines()[1:]}
    header = (probe / "attributes.csv").read_text().splitlines()[0].split(",")
    for name, row in rows.items():
        attrs = dict(zip(header, row))
        shape, texture = Mk.read_mask(kinds["shape"], name), Mk.read_mask(kinds["texture"], name)
        assert shape.shape == texture.shape == (64, 64)
        assert set(np.unique(shape)) == {0, kinds["shape"].classes.index(attrs["shape"])}
        assert set(np.unique(texture)) == {0, kinds["texture"].classes.index(attrs["texture"])}
        assert ((shape > 0) ^ (texture > 0)).all()                                # object or background, never both
        # the object's pixels are the ones the image paints in its colour: far from the background's greys
        img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(probe / name).convert("RGB"), dtype=float)
        inside, outside = img[shape > 0], img[shape == 0]
        assert inside.size and abs(inside.mean(axis=0) - outside.mean(axis=0)).max() > 20


def test_mask_folders_are_read_in_ade20k_layout_and_bad_ones_end_in_one_line(tmp_path):
    one = Mk.write_mask_kind(tmp_path / "m", ["unlabelled", "sky", "tree"], {"a/b.jpg": np.array([[0, 1], [2, 2]])})
    assert (one / "a" / "b.png").is_file()
    [kind] = Mk.open_masks(one)
    np.testing.assert_array_equal(Mk.read_mask(kind, "a/b.jpg"), [[0, 1], [2, 2]])
    assert Mk.read_mask(kind, "a/missing.jpg") is None
    wide = Mk.write_mask_kind(tmp_path / "w", ["unlabelled"] + [f"c{i}" for i in range(299)], {"x.png": np.array([[299, 7]])})
    np.testing.assert_array_equal(Mk.read_mask(Mk.open_masks(wide)[0], "x.png"), [[299, 7]])   # 16-bit
    (tmp_path / "m" / "classes.txt").write_text("unlabelled\nsky\n")
    with pytest.raises(InputError, match="uses index 2, but .* names 2") as e:
        Mk.read_mask(Mk.open_masks(one)[0], "a/b.jpg")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        Mk.open_masks(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no classes.txt"):
        Mk.open_masks(tmp_path / "empty")


# ---------------------------------------------------------------------------
# record --maps: what activations.h5 keeps
# ---------------------------------------------------------------------------

from conftest import make_images  # noqa: E402
from test_cli import TIMM, invoke  # noqa: E402

from dissect import artifacts as A  # noqa: E402
from pathlib import Path  # noqa: E402


def _raw_outputs(probe, layer: str, n: int):
    """Every image's raw output of ``layer`` of the test model, in probe order (the brute force)."""
    from dissect.hooks import Recorder
    from dissect.models import load_target
    from dissect.probe import open_probe

    target = load_target("timm:test_resnet", "none", None, None, "cpu", layers=[layer])
    p = open_probe([str(probe)])
    batch = torch.stack([target.transform(p.load(i)) for i in range(n)])
    with Recorder(target.module.eval(), [layer], keep_raw=True) as rec:
        return rec.run(batch)[layer].float()


def test_recorded_maps_are_each_units_top_images_with_its_map_whatever_the_batch(tmp_path):
    probe = make_images(tmp_path / "probe", 30, seed=4)
    for batch in (4, 30):
        invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "--batch-size", batch,
               "-o", tmp_path / f"a{batch}.h5")
    raw = _raw_outputs(probe, "layer1", 30)                                # [N, C, h, w]
    scores = A.read_activation_layer(tmp_path / "a4.h5", "layer1")         # the file's summary, row order
    got = A.read_maps(tmp_path / "a4.h5", "layer1")
    assert got.values.shape == (raw.shape[1], 3, *raw.shape[2:]) and A.maps_in(tmp_path / "a4.h5") == {"layer1": 3}
    ids = A.read_activations(tmp_path / "a4.h5", data=False).ids
    from dissect.probe import open_probe

    pos_of = {k: i for i, k in enumerate(open_probe([str(probe)]).ids)}
    for u in range(raw.shape[1]):
        want = sorted(range(30), key=lambda i: (-scores[i, u], i))[:3]
        assert got.rows[u].tolist() == want, u
        for j, row in enumerate(want):
            np.testing.assert_array_equal(got.values[u, j], raw[pos_of[ids[row]], u].half().float().numpy())
    other = A.read_maps(tmp_path / "a30.h5", "layer1")
    np.testing.assert_array_equal(other.rows, got.rows)
    np.testing.assert_allclose(other.values, got.values, atol=2e-3)
    with pytest.raises(Exception, match="no maps of 'fc'"):
        A.read_maps(tmp_path / "a4.h5", "fc")                              # a 2-D output has none


def test_maps_are_added_to_a_file_recorded_without_them_and_refused_over_the_budget(tmp_path):
    probe = make_images(tmp_path / "probe", 12, seed=5)
    out = tmp_path / "a.h5"
    invoke("record", probe, *TIMM, "--layers", "layer1", "-o", out)
    r = invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "2", "-o", out)
    assert "recording layer1 again, with --maps 2" in r.stderr and A.maps_in(out) == {"layer1": 2}
    r = invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "2", "-o", out)
    assert "with their maps; nothing to record" in r.stderr
    r = invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "50", "-o", tmp_path / "b.h5")
    assert A.maps_in(tmp_path / "b.h5") == {"layer1": 12}                     # K at most the images there are


def _maps_by_id(path, layer):
    m, ids = A.read_maps(path, layer), A.read_activations(path, data=False).ids
    return [[ids[r] for r in row] for row in m.rows], m.values


def test_maps_grow_with_the_probe_like_layers_and_are_recorded_anew_when_a_top_image_is_gone(tmp_path):
    """Issue #26: maps are reused and grown incrementally like layers. Images added: the stored maps are kept and
    only the new images are recorded, with the maps a fresh record of the grown probe keeps (ids and values);
    a file grown without --maps keeps growing its maps. A stored top image removed: the next best was never kept,
    so the file is recorded anew, and again equals a fresh record."""
    import shutil

    probe = make_images(tmp_path / "probe", 18, seed=6)
    extra = make_images(tmp_path / "extra", 6, seed=7)
    out = tmp_path / "a.h5"
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", out)
    for f in sorted(extra.rglob("*.*")):
        shutil.copy(f, probe / f.parent.name / f"new-{f.name}")
    r = invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", out)
    assert "reusing 18 unchanged images, recording 6" in r.stderr
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", tmp_path / "fresh.h5")
    (got_ids, got), (want_ids, want) = _maps_by_id(out, "layer1"), _maps_by_id(tmp_path / "fresh.h5", "layer1")
    assert got_ids == want_ids and A.maps_in(out) == {"layer1": 3}
    np.testing.assert_allclose(got, want, atol=2e-3)
    # grown again without --maps: the maps still grow
    for f in sorted(make_images(tmp_path / "more", 3, seed=8).rglob("*.*")):
        shutil.copy(f, probe / f.parent.name / f"more-{f.name}")
    r = invoke("record", probe, *TIMM, "--layers", "layer1,fc", "-o", out)
    assert "recording 3" in r.stderr
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", tmp_path / "fresh2.h5")
    assert _maps_by_id(out, "layer1")[0] == _maps_by_id(tmp_path / "fresh2.h5", "layer1")[0]
    # a stored top image removed: recorded anew
    gone = got_ids[0][0]
    next(probe.rglob(gone.split("/")[-1])).unlink()
    r = invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", out)
    assert "was removed or changed, so its maps need every image: recording all 26" in r.stderr
    invoke("record", probe, *TIMM, "--layers", "layer1,fc", "--maps", "3", "-o", tmp_path / "fresh3.h5")
    (got_ids, got), (want_ids, want) = _maps_by_id(out, "layer1"), _maps_by_id(tmp_path / "fresh3.h5", "layer1")
    assert got_ids == want_ids and all(gone not in row for row in got_ids)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_the_maps_of_shards_merge_into_those_of_one_pass(tmp_path):
    probe = make_images(tmp_path / "probe", 15, seed=10)
    invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "4", "-o", tmp_path / "one.h5")
    parts = []
    for i in (1, 2, 3):
        parts.append(tmp_path / f"part{i}.h5")
        invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "4", "--shard", f"{i}/3", "-o", parts[-1])
    invoke("merge", *reversed(parts), "-o", tmp_path / "merged.h5")
    a, b = A.read_maps(tmp_path / "merged.h5", "layer1"), A.read_maps(tmp_path / "one.h5", "layer1")
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.values, b.values)
    invoke("record", probe, *TIMM, "--layers", "layer1", "--shard", "1/3", "-o", tmp_path / "plain1.h5")
    r = invoke("merge", tmp_path / "plain1.h5", parts[1], parts[2], "-o", tmp_path / "bad.h5", ok=False)
    assert r.exit_code != 0 and "maps of different layers" in r.output


TOKENS_MODEL = """
import torch


class Tokens(torch.nn.Module):
    \"\"\"A ViT-shaped model: 1 CLS + 2 register tokens, then a 3 x 4 patch grid; its layer ``tokens`` makes unit k
    fire at patch k only (scaled by the image's mean, so images differ), the prefix tokens loud.\"\"\"

    def __init__(self):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.grid_size = (3, 4)
        self.num_prefix_tokens = 3
        self.tokens = torch.nn.Identity()
        self.head = torch.nn.Linear(12, 2)

    def forward(self, x):
        t = torch.zeros(x.shape[0], 15, 12)
        t[:, :3] = 9.0
        scale = x.mean(dim=(1, 2, 3)) + 2
        for k in range(12):
            t[:, 3 + k, k] = scale
        return self.head(self.tokens(t).mean(dim=1))


def build():
    return Tokens()
"""


def test_a_unit_that_fires_at_one_token_maps_to_its_grid_cell_for_layers_and_sae_entries(tmp_path):
    probe = make_images(tmp_path / "probe", 6, seed=6)
    (tmp_path / "tok.py").write_text(TOKENS_MODEL)
    torch.save(torch.eye(12)[[5, 2, 11]], tmp_path / "w.pt")               # an entry of 3 directions: units 5, 2, 11
    out = tmp_path / "t.h5"
    invoke("record", probe, "--model", f"{tmp_path / 'tok.py'}:build", "--input-size", "16", "--mean", "0.5,0.5,0.5",
           "--std", "0.5,0.5,0.5", "--layers", "tokens", "--layout", "tokens=nlc", "--directions", f"tokens@w={tmp_path / 'w.pt'}",
           "--maps", "2", "-o", out)
    layer = A.read_maps(out, "tokens")
    assert layer.values.shape == (12, 2, 3, 4)
    for k in range(12):
        assert divmod(int(layer.values[k, 0].argmax()), 4) == divmod(k, 4)   # the CLS and registers are skipped
        assert float(layer.scores[k, 0]) == pytest.approx((27 + float(layer.values[k, 0].max())) / 15, rel=1e-3)  # mean of all 15
    entry = A.read_maps(out, "tokens@w")
    assert entry.values.shape == (3, 2, 3, 4)
    for j, k in enumerate([5, 2, 11]):
        assert divmod(int(entry.values[j, 0].argmax()), 4) == divmod(k, 4)


def test_maps_over_the_memory_budget_are_refused_in_one_line():
    from dissect.hooks import LayerInfo
    from dissect.maps import MapsOptions, plan_maps
    from dissect.record import RecordPlan

    info = LayerInfo("layer4", "Bottleneck", (2048, 56, 56), "nchw", 2048)
    plan = RecordPlan(None, ["layer4"], ["layer4"], [], False, "", "fp32", {"layer4": info})
    with pytest.raises(UsageError, match="--maps 32 needs 784 MB for layer4, over the memory budget of 256 MB") as e:
        plan_maps(plan, MapsOptions(maps=32), 50_000)
    assert "\n" not in str(e.value)
    assert plan_maps(plan, MapsOptions(maps=32, max_memory=1 << 30), 50_000).k == 32
    assert plan_maps(plan, MapsOptions(maps=0), 50_000) is None


def test_a_resumed_pass_keeps_the_maps_of_one_uninterrupted_pass(tmp_path, monkeypatch):
    """Chunks restored from a checkpoint bring their top maps; the re-encoded chunk's images are counted once even
    where a saved chunk already held them (batches of 3 straddle chunks of 4)."""
    from dissect import passes

    probe = make_images(tmp_path / "probe", 12, seed=7)
    common = ["record", probe, *TIMM, "--layers", "layer1", "--maps", "4", "--batch-size", 3, "--workers", 0,
              "--device", "cpu"]
    ref = tmp_path / "ref.h5"
    invoke(*common, "-o", ref, "--checkpoint-every", 0)
    out = tmp_path / "out.h5"
    partial = Path(str(out) + ".partial")
    with monkeypatch.context() as m:                                       # a checkpoint that survives, as a crash leaves it
        m.setattr(passes.Checkpoint, "remove", lambda self: None)
        invoke(*common, "-o", out, "--checkpoint-every", 4)
    chunks = sorted(partial.glob("chunk-*.npz"))
    assert len(chunks) == 3
    out.unlink()
    chunks[1].unlink()                                                     # its 4 images are encoded again
    r = invoke(*common, "-o", out, "--checkpoint-every", 4)
    assert "resuming: 8 of 12 images restored" in r.stderr.replace("\n", " ")
    a, b = A.read_maps(out, "layer1"), A.read_maps(ref, "layer1")
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.values, b.values)
    assert len(set(a.rows[0].tolist())) == 4                               # no image twice


def test_show_maps_draws_where_a_unit_fires_in_the_terminal_and_as_json(tmp_path):
    import json

    assert Mp.heat_rows(np.array([[0.0, 1.0], [0.5, -2.0]]), 1.0) == ["  ██", "▒▒  "]
    probe = make_images(tmp_path / "probe", 8, seed=8)
    out = tmp_path / "a.h5"
    invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "3", "-o", out)
    m = A.read_maps(out, "layer1")
    r = invoke("show", out, "--maps", "layer1", "2", "-n", "2")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("layer1 unit 2: where it fires on its top 2 images")
    grid = [ln.strip()[1:-1] for ln in lines if ln.strip().startswith("│")]
    h, w = m.values.shape[2:]
    assert len(grid) == 2 * h and all(len(g) == 2 * w for g in grid)
    cell = int(np.argmax(m.values[2, 0]))
    assert grid[cell // w][2 * (cell % w)] == "█"                            # the strongest cell of the top image
    rows = [json.loads(x) for x in invoke("show", out, "--maps", "layer1", "2", "--json").stdout.splitlines()]
    assert len(rows) == 3 and np.allclose(rows[0]["map"], m.values[2, 0])
    r = invoke("show", out, "--maps", "fc", "0", ok=False)
    assert r.exit_code != 0 and "holds no maps of 'fc'" in r.output


def test_run_keeps_maps_and_show_reads_them_from_the_run_folder(tmp_path, tiny_clip):
    probe = make_images(tmp_path / "probe", 10, seed=9)
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    invoke("run", probe, "--clip", tiny_clip, *TIMM, "--layers", "layer1,fc", "--concepts", concepts, "--maps", "2",
           "--param", "top_k=3", "-o", tmp_path / "run", "--device", "cpu")
    assert A.maps_in(tmp_path / "run" / "activations.h5") == {"layer1": 2}
    r = invoke("show", tmp_path / "run", "--maps", "layer1", "0")
    assert "layer1 unit 0" in r.stdout
    for shard in ("1/2", "2/2", None):                                     # a job array, then the merging run
        invoke("run", probe, "--clip", tiny_clip, *TIMM, "--layers", "layer1", "--concepts", concepts, "--maps", "2",
               "--param", "top_k=3", *(["--shard", shard] if shard else []), "-o", tmp_path / "run2", "--device", "cpu")
    np.testing.assert_array_equal(A.read_maps(tmp_path / "run2" / "activations.h5", "layer1").rows,
                                  A.read_maps(tmp_path / "run" / "activations.h5", "layer1").rows)


def test_report_cards_of_token_channels_and_direction_entries_overlay_their_stored_maps(tmp_path, tiny_clip):
    """Issue #26: every card of every unit kind overlays its stored map without the model: token channels of a
    transformer layer (on the patch grid, prefix tokens set apart) and the latents of a direction entry, from a
    run folder; the page carries one map image per card image."""
    import json

    probe = make_images(tmp_path / "probe", 10, seed=12)
    (tmp_path / "tok.py").write_text(TOKENS_MODEL)
    torch.save(torch.eye(12)[[5, 2, 11]], tmp_path / "w.pt")
    concepts = tmp_path / "c.txt"
    concepts.write_text("red\nblue\nsquare\n")
    run = tmp_path / "run"
    invoke("run", probe, "--clip", tiny_clip, "--model", f"{tmp_path / 'tok.py'}:build", "--input-size", "16",
           "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--layers", "tokens", "--layout", "tokens=nlc",
           "--directions", f"tokens@w={tmp_path / 'w.pt'}", "--concepts", concepts, "--maps", "3", "--param", "top_k=3", "-o", run,
           "--device", "cpu")
    assert A.maps_in(run / "activations.h5") == {"tokens": 3, "tokens@w": 3}
    invoke("report", run, "-o", tmp_path / "site", "--top-images", 3)
    page = (tmp_path / "site" / "index.html").read_text()
    start = page.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    cards = json.loads(page[start : page.index("</script>", start)].replace("<\\/", "</"))["neurons"]
    for layer, n in (("tokens", 12), ("tokens@w", 3)):
        mine = [c for c in cards if c["layer"] == layer]
        assert len(mine) == n and all(len(c["maps"]) == len(c["imgs"]) == 3 for c in mine), layer
        assert all((tmp_path / "site" / m).exists() for c in mine for m in c["maps"])


# ---------------------------------------------------------------------------
# On the demo world, which knows where it drew each shape
# ---------------------------------------------------------------------------

def _shape_labelled(labels, layer: str) -> dict[int, str]:
    import pyarrow.parquet as pq

    shapes = set(world.ATTRIBUTES["shape"])
    return {r["unit"]: r["label"] for r in pq.read_table(labels).to_pylist() if r["layer"] == layer and r["label"] in shapes}


def test_the_demo_worlds_shape_units_segment_their_shape_and_their_maps_peak_on_it(demo_run, tmp_path):
    """Issue #26 on the demo world: layer4's units labelled with a shape get that shape as their best-IoU mask
    concept (21 of 21 on the first 300 images); layer3's stored maps peak in a cell that holds the drawn object for
    98% of (unit, top image) pairs (120 pairs; pinned at 90%), a cell twice as covered by it as the average."""
    from dissect.demo import demo_specs

    out, _ = demo_run
    labels = out / "labels-mixed-softwpmi.parquet"
    spec = demo_specs().command_line().split()
    # where the maps peak: every image of the demo, its masks from `dissect demo`
    acts = tmp_path / "maps.h5"
    invoke("record", out / "probe", *spec, "--layers", "layer3", "--maps", "8", "-o", acts)
    kind = {k.name: k for k in Mk.open_masks(out / "masks")}["shape"]
    m, ids = A.read_maps(acts, "layer3"), A.read_activations(acts, data=False).ids
    h, w = m.values.shape[2:]
    inside, peak_cover, mean_cover = [], [], []
    for u in _shape_labelled(labels, "layer3"):
        for j in range(m.values.shape[1]):
            obj = Mk.read_mask(kind, ids[m.rows[u, j]]) > 0
            sy, sx = obj.shape[0] // h, obj.shape[1] // w
            cells = obj.reshape(h, sy, w, sx).mean(axis=(1, 3))
            cy, cx = np.unravel_index(int(np.argmax(m.values[u, j])), (h, w))
            inside.append(cells[cy, cx] > 0)
            peak_cover.append(cells[cy, cx])
            mean_cover.append(cells.mean())
    assert len(inside) >= 80 and np.mean(inside) >= 0.9, (len(inside), np.mean(inside))
    assert np.mean(peak_cover) > 1.5 * np.mean(mean_cover)
    # what NetDissect's IoU says about the units labelled with a shape
    small = world.write_probe(tmp_path / "probe", 300, 1234, masks=tmp_path / "masks")   # the demo's first 300
    seg = tmp_path / "segment.parquet"
    r = invoke("evaluate", "segment", small, "--masks", tmp_path / "masks", *spec, "--layers", "layer4",
               "--labels", labels, "--images", out / "images.h5", "-o", seg)
    assert "Segmentation" in r.stdout and seg.with_suffix(".json").exists()
    rows = {row["unit"]: row for row in A.read_table(seg, A.SEGMENT_FORMAT).to_pylist()}
    labelled = _shape_labelled(labels, "layer4")
    agree = sum(rows[u]["concept"] == lab and rows[u]["kind"] == "shape" and rows[u]["label_agrees"]
                for u, lab in labelled.items())
    assert len(labelled) >= 15 and agree == len(labelled), (agree, len(labelled))
    assert all(0 <= row["iou"] <= 1 and row["threshold"] == row["threshold"] for row in rows.values())
    # the CLIP cosine of label and concept: 1 where they are the same text, below it elsewhere
    assert all(abs(row["label_cos"] - 1) < 1e-5 for row in rows.values() if row["label_agrees"])
    assert all(-1 <= row["label_cos"] < 0.999 for row in rows.values() if row["label_agrees"] is False)


def test_segment_refuses_what_it_cannot_segment_in_one_line(tmp_path):
    probe = world.write_probe(tmp_path / "probe", 6, 1, masks=tmp_path / "masks")
    r = invoke("evaluate", "segment", probe, "--masks", tmp_path / "masks", *TIMM, "--layers", "fc",
               "-o", tmp_path / "s.parquet", ok=False)
    assert r.exit_code != 0 and "layer fc has no positions" in r.output and not (tmp_path / "s.parquet").exists()
    r = invoke("evaluate", "segment", probe, "--masks", tmp_path / "nowhere", *TIMM, "--layers", "layer1",
               "-o", tmp_path / "s.parquet", ok=False)
    assert r.exit_code != 0 and "does not exist" in r.output


def test_torchrun_ranks_merge_their_maps_into_those_of_one_process(tmp_path):
    from test_shards import torchrun_dissect

    probe = make_images(tmp_path / "probe", 12, seed=11)
    invoke("record", probe, *TIMM, "--layers", "layer1", "--maps", "3", "-o", tmp_path / "one.h5")
    torchrun_dissect("record", str(probe), *TIMM, "--layers", "layer1", "--maps", "3", "--device", "cpu",
                     "-o", str(tmp_path / "ranks.h5"))
    a, b = A.read_maps(tmp_path / "ranks.h5", "layer1"), A.read_maps(tmp_path / "one.h5", "layer1")
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.values, b.values)
