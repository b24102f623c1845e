"""A stage's inputs, opened and aligned by image id: image embeddings, text embeddings (or a concept set embedded
on demand) and recorded activations.

Every stage that reads more than one artifact made from the probe (label, compose, explain,
the evaluations) opens them here, so that they agree on which images they hold in one way:
the same ids in another order are reordered, images one pass skipped as unreadable are left
out with a warning, and anything else is a one-line error naming an id on one side only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import artifacts as A
from .errors import MismatchError, UsageError
from .runtime import warn


def skipped_ids(attrs: dict[str, Any]) -> set[str]:
    import json

    try:
        return {row[0] for row in json.loads(attrs.get("skipped") or "[]")}
    except (ValueError, TypeError, IndexError):
        return set()


def align_ids(images: A.Embeddings, acts: A.Activations) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Rows of the image embeddings and of the activations that pair up, in image order.

    (None, None) when the files hold the same ids in the same order. Images that one
    file holds and the other skipped (unreadable for one pass: see its ``skipped``
    attribute) are left out with a warning; any other difference is a MismatchError.
    """
    if acts.ids == images.keys:
        return None, None
    act_ids = set(acts.ids)
    img_ids = set(images.keys)
    if act_ids == img_ids:
        pos = {k: i for i, k in enumerate(acts.ids)}
        return None, np.array([pos[k] for k in images.keys])
    only_img = [k for k in images.keys if k not in act_ids]
    only_act = [k for k in acts.ids if k not in img_ids]
    skipped_by_acts, skipped_by_img = skipped_ids(acts.attrs), skipped_ids(images.attrs)
    unexplained_img = [k for k in only_img if k not in skipped_by_acts]
    unexplained_act = [k for k in only_act if k not in skipped_by_img]
    if unexplained_img or unexplained_act:
        example = (f"{unexplained_img[0]!r} is only in {images.path}" if unexplained_img
                   else f"{unexplained_act[0]!r} is only in {acts.path}")
        raise MismatchError(
            f"{images.path} ({len(images.keys)} images) and {acts.path} ({len(acts.ids)} images) "
            f"come from different probe sets: {example}",
            hint="run `dissect embed-images` and `dissect record` on the same PROBE arguments",
        )
    warn(f"leaving out {len(only_img) + len(only_act)} image(s) that one of the passes skipped as unreadable "
         f"({len(only_img)} only in {images.path}, {len(only_act)} only in {acts.path})")
    pos = {k: i for i, k in enumerate(acts.ids)}
    img_rows = np.array([i for i, k in enumerate(images.keys) if k in pos])
    act_rows = np.array([pos[images.keys[i]] for i in img_rows])
    return img_rows, act_rows


def aligned_images(img: A.Embeddings, acts: A.Activations) -> tuple[A.Embeddings, np.ndarray | None]:
    """The image embeddings that the activations also hold, in their own order, and the row order of the
    activations that pairs with them (None: the same ids in the same order)."""
    img_rows, order = align_ids(img, acts)
    if img_rows is not None:
        img = A.Embeddings(img.embeddings[img_rows], [img.keys[i] for i in img_rows], img.clip_model, img.clip_pretrained,
                           img.attrs, img.path)
    return img, order


def open_inputs(images, activations, text=None, concepts=None, layers=None, device="auto", cache=None, batch_size=256,
                clip=None):
    """Image embeddings, text embeddings and the activation file, aligned by id (as ``dissect label`` reads them).

    ``concepts`` are embedded with ``clip`` when given (a loaded ``clip.Clip``), else with the
    CLIP model images.h5 records. Returns (images, activations without matrices, row order of
    the activations or None, text)."""
    if (text is None) == (concepts is None):
        raise UsageError("give exactly one of --text and --concepts")
    img = A.read_image_embeddings(images)
    acts = A.read_activations(activations, layers, data=False)
    img, order = aligned_images(img, acts)
    if text is not None:
        txt = A.read_text_embeddings(text)
    else:
        from .embed import text_for_images

        txt = text_for_images(img, concepts, cache=cache, device=device, batch_size=batch_size, clip=clip)
    A.check_same_clip(img, txt)
    return img, acts, order, txt

