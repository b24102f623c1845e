"""``dissect compare``: what changed between two activations files over the same probe images.

Two checkpoints, two seeds, two models, or a layer and its directions: for every pair of layers,
the Pearson correlation of every unit of A with every unit of B (streamed over the shared images
in blocks, :class:`dissect.correlate.CrossMoments`), each unit's best match both ways, the
one-to-one matching of highest total correlation, the share of A's units matched with r above
``threshold``, and linear CKA. With labels, whether matched units carry the same concept (and
their CLIP cosine with a CLIP model), and per concept how many units carry it in A and in B: the
detectors gained and lost.

One row per unit of A's layer (its match in B, or none), then one per unit of B's left unmatched.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .budget import memory_budget
from .errors import InputError, UsageError
from .runtime import note, progress, resolve_device
from .settings import Settings

#: Columns of compare.parquet, in order (artifacts.tables owns the types).
COLUMNS = ("layer_a", "unit_a", "layer_b", "unit_b", "r", "matched", "best_b", "best_r", "best_a", "best_a_r",
           "label_a", "label_b", "labels_agree", "label_cos", "score_a", "score_b")


@dataclass(frozen=True)
class CompareSettings(Settings):
    """``min_shared``: the share of the smaller probe the two files must share; ``threshold``: a one-to-one match
    counts as matched above this r; ``cka``: compute linear CKA (two Gram products more, each about half the
    correlations' product); ``max_memory``: the working-memory budget in bytes (None: the default)."""

    min_shared: float = 0.9
    threshold: float = 0.5
    cka: bool = True
    max_memory: int | None = None
    device: str = "auto"

    def check(self) -> None:
        if not 0 < self.min_shared <= 1:
            raise UsageError(f"--min-shared must be in (0, 1], got {self.min_shared}")
        if not -1 <= self.threshold <= 1:
            raise UsageError(f"--threshold must be in [-1, 1], got {self.threshold}")


@dataclass
class Side:
    """One side of a comparison: its activations file, and the labels and simulation scores to show with it."""

    name: str                                   # "A" or "B"
    activations: Path
    labels: Path | None = None
    simulate: Path | None = None
    ids: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    label_of: dict[tuple[str, int], str] = field(default_factory=dict)     # (layer, unit) -> label
    score_of: dict[tuple[str, int], float] = field(default_factory=dict)   # (layer, unit) -> simulation correlation
    clip: str | None = None                                                # the CLIP model the labels were made with


@dataclass
class Comparison:
    rows: dict[str, list]
    summary: list[dict[str, Any]]
    metadata: dict[str, Any]


def open_side(name: str, path, labels=None, simulate=None, layer: str | None = None) -> Side:
    """An activations file, or a run folder (its activations, labels and simulate.parquet unless given); ``layer``:
    the layer a label file of one unnamed layer describes (else its file name says it)."""
    p = Path(path)
    A.note_inputs(p)
    if not p.exists():
        raise InputError(f"{name}: {p} does not exist", hint="give an activations.h5 (dissect record) or a run folder")
    if p.is_dir():
        run = A.find_run(p)
        p, labels, simulate = run["activations"], labels or run["labels"], simulate or run["simulate"]
    kind = A.sniff(p)
    if kind != A.ACTIVATIONS_FORMAT:
        raise InputError(f"{name}: {p} is a {kind} file, not activations",
                         hint="give an activations.h5 (dissect record) or a run folder; labels go to --labels-a/-b")
    header = A.read_activations(p, data=False)
    side = Side(name, p, Path(labels) if labels else None, Path(simulate) if simulate else None, header.ids,
                list(header.layers))
    side.label_of, side.clip = _labels_of(side.labels, side.layers, layer)   # read now: a bad file ends the command before the pass
    side.score_of = _scores_of(side.simulate)
    return side


def align(a: Side, b: Side, min_shared: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows of A and of B holding the images both hold (in A's order); refused when they share fewer than
    ``min_shared`` of the smaller probe."""
    pos_b = {k: i for i, k in enumerate(b.ids)}
    rows_a = np.array([i for i, k in enumerate(a.ids) if k in pos_b], dtype=np.int64)
    rows_b = np.array([pos_b[a.ids[i]] for i in rows_a], dtype=np.int64)
    sizes_a, sizes_b = A.read_sizes(a.activations), A.read_sizes(b.activations)
    if sizes_a is not None and sizes_b is not None and len(sizes_a) == len(a.ids) and len(sizes_b) == len(b.ids):
        differ = int((sizes_a[rows_a] != sizes_b[rows_b]).sum())
        if differ:
            raise InputError(f"{differ} of the {len(rows_a)} image ids A and B share name files of different sizes: "
                             "the two were recorded over different images",
                             hint="record both over the same probe folder")
    need = max(3, math.ceil(min_shared * min(len(a.ids), len(b.ids))))
    if len(rows_a) < need:
        raise InputError(f"A ({len(a.ids)} images) and B ({len(b.ids)} images) share {len(rows_a)} image ids, "
                         f"fewer than the {need} a comparison needs",
                         hint="record both over the same probe (ids are the images' relative paths), "
                              "or lower --min-shared")
    return rows_a, rows_b


def layer_pairs(a: Side, b: Side, layers: list[str] | None, pairs: list[str] | None) -> list[tuple[str, str]]:
    """``LA=LB`` pairs as given, else the ``layers`` (or every layer) both files hold, paired by name."""
    if pairs and layers:
        raise UsageError("give --layers or --pair, not both", hint="--pair LA=LB pairs layers of any names; --layers "
                                                                  "pairs layers of the same name")
    if pairs:
        out = []
        for item in pairs:
            la, sep, lb = item.partition("=")
            if not sep or not la or not lb:
                raise UsageError(f"--pair {item!r} is not LAYER_A=LAYER_B", hint="e.g. --pair layer4=layer4@sae")
            out.append((la.strip(), lb.strip()))
    else:
        names = layers or [n for n in a.layers if n in b.layers]
        if not names:
            raise UsageError(f"A and B hold no layer of the same name (A: {', '.join(a.layers)}; B: {', '.join(b.layers)})",
                             hint="pair layers with --pair LAYER_A=LAYER_B")
        out = [(n, n) for n in names]
    twice = [p for i, p in enumerate(out) if p in out[:i]]
    if twice:
        raise UsageError(f"the pair {twice[0][0]}={twice[0][1]} is given twice", hint="give each layer pair once")
    for la, lb in out:
        for side, layer in ((a, la), (b, lb)):
            if layer not in side.layers:
                raise UsageError(f"{side.name} ({side.activations}) has no layer {layer!r}",
                                 hint=f"it holds: {', '.join(side.layers)}")
    return out


@dataclass
class PairResult:
    """The numbers of one layer pair: ``r`` [m, n] float64 (None where the matching did not fit the budget)."""

    layer_a: str
    layer_b: str
    units_a: int
    units_b: int
    cka: float
    best_b: np.ndarray
    best_r: np.ndarray
    best_a: np.ndarray
    best_a_r: np.ndarray
    match: np.ndarray | None         # A unit -> B unit of the one-to-one matching (-1: none)
    match_r: np.ndarray | None


#: Bytes per element of what a layer pair keeps and builds: the float64 sums and the correlations' temporaries
#: (CROSS, per A unit x B unit of a group), the Gram sums with CKA's centred copies (GRAM, per Gram element).
CROSS_BYTES, GRAM_BYTES = 48, 24


def _plan(m: int, n: int, budget: int, cka: bool = True) -> tuple[int, bool, bool, int]:
    """(B units per group, CKA's Gram matrices kept, matching kept, images per block) within ``budget`` bytes.
    CKA needs every unit of B in one group: it is left out where that does not fit beside the Gram matrices."""
    gram_bytes = GRAM_BYTES * (m * m + n * n)
    gram = cka and gram_bytes + CROSS_BYTES * m * n <= budget * 3 // 4
    left = budget - (gram_bytes if gram else 0)
    matching = 8 * m * n <= left // 4
    left -= 8 * m * n if matching else 0
    group = max(1, min(n, (left * 3 // 4) // max(1, CROSS_BYTES * m)))
    rows = int(max(64, min(8192, (left // 4) // max(1, 12 * (m + group)))))
    return group, gram, matching, rows


def correlate_pair(a: Side, b: Side, pair: tuple[str, str], rows: tuple[np.ndarray, np.ndarray],
                   settings: CompareSettings) -> PairResult:
    """Stream one layer pair over the shared images (``rows``: A's and B's rows of them)."""
    import torch

    from .correlate import CrossMoments, assignment, best_matches

    la, lb = pair
    rows_a, rows_b = rows
    m = A.activation_layer_shape(a.activations, la)[1]
    n = A.activation_layer_shape(b.activations, lb)[1]
    group, gram, matching, block = _plan(m, n, memory_budget(settings.max_memory), settings.cka)
    if settings.cka and not gram:
        note(f"{la} x {lb}: no CKA, its Gram matrices ({GRAM_BYTES * (m * m + n * n) / 2**20:.0f} MB with its "
             "copies) do not fit --max-memory beside the correlations")
    if not matching:
        note(f"{la} x {lb}: no one-to-one matching, its {m} x {n} correlations are over --max-memory (best matches kept)")
    dev = resolve_device(settings.device)
    r_full = np.zeros((m, n)) if matching else None
    best_b, best_r = np.full(m, -1, dtype=np.int64), np.full(m, -np.inf)
    best_a, best_a_r = np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
    cka = math.nan
    groups = range(0, n, group)
    with progress(f"compare {la} x {lb}", len(rows_a) * len(groups), "images") as advance:
        for g0 in groups:
            g1 = min(n, g0 + group)
            cm = CrossMoments(m, g1 - g0, gram=gram and g0 == 0 and g1 == n, device=dev)

            def read(s, g0=g0, g1=g1):
                return (A.read_activation_rows(a.activations, la, rows_a[s : s + block]),
                        A.read_activation_rows(b.activations, lb, rows_b[s : s + block], units=(g0, g1)))

            for x, y in _prefetched(read, range(0, len(rows_a), block)):
                cm.update(torch.from_numpy(x), torch.from_numpy(y))
                advance(len(x))
            r = cm.correlation().cpu().numpy()
            if cm.gx is not None:
                cka = cm.cka()
            if r_full is not None:
                r_full[:, g0:g1] = r
            col, col_r, row, row_r = best_matches(r)
            better = np.nan_to_num(col_r, nan=-np.inf) > best_r
            best_b[better], best_r[better] = col[better] + g0, col_r[better]
            best_a[g0:g1], best_a_r[g0:g1] = row, row_r
    best_r[~np.isfinite(best_r)] = np.nan
    match = match_r = None
    if r_full is not None:
        match = assignment(r_full)
        match_r = np.where(match >= 0, r_full[np.arange(m), np.clip(match, 0, None)], np.nan)
    return PairResult(la, lb, m, n, cka, best_b, best_r, best_a, best_a_r, match, match_r)


def _prefetched(read, starts):
    """``read(s)`` for each of ``starts``, the next block read in a thread while the caller works on this one (the
    products release the GIL: reading the files and multiplying overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    starts = list(starts)
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(read, starts[0]) if starts else None
        for i in range(len(starts)):
            cur = nxt.result()
            nxt = pool.submit(read, starts[i + 1]) if i + 1 < len(starts) else None
            yield cur


# ---------------------------------------------------------------------------
# Labels, their agreement and the simulation scores
# ---------------------------------------------------------------------------

def _labels_of(path: Path | None, layers: list[str], layer: str | None = None
               ) -> tuple[dict[tuple[str, int], str], str | None]:
    """((layer, unit) -> label, the CLIP model the labels record) of a labels file (dissect's, or one another method
    publishes: a one-layer file names its layer in the file name, one of ``layers``)."""
    if path is None:
        return {}, None
    lf = A.read_label_file(path, layer=layer, known_layers=layers)
    clip = lf.metadata.get("clip") if isinstance(lf.metadata, dict) else None
    return {(lay, int(u)): lab for lay, u, lab in zip(lf.layers, lf.units, lf.labels)}, clip


def _scores_of(path: Path | None) -> dict[tuple[str, int], float]:
    """simulate.parquet's correlation per (layer, unit) (``simulate.read_scores``; none without a file)."""
    if path is None:
        return {}
    from .evaluate.simulate import read_scores

    return read_scores(path)


def _cosines(pairs: list[tuple[str, str]], clip_spec: str | None, device: str, given: bool = True) -> dict[tuple[str, str], float]:
    """The CLIP cosine of each (label A, label B) text pair, with ``clip_spec`` (none without it; a model the labels
    name but that cannot be loaded here, not ``given`` by the user, is said in one line and skipped)."""
    if not clip_spec or not pairs:
        return {}
    from .clip import load_clip
    from .concepts import ConceptSet
    from .embed import compute_text_embeddings
    from .errors import DissectError

    texts = sorted({t for p in pairs for t in p})
    try:
        clip = load_clip(clip_spec, resolve_device(device))
    except DissectError as e:
        if given:
            raise
        note(f"no label_cos: the labels' CLIP model {clip_spec} cannot be loaded here ({e}); give --clip")
        return {}
    emb = compute_text_embeddings(clip, ConceptSet("labels", texts, "compare labels")).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pos = {t: i for i, t in enumerate(texts)}
    return {(x, y): float(emb[pos[x]] @ emb[pos[y]]) for x, y in set(pairs)}


def compare(a, b, settings: CompareSettings | None = None, layers: list[str] | None = None,
            pairs: list[str] | None = None, clip: str | None = None) -> Comparison:
    """Compare ``a`` and ``b`` (``Side``s from :func:`open_side`, or paths): every layer pair of ``pairs``
    (``LA=LB``) or of ``layers`` (paired by name; default every layer both hold); ``clip``: a CLIP spec for the
    cosine of matched units' labels. See the module docstring."""
    from .concepts import normalise

    st = settings or CompareSettings()
    a = a if isinstance(a, Side) else open_side("A", a)
    b = b if isinstance(b, Side) else open_side("B", b)
    rows_ab = align(a, b, st.min_shared)
    chosen = layer_pairs(a, b, layers, pairs)
    for side, layer in [(a, la) for la, _ in chosen] + [(b, lb) for _, lb in chosen]:
        _check_units(side, layer)
    if clip:
        from .clip import parse_clip_spec

        parse_clip_spec(clip)                     # a malformed spec ends the command before the pass
    results = [correlate_pair(a, b, p, rows_ab, st) for p in chosen]
    lab_a, lab_b = a.label_of, b.label_of
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for res in results:
        _unit_rows(rows, res, st.threshold, (lab_a, lab_b), (a.score_of, b.score_of))
    both = [(x, y) for x, y in zip(rows["label_a"], rows["label_b"]) if x and y]
    named = a.clip if a.clip and a.clip == b.clip else None      # both labelled with one CLIP: its cosines
    cos = _cosines(both, clip or named, st.device, given=bool(clip))
    for i, (x, y) in enumerate(zip(rows["label_a"], rows["label_b"])):
        rows["labels_agree"][i] = None if not (x and y) else normalise(x) == normalise(y)
        rows["label_cos"][i] = cos.get((x, y), math.nan)
    summary = [_pair_summary(res, rows, st.threshold, (lab_a, lab_b), len(rows_ab[0]), start)
               for res, start in zip(results, _starts(results))]
    clip = clip or (named if cos else None)
    meta = {"a": str(a.activations.resolve()), "b": str(b.activations.resolve()),
            "labels_a": str(a.labels) if a.labels else None, "labels_b": str(b.labels) if b.labels else None,
            "pairs": [list(p) for p in chosen], "shared_images": int(len(rows_ab[0])),
            "images_a": len(a.ids), "images_b": len(b.ids), "threshold": st.threshold, "clip": clip,
            "provenance": __import__("json").loads(A.provenance(stage="compare"))}
    return Comparison(rows, summary, meta)


def _check_units(side: Side, layer: str) -> None:
    """Labels and scores of units the layer does not have: refused in one line."""
    width = A.activation_layer_shape(side.activations, layer)[1]
    for what, table, path in (("labels", side.label_of, side.labels), ("simulation scores", side.score_of, side.simulate)):
        top = max((u for (lay, u) in table if lay == layer), default=-1)
        if top >= width:
            raise InputError(f"{side.name}: {path} has {what} of unit {top} of {layer}, which has {width} units in "
                             f"{side.activations}", hint="give the labels of the same model and layer")


def _starts(results: list[PairResult]) -> list[int]:
    """Where each pair's rows begin: A's units, then B's unmatched ones."""
    out, at = [], 0
    for res in results:
        out.append(at)
        matched = 0 if res.match is None else int((res.match >= 0).sum())
        at += res.units_a + res.units_b - matched
    return out


def _unit_rows(rows: dict[str, list], res: PairResult, threshold: float, labels, scores) -> None:
    """A row per unit of A's layer, then one per unit of B's left unmatched."""
    (lab_a, lab_b), (sc_a, sc_b) = labels, scores
    taken = set()
    for u in range(res.units_a):
        j = None if res.match is None else _index(res.match[u])
        r = None if j is None else _number(res.match_r[u])
        taken.add(j)
        _add(rows, res, u, j, r, r is not None and r > threshold, (_index(res.best_b[u]), _number(res.best_r[u])),
             (lab_a.get((res.layer_a, u)), None if j is None else lab_b.get((res.layer_b, j))),
             (sc_a.get((res.layer_a, u)), None if j is None else sc_b.get((res.layer_b, j))))
    for j in range(res.units_b):
        if j not in taken:
            _add(rows, res, None, j, None, False, (None, None), (None, lab_b.get((res.layer_b, j))),
                 (None, sc_b.get((res.layer_b, j))))


def _index(v) -> int | None:
    return None if v is None or v < 0 else int(v)


def _number(v) -> float | None:
    return None if v is None or v != v else float(v)


def _add(rows, res: PairResult, u, j, r, matched, best, labels, scores) -> None:
    rows["layer_a"].append(res.layer_a)
    rows["unit_a"].append(u)
    rows["layer_b"].append(res.layer_b)
    rows["unit_b"].append(j)
    rows["r"].append(r)
    rows["matched"].append(bool(matched))
    rows["best_b"].append(best[0])
    rows["best_r"].append(best[1])
    rows["best_a"].append(None if j is None else _index(res.best_a[j]))
    rows["best_a_r"].append(None if j is None else _number(res.best_a_r[j]))
    rows["label_a"].append(labels[0])
    rows["label_b"].append(labels[1])
    rows["labels_agree"].append(None)
    rows["label_cos"].append(math.nan)
    rows["score_a"].append(_number(scores[0]))
    rows["score_b"].append(_number(scores[1]))


def _status(a: int, b: int) -> str:
    if a == b:
        return "same"
    if b < a:
        return "lost" if b == 0 else "fewer"
    return "gained" if a == 0 else "more"


def concept_counts(lab_a: dict, lab_b: dict, layer_a: str, layer_b: str) -> list[dict[str, Any]]:
    """Per concept, how many units of ``layer_a`` carry it in A and of ``layer_b`` in B, and its ``status`` (lost: none
    left; fewer; same; more; gained: none before): the most units lost first, then the most gained, then the rest."""
    from .concepts import normalise

    ca = Counter(normalise(t) for (lay, _), t in lab_a.items() if lay == layer_a)
    cb = Counter(normalise(t) for (lay, _), t in lab_b.items() if lay == layer_b)
    out = [{"concept": c, "units_a": ca[c], "units_b": cb[c], "change": cb[c] - ca[c], "status": _status(ca[c], cb[c])}
           for c in set(ca) | set(cb)]
    return sorted(out, key=lambda d: (0 if d["change"] < 0 else 1 if d["change"] > 0 else 2,
                                      -abs(d["change"]), -d["units_a"] - d["units_b"], d["concept"]))


def _pair_summary(res: PairResult, rows, threshold: float, labels, shared: int, start: int) -> dict[str, Any]:
    sel = list(range(start, start + res.units_a))                  # the pair's rows of A's units
    rs = [rows["r"][i] for i in sel if rows["r"][i] is not None]
    agree = [rows["labels_agree"][i] for i in sel if rows["labels_agree"][i] is not None and rows["matched"][i]]
    return {"layer_a": res.layer_a, "layer_b": res.layer_b, "units_a": res.units_a, "units_b": res.units_b,
            "images": shared, "cka": None if res.cka != res.cka else res.cka,
            "matched": sum(bool(rows["matched"][i]) for i in sel), "threshold": threshold,
            "matched_share": (sum(bool(rows["matched"][i]) for i in sel) / res.units_a) if res.match is not None else None,
            "mean_r": float(np.mean(rs)) if rs else None,
            "mean_best_r": float(np.nanmean(res.best_r)) if np.isfinite(res.best_r).any() else None,
            "labels_agree": (sum(agree) / len(agree)) if agree else None,
            "concepts": concept_counts(*labels, res.layer_a, res.layer_b) if all(labels) else []}


def write_comparison(cmp: Comparison, out: str | os.PathLike) -> tuple[str, Path | None]:
    """compare.parquet and its summary (compare.json: a list, one entry per layer pair)."""
    cmp.metadata["summary"] = [{k: v for k, v in s.items() if k != "concepts"} for s in cmp.summary]
    return A.write_table(out, A.COMPARE_FORMAT, cmp.rows, cmp.metadata, summary=cmp.summary)
