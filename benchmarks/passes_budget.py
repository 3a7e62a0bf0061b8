"""Accuracy against CPU per face: which of an ensemble's networks and test-time views fit a budget (issue 11).

The served graph runs every network on every test-time view of a crop, so its cost is about (networks x views)
network passes. This script scores every subset of an ensemble's networks with every set of views on the
calibration hold-out (train images no network trained on) and, for each number of passes, keeps the subset that
scores best there; val (the reported split) is only read for the subsets chosen, so the table does not select on it.
The cost of a subset is estimated from ``benchmarks/model_cost.py``'s results file: CPU ms per face of the whole
graph divided by its passes, times the subset's passes (the networks are alike, so each pass costs the same).
Writes ``benchmarks/PASSES_BUDGET.md`` (and ``.json``). Needs FER-2013 and the ensemble's run folder, e.g.:

    .venv/bin/python -m training recover models/fer-cnn-48/10 --run-dir ~/fer-runs/r10
    .venv/bin/python benchmarks/passes_budget.py --run ~/fer-runs/r10 --cost benchmarks/MODEL_COST_AVX2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402

#: The test-time view sets the export offers, by name -> indices into (crop, zoomed centre, mirror, mirrored zoom).
VIEW_SETS: dict[str, tuple[int, ...]] = {
    "crop": (0,),
    "crop+mirror": (0, 2),
    "zoom": (1,),
    "zoom+mirror": (1, 3),
    "all four": (0, 1, 2, 3),
}


def view_probabilities(run: Path, data: str, zoom: float) -> dict[str, np.ndarray]:
    """Each network's probabilities for each view of the hold-out's and val's images:
    ``{"hold": (networks, 4, n, classes), "val": ..., "hold_y": labels, "val_y": labels}``."""
    from training.config import TrainConfig
    from training.data import read_split
    from training.inference import fer_pixels_to_model_input, rebuild_float32
    from training.model import ensemble_members, load_inference_model, zoomed_centre
    from training.splits import training_splits

    config = TrainConfig.load(run / "config.json")
    arch = dataclasses.replace(config.arch, test_time_zoom=zoom)
    networks = ensemble_members(rebuild_float32(load_inference_model(str(run / "model.keras")), config.arch))
    _, held = training_splits(config, data)
    out: dict[str, np.ndarray] = {}
    for name, split in (("hold", held), ("val", read_split(data, "val"))):
        x = np.asarray(fer_pixels_to_model_input(arch, split.images.astype(np.float32)))
        centre = np.asarray(zoomed_centre(x, arch))
        views = (x, centre, x[:, :, ::-1], centre[:, :, ::-1])  # NHWC: axis 2 is the width
        out[name] = np.stack(
            [np.stack([np.asarray(net.predict(v, batch_size=256, verbose=0)) for v in views]) for net in networks]
        )
        out[f"{name}_y"] = split.labels
    return out


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    predicted = probabilities.argmax(axis=1)
    return float((predicted == labels).mean()), float(f1_score(labels, predicted, average="macro"))


def frontier(probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """For each number of passes, the networks and view set scoring best on the hold-out, with its val figures."""
    count = probs["hold"].shape[0]
    best: dict[int, dict[str, Any]] = {}
    for k in range(1, count + 1):
        for networks in itertools.combinations(range(count), k):
            for view_name, views in VIEW_SETS.items():
                passes = k * len(views)
                mean = probs["hold"][list(networks)][:, list(views)].mean(axis=(0, 1))
                accuracy, macro_f1 = _scores(mean, probs["hold_y"])
                if passes not in best or accuracy > best[passes]["hold_accuracy"]:
                    best[passes] = {
                        "passes": passes,
                        "networks": [n + 1 for n in networks],
                        "views": view_name,
                        "hold_accuracy": accuracy,
                        "hold_macro_f1": macro_f1,
                    }
    rows = []
    for passes in sorted(best):
        row = best[passes]
        mean = probs["val"][[n - 1 for n in row["networks"]]][:, list(VIEW_SETS[row["views"]])].mean(axis=(0, 1))
        row["val_accuracy"], row["val_macro_f1"] = _scores(mean, probs["val_y"])
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="the ensemble's run folder (training recover)")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--zoom", type=float, default=1.1, help="the zoomed view's enlargement (the export's)")
    parser.add_argument("--cost", type=Path, default=ROOT / "benchmarks" / "MODEL_COST.json")
    parser.add_argument("--target-ms", type=float, default=10.0, help="the budget of CPU per face (issue 11)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "PASSES_BUDGET.md"))
    args = parser.parse_args()

    cost = json.loads(args.cost.read_text())
    # runtime -> CPU ms per network pass: the whole graph's measured cost (the file's first model) over its passes
    per_pass: dict[str, float] = {}
    for row in cost["rows"]:
        if "passes" not in row:
            raise SystemExit(f"{args.cost} predates the passes column: rerun benchmarks/model_cost.py")
        per_pass.setdefault(row["runtime"], row["cpu_ms_per_face"] / row["passes"])
    rows = frontier(view_probabilities(args.run.expanduser(), args.data, args.zoom))
    runtimes = list(per_pass)
    lines = [
        "# Accuracy against network passes per face",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/passes_budget.py', *sys.argv[1:]])}`.",
        f"Networks of `{args.run}`; for each number of passes, the networks and view set best on the calibration "
        "hold-out (train images never trained on), then scored on val. CPU ms per face is an estimate: the "
        f"whole graph's measured cost in `{args.cost.name}` ({cost['machine'].split(',')[0]}) per pass, times the "
        f"passes; budget {args.target_ms:g} ms.",
        "",
        "| passes | networks | views | hold-out accuracy | hold-out macro-F1 | val accuracy | val macro-F1 | "
        + " | ".join(f"CPU ms/face ({r})" for r in runtimes)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(runtimes),
    ]
    for row in rows:
        estimates = []
        for runtime in runtimes:
            ms = row["passes"] * per_pass[runtime]
            row[f"cpu_ms_{runtime}"] = round(ms, 2)
            estimates.append(f"{ms:.1f}" + ("" if ms <= args.target_ms else " (over)"))
        lines.append(
            f"| {row['passes']} | {', '.join(map(str, row['networks']))} | {row['views']} | "
            f"{row['hold_accuracy']:.2%} | {row['hold_macro_f1']:.3f} | {row['val_accuracy']:.2%} | "
            f"{row['val_macro_f1']:.3f} | " + " | ".join(estimates) + " |"
        )
    write_results(Path(args.out), lines, rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
