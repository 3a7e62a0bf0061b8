#!/usr/bin/env bash
# Runs on the lent GPU machine, inside gpu-bundle/ (scripts/gpu-train.sh bundle copies it there as run.sh):
#
#   bash run.sh OUT_DIR [SECONDS]
#
# Trains for SECONDS of wall time in all (default 480), then writes each finished run as a compact archive
# (python -m training compact) into OUT_DIR, with logs.tar.gz (logs, histories, the flagship's throughput probe):
# * three 48x48 candidates for the CPU default, each in its own process (their numpy augmentation is what bounds
#   them, one CPU core each), with as many epochs as the measured augmentation rate lets finish in time;
# * the flagship ResNet50V2 at 224 from random weights: its images/s are measured first (one compiled training
#   step, then timed steps), and its epochs are what fits in the time left.
# A run cut off by the time limit is finished from its best checkpoint (python -m training finalize).
# Augmentation runs on threads (--augment-workers): one thread feeds ~2,800 images/s there, the GPU trains the
# flagship at ~4,800. Settings (environment): CANDIDATES=0 skips the 48x48 candidates; FLAGSHIP_EPOCHS=N skips the
# probe and trains N epochs; STOP_AFTER=K stops the flagship after K epochs, resumable (a throughput measurement);
# SMOKE=1: a few images per class and one epoch each (the flagship too, unless FLAGSHIP_EPOCHS=0), no probe, to
# check the whole script on any machine (KERAS_BACKEND=tensorflow works too; tests/test_training.py runs it so).
set -uo pipefail
cd "$(dirname "$0")"
OUT_DIR=$(realpath -m "${1:?usage: run.sh OUT_DIR [SECONDS]}")
BUDGET=${2:-480}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
DATA=fer2013.npz
mkdir -p "$OUT_DIR" runs

if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/fer-site wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/fer-site:$PWD
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee runs/gpu.txt
python3 -c "import importlib, keras, numpy; b = keras.backend.backend(); m = importlib.import_module(b); \
print(b, m.__version__, getattr(m, 'devices', list)(), 'keras', keras.__version__, 'numpy', numpy.__version__)" \
  2>&1 | tee -a runs/gpu.txt || exit 1

EXTRA=()
FLAGSHIP_BATCH=256
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA=(--limit-per-class 12)
  FLAGSHIP_BATCH=8
fi
left() { echo $((DEADLINE - $(date +%s))); }

# Epochs a 48x48 candidate can finish: its epoch is bound by the numpy augmentation (one thread per process).
SMALL_EPOCHS=$(python3 - "$(left)" <<'PY'
import sys, time
import numpy as np
from training.batches import Augmentation, augment
left = float(sys.argv[1])
x = np.random.default_rng(0).integers(0, 256, (128, 48, 48, 1)).astype(np.uint8)
aug = Augmentation.scaled(1.0, 0.5)
t = time.perf_counter()
for i in range(10):
    augment(x, np.random.default_rng(i), aug)
rate = 1280 / (time.perf_counter() - t)
epoch_s = 27272 / (0.8 * 2 * rate) + 2.0  # 3 threads: twice one (conservatively), plus validation, checkpoints
print(max(1, min(100, int((left - 90) / epoch_s))))
print(f"augmentation {rate:.0f} images/s on one core -> {epoch_s:.1f} s per epoch", file=sys.stderr)
PY
)
[ "${SMOKE:-0}" = 1 ] && SMALL_EPOCHS=1
echo "48x48 candidates: $SMALL_EPOCHS epochs"

train_run() {  # NAME ARGS...: train until the deadline (less a margin to finish), finish, compact
  local name=$1
  shift
  timeout --signal=TERM $(($(left) - 45)) python3 -m training train --data "$DATA" --run-dir "runs/$name" \
    --holdout-seed 1337 --mixed-precision auto --early-stopping-patience 0 "$@" "${EXTRA[@]}" >"runs/$name.log" 2>&1
  local rc=$?
  echo "$name: train exited $rc" >>"runs/$name.log"
  if [ "$rc" = 124 ] && [ -f "runs/$name/checkpoint.keras" ]; then  # cut off by the time limit, even while finishing
    python3 -m training finalize --run-dir "runs/$name" --data "$DATA" >>"runs/$name.log" 2>&1
  fi
  [ -f "runs/$name/model.keras" ] && python3 -m training compact "runs/$name" --out "$OUT_DIR/$name.npz" --part-mib 15.9 >>"runs/$name.log" 2>&1
  tail -n 2 "runs/$name.log"
}

if [ "${CANDIDATES:-1}" = 1 ]; then
  train_run cpu1 --preset cpu --seed 201 --epochs "$SMALL_EPOCHS" --augment-workers 3 &
  train_run cpu2 --preset cpu --seed 202 --epochs "$SMALL_EPOCHS" --class-weights --class-weight-power 0.5 \
    --augment-workers 3 &
  train_run wide1 --preset cpu --cnn-widths 64,128,256,512 --seed 203 --epochs "$SMALL_EPOCHS" --augment-workers 3 &
fi

# The flagship's images/s on this GPU (while the candidates run, as during its own run), then its epochs.
FLAGSHIP=(--preset flagship --weights none --batch-size "$FLAGSHIP_BATCH" --optimizer sgd --schedule cosine
  --learning-rate 0.1 --warmup-epochs 2 --weight-decay 5e-4 --label-smoothing 0.1 --random-erasing 0.5
  --no-class-weights --calibration-fraction 0.05 --seed 301 --augment-workers 8)
[ -n "${STOP_AFTER:-}" ] && FLAGSHIP+=(--stop-after "$STOP_AFTER")
[ "${SMOKE:-0}" = 1 ] && [ -z "${FLAGSHIP_EPOCHS:-}" ] && FLAGSHIP_EPOCHS=1
[ -z "${FLAGSHIP_EPOCHS:-}" ] && FLAGSHIP_EPOCHS=$(python3 - "$(left)" "$FLAGSHIP_BATCH" <<'PY' 2> >(tee runs/flagship-probe.txt >&2)
import dataclasses, statistics, sys, time
import keras
import numpy as np
from training.config import PRESETS
from training.model import build_inference_model
from training.train import build_training_model, compile_training_model, mixed_precision_policy
left, batch = float(sys.argv[1]), int(sys.argv[2])
base = PRESETS["flagship"]
config = dataclasses.replace(base, arch=dataclasses.replace(base.arch, weights="none"), batch_size=batch,
                             optimizer="sgd", schedule="cosine", mixed_precision="auto")
keras.mixed_precision.set_global_policy(mixed_precision_policy("auto") or "float32")
began = time.time()
model = build_training_model(build_inference_model(config.arch, pretrained=False), config)
compile_training_model(model, config, 0.01, 30, 27272 // batch)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch, 48, 48, 1)).astype(np.float32)
y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, batch)]
model.train_on_batch(x, y)
first = time.time() - began
steps, until = [], time.time() + 12
while time.time() < until or len(steps) < 3:
    t = time.perf_counter(); model.train_on_batch(x, y); steps.append(time.perf_counter() - t)
rate = batch / statistics.median(steps[1:])
epoch_s = 27272 / rate + 3589 / (2 * rate) + 4.0  # training, validation, checkpoints
epochs = int((left - (time.time() - began) - first - 60) / epoch_s)
print(f"flagship: {keras.mixed_precision.global_policy().name}, batch {batch}: build+compile {first:.0f} s, "
      f"{rate:.0f} images/s ({len(steps)} timed steps) -> {epoch_s:.1f} s per epoch, {epochs} epochs fit",
      file=sys.stderr)
print(max(0, epochs))
PY
)
echo "flagship: ${FLAGSHIP_EPOCHS:-0} epochs"
if [ "${FLAGSHIP_EPOCHS:-0}" -ge 3 ] || { [ "${SMOKE:-0}" = 1 ] && [ "${FLAGSHIP_EPOCHS:-0}" -ge 1 ]; }; then
  began=$(date +%s)
  train_run flagship "${FLAGSHIP[@]}" --epochs "$FLAGSHIP_EPOCHS"
  grep -E "^[0-9]+/[0-9]+ - " runs/flagship.log | awk -v s="$(($(date +%s) - began))" \
    '{t = t " " $3} END {print "flagship epochs (s):" t "; wall " s " s from start to archive"}' | tee runs/flagship-epochs.txt
fi
wait
tar -czf "$OUT_DIR/logs.tar.gz" runs/*.log runs/*.txt runs/*/history.csv runs/*/run.json 2>/dev/null
ls -la "$OUT_DIR"
python3 - <<'PY'
import json, pathlib
for run in sorted(pathlib.Path("runs").glob("*/run.json")):
    r = json.loads(run.read_text())
    print(f"{run.parent.name}: val {r['val_accuracy']:.4f} after {r['epochs_run']} epochs, {r['seconds']:.0f} s, "
          f"{r['hardware']}, interrupted={r['interrupted']}")
PY
echo "wall time $(($(date +%s) - START)) s"
