"""Unit sets that are not neurons: directions, SAE latents and learned dictionaries of a layer.

``--directions LAYER=SPEC`` (``LAYER@NAME=SPEC`` to name the entry) turns a layer's
C-dimensional channel space into K new units, recorded as their own layer entry
``LAYER@NAME`` of activations.h5 and then labelled, composed, explained and evaluated
like any layer. SPEC is one of

* a matrix file of shape [K, C] (``.npy``, ``.pt``/``.pth`` read with
  ``weights_only``, ``.safetensors`` with one 2-D tensor or a ``directions`` tensor,
  or ``FILE#key`` for a named one): unit k = activation · direction_kᵀ;
* a sparse-autoencoder folder in the SAELens layout (``cfg.json`` and
  ``sae_weights.safetensors`` with ``W_enc`` [d_in, d_sae], ``b_enc``, ``b_dec``,
  ``W_dec`` and, for JumpReLU, ``threshold``): unit k = latent k of the SAE's encoder
  (architectures ``standard``, ``topk``, ``jumprelu``; ``apply_b_dec_to_input``;
  activation ``relu``, ``tanh-relu`` or ``topk`` with its ``k``; input normalisation
  ``none``, ``constant_norm_rescale`` or ``layer_norm``);
* ``file.py:function`` returning a ``torch.nn.Module`` that maps [..., C] to [..., K]
  (any other format: ViT-Prisma's and saev's checkpoints, a probe with a non-linearity).

The map is applied to every spatial position or token of the layer's output before
the summary over positions (an SAE encodes tokens: mean-then-encode is not
encode-then-mean). The default summary of an SAE is ``max`` (what SAE papers show as
top images); of a matrix or module, the layer's own ``--summary``.

Every set has a fingerprint of what it computes (its weights, configuration, code), so
an activations file never mixes latents of two SAEs under one name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError, DissectError, UsageError, first_line

KINDS = ("matrix", "sae", "module")
#: Summary of the latents over positions: "auto" is max for SAEs, the layer's own summary otherwise.
DIRECTION_SUMMARIES = ("auto", "mean", "max", "cls")
DTYPES = ("float32", "float16")
MATRIX_SUFFIXES = (".npy", ".pt", ".pth", ".bin", ".safetensors")
#: Elements of the [rows, positions, K] latent block encoded at once (bounds the hook's memory).
ENCODE_BLOCK = 1 << 24
#: ``LAYER@NAME``: the name of a direction entry, the units a set of directions defines on LAYER.
ENTRY_SEPARATOR = "@"


def entry_name(layer: str, name: str) -> str:
    """The name a direction set ``name`` on ``layer`` is stored and labelled under."""
    return f"{layer}{ENTRY_SEPARATOR}{name}"


def is_entry(name: str) -> bool:
    """Whether a stored layer name is a direction entry (``LAYER@NAME``), not a layer of the model."""
    return ENTRY_SEPARATOR in name


@dataclass
class DirectionRequest:
    """One ``--directions`` item: the layer, the entry's name and the spec it loads from."""

    layer: str
    name: str
    spec: str

    @property
    def entry(self) -> str:
        return entry_name(self.layer, self.name)


@dataclass(frozen=True)
class DirectionsOptions:
    """``--directions`` (items ``LAYER=SPEC``), ``--directions-summary`` and ``--directions-dtype``, as the CLI gives them."""

    items: tuple[str, ...] = ()
    summary: str = "auto"
    dtype: str = "float32"

    def __post_init__(self):
        if self.summary not in DIRECTION_SUMMARIES:
            raise UsageError(f"unknown --directions-summary {self.summary!r}", hint=f"use one of {', '.join(DIRECTION_SUMMARIES)}")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown --directions-dtype {self.dtype!r}", hint=f"use one of {', '.join(DTYPES)}")

    @classmethod
    def of(cls, value: "DirectionsOptions | list[str] | tuple[str, ...] | None") -> "DirectionsOptions":
        if isinstance(value, cls):
            return value
        return cls(tuple(value or ()))

    def requests(self) -> list["DirectionRequest"]:
        return parse_requests(list(self.items))


@dataclass
class UnitEntry:
    """A direction set as recorded: on ``layer``, summarised with ``summary``, stored as ``dtype``."""

    layer: str
    set: "DirectionSet"
    summary: str
    dtype: str = "float32"


@dataclass
class DirectionSet:
    """K units defined on a layer's C channels: ``module`` maps [..., C] to [..., K]."""

    kind: str
    spec: str
    module: Any
    k: int
    c: int
    fingerprint: str
    describe: dict[str, Any] = field(default_factory=dict)
    weights: Any = None          # an SAE's ``sae_files.SAEWeights`` (its decoder too), as read

    @property
    def default_summary(self) -> str:
        return "max" if self.kind == "sae" else ""

    def summary_for(self, requested: str, layer_summary: str) -> str:
        """The summary over positions this set's latents are recorded with."""
        if requested and requested != "auto":
            return requested
        return self.default_summary or layer_summary

    def attrs(self) -> dict[str, Any]:
        """What an activations file records about the set (``dissect info`` shows it)."""
        return {"directions_kind": self.kind, "directions_spec": self.spec, "directions_k": self.k,
                "directions_c": self.c, "directions_fingerprint": self.fingerprint,
                "directions": json.dumps(self.describe, sort_keys=True)}


def parse_requests(items: list[str] | None) -> list[DirectionRequest]:
    """``LAYER=SPEC`` or ``LAYER@NAME=SPEC`` items (one per entry name)."""
    out: list[DirectionRequest] = []
    for item in items or []:
        target, eq, spec = str(item).partition("=")
        target, spec = target.strip(), spec.strip()
        if not eq or not target or not spec:
            raise UsageError(f"--directions {item!r} is not LAYER=SPEC",
                             hint="e.g. --directions blocks.9=sae_folder/ or --directions layer4@probe=probe.npy")
        layer, at, name = target.partition(ENTRY_SEPARATOR)
        if not layer or (at and not name):
            raise UsageError(f"--directions {item!r} names no layer or no entry", hint="use LAYER=SPEC or LAYER@NAME=SPEC")
        if at and not all(ch.isalnum() or ch in "_-." for ch in name):
            raise UsageError(f"--directions entry name {name!r} must be letters, digits, '_', '-' or '.'")
        req = DirectionRequest(layer, name or _default_name(spec), spec)
        if any(r.entry == req.entry for r in out):
            raise UsageError(f"--directions gives {req.entry} twice", hint="name the entries apart: LAYER@NAME=SPEC")
        out.append(req)
    return out


def _default_name(spec: str) -> str:
    from .sae_hub import HUB_PREFIX

    p = Path(spec.partition("#")[0])
    if spec.startswith(HUB_PREFIX) or p.is_dir() or _is_sae_file(p):
        return "sae"
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        return "module"
    return "dirs"


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def load(spec: str, channels: int | None = None, device=None) -> DirectionSet:
    """The direction set of ``spec`` (see the module docstring), checked against ``channels`` when given."""
    from .sae_hub import HUB_PREFIX, from_hub

    path, _, key = spec.partition("#")
    p = Path(path)
    if spec.startswith(HUB_PREFIX):
        if key:
            raise UsageError(f"--directions {spec}: '#key' is for local matrix files; hf: names an SAE",
                             hint="download the matrix file and pass it as FILE#key")
        local = from_hub(spec)
        ds = load_sae(local)
        ds.describe["hub"] = spec
        if "snapshots" in local.parts:                 # the hub cache's snapshots/<commit>/: what was downloaded
            ds.describe["hub_commit"] = local.parts[local.parts.index("snapshots") + 1]
    elif p.is_dir() or (not key and p.is_file() and _is_sae_file(p)):
        if key:
            raise UsageError(f"--directions {spec}: '#key' is for matrix files, and {path} is a folder")
        ds = load_sae(p)
    elif spec.rpartition(":")[0].endswith(".py") and not p.exists():
        ds = load_module(spec, channels)
    else:
        ds = load_matrix(p, key or None)
    if ds.k < 1:
        raise UsageError(f"--directions {spec}: its {ds.kind} has 0 units", hint="give a set with at least one direction or latent")
    if channels is not None and ds.c != channels:
        raise UsageError(f"--directions {spec}: its {ds.kind} works on {ds.c} channels, but the layer has {channels}",
                         hint="give directions of the layer's width (`dissect layers MODEL` lists each layer's channels)")
    ds.spec = spec
    if device is not None:
        ds.module.to(device)
    return ds


def _is_sae_file(p: Path) -> bool:
    from .sae_files import kind_of

    return kind_of(p) is not None


def _missing(p: Path, what: str) -> UsageError:
    return UsageError(f"{what} {p} does not exist",
                      hint="give a matrix file (.npy, .pt, .safetensors), an SAE folder (cfg.json + "
                           "sae_weights.safetensors) or file.py:function")


def _tensors_of(p: Path) -> dict[str, Any]:
    """Every tensor of a matrix file, by name (a bare array is ``directions``)."""
    import numpy as np
    import torch

    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return {"directions": torch.from_numpy(np.load(p, allow_pickle=False))}
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        first = first_line(e)
        raise ArtifactError(f"cannot read directions file {p}: {first}",
                            hint="save a [K, C] tensor with numpy.save, torch.save or safetensors (no pickled objects)") from None
    if isinstance(obj, torch.Tensor):
        return {"directions": obj}
    if isinstance(obj, dict):
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ArtifactError(f"{p} holds a {type(obj).__name__}, not a tensor or a dict of tensors",
                        hint="save the [K, C] matrix itself: torch.save(tensor, path)")


def load_matrix(p: Path, key: str | None = None) -> DirectionSet:
    """A [K, C] matrix: K directions in a C-channel space."""
    import torch

    if not p.is_file():
        raise _missing(p, "directions file")
    if p.suffix.lower() not in MATRIX_SUFFIXES:
        raise UsageError(f"--directions {p}: unknown matrix format {p.suffix or '(none)'}",
                         hint=f"use one of {', '.join(MATRIX_SUFFIXES)}, an SAE folder, or file.py:function")
    tensors = _tensors_of(p)
    two_d = {k: v for k, v in tensors.items() if v.ndim == 2}
    if key is not None:
        if key not in tensors:
            raise UsageError(f"{p} has no tensor {key!r}", hint=f"it holds: {', '.join(sorted(tensors)) or 'none'}")
        w = tensors[key]
    elif len(two_d) == 1:
        key, w = next(iter(two_d.items()))
    elif "directions" in two_d:
        key, w = "directions", two_d["directions"]
    elif not two_d:
        held = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(tensors.items())) or "nothing"
        raise ArtifactError(f"{p} holds no 2-D tensor ({held}), so no [K, C] matrix of directions",
                            hint="save the directions as rows: a [K, C] matrix (a single direction is [1, C])")
    else:
        raise UsageError(f"{p} holds {len(two_d)} 2-D tensors ({', '.join(sorted(two_d))}); which are the directions?",
                         hint=f"name one: --directions LAYER={p}#KEY")
    if w.ndim != 2 or min(w.shape) < 1 or not w.dtype.is_floating_point:
        raise ArtifactError(f"{p}#{key} is {str(w.dtype).replace('torch.', '')} {tuple(w.shape)}, not a [K, C] float matrix",
                            hint="directions are rows: K directions of the layer's C channels")
    w = w.detach().to(torch.float32).contiguous()
    if not torch.isfinite(w).all():
        raise ArtifactError(f"{p}#{key} holds NaN or Inf", hint="check how the directions were computed")
    fp = _digest(["matrix", list(w.shape), w.numpy().tobytes()])
    k, c = int(w.shape[0]), int(w.shape[1])
    return DirectionSet("matrix", str(p), Projection(w), k, c, fp, {"file": str(p.resolve()), "key": key, "shape": [k, c]})


def load_sae(path: Path) -> DirectionSet:
    """An SAE as any library saves it (``sae_files``): its encoder's latents."""
    from .sae_files import read_sae

    sae = read_sae(path)
    enc = SAEEncoder(sae)
    describe = dict(sae.describe)
    if "k" in describe:
        describe["k"] = sae.k
    provenance = ("folder", "file", "hook_name", "model_name", "layer", "hook_point_layer", "layer_subtype")
    fp = _digest(["sae", {k: v for k, v in describe.items() if k not in provenance},
                  *(t.numpy().tobytes() for t in enc.state_dict().values())])
    return DirectionSet("sae", str(path), enc, sae.d_sae, sae.d_in, fp, describe, sae)


def load_module(spec: str, channels: int | None) -> DirectionSet:
    """``file.py:function``: a module mapping [..., C] to [..., K] (called with no arguments)."""
    import torch

    from .runtime import user_function

    path, _, func = spec.rpartition(":")
    p = Path(path)
    fn = user_function(path, func, "directions module", UsageError, hint=_missing(p, "").hint)
    try:
        result = fn()
    except DissectError:
        raise
    except Exception as e:
        raise UsageError(f"{spec}: {type(e).__name__}: {str(e)[:200]}", hint="run the function by hand to see the traceback") from None
    if not isinstance(result, torch.nn.Module):
        raise UsageError(f"{spec} returned {type(result).__name__}, not a torch.nn.Module mapping [..., C] to [..., K]")
    result.eval()
    c = channels if channels is not None else _module_width(result)
    if c is None:
        raise UsageError(f"{spec}: cannot tell how many channels it takes", hint="record it with --directions on a layer")
    try:
        with torch.inference_mode():
            out = result(torch.zeros(2, 3, c))
    except Exception as e:
        raise UsageError(f"{spec} cannot run on [..., {c}] inputs: {type(e).__name__}: {str(e)[:200]}",
                         hint="its module must map the layer's channels (last axis) to K units") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[:2] != (2, 3):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{spec} maps [2, 3, {c}] to {got}, not [2, 3, K]",
                         hint="act on the last axis only (e.g. return an nn.Linear, or encode with x @ W)")
    if not out.dtype.is_floating_point:
        raise UsageError(f"{spec} returns {str(out.dtype).replace('torch.', '')} units, not floating-point activations",
                         hint="return the latents as floats (e.g. .float() at the end of forward)")
    source = p.read_bytes()
    # Its weights: the state_dict, and tensors kept as plain attributes (a checkpoint read inside the function).
    tensors = list(result.state_dict().values())
    for m in result.modules():
        tensors += [v for _, v in sorted(vars(m).items()) if isinstance(v, torch.Tensor)]
    state = [t.detach().cpu().float().numpy().tobytes() for t in tensors]
    fp = _digest(["module", func, source, *state])
    return DirectionSet("module", spec, result, int(out.shape[-1]), int(c), fp,
                        {"file": str(p.resolve()), "function": func, "class": type(result).__name__})


def _module_width(module) -> int | None:
    for m in module.modules():
        for attr in ("in_features", "d_in"):
            v = getattr(m, attr, None)
            if isinstance(v, int):
                return v
    return None


def _digest(parts: list) -> str:
    """Fingerprint of mixed parts: bytes as they are, anything else as its JSON."""
    from .fingerprint import fingerprint_blobs

    return fingerprint_blobs(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode()
                             for p in parts)


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------

def _module_base():
    import torch

    return torch.nn.Module


class Projection(_module_base()):
    """x · Wᵀ for a [K, C] matrix W: K directions."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x):
        return x @ self.weight.to(x.dtype).T


def _no_norm(x):
    return x


def _constant_norm_rescale(x):
    return x * (math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def _layer_norm(x):
    """SAELens's run_time_activation_ln_in: centred, divided by the sample (n - 1) standard deviation plus 1e-5."""
    xc = x - x.mean(dim=-1, keepdim=True)
    return xc / (xc.std(dim=-1, keepdim=True) + 1e-5)


#: SAELens's ``normalize_activations``: how an input is normalised per position before encoding.
SAE_NORMALIZERS = {"none": _no_norm, "constant_norm_rescale": _constant_norm_rescale, "layer_norm": _layer_norm}


def _act(enc, pre, xw=None):
    import torch

    if enc.act == "none":
        return pre
    return torch.relu(torch.tanh(pre)) if enc.act == "tanh-relu" else torch.relu(pre)


def _topk(enc, pre, xw=None):
    import torch

    top = torch.topk(pre, enc.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, _act(enc, top.values))


def _jumprelu(enc, pre, xw=None):
    above = pre >= enc.threshold.to(pre.dtype) if enc.threshold_ge else pre > enc.threshold.to(pre.dtype)
    return _act(enc, pre) * above.to(pre.dtype)


def _gated(enc, pre, xw):
    """The gate [pre > 0] times act of the magnitude path, (x' W_enc) exp(r_mag) + b_mag."""
    return (pre > 0).to(pre.dtype) * _act(enc, xw * enc.r_mag.to(xw.dtype).exp() + enc.b_mag.to(xw.dtype))


#: Each SAE architecture's latents from its pre-activations and x' W_enc (the magnitude path of a gated SAE; chosen
#: once, when the SAE is loaded).
SAE_ENCODES = {"standard": _act, "topk": _topk, "jumprelu": _jumprelu, "gated": _gated}


class SAEEncoder(_module_base()):
    """The encoder of an SAE (``encode``, not the reconstruction), from ``sae_files.SAEWeights``.

    standard: act((x − b_dec·apply) W_enc + b_enc); jumprelu: relu of the same times [pre > threshold]
    (``>=`` where the library keeps a code equal to it); topk: the k largest pre-activations per position, through
    ReLU (or as they are, for saev's TopK), the rest 0 (with ``rescale_acts_by_decoder_norm``, the pre-activations
    are first multiplied by each decoder row's norm, as SAELens 6.14+ does); gated: [x' W_enc + b_gate > 0] times
    relu(x' (W_enc exp(r_mag)) + b_mag). Inputs are first normalised per position when the SAE says so; an MLP
    encoder (Overcomplete) gives the pre-activations itself. The architecture's encode and the normalisation are
    chosen once, here (``SAE_ENCODES``, ``SAE_NORMALIZERS``).
    """

    def __init__(self, sae):
        import torch

        super().__init__()
        self.register_buffer("W_enc", sae.W_enc.contiguous() if sae.W_enc is not None else torch.zeros(0))
        self.register_buffer("b_enc", sae.b_enc.contiguous())
        self.register_buffer("b_dec", sae.b_dec.contiguous())
        self.register_buffer("threshold", sae.threshold.contiguous() if sae.threshold is not None else torch.zeros(0))
        # registered only when used: other SAEs' state (and so their fingerprints) stay what they were
        for name in ("dec_norm", "r_mag", "b_mag"):
            t = getattr(sae, name)
            self.register_buffer(name, t.contiguous() if t is not None else None)
        self.pre_module = sae.pre_module
        self.apply_b_dec, self.arch, self.act, self.k, self.norm = sae.apply_b_dec, sae.arch, sae.act, sae.k, sae.norm
        self.threshold_ge = sae.threshold_ge
        self._normalise, self._encode = SAE_NORMALIZERS[sae.norm], SAE_ENCODES[sae.arch]

    def forward(self, x):
        x = self._normalise(x)
        if self.apply_b_dec:
            x = x - self.b_dec.to(x.dtype)
        if self.pre_module is not None:
            xw, pre = None, self.pre_module(x)
        else:
            xw = x @ self.W_enc.to(x.dtype)
            pre = xw + self.b_enc.to(x.dtype)
        if self.dec_norm is not None:
            pre = pre * self.dec_norm.to(x.dtype)
        return self._encode(self, pre, xw)


# ---------------------------------------------------------------------------
# Applying a set to a layer's output
# ---------------------------------------------------------------------------

def positions_last(x, layout: str):
    """A layer output as [N, P, C]: every spatial position or token a row of channels."""
    if layout == "nc":
        return x[:, None, :]
    if layout == "nlc":
        return x
    if layout == "ncl":
        return x.transpose(1, 2)
    if layout == "nchw":
        return x.flatten(2).transpose(1, 2)
    if layout == "nhwc":
        return x.flatten(1, 2)
    raise ValueError(f"unknown layout {layout!r}")


def encode_summary(ds: DirectionSet, x, layout: str, summary: str, sink=None):
    """(N, K): the set's units at every position of ``x`` (N, ...), summarised over positions.

    ``cls`` encodes only token 0 (per-position maps commute with taking it), unless a ``sink`` wants every
    position: ``sink(lo, hi, z, summary)`` gets each block of rows lo..hi, its [rows, P, K] units at every
    position and their [rows, K] summary (what ``record --maps`` keeps the top maps of). Rows are encoded in
    blocks so that the [rows, P, K] latents stay under ``ENCODE_BLOCK`` elements.
    """
    import torch

    if summary == "cls" and layout != "nlc":
        raise UsageError(f"--directions-summary cls needs token outputs (N, L, C); this layer's layout is {layout}")
    t = positions_last(x, layout)
    if summary == "cls" and sink is None:
        t = t[:, :1]
    n, p, _ = t.shape
    step = max(1, ENCODE_BLOCK // max(1, p * ds.k))
    parts = []
    for s in range(0, n, step):
        z = _encode_block(ds, t[s : s + step].float())
        part = z[:, 0] if p == 1 or summary == "cls" else (z.mean(dim=1) if summary == "mean" else z.amax(dim=1))
        if sink is not None:
            sink(s, min(n, s + step), z, part)
        parts.append(part)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _encode_block(ds: DirectionSet, block):
    """The set's units of one [rows, P, C] block, checked against what it promised when it was loaded."""
    if ds.kind != "module":
        return ds.module(block)
    import torch

    try:
        z = ds.module(block)
    except DissectError:
        raise
    except Exception as e:
        first = first_line(e, "")
        raise UsageError(f"--directions {ds.spec}: fails on the layer's outputs {list(block.shape)}: "
                         f"{type(e).__name__}{': ' + first if first else ''}",
                         hint="its module must map any [N, P, C] batch to [N, P, K]; run it by hand on such a batch") from None
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (*block.shape[:2], ds.k) or not z.dtype.is_floating_point:
        got = f"{str(z.dtype).replace('torch.', '')} {list(z.shape)} ({z.shape[-1] if z.ndim else 0} units)" if isinstance(z, torch.Tensor) else type(z).__name__
        raise UsageError(f"--directions {ds.spec}: maps the layer's outputs {list(block.shape)} to {got}, "
                         f"but it gave {ds.k} units when it was loaded",
                         hint="its module must give the same K float units on every batch")
    return z


def decoder(kind: str, spec: str, fingerprint: str | None = None):
    """[K, C] rows along which moving the layer's activation by Δ moves unit k by Δ (``evaluate ablate``): an SAE's
    decoder rows scaled so that latent k's pre-activation moves by exactly Δ (W_dec[k] / (W_enc[:, k] · W_dec[k]);
    the latent itself where its activation passes it on, and before any normalisation of the input), a matrix's
    rows divided by their squared norms (exactly Δ along each direction). A module's directions name none: a
    UsageError. ``fingerprint``: the set's when it was recorded; a set whose weights changed since (a file
    rewritten, a hub repository's new commit) is refused in one line."""
    import torch

    from .errors import MismatchError

    if kind not in ("sae", "matrix"):
        raise UsageError(f"directions {spec} ({kind}) have no decoder, so their units cannot be moved in the network",
                         hint="ablate the layer's neurons, or give the directions as a matrix or an SAE folder")
    ds = load(spec)
    if (fingerprint and ds.fingerprint != fingerprint) or ds.kind != kind:
        raise MismatchError(f"the {kind} {spec} is not the one the activations were recorded with (its weights "
                            "changed since `record`)", hint="record the entry again, or give the set it was recorded with")
    if kind == "matrix":
        d = ds.module.weight.detach().to(torch.float32)
        return d / (d * d).sum(dim=1, keepdim=True).clamp_min(1e-30)
    sae = ds.weights
    if sae.W_dec is None or sae.W_enc is None:
        why = sae.no_decoder or "its file holds no decoder"
        raise UsageError(f"the latents of {spec.partition('#')[0]} cannot be moved in the network: {why}",
                         hint="ablate the layer's neurons, or an SAE whose decoder writes back to this layer")
    dec, enc = sae.W_dec, sae.W_enc                        # [K, C], [C, K]
    gain = (enc.T * dec).sum(dim=1, keepdim=True)          # how far latent k's pre-activation moves per W_dec[k]
    scale = sae.r_mag.exp() if sae.r_mag is not None else sae.dec_norm   # gated magnitudes, topk rescaling
    if scale is not None:
        gain = gain * scale[:, None]
    return torch.where(gain.abs() > 1e-12, dec / gain, dec)
