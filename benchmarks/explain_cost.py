"""Extra cost of an explanation per face: the served model's ``serving_default`` (predict) against its ``explain``
signature (probabilities + Grad-CAM map) on the same real face crops, at batch 1, 8 and 32, through the service's
own runtime (``service.model.load_model``: ``LoadedModel.predict`` / ``LoadedModel.explain``). Writes
``benchmarks/EXPLAIN.md`` (and ``.json``).

    .venv/bin/python benchmarks/explain_cost.py [--model-dir models/fer-cnn-48] [--seconds 6]

An export made before explanations existed has no ``explain`` signature; the cost of a graph does not depend on its
weights, so then an *untrained twin* is measured: the same architecture (the metadata's ``architecture``: backbone,
widths, input size, test-time flip) exported with random weights by the training package (``training.export``) into
a temporary folder. The results file says which.

Predict and explain calls alternate (one of each, over and over) so that a busy machine slows both alike; each
figure is the median wall time of one call divided by the batch. CPU time (all threads) per face is given too. The
load average at the start is recorded: on a busy machine the absolute figures are high and noisy, the ratio less so.
Run it on an idle machine for the reference (pause training runs: ``kill -STOP <pid>``, then ``kill -CONT <pid>``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES = (1, 8, 32)


def face_crops(model: Any, count: int) -> np.ndarray:
    """``count`` model-sized crops of real faces (the sample photographs, found by the service's detector and cut
    as the service cuts them), repeated to ``count``."""
    from sample_photos import astronaut, hopper
    from service import faces as face_ops

    detector = face_ops.create_detector(
        face_ops.DEFAULT_DETECTOR, min_face_size=40, threshold=face_ops.DEFAULT_THRESHOLD
    )
    height, width = model.input_size
    crops = []
    for photo in (astronaut(), hopper()):
        image = photo.image
        for mirrored in (False, True):
            picture = np.ascontiguousarray(image[:, ::-1]) if mirrored else image
            boxes = [d.box for d in detector.detect(picture)]
            crops.append(
                face_ops.crop_faces(
                    picture,
                    boxes,
                    height=height,
                    width=width,
                    color_mode=model.metadata.input.color_mode,
                    margin=0.2,
                )
            )
    found = np.concatenate(crops)
    if not len(found):
        raise RuntimeError("the detector found no face in the sample photographs")
    return found[np.arange(count) % len(found)]


def untrained_twin(version_dir: Path, out: Path) -> Path:
    """Export the architecture of ``version_dir``'s metadata with random weights (it gets the explain signature)."""
    from dataclasses import fields

    from training.config import ArchConfig, TrainConfig
    from training.export import export_model
    from training.model import build_inference_model

    metadata = json.loads((version_dir / "metadata.json").read_text())
    known = {f.name for f in fields(ArchConfig)}
    arch_values = {k: v for k, v in metadata.get("architecture", {}).items() if k in known}
    if "cnn_widths" in arch_values:
        arch_values["cnn_widths"] = tuple(arch_values["cnn_widths"])
    arch = ArchConfig(**{**arch_values, "weights": "none"})
    config = TrainConfig(arch=arch)
    work = out / "keras"
    work.mkdir(parents=True)
    model_path = work / "model.keras"
    build_inference_model(arch, pretrained=False).save(model_path)
    config.save(work / "config.json")
    return export_model(model_path, out / "models", name=f"{metadata['name']}-untrained-twin", version="1", force=True)


def measure(model: Any, crops: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    batch_crops = crops[:batch]
    classes = np.full(batch, -1, np.int32)
    for _ in range(3):  # warm-up: graph optimisation and kernel selection for this batch size
        model.predict(batch_crops)
        model.explain(batch_crops, classes)
    times: dict[str, list[float]] = {"predict": [], "explain": []}
    cpu: dict[str, float] = {"predict": 0.0, "explain": 0.0}
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times["predict"]) < 5:
        for kind in ("predict", "explain"):
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            if kind == "predict":
                model.predict(batch_crops)
            else:
                model.explain(batch_crops, classes)
            times[kind].append(time.perf_counter() - wall_before)
            cpu[kind] += time.process_time() - cpu_before
    calls = len(times["predict"])
    row: dict[str, Any] = {"batch": batch, "calls_each": calls}
    for kind in ("predict", "explain"):
        row[f"{kind}_ms_per_face"] = round(1000 * statistics.median(times[kind]) / batch, 3)
        row[f"{kind}_cpu_ms_per_face"] = round(1000 * cpu[kind] / (calls * batch), 3)
    row["extra_ms_per_face"] = round(row["explain_ms_per_face"] - row["predict_ms_per_face"], 3)
    row["ratio"] = round(row["explain_ms_per_face"] / row["predict_ms_per_face"], 2)
    return row


def png_ms_per_face(model: Any, crops: np.ndarray, repeats: int = 20) -> float:
    """Milliseconds to turn one map into the response's base64 PNG (the service's own encoder), on these crops'
    maps."""
    import base64

    from service.pipeline import heatmap_png

    maps = model.explain(crops, np.full(len(crops), -1, np.int32)).heatmaps
    started = time.perf_counter()
    for _ in range(repeats):
        for heatmap in maps:
            base64.b64encode(heatmap_png(heatmap))
    return round(1000 * (time.perf_counter() - started) / (repeats * len(maps)), 3)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    import tensorflow as tf

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "load_average_1_5_15": [round(v, 2) for v in load],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="models/fer-cnn-48", help="model folder (highest version) or version")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per batch size (both kinds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "EXPLAIN.md"))
    parser.add_argument(
        "--note", default="", help="a sentence about the conditions (e.g. a training run was using the CPU)"
    )
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from service.model import load_model, resolve_model_dir

    host = machine()  # the load average before this process loads anything
    served = resolve_model_dir(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(served)
        twin = None
        if not model.can_explain:
            print(f"{served} has no explain signature: measuring an untrained twin of its architecture", flush=True)
            twin = untrained_twin(served, Path(tmp))
            model = load_model(twin)
        crops = face_crops(model, max(BATCHES))
        rows = []
        for batch in BATCHES:
            rows.append(measure(model, crops, batch, args.seconds))
            print(rows[-1], flush=True)
        png_ms = png_ms_per_face(model, crops)

    meta = model.metadata
    arch = json.loads((served / "metadata.json").read_text()).get("architecture", {})
    what = (
        f"`{meta.name}` version {meta.version} ({served})"
        if twin is None
        else f"an untrained twin of `{served}` (that export predates the explain signature; same architecture, "
        "random weights, exported by the training package: the cost of a graph does not depend on its weights)"
    )
    load = host["load_average_1_5_15"]
    busy = load[0] > 0.5 * (host["cores"] or 1)
    command = shlex.join([".venv/bin/python", "benchmarks/explain_cost.py", *sys.argv[1:]])
    lines = [
        "# Extra cost of an explanation per face",
        "",
        f"Measured {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}` on {host['cpu']}, "
        f"{host['cores']} logical CPUs, {host['platform']}, Python {host['python']}, TensorFlow "
        f"{host['tensorflow']} (fp32).",
        f"Load average before the run: {load[0]} / {load[1]} / {load[2]} (1 / 5 / 15 min)"
        + (
            " — **a busy machine: other processes were using the CPU, so the absolute figures are high and "
            "noisy; rerun on an idle machine for reference figures** (the ratio is the steadier number)."
            if busy
            else " (idle)."
        ),
    ]
    if args.note:
        lines.append(f"Conditions: {args.note}")
    lines += [
        "",
        f"Model: {what}; input {meta.input.height}x{meta.input.width}x{meta.input.channels}, test-time flip "
        f"{'on' if arch.get('test_time_flip') else 'off'} (with it, explain computes two Grad-CAM passes, the crop's "
        "and its mirror image's). Real face crops (the sample photographs, cut by the service's detector as the "
        "service cuts them), the same crops for both signatures, through `LoadedModel.predict` and "
        "`LoadedModel.explain`; the two alternate call by call. ms per face = median wall time of one call / batch; "
        "CPU ms per face = process CPU time (all threads) / faces.",
        "",
        "| batch | predict ms/face | explain ms/face | extra ms/face | explain / predict | predict CPU ms/face | "
        "explain CPU ms/face | calls each |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['predict_ms_per_face']:.3f} | {r['explain_ms_per_face']:.3f} | "
            f"{r['extra_ms_per_face']:.3f} | {r['ratio']:.2f}x | {r['predict_cpu_ms_per_face']:.3f} | "
            f"{r['explain_cpu_ms_per_face']:.3f} | {r['calls_each']} |"
        )
    lines += [
        "",
        "The service answers `?explain=true` with the explain signature only for the first `explain_max_faces` faces "
        "of a request (default 8), batched among themselves (docs/api.md). Encoding a map as the response's base64 "
        f"PNG ({meta.input.height}x{meta.input.width}, in the event loop) adds {png_ms:.3f} ms per face (measured "
        "on these crops' maps), not included above.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(
        json.dumps(
            {"machine": host, "model": what, "rows": rows, "png_ms_per_face": png_ms, "command": command}, indent=2
        )
        + "\n"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
