"""Where the demo worlds' models live and what they are: the public specs that load them, and their concept sets.

Kept apart from :mod:`dissect.demo` (which runs the demo) so that :mod:`dissect.demo.two_worlds` and the
scripts read them without importing the runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..concepts import load_concepts
from .world import ATTRIBUTES

N_COMMON_WORDS = 600
#: The shipped list the distractor words come from (recorded in demo.json).
COMMON_WORDS = "3k-clean"


def assets_dir() -> Path:
    """The shipped demo models ($DISSECT_DEMO_ASSETS points elsewhere, e.g. to a fresh training run)."""
    import os

    env = os.environ.get("DISSECT_DEMO_ASSETS")
    return Path(env) if env else Path(str(resources.files("dissect.demo") / "assets"))


@dataclass
class DemoSpecs:
    """The public specs that load the demo models (usable with every command)."""

    clip: str
    model: str
    weights: str
    model_args: dict[str, Any]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    class_names: list[str]
    final_layer: str
    hidden_layers: list[str]

    def command_line(self) -> str:
        """The equivalent `dissect record` options."""
        args = " ".join(f"--model-arg {k}={v}" for k, v in self.model_args.items())
        return (
            f"--model {self.model} --weights {self.weights} {args} --input-size {self.input_size} "
            f"--crop-pct {self.crop_pct} --mean {','.join(map(str, self.mean))} --std {','.join(map(str, self.std))} "
            f"--interpolation {self.interpolation}"
        )


def demo_specs(root: Path | None = None) -> DemoSpecs:
    """The demo world's models (``root``: another world's assets folder of the same layout)."""
    root = root or assets_dir()
    clip_dir, clf_dir = root / "tiny_clip", root / "classifier"
    cfg = json.loads((clf_dir / "config.json").read_text())
    return DemoSpecs(
        clip=f"{clip_dir / 'open_clip_config.json'}:{clip_dir / 'open_clip_model.safetensors'}",
        model=f"timm:{cfg['architecture']}",
        weights=str(clf_dir / "model.safetensors"),
        model_args={"num_classes": int(cfg["num_classes"]), **cfg.get("model_args", {})},
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        interpolation=cfg.get("interpolation", "bilinear"),
        class_names=list(cfg["class_names"]),
        final_layer=cfg.get("final_layer", "fc"),
        hidden_layers=list(cfg.get("hidden_layers", ["layer3", "layer4"])),
    )


#: Common English words among the scenes world's concepts (about 310 in all, as on the independent world of #23).
N_SCENES_COMMON_WORDS = 270


def scenes_specs() -> DemoSpecs:
    """The scenes world's models (:mod:`dissect.demo.scenes`: a multi-label classifier, a separately trained CLIP)."""
    return demo_specs(assets_dir() / "scenes")


def scenes_concepts() -> list[str]:
    """The scenes world's concept set: its words among common English words."""
    from .scenes import WORDS

    words = [w for kind in WORDS.values() for w in kind]
    common = [w for w in load_concepts(COMMON_WORDS).concepts if w not in set(words)][:N_SCENES_COMMON_WORDS]
    return words + common


def world_words() -> list[str]:
    """Every attribute word of the world, in vocabulary order."""
    return [w for vocab in ATTRIBUTES.values() for w in vocab]


def concept_sets(class_names: list[str]) -> dict[str, list[str]]:
    """The demo's two concept sets: the class names, and a larger mixed set.

    The mixed set holds the class names, the world's other attribute words and the
    first 600 words of the shipped ``3k-clean`` set (``3k`` without profanity) that are
    not world words, so the right answer has to win against hundreds of distractors.
    """
    words = world_words()
    common = [w for w in load_concepts(COMMON_WORDS).concepts if w not in set(words)][:N_COMMON_WORDS]
    mixed = list(dict.fromkeys(class_names + words + common))
    return {"classes": list(class_names), "mixed": mixed}
