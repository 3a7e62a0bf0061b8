#!/usr/bin/env bash
# Runs on the lent GPU machine, inside gpu-bundle/ (scripts/gpu-train.sh bundle copies it there as run.sh):
#
#   bash run.sh OUT_DIR [SECONDS]
#
# Trains for SECONDS of wall time (default 480; finishing and archiving take up to FINISH_S = 75 s of them), then
# writes each finished run as a compact archive (python -m training compact) into OUT_DIR, with logs.tar.gz (logs,
# histories, the probes). Exits 1 if a run left no archive or OUT_DIR holds more than the 8 files or 64 MiB such a
# machine returns (the flagship's archive is ~42-46 MiB, a wide candidate's ~8.4 MiB: the flagship and two fit).
# * 48x48 candidates for the CPU default (CANDIDATES, default "wide1 wide2": VGG-style nets twice as wide as the cpu
#   preset's, the second with square-root class weights; also cpu1, cpu2, wide3, and mix1: cpu1's recipe and seed
#   with CutMix and mixup, an ablation of batch mixing beside cpu1), each in its own process with
#   3 augmentation threads, with as many epochs as the measured augmentation rate lets finish in time;
# * the flagship ResNet50V2 at 224 from random weights: its images/s are measured first (the compiled training step
#   and 8 augmentation threads, whichever is slower), and its epochs are what fits in the time left.
# A run cut off by the time limit is finished from its best checkpoint (python -m training finalize).
# One augmentation thread fed 2,843-4,154 images/s on the H200 machine, 8 threads 20,850; its GPU trains the
# flagship at 4,849 (benchmarks/GPU_RUNS.md). Settings (environment): CANDIDATES="" skips the candidates;
# FLAGSHIP_EPOCHS=N skips the probe and trains N epochs (0: no flagship); STOP_AFTER=K stops the flagship after K
# epochs (a throughput measurement; it is then not archived); FLAGSHIP_BATCH (default 256); SMOKE=1: a few images
# per class and one epoch each (the flagship too, unless FLAGSHIP_EPOCHS=0), no probe, to check the whole script on
# any machine (KERAS_BACKEND=tensorflow works too; tests/test_training.py runs it so).
set -uo pipefail
OUT_DIR=$(realpath -m "${1:?usage: run.sh OUT_DIR [SECONDS]}")  # before the cd: relative to the caller
cd "$(dirname "$0")"
BUDGET=${2:-480}
FINISH_S=75
EPOCH_IMAGES=27272  # FER-2013 train less the 5 % calibration hold-out
VAL_IMAGES=3589
START=$(date +%s)
DEADLINE=$((START + BUDGET))
DATA=fer2013.npz
mkdir -p "$OUT_DIR" runs

if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target /tmp/fer-site wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/fer-site:$PWD
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee runs/gpu.txt
python3 -c "import importlib, keras, numpy; b = keras.backend.backend(); m = importlib.import_module(b); \
print(b, m.__version__, getattr(m, 'devices', list)(), 'keras', keras.__version__, 'numpy', numpy.__version__)" \
  2>&1 | tee -a runs/gpu.txt || exit 1

EXTRA=()
DEFAULT_BATCH=256
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA=(--limit-per-class 12)
  DEFAULT_BATCH=8
fi
FLAGSHIP_BATCH=${FLAGSHIP_BATCH:-$DEFAULT_BATCH}
left() { echo $((DEADLINE - $(date +%s))); }
CANDIDATES=${CANDIDATES-wide1 wide2}

# Epochs a 48x48 candidate can finish: its epoch is bound by the numpy augmentation (3 threads per process).
SMALL_EPOCHS=1
if [ "${SMOKE:-0}" != 1 ] && [ -n "$CANDIDATES" ]; then
  SMALL_EPOCHS=$(python3 - "$(left)" "$FINISH_S" "$EPOCH_IMAGES" <<'PY' | tail -n 1
import sys, time
import numpy as np
from training.batches import Augmentation, augment
left, finish, images = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
x = np.random.default_rng(0).integers(0, 256, (128, 48, 48, 1)).astype(np.uint8)
aug = Augmentation.scaled(1.0, 0.5)
t = time.perf_counter()
for i in range(10):
    augment(x, np.random.default_rng(i), aug)
rate = 1280 / (time.perf_counter() - t)
epoch_s = images / (0.8 * 2 * rate) + 2.0  # 3 threads: twice one (conservatively), plus validation, checkpoints
print(f"augmentation {rate:.0f} images/s on one core -> {epoch_s:.1f} s per epoch", file=sys.stderr)
print(max(1, min(100, int((left - finish - 60) / epoch_s))))  # 60 s: data loading and compiling
PY
  )
fi
case "$SMALL_EPOCHS" in '' | *[!0-9]*) echo "the augmentation probe failed" >&2; exit 1 ;; esac
echo "48x48 candidates ($CANDIDATES): $SMALL_EPOCHS epochs"

EXPECTED=()
train_run() {  # NAME ARGS...: train until the deadline less FINISH_S, finish, compact
  local name=$1 limit=$(($(left) - FINISH_S))
  shift
  [ "$limit" -ge 1 ] || { echo "$name: no time left to train" >"runs/$name.log"; return; }
  timeout --signal=TERM --kill-after=10 "$limit" python3 -m training train --data "$DATA" --run-dir "runs/$name" \
    --holdout-seed 1337 --mixed-precision auto --early-stopping-patience 0 "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"runs/$name.log" 2>&1
  local rc=$?
  echo "$name: train exited $rc" >>"runs/$name.log"
  if [ "$rc" = 124 ] && [ -f "runs/$name/checkpoint.keras" ]; then  # cut off by the time limit, even while finishing
    python3 -m training finalize --run-dir "runs/$name" --data "$DATA" >>"runs/$name.log" 2>&1
  fi
  if [ -f "runs/$name/model.keras" ]; then
    python3 -m training compact "runs/$name" --out "$OUT_DIR/$name.npz" --part-mib 15.9 >>"runs/$name.log" 2>&1
  fi
  tail -n 2 "runs/$name.log"
}

candidate() {  # NAME: the recipe of each 48x48 candidate
  local wide=(--cnn-widths 64,128,256,512) sqrt=(--class-weights --class-weight-power 0.5)
  case "$1" in
    cpu1) train_run cpu1 --preset cpu --seed 201 --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    cpu2) train_run cpu2 --preset cpu --seed 202 "${sqrt[@]}" --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    wide1) train_run wide1 --preset cpu "${wide[@]}" --seed 203 --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    wide2) train_run wide2 --preset cpu "${wide[@]}" --seed 204 "${sqrt[@]}" --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    wide3) train_run wide3 --preset cpu "${wide[@]}" --seed 205 --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    mix1) train_run mix1 --preset cpu --seed 201 --cutmix 1 --mixup 0.2 --epochs "$SMALL_EPOCHS" --augment-workers 3 ;;
    *) echo "unknown candidate $1 (cpu1, cpu2, wide1, wide2, wide3, mix1)" >&2; return 1 ;;
  esac
}
for name in $CANDIDATES; do
  case "$name" in cpu1 | cpu2 | wide1 | wide2 | wide3 | mix1) ;; *) echo "unknown candidate $name" >&2; exit 1 ;; esac
  EXPECTED+=("$name")
  candidate "$name" &
done

# The flagship's images/s on this GPU (while the candidates run, as during its own run), then its epochs.
FLAGSHIP=(--preset flagship --weights none --batch-size "$FLAGSHIP_BATCH" --optimizer sgd --schedule cosine
  --learning-rate 0.1 --warmup-epochs 2 --weight-decay 5e-4 --label-smoothing 0.1 --random-erasing 0.5
  --no-class-weights --calibration-fraction 0.05 --seed 301 --augment-workers 8)
[ -n "${STOP_AFTER:-}" ] && FLAGSHIP+=(--stop-after "$STOP_AFTER")
[ "${SMOKE:-0}" = 1 ] && [ -z "${FLAGSHIP_EPOCHS:-}" ] && FLAGSHIP_EPOCHS=1
if [ -z "${FLAGSHIP_EPOCHS:-}" ]; then
  FLAGSHIP_EPOCHS=$(python3 - "$(left)" "$FLAGSHIP_BATCH" "$FINISH_S" "$EPOCH_IMAGES" "$VAL_IMAGES" <<'PY' \
    2> >(tee runs/flagship-probe.txt >&2) | tail -n 1
import dataclasses, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
import keras
import numpy as np
from training.batches import Augmentation, augment
from training.config import PRESETS
from training.model import build_inference_model
from training.train import build_training_model, compile_training_model, mixed_precision_policy
left, batch, finish, images, val = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
base = PRESETS["flagship"]
config = dataclasses.replace(base, arch=dataclasses.replace(base.arch, weights="none"), batch_size=batch,
                             optimizer="sgd", schedule="cosine", mixed_precision="auto")
keras.mixed_precision.set_global_policy(mixed_precision_policy("auto") or "float32")
began = time.time()
model = build_training_model(build_inference_model(config.arch, pretrained=False), config)
compile_training_model(model, config, 0.01, 30, images // batch)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch, 48, 48, 1)).astype(np.float32)
y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, batch)]
model.train_on_batch(x, y)
first = time.time() - began
steps, until = [], time.time() + 12
while time.time() < until or len(steps) < 3:
    t = time.perf_counter(); model.train_on_batch(x, y); steps.append(time.perf_counter() - t)
step_rate = batch / statistics.median(steps[1:])
aug = Augmentation.scaled(1.0, 0.5)
with ThreadPoolExecutor(8) as pool:  # the run's 8 augmentation threads (the candidates' run beside them)
    t = time.perf_counter()
    list(pool.map(lambda i: augment(x.astype(np.uint8), np.random.default_rng(i), aug), range(32)))
    aug_rate = 32 * batch / (time.perf_counter() - t)
rate = min(step_rate, 0.8 * aug_rate)
epoch_s = images / rate + val / (2 * step_rate) + 4.0  # training, validation, checkpoints
epochs = int((left - (time.time() - began) - first - finish - 15) / epoch_s)  # 15 s: loading the data
print(f"flagship: {keras.mixed_precision.global_policy().name}, batch {batch}: build+compile {first:.0f} s, "
      f"training step {step_rate:.0f} images/s ({len(steps)} timed steps), 8 augmentation threads "
      f"{aug_rate:.0f} images/s -> {epoch_s:.1f} s per epoch, {epochs} epochs fit", file=sys.stderr)
print(max(0, epochs))
PY
  )
fi
case "$FLAGSHIP_EPOCHS" in '' | *[!0-9]*) echo "the flagship probe failed: no flagship" >&2; FLAGSHIP_EPOCHS=0 ;; esac
echo "flagship: ${FLAGSHIP_EPOCHS:-0} epochs"
if [ "${FLAGSHIP_EPOCHS:-0}" -ge 3 ] || { [ "${SMOKE:-0}" = 1 ] && [ "${FLAGSHIP_EPOCHS:-0}" -ge 1 ]; }; then
  began=$(date +%s)
  [ -z "${STOP_AFTER:-}" ] && EXPECTED+=(flagship)
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
echo "wall time $(($(date +%s) - START)) s (budget $BUDGET s)"
status=0
for name in ${EXPECTED[@]+"${EXPECTED[@]}"}; do
  [ -f "$OUT_DIR/$name.npz.000" ] || { echo "$name: no archive (see runs/$name.log in logs.tar.gz)" >&2; status=1; }
done
files=$(find "$OUT_DIR" -maxdepth 1 -type f | wc -l)
[ "$files" -le 8 ] || { echo "$OUT_DIR holds $files files: more than the 8 a device call returns" >&2; status=1; }
mib=$(du -sm "$OUT_DIR" | cut -f1)
[ "$mib" -le 63 ] || { echo "$OUT_DIR holds $mib MiB: a device call returns 64 MiB at most" >&2; status=1; }
exit $status
