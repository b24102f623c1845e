"""dissect: label the neurons of vision networks with CLIP-Dissect.

The pipeline stages are plain functions (each writes one artifact):

    >>> import dissect
    >>> dissect.embed_images(["val/"], clip="ViT-B-16:openai", out="images.h5")
    >>> dissect.embed_text("20k", clip="ViT-B-16:openai", out="text.h5")
    >>> dissect.record(["val/"], model="torchvision:resnet50", layers=["layer4"], out="activations.h5")
    >>> dissect.label(images="images.h5", text="text.h5", activations="activations.h5", out="labels.parquet")

Heavy imports (torch, open_clip, timm) happen on first use, so ``import dissect``
and the command line start fast.
"""

__version__ = "0.2.0"

_LAZY = {
    "embed_images": "dissect.embed",
    "embed_text": "dissect.embed",
    "record": "dissect.record",
    "list_layers": "dissect.record",
    "label": "dissect.label",
    "run": "dissect.pipeline",
    "load_concepts": "dissect.concepts",
    "DissectError": "dissect.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dissect' has no attribute {name!r}")
