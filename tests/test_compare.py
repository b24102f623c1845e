"""dissect compare (issue #27): the kernels against float64 references written from their definitions, then the
command on checkpoints whose answers are known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dissect import correlate as Co


def _pearson_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """r[i, j] = Σ (x_i − x̄_i)(y_j − ȳ_j) / sqrt(Σ (x_i − x̄_i)² Σ (y_j − ȳ_j)²), by loops; NaN for a constant unit."""
    n = x.shape[0]
    out = np.full((x.shape[1], y.shape[1]), np.nan)
    for i in range(x.shape[1]):
        a = [float(v) for v in x[:, i]]
        ma = sum(a) / n
        for j in range(y.shape[1]):
            b = [float(v) for v in y[:, j]]
            mb = sum(b) / n
            num = sum((p - ma) * (q - mb) for p, q in zip(a, b))
            den = math.sqrt(sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b))
            if den > 0:
                out[i, j] = num / den
    return out


def _cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019, eq. 7): HSIC with linear kernels K = XXᵀ, L = YYᵀ and the centring
    matrix H: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)), in float64 over the N × N kernels."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def _stream(x, y, blocks, gram=True):
    cm = Co.CrossMoments(x.shape[1], y.shape[1], gram=gram)
    s = 0
    for b in blocks:
        cm.update(torch.from_numpy(x[s : s + b]), torch.from_numpy(y[s : s + b]))
        s += b
    assert s == x.shape[0]
    return cm


@pytest.mark.parametrize("blocks", [[40], [7, 1, 32], [13, 13, 14]])
def test_streamed_correlation_and_cka_equal_their_definitions_whatever_the_blocks(blocks):
    rng = np.random.default_rng(len(blocks))
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.concatenate([x[:, [2, 0]] * 3 + 0.1 * rng.normal(size=(40, 2)), rng.normal(size=(40, 4))], axis=1)
    y = (y + 1e4).astype(np.float32)                                     # a large mean: shifted before the products
    x[:, 4] = 7.0                                                        # a constant unit: no correlation
    cm = _stream(x, y, blocks)
    got = cm.correlation().numpy()
    want = _pearson_reference(x, y)
    assert np.isnan(got[4]).all() and np.isnan(want[4]).all()
    np.testing.assert_allclose(got[:4], want[:4], atol=2e-4)
    assert cm.cka() == pytest.approx(_cka_reference(x, y), abs=1e-4)
    assert math.isnan(_stream(x, y, blocks, gram=False).cka())


def test_cka_is_one_for_a_rotation_and_scaling_and_the_gram_blocks_sum_to_the_product():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    cm = _stream(x.astype(np.float32), (3 * x @ q + 5).astype(np.float32), [100, 200])
    assert cm.cka() == pytest.approx(1.0, abs=1e-5)
    t = torch.from_numpy(rng.normal(size=(9, 1030)).astype(np.float32))
    acc = torch.zeros((1030, 1030), dtype=torch.float64)
    Co.add_gram(acc, t, block=512)
    Co.add_gram(acc, t, block=512)
    torch.testing.assert_close(Co.symmetric(acc, block=512), 2 * (t.T @ t).double(), atol=1e-4, rtol=1e-5)


def _brute_force(score: np.ndarray) -> float:
    m, n = score.shape
    if m <= n:
        return max(sum(score[i, c] for i, c in enumerate(p)) for p in itertools.permutations(range(n), m))
    return _brute_force(score.T)


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 6), (6, 3), (5, 5), (6, 6)])
def test_the_matching_is_the_assignment_of_highest_total_by_brute_force(shape):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        s = rng.uniform(-1, 1, size=shape)
        if seed % 2:
            s = np.round(s, 1)                                            # ties
        got = Co.assignment(s)
        m, n = shape
        assert len(got) == m
        held = got[got >= 0]
        assert len(held) == min(m, n) and len(set(held.tolist())) == len(held)
        assert sum(s[i, c] for i, c in enumerate(got) if c >= 0) == pytest.approx(_brute_force(s), abs=1e-12)


def test_the_matching_recovers_a_permutation_and_agrees_with_scipy():
    rng = np.random.default_rng(3)
    perm = rng.permutation(50)
    r = rng.uniform(-0.3, 0.3, size=(50, 50))
    r[np.arange(50), perm] = 1.0
    np.testing.assert_array_equal(Co.assignment(r), perm)
    scipy_opt = pytest.importorskip("scipy.optimize")
    for shape in ((60, 80), (80, 60), (70, 70)):
        s = rng.normal(size=shape)
        rows, cols = scipy_opt.linear_sum_assignment(s, maximize=True)
        got = Co.assignment(s)
        assert sum(s[i, c] for i, c in enumerate(got) if c >= 0) == pytest.approx(s[rows, cols].sum(), abs=1e-9)


def test_units_without_any_correlation_are_matched_to_nothing():
    """A dead unit's row (or column) is NaN throughout: left unmatched, the rest matched as without it."""
    rng = np.random.default_rng(4)
    s = rng.uniform(-1, 1, size=(5, 6))
    s[2] = np.nan
    s[:, 4] = np.nan
    got = Co.assignment(s)
    assert got[2] == -1 and 4 not in got.tolist()
    keep_r, keep_c = [0, 1, 3, 4], [0, 1, 2, 3, 5]
    sub = s[np.ix_(keep_r, keep_c)]
    assert sum(s[i, c] for i, c in enumerate(got) if c >= 0) == pytest.approx(_brute_force(sub), abs=1e-12)
    assert (Co.assignment(np.full((3, 3), np.nan)) == -1).all()


def test_best_matches_go_both_ways_and_skip_nan():
    r = np.array([[0.1, 0.9, np.nan], [np.nan, np.nan, np.nan], [0.5, 0.2, -0.4]])
    col, col_r, row, row_r = Co.best_matches(r)
    assert col.tolist() == [1, -1, 0] and np.isnan(col_r[1]) and col_r[0] == 0.9
    assert row.tolist() == [2, 0, 2] and row_r.tolist() == [0.5, 0.9, -0.4]


# ---------------------------------------------------------------------------
# The command, on checkpoints whose answers are known
# ---------------------------------------------------------------------------

from dissect import artifacts as A  # noqa: E402
from dissect.demo import demo_specs  # noqa: E402

from test_cli import assert_one_line_error, invoke  # noqa: E402


def _demo_model(weights) -> list[str]:
    """The demo classifier's flags, with ``weights`` for its own."""
    spec = demo_specs()
    args = spec.command_line().split()
    args[args.index("--weights") + 1] = str(weights)
    return args


def _permuted_copy(path, layer: str, seed: int):
    """The demo classifier with ``layer``'s conv1 output channels permuted and each rescaled by a positive factor
    (its batch norm's statistics moved with them, conv2's inputs permuted alike): the network computes the same
    function, and conv1's unit k is the original unit perm[k] times scale[k]."""
    from safetensors.torch import load_file, save_file

    sd = load_file(demo_specs().weights)
    c = sd[f"{layer}.conv1.weight"].shape[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(c, generator=g)
    scale = 0.5 + 2 * torch.rand(c, generator=g)
    sd[f"{layer}.conv1.weight"] = sd[f"{layer}.conv1.weight"][perm] * scale[:, None, None, None]
    sd[f"{layer}.bn1.running_mean"] = sd[f"{layer}.bn1.running_mean"][perm] * scale
    sd[f"{layer}.bn1.running_var"] = sd[f"{layer}.bn1.running_var"][perm] * scale ** 2
    for name in ("weight", "bias"):
        sd[f"{layer}.bn1.{name}"] = sd[f"{layer}.bn1.{name}"][perm]
    sd[f"{layer}.conv2.weight"] = sd[f"{layer}.conv2.weight"][:, perm]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return perm.numpy(), scale.numpy()


def test_a_permuted_and_rescaled_checkpoint_is_matched_back_exactly(demo_run, tmp_path):
    """Issue #27 acceptance: a classifier against a copy whose layer4.0.conv1 channels were permuted and rescaled:
    the permutation is recovered exactly, r = 1 for every pair, labels agree on every unit, and the final layer
    (unchanged) matches itself with CKA 1."""
    out, _ = demo_run
    perm, _ = _permuted_copy(tmp_path / "copy.safetensors", "layer4.0", seed=3)
    layers = "layer4.0.conv1,fc"
    for name, weights in (("a", demo_specs().weights), ("b", tmp_path / "copy.safetensors")):
        invoke("record", out / "probe", *_demo_model(weights), "--layers", layers, "-o", tmp_path / f"{name}.h5")
        invoke("label", "-i", out / "images.h5", "-a", tmp_path / f"{name}.h5", "-t", out / "text-mixed.h5",
               "-o", tmp_path / f"labels-{name}.parquet", "--device", "cpu")
    r = invoke("compare", tmp_path / "a.h5", tmp_path / "b.h5", "--labels-a", tmp_path / "labels-a.parquet",
               "--labels-b", tmp_path / "labels-b.parquet", "-o", tmp_path / "cmp.parquet")
    rows = A.read_table(tmp_path / "cmp.parquet", A.COMPARE_FORMAT).to_pylist()
    conv = sorted((x for x in rows if x["layer_a"] == "layer4.0.conv1"), key=lambda x: x["unit_a"])
    assert len(conv) == len(perm) == 96
    inverse = np.argsort(perm)                                           # original unit perm[k] is the copy's unit k
    assert [x["unit_b"] for x in conv] == inverse.tolist()
    assert [x["best_b"] for x in conv] == inverse.tolist() and all(x["best_a"] == x["unit_a"] for x in conv)
    assert all(abs(x["r"] - 1) < 1e-5 and x["matched"] for x in conv)
    assert all(x["labels_agree"] for x in rows) and len(rows) == 96 + 10
    fc = [x for x in rows if x["layer_a"] == "fc"]
    assert all(x["unit_a"] == x["unit_b"] and abs(x["r"] - 1) < 1e-5 for x in fc)
    summary = {s["layer_a"]: s for s in __import__("json").loads((tmp_path / "cmp.json").read_text())}
    # linear CKA is blind to rotations and one common scale, not to each unit's own: below 1 where every unit
    # matches with r = 1 (why the matching is reported beside it); 1 for the unchanged final layer
    assert 0.9 < summary["layer4.0.conv1"]["cka"] < 0.999 and summary["fc"]["cka"] == pytest.approx(1, abs=1e-5)
    assert summary["layer4.0.conv1"]["matched"] == 96 and summary["layer4.0.conv1"]["labels_agree"] == 1
    assert summary["fc"]["concepts"] and all(c["status"] == "same" and c["change"] == 0 for c in summary["fc"]["concepts"])
    assert "96 (100%)" in r.stdout and "wrote" in r.stderr


def test_neurons_match_identity_directions_one_to_one_and_pca_directions_with_cka_one(demo_run, tmp_path):
    """Issue #27 acceptance: a layer's neurons against identity directions of it match one to one (r = 1);
    against its PCA directions (all of them: a rotation of the centred layer) CKA is 1 while the matches are what
    they are (rows report each PCA direction's correlation with its neuron)."""
    from safetensors.numpy import save_file

    out, _ = demo_run
    save_file({"directions": np.eye(96, dtype=np.float32)}, str(tmp_path / "eye.safetensors"))
    acts = tmp_path / "acts.h5"
    invoke("record", out / "probe", *_demo_model(demo_specs().weights), "--layers", "layer4", "-o", tmp_path / "n.h5")
    invoke("decompose", tmp_path / "n.h5", "--layer", "layer4", "--k", 96, "-o", tmp_path / "pca.safetensors")
    invoke("record", out / "probe", *_demo_model(demo_specs().weights), "--layers", "layer4", "--directions",
           f"layer4@eye={tmp_path / 'eye.safetensors'}", "--directions", f"layer4@pca={tmp_path / 'pca.safetensors'}",
           "-o", acts)
    invoke("compare", acts, acts, "--pair", "layer4=layer4@eye", "--pair", "layer4=layer4@pca", "-o", tmp_path / "c.parquet")
    rows = A.read_table(tmp_path / "c.parquet", A.COMPARE_FORMAT).to_pylist()
    eye = [x for x in rows if x["layer_b"] == "layer4@eye"]
    assert [x["unit_b"] for x in eye] == list(range(96)) and all(abs(x["r"] - 1) < 1e-5 for x in eye)
    summary = {s["layer_b"]: s for s in __import__("json").loads((tmp_path / "c.json").read_text())}
    assert summary["layer4@eye"]["cka"] == pytest.approx(1, abs=1e-5)
    pca = summary["layer4@pca"]
    assert pca["cka"] == pytest.approx(1, abs=1e-4) and pca["units_b"] == 96
    assert pca["matched"] < 96                                            # a rotation: not a permutation of the neurons
    assert all(x["r"] is not None for x in rows if x["layer_b"] == "layer4@pca")


def test_bad_pairs_end_in_one_line(demo_run, tmp_path):
    """Different probes, unknown layers, a file of another kind, a malformed --pair: one line each, nothing written."""
    from dissect.demo import world

    out, _ = demo_run
    model = _demo_model(demo_specs().weights)
    invoke("record", out / "probe", *model, "--layers", "fc", "-o", tmp_path / "a.h5")
    invoke("record", world.write_probe(tmp_path / "other", 20, seed=99), *model, "--layers", "fc", "-o", tmp_path / "b.h5")
    small = world.write_probe(tmp_path / "small", 30, seed=1234)        # the demo's first 30, and 10 of another world
    for i, f in enumerate(sorted(world.write_probe(tmp_path / "x", 10, seed=5).glob("*.png"))):
        f.rename(small / f"other-{i}.png")
    invoke("record", small, *model, "--layers", "fc", "-o", tmp_path / "s.h5")
    cases = [
        ([tmp_path / "a.h5", tmp_path / "b.h5"], "name files of different sizes"),   # same names, other images
        ([tmp_path / "s.h5", tmp_path / "a.h5"], "A (40 images) and B (2000 images) share 30 image ids, fewer than the 36"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--pair", "fc=layer9"], "has no layer 'layer9'"),
        ([tmp_path / "a.h5", out / "labels-mixed-softwpmi.parquet"], "is a dissect/labels file, not activations"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--pair", "fc"], "is not LAYER_A=LAYER_B"),
        ([tmp_path / "a.h5", tmp_path / "nowhere.h5"], "does not exist"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--pair", "fc=fc", "--pair", "fc=fc"], "is given twice"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--pair", "fc=fc", "--layers", "fc"], "not both"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--labels-a", tmp_path / "none.parquet"], "does not exist"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--labels-a", out / "labels-mixed-softwpmi.parquet", "--pair",
          "fc=fc"], None),                                                # labels of other layers: fine
        ([tmp_path / "a.h5", tmp_path / "a.h5", "--labels-a", tmp_path / "wide.csv"], "has labels of unit 12 of fc, which has 10"),
        ([tmp_path / "a.h5", tmp_path / "a.h5", "-o", tmp_path / "a.h5"], "a.h5"),   # the output over an input
    ]
    (tmp_path / "wide.csv").write_text("layer,unit,description,similarity\nfc,12,dog,0.5\n")
    for args, fragment in cases:
        r = invoke("compare", *args, *([] if "-o" in args else ["-o", tmp_path / "c.parquet"]), ok=fragment is None)
        if fragment is None:
            (tmp_path / "c.parquet").unlink()
            continue
        assert_one_line_error(r, fragment)
        assert not (tmp_path / "c.parquet").exists()
        assert "compare fc" not in r.stderr                                 # refused before the pass


def test_a_small_memory_budget_splits_the_pass_and_changes_no_number(demo_run):
    """Within a budget too small for the whole product, B's units are taken in groups (each its own pass over the
    images): every best match is the one of the whole pass, every correlation too (to 1e-5: blocks of other sizes); the matching and CKA that do not fit
    are left out, each said in one line."""
    from dissect.compare import CompareSettings, compare, open_side

    out, _ = demo_run
    sides = lambda: (open_side("A", out / "activations.h5"), open_side("B", out / "activations-without-circle.h5"))  # noqa: E731
    whole = compare(*sides(), CompareSettings(device="cpu"), layers=["layer4"])
    small = compare(*sides(), CompareSettings(device="cpu", max_memory=200_000), layers=["layer4"])
    n = len(whole.rows["unit_a"])                                       # 96: A's units, each matched in B
    assert whole.rows["best_b"] == small.rows["best_b"][:n]
    np.testing.assert_allclose(np.array(small.rows["best_r"][:n], dtype=float), np.array(whole.rows["best_r"], dtype=float),
                               atol=1e-5)                                 # float32 products of other block sizes
    # without the matching, every unit of B is unmatched: a row of its own with its best match in A
    assert all(x is None for x in small.rows["unit_b"][:n]) and all(x is not None for x in whole.rows["unit_b"])
    best_a = dict(zip(whole.rows["unit_b"], whole.rows["best_a"]))
    assert small.rows["unit_b"][n:] == list(range(96)) and small.rows["best_a"][n:] == [best_a[j] for j in range(96)]
    assert small.summary[0]["cka"] is None and whole.summary[0]["cka"] is not None


def test_labels_cosines_and_simulation_scores_come_with_the_units(demo_run, tmp_path):
    """--clip gives matched units' labels their CLIP cosine (1 where they are the same text); simulate files give
    each side its units' simulation correlation."""
    out, _ = demo_run
    sim = tmp_path / "sim.parquet"
    invoke("evaluate", "simulate", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "--images",
           out / "images.h5", "-t", out / "text-mixed.h5", "--layer", "layer4", "--metrics", "correlation", "-o", sim)
    invoke("compare", out, out / "activations-without-circle.h5", "--labels-b", out / "labels-without-circle.parquet",
           "--layers", "layer4", "--simulate-a", sim, "--clip", demo_specs().clip, "-o", tmp_path / "c.parquet")
    rows = [r for r in A.read_table(tmp_path / "c.parquet", A.COMPARE_FORMAT).to_pylist() if r["unit_a"] is not None]
    want = {r["unit"]: r["correlation"] for r in A.read_table(sim, A.SIMULATE_FORMAT).to_pylist()}
    assert all(r["score_a"] == pytest.approx(want[r["unit_a"]]) for r in rows) and all(r["score_b"] is None for r in rows)
    same = [r for r in rows if r["labels_agree"]]
    other = [r for r in rows if r["labels_agree"] is False]
    assert same and other
    assert all(abs(r["label_cos"] - 1) < 1e-5 for r in same) and all(r["label_cos"] < 0.999 for r in other)
