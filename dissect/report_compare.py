"""``dissect report --compare compare.parquet``: what changed, seen. A static HTML page from `dissect compare`'s table.

    OUT/index.html      per layer pair: the summary, the detectors lost and gained, then matched units side by
                        side (A's unit and its one-to-one match in B: both labels, both top images, their r)
    OUT/thumbs/*.jpg    the thumbnails (shared with `dissect report`'s cache scheme)

Cards come in the order a reader wants: the units of lost concepts (A's side), of gained ones (B's side), then
every other match from the least to the most correlated. Rendered here, no script on the page.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from . import artifacts as A
from .errors import InputError
from .runtime import note
from .report import ReportSettings, _check_report_output, _probe_from_activations, _thumbnails, fill_template


def _side_tops(path: Path, layers: set[str], pos: dict[str, int], n: int) -> dict[tuple[str, int], list]:
    """{(layer, unit): [(image id, activation), ...]} of the top ``n`` images of every unit, among the probe's."""
    acts = A.read_activations(path, data=False)
    keep = np.array([i for i, k in enumerate(acts.ids) if k in pos], dtype=np.int64)
    if not len(keep):
        raise InputError(f"no image of {path} is in the probe", hint="pass --probe PROBE, the images both were recorded on")
    out = {}
    for layer in layers:
        q = A.read_activation_layer(path, layer)[keep]
        order = np.argsort(-q, axis=0, kind="stable")[:n]
        for u in range(q.shape[1]):
            out[(layer, u)] = [(acts.ids[keep[i]], float(q[i, u])) for i in order[:, u]]
    return out


def _ordered(rows: list[dict], change: dict[str, int]) -> list[tuple[str, dict]]:
    """(why, row): A's units of the concepts B has fewer units of (the biggest loss first), B's units of those it has
    more of (the biggest gain first), then every other match by r (least correlated first)."""
    from .concepts import normalise

    def bucket(r):
        ca = change.get(normalise(r["label_a"]), 0) if r["label_a"] else 0
        cb = change.get(normalise(r["label_b"]), 0) if r["label_b"] else 0
        if ca < 0 and r["unit_a"] is not None:
            return (0, ca), "lost"
        if cb > 0 and r["unit_b"] is not None:
            return (1, -cb), "gained"
        return (2, 0), ""

    keyed = [(bucket(r), -1.0 if r["r"] is None else r["r"], -1 if r["unit_a"] is None else r["unit_a"], r) for r in rows]
    keyed.sort(key=lambda t: (t[0][0], t[1], t[2]))
    return [(b[1], r) for b, _, _, r in keyed]


def _side_html(title: str, label, unit_imgs, src: dict[str, str]) -> str:
    if unit_imgs is None:
        return f'<div class="side none"><h3>{html.escape(title)}</h3></div>'
    imgs = "".join(f'<img src="{html.escape(src[i])}" title="{html.escape(i)}: {v:.3g}" loading="lazy">'
                   for i, v in unit_imgs)
    return (f'<div class="side"><h3>{html.escape(title)}: {html.escape(str(label) if label else "(no label)")}</h3>'
            f'<div class="imgs">{imgs}</div></div>')


def _card(why: str, r: dict, tops_a: dict, tops_b: dict, src: dict[str, str]) -> str:
    a = None if r["unit_a"] is None else tops_a[(r["layer_a"], r["unit_a"])]
    b = None if r["unit_b"] is None else tops_b[(r["layer_b"], r["unit_b"])]
    ta = "no unit of A" if r["unit_a"] is None else f"A {r['layer_a']} #{r['unit_a']}"
    tb = "no match in B" if r["unit_b"] is None else f"B {r['layer_b']} #{r['unit_b']}"
    meta = []
    if r["r"] is not None:
        meta.append(f"r {r['r']:.3f}")
    if r["best_b"] is not None and r["best_b"] != r["unit_b"]:
        meta.append(f"best in B: #{r['best_b']} (r {r['best_r']:.3f})")
    if r["labels_agree"] is not None:
        meta.append('<span class="ok">same label</span>' if r["labels_agree"] else '<span class="bad">other label</span>')
    tag = f'<span class="tag {why}">{why}</span> ' if why else ""
    return (f'<div class="card">{tag}<span class="meta">{" · ".join(meta)}</span><div class="pair">'
            + _side_html(ta, r["label_a"], a, src) + _side_html(tb, r["label_b"], b, src) + "</div></div>")


def _concepts_html(concepts: list[dict]) -> str:
    changed = [c for c in concepts if c["change"]]
    if not changed:
        return '<p class="meta">No concept lost or gained.</p>' if concepts else ""
    body = "".join(f'<tr class="{"lost" if c["change"] < 0 else "gained"}"><td>{html.escape(c["concept"])}</td>'
                   f'<td>{c["units_a"]}</td><td>{c["units_b"]}</td><td>{c["status"]}</td></tr>' for c in changed)
    return f'<table><tr><th>concept</th><th>units in A</th><th>units in B</th><th></th></tr>{body}</table>'


def build_compare_report(compare: str | os.PathLike, out: str | os.PathLike, probe: list[str] | None = None,
                         settings: ReportSettings | None = None) -> Path:
    """Write the page of ``compare`` (compare.parquet) into the folder ``out`` (one HTML file with
    ``settings.single_file``); returns the page."""
    from .compare import concept_counts
    from .probe import open_probe

    settings = settings or ReportSettings(top_images=6)
    meta = A.read_parquet_metadata(compare, A.COMPARE_FORMAT)
    rows = A.read_table(compare, A.COMPARE_FORMAT).to_pylist()
    a, b = Path(meta["a"]), Path(meta["b"])
    for side in (a, b):
        if not side.exists():
            raise InputError(f"{compare} compares {side}, which no longer exists",
                             hint="run `dissect compare` again where the activations are")
    probe_set = open_probe(probe or _probe_from_activations(A.read_activations(a, data=False)))
    pos = {k: i for i, k in enumerate(probe_set.ids)}
    tops_a = _side_tops(a, {r["layer_a"] for r in rows}, pos, settings.top_images)
    tops_b = _side_tops(b, {r["layer_b"] for r in rows}, pos, settings.top_images)
    out = Path(out)
    page = out if settings.single_file else out / "index.html"
    _check_report_output(out, page, settings.single_file, [compare, a, b])
    (page.parent if settings.single_file else out).mkdir(parents=True, exist_ok=True)
    thumbs = None if settings.single_file else out / "thumbs"
    if thumbs is not None:
        thumbs.mkdir(exist_ok=True)
    shown = {i: None for t in (tops_a, tops_b) for imgs in t.values() for i, _ in imgs}
    src = _thumbnails(shown, probe_set, pos, thumbs, settings.thumb_size)
    sections = [_pair_section(pair, rows, meta, tops_a, tops_b, src, concept_counts)
                for pair in dict.fromkeys((r["layer_a"], r["layer_b"]) for r in rows)]
    title = f"dissect compare: {a.name} vs {b.name}"
    with A.atomic_path(page) as tmp:
        tmp.write_text(fill_template(_PAGE, {"TITLE": html.escape(title), "BODY": "".join(sections),
                                             "SUB": html.escape(f"A {a} · B {b} · {meta.get('shared_images')} shared images")}),
                       encoding="utf-8")
    note(f"wrote {page}: {len(rows)} units, {len(shown)} thumbnails")
    return page


def _pair_section(pair, rows, meta, tops_a, tops_b, src, concept_counts) -> str:
    la, lb = pair
    mine = [r for r in rows if (r["layer_a"], r["layer_b"]) == pair]
    lab_a = {(la, r["unit_a"]): r["label_a"] for r in mine if r["unit_a"] is not None and r["label_a"]}
    lab_b = {(lb, r["unit_b"]): r["label_b"] for r in mine if r["unit_b"] is not None and r["label_b"]}
    concepts = concept_counts(lab_a, lab_b, la, lb) if lab_a and lab_b else []
    change = {c["concept"]: c["change"] for c in concepts}
    s = next((x for x in meta.get("summary", []) if (x["layer_a"], x["layer_b"]) == pair), {})
    facts = [f"{s.get('units_a')} / {s.get('units_b')} units"]
    if s.get("cka") is not None:
        facts.append(f"CKA {s['cka']:.3f}")
    if s.get("matched_share") is not None:
        facts.append(f"{s['matched']} matched with r &gt; {s['threshold']:g} ({s['matched_share']:.0%})")
    cards = "".join(_card(why, r, tops_a, tops_b, src) for why, r in _ordered(mine, change))
    return (f'<section><h2>{html.escape(la)} → {html.escape(lb)}</h2><p class="meta">{" · ".join(facts)}</p>'
            f'{_concepts_html(concepts)}<div class="cards">{cards}</div></section>')


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{padding:12px 18px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:17px;margin:0 0 4px} .meta,.sub{color:#666;font-size:12px}
section{padding:8px 18px} section h2{font-size:16px;margin:10px 0 2px}
table{border-collapse:collapse;background:#fff;margin:6px 0} td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
tr.lost td{color:#b3261e} tr.gained td{color:#187a2f}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px;margin-top:8px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px}
.pair{display:flex;gap:10px} .side{flex:1} .side h3{font-size:13px;margin:4px 0}
.side.none h3{color:#999;font-weight:normal}
.imgs{display:flex;flex-wrap:wrap;gap:3px} .imgs img{width:56px;height:56px;object-fit:cover;border-radius:3px;background:#eee}
.tag{font-size:11px;padding:1px 6px;border-radius:8px;color:#fff} .tag.lost{background:#b3261e} .tag.gained{background:#187a2f}
.ok{color:#187a2f} .bad{color:#b3261e}
</style></head><body>
<header><h1>{{TITLE}}</h1><div class="sub">{{SUB}}</div></header>
{{BODY}}
</body></html>
"""
