"""fp32 vs bf16 serving precision: accuracy effect on FER-2013 val and model throughput, through the service's own
runtime (``service.model.load_model``). Writes ``benchmarks/PRECISION.md``.

    .venv/bin/python benchmarks/precision.py --model-dir models/fer-cnn-48 --data ../shared/data/fer2013

TensorFlow's bf16 rewrite is process-wide, so each precision runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _throughput(model: Any, inputs: np.ndarray, *, seconds: float) -> dict[int, float]:
    """Inputs/s of ``model.predict`` on the first 1, 8 and 32 of ``inputs``, each after a warm-up."""
    timings = {}
    for batch in (1, 8, 32):
        x = inputs[:batch]
        for _ in range(3):
            model.predict(x)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.predict(x)
            runs += 1
        timings[batch] = batch * runs / (time.perf_counter() - started)
    return timings


def _measure(model_dir: str, data: str, precision: str, out: Path) -> None:
    """Child process: val probabilities and throughput at one precision."""
    from service.model import load_model
    from training.config import ArchConfig
    from training.data import read_split
    from training.inference import fer_pixels_to_model_input

    model = load_model(model_dir, runtime="tensorflow", precision=precision)  # TensorFlow's fp32 vs bf16
    val = read_split(data, "val")
    height, width = model.input_size
    arch = ArchConfig(input_size=height, color_mode="grayscale" if model.metadata.input.channels == 1 else "rgb")
    images = np.asarray(fer_pixels_to_model_input(arch, val.images.astype(np.float32)))
    probabilities = np.concatenate([model.predict(images[i : i + 32]) for i in range(0, len(images), 32)])
    timings = _throughput(model, images, seconds=3.0)
    np.save(out / f"{precision}.npy", probabilities)
    (out / f"{precision}.json").write_text(
        json.dumps(
            {
                "throughput": timings,
                "labels": val.labels.tolist(),
                "name": model.metadata.name,
                "version": model.metadata.version,
            }
        )
    )


def _measure_speed(model_dir: str, precision: str, out: Path) -> None:
    """Child process: throughput only (a model without meaningful accuracy, e.g. an untrained flagship-size one)."""
    from service.model import load_model

    model = load_model(model_dir, runtime="tensorflow", precision=precision)  # TensorFlow's fp32 vs bf16
    height, width = model.input_size
    crops = np.random.default_rng(0).integers(
        0, 256, (32, height, width, model.metadata.input.channels), dtype=np.uint8
    )
    timings = _throughput(model, crops, seconds=8.0)
    (out / f"speed-{precision}.json").write_text(
        json.dumps({"throughput": timings, "name": model.metadata.name, "version": model.metadata.version})
    )


def _run_child(*args: str) -> None:
    """This script in a fresh process (TensorFlow's bf16 switch is process-wide)."""
    subprocess.run([sys.executable, __file__, *args], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="models/fer-cnn-48")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "PRECISION.md"))
    parser.add_argument(
        "--speed-model",
        help="also measure the throughput (only) of this model at both "
        "precisions, e.g. an untrained flagship-size model from benchmarks/untrained_model.py",
    )
    parser.add_argument("--child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--child-speed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.child_speed:
        _measure_speed(args.model_dir, args.child, Path(args.child_out))
        return 0
    if args.child:
        _measure(args.model_dir, args.data, args.child, Path(args.child_out))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            _run_child("--model-dir", args.model_dir, "--data", args.data, "--child", precision, "--child-out", tmp)
            if args.speed_model:
                _run_child("--model-dir", args.speed_model, "--child", precision, "--child-speed", "--child-out", tmp)
        results = {
            p: (np.load(Path(tmp) / f"{p}.npy"), json.loads((Path(tmp) / f"{p}.json").read_text()))
            for p in ("fp32", "bf16")
        }
        speed = (
            {p: json.loads((Path(tmp) / f"speed-{p}.json").read_text()) for p in ("fp32", "bf16")}
            if args.speed_model
            else None
        )
    labels = np.array(results["fp32"][1]["labels"])
    fp32, bf16 = results["fp32"][0], results["bf16"][0]
    acc = {p: float((results[p][0].argmax(1) == labels).mean()) for p in results}
    agreement = float((fp32.argmax(1) == bf16.argmax(1)).mean())
    max_diff = float(np.abs(fp32 - bf16).max())
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    name, version = results["fp32"][1]["name"], results["fp32"][1]["version"]
    lines = [
        "# Serving precision: fp32 vs bf16",
        "",
        f"Written by `benchmarks/precision.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {cpu}, "
        f"{os.cpu_count()} logical cores, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
        f"Python {platform.python_version()}; load average at the end {os.getloadavg()[0]:.1f}.",
        f"Model `{name}` version {version} through the service's runtime; FER-2013 val, {len(labels)} images.",
        "",
        "| precision | val accuracy | img/s batch 1 | img/s batch 8 | img/s batch 32 |",
        "|---|---|---|---|---|",
    ]
    for p in ("fp32", "bf16"):
        t = results[p][1]["throughput"]
        lines.append(f"| {p} | {acc[p]:.4f} | {t['1']:.0f} | {t['8']:.0f} | {t['32']:.0f} |")
    lines += [
        "",
        f"Top-1 agreement between fp32 and bf16: {agreement:.2%}; largest probability difference {max_diff:.4f}.",
    ]
    if max_diff == 0.0:
        lines.append(
            "Identical outputs: TensorFlow did not apply the bf16 rewrite here (it needs a CPU that reports "
            "avx512_bf16 or amx_bf16), so `--precision bf16` is a no-op on this machine."
        )
    if speed:
        rate = {p: speed[p]["throughput"] for p in speed}
        lines += [
            "",
            f"Throughput only, model `{speed['fp32']['name']}` version {speed['fp32']['version']} "
            f"(`{args.speed_model}`; random crops, no accuracy to measure):",
            "",
            "| precision | img/s batch 1 | img/s batch 8 | img/s batch 32 |",
            "|---|---|---|---|",
            *[f"| {p} | {rate[p]['1']:.1f} | {rate[p]['8']:.1f} | {rate[p]['32']:.1f} |" for p in rate],
            "",
            f"bf16 / fp32: {rate['bf16']['1'] / rate['fp32']['1']:.2f}x at batch 1, "
            f"{rate['bf16']['8'] / rate['fp32']['8']:.2f}x at batch 8, "
            f"{rate['bf16']['32'] / rate['fp32']['32']:.2f}x at batch 32.",
        ]
    lines.append("")
    out = Path(args.out)
    kept = out.read_text() if out.is_file() else ""
    if "<!-- runtimes.py: begin -->" in kept:  # benchmarks/runtimes.py's section stays
        lines += [kept[kept.index("<!-- runtimes.py: begin -->") :].rstrip("\n"), ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
