"""Loading CLIP models through open_clip, from the hub or from local files.

A CLIP spec is one of
    MODEL:PRETRAINED             an open_clip name and tag, e.g. ViT-B-16:openai
    MODEL:path/to/weights.pt     an open_clip architecture with a local checkpoint
    MODEL                        random weights (tests only)
    hf-hub:ORG/REPO              a model on the Hugging Face hub
    local-dir:FOLDER             a folder with open_clip_config.json and weights
    path/to/config.json:path/to/weights   a model config of your own with its checkpoint

The config JSON is either open_clip's model-config format ({"embed_dim",
"vision_cfg", "text_cfg"}) or its hub format ({"model_cfg", "preprocess_cfg"}).
Preprocessing always comes from the model's own config.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError, UsageError
from .fingerprint import fingerprint, fingerprint_file


@dataclass
class ClipSpec:
    model: str              # open_clip name, hf-hub:/local-dir: id, or config path
    pretrained: str         # tag, checkpoint path, or ""
    kind: str               # "builtin" | "hub" | "local-dir" | "config"

    def __str__(self) -> str:
        return f"{self.model}:{self.pretrained}" if self.pretrained else self.model


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
    if pretrained and (os.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")):
        if not Path(pretrained).is_file():
            raise ModelError(f"CLIP checkpoint {pretrained} does not exist")
        pretrained = str(Path(pretrained).resolve())
    return ClipSpec(model, pretrained, "builtin")


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

    def attrs(self) -> dict[str, Any]:
        """What every embeddings artifact records about its CLIP model."""
        return {
            "clip_spec": str(self.spec),
            "clip_fingerprint": self.fingerprint,
            "clip_preprocess": self.preprocess_cfg,
        }


def clip_fingerprint(spec: ClipSpec) -> str:
    """Identity of a CLIP model: names for hub models, content for local files."""
    parts: list[Any] = [spec.kind, spec.model, spec.pretrained]
    if spec.kind == "config":
        parts = [spec.kind, json.loads(Path(spec.model).read_text()), fingerprint_file(spec.pretrained) if spec.pretrained else ""]
    elif spec.kind == "local-dir":
        folder = Path(spec.model[len("local-dir:"):])
        parts = [spec.kind, sorted((p.name, fingerprint_file(p)) for p in folder.iterdir() if p.is_file())]
    elif spec.pretrained and Path(spec.pretrained).is_file():
        parts = [spec.kind, spec.model, fingerprint_file(spec.pretrained)]
    return fingerprint(parts)


def _download_hint(spec: ClipSpec) -> str:
    if spec.kind == "hub":
        return (
            "download it where there is internet (huggingface-cli download "
            f"{spec.model[len('hf-hub:'):]}) and pass --clip local-dir:FOLDER"
        )
    return (
        f"download the weights where there is internet (python -c \"import open_clip; "
        f"open_clip.create_model('{spec.model}', pretrained='{spec.pretrained}')\" fills ~/.cache/huggingface) "
        f"or pass a local checkpoint file: --clip {spec.model}:/path/to/weights"
    )


def load_clip(spec: str | ClipSpec, device) -> Clip:
    """Load a CLIP model for inference on ``device``."""
    import open_clip

    if isinstance(spec, str):
        spec = parse_clip_spec(spec)
    preprocess_cfg: dict[str, Any] | None = None
    tokenizer_name = spec.model
    if spec.kind == "builtin":
        if spec.model not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(spec.model, open_clip.list_models(), n=3)
            raise ModelError(
                f"unknown CLIP model {spec.model!r}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + "see open_clip.list_pretrained() for names and tags",
            )
        if spec.pretrained and not Path(spec.pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(spec.model)
            if spec.pretrained not in tags:
                raise ModelError(
                    f"unknown pretrained tag {spec.pretrained!r} for {spec.model}",
                    hint=f"known tags: {', '.join(tags) or 'none'}; or give a checkpoint file path",
                )
        name, pretrained = spec.model, spec.pretrained or None
    elif spec.kind == "config":
        cfg = json.loads(Path(spec.model).read_text())
        model_cfg = cfg.get("model_cfg", cfg)
        preprocess_cfg = cfg.get("preprocess_cfg")
        if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
            raise ModelError(
                f"{spec.model} is not an open_clip model config",
                hint="it needs embed_dim, vision_cfg and text_cfg (or model_cfg holding them)",
            )
        # Register under a content-derived name so it can never shadow a built-in model.
        name = f"dissect-{fingerprint(model_cfg)[:12]}"
        _register_config(name, model_cfg)
        tokenizer_name = name
        pretrained = spec.pretrained or None
    else:
        name, pretrained = spec.model, None

    kwargs: dict[str, Any] = {}
    # A config's preprocess_cfg (hub format) sets normalisation and resizing; the input
    # size always comes from the model config itself.
    for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                     ("resize_mode", "image_resize_mode")):
        if preprocess_cfg and preprocess_cfg.get(key) is not None:
            kwargs[arg] = tuple(preprocess_cfg[key]) if isinstance(preprocess_cfg[key], list) else preprocess_cfg[key]
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except RuntimeError as e:
        msg = str(e)
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise ModelError(f"checkpoint does not fit {spec.model}: {_first_lines(msg)}") from None
        if "download" in msg.lower() or "connect" in msg.lower() or "hub" in msg.lower():
            raise ModelError(f"cannot download CLIP weights for {spec}", hint=_download_hint(spec)) from None
        raise ModelError(f"cannot load CLIP {spec}: {_first_lines(msg)}") from None
    except OSError as e:
        raise ModelError(f"cannot load CLIP {spec}: {_first_lines(str(e))}", hint=_download_hint(spec)) from None
    except (ValueError, TypeError, KeyError, AssertionError) as e:
        raise ModelError(f"cannot build CLIP {spec}: {_first_lines(str(e))}", hint="check the model config") from None
    model.eval()
    visual_cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(visual_cfg).items()}
    ctx = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77)
    return Clip(spec, model, preprocess, tokenizer, pcfg, clip_fingerprint(spec), device, int(ctx))


def _register_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make a model config known to open_clip (through its public add_model_config)."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)


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
            emb = fast(tokens[:, : int((tokens != 0).sum(dim=1).max())])
        else:
            emb = clip.model.encode_text(tokens)
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def encode_texts(clip: Clip, texts: list[str], prefix: bool = True) -> Any:
    """L2-normalised text embeddings, float32 on CPU. Texts are embedded as written (no template)."""
    return encode_tokens(clip, clip.tokenizer(texts), prefix)
