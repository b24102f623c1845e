"""Sparse autoencoders as each library saves them, read into one ``SAEWeights``: what ``--directions LAYER=PATH``
encodes with and what ``evaluate ablate`` moves along.

Told apart by what is on disk, not by the file name:

* SAELens: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (standard, gated, jumprelu, topk; batchtopk and
  matryoshka SAEs are saved as jumprelu; transcoders encode like SAEs, but their decoder writes to another layer);
* saev: one file, a JSON header line then ``torch.save(state_dict)`` (0.1.0: ``relu((x - b_dec) W_enc + b_enc)``;
  later schemas: no ``b_dec`` subtraction, TopK of the raw pre-activations, BatchTopK's threshold);
* dictionary_learning: ``ae.pt`` (a state dict) with its ``config.json`` (``{"trainer": {"dict_class": ...}}``):
  AutoEncoder (decoder columns normalised as ``load_dictionary`` does), GatedAutoEncoder, AutoEncoderNew,
  JumpReluAutoEncoder, AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE; the class is read from the keys where
  the config's ``dict_class`` does not fit them;
* Overcomplete: ``torch.save(model)`` (the library has no save function; a bare state dict cannot say which SAE it
  was): SAE, TopKSAE, BatchTopKSAE (its running threshold), JumpSAE and their archetypal variants, with MLP encoders
  (hidden blocks, LayerNorm or BatchNorm); QSAE, MpSAE, OMPSAE and attention or ResNet encoders are refused by name;
* ViT-Prisma: ``config.json`` beside ``weights.pt`` / ``n_images_*.pt`` (a state dict, or ``save_model``'s
  ``{"cfg", "state_dict"}``): standard and gated SAEs and transcoders, its normalisations and activations.

Every reader checks shapes and names what it lacks in one line; nothing another library pickled is run
(``artifacts.torch_pickle``). ``hf:ORG/REPO[/PATH][@REVISION]`` is an SAE on the Hugging Face hub (``sae_hub``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UsageError, first_line

SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
#: The encodes ``directions.SAE_ENCODES`` implements and its input normalisations (``directions.SAE_NORMALIZERS``).
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
NORMALIZERS = ("none", "constant_norm_rescale", "layer_norm")


@dataclass
class SAEWeights:
    """One SAE's encoder (and decoder), whatever library saved it.

    latents = encode(pre) with pre = norm(x) [− b_dec] · W_enc + b_enc (or ``pre_module(x)``: an MLP encoder), and
    encode one of ``ARCHITECTURES``: ``standard`` act(pre); ``topk`` the k largest (of ``relu(pre)``, or of ``pre``
    itself where ``act`` is ``none``); ``jumprelu`` relu(pre)·[pre > threshold] (``>=`` where ``threshold_ge``; a
    scalar threshold is BatchTopK's); ``gated`` [pre > 0]·relu(exp(r_mag)·(x − b_dec)·W_enc + b_mag)."""

    library: str
    W_enc: Any                       # [d_in, d_sae] (None with a pre_module)
    b_enc: Any                       # [d_sae]
    b_dec: Any                       # [d_in]: subtracted from the input where apply_b_dec
    arch: str = "standard"
    act: str = "relu"                # relu, tanh-relu, none (topk of the raw pre-activations)
    apply_b_dec: bool = True
    k: int | None = None
    threshold: Any = None            # [d_sae] or a 0-d tensor
    threshold_ge: bool = False
    norm: str = "none"
    dec_norm: Any = None             # SAELens topk rescale_acts_by_decoder_norm
    r_mag: Any = None                # gated
    b_mag: Any = None
    pre_module: Any = None           # an MLP encoder (Overcomplete), mapping [..., d_in] to pre-activations
    W_dec: Any = None                # [d_sae, d_in] decoder rows, where they write back to the same layer
    no_decoder: str = ""             # why there is none to move along (a transcoder's writes to another layer)
    d_in: int = 0
    d_sae: int = 0
    describe: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Recognising a path
# ---------------------------------------------------------------------------

def _json_object(p: Path) -> dict | None:
    """A JSON file's object, or None where it is missing, unreadable or not an object (telling formats apart)."""
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _json(p: Path) -> dict:
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {p}: {e}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{p} is not a JSON object")
    return obj


def _saev_header(p: Path) -> dict | None:
    """saev's JSON first line, or None where the file does not start with one."""
    try:
        with open(p, "rb") as f:
            if f.read(1) != b"{":
                return None
            f.seek(0)
            line = f.readline(1 << 20)
        obj = json.loads(line)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_prisma(cfg: dict | None) -> bool:
    """Whether a config.json's object is ViT-Prisma's (its runner config)."""
    return cfg is not None and "d_in" in cfg and ("expansion_factor" in cfg or "hook_point_layer" in cfg)


def _prisma_weights(folder: Path) -> Path | None:
    for name in ("weights.pt", *sorted(p.name for p in folder.glob("n_images_*.pt"))):
        if (folder / name).is_file():
            return folder / name
    return None


def kind_of(path: Path) -> str | None:
    """Which library saved the SAE at ``path`` (a key of ``READERS``), or None where it is none of them."""
    if path.is_dir():
        if (path / SAELENS_CONFIG).is_file():
            return "saelens"
        if (path / "ae.pt").is_file() and (path / "config.json").is_file():
            return "dictionary_learning"
        if _is_prisma(_json_object(path / "config.json")):
            return "vit_prisma"
        return None
    if not path.is_file():
        return None
    if _saev_header(path) is not None:
        return "saev"
    cfg = _json_object(path.parent / "config.json")
    if cfg is not None:
        if "trainer" in cfg and path.name == "ae.pt":
            return "dictionary_learning"
        if _is_prisma(cfg) and (path.name == "weights.pt" or
                                                        (path.name.startswith("n_images_") and path.suffix == ".pt")):
            return "vit_prisma"
    if path.suffix.lower() in (".pt", ".pth") and _pickles_overcomplete(path):
        return "overcomplete"
    return None


def _pickles_overcomplete(p: Path) -> bool:
    """Whether a torch.save zip names an Overcomplete class (read from its pickle's text, nothing loaded)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return name is not None and b"overcomplete.sae" in z.read(name)
    except Exception:          # not a zip torch reads (an encrypted zip, another compression): not Overcomplete's
        return False


def _single_sae_file(folder: Path) -> tuple[Path, str] | None:
    """The one file a folder holds that some library's reader knows, and its kind (a hub repository of one saev
    sae.pt)."""
    found = [(f, kind) for f in sorted(folder.iterdir()) if f.is_file() and (kind := kind_of(f)) is not None]
    return found[0] if len(found) == 1 else None


def read_sae(path: str | Path) -> SAEWeights:
    """The SAE at ``path``, read by the reader of the library that saved it (see the module docstring); a folder
    that holds a single SAE file is read as that file."""
    p = Path(path)
    kind = kind_of(p)
    if kind is None and p.is_dir() and (single := _single_sae_file(p)) is not None:
        p, kind = single
    if kind is None:
        raise UsageError(f"{p} is not an SAE dissect reads",
                         hint="give a SAELens folder (cfg.json), a saev file, a dictionary_learning ae.pt with its "
                              "config.json, an Overcomplete torch.save(model) file or a ViT-Prisma folder; other "
                              "formats: --directions LAYER=file.py:function")
    sae = READERS[kind](p)
    _check(sae, p)
    return sae


# ---------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------

def _f32(t):
    import torch

    return t.detach().to(torch.float32).contiguous()


def _need(sd: dict, names: list[str], where: Path) -> None:
    missing = [n for n in names if n not in sd]
    if missing:
        raise ArtifactError(f"{where} has no {', '.join(missing)}", hint=f"it holds: {', '.join(sorted(sd))[:300]}")


def _check(sae: SAEWeights, p: Path) -> None:
    """Shapes that fit each other, finite weights, a known architecture and normalisation."""
    import torch

    if sae.arch not in ARCHITECTURES:
        raise UsageError(f"{p}: SAE architecture {sae.arch!r} is not supported",
                         hint=f"supported: {', '.join(ARCHITECTURES)}; wrap others as --directions LAYER=file.py:function")
    if sae.norm not in NORMALIZERS:
        raise UsageError(f"{p}: input normalisation {sae.norm!r} is not supported", hint=f"supported: {', '.join(NORMALIZERS)}")
    if sae.W_enc is not None:
        if sae.W_enc.ndim != 2:
            raise ArtifactError(f"{p}: the encoder is {tuple(sae.W_enc.shape)}, not [d_in, d_sae]")
        sae.d_in, sae.d_sae = (int(s) for s in sae.W_enc.shape)
    want = {"b_enc": (sae.d_sae,), "b_dec": (sae.d_in,), "r_mag": (sae.d_sae,), "b_mag": (sae.d_sae,),
            "dec_norm": (sae.d_sae,), "W_dec": (sae.d_sae, sae.d_in)}
    for name, shape in want.items():
        t = getattr(sae, name)
        if t is not None and tuple(t.shape) != shape:
            raise ArtifactError(f"{p}: {name} is {tuple(t.shape)}, but the encoder ({sae.d_in} -> {sae.d_sae}) needs {shape}")
    if sae.threshold is not None and tuple(sae.threshold.shape) not in ((), (sae.d_sae,)):
        raise ArtifactError(f"{p}: threshold is {tuple(sae.threshold.shape)}, not one per latent ({sae.d_sae}) or one for all")
    if sae.arch == "topk":
        if isinstance(sae.k, bool) or not isinstance(sae.k, (int, float)) or not math.isfinite(sae.k) \
                or int(sae.k) < 1 or int(sae.k) != sae.k:
            raise ArtifactError(f"{p}: a topk SAE needs a whole k >= 1 (its config says {sae.k!r})")
        sae.k = min(int(sae.k), sae.d_sae)
    for name in ("W_enc", "b_enc", "b_dec", "threshold", "r_mag", "b_mag", "W_dec"):
        t = getattr(sae, name)
        if t is not None and not torch.isfinite(t).all():
            raise ArtifactError(f"{p}: {name} holds NaN or Inf")


# ---------------------------------------------------------------------------
# SAELens
# ---------------------------------------------------------------------------

def _cfg_bool(cfg: dict, name: str, default: bool, where: Path) -> bool:
    v = cfg.get(name, default)
    if not isinstance(v, bool):
        raise ArtifactError(f"{where}: {name} is {v!r}, not true or false")
    return v


def read_saelens(folder: Path) -> SAEWeights:
    """A SAELens folder: ``cfg.json`` and ``sae_weights.safetensors``."""
    cfg_path, w_path = folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS
    if not w_path.is_file():
        raise UsageError(f"SAE folder {folder} has no {SAELENS_WEIGHTS}",
                         hint=f"an SAE in the SAELens layout holds {SAELENS_CONFIG} and {SAELENS_WEIGHTS} "
                              "(SAE.save_model writes them); other formats: --directions LAYER=file.py:function")
    cfg = _json(cfg_path)
    arch = str(cfg.get("architecture", "standard")).lower()
    act = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "topk" if arch == "topk" else "relu"))).lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ArtifactError(f"{cfg_path}: activation_fn_kwargs is {type(kwargs).__name__}, not an object")
    for name in ("d_in", "d_sae"):
        if name in cfg and (isinstance(cfg[name], bool) or not isinstance(cfg[name], int)):
            raise ArtifactError(f"{cfg_path}: {name} is {cfg[name]!r}, not a whole number")
    transcoder = arch in ("transcoder", "skip_transcoder", "jumprelu_transcoder")
    if transcoder:      # encodes its input like an SAE (no b_dec: it is the output's); decodes into another layer
        arch = "jumprelu" if arch == "jumprelu_transcoder" else "standard"
    apply_b_dec = False if transcoder else _cfg_bool(cfg, "apply_b_dec_to_input", True, cfg_path)
    if act == "topk" and arch == "standard":
        arch = "topk"  # older SAELens: a standard SAE with a topk activation
    if arch not in ARCHITECTURES:
        raise UsageError(f"{folder}: SAE architecture {arch!r} is not supported",
                         hint=f"supported: {', '.join(ARCHITECTURES)} and transcoders; wrap others as "
                              "--directions LAYER=file.py:function")
    if arch != "topk" and act not in ("relu", "tanh-relu"):
        raise UsageError(f"{folder}: activation {act!r} is not supported", hint="supported: relu, tanh-relu, topk")
    rescale = _cfg_bool(cfg, "rescale_acts_by_decoder_norm", False, cfg_path)
    if rescale and arch != "topk":
        raise UsageError(f"{folder}: rescale_acts_by_decoder_norm is defined for topk SAEs only, not {arch}",
                         hint="fold the decoder norms into W_enc and b_enc, or wrap it as --directions LAYER=file.py:function")
    norm = str(cfg.get("normalize_activations", "none") or "none").lower()
    if norm not in NORMALIZERS:
        raise UsageError(f"{folder}: normalize_activations {norm!r} is not supported",
                         hint="supported: none, constant_norm_rescale, layer_norm; fold a dataset-wide scaling factor "
                              "into W_enc and b_dec, or wrap the SAE as file.py:function")
    try:
        from safetensors.torch import load_file

        sd = load_file(str(w_path))
    except Exception as e:
        raise ArtifactError(f"cannot read {w_path}: {first_line(e)}") from None
    b_in = "b_gate" if arch == "gated" else "b_enc"
    _need(sd, ["W_enc", b_in] + (["b_dec"] if not transcoder else [])
          + (["threshold"] if arch == "jumprelu" and "log_threshold" not in sd else [])
          + (["r_mag", "b_mag"] if arch == "gated" else []) + (["W_dec"] if rescale else []), w_path)
    import torch

    W_enc = _f32(sd["W_enc"])
    threshold = _f32(sd["threshold"]) if "threshold" in sd else (
        torch.exp(_f32(sd["log_threshold"])) if arch == "jumprelu" else None)
    W_dec = _f32(sd["W_dec"]) if "W_dec" in sd else None
    b_dec = _f32(sd["b_dec"]) if not transcoder else torch.zeros(W_enc.shape[0])
    for name, want in (("d_in", W_enc.shape[0]), ("d_sae", W_enc.shape[-1])):
        if name in cfg and int(cfg[name]) != int(want):
            raise ArtifactError(f"{folder}: {SAELENS_CONFIG} says {name} = {cfg[name]}, but W_enc is {tuple(W_enc.shape)}")
    if rescale and W_dec is not None and tuple(W_dec.shape) != (W_enc.shape[1], W_enc.shape[0]):
        raise ArtifactError(f"{w_path}: W_dec is {tuple(W_dec.shape)}, but W_enc {tuple(W_enc.shape)} needs "
                            f"{(W_enc.shape[1], W_enc.shape[0])}")
    k_top = cfg.get("k", kwargs.get("k")) if arch == "topk" else None
    describe = {"folder": str(folder.resolve()), "architecture": arch, "activation": act, "k": k_top,
                "apply_b_dec_to_input": apply_b_dec, "normalize_activations": norm, "d_in": int(W_enc.shape[0]),
                "d_sae": int(W_enc.shape[1]), "hook_name": cfg.get("hook_name", cfg.get("hook_point", "")),
                "model_name": cfg.get("model_name", "")}
    if rescale:  # only when set: the fingerprints of every other SAE stay what they were
        describe["rescale_acts_by_decoder_norm"] = True
    if norm == "layer_norm":  # entries recorded before it followed SAELens (a biased variance) are not reused
        describe["layer_norm_std"] = "sample, + 1e-5"
    if transcoder:
        describe["transcoder"] = str(cfg.get("architecture"))
    return SAEWeights("saelens", W_enc, _f32(sd[b_in]), b_dec, arch, act, apply_b_dec, k_top, threshold, norm=norm,
                      dec_norm=W_dec.norm(dim=-1) if rescale else None,
                      r_mag=_f32(sd["r_mag"]) if arch == "gated" else None,
                      b_mag=_f32(sd["b_mag"]) if arch == "gated" else None,
                      W_dec=None if transcoder else W_dec,
                      no_decoder=f"it is a {cfg.get('architecture')}: its decoder writes to "
                                 f"{cfg.get('hook_name_out') or 'another layer'}" if transcoder else "",
                      describe=describe)


# ---------------------------------------------------------------------------
# saev
# ---------------------------------------------------------------------------

def _torch_state(p: Path, offset: int = 0) -> dict:
    """A state dict saved with torch.save (from ``offset`` bytes on), tensors only."""
    import io

    import torch

    try:
        with open(p, "rb") as f:
            f.seek(offset)
            obj = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:
        first = first_line(e)
        raise ArtifactError(f"cannot read {p}: {first}", hint="give the file as the library saved it") from None
    if isinstance(obj, dict) and isinstance(obj.get("ae"), dict) and "step" in obj:
        obj = obj["ae"]                        # dictionary_learning's backup checkpoint: the state dict inside
    if not isinstance(obj, dict):
        raise ArtifactError(f"{p} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_saev(p: Path) -> SAEWeights:
    """saev's file: a JSON header line, then the state dict (W_enc [d, d_sae], b_enc, W_dec, b_dec)."""
    header = _saev_header(p) or {}
    with open(p, "rb") as f:
        offset = len(f.readline(1 << 20))
    sd = _torch_state(p, offset)
    _need(sd, ["W_enc", "b_enc", "b_dec"], p)
    schema = header.get("schema")
    cfg = header.get("cfg", header) if schema is not None else header
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{p}: its header's cfg is {type(cfg).__name__}, not an object",
                            hint="give the file as saev's dump wrote it")
    activation = cfg.get("activation")
    cls = (activation.get("cls") if isinstance(activation, dict) else activation) or "Relu"
    params = activation.get("params") if isinstance(activation, dict) else None
    params = params if isinstance(params, dict) else {}
    arch, act, k, threshold = "standard", "relu", None, None
    top_k = params.get("top_k", cfg.get("top_k"))
    if str(cls).lower() == "topk" or (str(cls).lower() == "batchtopk" and "activation.threshold" not in sd):
        arch, act, k = "topk", "none", top_k      # the raw top k, no ReLU (BatchTopK before schema 4: per sample)
    elif str(cls).lower() == "batchtopk":
        arch, threshold = "jumprelu", _f32(sd["activation.threshold"]).reshape(())
    elif str(cls).lower() != "relu":
        raise UsageError(f"{p}: saev activation {cls!r} is not supported", hint="supported: Relu, TopK, BatchTopK")
    apply_b_dec = schema is None          # 0.1.0 encodes x - b_dec; every versioned schema encodes x itself
    return SAEWeights("saev", _f32(sd["W_enc"]), _f32(sd["b_enc"]), _f32(sd["b_dec"]), arch, act, apply_b_dec, k,
                      threshold, W_dec=_f32(sd["W_dec"]) if "W_dec" in sd else None,
                      describe={"library": "saev", "file": str(p.resolve()), "schema": schema, "activation": str(cls),
                                "k": k, "apply_b_dec_to_input": apply_b_dec})


# ---------------------------------------------------------------------------
# dictionary_learning
# ---------------------------------------------------------------------------

#: dictionary_learning's classes by the keys of their state dicts (the config's dict_class can be wrong: the April
#: update's trainer writes "AutoEncoder" for an AutoEncoderNew).
_DL_KEYS = {
    "GatedAutoEncoder": {"r_mag", "gate_bias", "mag_bias", "decoder_bias"},
    "MatryoshkaBatchTopKSAE": {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"},
    "JumpReluAutoEncoder": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "AutoEncoderTopK": {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"},
    "AutoEncoderNew": {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"},
    "AutoEncoder": {"encoder.weight", "encoder.bias", "decoder.weight", "bias"},
}


def _dl_class(sd: dict, said: str, p: Path) -> str:
    if said in ("AutoEncoderTopK", "BatchTopKSAE") and _DL_KEYS["AutoEncoderTopK"] <= set(sd):
        return said                                     # the same keys: only the config tells them apart
    if said in _DL_KEYS and _DL_KEYS[said] <= set(sd):
        return said
    fits = [c for c, keys in _DL_KEYS.items() if keys <= set(sd)]
    if not fits:
        raise UsageError(f"{p}: a dictionary_learning {said or 'dictionary'} whose keys fit none of its SAEs",
                         hint=f"it holds: {', '.join(sorted(sd))[:200]}; supported: {', '.join(_DL_KEYS)}, BatchTopKSAE")
    return fits[0]


def read_dictionary_learning(path: Path) -> SAEWeights:
    """``ae.pt`` and ``config.json`` of a dictionary_learning trainer folder (the folder or its ae.pt)."""
    import torch

    ae = path / "ae.pt" if path.is_dir() else path
    cfg = _json(ae.parent / "config.json")
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    sd = _torch_state(ae)
    cls = _dl_class(sd, str(trainer.get("dict_class", "")), ae)
    describe = {"library": "dictionary_learning", "file": str(ae.resolve()), "dict_class": cls,
                "trainer_class": trainer.get("trainer_class"), "layer": trainer.get("layer"),
                "model_name": trainer.get("lm_name")}
    zeros = lambda n: torch.zeros(n)  # noqa: E731
    if cls == "AutoEncoder":           # load_dictionary normalises the decoder's columns and scales the encoder to fit
        W, b, dec = _f32(sd["encoder.weight"]), _f32(sd["encoder.bias"]), _f32(sd["decoder.weight"])
        norms = dec.norm(dim=0)
        describe["decoder_normalised"] = True
        return SAEWeights("dictionary_learning", (W * norms[:, None]).T.contiguous(), b * norms, _f32(sd["bias"]),
                          W_dec=(dec / norms).T.contiguous(), describe=describe)
    if cls == "AutoEncoderNew":
        W = _f32(sd["encoder.weight"])
        return SAEWeights("dictionary_learning", W.T.contiguous(), _f32(sd["encoder.bias"]), zeros(W.shape[1]),
                          apply_b_dec=False, W_dec=_f32(sd["decoder.weight"]).T.contiguous(), describe=describe)
    if cls == "GatedAutoEncoder":
        W = _f32(sd["encoder.weight"])
        return SAEWeights("dictionary_learning", W.T.contiguous(), _f32(sd["gate_bias"]), _f32(sd["decoder_bias"]),
                          "gated", r_mag=_f32(sd["r_mag"]), b_mag=_f32(sd["mag_bias"]),
                          W_dec=_f32(sd["decoder.weight"]).T.contiguous(), describe=describe)
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):   # JumpReLU: no b_dec on the way in (the attribute
        threshold = _f32(sd["threshold"])                             # is not saved and defaults to False)
        return SAEWeights("dictionary_learning", _f32(sd["W_enc"]), _f32(sd["b_enc"]), _f32(sd["b_dec"]), "jumprelu",
                          apply_b_dec=cls != "JumpReluAutoEncoder", threshold=threshold.reshape(threshold.shape or ()),
                          W_dec=_f32(sd["W_dec"]), describe=describe)
    W = _f32(sd["encoder.weight"])                 # AutoEncoderTopK (per row) or BatchTopKSAE (its global threshold)
    common = dict(W_dec=_f32(sd["decoder.weight"]).T.contiguous(), describe=describe)
    if cls == "BatchTopKSAE":
        return SAEWeights("dictionary_learning", W.T.contiguous(), _f32(sd["encoder.bias"]), _f32(sd["b_dec"]),
                          "jumprelu", threshold=_f32(sd["threshold"]).reshape(()), **common)
    k = int(sd["k"].item()) if "k" in sd else trainer.get("k")
    describe["k"] = k
    return SAEWeights("dictionary_learning", W.T.contiguous(), _f32(sd["encoder.bias"]), _f32(sd["b_dec"]), "topk",
                      k=k, **common)


# ---------------------------------------------------------------------------
# Overcomplete
# ---------------------------------------------------------------------------

_OVERCOMPLETE_CODES = {"SAE": "standard", "TopKSAE": "topk", "RATopKSAE": "topk", "BatchTopKSAE": "jumprelu",
                       "JumpSAE": "jumprelu", "RAJumpSAE": "jumprelu"}


def _stub_modules(obj) -> dict:
    return dict(getattr(obj, "_modules", None) or {})


def _overcomplete_encoder(enc, p: Path):
    """The pre-activations of Overcomplete's MLPEncoder (hidden blocks Linear -> norm -> ReLU, with or without a
    residual, then Linear -> norm) as a torch module, and its [d_in, d_sae] matrix where it is one Linear."""
    import torch

    from .artifacts.torch_pickle import qualname

    name = qualname(enc).rsplit(".", 1)[-1]
    if name != "MLPEncoder":
        raise UsageError(f"{p}: Overcomplete's {name} encoder is not supported",
                         hint="supported: the linear and MLP encoders (linear, mlp_ln_*, mlp_bn_*); wrap others as "
                              "--directions LAYER=file.py:function")
    mods = _stub_modules(enc)
    blocks = list(_stub_modules(mods.get("mlp_blocks")).values()) if mods.get("mlp_blocks") is not None else []
    final = mods.get("final_block")
    if not isinstance(final, torch.nn.Module) or not all(isinstance(b, torch.nn.Module) for b in blocks):
        raise ArtifactError(f"{p}: its MLPEncoder holds no final_block of torch modules")
    for part in (final, *blocks):
        odd = next((m for m in _tree(part) if not isinstance(m, torch.nn.Module)), None)
        if odd is not None:
            raise UsageError(f"{p}: its encoder holds a {qualname(odd)}, a module of its own dissect does not run",
                             hint="wrap the SAE as --directions LAYER=file.py:function")
    residual = bool(getattr(enc, "residual", False))
    linear = [m for m in final.modules() if isinstance(m, torch.nn.Linear)]
    only_linear = not blocks and all(isinstance(m, (torch.nn.Linear, torch.nn.Identity, torch.nn.Sequential))
                                     for m in final.modules())
    return _MLP(blocks, final, residual).eval(), (linear[0] if only_linear and len(linear) == 1 else None)


def _tree(module):
    """Every module below ``module``, stubs included (a stub's own _modules are not followed: it is not run)."""
    out, todo = [], [module]
    while todo:
        m = todo.pop()
        out.append(m)
        if hasattr(m, "_modules") and not hasattr(m, "qualname"):
            todo.extend(v for v in m._modules.values() if v is not None)
    return out


class _MLP(__import__("torch").nn.Module):
    """Overcomplete's MLPEncoder forward, to its pre-activations (``pre_z``)."""

    def __init__(self, blocks, final, residual: bool):
        import torch

        super().__init__()
        self.blocks, self.final, self.residual = torch.nn.ModuleList(blocks), final, residual

    def forward(self, x):
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        for block in self.blocks:
            out = block(h)
            h = out + h if self.residual and out.shape == h.shape else out
        pre = self.final(h)
        return pre.reshape(*shape[:-1], pre.shape[-1])


def _overcomplete_dictionary(model, d_sae: int):
    """Decoder rows [c, d] as the library decodes (its l2-normalised atoms times exp(multiplier)), or None where the
    dictionary is of a kind not read here."""
    import torch

    from .artifacts.torch_pickle import qualname

    dic = _stub_modules(model).get("dictionary")
    if dic is None:
        return None
    fused = getattr(dic, "_fused_dictionary", None)
    if isinstance(fused, torch.Tensor) and fused.shape[0] == d_sae:
        return _f32(fused)
    params = {**(getattr(dic, "_parameters", None) or {}), **(getattr(dic, "_buffers", None) or {})}
    w, mult = params.get("_weights"), params.get("multiplier")
    if w is None or mult is None or not qualname(getattr(dic, "normalization", None)).endswith("normalize_l2"):
        return None
    w = _f32(w)
    return w / (w.norm(dim=-1, keepdim=True) + 1e-8) * torch.exp(_f32(mult))


def read_overcomplete(p: Path) -> SAEWeights:
    """An Overcomplete SAE saved whole with ``torch.save(model)`` (read without importing the library)."""
    import torch

    from .artifacts.torch_pickle import Stub, load_foreign, qualname

    model = load_foreign(p)
    if isinstance(model, dict):
        raise UsageError(f"{p} is a state dict: an Overcomplete state dict does not say which SAE it was "
                         "(SAE, TopKSAE and BatchTopKSAE share their keys) nor its top_k or threshold",
                         hint="save the model whole (torch.save(model, path)), as Overcomplete's own tests do")
    name = qualname(model).rsplit(".", 1)[-1]
    if not isinstance(model, Stub) or name not in _OVERCOMPLETE_CODES:
        raise UsageError(f"{p}: Overcomplete's {name} is not supported",
                         hint=f"supported: {', '.join(_OVERCOMPLETE_CODES)} (QSAE, MpSAE, OMPSAE encode by search or "
                              "quantisation); wrap others as --directions LAYER=file.py:function")
    pre_module, linear = _overcomplete_encoder(_stub_modules(model).get("encoder"), p)
    d_sae = int(linear.out_features) if linear is not None else None
    arch = _OVERCOMPLETE_CODES[name]
    threshold, k = None, None
    if name.endswith("TopKSAE") and name != "BatchTopKSAE":
        k = getattr(model, "top_k", None)
    elif name == "BatchTopKSAE":
        t = getattr(model, "running_threshold", None)
        if t is None:
            raise UsageError(f"{p}: this BatchTopKSAE has no running threshold (it never ran in training mode)",
                             hint="run one training batch, then eval() and save it, as the library needs to encode")
        threshold = _f32(torch.as_tensor(t)).reshape(())
    else:
        params = getattr(model, "_parameters", None) or {}
        if "thresholds" in params:
            threshold = torch.exp(_f32(params["thresholds"]))          # stored as logs
    d_in = _in_features(pre_module, p)
    try:
        with torch.inference_mode():
            probe = pre_module(torch.zeros(1, d_in))
    except Exception as e:
        raise ArtifactError(f"{p}: its encoder does not run on [1, {d_in}] inputs: {type(e).__name__}: "
                            f"{first_line(e, '', 160)}") from None
    d_sae = d_sae or int(probe.shape[-1])
    W_dec = _overcomplete_dictionary(model, d_sae)
    return SAEWeights("overcomplete", _f32(linear.weight).T.contiguous() if linear is not None else None,
                      _f32(linear.bias) if linear is not None and linear.bias is not None else torch.zeros(d_sae),
                      torch.zeros(d_in), arch, apply_b_dec=False, k=k, threshold=threshold,
                      threshold_ge=True,             # both keep a code equal to the threshold
                      pre_module=None if linear is not None else pre_module,
                      W_dec=W_dec if linear is not None else None,
                      no_decoder="" if linear is not None else "its encoder is an MLP: no single direction moves a latent",
                      d_in=d_in, d_sae=d_sae,
                      describe={"library": "overcomplete", "file": str(p.resolve()), "class": name, "k": k,
                                "encoder": "linear" if linear is not None else "mlp"})


def _in_features(module, p: Path) -> int:
    import torch

    first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    if first is None:
        raise ArtifactError(f"{p}: its encoder has no Linear layer")
    return int(first.in_features)


# ---------------------------------------------------------------------------
# ViT-Prisma
# ---------------------------------------------------------------------------

def read_vit_prisma(path: Path) -> SAEWeights:
    """A ViT-Prisma SAE: ``config.json`` beside ``weights.pt`` or ``n_images_*.pt`` (a state dict, or save_model's
    ``{"cfg", "state_dict"}``)."""
    from .artifacts.torch_pickle import load_foreign

    folder = path if path.is_dir() else path.parent
    weights = _prisma_weights(folder) if path.is_dir() else path
    if weights is None:
        raise UsageError(f"ViT-Prisma folder {folder} has no weights.pt or n_images_*.pt",
                         hint="download the SAE's weights file beside its config.json")
    cfg = {k: (v.get("value") if isinstance(v, dict) and "__type__" in v else v) for k, v in _json(folder / "config.json").items()}
    said = str(cfg.get("architecture", "standard")).lower()
    if said not in ("standard", "gated"):
        raise UsageError(f"{folder}: ViT-Prisma architecture {said!r} is not supported",
                         hint="supported: standard, gated (and transcoders); wrap others as file.py:function")
    obj = load_foreign(weights)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ArtifactError(f"{weights} holds no state dict")
    sd = {str(k): v for k, v in sd.items() if hasattr(v, "shape")}
    transcoder = bool(cfg.get("is_transcoder")) or "b_dec_out" in sd
    gated = said == "gated" or "r_mag" in sd
    _need(sd, ["W_enc", "b_gate" if gated else "b_enc", "b_dec"] + (["r_mag", "b_mag"] if gated else []), weights)
    act = str(cfg.get("activation_fn_str", "relu")).lower()           # VisionModelSAERunnerConfig's default
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if act not in ("relu", "tanh-relu", "topk"):
        raise UsageError(f"{folder}: activation {act!r} is not supported", hint="supported: relu, tanh-relu, topk")
    norm = str(cfg.get("normalize_activations", "layer_norm") or "none").lower()
    norm = norm if norm in ("layer_norm", "constant_norm_rescale") else "none"        # its others are the identity
    arch = "gated" if gated else ("topk" if act == "topk" else "standard")
    k = kwargs.get("k") if act == "topk" and isinstance(kwargs, dict) else None
    W_dec = None if transcoder else (_f32(sd["W_dec"]) if "W_dec" in sd else None)
    return SAEWeights("vit_prisma", _f32(sd["W_enc"]), _f32(sd["b_gate" if gated else "b_enc"]), _f32(sd["b_dec"]),
                      arch, "relu" if act == "topk" else act, True, k, norm=norm,
                      r_mag=_f32(sd["r_mag"]) if gated else None, b_mag=_f32(sd["b_mag"]) if gated else None,
                      W_dec=W_dec, no_decoder="it is a transcoder: its decoder writes to another layer" if transcoder else "",
                      describe={"library": "vit_prisma", "file": str(weights.resolve()), "architecture": arch,
                                "activation": act, "k": k, "normalize_activations": norm, "transcoder": transcoder,
                                "hook_point_layer": cfg.get("hook_point_layer"), "layer_subtype": cfg.get("layer_subtype")})


READERS = {"saelens": read_saelens, "saev": read_saev, "dictionary_learning": read_dictionary_learning,
           "overcomplete": read_overcomplete, "vit_prisma": read_vit_prisma}
