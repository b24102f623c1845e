#!/usr/bin/env python
"""Train the offline demo models shipped in ``dissect/demo/assets/``.

Trains, from scratch on CPU (one thread) and with fixed seeds,

1. a tiny CLIP (open_clip ``CLIP``: timm ``test_resnet`` image tower + a small
   text transformer using open_clip's standard SimpleTokenizer) on
   image/caption pairs from the procedural world in :mod:`dissect.demo.world`, and
2. a small timm classifier (``test_resnet``) predicting
   ``world.CLASS_ATTRIBUTE``.

Both are saved as float16 safetensors together with their configs, then
reloaded through the public loading paths (open_clip ``local-dir:``, open_clip
``create_model(name, pretrained=file)`` after registering the config, timm
``create_model`` + ``load_state_dict``) and evaluated on held-out images.
Results go to ``training.json`` and ``TRAINING.md`` next to the checkpoints.

Usage::

    python scripts/train_demo.py                 # full run (~11 min on 1 CPU thread)
    python scripts/train_demo.py --smoke --out /tmp/demo_smoke   # quick pipeline check
    python scripts/train_demo.py --without circle  # the classifier again, on the pool without one shape
                                                   # (classifier-without-circle/, for `dissect compare` in the demo)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402
import timm  # noqa: E402
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from dissect.demo import world  # noqa: E402

# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

IMAGE_SIZE = 64
TRAIN_SEED = 1  # world seed of the training pool
EVAL_SEED = 2  # world seed of held-out evaluation images
PROBE_SEED = 3  # world seed of the probe set used for the mini CLIP-Dissect check
TORCH_SEED = 0
WORDS_SEED = 0  # split of the distractor-word pool

CLIP_MODEL_CFG = {
    "embed_dim": 64,
    # image tower: timm's tiny ResNet (the same *architecture* as the classifier, but trained
    # independently from its own random init with the contrastive objective)
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "timm_model_name": "test_resnet",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 64,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 4.0,
    },
}
CLIP_PREPROCESS_CFG = {
    "size": IMAGE_SIZE,
    "mean": list(OPENAI_DATASET_MEAN),
    "std": list(OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
CLASSIFIER_ARCH = "test_resnet"

FULL = {
    "pool_size": 40000,
    "clip_steps": 800,
    "clip_batch": 128,
    "clip_lr": 3e-3,
    "clip_warmup": 100,
    "n_distractors": 128,
    "caption_loss_weight": 1.0,
    "attr_loss_weight": 1.0,
    "salience_margin": 0.4,
    "null_margin": 0.5,
    "null_attr_margin": 0.15,
    "margin_loss_weight": 1.0,
    "logit_scale_init": 10.0,
    "logit_scale_max": 30.0,
    "clf_steps": 500,
    "clf_batch": 128,
    "clf_lr": 3e-3,
    "clf_warmup": 30,
    "n_eval": 2000,
    "n_probe": 2000,
    "n_heldout_words": 600,
}
SMOKE = dict(FULL, pool_size=3000, clip_steps=60, clip_batch=128, clf_steps=40, n_eval=400, n_probe=400)

# words that occur in caption templates (never used as distractors)
TEMPLATE_WORDS = {
    "a", "an", "the", "on", "of", "photo", "image", "picture", "drawing", "shape", "background",
    "pattern", "grey", "gray", "object", "something", "that", "is", "and",
}

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

ATTR_NAMES = list(world.ATTRIBUTES)
WORD_TO_ATTR = {w: (ai, wi) for ai, a in enumerate(ATTR_NAMES) for wi, w in enumerate(world.ATTRIBUTES[a])}
ALL_WORDS = [w for a in ATTR_NAMES for w in world.ATTRIBUTES[a]]
CI = ATTR_NAMES.index(world.CLASS_ATTRIBUTE)  # the object / class attribute
ATTR_OFFSETS = [ALL_WORDS.index(world.ATTRIBUTES[a][0]) for a in ATTR_NAMES]
OBJ_OFFSET = ATTR_OFFSETS[CI]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mentions(text: str) -> list[int]:
    """Per attribute, the index of the vocabulary word the text mentions (-1: not mentioned)."""
    out = [-1] * len(ATTR_NAMES)
    for tok in re.findall(r"[a-z]+", text.lower()):
        if tok in WORD_TO_ATTR:
            ai, wi = WORD_TO_ATTR[tok]
            out[ai] = wi
    return out


def make_pool(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, H, W, 3) and attribute indices (n, n_attr)."""
    imgs = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    attrs = np.empty((n, len(ATTR_NAMES)), dtype=np.int64)
    for i, (img, a) in enumerate(world.generate(n, seed, IMAGE_SIZE)):
        imgs[i] = np.asarray(img)
        attrs[i] = [world.ATTRIBUTES[name].index(a[name]) for name in ATTR_NAMES]
    return torch.from_numpy(imgs), torch.from_numpy(attrs)


def to_input(imgs_u8: torch.Tensor, mean, std, flip: torch.Tensor | None = None) -> torch.Tensor:
    x = imgs_u8.permute(0, 3, 1, 2).float().div_(255.0)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def distractor_words(tokenizer) -> tuple[list[str], list[str]]:
    """Whole-word tokens of the CLIP BPE vocabulary, split into (train, held-out) lists."""
    words = sorted(
        {k[:-4] for k in tokenizer.encoder if k.endswith("</w>") and re.fullmatch(r"[a-z]{3,12}", k[:-4])}
        - set(ALL_WORDS) - TEMPLATE_WORDS
    )
    rng = np.random.default_rng(WORDS_SEED)
    perm = rng.permutation(len(words))
    words = [words[i] for i in perm]
    return words[FULL["n_heldout_words"]:], words[: FULL["n_heldout_words"]]


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * p))


def param_groups(model: torch.nn.Module, wd: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in n or "embedding" in n else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fp16_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }


# --------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------


@torch.no_grad()
def quick_zero_shot(model, tokens_words, ev_imgs, ev_attrs) -> dict[str, float]:
    """Bare-word zero-shot accuracy per attribute on pre-rendered held-out images."""
    model.eval()
    img_f = torch.cat([model.encode_image(to_input(ev_imgs[i:i + 250], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
                                          normalize=True) for i in range(0, len(ev_imgs), 250)])
    txt_f = model.encode_text(tokens_words, normalize=True)
    model.train()
    sims, out, off = img_f @ txt_f.T, {}, 0
    for ai, a in enumerate(ATTR_NAMES):
        k = len(world.ATTRIBUTES[a])
        out[a] = round((sims[:, off:off + k].argmax(1) == ev_attrs[:, ai]).float().mean().item(), 3)
        off += k
    return out


def train_clip(cfg, pool_imgs, pool_attrs, train_words) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(TORCH_SEED)
    rng = np.random.default_rng(TORCH_SEED)
    model = open_clip.CLIP(**CLIP_MODEL_CFG)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg["logit_scale_init"]))
    tokenizer = open_clip.SimpleTokenizer(context_length=CLIP_MODEL_CFG["text_cfg"]["context_length"])
    tok_cache: dict[str, torch.Tensor] = {}

    def tokenize(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in tok_cache]
        if missing:
            for t, ids in zip(missing, tokenizer(missing)):
                tok_cache[t] = ids
        return torch.stack([tok_cache[t] for t in texts])

    vocab_tokens = tokenize(ALL_WORDS)
    vocab_mentions = torch.tensor([mentions(w) for w in ALL_WORDS])
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=cfg["clip_lr"], betas=(0.9, 0.98), eps=1e-6)
    B, steps = cfg["clip_batch"], cfg["clip_steps"]
    n_pool = pool_imgs.shape[0]
    max_scale = math.log(cfg["logit_scale_max"])
    ev_imgs, ev_attrs = make_pool(500, EVAL_SEED)
    history = []
    t0 = time.time()
    model.train()
    for step in range(steps):
        lr = cfg["clip_lr"] * cosine_schedule(step, steps, cfg["clip_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(n_pool, size=B))
        flip = torch.from_numpy(rng.random(B) < 0.5)
        images = to_input(pool_imgs[idx], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, flip)
        attrs = pool_attrs[idx]  # (B, A)
        caps = [world.caption({a: world.ATTRIBUTES[a][int(v)] for a, v in zip(ATTR_NAMES, row)}, rng)
                for row in attrs.tolist()]
        cap_mentions = torch.tensor([mentions(c) for c in caps])
        dwords = [train_words[i] for i in rng.choice(len(train_words), cfg["n_distractors"], replace=False)]
        tokens = torch.cat([tokenize(caps), vocab_tokens, tokenize(dwords)])
        # positives: text j is consistent with image i if every attribute it mentions matches
        ment = torch.cat([cap_mentions, vocab_mentions])  # (T, A) real texts
        pos = ((ment[None] == -1) | (ment[None] == attrs[:, None])).all(-1)  # (B, T)
        pos = torch.cat([pos, torch.zeros(B, len(dwords), dtype=torch.bool)], 1)  # distractors: never

        img_f = model.encode_image(images, normalize=True)
        txt_f = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
        logits = scale * img_f @ txt_f.T  # (B, T+D)
        posf = pos.float()
        if cfg["salience_margin"] > 0:
            # the object (class attribute) is the salient part of an image: for image->text only
            # the texts that name the object (and the distractors) compete; texts naming only
            # other attributes are left out of that softmax, their level is set by the margin
            # term below (text->image and the per-attribute term still train them)
            names_obj = torch.cat([ment[:, CI] >= 0, torch.ones(len(dwords), dtype=torch.bool)])
            logp = F.log_softmax(logits.masked_fill(~names_obj[None], float("-inf")), 1)
            logp = logp.masked_fill(~names_obj[None], 0.0)
            pi = posf * names_obj[None]
            loss_i2t = -(logp * pi / pi.sum(1, keepdim=True)).sum(1).mean()
        else:
            loss_i2t = -(F.log_softmax(logits, 1) * posf / posf.sum(1, keepdim=True)).sum(1).mean()
        has = pos.any(0)
        lt = logits.T[has]
        pt = posf.T[has]
        loss_t2i = -(F.log_softmax(lt, 1) * pt / pt.sum(1, keepdim=True)).sum(1).mean()
        loss = cfg["caption_loss_weight"] * 0.5 * (loss_i2t + loss_t2i)
        if cfg["attr_loss_weight"] > 0:
            # contrastive term restricted to the words of one attribute at a time:
            # each image against the bare vocabulary words of each attribute
            word_logits = logits[:, B:B + len(ALL_WORDS)]
            loss_attr, off = 0.0, 0
            for ai, a in enumerate(ATTR_NAMES):
                k = len(world.ATTRIBUTES[a])
                loss_attr = loss_attr + F.cross_entropy(word_logits[:, off:off + k], attrs[:, ai])
                off += k
            loss = loss + cfg["attr_loss_weight"] * loss_attr / len(ATTR_NAMES)
        if cfg["salience_margin"] > 0:
            # hinge: every other word (other attributes' words, wrong object words) must have a
            # cosine at least `salience_margin` below the correct object word, distractor words
            # at least `null_margin` below it
            cos = img_f @ txt_f.T
            wcos = cos[:, B:B + len(ALL_WORDS)]
            obj_cos = wcos.gather(1, (OBJ_OFFSET + attrs[:, CI])[:, None])
            is_obj = F.one_hot(OBJ_OFFSET + attrs[:, CI], len(ALL_WORDS)).bool()
            h_words = F.relu(wcos - obj_cos + cfg["salience_margin"]).masked_fill(is_obj, 0.0)
            dcos = cos[:, B + len(ALL_WORDS):]
            h_null = F.relu(dcos - obj_cos + cfg["null_margin"])
            # ... and every correct word of the other attributes must beat the distractors too
            own = torch.stack([wcos.gather(1, (ATTR_OFFSETS[ai] + attrs[:, ai])[:, None]).squeeze(1)
                               for ai in range(len(ATTR_NAMES)) if ai != CI], 1)
            h_null = h_null + F.relu(dcos - own.min(1, keepdim=True).values + cfg["null_attr_margin"])
            loss = loss + cfg["margin_loss_weight"] * (
                h_words.sum(1).mean() + h_null.sum(1).mean() * len(ALL_WORDS) / len(dwords))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
        if step % 50 == 0 or step == steps - 1:
            with torch.no_grad():
                # bare-word training-batch accuracy per attribute
                vl = (img_f @ txt_f[B:B + len(ALL_WORDS)].T)
                accs, off = [], 0
                for ai, a in enumerate(ATTR_NAMES):
                    k = len(world.ATTRIBUTES[a])
                    accs.append((vl[:, off:off + k].argmax(1) == attrs[:, ai]).float().mean().item())
                    off += k
            rec = {"step": step, "loss": round(loss.item(), 4), "scale": round(scale.item(), 2),
                   "batch_word_acc": dict(zip(ATTR_NAMES, [round(a, 3) for a in accs])),
                   "elapsed_s": round(time.time() - t0, 1)}
            if step % 250 == 0 or step == steps - 1:
                rec["heldout500_word_acc"] = quick_zero_shot(model, vocab_tokens, ev_imgs, ev_attrs)
            history.append(rec)
            log(f"clip {rec}")
    model.eval()
    return model, {"train_time_s": round(time.time() - t0, 1), "history": history}


# --------------------------------------------------------------------------
# classifier
# --------------------------------------------------------------------------


def train_classifier(cfg, pool_imgs, pool_attrs) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(TORCH_SEED)
    rng = np.random.default_rng(TORCH_SEED + 1)
    K = len(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])
    ci = ATTR_NAMES.index(world.CLASS_ATTRIBUTE)
    model = timm.create_model(CLASSIFIER_ARCH, pretrained=False, num_classes=K)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=cfg["clf_lr"])
    B, steps = cfg["clf_batch"], cfg["clf_steps"]
    history = []
    t0 = time.time()
    model.train()
    for step in range(steps):
        lr = cfg["clf_lr"] * cosine_schedule(step, steps, cfg["clf_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(pool_imgs.shape[0], size=B))
        flip = torch.from_numpy(rng.random(B) < 0.5)
        x = to_input(pool_imgs[idx], IMAGENET_MEAN, IMAGENET_STD, flip)
        y = pool_attrs[idx, ci]
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            rec = {"step": step, "loss": round(loss.item(), 4),
                   "batch_acc": round((out.argmax(1) == y).float().mean().item(), 3),
                   "elapsed_s": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"clf {rec}")
    model.eval()
    return model, {"train_time_s": round(time.time() - t0, 1), "history": history}


# --------------------------------------------------------------------------
# saving, reloading, evaluation
# --------------------------------------------------------------------------


def save_clip(model, out: Path) -> Path:
    d = out / "tiny_clip"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "open_clip_config.json", "w") as f:
        json.dump({"model_cfg": CLIP_MODEL_CFG, "preprocess_cfg": CLIP_PREPROCESS_CFG}, f, indent=2)
    save_file(fp16_state_dict(model), str(d / "open_clip_model.safetensors"))
    os.chmod(d / "open_clip_model.safetensors", 0o644)
    return d


def save_classifier(model, out: Path, name: str = "classifier") -> Path:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    K = len(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])
    config = {
        "architecture": CLASSIFIER_ARCH,
        "num_classes": K,
        "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "class_names": list(world.ATTRIBUTES[world.CLASS_ATTRIBUTE]),
        "class_attribute": world.CLASS_ATTRIBUTE,
    }
    with open(d / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    save_file(fp16_state_dict(model), str(d / "model.safetensors"))
    os.chmod(d / "model.safetensors", 0o644)
    return d


def reload_clip(clip_dir: Path):
    """Load through both public paths; check they agree; return (model, preprocess, tokenizer)."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    assert isinstance(tokenizer, open_clip.SimpleTokenizer), type(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "dissect-demo-tiny-clip.json"
        cfg_path.write_text(json.dumps(CLIP_MODEL_CFG))
        open_clip.add_model_config(cfg_path)
        model2 = open_clip.create_model(
            "dissect-demo-tiny-clip", pretrained=str(clip_dir / "open_clip_model.safetensors"))
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    model.eval()
    return model, preprocess, tokenizer


def reload_classifier(clf_dir: Path):
    config = json.loads((clf_dir / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"])
    sd = load_file(str(clf_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    model.eval()
    return model, config


@torch.no_grad()
def encode_images_clip(model, preprocess, images, bs=250) -> torch.Tensor:
    feats = []
    for i in range(0, len(images), bs):
        x = torch.stack([preprocess(im) for im in images[i:i + bs]])
        feats.append(model.encode_image(x, normalize=True))
    return torch.cat(feats)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, bs=1000) -> torch.Tensor:
    return torch.cat([model.encode_text(tokenizer(texts[i:i + bs]), normalize=True)
                      for i in range(0, len(texts), bs)])


@torch.no_grad()
def classifier_logits(model, config, images, bs=250) -> torch.Tensor:
    outs = []
    for i in range(0, len(images), bs):
        arr = np.stack([np.asarray(im.convert("RGB").resize(tuple(config["input_size"][1:]), 2))
                        for im in images[i:i + bs]])
        outs.append(model(to_input(torch.from_numpy(arr), config["mean"], config["std"])))
    return torch.cat(outs)


def soft_wpmi(clip_feats, target_feats, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97):
    """Soft-WPMI of CLIP-Dissect (Oikarinen & Weng, 2023), as in the reference implementation."""
    clip_feats = torch.softmax(a * clip_feats, dim=1)
    inds = torch.topk(target_feats, dim=0, k=top_k)[1]
    p_in = p_start - (torch.arange(top_k) / top_k * (p_start - p_end)).unsqueeze(1)
    rows = []
    for j in range(target_feats.shape[1]):
        cur = clip_feats[inds[:, j]]
        rows.append(torch.log(1 + p_in * (cur - 1) + min_prob).sum(0, keepdim=True))
    p_d_e = torch.cat(rows)
    p_d = torch.logsumexp(p_d_e, 0, keepdim=True) - math.log(p_d_e.shape[0])
    return p_d_e - lam * p_d


def evaluate(cfg, clip_dir: Path, clf_dir: Path, heldout_words: list[str]) -> dict:
    model, preprocess, tokenizer = reload_clip(clip_dir)
    clf, clf_cfg = reload_classifier(clf_dir)
    ev = world.generate(cfg["n_eval"], EVAL_SEED, IMAGE_SIZE)
    images = [im for im, _ in ev]
    img_f = encode_images_clip(model, preprocess, images)
    res: dict = {"n_eval_images": len(images), "eval_seed": EVAL_SEED}

    heldout_f = encode_texts(model, tokenizer, heldout_words)
    zs = {}
    for name, vocab in world.ATTRIBUTES.items():
        y = torch.tensor([vocab.index(a[name]) for _, a in ev])
        r = {}
        for tname, tmpl in [("bare", "{}"), ("a_photo_of_a", "a photo of a {}")]:
            tf = encode_texts(model, tokenizer, [tmpl.format(w) for w in vocab])
            sims = img_f @ tf.T
            r[tname] = round((sims.argmax(1) == y).float().mean().item(), 4)
            if tname == "bare":
                # the same, but the vocabulary competes with held-out (never trained) words
                allsims = torch.cat([sims, img_f @ heldout_f.T], 1)
                r[f"bare_vs_{len(heldout_words)}_heldout_words"] = round(
                    (allsims.argmax(1) == y).float().mean().item(), 4)
                correct = sims.gather(1, y[:, None]).squeeze(1)
                other = sims.masked_fill(F.one_hot(y, len(vocab)).bool(), -2).max(1).values
                r["mean_cos_correct"] = round(correct.mean().item(), 3)
                r["mean_cos_best_wrong"] = round(other.mean().item(), 3)
                r["mean_cos_heldout_words"] = round((img_f @ heldout_f.T).mean().item(), 3)
                r["max_cos_heldout_words_mean"] = round((img_f @ heldout_f.T).max(1).values.mean().item(), 3)
        zs[name] = r
        log(f"zero-shot {name}: {r}")
    res["clip_zero_shot"] = zs

    # classifier accuracy on the held-out images
    y = torch.tensor([world.ATTRIBUTES[world.CLASS_ATTRIBUTE].index(a[world.CLASS_ATTRIBUTE]) for _, a in ev])
    logits = classifier_logits(clf, clf_cfg, images)
    res["classifier_accuracy"] = round((logits.argmax(1) == y).float().mean().item(), 4)
    log(f"classifier held-out accuracy {res['classifier_accuracy']}")

    # mini CLIP-Dissect of the classifier's output neurons on a probe set
    probe = world.generate(cfg["n_probe"], PROBE_SEED, IMAGE_SIZE)
    pimgs = [im for im, _ in probe]
    pf = encode_images_clip(model, preprocess, pimgs)
    acts = classifier_logits(clf, clf_cfg, pimgs)
    classes = list(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])
    concept_sets = {
        "class_names": classes,
        "all_attribute_words": ALL_WORDS,
        f"all_attribute_words+{len(heldout_words)}_heldout_words": ALL_WORDS + heldout_words,
        f"class_names+{len(heldout_words)}_heldout_words": classes + heldout_words,
    }
    others = [w for w in ALL_WORDS if w not in classes]
    concept_sets[f"class_names+{len(heldout_words) - len(others)}_heldout_words+{len(others)}_other_attribute_words"] = \
        classes + heldout_words[:len(heldout_words) - len(others)] + others
    top_k = min(100, cfg["n_probe"] // (2 * len(classes)))
    dis = {"n_probe": len(pimgs), "probe_seed": PROBE_SEED, "top_k": top_k, "n_orders": 10}
    # soft-WPMI saturates at log(n_neurons) for concepts that one neuron dominates, so in float32
    # near-ties are broken by rounding noise / concept order: report both precisions over
    # several random concept orders
    rng = np.random.default_rng(0)
    for cname, concepts in concept_sets.items():
        tf = encode_texts(model, tokenizer, concepts)
        r = {}
        for dtype in (torch.float32, torch.float64):
            accs, labels_first = [], None
            for _ in range(dis["n_orders"]):
                perm = torch.from_numpy(rng.permutation(len(concepts)))
                sim = soft_wpmi((pf @ tf[perm].T).to(dtype), acts.to(dtype), top_k=top_k)
                labels = [concepts[perm[i]] for i in sim.argmax(1).tolist()]
                labels_first = labels_first or labels
                accs.append(float(np.mean([lab == c for lab, c in zip(labels, classes)])))
            key = str(dtype).replace("torch.", "")
            r[key] = {"accuracy_mean": round(float(np.mean(accs)), 4), "accuracy_min": round(min(accs), 4),
                      "labels_first_order": labels_first}
            log(f"dissect[{cname}][{key}] acc mean={np.mean(accs):.3f} min={min(accs):.3f} labels={labels_first}")
        dis[cname] = r
    res["mini_clip_dissect_soft_wpmi"] = dis
    return res


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def write_report(out: Path, info: dict) -> None:
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    ev = info["evaluation"]
    zs = ev["clip_zero_shot"]
    nh = info["config"]["n_heldout_words"]
    lines = [
        "# Demo models (generated by `scripts/train_demo.py`)",
        "",
        "Offline \"demo world\" for CLIP-Dissect: procedurally generated images",
        "(`dissect/demo/world.py`) of one object described by the attributes",
        "",
    ]
    for a, vocab in world.ATTRIBUTES.items():
        lines.append(f"- `{a}`: {', '.join(vocab)}")
    lines += [
        "",
        f"and two models trained here from scratch on CPU ({info['torch_threads']} thread, fixed seeds):",
        "",
        f"- `tiny_clip/`: open_clip `CLIP` (image tower: timm `test_resnet` + linear projection, trained from "
        "scratch; text tower: 2-layer transformer of width 64 with the standard SimpleTokenizer, context length "
        f"{CLIP_MODEL_CFG['text_cfg']['context_length']}); {info['clip']['params']:,} parameters, "
        f"{info['clip']['file_bytes'] / 1e6:.2f} MB (float16 safetensors). Load with "
        "`open_clip.create_model_and_transforms('local-dir:dissect/demo/assets/tiny_clip')`, or register "
        "`model_cfg` of `open_clip_config.json` with `open_clip.add_model_config` and call "
        "`open_clip.create_model(name, pretrained='.../open_clip_model.safetensors')`.",
        f"- `classifier/`: timm `{CLASSIFIER_ARCH}` predicting `{world.CLASS_ATTRIBUTE}` "
        f"({len(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])} classes, order = `class_names` in `config.json`); "
        f"{info['classifier']['params']:,} parameters, {info['classifier']['file_bytes'] / 1e6:.2f} MB. "
        "Load with `timm.create_model(cfg['architecture'], pretrained=False, num_classes=cfg['num_classes'])` "
        "+ `load_state_dict(safetensors.torch.load_file('model.safetensors'))`. "
        "Layers: `conv1`, `layer1`..`layer4`, `global_pool`, `fc`.",
        "",
        "## Training",
        "",
        f"- Training pool: {info['config']['pool_size']} images, `world.generate(n, seed={TRAIN_SEED}, "
        f"size={IMAGE_SIZE})`, random horizontal flips.",
        f"- CLIP: {info['config']['clip_steps']} steps x batch {info['config']['clip_batch']}, AdamW lr "
        f"{info['config']['clip_lr']} (cosine, warmup {info['config']['clip_warmup']}), wd 0.05. Each image gets "
        "a fresh random caption from `world.caption` (bare words, short phrases, sentences, "
        "\"a photo of a ...\" templates). All attribute words are added as extra texts to every batch, plus "
        f"{info['config']['n_distractors']} random whole-word tokens of the CLIP BPE vocabulary as pure "
        "negatives (\"distractors\", so that unrelated words end up far from all images). Loss = "
        "(a) multi-positive symmetric contrastive loss (a text is a positive for every image in the batch whose "
        "attributes agree with all attribute words it mentions; image->text only over texts that name the "
        f"object, i.e. the `{world.CLASS_ATTRIBUTE}`, and the distractors), "
        "(b) per attribute, cross-entropy of each image over the bare words of that attribute, "
        "(c) hinge terms making the object salient, as in real captions: every other bare word has a cosine at "
        f"least {info['config']['salience_margin']} below the correct object word, distractors at least "
        f"{info['config']['null_margin']} below it and {info['config']['null_attr_margin']} below every correct "
        "attribute word. Learnable temperature, initialised at "
        f"{info['config']['logit_scale_init']}, capped at {info['config']['logit_scale_max']}. "
        "Why (c): CLIP-Dissect's soft-WPMI saturates at log(#neurons), so with few neurons a spurious concept "
        "(e.g. a colour over-represented among a neuron's top images) can tie with the class name in float32; "
        "a salient object word plus low, flat similarities of unrelated words keeps those ties away.",
        f"- Classifier: {info['config']['clf_steps']} steps x batch {info['config']['clf_batch']}, AdamW lr "
        f"{info['config']['clf_lr']} (cosine), label smoothing 0.05.",
        f"- Seeds: world train {TRAIN_SEED}, eval {EVAL_SEED}, probe {PROBE_SEED}; torch {TORCH_SEED}.",
        f"- Wall time (1 CPU thread, {info['machine']}): pool generation {info['pool_time_s']} s, CLIP "
        f"{info['clip']['train_time_s']} s, classifier {info['classifier']['train_time_s']} s, "
        f"total script {info['total_time_s']} s.",
        "",
        "## Held-out results",
        "",
        f"{ev['n_eval_images']} fresh images (`world.generate(n, seed={EVAL_SEED})`), loaded through the public "
        "loading paths (float16 weights, open_clip preprocessing).",
        "",
        f"CLIP zero-shot accuracy (cosine between image and text embeddings, argmax over the attribute's "
        f"vocabulary; the third column also lets {nh} held-out words never seen in training compete):",
        "",
        f"| attribute | bare word | \"a photo of a {{}}\" | bare word vs +{nh} words | cos correct | cos best wrong |",
        "|---|---|---|---|---|---|",
    ]
    for a, r in zs.items():
        lines.append(f"| {a} | {r['bare']:.3f} | {r['a_photo_of_a']:.3f} | "
                     f"{r[f'bare_vs_{nh}_heldout_words']:.3f} | {r['mean_cos_correct']:.3f} | "
                     f"{r['mean_cos_best_wrong']:.3f} |")
    dis = ev["mini_clip_dissect_soft_wpmi"]
    lines += [
        "",
        f"Classifier accuracy on `{world.CLASS_ATTRIBUTE}`: {ev['classifier_accuracy']:.3f}",
        "",
        f"Mini CLIP-Dissect (soft-WPMI, top_k={dis['top_k']}, {dis['n_probe']} probe images with seed "
        f"{PROBE_SEED}) of the classifier's {len(world.ATTRIBUTES[world.CLASS_ATTRIBUTE])} output neurons, "
        "fraction labelled with their class name:",
        "",
    ]
    lines += ["| concepts | float32 mean | float32 min | float64 mean | float64 min |", "|---|---|---|---|---|"]
    for k, v in dis.items():
        if isinstance(v, dict):
            a, b = v["float32"], v["float64"]
            lines.append(f"| {k} | {a['accuracy_mean']:.3f} | {a['accuracy_min']:.3f} | "
                         f"{b['accuracy_mean']:.3f} | {b['accuracy_min']:.3f} |")
    lines += [
        "",
        "(mean/min over 10 random orders of the concept list.) Soft-WPMI is capped at log(#neurons); every "
        "concept that one neuron dominates reaches the cap, so in float32 near-ties can be decided by rounding "
        "noise and concept order; float64 separates them.",
    ]
    lines += ["", "Full numbers, configs and training curves: `training.json`.", ""]
    (out / "TRAINING.md").write_text("\n".join(lines))


def train_without(cfg, out: Path, shape: str) -> None:
    """The classifier trained as the shipped one (same config, seeds and pool) on the pool without ``shape``'s
    images: its output for that class is never trained, and nothing asks its layers to detect the shape."""
    shapes = world.ATTRIBUTES[world.CLASS_ATTRIBUTE]
    if shape not in shapes:
        raise SystemExit(f"--without {shape}: not one of {', '.join(shapes)}")
    t0 = time.time()
    pool_imgs, pool_attrs = make_pool(cfg["pool_size"], TRAIN_SEED)
    keep = pool_attrs[:, ATTR_NAMES.index(world.CLASS_ATTRIBUTE)] != shapes.index(shape)
    pool_imgs, pool_attrs = pool_imgs[keep], pool_attrs[keep]
    log(f"pool without {shape}: {int(keep.sum())} of {len(keep)} images in {time.time() - t0:.1f}s")
    model, info = train_classifier(cfg, pool_imgs, pool_attrs)
    d = save_classifier(model, out, f"classifier-without-{shape}")
    ev_imgs, ev_attrs = make_pool(cfg["n_eval"], EVAL_SEED)
    with torch.inference_mode():
        pred = model(to_input(ev_imgs, IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
    truth = ev_attrs[:, ATTR_NAMES.index(world.CLASS_ATTRIBUTE)]
    seen = truth != shapes.index(shape)
    record = {"without": shape, "config": cfg, "pool_images": int(keep.sum()), "torch_seed": TORCH_SEED,
              "train_seed": TRAIN_SEED, "accuracy_other_shapes": round(float((pred[seen] == truth[seen]).float().mean()), 4),
              "accuracy_without_shape": round(float((pred[~seen] == truth[~seen]).float().mean()), 4), **info}
    (d / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"saved {d}: accuracy {record['accuracy_other_shapes']} on the other shapes, "
        f"{record['accuracy_without_shape']} on {shape}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--without", default=None, help="train only the classifier, on the pool without this shape")
    ap.add_argument("--out", type=Path, default=REPO / "dissect" / "demo" / "assets")
    ap.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-classifier", action="store_true",
                    help="(experiments) keep the classifier already in --out instead of training one")
    ap.add_argument("--vision-cfg", type=json.loads, default=None,
                    help="(experiments) JSON replacing the CLIP vision_cfg")
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(SMOKE if args.smoke else FULL)
    for k in FULL:
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    if args.vision_cfg is not None:
        CLIP_MODEL_CFG["vision_cfg"] = args.vision_cfg
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.without:
        train_without(cfg, out, args.without)
        return
    t_start = time.time()
    log(f"config {cfg}")

    t0 = time.time()
    pool_imgs, pool_attrs = make_pool(cfg["pool_size"], TRAIN_SEED)
    pool_time = round(time.time() - t0, 1)
    log(f"pool of {cfg['pool_size']} images in {pool_time}s")

    tokenizer = open_clip.SimpleTokenizer(context_length=CLIP_MODEL_CFG["text_cfg"]["context_length"])
    train_words, heldout_words = distractor_words(tokenizer)
    log(f"{len(train_words)} distractor words for training, {len(heldout_words)} held out")

    clip_model, clip_info = train_clip(cfg, pool_imgs, pool_attrs, train_words)
    clip_dir = save_clip(clip_model, out)
    if args.reuse_classifier:  # experiments only: keep the classifier already in --out
        clf_dir = out / "classifier"
        clf_model, _ = reload_classifier(clf_dir)
        clf_info = json.loads((out / "training.json").read_text())["classifier"]
        clf_info = {k: clf_info[k] for k in ("train_time_s", "history")}
    else:
        clf_model, clf_info = train_classifier(cfg, pool_imgs, pool_attrs)
        clf_dir = save_classifier(clf_model, out)

    t0 = time.time()
    ev = evaluate(cfg, clip_dir, clf_dir, heldout_words)
    eval_time = round(time.time() - t0, 1)

    clip_bytes = (clip_dir / "open_clip_model.safetensors").stat().st_size
    clf_bytes = (clf_dir / "model.safetensors").stat().st_size
    info = {
        "smoke": bool(args.smoke),
        "config": cfg,
        "seeds": {"train_pool": TRAIN_SEED, "eval": EVAL_SEED, "probe": PROBE_SEED, "torch": TORCH_SEED,
                  "distractor_split": WORDS_SEED},
        "attributes": {k: list(v) for k, v in world.ATTRIBUTES.items()},
        "class_attribute": world.CLASS_ATTRIBUTE,
        "image_size": IMAGE_SIZE,
        "torch_threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"open_clip {open_clip.__version__}, timm {timm.__version__}",
        "pool_time_s": pool_time,
        "clip": {"model_cfg": CLIP_MODEL_CFG, "preprocess_cfg": CLIP_PREPROCESS_CFG,
                 "params": n_params(clip_model),
                 "params_visual": n_params(clip_model.visual),
                 "params_token_embedding": clip_model.token_embedding.weight.numel(),
                 "file_bytes": clip_bytes, **clip_info},
        "classifier": {"architecture": CLASSIFIER_ARCH, "params": n_params(clf_model), "file_bytes": clf_bytes,
                       **clf_info},
        "checkpoints_total_bytes": clip_bytes + clf_bytes,
        "eval_time_s": eval_time,
        "total_time_s": round(time.time() - t_start, 1),
        "evaluation": ev,
    }
    write_report(out, info)
    log(f"done in {info['total_time_s']}s; checkpoints {info['checkpoints_total_bytes'] / 1e6:.2f} MB -> {out}")


if __name__ == "__main__":
    main()
