"""Train the models of the scenes world (``dissect/demo/scenes.py``) from scratch, and write
``dissect/demo/assets/scenes/`` (weights and training.json; TRAINING.md there describes them).

    python scripts/train_scenes.py            # about 10 minutes on one CPU thread
    python scripts/train_scenes.py --smoke    # a minute: checks that it runs

A second known world for measuring what dissect does where its demo-world choices were not
made: several objects per image, concepts from a third of the images down to 0.1%, and a CLIP
trained separately from the demo's, with another image tower (timm ``test_efficientnet``,
pre-trained on the world's words before the contrastive phase, instead of ``test_resnet``
trained contrastively from scratch), a deeper text tower and another loss: SigLIP's pairwise sigmoid loss
(every image-text pair a binary decision, with a learnt scale and bias) over captions, the
world's words and distractor words, instead of the demo CLIP's softmax contrastive loss with
salience terms. Both models train on images where every object is common
(``scenes.BALANCED``), as a web-scale CLIP knows concepts that are rare in a probe set; the
probe keeps the skewed prevalences. The classifier is a multi-label ``test_efficientnet``:
output unit k says whether object k is in the image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dissect.demo import scenes  # noqa: E402

IMAGE_SIZE = 64
TRAIN_SEED, EVAL_SEED, TORCH_SEED = 11, 12, 0
CLIP_MODEL_CFG = {
    "embed_dim": 128,
    "init_logit_bias": -10.0,  # SigLIP's learnt bias (part of the model: open_clip builds it from the config)
    "vision_cfg": {"image_size": IMAGE_SIZE, "timm_model_name": "test_efficientnet", "timm_model_pretrained": False,
                   "timm_pool": "avg", "timm_proj": "linear"},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3, "mlp_ratio": 4.0},
}
CLIP_PREPROCESS_CFG = {"size": IMAGE_SIZE, "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                       "interpolation": "bicubic", "resize_mode": "shortest"}
CLASSIFIER_ARCH = "test_efficientnet"
FULL = {"pool_size": 30000, "clip_steps": 1500, "clip_batch": 128, "clip_lr": 3e-3, "clip_warmup": 100,
        "n_distractors": 96, "caption_weight": 0.3, "logit_scale_init": 30.0, "logit_scale_max": 100.0,
        "tower_steps": 500, "clf_steps": 600, "clf_batch": 128, "clf_lr": 3e-3, "clf_warmup": 30, "n_eval": 4000}
SMOKE = dict(FULL, pool_size=2000, clip_steps=30, tower_steps=10, clf_steps=20, n_eval=400)
WORDS = [w for kind in scenes.WORDS.values() for w in kind]
TEMPLATE_WORDS = {"a", "an", "the", "on", "in", "of", "at", "and", "picture", "drawing", "frame"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def claims(scene: dict) -> set[str]:
    """What is true of a scene, as claims a text can make."""
    out = {f"bg:{scene['background']}"} | {f"fx:{e}" for e in scene["effects"]}
    for obj, color in scene["objects"]:
        out |= {f"obj:{obj}", f"color:{color}", f"pair:{obj}|{color}"}
    return out


def text_claims(text: str) -> set[str]:
    """What a caption or word claims: its objects, colours (bound to the object they precede), background, effects."""
    toks = re.findall(r"[a-z]+", text.lower())
    out = set()
    for i, t in enumerate(toks):
        if t in scenes.OBJECTS:
            out.add(f"obj:{t}")
            if i and toks[i - 1] in scenes.COLORS:
                out.add(f"pair:{t}|{toks[i - 1]}")
        elif t in scenes.COLORS and not (i + 1 < len(toks) and toks[i + 1] in scenes.OBJECTS):
            out.add(f"color:{t}")
    for t in toks:
        if t in scenes.BACKGROUNDS:
            out.add(f"bg:{t}")
    if "rain" in toks:
        out.add("fx:rain")
    if "frame" in toks and len(toks) == 1 or "in a frame" in text:
        out.add("fx:frame")
    return out


def make_pool(n: int, seed: int, balanced: bool = True):
    """Training images with every object and effect common (``scenes.BALANCED``); evaluation ones as a probe."""
    imgs = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    scenes_ = []
    for i, (img, scene) in enumerate(scenes.generate(n, seed, IMAGE_SIZE, balanced)):
        imgs[i] = np.asarray(img)
        scenes_.append(scene)
    return torch.from_numpy(imgs), scenes_


def to_input(imgs_u8, mean, std, flip=None):
    x = imgs_u8.permute(0, 3, 1, 2).float().div_(255.0)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fp16_state_dict(model):
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in model.state_dict().items()}


def distractors(tokenizer) -> list[str]:
    """Whole-word tokens of the CLIP vocabulary that the world never uses: texts no image matches."""
    return sorted({k[:-4] for k in tokenizer.encoder if k.endswith("</w>") and re.fullmatch(r"[a-z]{3,12}", k[:-4])}
                  - set(WORDS) - TEMPLATE_WORDS)


def pretrain_tower(cfg, trunk, pool_imgs, pool_scenes) -> dict:
    """Pre-train the image tower's trunk to tell the world's words apart (a multi-label head over them, dropped
    afterwards), as real CLIPs start from towers that already see objects; the contrastive phase then aligns the
    text tower with it. Without it, 1,000 contrastive steps learn colours and backgrounds but hardly any object."""
    rng = np.random.default_rng(TORCH_SEED + 2)
    y_all = torch.tensor([[w in scenes.truth(s) for w in WORDS] for s in pool_scenes], dtype=torch.float32)
    head = torch.nn.Linear(trunk.num_features, len(WORDS))
    params = list(trunk.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["clf_lr"], weight_decay=0.05)
    B, steps, t0 = cfg["clip_batch"], cfg["tower_steps"], time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg["clf_lr"] * schedule(step, steps, cfg["clf_warmup"])
        idx = torch.from_numpy(rng.integers(len(pool_scenes), size=B))
        x = to_input(pool_imgs[idx], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, torch.from_numpy(rng.random(B) < 0.5))
        loss = F.binary_cross_entropy_with_logits(head(trunk(x)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"tower {{'step': {step}, 'loss': {loss.item():.4f}}}")
    return {"tower_steps": steps, "tower_time_s": round(time.time() - t0, 1), "tower_final_loss": round(loss.item(), 4)}


def train_clip(cfg, pool_imgs, pool_scenes):
    torch.manual_seed(TORCH_SEED)
    rng = np.random.default_rng(TORCH_SEED)
    model = open_clip.CLIP(**CLIP_MODEL_CFG)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg["logit_scale_init"]))
    tower_info = pretrain_tower(cfg, model.visual.trunk, pool_imgs, pool_scenes) if cfg["tower_steps"] else {}
    tokenizer = open_clip.SimpleTokenizer(context_length=CLIP_MODEL_CFG["text_cfg"]["context_length"])
    pool_claims = [claims(s) for s in pool_scenes]
    word_claims = [text_claims(w) for w in WORDS]
    negatives = distractors(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["clip_lr"], betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    B, steps, history, t0 = cfg["clip_batch"], cfg["clip_steps"], [], time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg["clip_lr"] * schedule(step, steps, cfg["clip_warmup"])
        idx = rng.integers(len(pool_scenes), size=B)
        images = to_input(pool_imgs[torch.from_numpy(idx)], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
                          torch.from_numpy(rng.random(B) < 0.5))
        caps = [scenes.caption(pool_scenes[i], rng) for i in idx]
        dwords = [negatives[i] for i in rng.choice(len(negatives), cfg["n_distractors"], replace=False)]
        texts = caps + WORDS + dwords
        tclaims = [text_claims(c) for c in caps] + word_claims + [None] * len(dwords)
        pos = torch.tensor([[tc is not None and bool(tc) and tc <= pool_claims[i] for tc in tclaims] for i in idx])
        img_f = model.encode_image(images, normalize=True)
        txt_f = model.encode_text(tokenizer(texts), normalize=True)
        logits = model.logit_scale.exp() * img_f @ txt_f.T + model.logit_bias
        # SigLIP: every (image, text) pair a binary decision, positives +1 and negatives -1; the captions (each true
        # of about one image) weigh less than the words and distractors, which every image is decided on
        pair = -F.logsigmoid((2 * pos.float() - 1) * logits)
        loss = (cfg["caption_weight"] * pair[:, :B].sum(1) + pair[:, B:].sum(1)).mean() / 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(cfg["logit_scale_max"]))
        if step % 50 == 0 or step == steps - 1:
            rec = {"step": step, "loss": round(loss.item(), 4), "scale": round(model.logit_scale.exp().item(), 2),
                   "elapsed_s": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"clip {rec}")
    model.eval()
    return model, {"train_time_s": round(time.time() - t0, 1), "history": history, **tower_info}


def train_classifier(cfg, pool_imgs, pool_scenes):
    torch.manual_seed(TORCH_SEED)
    rng = np.random.default_rng(TORCH_SEED + 1)
    K = len(scenes.OBJECTS)
    y_all = torch.zeros(len(pool_scenes), K)
    for i, s in enumerate(pool_scenes):
        for obj, _ in s["objects"]:
            y_all[i, scenes.OBJECTS.index(obj)] = 1.0
    model = timm.create_model(CLASSIFIER_ARCH, pretrained=False, num_classes=K)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["clf_lr"], weight_decay=0.05)
    B, steps, history, t0 = cfg["clf_batch"], cfg["clf_steps"], [], time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg["clf_lr"] * schedule(step, steps, cfg["clf_warmup"])
        idx = torch.from_numpy(rng.integers(len(pool_scenes), size=B))
        out = model(to_input(pool_imgs[idx], IMAGENET_MEAN, IMAGENET_STD, torch.from_numpy(rng.random(B) < 0.5)))
        loss = F.binary_cross_entropy_with_logits(out, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            rec = {"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"clf {rec}")
    model.eval()
    return model, {"train_time_s": round(time.time() - t0, 1), "history": history}


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC (ties count one half); NaN without both classes."""
    pos, neg = scores[truth], scores[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([neg, pos]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([neg, pos])
    for v in np.unique(allv):  # mid-ranks for ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate(clip, clf, cfg) -> dict:
    """On fresh images: CLIP's AUC of each world word's cosine against the truth, the classifier's per object."""
    imgs, sc = make_pool(cfg["n_eval"], EVAL_SEED, balanced=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=CLIP_MODEL_CFG["text_cfg"]["context_length"])
    img_f = torch.cat([clip.encode_image(to_input(imgs[i:i + 250], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
                                         normalize=True) for i in range(0, len(imgs), 250)])
    cos = (img_f @ clip.encode_text(tokenizer(WORDS), normalize=True).T).numpy()
    truth = np.array([[w in scenes.truth(s) for w in WORDS] for s in sc])
    logits = torch.cat([clf(to_input(imgs[i:i + 250], IMAGENET_MEAN, IMAGENET_STD))
                        for i in range(0, len(imgs), 250)]).numpy()
    return {"clip_auc": {w: round(auc(cos[:, j], truth[:, j]), 4) for j, w in enumerate(WORDS)},
            "prevalence": {w: round(float(truth[:, j].mean()), 4) for j, w in enumerate(WORDS)},
            "classifier_auc": {o: round(auc(logits[:, k], truth[:, WORDS.index(o)]), 4)
                               for k, o in enumerate(scenes.OBJECTS)}}


def save(clip, clf, out: Path) -> None:
    (out / "tiny_clip").mkdir(parents=True, exist_ok=True)
    (out / "tiny_clip" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": CLIP_MODEL_CFG, "preprocess_cfg": CLIP_PREPROCESS_CFG}, indent=2))
    save_file(fp16_state_dict(clip), str(out / "tiny_clip" / "open_clip_model.safetensors"))
    (out / "classifier").mkdir(parents=True, exist_ok=True)
    (out / "classifier" / "config.json").write_text(json.dumps({
        "architecture": CLASSIFIER_ARCH, "num_classes": len(scenes.OBJECTS), "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear", "crop_pct": 1.0,
        "class_names": list(scenes.OBJECTS), "multi_label": True, "final_layer": "classifier",
        "hidden_layers": ["blocks.3", "conv_head"]}, indent=2))
    save_file(fp16_state_dict(clf), str(out / "classifier" / "model.safetensors"))
    for p in out.rglob("*.safetensors"):
        os.chmod(p, 0o644)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a short run that only checks the script")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "dissect" / "demo" / "assets" / "scenes")
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else FULL
    torch.set_num_threads(1)
    t0 = time.time()
    pool_imgs, pool_scenes = make_pool(cfg["pool_size"], TRAIN_SEED)
    log(f"pool of {len(pool_scenes)} scenes in {time.time() - t0:.1f}s")
    clip, clip_info = train_clip(cfg, pool_imgs, pool_scenes)
    clf, clf_info = train_classifier(cfg, pool_imgs, pool_scenes)
    results = evaluate(clip, clf, cfg)
    out = args.out if not args.smoke else Path("/tmp/train_scenes_smoke")
    save(clip, clf, out)
    info = {"config": cfg, "clip_model_cfg": CLIP_MODEL_CFG, "classifier": CLASSIFIER_ARCH, "clip": clip_info,
            "classifier_training": clf_info, "heldout": results, "seeds": {"train": TRAIN_SEED, "eval": EVAL_SEED,
                                                                            "torch": TORCH_SEED},
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "timm": timm.__version__},
            "total_s": round(time.time() - t0, 1)}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out} in {info['total_s']}s")


if __name__ == "__main__":
    main()
