"""Stage 5: how good are the labels? The paper's final-layer protocol (§4.2, App. A.8).

For each unit of a layer whose true concept is known (a classifier's final layer:
unit k is class k), the label is compared with the true name:

    exact        normalise(label) == normalise(truth)
    top-K        normalise(truth) is among the unit's first K candidates
    clip_cos     cosine of the two texts in a CLIP text-embedding space
    sentence_cos cosine in a sentence-transformers space (all-mpnet-base-v2 in the paper)

normalise() lower-cases, turns '_' into spaces, strips and collapses whitespace.
A unit is "interpretable" when its similarity exceeds a cutoff τ (App. A.8: 0.16
for SoftWPMI). Several labels files give the paper's Table 3 layout: one row per
file, one column per metric.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import InputError, UsageError
from .runtime import info, resolve_device, warn

#: The sentence-embedding model of the paper's "mpnet cos".
DEFAULT_SENTENCE_MODEL = "all-mpnet-base-v2"
EVAL_EXTRA = "pip install 'clip-dissect[eval]'"


def normalise(name: str) -> str:
    """'Great_White  shark ' -> 'great white shark'."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip().lower()


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------

@dataclass
class Truth:
    """The true concept of each unit: ``names[unit]``."""

    names: dict[int, str]
    source: str


def load_truth(spec: str | os.PathLike) -> Truth:
    """``imagenet`` / ``cifar100`` (class k's name for unit k), a .txt file (line k for
    unit k, repeats allowed) or a .csv/.tsv table with columns ``unit`` and ``name``."""
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"truth file {path} is not UTF-8 text", hint="save it as UTF-8") from None
        if path.suffix.lower() in (".csv", ".tsv"):
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
            if not rows or not {"unit", "name"} <= set(rows[0]):
                raise InputError(f"truth table {path} needs columns 'unit' and 'name'", hint="e.g. unit,name / 0,tench")
            try:
                names = {int(r["unit"]): r["name"].strip() for r in rows}
            except (TypeError, ValueError):
                raise InputError(f"truth table {path}: every 'unit' must be an integer") from None
        else:
            lines = text.splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            names = {k: ln.strip() for k, ln in enumerate(lines) if ln.strip()}
        source = str(path.resolve())
    else:
        from .concepts import shipped_sets

        if spec not in ("imagenet", "cifar100") or spec not in shipped_sets():
            raise InputError(
                f"truth {spec!r} is neither a file nor a known class list",
                hint="use imagenet, cifar100, a .txt file (line k = unit k) or a unit,name .csv",
            )
        lines = resources.files("dissect.concept_sets").joinpath(f"{spec}.txt").read_text("utf-8").splitlines()
        names = {k: ln.strip() for k, ln in enumerate(lines) if ln.strip()}
        source = f"shipped:{spec}"
    if not names:
        raise InputError(f"truth {spec} names no classes", hint="put one class name per line")
    return Truth(names, source)


# ---------------------------------------------------------------------------
# Text spaces
# ---------------------------------------------------------------------------

class ClipTextSpace:
    """Cosines of texts in a CLIP text-embedding space."""

    def __init__(self, spec: str, device: str = "auto"):
        from .clip import load_clip

        self.spec = spec
        self.clip = load_clip(spec, resolve_device(device))

    def embed(self, texts: list[str]) -> np.ndarray:
        from .clip import encode_texts

        out = [encode_texts(self.clip, texts[s : s + 256]).numpy() for s in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


class SentenceSpace:
    """Cosines in a sentence-transformers space (optional extra)."""

    def __init__(self, model: str, device: str = "auto"):
        self.spec = model
        dev = resolve_device(device)
        from sentence_transformers import SentenceTransformer  # ImportError: caller reports

        self.model = SentenceTransformer(model, device=str(dev))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)


def open_sentence_space(model: str | None, device: str = "auto") -> SentenceSpace | None:
    """The sentence space, or None with a one-line notice saying how to get it."""
    if model is None or model.lower() == "none":
        return None
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        info(f"sentence cos left out: sentence-transformers is not installed ({EVAL_EXTRA})")
        return None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one status line per command, not a weights-loading bar
    except Exception:
        pass
    try:
        return SentenceSpace(model, device)
    except Exception as e:  # offline, unknown name, broken folder: all mean "not available"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        info(f"sentence cos left out: cannot load sentence model {model!r} ({first}); download it where there is "
             f"internet or pass a local copy with --sentence-model PATH")
        return None


def cosines_of_pairs(space, a: list[str], b: list[str]) -> np.ndarray:
    """cos(a[i], b[i]) in ``space``; each distinct text is embedded once."""
    texts = sorted(set(a) | set(b))
    emb = space.embed(texts)
    pos = {t: i for i, t in enumerate(texts)}
    ia = np.array([pos[t] for t in a], dtype=np.int64)
    ib = np.array([pos[t] for t in b], dtype=np.int64)
    return np.einsum("ij,ij->i", emb[ia].astype(np.float64), emb[ib].astype(np.float64))


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Per-unit rows (``units``, column -> list) and one summary per labels file (``summary``)."""

    units: dict[str, list]
    summary: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


UNIT_COLUMNS = ["labels", "similarity_fn", "concept_set", "layer", "unit", "label", "truth", "exact", "top_k",
                "clip_cos", "sentence_cos", "similarity", "interpretable"]


def _pick_layer(table, layer: str | None, truth: Truth, path) -> str:
    layers = list(dict.fromkeys(table["layer"]))
    if layer is not None:
        if layer not in layers:
            raise UsageError(f"{path} has no layer {layer!r}", hint=f"it holds: {', '.join(layers)}")
        return layer
    if len(layers) == 1:
        return layers[0]
    sizes = {name: sum(1 for x in table["layer"] if x == name) for name in layers}
    fits = [name for name in layers if sizes[name] == len(truth.names)]
    if len(fits) == 1:
        return fits[0]
    raise UsageError(f"{path} holds several layers ({', '.join(layers)})", hint="choose the one the truth describes with --layer")


def evaluate(
    labels: list[str | os.PathLike],
    truth: str | Truth,
    layer: str | None = None,
    clip: str | None = None,
    sentence_model: str | None = DEFAULT_SENTENCE_MODEL,
    top_k: int | None = None,
    cutoff: float | None = None,
    device: str = "auto",
) -> Evaluation:
    """Score each labels file's units against the truth (see the module docstring)."""
    import pyarrow.parquet as pq

    if not labels:
        raise UsageError("no LABELS file given", hint="pass one or more labels.parquet files")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    truth = truth if isinstance(truth, Truth) else load_truth(truth)
    files = []
    for path in labels:
        meta = A.read_labels_metadata(path)
        table = pq.read_table(path).to_pydict()
        files.append((Path(path), meta, table, _pick_layer(table, layer, truth, path)))

    clip_spec = clip or files[0][1].get("clip")
    if not clip_spec:
        raise UsageError(f"{files[0][0]} does not record its CLIP model", hint="pass --clip MODEL:PRETRAINED")
    clip_space = ClipTextSpace(clip_spec, device)
    sentence = open_sentence_space(sentence_model, device)

    units: dict[str, list] = {c: [] for c in UNIT_COLUMNS}
    summary = []
    for path, meta, table, name in files:
        rows = [i for i, x in enumerate(table["layer"]) if x == name]
        kept = [i for i in rows if int(table["unit"][i]) in truth.names]
        if not kept:
            raise UsageError(f"no unit of layer {name} in {path} has a true name in {truth.source}",
                             hint="check --layer and --truth")
        if len(kept) < len(rows):
            warn(f"{path}: {len(rows) - len(kept)} unit(s) of {name} have no true name and are left out")
        lab = [table["label"][i] for i in kept]
        tru = [truth.names[int(table["unit"][i])] for i in kept]
        exact = [normalise(a) == normalise(b) for a, b in zip(lab, tru)]
        k = top_k or max(len(table["candidates"][i]) for i in kept)
        topk = [normalise(t) in {normalise(c) for c in table["candidates"][i][:k]} for i, t in zip(kept, tru)]
        ccos = cosines_of_pairs(clip_space, lab, tru)
        scos = cosines_of_pairs(sentence, lab, tru) if sentence is not None else np.full(len(kept), np.nan)
        sims = [float(table["similarity"][i]) for i in kept]
        concept_set = (meta.get("concepts") or {}).get("name", "")
        units["labels"] += [str(path)] * len(kept)
        units["similarity_fn"] += [meta.get("similarity", "")] * len(kept)
        units["concept_set"] += [concept_set] * len(kept)
        units["layer"] += [name] * len(kept)
        units["unit"] += [int(table["unit"][i]) for i in kept]
        units["label"] += lab
        units["truth"] += tru
        units["exact"] += exact
        units["top_k"] += topk
        units["clip_cos"] += ccos.tolist()
        units["sentence_cos"] += scos.tolist()
        units["similarity"] += sims
        units["interpretable"] += [None if cutoff is None else s > cutoff for s in sims]
        row: dict[str, Any] = {
            "labels": str(path),
            "similarity_fn": meta.get("similarity", ""),
            "concept_set": concept_set,
            "probe_images": (meta.get("probe") or {}).get("n_images"),
            "layer": name,
            "units": len(kept),
            "accuracy": float(np.mean(exact)),
            f"top{k}_accuracy": float(np.mean(topk)),
            "clip_cos": float(np.mean(ccos)),
            "sentence_cos": None if sentence is None else float(np.mean(scos)),
        }
        if cutoff is not None:
            per_layer = {}
            for lname in dict.fromkeys(table["layer"]):
                s = np.array([table["similarity"][i] for i, x in enumerate(table["layer"]) if x == lname], dtype=np.float64)
                per_layer[lname] = float(np.mean(s > cutoff))
            row["interpretable"] = per_layer
        summary.append(row)
    meta_out = {"truth": truth.source, "clip": clip_space.spec, "sentence_model": None if sentence is None else sentence.spec,
                "top_k": top_k, "cutoff": cutoff}
    for row in summary:
        row["settings"] = meta_out
    if sentence is None:
        units.pop("sentence_cos")
    if cutoff is None:
        units.pop("interpretable")
    return Evaluation(units, summary)


def write_evaluation(ev: Evaluation, out: str | os.PathLike) -> tuple[Path, Path]:
    """metrics.parquet (one row per unit and labels file) and metrics.json (the summary) beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    table = pa.Table.from_pydict(ev.units)
    meta = {"format": "dissect/evaluation", "version": A.FORMAT_VERSION, "summary": ev.summary,
            "provenance": json.loads(A.provenance(stage="evaluate"))}
    table = table.replace_schema_metadata({b"dissect": json.dumps(meta, default=str).encode()})
    with A.atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    summary_path = out.with_suffix(".json")
    with A.atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(ev.summary, indent=2, default=str) + "\n")
    return out, summary_path
