"""Stage 7: see the neurons. A static HTML report: one card per neuron with its label and the images that drive it.

    report/index.html      the page (its data inline as JSON, rendered by a little script)
    report/thumbs/*.jpg    one thumbnail per probe image shown, made once and reused

Works offline, from a file:// URL; ``single_file`` inlines the thumbnails as data
URIs. Thumbnails are small (``THUMB`` pixels) and lazily loaded, so a 2,048-neuron
layer with 10 images each does not load full-size images.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts as A
from .errors import InputError, MismatchError, UsageError
from .models import Preprocess, TargetSpec
from .runtime import note, progress
from .settings import Settings, no_other_fields

THUMB = 112


def _probe_from_activations(acts: A.Activations) -> list[str]:
    probe = json.loads(acts.attrs.get("probe", "{}") or "{}")
    paths = [s.get("path") for s in probe.get("sources", []) if s.get("type") in ("folder", "list")]
    if not paths:
        raise UsageError("the activations do not record a probe folder or list", hint="pass --probe PROBE")
    return paths


def _thumbnail(image, size: int) -> bytes:
    img = image.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _svg_histogram(values: np.ndarray, cutoff: float | None, bins: int = 30) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ""
    lo, hi = float(values.min()), float(values.max())
    if not hi - lo > 1e-9 * max(1.0, abs(hi)):  # all equal (e.g. saturated at λ·log C)
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    w, h = 300, 70
    top = max(1, counts.max())
    bars = []
    for i, c in enumerate(counts):
        bh = h * c / top
        bars.append(f'<rect x="{i * w / bins:.1f}" y="{h - bh:.1f}" width="{w / bins - 1:.1f}" height="{bh:.1f}"/>')
    line = ""
    if cutoff is not None and edges[0] <= cutoff <= edges[-1]:
        x = (cutoff - edges[0]) / (edges[-1] - edges[0]) * w
        line = f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h}" class="cut"/>'
    return (f'<svg class="hist" viewBox="0 0 {w} {h + 14}" width="{w}" height="{h + 14}">{"".join(bars)}{line}'
            f'<text x="0" y="{h + 12}">{edges[0]:.2f}</text><text x="{w}" y="{h + 12}" text-anchor="end">{edges[-1]:.2f}</text></svg>')


def _view(preprocess: dict[str, Any] | None):
    """The model's view of an image (its resize and centre crop, from the activations' recorded preprocessing); the
    image as it is where none was recorded."""
    if not isinstance(preprocess, dict) or not preprocess.get("input_size"):
        return lambda im: im
    from torchvision import transforms as T

    mode = getattr(T.InterpolationMode, str(preprocess.get("interpolation", "bicubic")).upper(), T.InterpolationMode.BICUBIC)
    size = int(preprocess["input_size"])
    view = Preprocess(size, int(preprocess.get("resize_size") or size), (0.0,) * 3, (1.0,) * 3,
                      squash=bool(preprocess.get("squash")))
    return T.Compose([view.resize(mode), T.CenterCrop(size)])


def _loads_json(value) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value) if value else None
    except (TypeError, ValueError):
        return None


def _wanted_images(neurons: list[dict], layer: str) -> dict[str, list[int]]:
    wanted: dict[str, list[int]] = {}
    for n in neurons:
        if n["layer"] == layer:
            for image_id, _ in n["imgs"]:
                wanted.setdefault(image_id, []).append(n["unit"])
    return wanted


def _stored_maps(activations, ids: list[str], neurons: list[dict], layers: list[str]) -> dict:
    """{(layer, unit, image id): map} from the maps activations.h5 keeps (``record --maps``), for the cards' images."""
    have = A.maps_in(activations)
    out: dict = {}
    for layer in (n for n in layers if n in have):
        wanted = _wanted_images(neurons, layer)
        units = sorted({u for us in wanted.values() for u in us})
        if not units:
            continue
        m = A.read_maps(activations, layer, units)
        for ui, u in enumerate(units):
            for j, row in enumerate(m.rows[ui].tolist()):
                if row >= 0 and u in wanted.get(ids[row], ()):
                    out[(layer, u, ids[row])] = m.values[ui, j]
    return out


def _recomputed_maps(target_spec: "TargetSpec", device, probe_set, pos, neurons, acts, layers) -> dict:
    """{(layer, unit, image id): map} of conv layers, from the model run again on the cards' images."""
    import torch

    from .hooks import LayoutRequest, Recorder
    from .runtime import resolve_device, warn

    dev = resolve_device(device)
    target = target_spec.load(dev, layers=layers)
    if target.fingerprint and acts.attrs.get("model_fingerprint") and target.fingerprint != acts.attrs["model_fingerprint"]:
        raise UsageError(f"{target_spec.model} with these weights is not the model that made the activations",
                         hint="pass the --model, --weights and --model-arg used for `dissect record`")
    if target.preprocess is None:
        warn("activation maps left out: the model brings its own transform, so its input view is unknown")
        return {}
    out: dict = {}
    for layer in layers:
        la = acts.layer_attrs.get(layer, {})
        if la.get("layout") not in ("nchw", "nhwc"):
            continue
        wanted = _wanted_images(neurons, layer)
        ids = list(wanted)
        with Recorder(target.module, [layer], layout=LayoutRequest(per_layer={layer: la["layout"]}), keep_raw=True) as rec, \
                progress(f"activation maps {layer}", len(ids), "images") as advance:
            for s in range(0, len(ids), 32):
                chunk = ids[s : s + 32]
                x = torch.stack([target.transform(probe_set.load(pos[i])) for i in chunk]).to(dev)
                raw = rec.run(x)[layer].float()
                if la["layout"] == "nhwc":
                    raw = raw.permute(0, 3, 1, 2)
                raw = raw.cpu().numpy()
                for b, image_id in enumerate(chunk):
                    for u in wanted[image_id]:
                        out[(layer, u, image_id)] = raw[b, u]
                advance(len(chunk))
    return out


def _overlays(maps: dict, view, probe_set, pos, size: int) -> dict:
    """{(layer, unit, image id): JPEG of the model's view of the image with the unit's map over it}, one colour
    scale per unit over its images, so the maps of a card compare."""
    from PIL import Image

    views: dict[str, Image.Image] = {}
    by_unit: dict[tuple[str, int], list[str]] = {}
    for (layer, u, image_id) in maps:
        by_unit.setdefault((layer, u), []).append(image_id)
    out: dict = {}
    for (layer, u), image_ids in by_unit.items():
        hi = max(float(maps[(layer, u, i)].max()) for i in image_ids)
        lo = min(float(maps[(layer, u, i)].min()) for i in image_ids)
        for image_id in image_ids:
            if image_id not in views:
                views[image_id] = view(probe_set.load(pos[image_id])).resize((size, size))
            m = (np.asarray(maps[(layer, u, image_id)], dtype=np.float32) - lo) / (hi - lo if hi > lo else 1.0)
            heat = Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
            rgb = np.asarray(views[image_id].convert("RGB"), dtype=np.float32)
            red = np.array([255.0, 40.0, 0.0])
            blended = rgb * (1 - 0.55 * h) + red * 0.55 * h
            buf = io.BytesIO()
            Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
            out[(layer, u, image_id)] = buf.getvalue()
    return out


def _check_report_output(out: Path, page: Path, single_file: bool, inputs) -> None:
    """The page (and, without --single-file, the folder) must overwrite none of the inputs, nor lie in the probe."""
    if str(out) == A.STDOUT:
        raise UsageError("-o -: the report is a folder (index.html and thumbs/) or, with --single-file, an HTML file, "
                         "and cannot go to standard output", hint="give a folder path with -o, or --single-file -o FILE.html")
    A.refuse_clobber(out)
    if not single_file:
        if out.exists() and not out.is_dir():
            raise UsageError(f"report folder {out} exists and is not a folder",
                             hint="give a new folder with -o, or --single-file -o report.html")
        if not out.parent.is_dir():
            raise UsageError(f"folder {out.parent} does not exist", hint=f"create it first (mkdir -p {out.parent})")
        if out.exists():
            A.check_output_path(page, inputs)
        return
    A.check_output_path(page, inputs)


@dataclass(frozen=True)
class ReportSettings(Settings):
    """What the page shows: the ``top_images`` most activating images per unit (and, with ``percentiles``, five
    sampled from each unit's top 0.1%, 1% and 5%), of ``layers`` (None: every labelled one), the interpretability
    ``cutoff`` in the layer summaries, thumbnails of ``thumb_size`` pixels, inlined with ``single_file``."""

    top_images: int = 10
    layers: tuple[str, ...] | None = None
    percentiles: bool = False
    single_file: bool = False
    cutoff: float | None = None
    thumb_size: int = THUMB

    def check(self) -> None:
        if self.top_images < 1:
            raise UsageError(f"--top-images must be at least 1, got {self.top_images}")
        if self.thumb_size < 16:
            raise UsageError(f"thumbnails must be at least 16 pixels, got {self.thumb_size}")
        if self.cutoff is not None and not math.isfinite(self.cutoff):
            raise UsageError(f"--cutoff must be a number, got {self.cutoff}")


@dataclass(frozen=True)
class ReportExtras:
    """The optional tables shown on the cards: composed labels, `evaluate` metrics (truth and ✓/✗), simulation
    scores, linear explanations."""

    composed: Any = None
    metrics: Any = None
    simulate: Any = None
    explanations: Any = None

    def paths(self) -> list:
        return [self.composed, self.metrics, self.simulate, self.explanations]


def _extra_columns(extras: ReportExtras) -> dict[str, dict]:
    """{card field: {(layer, unit): value}} of the extras given."""
    out: dict[str, dict] = {}
    if extras.composed is not None:
        c = A.read_table(extras.composed, A.COMPOSED_FORMAT, columns=["layer", "unit", "label", "gain"]).to_pylist()
        out["composed"] = {(r["layer"], int(r["unit"])): (r["label"], r["gain"]) for r in c}
    if extras.metrics is not None:
        m = A.read_table(extras.metrics, A.EVALUATION_FORMAT, columns=["layer", "unit", "truth", "exact"]).to_pylist()
        out["truth"] = {(r["layer"], int(r["unit"])): (r["truth"], bool(r["exact"])) for r in m}
    if extras.simulate is not None:
        from .evaluate.simulate import read_scores

        out["simr"] = read_scores(extras.simulate)
    if extras.explanations is not None:
        e = A.read_table(extras.explanations, A.EXPLAIN_FORMAT,
                         columns=["layer", "unit", "explanation", "correlation"]).to_pylist()
        out["expl"] = {(r["layer"], int(r["unit"])): (r["explanation"], r["correlation"]) for r in e}
    return out


def _layer_cards(name: str, q: np.ndarray, rows: list[dict], ids: list[str], extra: dict[str, dict],
                 settings: ReportSettings) -> list[dict[str, Any]]:
    """The cards of one layer's labelled units: label, alternatives, top images (and samples), the extras."""
    n = min(settings.top_images, q.shape[0])
    order = np.argsort(-q, axis=0, kind="stable")
    frac_rows = {}
    if settings.percentiles:
        rng = np.random.default_rng(0)
        for label, frac in (("top 0.1%", 0.001), ("top 1%", 0.01), ("top 5%", 0.05)):
            frac_rows[label] = (max(n, int(round(q.shape[0] * frac))), rng)
    cards = []
    for r in rows:
        u = int(r["unit"])
        card: dict[str, Any] = {"layer": name, "unit": u, "label": r["label"], "sim": r["similarity"],
                                "cands": [[c, v] for c, v in zip(r["candidates"] or [], r["candidate_similarities"] or [])][1:],
                                "imgs": [[ids[i], float(q[i, u])] for i in order[:n, u]]}
        for label, (k, rng) in frac_rows.items():
            pick = np.sort(rng.choice(order[:k, u], size=min(5, k), replace=False))
            card.setdefault("samples", {})[label] = [[ids[i], float(q[i, u])] for i in pick]
        for key, values in extra.items():
            if (name, u) in values:
                card[key] = values[(name, u)]
        cards.append(card)
    return cards


def _layer_summary(name: str, rows: list[dict], cutoff: float | None) -> dict[str, Any]:
    sims = np.array([np.nan if r["similarity"] is None else r["similarity"] for r in rows], dtype=np.float64)
    return {"layer": name, "units": int(len(rows)), "mean": float(np.nanmean(sims)) if np.isfinite(sims).any() else None,
            "interpretable": None if cutoff is None else float(np.mean(sims > cutoff)),
            "svg": _svg_histogram(sims, cutoff)}


def _thumbnails(shown, probe_set, pos: dict[str, int], thumbs_dir: Path | None, size: int) -> dict[str, str]:
    """Each shown image's thumbnail, as its path in ``thumbs_dir`` (made once per image, cached by id, size and file
    size, reused by later reports) or inlined as a data URI."""
    src: dict[str, str] = {}
    with progress("thumbnails", len(shown), "images") as advance:
        for image_id in shown:
            i = pos[image_id]
            key = hashlib.sha1(f"{image_id}|{size}|{probe_set.sizes[i] if probe_set.sizes else ''}".encode()).hexdigest()[:16]
            if thumbs_dir is not None:
                path = thumbs_dir / f"{key}.jpg"
                if not path.exists():
                    data = _thumbnail(probe_set.load(i), size)
                    with A.atomic_path(path) as tmp:
                        tmp.write_bytes(data)
                src[image_id] = f"thumbs/{key}.jpg"
            else:
                data = _thumbnail(probe_set.load(i), size)
                src[image_id] = "data:image/jpeg;base64," + base64.b64encode(data).decode()
            advance(1)
    return src


def _attach_maps(neurons: list[dict], overlays: dict, src: dict[str, str], thumbs_dir: Path | None) -> None:
    """Each card's activation-map images, beside its thumbnails (a thumbnail where an image has no map)."""
    for n in neurons:
        maps = [overlays.get((n["layer"], n["unit"], i)) for i, _ in n["imgs"]]
        if not any(m is not None for m in maps):
            continue
        n["maps"] = []
        for (image_id, _), data in zip(n["imgs"], maps):
            if data is None:
                n["maps"].append(src[image_id])
            elif thumbs_dir is not None:
                key = hashlib.sha1(f"map|{n['layer']}|{n['unit']}|{image_id}".encode()).hexdigest()[:16]
                with A.atomic_path(thumbs_dir / f"{key}.jpg") as tmp:
                    tmp.write_bytes(data)
                n["maps"].append(f"thumbs/{key}.jpg")
            else:
                n["maps"].append("data:image/jpeg;base64," + base64.b64encode(data).decode())


def _page(labels, meta: dict, neurons, src, summaries, cutoff) -> str:
    """The HTML page, its data inline."""
    title = f"dissect: {Path(labels).name}"
    data = {"neurons": neurons, "src": src, "cutoff": cutoff,
            "meta": {k: meta.get(k) for k in ("similarity", "model", "clip")} | {"concepts": (meta.get("concepts") or {}).get("name")}}
    summary_html = "".join(
        f'<div class="sum"><b>{html.escape(s["layer"])}</b> {s["units"]} units'
        + (f', {s["interpretable"]:.0%} above {cutoff}' if s["interpretable"] is not None else "")
        + f'{s["svg"]}</div>' for s in summaries)
    options = "".join(f'<option value="{html.escape(s["layer"])}">{html.escape(s["layer"])} ({s["units"]})</option>' for s in summaries)
    header = (f"{meta.get('model', '')} · {meta.get('similarity', '')} · {(meta.get('concepts') or {}).get('name', '')}"
              f" · CLIP {meta.get('clip', '')}")
    return fill_template(_PAGE, {"TITLE": html.escape(title), "OPTIONS": options, "SUMMARY": summary_html,
                                 "HEADER": html.escape(header), "DATA": script_json(data)})


def _label_rows(labels, known_layers: list[str], layers) -> tuple[dict, list[dict]]:
    """(metadata, one row per labelled unit) of dissect's labels.parquet, or of a label file another method publishes
    (CLIP-Dissect, MILAN, NetDissect, Describe-and-Dissect, INVERT, CoSy, FALCON: their units aligned as
    ``read_label_file`` does; a one-layer file takes the single --layers given, or the layer its file name ends with)."""
    if Path(labels).suffix.lower() != ".csv":
        return A.read_labels_metadata(labels), A.read_table(labels, A.LABELS_FORMAT).to_pylist()
    lf = A.read_label_file(labels, layer=layers[0] if layers and len(layers) == 1 else None, known_layers=known_layers)
    rows = [{"layer": lay, "unit": u, "label": text, "similarity": sim, "candidates": None,
             "candidate_similarities": None} for lay, u, text, sim in zip(lf.layers, lf.units, lf.labels, lf.similarity)]
    return {"similarity": lf.method, "model": None, "clip": None}, rows


def build_report(labels: str | os.PathLike, activations: str | os.PathLike, out: str | os.PathLike,
                 probe: list[str] | None = None, extras: ReportExtras | None = None, settings: ReportSettings | None = None,
                 maps: TargetSpec | None = None, device: str = "auto", **fields: Any) -> Path:
    """Write the report into the folder ``out`` (or ``out`` as one HTML file with ``settings.single_file``); returns
    the page. ``extras`` and ``settings`` may also be given as their fields.

    The maps activations.h5 keeps (``record --maps``: conv layers, ViT tokens, SAE latents) are overlaid on each
    card's images (a toggle on the page), without the model. With ``maps`` (the target the activations came from),
    conv layers recorded without maps get theirs recomputed for the images shown.
    """
    from .probe import open_probe

    extras = replace(extras or ReportExtras(), **{k: fields.pop(k) for k in list(fields) if k in ReportExtras.__dataclass_fields__})
    settings = ReportSettings.of(settings, **ReportSettings.take(fields))
    no_other_fields(fields, "build_report")
    acts = A.read_activations(activations, data=False)
    meta, label_rows = _label_rows(labels, list(acts.layers), settings.layers)
    wanted = list(settings.layers or dict.fromkeys(r["layer"] for r in label_rows))
    missing = [n for n in wanted if n not in acts.layers]
    if missing:
        raise UsageError(f"{activations} has no layer {missing[0]!r} of the labels", hint="pass the activations the labels came from")
    probe_set = open_probe(probe or _probe_from_activations(acts))
    pos = {k: i for i, k in enumerate(probe_set.ids)}
    absent = [k for k in acts.ids if k not in pos]
    if absent:
        raise InputError(f"image {absent[0]!r} of {activations} is not in the probe", hint="pass the PROBE the activations were recorded on")
    extra = _extra_columns(extras)

    out = Path(out)
    page = out if settings.single_file else out / "index.html"
    _check_report_output(out, page, settings.single_file, [labels, activations, *extras.paths()])
    (page.parent if settings.single_file else out).mkdir(parents=True, exist_ok=True)
    thumbs_dir = None if settings.single_file else out / "thumbs"
    if thumbs_dir is not None:
        thumbs_dir.mkdir(exist_ok=True)

    neurons, summaries, shown = [], [], {}
    for name in wanted:
        q = A.read_activation_layer(activations, name)
        rows = sorted((r for r in label_rows if r["layer"] == name), key=lambda r: r["unit"])
        if rows and rows[-1]["unit"] >= q.shape[1]:
            raise MismatchError(f"{labels} labels unit {rows[-1]['unit']} of layer {name}, which has {q.shape[1]} units "
                                f"in {activations}", hint="pass the activations the labels came from")
        for card in _layer_cards(name, q, rows, acts.ids, extra, settings):
            for i, _ in card["imgs"] + [x for v in card.get("samples", {}).values() for x in v]:
                shown.setdefault(i, None)
            neurons.append(card)
        summaries.append(_layer_summary(name, rows, settings.cutoff))

    raw = _stored_maps(activations, acts.ids, neurons, wanted)
    stored = {layer for layer, _, _ in raw}
    if maps is not None and [n for n in wanted if n not in stored]:   # the model again, for files recorded without maps
        raw.update(_recomputed_maps(maps, device, probe_set, pos, neurons, acts, [n for n in wanted if n not in stored]))
    overlays = _overlays(raw, _view(_loads_json(acts.attrs.get("preprocess"))), probe_set, pos, settings.thumb_size)
    src = _thumbnails(shown, probe_set, pos, thumbs_dir, settings.thumb_size)
    _attach_maps(neurons, overlays, src, thumbs_dir)
    with A.atomic_path(page) as tmp:
        tmp.write_text(_page(labels, meta, neurons, src, summaries, settings.cutoff), encoding="utf-8")
    note(f"wrote {page}: {len(neurons)} neurons, {len(shown)} thumbnails")
    return page


def fill_template(template: str, values: dict[str, str]) -> str:
    """Fill every ``{{NAME}}`` of ``template`` in one pass: text put in is never scanned for placeholders again
    (a file or model named "{{DATA}}" stays that name). The values must already be escaped for where they go."""
    import re

    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], template)


def _json_safe(x):
    """NaN and infinities as the strings the page shows ("NaN", "Infinity", "-Infinity"); JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def script_json(data) -> str:
    """``data`` as JSON to put inside <script type="application/json">: valid JSON (no NaN) that cannot close or
    comment out its element (<, >, & and the JavaScript line separators written as \\u escapes)."""
    text = json.dumps(_json_safe(data), allow_nan=False, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{padding:12px 18px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:2}
header h1{font-size:17px;margin:0 0 4px} header .sub{color:#666;font-size:12px}
.controls{margin-top:8px;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.controls input[type=search]{padding:4px 8px;min-width:220px}
#summaries{display:flex;gap:18px;flex-wrap:wrap;padding:10px 18px}
.sum{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px}
.hist{display:block;margin-top:4px} .hist rect{fill:#5b7db1} .hist line.cut{stroke:#c33;stroke-width:2} .hist text{font-size:10px;fill:#666}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px;padding:12px 18px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px}
.card h2{font-size:15px;margin:0} .card .meta{color:#666;font-size:12px}
.card .cands{font-size:12px;color:#444;margin:4px 0}
.imgs{display:flex;flex-wrap:wrap;gap:3px} .imgs img{width:64px;height:64px;object-fit:cover;border-radius:3px;background:#eee}
.ok{color:#187a2f} .bad{color:#b3261e} .samples{font-size:11px;color:#666;margin-top:4px}
#count{color:#666}
</style></head><body>
<header><h1>{{TITLE}}</h1><div class="sub">{{HEADER}}</div>
<div class="controls">
<label>Layer <select id="layer"><option value="">all</option>{{OPTIONS}}</select></label>
<input id="search" type="search" placeholder="search labels and candidates">
<label>Sort <select id="sort"><option value="unit">unit</option><option value="sim">similarity</option><option value="simr">simulation r</option></select></label>
<label id="mapsbox" hidden><input type="checkbox" id="maps"> activation maps</label>
<span id="count"></span></div></header>
<div id="summaries">{{SUMMARY}}</div>
<div id="cards"></div>
<script id="data" type="application/json">{{DATA}}</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const cards = document.getElementById('cards');
const lazy = D.neurons.length > 200 ? ' loading="lazy"' : '';  // big layers: only what is scrolled to
// Labels come from files anyone may write: markup is shown as text, control and bidi characters as escapes.
const esc = s => String(s).replace(/[\\u0000-\\u001f\\u007f-\\u009f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff]/g,
    c => '\\\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))
  .replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const num = (x, d) => typeof x === 'number' ? x.toFixed(d) : esc(x);   // "NaN", "Infinity", null as such
const key = x => typeof x === 'number' ? x : -Infinity;
function card(n) {
  const el = document.createElement('div');
  el.className = 'card'; el.dataset.layer = n.layer;
  el.dataset.text = (String(n.label) + ' ' + n.cands.map(c => String(c[0])).join(' ') + (n.composed ? ' ' + String(n.composed[0]) : '') + (n.expl ? ' ' + String(n.expl[0]) : '')).toLowerCase();
  let h = `<h2>${esc(n.layer)} #${n.unit}: ${esc(n.label)}</h2><div class="meta">similarity ${num(n.sim, 3)}`;
  if ('simr' in n) h += ` · simulation r ${n.simr === null ? 'n/a' : num(n.simr, 3)}`;
  if (n.truth) h += ` · truth: ${esc(n.truth[0])} <span class="${n.truth[1] ? 'ok' : 'bad'}">${n.truth[1] ? '✓' : '✗'}</span>`;
  if (n.composed) h += ` · composed: ${esc(n.composed[0])} (${key(n.composed[1]) >= 0 ? '+' : ''}${num(n.composed[1], 2)})`;
  if (n.expl) h += `</div><div class="meta">linear: ${esc(n.expl[0])} (r ${n.expl[1] === null ? 'n/a' : num(n.expl[1], 3)})`;
  h += `</div><div class="cands">${n.cands.map(c => esc(c[0]) + ' ' + num(c[1], 2)).join(' · ')}</div><div class="imgs">`;
  h += n.imgs.map((i, j) => `<img${lazy} src="${D.src[i[0]]}"${n.maps ? ` data-plain="${D.src[i[0]]}" data-map="${n.maps[j]}"` : ''} title="${esc(i[0])}: ${num(i[1], 3)}" alt="">`).join('');
  h += '</div>';
  for (const [k, v] of Object.entries(n.samples || {}))
    h += `<div class="samples">${esc(k)}</div><div class="imgs">` + v.map(i => `<img${lazy} src="${D.src[i[0]]}" title="${esc(i[0])}" alt="">`).join('') + '</div>';
  el.innerHTML = h;
  return el;
}
const els = D.neurons.map(n => [n, card(n)]);
function render() {
  const layer = document.getElementById('layer').value, q = document.getElementById('search').value.trim().toLowerCase();
  const by = document.getElementById('sort').value;
  const list = els.filter(([n, el]) => (!layer || n.layer === layer) && (!q || el.dataset.text.includes(q)));
  if (by === 'sim') list.sort((a, b) => key(b[0].sim) - key(a[0].sim));
  if (by === 'simr') list.sort((a, b) => key(b[0].simr) - key(a[0].simr));
  cards.replaceChildren(...list.map(x => x[1]));
  document.getElementById('count').textContent = list.length + ' of ' + els.length + ' neurons';
}
for (const id of ['layer', 'search', 'sort']) document.getElementById(id).addEventListener('input', render);
if (D.neurons.some(n => n.maps)) {
  document.getElementById('mapsbox').hidden = false;
  document.getElementById('maps').addEventListener('input', e => {
    for (const [, el] of els) for (const img of el.querySelectorAll('img[data-map]'))
      img.src = e.target.checked ? img.dataset.map : img.dataset.plain;
  });
}
render();
</script></body></html>
"""
