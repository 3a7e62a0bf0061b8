"""Serving runtimes and precisions (issue 14): FER-2013 val accuracy, top-1 agreement with TensorFlow fp32 and raw
model throughput at batch 32, each through the service's own ``service.model.load_model``; picks the default by the
issue's parity rule. Writes the "Runtimes" section of ``benchmarks/PRECISION.md`` (the rest of the file is
``benchmarks/precision.py``'s).

    .venv/bin/python benchmarks/runtimes.py                        # the shipped model's highest version
    .venv/bin/python benchmarks/runtimes.py --model-dir models/fer-cnn-48/4 --seconds 20
    # a model of the flagship's size (benchmarks/untrained_model.py, then `python -m training compile` on it):
    .venv/bin/python benchmarks/runtimes.py --model-dir /tmp/bench-models/resnet50v2-224-untrained \
        --val-limit 320 --section flagship-size

The model needs its OpenVINO IR for int8 (``python -m training compile --model <version folder>``). Each
configuration runs in its own process (TensorFlow's bf16 switch is process-wide). Throughput is the median of
``--repeats`` timed windows of ``--seconds`` at batch 32; CPU ms per face is the process's CPU time (all threads)
over those windows divided by the faces, so it reads the same on a busy machine where wall time does not. Each
runtime gets all the CPUs the process may use, as TensorFlow takes them: OpenVINO with as many threads (the
service's default, ``openvino_threads`` 0, leaves one core to the event loop and face detection instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: TensorFlow bf16 is benchmarks/precision.py's (add it with --configs tensorflow:bf16,...).
CONFIGS = [
    ("tensorflow", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]
BATCH = 32
#: The issue's parity rule against fp32 on FER-2013 val: (largest accuracy drop in points, least top-1 agreement).
PARITY = {"fp32": (float("inf"), 0.0), "bf16": (0.2, 0.0), "int8": (0.5, 0.98)}


def markers(section: str) -> tuple[str, str]:
    """The comments that delimit a section of the results file (``runtimes`` is the shipped model's)."""
    name = "runtimes.py" if section == "runtimes" else f"runtimes.py {section}"
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def _measure(
    model_dir: str, data: str, runtime: str, precision: str, seconds: float, repeats: int, limit: int, out: Path
) -> None:
    """Child process: val probabilities (the first ``limit`` of a seeded shuffle; 0 = all) and batch-32
    throughput of one configuration."""
    from service.errors import ModelLoadError
    from service.model import LoadedModel, load_model
    from service.runtimes import OpenVINORuntime, usable_cpus
    from training.compile import model_input
    from training.data import read_split

    started, refused = time.perf_counter(), None
    try:
        model = load_model(model_dir, runtime=runtime, precision=precision, openvino_threads=usable_cpus())
    except ModelLoadError as exc:  # e.g. an int8 IR that failed its check: measured anyway, from its file
        refused = str(exc)
        ir = Path(model_dir) / "openvino" / ("int8" if precision == "int8" else "fp32") / "model.xml"
        plain = load_model(model_dir, runtime="tensorflow")
        runtime_ = OpenVINORuntime(ir, plain.metadata.signature, precision=precision, threads=usable_cpus())
        model = LoadedModel(plain.metadata, plain.path, runtime_)
    load_s = time.perf_counter() - started
    val = read_split(data, "val")
    keep = np.random.default_rng(0).permutation(len(val.labels))[:limit] if limit else np.arange(len(val.labels))
    images = model_input(model.metadata.model_dump(), val.images[keep])
    crops = np.clip(np.rint(images), 0, 255).astype(np.uint8)  # the service hands the model uint8 crops
    probabilities = np.concatenate([model.predict(crops[i : i + BATCH]) for i in range(0, len(crops), BATCH)])
    x = crops[:BATCH]
    for _ in range(5):
        model.predict(x)
    rates, cpu_ms = [], []
    for _ in range(repeats):
        runs, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < seconds:
            model.predict(x)
            runs += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(BATCH * runs / wall)
        cpu_ms.append(1000 * cpu / (BATCH * runs))
    source = getattr(model.runtime, "source", model.path)
    np.save(out / f"{runtime}-{precision}.npy", probabilities)
    (out / f"{runtime}-{precision}.json").write_text(
        json.dumps(
            {
                "labels": val.labels[keep].tolist(),
                "name": model.metadata.name,
                "version": model.metadata.version,
                "images_per_s": float(np.median(rates)),
                "images_per_s_all": rates,
                "cpu_ms_per_face": float(np.median(cpu_ms)),
                "load_s": load_s,
                "refused": refused,
                "source": str(Path(source).relative_to(model.path)) if Path(source) != model.path else "SavedModel",
            }
        )
    )


def choose(figures: dict[tuple[str, str], dict[str, Any]]) -> tuple[tuple[str, str], list[str]]:
    """The fastest configuration that holds parity with fp32 (the issue's rule), and why each other is not."""
    reasons = []
    reference = figures[("tensorflow", "fp32")]
    holding = []
    for key, f in figures.items():
        drop, least = PARITY[key[1]]
        if f["refused"]:
            continue
        points = 100 * (reference["accuracy"] - f["accuracy"])
        if points > drop or f["agreement"] < least:
            reasons.append(
                f"{key[0]} {key[1]} misses parity: {points:+.2f} points below fp32 (allowed {drop}), "
                f"agreement {f['agreement']:.2%} (needed {least:.0%})"
            )
        else:
            holding.append(key)
    best = max(holding, key=lambda key: figures[key]["images_per_s"])
    return best, reasons


def _run_child(*args: str) -> None:
    subprocess.run([sys.executable, __file__, *args], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="models/fer-cnn-48", help="a version folder or a name folder")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per configuration (median)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "PRECISION.md"))
    parser.add_argument("--note", default="", help="a sentence on the machine's state (e.g. a training run)")
    parser.add_argument(
        "--val-limit", type=int, default=0, help="val images for the agreement figures (0 = all; a seeded sample)"
    )
    parser.add_argument(
        "--section", default="runtimes", help="the results file's section to (re)write (runtimes: the shipped model)"
    )
    parser.add_argument(
        "--configs",
        default=",".join(f"{r}:{p}" for r, p in CONFIGS),
        help="runtime:precision list (tensorflow:fp32 first: the reference)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runtime, precision = args.child.split(":")
        _measure(
            args.model_dir, args.data, runtime, precision, args.seconds, args.repeats, args.val_limit,
            Path(args.child_out),
        )  # fmt: skip
        return 0

    from service.model import resolve_model_dir
    from service.runtimes import usable_cpus

    model_dir = str(resolve_model_dir(args.model_dir))
    configs = [tuple(item.split(":")) for item in args.configs.split(",")]
    assert configs[0] == ("tensorflow", "fp32"), "the reference, TensorFlow fp32, comes first"
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for runtime, precision in configs:
            print(f"measuring {runtime} {precision} ...", flush=True)
            _run_child(
                "--model-dir", model_dir, "--data", args.data, "--seconds", str(args.seconds),
                "--repeats", str(args.repeats), "--val-limit", str(args.val_limit),
                "--child", f"{runtime}:{precision}", "--child-out", tmp,
            )  # fmt: skip
        probabilities = {key: np.load(Path(tmp) / f"{key[0]}-{key[1]}.npy") for key in configs}
        info = {key: json.loads((Path(tmp) / f"{key[0]}-{key[1]}.json").read_text()) for key in configs}
    labels = np.array(info[configs[0]]["labels"])
    reference = probabilities[("tensorflow", "fp32")]
    figures = {
        key: {
            **info[key],
            "accuracy": float((p.argmax(1) == labels).mean()),
            "agreement": float((p.argmax(1) == reference.argmax(1)).mean()),
            "max_diff": float(np.abs(p - reference).max()),
        }
        for key, p in probabilities.items()
    }
    best, reasons = choose(figures)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    name, version = info[configs[0]]["name"], info[configs[0]]["version"]
    base = figures[("tensorflow", "fp32")]["images_per_s"]
    begin, end = markers(args.section)
    sample = f"{len(labels)} of the 3589 images (a seeded sample)" if args.val_limit else f"{len(labels)} images"
    lines = [
        begin,
        f"## Runtimes: TensorFlow and OpenVINO, fp32 / bf16 / int8{'' if args.section == 'runtimes' else ': ' + name}",
        "",
        f"Written by `benchmarks/runtimes.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: "
        f"{cpu or platform.processor()}, {os.cpu_count()} logical cores, avx512_bf16 "
        f"{'yes' if 'avx512_bf16' in cpuinfo else 'no'}, amx_bf16 {'yes' if 'amx_bf16' in cpuinfo else 'no'}; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after. {args.note}".rstrip(),
        f"Model `{name}` version {version} (`{model_dir}`) through `service.model.load_model`; FER-2013 val, "
        f"{sample} as uint8 crops. Agreement and largest probability difference are against TensorFlow "
        f"fp32. Raw model at batch {BATCH} on all {usable_cpus()} CPUs (OpenVINO with as many threads): median of "
        f"{args.repeats} windows of {args.seconds:g} s; CPU ms per face is the process's CPU time (all threads) per "
        "face.",
        "",
        "| runtime | precision | loads | val accuracy | top-1 agreement | max prob diff | img/s batch 32 | "
        "vs TF fp32 | CPU ms/face |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (runtime, precision), f in figures.items():
        lines.append(
            f"| {runtime} | {precision} | {'REFUSED by the service; ' if f['refused'] else ''}{f['source']} "
            f"| {f['accuracy']:.4f} | {f['agreement']:.2%} | "
            f"{f['max_diff']:.4f} | {f['images_per_s']:.0f} | {f['images_per_s'] / base:.2f}x | "
            f"{f['cpu_ms_per_face']:.3f} |"
        )
    lines += [
        "",
        "Parity rule (issue 14): int8 within 0.5 points of fp32 accuracy with >= 98 % top-1 agreement, bf16 within "
        f"0.2 points. Fastest configuration holding it: **{best[0]} {best[1]}** "
        f"({figures[best]['images_per_s']:.0f} img/s, {figures[best]['accuracy']:.4f}).",
        *[f"- {reason}" for reason in reasons],
        *[f"- {k[0]} {k[1]}: {f['refused']}" for k, f in figures.items() if f["refused"]],
        "",
        "Rerun on an idle machine: `.venv/bin/python benchmarks/runtimes.py " + shlex.join(sys.argv[1:]) + "`.",
        end,
    ]
    section = "\n".join(lines)
    out = Path(args.out)
    text = out.read_text() if out.is_file() else ""
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)
    print(section)
    summary = {f"{k[0]}-{k[1]}": {n: v for n, v in f.items() if n != "labels"} for k, f in figures.items()}
    print(json.dumps({"choice": best, **summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
