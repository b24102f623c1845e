"""Loading CLIP models through open_clip, from the hub or from local files.

A CLIP spec is one of
    MODEL:PRETRAINED             an open_clip name and tag, e.g. ViT-B-16:openai
    MODEL:TAG@path/to/weights    a tag's settings (activation, preprocessing) with a local copy of its weights
    MODEL:path/to/weights.pt     an open_clip architecture with a local checkpoint
    MODEL                        random weights (tests only)
    hf-hub:ORG/REPO              a model on the Hugging Face hub
    local-dir:FOLDER             a folder with open_clip_config.json and weights
    path/to/config.json:path/to/weights   a model config of your own with its checkpoint

The config JSON is either open_clip's model-config format ({"embed_dim",
"vision_cfg", "text_cfg"}) or its hub format ({"model_cfg", "preprocess_cfg"}).
Preprocessing always comes from the model's own config (or the tag's).

Activation: OpenAI's CLIP models (and a few others) were trained with QuickGELU, but
open_clip's plain architecture configs (``ViT-B-16``) build nn.GELU and only warn when
the tag says otherwise. dissect builds what the weights were trained with: the tag's
``quick_gelu`` setting (for ``MODEL:TAG`` and ``MODEL:TAG@FILE``), QuickGELU for an
OpenAI TorchScript checkpoint (the ``.pt`` files of OpenAI's ``clip`` package), and the
architecture's own activation otherwise. The activation is recorded with every
embedding (``clip_activation``) and is part of the CLIP fingerprint.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, UsageError
from .fingerprint import fingerprint, fingerprint_file
from .runtime import note, warn


@dataclass
class ClipSpec:
    model: str              # open_clip name, hf-hub:/local-dir: id, or config path
    pretrained: str         # tag, checkpoint path, or ""
    kind: str               # "builtin" | "hub" | "local-dir" | "config"
    tag: str = ""           # MODEL:TAG@FILE: the pretrained tag whose settings the local file takes

    def __str__(self) -> str:
        if self.tag:
            return f"{self.model}:{self.tag}@{self.pretrained}"
        return f"{self.model}:{self.pretrained}" if self.pretrained else self.model

    @property
    def is_file(self) -> bool:
        """Whether ``pretrained`` is a local checkpoint file (not a tag)."""
        return bool(self.pretrained) and Path(self.pretrained).is_file()


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


def parse_clip_spec(spec: str) -> ClipSpec:
    spec = spec.strip()
    if not spec:
        raise UsageError("empty --clip", hint="give MODEL:PRETRAINED, e.g. ViT-B-16:openai")
    if spec.startswith("hf-hub:"):
        return ClipSpec(spec, "", "hub")
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):])
        if not folder.is_dir():
            raise ModelError(f"CLIP folder {folder} does not exist")
        return ClipSpec(f"local-dir:{folder.resolve()}", "", "local-dir")
    lower = spec.lower()
    if ".json" in lower:
        cut = lower.index(".json") + len(".json")
        config, rest = spec[:cut], spec[cut:]
        if rest and not rest.startswith(":"):
            raise UsageError(f"cannot parse --clip {spec!r}", hint="use path/to/config.json:path/to/checkpoint")
        ckpt = rest[1:]
        if not Path(config).is_file():
            raise ModelError(f"CLIP config {config} does not exist")
        if ckpt and not Path(ckpt).is_file():
            raise ModelError(f"CLIP checkpoint {ckpt} does not exist")
        return ClipSpec(str(Path(config).resolve()), str(Path(ckpt).resolve()) if ckpt else "", "config")
    model, _, pretrained = spec.partition(":")
    tag, at, tagged_file = pretrained.partition("@")
    if at and _TAG.match(tag) and not Path(pretrained).is_file():
        if not tagged_file:
            raise UsageError(f"cannot parse --clip {spec!r}", hint=f"use {model}:{tag}@/path/to/weights")
        if not Path(tagged_file).is_file():
            raise ModelError(f"CLIP checkpoint {tagged_file} does not exist")
        return ClipSpec(model, str(Path(tagged_file).resolve()), "builtin", tag=tag)
    if pretrained and (os.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")):
        if not Path(pretrained).is_file():
            raise ModelError(f"CLIP checkpoint {pretrained} does not exist")
        pretrained = str(Path(pretrained).resolve())
    return ClipSpec(model, pretrained, "builtin")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's own CLIP checkpoints are), not a pickled state dict."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg

    return dict(get_pretrained_cfg(model, tag) or {})


@dataclass
class Activation:
    """Which activation a CLIP spec is built with, and why."""

    quick_gelu: bool | None     # None: decided by a config only the hub holds
    forced: bool                # dissect overrides the architecture config (force_quick_gelu)
    reason: str


def _config_activation(spec: ClipSpec) -> Activation:
    cfg = json.loads(Path(spec.model).read_text())
    model_cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else {}
    return Activation(bool(isinstance(model_cfg, dict) and model_cfg.get("quick_gelu")), False, "the model config")


def _folder_activation(spec: ClipSpec) -> Activation:
    path = Path(spec.model[len("local-dir:"):]) / "open_clip_config.json"
    try:
        model_cfg = json.loads(path.read_text()).get("model_cfg", {})
    except (OSError, ValueError, AttributeError):
        model_cfg = {}
    return Activation(bool(isinstance(model_cfg, dict) and model_cfg.get("quick_gelu")), False, "the folder's config")


def _builtin_activation(spec: ClipSpec) -> Activation:
    import open_clip

    own = bool((open_clip.get_model_config(spec.model) or {}).get("quick_gelu"))
    tag = spec.tag or ("" if spec.is_file else spec.pretrained)
    if tag:
        wanted = bool(_pretrained_cfg(spec.model, tag).get("quick_gelu"))
        return Activation(own or wanted, wanted and not own, f"pretrained tag {tag!r}")
    if spec.is_file and is_torchscript_archive(spec.pretrained):
        return Activation(True, not own, "an OpenAI TorchScript checkpoint")
    return Activation(own, False, f"the {spec.model} config")


def resolve_activation(spec: ClipSpec) -> Activation:
    """The activation the weights of ``spec`` were trained with (see the module docstring)."""
    return CLIP_KINDS[spec.kind].activation(spec)


def quickgelu_tags(model: str) -> list[str]:
    """Pretrained tags of ``model`` whose weights were trained with QuickGELU."""
    import open_clip

    return [t for t in open_clip.list_pretrained_tags_by_model(model) if _pretrained_cfg(model, t).get("quick_gelu")]


@dataclass
class Clip:
    """A loaded CLIP model with its preprocessing and tokenizer."""

    spec: ClipSpec
    model: Any
    preprocess: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    fingerprint: str
    device: Any
    context_length: int

    @property
    def name(self) -> str:
        return self.spec.model

    @property
    def pretrained(self) -> str:
        return self.spec.pretrained

    @functools.cached_property
    def prefix_encoder(self):
        """``prefix_text_encoder(self)``, built once per loaded model."""
        return prefix_text_encoder(self)

    activation: str = "gelu"

    def attrs(self) -> dict[str, Any]:
        """What every embeddings artifact records about its CLIP model."""
        return {
            "clip_spec": str(self.spec),
            "clip_fingerprint": self.fingerprint,
            "clip_preprocess": self.preprocess_cfg,
            "clip_activation": self.activation,
        }


def clip_fingerprint(spec: ClipSpec, activation: Activation | None = None) -> str:
    """Identity of a CLIP model: names for hub models, content for local files, and the activation it is built with.

    A model dissect builds with QuickGELU against its architecture config (``ViT-B-16:openai``)
    gets a fingerprint of its own, so embeddings made before, with nn.GELU, are never reused.
    """
    parts = CLIP_KINDS[spec.kind].identity(spec)
    activation = activation or resolve_activation(spec)
    if activation.forced:
        parts.append("force_quick_gelu")
    return fingerprint(parts)


def _config_identity(spec: ClipSpec) -> list[Any]:
    return [spec.kind, json.loads(Path(spec.model).read_text()), fingerprint_file(spec.pretrained) if spec.pretrained else ""]


def _folder_identity(spec: ClipSpec) -> list[Any]:
    folder = Path(spec.model[len("local-dir:"):])
    return [spec.kind, sorted((p.name, fingerprint_file(p)) for p in folder.iterdir() if p.is_file())]


def _named_identity(spec: ClipSpec) -> list[Any]:
    """A hub or built-in model by its names; a local checkpoint by its content (and the tag whose settings it takes)."""
    if not spec.is_file:
        return [spec.kind, spec.model, spec.pretrained]
    return [spec.kind, spec.model, fingerprint_file(spec.pretrained)] + ([f"tag={spec.tag}"] if spec.tag else [])


def _hub_hint(spec: ClipSpec) -> str:
    return ("download it where there is internet (hf download "
            f"{spec.model[len('hf-hub:'):]} --local-dir FOLDER) and pass --clip local-dir:FOLDER")


def _weights_hint(spec: ClipSpec) -> str:
    cfg = _pretrained_cfg(spec.model, spec.pretrained) if spec.kind == "builtin" and spec.pretrained and not spec.is_file else {}
    if cfg.get("hf_hub"):
        repo, name = os.path.split(str(cfg["hf_hub"]))  # "org/repo/" names open_clip's default file
        where = f"https://huggingface.co/{repo}/resolve/main/{name or 'open_clip_pytorch_model.bin'}"
    elif cfg.get("url"):
        where = str(cfg["url"])
    else:
        where = "the checkpoint"
    return (
        f"fetch {where} where there is internet and pass --clip {spec.model}:{spec.pretrained}@/path/to/{Path(where).name} "
        f"(the tag's activation and preprocessing, your copy of the weights)"
    )


def _download_hint(spec: ClipSpec) -> str:
    return CLIP_KINDS[spec.kind].download_hint(spec)


@dataclass
class _Build:
    """What open_clip is asked to build: a model name, its pretrained tag or file (None: none, or loaded by dissect),
    the tokenizer's name, a preprocessing config (None: the model's own) and whether the file is TorchScript."""

    name: str
    pretrained: str | None
    tokenizer: str
    preprocess_cfg: dict[str, Any] | None = None
    torchscript: bool = False


def _builtin_build(spec: ClipSpec, activation: Activation) -> _Build:
    """An open_clip architecture: its name and tag checked, the tag's preprocessing for ``MODEL:TAG@FILE``."""
    import open_clip

    if spec.model not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(spec.model, open_clip.list_models(), n=3)
        raise ModelError(
            f"unknown CLIP model {spec.model!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "") + "see open_clip.list_pretrained() for names and tags",
        )
    tag = spec.tag or ("" if spec.is_file else spec.pretrained)
    if tag:
        tags = open_clip.list_pretrained_tags_by_model(spec.model)
        if tag not in tags:
            raise ModelError(
                f"unknown pretrained tag {tag!r} for {spec.model}",
                hint=f"known tags: {', '.join(tags) or 'none'}; or give a checkpoint file path",
            )
    preprocess_cfg = _pretrained_cfg(spec.model, spec.tag) if spec.tag else None  # the tag's normalisation and resizing
    if not spec.tag and spec.is_file and not activation.quick_gelu:
        quick_tags = quickgelu_tags(spec.model)
        if quick_tags:
            warn(f"{spec.model} with a local checkpoint is built with nn.GELU, as its open_clip config says; weights "
                 f"of its QuickGELU tags ({', '.join(quick_tags)}) need --clip {spec.model}:TAG@{spec.pretrained}")
    jit = spec.is_file and is_torchscript_archive(spec.pretrained)
    return _Build(spec.model, spec.pretrained or None, spec.model, preprocess_cfg, jit)


def _config_build(spec: ClipSpec, activation: Activation) -> _Build:
    """A model config of the user's, registered with open_clip under a content-derived name (never shadowing a
    built-in model)."""
    cfg = json.loads(Path(spec.model).read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise ModelError(
            f"{spec.model} is not an open_clip model config",
            hint="it needs embed_dim, vision_cfg and text_cfg (or model_cfg holding them)",
        )
    name = f"dissect-{fingerprint(model_cfg)[:12]}"
    _register_config(name, model_cfg)
    return _Build(name, spec.pretrained or None, name, cfg.get("preprocess_cfg"))


@dataclass(frozen=True)
class ClipKind:
    """How one kind of ``--clip`` spec is built, identified and fetched: the activation its weights were trained
    with, what its fingerprint hashes, what open_clip is asked to build, whether that reaches the hub, and what to
    fetch when the download fails."""

    activation: Any
    identity: Any
    build: Any
    online: Any
    download_hint: Any


#: Every kind of ``--clip`` spec (``ClipSpec.kind``), decided once when the spec is parsed.
CLIP_KINDS: dict[str, ClipKind] = {
    "builtin": ClipKind(_builtin_activation, _named_identity, _builtin_build,
                        lambda spec: bool(spec.pretrained) and not spec.is_file, _weights_hint),
    "hub": ClipKind(lambda spec: Activation(None, False, "the hub's config"), _named_identity,
                    lambda spec, activation: _Build(spec.model, None, spec.model), lambda spec: True, _hub_hint),
    "local-dir": ClipKind(_folder_activation, _folder_identity,
                          lambda spec, activation: _Build(spec.model, None, spec.model), lambda spec: False, _weights_hint),
    "config": ClipKind(_config_activation, _config_identity, _config_build, lambda spec: False, _weights_hint),
}


def load_clip(spec: str | ClipSpec, device) -> Clip:
    """Load a CLIP model for inference on ``device`` (a torch.device or its name)."""
    import open_clip
    import torch

    device = torch.device(device)

    if isinstance(spec, str):
        spec = parse_clip_spec(spec)
    kind = CLIP_KINDS[spec.kind]
    activation = kind.activation(spec)
    build = kind.build(spec, activation)
    if kind.online(spec):
        from .runtime import hub_offline

        hub_offline()  # offline: the hub's cache only, failing at once when the weights are not in it
    preprocess_cfg = build.preprocess_cfg
    kwargs: dict[str, Any] = {"force_quick_gelu": True} if activation.forced else {}
    # A config's preprocess_cfg (hub format) sets normalisation and resizing; the input
    # size always comes from the model config itself.
    for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                     ("resize_mode", "image_resize_mode")):
        if preprocess_cfg and preprocess_cfg.get(key) is not None:
            kwargs[arg] = tuple(preprocess_cfg[key]) if isinstance(preprocess_cfg[key], list) else preprocess_cfg[key]
    import logging
    import warnings

    logging.disable(logging.ERROR)  # open_clip logs its failures to the root logger: ours is the one line
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol, before the refusal we report
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model, _, preprocess = open_clip.create_model_and_transforms(
                build.name, pretrained=None if build.torchscript else build.pretrained, device=device, **kwargs)
        if build.torchscript:
            _load_torchscript_weights(model, spec.pretrained)
        tokenizer = open_clip.get_tokenizer(build.tokenizer)
    except RuntimeError as e:
        msg = str(e)
        if spec.is_file and not ("size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg):
            raise ModelError(f"cannot read CLIP checkpoint {spec.pretrained}: {_reason(e)}",
                             hint=CHECKPOINT_HINT) from None
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise ModelError(f"checkpoint does not fit {spec.model}: {_first_lines(msg)}") from None
        if "download" in msg.lower() or "connect" in msg.lower() or "hub" in msg.lower():
            raise ModelError(f"cannot download CLIP weights for {spec}", hint=_download_hint(spec)) from None
        raise ModelError(f"cannot load CLIP {spec}: {_first_lines(msg)}") from None
    except OSError as e:
        raise ModelError(f"cannot load CLIP {spec}: {_first_lines(str(e))}", hint=_download_hint(spec)) from None
    except Exception as e:
        if spec.is_file:  # a local checkpoint: whatever the loaders made of it, the file is the thing to check
            raise ModelError(f"cannot read CLIP checkpoint {spec.pretrained}: {_reason(e)}",
                             hint=CHECKPOINT_HINT) from None
        if isinstance(e, (ValueError, TypeError, KeyError, AssertionError)):
            raise ModelError(f"cannot build CLIP {spec}: {_first_lines(str(e))}", hint="check the model config") from None
        raise
    finally:
        logging.disable(logging.NOTSET)
    model.eval()
    visual_cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(visual_cfg).items()}
    ctx = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77)
    built = built_activation(model)
    if activation.quick_gelu is not None and built != ("quick_gelu" if activation.quick_gelu else "gelu") \
            and built != "none":
        raise ModelError(f"CLIP {spec} was built with {built}, but {activation.reason} asks for "
                         f"{'QuickGELU' if activation.quick_gelu else 'GELU'}", hint="please report this")
    if activation.forced:
        note(f"CLIP {spec}: built with QuickGELU, as {activation.reason} was trained")
    return Clip(spec, model, preprocess, tokenizer, pcfg, clip_fingerprint(spec, activation), device, int(ctx), built)


def reload_clip(spec: str, expected_fingerprint: str, made: str, device, loaded: Clip | None = None) -> Clip:
    """The CLIP model an artifact names, checked to be the one that made ``made``: ``loaded`` when given (a run
    that has it in memory), else loaded from ``spec``."""
    from .errors import MismatchError

    clip = loaded if loaded is not None else load_clip(parse_clip_spec(spec), device)
    if clip.fingerprint != expected_fingerprint:
        raise MismatchError(
            f"the CLIP model {spec}, as this dissect builds it, is not the one that made {made}: its files changed, "
            f"or an older dissect built it differently (before 0.2, OpenAI models with GELU instead of QuickGELU)",
            hint="re-run `dissect embed-images` (and embed-text) with it",
        )
    return clip


def built_activation(model) -> str:
    """The transformer MLP activation of a built open_clip model: quick_gelu, gelu, or none (no such MLP)."""
    import torch
    from open_clip.transformer import QuickGELU

    kinds = {type(m) for m in model.modules()}
    if QuickGELU in kinds:
        return "quick_gelu"
    return "gelu" if torch.nn.GELU in kinds else "none"


def _load_torchscript_weights(model, path: str) -> None:
    """Load the weights of an OpenAI TorchScript checkpoint (``clip.load``'s ``.pt`` files) into ``model``."""
    import torch
    from open_clip.factory import resize_pos_embed

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files are TorchScript
            sd = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception as e:  # a damaged archive
        raise ModelError(f"cannot read TorchScript checkpoint {path}: {_first_lines(str(e), 1)}") from None
    own = model.state_dict()
    transient = {n for n, _ in model.named_buffers() if n not in own}  # e.g. attn_mask: not part of the weights
    for key in ("input_resolution", "context_length", "vocab_size", *transient):
        sd.pop(key, None)
    resize_pos_embed(sd, model)
    model.load_state_dict(sd, strict=True)  # RuntimeError on a mismatch: reported by load_clip


def _register_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make a model config known to open_clip (through its public add_model_config)."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)


#: What a local CLIP checkpoint may be (dissect loads tensors only, never pickled objects).
CHECKPOINT_HINT = ("give a state dict saved with torch.save (.pt, .bin), a .safetensors file, a big_vision .npz, or an "
                   "OpenAI TorchScript archive; pickled objects are not loaded")


def _reason(e: BaseException) -> str:
    """The first line of a loader's complaint, prefixed with its kind (torch's pickle refusal runs to a page)."""
    first = (str(e).strip().splitlines() or [""])[0].strip().rstrip(".")
    if "weights only load failed" in first.lower():
        first = "it holds pickled objects, not only tensors"
    elif "allow_pickle" in first:  # numpy's word for any file that is not an array archive
        first = "it is not an archive of arrays (or holds pickled objects)"
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _first_lines(msg: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    out = " ".join(lines[:n])
    return out if len(out) < 400 else out[:400] + "..."


def encode_images(clip: Clip, batch, precision: str = "fp32") -> Any:
    """L2-normalised image embeddings of a preprocessed batch, float32 on CPU.

    ``precision`` bf16/fp16 runs the encoder under autocast (the normalisation is float32).
    """
    import torch

    from .runtime import autocast

    with torch.inference_mode(), autocast(clip.device, precision):
        emb = clip.model.encode_image(batch.to(clip.device, non_blocking=True))
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def prefix_text_encoder(clip: Clip):
    """A text encoder that runs only up to each batch's longest token sequence, or None.

    open_clip runs the text tower over its whole context (77 tokens) although concepts
    are one to three tokens long. For a causal tower whose pooled output is read at the
    end-of-text token (or the first token), positions after the end of text cannot
    affect it, so cutting the padding off is exact. Towers where that does not hold
    (bidirectional attention, 'last' pooling, appended class token, padding masks,
    Hugging Face towers, tokenizers that do not pad with 0) return None: callers then
    use the library's own encode_text.
    """
    import open_clip
    import torch
    from open_clip.transformer import text_global_pool

    model = clip.model
    tower = model.text if hasattr(getattr(model, "text", None), "token_embedding") else model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(tower, n) for n in needed) or tower.attn_mask is None:
        return None
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    if pool not in ("argmax", "first", "eos") or getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return None
    if not isinstance(clip.tokenizer, open_clip.tokenizer.SimpleTokenizer):
        return None
    eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
    projection = getattr(tower, "text_projection", None)

    def encode(tokens):
        L = tokens.shape[1]
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast) + tower.positional_embedding[:L].to(cast)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:L, :L])
        x = tower.ln_final(x)
        x = text_global_pool(x, tokens, pool, eos_token_id=eos_id)
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x

    return encode


def encode_tokens(clip: Clip, tokens, prefix: bool = True, precision: str = "fp32") -> Any:
    """L2-normalised embeddings of tokenised texts, float32 on CPU.

    With ``prefix`` (and a tower where it is exact, see ``prefix_text_encoder``) the batch
    is encoded only up to its longest token sequence. ``precision`` as in ``encode_images``.
    """
    import torch

    from .runtime import autocast

    with torch.inference_mode(), autocast(clip.device, precision):
        tokens = tokens.to(clip.device)
        fast = clip.prefix_encoder if prefix else None
        if fast is not None:
            emb = fast(tokens[:, : int(token_lengths(clip, tokens).max())])
        else:
            emb = clip.model.encode_text(tokens)
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def encode_texts(clip: Clip, texts: list[str], prefix: bool = True) -> Any:
    """L2-normalised text embeddings, float32 on CPU. Texts are embedded as written (no template)."""
    return encode_tokens(clip, clip.tokenizer(texts), prefix)


def token_lengths(clip: Clip, tokens):
    """Each tokenised text's length up to and including its end-of-text token.

    Not the count of non-zero ids: in CLIP's BPE vocabulary id 0 is "!", so "stop!" or
    "!=" would lose their end-of-text token. Rows without one count as full length.
    For tokenizers without an end-of-text id (Hugging Face ones), the non-padding count.
    """
    import torch

    eot = getattr(clip.tokenizer, "eot_token_id", None)
    if eot is None:
        return (tokens != 0).sum(dim=1)
    is_eot = tokens == eot
    first = is_eot.int().argmax(dim=1) + 1
    return torch.where(is_eot.any(dim=1), first, torch.full_like(first, tokens.shape[1]))


def truncated_texts(clip: Clip, texts: list[str]) -> list[str]:
    """The texts longer than the text encoder's context (which the tokenizer cuts silently).

    A text of exactly the context length (start, its tokens, end-of-text) fits.
    """
    import open_clip

    tok, ctx = clip.tokenizer, clip.context_length
    if isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and getattr(tok, "reduction_fn", None) is None:
        return [t for t in texts if len(tok.encode(t)) + 2 > ctx]
    hf = getattr(tok, "tokenizer", None)
    if hf is not None and callable(hf):
        try:
            return [t for t, ids in zip(texts, hf(list(texts))["input_ids"]) if len(ids) > ctx]
        except Exception:  # an unusual tokenizer: fall through to the last-position test
            pass
    tokens = tok(texts)
    return [t for t, row in zip(texts, tokens) if int(row[-1]) != 0]
