"""Files other tools write: the label files other methods publish (CLIP-Dissect, MILAN, NetDissect-Lite), read
beside dissect's own labels, and per-image concept annotations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError, UsageError, first_line
from ..fingerprint import fingerprint_strings
from .files import note_inputs
from .formats import COMPOSED_FORMAT, EXPLAIN_FORMAT, LABELS_FORMAT, MAKER
from .tables import read_parquet_metadata, read_table


@dataclass
class LabelFile:
    """Labels of one file, whatever wrote it: one entry per labelled unit."""

    path: str
    kind: str                    # LABELS_FORMAT, COMPOSED_FORMAT or a key of EXTERNAL_LABEL_KINDS
    layers: list[str]
    units: list[int]
    labels: list[str]
    similarity: list[float | None]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: linear explanations: each unit's concepts and weights (its prediction is Σ w_i c_i);
    #: compositions read as AND (``read_label_file(composed="and")``): their parts, weights None
    parts: list[list[str]] | None = None
    part_weights: list[list[float]] | None = None

    def select_layer(self, layer: str) -> None:
        """Keep the entries of ``layer`` only (every per-unit field, parts and weights too)."""
        keep = [i for i, name in enumerate(self.layers) if name == layer]
        if not keep:
            raise UsageError(f"{self.path} labels no layer {layer!r}", hint=f"its layers: {', '.join(dict.fromkeys(self.layers))}")
        for attr in ("layers", "units", "labels", "similarity", "parts", "part_weights"):
            values = getattr(self, attr)
            if values is not None:
                setattr(self, attr, [values[i] for i in keep])

    @property
    def method(self) -> str:
        if self.kind == EXPLAIN_FORMAT:
            return f"dissect explain ({self.metadata.get('mode', '?')} mode)"
        if self.kind in (LABELS_FORMAT, COMPOSED_FORMAT):
            sim = self.metadata.get("similarity") or "?"
            return f"dissect {sim}" if self.kind == LABELS_FORMAT else f"dissect compose ({sim})"
        return CSV_LAYOUTS[self.kind].method


def _netdissect_label(raw: str) -> str:
    """A tally label as words: the category suffix (-s scene, -c colour) dropped, '_' and '-' as spaces."""
    text = raw.strip()
    for suffix in ("-s", "-c"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return " ".join(text.replace("_", " ").replace("-", " ").split())


# ---------------------------------------------------------------------------
# Label files other methods publish, told apart by their header
# ---------------------------------------------------------------------------

@dataclass
class _Parsed:
    """What a CSV layout's parser reads: per row its layer, raw unit, label text and score; for explanations,
    each row's concepts and weights."""

    layers: list[str]
    units: list[str]
    texts: list[str]
    scores: list
    parts: list[list[str]] | None = None
    weights: list[list[float]] | None = None


def _described(rows, layer, path) -> _Parsed:
    """CLIP-Dissect's and MILAN's CSVs (layer,unit,description[,similarity]), and the baselines Linear Explanations
    publish (unit,description,...; the layer in the file name)."""
    return _Parsed([r.get("layer") or layer for r in rows], [r["unit"] for r in rows], [r["description"] for r in rows],
                   [r.get("similarity") for r in rows])


def _tally(rows, layer, path) -> _Parsed:
    """NetDissect-Lite's tally (unit,category,label,score,...): labels lose their category suffix."""
    return _Parsed([layer] * len(rows), [r["unit"] for r in rows], [_netdissect_label(r["label"]) for r in rows],
                   [r.get("score") for r in rows])


def _explanations(rows, layer, path) -> _Parsed:
    """Linear Explanations' results (layer,unit,val correlation,weight0,concept0,...,bias; LE(SigLIP)'s files have no
    layer column): each unit's concepts with their weights, largest first; an empty slot is weight 0, concept 0."""
    parts, weights = [], []
    for n, r in enumerate(rows):
        cs, ws = [], []
        for k in range(len([c for c in r if c.startswith("concept")])):
            c, w = (r.get(f"concept{k}") or "").strip(), (r.get(f"weight{k}") or "").strip()
            if c in ("", "0"):
                break
            try:
                ws.append(float(w))
            except ValueError:
                raise InputError(f"{path} row {n + 2}: weight{k} {w!r} is not a number") from None
            cs.append(c)
        parts.append(cs)
        weights.append(ws)
    texts = [" + ".join(f"{w:.2f} {c}" for c, w in zip(cs, ws)) or "(no concept)" for cs, ws in zip(parts, weights)]
    return _Parsed([r.get("layer") or layer for r in rows], [r["unit"] for r in rows], texts,
                   [r.get("val correlation") for r in rows], parts, weights)


def _blank(text: str | None) -> bool:
    return not (text or "").strip()


def _dnd(rows, layer, path) -> _Parsed:
    """Describe-and-Dissect's final_results.csv (Neuron ID,Label 1,Label 2,Label 3; the layer in its folder or file
    name): each unit's first label is its description (Labels 2 and 3 are the method's lesser candidates, kept in
    ``parts`` of nothing: not scored); a missing label is written as a space."""
    key = "Label 1" if "Label 1" in rows[0] else "label"
    return _Parsed([layer] * len(rows), [r["Neuron ID"] for r in rows], [r.get(key) or "" for r in rows],
                   [None] * len(rows))


def _synset_words(name: str) -> str:
    """A WordNet synset name as words (pencil_box.n.01 -> pencil box); other names as they are, '_' as spaces."""
    import re

    m = re.fullmatch(r"(.+)\.[nvasr]\.\d+", name.strip())
    return " ".join((m.group(1) if m else name).replace("_", " ").split())


def _formula(text: str, path, row: int) -> tuple[str, list[str] | None]:
    """An INVERT formula (sympy's ``&``, ``|``, ``~`` over concept names, parentheses where needed) as words, and its
    parts where it is a conjunction of plain concepts (what ``--composed and`` scores); a single concept as it is."""
    import re

    tokens = re.findall(r"\(|\)|&|\||~|[^()&|~]+", text)
    words = [t.strip() for t in tokens if t.strip()]
    if any(w in ("(", ")", "|", "~") for w in words):
        spoken = {"&": "and", "|": "or", "~": "not"}
        out = " ".join(spoken.get(w, w if w in "()" else _synset_words(w)) for w in words)
        return out.replace("( ", "(").replace(" )", ")"), None
    parts = [_synset_words(w) for w in words if w != "&"]
    if not parts or any(not p for p in parts):
        raise InputError(f"{path} row {row}: concept {text!r} is not a concept or an INVERT formula")
    return " and ".join(parts), parts if len(parts) > 1 else None


def _invert(rows, layer, path) -> _Parsed:
    """INVERT's explanations as CoSy ships them (neuron,concept,concept_id,metric; the layer in the file name, e.g.
    resnet18-layer4.csv): the concept, or a formula of concepts (WordNet synset names as words), scored by its AUROC."""
    texts, parts = [], []
    for n, r in enumerate(rows):
        text, conj = _formula(r["concept"], path, n + 2) if not _blank(r["concept"]) else ("", None)
        texts.append(text)
        parts.append(conj or [text])
    return _Parsed([layer] * len(rows), [r["neuron"] for r in rows], texts, [r.get("metric") for r in rows],
                   parts if any(len(p) > 1 for p in parts) else None)


def _invert_wnids(rows, layer, path) -> _Parsed:
    raise InputError(f"{path} is INVERT's older layout (neuron,formula,...): its formulas name WordNet ids "
                     f"({rows[0].get('formula', '')!r}), not words",
                     hint="use the layout CoSy ships (neuron,concept,concept_id,metric), or map the ids to names first")


def _falcon(rows, layer, path) -> _Parsed:
    """FALCON's falcon_concepts.csv (group,concept_set_words,concept_set_noun_phrases; cells are Python lists of
    (phrase, score)): each single-feature group's top noun phrase (as CoSy reads it), scored by its score; groups of
    several features describe a subspace, not a unit, and are left out with a warning."""
    import ast

    from ..runtime import warn

    keep, texts, scores, skipped = [], [], [], 0
    column = "concept_set_noun_phrases" if "concept_set_noun_phrases" in rows[0] else "concept_set_words"
    for n, r in enumerate(rows):
        group = str(r["group"]).strip().strip("()[]").replace("_", ",")
        if "," in group.rstrip(","):
            skipped += 1
            continue
        try:
            phrases = ast.literal_eval(r[column] or "[]")
            if phrases and not (isinstance(phrases[0], (tuple, list)) and len(phrases[0]) == 2
                                and isinstance(phrases[0][0], str)):
                raise TypeError("not a (phrase, score) pair")
            text, score = (phrases[0][0], phrases[0][1]) if phrases else ("", None)
        except (ValueError, SyntaxError, TypeError, IndexError, MemoryError, RecursionError):
            raise InputError(f"{path} row {n + 2}: {column} is not a list of (phrase, score)",
                             hint="give FALCON's falcon_concepts.csv as it writes it") from None
        keep.append(group.rstrip(","))
        texts.append(str(text))
        scores.append(score)
    if skipped:
        warn(f"{path}: {skipped} FALCON group(s) of several features left out (a group describes a subspace, not a unit)")
    if not keep:
        raise InputError(f"{path}: every FALCON group holds several features, so no unit is labelled")
    return _Parsed([layer] * len(keep), keep, texts, scores)


def _cosy(rows, layer, path) -> _Parsed:
    """CoSy's evaluation output (neuron,concept,AUC,U1,p,MAD; the layer in the file name): the concept each neuron
    was explained with, scored by CoSy's AUC."""
    return _Parsed([layer] * len(rows), [r["neuron"] for r in rows], [r["concept"] for r in rows],
                   [r.get("AUC") for r in rows])


@dataclass(frozen=True)
class CsvLayout:
    """One published label-file layout: what it is, the columns that tell it apart (``detect``), whether its file
    names no layer (then the layer comes from --layer or the file name), whether its units start at 1."""

    description: str
    method: str
    detect: Any
    parse: Any
    layer_in_name: bool = False
    one_based: bool = False
    skips_blank: bool = False    # a unit whose label is blank is left out (with a warning), not an error


#: Label files other methods publish, in the order their headers are tried.
CSV_LAYOUTS: dict[str, CsvLayout] = {
    "linear-explanations-csv": CsvLayout(
        "Linear Explanations result CSV ([layer,]unit,val correlation,weight0,concept0,...,bias)",
        "Linear Explanations (CSV)", lambda cols: {"unit", "weight0", "concept0"} <= cols, _explanations,
        layer_in_name=True),
    "clip-dissect-csv": CsvLayout("CLIP-Dissect CSV (layer,unit,description,similarity)", "CLIP-Dissect (CSV)",
                                  lambda cols: {"layer", "unit", "description", "similarity"} <= cols, _described),
    "milan-csv": CsvLayout("MILAN CSV (layer,unit,description)", "MILAN",
                           lambda cols: {"layer", "unit", "description"} <= cols, _described),
    "baseline-csv": CsvLayout("a baseline CSV of Linear Explanations (unit,description,...; the layer in the file name)",
                              "baseline (CSV)", lambda cols: {"unit", "description"} <= cols, _described,
                              layer_in_name=True),
    "describe-and-dissect-csv": CsvLayout(
        "Describe-and-Dissect CSV (Neuron ID,Label 1,Label 2,Label 3; one layer, in the file or folder name)",
        "Describe-and-Dissect", lambda cols: "Neuron ID" in cols and ("Label 1" in cols or "label" in cols), _dnd,
        layer_in_name=True, skips_blank=True),
    "cosy-evaluation-csv": CsvLayout("CoSy evaluation CSV (neuron,concept,AUC,U1,p,MAD; one layer, in the file name)",
                                     "CoSy", lambda cols: {"neuron", "concept", "AUC"} <= cols, _cosy,
                                     layer_in_name=True),
    "invert-csv": CsvLayout("INVERT CSV (neuron,concept,concept_id,metric; one layer, in the file name)", "INVERT",
                            lambda cols: {"neuron", "concept", "metric"} <= cols, _invert, layer_in_name=True),
    "invert-formula-csv": CsvLayout("INVERT's older CSV (neuron,formula,length,metric,...)", "INVERT",
                                    lambda cols: {"neuron", "formula", "metric"} <= cols, _invert_wnids,
                                    layer_in_name=True),
    "falcon-csv": CsvLayout("FALCON CSV (group,concept_set_words,concept_set_noun_phrases; one layer)", "FALCON",
                            lambda cols: "group" in cols and bool({"concept_set_noun_phrases", "concept_set_words"} & cols),
                            _falcon, layer_in_name=True, skips_blank=True),
    "netdissect-tally": CsvLayout("NetDissect-Lite tally CSV (unit,category,label,score,...; one layer, units 1-based)",
                                  "NetDissect", lambda cols: {"unit", "category", "label", "score"} <= cols, _tally,
                                  layer_in_name=True, one_based=True),
}
#: Label files other methods publish (kind -> what it is).
EXTERNAL_LABEL_KINDS = {kind: layout.description for kind, layout in CSV_LAYOUTS.items()}


def _layer_of(p: Path, layer: str | None, known: list[str] | None, layout: CsvLayout) -> str:
    """The layer a one-layer file describes: ``layer``, or the known layer its file name ends with."""
    if layer is not None:
        return layer
    fits = sorted((n for n in known or [] if p.stem == n or p.stem.endswith(("_" + n, "-" + n))), key=len)
    if not fits:    # Describe-and-Dissect: .../{model}_{probe}_{layer}_results_{tag}/all_result_concepts/final_results.csv
        folders = [q.name for q in list(p.resolve().parents)[:2]]
        fits = sorted((n for n in known or [] for f in folders
                       if f"_{n}_" in f or f.endswith(("_" + n, "-" + n)) or f == n), key=len)
    if fits:
        return fits[-1]
    raise UsageError(f"{p} is a {layout.description.split(' (')[0]}: it does not name its layer",
                     hint="name the layer it describes, as named in activations.h5 (--layer, or one --layers in "
                          "report and compare)")


def _read_parquet_labels(p: Path, composed: str) -> LabelFile:
    meta = read_parquet_metadata(p, (LABELS_FORMAT, COMPOSED_FORMAT, EXPLAIN_FORMAT))
    if meta["format"] == EXPLAIN_FORMAT:
        table = read_table(p, EXPLAIN_FORMAT, columns=["layer", "unit", "concepts", "weights", "correlation"])
        parts = [list(c or []) for c in table.column("concepts").to_pylist()]
        weights = [list(w or []) for w in table.column("weights").to_pylist()]
        bad = next((i for i, (c, w) in enumerate(zip(parts, weights)) if len(c) != len(w) or None in c or None in w), None)
        if bad is not None:
            raise ArtifactError(f"{p} row {bad}: its concepts and weights do not pair up",
                                hint="give a file written by `dissect explain`")
        texts = [" + ".join(f"{w:.2f} {c}" for c, w in zip(cs, ws)) for cs, ws in zip(parts, weights)]
        return LabelFile(str(p), EXPLAIN_FORMAT, table.column("layer").to_pylist(), table.column("unit").to_pylist(),
                         texts, table.column("correlation").to_pylist(), meta, parts, weights)
    and_parts = composed == "and" and meta["format"] == COMPOSED_FORMAT
    table = read_table(p, (LABELS_FORMAT, COMPOSED_FORMAT),
                       columns=["layer", "unit", "label", "similarity"] + (["parts"] if and_parts else []))
    labels = table.column("label").to_pylist()
    if any(v is None for v in labels):
        raise ArtifactError(f"{p}: column 'label' has empty (null) values", hint=f"give a file written by `{MAKER[meta['format']]}`")
    parts = None
    if and_parts:
        parts = [list(c or []) for c in table.column("parts").to_pylist()]
        bad = next((i for i, c in enumerate(parts) if not c or None in c), None)
        if bad is not None:
            raise ArtifactError(f"{p} row {bad}: its parts are empty", hint="give a file written by `dissect compose`")
    return LabelFile(str(p), meta["format"], table.column("layer").to_pylist(), table.column("unit").to_pylist(), labels,
                     table.column("similarity").to_pylist(), meta, parts)


#: The kind ``csv_kind`` gives per-image annotations (id, concept[, value]), and the columns that tell them apart.
ANNOTATIONS_KIND = "annotations"
ANNOTATION_COLUMNS = {"id", "concept"}


def is_annotations_parquet(path: str | os.PathLike) -> bool:
    """Whether a Parquet file is per-image annotations (columns id and concept, no dissect metadata)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception:  # not Parquet at all (pyarrow raises several types)
        return False
    return ANNOTATION_COLUMNS <= set(schema.names) and b"dissect" not in (schema.metadata or {})


def csv_kind(path: str | os.PathLike) -> str:
    """What a CSV dissect reads holds, from its header: a label kind of ``CSV_LAYOUTS`` or ``ANNOTATIONS_KIND``."""
    import csv

    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            header = {(h or "").strip() for h in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {p} as CSV: {e}") from None
    if ANNOTATION_COLUMNS <= header:
        return ANNOTATIONS_KIND
    kind = next((k for k, lay in CSV_LAYOUTS.items() if lay.detect(header)), None)
    if kind is None:
        raise InputError(f"{p} is not a CSV dissect knows (header: {', '.join(sorted(header))[:120]})",
                         hint="known: per-image annotations (id, concept[, value]); " + "; ".join(EXTERNAL_LABEL_KINDS.values()))
    return kind


def _read_csv_rows(p: Path) -> tuple[list[dict], set[str]]:
    import csv

    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = []
            for row in reader:
                if None in row:  # more fields than the header names: an unquoted comma, most likely
                    raise InputError(f"{p} line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields "
                                     f"where the header has {len(reader.fieldnames)}",
                                     hint='quote a field that holds a comma ("red, round"), as CSV writers do')
                rows.append(row)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {p} as CSV: {e}") from None
    if not rows:
        raise InputError(f"{p} holds no labels", hint="give a CSV with a header row and one row per unit")
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    return rows, set(header)


def _units(p: Path, raw_units: list[str], offset: int) -> list[int]:
    units = []
    for i, raw in enumerate(raw_units):
        try:
            u = int(str(raw).strip())
        except ValueError:
            raise InputError(f"{p} row {i + 2}: unit {raw!r} is not a whole number") from None
        if u - offset < 0:
            raise InputError(f"{p} row {i + 2}: unit {u} is out of range" + (" (NetDissect units start at 1)" if offset else ""))
        units.append(u - offset)
    return units


def read_label_file(path: str | os.PathLike, layer: str | None = None, composed: str = "phrase",
                    known_layers: list[str] | None = None) -> LabelFile:
    """Labels from a dissect labels.parquet, composed.parquet or explanations.parquet, or from a label file another
    method publishes (``CSV_LAYOUTS``: CLIP-Dissect, MILAN, NetDissect-Lite, Linear Explanations' results and
    baselines; told apart by their header). A file that holds one layer and does not name it takes ``layer``, or the
    one of ``known_layers`` its file name ends with (``..._layer4.csv``); 1-based units become 0-based. Every layer
    is returned: ``LabelFile.select_layer`` keeps one. ``composed`` ``and``: a composed label is read as its parts
    (present where all of them are), not as one phrase."""
    p = Path(path)
    note_inputs(p)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give a labels.parquet, composed.parquet or a label CSV")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a labels file")
    if p.suffix.lower() != ".csv":
        return _read_parquet_labels(p, composed)
    rows, cols = _read_csv_rows(p)
    kind = next((k for k, lay in CSV_LAYOUTS.items() if lay.detect(cols)), None)
    if kind is None:
        raise InputError(f"{p} is not a label CSV dissect knows (header: {', '.join(sorted(cols))[:120]})",
                         hint="known: " + "; ".join(EXTERNAL_LABEL_KINDS.values()))
    layout = CSV_LAYOUTS[kind]
    needs = layout.layer_in_name and ("layer" not in cols or not all(r.get("layer") for r in rows))
    parsed = layout.parse(rows, _layer_of(p, layer, known_layers, layout) if needs else None, p)
    if parsed.weights is None and parsed.parts is not None and composed != "and":
        parsed.parts = None           # a conjunction is scored as its phrase unless composed labels are read as AND
    offset = 1 if layout.one_based else 0
    units = _units(p, parsed.units, offset)
    seen: set = set()
    for key in zip(parsed.layers, units):
        if key in seen:
            raise InputError(f"{p} labels unit {key[1] + offset} of layer {key[0]} more than once")
        seen.add(key)
    empty = [i for i, t in enumerate(parsed.texts) if _blank(t)]
    if empty and layout.skips_blank and len(empty) < len(parsed.texts):
        from ..runtime import warn

        warn(f"{p}: {len(empty)} unit(s) without a label left out (first: unit {units[empty[0]] + offset})")
        gone = set(empty)
        keep = [i for i in range(len(units)) if i not in gone]
        parsed = _Parsed(*([getattr(parsed, f)[i] for i in keep] if getattr(parsed, f) is not None else None
                           for f in ("layers", "units", "texts", "scores", "parts", "weights")))
        units = [units[i] for i in keep]
    elif empty:
        raise InputError(f"{p} row {empty[0] + 2} has an empty label")
    similarity = []
    for s_ in parsed.scores:
        try:
            similarity.append(None if s_ in (None, "") else float(s_))
        except (TypeError, ValueError):
            similarity.append(None)
    return LabelFile(str(p), kind, parsed.layers, units, parsed.texts, similarity,
                     {"format": kind, "source": str(p.resolve())}, parsed.parts, parsed.weights)


@dataclass
class Annotations:
    """Per-image concept presence in long form: image ``ids``, ``concepts`` and ``values`` in [0, 1]."""

    path: str
    ids: list[str]
    concepts: list[str]
    values: np.ndarray
    fingerprint: str = ""


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Annotations from a CSV or Parquet in long form: columns ``id`` and ``concept``, optional
    ``value`` in [0, 1] (absent: 1). Ids are image ids as stored in dissect's artifacts."""
    import csv

    p = Path(path)
    note_inputs(p)
    if not p.exists():
        raise InputError(f"{p} does not exist", hint="give a CSV or Parquet with columns id, concept[, value]")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an annotations file")
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:
            first = first_line(e)
            raise InputError(f"{p} is not a Parquet file dissect can read: {first}") from None
        names = table.column_names
        cols = {n: table.column(n).to_pylist() for n in ("id", "concept", "value") if n in names}
    else:
        try:
            with open(p, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"cannot read {p} as CSV: {e}") from None
        names = list(rows[0].keys()) if rows else []
        cols = {n: [r.get(n) for r in rows] for n in ("id", "concept", "value") if n in names}
    for need in ("id", "concept"):
        if need not in cols:
            raise InputError(f"{p} has no column {need!r} (columns: {', '.join(map(str, names))[:120]})",
                             hint="annotations are long form: one row per (id, concept), optional value in [0, 1]")
    ids, concepts = cols["id"], cols["concept"]
    if not ids:
        raise InputError(f"{p} holds no annotations")
    for i, (a, b) in enumerate(zip(ids, concepts)):
        if a in (None, "") or b in (None, ""):
            raise InputError(f"{p} row {i + 1} has an empty id or concept")
    raw = cols.get("value")
    if raw is None:
        values = np.ones(len(ids), dtype=np.float64)
    else:
        try:
            values = np.array([1.0 if v in (None, "") else float(v) for v in raw], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{p}: column 'value' holds something that is not a number") from None
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{p} row {i + 1}: value {values[i]} is not in [0, 1]")
    return Annotations(str(p), [str(a) for a in ids], [str(b) for b in concepts], values,
                       fingerprint_strings([f"{a}\t{b}\t{v!r}" for a, b, v in zip(ids, concepts, values.tolist())]))

