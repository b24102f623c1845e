"""The README's sanity-test tables from sanity.parquet files.

    dissect evaluate sanity -o s100k.parquet                                        # the default: 100,000 inputs, 100 draws
    dissect evaluate sanity --n-inputs 500000 --repetitions 1000 -o s500k.parquet  # the framework's setting
    dissect evaluate sanity --conventions neuron-eval -o s100k-ne.parquet          # the reference code's conventions
    dissect evaluate sanity --activations runs/demo/activations.h5 --annotations runs/demo/annotations.csv \\
        --no-synthetic -o real.parquet
    python scripts/sanity_table.py s100k.parquet s500k.parquet s100k-ne.parquet    # the README's table
    python scripts/sanity_table.py real.parquet                                    # the guide's

One markdown row per scorer (metric or similarity function), one column per setting found in
the files: missing labels, extra labels, each "mean / min" over the cases (the synthetic
frequencies; the units of a real layer, whose min is the lowest unit's rate), ✗ where the
verdict fails (synthetic: min < 90%; real units: mean < 90%).
"""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq


def _cell(r: dict) -> str:
    def one(test: str) -> str:
        mark = "" if r[f"{test}_pass"] else " ✗"
        return f"{r[f'{test}_rate_mean']:.0%} / {r[f'{test}_rate_min']:.0%}{mark}"

    lam = f", λ {r['lam']:g}" if r.get("lam") is not None else ""
    alpha = f" (α {r['alpha']:g}{lam})" \
        if (r.get("alpha_choice") or "").startswith("validation") else ""
    return f"{one('missing')} · {one('extra')}{alpha}"


def main(paths: list[str]) -> None:
    rows = []
    for p in paths:
        conventions = json.loads(pq.read_metadata(p).metadata[b"dissect"]).get("conventions", "dissect")
        for r in pq.read_table(p).to_pylist():
            if conventions != "dissect":
                r["setting"] += f", --conventions {conventions}"
            rows.append(r)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    scorers = list(dict.fromkeys((r["scorer"], r["kind"]) for r in rows))
    cell = {(r["setting"], r["scorer"], r["kind"]): r for r in rows}
    print("| scorer | " + " | ".join(settings) + " |")
    print("|---|" + "---|" * len(settings))
    for name, kind in scorers:
        cells = [_cell(cell[(s, name, kind)]) if (s, name, kind) in cell else "—" for s in settings]
        print(f"| {name} ({kind}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
