#!/usr/bin/env bash
# A plain install (runtime dependencies only, as `pip install clip-dissect` gives) runs demo, show, info and report.
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
echo "plain install check: demo, show, info and report ran with runtime dependencies only"
