"""Stage 6: compositional labels (paper App. A.4): "striped animal", "water vehicle".

For each neuron, its top-K single concepts are combined in pairs through a template
("{a} {b}" as in the paper, or e.g. "{a} and {b}"); ``depth`` 3 extends the best
``beam`` pairs by a third candidate. The composed texts of a whole layer are
deduplicated, embedded once with the CLIP text encoder that made the single-concept
embeddings (and cached per CLIP model, so a rerun embeds nothing it has seen), and
scored with the same similarity function and parameters. For SoftWPMI and WPMI the
population term λ·log p(t) of every composed text is estimated over all neurons of
the layer, as for single concepts (``scoring.score_extra_texts``).

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
from .settings import Compute, Settings, no_other_fields

#: How compose chooses between a unit's best single concept and its best composition.
SELECT = ("simulate", "veto", "argmax")
DEFAULT_SELECT = "simulate"
PROCEDURES = ("pairs", "paper")
#: Candidates per unit of the pairs procedure.
DEFAULT_TOP_K = 10
#: The official notebook's candidates per unit (fig10: its top 100, all ordered pairs).
PAPER_TOP_K = 100
DEFAULT_HOLDOUT = 0.2
#: --select simulate needs this many images on each side of the split (else it chooses by similarity, with a warning).
MIN_SPLIT_IMAGES = 50
#: A composition must beat the single concept's held-out AUPRC by this much, for the unit's top SELECT_ALPHA
#: images (both chosen on the planted composition world: README "Compositional labels").
DEFAULT_MARGIN = 0.1
SELECT_ALPHA = 0.02


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
        A.grows(self.path)  # the cache grows: its previous version was read, now replaced
        A.write_embeddings(self.path, A.TEXT_FORMAT, self.embeddings, self.texts, images.clip_model, images.clip_pretrained, attrs)


def embed_composed(texts: list[str], images: A.Embeddings, compute: Compute | None = None) -> tuple[np.ndarray, int]:
    """[U, d] embeddings of ``texts`` (unique) and how many had to be embedded now (with ``compute.clip`` when
    loaded; cached in ``compute.cache``)."""
    compute = compute or Compute()
    device, cache, batch_size, clip = compute.device, compute.cache, compute.batch_size, compute.clip
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
    from .similarity import METHODS
    from .scoring import score_extra_texts

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


@dataclass(frozen=True)
class ComposeSettings(Settings):
    """What compose computes (``compose``'s docstring says how): the similarity function and its parameters,
    candidates per unit (``top_k``; None: ``DEFAULT_TOP_K``, ``PAPER_TOP_K`` with the paper's procedure), how two
    parts are joined, ordered pairs or not, 2 or 3 parts (``depth``, by a beam of ``beam`` pairs), options kept per
    unit (``top``), how one word or two is chosen (``select``, with ``holdout``, ``holdout_seed``, ``margin`` and
    ``calibration`` for ``simulate``) and the procedure."""

    sim: str = "softwpmi"
    params: dict[str, Any] | None = None
    top_k: int | None = None
    template: str = "{a} {b}"
    ordered: bool = False
    depth: int = 2
    beam: int = 5
    top: int = 5
    select: str = DEFAULT_SELECT
    procedure: str = "pairs"
    holdout: float = DEFAULT_HOLDOUT
    holdout_seed: int = 0
    margin: float = DEFAULT_MARGIN
    calibration: Any = None

    def check(self) -> None:
        check_template(self.template)
        if self.select not in SELECT:
            raise UsageError(f"unknown --select {self.select!r}", hint=f"use one of {', '.join(SELECT)}")
        if self.procedure not in PROCEDURES:
            raise UsageError(f"unknown --procedure {self.procedure!r}", hint=f"use one of {', '.join(PROCEDURES)}")
        if self.procedure == "paper":
            if self.select == "veto":
                raise UsageError("--select veto needs --procedure pairs (it compares raw scores the paper's procedure "
                                 "does not compute)", hint="use --select argmax (the paper's) or simulate")
            if self.depth != 2:
                raise UsageError("--procedure paper composes pairs only", hint="leave out --depth")
        if self.k < 2:
            raise UsageError(f"--top-k must be at least 2 to make pairs, got {self.k}")
        if self.depth not in (2, 3):
            raise UsageError(f"--depth must be 2 or 3, got {self.depth}")
        if self.beam < 1 or self.top < 1:
            raise UsageError("--beam and --top must be at least 1")
        import math

        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise UsageError(f"--margin must be a number of at least 0, got {self.margin}",
                             hint="the held-out AUPRC a composition must gain over its single concept (default 0.1)")

    @property
    def k(self) -> int:
        """Candidates per unit."""
        if self.top_k is not None:
            return self.top_k
        return PAPER_TOP_K if self.procedure == "paper" else DEFAULT_TOP_K


@dataclass
class _Composing:
    """What every layer of one compose run shares."""

    settings: ComposeSettings
    params: dict[str, Any]
    compute: Compute
    activations: Any
    img: A.Embeddings
    txt: A.Embeddings
    order: np.ndarray | None
    I_all: Any
    T: Any
    judge: "_HeldOut | None"
    given: dict | None
    labels: Any

    def __post_init__(self):
        #: The images candidates and similarities come from (those compose works on, without the held-out ones).
        self.I = self.I_all if self.judge is None else self.I_all[self.judge.train]


def _given_candidates(labels) -> dict[tuple[str, int], list[str]] | None:
    """Each unit's candidates as a labels.parquet stores them (None without ``labels``)."""
    if labels is None:
        return None
    lt = A.read_table(labels, A.LABELS_FORMAT, columns=["layer", "unit", "candidates"]).to_pydict()
    return {(lay, int(u)): [x for x in (c or []) if x is not None] for lay, u, c in zip(lt["layer"], lt["unit"], lt["candidates"])}


def _judge(settings: ComposeSettings, img: A.Embeddings, I_all) -> "_HeldOut | None":
    """``--select simulate``'s held-out judge, or None (another rule, or a probe too small to split: then the rule is
    the veto, with a warning)."""
    if settings.select != "simulate":
        return None
    from . import split
    from .evaluate.presence import DEFAULT_CALIBRATION

    held = split.held_out(img.keys, settings.holdout, settings.holdout_seed)
    if min(int(held.sum()), int((~held).sum())) < MIN_SPLIT_IMAGES:
        warn(f"--select simulate: --holdout {settings.holdout} leaves {int(held.sum())} of {len(held)} images held out "
             f"and {int((~held).sum())} to compose on, fewer than {MIN_SPLIT_IMAGES} on a side; choosing by similarity "
             f"instead (--select veto)")
        return None
    note(f"compose --select simulate: candidates and similarities on {int((~held).sum())} images, the choice "
         f"between one word and two on {int(held.sum())} held out (seed {settings.holdout_seed})")
    return _HeldOut(I_all, held, settings.calibration or DEFAULT_CALIBRATION, settings.margin)


def _candidates(ctx: _Composing, name: str, q) -> list[list[int]]:
    """Each unit's ``k`` candidate concepts (indices into the concept set): the labels file's, or scored here."""
    from .scoring import score_layer

    keys, k = ctx.txt.keys, min(ctx.settings.k, len(ctx.txt.keys))
    if ctx.given is None:
        with progress(f"{ctx.settings.sim} {name} (single concepts)", len(keys), "concepts") as advance:
            single = score_layer(ctx.settings.sim, q, ctx.I, ctx.T, ctx.params, top=k, progress=advance,
                                 max_memory=ctx.compute.budget)
        return [list(r) for r in single.indices.cpu().numpy()]
    concept_pos = {c: i for i, c in enumerate(keys)}
    cand = []
    for u in range(q.shape[1]):
        names = ctx.given.get((name, u))
        if names is None:
            raise UsageError(f"{ctx.labels} has no candidates for {name} unit {u}", hint="label the same layers first")
        missing = [c for c in names if c not in concept_pos]
        if missing:
            raise UsageError(f"{ctx.labels} was made with other concepts ({missing[0]!r} is not in the concept set)",
                             hint="pass the --text/--concepts it was labelled with")
        cand.append([concept_pos[c] for c in names[:k]])
    have = min(len(c) for c in cand)
    if have < 2:
        raise UsageError(f"{ctx.labels} keeps fewer than 2 candidates per unit", hint="relabel with --top 10")
    if have < k and (ctx.settings.procedure == "paper" or ctx.settings.top_k is not None):
        # the paper's procedure (or an explicit --top-k) on fewer candidates is another computation: say so
        what = "--procedure paper takes" if ctx.settings.top_k is None else f"--top-k {ctx.settings.top_k} asks for"
        raise UsageError(f"{what} each unit's top {k} candidates, but {ctx.labels} keeps {have}",
                         hint=f"relabel with `dissect label --top {k}`, or leave out --labels (compose then scores "
                              "the candidates itself)")
    return cand


def _score_pairs(ctx: _Composing, cand: list[list[int]], q, veto: bool) -> tuple["_Scored", int, int]:
    """Level 2: pairs of each neuron's candidates; level 3: the best pairs grown by one more candidate. Returns the
    last level's scores and the texts embedded now and in all over the levels."""
    s = ctx.settings
    pairs = itertools.permutations if s.ordered else itertools.combinations
    options = [[(c,) for c in cands] + list(pairs(cands, 2)) for cands in cand]
    scored = _score_level(ctx, options, q, veto)
    if s.depth != 3:
        return scored, scored.embedded, scored.unique
    for u, cands in enumerate(cand):
        beams = [p for p in scored.ranked[u] if len(p) == 2][:s.beam]
        grown = {p + (c,) for p in beams for c in cands if c not in p}
        options[u] = options[u] + sorted(grown)
    deeper = _score_level(ctx, options, q, veto)
    return deeper, scored.embedded + deeper.embedded, scored.unique + deeper.unique


def _add_unit_rows(rows: dict[str, list], ctx: _Composing, name: str, scored: "_Scored", chosen, select: str) -> None:
    keys, s = ctx.txt.keys, ctx.settings
    for u in range(len(scored.ranked)):
        ranked, values = scored.ranked[u], scored.values[u]
        single = next(j for j, p in enumerate(ranked) if len(p) == 1)
        first, r_label, r_single, gain = 0, float("nan"), float("nan"), float(values[0] - values[single])
        if chosen is not None:
            first, r_label, r_single, gain = chosen[u]
        order_u = [first] + [j for j in range(len(ranked)) if j != first]
        texts = [_render([keys[i] for i in ranked[j]], s.template) for j in order_u[:s.top]]
        rows["layer"].append(name)
        rows["unit"].append(u)
        rows["label"].append(texts[0])
        rows["parts"].append([keys[i] for i in ranked[first]])
        rows["similarity"].append(float(values[first]))
        rows["single_label"].append(keys[ranked[single][0]])
        rows["single_similarity"].append(float(values[single]))
        rows["gain"].append(gain)
        rows["candidates"].append(texts)
        rows["candidate_similarities"].append([float(values[j]) for j in order_u[:s.top]])
        rows["selected_by"].append(select)
        rows["heldout_auprc"].append(r_label)
        rows["single_heldout_auprc"].append(r_single)


def _metadata(ctx: _Composing, acts, select: str, n_texts: int, n_embedded: int, concepts_name) -> dict[str, Any]:
    s, img, txt = ctx.settings, ctx.img, ctx.txt
    return {
        "similarity": s.sim, "params": ctx.params, "top_k": s.k, "template": s.template, "ordered": s.ordered,
        "depth": s.depth, "beam": s.beam, "top": s.top,
        "candidates_from": str(Path(ctx.labels).resolve()) if ctx.labels else s.sim,
        "select": select, "procedure": s.procedure,
        **({"split": {"holdout": s.holdout, "seed": s.holdout_seed, "margin": s.margin,
                      "calibration": ctx.judge.calibration.describe()}} if ctx.judge is not None else {}),
        "concepts": {"name": txt.attrs.get("concept_set", str(concepts_name)), "fingerprint": txt.keys_fingerprint,
                     "n": len(txt.keys)},
        "clip": img.clip_spec, "clip_fingerprint": img.clip_fingerprint, "model": acts.model,
        "weights": acts.attrs.get("weights", ""), "composed_texts": n_texts, "embedded_now": n_embedded,
        "probe": {"n_images": len(img.keys), "ids_fingerprint": img.keys_fingerprint},
        "provenance": A.provenance(stage="compose"),
    }


def compose(images: str | os.PathLike, activations: str | os.PathLike, out: str | os.PathLike | None,
            text: str | os.PathLike | None = None, concepts: str | None = None, labels: str | os.PathLike | None = None,
            layers: list[str] | None = None, settings: ComposeSettings | None = None, compute: Compute | None = None,
            extra_metadata: dict[str, Any] | None = None, **fields: Any):
    """Compositional labels for the neurons of ``layers``; writes ``out`` (Parquet) and returns a pyarrow Table.

    ``settings.select`` decides between each unit's best single concept and its best composition
    (see ``SELECT``): ``simulate`` keeps the composition when its held-out simulation score
    beats the single concept's by ``margin`` (candidates and similarities come from the
    other images; ``holdout``, ``holdout_seed`` and ``calibration`` as for ``evaluate
    simulate``), ``veto`` is dissect 0.2's rule, ``argmax`` the paper's plain argmax.
    ``procedure`` ``paper`` is the official notebook's (``PAPER_TOP_K`` candidates, ordered
    pairs, each unit scored in a concept set of its own texts) instead of ``pairs``.

    Candidates are each neuron's top ``top_k`` single concepts, from ``labels`` (a
    labels.parquet made from the same inputs, whose ``candidates`` then decide the
    pairs whatever ``sim``) or computed here with ``sim``. ``compute.clip``: the CLIP model of
    images.h5, already loaded, to embed the compositions with (otherwise loaded when
    they are not cached). ``settings`` and ``compute`` may also be given as their fields.
    """
    import torch

    from .inputs import open_inputs
    from .similarity import check_probe_size, resolve_params

    settings = ComposeSettings.of(settings, **ComposeSettings.take(fields))
    compute = Compute.of(compute, **Compute.take(fields))
    no_other_fields(fields, "compose")
    params = resolve_params(settings.sim, settings.params)
    if out is not None and str(out) != A.STDOUT:
        out = A.check_output_path(out, [images, activations, text, labels, concepts])
    img, acts, order, txt = open_inputs(images, activations, text, concepts, layers, compute.device, clip=compute.clip)
    check_probe_size(settings.sim, params, len(img.keys))
    given = _given_candidates(labels)
    dev = resolve_device(compute.device)
    I_all = torch.from_numpy(img.embeddings).to(dev)
    judge = _judge(settings, img, I_all)
    select = "veto" if settings.select == "simulate" and judge is None else settings.select
    ctx = _Composing(settings, params, compute, activations, img, txt, order, I_all, torch.from_numpy(txt.embeddings).to(dev),
                     judge, given, labels)
    rows: dict[str, list] = {c: [] for c in A.COMPOSED_COLUMNS}
    n_embedded = n_texts = 0
    for name in acts.layers:
        q_np = A.read_activation_layer(activations, name)
        q_full = torch.from_numpy(q_np if order is None else q_np[order]).to(dev)
        q = q_full if judge is None else q_full[judge.train]
        cand = _candidates(ctx, name, q)
        if settings.procedure == "paper":
            scored = _paper_level(ctx, cand, q)
            embedded, unique = scored.embedded, scored.unique
        else:
            scored, embedded, unique = _score_pairs(ctx, cand, q, veto=select == "veto")
        n_embedded += embedded
        n_texts += unique
        _add_unit_rows(rows, ctx, name, scored, judge.choose(q_full, scored, ctx.T) if judge else None, select)
    note(f"composed {n_texts} unique texts; embedded {n_embedded} new ({n_texts - n_embedded} cached)")
    meta = _metadata(ctx, acts, select, n_texts, n_embedded, text or concepts)
    meta.update(extra_metadata or {})
    table = A.table_of(A.COMPOSED_FORMAT, rows)
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


class _HeldOut:
    """``--select simulate``: measurement, not similarity, decides between one word and two.

    A label is read as a prediction of where the unit fires: a single concept where CLIP
    sees it (its calibrated presence, as ``evaluate simulate`` scores a label), a
    composition "a b" where CLIP sees a *and* b (the product of the parts' presences: the
    logical AND of compositional explanations, Mu & Andreas 2020; CLIP's embedding of the
    phrase is not used, since it blurs conjunctions: on the demo world "red circle" tracks
    a red-circle unit no better than "red"). The score is the AUPRC of that prediction for
    the unit's top ``alpha`` images: a composition claims where the unit fires most, and a
    correlation over all images is dominated by the many images where it fires a little
    (on the planted world even the true conjunction correlates less than one of its
    words). Each unit keeps its method's best single concept; its candidate composition is
    the pair of its candidates with the best score on the images compose worked on; the
    composition becomes the label only when it beats the single concept by ``margin``
    both there and on the held-out images (which it was not chosen on).
    """

    def __init__(self, I_all, held: np.ndarray, calibration, margin: float, alpha: float = SELECT_ALPHA):
        import torch

        self.I_all, self.calibration, self.margin, self.alpha = I_all, calibration, float(margin), float(alpha)
        self.held = torch.from_numpy(held).to(I_all.device)
        self.train = ~self.held

    def choose(self, q_full, scored: _Scored, T):
        """Per unit: (index into its ranked options of the label, held-out score of the label, of the best single,
        gain = held-out score of the chosen composition - that of the best single)."""
        import torch

        from .evaluate.metrics import auprc
        from .evaluate.presence import CalibratedCosines

        used = sorted({i for ranked in scored.ranked for p in ranked for i in p})
        col = {c: j for j, c in enumerate(used)}
        # Presence of every concept any option uses, on every probe image (calibrated over all of them).
        P = CalibratedCosines(self.I_all, T[used], self.calibration).columns(range(len(used))).to(self.I_all.device)
        acts = q_full.to(torch.float64)
        # Each side's activations and presences, split once for all units.
        sides = [(acts[rows], P[rows]) for rows in (self.train, self.held)]
        out = []
        for u, ranked in enumerate(scored.ranked):
            js = next(j for j, p in enumerate(ranked) if len(p) == 1)
            comps = [j for j, p in enumerate(ranked) if len(p) > 1]
            if not comps:
                out.append((js, float("nan"), float("nan"), 0.0))
                continue

            def score(side):
                a, p = side
                cols = [p[:, col[ranked[js][0]]]] + [p[:, [col[i] for i in ranked[j]]].prod(dim=1) for j in comps]
                pu = torch.stack(cols, dim=1)
                return auprc(a[:, u : u + 1].expand(-1, pu.shape[1]).contiguous(), pu, self.alpha).cpu().numpy()

            s_train, s_held = (score(side) for side in sides)
            k = int(np.argmax(np.nan_to_num(s_train[1:], nan=-1.0)))
            jc, rs, rc = comps[k], float(s_held[0]), float(s_held[k + 1])
            beats = lambda s, j: np.nan_to_num(s[j], nan=-1.0) > np.nan_to_num(s[0], nan=-1.0) + self.margin  # noqa: E731
            if beats(s_held, k + 1) and beats(s_train, k + 1):
                out.append((jc, rc, rs, rc - rs))
            else:
                out.append((js, rs, rs, rc - rs))
        return out


def _paper_level(ctx: _Composing, cand: list[list[int]], q) -> _Scored:
    """The official notebook's procedure (fig10): for each unit, its candidates and all their ordered pairs
    form a concept set of their own, in which every unit of the layer is scored (so the softmax runs over
    that unit's texts and log p(t) over the layer's units); the unit's own row ranks its texts."""
    import torch

    from .scoring import score_layer

    keys, template = ctx.txt.keys, ctx.settings.template
    ranked, values, embedded, unique = [], [], 0, set()
    with progress("compose (paper's procedure)", len(cand), "units") as advance:
        for u, cands in enumerate(cand):
            opts = list(itertools.permutations(cands, 2)) + [(c,) for c in cands]
            texts = [_render([keys[i] for i in p], template) for p in opts]
            distinct = list(dict.fromkeys(texts))
            E, n = embed_composed(distinct, ctx.img, ctx.compute)
            row = {t: i for i, t in enumerate(distinct)}
            embedded += n
            unique.update(texts)
            E_t = torch.from_numpy(E).to(ctx.I.device)[[row[t] for t in texts]]
            sims = score_layer(ctx.settings.sim, q, ctx.I, E_t, ctx.params, full=True,
                               max_memory=ctx.compute.budget)[u : u + 1].cpu().numpy()
            r, v = _rank([opts], sims)
            ranked.append(r[0])
            values.append(v[0])
            advance(1)
    return _Scored(ranked, values, embedded, len(unique))


def _score_level(ctx: _Composing, options, q, veto: bool = False) -> _Scored:
    """Score each neuron's own options (single concepts and compositions) in the extended concept set.

    The compositions of the whole layer join the concept set: for SoftWPMI and WPMI the
    softmax p(t | x) runs over the single concepts and every composition, so a
    composition only wins where it explains the neuron's images better than its parts,
    and the single concepts are rescored in the same set (a fair ``gain``).
    """
    import torch

    keys, template, T = ctx.txt.keys, ctx.settings.template, ctx.T
    texts_of = [[_render([keys[i] for i in p], template) for p in opts] for opts in options]
    composed = list(dict.fromkeys(t for opts, ts in zip(options, texts_of) for p, t in zip(opts, ts) if len(p) > 1))
    E, embedded = embed_composed(composed, ctx.img, ctx.compute)
    E_t = torch.from_numpy(E).to(ctx.I.device)
    extended = torch.cat([T.to(torch.float32), E_t.to(torch.float32)])    # the concept set the softmax runs over
    single_rows = sorted({p[0] for opts in options for p in opts if len(p) == 1})
    row_of = {("s", c): j for j, c in enumerate(single_rows)}
    row_of.update({("c", t): len(single_rows) + j for j, t in enumerate(composed)})
    scored_emb = torch.cat([T[single_rows].to(torch.float32), E_t.to(torch.float32)])
    J = max(len(o) for o in options)
    owned = np.full((len(options), J), -1, dtype=np.int64)
    for u, (opts, ts) in enumerate(zip(options, texts_of)):
        owned[u, : len(opts)] = [row_of[("s", p[0])] if len(p) == 1 else row_of[("c", t)] for p, t in zip(opts, ts)]
    sims, raw = _score_owned(ctx.settings.sim, q, ctx.I, extended, scored_emb, owned, ctx.params, ctx.compute.budget)
    if raw is not None and veto:
        # PMI rewards texts that few neurons match, and a composition is always rarer than its
        # parts: by that bonus alone it would beat the single concept of almost every neuron.
        # --select veto (dissect 0.2's rule, not the paper's): a composition may replace the single
        # label only if it also explains the neuron's own top images at least as well (raw
        # score_k(t) = log-likelihood over them, not lower).
        for u, opts in enumerate(options):
            singles = [j for j, p in enumerate(opts) if len(p) == 1]
            if not singles:
                continue
            best = max(singles, key=lambda j: (sims[u, j], -j))
            for j, p in enumerate(opts):
                if len(p) > 1 and raw[u, j] < raw[u, best] - 1e-9 * max(1.0, abs(raw[u, best])):
                    sims[u, j] = -np.inf
    ranked, values = _rank(options, sims)
    if any(not np.isfinite(v[0]) for v in values):
        warn("some neurons have no finite similarity")
    return _Scored(ranked, values, embedded, len(composed))


def _rank(options, sims):
    """Each unit's options best first, with their similarities."""
    from .scoring import TIE_TOLERANCE

    J = sims.shape[1]
    ranked, values = [], []
    for u, opts in enumerate(options):
        # Best first. Similarities within TIE_TOLERANCE are tied (e.g. several texts saturating
        # at λ·log C): the simpler explanation wins (fewer parts), then candidate order.
        n_parts = np.array([len(p) for p in opts] + [99] * (J - len(opts)))
        bucket = np.where(np.isfinite(sims[u]), np.round(sims[u] / TIE_TOLERANCE), -np.inf)
        order = [j for j in np.lexsort((np.arange(J), n_parts, -bucket))[: len(opts)] if np.isfinite(sims[u, j])]
        ranked.append([opts[j] for j in order])
        values.append([float(sims[u, j]) for j in order])
    return ranked, values
