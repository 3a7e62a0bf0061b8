"""Does one retrained network do better than the network it started from, alone and inside the ensemble? (issue 11)

The retrained network (a run of ``python -m training train --init-from ENSEMBLE --init-member N``, changed by
distillation ``--teacher`` and/or weight averaging ``--ema``, or a network from outside the ensemble: trained from
scratch, or warm-restarted from such a run) is compared with the network it started from on the same views, and with
the ensemble as served; then tried inside the ensemble: in its starting network's place (from outside: in the place
of the ensemble's weakest network on the hold-out, or ``--replace N``'s), and beside it. With weight averaging, the
last step's weights at the run's last epoch (``last.keras``) are scored beside the average the run kept (its best
epoch on val: the labels give both epochs, so a gain that is partly the choice of epoch shows). Hold-out = the
calibration hold-out (train images none of the networks trained on), val = the reported split. CPU ms per face: the
ensemble's measured cost per network pass (``benchmarks/model_cost.py``'s .json) times the passes, as in
``passes_budget.py``. Needs FER-2013 and the run folders, for instance:

    .venv/bin/python benchmarks/retrained_network.py --ensemble-run ~/fer-runs/r10 --ensemble-cache \\
        ~/fer-runs/pb10.npz --run ~/fer-runs/s1 --cost benchmarks/MODEL_COST_AVX2.json \\
        --out benchmarks/DISTILLATION.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402
from benchmarks.passes_budget import VIEW_SETS, cached_view_probabilities, cost_cells, per_pass_ms  # noqa: E402


def _row(name: str, passes: int, hold: np.ndarray, val: np.ndarray, labels: dict[str, np.ndarray]) -> dict:
    """Scores of the averaged probabilities ``hold`` / ``val`` ``(n, classes)`` against ``labels["hold_y"]`` and
    ``labels["val_y"]``."""
    from training.evaluate import compute_metrics

    row: dict[str, Any] = {"model": name, "passes": passes}
    for split, probabilities in (("hold", hold), ("val", val)):
        metrics = compute_metrics(labels[f"{split}_y"], probabilities)
        row[f"{split}_accuracy"] = metrics["accuracy"]
        row[f"{split}_macro_f1"] = metrics["macro_f1"]
        row[f"{split}_lowest_f1"] = min(c["f1"] for c in metrics["per_class"].values())
    return row


def _method(config: Any) -> tuple[str, str]:
    """What the run changed: in words (distillation, weight averaging, batch mixing), and its training options."""
    names, options = [], []
    if config.teacher:
        names.append("distillation")
        options.append(f"`--teacher {config.teacher} --distill-weight {config.distill_weight:g}`")
    if config.ema_momentum:
        names.append("weight averaging")
        options.append(f"`--ema {config.ema_momentum:g}`")
    if config.mixing.enabled:
        names.append("batch mixing")
        options.append(
            f"`--mixup {config.mixup:g} --cutmix {config.cutmix:g} --mix-probability {config.mix_probability:g}`"
        )
    if config.class_weights:
        options.append(f"`--class-weights --class-weight-power {config.class_weight_power:g}`")
    return " and ".join(names) or "more epochs", " and ".join(options) or "the labels alone"


def _epochs(run: Path) -> tuple[int, int]:
    """The run's epochs (``history.csv``'s rows) and its best on val, 1-based."""
    with open(run / "history.csv", newline="") as handle:
        scores = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
    return len(scores), int(np.argmax(scores)) + 1


def _weakest(ensemble: dict[str, np.ndarray]) -> int:
    """The ensemble's network (1-based) with the lowest hold-out accuracy over all four views: the one a network
    from outside the ensemble is tried in place of (chosen on the hold-out, not on val)."""
    views = list(VIEW_SETS["all four"])
    predictions = ensemble["hold"][:, views].mean(axis=1).argmax(axis=-1)
    return int(np.argmin((predictions == ensemble["hold_y"]).mean(axis=1))) + 1


def _cache_beside(cache: Path | None, suffix: str) -> Path | None:
    return None if cache is None else cache.with_name(f"{cache.stem}-{suffix}{cache.suffix}")


def main() -> int:
    from training.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble-run", type=Path, required=True, help="the ensemble's run folder")
    parser.add_argument("--ensemble-cache", type=Path, help="passes_budget.py's --cache of the ensemble (reused)")
    parser.add_argument("--run", type=Path, required=True, help="the retrained network's run folder (model.keras)")
    parser.add_argument(
        "--run-cache",
        type=Path,
        help="the same for the retrained network (written if missing; its last-step weights beside it, '-last')",
    )
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--zoom", type=float, default=1.1, help="the zoomed view's enlargement (the export's)")
    parser.add_argument("--cost", type=Path, required=True, help="benchmarks/model_cost.py's .json of the ensemble")
    parser.add_argument("--target-ms", type=float, default=10.0, help="the budget of CPU per face (issue 11)")
    parser.add_argument(
        "--replace",
        type=int,
        default=0,
        help="the ensemble's network (1-based) the run is tried in place of; default: the network it started from, "
        "or, for a run that did not start from the ensemble, its weakest network on the hold-out (four views)",
    )
    parser.add_argument("--out", type=Path, required=True, help="results file (.md; a .json beside it)")
    args = parser.parse_args()

    config = TrainConfig.load(args.run.expanduser() / "config.json")
    ensemble_model = (args.ensemble_run.expanduser() / "model.keras").resolve()
    started_there = bool(config.init_from) and Path(config.init_from).expanduser().resolve() == ensemble_model
    # the ensemble's network the run started from (1-based); 0: it started elsewhere
    start = config.init_member if started_there else 0
    # where the run's weights came from, for the results file
    if start:
        origin = f"starting from the ensemble's network {start}"
    elif config.init_from:  # a warm restart of a network from outside the ensemble (e.g. another run from scratch)
        origin = f"starting from `{config.init_from}`"
    else:
        origin = "from random initialisation"
    ensemble = cached_view_probabilities(args.ensemble_run, args.ensemble_cache, args.data, args.zoom)
    retrained = cached_view_probabilities(args.run, args.run_cache, args.data, args.zoom)
    # with weight averaging, the last step's weights (the resume point) beside the average the run kept
    last = (
        cached_view_probabilities(
            args.run, _cache_beside(args.run_cache, "last"), args.data, args.zoom, model_file="last.keras"
        )
        if config.ema_momentum
        else None
    )
    for split in ("hold", "val"):
        if any(not np.array_equal(ensemble[f"{split}_y"], p[f"{split}_y"]) for p in (retrained, last) if p):
            raise SystemExit(f"the ensemble and the run were scored on different {split} images (another hold-out?)")
    epochs_run, best_epoch = _epochs(args.run.expanduser())
    networks = ensemble["val"].shape[0]
    replaced = args.replace or start or _weakest(ensemble)
    if not 1 <= replaced <= networks:
        raise SystemExit(f"--replace {replaced}: the ensemble has networks 1-{networks}")
    kept = f": the average, best epoch on val ({best_epoch})" if last is not None else ""
    # a network from outside the ensemble is a new one, not a retrained one: the table says which it is
    noun = "retrained network" if started_there else "new network"
    chosen = " (the weakest on the hold-out)" if replaced != start and not args.replace else ""
    everything = VIEW_SETS["all four"]

    def scored(name: str, probs: dict[str, np.ndarray], nets: list[int], views: tuple[int, ...]) -> dict:
        """The row of the mean of networks ``nets`` (0-based) of ``probs`` over ``views``."""
        hold, val = (probs[split][nets][:, list(views)].mean(axis=(0, 1)) for split in ("hold", "val"))
        return _row(name, len(nets) * len(views), hold, val, ensemble)

    rows = [
        scored("the ensemble as served (all its networks, all four views)", ensemble, [*range(networks)], everything)
    ]
    for view_name in ("crop", "crop+mirror", "all four"):
        views = VIEW_SETS[view_name]
        if start:
            rows.append(
                scored(f"the ensemble's network {start}, the run's start ({view_name})", ensemble, [start - 1], views)
            )
        if last is not None:
            rows.append(scored(f"the last step's weights, last epoch ({epochs_run}; {view_name})", last, [0], views))
        rows.append(scored(f"the {noun}{kept} ({view_name})", retrained, [0], views))
    if replaced != start:
        rows.append(
            scored(
                f"the ensemble's network {replaced}, the one replaced{chosen} (all four views)",
                ensemble,
                [replaced - 1],
                everything,
            )
        )
    joined = {s: np.concatenate([ensemble[s], retrained[s]]) for s in ("hold", "val")}
    swapped = [n for n in range(networks) if n != replaced - 1] + [networks]
    rows.append(
        scored(
            f"the ensemble with the {noun} in network {replaced}'s place (all four views)",
            joined,
            swapped,
            everything,
        )
    )
    if last is not None:
        rows.append(
            scored(
                f"the ensemble with the last step's weights in network {replaced}'s place (all four views)",
                {s: np.concatenate([ensemble[s], last[s]]) for s in ("hold", "val")},
                swapped,
                everything,
            )
        )
    rows.append(scored(f"the ensemble and the {noun} (all four views)", joined, [*range(networks + 1)], everything))

    cost = json.loads(args.cost.read_text())
    per_pass = per_pass_ms(cost, args.cost)
    runtimes = list(per_pass)
    method, options = _method(config)
    lines = [
        f"# A {noun} ({method}): {args.run.name}",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/retrained_network.py', *sys.argv[1:]])}`.",
        f"Ensemble: the networks of `{args.ensemble_run}` (test-time zoom {args.zoom:g}); {noun}: "
        f"`{args.run}`, trained with {options} for {epochs_run} epochs ({config.schedule} from "
        f"{config.learning_rate:g})"
        + f", {origin}. CPU ms per face: the ensemble's measured cost per pass in `{args.cost.name}` "
        f"({cost['machine'].split(',')[0]}) times the passes (the {noun} has the ensemble networks' "
        f"architecture); budget {args.target_ms:g} ms.",
        "",
        "| model | passes | hold-out accuracy | hold-out macro-F1 | val accuracy | val macro-F1 | "
        "val lowest class F1 | " + " | ".join(f"CPU ms/face ({r})" for r in runtimes) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(runtimes),
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['passes']} | {row['hold_accuracy']:.2%} | {row['hold_macro_f1']:.3f} | "
            f"{row['val_accuracy']:.2%} | {row['val_macro_f1']:.3f} | {row['val_lowest_f1']:.3f} | "
            f"{cost_cells(row, row['passes'], per_pass, args.target_ms)} |"
        )
    write_results(Path(args.out), lines, rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
