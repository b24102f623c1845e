"""dissect demo."""

from __future__ import annotations

from typing import Annotated

import typer

from . import options as O
from . import output
from .app import command


@command("demo")
def demo(
    out: Annotated[str, typer.Option("-o", "--out", help="Folder for the probe images and every artifact.")] = "runs/demo",
    n_images: Annotated[int, typer.Option("--n-images", min=200, help="Probe images to generate.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated probe set.")] = 1234,
    show: Annotated[int, typer.Option("--show", min=0, help="Hidden-layer units to show.")] = 8,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 128,
):
    """Show the method working offline: tiny CLIP + classifier trained on a generated world with known answers."""
    from rich.table import Table

    from dissect.demo import SIMILARITIES, run_demo

    res = run_demo(out, n_images=n_images, seed=seed, device=device, batch_size=batch_size)
    con = output.console()
    specs = res.specs

    t = Table(title=f"Final layer {specs.final_layer} of {specs.model} (SoftWPMI, mixed set of "
                    f"{res.concept_counts['mixed']} concepts)", title_justify="left")
    for col in ("unit", "label", "similarity", "top alternatives", "true class", ""):
        t.add_column(col)
    for r in res.final_labels["mixed"]:
        ok = r["label"] == r["truth"]
        t.add_row(str(r["unit"]), r["label"], f"{r['similarity']:.3f}", ", ".join(r["candidates"][1:4]), r["truth"],
                  "[green]✓[/green]" if ok else "[red]✗[/red]")
    con.print(t)

    h = Table(title="Hidden layers (SoftWPMI, mixed set): label vs. the world word the unit prefers", title_justify="left")
    for col in ("layer", "unit", "label", "similarity", "preferred word (effect)", ""):
        h.add_column(col)
    strongest = sorted(res.hidden, key=lambda r: -r["effect"])
    for r in strongest[:show]:
        h.add_row(r["layer"], str(r["unit"]), r["label"], f"{r['similarity']:.3f}", f"{r['preferred']} ({r['effect']:.2f})",
                  "[green]✓[/green]" if r["label"] == r["preferred"] else "[red]✗[/red]")
    con.print(h)
    con.print(
        "Label = preferred world word: "
        + "; ".join(
            f"{k}: {v['selective']:.0%} of the {v['n_selective']} clearly selective units (effect ≥ 2), "
            f"{v['all']:.0%} of all {v['n_units']}"
            for k, v in res.hidden_agreement.items()
        )
    )

    m = Table(title="Table 3 in miniature: final-layer top-1 accuracy", title_justify="left")
    m.add_column("concept set")
    for sim in SIMILARITIES:
        m.add_column(sim, justify="right")
    for name, accs in res.accuracy.items():
        m.add_row(f"{name} ({res.concept_counts[name]})", *(f"{accs[s]:.0%}" for s in SIMILARITIES))
    con.print(m)
    if res.planted:
        pt = Table(title=f"Planted units ({res.planted[0]['units']}: known weighted sums of world words): recovered "
                         "(all words named, at most 2 others) and mean held-out correlation", title_justify="left")
        for col in ("method", "label mode (annotations)", "CLIP mode (tiny CLIP)"):
            pt.add_column(col)
        cell = {(r["method"].split(" (")[0], r["mode"]): r for r in res.planted}
        for method in dict.fromkeys(r["method"].split(" (")[0] for r in res.planted):
            cells = []
            for mode in ("label", "clip"):
                r = cell.get((method, mode))
                cells.append("-" if r is None else f"{r['recovered']}/{r['units']}, r = "
                             + ("n/a" if r["mean_correlation"] is None else f"{r['mean_correlation']:.3f}")
                             + ("" if r["held_out"] else "*"))
            pt.add_row(method, *cells)
        con.print(pt)
        con.print("* scored on the images it was made on")
    if res.composition:
        ct = Table(title="Planted compositions (100 units of two world words, 18 of one): single label, compose "
                         f"(--select {res.composition[0]['select']}) and linear explanation", title_justify="left")
        for col in ("method", "label names one of the two words", "one-word units labelled right",
                    "both words among the top-10 candidates", "two-word units: both words", "one-word units kept"):
            ct.add_column(col, justify="left" if col == "method" else "right")
        pct = lambda v: "-" if v != v else f"{v:.0%}"  # noqa: E731  (NaN: not applicable)
        for r in res.composition:
            ct.add_row(r["method"], pct(r["single_two"]), pct(r["single_one"]), pct(r["both_in_candidates"]),
                       pct(r["compose_two"]), pct(r["compose_one"]))
        con.print(ct)
    if res.segmentation:
        _print_segmentation(con, res.segmentation)
    if res.checkpoints:
        _print_checkpoints(con, res.checkpoints)
    if res.ablation:
        _print_ablation(con, res.ablation)
    if res.worlds:
        _print_worlds(con, res.worlds)
    con.print(f"{res.n_images} probe images; {res.seconds:.0f} s in all; artifacts in {res.out}/ (demo.json, labels-*.parquet); "
              f"browse them with `dissect report {res.out}` or `dissect show {res.out}`", soft_wrap=True, markup=False,
              highlight=False)
    # copy-paste flags: never wrapped inside a path, whatever the terminal's width (or none)
    con.print(f"The demo models are ordinary specs: --clip {specs.clip} {specs.command_line()}", soft_wrap=True,
              markup=False, highlight=False)



def _print_segmentation(con, rows) -> None:
    """Hidden units labelled with a shape or a texture: does NetDissect's best mask concept say the same?"""
    from rich.table import Table

    t = Table(title="Hidden labels against the world's masks (evaluate segment): the label is the unit's best-IoU "
                    "mask concept", title_justify="left", min_width=100)
    for col in ("layer", "mask kind", "labels agree", "mean IoU", "Moran's I"):
        t.add_column(col, justify="left" if col in ("layer", "mask kind") else "right")
    for r in rows:
        t.add_row(r["layer"], r["kind"], f"{r['agree']}/{r['units']}" + (f" ({r['agree'] / r['units']:.0%})" if r["units"] else ""),
                  f"{r['mean_iou']:.3f}", f"{r['morans_i']:.2f}")
    con.print(t)
    con.print("shape masks cover the object, texture masks the background; per-unit rows in segment.parquet")


def _print_checkpoints(con, cp) -> None:
    """The shipped classifier against the one retrained without a shape (dissect compare)."""
    from rich.table import Table

    t = Table(title=f"Retrained without {cp['without']}s (dissect compare): units of {cp['layer']} per shape, shipped "
                    "-> retrained", title_justify="left", min_width=100)
    for col in ("shape", "by label", "by ground truth (clearly prefer it)"):
        t.add_column(col, justify="left" if col == "shape" else "right")
    for r in cp["shapes"]:
        name = f"[bold]{r['shape']}[/bold]" if r["shape"] == cp["without"] else r["shape"]
        t.add_row(name, f"{r['labels_a']} -> {r['labels_b']}", f"{r['truth_a']} -> {r['truth_b']}")
    con.print(t)
    pairs = "; ".join(f"{p['layer_a']} CKA {p['cka']:.2f}, {p['matched']} matched ({p['matched_share']:.0%})"
                      for p in cp["pairs"])
    a, b = cp["final"][cp["without"]]
    con.print(f"{pairs}; the final layer's {cp['without']} label {a} -> {b}; other shapes kept: "
              f"{cp['others_kept']} of {len(cp['shapes']) - 1}. `dissect report --compare` shows the units side by side.")


def _print_ablation(con, rows) -> None:
    """Mean ablation score of each method's labels on layer4, against the same labels shuffled across units."""
    from rich.table import Table

    t = Table(title="Does the network use what the labels say? (evaluate ablate on layer4, held-out images): the share "
                    "of a unit's mean-ablation damage its label undoes", title_justify="left", min_width=100)
    for col in ("units", "method", "mean ablation", "labels shuffled across units", "units whose own label scores higher"):
        t.add_column(col, justify="left" if col in ("units", "method") else "right")
    fmt = lambda v, p=False: "-" if v is None else (f"{v:.0%}" if p else f"{v:.3f}")  # noqa: E731
    for r in rows:
        t.add_row(f"{r['units']} ({r['n_units']})", r["method"], fmt(r["mean"]), fmt(r["mean_shuffled"]),
                  fmt(r["own_higher"], True))
    con.print(t)


def _print_worlds(con, worlds) -> None:
    """The same measurements on the demo world and on the scenes world, side by side."""
    from rich.table import Table

    from dissect.demo.two_worlds import FOLLOWS, RARE, SEPARATED_AUC

    names = {"A": "A: demo (one object, words on 10-50%)", "B": "B: scenes (several objects, 0.05-33%)"}
    t = Table(title=f"Two worlds, {next(iter(worlds.values()))['calibration']} presence (the default): "
                    "does CLIP presence hold on a world it was not built on?", title_justify="left")
    t.add_column("measurement")
    for key in worlds:
        t.add_column(names.get(key, key), justify="right")

    def presence(w):
        p = w["presence"]
        rare = p["rare"]
        tail = (f"; rare (< {RARE:.0%}) {rare['share_following']:.0%} of {rare['concepts']}"
                if rare["concepts"] else "; none rare")
        return f"{p['all']['share_following']:.0%} of {p['all']['concepts']}, median r {p['all']['median_r']:.3f}{tail}"

    def simulation(w):
        s = w["simulation"]
        return f"{s['clip']:.3f} vs {s['annotations']:.3f} (gap {s['gap']:.3f})"

    def explained(w):
        e = w["explain"]
        return " / ".join(f"{e[m]['recovered']}/{e[m]['units']}" for m in ("clip", "label") if m in e)

    rows = [(f"presence follows the truth (r ≥ {FOLLOWS}), concepts CLIP separates (AUC ≥ {SEPARATED_AUC})", presence),
            ("final-layer simulation r, CLIP presence vs annotations", simulation),
            ("planted units recovered by explain, CLIP / label mode", explained)]
    for title, fn in rows:
        t.add_row(title, *(fn(w) for w in worlds.values()))
    con.print(t)
