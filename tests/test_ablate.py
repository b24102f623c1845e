"""dissect evaluate ablate (issue #28): the kernels against float64 references written from Linear Explanations'
definitions, the exact ends of the score (own activation 1, mean 0) for every kind of unit, and the command."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect.evaluate import ablation as Ab


def _map_norm_reference(pred_test, act_val, pred_val):
    """simulate_ablation_norm: z-score of the prediction over the test images, times the unit's std and the
    prediction's correlation with it on the validation images, plus the unit's mean there (unbiased std)."""
    out = np.zeros_like(pred_test, dtype=np.float64)
    for u in range(pred_test.shape[1]):
        a, v, p = act_val[:, u].tolist(), pred_val[:, u].tolist(), pred_test[:, u].tolist()
        ma, mv, mp = sum(a) / len(a), sum(v) / len(v), sum(p) / len(p)
        sa = math.sqrt(sum((x - ma) ** 2 for x in a) / (len(a) - 1))
        sp = math.sqrt(sum((x - mp) ** 2 for x in p) / (len(p) - 1))
        r = sum((x - ma) * (y - mv) for x, y in zip(a, v)) / math.sqrt(
            sum((x - ma) ** 2 for x in a) * sum((y - mv) ** 2 for y in v))
        for i, x in enumerate(p):
            out[i, u] = (x - mp) / sp * sa * r + ma
    return out


def test_the_mapping_to_a_units_scale_is_linear_explanations_norm_mode():
    rng = np.random.default_rng(0)
    act_val, pred_val, pred_test = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    pred_val[:, 1] = 2 * act_val[:, 1] + 1                               # r = 1: the unit's own scale back
    got = Ab.map_norm(torch.from_numpy(pred_test), torch.from_numpy(act_val), torch.from_numpy(pred_val)).numpy()
    np.testing.assert_allclose(got, _map_norm_reference(pred_test, act_val, pred_val), atol=1e-12)


def test_losses_are_the_cross_entropy_of_calibrated_logits_or_the_kl_from_the_unedited_output():
    rng = np.random.default_rng(1)
    logits, ref = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    y = rng.integers(0, 7, size=5)
    t = 1.1
    ce = [math.log(sum(math.exp(v / t) for v in row)) - row[k] / t for row, k in zip(logits, y)]
    got = Ab.losses(torch.from_numpy(logits), torch.from_numpy(ref), torch.from_numpy(y), t).numpy()
    np.testing.assert_allclose(got, ce, atol=1e-12)
    kl = []
    for row, r0 in zip(logits, ref):
        p = np.exp(r0 / t) / np.exp(r0 / t).sum()
        q = np.exp(row / t) / np.exp(row / t).sum()
        kl.append(float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))))
    np.testing.assert_allclose(Ab.losses(torch.from_numpy(logits), torch.from_numpy(ref), None, t).numpy(), kl, atol=1e-12)
    assert Ab.score(0.0, 2.0) == 1.0 and Ab.score(2.0, 2.0) == 0.0 and Ab.score(3.0, 2.0) == -0.5
    assert math.isnan(Ab.score(1.0, 0.0))


@pytest.mark.parametrize("layout,shape", [("nchw", (3, 4, 2, 2)), ("nhwc", (3, 2, 2, 4)), ("nlc", (3, 5, 4)),
                                          ("nc", (3, 4)), ("ncl", (3, 4, 5))])
def test_an_edit_moves_one_rows_channel_or_decoder_direction_at_every_position(layout, shape):
    rng = np.random.default_rng(2)
    out = rng.normal(size=shape)
    rows, chans, deltas = np.array([0, 2, 2]), np.array([1, 3, 0]), np.array([0.5, -2.0, 3.0])
    axis = {"nchw": 1, "ncl": 1, "nc": 1, "nhwc": -1, "nlc": -1}[layout]
    want = out.copy()
    for r, c, d in zip(rows, chans, deltas):
        idx = [r] + [slice(None)] * (len(shape) - 1)
        idx[axis if axis > 0 else len(shape) - 1] = c
        want[tuple(idx)] += d
    got = Ab.edit(torch.from_numpy(out), layout, torch.from_numpy(rows), torch.from_numpy(chans), torch.from_numpy(deltas))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    dec = rng.normal(size=(6, 4))                                        # 6 latents on 4 channels
    want = out.copy()
    for r, k, d in zip(rows, chans, deltas):
        moved = np.moveaxis(want[r], (axis - 1) if axis > 0 else -1, -1)  # this row, channels last (a view)
        moved += d * dec[k]
    got = Ab.edit(torch.from_numpy(out), layout, torch.from_numpy(rows), torch.from_numpy(chans), torch.from_numpy(deltas),
                  torch.from_numpy(dec))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


# ---------------------------------------------------------------------------
# Own activation 1, mean 0: every kind of unit, through the network
# ---------------------------------------------------------------------------

SITES = [("timm:test_resnet", "layer4", "nchw", None),                  # a conv channel
         ("timm:test_resnet", "fc", "nc", None),                         # an fc unit (a logit)
         ("timm:test_vit", "blocks.0", "nlc", None),                     # a token channel
         ("timm:test_resnet", "layer4", "nchw", 40),                     # an SAE latent of layer4 (40 latents)
         ("timm:test_resnet", "layer4.0.bn2", "nchw", None)]             # inside a residual block: inputs repeated


@pytest.mark.parametrize("spec,layer,layout,latents", SITES)
@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_moving_a_unit_to_its_own_activation_scores_one_and_to_its_mean_zero(spec, layer, layout, latents, loss):
    from dissect.evaluate.ablate import AblateSettings, _Tail, _Unit
    from dissect.models import load_target

    torch.manual_seed(0)
    t = load_target(spec, "none", None, None, "cpu", layers=[layer])
    t.module.eval()
    n, s = 10, t.preprocess.input_size
    x = torch.randn(n, 3, s, s)
    decoder = torch.randn(latents, t.module.fc.in_features) if latents else None      # layer4's channels
    units = [0, 3, 7]
    base = torch.randn(n, len(units)).double()
    classes = [i % 5 for i in range(n)] if loss == "ce" else None         # each scoring row's class
    for pred, want in ((torch.zeros(n, len(units)).double(), 1.0), (base.clone(), 0.0)):
        tail = _Tail(t, _Unit(layer, layout, decoder), units, (base, pred), classes, loss, AblateSettings(samples=16),
                     "cpu")
        tail.row_of = {i: i for i in range(n)}
        tail(torch.arange(n), x)
        got = [Ab.score(float(tail.damage[1, k]), float(tail.damage[0, k])) for k in range(len(units))]
        assert got == [want] * len(units), (got, want)
        assert bool((tail.damage[0] > 0).all())                           # the mean does damage
    assert tail.expand == (layer != "layer4.0.bn2")   # a residual branch (timm zero-inits its last BN): input repeated


@pytest.mark.parametrize("layer,samples", [("layer4", 16), ("layer4", 4097), ("layer4.0.bn2", 4097), ("fc", 7)])
def test_the_widened_batch_equals_one_forward_per_unit_and_image(layer, samples):
    """The damage _Tail sums equals the one of a plain loop (a hook that shifts one channel of one image, one forward
    each, KL from the same image's unedited output), whatever the copies per forward: every unit in one forward,
    a few, and a residual branch at one image per forward, where widening the batch broadcasts without an error."""
    from dissect.evaluate.ablate import AblateSettings, _Tail, _Unit
    from dissect.models import load_target

    torch.manual_seed(1)
    t = load_target("timm:test_resnet", "none", None, None, "cpu", layers=[layer])
    t.module.eval()
    n, units = 3, [0, 5, 9]
    x = torch.randn(n, 3, 64, 64)
    base, pred = torch.randn(n, 3).double(), torch.randn(n, 3).double()
    tail = _Tail(t, _Unit(layer, "nc" if layer == "fc" else "nchw"), units, (base, pred), None, "kl",
                 AblateSettings(samples=samples), "cpu")
    tail.row_of = {i: i for i in range(n)}
    tail(torch.arange(n), x)
    want = np.zeros((2, len(units)))
    module = t.module.get_submodule(layer)
    for i in range(n):
        with torch.inference_mode():
            ref = t.module(x[i : i + 1]).double()
        for k, u in enumerate(units):
            for kind, d in enumerate((base, pred)):
                def shift(m, inp, out, u=u, v=float(d[i, k])):
                    out = out.clone()
                    out[:, u] += v
                    return out

                h = module.register_forward_hook(shift)
                with torch.inference_mode():
                    y = t.module(x[i : i + 1]).double()
                h.remove()
                p, q = torch.log_softmax(ref / 1.1, -1), torch.log_softmax(y / 1.1, -1)
                want[kind, k] += float((p.exp() * (p - q)).sum())
    np.testing.assert_allclose(tail.damage.numpy(), want, rtol=1e-3, atol=1e-7)
    assert tail.expand == (layer != "layer4.0.bn2")


# ---------------------------------------------------------------------------
# The command on the demo world
# ---------------------------------------------------------------------------

from dissect import artifacts as A  # noqa: E402
from dissect.demo import demo_specs  # noqa: E402

from test_cli import assert_one_line_error, invoke  # noqa: E402


def test_a_published_linear_explanations_file_is_scored_beside_its_own_ablation_columns(demo_run, tmp_path):
    """A result file in Linear Explanations' published layout (unit, description, sim correlation, sim
    ablation(norm), sim ablation(optim); the layer in the file name) is read as labels and scored, its published
    ablation (their optim column, the paper's) carried beside ours for every unit."""
    import pyarrow.parquet as pq

    out, _ = demo_run
    labels = {r["unit"]: r["label"] for r in pq.read_table(out / "labels-mixed-softwpmi.parquet").to_pylist()
              if r["layer"] == "layer4"}
    csv = tmp_path / "resnet_demo_layer4.csv"
    csv.write_text("unit,description,sim correlation,sim ablation(norm),sim ablation(optim)\n"
                   + "".join(f"{u},{labels[u]},0.1,{u / 200},{u / 100}\n" for u in sorted(labels)))
    r = invoke("evaluate", "ablate", csv, "-a", out / "activations.h5", "--probe", out / "probe",
               *demo_specs().command_line().split(), "--images", out / "images.h5", "-t", out / "text-mixed.h5",
               "-o", tmp_path / "ablate.parquet")
    assert "records no split" in r.stderr and "mean ablation" in r.stdout
    rows = A.read_table(tmp_path / "ablate.parquet", A.ABLATE_FORMAT).to_pylist()
    assert len(rows) == 96 and all(x["layer"] == "layer4" and x["loss"] == "kl" for x in rows)
    assert [x["published_ablation"] for x in sorted(rows, key=lambda x: x["unit"])] == [u / 100 for u in range(96)]
    assert sum(np.isfinite(x["ablation"]) for x in rows) >= 90
    summary = __import__("json").loads((tmp_path / "ablate.json").read_text())
    assert summary[0]["published_column"] == "sim ablation(optim)"


def test_other_methods_label_files_are_ablated_unit_by_unit(demo_run, tmp_path):
    """Describe-and-Dissect's and INVERT's layouts (the layer in the file name) ablate the units they name, with the
    labels they give."""
    import pyarrow.parquet as pq

    out, _ = demo_run
    labels = {r["unit"]: r["label"] for r in pq.read_table(out / "labels-mixed-softwpmi.parquet").to_pylist()
              if r["layer"] == "layer4"}
    units = [3, 17, 40, 41, 90]
    dnd = tmp_path / "dnd_layer4.csv"
    dnd.write_text("Neuron ID,Label 1,Label 2,Label 3\n" + "".join(f"{u},{labels[u]}, , \n" for u in units))
    inv = tmp_path / "resnet-layer4.csv"
    inv.write_text("neuron,concept,concept_id,metric\n" + "".join(f"{u},{labels[u]},n0{u},0.9\n" for u in units[:3]))
    invoke("evaluate", "ablate", dnd, inv, "-a", out / "activations.h5", "--probe", out / "probe",
           *demo_specs().command_line().split(), "--images", out / "images.h5", "-t", out / "text-mixed.h5",
           "-o", tmp_path / "ablate.parquet")
    rows = A.read_table(tmp_path / "ablate.parquet", A.ABLATE_FORMAT).to_pylist()
    got = sorted((x["method"], x["unit"], x["label"]) for x in rows)
    assert got == sorted([("Describe-and-Dissect", u, labels[u]) for u in units]
                         + [("INVERT", u, labels[u]) for u in units[:3]])
    assert all(np.isfinite(x["ablation"]) for x in rows)
    # both files score every image: one shared pass, the same damage as each file's own pass
    invoke("evaluate", "ablate", inv, "-a", out / "activations.h5", "--probe", out / "probe",
           *demo_specs().command_line().split(), "--images", out / "images.h5", "-t", out / "text-mixed.h5",
           "-o", tmp_path / "alone.parquet")
    alone = {x["unit"]: x for x in A.read_table(tmp_path / "alone.parquet", A.ABLATE_FORMAT).to_pylist()}
    for x in rows:
        if x["method"] == "INVERT":
            for c in ("damage_base", "damage_pred", "ablation"):
                assert x[c] == pytest.approx(alone[x["unit"]][c], rel=1e-6, abs=1e-9), c


def test_ablate_refuses_what_it_cannot_score_in_one_line(demo_run, tmp_path):
    out, _ = demo_run
    common = ["-a", out / "activations.h5", "--probe", out / "probe", *demo_specs().command_line().split(),
              "--images", out / "images.h5", "-t", out / "text-mixed.h5", "--layer", "fc"]
    r = invoke("evaluate", "ablate", out / "labels-mixed-softwpmi.parquet", *common, "--loss", "ce",
               "-o", tmp_path / "a.parquet", ok=False)
    assert_one_line_error(r, "needs an ImageFolder probe")
    r = invoke("evaluate", "ablate", out / "labels-mixed-softwpmi.parquet", *common[:4], "--model", "timm:test_resnet",
               "--weights", "none", "--model-arg", "num_classes=10", *common[-6:], "-o", tmp_path / "a.parquet", ok=False)
    assert_one_line_error(r, "is not the model that recorded")
    r = invoke("evaluate", "ablate", out / "labels-mixed-softwpmi.parquet", *common, "--validation", "1.5",
               "-o", tmp_path / "a.parquet", ok=False)
    assert_one_line_error(r, "--validation must be in (0, 1)")
    assert not (tmp_path / "a.parquet").exists()


def test_a_direction_or_sae_latent_moves_by_exactly_the_shift_along_its_decoder_row(tmp_path):
    """directions.decoder: an SAE's rows W_dec[k] / (W_enc[:, k]·W_dec[k]) move latent k's pre-activation by exactly
    Δ; a matrix's rows / their squared norms move x·d_k by exactly Δ."""
    from safetensors.torch import save_file

    from dissect.directions import decoder
    from dissect.sae_files import SAELENS_CONFIG as SAE_CONFIG, SAELENS_WEIGHTS as SAE_WEIGHTS

    torch.manual_seed(2)
    W_enc, W_dec = torch.randn(8, 5), torch.randn(5, 8)
    (tmp_path / "sae").mkdir()
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": torch.zeros(5), "b_dec": torch.zeros(8)},
              str(tmp_path / "sae" / SAE_WEIGHTS))
    (tmp_path / "sae" / SAE_CONFIG).write_text('{"d_in": 8, "d_sae": 5}')
    dec = decoder("sae", str(tmp_path / "sae")).double()
    x = torch.randn(8).double()
    for k in range(5):
        moved = (x + 0.7 * dec[k]) @ W_enc.double()[:, k] - x @ W_enc.double()[:, k]
        assert float(moved) == pytest.approx(0.7, abs=1e-6)         # float32 rows
    d = torch.randn(3, 8)
    save_file({"directions": d}, str(tmp_path / "d.safetensors"))
    dm = decoder("matrix", str(tmp_path / "d.safetensors")).double()
    for k in range(3):
        assert float((x + 0.7 * dm[k]) @ d.double()[k] - x @ d.double()[k]) == pytest.approx(0.7, abs=1e-6)         # float32 rows
    with pytest.raises(Exception, match="have no decoder"):
        decoder("module", "f.py:build")
