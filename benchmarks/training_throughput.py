"""Training throughput of a preset per precision (float32 vs ``mixed_bfloat16``) on this machine's CPU: the network,
loss and optimizer exactly as ``python -m training train`` builds them (``training.train.build_training_model`` and
its compile step), one ``train_on_batch`` per step on random FER-sized pixels. Writes
``benchmarks/TRAINING_THROUGHPUT.md`` (and ``.json``).

    .venv/bin/python benchmarks/training_throughput.py [--preset cpu] [--seconds 30] [--machine-state "idle (...)"]

Images per second come from the median step time after warm-up steps (graph tracing, oneDNN kernel selection);
minutes per epoch are for the 27,272 FER-2013 training images a run sees (28,709 less its 5 % calibration hold-out).
The augmentation pipeline (numpy, ``training.batches``) is not in the timed step: a real epoch adds it. Run it on an
idle machine (pause training runs: ``kill -STOP <pid>``, then ``kill -CONT <pid>``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: FER-2013 training images a run trains on: 28,709 less the 5 % per-class calibration hold-out.
EPOCH_IMAGES = 27_272


def measure(preset: str, precision: str, *, seconds: float, warmup_steps: int = 5) -> dict[str, Any]:
    """Images per second of one training step of ``preset`` under ``precision`` (``off``: float32, ``on``:
    ``mixed_bfloat16``), the median over ``seconds`` of steps."""
    import dataclasses

    import keras

    from training.config import PRESETS
    from training.labels import LABELS
    from training.model import build_inference_model
    from training.train import build_training_model, compile_training_model, mixed_precision_policy

    config = dataclasses.replace(PRESETS[preset], mixed_precision=precision)
    policy = mixed_precision_policy(config.mixed_precision) or "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_training_model(build_inference_model(config.arch, pretrained=False), config)
        per_epoch = EPOCH_IMAGES // config.batch_size
        compile_training_model(model, config, config.learning_rate, config.epochs, per_epoch)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (config.batch_size, 48, 48, 1)).astype(np.float32)
        y = np.eye(len(LABELS), dtype=np.float32)[rng.integers(0, len(LABELS), config.batch_size)]
        for _ in range(warmup_steps):
            model.train_on_batch(x, y)
        steps: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            step_started = time.perf_counter()
            model.train_on_batch(x, y)
            steps.append(time.perf_counter() - step_started)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    images_per_second = config.batch_size / statistics.median(steps)
    return {
        "preset": preset,
        "policy": policy,
        "batch": config.batch_size,
        "steps": len(steps),
        "images_per_second": round(images_per_second, 1),
        "minutes_per_epoch": round(EPOCH_IMAGES / images_per_second / 60, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="training preset (repeatable; default: cpu)")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per preset and precision")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "TRAINING_THROUGHPUT.md"))
    parser.add_argument("--machine-state", default="idle (training paused)", help="what else ran, for the record")
    args = parser.parse_args()
    rows = [
        measure(preset, precision, seconds=args.seconds)
        for preset in (args.preset or ["cpu"])
        for precision in ("off", "on")
    ]
    lines = [
        "# Training throughput per precision",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine_description()}, {args.machine_state}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/training_throughput.py', *sys.argv[1:]])}`: the preset's",
        "training model, loss and optimizer as `python -m training train` builds them, `train_on_batch` on random",
        f"48x48 pixels, median step over {args.seconds:g} s. Minutes per epoch: {EPOCH_IMAGES:,} images, without the",
        "augmentation pipeline (a real epoch adds it).",
        "",
        "| preset | policy | batch | steps timed | images/s | minutes per epoch | vs float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["preset"]: r["images_per_second"] for r in rows if r["policy"] == "float32"}
    for r in rows:
        ratio = r["images_per_second"] / base[r["preset"]] if r["preset"] in base else float("nan")
        lines.append(
            f"| {r['preset']} | {r['policy']} | {r['batch']} | {r['steps']} | {r['images_per_second']:.0f} | "
            f"{r['minutes_per_epoch']:.2f} | {ratio:.2f}x |"
        )
    write_results(Path(args.out), lines, rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
