"""Directions, SAE latents and learned dictionaries as units (``--directions LAYER=SPEC``, ``dissect decompose``).

Worlds with known answers: identity directions are the neurons; the fc weight rows are
directions of the penultimate layer that rank images as the fc units do; every SPEC
form and SAE architecture is checked against a float64 encoder written from its
definition (SAELens' ``encode``); per-token encoding against a hook of our own; and a
tiny SAE trained here on the demo world's spatial activations finds world attributes.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from dissect import artifacts as A
from dissect import directions as D
from dissect.cli.main import app
from dissect.demo import _attributes, demo_specs

runner = CliRunner()


def invoke(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *fragments):
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, result.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]
    return lines[-1]


def model_args():
    s = demo_specs()
    return ["--model", s.model, "--weights", s.weights, "--model-arg", f"num_classes={s.model_args['num_classes']}",
            "--input-size", s.input_size, "--crop-pct", s.crop_pct, "--mean", ",".join(map(str, s.mean)),
            "--std", ",".join(map(str, s.std)), "--interpolation", s.interpolation, "--device", "cpu"]


def fc_weights():
    from safetensors.torch import load_file

    sd = load_file(demo_specs().weights)
    return sd["fc.weight"].float(), sd["fc.bias"].float()


def write_sae(folder: Path, W_enc, b_enc, b_dec, cfg: dict, threshold=None, log_threshold=False, W_dec=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = W_enc.shape
    tensors = {"W_enc": W_enc.contiguous(), "b_enc": b_enc.contiguous(), "b_dec": b_dec.contiguous(),
               "W_dec": (W_enc.T if W_dec is None else W_dec).contiguous()}
    if threshold is not None:
        tensors["log_threshold" if log_threshold else "threshold"] = (threshold.log() if log_threshold else threshold).contiguous()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": d_sae, **cfg}))
    return folder


def sae_reference(x, W_enc, b_enc, b_dec, arch="standard", act="relu", apply_b_dec=True, k=None, threshold=None,
                  norm="none", dec_norm=None):
    """SAELens' encode in float64, written from its code (sae_lens/saes/sae.py, topk_sae.py, 6.18)."""
    x, W, be, bd = (torch.as_tensor(t, dtype=torch.float64) for t in (x, W_enc, b_enc, b_dec))
    if norm == "constant_norm_rescale":
        x = x * np.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
    elif norm == "layer_norm":  # run_time_activation_ln_in: the sample (n - 1) standard deviation, plus eps
        n = x.shape[-1]
        xc = x - x.sum(-1, keepdim=True) / n
        std = (xc.pow(2).sum(-1, keepdim=True) / (n - 1)).sqrt()
        x = xc / (std + 1e-5)
    pre = (x - bd * apply_b_dec) @ W + be
    if dec_norm is not None:  # TopK with rescale_acts_by_decoder_norm: pre-activations times ||W_dec[j]||
        pre = pre * torch.as_tensor(dec_norm, dtype=torch.float64)
    if arch == "topk":
        out = torch.zeros_like(pre)
        for idx in np.ndindex(*pre.shape[:-1]):
            row = pre[idx]
            top = torch.argsort(row, descending=True)[:k]
            out[idx][top] = torch.relu(row[top])
        return out
    out = torch.relu(torch.tanh(pre)) if act == "tanh-relu" else torch.relu(pre)
    if arch == "jumprelu":
        out = out * (pre > torch.as_tensor(threshold, dtype=torch.float64))
    return out


@pytest.fixture(scope="module")
def demo(demo_run):
    out, _ = demo_run
    return out


@pytest.fixture(scope="module")
def fc_world(demo, tmp_path_factory):
    """The demo classifier with its fc rows as directions of global_pool (matrix and SAE forms) and of layer4
    (every position, then the mean), identity directions of layer4, all recorded and labelled."""
    d = tmp_path_factory.mktemp("fcworld")
    W, b = fc_weights()
    np.save(d / "fc.npy", W.numpy())
    np.save(d / "eye.npy", np.eye(W.shape[1], dtype=np.float32))
    # relu(x W + b + 20) ranks images as x W + b does: every fc logit of the demo is above -20.
    write_sae(d / "sae", W.T, b + 20, torch.zeros(W.shape[1]), {"architecture": "standard", "apply_b_dec_to_input": True})
    acts = d / "acts.h5"
    invoke("record", demo / "probe", *model_args(), "--layers", "layer4,fc", "--directions", f"layer4={d / 'eye.npy'}",
           "--directions", f"global_pool@fcrows={d / 'fc.npy'}", "--directions", f"global_pool={d / 'sae'}",
           "--directions", f"layer4@fcmean={d / 'fc.npy'}", "-o", acts)
    labels = d / "labels.parquet"
    invoke("label", "-i", demo / "images.h5", "-a", acts, "-t", demo / "text-mixed.h5", "-o", labels, "--device", "cpu")
    return d, acts, labels


def _labels_of(labels, layer):
    rows = [r for r in A.read_table(labels, A.LABELS_FORMAT).to_pylist() if r["layer"] == layer]
    return [r["label"] for r in sorted(rows, key=lambda r: r["unit"])]


def test_identity_directions_are_the_neurons(fc_world):
    _, acts, labels = fc_world
    a = A.read_activations(acts)
    np.testing.assert_array_equal(a.layers["layer4@dirs"], a.layers["layer4"])
    assert _labels_of(labels, "layer4@dirs") == _labels_of(labels, "layer4")


def test_fc_rows_as_directions_of_the_penultimate_layer_are_the_fc_units(fc_world):
    _, acts, labels = fc_world
    a = A.read_activations(acts)
    W, b = fc_weights()
    fc = a.layers["fc"].astype(np.float64)
    np.testing.assert_allclose(a.layers["global_pool@fcrows"] + b.numpy(), fc, atol=1e-4)
    np.testing.assert_allclose(a.layers["global_pool@sae"] - 20 + 0, fc - b.numpy() * 0, atol=1e-3)
    # mean over positions of x.w is (mean of x).w: the per-position encoding agrees with the pooled one
    np.testing.assert_allclose(a.layers["layer4@fcmean"] + b.numpy(), fc, atol=1e-4)
    truth = _labels_of(labels, "fc")
    assert len(truth) == 10
    for entry in ("global_pool@fcrows", "global_pool@sae", "layer4@fcmean"):
        assert _labels_of(labels, entry) == truth, entry
    # each unit's rank order of the images is the fc unit's
    for entry in ("global_pool@fcrows", "global_pool@sae"):
        order = np.argsort(-a.layers[entry], axis=0, kind="stable")[:50]
        assert (order == np.argsort(-fc, axis=0, kind="stable")[:50]).mean() > 0.95


def test_entries_record_how_they_were_made_and_info_shows_it(fc_world):
    d, acts, _ = fc_world
    with h5py.File(acts, "r") as f:
        la = dict(f["layers"]["global_pool@sae"].attrs)
    assert la["directions_kind"] == "sae" and la["directions_k"] == 10 and la["directions_layer"] == "global_pool"
    assert la["directions_summary"] == "max" and len(la["directions_fingerprint"]) == 32
    r = invoke("info", acts)
    assert "sae" in r.output and "global_pool@sae" in r.output


def test_recording_again_reuses_and_another_set_under_the_same_name_is_refused(fc_world, demo, tmp_path):
    d, acts, _ = fc_world
    copy = tmp_path / "acts.h5"
    copy.write_bytes(acts.read_bytes())
    r = invoke("record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"global_pool@fcrows={d / 'fc.npy'}",
               "-o", copy)
    assert "nothing to record" in r.stderr
    other = tmp_path / "other.npy"
    np.save(other, -np.load(d / "fc.npy"))
    r = invoke("record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"global_pool@fcrows={other}",
               "-o", copy, ok=False)
    one_line_error(r, "global_pool@fcrows", "other directions")
    r = invoke("record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"global_pool@neg={other}",
               "-o", copy)
    assert "recording global_pool@neg" in r.stderr
    a = A.read_activations(copy)
    np.testing.assert_allclose(a.layers["global_pool@neg"], -a.layers["global_pool@fcrows"], atol=1e-5)


def test_layers_lists_each_set_with_its_unit_count(fc_world):
    d, _, _ = fc_world
    s = demo_specs()
    r = invoke("layers", s.model, "--model-arg", "num_classes=10", "--input-size", s.input_size, "--json",
               "--directions", f"global_pool={d / 'sae'}", "--directions", f"layer4@x={d / 'eye.npy'}")
    rows = [json.loads(line) for line in r.output.splitlines()]
    by = {row["layer"]: row for row in rows}
    assert by["global_pool@sae"]["neurons"] == 10 and by["layer4@x"]["neurons"] == 96
    names = [row["layer"] for row in rows]
    assert names.index("global_pool@sae") == names.index("global_pool") + 1


# ---------------------------------------------------------------------------
# Every SPEC form and SAE architecture against a float64 reference
# ---------------------------------------------------------------------------

C, K = 12, 7


def _x(seed=0, shape=(5, 4, C)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _w(seed=1):
    return torch.randn(K, C, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("form", ["npy", "pt", "pt-dict", "safetensors", "safetensors#key"])
def test_every_matrix_form_projects_onto_its_rows(form, tmp_path):
    W = _w()
    if form == "npy":
        spec = tmp_path / "w.npy"
        np.save(spec, W.numpy())
    elif form == "pt":
        spec = tmp_path / "w.pt"
        torch.save(W, spec)
    elif form == "pt-dict":
        spec = tmp_path / "w.pt"
        torch.save({"probe": W, "bias": torch.zeros(K)}, spec)
    elif form == "safetensors":
        spec = tmp_path / "w.safetensors"
        save_file({"w": W}, str(spec))
    else:
        path = tmp_path / "w.safetensors"
        save_file({"a": torch.zeros(3, C), "cav": W}, str(path))
        spec = f"{path}#cav"
    ds = D.load(str(spec), channels=C)
    assert (ds.kind, ds.k, ds.c) == ("matrix", K, C)
    x = _x()
    ref = x.double() @ W.double().T
    torch.testing.assert_close(ds.module(x).double(), ref, atol=1e-5, rtol=1e-5)


SAE_CASES = {
    "standard": dict(cfg={"architecture": "standard", "apply_b_dec_to_input": True}, ref={}),
    "standard-no-bdec": dict(cfg={"architecture": "standard", "apply_b_dec_to_input": False}, ref={"apply_b_dec": False}),
    "tanh-relu": dict(cfg={"architecture": "standard", "activation_fn_str": "tanh-relu"}, ref={"act": "tanh-relu"}),
    "topk": dict(cfg={"architecture": "topk", "k": 3}, ref={"arch": "topk", "k": 3}),
    "topk-old-style": dict(cfg={"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}}, ref={"arch": "topk", "k": 2}),
    "jumprelu": dict(cfg={"architecture": "jumprelu"}, ref={"arch": "jumprelu"}, threshold=True),
    "jumprelu-log-threshold": dict(cfg={"architecture": "jumprelu"}, ref={"arch": "jumprelu"}, threshold=True, log=True),
    "constant-norm-rescale": dict(cfg={"normalize_activations": "constant_norm_rescale"}, ref={"norm": "constant_norm_rescale"}),
    "layer-norm": dict(cfg={"normalize_activations": "layer_norm"}, ref={"norm": "layer_norm"}),
    "topk-rescaled-by-decoder-norm": dict(cfg={"architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": True},
                                          ref={"arch": "topk", "k": 3}, W_dec=True),
    "topk-not-rescaled": dict(cfg={"architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": False},
                              ref={"arch": "topk", "k": 3}, W_dec=True),
}


@pytest.mark.parametrize("case", sorted(SAE_CASES))
def test_every_sae_architecture_encodes_as_saelens_defines_it(case, tmp_path):
    c = SAE_CASES[case]
    g = torch.Generator().manual_seed(3)
    W_enc, b_enc, b_dec = torch.randn(C, K, generator=g), torch.randn(K, generator=g) * 0.3, torch.randn(C, generator=g) * 0.5
    threshold = torch.rand(K, generator=g) * 0.5 + 0.05 if c.get("threshold") else None
    # decoder rows of norms far from 1 (0.2 to 3), as SAEs trained with rescale_acts_by_decoder_norm have
    W_dec = torch.randn(K, C, generator=g) * torch.linspace(0.2, 3, K, dtype=torch.float32)[:, None] / C ** 0.5 \
        if c.get("W_dec") else None
    folder = write_sae(tmp_path / case, W_enc, b_enc, b_dec, c["cfg"], threshold, c.get("log", False), W_dec)
    ds = D.load(str(folder), channels=C)
    assert (ds.kind, ds.k, ds.c, ds.default_summary) == ("sae", K, C, "max")
    x = _x()
    rescaled = c["cfg"].get("rescale_acts_by_decoder_norm")
    ref = sae_reference(x, W_enc, b_enc, b_dec, threshold=threshold, dec_norm=W_dec.norm(dim=-1) if rescaled else None,
                        **c["ref"])
    torch.testing.assert_close(ds.module(x).double(), ref, atol=1e-4, rtol=1e-4)
    assert (ref > 0).any() and (ref == 0).any()  # the activation did cut something and pass something


def test_a_module_spec_is_called_and_fingerprinted_with_its_weights(tmp_path):
    f = tmp_path / "dirs.py"
    f.write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(12, 5), torch.nn.Softplus())\n")
    ds = D.load(f"{f}:make", channels=C)
    assert (ds.kind, ds.k, ds.c) == ("module", 5, C)
    x = _x()
    torch.manual_seed(0)
    ref = torch.nn.functional.softplus(torch.nn.Linear(12, 5)(x))
    torch.testing.assert_close(ds.module(x), ref)
    f.write_text(f.read_text().replace("manual_seed(0)", "manual_seed(1)"))
    assert D.load(f"{f}:make", channels=C).fingerprint != ds.fingerprint


def test_the_readme_recipe_for_other_sae_checkpoints_works_and_tracks_the_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(8)
    sd = {"W_enc": torch.randn(C, K, generator=g), "b_enc": torch.randn(K, generator=g), "b_dec": torch.randn(C, generator=g)}
    torch.save(sd, tmp_path / "checkpoint.pt")
    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "directions.md").read_text()
    code = readme.split("# sae_module.py")[1].split("```")[0].split("\n", 1)[1]
    f = tmp_path / "sae_module.py"
    import textwrap

    f.write_text(textwrap.dedent(code).replace('"checkpoint.pt"', repr(str(tmp_path / "checkpoint.pt"))))
    ds = D.load(f"{f}:encoder", channels=C)
    x = _x()
    torch.testing.assert_close(ds.module(x).double(), sae_reference(x, sd["W_enc"], sd["b_enc"], sd["b_dec"]),
                               atol=1e-5, rtol=1e-5)
    torch.save({k: v * 2 for k, v in sd.items()}, tmp_path / "checkpoint.pt")
    assert D.load(f"{f}:encoder", channels=C).fingerprint != ds.fingerprint


def test_summaries_are_taken_after_encoding_every_position():
    W_enc = torch.randn(C, K, generator=torch.Generator().manual_seed(5))
    from dissect.sae_files import SAEWeights

    enc = D.SAEEncoder(SAEWeights("test", W_enc, torch.zeros(K), torch.zeros(C)))
    ds = D.DirectionSet("sae", "x", enc, K, C, "f")
    x = torch.randn(3, C, 2, 2, generator=torch.Generator().manual_seed(6))  # nchw
    tokens = x.flatten(2).transpose(1, 2).double()
    latents = torch.relu(tokens @ W_enc.double())
    torch.testing.assert_close(D.encode_summary(ds, x, "nchw", "max").double(), latents.amax(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D.encode_summary(ds, x, "nchw", "mean").double(), latents.mean(1), atol=1e-5, rtol=1e-5)
    pooled_first = torch.relu(tokens.mean(1) @ W_enc.double())
    assert not torch.allclose(pooled_first, latents.mean(1))  # encode-then-mean is not mean-then-encode
    xt = torch.randn(3, 5, C, generator=torch.Generator().manual_seed(7))  # nlc
    torch.testing.assert_close(D.encode_summary(ds, xt, "nlc", "cls").double(), torch.relu(xt[:, 0].double() @ W_enc.double()),
                               atol=1e-5, rtol=1e-5)
    old = D.ENCODE_BLOCK
    try:  # rows encoded in blocks give the same result
        D.ENCODE_BLOCK = 1
        torch.testing.assert_close(D.encode_summary(ds, x, "nchw", "max").double(), latents.amax(1), atol=1e-5, rtol=1e-5)
    finally:
        D.ENCODE_BLOCK = old


def test_per_token_encoding_of_a_vit_matches_a_reference_hook(probe_dir, tmp_path):
    """timm test_vit's blocks.0 tokens, encoded by a topk SAE: recorded max, mean and cls summaries against the
    tokens a plain forward hook of our own sees, encoded in float64."""
    import timm

    from conftest import vit_block0_tokens

    x = vit_block0_tokens(probe_dir)
    width = x.shape[-1]
    g = torch.Generator().manual_seed(11)
    W_enc, b_enc, b_dec = torch.randn(width, 40, generator=g), torch.randn(40, generator=g) * 0.1, torch.randn(width, generator=g) * 0.1
    sae = write_sae(tmp_path / "sae", W_enc, b_enc, b_dec, {"architecture": "topk", "k": 8})
    ref = sae_reference(x, W_enc, b_enc, b_dec, arch="topk", k=8)
    for summary, want in (("max", ref.amax(1)), ("mean", ref.mean(1)), ("cls", ref[:, 0])):
        out = tmp_path / f"{summary}.h5"
        invoke("record", probe_dir, "--model", "timm:test_vit", "--weights", "none", "--layers", "blocks.0",
               "--directions", f"blocks.0={sae}", "--directions-summary", summary, "-o", out, "--device", "cpu")
        got = A.read_activations(out).layers["blocks.0@sae"]
        np.testing.assert_allclose(got, want.numpy(), atol=2e-4, rtol=1e-4)
    del timm


# ---------------------------------------------------------------------------
# Large sets: spilled while recording, stored as float16, labelled in unit blocks
# ---------------------------------------------------------------------------

def test_spilled_and_float16_entries_hold_what_memory_would(fc_world, demo, tmp_path, monkeypatch):
    import dissect.record as R

    d, acts, _ = fc_world
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).standard_normal((300, 96)).astype(np.float32))
    mem, spilled, half = tmp_path / "mem.h5", tmp_path / "spill.h5", tmp_path / "half.h5"
    base = ["record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"layer4@w={wide}",
            "--directions-summary", "max"]
    invoke(*base, "-o", mem)
    monkeypatch.setattr(R, "SPILL_BYTES", 0)
    monkeypatch.setattr("dissect.artifacts.hdf5.WIDE_LAYER_BYTES", 0)
    invoke(*base, "--checkpoint-every", "300", "-o", spilled)
    invoke(*base, "--directions-dtype", "float16", "-o", half)
    a, b, c = (A.read_activations(p).layers["layer4@w"] for p in (mem, spilled, half))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-2)
    with h5py.File(spilled) as f, h5py.File(half) as g:
        assert f["layers"]["layer4@w"].chunks is not None  # stored in unit blocks of rows
        assert g["layers"]["layer4@w"].dtype == np.float16
        assert g["layers"]["layer4@w"].id.get_storage_size() * 2 <= f["layers"]["layer4@w"].id.get_storage_size() + 4096
    assert not list(tmp_path.glob(".dissect-spill-*")), "spill files are removed"


def test_float16_overflow_is_refused(demo, tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.full((2, 96), 1e5, dtype=np.float32))
    r = invoke("record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"layer4={big}",
               "--directions-dtype", "float16", "-o", tmp_path / "a.h5", ok=False)
    one_line_error(r, "float16", "--directions-dtype float32")
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("sim", ["softwpmi", "wpmi", "cos", "rank-reorder"])
def test_labelling_in_unit_blocks_equals_labelling_whole(fc_world, demo, sim, monkeypatch):
    import dissect.label as L

    _, acts, _ = fc_world
    kw = dict(text=demo / "text-mixed.h5", sim=sim, device="cpu", layers=["layer4@dirs", "global_pool@sae"])
    whole = L.label(demo / "images.h5", acts, None, **kw).to_pylist()
    monkeypatch.setattr(L, "units_per_read", lambda budget, rows, units: 7)
    # SoftWPMI/WPMI: also scored in blocks of 5 units, in two passes (issue #24: a 250,000-latent SAE peaked at
    # 4.9 GB whatever --max-memory said, its [units, 256 concepts] blocks being over the budget)
    monkeypatch.setattr(L, "units_per_concept_tile", lambda budget, rows, units, *a: min(units, 5))
    blocked = L.label(demo / "images.h5", acts, None, max_memory=1, **kw).to_pylist()  # every method takes the block path
    assert [r["candidates"] for r in blocked] == [r["candidates"] for r in whole]
    np.testing.assert_allclose([r["candidate_similarities"] for r in blocked], [r["candidate_similarities"] for r in whole],
                               rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# Bad specs: one line, no traceback, nothing written
# ---------------------------------------------------------------------------

def _bad_specs(tmp_path):
    np.save(tmp_path / "narrow.npy", np.zeros((4, 5), np.float32))
    np.save(tmp_path / "nan.npy", np.full((4, 96), np.nan, np.float32))
    np.save(tmp_path / "int.npy", np.zeros((4, 96), np.int64))
    torch.save({"w": torch.zeros(4, 96), "v": torch.zeros(4, 96)}, tmp_path / "two.pt")
    import pickle

    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"w": object}))
    (tmp_path / "nocfg").mkdir()
    write_sae(tmp_path / "gated", torch.zeros(96, 4), torch.zeros(4), torch.zeros(96), {"architecture": "gated"})
    write_sae(tmp_path / "shape", torch.zeros(96, 4), torch.zeros(5), torch.zeros(96), {})
    write_sae(tmp_path / "topk0", torch.zeros(96, 4), torch.zeros(4), torch.zeros(96), {"architecture": "topk"})
    write_sae(tmp_path / "jump", torch.zeros(96, 4), torch.zeros(4), torch.zeros(96), {"architecture": "jumprelu"})
    for name, cfg in {"din_str": {"d_in": "x"}, "kwargs_list": {"activation_fn_kwargs": [1]},
                      "apply_str": {"apply_b_dec_to_input": "no"}, "k_bool": {"architecture": "topk", "k": True}}.items():
        write_sae(tmp_path / name, torch.zeros(96, 4), torch.zeros(4), torch.zeros(96), cfg)
    (tmp_path / "cfg_list").mkdir()
    (tmp_path / "cfg_list" / "cfg.json").write_text("[1, 2]")
    (tmp_path / "cfg_list" / "sae_weights.safetensors").write_bytes((tmp_path / "gated" / "sae_weights.safetensors").read_bytes())
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "cfg.json").write_text("{}")
    (tmp_path / "truncated" / "sae_weights.safetensors").write_bytes(
        (tmp_path / "gated" / "sae_weights.safetensors").read_bytes()[:40])
    (tmp_path / "wrong.py").write_text("import torch\ndef f():\n    return torch.nn.Flatten(0)\n")
    (tmp_path / "boom.py").write_text("def f():\n    raise RuntimeError('no')\n")
    write_sae(tmp_path / "sae0", torch.zeros(96, 0), torch.zeros(0), torch.zeros(96), {})
    write_sae(tmp_path / "rescale_std", torch.zeros(96, 4), torch.zeros(4), torch.zeros(96),
              {"rescale_acts_by_decoder_norm": True})
    write_sae(tmp_path / "rescale_str", torch.zeros(96, 4), torch.zeros(4), torch.zeros(96),
              {"architecture": "topk", "k": 2, "rescale_acts_by_decoder_norm": "yes"})
    (tmp_path / "zero.py").write_text("import torch\ndef f():\n    return torch.nn.Linear(96, 0)\n")
    module = "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        {}\ndef f():\n    return M()\n"
    # The probe call is [2, 3, C]; the model's real batches are [N, P, C] with N != 2 here.
    (tmp_path / "shifty.py").write_text(module.format("return x[..., :8] if x.shape[0] == 2 else x[..., :4]"))
    (tmp_path / "late.py").write_text(module.format("assert x.shape[0] == 2, 'bad batch'; return x[..., :8]"))
    (tmp_path / "ints.py").write_text(module.format("return (x[..., :8] > 0).long()"))
    np.save(tmp_path / "vector.npy", np.zeros(96, np.float32))
    return {
        "a width that is not the layer's": (f"layer4={tmp_path / 'narrow.npy'}", "5 channels"),
        "NaN": (f"layer4={tmp_path / 'nan.npy'}", "NaN"),
        "integers": (f"layer4={tmp_path / 'int.npy'}", "float matrix"),
        "two matrices, no key": (f"layer4={tmp_path / 'two.pt'}", "#KEY"),
        "a missing key": (f"layer4={tmp_path / 'two.pt'}#x", "no tensor 'x'"),
        "a pickled object": (f"layer4={tmp_path / 'pickled.pt'}", "cannot read"),
        "a missing file": (f"layer4={tmp_path / 'none.npy'}", "does not exist"),
        "an SAE folder without cfg.json": (f"layer4={tmp_path / 'nocfg'}", "cfg.json"),
        "an unsupported architecture": (f"layer4={tmp_path / 'gated'}", "gated"),
        "a mis-shaped bias": (f"layer4={tmp_path / 'shape'}", "b_enc"),
        "a topk SAE without k": (f"layer4={tmp_path / 'topk0'}", "k"),
        "a jumprelu SAE without threshold": (f"layer4={tmp_path / 'jump'}", "threshold"),
        "a d_in that is not a number": (f"layer4={tmp_path / 'din_str'}", "d_in"),
        "activation_fn_kwargs not an object": (f"layer4={tmp_path / 'kwargs_list'}", "activation_fn_kwargs"),
        "apply_b_dec_to_input not a boolean": (f"layer4={tmp_path / 'apply_str'}", "apply_b_dec_to_input"),
        "k true": (f"layer4={tmp_path / 'k_bool'}", "whole k"),
        "cfg.json not an object": (f"layer4={tmp_path / 'cfg_list'}", "not a JSON object"),
        "truncated weights": (f"layer4={tmp_path / 'truncated'}", "cannot read"),
        "a module of the wrong shape": (f"layer4={tmp_path / 'wrong.py'}:f", "not [2, 3, K]"),
        "a module that fails": (f"layer4={tmp_path / 'boom.py'}:f", "RuntimeError"),
        "no layer": ("=x.npy", "LAYER=SPEC"),
        "an SAE with no latents": (f"layer4={tmp_path / 'sae0'}", "0 units"),
        "decoder-norm rescaling of a standard SAE": (f"layer4={tmp_path / 'rescale_std'}", "topk SAEs only"),
        "decoder-norm rescaling not a boolean": (f"layer4={tmp_path / 'rescale_str'}", "rescale_acts_by_decoder_norm"),
        "a module with no outputs": (f"layer4={tmp_path / 'zero.py'}:f", "0 units"),
        "a module whose width changes on real batches": (f"layer4={tmp_path / 'shifty.py'}:f", "4 units"),
        "a module that fails on real batches": (f"layer4={tmp_path / 'late.py'}:f", "bad batch"),
        "a module with integer latents": (f"layer4={tmp_path / 'ints.py'}:f", "int64"),
        "a 1-D matrix": (f"layer4={tmp_path / 'vector.npy'}", "no 2-D tensor"),
        "an unknown layer": (f"nolayer={tmp_path / 'narrow.npy'}", "no layer 'nolayer'"),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_direction_specs_end_in_one_line(demo, tmp_path):
    for what, (spec, fragment) in _bad_specs(tmp_path).items():
        out = tmp_path / "out.h5"
        r = invoke("record", demo / "probe", *model_args(), "--layers", "fc", "--directions", spec, "-o", out, ok=False)
        line = one_line_error(r)
        assert fragment in line, (what, line)
        assert not out.exists(), what


# ---------------------------------------------------------------------------
# decompose
# ---------------------------------------------------------------------------

def test_pca_directions_are_the_principal_axes(fc_world, tmp_path):
    from safetensors.numpy import load_file

    _, acts, _ = fc_world
    out = tmp_path / "pca.safetensors"
    invoke("decompose", acts, "--layer", "layer4", "--method", "pca", "--k", 6, "-o", out)
    got = load_file(str(out))
    x = A.read_activations(acts).layers["layer4"].astype(np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)  # float64 reference from the definition
    np.testing.assert_allclose(np.abs(got["directions"]), np.abs(vt[:6]), atol=1e-4)
    np.testing.assert_allclose(got["explained_variance"], s[:6] ** 2 / (len(x) - 1), rtol=1e-4)
    proj = xc @ got["directions"].T.astype(np.float64)
    assert (proj.max(0) >= -proj.min(0)).all()  # the longer tail is positive
    meta = A.read_directions_metadata(out)
    assert meta["format"] == A.DIRECTIONS_FORMAT and json.loads(meta["source"])["summary"] == "mean"
    assert D.load(str(out), channels=96).k == 6


def test_nmf_recovers_a_planted_non_negative_factorisation():
    from dissect.decompose import nmf

    rng = np.random.default_rng(0)
    W, H = rng.exponential(1.0, (400, 4)), rng.exponential(1.0, (4, 30)) * (rng.random((4, 30)) < 0.4)
    d = nmf(W @ H, 4, seed=1, max_iter=2000, tol=1e-9)
    assert d.info["relative_error"] < 0.02 < d.info["initial_relative_error"]
    assert (d.extra["components"] >= 0).all()
    # the encoder gives each part's least-squares coefficients
    coef = (W @ H) @ d.directions.T
    np.testing.assert_allclose(coef @ d.extra["components"], W @ H, atol=0.05 * np.abs(W @ H).max())


def test_decompositions_refuse_directions_the_data_do_not_determine():
    """One image, or fewer varying axes than --k, would give arbitrary (all-zero or basis) directions."""
    from dissect.decompose import nmf, pca
    from dissect.errors import UsageError

    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=10), rng.normal(size=5)) + 3.0   # 10 images on one line in 5-D
    for call, fragment in [(lambda: pca(line[:1], 1), "2 images"), (lambda: pca(line, 2), "1 axis"),
                           (lambda: pca(line[:3], 3), "1 axis"),
                           (lambda: nmf(np.abs(line[:1]), 1), "2 images"), (lambda: nmf(np.zeros((6, 5)), 1), "zero")]:
        with pytest.raises(UsageError, match=fragment):
            call()
    d = pca(line, 1)   # the one axis the data have is found
    np.testing.assert_allclose(np.abs(d.directions[0] @ (line[1] - line[0])) / np.linalg.norm(line[1] - line[0]), 1, atol=1e-9)


def test_decompose_refuses_what_it_cannot_do(fc_world, tmp_path):
    _, acts, _ = fc_world
    r = invoke("decompose", acts, "--layer", "layer4", "--k", 500, "-o", tmp_path / "a.safetensors", ok=False)
    one_line_error(r, "--k 500")
    r = invoke("decompose", acts, "--layer", "layer4", "-o", tmp_path / "a.npy", ok=False)
    one_line_error(r, "safetensors")
    r = invoke("decompose", acts, "--layer", "global_pool@fcrows", "--method", "nmf", "-o", tmp_path / "a.safetensors", ok=False)
    one_line_error(r, "already a set of directions")
    r = invoke("decompose", acts, "--layer", "nope", "-o", tmp_path / "a.safetensors", ok=False)
    one_line_error(r, "nope")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# A tiny SAE trained here on the demo world's spatial activations
# ---------------------------------------------------------------------------

def _train_sae(tokens: torch.Tensor, k: int, steps: int = 600, l1: float = 3e-3, seed: int = 0):
    torch.manual_seed(seed)
    c = tokens.shape[1]
    mu = tokens.mean(0)
    scale = tokens.sub(mu).norm(dim=1).mean()
    x = (tokens - mu) / scale
    W_enc = torch.nn.Parameter(torch.randn(c, k) * 0.1)
    W_dec = torch.nn.Parameter(W_enc.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(k))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc], lr=3e-3)
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (512,))]
        f = torch.relu(batch @ W_enc + b_enc)
        loss = (f @ W_dec - batch).pow(2).sum(1).mean() + l1 * (f * W_dec.norm(dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # back to the layer's own units: (x - mu)/scale . W = x . W/scale - mu . W/scale  (b_dec = mu)
    return (W_enc.detach() / scale), b_enc.detach(), mu


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC of ``score`` for the boolean ``y`` (ties get average ranks)."""
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inv]
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _found_words(x: np.ndarray, labels: list[str], ids, attr_ids, attrs) -> tuple[int, int]:
    """World words some unit detects (AUC > 0.9), and how many of those units are labelled with that word."""
    from dissect.demo import world

    pos = {k: i for i, k in enumerate(attr_ids)}
    order = np.array([pos[i] for i in ids])
    found = right = 0
    for attr, values in attrs.items():
        v = np.array(values)[order]
        for word in world.ATTRIBUTES[attr]:
            y = v == word
            if y.sum() < 10:
                continue
            aucs = [_auc(x[:, u], y) if x[:, u].std() > 1e-6 else 0.5 for u in range(x.shape[1])]
            best = int(np.argmax(aucs))
            if aucs[best] > 0.9:
                found += 1
                right += labels[best] == word
    return found, right


def test_a_tiny_sae_trained_on_the_demo_world_finds_its_attributes(demo, tmp_path):
    """layer4's spatial activations of 600 demo images train an SAE (CPU, seconds); its latents, encoded at every
    position and summarised by max, detect world words (shapes, colours, sizes) about as well as the neurons, and
    dissect names them (measured here: 10 words found, 9 named; the neurons: 11 and 9)."""
    from dissect.hooks import Recorder
    from dissect.models import PreprocessOverrides, load_target
    from dissect.probe import open_probe
    from dissect.record import layer_infos

    torch.manual_seed(0)
    s = demo_specs()
    over = PreprocessOverrides(input_size=s.input_size, crop_pct=s.crop_pct, mean=s.mean, std=s.std,
                               interpolation=s.interpolation)
    target = load_target(s.model, s.weights, s.model_args, over)
    probe = open_probe([str(demo / "probe")])
    infos = layer_infos(target, ["layer4"])
    batch = torch.stack([target.transform(probe.load(i)) for i in range(600)])
    with Recorder(target.module, ["layer4"], layout=infos, keep_raw=True) as rec:
        raw = rec.run(batch)["layer4"]
    tokens = D.positions_last(raw, infos["layer4"].layout).reshape(-1, raw.shape[1]).float()
    W_enc, b_enc, b_dec = _train_sae(tokens, 64, l1=1e-3)
    sae = write_sae(tmp_path / "sae", W_enc, b_enc, b_dec, {"architecture": "standard", "apply_b_dec_to_input": True})
    acts = tmp_path / "acts.h5"
    invoke("record", demo / "probe", *model_args(), "--layers", "layer4", "--directions", f"layer4={sae}", "-o", acts)
    labels = tmp_path / "labels.parquet"
    invoke("label", "-i", demo / "images.h5", "-a", acts, "-t", demo / "text-mixed.h5", "-o", labels, "--device", "cpu")
    a = A.read_activations(acts)
    attr_ids, attrs = _attributes(demo / "probe")
    neurons = _found_words(a.layers["layer4"], _labels_of(labels, "layer4"), a.ids, attr_ids, attrs)
    latents = _found_words(a.layers["layer4@sae"], _labels_of(labels, "layer4@sae"), a.ids, attr_ids, attrs)
    assert latents[0] >= 8 and latents[1] >= 7, (latents, neurons)
    assert latents[0] >= neurons[0] - 3, (latents, neurons)


def test_sharded_records_of_an_entry_merge_into_the_unsharded_file(fc_world, demo, tmp_path):
    d, _, _ = fc_world
    base = ["record", demo / "probe", *model_args(), "--layers", "fc", "--directions", f"global_pool={d / 'sae'}",
            "--directions-dtype", "float16"]
    invoke(*base, "-o", tmp_path / "whole.h5")
    for i in (1, 2):
        invoke(*base, "--shard", f"{i}/2", "-o", tmp_path / f"part{i}.h5")
    invoke("merge", tmp_path / "part2.h5", tmp_path / "part1.h5", "-o", tmp_path / "merged.h5")
    a, b = (A.read_activations(tmp_path / p) for p in ("whole.h5", "merged.h5"))
    # merge copies a block of rows at a time from the shards, never a whole layer
    reads = []
    real = A.read_activation_layer
    import dissect.artifacts.hdf5 as H
    import dissect.shards as S

    def spy(path, name, units=None, rows=None):
        reads.append(None if rows is None else rows[1] - rows[0])
        return real(path, name, units=units, rows=rows)

    try:
        A.read_activation_layer, old = spy, (H.LAYER_CHUNK, H.COPY_BLOCK_BYTES)
        H.LAYER_CHUNK, H.COPY_BLOCK_BYTES = (64, 256), 1
        S.merge([tmp_path / "part2.h5", tmp_path / "part1.h5"], tmp_path / "merged2.h5")
    finally:
        A.read_activation_layer, (H.LAYER_CHUNK, H.COPY_BLOCK_BYTES) = real, old
    assert reads and None not in reads and max(reads) <= 64
    np.testing.assert_array_equal(A.read_activations(tmp_path / "merged2.h5").layers["global_pool@sae"],
                                  a.layers["global_pool@sae"])
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.layers["global_pool@sae"], b.layers["global_pool@sae"])
    with h5py.File(tmp_path / "merged.h5") as f:
        assert f["layers"]["global_pool@sae"].dtype == np.float16
        assert f["layers"]["global_pool@sae"].attrs["directions_kind"] == "sae"


def test_every_downstream_command_takes_an_entry_by_name(fc_world, demo, tmp_path):
    d, acts, labels = fc_world
    entry = "global_pool@fcrows"
    common = ["-i", demo / "images.h5", "-a", acts, "-t", demo / "text-mixed.h5", "--layers", entry]
    invoke("compose", *common, "-o", tmp_path / "c.parquet", "--device", "cpu")
    invoke("explain", *common, "-o", tmp_path / "e.parquet", "--device", "cpu")
    rows = A.read_table(tmp_path / "e.parquet", A.EXPLAIN_FORMAT).to_pylist()
    assert {r["layer"] for r in rows} == {entry} and len(rows) == 10
    invoke("evaluate", "simulate", labels, "-a", acts, "--images", demo / "images.h5", "-t", demo / "text-mixed.h5",
           "--layer", entry, "-o", tmp_path / "s.parquet", "--device", "cpu")
    invoke("report", "--labels", labels, "--activations", acts, "-o", tmp_path / "report", "--top-images", 2)
    assert entry in (tmp_path / "report" / "index.html").read_text()
    shown = invoke("show", labels, "--layer", entry)
    assert entry in shown.output


@pytest.mark.parametrize("spilled", [False, True])
def test_nan_activations_are_refused_whether_the_layer_is_in_memory_or_spilled(probe_dir, tmp_path, monkeypatch, spilled):
    """A layer spilled to disk while recording (any layer over SPILL_BYTES, neurons too) is checked for NaN
    and Inf like one held in memory: one line naming the layer and its units, nothing written."""
    import dissect.record as R

    src = tmp_path / "nanmodel.py"
    src.write_text(
        "import torch\nfrom torchvision import transforms as T\n"
        "class NaNAt(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        x = x.clone(); x[:, 3] = float('nan'); return x\n"
        "def build():\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), NaNAt())\n"
        "    return m, T.Compose([T.Resize((16, 16)), T.ToTensor()])\n")
    if spilled:
        monkeypatch.setattr(R, "SPILL_BYTES", 0)
    r = invoke("record", probe_dir, "--model", f"{src}:build", "--weights", "none", "--layers", "3",
               "-o", tmp_path / "a.h5", "--device", "cpu", ok=False)
    one_line_error(r, "layer 3", "units [3]")
    assert not (tmp_path / "a.h5").exists()
    assert not list(tmp_path.glob(".dissect-spill-*"))
