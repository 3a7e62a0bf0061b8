"""CPU cost of a served model per face: the whole exported graph (test-time flip and temperature included), batch 32,
through the service's own runtime (``service.model.load_model``): TensorFlow fp32 (the graph as written, what the
issue's budget was stated for) and the service's default (OpenVINO, ``--precision auto`` resolved, its default
threads). Writes ``benchmarks/MODEL_COST.md``.

    .venv/bin/python benchmarks/model_cost.py --model-dir models/fer-cnn-48 [--model-dir OTHER ...]

CPU time is the process's user + system time (all its threads) divided by the faces predicted, so it does not depend
on how many cores served them; throughput is faces per wall-clock second. The work per face is the graph's
multiply-accumulates (every convolution and matrix product of every network on every view, counted in the OpenVINO
IR), so work / CPU time says how near the CPU's arithmetic peak a runtime comes, and what a budget asks of it.
Run it on an idle machine (pause training runs: ``kill -STOP <pid>``, then ``kill -CONT <pid>``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402
from training.config import ArchConfig  # noqa: E402

#: OpenVINO operations that do multiply-accumulates; the rest (ReLU, pooling, adds, softmax) are a rounding error here.
_MAC_OPS = ("Convolution", "GroupConvolution", "MatMul")


@functools.cache  # one count per model, not per runtime row: converting a SavedModel is the slow part
def graph_macs(version_dir: Path) -> int:
    """Multiply-accumulates per crop of the whole exported graph in ``version_dir``: counted in its compiled fp32
    OpenVINO IR, or in the SavedModel converted to OpenVINO when it was never compiled. A convolution does
    ``out_channels x out_height x out_width x in_channels / groups x kernel_height x kernel_width``; a matrix
    product ``output elements x contracted dimension`` (per crop: the batch dimension is left out)."""
    import openvino as ov

    ir = version_dir / "openvino" / "fp32" / "model.xml"
    graph = ov.Core().read_model(ir) if ir.is_file() else ov.convert_model(str(version_dir))
    total = 0
    for op in graph.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _MAC_OPS:
            continue
        per_crop_output = int(np.prod([d.get_length() for d in list(op.get_output_partial_shape(0))[1:]]))
        if kind == "MatMul":
            left = op.input_value(0).get_partial_shape()
            total += per_crop_output * left[-2 if op.get_transpose_a() else -1].get_length()
        else:
            # Convolution weights: (out, in, kh, kw); GroupConvolution: (groups, out/groups, in/groups, kh, kw)
            weights = [d.get_length() for d in op.input_value(1).get_partial_shape()]
            total += per_crop_output * int(np.prod(weights[1:] if kind == "Convolution" else weights[2:]))
    return total


def measure(
    model_dir: str, *, runtime: str = "tensorflow", precision: str = "fp32", batch: int = 32, seconds: float = 10.0
) -> dict[str, Any]:
    """CPU milliseconds per face and faces per second of ``model_dir``'s served version at ``batch`` on ``runtime``
    and ``precision`` (``auto``: as the service resolves it)."""
    from service.model import load_model

    model = load_model(model_dir, runtime=runtime, precision=precision)
    height, width = model.input_size
    crops = np.random.default_rng(0).integers(
        0, 256, (batch, height, width, model.metadata.input.channels), dtype=np.uint8
    )
    for _ in range(5):  # warm-up: graph tracing and oneDNN kernel selection
        model.predict(crops)
    runs = 0
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall_started < seconds:
        model.predict(crops)
        runs += 1
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    faces = runs * batch
    arch = json.loads((model.path / "metadata.json").read_text()).get("architecture", {})
    macs = graph_macs(model.path)
    return {
        "model": f"{model.metadata.name} v{model.metadata.version}",
        "runtime": f"{runtime} {getattr(model.runtime, 'precision', precision)}",
        "batch": batch,
        "faces": faces,
        "cpu_ms_per_face": round(1000 * cpu / faces, 3),
        "faces_per_second": round(faces / wall, 1),
        "test_time_flip": arch.get("test_time_flip", False),
        "test_time_zoom": arch.get("test_time_zoom", 1.0),
        "temperature": arch.get("temperature", 1.0),
        # network passes per face: every network on every test-time view (what benchmarks/passes_budget.py divides by)
        "passes": ArchConfig.from_dict(arch).passes,
        "gmac_per_face": round(macs / 1e9, 4),
        # the arithmetic the runtime got through per second of one core's time
        "gmac_per_cpu_second": round(macs / 1e9 / (cpu / faces), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", action="append", help="model folder (highest version) or version folder")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--target-ms", type=float, default=10.0, help="the budget of CPU per face (issue 11)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "MODEL_COST.md"))
    parser.add_argument("--machine-state", default="idle (training paused)", help="what else ran, for the record")
    parser.add_argument(
        "--configs", default="tensorflow:fp32,openvino:auto", help="runtime:precision list (auto: the service's)"
    )
    args = parser.parse_args()
    configs = [tuple(item.split(":")) for item in args.configs.split(",")]
    rows = [
        measure(d, runtime=runtime, precision=precision, batch=args.batch, seconds=args.seconds)
        for d in (args.model_dir or ["models/fer-cnn-48"])
        for runtime, precision in configs
    ]
    lines = [
        "# CPU cost of the served model per face",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine_description()}, {args.machine_state}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/model_cost.py', *sys.argv[1:]])}`:",
        f"the whole exported graph, batch {args.batch}, {args.seconds:.0f} s per model and runtime (OpenVINO as "
        "the service runs it: its default threads). CPU ms per face = process CPU time (all threads) / faces. "
        "GMAC = 10^9 multiply-accumulates of the whole graph per face (counted in its OpenVINO IR); GMAC per "
        f"CPU-second = GMAC per face / CPU seconds per face; the budget needs GMAC per face / {args.target_ms:g} ms.",
        "",
        "| model | runtime | test-time flip | test-time zoom | temperature | passes | GMAC per face | CPU ms per face "
        "| GMAC per CPU-second (budget needs) | faces/s (wall) | budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "within" if r["cpu_ms_per_face"] <= args.target_ms else "OVER"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {'yes' if r['test_time_flip'] else 'no'} | "
            f"{r['test_time_zoom']:g} | {r['temperature']} | {r['passes']} | {r['gmac_per_face']:.3f} | "
            f"{r['cpu_ms_per_face']:.2f} | {r['gmac_per_cpu_second']:.1f} "
            f"({r['gmac_per_face'] / args.target_ms * 1000:.1f}) | {r['faces_per_second']:.0f} | "
            f"{verdict} ({args.target_ms:g} ms) |"
        )
    write_results(Path(args.out), lines, rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
