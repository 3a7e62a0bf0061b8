"""Does one distilled network stand in for the ensemble? Accuracy against network passes (issue 11).

The student (``python -m training train --teacher``) is compared with the network it started from (``--init-from
... --init-member N``, trained on the labels alone) on the same views, and with the teacher ensemble as served; then
tried inside the ensemble: in its starting network's place, and beside it. Hold-out = the calibration hold-out
(train images none of the networks trained on), val = the reported split. CPU ms per face: the teacher's measured
cost per network pass (``benchmarks/model_cost.py``'s .json) times the passes, as in ``passes_budget.py``.
Writes ``benchmarks/DISTILLATION.md`` (and ``.json``). Needs FER-2013 and the run folders:

    .venv/bin/python benchmarks/distillation.py --teacher-run ~/fer-runs/r10 --teacher-cache ~/fer-runs/pb10.npz \\
        --student ~/fer-runs/s1 --cost benchmarks/MODEL_COST_AVX2.json
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    from training.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-run", type=Path, required=True, help="the teacher ensemble's run folder")
    parser.add_argument("--teacher-cache", type=Path, help="passes_budget.py's --cache of the teacher (reused)")
    parser.add_argument("--student", type=Path, required=True, help="the student's run folder (model.keras)")
    parser.add_argument("--student-cache", type=Path, help="the same for the student (written if missing)")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--zoom", type=float, default=1.1, help="the zoomed view's enlargement (the export's)")
    parser.add_argument("--cost", type=Path, required=True, help="benchmarks/model_cost.py's .json of the teacher")
    parser.add_argument("--target-ms", type=float, default=10.0, help="the budget of CPU per face (issue 11)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "DISTILLATION.md"))
    args = parser.parse_args()

    config = TrainConfig.load(args.student.expanduser() / "config.json")
    if not config.teacher:
        raise SystemExit(f"{args.student} was not trained with --teacher")
    teacher_model = (args.teacher_run.expanduser() / "model.keras").resolve()
    started_there = bool(config.init_from) and Path(config.init_from).expanduser().resolve() == teacher_model
    # the teacher network the student started from (1-based); 0: it started elsewhere
    start = config.init_member if started_there else 0
    teacher = cached_view_probabilities(args.teacher_run, args.teacher_cache, args.data, args.zoom)
    student = cached_view_probabilities(args.student, args.student_cache, args.data, args.zoom)
    for split in ("hold", "val"):
        if not np.array_equal(teacher[f"{split}_y"], student[f"{split}_y"]):
            raise SystemExit(f"teacher and student were scored on different {split} images (another hold-out?)")
    networks = teacher["val"].shape[0]
    everything = VIEW_SETS["all four"]

    def mean(probs: dict[str, np.ndarray], split: str, nets: list[int], views: tuple[int, ...]) -> np.ndarray:
        return probs[split][nets][:, list(views)].mean(axis=(0, 1))

    rows = [
        _row(
            "the teacher as served (all its networks, all four views)",
            networks * len(everything),
            mean(teacher, "hold", list(range(networks)), everything),
            mean(teacher, "val", list(range(networks)), everything),
            teacher,
        )
    ]
    for view_name in ("crop", "crop+mirror", "all four"):
        views = VIEW_SETS[view_name]
        if start:
            rows.append(
                _row(
                    f"teacher's network {start}, the student's start ({view_name})",
                    len(views),
                    mean(teacher, "hold", [start - 1], views),
                    mean(teacher, "val", [start - 1], views),
                    teacher,
                )
            )
        rows.append(
            _row(
                f"the student ({view_name})",
                len(views),
                mean(student, "hold", [0], views),
                mean(student, "val", [0], views),
                teacher,
            )
        )
    joined = {s: np.concatenate([teacher[s], student[s]]) for s in ("hold", "val")} | {
        f"{s}_y": teacher[f"{s}_y"] for s in ("hold", "val")
    }
    if start:
        swapped = [n for n in range(networks) if n != start - 1] + [networks]
        rows.append(
            _row(
                f"the teacher with the student in network {start}'s place (all four views)",
                networks * len(everything),
                mean(joined, "hold", swapped, everything),
                mean(joined, "val", swapped, everything),
                teacher,
            )
        )
    rows.append(
        _row(
            "the teacher and the student (all four views)",
            (networks + 1) * len(everything),
            mean(joined, "hold", list(range(networks + 1)), everything),
            mean(joined, "val", list(range(networks + 1)), everything),
            teacher,
        )
    )

    cost = json.loads(args.cost.read_text())
    per_pass = per_pass_ms(cost, args.cost)
    runtimes = list(per_pass)
    lines = [
        "# Distillation: one network trained on the ensemble's answers",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/distillation.py', *sys.argv[1:]])}`.",
        f"Teacher: the networks of `{args.teacher_run}` (test-time zoom {args.zoom:g}); student: `{args.student}`, "
        f"trained with `--teacher {config.teacher} --distill-weight {config.distill_weight:g}` for {config.epochs} "
        f"epochs (cosine from {config.learning_rate:g})"
        + (f", starting from the teacher's network {start}" if start else "")
        + f". CPU ms per face: the teacher's measured cost per pass in `{args.cost.name}` "
        f"({cost['machine'].split(',')[0]}) times the passes (the student has the teacher networks' architecture); "
        f"budget {args.target_ms:g} ms.",
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
