#!/usr/bin/env bash
# The flagship recipe: ResNet50V2 at 224x224 on FER-2013, trained on a GPU machine that has JAX but no TensorFlow
# and takes only a small upload (64 MiB, code included), exported to the SavedModel back on a TensorFlow machine.
#
#   1. here (TensorFlow machine, project .venv):   scripts/gpu-train.sh bundle [DATA_DIR]     -> gpu-bundle/ (< 64 MiB)
#   2. on the GPU machine, inside gpu-bundle/:      bash run.sh                                -> runs/flagship/model.keras
#   3. bring runs/flagship/ back here, then:        scripts/gpu-train.sh export runs/flagship  -> models/fer-resnet50v2-224/1
#
# Step 2 needs python3 with jax (CUDA) and pip; it installs keras and tqdm from the carried wheels, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${2:-../shared/data/fer2013}

case "${1:-}" in
  bundle)
    rm -rf gpu-bundle && mkdir -p gpu-bundle/wheels
    # the original JPEGs back to back: 48 MiB for train+val, vs 71 MiB as deflated pixels
    $PY -m training pack --data "$DATA" --encoding jpeg --out gpu-bundle/fer2013.npz
    # keras itself and what a bare JAX machine may lack; --no-deps keeps jax/numpy from being carried twice
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 -d gpu-bundle/wheels \
      keras==3.15.1 tqdm namex optree rich markdown-it-py mdurl pygments h5py ml-dtypes absl-py
    cp -r training gpu-bundle/training
    find gpu-bundle/training -name __pycache__ -prune -exec rm -rf {} +
    cat > gpu-bundle/run.sh <<'RUN'
#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install --quiet --no-index --find-links wheels keras tqdm
export KERAS_BACKEND=jax
# mixed precision turns on by itself on a GPU (--mixed-precision auto); a large batch keeps the GPU busy
python3 -m training train --preset flagship --data fer2013.npz --run-dir runs/flagship \
  --batch-size 256 --head-learning-rate 2e-3 --learning-rate 2e-4 "$@"
python3 - <<'PY'
import json; r = json.load(open("runs/flagship/run.json")); print({k: r[k] for k in ("val_accuracy", "seconds", "hardware")})
PY
RUN
    chmod +x gpu-bundle/run.sh
    du -sh gpu-bundle
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
    sed -n '2,10p' "$0"; exit 2 ;;
esac
