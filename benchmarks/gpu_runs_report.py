"""What the lent GPU machine measured and trained (issue 11), from the logs ``scripts/gpu_runs.sh`` brought back.

The GPU machine writes its numbers into its logs: the flagship's probe (build + compile time, images/s of the bare
training step), the augmentation rate per thread count, and each run's per-epoch seconds (Keras' epoch lines) and
val accuracy per epoch (``history.csv``). This script reads a folder of those logs (one sub-folder per device call,
committed under ``benchmarks/gpu-runs/<date>/``) and, with ``--runs``, evaluates the runs that came back (expanded by
``scripts/gpu-train.sh expand``) on FER-2013 val here: the 48x48 nets on their own crop and on the four views
the shipped model averages (crop, zoomed centre 1.1, their mirror images), the flagship on its crop. With
``--ensemble-cache`` (the shipped ensemble's per-network probabilities, as ``benchmarks/passes_budget.py --cache``
writes them) it also asks whether the 48x48 runs improve the shipped ensemble: every subset of its networks and the
new ones, scored on the calibration hold-out (where the choice is made); val only for the rows shown. Writes
``benchmarks/GPU_RUNS.md`` (and ``.json``):

    .venv/bin/python benchmarks/gpu_runs_report.py --logs benchmarks/gpu-runs/2026-12-04 \\
        --runs ~/fer-runs/gpu-cpu1 ~/fer-runs/gpu-cpu2 ~/fer-runs/gpu-wide1 ~/fer-runs/gpu-flagship \\
        --ensemble-cache ~/fer-runs/pb10.npz
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402
from benchmarks.training_throughput import EPOCH_IMAGES  # noqa: E402

_EPOCH_LINE = re.compile(r"^(\d+)/\d+ - (\d+)s - ")


def epoch_seconds(log: Path) -> list[int]:
    """Seconds of each epoch, from Keras' one-line-per-epoch log (``213/213 - 12s - 57ms/step - ...``)."""
    return [int(m.group(2)) for line in log.read_text().splitlines() if (m := _EPOCH_LINE.match(line))]


def best_val(history: Path) -> tuple[float, int, int]:
    """Best val accuracy, its epoch (1-based) and the epochs logged, from a run's ``history.csv``."""
    with open(history) as handle:
        rows = list(csv.DictReader(handle))
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = int(np.argmax(accuracies))
    return accuracies[best], best + 1, len(rows)


def run_rows(call: Path) -> list[dict[str, Any]]:
    """One row per run of a device call: epochs, seconds per epoch (median after the first, which compiles),
    images/s that implies, best val accuracy during training, and whether the time limit cut it off."""
    rows = []
    for log in sorted(call.glob("*.log")):
        name = log.stem
        seconds = epoch_seconds(log)
        if not seconds:
            continue
        steady = float(np.median(seconds[1:])) if len(seconds) > 1 else float(seconds[0])
        history = call / f"{name}-history.csv"
        best, best_epoch, logged = best_val(history) if history.is_file() else (float("nan"), 0, len(seconds))
        text = log.read_text()
        planned = re.search(r"^Epoch \d+/(\d+)", text, re.MULTILINE)
        rows.append(
            {
                "call": call.name,
                "run": name,
                "epochs": f"{logged}/{planned.group(1) if planned else '?'}",
                "first_epoch_s": seconds[0],
                "epoch_s": steady,
                "images_per_s": round(EPOCH_IMAGES / steady) if steady else None,
                "best_val_in_training": best,
                "best_epoch": best_epoch,
                "cut_off": "train exited 124" in text,
                "stopped_by_stop_after": "stopped after epoch" in text,
            }
        )
    return rows


def evaluate(run: Path, data: str, views_out: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Val accuracy and macro-F1 of a returned run here (float32 rebuild of its weights); a 48x48 run's
    per-view probabilities on the hold-out and val go into ``views_out[run name]``."""
    from sklearn.metrics import f1_score

    from benchmarks.passes_budget import view_probabilities
    from training.config import TrainConfig
    from training.data import read_split
    from training.inference import keras_predictor, predict_split
    from training.model import load_inference_model

    config = TrainConfig.load(run / "config.json")
    if config.arch.input_size == 48:
        probs = view_probabilities(run, data, 1.1)
        views_out[run.name] = probs
        val, labels = probs["val"][0], probs["val_y"]
        crop, views = val[0], val.mean(axis=0)
    else:  # the flagship at 224: its crop only (four views would take ~15 min of these CPUs)
        split = read_split(data, "val")
        model = load_inference_model(str(run / "model.keras"))
        # batches of 32: 256 crops at 224 need over 20 GB of activations on a CPU
        crop, views, labels = predict_split(keras_predictor(model), config.arch, split, 32), None, split.labels

    def scores(p: np.ndarray | None) -> tuple[float | None, float | None]:
        if p is None:
            return None, None
        predicted = p.argmax(axis=1)
        return float((predicted == labels).mean()), float(f1_score(labels, predicted, average="macro"))

    (crop_acc, crop_f1), (views_acc, views_f1) = scores(crop), scores(views)
    return {
        "run": run.name,
        "network": f"{config.arch.backbone} {config.arch.input_size}px"
        + (f" widths {','.join(map(str, config.arch.cnn_widths))}" if config.arch.input_size == 48 else ""),
        "crop_accuracy": crop_acc,
        "crop_macro_f1": crop_f1,
        "four_views_accuracy": views_acc,
        "four_views_macro_f1": views_f1,
    }


def ensemble_rows(cache: Path, new: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """The shipped ensemble (all views averaged), with each new network, with all of them, and the subset of all
    networks that scores best on the hold-out; hold-out and val accuracy, val macro-F1 of each."""
    from sklearn.metrics import f1_score

    shipped = np.load(cache)
    names = [f"shipped {i + 1}" for i in range(shipped["hold"].shape[0])]
    hold, val = list(shipped["hold"]), list(shipped["val"])
    for name, probs in new.items():
        if not (
            np.array_equal(probs["hold_y"], shipped["hold_y"]) and np.array_equal(probs["val_y"], shipped["val_y"])
        ):
            raise ValueError(f"{name} was not held out on the shipped ensemble's images: its hold-out differs")
        names.append(name)
        hold.append(probs["hold"][0])
        val.append(probs["val"][0])

    def row(label: str, members: tuple[int, ...]) -> dict[str, Any]:
        h = np.mean([hold[i].mean(axis=0) for i in members], axis=0).argmax(axis=1)
        v = np.mean([val[i].mean(axis=0) for i in members], axis=0).argmax(axis=1)
        return {
            "networks": label,
            "members": [names[i] for i in members],
            "hold_out_accuracy": float((h == shipped["hold_y"]).mean()),
            "val_accuracy": float((v == shipped["val_y"]).mean()),
            "val_macro_f1": float(f1_score(shipped["val_y"], v, average="macro")),
        }

    base = tuple(range(len(shipped["hold"])))
    rows = [row("the shipped ensemble", base)]
    rows += [row(f"shipped + {names[i]}", (*base, i)) for i in range(len(base), len(names))]
    if len(names) > len(base) + 1:
        rows.append(row("shipped + all new", tuple(range(len(names)))))
    subsets = itertools.chain.from_iterable(
        itertools.combinations(range(len(names)), k) for k in range(1, len(names) + 1)
    )
    best = max(subsets, key=lambda m: row("", m)["hold_out_accuracy"])
    rows.append(row("the hold-out's best subset: " + ", ".join(names[i] for i in best), best))
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.2f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, required=True, help="folder of device calls' log folders")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="expanded run folders to evaluate here")
    parser.add_argument(
        "--ensemble-cache", type=Path, help="the shipped ensemble's probabilities (passes_budget.py --cache)"
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "GPU_RUNS.md")
    args = parser.parse_args()

    calls = sorted(p for p in args.logs.iterdir() if p.is_dir())
    rows = [row for call in calls for row in run_rows(call)]
    gpu = next((c / "gpu.txt" for c in calls if (c / "gpu.txt").is_file()), None)
    lines = [
        "# Training on a lent GPU (issue 11)",
        "",
        f"Written by `benchmarks/gpu_runs_report.py` from the logs in `{args.logs.resolve().relative_to(ROOT)}` "
        "(what `scripts/gpu_runs.sh` printed there). The GPU machine: "
        + (" ".join(gpu.read_text().split()) if gpu else "(no gpu.txt)")
        + "; 16 CPU cores. Evaluation below on this machine: "
        + machine_description(),
        "",
        "## Probes",
        "",
    ]
    for call in calls:
        for name in ("flagship-probe.txt", "aug.txt", "flagship-epochs.txt"):
            if (call / name).is_file():
                lines += [
                    f"- {call.name}/{name}: " + "; ".join(call.joinpath(name).read_text().split("\n")).strip("; ")
                ]
    lines += [
        "",
        "## Runs (epoch seconds from the logs; images/s = 27,272 training images / median epoch after the first)",
        "",
        "| call | run | epochs run/planned | 1st epoch (compile) | epoch | images/s | best val in training "
        "(epoch) | killed by the time limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cut = "yes" if r["cut_off"] else ("stopped (--stop-after)" if r["stopped_by_stop_after"] else "no")
        lines.append(
            f"| {r['call']} | {r['run']} | {r['epochs']} | {r['first_epoch_s']} s | {r['epoch_s']:.1f} s | "
            f"{r['images_per_s']} | {_pct(r['best_val_in_training'])} ({r['best_epoch']}) | {cut} |"
        )
    views: dict[str, dict[str, np.ndarray]] = {}
    evaluated = [evaluate(run, args.data, views) for run in args.runs]
    if evaluated:
        lines += [
            "",
            "## The runs that came back, on FER-2013 val here (float32 rebuild of the float16-archived weights)",
            "",
            "| run | network | crop: accuracy | macro-F1 | 4 views: accuracy | macro-F1 |",
            "|---|---|---|---|---|---|",
        ]
        for e in evaluated:
            f1 = "–" if e["crop_macro_f1"] is None else f"{e['crop_macro_f1']:.3f}"
            f1v = "–" if e["four_views_macro_f1"] is None else f"{e['four_views_macro_f1']:.3f}"
            lines.append(
                f"| {e['run']} | {e['network']} | {_pct(e['crop_accuracy'])} | {f1} | "
                f"{_pct(e['four_views_accuracy'])} | {f1v} |"
            )
    combined = ensemble_rows(args.ensemble_cache, views) if args.ensemble_cache and views else []
    if combined:
        lines += [
            "",
            "## With the shipped ensemble (all four views; networks chosen on the calibration hold-out)",
            "",
            f"`{args.ensemble_cache.name}`: the shipped ensemble's networks as `benchmarks/passes_budget.py --cache` "
            "wrote them.",
            "",
            "| networks | hold-out accuracy | val accuracy | val macro-F1 |",
            "|---|---|---|---|",
        ]
        for c in combined:
            lines.append(
                f"| {c['networks']} | {_pct(c['hold_out_accuracy'])} | {_pct(c['val_accuracy'])} | "
                f"{c['val_macro_f1']:.3f} |"
            )
    write_results(args.out, lines, rows + evaluated + combined)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
