#!/usr/bin/env bash
# GPU runs: the flagship (ResNet50V2 at 224x224) and CPU-default candidates (48x48 nets) trained on a lent GPU machine
# that has JAX but no TensorFlow, takes a small upload (64 MiB, code included) and gives back at most 8 files of
# 16 MiB; the runs come back as compact archives (float16 kernels) and are exported here, on TensorFlow.
#
#   1. here (TensorFlow machine, project .venv):  scripts/gpu-train.sh bundle [DATA_DIR]      -> gpu-bundle/ (< 64 MiB)
#   2. on the GPU machine:                        bash gpu-bundle/run.sh OUT_DIR [SECONDS]    -> OUT_DIR/*.npz.NNN
#   3. back here, with OUT_DIR's files:           scripts/gpu-train.sh expand OUT_DIR         -> ~/fer-runs/gpu-*/
#   4. the flagship into the versioned layout:    scripts/gpu-train.sh export ~/fer-runs/gpu-flagship
#
# Step 2 trains for SECONDS of wall time (finishing and archiving included): 48x48 candidates in parallel processes
# and the flagship from random weights (a GPU machine here cannot download ImageNet weights either) for as many
# epochs as fit, counted from its images/s measured first on that GPU; scripts/gpu_runs.sh says more. It needs
# python3 with jax (CUDA) and pip; it installs keras from the carried wheels, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${2:-../shared/data/fer2013}

case "${1:-}" in
  bundle)
    rm -rf gpu-bundle && mkdir -p gpu-bundle/wheels
    # the original JPEGs back to back: 48 MiB for train+val, vs 71 MiB as deflated pixels
    $PY -m training pack --data "$DATA" --encoding jpeg --out gpu-bundle/fer2013.npz
    # keras and what the GPU machine's image lacks of its needs (its python3 is 3.12 with numpy, h5py, ml-dtypes,
    # rich, absl-py, tqdm); --no-deps keeps jax and numpy from being carried twice
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d gpu-bundle/wheels keras==3.15.1 namex optree
    cp -r training gpu-bundle/training
    find gpu-bundle/training -name __pycache__ -prune -exec rm -rf {} +
    cp scripts/gpu_runs.sh gpu-bundle/run.sh
    chmod +x gpu-bundle/run.sh
    du -sh gpu-bundle
    ;;
  expand)
    OUT_DIR=${2:?usage: scripts/gpu-train.sh expand OUT_DIR [RUNS_ROOT]}
    ROOT=${3:-$HOME/fer-runs}
    shopt -s nullglob
    archives=("$OUT_DIR"/*.npz.000)
    [ ${#archives[@]} -gt 0 ] || { echo "no archives (*.npz.000) in $OUT_DIR" >&2; exit 1; }
    for first in "${archives[@]}"; do
      name=$(basename "$first" .npz.000)
      $PY -m training expand "${first%.000}" --run-dir "$ROOT/gpu-$name"
    done
    ;;
  export)
    RUN_DIR=${2:?usage: scripts/gpu-train.sh export RUN_DIR [DATA_DIR]}
    DATA=${3:-../shared/data/fer2013}
    # TEST_TIME_FLIP=1: export the mirror-averaged graph (more accurate, twice the model's CPU per crop)
    FLIP=()
    [ "${TEST_TIME_FLIP:-0}" = 1 ] && FLIP=(--test-time-flip)
    $PY -m training evaluate --model "$RUN_DIR/model.keras" --data "$DATA" --out "$RUN_DIR/report" \
      --history "$RUN_DIR/history.csv" "${FLIP[@]}"
    $PY -m training export --model "$RUN_DIR/model.keras" --report "$RUN_DIR/report" --data "$DATA" \
      --name fer-resnet50v2-224 --version 1 "${FLIP[@]}"
    ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
