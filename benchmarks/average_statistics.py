"""What batch-norm statistics of its own do for a weights' average (``train --ema``, issue 11).

The optimizer averages the trainable weights only; batch-norm's moving mean and variance are not trainable. For
each run folder trained with ``--ema``, its resume point (``last.keras``: the last step's weights, the average in the
optimizer) is scored on FER-2013 val, one view (the crop): the last step's weights, the average with the last step's
statistics (what ``train`` validated before the average got its own), and the average with its own statistics,
recomputed as ``train`` now does (``training.train._AverageSwap``). Writes ``benchmarks/AVERAGE_STATISTICS.md``
(and ``.json``). Needs FER-2013 and the run folders:

    .venv/bin/python benchmarks/average_statistics.py ~/fer-runs/e1 ~/fer-runs/e2 ~/fer-runs/n1
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_description, write_results  # noqa: E402


def main() -> int:
    import keras

    from training.config import TrainConfig
    from training.data import read_split
    from training.splits import training_splits
    from training.train import _AverageSwap, average_statistics_images, batch_norm_statistics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders trained with --ema")
    parser.add_argument("--data", default="../shared/data/fer2013")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "AVERAGE_STATISTICS.md"))
    args = parser.parse_args()

    val = read_split(args.data, "val")
    rows = []
    for run in args.runs:
        config = TrainConfig.load(run / "config.json")
        if not config.ema_momentum:
            raise SystemExit(f"{run} was not trained with --ema")
        with open(run / "history.csv", newline="") as handle:
            epochs = len(list(csv.DictReader(handle)))
        model = keras.saving.load_model(run / "last.keras")

        def accuracy() -> float:
            answers = model.predict(val.images.astype(np.float32), batch_size=256, verbose=0)  # noqa: B023
            return float((answers.argmax(axis=1) == val.labels).mean())

        last_step = accuracy()
        last_step_statistics = [keras.ops.convert_to_numpy(v) for v in batch_norm_statistics(model)]
        swap = _AverageSwap(average_statistics_images(training_splits(config, args.data)[0], config.seed))
        swap.set_model(model)
        swap.on_test_begin()  # the average goes in, with its own statistics
        own = accuracy()
        for variable, value in zip(batch_norm_statistics(model), last_step_statistics, strict=True):
            variable.assign(value)
        borrowed = accuracy()
        rows.append(
            {
                "run": run.name,
                "command": _training_options(run),
                "epochs": epochs,
                "ema_momentum": config.ema_momentum,
                "last_step": round(last_step, 4),
                "average_last_step_statistics": round(borrowed, 4),
                "average_own_statistics": round(own, 4),
            }
        )
        print(rows[-1], flush=True)

    lines = [
        "# A weights' average with batch-norm statistics of its own",
        "",
        f"Measured on {machine_description()}, by",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/average_statistics.py', *sys.argv[1:]])}`.",
        "Each run's resume point (`last.keras`, after the epochs below) on FER-2013 val (3,589 images), one view "
        "(the crop). The average's own statistics: the mean of its batch statistics on "
        "2,048 fixed, un-augmented training images, as `train --ema` now computes them.",
        "",
        "| run | how it was trained | epochs | momentum | last step's weights | the average, the last step's "
        "statistics | the average, its own statistics |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | `{r['command']}` | {r['epochs']} | {r['ema_momentum']:g} | {r['last_step']:.2%} | "
            f"{r['average_last_step_statistics']:.2%} | {r['average_own_statistics']:.2%} |"
        )
    write_results(Path(args.out), lines, rows)
    return 0


def _training_options(run: Path) -> str:
    """The training options of the run (its ``run.json`` command once finished, else its config's key fields)."""
    import json

    record = run / "run.json"
    if record.exists():
        command = json.loads(record.read_text())["command"]
        return " ".join(command.split()[1:]).replace(str(Path.home()), "~")
    config = json.loads((run / "config.json").read_text())
    return (
        f"train (in progress) --epochs {config['epochs']} --learning-rate {config['learning_rate']} "
        f"--seed {config['seed']} --ema {config['ema_momentum']}"
        + (f" --class-weights --class-weight-power {config['class_weight_power']}" if config["class_weights"] else "")
        + (f" --init-from {config['init_from']}" if config["init_from"] else "")
    ).replace(str(Path.home()), "~")


if __name__ == "__main__":
    raise SystemExit(main())
