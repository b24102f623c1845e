#!/usr/bin/env bash
# A plain install (runtime dependencies only, as `pip install clip-dissect` gives) runs demo, show, info and report,
# reads another method's label file, and says which extra hf: needs.
# Usage: bash scripts/check_plain_install.sh [PYTHON]   (run from the repository root; makes .venv-plain)
set -euo pipefail
PYTHON=${1:-python3}
VENV=.venv-plain
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q .
if "$VENV/bin/python" -c "import pandas" 2>/dev/null; then
    echo "plain install check: pandas is installed, so this is not a plain install" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/dissect" demo -o "$work/demo" --n-images 300 --device cpu
labels="$work/demo/labels-mixed-softwpmi.parquet"
"$VENV/bin/dissect" show "$labels" --limit 5
"$VENV/bin/dissect" show "$labels" --json --limit 2 > /dev/null
"$VENV/bin/dissect" info "$work/demo/activations.h5"
"$VENV/bin/dissect" info "$labels"
"$VENV/bin/dissect" report --labels "$labels" --activations "$work/demo/activations.h5" -o "$work/report" --top-images 2
test -s "$work/report/index.html"
# Another method's label file (Describe-and-Dissect's layout: the layer in the file name) through simulate and report.
"$VENV/bin/python" - "$labels" "$work/dnd_layer4.csv" <<'PY'
import csv, sys
import pyarrow.parquet as pq
rows = [r for r in pq.read_table(sys.argv[1]).to_pylist() if r["layer"] == "layer4"][:8]
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Neuron ID", "Label 1", "Label 2", "Label 3"])
    w.writerows([r["unit"], r["label"], " ", " "] for r in rows)
PY
"$VENV/bin/dissect" evaluate simulate "$work/dnd_layer4.csv" --activations "$work/demo/activations.h5" \
    --images "$work/demo/images.h5" --text "$work/demo/text-mixed.h5" -o "$work/simulate.parquet"
test -s "$work/simulate.parquet"
"$VENV/bin/dissect" report --labels "$work/dnd_layer4.csv" --activations "$work/demo/activations.h5" \
    -o "$work/report-dnd" --top-images 2
test -s "$work/report-dnd/index.html"
# --model hf:... without the hf extra (transformers, which no runtime dependency brings): one line naming it.
if ! "$VENV/bin/python" -c "import transformers" 2>/dev/null; then
    if "$VENV/bin/dissect" layers hf:org/model > "$work/hf.out" 2>&1; then
        echo "plain install check: hf: ran without transformers" >&2; exit 1
    fi
    grep -q "clip-dissect\[hf\]" "$work/hf.out" && ! grep -q Traceback "$work/hf.out"
fi
echo "plain install check: demo, show, info, report, and another method's labels through simulate and report ran" \
     "with runtime dependencies only; hf: names its extra"
