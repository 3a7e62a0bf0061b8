#!/usr/bin/env bash
# Run the throughput, overload and soak benchmarks one after another on an otherwise idle machine (about 25 minutes
# on 2 cores) and rewrite their sections of benchmarks/RESULTS.md and benchmarks/RELIABILITY.md.
# The second throughput run uses an untrained model with the flagship's architecture (ResNet50V2 at 224), exported
# to a temporary folder: its answers are meaningless, its cost is the flagship's.
#   benchmarks/run_reliability.sh [MODEL_DIR]      (default: models/fer-cnn-48, the shipped model)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/fer-cnn-48}"
python=".venv/bin/python"
[ -x "$python" ] || python=python3
if pgrep -f "training train" >/dev/null; then
    echo "a training run is using the CPUs: the numbers would not mean anything; stop it or wait" >&2
    exit 1
fi
"$python" -m benchmarks.loadgen --model-dir "$model"
models="$(mktemp -d)"
trap 'rm -rf "$models"' EXIT
"$python" -m benchmarks.untrained_model --out "$models"
"$python" -m benchmarks.loadgen --model-dir "$models/resnet50v2-224-untrained" --section loadgen-flagship-size \
    --workloads photo,crop --levels 4,8,16,32 --seconds 10 --raw-seconds 12 --no-unbatched
"$python" -m benchmarks.loadgen --model-dir "$models/resnet50v2-224-untrained" --section loadgen-flagship-size-detect256 \
    --workloads photo --levels 8,16,32 --seconds 10 --raw-seconds 12 --no-unbatched \
    --service-args "--max-pending-images 1100 --max-queue 1100 --detection-max-side 256"
"$python" -m benchmarks.overload --model-dir "$model" --seconds 15 --compare-unbounded
"$python" -m benchmarks.soak --model-dir "$model" --requests 20000 --max-seconds 720
