#!/usr/bin/env bash
# Every command of dissect over the demo world, into FOLDER, then a digest of every artifact it holds
# (scripts/artifact_digest.py: one hash per array, column and metadata field; creation times left out).
# Run it before and after a change that must not change results, and diff the two digests:
#
#   bash scripts/demo_world_digest.sh /tmp/before > before.txt
#   ... change the code ...
#   bash scripts/demo_world_digest.sh /tmp/after > after.txt
#   diff before.txt after.txt      # nothing: every array, label, score and fingerprint is the same
#
# About 2 minutes on two CPU cores. Caches go to a fresh folder so that both runs embed the same texts.
set -euo pipefail
OUT=${1:?usage: demo_world_digest.sh FOLDER}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# the checkout's .venv when there is one (make install), else the python on PATH; PYTHON=... chooses another
if [ -x "$HERE/.venv/bin/python" ]; then PY=${PYTHON:-$HERE/.venv/bin/python}; else PY=${PYTHON:-python}; fi
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export DISSECT_CACHE="$OUT.cache"
rm -rf "$DISSECT_CACHE"
d() { "$PY" -m dissect.cli.main -q "$@" >>"$OUT.log" 2>&1; }

d demo -o "$OUT"
ASSETS="$HERE/dissect/demo/assets"
CLIP="$ASSETS/tiny_clip/open_clip_config.json:$ASSETS/tiny_clip/open_clip_model.safetensors"
MODEL=(--model timm:test_resnet --weights "$ASSETS/classifier/model.safetensors" --model-arg num_classes=10
       --input-size 64 --crop-pct 1.0 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --interpolation bilinear)
X="$OUT/extra"
mkdir -p "$X"

# evaluation of labels
d evaluate simulate "$OUT/labels-planted.parquet" "$OUT/composed-planted.parquet" "$OUT/explanations-planted-clip.parquet" \
    -a "$OUT/planted.h5" --images "$OUT/images.h5" -o "$X/sim-clip.parquet"
d evaluate simulate "$OUT/labels-planted.parquet" "$OUT/explanations-planted-label.parquet" -a "$OUT/planted.h5" \
    --annotations "$OUT/annotations.csv" -o "$X/sim-annotations.parquet"
d evaluate simulate "$OUT/composed-composition-wpmi.parquet" -a "$OUT/composition.h5" --images "$OUT/images.h5" \
    --composed and -o "$X/sim-and.parquet"
d evaluate sanity --activations "$OUT/activations.h5" --annotations "$OUT/annotations.csv" --n-inputs 5000 -R 5 \
    -o "$X/sanity.parquet"
printf '%s\n' circle square triangle star heart cross ring moon diamond arrow > "$X/truth.txt"
d evaluate "$OUT/labels-mixed-softwpmi.parquet" "$OUT/labels-mixed-cos.parquet" --truth "$X/truth.txt" --layer fc \
    --sentence-model none --clip "$CLIP" --cutoff 0.16 -o "$X/metrics.parquet"
d evaluate stability -i "$OUT/images.h5" -a "$OUT/activations.h5" -t "$OUT/text-mixed.h5" --layers layer4 -B 3 \
    -o "$X/stability.parquet"
d evaluate pvalues -i "$OUT/images.h5" -a "$OUT/activations.h5" -t "$OUT/text-mixed.h5" --layers fc --permutations 5 \
    -o "$X/pvalues.parquet"
d evaluate weights --labels "$OUT/labels-mixed-softwpmi.parquet" --layer layer4 "${MODEL[@]:0:6}" --classes "$X/truth.txt" \
    --sentence-model none -o "$X/weights.json"

# methods beyond the single label
d explain -a "$OUT/planted.h5" --annotations "$OUT/annotations.csv" -o "$X/explain-label.parquet"
d explain -a "$OUT/activations.h5" -i "$OUT/images.h5" -t "$OUT/text-mixed.h5" --layers fc -o "$X/explain-clip.parquet"
d compose -i "$OUT/images.h5" -a "$OUT/activations.h5" -t "$OUT/text-mixed.h5" --layers fc --select veto \
    -o "$X/composed-veto.parquet"
d compose -i "$OUT/images.h5" -a "$OUT/activations.h5" -t "$OUT/text-mixed.h5" --layers fc --sim wpmi \
    -o "$X/composed-simulate.parquet"

# directions: a decomposition recorded as units, labelled
d decompose "$OUT/activations.h5" --layer layer4 --method pca --k 8 -o "$X/pca.safetensors"
d decompose "$OUT/activations.h5" --layer layer4 --method nmf --k 6 -o "$X/nmf.safetensors"
d record "$OUT/probe" "${MODEL[@]}" --layers layer4 --directions "layer4@pca=$X/pca.safetensors" -o "$X/directions.h5"
d label -i "$OUT/images.h5" -a "$X/directions.h5" -t "$OUT/text-mixed.h5" --sim wpmi -o "$X/labels-directions.parquet"
for sim in softwpmi rank-reorder cos-cubed; do
    d label -i "$OUT/images.h5" -a "$OUT/activations.h5" -t "$OUT/text-mixed.h5" --layers layer3 --sim $sim \
        --holdout 0.2 -o "$X/labels-layer3-$sim.parquet"
done

# the whole pipeline in a run folder, and what reads it
d run "$OUT/probe" --clip "$CLIP" "${MODEL[@]}" --layers layer4,fc --concepts "$OUT/concepts-mixed.txt" -o "$X/run"
d show "$X/run/labels.parquet" --json > "$X/show.json"

"$PY" "$HERE/scripts/artifact_digest.py" "$OUT"
rm -rf "$DISSECT_CACHE"
