#!/usr/bin/env bash
# A finished (or checkpointed) training run -> the next shipped version of a model, with its full report:
# evaluation on val with test-time flip and zoom and a temperature fitted on the run's held-out train images, Grad-CAM
# contact sheet, export (SavedModel + metadata + explain signature), and the side-by-side with the `fer` package.
#
#   scripts/ship-model.sh RUN_DIR NAME VERSION [DATA_DIR]
#   scripts/ship-model.sh ~/fer-runs/vgg_s_cos50 fer-cnn-48 4
#
# MODEL=checkpoint.keras takes the best checkpoint of a run still in progress instead of its model.keras.
# ZOOM (default 1.1: each crop's centre 44 of 48 pixels is a second view, chosen on the calibration hold-out of
# training images, see the README) sets --test-time-zoom; ZOOM=1 serves the crop and its mirror image only.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:?usage: scripts/ship-model.sh RUN_DIR NAME VERSION [DATA_DIR]}
NAME=${2:?name}
VERSION=${3:?version}
DATA=${4:-../shared/data/fer2013}
MODEL="$RUN_DIR/${MODEL:-model.keras}"
REPORT="$RUN_DIR/report-v$VERSION"
PY=.venv/bin/python
ZOOM=${ZOOM:-1.1}

# training curves: the run's history.csv, or an ensemble's history-member<N>.csv (members recovered from an export
# have none)
HISTORY=()
if compgen -G "$RUN_DIR/history*.csv" > /dev/null; then HISTORY=(--history "$RUN_DIR"); fi

$PY -m training evaluate --model "$MODEL" --config "$RUN_DIR/config.json" --data "$DATA" --out "$REPORT" \
  "${HISTORY[@]}" --test-time-flip --test-time-zoom "$ZOOM" --calibrate --explain 4
$PY -m training export --model "$MODEL" --config "$RUN_DIR/config.json" --report "$REPORT" --data "$DATA" \
  --name "$NAME" --version "$VERSION" --test-time-flip --test-time-zoom "$ZOOM"
OUT="models/$NAME/$VERSION"
# the run record travels with the model (export reads run.json beside the .keras file, if there is one)
$PY benchmarks/fer_package.py --model "$OUT" --out-dir "$OUT/report"
du -sh "$OUT"
