"""Accuracy against CPU per face: which of an ensemble's networks and test-time views fit a budget (issue 11).

The served graph runs every network on every test-time view of a crop, so its cost is about (networks x views)
network passes. This script scores every subset of an ensemble's networks with every set of views on the
calibration hold-out (train images no network trained on) and, for each number of passes, keeps the subset that
scores best there; val (the reported split) is only read for the subsets chosen, so the table does not select on it.
The cost of a subset is estimated from ``benchmarks/model_cost.py``'s results file: CPU ms per face of the whole
graph divided by its passes, times the subset's passes (the networks are alike, so each pass costs the same); the
per-face work outside the networks (views, averaging, temperature) is spread over the whole graph's passes, so the
estimate of a smaller subset is a lower bound.
A second table tries a cascade: a cheap first stage (one or two networks on one view, temperature-scaled) answers
the faces it is confident about and sends the others through the whole graph; the threshold is the lowest whose
hold-out accuracy is not below the whole graph's. Its cost is an average that depends on the faces (the share sent
on), so it is reported per split. Writes ``benchmarks/PASSES_BUDGET.md`` (and ``.json``). Needs FER-2013 and the
ensemble's run folder (``--cache F.npz`` keeps the networks' probabilities for a rerun), e.g.:

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


def view_probabilities(run: Path, data: str, zoom: float, model_file: str = "model.keras") -> dict[str, np.ndarray]:
    """Each network's probabilities for each view of the hold-out's and val's images:
    ``{"hold": (networks, 4, n, classes), "val": ..., "hold_y": labels, "val_y": labels}``, of the run's finished
    model or of another of its ``.keras`` files (``last.keras``: the last epoch's weights)."""
    from training.config import TrainConfig
    from training.data import read_split
    from training.inference import fer_pixels_to_model_input, rebuild_float32
    from training.model import ensemble_members, load_inference_model, zoomed_centre
    from training.splits import training_splits

    config = TrainConfig.load(run / "config.json")
    arch = dataclasses.replace(config.arch, test_time_zoom=zoom)
    networks = ensemble_members(rebuild_float32(load_inference_model(str(run / model_file)), config.arch))
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


def cached_view_probabilities(
    run: Path, cache: Path | None, data: str, zoom: float, model_file: str = "model.keras"
) -> dict[str, np.ndarray]:
    """``view_probabilities`` of ``run``, read from ``cache`` when it holds them (an ``.npz`` that names its run,
    model file and zoom), else computed and written there."""
    source = f"{run.expanduser().resolve()} zoom {zoom:g}"
    if model_file != "model.keras":  # the finished model's caches, written before this option, name only the run
        source = f"{run.expanduser().resolve()}/{model_file} zoom {zoom:g}"
    if cache and cache.is_file():
        probs = dict(np.load(cache))
        cached = str(probs.pop("source", "an unnamed run"))
        if cached != source:
            raise SystemExit(f"{cache} holds the probabilities of {cached}, not of {source}")
        return probs
    probs = view_probabilities(run.expanduser(), data, zoom, model_file)
    if cache:
        with cache.open("wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, source=np.array(source), **probs)  # type: ignore[arg-type]
    return probs


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


#: Cascade thresholds tried: the first stage's top probability at or above it ends a face there.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.40, 0.96, 0.05))


#: The cheapest first stages (by hold-out passes) the table shows.
CASCADES_SHOWN = 12


def cascade(probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """For each first stage of at most two passes, the lowest threshold keeping the whole graph's hold-out accuracy,
    with its accuracy, macro-F1 and average passes per face on both splits (a face sent on pays the first stage and
    the whole graph)."""
    from training import calibration

    count, all_views = probs["hold"].shape[0], len(VIEW_SETS["all four"])
    full_passes = count * all_views
    full = {name: probs[name].mean(axis=(0, 1)) for name in ("hold", "val")}
    full_accuracy = _scores(full["hold"], probs["hold_y"])[0]  # scaling keeps the ranking: the same after it
    temperature = calibration.fit_temperature(full["hold"], probs["hold_y"])
    full = {name: calibration.scale(p, temperature) for name, p in full.items()}
    rows = []
    stages: list[tuple[tuple[int, ...], str]] = [
        ((n,), v) for n in range(count) for v in VIEW_SETS if len(VIEW_SETS[v]) <= 2
    ]
    stages += [(pair, v) for pair in itertools.combinations(range(count), 2) for v in ("crop", "zoom")]
    for networks, view_name in stages:
        views = list(VIEW_SETS[view_name])
        first = {name: probs[name][list(networks)][:, views].mean(axis=(0, 1)) for name in ("hold", "val")}
        first_temperature = calibration.fit_temperature(first["hold"], probs["hold_y"])
        first = {name: calibration.scale(p, first_temperature) for name, p in first.items()}
        for threshold in THRESHOLDS:
            row: dict[str, Any] = {
                "first_stage": f"{', '.join(str(n + 1) for n in networks)} ({view_name})",
                "threshold": threshold,
            }
            for name in ("hold", "val"):
                early = first[name].max(axis=1) >= threshold
                answer = np.where(early[:, None], first[name], full[name])
                row[f"{name}_accuracy"], row[f"{name}_macro_f1"] = _scores(answer, probs[f"{name}_y"])
                row[f"{name}_passes"] = len(networks) * len(views) + full_passes * float((~early).mean())
            if row["hold_accuracy"] >= full_accuracy:
                rows.append(row)
                break
    return sorted(rows, key=lambda r: r["hold_passes"])[:CASCADES_SHOWN]


def per_pass_ms(cost: dict[str, Any], path: Path) -> dict[str, float]:
    """runtime -> CPU ms per network pass: the whole graph's measured cost (the file's first model) over its
    passes, from ``benchmarks/model_cost.py``'s .json at ``path``."""
    per_pass: dict[str, float] = {}
    for row in cost["rows"]:
        if "passes" not in row:
            raise SystemExit(f"{path} predates the passes column: rerun benchmarks/model_cost.py")
        per_pass.setdefault(row["runtime"], row["cpu_ms_per_face"] / row["passes"])
    return per_pass


def cost_cells(row: dict[str, Any], passes: float, per_pass: dict[str, float], target_ms: float) -> str:
    """The estimated CPU ms per face of ``passes`` on each runtime, recorded in ``row`` and as table cells."""
    cells = []
    for runtime, ms_per_pass in per_pass.items():
        ms = passes * ms_per_pass
        row[f"cpu_ms_{runtime}"] = round(ms, 2)
        cells.append(f"{ms:.1f}" + ("" if ms <= target_ms else " (over)"))
    return " | ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="the ensemble's run folder (training recover)")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--zoom", type=float, default=1.1, help="the zoomed view's enlargement (the export's)")
    parser.add_argument(
        "--cost", type=Path, required=True, help="benchmarks/model_cost.py's .json for this ensemble's export"
    )
    parser.add_argument("--target-ms", type=float, default=10.0, help="the budget of CPU per face (issue 11)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "PASSES_BUDGET.md"))
    parser.add_argument(
        "--cache", type=Path, help="an .npz of the per-network, per-view probabilities (reused if there)"
    )
    args = parser.parse_args()

    cost = json.loads(args.cost.read_text())
    per_pass = per_pass_ms(cost, args.cost)
    probs = cached_view_probabilities(args.run, args.cache, args.data, args.zoom)
    rows = frontier(probs)
    cascades = cascade(probs)
    runtimes = list(per_pass)
    lines = [
        "# Accuracy against network passes per face",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/passes_budget.py', *sys.argv[1:]])}`.",
        f"Networks of `{args.run}`; for each number of passes, the networks and view set best on the calibration "
        "hold-out (train images never trained on), then scored on val. CPU ms per face is an estimate: the "
        f"whole graph's measured cost in `{args.cost.name}` ({cost['machine'].split(',')[0]}) per pass, times the "
        f"passes (a lower bound for a smaller subset: the per-face work outside the networks is spread over the "
        f"whole graph's passes); budget {args.target_ms:g} ms.",
        "",
        "| passes | networks | views | hold-out accuracy | hold-out macro-F1 | val accuracy | val macro-F1 | "
        + " | ".join(f"CPU ms/face ({r})" for r in runtimes)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(runtimes),
    ]
    for row in rows:
        lines.append(
            f"| {row['passes']} | {', '.join(map(str, row['networks']))} | {row['views']} | "
            f"{row['hold_accuracy']:.2%} | {row['hold_macro_f1']:.3f} | {row['val_accuracy']:.2%} | "
            f"{row['val_macro_f1']:.3f} | {cost_cells(row, row['passes'], per_pass, args.target_ms)} |"
        )
    lines += [
        "",
        "## A cascade: the whole graph only for the faces a cheap first stage is unsure of",
        "",
        "First stage: one or two networks on one view (or one network with its mirror), its own temperature "
        "(fitted on the hold-out); a face whose top probability reaches the threshold is answered there, the others "
        "go through the whole graph (all networks, all four views). Threshold: the lowest of "
        f"{THRESHOLDS[0]:g}-{THRESHOLDS[-1]:g} whose hold-out accuracy is not below the whole graph's. Passes "
        "are averages over the split's faces (a face sent on pays both stages); CPU ms per face from the val "
        f"average. The {CASCADES_SHOWN} first stages cheapest on the hold-out.",
        "",
        "| first stage (networks, views) | threshold | hold-out accuracy | hold-out macro-F1 | hold-out passes "
        "| val accuracy | val macro-F1 | val passes | " + " | ".join(f"CPU ms/face ({r})" for r in runtimes) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(runtimes),
    ]
    for row in cascades:
        lines.append(
            f"| {row['first_stage']} | {row['threshold']:g} | {row['hold_accuracy']:.2%} | "
            f"{row['hold_macro_f1']:.3f} | {row['hold_passes']:.1f} | {row['val_accuracy']:.2%} | "
            f"{row['val_macro_f1']:.3f} | {row['val_passes']:.1f} | "
            f"{cost_cells(row, row['val_passes'], per_pass, args.target_ms)} |"
        )
    write_results(Path(args.out), lines, rows + [{"cascade": True, **row} for row in cascades])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
