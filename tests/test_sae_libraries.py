"""SAE files written by the libraries themselves, encoded by dissect as the library encodes them (issue #29).

Optional: these need sae-lens, saev, dictionary-learning and overcomplete, which the default suite does not install
(`make test-sae-libraries`, run by .ci/run after the default suite). Each test builds small random SAEs with the
library's own classes, saves them the library's own way, loads them with dissect and compares dissect's encoding with
the library's own encode of the same activations (<= 1e-5 relative). ViT-Prisma's SAE code is not on the package
index (its wheel has none): its layout is checked in tests/test_sae_files.py only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dissect import directions as D

pytestmark = pytest.mark.sae_libraries

D_IN, D_SAE = 16, 48


def _x(seed=0):
    return torch.randn(5, 3, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _perturb(module, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _agree(path, want, x):
    ds = D.load(str(path), channels=D_IN)
    with torch.inference_mode():
        got = ds.module(x).double()
    want = want.detach().double().reshape(got.shape)
    assert (want != 0).any()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    return ds


# -- SAELens ---------------------------------------------------------------------------------------------------------

SAELENS = {   # class, config class, config fields
    "standard": ("StandardSAE", "StandardSAEConfig", {}),
    "topk": ("TopKSAE", "TopKSAEConfig", {"k": 5}),
    "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {}),
    "gated": ("GatedSAE", "GatedSAEConfig", {}),
    "layer_norm": ("StandardSAE", "StandardSAEConfig", {"normalize_activations": "layer_norm"}),
    "transcoder": ("Transcoder", "TranscoderConfig", {"d_out": 10, "apply_b_dec_to_input": False}),
    "skip_transcoder": ("SkipTranscoder", "SkipTranscoderConfig", {"d_out": D_IN, "apply_b_dec_to_input": False}),
    "jumprelu_transcoder": ("JumpReLUTranscoder", "JumpReLUTranscoderConfig", {"d_out": 10,
                                                                      "apply_b_dec_to_input": False}),
}


@pytest.mark.parametrize("case", sorted(SAELENS))
def test_saelens_saved_saes_encode_as_saelens(case, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cls, cfg_cls, fields = SAELENS[case]
    torch.manual_seed(1)
    sae = getattr(sae_lens, cls)(getattr(sae_lens, cfg_cls)(d_in=D_IN, d_sae=D_SAE, **fields))
    _perturb(sae, 2)
    if hasattr(sae, "threshold"):
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE) * 0.8)
    sae.save_model(tmp_path / case)
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path / case), device="cpu") if hasattr(sae_lens.SAE, "load_from_disk") else sae
    x = _x()
    with torch.inference_mode():
        want = loaded.encode(x.reshape(-1, D_IN))
    _agree(tmp_path / case, want, x)


# -- saev ------------------------------------------------------------------------------------------------------------

def test_saev_dumped_saes_encode_as_saev(tmp_path):
    snn = pytest.importorskip("saev.nn")
    scfg = pytest.importorskip("saev.config")
    sae = _perturb(snn.SparseAutoencoder(scfg.SparseAutoencoder(d_vit=D_IN, exp_factor=3, seed=0)), 3)
    path = tmp_path / "ck" / "sae.pt"
    path.parent.mkdir()
    snn.dump(str(path), sae)
    loaded = snn.load(str(path))
    x = _x()
    with torch.inference_mode():
        _, f_x, *_ = loaded(x.reshape(-1, D_IN))
    ds = _agree(path, f_x, x)
    assert ds.k == D_IN * 3


# -- dictionary_learning ---------------------------------------------------------------------------------------------

def _dl_trainers():
    from dictionary_learning.dictionary import AutoEncoderNew
    from dictionary_learning.trainers import BatchTopKTrainer, GatedSAETrainer, JumpReluTrainer, StandardTrainer, TopKTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate

    common = dict(steps=6, warmup_steps=1, activation_dim=D_IN, dict_size=D_SAE, layer=3, lm_name="toy", device="cpu")
    return {
        "AutoEncoder": dict(trainer=StandardTrainer, sparsity_warmup_steps=1, **common),
        "GatedAutoEncoder": dict(trainer=GatedSAETrainer, sparsity_warmup_steps=1, **common),
        "JumpReluAutoEncoder": dict(trainer=JumpReluTrainer, sparsity_warmup_steps=1, **common),
        "AutoEncoderTopK": dict(trainer=TopKTrainer, k=4, threshold_start_step=1, **common),
        "BatchTopKSAE": dict(trainer=BatchTopKTrainer, k=4, threshold_start_step=1, **common),
        "MatryoshkaBatchTopKSAE": dict(trainer=MatryoshkaBatchTopKTrainer, k=4, group_fractions=[0.25, 0.25, 0.5],
                                       threshold_start_step=1, **common),
        "AutoEncoderNew": dict(trainer=StandardTrainerAprilUpdate, sparsity_warmup_steps=1, dict_class=AutoEncoderNew,
                               **common),
    }


@pytest.fixture(scope="module")
def dl_folders(tmp_path_factory):
    """One trainSAE run per class (the library's own writer of ae.pt and config.json), normalised activations."""
    pytest.importorskip("dictionary_learning")
    from dictionary_learning.training import trainSAE

    torch.manual_seed(0)
    data = [torch.randn(64, D_IN) * 3 + 1 for _ in range(8)]
    out = {}
    for name, cfg in _dl_trainers().items():
        d = tmp_path_factory.mktemp(name)
        trainSAE(iter(data), [cfg], steps=6, save_dir=str(d), normalize_activations=name != "AutoEncoderNew",
                 device="cpu")
        out[name] = d / "trainer_0"
    return out


@pytest.mark.parametrize("name", sorted(["AutoEncoder", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK",
                                         "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoderNew"]))
def test_dictionary_learning_trained_saes_encode_as_dictionary_learning(name, dl_folders):
    folder = dl_folders[name]
    cfg = json.loads((folder / "config.json").read_text())["trainer"]
    if name == "AutoEncoderNew":     # its trainer writes dict_class "AutoEncoder", so load_dictionary cannot read it
        from dictionary_learning.dictionary import AutoEncoderNew

        ae = AutoEncoderNew.from_pretrained(str(folder / "ae.pt"))
    else:
        from dictionary_learning.utils import load_dictionary

        ae, _ = load_dictionary(str(folder), device="cpu")
        assert cfg["dict_class"] == name
    ae.eval()
    x = _x(4) * 3
    with torch.inference_mode():
        want = ae.encode(x.reshape(-1, D_IN))
    ds = _agree(folder, want, x)
    assert ds.describe["dict_class"] == name


# -- Overcomplete ----------------------------------------------------------------------------------------------------

OVERCOMPLETE = {   # class, constructor keywords
    "SAE": ("SAE", {}),
    "SAE-mlp_bn_3": ("SAE", {"encoder_module": "mlp_bn_3"}),
    "SAE-mlp_ln_1": ("SAE", {"encoder_module": "mlp_ln_1"}),
    "TopKSAE": ("TopKSAE", {"top_k": 5}),
    "BatchTopKSAE": ("BatchTopKSAE", {"top_k": 40}),
    "JumpSAE": ("JumpSAE", {}),
    "RATopKSAE": ("RATopKSAE", {"top_k": 5, "points": "points"}),
}


@pytest.mark.parametrize("case", sorted(OVERCOMPLETE))
def test_overcomplete_saved_models_encode_as_overcomplete(case, tmp_path):
    sae_mod = pytest.importorskip("overcomplete.sae")
    cls, kwargs = OVERCOMPLETE[case]
    torch.manual_seed(5)
    if kwargs.get("points") == "points":
        kwargs = {**kwargs, "points": torch.randn(20, D_IN)}
    model = getattr(sae_mod, cls)(D_IN, D_SAE, **kwargs)
    _perturb(model, 6, 0.2)
    model.train()
    with torch.no_grad():
        model.encode(torch.randn(64, D_IN))          # one training batch (BatchTopK's running threshold, BN stats)
    model.eval()
    path = tmp_path / "sae.pth"
    torch.save(model, path)                          # as Overcomplete's own tests save and load
    loaded = torch.load(path, map_location="cpu", weights_only=False).eval()
    x = _x(7)
    with torch.inference_mode():
        _, codes = loaded.encode(x.reshape(-1, D_IN))
    _agree(path, codes, x)


def test_overcomplete_models_dissect_cannot_encode_are_refused_by_name(tmp_path):
    sae_mod = pytest.importorskip("overcomplete.sae")
    from dissect.errors import UsageError

    for cls, kwargs in (("MpSAE", {"k": 3}), ("QSAE", {"q": 4})):
        path = tmp_path / f"{cls}.pth"
        torch.save(getattr(sae_mod, cls)(D_IN, D_SAE, **kwargs).eval(), path)
        with pytest.raises(UsageError, match=cls):
            D.load(str(path), channels=D_IN)
