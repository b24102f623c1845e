"""Stage 6: compositional labels (paper App. A.4): "striped animal", "water vehicle".

For each neuron, its top-K single concepts are combined in pairs through a template
("{a} {b}" as in the paper, or e.g. "{a} and {b}"); ``depth`` 3 extends the best
``beam`` pairs by a third candidate. The composed texts of a whole layer are
deduplicated, embedded once with the CLIP text encoder that made the single-concept
embeddings (and cached per CLIP model, so a rerun embeds nothing it has seen), and
scored with the same similarity function and parameters. For SoftWPMI and WPMI the
population term λ·log p(t) of every composed text is estimated over all neurons of
the layer, as for single concepts (``similarity.score_extra_texts``).

Cost per layer (C neurons, K candidates, N images, U unique composed texts ≤ C·K(K−1)/2):
embedding U texts, and scoring C × U similarities — the same work as labelling the
layer against a concept set of U texts (for SoftWPMI: the rows of each neuron's top
images only). Duplicates across neurons, which are common because neighbouring
neurons share candidates, are embedded and scored once.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import UsageError
from .runtime import note, progress, resolve_device, warn

def check_template(template: str) -> str:
    try:
        out = template.format(a="A", b="B")
    except (KeyError, IndexError, ValueError):
        raise UsageError(f"--template {template!r} must use exactly {{a}} and {{b}}", hint='e.g. "{a} {b}" or "{a} and {b}"') from None
    if "A" not in out or "B" not in out:
        raise UsageError(f"--template {template!r} must use both {{a}} and {{b}}", hint='e.g. "{a} {b}"')
    return template


# ---------------------------------------------------------------------------
# Embedding cache for composed texts
# ---------------------------------------------------------------------------

class ComposedTextCache:
    """Embeddings of composed texts for one CLIP model, in ``$DISSECT_CACHE/compose/<clip fingerprint>.h5``."""

    def __init__(self, clip_fingerprint: str, folder: str | os.PathLike | None = None):
        from .runtime import cache_dir

        self.path = Path(folder) if folder else cache_dir() / "compose"
        self.path = self.path / f"{clip_fingerprint}.h5"
        self.clip_fingerprint = clip_fingerprint
        self.texts: list[str] = []
        self.embeddings = np.zeros((0, 0), dtype=np.float32)
        attrs = A.peek_attrs(self.path, A.TEXT_FORMAT)
        if attrs is not None and attrs.get("clip_fingerprint") == clip_fingerprint:
            emb = A.read_text_embeddings(self.path)
            self.texts, self.embeddings = list(emb.keys), emb.embeddings

    def lookup(self, texts: list[str]) -> tuple[np.ndarray | None, list[str]]:
        """(embeddings of ``texts`` when all are cached, else None; the texts missing)."""
        pos = {t: i for i, t in enumerate(self.texts)}
        missing = [t for t in dict.fromkeys(texts) if t not in pos]
        if missing:
            return None, missing
        return self.embeddings[[pos[t] for t in texts]], []

    def add(self, texts: list[str], emb: np.ndarray, images: A.Embeddings) -> None:
        if not texts:
            return
        self.texts = self.texts + list(texts)
        self.embeddings = emb if self.embeddings.size == 0 else np.concatenate([self.embeddings, emb])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        attrs = {"clip_fingerprint": self.clip_fingerprint, "clip_spec": images.clip_spec,
                 "provenance": A.provenance(stage="compose cache")}
        A.write_embeddings(self.path, A.TEXT_FORMAT, self.embeddings, self.texts, images.clip_model, images.clip_pretrained, attrs)


def embed_composed(texts: list[str], images: A.Embeddings, device: str = "auto", cache: str | os.PathLike | None = None,
                   batch_size: int = 256, clip=None) -> tuple[np.ndarray, int]:
    """[U, d] embeddings of ``texts`` (unique) and how many had to be embedded now (with ``clip`` when loaded)."""
    store = ComposedTextCache(images.clip_fingerprint, cache)
    emb, missing = store.lookup(texts)
    if missing:
        from .clip import encode_texts, reload_clip

        clip = reload_clip(images.clip_spec, images.clip_fingerprint, str(images.path), resolve_device(device), clip)
        out = []
        with progress("embed compositions", len(missing), "texts") as advance:
            for s in range(0, len(missing), batch_size):
                out.append(encode_texts(clip, missing[s : s + batch_size]).numpy())
                advance(min(batch_size, len(missing) - s))
        store.add(missing, np.concatenate(out), images)
        emb, _ = store.lookup(texts)
    return emb, len(missing)


# ---------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------

def _score_owned(sim, q, I, concept_emb, scored_emb, owned: np.ndarray, params, max_memory) -> tuple[np.ndarray, np.ndarray | None]:
    """(sims, raw) [C, J]: neuron k's similarity with text owned[k, j] of ``scored_emb`` (−inf where owned < 0),
    and for SoftWPMI/WPMI its raw score (log-likelihood over the neuron's top images; None otherwise)."""
    from .similarity import METHODS, score_extra_texts

    C, J = owned.shape
    out = np.full((C, J), -np.inf, dtype=np.float64)
    raw = np.full((C, J), -np.inf, dtype=np.float64) if METHODS[sim].pmi else None
    flat = owned.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_t = flat[order]
    for s, block, score in score_extra_texts(sim, q, I, concept_emb, scored_emb, params, max_memory=max_memory,
                                             return_score=True):
        n = block.shape[1]
        lo, hi = np.searchsorted(sorted_t, [s, s + n])
        sel = order[lo:hi]
        if sel.size:
            k, j = np.divmod(sel, J)
            out[k, j] = block.cpu().numpy()[k, flat[sel] - s]
            if raw is not None:
                raw[k, j] = score.cpu().numpy()[k, flat[sel] - s]
    return out, raw


def compose(
    images: str | os.PathLike,
    activations: str | os.PathLike,
    out: str | os.PathLike | None,
    text: str | os.PathLike | None = None,
    concepts: str | None = None,
    labels: str | os.PathLike | None = None,
    sim: str = "softwpmi",
    params: dict[str, Any] | None = None,
    layers: list[str] | None = None,
    top_k: int = 10,
    template: str = "{a} {b}",
    ordered: bool = False,
    depth: int = 2,
    beam: int = 5,
    top: int = 5,
    device: str = "auto",
    max_memory: int | None = None,
    cache: str | os.PathLike | None = None,
    extra_metadata: dict[str, Any] | None = None,
    clip=None,
):
    """Compositional labels for the neurons of ``layers``; writes ``out`` (Parquet) and returns a pyarrow Table.

    Candidates are each neuron's top ``top_k`` single concepts, from ``labels`` (a
    labels.parquet made from the same inputs, whose ``candidates`` then decide the
    pairs whatever ``sim``) or computed here with ``sim``. ``clip``: the CLIP model of
    images.h5, already loaded, to embed the compositions with (otherwise loaded when
    they are not cached).
    """
    import pyarrow as pa
    import torch

    from .label import open_inputs
    from .similarity import memory_budget, resolve_params, score_layer

    check_template(template)
    if top_k < 2:
        raise UsageError(f"--top-k must be at least 2 to make pairs, got {top_k}")
    if depth not in (2, 3):
        raise UsageError(f"--depth must be 2 or 3, got {depth}")
    if beam < 1 or top < 1:
        raise UsageError("--beam and --top must be at least 1")
    params = resolve_params(sim, params)
    inputs = [images, activations, text, labels, concepts]
    if out is not None and str(out) != A.STDOUT:
        out = A.check_output_path(out, inputs)
    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, device, clip=clip)
    budget = memory_budget(max_memory)
    from .similarity import check_probe_size

    check_probe_size(sim, params, len(img.keys))
    given = None
    if labels is not None:
        lt = A.read_table(labels, A.LABELS_FORMAT, columns=["layer", "unit", "candidates"]).to_pydict()
        given = {(lay, int(u)): [x for x in (c or []) if x is not None]
                 for lay, u, c in zip(lt["layer"], lt["unit"], lt["candidates"])}
    dev = resolve_device(device)
    I = torch.from_numpy(img.embeddings).to(dev)
    T = torch.from_numpy(txt.embeddings).to(dev)
    concept_pos = {c: i for i, c in enumerate(txt.keys)}
    rows: dict[str, list] = {c: [] for c in A.COMPOSED_COLUMNS}
    n_embedded = n_texts = 0
    for name in acts.layers:
        q_np = A.read_activation_layer(activations, name)
        q = torch.from_numpy(q_np if order is None else q_np[order]).to(dev)
        C = q.shape[1]
        k = min(top_k, len(txt.keys))
        if given is not None:
            cand = []
            for u in range(C):
                names = given.get((name, u))
                if names is None:
                    raise UsageError(f"{labels} has no candidates for {name} unit {u}", hint="label the same layers first")
                missing = [c for c in names if c not in concept_pos]
                if missing:
                    raise UsageError(f"{labels} was made with other concepts ({missing[0]!r} is not in the concept set)",
                                     hint="pass the --text/--concepts it was labelled with")
                cand.append([concept_pos[c] for c in names[:k]])
            if min(len(c) for c in cand) < 2:
                raise UsageError(f"{labels} keeps fewer than 2 candidates per unit", hint="relabel with --top 10")
        else:
            with progress(f"{sim} {name} (single concepts)", len(txt.keys), "concepts") as advance:
                single = score_layer(sim, q, I, T, params, top=k, progress=advance, max_memory=budget)
            cand = [list(r) for r in single.indices.cpu().numpy()]
        # Level 2: pairs of each neuron's candidates; level 3: the best pairs grown by one more candidate.
        pairs = itertools.permutations if ordered else itertools.combinations
        options = [[(c,) for c in cands] + list(pairs(cands, 2)) for cands in cand]
        scored = _score_level(options, txt.keys, template, sim, q, I, T, params, budget, img, device, cache, clip)
        n_embedded += scored.embedded
        n_texts += scored.unique
        if depth == 3:
            for u, cands in enumerate(cand):
                beams = [p for p in scored.ranked[u] if len(p) == 2][:beam]
                grown = {p + (c,) for p in beams for c in cands if c not in p}
                options[u] = options[u] + sorted(grown)
            scored = _score_level(options, txt.keys, template, sim, q, I, T, params, budget, img, device, cache, clip)
            n_embedded += scored.embedded
            n_texts += scored.unique
        for u in range(C):
            ranked, values = scored.ranked[u], scored.values[u]
            single = next(j for j, p in enumerate(ranked) if len(p) == 1)
            texts = [_render([txt.keys[i] for i in p], template) for p in ranked[:top]]
            rows["layer"].append(name)
            rows["unit"].append(u)
            rows["label"].append(texts[0])
            rows["parts"].append([txt.keys[i] for i in ranked[0]])
            rows["similarity"].append(float(values[0]))
            rows["single_label"].append(txt.keys[ranked[single][0]])
            rows["single_similarity"].append(float(values[single]))
            rows["gain"].append(float(values[0] - values[single]))
            rows["candidates"].append(texts)
            rows["candidate_similarities"].append([float(v) for v in values[:top]])
    note(f"composed {n_texts} unique texts; embedded {n_embedded} new ({n_texts - n_embedded} cached)")
    meta = {
        "similarity": sim, "params": params, "top_k": top_k, "template": template, "ordered": ordered, "depth": depth,
        "beam": beam, "top": top, "candidates_from": str(Path(labels).resolve()) if labels else sim,
        "concepts": {"name": txt.attrs.get("concept_set", str(text or concepts)), "fingerprint": txt.keys_fingerprint,
                     "n": len(txt.keys)},
        "clip": img.clip_spec, "clip_fingerprint": img.clip_fingerprint, "model": acts.model,
        "weights": acts.attrs.get("weights", ""), "composed_texts": n_texts, "embedded_now": n_embedded,
        "probe": {"n_images": len(img.keys), "ids_fingerprint": img.keys_fingerprint},
        "provenance": A.provenance(stage="compose"),
        **(extra_metadata or {}),
    }
    table = pa.Table.from_pydict(rows, schema=A.composed_schema())
    if out is not None:
        A.write_parquet(out, table, A.COMPOSED_FORMAT, meta)
        if str(out) != A.STDOUT:
            note(f"wrote {out}: {table.num_rows} neurons with composed labels")
    return table


def _render(parts: list[str], template: str) -> str:
    text = parts[0]
    for p in parts[1:]:
        text = template.format(a=text, b=p)
    return text


@dataclass
class _Scored:
    ranked: list[list[tuple[int, ...]]]      # per neuron: its options (tuples of concept indices), best first
    values: list[list[float]]
    embedded: int
    unique: int


def _score_level(options, keys, template, sim, q, I, T, params, budget, img, device, cache, clip=None) -> _Scored:
    """Score each neuron's own options (single concepts and compositions) in the extended concept set.

    The compositions of the whole layer join the concept set: for SoftWPMI and WPMI the
    softmax p(t | x) runs over the single concepts and every composition, so a
    composition only wins where it explains the neuron's images better than its parts,
    and the single concepts are rescored in the same set (a fair ``gain``).
    """
    import torch

    texts_of = [[_render([keys[i] for i in p], template) for p in opts] for opts in options]
    composed = list(dict.fromkeys(t for opts, ts in zip(options, texts_of) for p, t in zip(opts, ts) if len(p) > 1))
    E, embedded = embed_composed(composed, img, device, cache, clip=clip)
    E_t = torch.from_numpy(E).to(I.device)
    extended = torch.cat([T.to(torch.float32), E_t.to(torch.float32)])    # the concept set the softmax runs over
    single_rows = sorted({p[0] for opts in options for p in opts if len(p) == 1})
    row_of = {("s", c): j for j, c in enumerate(single_rows)}
    row_of.update({("c", t): len(single_rows) + j for j, t in enumerate(composed)})
    scored_emb = torch.cat([T[single_rows].to(torch.float32), E_t.to(torch.float32)])
    J = max(len(o) for o in options)
    owned = np.full((len(options), J), -1, dtype=np.int64)
    for u, (opts, ts) in enumerate(zip(options, texts_of)):
        owned[u, : len(opts)] = [row_of[("s", p[0])] if len(p) == 1 else row_of[("c", t)] for p, t in zip(opts, ts)]
    sims, raw = _score_owned(sim, q, I, extended, scored_emb, owned, params, budget)
    if raw is not None:
        # PMI rewards texts that few neurons match, and a composition is always rarer than its
        # parts: by that bonus alone it would beat the single concept of almost every neuron.
        # A composition may replace the single label only if it also explains the neuron's own
        # top images at least as well (raw score_k(t) = log-likelihood over them, not lower).
        for u, opts in enumerate(options):
            singles = [j for j, p in enumerate(opts) if len(p) == 1]
            if not singles:
                continue
            best = max(singles, key=lambda j: (sims[u, j], -j))
            for j, p in enumerate(opts):
                if len(p) > 1 and raw[u, j] < raw[u, best] - 1e-9 * max(1.0, abs(raw[u, best])):
                    sims[u, j] = -np.inf
    ranked, values = [], []
    from .similarity import TIE_TOLERANCE

    for u, opts in enumerate(options):
        # Best first. Similarities within TIE_TOLERANCE are tied (e.g. several texts saturating
        # at λ·log C): the simpler explanation wins (fewer parts), then candidate order.
        n_parts = np.array([len(p) for p in opts] + [99] * (J - len(opts)))
        bucket = np.where(np.isfinite(sims[u]), np.round(sims[u] / TIE_TOLERANCE), -np.inf)
        order = [j for j in np.lexsort((np.arange(J), n_parts, -bucket))[: len(opts)] if np.isfinite(sims[u, j])]
        ranked.append([opts[j] for j in order])
        values.append([float(sims[u, j]) for j in order])
    if any(not np.isfinite(v[0]) for v in values):
        warn("some neurons have no finite similarity")
    return _Scored(ranked, values, embedded, len(composed))
