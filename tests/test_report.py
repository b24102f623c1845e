"""dissect report, rendered in real headless Chromium (Chrome DevTools Protocol over a websocket).

.ci/run installs Debian's `chromium` when it is missing. The screenshot is kept in
$DISSECT_ARTIFACTS (default: the test's tmp folder) for review.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_cli import assert_one_line_error, invoke

from dissect.demo import demo_specs

MODEL = ["--model", demo_specs().model, "--weights", demo_specs().weights, "--model-arg", "num_classes=10"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate JavaScript, take a screenshot."""

    def __init__(self, tmp: Path):
        import websocket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", f"--remote-debugging-port={port}",
             "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2).read())
                page = next(t for t in targets if t.get("type") == "page")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result", {})

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return res["result"].get("value")

    def goto(self, url: str):
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.time() + 30
        while self.js("document.readyState") != "complete" and time.time() < deadline:
            time.sleep(0.1)

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def report(demo_run, tmp_path_factory):
    out, _ = demo_run
    d = tmp_path_factory.mktemp("report")
    invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "-o", d / "site",
           "--layers", "fc,layer4", "--top-images", 6, "--percentiles", "--cutoff", 0.16, *MODEL)
    return out, d / "site"


def _page_data(page: Path) -> dict:
    text = page.read_text()
    start = text.index('<script id="data" type="application/json">') + len('<script id="data" type="application/json">')
    return json.loads(text[start : text.index("</script>", start)].replace("<\\/", "</"))


def test_activation_maps_are_overlaid_for_conv_layers_only(report):
    _, site = report
    data = _page_data(site / "index.html")
    conv = [n for n in data["neurons"] if n["layer"] == "layer4"]
    fc = [n for n in data["neurons"] if n["layer"] == "fc"]
    assert conv and all(len(n["maps"]) == len(n["imgs"]) == 6 for n in conv)
    assert all("maps" not in n for n in fc)  # a 2-D layer has no spatial map
    assert all((site / m).exists() for n in conv for m in n["maps"])
    assert len({m for n in conv for m in n["maps"]}) == sum(len(n["maps"]) for n in conv)  # one per neuron and image


def test_report_files_and_thumbnail_cache(report, tmp_path):
    out, site = report
    assert (site / "index.html").exists()
    data = _page_data(site / "index.html")
    plain = sorted({site / v for v in data["src"].values()})
    assert plain and all(t.stat().st_size < 20_000 for t in plain)  # small thumbnails, not full images
    before = {t.name: t.stat().st_mtime_ns for t in plain}
    invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "-o", site,
           "--layers", "fc,layer4", "--top-images", 6, "--percentiles", "--cutoff", 0.16, *MODEL)
    assert {t.name: t.stat().st_mtime_ns for t in plain} == before  # made once, reused
    invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "-o",
           tmp_path / "one.html", "--layers", "fc", "--single-file")
    page = (tmp_path / "one.html").read_text()
    assert "data:image/jpeg;base64," in page and "thumbs/" not in page


def test_report_user_errors(demo_run, tmp_path):
    out, _ = demo_run
    assert_one_line_error(invoke("report", tmp_path, ok=False), "no labels.parquet")
    r = invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", out / "activations.h5", "-o", tmp_path / "r",
               "--layers", "nope", ok=False)
    assert_one_line_error(r, "nope")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    out, site = report
    labels = pq.read_table(out / "labels-mixed-softwpmi.parquet").to_pandas()
    n_fc, n_l4 = int((labels.layer == "fc").sum()), int((labels.layer == "layer4").sum())
    browser = Browser(tmp_path)
    try:
        browser.goto((site / "index.html").as_uri())
        assert browser.js("document.querySelectorAll('.card').length") == n_fc + n_l4
        # Every image of every card loaded (decoded, natural width > 0).
        browser.js("Promise.all([...document.images].map(i => i.complete ? 1 : new Promise(r => { i.onload = i.onerror = r; })))")
        bad = browser.js("[...document.querySelectorAll('.card img')].filter(i => !(i.naturalWidth > 0)).length")
        total = browser.js("document.querySelectorAll('.card img').length")
        assert total >= (n_fc + n_l4) * 6 and bad == 0
        # The layer filter and the search change what is visible.
        browser.js("{ const s = document.getElementById('layer'); s.value = 'fc'; s.dispatchEvent(new Event('input')); }")
        assert browser.js("document.querySelectorAll('.card').length") == n_fc
        assert browser.js("[...document.querySelectorAll('.card')].every(c => c.dataset.layer === 'fc')")
        browser.js("{ const q = document.getElementById('search'); q.value = 'star'; q.dispatchEvent(new Event('input')); }")
        want = int(((labels.layer == "fc") & (labels.label.str.contains("star") | labels.candidates.map(
            lambda c: any("star" in x for x in c)))).sum())
        assert 0 < browser.js("document.querySelectorAll('.card').length") == want < n_fc
        browser.js("{ const q = document.getElementById('search'); q.value = ''; q.dispatchEvent(new Event('input'));"
                   " const s = document.getElementById('layer'); s.value = ''; s.dispatchEvent(new Event('input')); }")
        assert browser.js("document.querySelectorAll('.card').length") == n_fc + n_l4
        # The activation-map toggle swaps the conv layers' thumbnails for their overlays, and back.
        assert browser.js("document.getElementById('mapsbox').hidden") is False
        browser.js("{ const c = document.getElementById('maps'); c.checked = true; c.dispatchEvent(new Event('input')); }")
        assert browser.js("[...document.querySelectorAll('img[data-map]')].every(i => i.src.endsWith(i.dataset.map))")
        assert browser.js("document.querySelectorAll('img[data-map]').length") == n_l4 * 6
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        import base64

        keep = Path(os.environ.get("DISSECT_ARTIFACTS", tmp_path))
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "report-screenshot.png").write_bytes(base64.b64decode(shot))
        assert (keep / "report-screenshot.png").stat().st_size > 10_000
    finally:
        browser.close()


HOSTILE = ["<img src=x onerror=alert(1)>", "<script>window.pwned='script'</script>", "{{DATA}}", "<!--<script>",
           "</script><script>window.pwned='close'</script>", None, "\u202eevil\u202c", "\x1b]0;title\x07\x1b[2J",
           "\"><svg onload=\"window.pwned='svg'\">", "{{TITLE}} \u2028 line"]


@pytest.fixture(scope="module")
def hostile_report(demo_run, tmp_path_factory):
    """A labels file of script tags, placeholders, comment openers, NaN, null, bidi overrides and terminal escapes,
    with '{{DATA}}' in its file name and in the model name of its metadata."""
    from dissect import artifacts as A

    out, _ = demo_run
    d = tmp_path_factory.mktemp("hostile")
    table = pq.read_table(out / "labels-mixed-softwpmi.parquet")
    meta = json.loads(table.schema.metadata[b"dissect"])
    meta["model"] = "{{DATA}}<script>window.pwned='meta'</script>"
    rows = {c: [] for c in A.LABEL_COLUMNS}
    for r in table.to_pylist():
        if r["layer"] != "fc":
            continue
        bad = HOSTILE[r["unit"]]
        rows["layer"].append("fc")
        rows["unit"].append(r["unit"])
        rows["label"].append(bad)
        rows["similarity"].append(float("nan") if r["unit"] == 1 else float("inf") if r["unit"] == 2 else r["similarity"])
        rows["candidates"].append([bad or "x", "{{SUMMARY}}", "<b>bold</b>"])
        rows["candidate_similarities"].append([float("nan"), float("-inf"), 0.5])
    labels = d / "{{DATA}} labels.parquet"
    A.write_labels(labels, rows, {k: v for k, v in meta.items() if k not in ("format", "version")})
    invoke("report", "--labels", labels, "-a", out / "activations.h5", "-o", d / "site", "--layers", "fc",
           "--top-images", 3, "--cutoff", 0.16)
    invoke("report", "--labels", labels, "-a", out / "activations.h5", "-o", d / "one.html", "--layers", "fc",
           "--top-images", 3, "--single-file")
    return labels, d


def test_hostile_labels_are_data_in_the_page(hostile_report):
    labels, d = hostile_report
    for page in (d / "site" / "index.html", d / "one.html"):
        text = page.read_text()
        data = _page_data(page)
        assert [n["label"] for n in data["neurons"]] == HOSTILE  # every label, unchanged, as data
        assert data["neurons"][1]["sim"] == "NaN" and data["neurons"][2]["sim"] == "Infinity"
        assert text.count("<script") == 2  # the data element and our code: nothing injected
        start = text.index('<script id="data" type="application/json">')
        payload = text[start:text.index("</script>", start)]
        assert "<" not in payload[len('<script id="data" type="application/json">'):] and "<!--" not in payload


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_hostile_labels_run_no_script_and_every_card_is_shown(hostile_report, tmp_path):
    _, d = hostile_report
    browser = Browser(tmp_path)
    try:
        browser.call("Page.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument",
                     source="window.alert = () => { window.pwned = 'alert'; }; window.onerror = (m) => { window.jsError = String(m); };")
        for page in (d / "site" / "index.html", d / "one.html"):
            browser.goto(page.as_uri())
            time.sleep(0.3)  # let onerror handlers of broken images fire
            assert browser.js("window.pwned === undefined"), browser.js("window.pwned")
            assert browser.js("window.jsError === undefined"), browser.js("window.jsError")
            assert browser.js("document.querySelectorAll('.card').length") == len(HOSTILE)
            assert browser.js("document.scripts.length") == 2  # the data and our code, nothing injected
            texts = browser.js("[...document.querySelectorAll('.card h2')].map(h => h.textContent)")
            assert any("<img src=x onerror=alert(1)>" in t for t in texts) and any("{{DATA}}" in t for t in texts)
            assert any("\\u202e" in t for t in texts) and any("\\u001b" in t for t in texts)  # shown, not obeyed
            assert any("NaN" in t for t in browser.js("[...document.querySelectorAll('.card .meta')].map(m => m.textContent)"))
            assert "{{DATA}}" in browser.js("document.querySelector('header .sub').textContent")
    finally:
        browser.close()


def test_stored_maps_are_overlaid_without_the_model_and_match_recomputed_ones(demo_run, tmp_path):
    """Issue #26: a file recorded with --maps gives every card its maps with no model reload, the maps the model
    would give again (float16 apart)."""
    from dissect import artifacts as A
    from dissect import report as R
    from dissect.models import TargetSpec, PreprocessOverrides
    from dissect.probe import open_probe

    out, _ = demo_run
    spec = demo_specs()
    acts = tmp_path / "maps.h5"
    invoke("record", out / "probe", *spec.command_line().split(), "--layers", "layer4,fc", "--maps", "6", "-o", acts)
    site = tmp_path / "site"
    invoke("report", "--labels", out / "labels-mixed-softwpmi.parquet", "-a", acts, "-o", site, "--layers", "fc,layer4",
           "--top-images", 6)
    data = _page_data(site / "index.html")
    conv = [n for n in data["neurons"] if n["layer"] == "layer4"]
    assert conv and all(len(n["maps"]) == 6 and all(m.startswith("thumbs/") for m in n["maps"]) for n in conv)
    assert all("maps" not in n for n in data["neurons"] if n["layer"] == "fc")
    header = A.read_activations(acts, data=False)
    neurons = [{"layer": "layer4", "unit": n["unit"], "imgs": n["imgs"]} for n in conv[:5]]
    stored = R._stored_maps(acts, header.ids, neurons, ["layer4"])
    probe = open_probe([str(out / "probe")])
    pos = {k: i for i, k in enumerate(probe.ids)}
    target = TargetSpec(spec.model, spec.weights, spec.model_args,
                        PreprocessOverrides(spec.input_size, spec.crop_pct, spec.mean, spec.std, spec.interpolation))
    again = R._recomputed_maps(target, "cpu", probe, pos, neurons, header, ["layer4"])
    assert set(stored) == set(again) and len(stored) == 30
    for key in stored:
        np.testing.assert_allclose(stored[key], again[key], rtol=2e-3, atol=2e-3)
