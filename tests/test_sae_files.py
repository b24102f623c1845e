"""Every SAE library's files (issue #29), written in each layout by these tests without the libraries, read by
``dissect.sae_files`` and encoded against float64 references written from each library's definitions.
(tests/test_sae_libraries.py checks the same readers against the libraries themselves, where they are installed.)"""

from __future__ import annotations

import io
import json
import sys
import types

import numpy as np
import pytest
import torch

from dissect import directions as D
from dissect.sae_files import kind_of, read_sae

D_IN, D_SAE = 8, 12


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _x(seed=9, n=(4, 3)):
    return torch.randn(*n, D_IN, generator=_g(seed)) * 2


def _encode(path, x):
    ds = D.load(str(path), channels=D_IN)
    with torch.inference_mode():
        return ds.module(x).double(), ds


def _close(got, want):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert (want != 0).any() and (want == 0).any()          # the references really select


# -- references, float64, from each library's own definitions ------------------------------------------------------

def relu(t):
    return t.clamp_min(0)


def ref_topk(pre, k):
    out = torch.zeros_like(pre)
    top = pre.topk(k, dim=-1)
    return out.scatter(-1, top.indices, top.values)


def ref_layer_norm(x):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / ((((x - mu) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)).sqrt() + 1e-5)


def _rand(*shape, seed, scale=1.0):
    return (torch.randn(*shape, generator=_g(seed)) * scale).float()


# -- saev ------------------------------------------------------------------------------------------------------------

def _saev_file(path, header, sd):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(sd, buf)
    path.write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())
    return path


def _saev_sd(seed):
    return {"W_enc": _rand(D_IN, D_SAE, seed=seed), "b_enc": _rand(D_SAE, seed=seed + 1),
            "W_dec": _rand(D_SAE, D_IN, seed=seed + 2), "b_dec": _rand(D_IN, seed=seed + 3)}


def test_saev_0_1_files_subtract_b_dec_and_later_schemas_do_not(tmp_path):
    """saev 0.1.0's dump (header = vars(cfg), no schema): relu((x - b_dec) W_enc + b_enc); schema 5 (saev on GitHub):
    h = x W_enc + b_enc, TopK keeps the k largest of h as they are (negative too), BatchTopK zeroes h <= threshold."""
    sd = _saev_sd(1)
    x = _x()
    W, be, bd = (sd[k].double() for k in ("W_enc", "b_enc", "b_dec"))
    old = _saev_file(tmp_path / "a" / "sae.pt", {"d_vit": D_IN, "exp_factor": 1.5, "seed": 0}, sd)
    assert kind_of(old) == "saev"
    got, ds = _encode(old, x)
    _close(got, relu((x.double() - bd) @ W + be))
    assert ds.kind == "sae" and ds.k == D_SAE
    low = {**sd, "b_enc": sd["b_enc"] - 8}                  # some rows' top 3 below 0
    top = _saev_file(tmp_path / "b" / "sae.pt", {"schema": 5, "cfg": {"d_model": D_IN, "d_sae": D_SAE,
                     "activation": {"cls": "TopK", "params": {"top_k": 3}}}}, low)
    want = ref_topk(x.double() @ W + be - 8, 3)
    got, _ = _encode(top, x)
    _close(got, want)
    assert (want < 0).any()                                  # saev's TopK passes negative values on
    sd_b = {**sd, "activation.threshold": torch.tensor(0.7)}
    btk = _saev_file(tmp_path / "c" / "sae.pt", {"schema": 5, "cfg": {"d_model": D_IN, "d_sae": D_SAE,
                     "activation": {"cls": "BatchTopK", "params": {"top_k": 3}}}}, sd_b)
    h = x.double() @ W + be
    got, _ = _encode(btk, x)
    _close(got, h * (h > 0.7))


# -- dictionary_learning ---------------------------------------------------------------------------------------------

def _dl_folder(path, dict_class, sd, **trainer):
    path.mkdir(parents=True)
    torch.save(sd, path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": D_IN,
                                                              "dict_size": D_SAE, "layer": 3, **trainer},
                                                  "buffer": {"d_submodule": D_IN}}, indent=4))
    return path


def _dl_cases():
    r = _rand
    lin = {"encoder.weight": r(D_SAE, D_IN, seed=11), "encoder.bias": r(D_SAE, seed=12),
           "decoder.weight": r(D_IN, D_SAE, seed=13, scale=0.3)}
    W = lin["encoder.weight"].double().T
    b = lin["encoder.bias"].double()
    bias = r(D_IN, seed=14)
    norms = lin["decoder.weight"].double().norm(dim=0)

    def autoencoder(x):            # load_dictionary: decoder columns normalised, encoder rows scaled by the norms
        return relu((x - bias.double()) @ (W * norms) + b * norms)

    def new(x):
        return relu(x @ W + b)

    g = {"encoder.weight": lin["encoder.weight"], "decoder.weight": lin["decoder.weight"], "decoder_bias": bias,
         "r_mag": r(D_SAE, seed=15), "gate_bias": r(D_SAE, seed=16), "mag_bias": r(D_SAE, seed=17)}

    def gated(x):
        e = (x - bias.double()) @ W
        return (e + g["gate_bias"].double() > 0) * relu(g["r_mag"].double().exp() * e + g["mag_bias"].double())

    j = {"W_enc": r(D_IN, D_SAE, seed=18), "b_enc": r(D_SAE, seed=19), "W_dec": r(D_SAE, D_IN, seed=20),
         "b_dec": r(D_IN, seed=21), "threshold": torch.rand(D_SAE, generator=_g(22))}

    def jump(x):                   # no b_dec on the way in (apply_b_dec_to_input is False and not saved)
        pre = x @ j["W_enc"].double() + j["b_enc"].double()
        return relu(pre * (pre > j["threshold"].double()))

    t = {"encoder.weight": lin["encoder.weight"], "encoder.bias": lin["encoder.bias"], "decoder.weight":
         lin["decoder.weight"], "b_dec": bias, "k": torch.tensor(4, dtype=torch.int32), "threshold": torch.tensor(0.9)}

    def topk(x):
        return ref_topk(relu((x - bias.double()) @ W + b), 4)

    def batch(x):
        post = relu((x - bias.double()) @ W + b)
        return post * (post > 0.9)

    m = {**{k: j[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, "k": torch.tensor(4), "threshold": torch.tensor(0.5),
         "group_sizes": torch.tensor([4, 8])}

    def matryoshka(x):
        post = relu((x - j["b_dec"].double()) @ j["W_enc"].double() + j["b_enc"].double())
        return post * (post > 0.5)

    return {"AutoEncoder": ({**lin, "bias": bias}, autoencoder, {}),
            "AutoEncoderNew": ({**lin, "decoder.bias": bias}, new, {}),
            "GatedAutoEncoder": (g, gated, {}), "JumpReluAutoEncoder": (j, jump, {}),
            "AutoEncoderTopK": (t, topk, {"k": 4}), "BatchTopKSAE": (t, batch, {"k": 4}),
            "MatryoshkaBatchTopKSAE": (m, matryoshka, {"k": 4})}


@pytest.mark.parametrize("dict_class", sorted(_dl_cases()))
def test_dictionary_learning_trainer_folders_encode_as_each_class(dict_class, tmp_path):
    sd, ref, trainer = _dl_cases()[dict_class]
    folder = _dl_folder(tmp_path / "trainer_0", dict_class, sd, **trainer)
    x = _x()
    for path in (folder, folder / "ae.pt"):                 # the folder or its ae.pt
        assert kind_of(path) == "dictionary_learning"
        got, ds = _encode(path, x)
        _close(got, ref(x.double()))
    assert ds.describe["dict_class"] == dict_class


def test_dictionary_learning_class_comes_from_the_keys_where_the_config_names_another(tmp_path):
    """The April update's trainer writes dict_class "AutoEncoder" for an AutoEncoderNew (whose keys differ)."""
    sd, ref, _ = _dl_cases()["AutoEncoderNew"]
    folder = _dl_folder(tmp_path / "t", "AutoEncoder", sd)
    got, ds = _encode(folder, _x())
    _close(got, ref(_x().double()))
    assert ds.describe["dict_class"] == "AutoEncoderNew"


# -- Overcomplete: torch.save(model) of classes the reader never imports ---------------------------------------------

def _fake_overcomplete(monkeypatch):
    """Modules named as Overcomplete's, holding classes of the same names and attributes: what torch.save pickles."""
    base = types.ModuleType("overcomplete.sae.base")
    mods = {name: types.ModuleType(name) for name in ("overcomplete", "overcomplete.sae", "overcomplete.sae.base",
                                                       "overcomplete.sae.modules", "overcomplete.sae.dictionary",
                                                       "overcomplete.sae.topk_sae", "overcomplete.sae.jump_sae",
                                                       "overcomplete.sae.batchtopk_sae")}
    mods["overcomplete.sae.base"] = base

    def make(module, name, bases=(torch.nn.Module,)):
        cls = type(name, bases, {"__module__": module})
        setattr(mods[module], name, cls)
        return cls

    def normalize_l2(w):
        return w / (w.norm(dim=-1, keepdim=True) + 1e-8)

    normalize_l2.__module__, normalize_l2.__qualname__ = "overcomplete.sae.dictionary", "normalize_l2"
    mods["overcomplete.sae.dictionary"].normalize_l2 = normalize_l2
    classes = {"MLPEncoder": make("overcomplete.sae.modules", "MLPEncoder"),
               "DictionaryLayer": make("overcomplete.sae.dictionary", "DictionaryLayer"),
               "SAE": make("overcomplete.sae.base", "SAE"),
               "TopKSAE": make("overcomplete.sae.topk_sae", "TopKSAE"),
               "JumpSAE": make("overcomplete.sae.jump_sae", "JumpSAE"),
               "BatchTopKSAE": make("overcomplete.sae.batchtopk_sae", "BatchTopKSAE")}
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    return classes, normalize_l2


def _overcomplete_model(classes, normalize, cls, hidden_blocks: bool, seed: int):
    torch.manual_seed(seed)
    enc = classes["MLPEncoder"]()
    if hidden_blocks:
        enc.mlp_blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(D_IN, 10), torch.nn.LayerNorm(10),
                                                                  torch.nn.ReLU())])
        enc.final_block = torch.nn.Sequential(torch.nn.Linear(10, D_SAE), torch.nn.BatchNorm1d(D_SAE))
        enc.final_block[1].running_mean.normal_()
        enc.final_block[1].running_var.uniform_(0.5, 2)
    else:
        enc.final_block = torch.nn.Sequential(torch.nn.Linear(D_IN, D_SAE), torch.nn.Identity())
    enc.residual = False
    dic = classes["DictionaryLayer"]()
    dic.register_parameter("_weights", torch.nn.Parameter(torch.randn(D_SAE, D_IN)))
    dic.register_buffer("multiplier", torch.tensor(0.3))
    dic.normalization = normalize
    model = classes[cls]()
    model.encoder, model.dictionary = enc, dic
    if cls == "TopKSAE":
        model.top_k = 3
    if cls == "BatchTopKSAE":
        model.top_k, model.running_threshold = 20, torch.tensor(0.4)
    if cls == "JumpSAE":
        model.register_parameter("thresholds", torch.nn.Parameter(torch.randn(D_SAE) * 0.5 - 1))
    return model.eval()


def _overcomplete_ref(model, cls, x):
    enc = model.encoder
    h = x.float().reshape(-1, D_IN)
    for block in getattr(enc, "mlp_blocks", []):
        h = block(h)
    pre = enc.final_block(h).double().reshape(*x.shape[:-1], D_SAE)
    z = relu(pre)
    if cls == "TopKSAE":
        return ref_topk(z, 3)
    if cls == "BatchTopKSAE":
        return z * (z >= 0.4)
    if cls == "JumpSAE":
        return z * (z >= model.thresholds.double().exp())
    return z


@pytest.mark.parametrize("cls", ["SAE", "TopKSAE", "BatchTopKSAE", "JumpSAE"])
@pytest.mark.parametrize("hidden", [False, True], ids=["linear", "mlp"])
def test_overcomplete_models_saved_whole_encode_as_the_library_without_importing_it(cls, hidden, tmp_path, monkeypatch):
    classes, normalize = _fake_overcomplete(monkeypatch)
    model = _overcomplete_model(classes, normalize, cls, hidden, seed=3)
    path = tmp_path / "sae.pth"
    torch.save(model, path)
    x = _x()
    with torch.inference_mode():
        want = _overcomplete_ref(model, cls, x)
    for name in [n for n in sys.modules if n.startswith("overcomplete")]:
        monkeypatch.delitem(sys.modules, name)             # the reader must not need (or import) the library
    assert kind_of(path) == "overcomplete"
    got, ds = _encode(path, x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert not any(n.startswith("overcomplete") for n in sys.modules)
    assert ds.describe["class"] == cls and ds.describe["encoder"] == ("mlp" if hidden else "linear")
    if not hidden:               # its decoder: the l2-normalised atoms times exp(multiplier)
        w = model.dictionary._weights.detach()
        atoms = w / (w.norm(dim=-1, keepdim=True) + 1e-8) * np.exp(0.3)
        dec = D.decoder("sae", str(path))
        gain = (model.encoder.final_block[0].weight.detach() * atoms).sum(-1, keepdim=True)
        torch.testing.assert_close(dec, atoms / gain, rtol=1e-5, atol=1e-6)


def test_overcomplete_state_dicts_and_pickles_that_run_code_are_refused_in_one_line(tmp_path, monkeypatch):
    from dissect.errors import ArtifactError, UsageError

    classes, normalize = _fake_overcomplete(monkeypatch)
    model = _overcomplete_model(classes, normalize, "TopKSAE", False, seed=1)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    from dissect.sae_files import read_overcomplete

    with pytest.raises(UsageError, match="state dict does not say which SAE"):
        read_overcomplete(tmp_path / "sd.pt")

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    Evil.__module__ = "overcomplete.sae.evil"
    torch.save({"model": Evil(), "tag": "overcomplete.sae"}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="not allowed"):
        read_overcomplete(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


# -- ViT-Prisma ------------------------------------------------------------------------------------------------------

def _prisma_folder(path, cfg, sd, form):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"d_in": D_IN, "expansion_factor": 1.5, "hook_point_layer": 9,
                                                  "layer_subtype": "hook_resid_post", "_dtype": "float32", **cfg}))
    if form == "weights":
        torch.save(sd, path / "weights.pt")
    else:                        # save_model: {"cfg": the pickled config object, "state_dict": ...}
        names = ("vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config")
        mods = {n: types.ModuleType(n) for n in names}
        Config = type("VisionModelSAERunnerConfig", (), {"__module__": "vit_prisma.sae.config"})
        mods["vit_prisma.sae.config"].VisionModelSAERunnerConfig = Config
        sys.modules.update(mods)
        try:
            c = Config()
            c.__dict__.update(cfg)
            torch.save({"cfg": c, "state_dict": sd}, path / "n_images_10.pt")
        finally:
            for n in names:
                del sys.modules[n]
    return path


@pytest.mark.parametrize("form", ["weights", "save_model"])
@pytest.mark.parametrize("arch", ["topk-layer_norm", "relu-none", "gated-constant_norm_rescale"])
def test_vit_prisma_folders_encode_as_its_sparse_autoencoder(arch, form, tmp_path):
    kind, norm = arch.split("-")
    sd = {"W_enc": _rand(D_IN, D_SAE, seed=31), "b_enc": _rand(D_SAE, seed=32), "W_dec": _rand(D_SAE, D_IN, seed=33),
          "b_dec": _rand(D_IN, seed=34)}
    if kind == "gated":
        sd.update(b_gate=_rand(D_SAE, seed=35), r_mag=_rand(D_SAE, seed=36), b_mag=_rand(D_SAE, seed=37))
    cfg = {"activation_fn_str": "topk" if kind == "topk" else "relu", "activation_fn_kwargs": {"k": 4},
           "normalize_activations": norm, "architecture": "gated" if kind == "gated" else "standard"}
    folder = _prisma_folder(tmp_path / "sae", cfg, sd, form)
    x = _x().double()
    xn = {"layer_norm": ref_layer_norm(x), "none": x, "constant_norm_rescale": x * (D_IN ** 0.5) / x.norm(dim=-1, keepdim=True)}[norm]
    s = xn - sd["b_dec"].double()
    W = sd["W_enc"].double()
    if kind == "gated":
        want = ((s @ W + sd["b_gate"].double()) > 0) * relu(s @ (W * sd["r_mag"].double().exp()) + sd["b_mag"].double())
    elif kind == "topk":
        want = ref_topk(relu(s @ W + sd["b_enc"].double()), 4)
    else:
        want = relu(s @ W + sd["b_enc"].double())
    assert kind_of(folder) == "vit_prisma"
    got, _ = _encode(folder, x.float())
    _close(got, want)


# -- SAELens: gated SAEs and transcoders -----------------------------------------------------------------------------

def _saelens(path, cfg, sd):
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file(sd, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, **cfg}))
    return path


def test_saelens_gated_saes_encode_and_move_by_their_magnitude_path(tmp_path):
    """SAELens's GatedSAE: [(x - b_dec) W_enc + b_gate > 0] * relu((x - b_dec)(W_enc exp(r_mag)) + b_mag); moving the
    input along the decoder row ablate uses moves latent k's magnitude pre-activation by exactly the shift."""
    sd = {"W_enc": _rand(D_IN, D_SAE, seed=41), "b_gate": _rand(D_SAE, seed=42), "b_mag": _rand(D_SAE, seed=43),
          "r_mag": _rand(D_SAE, seed=44, scale=0.3), "b_dec": _rand(D_IN, seed=45), "W_dec": _rand(D_SAE, D_IN, seed=46)}
    folder = _saelens(tmp_path / "g", {"architecture": "gated"}, sd)
    x = _x().double()
    s = x - sd["b_dec"].double()
    W = sd["W_enc"].double()
    mag = s @ (W * sd["r_mag"].double().exp()) + sd["b_mag"].double()
    _close(_encode(folder, x.float())[0], ((s @ W + sd["b_gate"].double()) > 0) * relu(mag))
    dec = D.decoder("sae", str(folder)).double()
    for k in (0, 5):
        moved = (s + 0.25 * dec[k]) @ (W * sd["r_mag"].double().exp()) + sd["b_mag"].double()
        np.testing.assert_allclose((moved - mag)[..., k].numpy(), 0.25, atol=1e-5)


def test_saelens_transcoders_encode_their_input_and_refuse_to_be_moved(tmp_path):
    from dissect.errors import UsageError

    sd = {"W_enc": _rand(D_IN, D_SAE, seed=51), "b_enc": _rand(D_SAE, seed=52), "W_dec": _rand(D_SAE, 6, seed=53),
          "b_dec": _rand(6, seed=54)}
    folder = _saelens(tmp_path / "t", {"architecture": "transcoder", "d_out": 6, "hook_name_out": "blocks.3.hook_mlp_out"}, sd)
    x = _x().double()
    _close(_encode(folder, x.float())[0], relu(x @ sd["W_enc"].double() + sd["b_enc"].double()))
    with pytest.raises(UsageError, match="blocks.3.hook_mlp_out"):
        D.decoder("sae", str(folder))


def test_every_architecture_and_normalisation_a_reader_may_give_has_an_encoder():
    from dissect.sae_files import ARCHITECTURES, NORMALIZERS

    assert set(ARCHITECTURES) == set(D.SAE_ENCODES) and set(NORMALIZERS) == set(D.SAE_NORMALIZERS)


def test_a_file_no_library_wrote_is_still_a_matrix_and_unknown_folders_say_what_is_read(tmp_path):
    np.save(tmp_path / "dirs.npy", np.random.default_rng(0).normal(size=(3, D_IN)).astype(np.float32))
    assert kind_of(tmp_path / "dirs.npy") is None
    assert D.load(str(tmp_path / "dirs.npy"), channels=D_IN).kind == "matrix"
    (tmp_path / "empty").mkdir()
    from dissect.errors import UsageError

    with pytest.raises(UsageError, match="not an SAE dissect reads"):
        read_sae(tmp_path / "empty")


# -- what an independent review found --------------------------------------------------------------------------------

def test_saev_versioned_schemas_never_subtract_b_dec_and_batchtopk_without_a_threshold_is_a_per_sample_topk(tmp_path):
    """Every versioned saev schema encodes x W_enc + b_enc (b_dec left out since schema 1); BatchTopK files before
    schema 4 keep no threshold: their library took the top k per sample."""
    sd = _saev_sd(5)
    x = _x()
    W, be = sd["W_enc"].double(), sd["b_enc"].double()
    relu_2 = _saev_file(tmp_path / "a" / "sae.pt", {"schema": 2, "cfg": {"d_model": D_IN, "d_sae": D_SAE,
                        "activation": {"cls": "Relu", "params": {}}}}, sd)
    _close(_encode(relu_2, x)[0], relu(x.double() @ W + be))
    btk_2 = _saev_file(tmp_path / "b" / "sae.pt", {"schema": 2, "cfg": {"d_model": D_IN, "d_sae": D_SAE,
                       "activation": {"cls": "BatchTopK", "params": {"top_k": 2}}}}, sd)
    _close(_encode(btk_2, x)[0], ref_topk(x.double() @ W + be, 2))
    from dissect.errors import ArtifactError

    bad = _saev_file(tmp_path / "c" / "sae.pt", {"schema": 5, "cfg": [1, 2]}, sd)
    with pytest.raises(ArtifactError, match="not an object"):
        read_sae(bad)


def test_torchscript_archives_are_refused_before_anything_in_them_runs(tmp_path):
    from dissect.errors import ArtifactError

    folder = _prisma_folder(tmp_path / "sae", {"activation_fn_str": "relu"}, {"W_enc": _rand(D_IN, D_SAE, seed=1)},
                            "weights")
    torch.jit.save(torch.jit.script(torch.nn.Linear(D_IN, D_SAE)), str(folder / "weights.pt"))
    with pytest.raises(ArtifactError, match="TorchScript"):
        read_sae(folder)


def test_vit_prisma_defaults_to_relu_and_refuses_architectures_it_does_not_encode(tmp_path):
    from dissect.errors import UsageError

    sd = {"W_enc": _rand(D_IN, D_SAE, seed=61), "b_enc": _rand(D_SAE, seed=62), "b_dec": _rand(D_IN, seed=63)}
    folder = _prisma_folder(tmp_path / "a", {"normalize_activations": "none"}, sd, "weights")
    x = _x().double()
    _close(_encode(folder, x.float())[0], relu((x - sd["b_dec"].double()) @ sd["W_enc"].double() + sd["b_enc"].double()))
    other = _prisma_folder(tmp_path / "b", {"architecture": "jumprelu"}, sd, "weights")
    with pytest.raises(UsageError, match="'jumprelu' is not supported"):
        read_sae(other)


def test_a_matrix_beside_another_librarys_config_is_still_a_matrix(tmp_path):
    sd, _, _ = _dl_cases()["AutoEncoder"]
    folder = _dl_folder(tmp_path / "trainer_0", "AutoEncoder", sd)
    np.save(folder / "dirs.npy", np.ones((2, D_IN), dtype=np.float32))
    assert kind_of(folder / "dirs.npy") is None
    assert D.load(str(folder / "dirs.npy"), channels=D_IN).kind == "matrix"


def test_overcomplete_encoders_holding_modules_of_their_own_are_refused_in_one_line(tmp_path, monkeypatch):
    from dissect.errors import UsageError

    classes, normalize = _fake_overcomplete(monkeypatch)
    model = _overcomplete_model(classes, normalize, "SAE", False, seed=2)
    Norm = type("MyNorm", (torch.nn.Module,), {"__module__": "overcomplete.sae.modules",
                                                "forward": lambda self, x: x})
    sys.modules["overcomplete.sae.modules"].MyNorm = Norm
    model.encoder.final_block[1] = Norm()
    torch.save(model, tmp_path / "sae.pth")
    with pytest.raises(UsageError, match="overcomplete.sae.modules.MyNorm"):
        read_sae(tmp_path / "sae.pth")


# -- through the command line, and through ablate's decoder ----------------------------------------------------------

def test_each_librarys_file_records_as_a_direction_entry_of_a_vit(probe_dir, tmp_path, monkeypatch):
    """`record --directions blocks.0@NAME=PATH` with a saev file, a dictionary_learning folder, an Overcomplete
    pickle and a ViT-Prisma folder: each entry's max over tokens equals the set's encoder on the tokens a forward hook
    of our own sees (the encoders themselves are checked against references above)."""
    from conftest import vit_block0_tokens
    from test_cli import invoke

    from dissect import artifacts as A

    tokens = vit_block0_tokens(probe_dir)
    c = tokens.shape[-1]
    g = torch.Generator().manual_seed(3)
    W, b, bd = torch.randn(c, 20, generator=g) * 0.2, torch.randn(20, generator=g) * 0.1, torch.randn(c, generator=g) * 0.1
    specs = {"saev": _saev_file(tmp_path / "saev" / "sae.pt", {"d_vit": c, "exp_factor": 1},
                                {"W_enc": W, "b_enc": b, "W_dec": W.T.contiguous(), "b_dec": bd}),
             "dl": _dl_folder(tmp_path / "trainer_0", "JumpReluAutoEncoder",
                              {"W_enc": W, "b_enc": b, "W_dec": W.T.contiguous(), "b_dec": bd,
                               "threshold": torch.full((20,), 0.05)}),
             "prisma": _prisma_folder(tmp_path / "prisma", {"d_in": c, "activation_fn_str": "relu",
                                                            "normalize_activations": "none"},
                                      {"W_enc": W, "b_enc": b, "W_dec": W.T.contiguous(), "b_dec": bd}, "weights")}
    classes, normalize = _fake_overcomplete(monkeypatch)
    oc = classes["TopKSAE"]()
    oc.encoder = classes["MLPEncoder"]()
    oc.encoder.final_block, oc.encoder.residual = torch.nn.Sequential(torch.nn.Linear(c, 20)), False
    oc.top_k = 4
    torch.save(oc, tmp_path / "oc.pth")
    specs["oc"] = tmp_path / "oc.pth"
    out = tmp_path / "a.h5"
    invoke("record", probe_dir, "--model", "timm:test_vit", "--weights", "none", "--layers", "blocks.0",
           *[a for name, p in specs.items() for a in ("--directions", f"blocks.0@{name}={p}")], "-o", out,
           "--device", "cpu")
    acts = A.read_activations(out)
    for name, p in specs.items():
        with torch.inference_mode():
            want = D.load(str(p), channels=c).module(tokens).amax(1)
        np.testing.assert_allclose(acts.layers[f"blocks.0@{name}"], want.numpy(), atol=1e-5, rtol=1e-5)
        info = json.loads(acts.layer_attrs[f"blocks.0@{name}"]["directions"])      # how the entry was made
        assert info["library"] == {"saev": "saev", "dl": "dictionary_learning", "prisma": "vit_prisma",
                                   "oc": "overcomplete"}[name]


@pytest.mark.parametrize("case", ["saev", "AutoEncoder", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK",
                                  "prisma"])
def test_ablate_moves_each_librarys_latents_by_exactly_the_shift_along_its_decoder(case, tmp_path):
    """Moving the layer's activation by Δ·decoder[k] moves latent k's pre-activation (a gated SAE's magnitude path)
    by exactly Δ, whatever library saved the SAE."""
    from dissect.sae_files import read_sae

    if case == "saev":
        path = _saev_file(tmp_path / "s" / "sae.pt", {"d_vit": D_IN, "exp_factor": 1.5}, _saev_sd(7))
    elif case == "prisma":
        sd = {"W_enc": _rand(D_IN, D_SAE, seed=71), "b_enc": _rand(D_SAE, seed=72), "W_dec": _rand(D_SAE, D_IN, seed=73),
              "b_dec": _rand(D_IN, seed=74)}
        path = _prisma_folder(tmp_path / "p", {"activation_fn_str": "relu", "normalize_activations": "none"}, sd,
                              "weights")
    else:
        sd, _, trainer = _dl_cases()[case]
        path = _dl_folder(tmp_path / "t", case, sd, **trainer)
    sae = read_sae(path)
    dec = D.decoder("sae", str(path)).double()
    x = _x().double()
    W, scale = sae.W_enc.double(), (sae.r_mag.double().exp() if sae.r_mag is not None else torch.ones(D_SAE))
    for k in (0, 4, 11):
        moved = ((x + 0.3 * dec[k]) - x) @ W * scale                     # the linear part of the pre-activation
        np.testing.assert_allclose(moved[..., k].numpy(), 0.3, atol=1e-6)


# -- SAEs on the Hugging Face hub ------------------------------------------------------------------------------------

def test_hub_saes_download_the_folder_or_file_named_and_offline_misses_say_what_to_fetch(tmp_path, monkeypatch):
    """`--directions LAYER=hf:ORG/REPO[/PATH][@REV]`: the download stubbed with a local copy (nothing leaves this
    machine): a SAELens folder inside a repository, a repository of one saev sae.pt, a dictionary_learning ae.pt with
    its config; the revision is passed on; the spec is recorded. Offline and not in the cache: one line naming
    `hf download` and the flag for the local copy."""
    import shutil

    import huggingface_hub

    from dissect.errors import ModelError

    hub = tmp_path / "hub"
    sd = {"W_enc": _rand(D_IN, D_SAE, seed=81), "b_enc": _rand(D_SAE, seed=82), "b_dec": _rand(D_IN, seed=83),
          "W_dec": _rand(D_SAE, D_IN, seed=84)}
    _saelens(hub / "org+saes" / "blocks.3", {"architecture": "standard"}, sd)
    _saev_file(hub / "org+saev" / "sae.pt", {"d_vit": D_IN, "exp_factor": 1.5}, _saev_sd(8))
    (hub / "org+saev" / "README.md").write_text("a saev SAE")
    dl_sd, _, _ = _dl_cases()["AutoEncoder"]
    _dl_folder(hub / "org+dl" / "trainer_0", "AutoEncoder", dl_sd)
    calls = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, **_):
        calls.append((repo_id, revision, allow_patterns))
        src = hub / repo_id.replace("/", "+")
        if not src.exists():
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the local cache and outgoing traffic is off")
        dst = tmp_path / "cache" / repo_id.replace("/", "+")
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x = _x()
    ds = D.load("hf:org/saes/blocks.3@v1", channels=D_IN)
    assert calls[-1][:2] == ("org/saes", "v1") and "blocks.3/*" in calls[-1][2]
    assert ds.spec == "hf:org/saes/blocks.3@v1" and ds.describe["hub"] == ds.spec and ds.describe["architecture"] == "standard"
    with torch.inference_mode():
        want = relu((x.double() - sd["b_dec"].double()) @ sd["W_enc"].double() + sd["b_enc"].double())
        _close(ds.module(x).double(), want)
        assert D.load("hf:org/saev", channels=D_IN).describe["library"] == "saev"      # the repository's one SAE file
        assert D.load("hf:org/dl/trainer_0/ae.pt", channels=D_IN).describe["dict_class"] == "AutoEncoder"
    assert "trainer_0/config.json" in calls[-1][2]
    assert D.decoder("sae", "hf:org/saes/blocks.3@v1").shape == (D_SAE, D_IN)
    assert D.parse_requests(["blocks.3=hf:org/saes/blocks.3"])[0].entry == "blocks.3@sae"
    with pytest.raises(ModelError, match="cannot download the SAE hf:org/missing") as e:
        D.load("hf:org/missing/blocks.3", channels=D_IN)
    assert "hf download org/missing --include 'blocks.3/*' --local-dir DIR" in e.value.hint
    assert "LAYER=DIR/blocks.3" in e.value.hint


def test_a_hub_repository_without_a_path_fetches_its_top_level_files_only(tmp_path, monkeypatch):
    """Online, `hf:ORG/REPO` lists the repository and downloads its top-level files only (a release of many SAEs in
    folders is not fetched whole); offline, a folder missing from the cache names `hf download` with --include."""
    import shutil

    import huggingface_hub

    import dissect.runtime
    from dissect.errors import ModelError, UsageError

    hub = tmp_path / "hub"
    _saev_file(hub / "org+saev" / "sae.pt", {"d_vit": D_IN, "exp_factor": 1.5}, _saev_sd(9))
    (hub / "org+saev" / "README.md").write_text("x")
    _saelens(hub / "org+release" / "blocks.3", {"architecture": "standard"},
             {"W_enc": _rand(D_IN, D_SAE, seed=1), "b_enc": _rand(D_SAE, seed=2), "b_dec": _rand(D_IN, seed=3)})
    (hub / "org+release" / "README.md").write_text("x")
    calls = []

    def listing(self, repo_id, revision=None, **_):
        root = hub / repo_id.replace("/", "+")
        return [str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()]

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, **_):
        calls.append(allow_patterns)
        src, dst = hub / repo_id.replace("/", "+"), tmp_path / "cache" / repo_id.replace("/", "+")
        for f in src.rglob("*"):
            rel = str(f.relative_to(src))
            if f.is_file() and (allow_patterns is None or rel in allow_patterns
                                or any(rel.startswith(p[:-1]) for p in allow_patterns if p.endswith("/*"))):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / rel)
        dst.mkdir(parents=True, exist_ok=True)
        return str(dst)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(dissect.runtime, "hub_offline", lambda *a, **k: False)
    assert D.load("hf:org/saev", channels=D_IN).describe["library"] == "saev"
    assert sorted(calls[-1]) == ["README.md", "sae.pt"]
    with pytest.raises(UsageError, match="not an SAE dissect reads"):
        D.load("hf:org/release", channels=D_IN)
    assert calls[-1] == ["README.md"]                               # blocks.3/ was not fetched
    monkeypatch.setattr(dissect.runtime, "hub_offline", lambda *a, **k: True)
    with pytest.raises(ModelError, match="not in the local cache") as e:
        D.load("hf:org/release/blocks.9", channels=D_IN)
    assert "--include 'blocks.9/*'" in e.value.hint


def test_ablate_refuses_a_direction_set_whose_weights_changed_since_it_was_recorded(tmp_path):
    from dissect.errors import MismatchError

    np.save(tmp_path / "d.npy", np.eye(3, D_IN, dtype=np.float32))
    recorded = D.load(str(tmp_path / "d.npy")).fingerprint
    assert D.decoder("matrix", str(tmp_path / "d.npy"), recorded).shape == (3, D_IN)
    np.save(tmp_path / "d.npy", 2 * np.eye(3, D_IN, dtype=np.float32))
    with pytest.raises(MismatchError, match="not the one the activations were recorded with"):
        D.decoder("matrix", str(tmp_path / "d.npy"), recorded)
